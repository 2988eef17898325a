package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/statemesh/statemesh/internal/policy"
	"github.com/statemesh/statemesh/internal/spec"
)

// Endpoint is a probe source or target: a node or a pod, at one of its
// addresses (one endpoint per family: IPv6 ones are named NAME/v6).
type Endpoint struct {
	Name    string
	Host    *Host
	Pod     bool
	Client  *Client // an external client: a source only
	Addr    string
	IPv6    bool
	execPre []string
}

// v6Suffix names an endpoint's IPv6 address.
const v6Suffix = "/v6"

// family names an endpoint's address family in the summary.
func (e *Endpoint) family() string {
	if e.IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// Category of a pair.
func category(a, b *Host) string {
	switch {
	case a.Region != b.Region:
		return "across regions"
	case a.Cluster != b.Cluster:
		return "across clusters"
	}
	return "within a cluster"
}

// Matrix is a measured reachability matrix, with what the policy expects.
type Matrix struct {
	Endpoints []string
	Results   []ProbeResult
	kinds     map[string]*Endpoint
	// Expected holds the policy's verdict per probe; nil: all reachable.
	Expected map[[2]string]Expect
}

// Expect is the policy's verdict for one pair.
type Expect struct {
	ICMP, TCP bool
	Why       string
}

func (m *Matrix) expect(r ProbeResult) Expect {
	if m.Expected == nil {
		return Expect{ICMP: true, TCP: true, Why: "no policy"}
	}
	return m.Expected[[2]string{r.From, r.To}]
}

// Failures counts probes whose result differs from the expected one:
// allowed traffic that did not get through, or denied traffic that did.
func (m *Matrix) Failures() int {
	n := 0
	for _, r := range m.Results {
		e := m.expect(r)
		if r.ICMP != e.ICMP || r.TCP != e.TCP {
			n++
		}
	}
	return n
}

// FirstFailure describes the first probe that differs from the policy, or "".
func (m *Matrix) FirstFailure() string {
	for _, r := range m.Results {
		e := m.expect(r)
		if r.ICMP != e.ICMP || r.TCP != e.TCP {
			return fmt.Sprintf("%s -> %s icmp=%v tcp=%v, want icmp=%v tcp=%v (%s)", r.From, r.To, r.ICMP, r.TCP, e.ICMP, e.TCP, e.Why)
		}
	}
	return ""
}

// CheckOptions tune a check.
type CheckOptions struct {
	Timeout time.Duration
	// Only probe from these endpoints (default all).
	From []string
}

// endpoints are the lab's probe endpoints: every node and pod at each of
// its addresses, every client at each of its own. IPv4 ones keep the
// names they have in an IPv4 lab; IPv6 ones end in /v6.
func (l *Lab) endpoints() []*Endpoint {
	var eps []*Endpoint
	add := func(e Endpoint, a netip.Addr) {
		if !a.IsValid() {
			return
		}
		e.Addr, e.IPv6 = a.String(), a.Is6()
		if e.IPv6 {
			e.Name += v6Suffix
		}
		eps = append(eps, &e)
	}
	for _, h := range l.State.Hosts {
		if h.Role == "gateway" || (!h.Overlay.IsValid() && !h.Overlay6.IsValid()) || h.Removed {
			continue
		}
		node := Endpoint{Name: h.Name, Host: h, execPre: nsenterArgs(l.State.Holders[h.Name])}
		pod := Endpoint{Name: h.Name + "/pod", Host: h, Pod: true, execPre: []string{"ip", "netns", "exec", h.PodNS()}}
		add(node, h.Overlay)
		add(pod, h.PodIP)
		add(node, h.Overlay6)
		add(pod, h.PodIP6)
	}
	for _, c := range l.State.Clients {
		cl := Endpoint{Name: "client " + c.Name, Client: c, execPre: nsenterArgs(l.State.Holders[c.HolderKey()])}
		add(cl, c.Address)
		add(cl, c.Address6)
	}
	return eps
}

// probes reports whether src probes dst: node to node and pod to pod,
// within one address family; clients probe every node and pod and are
// probed by none (they run no StateMesh firewall).
func probes(src, dst *Endpoint) bool {
	switch {
	case src == dst || dst.Client != nil || src.IPv6 != dst.IPv6:
		return false
	case src.Client != nil:
		return true
	}
	return dst.Pod == src.Pod
}

// newMatrix is an empty matrix over eps.
func newMatrix(eps []*Endpoint) *Matrix {
	m := &Matrix{kinds: map[string]*Endpoint{}}
	for _, e := range eps {
		m.Endpoints = append(m.Endpoints, e.Name)
		m.kinds[e.Name] = e
	}
	return m
}

// Check probes every endpoint from every endpoint of the same kind (node
// to node, pod to pod) with ICMP and TCP, from inside the source's
// namespace, and returns the measured matrix. A check that could not
// probe every pair the lab should have is an error (ErrIncompleteCheck,
// ErrNothingToProbe; see complete): it never passes with fewer probes.
func (l *Lab) Check(ctx context.Context, opts CheckOptions) (*Matrix, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Second
	}
	eps := l.endpoints()
	m := newMatrix(eps)
	exp, err := l.expectations(ctx, eps)
	if err != nil {
		return nil, err
	}
	m.Expected = exp
	var mu sync.Mutex
	var wg sync.WaitGroup
	var firstErr error
	sem := make(chan struct{}, 8)
	for _, src := range eps {
		if len(opts.From) > 0 && !slices.Contains(opts.From, src.Name) {
			continue
		}
		var targets []string
		for _, dst := range eps {
			if probes(src, dst) {
				targets = append(targets, dst.Name+"="+dst.Addr)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			argv := append(append([]string{}, src.execPre...), l.State.Config.Binary, "lab", "probe", "--from", src.Name,
				"--port", strconv.Itoa(servePort), "--timeout", opts.Timeout.String())
			for _, t := range targets {
				argv = append(argv, "--target", t)
			}
			out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("probing from %s: %w", src.Name, err)
				}
				return
			}
			var rs []ProbeResult
			if err := json.Unmarshal(out, &rs); err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("probe output from %s: %w", src.Name, err)
				}
				return
			}
			m.Results = append(m.Results, rs...)
		}()
	}
	wg.Wait()
	slices.SortFunc(m.Results, func(a, b ProbeResult) int {
		if c := strings.Compare(a.From, b.From); c != 0 {
			return c
		}
		return strings.Compare(a.To, b.To)
	})
	if firstErr != nil {
		return m, firstErr
	}
	return m, m.complete(wantEndpoints(l.State), opts.From)
}

