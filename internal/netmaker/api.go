package netmaker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Operation is one Netmaker REST operation the client calls: a name for
// errors and its method and path template exactly as in swagger.yaml.
type Operation struct {
	Name, Method, Path string
}

// The operations StateMesh calls. Every client method goes through one
// of these; TestEveryClientOperationIsInSwagger looks each up.
var (
	opListNetworks   = Operation{"list networks", "GET", "/api/networks"}
	opCreateNetwork  = Operation{"create network", "POST", "/api/networks"}
	opGetNetwork     = Operation{"get network", "GET", "/api/networks/{networkname}"}
	opUpdateNetwork  = Operation{"update network", "PUT", "/api/networks/{networkname}"}
	opDeleteNetwork  = Operation{"delete network", "DELETE", "/api/networks/{networkname}"}
	opListKeys       = Operation{"list enrollment keys", "GET", "/api/v1/enrollment-keys"}
	opCreateKey      = Operation{"create enrollment key", "POST", "/api/v1/enrollment-keys"}
	opUpdateKey      = Operation{"update enrollment key", "PUT", "/api/v1/enrollment-keys/{keyID}"}
	opDeleteKey      = Operation{"delete enrollment key", "DELETE", "/api/v1/enrollment-keys/{keyID}"}
	opListPending    = Operation{"list pending hosts", "GET", "/api/v1/pending_hosts"}
	opApprovePending = Operation{"approve pending host", "POST", "/api/v1/pending_hosts/approve/{id}"}
	opRejectPending  = Operation{"reject pending host", "POST", "/api/v1/pending_hosts/reject/{id}"}
	opListHosts      = Operation{"list hosts", "GET", "/api/hosts"}
	opDeleteHost     = Operation{"delete host", "DELETE", "/api/hosts/{hostid}"}
	opRemoveHost     = Operation{"remove host from network", "DELETE", "/api/hosts/{hostid}/networks/{network}"}
	opListNodes      = Operation{"list network nodes", "GET", "/api/nodes/{network}"}
	opListTags       = Operation{"list tags", "GET", "/api/v1/tags"}
	opCreateTag      = Operation{"create tag", "POST", "/api/v1/tags"}
	opUpdateTag      = Operation{"update tag", "PUT", "/api/v1/tags"}
	opDeleteTag      = Operation{"delete tag", "DELETE", "/api/v1/tags"}
	opListACLs       = Operation{"list ACL policies", "GET", "/api/v1/acls"}
	opCreateACL      = Operation{"create ACL policy", "POST", "/api/v1/acls"}
	opUpdateACL      = Operation{"update ACL policy", "PUT", "/api/v1/acls"}
	opDeleteACL      = Operation{"delete ACL policy", "DELETE", "/api/v1/acls"}
	opCreateGateway  = Operation{"create gateway", "POST", "/api/nodes/{network}/{nodeid}/gateway"}
	opDeleteGateway  = Operation{"delete gateway", "DELETE", "/api/nodes/{network}/{nodeid}/gateway"}
	opServerStatus   = Operation{"server status", "GET", "/api/server/status"}
	opFeatureFlags   = Operation{"feature flags", "GET", "/api/server/feature_flags"}
)

var operations = []Operation{
	opListNetworks, opCreateNetwork, opGetNetwork, opUpdateNetwork, opDeleteNetwork,
	opListKeys, opCreateKey, opUpdateKey, opDeleteKey,
	opListPending, opApprovePending, opRejectPending,
	opListHosts, opDeleteHost, opRemoveHost, opListNodes,
	opListTags, opCreateTag, opUpdateTag, opDeleteTag,
	opListACLs, opCreateACL, opUpdateACL, opDeleteACL,
	opCreateGateway, opDeleteGateway, opServerStatus, opFeatureFlags,
}

// Operations lists every operation the client can call.
func Operations() []Operation { return slices.Clone(operations) }

// expand fills the template's {parameters} with args, in order, escaped.
func (o Operation) expand(args []string) (string, error) {
	segs := strings.Split(o.Path, "/")
	n := 0
	for i, s := range segs {
		if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
			if n >= len(args) || args[n] == "" {
				return "", fmt.Errorf("netmaker: %s: path parameter %s is empty", o.Name, s)
			}
			segs[i] = url.PathEscape(args[n])
			n++
		}
	}
	if n != len(args) {
		return "", fmt.Errorf("netmaker: %s: %d path arguments for %d parameters", o.Name, len(args), n)
	}
	return strings.Join(segs, "/"), nil
}

