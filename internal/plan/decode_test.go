package plan

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// FuzzDecode: a plan read back from the store (plan.Decode) is refused or
// decodes into a plan whose addresses can be computed without a panic, and
// which encodes and decodes to itself.
func FuzzDecode(f *testing.F) {
	for _, file := range []string{"testdata/small.plan.json", "testdata/design-limit-ipv6.plan.json"} {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"mesh":"m","addressing":{"overlayIPv4":"100.64.0.0/10"},"regions":[{"name":"r","clusters":[{"name":"c","maxNodes":3,"overlayIPv4":"100.64.0.0/30","podIPv4":"10.0.0.0/31","nodeMaskIPv4":32}]}]}`))
	f.Add([]byte(`{"mesh":""}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Decode(data)
		if err != nil {
			return
		}
		for _, r := range p.Regions {
			p.Region(r.Name)
			for _, c := range r.Clusters {
				cl, ok := p.Cluster(r.Name, c.Name)
				if !ok {
					t.Fatalf("cluster %s/%s not found in its own plan", r.Name, c.Name)
				}
				for _, n := range []int{0, 1, cl.Slots() - 1, cl.Slots()} {
					cl.NodeAddresses(n)
				}
			}
		}
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatalf("a decoded plan does not encode: %v", err)
		}
		if _, err := Decode(b); err != nil {
			t.Fatalf("a decoded plan does not decode again: %v\n%s", err, b)
		}
	})
}

// TestDecodeRefusesImpossibleNodeMask pins a FuzzDecode finding: a plan
// record whose node mask lies outside its pod prefix decodes, and the
// first enrollment in that cluster panics in NodeAddresses (negative shift
// in nth). Decode should refuse it.
func TestDecodeRefusesImpossibleNodeMask(t *testing.T) {
	data := `{"mesh":"m","addressing":{"overlayIPv4":"100.64.0.0/10"},"regions":[{"name":"r","clusters":[{"name":"c","maxNodes":3,"podIPv6":"fd00::/8","nodeMaskIPv6":200}]}]}`
	p, err := Decode([]byte(data))
	if err == nil {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("Decode accepted a node mask of /200 in fd00::/8, and NodeAddresses panicked: %v", r)
			}
		}()
		p.Regions[0].Clusters[0].NodeAddresses(0)
		t.Fatal("Decode accepted a node mask of /200 in fd00::/8")
	}
	if !strings.Contains(err.Error(), "mask") {
		t.Errorf("the refusal does not name the mask: %v", err)
	}
}
