package netmaker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// Reconciler drives one Netmaker server towards a Desired state. Passes
// run one at a time (Reconcile and Detach serialize).
type Reconciler struct {
	C *Client
	// Now is the clock (default time.Now): grace periods and removal
	// delays are measured with it.
	Now func() time.Time
	// Log gets one line per change (nil: none).
	Log *slog.Logger
	// PassTimeout bounds one pass (default 2 minutes) on top of the
	// caller's context.
	PassTimeout time.Duration

	mu sync.Mutex
	// firstSeen: pending host ID → when a pass first saw it, for hosts
	// whose requested_at cannot be read.
	firstSeen map[string]time.Time
	// forced: networks whose auto_join the server kept on after StateMesh
	// asked for it off (a server without device approval forces it on);
	// asked once, not on every pass.
	forced map[string]bool
}

// pass is one reconciliation: the desired state, what was read from
// Netmaker, and the report being written.
type pass struct {
	r   *Reconciler
	d   Desired
	rep *Report
	now func() time.Time

	nets     map[string]Network // desired networks that exist, by name
	names    []string           // their names, sorted
	hosts    map[string]Host    // by host ID
	byKey    map[string]Host    // by WireGuard public key
	nodes    map[string][]Node  // network → live nodes
	tags     map[string]map[string]Tag
	keyList  []EnrollmentKey // read once per pass
	keysRead bool
	want     map[string]map[string]bool // network → StateMesh tag names wanted

	// netsRead: networks read the server's networks; hostsRead: members
	// read every host; pendingRead: pending read every network's pending
	// hosts, whose keys are pendingKeys.
	netsRead, hostsRead, pendingRead bool
	pendingKeys                      map[string]bool

	errs []error
	down bool // Netmaker unavailable: stop the pass

	// ungated: the server's device approval is off (as on the community
	// edition): hosts join StateMesh's networks at once, never pending.
	ungated bool
	// autoJoin: networks hosts join without approval (after the networks
	// step).
	autoJoin map[string]bool
	// noTags: the server has no tags API (the community edition).
	noTags bool
}

// Reconcile makes one pass towards d and reports what it did. Steps that
// fail do not stop the others, except when Netmaker is unavailable (5xx
// or no answer after the client's retries): then the pass stops, and the
// next one starts over. A second pass with the same d writes nothing.
func (r *Reconciler) Reconcile(ctx context.Context, d Desired) (Report, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.newPass(d)
	if err := p.d.validate(); err != nil {
		return *p.rep, err
	}
	if p.d.Grace == 0 {
		p.d.Grace = 5 * time.Minute
	}
	ctx, cancel := r.passContext(ctx)
	defer cancel()
	start, calls := time.Now(), r.C.Calls()
	steps := []struct {
		name string
		run  func(context.Context)
	}{
		{"server", p.server},
		{"networks", p.networks},
		{"members", p.members},
		{"pending hosts", p.pending},
		{"tags", p.createTags},
		{"enrollment keys", p.keys},
		{"ACL policies", p.acls},
		{"tag members", p.tagMembers},
		{"gateways", p.gateways},
		{"unused tags", p.deleteTags},
	}
	for _, s := range steps {
		if p.down || ctx.Err() != nil {
			p.rep.Notes = append(p.rep.Notes, "pass stopped before "+s.name)
			break
		}
		s.run(ctx)
	}
	p.absent()
	if ctx.Err() != nil && !p.down {
		p.errs = append(p.errs, fmt.Errorf("netmaker pass: %w", ctx.Err()))
	}
	p.rep.Calls, p.rep.Took = r.C.Calls()-calls, time.Since(start)
	return *p.rep, errors.Join(p.errs...)
}

func (r *Reconciler) newPass(d Desired) *pass {
	now := r.Now
	if now == nil {
		now = time.Now
	}
	return &pass{r: r, d: d, now: now,
		rep:  &Report{Removed: map[string]time.Duration{}, Keys: map[string]Token{}, Gateways: map[string]string{}},
		nets: map[string]Network{}, hosts: map[string]Host{}, byKey: map[string]Host{},
		nodes: map[string][]Node{}, tags: map[string]map[string]Tag{}, want: map[string]map[string]bool{},
		autoJoin: map[string]bool{}, pendingKeys: map[string]bool{}}
}

func (r *Reconciler) passContext(ctx context.Context) (context.Context, context.CancelFunc) {
	t := r.PassTimeout
	if t <= 0 {
		t = 2 * time.Minute
	}
	return context.WithTimeout(ctx, t)
}

// fail records an error; Netmaker being unavailable stops the pass.
func (p *pass) fail(err error) {
	p.errs = append(p.errs, err)
	if errors.Is(err, ErrUnavailable) {
		p.down = true
	}
}

// write records the change what when err is nil, else the error.
func (p *pass) write(what string, err error) bool {
	if err != nil {
		p.fail(fmt.Errorf("%s: %w", what, err))
		return false
	}
	p.rep.Writes = append(p.rep.Writes, what)
	if p.r.Log != nil {
		p.r.Log.Info("netmaker change", "change", what)
	}
	return true
}

func (p *pass) note(format string, args ...any) {
	p.rep.Notes = append(p.rep.Notes, fmt.Sprintf(format, args...))
}