// Network is schema.Network. Fields holds everything the server sent, so
// an update sends back what StateMesh does not manage unchanged.
type Network struct {
	NetID         string `json:"netid"`
	AddressRange  string `json:"addressrange,omitempty"`
	AddressRange6 string `json:"addressrange6,omitempty"`
	DefaultMTU    int    `json:"defaultmtu,omitempty"`
	AutoJoin      bool   `json:"auto_join"`
	CreatedBy     string `json:"created_by,omitempty"`

	Fields map[string]any `json:"-"`
}

// UnmarshalJSON keeps all fields.
func (n *Network) UnmarshalJSON(b []byte) error {
	type plain Network
	if err := json.Unmarshal(b, (*plain)(n)); err != nil {
		return err
	}
	return json.Unmarshal(b, &n.Fields)
}

// MarshalJSON writes the fields received with the typed ones on top.
func (n Network) MarshalJSON() ([]byte, error) {
	type plain Network
	b, err := json.Marshal(plain(n))
	if err != nil || len(n.Fields) == 0 {
		return b, err
	}
	var typed map[string]any
	if err := json.Unmarshal(b, &typed); err != nil {
		return nil, err
	}
	all := make(map[string]any, len(n.Fields)+len(typed))
	for k, v := range n.Fields {
		all[k] = v
	}
	for k, v := range typed {
		all[k] = v
	}
	return json.Marshal(all)
}

// Key types (models.KeyType).
const (
	KeyUndefined      = 0
	KeyTimeExpiration = 1
	KeyUses           = 2
	KeyUnlimited      = 3
)

// KeyRequest is models.APIEnrollmentKey. Tags are the key's names: the
// server wants 1+ of 3..32 characters, unique across all keys. Groups are
// tag IDs (NETWORK.TAG) given to every host that joins with the key.
type KeyRequest struct {
	Tags          []string `json:"tags"`
	Networks      []string `json:"networks"`
	Groups        []string `json:"groups"`
	Type          int      `json:"type"`
	Unlimited     bool     `json:"unlimited"`
	UsesRemaining int      `json:"uses_remaining,omitempty"`
	Expiration    int64    `json:"expiration,omitempty"` // Unix seconds
	Relay         string   `json:"relay,omitempty"`      // node ID of a relay
}

// EnrollmentKey is models.EnrollmentKey. Value (its ID) and Token (what
// netclient joins with) are secrets.
type EnrollmentKey struct {
	Value         Token    `json:"value"`
	Token         Token    `json:"token,omitempty"`
	Tags          []string `json:"tags"`
	Networks      []string `json:"networks"`
	Groups        []string `json:"groups"`
	Type          int      `json:"type"`
	Unlimited     bool     `json:"unlimited"`
	UsesRemaining int      `json:"uses_remaining"`
	Expiration    string   `json:"expiration,omitempty"`
	Relay         string   `json:"relay,omitempty"`
	Default       bool     `json:"default,omitempty"`
}

// Expires is when a time-limited key stops working (zero: never).
func (k EnrollmentKey) Expires() time.Time {
	t, err := time.Parse(time.RFC3339Nano, k.Expiration)
	if err != nil || t.Year() <= 1 {
		return time.Time{}
	}
	return t
}

// PendingHost is schema.PendingHost: a host that registered with an
// enrollment key for a network that holds new hosts for approval.
type PendingHost struct {
	ID        string `json:"id"`
	HostID    string `json:"host_id"`
	HostName  string `json:"host_name"`
	Network   string `json:"network"`
	PublicKey string `json:"public_key"`
	// EnrollmentKey is the key the host registered with, as the server
	// stored it: swagger.yaml says an array of integers (the bytes of
	// its JSON); the server sends the JSON object. KeyUsed reads both.
	EnrollmentKey json.RawMessage `json:"enrollment_key_id,omitempty"`
	OS            string          `json:"os,omitempty"`
	Version       string          `json:"version,omitempty"`
	RequestedAt   string          `json:"requested_at"`
}

