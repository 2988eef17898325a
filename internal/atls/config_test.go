package atls

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"testing"
	"time"
)

// testCA issues certificates for the configuration tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (c *testCA) issue(t *testing.T, cn string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// end is what one side of a handshake saw.
type end struct {
	state    tls.ConnectionState
	exporter []byte
	err      error
}

// handshake runs one connection between cli and srv on loopback and
// returns what each side saw.
func handshake(t *testing.T, srv, cli *tls.Config) (server, client end) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan end, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- end{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(c, srv)
		if err := tc.Handshake(); err != nil {
			done <- end{err: err}
			return
		}
		cs := tc.ConnectionState()
		e, err := ExporterValue(cs)
		// The client reads this (and any session ticket before it), then
		// closes.
		tc.Write([]byte("ok"))
		io.Copy(io.Discard, tc)
		done <- end{state: cs, exporter: e, err: err}
	}()
	c, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, cli)
	if err := tc.Handshake(); err != nil {
		client.err = err
	} else {
		// TLS 1.3 reports a refused client certificate on the first read;
		// reading also takes in a session ticket, if the server sent one.
		var buf [2]byte
		if _, err := io.ReadFull(tc, buf[:]); err != nil {
			client.err = err
		} else {
			client.state = tc.ConnectionState()
			client.exporter, client.err = ExporterValue(client.state)
		}
	}
	tc.Close()
	return <-done, client
}

func TestConfigsMutualTLS(t *testing.T) {
	ca := newTestCA(t)
	srv := ServerConfig(ca.issue(t, "controller", x509.ExtKeyUsageServerAuth), ca.pool, true)
	node := ca.issue(t, "node-1", x509.ExtKeyUsageClientAuth)
	cli := ClientConfig(ca.pool, "127.0.0.1", &node)
	// A client that would resume if the server let it.
	cli.ClientSessionCache = tls.NewLRUClientSessionCache(4)

	s1, c1 := handshake(t, srv, cli)
	if s1.err != nil || c1.err != nil {
		t.Fatalf("handshake: server %v, client %v", s1.err, c1.err)
	}
	if s1.state.Version != tls.VersionTLS13 {
		t.Errorf("version %#x, want TLS 1.3", s1.state.Version)
	}
	if len(s1.state.PeerCertificates) == 0 || s1.state.PeerCertificates[0].Subject.CommonName != "node-1" {
		t.Errorf("server did not see the node's certificate")
	}
	if len(c1.exporter) != 32 || !bytes.Equal(s1.exporter, c1.exporter) {
		t.Fatalf("the two ends of one connection disagree: %x vs %x", s1.exporter, c1.exporter)
	}
	s2, c2 := handshake(t, srv, cli)
	if s2.err != nil || c2.err != nil {
		t.Fatalf("second handshake: server %v, client %v", s2.err, c2.err)
	}
	if s2.state.DidResume || c2.state.DidResume {
		t.Error("the second connection resumed the first one's session")
	}
	if bytes.Equal(c1.exporter, c2.exporter) {
		t.Error("two connections share an exporter value")
	}
}

func TestServerConfigRefuses(t *testing.T) {
	ca := newTestCA(t)
	srvCert := ca.issue(t, "controller", x509.ExtKeyUsageServerAuth)
	for name, tc := range map[string]struct {
		srv *tls.Config
		cli *tls.Config
	}{
		"no client certificate where one is required": {
			srv: ServerConfig(srvCert, ca.pool, true), cli: ClientConfig(ca.pool, "127.0.0.1", nil),
		},
		"client certificate from another CA": {
			srv: ServerConfig(srvCert, ca.pool, false),
			cli: func() *tls.Config {
				other := newTestCA(t).issue(t, "intruder", x509.ExtKeyUsageClientAuth)
				return ClientConfig(ca.pool, "127.0.0.1", &other)
			}(),
		},
		"TLS 1.2 client": {
			srv: ServerConfig(srvCert, nil, false),
			cli: &tls.Config{RootCAs: ca.pool, ServerName: "127.0.0.1", MaxVersion: tls.VersionTLS12},
		},
		"server from another CA": {
			srv: ServerConfig(newTestCA(t).issue(t, "impostor", x509.ExtKeyUsageServerAuth), nil, false),
			cli: ClientConfig(ca.pool, "127.0.0.1", nil),
		},
	} {
		t.Run(name, func(t *testing.T) {
			s, c := handshake(t, tc.srv, tc.cli)
			if s.err == nil && c.err == nil {
				t.Fatal("the connection was established")
			}
		})
	}
	// Without client CAs the server asks for no certificate.
	if c := ServerConfig(srvCert, nil, true); c.ClientAuth != tls.NoClientCert {
		t.Errorf("client auth %v without client CAs", c.ClientAuth)
	}
}

// TestRelayChangesTheExporter: a party that terminates the node's TLS
// connection and opens its own to the controller sees two connections with
// two exporter values, so evidence bound on one leg fails on the other.
func TestRelayChangesTheExporter(t *testing.T) {
	ca := newTestCA(t)
	srv := ServerConfig(ca.issue(t, "controller", x509.ExtKeyUsageServerAuth), nil, false)
	// The relay holds a certificate the node accepts (the worst case).
	relaySrv := ServerConfig(ca.issue(t, "relay", x509.ExtKeyUsageServerAuth), nil, false)
	cli := ClientConfig(ca.pool, "127.0.0.1", nil)
	relayCli := ClientConfig(ca.pool, "127.0.0.1", nil)

	relayIn, nodeSide := handshake(t, relaySrv, cli)
	controllerSide, relayOut := handshake(t, srv, relayCli)
	for _, e := range []end{relayIn, nodeSide, controllerSide, relayOut} {
		if e.err != nil {
			t.Fatal(e.err)
		}
	}
	nonce, wg := []byte("nonce"), []byte("wireguard key")
	if bytes.Equal(Binding(nodeSide.exporter, nonce, wg), Binding(controllerSide.exporter, nonce, wg)) {
		t.Fatal("the node's binding holds on the relay's connection to the controller")
	}
}

func TestExporterValueNeedsHandshake(t *testing.T) {
	if _, err := ExporterValue(tls.ConnectionState{}); !errors.Is(err, ErrNotTLS13) {
		t.Fatalf("no handshake: %v", err)
	}
}
