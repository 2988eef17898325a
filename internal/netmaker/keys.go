package netmaker

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// keys keeps one enrollment key per cluster: created when missing,
// rotated when the generation is raised or a TTL runs low (the new key
// first, then the old one revoked), its groups kept in line with the
// cluster's tags, and revoked when the cluster is gone. Keys without
// StateMesh's name prefix are never touched.
func (p *pass) keys(ctx context.Context) {
	have, err := p.readKeys(ctx)
	if err != nil {
		return
	}
	byID := map[string][]EnrollmentKey{}
	for _, k := range have {
		if id, ok := ourKey(k); ok {
			byID[id] = append(byID[id], k)
		}
	}
	specs := slices.Clone(p.d.Keys)
	slices.SortFunc(specs, func(a, b KeySpec) int {
		return strings.Compare(a.Region+"/"+a.Cluster, b.Region+"/"+b.Cluster)
	})
	wanted := map[string]bool{}
	for _, s := range specs {
		if p.down {
			return
		}
		id := keyID(s.Region, s.Cluster)
		wanted[id] = true
		p.clusterKey(ctx, s, byID[id])
	}
	for _, id := range sortedKeys(byID) {
		if wanted[id] {
			continue
		}
		for _, k := range byID[id] {
			if p.down {
				return
			}
			p.write(fmt.Sprintf("revoke enrollment key %s (its cluster is gone)", k.Tags[0]), p.r.C.DeleteEnrollmentKey(ctx, k.Value))
		}
	}
}

// clusterKey reconciles one cluster's key given the keys StateMesh made
// for it.
func (p *pass) clusterKey(ctx context.Context, s KeySpec, have []EnrollmentKey) {
	name := KeyName(s.Region, s.Cluster, s.Generation)
	cluster := s.Region + "/" + s.Cluster
	groups := keyGroups(s)
	var current *EnrollmentKey
	var stale []EnrollmentKey
	for _, k := range have {
		if current == nil && k.Tags[0] == name && slices.Equal(k.Networks, []string{s.Network}) && !p.renew(k, s) {
			current = &k
			continue
		}
		stale = append(stale, k)
	}
	if current == nil {
		// Names are unique on the server: a key in the way goes first.
		stale = slices.DeleteFunc(stale, func(k EnrollmentKey) bool {
			if k.Tags[0] != name {
				return false
			}
			p.write(fmt.Sprintf("revoke enrollment key %s of %s (expiring or for another network)", name, cluster), p.r.C.DeleteEnrollmentKey(ctx, k.Value))
			return true
		})
		req := KeyRequest{Tags: []string{name}, Networks: []string{s.Network}, Groups: groups, Type: KeyUnlimited, Unlimited: true}
		if s.TTL > 0 {
			req.Type, req.Unlimited, req.Expiration = KeyTimeExpiration, false, p.now().Add(s.TTL).Unix()
		}
		k, err := p.r.C.CreateEnrollmentKey(ctx, req)
		if !p.write(fmt.Sprintf("create enrollment key %s for cluster %s in %s", name, cluster, s.Network), err) {
			return
		}
		p.rep.Keys[cluster] = k.Token
	} else {
		if !sameSet(current.Groups, groups) {
			req := KeyRequest{Tags: current.Tags, Networks: current.Networks, Groups: groups, Type: current.Type, Unlimited: current.Unlimited}
			_, err := p.r.C.UpdateEnrollmentKey(ctx, current.Value, req)
			p.write(fmt.Sprintf("set the groups of enrollment key %s to %s", name, strings.Join(groups, ", ")), err)
		}
		p.rep.Keys[cluster] = current.Token
	}
	for _, k := range stale {
		if p.down {
			return
		}
		p.write(fmt.Sprintf("revoke enrollment key %s of %s (replaced by %s)", k.Tags[0], cluster, name), p.r.C.DeleteEnrollmentKey(ctx, k.Value))
	}
}

// renew: the key's lifetime does not match the spec any more (less than
// a fifth of the TTL left, or limited when it should not be).
func (p *pass) renew(k EnrollmentKey, s KeySpec) bool {
	exp := k.Expires()
	if s.TTL == 0 {
		return !exp.IsZero() || !k.Unlimited
	}
	return exp.IsZero() || exp.Sub(p.now()) < s.TTL/5
}

// keyGroups are the tag IDs a cluster's hosts get when they join: the
// cluster tag and the cluster's segment tags.
func keyGroups(s KeySpec) []string {
	out := []string{TagID(s.Network, ClusterTag(s.Region, s.Cluster))}
	for _, t := range s.Tags {
		out = append(out, TagID(s.Network, t))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// sameSet compares string lists as sets.
func sameSet(a, b []string) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(slices.Compact(x), slices.Compact(y))
}
