package netmaker_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmaker/nmtest"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/spec"
)

// policyYAML: web in eu/prod and us/prod, db (sensitive) in eu/data, and
// web may reach db on tcp/5432, tcp/6000-6010 and icmp.
const policyYAML = `
segments:
  - {name: web, match: {clusters: [eu/prod, us/prod]}}
  - {name: db, match: {clusters: [eu/data]}, sensitive: true}
rules:
  - {name: web-db, from: web, to: db, ports: ["tcp/5432", "tcp/6000-6010", icmp]}
`

var clusters = []netmaker.Cluster{{Region: "eu", Name: "prod", Network: "nm-eu"}, {Region: "eu", Name: "data", Network: "nm-eu"}, {Region: "us", Name: "prod", Network: "nm-us"}}

// clock is a settable clock shared by the reconciler and the test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// env is a contract-checking Netmaker, a reconciler and a desired state.
type env struct {
	t     *testing.T
	nm    *nmtest.Server
	c     *netmaker.Client
	r     *netmaker.Reconciler
	clock *clock
	d     netmaker.Desired
	keys  map[string]string // host name → WireGuard public key
}

func newEnv(t *testing.T, o nmtest.Options) *env {
	t.Helper()
	nm := nmtest.StartWith(t, o)
	c, err := netmaker.NewClient(nm.URL, nm.Token, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	c.Backoff, c.MaxBackoff = 5*time.Millisecond, 40*time.Millisecond
	c.Log = testLogger(t)
	clk := &clock{t: time.Now().Truncate(time.Second)}
	e := &env{t: t, nm: nm, c: c, clock: clk, keys: map[string]string{},
		r: &netmaker.Reconciler{C: c, Now: clk.Now, Log: testLogger(t)}}
	e.setPolicy(policyYAML)
	e.d.Networks = []netmaker.NetworkSpec{{Name: "nm-eu", AddressRange: "10.201.0.0/16", MTU: 1420}, {Name: "nm-us", AddressRange: "10.202.0.0/16", MTU: 1420}}
	e.d.Hosts, e.d.Removed, e.d.Refused = map[string]netmaker.Attested{}, map[string]time.Time{}, map[string]string{}
	e.d.Grace = time.Minute
	return e
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// setPolicy maps a policy (YAML; "" for none) into the desired state.
func (e *env) setPolicy(src string) {
	e.t.Helper()
	var pol *spec.Policy
	if src != "" {
		pol = &spec.Policy{}
		if err := yaml.Unmarshal([]byte(src), pol); err != nil {
			e.t.Fatal(err)
		}
	}
	acls, tags, err := netmaker.MapPolicy(pol, clusters)
	if err != nil {
		e.t.Fatal(err)
	}
	e.d.ACLs = acls
	gens := map[string]int{}
	for _, k := range e.d.Keys {
		gens[k.Region+"/"+k.Cluster] = k.Generation
	}
	e.d.Keys = nil
	for _, cl := range clusters {
		rc := cl.Region + "/" + cl.Name
		e.d.Keys = append(e.d.Keys, netmaker.KeySpec{Region: cl.Region, Cluster: cl.Name, Network: cl.Network, Tags: tags[rc], Generation: gens[rc]})
	}
}

func (e *env) reconcile() netmaker.Report {
	e.t.Helper()
	rep, err := e.r.Reconcile(context.Background(), e.d)
	if err != nil {
		e.t.Fatalf("reconcile: %v\nwrites: %v", err, rep.Writes)
	}
	return rep
}

// converged runs passes until one writes nothing, then checks that the
// next writes nothing either, at the server too.
func (e *env) converged() {
	e.t.Helper()
	e.reconcile()
	before := e.nm.WriteCount()
	rep := e.reconcile()
	if len(rep.Writes) != 0 || e.nm.WriteCount() != before {
		e.t.Fatalf("a second pass wrote %v (%d calls)", rep.Writes, e.nm.WriteCount()-before)
	}
}

// pubKey is a host's WireGuard public key (deterministic per name).
func (e *env) pubKey(host string) string {
	if k, ok := e.keys[host]; ok {
		return k
	}
	var b [32]byte
	copy(b[:], "wg-public-key-of-"+host)
	k := base64.StdEncoding.EncodeToString(b[:])
	e.keys[host] = k
	return k
}

// join is netclient on host joining with cluster's StateMesh key.
func (e *env) join(host, cluster string, rep netmaker.Report) []string {
	e.t.Helper()
	tok, ok := rep.Keys[cluster]
	if !ok {
		e.t.Fatalf("no key for %s in %v", cluster, rep.Keys)
	}
	ids, err := e.nm.Join(host, e.pubKey(host), tok.Reveal(), e.clock.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	return ids
}

// attest records host as an attested strong node of region/cluster.
func (e *env) attest(host, cluster string) {
	region, name, _ := strings.Cut(cluster, "/")
	e.d.Hosts[e.pubKey(host)] = netmaker.Attested{Node: host, Region: region, Cluster: name, Class: netmap.ClassStrong}
}

func (e *env) noViolations() {
	e.t.Helper()
	if len(e.nm.Violations) != 0 {
		e.t.Errorf("contract violations: %v", e.nm.Violations)
	}
}

// snapshot is the model as JSON-ish text, for "nothing changed" checks.
func (e *env) snapshot(filter func(kind, id string) bool) map[string]string {
	out := map[string]string{}
	e.nm.Do(func(m *nmtest.Model) {
		add := func(kind, id string, v any) {
			if filter(kind, id) {
				out[kind+" "+id] = fmt.Sprintf("%+v", v)
			}
		}
		for id, v := range m.Networks {
			add("network", id, *v)
		}
		for id, v := range m.Keys {
			add("key", id, *v)
		}
		for id, v := range m.Tags {
			add("tag", id, *v)
		}
		for id, v := range m.ACLs {
			add("acl", id, *v)
		}
		for id, v := range m.Nodes {
			add("node", id, *v)
		}
		for id, v := range m.Hosts {
			add("host", id, *v)
		}
	})
	return out
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }
