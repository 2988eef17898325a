package controller

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/jointoken"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/secrets"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/store/bolt"
	etcdstore "github.com/statemesh/statemesh/internal/store/etcd"
	"github.com/statemesh/statemesh/internal/store/etcd/etcdtest"
)

func testKeyring(t *testing.T) *secrets.Keyring {
	line, err := secrets.NewKey("k1")
	if err != nil {
		t.Fatal(err)
	}
	k, err := secrets.Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func csr(t *testing.T) string {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// populate bootstraps a controller on st and creates every kind of secret
// it handles; it returns the secrets to look for.
func populate(t *testing.T, st store.Store, kr *secrets.Keyring) [][]byte {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c, err := New(Config{Store: st, Keyring: kr})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := c.Bootstrap(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	go c.Run(ctx)
	<-c.Ready()
	spec, _ := os.ReadFile("../../examples/small.yaml")
	if _, err := c.ApplySpec(ctx, spec); err != nil {
		t.Fatal(err)
	}
	tok, err := c.CreateToken(ctx, api.CreateTokenRequest{Cluster: "eu-central/prod", Uses: 2})
	if err != nil {
		t.Fatal(err)
	}
	k, _ := netmap.GeneratePrivateKey()
	if _, err := c.Enroll(ctx, api.EnrollRequest{Token: tok.Secret, Name: "n1", Role: "node", PublicKey: k.PublicKey(), CSR: csr(t)}, nil); err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.ca.key)
	if err != nil {
		t.Fatal(err)
	}
	jt, _ := jointoken.Parse(tok.Secret)
	adminSecret := admin[strings.LastIndex(admin, ".")+1:]
	b64 := base64.StdEncoding.EncodeToString(keyDER)
	return [][]byte{
		keyDER,
		[]byte(b64[:60]), // a line of the PEM body
		c.ca.key.(*ecdsa.PrivateKey).D.Bytes(),
		[]byte(adminSecret),
		[]byte(jt.Secret),
	}
}

func assertNoSecrets(t *testing.T, raw []byte, needles [][]byte) {
	t.Helper()
	names := []string{"CA private key (DER)", "CA private key (PEM line)", "CA private scalar", "admin token secret", "join token secret"}
	for i, n := range needles {
		if bytes.Contains(raw, n) {
			t.Errorf("the raw store holds the %s", names[i])
		}
	}
}

func TestNoSecretsInRawBolt(t *testing.T) {
	dir := t.TempDir()
	st, err := bolt.Open(dir, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	kr := testKeyring(t)
	needles := populate(t, st, kr)
	st.Close()
	raw, err := os.ReadFile(filepath.Join(dir, bolt.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte("nodes/n1")) {
		t.Fatal("the raw file does not even hold the node: the test reads the wrong file")
	}
	assertNoSecrets(t, raw, needles)

	// The same store without the keyring, or with another one, refuses to
	// start with a clear error rather than running without its CA.
	for name, k := range map[string]*secrets.Keyring{"no keyring": nil, "another keyring": testKeyring(t)} {
		st, err := bolt.Open(dir, bolt.Options{})
		if err != nil {
			t.Fatal(err)
		}
		c, _ := New(Config{Store: st, Keyring: k})
		_, err = c.Bootstrap(context.Background(), "t")
		st.Close()
		if err == nil || !strings.Contains(err.Error(), "CA key") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// With the right keyring it starts, and the CA is the same.
	st, _ = bolt.Open(dir, bolt.Options{})
	defer st.Close()
	c, _ := New(Config{Store: st, Keyring: kr})
	if _, err := c.Bootstrap(context.Background(), "t"); err != nil {
		t.Fatal(err)
	}
}

func TestNoSecretsInRawEtcd(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	st, err := etcdstore.Open(context.Background(), etcdstore.Options{Endpoints: cluster.Endpoints(), Prefix: "/atrest/"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	needles := populate(t, st, testKeyring(t))
	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(context.Background(), "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var raw bytes.Buffer
	for _, kv := range resp.Kvs {
		raw.Write(kv.Key)
		raw.Write(kv.Value)
	}
	if !bytes.Contains(raw.Bytes(), []byte("/atrest/nodes/n1")) {
		t.Fatal("the keyspace does not hold the node: the test reads the wrong keyspace")
	}
	assertNoSecrets(t, raw.Bytes(), needles)
}

func TestKeyRotationReseals(t *testing.T) {
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek")
	kr, err := secrets.CreateFile(kek)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := bolt.Open(dir, bolt.Options{})
	c, _ := New(Config{Store: st, Keyring: kr})
	if _, err := c.Bootstrap(context.Background(), "t"); err != nil {
		t.Fatal(err)
	}
	rotated, err := secrets.AddPrimary(kek, "k2")
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := New(Config{Store: st, Keyring: rotated})
	if _, err := c2.Bootstrap(context.Background(), "t"); err != nil {
		t.Fatal(err)
	}
	kv, _ := st.Get(context.Background(), keyCA)
	rec, _ := decode[CARecord](kv.Value)
	if id, _ := secrets.KeyID(rec.KeySealed); id != "k2" {
		t.Fatalf("CA key sealed with %q after rotation, want k2", id)
	}
	st.Close()
}
