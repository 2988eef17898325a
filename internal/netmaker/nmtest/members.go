package nmtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// hostFor returns the host with this key, creating it.
func (m *Model) hostFor(name, publicKey string) *Host {
	for _, h := range m.Hosts {
		if h.PublicKey == publicKey {
			return h
		}
	}
	h := &Host{ID: m.id("host"), Name: name, PublicKey: publicKey, Nodes: []string{}, OS: "linux"}
	m.Hosts[h.ID] = h
	return h
}

// addPending records a host's request to join (key: the key it used).
func (m *Model) addPending(h *Host, network string, key *Key, at time.Time) string {
	p := &Pending{ID: m.id("pending"), HostID: h.ID, HostName: h.Name, Network: network, PublicKey: h.PublicKey, OS: "linux",
		RequestedAt: at.UTC().Format(time.RFC3339Nano)}
	if key != nil {
		raw, _ := json.Marshal(key)
		if !m.opts.Swagger {
			p.EnrollmentKey = raw // the server sends the key's JSON object
		} else {
			// swagger.yaml: an array of integers (the bytes of the JSON)
			ints := make([]int, len(raw))
			for i, b := range raw {
				ints[i] = int(b)
			}
			p.EnrollmentKey, _ = json.Marshal(ints)
		}
	}
	m.Pending[p.ID] = p
	return p.ID
}

// join is netclient registering with a key.
func (m *Model) join(name, publicKey, keyOrToken string, at time.Time) ([]string, error) {
	k := m.Keys[keyOrToken]
	if k == nil {
		for _, c := range m.Keys {
			if c.Token == keyOrToken {
				k = c
			}
		}
	}
	if k == nil {
		return nil, errors.New("no such enrollment key")
	}
	if exp, err := time.Parse(time.RFC3339, k.Expiration); k.Type == 1 && err == nil && at.After(exp) {
		return nil, errors.New("enrollment key is not valid (expired)")
	}
	h := m.hostFor(name, publicKey)
	var ids []string
	for _, net := range k.Networks {
		n := m.Networks[net]
		if n == nil {
			continue
		}
		if n.AutoJoin {
			m.addNode(h, net, k)
			continue
		}
		ids = append(ids, m.addPending(h, net, k, at))
	}
	return ids, nil
}

// addNode makes a host a member of a network (with the key's groups).
func (m *Model) addNode(h *Host, network string, k *Key) *Node {
	n := &Node{ID: m.id("node"), HostID: h.ID, Network: network, RelayNodes: []string{}, Tags: map[string]struct{}{}}
	if net := m.Networks[network]; net != nil {
		if p, err := netip.ParsePrefix(net.AddressRange); err == nil {
			a := p.Addr().Next()
			for _, o := range m.Nodes {
				if o.Network == network {
					a = a.Next()
				}
			}
			n.Address = netip.PrefixFrom(a, p.Bits()).String()
		}
	}
	if k != nil {
		for _, g := range k.Groups {
			// The community edition too: it has no tags API, but its
			// nodes carry the key's groups as tags.
			n.Tags[g] = struct{}{}
		}
		if r := m.Nodes[k.Relay]; r != nil && r.IsGw && r.Network == network {
			n.IsRelayed, n.RelayedBy = true, r.ID
			r.RelayNodes = append(r.RelayNodes, n.ID)
		}
	}
	m.Nodes[n.ID] = n
	h.Nodes = append(h.Nodes, n.ID)
	return n
}

func (m *Model) dropNode(n *Node) {
	if n == nil {
		return
	}
	if h := m.Hosts[n.HostID]; h != nil {
		h.Nodes = slices.DeleteFunc(h.Nodes, func(id string) bool { return id == n.ID })
	}
	if r := m.Nodes[n.RelayedBy]; r != nil {
		r.RelayNodes = slices.DeleteFunc(r.RelayNodes, func(id string) bool { return id == n.ID })
	}
	for _, id := range n.RelayNodes {
		if o := m.Nodes[id]; o != nil {
			o.IsRelayed, o.RelayedBy = false, ""
		}
	}
	delete(m.Nodes, n.ID)
}

