package lab

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Why a check is not a pass although no probe differed from the policy.
var (
	// ErrIncompleteCheck: the check probed fewer pairs than the lab
	// should have: endpoints without an address (a lab up that stopped
	// before enrollment, pods or clients), a source whose probes
	// returned no result, or a From selection that names no endpoint.
	ErrIncompleteCheck = errors.New("lab check incomplete")
	// ErrNothingToProbe: every endpoint has its addresses, but no two of
	// them probe each other (a lab of one node and no clients).
	ErrNothingToProbe = errors.New("nothing to probe")
)

// wantEndpoints names the endpoints a lab of st's configuration should
// probe once it is up: every node not removed at its IPv4 overlay address
// (and its IPv6 one with IPv6 pods), its pod at each pod address (with
// pods), every client at each of its addresses, and the clients lab up
// has yet to add (as "client #N").
func wantEndpoints(st *State) []string {
	c := &st.Config
	var want []string
	for _, h := range st.Hosts {
		if h.Role == "gateway" || h.Removed {
			continue
		}
		want = append(want, h.Name)
		if c.Pods && c.Pods4() {
			want = append(want, h.Name+"/pod")
		}
		if c.Pods6() {
			want = append(want, h.Name+v6Suffix)
			if c.Pods {
				want = append(want, h.Name+"/pod"+v6Suffix)
			}
		}
	}
	for _, cl := range st.Clients {
		want = append(want, "client "+cl.Name)
		if c.Pods6() {
			want = append(want, "client "+cl.Name+v6Suffix)
		}
	}
	for i := len(st.Clients); i < c.Clients; i++ {
		want = append(want, fmt.Sprintf("client #%d", i+1))
	}
	return want
}

// complete reports what keeps m from being a full check: endpoints in
// want that m has no address for, names in from (the sources the check
// was limited to; all when empty) that are no endpoint, pairs m should
// have probed (from those sources) without a result, or no pair at all.
// It is pure: Check calls it on what it measured.
func (m *Matrix) complete(want, from []string) error {
	var missing []string
	for _, w := range want {
		if _, ok := m.kinds[w]; !ok {
			missing = append(missing, w)
		}
	}
	if len(missing) > 0 {
		what := "no probes ran"
		if len(m.Results) > 0 {
			what = fmt.Sprintf("only %d probes ran", len(m.Results))
		}
		return fmt.Errorf("%w: %s: %d of the lab's %d endpoints have no address (%s); did `statemesh lab up` finish?",
			ErrIncompleteCheck, what, len(missing), len(want), list(missing))
	}
	var unknown []string
	for _, f := range from {
		if _, ok := m.kinds[f]; !ok {
			unknown = append(unknown, f)
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("%w: no endpoint is named %s (the lab's endpoints: %s)", ErrIncompleteCheck, list(unknown), list(m.Endpoints))
	}
	got := map[[2]string]bool{}
	for _, r := range m.Results {
		got[[2]string{r.From, r.To}] = true
	}
	planned := 0
	var lacking, silent []string
	for _, s := range m.Endpoints {
		if len(from) > 0 && !slices.Contains(from, s) {
			continue
		}
		n, answered := 0, 0
		for _, d := range m.Endpoints {
			if !probes(m.kinds[s], m.kinds[d]) {
				continue
			}
			n++
			if got[[2]string{s, d}] {
				answered++
			} else {
				lacking = append(lacking, s+" → "+d)
			}
		}
		planned += n
		if n > 0 && answered == 0 {
			silent = append(silent, s)
		}
	}
	switch {
	case planned == 0:
		return fmt.Errorf("%w: no probes ran: no two of the lab's %d endpoints probe each other (%s)", ErrNothingToProbe, len(m.Endpoints), list(m.Endpoints))
	case len(silent) > 0:
		return fmt.Errorf("%w: %d of %d probes have no result; none from %s", ErrIncompleteCheck, len(lacking), planned, list(silent))
	case len(lacking) > 0:
		return fmt.Errorf("%w: %d of %d probes have no result (%s)", ErrIncompleteCheck, len(lacking), planned, list(lacking))
	}
	return nil
}

// list joins the first names, and says how many more there are.
func list(names []string) string {
	const shown = 5
	if len(names) == 0 {
		return "none"
	}
	if len(names) <= shown {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:shown], ", "), len(names)-shown)
}
