package netmaker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Detach removes what StateMesh created in Netmaker and nothing else:
// in every network its gateway roles, ACL policies and tags; its
// enrollment keys; then its networks, only when empty (Netmaker would
// delete one with hosts by taking them all out); a network that still
// has hosts is kept, Netmaker's
// default allow-all policy is turned back on in it, and the error says
// so. Hosts, and everything unmarked, are left as they are.
func (r *Reconciler) Detach(ctx context.Context) (Report, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ctx, cancel := r.passContext(ctx)
	defer cancel()
	p := r.newPass(Desired{})
	start, calls := time.Now(), r.C.Calls()
	report := func() Report {
		p.rep.Calls, p.rep.Took = r.C.Calls()-calls, time.Since(start)
		return *p.rep
	}
	nets, err := r.C.Networks(ctx)
	if err != nil {
		return report(), err
	}
	slices.SortFunc(nets, func(a, b Network) int { return strings.Compare(a.NetID, b.NetID) })
	for _, n := range nets {
		if p.down {
			break
		}
		p.detachNetwork(ctx, n.NetID)
	}
	if !p.down {
		if keys, err := r.C.EnrollmentKeys(ctx); err != nil {
			p.fail(err)
		} else {
			for _, k := range keys {
				if _, ok := ourKey(k); ok && !p.down {
					p.write("revoke enrollment key "+k.Tags[0], r.C.DeleteEnrollmentKey(ctx, k.Value))
				}
			}
		}
	}
	for _, n := range nets {
		if p.down || !ourNetwork(n) {
			continue
		}
		// Netmaker v1.5.1 does not refuse to delete a network with
		// hosts: it takes every host out of it. StateMesh asks only for
		// an empty one.
		hosts, err := liveNodes(ctx, r.C, n.NetID)
		if err == nil && hosts > 0 {
			err = fmt.Errorf("it still has %d hosts, and deleting it would take them all out", hosts)
		}
		if err == nil {
			err = r.C.DeleteNetwork(ctx, n.NetID)
		}
		if err == nil {
			p.write("delete network "+n.NetID, nil)
			continue
		}
		p.fail(fmt.Errorf("network %s kept (take its hosts out, then detach again or delete it in Netmaker): %w", n.NetID, err))
		if acls, err := r.C.ACLs(ctx, n.NetID); err == nil {
			if i := slices.IndexFunc(acls, func(a ACL) bool { return a.Default && a.ID == defaultPolicyID(n.NetID) }); i >= 0 && !acls[i].Enabled {
				a := acls[i]
				a.Enabled = true
				p.write("turn Netmaker's default allow-all policy "+a.ID+" back on", r.C.UpdateACL(ctx, a))
			}
		}
	}
	return report(), errors.Join(p.errs...)
}

// liveNodes counts a network's nodes not already being deleted.
func liveNodes(ctx context.Context, c *Client, network string) (int, error) {
	nodes, err := c.Nodes(ctx, network)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, node := range nodes {
		if !node.PendingDelete {
			n++
		}
	}
	return n, nil
}

// detachNetwork removes StateMesh's gateway roles, ACL policies and tags
// from one network.
func (p *pass) detachNetwork(ctx context.Context, net string) {
	c := p.r.C
	if nodes, err := c.Nodes(ctx, net); err != nil {
		p.fail(err)
	} else {
		for _, n := range nodes {
			if ourGateway(n) && !p.down {
				p.write(fmt.Sprintf("remove the gateway role from node %s in %s", n.ID, net), c.DeleteGateway(ctx, net, n.ID))
			}
		}
	}
	if acls, err := c.ACLs(ctx, net); err != nil {
		p.fail(err)
	} else {
		for _, a := range acls {
			if ourACL(a) && !p.down {
				p.write(fmt.Sprintf("delete ACL policy %s in %s", a.Name, net), c.DeleteACL(ctx, a.ID))
			}
		}
	}
	tags, err := c.Tags(ctx, net)
	var ae *APIError
	switch {
	case errors.As(err, &ae) && ae.Status == http.StatusNotFound:
		p.note("network %s: no tags API (Netmaker without Pro): no tags to delete", net)
	case err != nil:
		p.fail(err)
	default:
		for _, t := range tags {
			if ourTag(t) && !p.down {
				id := t.ID
				if id == "" {
					id = TagID(net, t.Name)
				}
				p.write(fmt.Sprintf("delete tag %s in %s", t.Name, net), c.DeleteTag(ctx, id))
			}
		}
	}
}
