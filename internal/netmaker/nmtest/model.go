package nmtest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"
)

// The model's objects, with the JSON of swagger.yaml's definitions.
type (
	// Network is schema.Network.
	Network struct {
		ID                  string   `json:"id"`
		NetID               string   `json:"netid"`
		AddressRange        string   `json:"addressrange"`
		AddressRange6       string   `json:"addressrange6"`
		DefaultMTU          int      `json:"defaultmtu"`
		DefaultKeepalive    int      `json:"defaultkeepalive"`
		AutoJoin            bool     `json:"auto_join"`
		AutoRemove          bool     `json:"auto_remove"`
		AutoRemoveTags      []string `json:"auto_remove_tags"`
		AutoRemoveThreshold int      `json:"auto_remove_threshold"`
		CreatedBy           string   `json:"created_by"`
		CreatedAt           string   `json:"created_at"`
	}
	// Key is models.EnrollmentKey.
	Key struct {
		Value         string   `json:"value"`
		Token         string   `json:"token"`
		Tags          []string `json:"tags"`
		Networks      []string `json:"networks"`
		Groups        []string `json:"groups"`
		Type          int      `json:"type"`
		Unlimited     bool     `json:"unlimited"`
		UsesRemaining int      `json:"uses_remaining"`
		Expiration    string   `json:"expiration"`
		Relay         string   `json:"relay"`
		Default       bool     `json:"default"`
	}
	// Pending is schema.PendingHost.
	Pending struct {
		ID            string          `json:"id"`
		HostID        string          `json:"host_id"`
		HostName      string          `json:"host_name"`
		Network       string          `json:"network"`
		PublicKey     string          `json:"public_key"`
		EnrollmentKey json.RawMessage `json:"enrollment_key_id,omitempty"`
		OS            string          `json:"os"`
		RequestedAt   string          `json:"requested_at"`
	}
	// Host is models.ApiHost.
	Host struct {
		ID        string   `json:"id"`
		Name      string   `json:"name"`
		PublicKey string   `json:"publickey"`
		Nodes     []string `json:"nodes"`
		OS        string   `json:"os"`
	}
	// Node is models.ApiNode.
	Node struct {
		ID            string              `json:"id"`
		HostID        string              `json:"hostid"`
		Network       string              `json:"network"`
		Address       string              `json:"address"`
		IsGw          bool                `json:"is_gw"`
		IsRelay       bool                `json:"isrelay"`
		IsIngress     bool                `json:"isingressgateway"`
		IsRelayed     bool                `json:"isrelayed"`
		RelayedBy     string              `json:"relayedby"`
		RelayNodes    []string            `json:"relaynodes"`
		Metadata      string              `json:"metadata"`
		PendingDelete bool                `json:"pendingdelete"`
		Tags          map[string]struct{} `json:"tags"`
	}
	// Tag is models.TagListRespNodes (members are the nodes' tags).
	Tag struct {
		ID        string `json:"id"`
		TagName   string `json:"tag_name"`
		Network   string `json:"network"`
		ColorCode string `json:"color_code"`
		CreatedBy string `json:"created_by"`
	}
	// ACL is models.Acl.
	ACL struct {
		ID          string   `json:"id"`
		Name        string   `json:"name"`
		MetaData    string   `json:"meta_data"`
		NetworkID   string   `json:"network_id"`
		PolicyType  string   `json:"policy_type"`
		Src         []ACLTag `json:"src_type"`
		Dst         []ACLTag `json:"dst_type"`
		Protocol    string   `json:"protocol"`
		ServiceType string   `json:"type"`
		Ports       []string `json:"ports"`
		Direction   int      `json:"allowed_traffic_direction"`
		Enabled     bool     `json:"enabled"`
		Default     bool     `json:"default"`
		CreatedBy   string   `json:"created_by"`
	}
	// ACLTag is models.AclPolicyTag.
	ACLTag struct {
		ID    string `json:"id"`
		Name  string `json:"name,omitempty"`
		Value string `json:"value"`
	}
)

