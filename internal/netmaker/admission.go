package netmaker

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/netmap"
)

// members reads the hosts and each network's nodes, and takes the hosts
// of quarantined, removed or refused nodes out of StateMesh's networks
// (forced: a quarantined host may never acknowledge). It runs before
// anything else that writes, so removal is not held up by the rest.
func (p *pass) members(ctx context.Context) {
	hosts, err := p.r.C.Hosts(ctx)
	if err != nil {
		p.fail(err)
		return
	}
	for _, h := range hosts {
		p.hosts[h.ID] = h
		if h.PublicKey != "" {
			p.byKey[h.PublicKey] = h
		}
	}
	p.hostsRead = true
	for _, net := range p.names {
		if p.down {
			return
		}
		nodes, err := p.r.C.Nodes(ctx, net)
		if err != nil {
			p.fail(err)
			continue
		}
		var live []Node
		for _, n := range nodes {
			if n.PendingDelete {
				continue
			}
			h, known := p.hosts[n.HostID]
			at, removed := p.d.Removed[h.PublicKey]
			reason, refused := p.d.Refused[h.PublicKey]
			switch {
			case !known || h.PublicKey == "":
				live = append(live, n)
			case removed || refused:
				why := "quarantined or removed in StateMesh"
				if refused {
					why = "refused by StateMesh: " + reason
				}
				err := p.r.C.RemoveHostFromNetwork(ctx, h.ID, net, true)
				if !p.write(fmt.Sprintf("remove host %s from %s (%s)", h.Name, net, why), err) {
					live = append(live, n)
					if p.down {
						return
					}
					continue
				}
				rm := Removal{Host: h.Name, HostID: h.ID, Network: net, PublicKey: h.PublicKey}
				if removed {
					rm.Since = p.now().Sub(at)
					p.rep.Removed[h.Name] = max(p.rep.Removed[h.Name], rm.Since)
				}
				p.rep.Removals = append(p.rep.Removals, rm)
			case !p.d.admitted(h.PublicKey) && p.autoJoin[net] && ourNetwork(p.nets[net]):
				// Hosts join this network without approval (no device
				// approval on the server): removal is the gate. A host
				// of a network StateMesh created joined with its key.
				why := "no attested StateMesh node owns its key; it joined without approval"
				err := p.r.C.RemoveHostFromNetwork(ctx, h.ID, net, true)
				if !p.write(fmt.Sprintf("remove host %s from %s (%s)", h.Name, net, why), err) {
					p.rep.Unattested = append(p.rep.Unattested, h.Name+" in "+net)
					live = append(live, n)
					if p.down {
						return
					}
					continue
				}
				p.rep.Removals = append(p.rep.Removals, Removal{Host: h.Name, HostID: h.ID, Network: net, PublicKey: h.PublicKey, Unattested: true})
			default:
				if !p.d.admitted(h.PublicKey) {
					p.rep.Unattested = append(p.rep.Unattested, h.Name+" in "+net)
				}
				live = append(live, n)
			}
		}
		p.nodes[net] = live
	}
}

// pending decides on the hosts waiting for approval in StateMesh's
// networks: approve an attested strong node's; reject, when it registered
// with a StateMesh key, a refused, removed or weak one at once and an
// unknown one after the grace period; leave the others to the operator.
func (p *pass) pending(ctx context.Context) {
	ours := p.ourKeyValues(ctx)
	seen := map[string]bool{}
	complete := true
	for _, net := range p.names {
		if p.down {
			return
		}
		ps, err := p.r.C.PendingHosts(ctx, net)
		if err != nil {
			p.fail(err)
			complete = false
			continue
		}
		slices.SortFunc(ps, func(a, b PendingHost) int { return strings.Compare(a.ID, b.ID) })
		for _, ph := range ps {
			if p.down {
				return
			}
			seen[ph.ID] = true
			p.pendingKeys[ph.PublicKey] = true
			p.decide(ctx, net, ph, ours)
		}
	}
	p.pendingRead = complete
	for id := range p.r.firstSeen {
		if complete && !seen[id] {
			delete(p.r.firstSeen, id)
		}
	}
}

// absent reports the keys of Desired.Removed that no host and no pending
// host has (Report.Absent), when the pass read them all.
func (p *pass) absent() {
	if !p.netsRead || !p.hostsRead || !p.pendingRead {
		return
	}
	for k := range p.d.Removed {
		if _, ok := p.byKey[k]; !ok && !p.pendingKeys[k] {
			p.rep.Absent = append(p.rep.Absent, k)
		}
	}
	slices.Sort(p.rep.Absent)
}

