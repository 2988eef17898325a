package fault_test

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/apiclient"
	"github.com/statemesh/statemesh/internal/ctltest"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/secrets"
	"github.com/statemesh/statemesh/internal/store/etcd/etcdtest"
)

// metric returns the sum of a series' samples from a controller process's
// /metrics (labels ignored).
func (p *controllerProc) metric(t testing.TB, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// TestStreamsTwoReplicasEtcd: two controller replicas over etcd, each
// holding STATEMESH_STREAMS_PER_REPLICA watch streams (default 300) of
// agents in a client process of its own (this test binary re-executed);
// clusters of STATEMESH_STREAMS_CLUSTER nodes (default 5,000, or what
// fits), the first one's streams split over both replicas. One node joins
// the first cluster through replica A. It records each replica's RSS per
// stream, the join's delay until every stream of the cluster (on both
// replicas) decoded it, and when each replica finished writing it, and
// checks that every stream got it.
func TestStreamsTwoReplicasEtcd(t *testing.T) {
	if ctltest.RunStreamClients(t) {
		return
	}
	if testing.Short() {
		t.Skip("load test: skipped with -short")
	}
	per := 300
	if v := os.Getenv("STATEMESH_STREAMS_PER_REPLICA"); v != "" {
		per, _ = strconv.Atoi(v)
	}
	size := min(5000, 2*per)
	if v := os.Getenv("STATEMESH_STREAMS_CLUSTER"); v != "" {
		size, _ = strconv.Atoi(v)
	}
	// Cluster 0 has size-1 streams (half on each replica) and the joiner;
	// the other clusters are spread so each replica holds per streams.
	half := (size - 1) / 2
	counts := [2][]int{{half}, {size - 1 - half}}
	for r := range 2 {
		for left := per - counts[r][0]; left > 0; {
			n := min(left, size/2)
			counts[r] = append(counts[r], n)
			left -= n
		}
	}
	clusters := max(len(counts[0]), len(counts[1]))
	var spec strings.Builder
	spec.WriteString("apiVersion: statemesh.dev/v1alpha1\nkind: Mesh\nmetadata: {name: streams}\naddressing: {podIPv6: [\"fd00:10::/48\"]}\nregions:\n")
	for i := range clusters {
		if i%10 == 0 {
			fmt.Fprintf(&spec, "  - name: r%d\n    clusters:\n", i/10)
		}
		fmt.Fprintf(&spec, "      - {name: c%d, maxNodes: %d}\n", i%10, size)
	}
	ctx := bounded(t, time.Hour)
	cluster := etcdtest.Start(t, 1)
	kek := filepath.Join(t.TempDir(), "kek")
	if _, err := secrets.CreateFile(kek); err != nil {
		t.Fatal(err)
	}
	opts := procOptions{etcd: cluster.Endpoints(), etcdPrefix: "/streams/", kekFile: kek, metrics: true}
	aOpts := opts
	aOpts.spec = spec.String()
	reps := []*controllerProc{startController(t, "a", aOpts), startController(t, "b", opts)}
	admin := adminClient(t, adminConfig(t, reps[0].dataDir, reps[0].URL()))
	var tokens []string
	for i := range clusters {
		tok, err := admin.CreateToken(ctx, api.CreateTokenRequest{Cluster: fmt.Sprintf("r%d/c%d", i/10, i%10), Uses: size + 1})
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, tok.Secret)
	}
	os.Setenv("STATEMESH_BIN", statemeshBin) // the client processes build nothing
	var clients []*ctltest.StreamClients
	for r, p := range reps {
		clients = append(clients, ctltest.StartStreamClients(t, "TestStreamsTwoReplicasEtcd", ctltest.StreamClientsConfig{
			URLs: []string{p.URL()}, Tokens: tokens[:len(counts[r])], Counts: counts[r], Prefix: p.name, Joiner: "joiner", Workers: 16}))
	}
	start := time.Now()
	for _, c := range clients {
		c.Expect(t, "ENROLLED", 50*time.Minute)
	}
	t.Logf("%d nodes enrolled through two replicas in %s", 2*per, time.Since(start).Round(time.Millisecond))
	var before []int64
	for _, p := range reps {
		rss, _ := rssBytes(p.pid())
		before = append(before, rss)
	}
	st, err := admin.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Both replicas must have caught up to the revision streams resume from.
	deadline := time.Now().Add(time.Minute)
	for _, p := range reps {
		for p.metric(t, "statemesh_registry_revision") < float64(st.Revision) {
			if time.Now().After(deadline) {
				t.Fatalf("replica %s is behind revision %d", p.name, st.Revision)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	start = time.Now()
	for _, c := range clients {
		c.Send("OPEN %d", st.Revision)
	}
	for _, c := range clients {
		c.Expect(t, "READY", 50*time.Minute)
	}
	t.Logf("%d streams opened in %s", 2*per, time.Since(start).Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	for i, p := range reps {
		if n := p.metric(t, "statemesh_watch_streams"); int(n) != per {
			t.Fatalf("replica %s holds %v streams, want %d", p.name, n, per)
		}
		rss, _ := rssBytes(p.pid())
		t.Logf("FIGURE replica %s: %d streams, RSS %d → %d MiB (%.1f KiB per stream)", p.name, per, before[i]>>20, rss>>20, float64(rss-before[i])/1024/float64(per))
	}

	t0 := time.Now()
	for _, c := range clients {
		c.Send("JOIN %d", t0.UnixNano())
	}
	k, _ := netmap.GeneratePrivateKey()
	if _, err := apiclient.Enroll(ctx, reps[0].URL(), tokens[0], api.EnrollRequest{Name: "joiner", Role: "node", PublicKey: k.PublicKey(), Endpoint: "192.0.2.2:51820"}); err != nil {
		t.Fatal(err)
	}
	enrolled := time.Since(t0)
	var all []time.Duration
	var byReplica []string
	for i, c := range clients {
		got := ctltest.Arrivals(c.Expect(t, "RESULT", 2*time.Minute))
		all = append(all, got...)
		if len(got) > 0 {
			got = slices.Sorted(slices.Values(got))
			byReplica = append(byReplica, fmt.Sprintf("%s's streams first %s p50 %s last %s", reps[i].name, got[0].Round(time.Millisecond), got[len(got)/2].Round(time.Millisecond), got[len(got)-1].Round(time.Millisecond)))
		}
	}
	t.Logf("by replica: %s", strings.Join(byReplica, "; "))
	if len(all) != size-1 {
		t.Fatalf("%d streams got the join, want %d", len(all), size-1)
	}
	slices.Sort(all)
	var ctl []string
	for _, p := range reps {
		at := time.Unix(0, int64(p.metric(t, "statemesh_watch_last_write_timestamp_seconds")*1e9))
		ctl = append(ctl, fmt.Sprintf("%s %s", p.name, at.Sub(t0).Round(time.Millisecond)))
	}
	t.Logf("FIGURE join to the %d streams of its cluster over two replicas (etcd): p50 %s p99 %s max %s; last frame written (controller side): %s; the joiner's enrollment answered after %s (all from the enrollment's start)",
		size-1, all[len(all)/2].Round(time.Microsecond), all[len(all)*99/100].Round(time.Microsecond), all[len(all)-1].Round(time.Microsecond), strings.Join(ctl, ", "), enrolled.Round(time.Millisecond))
}