// KeyUsed decodes the enrollment key the host registered with; ok is
// false when the server did not say.
func (p PendingHost) KeyUsed() (k EnrollmentKey, ok bool) {
	raw := p.EnrollmentKey
	var ints []int
	var s string
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return k, false
	case json.Unmarshal(raw, &ints) == nil:
		b := make([]byte, len(ints))
		for i, v := range ints {
			if v < 0 || v > 255 {
				return k, false
			}
			b[i] = byte(v)
		}
		raw = b
	case json.Unmarshal(raw, &s) == nil:
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return k, false
		}
		raw = b
	}
	if json.Unmarshal(raw, &k) != nil || (k.Value == "" && len(k.Tags) == 0) {
		return EnrollmentKey{}, false
	}
	return k, true
}

// Requested parses RequestedAt.
func (p PendingHost) Requested() (time.Time, bool) {
	t, err := time.Parse(time.RFC3339Nano, p.RequestedAt)
	return t, err == nil && t.Year() > 1
}

// Host is models.ApiHost (the fields StateMesh uses).
type Host struct {
	ID        string   `json:"id"`
	Name      string   `json:"name"`
	PublicKey string   `json:"publickey"`
	Nodes     []string `json:"nodes"`
	IsDefault bool     `json:"isdefault,omitempty"`
}

// Node is models.ApiNode: a host's membership in one network.
type Node struct {
	ID            string         `json:"id"`
	HostID        string         `json:"hostid"`
	Network       string         `json:"network"`
	Address       string         `json:"address,omitempty"`
	IsGateway     bool           `json:"is_gw,omitempty"`
	IsRelay       bool           `json:"isrelay,omitempty"`
	IsRelayed     bool           `json:"isrelayed,omitempty"`
	RelayedBy     string         `json:"relayedby,omitempty"`
	RelayNodes    []string       `json:"relaynodes,omitempty"`
	Metadata      string         `json:"metadata,omitempty"`
	PendingDelete bool           `json:"pendingdelete,omitempty"`
	Tags          map[string]any `json:"tags,omitempty"`
}

// NodeRef names a node in a tag's tagged_nodes (models.ApiNode requires
// id and hostid).
type NodeRef struct {
	ID      string `json:"id"`
	HostID  string `json:"hostid"`
	Network string `json:"network"`
}

// Tag is models.TagListRespNodes. Its ID is NETWORK.NAME.
type Tag struct {
	ID          string `json:"id"`
	Name        string `json:"tag_name"`
	Network     string `json:"network"`
	ColorCode   string `json:"color_code,omitempty"`
	CreatedBy   string `json:"created_by,omitempty"`
	TaggedNodes []Node `json:"tagged_nodes"`
}

// TagRequest is models.CreateTagReq (ID empty) or models.UpdateTagReq
// (ID set; TaggedNodes replaces the tag's members).
type TagRequest struct {
	ID          string    `json:"id,omitempty"`
	Name        string    `json:"tag_name"`
	Network     string    `json:"network"`
	ColorCode   string    `json:"color_code,omitempty"`
	TaggedNodes []NodeRef `json:"tagged_nodes"`
}

// TagID is Netmaker's ID of a tag in a network.
func TagID(network, tag string) string { return network + "." + tag }

// ACL is models.Acl (also the body of an update, models.UpdateAclRequest).
type ACL struct {
	ID          string   `json:"id,omitempty"`
	Name        string   `json:"name"`
	MetaData    string   `json:"meta_data"`
	NetworkID   string   `json:"network_id"`
	Policy      string   `json:"policy_type"`
	Src         []ACLTag `json:"src_type"`
	Dst         []ACLTag `json:"dst_type"`
	Protocol    string   `json:"protocol"`
	ServiceType string   `json:"type"`
	Ports       []string `json:"ports"`
	Direction   int      `json:"allowed_traffic_direction"`
	Enabled     bool     `json:"enabled"`
	Default     bool     `json:"default,omitempty"`
	CreatedBy   string   `json:"created_by,omitempty"`
}

// ACLTag is models.AclPolicyTag: ID is the kind (models.AclGroupType:
// "tag", "device", ...), Value the tag ID or "*".
type ACLTag struct {
	ID    string `json:"id"`
	Value string `json:"value"`
	Name  string `json:"name,omitempty"` // filled in by the server
}

// ACL constants (models.Protocol, models.AllowedTrafficDirection, the
// service types of models.Acl.type).
const (
	PolicyDevice = "device-policy"
	OneWay       = 0
	BothWays     = 1
)

