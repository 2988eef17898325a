package netmaker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// wantedTags computes, per network, the StateMesh tags wanted: each
// cluster's tag and segment tags (from the keys), and the tags the ACL
// policies name.
func (p *pass) wantedTags() {
	for _, net := range p.names {
		p.want[net] = map[string]bool{}
	}
	for _, k := range p.d.Keys {
		if w := p.want[k.Network]; w != nil {
			w[ClusterTag(k.Region, k.Cluster)] = true
			for _, t := range k.Tags {
				w[t] = true
			}
		}
	}
	if p.d.SkipPolicy {
		return
	}
	for _, a := range p.d.ACLs {
		w := p.want[a.NetworkID]
		if w == nil {
			continue
		}
		for _, t := range append(slices.Clone(a.Src), a.Dst...) {
			if name, ok := strings.CutPrefix(t.Value, a.NetworkID+"."); ok && t.ID == "tag" && ourTagName(name) {
				w[name] = true
			}
		}
	}
}

// createTags reads each network's tags and creates StateMesh's that are
// missing.
func (p *pass) createTags(ctx context.Context) {
	p.wantedTags()
	for _, net := range p.names {
		if p.down {
			return
		}
		tags, err := p.r.C.Tags(ctx, net)
		if err != nil {
			var ae *APIError
			if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
				p.noTags = true
				if !p.d.SkipPolicy && !slices.ContainsFunc(p.d.ACLs, func(a ACL) bool { return a.NetworkID == net && usesTags(a) }) {
					// Nothing of the policy needs tags here: the
					// cluster tags only group hosts.
					p.note("network %s: no tags API on the Netmaker server (community edition): hosts are not tagged", net)
					continue
				}
				err = fmt.Errorf("%w (tags and tag-based ACL policies are Netmaker Pro features: the policy's segments cannot be enforced in %s)", err, net)
			}
			p.fail(err)
			continue
		}
		have := map[string]Tag{}
		for _, t := range tags {
			have[t.Name] = t
		}
		p.tags[net] = have
		for _, name := range sortedKeys(p.want[net]) {
			if p.down {
				return
			}
			if t, ok := have[name]; ok {
				if !ourTag(t) {
					p.fail(fmt.Errorf("tag %s in %s: %w (its colour is not StateMesh's %s): rename or delete it in Netmaker", name, net, ErrNotMarked, TagColor))
				}
				continue
			}
			t, err := p.r.C.CreateTag(ctx, TagRequest{Name: name, Network: net, ColorCode: TagColor})
			if p.write(fmt.Sprintf("create tag %s in %s", name, net), credential(err)) {
				if t.Name == "" {
					t = Tag{ID: TagID(net, name), Name: name, Network: net}
				}
				t.ColorCode = TagColor
				have[name] = t
			}
		}
	}
}

// acls keeps StateMesh's ACL policies in each network equal to the
// desired ones (created, updated in place, duplicates and unwanted ones
// deleted) and, in networks StateMesh created, Netmaker's default
// allow-all policy disabled.
func (p *pass) acls(ctx context.Context) {
	if p.d.SkipPolicy {
		p.note("policy skipped: tags and ACL policies left as they are")
		return
	}
	for _, net := range p.names {
		if p.down {
			return
		}
		have, err := p.r.C.ACLs(ctx, net)
		if err != nil {
			p.fail(err)
			continue
		}
		ours := map[string][]ACL{}
		for _, a := range have {
			if ourACL(a) {
				ours[a.Name] = append(ours[a.Name], a)
			}
		}
		var want []ACL
		for _, a := range p.d.ACLs {
			if a.NetworkID == net {
				want = append(want, a)
			}
		}
		slices.SortFunc(want, func(a, b ACL) int { return strings.Compare(a.Name, b.Name) })
		// inPlace: every wanted policy is there as wanted; only then may
		// the allow-all default go (else the network denies everything).
		inPlace := true
		for _, w := range want {
			if p.down {
				return
			}
			got := ours[w.Name]
			delete(ours, w.Name)
			slices.SortFunc(got, func(a, b ACL) int { return strings.Compare(a.ID, b.ID) })
			switch {
			case len(got) == 0 && p.noTags && usesTags(w):
				// The community edition has no tags and refuses tag
				// policies ("invalid policy"): not asked on every pass.
				inPlace = false
				p.note("ACL policy %s in %s not created: it names tags, which this Netmaker server does not have", w.Name, net)
			case len(got) == 0:
				_, err := p.r.C.CreateACL(ctx, w)
				inPlace = p.write(fmt.Sprintf("create ACL policy %s in %s", w.Name, net), credential(err)) && inPlace
			case !sameACL(got[0], w):
				w.ID = got[0].ID
				inPlace = p.write(fmt.Sprintf("update ACL policy %s in %s", w.Name, net), credential(p.r.C.UpdateACL(ctx, w))) && inPlace
			}
			for _, dup := range got[min(1, len(got)):] {
				p.write(fmt.Sprintf("delete duplicate ACL policy %s (%s) in %s", dup.Name, dup.ID, net), p.r.C.DeleteACL(ctx, dup.ID))
			}
		}
		for _, name := range sortedKeys(ours) {
			for _, a := range ours[name] {
				if p.down {
					return
				}
				p.write(fmt.Sprintf("delete ACL policy %s in %s (no longer in the policy)", name, net), p.r.C.DeleteACL(ctx, a.ID))
			}
		}
		if !inPlace {
			if i := slices.IndexFunc(have, func(a ACL) bool { return a.Default && a.ID == defaultPolicyID(net) }); i >= 0 && have[i].Enabled {
				p.note("network %s: Netmaker's default allow-all policy left on: StateMesh's policies are not all in place (see the errors)", net)
			}
			continue
		}
		p.defaultPolicy(ctx, net, have)
	}
}