// Model is the server's state. Tests may seed and inspect it through
// Server.Do.
type Model struct {
	Networks map[string]*Network
	Keys     map[string]*Key // by value
	Pending  map[string]*Pending
	Hosts    map[string]*Host
	Nodes    map[string]*Node
	Tags     map[string]*Tag // by ID (NETWORK.NAME)
	ACLs     map[string]*ACL

	opts Options
	seq  int
	// master: the request being served came with the master key.
	master bool
}

func newModel(o Options) *Model {
	return &Model{opts: o, Networks: map[string]*Network{}, Keys: map[string]*Key{}, Pending: map[string]*Pending{},
		Hosts: map[string]*Host{}, Nodes: map[string]*Node{}, Tags: map[string]*Tag{}, ACLs: map[string]*ACL{}}
}

func (m *Model) id(kind string) string {
	m.seq++
	return fmt.Sprintf("%s-%08d", kind, m.seq)
}

func sortedValues[V any](mp map[string]*V) []*V {
	keys := make([]string, 0, len(mp))
	for k := range mp {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]*V, len(keys))
	for i, k := range keys {
		out[i] = mp[k]
	}
	return out
}

func (m *Model) sortedNodes() []*Node { return sortedValues(m.Nodes) }

type answer struct {
	status int
	body   any
}

// textBody is an answer sent as text/plain (the router's 404).
type textBody string

// emptyBody is an answer with no body and no content type.
type emptyBody struct{}

func ok(v any) answer { return answer{http.StatusOK, v} }
func fail(code int, msg string) answer {
	return answer{code, map[string]any{"Code": code, "Message": msg, "Response": nil}}
}

// wrapped answers inside models.SuccessResponse, whose fields have no
// json tags: {"Code":200,"Message":…,"Response":…} (bare in Swagger mode).
func (m *Model) wrapped(v any, msg string) answer {
	if !m.opts.Swagger {
		return ok(map[string]any{"Code": 200, "Message": msg, "Response": v})
	}
	return ok(v)
}

// success is logic.ReturnSuccessResponse: {"Code":200,"Message":msg,
// "Response":null} (lowercase, as swagger.yaml has it, in Swagger mode).
func (m *Model) success(msg string) answer {
	if m.opts.Swagger {
		return ok(map[string]any{"code": 200, "message": msg})
	}
	return ok(map[string]any{"Code": 200, "Message": msg, "Response": nil})
}

// callerKnown is the server's lookup of the calling user (schema.User.Get
// of the "user" header): the master key's masteradministrator is not in
// the database.
func (m *Model) callerKnown() bool { return !m.master || m.opts.Swagger }

var (
	netName = regexp.MustCompile(`^[a-z0-9_-]{1,32}$`)
	tagSyn  = regexp.MustCompile(`^[a-zA-Z0-9- ]{3,}$`)
)

// handle serves one checked request (the server's lock held).
func (m *Model) handle(op string, r *http.Request, body []byte) (int, any) {
	a := m.route(op, r, body)
	if m.opts.Swagger && a.status >= 400 {
		if b, ok := a.body.(map[string]any); ok && b["Code"] != nil {
			a.body = map[string]any{"code": b["Code"], "message": b["Message"]}
		}
	}
	return a.status, a.body
}

