package agent

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/statemesh/statemesh/internal/netmap"
)

func sampleMap() netmap.Map {
	k1, _ := netmap.GeneratePrivateKey()
	k2, _ := netmap.GeneratePrivateKey()
	return netmap.Map{Revision: 7, Self: netmap.Self{Name: "n1", Region: "r", Role: "node"},
		Interface: netmap.Interface{Name: "sm0", Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.32.1/32")}, MTU: 1440, ListenPort: 51820},
		Peers: []netmap.Peer{
			{Name: "n2", PublicKey: k1.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.32.2/32")}},
			{Name: "n3", PublicKey: k2.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.32.3/32")}},
		}}.Normalize()
}

// A saved map that is corrupt, truncated or self-contradictory is refused
// (the agent then resyncs from the controller) instead of being applied.
func TestCorruptStateFileIsRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, MapFile)
	good, _ := json.Marshal(sampleMap())
	os.WriteFile(path, good, 0o600)
	if m, err := loadMap(path); err != nil || m.Revision != 7 || len(m.Peers) != 2 {
		t.Fatalf("a good map: %+v %v", m, err)
	}
	dup := sampleMap()
	dup.Peers[1].AllowedIPs = dup.Peers[0].AllowedIPs
	dupJSON, _ := json.Marshal(dup)
	for name, data := range map[string][]byte{
		"truncated":       good[:len(good)/2],
		"garbage":         []byte("\x00\x01 not json"),
		"empty object":    []byte("{}"),
		"prefix twice":    dupJSON,
		"long iface name": []byte(strings.Replace(string(good), `"sm0"`, `"an-interface-name-too-long"`, 1)),
	} {
		os.WriteFile(path, data, 0o600)
		if m, err := loadMap(path); err == nil {
			t.Errorf("%s: loaded %+v", name, m)
		} else if !strings.Contains(err.Error(), path) {
			t.Errorf("%s: the error does not name the file: %v", name, err)
		}
	}
}

func FuzzLoadMap(f *testing.F) {
	good, _ := json.Marshal(sampleMap())
	f.Add(good)
	f.Add([]byte("{}"))
	f.Add([]byte(`{"self":{"name":"x"},"interface":{"name":"sm0"},"peers":[{"name":"a"},{"name":"a"}]}`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "m.json")
		os.WriteFile(path, data, 0o600)
		m, err := loadMap(path)
		if err == nil {
			if verr := m.Validate(); verr != nil {
				t.Fatalf("loaded a map that does not validate: %v", verr)
			}
		}
	})
}

// An enrollment retried after a crash or a lost answer signs with the key
// of the first attempt: the controller takes it as the proof that the
// retry is the same node.
func TestPendingEnrollKeySurvivesRetries(t *testing.T) {
	path := filepath.Join(t.TempDir(), EnrollKeyFile)
	first, err := pendingEnrollKey(path)
	if err != nil {
		t.Fatal(err)
	}
	again, err := pendingEnrollKey(path)
	if err != nil || again != first {
		t.Fatalf("second attempt got another key (%v)", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("pending key file: %v %v, want mode 600", fi, err)
	}
}
