package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/ctltest"
	"github.com/statemesh/statemesh/internal/dataplane/wg"
	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmaker/nmtest"
	"github.com/statemesh/statemesh/internal/netmakersync"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/swtpm"
	"github.com/statemesh/statemesh/internal/testenv"
)

// TestAttestOnlyAdmitsNetclientHost: a Netmaker host runs the agent with
// --attest-only. The agent enrolls netclient's WireGuard key with real TPM
// evidence (swtpm), touches no interface, and is never anybody's peer;
// the controller then approves the host's pending registration in
// Netmaker (a server that checks every call against swagger.yaml).
func TestAttestOnlyAdmitsNetclientHost(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "swtpm")
	testenv.RequireBinary(t, "swtpm_setup")
	root := t.TempDir()
	ca, err := swtpm.NewCA(filepath.Join(root, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	tp := startTPM(t, ca, filepath.Join(root, "tpm"))
	rootPEM, _ := ca.RootPEM()
	issuerPEM, _ := ca.IssuerPEM()
	var spec strings.Builder
	spec.WriteString("apiVersion: statemesh.dev/v1alpha1\nkind: Mesh\nmetadata: {name: nm}\nregions:\n  - name: r\n    clusters: [{name: c, maxNodes: 20, admitWithoutTPM: true}]\n")
	spec.WriteString("attestation:\n  pcrs: [0, 1, 2, 3, 4, 5, 6, 7]\n  reattestInterval: 5s\n  ekRoots:\n    - |\n")
	for i, p := range [][]byte{rootPEM, issuerPEM} {
		if i > 0 {
			spec.WriteString("    - |\n")
		}
		for _, l := range strings.Split(strings.TrimSpace(string(p)), "\n") {
			spec.WriteString("      " + l + "\n")
		}
	}
	nm := nmtest.Start(t)
	cl, _ := netmaker.NewClient(nm.URL, nm.Token, time.Second)
	inst := ctltest.Start(t, ctltest.Options{Spec: []byte(spec.String()), Netmaker: &netmakersync.Config{
		Client: cl, Every: 200 * time.Millisecond, Networks: map[string]netmaker.NetworkSpec{"r": {Name: "nm-r", AddressRange: "10.201.0.0/16"}}}})

	// netclient's interface, with its own key.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const iface = "smnmtest0"
	done := make(chan error, 1)
	go func() { done <- wg.RunUserspace(ctx, iface, 1420, slog.New(slog.DiscardHandler)) }()
	priv, _ := wgtypes.GeneratePrivateKey()
	wc, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	deadline := time.Now().Add(5 * time.Second)
	for wc.ConfigureDevice(iface, wgtypes.Config{PrivateKey: &priv}) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("netclient stand-in interface %s did not come up", iface)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer func() { cancel(); <-done }()
	want := netmap.Key(priv.PublicKey())
	before, _ := wc.Device(iface)

	// A weak node of the same cluster, to check the host is nobody's peer.
	other, _ := netmap.GeneratePrivateKey()
	if _, err := inst.Controller.Enroll(ctx, api.EnrollRequest{Token: inst.Token(t, api.CreateTokenRequest{Cluster: "r/c"}), Name: "n1", Role: "node",
		PublicKey: other.PublicKey(), CSR: testCSR(t), Endpoint: "192.0.2.1:51820"}, nil); err != nil {
		t.Fatal(err)
	}

	a, err := New(ctx, Config{Controller: inst.URL, Token: inst.Token(t, api.CreateTokenRequest{Cluster: "r/c", Role: netmap.RoleHost}),
		Name: "nmhost1", Role: netmap.RoleHost, DataDir: filepath.Join(root, "agent"), TPM: tp.URL,
		AttestOnly: true, KeyFromInterface: iface, StatusEvery: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	go a.Run(ctx)
	n, err := inst.Admin.Node(ctx, "nmhost1")
	if err != nil || n.Class != netmap.ClassStrong || n.Role != netmap.RoleHost || n.PublicKey != want {
		t.Fatalf("enrolled as %+v (%v), want a strong host with netclient's key %s", n, err, want)
	}
	if m, err := inst.Admin.NodeMap(ctx, "n1"); err != nil || len(m.Peers) != 0 {
		t.Errorf("a Netmaker host became a WireGuard peer: %+v %v", m.Peers, err)
	}
	if d, _ := wc.Device(iface); d.PublicKey != priv.PublicKey() || d.ListenPort != before.ListenPort || len(d.Peers) != 0 {
		t.Errorf("the agent touched netclient's interface: %+v", d)
	}
	nm.Register("nmhost1", want.String(), "nm-r", time.Now())
	deadline = time.Now().Add(10 * time.Second)
	for len(nm.HostNetworks("nmhost1")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the attested host was not approved in Netmaker")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(nm.Violations) != 0 {
		t.Errorf("contract violations: %v", nm.Violations)
	}
}

func testCSR(t *testing.T) string {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "n1"}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}
