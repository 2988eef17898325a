// Package api is StateMesh's wire contract in Go: the request and response
// bodies of the controller's HTTP/JSON API (v1), its error codes and the
// frames of the network-map watch stream. The same contract is described
// for other languages in openapi.yaml (served at /v1/openapi.yaml), and
// contract tests check the server against it.
package api

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"time"

	"github.com/statemesh/statemesh/internal/netmap"
)

// Version is the API version, the first path segment.
const Version = "v1"

// OpenAPI is the contract as an OpenAPI 3 document.
//
//go:embed openapi.yaml
var OpenAPI []byte

// Limits on request bodies.
const (
	MaxRequestBytes = 1 << 20
	MaxSpecBytes    = 4 << 20
)

// Error codes. Every error response carries exactly one.
const (
	CodeInvalidArgument   = "invalid_argument"
	CodeSpecInvalid       = "spec_invalid"
	CodePlanInfeasible    = "plan_infeasible"
	CodeUnauthenticated   = "unauthenticated"
	CodePermissionDenied  = "permission_denied"
	CodeNotFound          = "not_found"
	CodeAlreadyExists     = "already_exists"
	CodeConflict          = "conflict"
	CodeTokenInvalid      = "token_invalid"
	CodeTokenExpired      = "token_expired"
	CodeTokenUsedUp       = "token_used_up"
	CodeTokenRevoked      = "token_revoked"
	CodeClusterFull       = "cluster_full"
	CodeNoSpec            = "no_spec"
	CodeTooLarge          = "too_large"
	CodeAttestationFailed = "attestation_failed"
	CodeQuarantined       = "quarantined"
	CodeUnavailable       = "unavailable"
	CodeInternal          = "internal"
)

// Error is the body of every error response.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Fields lists field-level problems (spec errors), when any.
	Fields []FieldError `json:"fields,omitempty"`
	// RetryAfter is the answer's Retry-After (429 and 503 answers), for
	// clients: not part of the body.
	RetryAfter time.Duration `json:"-"`
}

// FieldError is one problem with one field.
type FieldError struct {
	Path    string `json:"path"`
	Line    int    `json:"line,omitempty"`
	Message string `json:"message"`
	Fix     string `json:"fix,omitempty"`
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s: %s", e.Code, e.Message)
	for _, f := range e.Fields {
		s += "\n  " + f.Path
		if f.Line > 0 {
			s += fmt.Sprintf(" (line %d)", f.Line)
		}
		s += ": " + f.Message
		if f.Fix != "" {
			s += "; fix: " + f.Fix
		}
	}
	return s
}

// ErrorResponse wraps an Error.
type ErrorResponse struct {
	Error Error `json:"error"`
}

// ApplyResult is the answer to PUT /v1/spec.
type ApplyResult struct {
	Mesh     string `json:"mesh"`
	Revision int64  `json:"revision"`
	Regions  int    `json:"regions"`
	Clusters int    `json:"clusters"`
	// Unchanged is true when the spec equals the one in force.
	Unchanged bool `json:"unchanged"`
}

// Region is a region as the admin API shows it.
type Region struct {
	Name        string            `json:"name"`
	OverlayIPv4 string            `json:"overlayIPv4"`
	Gateways    []Gateway         `json:"gateways"`
	Clusters    int               `json:"clusters"`
	Nodes       int               `json:"nodes"`
	Designation map[string]string `json:"designation"`
}

// Gateway is a gateway's health and load.
type Gateway struct {
	Name     string   `json:"name"`
	Healthy  bool     `json:"healthy"`
	State    string   `json:"state"`
	Clusters []string `json:"clusters"`
	// Routing is the gateway's last BIRD report (BIRD mode).
	Routing *RoutingStatus `json:"routing,omitempty"`
	// Peers, RxBytes and TxBytes are from its last report: WireGuard
	// peers and the bytes through its mesh interface.
	Peers   int   `json:"peers,omitempty"`
	RxBytes int64 `json:"rxBytes,omitempty"`
	TxBytes int64 `json:"txBytes,omitempty"`
}

// Cluster is a cluster as the admin API shows it.
type Cluster struct {
	Region            string `json:"region"`
	Name              string `json:"name"`
	ClusterID         int    `json:"clusterID"`
	OverlayIPv4       string `json:"overlayIPv4"`
	PodIPv4           string `json:"podIPv4,omitempty"`
	PodIPv6           string `json:"podIPv6,omitempty"`
	MaxNodes          int    `json:"maxNodes"`
	Nodes             int    `json:"nodes"`
	DesignatedGateway string `json:"designatedGateway"`
}

