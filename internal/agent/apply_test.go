package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/dataplane/firewall"
	"github.com/statemesh/statemesh/internal/dataplane/wg"
	"github.com/statemesh/statemesh/internal/netmap"
)

// The apply logic without a kernel: frames from the controller in, what
// the data plane is told to do out (fakeDevice, fakeFirewall).

// fakeDevice is a WireGuard device in memory. It checks the agent's
// promise for deltas: ApplyDelta is called only when the device holds prev.
type fakeDevice struct {
	mu      sync.Mutex
	state   netmap.Map
	full    int
	deltas  int
	broken  []string // deltas sent to a device that did not hold their prev
	fail    bool
	history []int64 // revisions applied, in order
}

func (d *fakeDevice) Apply(_ context.Context, desired, _ netmap.Map) (wg.Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail {
		return wg.Result{}, errors.New("device refused")
	}
	d.full++
	d.state = desired
	d.history = append(d.history, desired.Revision)
	return wg.Result{}, nil
}

func (d *fakeDevice) ApplyDelta(_ context.Context, prev, next netmap.Map, _ netmap.Delta) (wg.Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail {
		return wg.Result{}, errors.New("device refused")
	}
	if !samePeers(d.state, prev) {
		d.broken = append(d.broken, fmt.Sprintf("delta to revision %d sent to a device at revision %d", next.Revision, d.state.Revision))
	}
	d.deltas++
	d.state = next
	d.history = append(d.history, next.Revision)
	return wg.Result{}, nil
}

func (d *fakeDevice) Status() ([]wg.PeerStatus, error) { return nil, nil }
func (d *fakeDevice) Mode() string                     { return "fake" }
func (d *fakeDevice) Close() error                     { return nil }

func (d *fakeDevice) peers() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, p := range d.state.Peers {
		out = append(out, p.Name)
	}
	return out
}

func samePeers(a, b netmap.Map) bool {
	return slices.EqualFunc(a.Peers, b.Peers, func(x, y netmap.Peer) bool { return x.Name == y.Name && x.PublicKey == y.PublicKey })
}

// fakeFirewall records what the firewall was told.
type fakeFirewall struct {
	mu          sync.Mutex
	full, sets  int
	lastPeerIPs []netip.Addr
}

func (f *fakeFirewall) Apply(_ context.Context, s firewall.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.full++
	f.lastPeerIPs = s.Peers
	return nil
}
func (f *fakeFirewall) ApplySets(context.Context, map[string][]netip.Prefix, map[string][]netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sets++
	return nil
}
func (f *fakeFirewall) Check(context.Context) error { return nil }

// testAgent is an agent over fakes, as New leaves it before Run.
func testAgent(t *testing.T) (*Agent, *fakeDevice, *fakeFirewall) {
	cfg := Config{DataDir: t.TempDir(), Name: "n1"}
	cfg.setDefaults()
	a := newAgent(cfg)
	dev, fw := &fakeDevice{}, &fakeFirewall{}
	a.open = func(wg.Config) (meshDevice, error) { return dev, nil }
	a.fw = fw
	a.route = func(context.Context, netmap.Map) {}
	return a, dev, fw
}

func peer(name string, n int) netmap.Peer {
	k, _ := netmap.GeneratePrivateKey()
	return netmap.Peer{Name: name, PublicKey: k.PublicKey(), Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(n)}), 51820),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 32, byte(n)}), 32)}}
}

func snapshot(rev int64, peers ...netmap.Peer) api.Frame {
	m := sampleMap()
	m.Revision, m.Peers = rev, peers
	m = m.Normalize()
	return api.Frame{Type: api.FrameSnapshot, Revision: rev, Map: &m}
}

func delta(rev int64, upsert []netmap.Peer, remove ...string) api.Frame {
	return api.Frame{Type: api.FrameDelta, Revision: rev, Delta: &netmap.Delta{Revision: rev, Upsert: upsert, Remove: remove}}
}