// ourKeyValues lists the values of StateMesh's enrollment keys (nil when
// they cannot be read: then the key's name decides).
func (p *pass) ourKeyValues(ctx context.Context) map[string]bool {
	keys, err := p.readKeys(ctx)
	if err != nil {
		return nil
	}
	out := map[string]bool{}
	for _, k := range keys {
		if _, ok := ourKey(k); ok {
			out[k.Value.Reveal()] = true
		}
	}
	return out
}

func (p *pass) decide(ctx context.Context, net string, ph PendingHost, ours map[string]bool) {
	key := ph.PublicKey
	dec := Decision{PendingID: ph.ID, Host: ph.HostName, Network: net, PublicKey: key}
	att, attested := p.d.attested(key)
	dec.Node = att.Node
	_, removed := p.d.Removed[key]
	refusal, refused := p.d.Refused[key]
	smKey, how := p.issuedByStateMesh(ph, ours)
	age := p.now().Sub(p.requested(ph))
	switch {
	case removed || refused:
		dec.Action, dec.Reason = "reject", "quarantined or removed in StateMesh"
		if refused {
			dec.Reason = "refused by StateMesh: " + refusal
		}
	case attested && att.Class == netmap.ClassStrong && !p.ofItsRegion(att, net):
		dec.Action, dec.Reason = "reject", fmt.Sprintf("attested as node %s of region %s, whose Netmaker network is not %s", att.Node, att.Region, net)
	case attested && att.Class == netmap.ClassStrong:
		dec.Action, dec.Reason = "approve", "attested strong as node "+att.Node
	case attested:
		dec.Action, dec.Reason = "reject", "attested "+att.Class+" as node "+att.Node+": only strong hosts join Netmaker networks"
	case age > p.d.Grace:
		dec.Action, dec.Reason = "reject", fmt.Sprintf("no attested StateMesh node owns its key after %s", age.Round(time.Second))
	default:
		dec.Action, dec.Reason = "wait", fmt.Sprintf("not attested yet (%s of the %s grace period)", age.Round(time.Second), p.d.Grace)
	}
	if dec.Action != "approve" && !smKey {
		dec.Action, dec.Reason = "leave", "registered with a key StateMesh did not issue ("+how+"); "+dec.Reason
	}
	switch dec.Action {
	case "approve":
		node, err := p.r.C.ApprovePendingHost(ctx, ph.ID)
		if !p.write(fmt.Sprintf("approve host %s in %s (%s)", ph.HostName, net, dec.Reason), err) {
			return
		}
		p.rep.Approved = append(p.rep.Approved, ph.ID)
		if node.ID != "" {
			if node.Network == "" {
				node.Network = net
			}
			p.nodes[net] = append(p.nodes[net], node)
		}
		if _, ok := p.hosts[ph.HostID]; !ok && ph.HostID != "" {
			h := Host{ID: ph.HostID, Name: ph.HostName, PublicKey: key}
			p.hosts[h.ID], p.byKey[key] = h, h
		}
	case "reject":
		if !p.write(fmt.Sprintf("reject host %s in %s (%s)", ph.HostName, net, dec.Reason), p.r.C.RejectPendingHost(ctx, ph.ID)) {
			return
		}
		p.rep.Rejected = append(p.rep.Rejected, ph.ID)
	}
	p.rep.Decisions = append(p.rep.Decisions, dec)
}

// issuedByStateMesh: did the host register with a StateMesh key? The
// pending host names the key it used; when it does not, every host of a
// network StateMesh created counts as StateMesh's.
func (p *pass) issuedByStateMesh(ph PendingHost, ours map[string]bool) (bool, string) {
	k, ok := ph.KeyUsed()
	switch {
	case ok && (ours[k.Value.Reveal()] || isOurKeyName(k)):
		return true, "StateMesh key"
	case ok:
		return false, "key " + strings.Join(k.Tags, ",")
	case ourNetwork(p.nets[ph.Network]):
		return true, "key unknown, network created by StateMesh"
	default:
		return false, "key unknown, network not created by StateMesh"
	}
}

// ofItsRegion: a node joins only its own region's network (the one its
// region's cluster keys are for). Without a region, or for a region
// without keys, there is nothing to hold it to.
func (p *pass) ofItsRegion(a Attested, net string) bool {
	known := false
	for _, k := range p.d.Keys {
		if k.Region != a.Region {
			continue
		}
		if k.Network == net {
			return true
		}
		known = true
	}
	return a.Region == "" || !known
}

func isOurKeyName(k EnrollmentKey) bool { _, ok := ourKey(k); return ok }

// requested is when the host asked, or when a pass first saw it.
func (p *pass) requested(ph PendingHost) time.Time {
	if t, ok := ph.Requested(); ok {
		return t
	}
	if p.r.firstSeen == nil {
		p.r.firstSeen = map[string]time.Time{}
	}
	if t, ok := p.r.firstSeen[ph.ID]; ok {
		return t
	}
	p.r.firstSeen[ph.ID] = p.now()
	return p.now()
}
