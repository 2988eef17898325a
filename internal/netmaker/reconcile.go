package netmaker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Marks: what StateMesh creates in Netmaker carries them, and StateMesh
// changes or deletes nothing without them.
const (
	// CreatedBy is the created_by of networks StateMesh creates.
	CreatedBy = "statemesh"
	// KeyTag is on every enrollment key StateMesh creates.
	KeyTag = "statemesh-managed"
	// ACLPrefix starts the name of every ACL policy StateMesh creates;
	// ACLMeta is their meta_data.
	ACLPrefix = "statemesh-"
	ACLMeta   = "managed by StateMesh; changes are reverted"
)

// ClusterTag is the tag of a cluster's enrollment key (and so of the
// hosts that join with it).
func ClusterTag(region, cluster string) string { return "sm-cluster-" + region + "-" + cluster }

// Desired is the state StateMesh wants in Netmaker.
type Desired struct {
	// Networks: one per region (the caller maps names).
	Networks []NetworkSpec
	// Keys: one enrollment key per cluster.
	Keys []KeySpec
	// Attested maps WireGuard public keys (base64) of hosts that passed
	// StateMesh attestation to their StateMesh node.
	Attested map[string]string
	// Removed maps public keys of nodes StateMesh quarantined or removed
	// to when that happened: their hosts leave every network.
	Removed map[string]time.Time
	// ACLs are the policy's rules (MapPolicy).
	ACLs []ACL
	// Grace is how long a pending host whose key no StateMesh node has
	// attested may wait before it is rejected (default 5 minutes).
	Grace time.Duration
}

// NetworkSpec is a network StateMesh wants.
type NetworkSpec struct {
	Name         string
	AddressRange string
	MTU          int
}

// KeySpec is a cluster's enrollment key.
type KeySpec struct {
	Region, Cluster, Network string
	// Tags are added to the key's (segments of the cluster).
	Tags []string
	// Rotate replaces the key (the old one is revoked).
	Rotate bool
}

// Report says what a reconciliation did.
type Report struct {
	// Writes are the changes made ("create network eu-central", ...);
	// none on a second run with the same Desired.
	Writes   []string
	Approved []string // pending host IDs
	Rejected []string
	// Removed lists hosts taken out of networks, with the time from the
	// StateMesh removal to now.
	Removed map[string]time.Duration
	// Keys are the clusters' enrollment key values (region/cluster →).
	Keys map[string]string
	// Notes are things StateMesh left alone (objects it did not create).
	Notes []string
}

// Reconciler drives one Netmaker server.
type Reconciler struct {
	C   *Client
	Now func() time.Time
}

// Reconcile makes one pass towards d. Every step runs even when another
// failed; the errors are joined. Running it again with the same d writes
// nothing.
func (r *Reconciler) Reconcile(ctx context.Context, d Desired) (Report, error) {
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	if d.Grace == 0 {
		d.Grace = 5 * time.Minute
	}
	rep := Report{Removed: map[string]time.Duration{}, Keys: map[string]string{}}
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(r.networks(ctx, d, &rep))
	add(r.keys(ctx, d, &rep))
	add(r.pending(ctx, d, &rep, now()))
	add(r.hosts(ctx, d, &rep, now()))
	add(r.acls(ctx, d, &rep))
	return rep, errors.Join(errs...)
}

func (r *Reconciler) networks(ctx context.Context, d Desired, rep *Report) error {
	have, err := r.C.Networks(ctx)
	if err != nil {
		return err
	}
	byName := map[string]Network{}
	for _, n := range have {
		byName[n.NetID] = n
	}
	var errs []error
	want := map[string]bool{}
	for _, s := range d.Networks {
		want[s.Name] = true
		n, ok := byName[s.Name]
		next := Network{NetID: s.Name, AddressRange: s.AddressRange, DefaultMTU: s.MTU, CreatedBy: CreatedBy}
		switch {
		case !ok:
			if err := r.C.CreateNetwork(ctx, next); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Writes = append(rep.Writes, "create network "+s.Name)
		case n.CreatedBy != CreatedBy:
			rep.Notes = append(rep.Notes, fmt.Sprintf("network %s was not created by StateMesh: used as it is", s.Name))
		case n.AddressRange != s.AddressRange || n.DefaultMTU != s.MTU:
			if err := r.C.UpdateNetwork(ctx, next); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Writes = append(rep.Writes, "update network "+s.Name)
		}
	}
	for _, n := range have {
		if n.CreatedBy == CreatedBy && !want[n.NetID] {
			if err := r.C.DeleteNetwork(ctx, n.NetID); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Writes = append(rep.Writes, "delete network "+n.NetID)
		}
	}
	return errors.Join(errs...)
}

func (r *Reconciler) keys(ctx context.Context, d Desired, rep *Report) error {
	have, err := r.C.EnrollmentKeys(ctx)
	if err != nil {
		return err
	}
	var errs []error
	want := map[string]bool{}
	for _, s := range d.Keys {
		tag := ClusterTag(s.Region, s.Cluster)
		want[tag] = true
		i := slices.IndexFunc(have, func(k EnrollmentKey) bool { return slices.Contains(k.Tags, KeyTag) && slices.Contains(k.Tags, tag) })
		tags := append([]string{KeyTag, tag}, s.Tags...)
		if i >= 0 && !s.Rotate && slices.Equal(have[i].Tags, tags) && slices.Equal(have[i].Networks, []string{s.Network}) {
			rep.Keys[s.Region+"/"+s.Cluster] = have[i].Value
			continue
		}
		if i >= 0 {
			if err := r.C.DeleteEnrollmentKey(ctx, have[i].Value); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Writes = append(rep.Writes, "revoke key of "+s.Region+"/"+s.Cluster)
		}
		k, err := r.C.CreateEnrollmentKey(ctx, KeyRequest{Networks: []string{s.Network}, Tags: tags, Type: KeyUnlimited, Unlimited: true})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Keys[s.Region+"/"+s.Cluster] = k.Value
		rep.Writes = append(rep.Writes, "create key of "+s.Region+"/"+s.Cluster)
	}
	for _, k := range have {
		if !slices.Contains(k.Tags, KeyTag) {
			continue
		}
		if slices.ContainsFunc(k.Tags, func(t string) bool { return want[t] }) {
			continue
		}
		if err := r.C.DeleteEnrollmentKey(ctx, k.Value); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Writes = append(rep.Writes, "revoke key "+k.Value)
	}
	return errors.Join(errs...)
}