// GatewayRequest is models.CreateGwReq (the fields StateMesh sets).
type GatewayRequest struct {
	NetID    string   `json:"netid"`
	NodeID   string   `json:"nodeid"`
	Metadata string   `json:"metadata"`
	Relayed  []string `json:"relayaddrs"`
}

// FeatureFlags is models.FeatureFlags (the field StateMesh needs).
type FeatureFlags struct {
	DeviceApproval bool `json:"enable_device_approval"`
}

// Networks lists the networks.
func (c *Client) Networks(ctx context.Context) ([]Network, error) {
	var out []Network
	return out, c.do(ctx, opListNetworks, nil, nil, nil, &out)
}

// Network reads one network.
func (c *Client) Network(ctx context.Context, name string) (Network, error) {
	var out Network
	return out, c.do(ctx, opGetNetwork, []string{name}, nil, nil, &out)
}

// CreateNetwork creates a network.
func (c *Client) CreateNetwork(ctx context.Context, n Network) (Network, error) {
	var out Network
	return out, c.do(ctx, opCreateNetwork, nil, nil, n, &out)
}

// UpdateNetwork changes a network's settings. The server changes
// auto_join, auto-removal and virtual NAT; not the address range or MTU.
func (c *Client) UpdateNetwork(ctx context.Context, n Network) (Network, error) {
	var out Network
	return out, c.do(ctx, opUpdateNetwork, []string{n.NetID}, nil, n, &out)
}

// DeleteNetwork deletes a network. Netmaker v1.5.1 does not refuse while
// it has nodes: it takes every host out of it first (callers check).
func (c *Client) DeleteNetwork(ctx context.Context, name string) error {
	return c.do(ctx, opDeleteNetwork, []string{name}, nil, nil, nil)
}

// EnrollmentKeys lists the enrollment keys.
func (c *Client) EnrollmentKeys(ctx context.Context) ([]EnrollmentKey, error) {
	var out []EnrollmentKey
	return out, c.do(ctx, opListKeys, nil, nil, nil, &out)
}

// CreateEnrollmentKey creates a key.
func (c *Client) CreateEnrollmentKey(ctx context.Context, k KeyRequest) (EnrollmentKey, error) {
	var out EnrollmentKey
	return out, c.do(ctx, opCreateKey, nil, nil, k.normal(), &out)
}

// UpdateEnrollmentKey changes a key's groups and relay (all the server
// changes).
func (c *Client) UpdateEnrollmentKey(ctx context.Context, value Token, k KeyRequest) (EnrollmentKey, error) {
	var out EnrollmentKey
	return out, c.do(ctx, opUpdateKey, []string{value.Reveal()}, nil, k.normal(), &out)
}

// DeleteEnrollmentKey revokes a key.
func (c *Client) DeleteEnrollmentKey(ctx context.Context, value Token) error {
	return c.do(ctx, opDeleteKey, []string{value.Reveal()}, nil, nil, nil)
}

// normal sends [] rather than null for lists (the schema says arrays).
func (k KeyRequest) normal() KeyRequest {
	k.Tags, k.Networks, k.Groups = nonNil(k.Tags), nonNil(k.Networks), nonNil(k.Groups)
	return k
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// PendingHosts lists the hosts waiting for approval in a network. Only
// the network's are returned, whatever the server sends.
func (c *Client) PendingHosts(ctx context.Context, network string) ([]PendingHost, error) {
	var all []PendingHost
	if err := c.do(ctx, opListPending, nil, url.Values{"network": {network}}, nil, &all); err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(p PendingHost) bool { return p.Network != network }), nil
}

// ApprovePendingHost admits a pending host into its network.
func (c *Client) ApprovePendingHost(ctx context.Context, id string) (Node, error) {
	var out Node
	return out, c.do(ctx, opApprovePending, []string{id}, nil, nil, &out)
}

// RejectPendingHost drops a pending host's request.
func (c *Client) RejectPendingHost(ctx context.Context, id string) error {
	return c.do(ctx, opRejectPending, []string{id}, nil, nil, nil)
}

// Hosts lists the hosts.
func (c *Client) Hosts(ctx context.Context) ([]Host, error) {
	var out []Host
	return out, c.do(ctx, opListHosts, nil, nil, nil, &out)
}

// DeleteHost deletes a host from the server (all its networks).
// StateMesh's reconciler never calls it: it takes hosts out of networks.
func (c *Client) DeleteHost(ctx context.Context, hostID string, force bool) error {
	return c.do(ctx, opDeleteHost, []string{hostID}, forceQuery(force), nil, nil)
}