// Print writes the summary by category and the full matrix.
func (m *Matrix) Print(w io.Writer) {
	type agg struct{ ok, total int }
	cats := map[string]*agg{}
	var order []string
	for _, r := range m.Results {
		a, b := m.kinds[r.From], m.kinds[r.To]
		var key string
		switch {
		case a.Client != nil && b.Pod:
			key = "client→pod"
		case a.Client != nil:
			key = "client→node"
		case a.Pod:
			key = "pod↔pod " + category(a.Host, b.Host)
		default:
			key = "node↔node " + category(a.Host, b.Host)
		}
		key = a.family() + " " + key
		if cats[key] == nil {
			cats[key] = &agg{}
			order = append(order, key)
		}
		cats[key].total++
		e := m.expect(r)
		if r.ICMP == e.ICMP && r.TCP == e.TCP && (!r.TCP || strings.HasPrefix(r.Peer, b.Host.Name)) {
			cats[key].ok++
		}
	}
	slices.Sort(order)
	allowed, denied := 0, 0
	for _, r := range m.Results {
		if e := m.expect(r); e.ICMP || e.TCP {
			allowed++
		} else {
			denied++
		}
	}
	fmt.Fprintf(w, "REACHABILITY (ICMP echo and TCP connect to port %d, from inside each source's namespace; %s)\n", servePort, m.familiesProbed())
	fmt.Fprintf(w, "  the policy allows %d of the %d probed pairs and denies %d\n", allowed, len(m.Results), denied)
	for _, k := range order {
		status := "as expected"
		if cats[k].ok != cats[k].total {
			status = "MISMATCH"
		}
		fmt.Fprintf(w, "  %-32s %4d/%-4d %s\n", k, cats[k].ok, cats[k].total, status)
	}
	fmt.Fprintln(w)
	// Full matrix: rows are sources, columns targets (by index).
	fmt.Fprintln(w, "MATRIX (row → column; ✓ both answered, I only ICMP, T only TCP, - neither; a trailing ! marks a result the policy did not expect; · self/other kind)")
	idx := map[string]int{}
	for i, e := range m.Endpoints {
		idx[e] = i
		fmt.Fprintf(w, "  %2d  %s (%s)\n", i, e, m.kinds[e].Addr)
	}
	cell := map[[2]int]string{}
	for _, r := range m.Results {
		c := "-"
		switch {
		case r.ICMP && r.TCP:
			c = "✓"
		case r.ICMP:
			c = "I"
		case r.TCP:
			c = "T"
		}
		if e := m.expect(r); e.ICMP != r.ICMP || e.TCP != r.TCP {
			c += "!"
		} else {
			c += " "
		}
		cell[[2]int{idx[r.From], idx[r.To]}] = c
	}
	fmt.Fprint(w, "     ")
	for j := range m.Endpoints {
		fmt.Fprintf(w, "%3d", j%100)
	}
	fmt.Fprintln(w)
	for i := range m.Endpoints {
		fmt.Fprintf(w, "  %2d ", i)
		for j := range m.Endpoints {
			c, ok := cell[[2]int{i, j}]
			if !ok {
				c = "· "
			}
			fmt.Fprintf(w, " %s", c)
		}
		fmt.Fprintln(w)
	}
	for _, r := range m.Results {
		if e := m.expect(r); e.ICMP != r.ICMP || e.TCP != r.TCP {
			fmt.Fprintf(w, "MISMATCH %s → %s: measured icmp=%v tcp=%v, policy expects icmp=%v tcp=%v (%s) %s\n", r.From, r.To, r.ICMP, r.TCP, e.ICMP, e.TCP, e.Why, r.Error)
		}
	}
}