// pending approves hosts whose key an attested node has, rejects those of
// removed nodes and those still unknown after the grace period.
func (r *Reconciler) pending(ctx context.Context, d Desired, rep *Report, now time.Time) error {
	var errs []error
	for _, n := range d.Networks {
		ps, err := r.C.PendingHosts(ctx, n.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, p := range ps {
			_, attested := d.Attested[p.PublicKey]
			_, removed := d.Removed[p.PublicKey]
			at, perr := time.Parse(time.RFC3339, p.RequestedAt)
			switch {
			case attested && !removed:
				if err := r.C.Approve(ctx, p.ID); err != nil {
					errs = append(errs, err)
					continue
				}
				rep.Approved = append(rep.Approved, p.ID)
				rep.Writes = append(rep.Writes, fmt.Sprintf("approve host %s in %s (node %s)", p.HostName, n.Name, d.Attested[p.PublicKey]))
			case removed || (perr == nil && now.Sub(at) > d.Grace):
				if err := r.C.Reject(ctx, p.ID); err != nil {
					errs = append(errs, err)
					continue
				}
				rep.Rejected = append(rep.Rejected, p.ID)
				rep.Writes = append(rep.Writes, fmt.Sprintf("reject host %s in %s (not attested by StateMesh)", p.HostName, n.Name))
			}
		}
	}
	return errors.Join(errs...)
}

// hosts takes hosts of removed or quarantined nodes out of every
// StateMesh network.
func (r *Reconciler) hosts(ctx context.Context, d Desired, rep *Report, now time.Time) error {
	if len(d.Removed) == 0 {
		return nil
	}
	hs, err := r.C.Hosts(ctx)
	if err != nil {
		return err
	}
	removed := map[string]Host{}
	for _, h := range hs {
		if _, ok := d.Removed[h.PublicKey]; ok {
			removed[h.ID] = h
		}
	}
	if len(removed) == 0 {
		return nil
	}
	var errs []error
	for _, n := range d.Networks {
		nodes, err := r.C.Nodes(ctx, n.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, nd := range nodes {
			h, ok := removed[nd.HostID]
			if !ok {
				continue
			}
			if err := r.C.RemoveHost(ctx, h.ID, n.Name); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Writes = append(rep.Writes, fmt.Sprintf("remove host %s from %s", h.Name, n.Name))
			rep.Removed[h.Name] = now.Sub(d.Removed[h.PublicKey])
		}
	}
	return errors.Join(errs...)
}

func (r *Reconciler) acls(ctx context.Context, d Desired, rep *Report) error {
	var errs []error
	for _, n := range d.Networks {
		have, err := r.C.ACLs(ctx, n.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var want []ACL
		for _, a := range d.ACLs {
			if a.NetworkID == n.Name {
				want = append(want, a)
			}
		}
		for _, a := range have {
			if !ours(a) {
				continue
			}
			if slices.ContainsFunc(want, func(w ACL) bool { return sameACL(a, w) }) {
				continue
			}
			if err := r.C.DeleteACL(ctx, a.ID); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Writes = append(rep.Writes, "delete ACL "+a.Name)
		}
		for _, w := range want {
			if slices.ContainsFunc(have, func(a ACL) bool { return ours(a) && sameACL(a, w) }) {
				continue
			}
			if err := r.C.CreateACL(ctx, w); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Writes = append(rep.Writes, "create ACL "+w.Name)
		}
	}
	return errors.Join(errs...)
}

func ours(a ACL) bool { return strings.HasPrefix(a.Name, ACLPrefix) && a.MetaData == ACLMeta }

func sameACL(a, b ACL) bool {
	return a.Name == b.Name && a.NetworkID == b.NetworkID && a.Protocol == b.Protocol && slices.Equal(a.Ports, b.Ports) &&
		slices.Equal(a.Src, b.Src) && slices.Equal(a.Dst, b.Dst) && a.Direction == b.Direction && a.Enabled == b.Enabled && a.Policy == b.Policy
}

// Detach removes everything StateMesh created (its ACL policies, keys and
// networks) and nothing else: ACLs first, since they live in networks.
func (r *Reconciler) Detach(ctx context.Context) (Report, error) {
	rep := Report{}
	nets, err := r.C.Networks(ctx)
	if err != nil {
		return rep, err
	}
	var errs []error
	for _, n := range nets {
		as, err := r.C.ACLs(ctx, n.NetID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, a := range as {
			if !ours(a) {
				continue
			}
			if err := r.C.DeleteACL(ctx, a.ID); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Writes = append(rep.Writes, "delete ACL "+a.Name)
		}
	}
	more, err := r.Reconcile(ctx, Desired{})
	rep.Writes = append(rep.Writes, more.Writes...)
	return rep, errors.Join(append(errs, err)...)
}