// Node is an enrolled node.
type Node struct {
	Name           string     `json:"name"`
	Region         string     `json:"region"`
	Cluster        string     `json:"cluster,omitempty"`
	Role           string     `json:"role"`
	Class          string     `json:"class"`
	State          string     `json:"state"`
	PublicKey      netmap.Key `json:"publicKey"`
	OverlayIPv4    string     `json:"overlayIPv4"`
	OverlayIPv6    string     `json:"overlayIPv6,omitempty"`
	PodIPv4        string     `json:"podIPv4,omitempty"`
	PodIPv6        string     `json:"podIPv6,omitempty"`
	Endpoint       string     `json:"endpoint,omitempty"`
	PublicEndpoint string     `json:"publicEndpoint,omitempty"`
	EnrolledAt     time.Time  `json:"enrolledAt"`
	// AttestedAt is the last successful attestation (strong nodes).
	AttestedAt *time.Time `json:"attestedAt,omitempty"`
	// Reason says why a node is quarantined or was downgraded.
	Reason string `json:"reason,omitempty"`
	// Labels are the node's own labels.
	Labels map[string]string `json:"labels,omitempty"`
	// Healthy is set for gateways.
	Healthy *bool `json:"healthy,omitempty"`
	// From the node's last status report to the answering controller:
	// whether it enforces the policy ("enforced", or why not), the map
	// revision it applied, and when it reported.
	Firewall        string     `json:"firewall,omitempty"`
	Dataplane       string     `json:"dataplane,omitempty"`
	AppliedRevision int64      `json:"appliedRevision,omitempty"`
	ReportedAt      *time.Time `json:"reportedAt,omitempty"`
	// ClockSkewMillis is the node's clock minus the controller's at its
	// last report (network delay included).
	ClockSkewMillis float64 `json:"clockSkewMillis,omitempty"`
	// EKHash identifies the TPM a strong node attested with.
	EKHash string `json:"ekHash,omitempty"`
	// Peers and StalePeers are from the node's last report.
	Peers      int      `json:"peers,omitempty"`
	StalePeers []string `json:"stalePeers,omitempty"`
	// Routing is a BIRD-mode gateway's last report of its sessions.
	Routing *RoutingStatus `json:"routing,omitempty"`
}

// CreateTokenRequest asks for a join token. Node and operator tokens are
// bound to a cluster ("region/cluster"); gateway tokens to a region.
type CreateTokenRequest struct {
	Cluster string `json:"cluster,omitempty"`
	Region  string `json:"region,omitempty"`
	Role    string `json:"role,omitempty"`
	// TTL is a Go duration ("24h"); default 24h, at most 8760h.
	TTL string `json:"ttl,omitempty"`
	// Uses is how many enrollments the token allows; default 1.
	Uses int `json:"uses,omitempty"`
}

// Token describes a join token; its secret is never shown again.
type Token struct {
	ID        string    `json:"id"`
	Region    string    `json:"region"`
	Cluster   string    `json:"cluster,omitempty"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"createdAt"`
	ExpiresAt time.Time `json:"expiresAt"`
	Uses      int       `json:"uses"`
	Used      int       `json:"used"`
	Revoked   bool      `json:"revoked"`
}

// CreatedToken carries the token string, shown once.
type CreatedToken struct {
	Token
	// Secret is the full join token to give the agent (--token).
	Secret string `json:"secret"`
}

// CreateAdminTokenRequest asks for an admin token.
type CreateAdminTokenRequest struct {
	// Name says whose or what the token is (a person, a pipeline).
	Name string `json:"name"`
	// TTL is a Go duration ("720h"); default 720h (30 days), at most
	// 8760h. Admin tokens always expire, except the one the controller
	// writes to admin.json at its first start.
	TTL string `json:"ttl,omitempty"`
}