// RemoveHostFromNetwork takes a host out of a network. force deletes the
// node at once instead of waiting for the host to acknowledge (a
// quarantined host may never do).
func (c *Client) RemoveHostFromNetwork(ctx context.Context, hostID, network string, force bool) error {
	return c.do(ctx, opRemoveHost, []string{hostID, network}, forceQuery(force), nil, nil)
}

func forceQuery(force bool) url.Values {
	if !force {
		return nil
	}
	return url.Values{"force": {"true"}}
}

// Nodes lists a network's nodes (one per member host).
func (c *Client) Nodes(ctx context.Context, network string) ([]Node, error) {
	var out []Node
	return out, c.do(ctx, opListNodes, []string{network}, nil, nil, &out)
}

// Tags lists a network's tags with their nodes (Netmaker Pro).
func (c *Client) Tags(ctx context.Context, network string) ([]Tag, error) {
	var out []Tag
	return out, c.do(ctx, opListTags, nil, url.Values{"network": {network}}, nil, &out)
}

// CreateTag creates a tag in a network.
func (c *Client) CreateTag(ctx context.Context, t TagRequest) (Tag, error) {
	t.ID, t.TaggedNodes = "", nonNil(t.TaggedNodes)
	var out Tag
	return out, c.do(ctx, opCreateTag, nil, nil, t, &out)
}

// UpdateTag sets a tag's members to t.TaggedNodes.
func (c *Client) UpdateTag(ctx context.Context, t TagRequest) error {
	t.TaggedNodes = nonNil(t.TaggedNodes)
	return c.do(ctx, opUpdateTag, nil, nil, t, nil)
}

// DeleteTag deletes a tag by ID (the server refuses while an active
// policy uses it).
func (c *Client) DeleteTag(ctx context.Context, id string) error {
	return c.do(ctx, opDeleteTag, nil, url.Values{"tag_id": {id}}, nil, nil)
}

// ACLs lists a network's ACL policies.
func (c *Client) ACLs(ctx context.Context, network string) ([]ACL, error) {
	var out []ACL
	return out, c.do(ctx, opListACLs, nil, url.Values{"network": {network}}, nil, &out)
}

// CreateACL adds an ACL policy.
func (c *Client) CreateACL(ctx context.Context, a ACL) (ACL, error) {
	a.ID, a.CreatedBy, a.Default = "", "", false
	var out ACL
	return out, c.do(ctx, opCreateACL, nil, nil, a.normal(), &out)
}

// UpdateACL changes an ACL policy (by a.ID).
func (c *Client) UpdateACL(ctx context.Context, a ACL) error {
	return c.do(ctx, opUpdateACL, nil, nil, a.normal(), nil)
}

// DeleteACL removes an ACL policy.
func (c *Client) DeleteACL(ctx context.Context, id string) error {
	return c.do(ctx, opDeleteACL, nil, url.Values{"acl_id": {id}}, nil, nil)
}

func (a ACL) normal() ACL {
	a.Src, a.Dst, a.Ports = nonNil(a.Src), nonNil(a.Dst), nonNil(a.Ports)
	return a
}

// CreateGateway makes a network's node a gateway (relay and remote-access
// ingress), relaying the nodes listed.
func (c *Client) CreateGateway(ctx context.Context, g GatewayRequest) (Node, error) {
	g.Relayed = nonNil(g.Relayed)
	var out Node
	return out, c.do(ctx, opCreateGateway, []string{g.NetID, g.NodeID}, nil, g, &out)
}

// DeleteGateway takes the gateway role off a node.
func (c *Client) DeleteGateway(ctx context.Context, network, nodeID string) error {
	return c.do(ctx, opDeleteGateway, []string{network, nodeID}, nil, nil, nil)
}

// Status is the server's health (db_connected, broker_connected, version,
// is_pro, ...; the schema says only "object").
func (c *Client) Status(ctx context.Context) (map[string]any, error) {
	var out map[string]any
	return out, c.do(ctx, opServerStatus, nil, nil, nil, &out)
}

// FeatureFlags reads the server's feature flags.
func (c *Client) FeatureFlags(ctx context.Context) (FeatureFlags, error) {
	var out FeatureFlags
	return out, c.do(ctx, opFeatureFlags, nil, nil, nil, &out)
}