func (m *Model) approve(id string) answer {
	p := m.Pending[id]
	if p == nil {
		return fail(400, "record not found")
	}
	h := m.Hosts[p.HostID]
	if h == nil {
		return fail(400, "record not found")
	}
	for _, nid := range h.Nodes {
		if n := m.Nodes[nid]; n != nil && n.Network == p.Network && !n.PendingDelete {
			return fail(400, "host already part of network "+p.Network)
		}
	}
	var k *Key
	if len(p.EnrollmentKey) > 0 {
		raw := []byte(p.EnrollmentKey)
		var ints []int
		if json.Unmarshal(raw, &ints) == nil {
			raw = make([]byte, len(ints))
			for i, v := range ints {
				raw[i] = byte(v)
			}
		}
		k = &Key{}
		json.Unmarshal(raw, k)
	}
	n := m.addNode(h, p.Network, k)
	delete(m.Pending, id)
	return m.wrapped(n, "added pending host to "+p.Network)
}

func (m *Model) removeHost(hostID, network string, force bool) answer {
	h := m.Hosts[hostID]
	if h == nil {
		return fail(500, "host not found")
	}
	for _, nid := range h.Nodes {
		n := m.Nodes[nid]
		if n == nil || n.Network != network {
			continue
		}
		if force || n.PendingDelete {
			m.dropNode(n)
		} else {
			n.PendingDelete = true // until the host acknowledges (never, here)
		}
		if !m.opts.Swagger {
			return answer{http.StatusOK, emptyBody{}} // the real server: 200, no body, no content type
		}
		return ok("")
	}
	return fail(500, "host not part of the network "+network)
}

// tagView is a tag with its members (models.TagListRespNodes).
func (m *Model) tagView(t *Tag) map[string]any {
	nodes := []Node{}
	for _, n := range m.sortedNodes() {
		if _, ok := n.Tags[t.ID]; ok {
			nodes = append(nodes, *n)
		}
	}
	return map[string]any{"id": t.ID, "tag_name": t.TagName, "network": t.Network, "color_code": t.ColorCode,
		"created_by": t.CreatedBy, "tagged_nodes": nodes, "used_by_count": len(nodes)}
}

type tagReq struct {
	ID          string `json:"id"`
	TagName     string `json:"tag_name"`
	Network     string `json:"network"`
	ColorCode   string `json:"color_code"`
	TaggedNodes []struct {
		ID string `json:"id"`
	} `json:"tagged_nodes"`
}

func (m *Model) createTag(body []byte) answer {
	var req tagReq
	if err := json.Unmarshal(body, &req); err != nil {
		return fail(400, err.Error())
	}
	if !m.callerKnown() {
		return fail(400, "record not found")
	}
	if m.Networks[req.Network] == nil {
		return fail(400, "failed to get network details for "+req.Network)
	}
	id := req.Network + "." + req.TagName
	if m.Tags[id] != nil {
		return fail(400, fmt.Sprintf("tag with id %s exists already", req.TagName))
	}
	if !tagSyn.MatchString(req.TagName) {
		return fail(400, "invalid name. allowed characters are [a-zA-Z-]")
	}
	t := &Tag{ID: id, TagName: req.TagName, Network: req.Network, ColorCode: req.ColorCode, CreatedBy: "superadmin"}
	m.Tags[id] = t
	for _, r := range req.TaggedNodes {
		if n := m.Nodes[r.ID]; n != nil {
			n.Tags[id] = struct{}{}
		}
	}
	return m.wrapped(m.tagView(t), "created tag successfully")
}

func (m *Model) updateTag(body []byte) answer {
	var req tagReq
	if err := json.Unmarshal(body, &req); err != nil {
		return fail(400, err.Error())
	}
	t := m.Tags[req.ID]
	if t == nil {
		return fail(400, "no result found")
	}
	if req.ColorCode != "" {
		t.ColorCode = req.ColorCode
	}
	want := map[string]bool{}
	for _, r := range req.TaggedNodes {
		want[r.ID] = true
	}
	for _, n := range m.Nodes { // the members become exactly those listed
		if want[n.ID] {
			n.Tags[t.ID] = struct{}{}
		} else {
			delete(n.Tags, t.ID)
		}
	}
	return m.wrapped(m.tagView(t), "updated tags")
}