func TestFramesApply(t *testing.T) {
	ctx := context.Background()
	a, dev, fw := testAgent(t)
	p2, p3, p4 := peer("n2", 2), peer("n3", 3), peer("n4", 4)

	// A snapshot is applied in full.
	if err := a.onFrame(ctx, snapshot(10, p2, p3)); err != nil {
		t.Fatal(err)
	}
	if dev.full != 1 || !slices.Equal(dev.peers(), []string{"n2", "n3"}) || a.Applied().Revision != 10 {
		t.Fatalf("after the snapshot: full=%d peers=%v applied=%d", dev.full, dev.peers(), a.Applied().Revision)
	}
	if fw.full != 1 || len(fw.lastPeerIPs) != 2 {
		t.Errorf("the firewall after the snapshot: %d applies, peers %v", fw.full, fw.lastPeerIPs)
	}

	// A delta is applied as a delta: only its operations.
	if err := a.onFrame(ctx, delta(11, []netmap.Peer{p4}, "n2")); err != nil {
		t.Fatal(err)
	}
	if dev.deltas != 1 || dev.full != 1 || !slices.Equal(dev.peers(), []string{"n3", "n4"}) || a.Applied().Revision != 11 {
		t.Fatalf("after the delta: deltas=%d full=%d peers=%v applied=%d", dev.deltas, dev.full, dev.peers(), a.Applied().Revision)
	}

	// The same delta again (a duplicate frame): nothing changes.
	if err := a.onFrame(ctx, delta(11, []netmap.Peer{p4}, "n2")); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(dev.peers(), []string{"n3", "n4"}) || a.Applied().Revision != 11 {
		t.Errorf("after a duplicate delta: peers=%v applied=%d", dev.peers(), a.Applied().Revision)
	}

	// An older delta (out of order): ignored.
	applied := len(dev.history)
	if err := a.onFrame(ctx, delta(9, []netmap.Peer{p2})); err != nil {
		t.Fatal(err)
	}
	if len(dev.history) != applied || slices.Contains(dev.peers(), "n2") || a.Applied().Revision != 11 {
		t.Errorf("an older delta was applied: history %v peers %v", dev.history, dev.peers())
	}

	// Pings and unknown frames change nothing.
	if err := a.onFrame(ctx, api.Frame{Type: "ping", Revision: 12}); err != nil || len(dev.history) != applied {
		t.Errorf("a ping: %v, history %v", err, dev.history)
	}
	if len(dev.broken) > 0 {
		t.Errorf("deltas sent to a device that did not hold their base: %v", dev.broken)
	}
	// Frames that lie are refused, not applied.
	if err := a.onFrame(ctx, api.Frame{Type: api.FrameSnapshot, Revision: 13}); err == nil {
		t.Error("a snapshot without a map was accepted")
	}
	if err := a.onFrame(ctx, api.Frame{Type: api.FrameDelta, Revision: 13}); err == nil {
		t.Error("a delta without a delta was accepted")
	}
}

// After a failed apply, the next delta is not applied as a delta (the
// device does not hold the map the delta is relative to): a full apply
// repairs it.
func TestDeltaAfterAFailedApplyIsAppliedInFull(t *testing.T) {
	ctx := context.Background()
	a, dev, _ := testAgent(t)
	p2, p3 := peer("n2", 2), peer("n3", 3)
	a.onFrame(ctx, snapshot(10, p2))
	dev.fail = true
	a.onFrame(ctx, delta(11, []netmap.Peer{p3})) // fails; the reconcile loop would retry
	if a.Applied().Revision != 10 {
		t.Fatalf("a failed apply moved the applied map to %d", a.Applied().Revision)
	}
	dev.fail = false
	a.onFrame(ctx, delta(12, nil, "n2"))
	if dev.full != 2 || len(dev.broken) > 0 {
		t.Errorf("after a failure: %d full applies (want 2), broken deltas %v", dev.full, dev.broken)
	}
	if !slices.Equal(dev.peers(), []string{"n3"}) || a.Applied().Revision != 12 {
		t.Errorf("peers %v at revision %d, want [n3] at 12", dev.peers(), a.Applied().Revision)
	}
}

// A quarantined node's agent drops its peers and asks for a snapshot
// after release.
func TestQuarantineDropsPeers(t *testing.T) {
	ctx := context.Background()
	a, dev, _ := testAgent(t)
	a.onFrame(ctx, snapshot(10, peer("n2", 2), peer("n3", 3)))
	a.quarantined(ctx, &api.Error{Code: api.CodeQuarantined, Message: "quarantined by admin"})
	if len(dev.peers()) != 0 {
		t.Errorf("a quarantined node keeps peers %v", dev.peers())
	}
	a.mu.Lock()
	rev := a.cur.Revision
	a.mu.Unlock()
	if rev != 0 {
		t.Errorf("after quarantine the agent resumes from revision %d, want 0 (a snapshot)", rev)
	}
}

// selfSigned writes a certificate and key good enough for a TLS client.
func selfSigned(t *testing.T) (certPEM, keyPEM string) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "n1"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
}

// A restart while the controller is down: the agent applies the map it
// saved, and the data plane keeps it while the controller stays away.
func TestRestartWithTheControllerDown(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t)
	id := apiclient.Identity{Server: "https://127.0.0.1:1", Node: api.Node{Name: "n1", Region: "r", Role: "node"}, CA: cert, CertPEM: cert, KeyPEM: key}
	b, _ := json.Marshal(id)
	if err := os.WriteFile(filepath.Join(dir, IdentityFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	saved := sampleMap()
	b, _ = json.Marshal(saved)
	if err := os.WriteFile(filepath.Join(dir, MapFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := New(ctx, Config{DataDir: dir, Name: "n1", NoFirewall: true, ProbeEvery: -1, ReconcileEvery: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	dev := &fakeDevice{}
	a.open = func(wg.Config) (meshDevice, error) { return dev, nil }
	a.route = func(context.Context, netmap.Map) {}
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for len(dev.peers()) != 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := dev.peers(); !slices.Equal(got, []string{"n2", "n3"}) {
		t.Fatalf("after a restart with the controller down the device has peers %v, want the saved map's [n2 n3]", got)
	}
	time.Sleep(600 * time.Millisecond) // reconcile passes and watch retries
	if got := dev.peers(); !slices.Equal(got, []string{"n2", "n3"}) || a.Applied().Revision != saved.Revision {
		t.Errorf("while the controller is down: peers %v at revision %d, want the saved map kept", got, a.Applied().Revision)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not end with its context")
	}
}
