package controller

import (
	"context"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/store/bolt"
	"github.com/statemesh/statemesh/internal/topology"
)

// TestMapFieldsClassified: every NodeRecord field is either one a map
// depends on (a change must move the markers) or one none depends on; a
// new field must be put in one of the two lists, and sameMapFields must
// agree with them.
func TestMapFieldsClassified(t *testing.T) {
	mapFields := map[string]func(*NodeRecord){
		"Name":           func(n *NodeRecord) { n.Name += "x" },
		"Region":         func(n *NodeRecord) { n.Region += "x" },
		"Cluster":        func(n *NodeRecord) { n.Cluster += "x" },
		"Role":           func(n *NodeRecord) { n.Role = netmap.RoleOperator },
		"Class":          func(n *NodeRecord) { n.Class = "strong" },
		"State":          func(n *NodeRecord) { n.State = topology.StateQuarantined },
		"PublicKey":      func(n *NodeRecord) { n.PublicKey[0]++ },
		"Slot":           func(n *NodeRecord) { n.Slot++ },
		"OverlayIPv4":    func(n *NodeRecord) { n.OverlayIPv4 = n.OverlayIPv4.Next() },
		"OverlayIPv6":    func(n *NodeRecord) { n.OverlayIPv6 = netip.MustParseAddr("fd00::2") },
		"PodIPv4":        func(n *NodeRecord) { n.PodIPv4 = netip.MustParsePrefix("10.1.1.0/24") },
		"PodIPv6":        func(n *NodeRecord) { n.PodIPv6 = netip.MustParsePrefix("fd00:10:1::/64") },
		"Endpoint":       func(n *NodeRecord) { n.Endpoint = netip.MustParseAddrPort("192.0.2.2:51820") },
		"PublicEndpoint": func(n *NodeRecord) { n.PublicEndpoint = netip.MustParseAddrPort("198.51.100.2:51820") },
		"Labels":         func(n *NodeRecord) { n.Labels = map[string]string{"tier": "db"} },
	}
	otherFields := map[string]func(*NodeRecord){
		"TokenID":    func(n *NodeRecord) { n.TokenID += "x" },
		"EnrolledAt": func(n *NodeRecord) { n.EnrolledAt = n.EnrolledAt.Add(time.Hour) },
		"CertSerial": func(n *NodeRecord) { n.CertSerial[0]++ },
		"CertKey":    func(n *NodeRecord) { n.CertKey[0]++ },
		"AKArea":     func(n *NodeRecord) { n.AKArea = []byte{1} },
		"EKHash":     func(n *NodeRecord) { n.EKHash += "x" },
		"AttestedAt": func(n *NodeRecord) { n.AttestedAt = time.Now() },
		"Reason":     func(n *NodeRecord) { n.Reason += "x" },
	}
	for f := range reflect.TypeFor[NodeRecord]().Fields() {
		_, m := mapFields[f.Name]
		_, o := otherFields[f.Name]
		if m == o {
			t.Errorf("NodeRecord.%s: classify it as a field maps depend on (sameMapFields) or not (this test)", f.Name)
		}
	}
	base := func() *NodeRecord {
		return &NodeRecord{Name: "n", Region: "r", Cluster: "c", Role: netmap.RoleNode, Class: "weak", State: topology.StateActive,
			OverlayIPv4: netip.MustParseAddr("100.64.0.1"), OverlayIPv6: netip.MustParseAddr("fd00::1"),
			Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), Labels: map[string]string{"tier": "web"}}
	}
	for name, mutate := range mapFields {
		n := base()
		mutate(n)
		if sameMapFields(base(), n) {
			t.Errorf("a change of %s does not count as a map change", name)
		}
	}
	for name, mutate := range otherFields {
		n := base()
		mutate(n)
		if !sameMapFields(base(), n) {
			t.Errorf("a change of %s counts as a map change", name)
		}
	}
}

