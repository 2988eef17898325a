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
	"math/big"
	"net"
	"testing"
	"time"
)

func selfSigned(t *testing.T) tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// pair opens one TLS connection on loopback and returns both ends' exporter
// values.
func pair(t *testing.T, srv *tls.Config, cli *tls.Config) (server, client []byte) {
	l, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan []byte, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- nil
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			done <- nil
			return
		}
		cs := tc.ConnectionState()
		e, _ := Exporter(&cs)
		done <- e
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), cli)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cs := c.ConnectionState()
	ce, err := Exporter(&cs)
	if err != nil {
		t.Fatal(err)
	}
	return <-done, ce
}

func TestExporterBindsOneConnection(t *testing.T) {
	cert := selfSigned(t)
	srv := Harden(&tls.Config{Certificates: []tls.Certificate{cert}})
	cli := Harden(&tls.Config{InsecureSkipVerify: true})
	s1, c1 := pair(t, srv, cli)
	s2, c2 := pair(t, srv, cli)
	if len(c1) != 32 || !bytes.Equal(s1, c1) {
		t.Fatalf("the two ends of one connection disagree: %x vs %x", s1, c1)
	}
	if bytes.Equal(c1, c2) {
		t.Fatal("two connections share an exporter value: evidence could be relayed")
	}
	_ = s2
	nonce, wg := []byte("nonce"), []byte("wg")
	if bytes.Equal(Binding(c1, nonce, wg), Binding(c2, nonce, wg)) || bytes.Equal(Binding(c1, nonce, wg), Binding(c1, []byte("other"), wg)) ||
		bytes.Equal(Binding(c1, nonce, wg), Binding(c1, nonce, []byte("wh"))) {
		t.Fatal("binding ignores one of its inputs")
	}
	// Length prefixes keep parts from sliding into each other.
	if bytes.Equal(Binding([]byte("ab"), []byte("c"), nil), Binding([]byte("a"), []byte("bc"), nil)) {
		t.Fatal("binding is ambiguous")
	}
}

func TestTLS12Refused(t *testing.T) {
	cert := selfSigned(t)
	srv := &tls.Config{Certificates: []tls.Certificate{cert}, MaxVersion: tls.VersionTLS12}
	l, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cs := c.ConnectionState()
	if _, err := Exporter(&cs); !errors.Is(err, ErrNotTLS13) {
		t.Fatalf("TLS 1.2: %v", err)
	}
}