func (m *Model) deleteTag(id string) answer {
	t := m.Tags[id]
	if t == nil {
		return fail(400, "no result found")
	}
	for _, a := range m.ACLs {
		if a.Enabled && (usesTag(a.Src, id) || usesTag(a.Dst, id)) {
			return fail(400, "tag is currently in use by an active policy")
		}
	}
	delete(m.Tags, id)
	for _, n := range m.Nodes {
		delete(n.Tags, id)
	}
	for _, k := range m.Keys {
		k.Groups = slices.DeleteFunc(k.Groups, func(g string) bool { return g == id })
	}
	return m.success("deleted tag " + t.TagName)
}

func usesTag(ts []ACLTag, id string) bool {
	return slices.ContainsFunc(ts, func(t ACLTag) bool { return t.ID == "tag" && t.Value == id })
}

// aclView fills in the tags' names, as the server does.
func (m *Model) aclView(a *ACL) ACL {
	v := *a
	name := func(ts []ACLTag) []ACLTag {
		out := make([]ACLTag, len(ts))
		for i, t := range ts {
			out[i] = t
			if tag := m.Tags[t.Value]; tag != nil {
				out[i].Name = tag.TagName
			}
		}
		return out
	}
	v.Src, v.Dst = name(a.Src), name(a.Dst)
	return v
}

// checkACL is the server's validation of a policy.
func (m *Model) checkACL(a *ACL) error {
	if m.Networks[a.NetworkID] == nil {
		return errors.New("failed to get network details for " + a.NetworkID)
	}
	if m.opts.NoPro {
		// The community edition's IsAclPolicyValid: no one-way flows;
		// only "*", the gateways tag and nodes are valid sources and
		// destinations.
		if a.Direction == 0 {
			return errors.New("uni traffic flow not allowed on CE")
		}
		for _, t := range append(slices.Clone(a.Src), a.Dst...) {
			if t.Value != "*" && t.Value != a.NetworkID+".gateway" && t.ID != "device" {
				return errors.New("invalid policy")
			}
		}
	}
	for _, t := range append(slices.Clone(a.Src), a.Dst...) {
		if t.ID == "tag" && t.Value != "*" && m.Tags[t.Value] == nil {
			return fmt.Errorf("invalid tag %s", t.Value)
		}
	}
	if a.ServiceType == "Any" {
		a.Protocol, a.Ports = "all", []string{}
	}
	a.Src, a.Dst, a.Ports = nonNil(a.Src), nonNil(a.Dst), nonNil(a.Ports)
	return nil
}

func (m *Model) createACL(body []byte) answer {
	var a ACL
	if err := json.Unmarshal(body, &a); err != nil {
		return fail(400, err.Error())
	}
	if !m.callerKnown() {
		return fail(400, "record not found")
	}
	if err := m.checkACL(&a); err != nil {
		return fail(400, err.Error())
	}
	a.ID, a.CreatedBy, a.Default = m.id("acl"), "superadmin", false
	m.ACLs[a.ID] = &a
	return m.wrapped(m.aclView(&a), "created acl successfully")
}

func (m *Model) updateACL(body []byte) answer {
	var a ACL
	if err := json.Unmarshal(body, &a); err != nil {
		return fail(400, err.Error())
	}
	cur := m.ACLs[a.ID]
	switch {
	case cur == nil:
		return fail(400, "no result found")
	case a.NetworkID != cur.NetworkID:
		return fail(400, "invalid policy, network id mismatch")
	}
	if err := m.checkACL(&a); err != nil {
		return fail(400, err.Error())
	}
	a.Default, a.CreatedBy = cur.Default, cur.CreatedBy
	*cur = a
	if !m.opts.Swagger {
		return m.wrapped(m.aclView(cur), "updated acl "+cur.Name)
	}
	return m.success("updated acl " + cur.Name)
}