// TestMarkersOfWrites: the markers a transaction writes, over a real
// bbolt store, for the writes the controller makes.
func TestMarkersOfWrites(t *testing.T) {
	ctx := context.Background()
	node := func(name, cluster, role string) NodeRecord {
		return NodeRecord{Name: name, Region: "r", Cluster: cluster, Role: role, Class: "weak", State: topology.StateActive,
			OverlayIPv4: netip.MustParseAddr("100.64.0.1"), Endpoint: netip.MustParseAddrPort("192.0.2.1:51820")}
	}
	n1, gw := node("n1", "c", netmap.RoleNode), node("gw", "", netmap.RoleGateway)
	renewed := n1
	renewed.CertSerial[0] = 7
	quarantined := n1
	quarantined.State, quarantined.Reason = topology.StateQuarantined, "test"
	healthy := HealthRecord{Healthy: true, LastHeartbeat: time.Unix(100, 0)}
	beat := HealthRecord{Healthy: true, LastHeartbeat: time.Unix(200, 0)}
	put := func(k string, v []byte) func(store.Tx) error { return func(tx store.Tx) error { return tx.Put(k, v) } }
	del := func(k string) func(store.Tx) error { return func(tx store.Tx) error { return tx.Delete(k) } }
	for _, tc := range []struct {
		name string
		fn   func(store.Tx) error
		want []string
	}{
		{"join", put(nodeKey("n2"), encode(node("n2", "c", netmap.RoleNode))), []string{"cluster/r/c", "sets"}},
		{"renewal", put(nodeKey("n1"), encode(renewed)), nil},
		{"quarantine", put(nodeKey("n1"), encode(quarantined)), []string{"cluster/r/c", "sets"}},
		{"move", put(nodeKey("n1"), encode(node("n1", "d", netmap.RoleNode))), []string{"cluster/r/c", "cluster/r/d", "sets"}},
		{"removal", del(nodeKey("n1")), []string{"cluster/r/c", "sets"}},
		{"removal of a missing node", del(nodeKey("nobody")), nil},
		{"gateway join", put(nodeKey("gw2"), encode(node("gw2", "", netmap.RoleGateway))), []string{"gateways", "region/r", "sets"}},
		{"heartbeat", put(healthKey("gw"), encode(beat)), nil},
		{"gateway unhealthy", put(healthKey("gw"), encode(HealthRecord{Reason: "silent"})), []string{"gateways", "region/r", "sets"}},
		{"health of a gateway removed", del(healthKey("gw")), []string{"gateways", "region/r", "sets"}},
		{"spec", put(keySpec, encode(SpecRecord{YAML: "x"})), []string{"all"}},
		{"spec unchanged", put(keySpec, encode(SpecRecord{YAML: "spec"})), nil},
		{"client", put(prefixClients+"laptop", []byte(`{}`)), []string{"all"}},
		{"token", put(tokenKey("t"), []byte(`{}`)), nil},
		{"slot", put(slotKey("r", "c", 3), []byte(`{}`)), nil},
		{"join and renewal", func(tx store.Tx) error {
			if err := tx.Put(nodeKey("n1"), encode(renewed)); err != nil {
				return err
			}
			return tx.Put(nodeKey("gw2"), encode(node("gw2", "", netmap.RoleGateway)))
		}, []string{"gateways", "region/r", "sets"}},
		{"written and restored", func(tx store.Tx) error {
			if err := tx.Put(nodeKey("n1"), encode(quarantined)); err != nil {
				return err
			}
			return tx.Put(nodeKey("n1"), encode(n1))
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := bolt.Open(t.TempDir(), bolt.Options{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := st.Update(ctx, func(tx store.Tx) error {
				for k, v := range map[string][]byte{nodeKey("n1"): encode(n1), nodeKey("gw"): encode(gw), healthKey("gw"): encode(healthy),
					keySpec: encode(SpecRecord{YAML: "spec"})} {
					if err := tx.Put(k, v); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			rev, err := markingStore{st}.Update(ctx, tc.fn)
			if err != nil {
				t.Fatal(err)
			}
			kvs, _, err := st.List(ctx, prefixMapRev)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, kv := range kvs {
				if kv.ModRev == rev {
					got = append(got, strings.TrimPrefix(kv.Key, prefixMapRev))
				}
			}
			slices.Sort(got)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("markers written (-want +got):\n%s", diff)
			}
		})
	}
}

// TestFloorsByScope: a node's floor is the highest marker of the scopes
// its map depends on, and of none other.
func TestFloorsByScope(t *testing.T) {
	m := newMapRevs()
	for k, rev := range map[string]int64{keyMapRevAll: 10, keyMapRevGWs: 20, keyMapRevSets: 30, prefixMapRevReg + "r": 40,
		prefixMapRevClus + "r/c": 50, prefixMapRevClus + "r/d": 60, prefixMapRevClus + "q/c": 70, prefixMapRevReg + "q": 80} {
		if !m.set(k, rev) {
			t.Fatalf("%s not taken as a marker", k)
		}
	}
	if m.set(nodeKey("n"), 99) {
		t.Error("a node key taken as a marker")
	}
	for _, tc := range []struct {
		n    topology.Node
		want int64
	}{
		{topology.Node{Name: "a", Region: "r", Cluster: "c", Role: netmap.RoleNode}, 50},
		{topology.Node{Name: "b", Region: "r", Cluster: "d", Role: netmap.RoleNode}, 60},
		{topology.Node{Name: "c", Region: "r", Cluster: "e", Role: netmap.RoleNode}, 40},
		{topology.Node{Name: "g", Region: "r", Role: netmap.RoleGateway}, 60},
		{topology.Node{Name: "h", Region: "s", Role: netmap.RoleGateway}, 20},
		{topology.Node{Name: "i", Region: "s", Cluster: "c", Role: netmap.RoleNode}, 10},
	} {
		if got := m.floor(&tc.n); got != tc.want {
			t.Errorf("floor of %s (%s/%s %s) = %d, want %d", tc.n.Name, tc.n.Region, tc.n.Cluster, tc.n.Role, got, tc.want)
		}
	}
}

// TestUnmarkedChangeMarksEveryMap: a map change written past the
// controller (no marker) is noticed as it is published: the replica
// counts it and writes the marker of every map, so that a restart does
// not answer a resume from before it as current.
func TestUnmarkedChangeMarksEveryMap(t *testing.T) {
	c, ctx := runSmall(t, Config{})
	enroll(t, ctx, c, api.CreateTokenRequest{Cluster: "eu-central/prod"}, "n1", "node")
	if got := c.unmarked.Load(); got != 0 {
		t.Fatalf("%d unmarked revisions from the controller's own writes", got)
	}
	kv, err := c.cfg.Store.Get(ctx, nodeKey("n1"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := decode[NodeRecord](kv.Value)
	if err != nil {
		t.Fatal(err)
	}
	n.Endpoint = netip.MustParseAddrPort("192.0.2.77:51820")
	rev, err := c.cfg.Store.Update(ctx, func(tx store.Tx) error { return tx.Put(nodeKey("n1"), encode(n)) })
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		kv, err := c.cfg.Store.Get(ctx, keyMapRevAll)
		if err == nil && kv.ModRev > rev {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("marker of every map not written after unmarked revision %d: %+v %v", rev, kv, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := c.unmarked.Load(); got != 1 {
		t.Errorf("unmarked revisions: %d, want 1", got)
	}
}
