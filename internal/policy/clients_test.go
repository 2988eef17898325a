package policy

import (
	"net/netip"
	"testing"
)

func TestClientBlocks(t *testing.T) {
	for _, tc := range []struct {
		r    string
		i    int
		want string
	}{
		{"100.64.16.0/20", 0, "100.64.16.0/24"},
		{"100.64.16.0/20", 1, "100.64.17.0/24"},
		{"100.64.16.0/20", 15, "100.64.31.0/24"},
		{"100.64.16.0/21", 3, "100.64.17.128/25"},
		{"fd00:0:0:1::/64", 0, "fd00:0:0:1::/68"},
		{"fd00:0:0:1::/64", 10, "fd00:0:0:1:a000::/68"},
	} {
		got := Block(netip.MustParsePrefix(tc.r), tc.i)
		if got.String() != tc.want {
			t.Errorf("Block(%s, %d) = %s, want %s", tc.r, tc.i, got, tc.want)
		}
	}
	// The blocks of a range are disjoint and inside it.
	r := netip.MustParsePrefix("100.66.16.0/20")
	seen := map[netip.Prefix]bool{}
	for i := range MaxClientSegments {
		b := Block(r, i)
		if !r.Contains(b.Addr()) || seen[b] {
			t.Fatalf("block %d = %s", i, b)
		}
		seen[b] = true
	}
	p := compile(t, policyYAML)
	if got := p.ClientSegments(); len(got) != 1 || got[0] != "ops" {
		t.Fatalf("client segments %v", got)
	}
	if b, ok := p.ClientBlock(r, "ops"); !ok || b.String() != "100.66.16.0/24" {
		t.Fatalf("ops block %s %v", b, ok)
	}
	if _, ok := p.ClientBlock(r, "web"); ok {
		t.Fatal("web takes no clients")
	}
}