// server reads whether the server holds new hosts for approval at all.
// Without device approval (the community edition) hosts join at once:
// admission is then enforced by removal (members), not by approval.
func (p *pass) server(ctx context.Context) {
	ff, err := p.r.C.FeatureFlags(ctx)
	if err != nil {
		p.fail(err)
		return
	}
	if !ff.DeviceApproval {
		p.ungated = true
		p.rep.Ungated = true
		p.note("device approval is off on the Netmaker server (enable_device_approval; always off on the community edition): hosts join StateMesh's networks at once, and StateMesh removes those no attested node owns within a pass")
	}
}

// networks creates the wanted networks, checks the ones there, and deletes
// StateMesh's networks no longer wanted once they are empty.
func (p *pass) networks(ctx context.Context) {
	have, err := p.r.C.Networks(ctx)
	if err != nil {
		p.fail(err)
		return
	}
	p.netsRead = true
	byName := map[string]Network{}
	for _, n := range have {
		byName[n.NetID] = n
	}
	wanted := map[string]bool{}
	specs := slices.Clone(p.d.Networks)
	slices.SortFunc(specs, func(a, b NetworkSpec) int { return strings.Compare(a.Name, b.Name) })
	for _, s := range specs {
		wanted[s.Name] = true
		if p.down {
			return
		}
		n, ok := byName[s.Name]
		switch {
		case !ok:
			req := Network{NetID: s.Name, DefaultMTU: s.MTU, CreatedBy: CreatedBy}
			if pfx, _ := netip.ParsePrefix(s.AddressRange); pfx.Addr().Is6() {
				req.AddressRange6 = pfx.Masked().String()
			} else {
				req.AddressRange = pfx.Masked().String()
			}
			created, err := p.r.C.CreateNetwork(ctx, req)
			if !p.write(fmt.Sprintf("create network %s (%s, MTU %d)", s.Name, s.AddressRange, s.MTU), err) {
				continue
			}
			if created.NetID == "" {
				created = req
			}
			p.nets[s.Name] = created
		case ourNetwork(n):
			p.nets[s.Name] = n
			if got := networkRange(n); !samePrefix(got, s.AddressRange) || (s.MTU != 0 && n.DefaultMTU != s.MTU) {
				p.fail(fmt.Errorf("%w: network %s has %s, MTU %d; want %s, MTU %d: Netmaker's update does not change either: map the region back, or empty the network and delete it in Netmaker (StateMesh then recreates it)",
					ErrDrift, s.Name, got, n.DefaultMTU, s.AddressRange, s.MTU))
			}
			switch {
			case !n.AutoJoin:
			case p.ungated || p.r.forced[s.Name]:
				// The server forces auto_join on without device
				// approval: asking again would only make it push a peer
				// update to every host.
				p.autoJoin[s.Name] = true
			default:
				n.AutoJoin = false
				updated, err := p.r.C.UpdateNetwork(ctx, n)
				if !p.write("hold new hosts for approval in network "+s.Name+" (auto_join off)", err) {
					p.autoJoin[s.Name] = true
					break
				}
				if updated.NetID != "" {
					p.nets[s.Name] = updated
					if updated.AutoJoin {
						p.autoJoin[s.Name] = true
						p.r.setForced(s.Name)
						p.note("network %s: the server kept auto_join on (device approval off): not asked again", s.Name)
					}
				}
			}
		default:
			p.nets[s.Name] = n
			p.note("network %s was not created by StateMesh: used as it is (%s)", s.Name, networkRange(n))
			if n.AutoJoin {
				p.autoJoin[s.Name] = true
				p.fail(fmt.Errorf("%w: network %s (not created by StateMesh) has auto_join on: hosts join it without approval; turn it off in Netmaker", ErrUngated, s.Name))
			}
		}
		if !ok && p.ungated {
			p.autoJoin[s.Name] = true
		}
	}
	p.names = sortedKeys(p.nets)
	for _, n := range have {
		if p.down {
			return
		}
		if ourNetwork(n) && !wanted[n.NetID] {
			// Netmaker v1.5.1 deletes a network with hosts by taking
			// them all out: only an empty one is deleted.
			hosts, err := liveNodes(ctx, p.r.C, n.NetID)
			switch {
			case err != nil:
				p.fail(err)
			case hosts > 0:
				p.fail(fmt.Errorf("network %s is no longer mapped but still has %d hosts: kept (deleting it would take them all out); take them out and StateMesh deletes it", n.NetID, hosts))
			default:
				p.write("delete network "+n.NetID+" (no longer mapped)", p.r.C.DeleteNetwork(ctx, n.NetID))
			}
		}
	}
}

func (r *Reconciler) setForced(net string) {
	if r.forced == nil {
		r.forced = map[string]bool{}
	}
	r.forced[net] = true
}

func networkRange(n Network) string {
	if n.AddressRange != "" {
		return n.AddressRange
	}
	return n.AddressRange6
}

// samePrefix compares CIDRs as networks (the server normalizes them).
func samePrefix(a, b string) bool {
	pa, errA := netip.ParsePrefix(a)
	pb, errB := netip.ParsePrefix(b)
	if errA != nil || errB != nil {
		return a == b
	}
	return pa.Masked() == pb.Masked()
}

// readKeys lists the enrollment keys once per pass.
func (p *pass) readKeys(ctx context.Context) ([]EnrollmentKey, error) {
	if p.keysRead {
		return p.keyList, nil
	}
	keys, err := p.r.C.EnrollmentKeys(ctx)
	if err != nil {
		p.fail(err)
		return nil, err
	}
	p.keyList, p.keysRead = keys, true
	return keys, nil
}