// expectations computes the policy's verdict for every probed pair from
// the spec in force and the nodes' classes and labels.
func (l *Lab) expectations(ctx context.Context, eps []*Endpoint) (map[[2]string]Expect, error) {
	if l.Admin == nil {
		return nil, nil
	}
	text, err := l.Admin.Spec(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the spec: %w", err)
	}
	m, err := spec.Parse([]byte(text))
	if err != nil {
		return nil, err
	}
	pol, err := policy.Compile(m.Policy)
	if err != nil || pol == nil {
		return nil, err
	}
	nodes, err := l.Admin.Nodes(ctx, "", "")
	if err != nil {
		return nil, err
	}
	byName := map[string]policy.Endpoint{}
	for _, n := range nodes {
		byName[n.Name] = n.PolicyEndpoint()
	}
	out := map[[2]string]Expect{}
	for _, s := range eps {
		for _, d := range eps {
			if !probes(s, d) {
				continue
			}
			if s.Client != nil && s.Client.Removed {
				out[[2]string{s.Name, d.Name}] = Expect{Why: "client revoked"}
				continue
			}
			var src policy.Endpoint
			if s.Client != nil {
				src = policy.Endpoint{Name: s.Client.Name, Client: true, Segment: s.Client.Segment}
			} else {
				src = byName[s.Host.Name]
			}
			dst := byName[d.Host.Name]
			icmp, why := pol.Allowed(src, dst, policy.ICMP, 0)
			tcp, why2 := pol.Allowed(src, dst, policy.TCP, servePort)
			if !icmp {
				why = why2
			}
			out[[2]string{s.Name, d.Name}] = Expect{ICMP: icmp, TCP: tcp, Why: why}
		}
	}
	return out, nil
}

// familiesProbed says which families the matrix holds.
func (m *Matrix) familiesProbed() string {
	var v4, v6 int
	for _, r := range m.Results {
		if m.kinds[r.From].IPv6 {
			v6++
		} else {
			v4++
		}
	}
	return fmt.Sprintf("%d IPv4 probes, %d IPv6 probes", v4, v6)
}

// Family returns the address family of a probe endpoint ("IPv4" or
// "IPv6"; "" for an unknown one).
func (m *Matrix) Family(endpoint string) string {
	if e, ok := m.kinds[endpoint]; ok {
		return e.family()
	}
	return ""
}

// Region returns the region of a probe endpoint ("" for a client).
func (m *Matrix) Region(endpoint string) string {
	if e, ok := m.kinds[endpoint]; ok && e.Host != nil {
		return e.Host.Region
	}
	return ""
}
