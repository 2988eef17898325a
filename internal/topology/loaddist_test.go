package topology

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
)

// TestLoadDistribution measures what issue 20 asks of load distribution:
// how 10 clusters of a region spread over 2, 3 and 4 gateways (rendezvous
// hashing of "cluster:NAME", as region.designated does), what moves when
// a gateway dies, and what moves when it returns. It checks the two
// properties failover relies on — a death moves only the dead gateway's
// clusters, and a return restores exactly the designation before (the
// hashing is stateless: the returning gateway takes back its clusters and
// nothing else moves) — and prints the table docs/topology.md quotes:
//
//	go test -run TestLoadDistribution -v ./internal/topology
func TestLoadDistribution(t *testing.T) {
	var clusters []string
	for i := 1; i <= 10; i++ {
		clusters = append(clusters, fmt.Sprintf("c%d", i))
	}
	designate := func(gws []string) map[string]string {
		out := map[string]string{}
		for _, c := range clusters {
			out[c] = Rendezvous("cluster:"+c, gws)
		}
		return out
	}
	spread := func(d map[string]string, gws []string) string {
		var parts []string
		for _, g := range gws {
			n := 0
			for _, v := range d {
				if v == g {
					n++
				}
			}
			parts = append(parts, fmt.Sprintf("%s:%d", g, n))
		}
		return strings.Join(parts, " ")
	}
	var table strings.Builder
	table.WriteString("| gateways | clusters per gateway | gateway lost | clusters that move | after its return |\n|---|---|---|---|---|\n")
	for n := 2; n <= 4; n++ {
		var gws []string
		for i := 1; i <= n; i++ {
			gws = append(gws, fmt.Sprintf("gw%d", i))
		}
		before := designate(gws)
		for _, dead := range gws {
			left := slices.DeleteFunc(slices.Clone(gws), func(g string) bool { return g == dead })
			after := designate(left)
			moved, had := 0, 0
			for _, c := range clusters {
				if before[c] == dead {
					had++
				}
				if after[c] != before[c] {
					moved++
					if before[c] != dead {
						t.Errorf("%d gateways, %s lost: %s moved from %s, which is alive", n, dead, c, before[c])
					}
				}
			}
			if moved != had {
				t.Errorf("%d gateways, %s lost: %d clusters moved, it had %d", n, dead, moved, had)
			}
			back := designate(gws)
			if !maps.Equal(back, before) {
				t.Errorf("%d gateways: after %s returned the designation differs from before", n, dead)
			}
			fmt.Fprintf(&table, "| %d | %s | %s | %d (all %s's, spread: %s) | all %d back to %s, nothing else moves |\n",
				n, spread(before, gws), dead, moved, dead, spread(after, left), had, dead)
		}
	}
	t.Logf("10 clusters of one region:\n%s", table.String())
}