func (m *Model) createGateway(network, nodeID string, body []byte) answer {
	n := m.Nodes[nodeID]
	if n == nil || n.Network != network {
		return fail(400, "no result found")
	}
	var req struct {
		Metadata string   `json:"metadata"`
		Relayed  []string `json:"relayaddrs"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return fail(400, err.Error())
	}
	for _, id := range req.Relayed {
		r := m.Nodes[id]
		switch {
		case r == nil || r.Network != network:
			return fail(500, "relayed node "+id+" is not in network "+network)
		case r.IsRelayed && r.RelayedBy != n.ID:
			return fail(500, "node "+id+" is already being relayed")
		case id == n.ID:
			return fail(500, "a relay cannot relay itself")
		}
	}
	n.IsGw, n.IsRelay, n.IsIngress = true, true, true
	n.Metadata = req.Metadata
	if n.Metadata == "" {
		n.Metadata = "This host can be used for remote access"
	}
	n.RelayNodes = append([]string{}, req.Relayed...)
	for _, id := range req.Relayed {
		m.Nodes[id].IsRelayed, m.Nodes[id].RelayedBy = true, n.ID
	}
	n.Tags[network+".gateways"] = struct{}{}
	return ok(n)
}

func (m *Model) deleteGateway(network, nodeID string) answer {
	n := m.Nodes[nodeID]
	if n == nil || n.Network != network {
		return fail(400, "no result found")
	}
	for _, id := range n.RelayNodes {
		if r := m.Nodes[id]; r != nil {
			r.IsRelayed, r.RelayedBy = false, ""
		}
	}
	n.IsGw, n.IsRelay, n.IsIngress, n.Metadata, n.RelayNodes = false, false, false, "", []string{}
	delete(n.Tags, network+".gateways")
	return ok(n)
}

// NodeOf returns the node of a host (by name) in a network.
func (m *Model) NodeOf(host, network string) *Node {
	for _, n := range m.sortedNodes() {
		if h := m.Hosts[n.HostID]; h != nil && h.Name == host && n.Network == network {
			return n
		}
	}
	return nil
}

// TagsOf lists the tag names of a host's node in a network.
func (m *Model) TagsOf(host, network string) []string {
	n := m.NodeOf(host, network)
	if n == nil {
		return nil
	}
	var out []string
	for id := range n.Tags {
		out = append(out, strings.TrimPrefix(id, network+"."))
	}
	slices.Sort(out)
	return out
}

// NetworkACLs lists a network's ACL policies, sorted by name.
func (m *Model) NetworkACLs(network string) []ACL {
	var out []ACL
	for _, a := range sortedValues(m.ACLs) {
		if a.NetworkID == network {
			out = append(out, *a)
		}
	}
	slices.SortFunc(out, func(a, b ACL) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// AddNetwork adds a network as an operator would (not StateMesh's).
func (m *Model) AddNetwork(name, cidr string, autoJoin bool) {
	m.createNetwork(Network{NetID: name, AddressRange: cidr, AutoJoin: autoJoin, CreatedBy: "admin"})
}

// AddKey adds an enrollment key as an operator would; it returns its value.
func (m *Model) AddKey(name string, networks ...string) string {
	return m.newKey(Key{Tags: []string{name}, Networks: networks, Type: 3, Unlimited: true}).Value
}

// AddTag adds a tag as an operator would.
func (m *Model) AddTag(network, name string) {
	id := network + "." + name
	m.Tags[id] = &Tag{ID: id, TagName: name, Network: network, CreatedBy: "admin"}
}

// AddACL adds an ACL policy as an operator would; it returns its ID.
func (m *Model) AddACL(a ACL) string {
	a.ID, a.CreatedBy = m.id("acl"), "admin"
	a.Src, a.Dst, a.Ports = nonNil(a.Src), nonNil(a.Dst), nonNil(a.Ports)
	m.ACLs[a.ID] = &a
	return a.ID
}