func (m *Model) route(op string, r *http.Request, body []byte) answer {
	q := r.URL.Query()
	seg := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	arg := func(i int) string { return seg[i] }
	dec := func(v any) error { return json.Unmarshal(body, v) }
	if m.opts.NoPro && strings.HasSuffix(op, " /api/v1/tags") {
		// No route on the community server: the router's own answer.
		return answer{http.StatusNotFound, textBody("404 page not found\n")}
	}
	switch op {
	case "GET /api/server/status":
		return ok(map[string]any{"db_connected": true, "broker_connected": true, "is_pro": !m.opts.NoPro, "version": "v1.5.1"})
	case "GET /api/server/feature_flags":
		return m.wrapped(map[string]any{"enable_device_approval": !m.opts.NoDeviceApproval, "enable_flow_logs": false}, "")
	case "GET /api/networks":
		return ok(nonNil(deref(sortedValues(m.Networks))))
	case "POST /api/networks":
		var n Network
		if err := dec(&n); err != nil {
			return fail(400, err.Error())
		}
		return m.createNetwork(n)
	case "GET /api/networks/{networkname}":
		if n := m.Networks[arg(2)]; n != nil {
			return ok(n)
		}
		return fail(404, "no result found")
	case "PUT /api/networks/{networkname}":
		var n Network
		if err := dec(&n); err != nil {
			return fail(400, err.Error())
		}
		return m.updateNetwork(arg(2), n)
	case "DELETE /api/networks/{networkname}":
		return m.deleteNetwork(arg(2), q.Get("force") == "true")
	case "GET /api/v1/enrollment-keys":
		return ok(nonNil(deref(sortedValues(m.Keys))))
	case "POST /api/v1/enrollment-keys":
		return m.createKey(body)
	case "PUT /api/v1/enrollment-keys/{keyID}":
		return m.updateKey(arg(3), body)
	case "DELETE /api/v1/enrollment-keys/{keyID}":
		if m.Keys[arg(3)] == nil {
			return fail(400, "no result found")
		}
		delete(m.Keys, arg(3))
		if !m.opts.Swagger {
			return answer{http.StatusOK, emptyBody{}} // the real server: 200, no body
		}
		return ok("")
	case "GET /api/v1/pending_hosts":
		out := []Pending{}
		for _, p := range sortedValues(m.Pending) {
			if p.Network == q.Get("network") || !m.opts.Swagger { // the real server lists them all
				out = append(out, *p)
			}
		}
		return m.wrapped(out, "returned pending hosts in "+q.Get("network"))
	case "POST /api/v1/pending_hosts/approve/{id}":
		return m.approve(arg(4))
	case "POST /api/v1/pending_hosts/reject/{id}":
		p := m.Pending[arg(4)]
		if p == nil {
			return fail(400, "record not found")
		}
		delete(m.Pending, p.ID)
		return m.wrapped(p, "deleted pending host from "+p.Network)
	case "GET /api/hosts":
		return ok(nonNil(deref(sortedValues(m.Hosts))))
	case "DELETE /api/hosts/{hostid}":
		h := m.Hosts[arg(2)]
		if h == nil {
			return fail(500, "host not found")
		}
		for _, id := range h.Nodes {
			m.dropNode(m.Nodes[id])
		}
		delete(m.Hosts, h.ID)
		return ok(h)
	case "DELETE /api/hosts/{hostid}/networks/{network}":
		return m.removeHost(arg(2), arg(4), q.Get("force") == "true")
	case "GET /api/nodes/{network}":
		out := []Node{}
		for _, n := range m.sortedNodes() {
			if n.Network == arg(2) {
				out = append(out, *n)
			}
		}
		return ok(out)
	case "GET /api/v1/tags":
		if m.Networks[q.Get("network")] == nil {
			return fail(400, "no result found")
		}
		out := []map[string]any{}
		for _, t := range sortedValues(m.Tags) {
			if t.Network == q.Get("network") {
				out = append(out, m.tagView(t))
			}
		}
		return m.wrapped(out, "fetched all tags in the network "+q.Get("network"))
	case "POST /api/v1/tags":
		return m.createTag(body)
	case "PUT /api/v1/tags":
		return m.updateTag(body)
	case "DELETE /api/v1/tags":
		return m.deleteTag(q.Get("tag_id"))
	case "GET /api/v1/acls":
		if m.Networks[q.Get("network")] == nil {
			return fail(400, "no result found")
		}
		out := []ACL{}
		for _, a := range sortedValues(m.ACLs) {
			if a.NetworkID == q.Get("network") {
				out = append(out, m.aclView(a))
			}
		}
		return m.wrapped(out, "fetched all acls in the network "+q.Get("network"))
	case "POST /api/v1/acls":
		return m.createACL(body)
	case "PUT /api/v1/acls":
		return m.updateACL(body)
	case "DELETE /api/v1/acls":
		a := m.ACLs[q.Get("acl_id")]
		switch {
		case a == nil:
			return fail(400, "no result found")
		case a.Default:
			return fail(400, "cannot delete default policy")
		}
		delete(m.ACLs, a.ID)
		return m.success("deleted acl " + a.Name)
	case "POST /api/nodes/{network}/{nodeid}/gateway":
		return m.createGateway(arg(2), arg(3), body)
	case "DELETE /api/nodes/{network}/{nodeid}/gateway":
		return m.deleteGateway(arg(2), arg(3))
	}
	return fail(http.StatusNotImplemented, "nmtest does not serve "+op)
}