// AdminToken describes an admin token; its secret is never shown again.
type AdminToken struct {
	ID        string    `json:"id"`
	Name      string    `json:"name,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
	// ExpiresAt is zero for the bootstrap token (revoke it once you have
	// others).
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
	Expired   bool      `json:"expired,omitempty"`
}

// CreatedAdminToken carries the admin token string, shown once.
type CreatedAdminToken struct {
	AdminToken
	// Secret is the bearer token (sma1.ID.SECRET).
	Secret string `json:"secret"`
}

// EnrollRequest is a node's enrollment.
type EnrollRequest struct {
	Token string `json:"token"`
	Name  string `json:"name"`
	Role  string `json:"role"`
	// PublicKey is the node's WireGuard public key; the private key never
	// leaves the node.
	PublicKey netmap.Key `json:"publicKey"`
	// Endpoint is host:port where peers of the region reach the node.
	Endpoint string `json:"endpoint"`
	// PublicEndpoint is host:port where other regions' gateways reach a
	// gateway.
	PublicEndpoint string `json:"publicEndpoint,omitempty"`
	// CSR is a PEM certificate request for the node's client identity.
	CSR string `json:"csr"`
	// Labels are the node's labels (policy selectors match them).
	Labels map[string]string `json:"labels,omitempty"`
	// Evidence is the node's attestation evidence (attest.Evidence as
	// JSON), answering a challenge from /v1/attest/challenge and bound to
	// the TLS connection that carries this request.
	Evidence json.RawMessage `json:"evidence,omitempty"`
}

// EnrollResponse is the controller's answer to an enrollment.
type EnrollResponse struct {
	Node Node `json:"node"`
	// Certificate is the node's client certificate (PEM), CA the
	// controller's CA (PEM).
	Certificate string `json:"certificate"`
	CA          string `json:"ca"`
	// Revision is the store revision of the enrollment: the node's map is
	// served from this revision on.
	Revision int64 `json:"revision"`
}

// AttestChallengeRequest opens an attestation session: a node's TPM
// identity (attest.Identity as JSON), with its join token when it is not
// enrolled yet.
type AttestChallengeRequest struct {
	Token    string          `json:"token,omitempty"`
	Identity json.RawMessage `json:"identity,omitempty"`
}

// ControllerIdentity answers GET /v1/attest/controller: the controller's
// own TPM identity (attest.Identity as JSON), for mutual aTLS.
type ControllerIdentity struct {
	Identity json.RawMessage `json:"identity"`
}

// ControllerAttestRequest is a challenge an agent made for the
// controller's identity (attest.Challenge as JSON, without a session).
type ControllerAttestRequest struct {
	Challenge json.RawMessage `json:"challenge"`
}

// ControllerEvidence answers a ControllerAttestRequest (attest.Evidence as
// JSON): the activated credential and a quote whose extraData binds the
// TLS exporter of the connection it came on, the challenge's nonce and
// ControllerBinding.
type ControllerEvidence struct {
	Evidence json.RawMessage `json:"evidence"`
	// Batch, for a challenge without a credential, lists the bindings the
	// quote covers (its extraData is their SHA-256, in order); the
	// agent's own is one of them.
	Batch [][]byte `json:"batch,omitempty"`
}

// ControllerBinding takes the place of the WireGuard key in the binding of
// the controller's evidence.
var ControllerBinding = []byte("statemesh-controller")

// AttestChallenge is the controller's challenge (attest.Challenge as JSON).
type AttestChallenge struct {
	Challenge json.RawMessage `json:"challenge"`
	// ReattestInterval is how often the node must re-attest (seconds).
	ReattestInterval int `json:"reattestInterval"`
}

// AttestRequest carries evidence for re-attestation (attest.Evidence as
// JSON), bound to the TLS connection that carries it.
type AttestRequest struct {
	Evidence json.RawMessage `json:"evidence"`
}

// RenewRequest asks for a new node certificate.
type RenewRequest struct {
	CSR string `json:"csr"`
}

// RenewResponse carries it.
type RenewResponse struct {
	Certificate string `json:"certificate"`
}

// StatusReport is what an agent reports periodically. For gateways it is
// also the heartbeat.
type StatusReport struct {
	AppliedRevision int64 `json:"appliedRevision"`
	Peers           int   `json:"peers"`
	// StalePeers are peers whose last handshake is older than the agent's
	// staleness bound (3 minutes by default) or that never shook hands.
	StalePeers []string `json:"stalePeers,omitempty"`
	// Healthy is the agent's own verdict on its data plane.
	Healthy bool `json:"healthy"`
	// Firewall says whether the node enforces the policy ("enforced"), or
	// why not.
	Firewall string `json:"firewall,omitempty"`
	// Dataplane says what enforces it and why: "ebpf: ..." (the XDP guard
	// runs) or "nftables: ..." (chosen, or eBPF cannot run here).
	Dataplane string `json:"dataplane,omitempty"`
	Message   string `json:"message,omitempty"`
	// Paths are the agent's latest measurements of its paths to gateways
	// (and, on gateways, to the other gateways), sent after each probe
	// round; a report without them leaves the previous ones in place.
	Paths []PathProbe `json:"paths,omitempty"`
	// Time is the node's clock when it reported (clock skew threatens
	// certificate and attestation validity).
	Time time.Time `json:"time,omitzero"`
	// Routing is a BIRD-mode gateway's dynamic routing.
	Routing *RoutingStatus `json:"routing,omitempty"`
	// RxBytes and TxBytes are the WireGuard interface's byte counters
	// (all peers, since the interface came up).
	RxBytes int64 `json:"rxBytes,omitempty"`
	TxBytes int64 `json:"txBytes,omitempty"`
	// WAN is a baseline-mode gateway's reach of the other regions'
	// gateways through the mesh (its WAN link), with hysteresis.
	WAN *WANReach `json:"wan,omitempty"`
}

// WANReach is how many of the other regions' gateways a gateway echoed
// (Probed) and how many answered lately (Reached). Cut is set once none
// answered for a while, and cleared once they answered again for a while
// (the agent's hysteresis): the controller then moves the gateway's
// clusters to a gateway of its region that is not cut.
type WANReach struct {
	Probed  int  `json:"probed"`
	Reached int  `json:"reached"`
	Cut     bool `json:"cut"`
}

// RoutingStatus is what a BIRD-mode gateway reports of its routing.
type RoutingStatus struct {
	// BIRD is "running", or why it is not (missing, crashed, a
	// configuration it refused); a gateway without a running BIRD is
	// unhealthy, so designation moves away from it.
	BIRD string `json:"bird"`
	// Links says which backbone links could not be set up (their
	// sessions stay down; BIRD routes over the others).
	Links    string       `json:"links,omitempty"`
	Sessions []BGPSession `json:"sessions,omitempty"`
}

// BGPSession is one BGP session of a gateway.
type BGPSession struct {
	Name     string `json:"name"`
	Neighbor string `json:"neighbor"`
	// Peer is the gateway (or external router) at the other end.
	Peer string `json:"peer"`
	// State is BIRD's protocol state (up, start, down), BGPState the BGP
	// FSM state (Established, Active, ...), BFD the session's BFD state
	// (Up, Down, Init, or "" without BFD; Starting: Down, but never up
	// since the gateway's BIRD started, in its first 10 s: not a vote that
	// the peer is down).
	State    string `json:"state"`
	BGPState string `json:"bgpState"`
	BFD      string `json:"bfd,omitempty"`
}

// PathProbe is one measured path from the reporting node.
type PathProbe struct {
	Peer   string `json:"peer"`
	Region string `json:"region"`
	// RTTMillis is the median round trip of small echoes; Loss their loss
	// (0..1).
	RTTMillis float64 `json:"rttMillis"`
	Loss      float64 `json:"loss"`
	// PathMTU is the largest packet that crossed (0: unknown); PlannedMTU
	// the interface MTU the plan set.
	PathMTU    int       `json:"pathMTU"`
	PlannedMTU int       `json:"plannedMTU"`
	At         time.Time `json:"at"`
}

// Path is a measured path as the controller reports it.
type Path struct {
	From       string `json:"from"`
	FromRegion string `json:"fromRegion"`
	FromRole   string `json:"fromRole"`
	PathProbe
}

// Watch frame types.
const (
	FrameSnapshot = "snapshot"
	FrameDelta    = "delta"
	FramePing     = "ping"
)

// Frame is one line of the watch stream (newline-delimited JSON).
type Frame struct {
	Type     string        `json:"type"`
	Revision int64         `json:"revision"`
	Map      *netmap.Map   `json:"map,omitempty"`
	Delta    *netmap.Delta `json:"delta,omitempty"`
}

// AdminConfig is the admin credential file the controller writes at first
// start (0600) and the CLI reads.
type AdminConfig struct {
	Server string `json:"server"`
	CA     string `json:"ca"`
	Token  string `json:"token"`
}

// AddClientRequest registers an external WireGuard client. The client's
// key pair is made where the configuration is written (statemesh client
// add): only the public key reaches the controller.
type AddClientRequest struct {
	Name   string `json:"name"`
	Region string `json:"region"`
	// Segment is a clients segment of the policy; it may be omitted when
	// the policy has exactly one.
	Segment   string     `json:"segment,omitempty"`
	PublicKey netmap.Key `json:"publicKey"`
}

// Client is a registered external client.
type Client struct {
	Name        string     `json:"name"`
	Region      string     `json:"region"`
	Segment     string     `json:"segment"`
	PublicKey   netmap.Key `json:"publicKey"`
	AddressIPv4 string     `json:"addressIPv4"`
	AddressIPv6 string     `json:"addressIPv6,omitempty"`
	CreatedAt   time.Time  `json:"createdAt"`
	// Gateway is the region's gateway that serves clients now.
	Gateway string `json:"gateway,omitempty"`
}

// ClientConfig is what a client's WireGuard configuration is made of,
// without its private key.
type ClientConfig struct {
	Client Client `json:"client"`
	// Addresses of the client's interface (CIDR).
	Addresses []string `json:"addresses"`
	MTU       int      `json:"mtu"`
	// The one peer: the region's clients gateway.
	PeerName            string     `json:"peerName"`
	PeerPublicKey       netmap.Key `json:"peerPublicKey"`
	PeerEndpoint        string     `json:"peerEndpoint"`
	AllowedIPs          []string   `json:"allowedIPs"`
	PersistentKeepalive int        `json:"persistentKeepalive"`
}

// Event is something that happened in the mesh, as the controller saw it.
type Event struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // enrolled, removed, state, gateway-health, failover, spec, client
	Subject string    `json:"subject"`
	Message string    `json:"message"`
}

// Status is the one-screen summary of a mesh.
type Status struct {
	Mesh     string         `json:"mesh"`
	Revision int64          `json:"revision"`
	Regions  []RegionStatus `json:"regions"`
	// Nodes counts every node by class and state ("strong/active").
	Nodes map[string]int `json:"nodes"`
	// Quarantined names quarantined nodes (at most 50), StalePeers the
	// nodes reporting stale handshakes (at most 50).
	Quarantined []string `json:"quarantined"`
	StalePeers  []string `json:"stalePeers"`
	// NodesBehind reported an older map than the last change sent to them;
	// NodesReporting have reported to this controller.
	NodesBehind    int     `json:"nodesBehind"`
	NodesReporting int     `json:"nodesReporting"`
	Clients        int     `json:"clients"`
	Events         []Event `json:"events"`
	// Latency is the region × region matrix from the nodes' path probes.
	Latency []RegionLatency `json:"latency"`
	// Backends are the external systems the controller drives (Netmaker).
	Backends []BackendStatus `json:"backends,omitempty"`
}

// BackendStatus is the health of an external system the controller keeps
// in line with the registry.
type BackendStatus struct {
	Name     string    `json:"name"`
	Healthy  bool      `json:"healthy"`
	LastSync time.Time `json:"lastSync"`
	Error    string    `json:"error,omitempty"`
	// Approved, Rejected and Removed count hosts since the controller
	// started.
	Approved int `json:"approved"`
	Rejected int `json:"rejected"`
	Removed  int `json:"removed"`
	// RemovedUnattested counts, since the controller started, hosts
	// removed because no attested node owns them and they joined without
	// approval (a Netmaker server without device approval).
	RemovedUnattested int `json:"removedUnattested,omitempty"`
	// Unattested lists, as of the last pass, "HOST in NETWORK" for
	// members no attested node owns that were left in place.
	Unattested []string `json:"unattested,omitempty"`
	// Ungated: the backend admits hosts without approval (Netmaker's
	// device approval is off): removal is the gate.
	Ungated bool `json:"ungated,omitempty"`
}

// RegionLatency is one cell of the latency matrix: probes from nodes and
// gateways of From to gateways of To (From == To: inside the region).
type RegionLatency struct {
	From string `json:"from"`
	To   string `json:"to"`
	// RTTMillis is the median of the answered paths' median RTTs; Loss
	// the mean loss over all paths; Paths how many were probed.
	RTTMillis float64 `json:"rttMillis"`
	Loss      float64 `json:"loss"`
	Paths     int     `json:"paths"`
	// MinPathMTU is the smallest path MTU probed (0: none measured).
	MinPathMTU int `json:"minPathMTU"`
}

// RegionStatus is a region's gateways and clusters.
type RegionStatus struct {
	Name     string          `json:"name"`
	Gateways []Gateway       `json:"gateways"`
	Clusters []ClusterStatus `json:"clusters"`
}

// ClusterStatus is a cluster's designated gateway and node counts.
type ClusterStatus struct {
	Name              string         `json:"name"`
	DesignatedGateway string         `json:"designatedGateway"`
	Nodes             map[string]int `json:"nodes"` // "strong/active": n
}