// defaultPolicy disables Netmaker's allow-all default in a network
// StateMesh created (its policy replaces it), and notes it elsewhere.
func (p *pass) defaultPolicy(ctx context.Context, net string, have []ACL) {
	i := slices.IndexFunc(have, func(a ACL) bool { return a.Default && a.ID == defaultPolicyID(net) })
	if i < 0 || !have[i].Enabled {
		return
	}
	if !ourNetwork(p.nets[net]) {
		p.note("network %s: %s: %s", net, mapForeignNetwork, mappingNote(mapForeignNetwork))
		return
	}
	a := have[i]
	a.Enabled = false
	p.write(fmt.Sprintf("disable Netmaker's default allow-all policy %s (StateMesh's policy replaces it)", a.ID), p.r.C.UpdateACL(ctx, a))
}

// usesTags: the policy names a tag other than "*" (all nodes).
func usesTags(a ACL) bool {
	return slices.ContainsFunc(append(slices.Clone(a.Src), a.Dst...), func(t ACLTag) bool { return t.ID == "tag" && t.Value != "*" })
}

func sameACL(a, b ACL) bool {
	return a.Name == b.Name && a.MetaData == b.MetaData && a.NetworkID == b.NetworkID && a.Policy == b.Policy &&
		a.Protocol == b.Protocol && a.ServiceType == b.ServiceType && a.Direction == b.Direction && a.Enabled == b.Enabled &&
		sameSet(a.Ports, b.Ports) && sameSet(tagKeys(a.Src), tagKeys(b.Src)) && sameSet(tagKeys(a.Dst), tagKeys(b.Dst))
}

func tagKeys(ts []ACLTag) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.ID + "=" + t.Value
	}
	return out
}

// tagMembers sets the members of StateMesh's tags in each network: the
// admitted hosts of each cluster get the cluster's tag and its segments'
// tags; no other node has them. A host's cluster is the one the caller
// gives (Desired.Hosts), else the one its cluster tag names.
func (p *pass) tagMembers(ctx context.Context) {
	if p.d.SkipPolicy {
		return
	}
	for _, net := range p.names {
		if p.tags[net] == nil {
			continue // the tags could not be read
		}
		clusterOf := map[string]string{}  // cluster tag → REGION/CLUSTER
		segments := map[string][]string{} // REGION/CLUSTER → tags
		for _, k := range p.d.Keys {
			if k.Network == net {
				rc := k.Region + "/" + k.Cluster
				clusterOf[ClusterTag(k.Region, k.Cluster)] = rc
				segments[rc] = append([]string{ClusterTag(k.Region, k.Cluster)}, k.Tags...)
			}
		}
		members := map[string][]NodeRef{} // tag → nodes that should have it
		current := map[string][]string{}  // tag → node IDs that have it
		nodes := slices.Clone(p.nodes[net])
		slices.SortFunc(nodes, func(a, b Node) int { return strings.Compare(a.ID, b.ID) })
		for _, n := range nodes {
			for id := range n.Tags {
				if name, ok := strings.CutPrefix(id, net+"."); ok {
					current[name] = append(current[name], n.ID)
				}
			}
			key := p.hosts[n.HostID].PublicKey
			if !p.d.admitted(key) {
				continue
			}
			rc := p.clusterOf(net, n, key, clusterOf)
			if rc == "" {
				p.note("host %s in %s: its cluster is unknown (no cluster tag, none given): it is in no segment", p.hosts[n.HostID].Name, net)
				continue
			}
			for _, t := range segments[rc] {
				members[t] = append(members[t], NodeRef{ID: n.ID, HostID: n.HostID, Network: net})
			}
		}
		for _, name := range sortedKeys(p.want[net]) {
			if p.down {
				return
			}
			if t, ok := p.tags[net][name]; !ok || !ourTag(t) {
				continue // not there, or not StateMesh's to change
			}
			want := members[name]
			ids := make([]string, len(want))
			for i, r := range want {
				ids[i] = r.ID
			}
			if sameSet(ids, current[name]) {
				continue
			}
			err := p.r.C.UpdateTag(ctx, TagRequest{ID: TagID(net, name), Name: name, Network: net, ColorCode: TagColor, TaggedNodes: want})
			p.write(fmt.Sprintf("set the members of tag %s in %s (%d nodes)", name, net, len(want)), err)
		}
	}
}

// clusterOf finds a node's cluster: the caller's word, else its cluster
// tag (the one the key it joined with gave it).
func (p *pass) clusterOf(net string, n Node, key string, clusterOf map[string]string) string {
	if a, ok := p.d.Hosts[key]; ok && a.Region != "" && a.Cluster != "" {
		return a.Region + "/" + a.Cluster
	}
	var found []string
	for id := range n.Tags {
		if name, ok := strings.CutPrefix(id, net+"."); ok && clusterOf[name] != "" {
			found = append(found, clusterOf[name])
		}
	}
	slices.Sort(found)
	if len(found) == 0 {
		return ""
	}
	return found[0]
}

// deleteTags deletes StateMesh's tags no longer wanted (after the ACL
// policies that used them: Netmaker refuses to delete a tag in use).
func (p *pass) deleteTags(ctx context.Context) {
	if p.d.SkipPolicy {
		return
	}
	for _, net := range p.names {
		for _, name := range sortedKeys(p.tags[net]) {
			if p.down {
				return
			}
			if !ourTag(p.tags[net][name]) || p.want[net][name] {
				continue
			}
			id := p.tags[net][name].ID
			if id == "" {
				id = TagID(net, name)
			}
			p.write(fmt.Sprintf("delete tag %s in %s (unused)", name, net), p.r.C.DeleteTag(ctx, id))
		}
	}
}