func deref[V any](ps []*V) []V {
	out := make([]V, len(ps))
	for i, p := range ps {
		out[i] = *p
	}
	return out
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func (m *Model) createNetwork(n Network) answer {
	if !netName.MatchString(n.NetID) {
		return fail(400, "invalid character(s) in network name")
	}
	if m.Networks[n.NetID] != nil {
		return fail(400, "invalid network name")
	}
	if n.AddressRange == "" && n.AddressRange6 == "" {
		return fail(400, "IPv4 or IPv6 CIDR required")
	}
	for _, r := range []*string{&n.AddressRange, &n.AddressRange6} {
		if *r == "" {
			continue
		}
		p, err := netip.ParsePrefix(*r)
		if err != nil {
			return fail(400, "invalid CIDR address: "+*r)
		}
		if p.Bits() >= p.Addr().BitLen()-1 {
			return fail(400, "cannot create network with /31 or /32 cidr")
		}
		*r = p.Masked().String()
		for _, o := range m.Networks {
			for _, or := range []string{o.AddressRange, o.AddressRange6} {
				if op, err := netip.ParsePrefix(or); err == nil && op.Overlaps(p) {
					return fail(400, "network cidr already in use")
				}
			}
		}
	}
	if m.opts.NoDeviceApproval {
		n.AutoJoin = true
	}
	n.ID = m.id("net")
	if n.DefaultMTU == 0 {
		n.DefaultMTU = 1280
	}
	if n.DefaultKeepalive == 0 {
		n.DefaultKeepalive = 20
	}
	n.AutoRemoveTags = nonNil(n.AutoRemoveTags)
	n.CreatedAt = time.Now().UTC().Format(time.RFC3339)
	m.Networks[n.NetID] = &n
	// What the server creates with every network: the default policies,
	// the gateways tag and a default enrollment key.
	all := []ACLTag{{ID: "tag", Value: "*"}}
	m.ACLs[n.NetID+".all-nodes"] = &ACL{ID: n.NetID + ".all-nodes", Name: "All Nodes", MetaData: "This Policy allows all nodes in the network to communicate with each other",
		NetworkID: n.NetID, PolicyType: "device-policy", Src: all, Dst: all, Protocol: "all", ServiceType: "Any", Ports: []string{}, Direction: 1, Enabled: true, Default: true, CreatedBy: "auto"}
	gw := []ACLTag{{ID: "tag", Value: n.NetID + ".gateways"}}
	m.ACLs[n.NetID+".all-gateways"] = &ACL{ID: n.NetID + ".all-gateways", Name: "All Gateways", NetworkID: n.NetID, PolicyType: "device-policy",
		Src: gw, Dst: all, Protocol: "all", ServiceType: "Any", Ports: []string{}, Direction: 1, Enabled: true, Default: true, CreatedBy: "auto"}
	if !m.opts.NoPro {
		m.Tags[n.NetID+".gateways"] = &Tag{ID: n.NetID + ".gateways", TagName: "gateways", Network: n.NetID, CreatedBy: "auto"}
	}
	m.newKey(Key{Tags: []string{n.NetID}, Networks: []string{n.NetID}, Groups: []string{}, Type: 3, Unlimited: true, Default: true})
	return ok(n)
}

func (m *Model) updateNetwork(name string, n Network) answer {
	cur := m.Networks[name]
	if cur == nil || n.NetID != name {
		return fail(400, "failed to update network "+n.NetID+", cannot change netid.")
	}
	// As the server: auto_join and auto-removal change; the address
	// ranges and MTU do not.
	cur.AutoJoin = n.AutoJoin || m.opts.NoDeviceApproval
	cur.AutoRemove, cur.AutoRemoveThreshold, cur.AutoRemoveTags = n.AutoRemove, n.AutoRemoveThreshold, nonNil(n.AutoRemoveTags)
	return ok(cur)
}

func (m *Model) deleteNetwork(name string, force bool) answer {
	if m.Networks[name] == nil {
		return fail(400, "no result found")
	}
	for _, n := range m.Nodes {
		// swagger.yaml's server refuses; the real one (v1.5.1) takes
		// every host out of the network and deletes it.
		if n.Network == name && !force && m.opts.Swagger {
			return fail(403, "Node check failed: the network has nodes")
		}
	}
	for _, n := range m.sortedNodes() {
		if n.Network == name {
			m.dropNode(n)
		}
	}
	delete(m.Networks, name)
	for id, t := range m.Tags {
		if t.Network == name {
			delete(m.Tags, id)
		}
	}
	for id, a := range m.ACLs {
		if a.NetworkID == name {
			delete(m.ACLs, id)
		}
	}
	for v, k := range m.Keys {
		k.Networks = slices.DeleteFunc(k.Networks, func(n string) bool { return n == name })
		if len(k.Networks) == 0 {
			delete(m.Keys, v)
		}
	}
	if !m.opts.Swagger {
		return m.success("success") // as the real server words it
	}
	return m.success("deleted network " + name)
}

func (m *Model) newKey(k Key) *Key {
	m.seq++
	k.Value = fmt.Sprintf("%032d", m.seq)
	tok, _ := json.Marshal(map[string]string{"server": "api.nmtest", "value": k.Value})
	k.Token = base64.StdEncoding.EncodeToString(tok)
	if k.Expiration == "" {
		k.Expiration = time.Time{}.Format(time.RFC3339)
	}
	k.Networks, k.Groups = nonNil(k.Networks), nonNil(k.Groups)
	m.Keys[k.Value] = &k
	return &k
}

func (m *Model) createKey(body []byte) answer {
	var req struct {
		Tags          []string `json:"tags"`
		Networks      []string `json:"networks"`
		Groups        []string `json:"groups"`
		Unlimited     bool     `json:"unlimited"`
		UsesRemaining int      `json:"uses_remaining"`
		Expiration    int64    `json:"expiration"`
		Relay         string   `json:"relay"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return fail(400, err.Error())
	}
	if len(req.Tags) == 0 {
		return fail(400, "validation error: name length must be between 3 and 32")
	}
	for _, t := range req.Tags {
		if len(t) < 3 || len(t) > 32 {
			return fail(400, "validation error: name length must be between 3 and 32")
		}
		for _, k := range m.Keys {
			if slices.Contains(k.Tags, t) {
				return fail(400, "key names must be unique")
			}
		}
	}
	k := Key{Tags: req.Tags, Networks: req.Networks, Groups: req.Groups, Unlimited: req.Unlimited, Relay: req.Relay}
	switch {
	case req.UsesRemaining > 0:
		k.Type, k.UsesRemaining = 2, req.UsesRemaining
	case req.Expiration > 0:
		k.Type, k.Expiration = 1, time.Unix(req.Expiration, 0).UTC().Format(time.RFC3339)
	case req.Unlimited:
		k.Type = 3
	default:
		return fail(500, "enrollment key is not valid")
	}
	if req.Relay != "" {
		if r := m.Nodes[req.Relay]; r == nil || !r.IsRelay || !slices.Contains(req.Networks, r.Network) {
			return fail(500, "relay node is not a relay in the key's networks")
		}
	}
	return ok(m.newKey(k))
}

func (m *Model) updateKey(value string, body []byte) answer {
	k := m.Keys[value]
	if k == nil {
		return fail(500, "no result found")
	}
	var req struct {
		Groups []string `json:"groups"`
		Relay  string   `json:"relay"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return fail(400, err.Error())
	}
	k.Groups, k.Relay = nonNil(req.Groups), req.Relay // all the server changes
	return ok(k)
}
