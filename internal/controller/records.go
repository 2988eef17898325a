package controller

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/topology"
)

// Store layout. Every record is JSON. The keys are the contract between
// controller replicas sharing one etcd; change them only with a migration.
//
//	spec                          the spec in force (SpecRecord)
//	plan                          the plan in force (plan.Plan)
//	nodes/<name>                  NodeRecord
//	slots/<region>/<cluster>/<n>  SlotRecord: address slot n of a cluster ("_gateways" for gateways)
//	tokens/<id>                   TokenRecord (the secret only as a hash)
//	health/<gateway>              HealthRecord
//	pki/ca                        CARecord
//	admin/<id>                    AdminRecord (hash of the admin credential)
//	attest/sessions/<id>          SessionRecord: an open attestation challenge (swept once expired)
//	attest/open/<node>            the ID of a node's one open re-attestation challenge
//	ek/<sha256 of the EK>         the node a TPM is enrolled as
//	wgkeys/<hex of the key>       the node (node/<name>) or client (client/<name>) a WireGuard key belongs to
//	meta/wgkeys-indexed           present once every key is in wgkeys/ (new stores; older ones after their migration)
//	clientsgw/<region>            ClientsGatewayRecord: the gateway the region's clients' files name (clients.go)
//	meta/maprev/<scope>           written with every map-relevant change of its scope: its ModRev is that change's revision (maprev.go)
const (
	keySpec       = "spec"
	keyPlan       = "plan"
	prefixNodes   = "nodes/"
	prefixSlots   = "slots/"
	prefixTokens  = "tokens/"
	prefixHealth  = "health/"
	keyCA         = "pki/ca"
	prefixSession = "attest/sessions/"
	// prefixOpenSession: attest/open/<node> holds the ID of the node's one
	// open re-attestation challenge.
	prefixOpenSession = "attest/open/"
	prefixEK          = "ek/"
	prefixAdmin       = "admin/"
	gatewaysSlots     = "_gateways"
)

func nodeKey(name string) string   { return prefixNodes + name }
func tokenKey(id string) string    { return prefixTokens + id }
func healthKey(name string) string { return prefixHealth + name }
func slotPrefix(region, cluster string) string {
	if cluster == "" {
		cluster = gatewaysSlots
	}
	return prefixSlots + region + "/" + cluster + "/"
}
func slotKey(region, cluster string, n int) string {
	return slotPrefix(region, cluster) + strconv.Itoa(n)
}

// parseSlotKey splits slots/<region>/<cluster>/<n>.
func parseSlotKey(k string) (region, cluster string, n int, ok bool) {
	parts := strings.Split(strings.TrimPrefix(k, prefixSlots), "/")
	if len(parts) != 3 {
		return "", "", 0, false
	}
	n, err := strconv.Atoi(parts[2])
	if err != nil {
		return "", "", 0, false
	}
	if parts[1] == gatewaysSlots {
		parts[1] = ""
	}
	return parts[0], parts[1], n, true
}

// SpecRecord is the spec in force.
type SpecRecord struct {
	YAML      string    `json:"yaml"`
	AppliedAt time.Time `json:"appliedAt"`
}

// NodeRecord is an enrolled node.
type NodeRecord struct {
	Name           string         `json:"name"`
	Region         string         `json:"region"`
	Cluster        string         `json:"cluster,omitempty"`
	Role           string         `json:"role"`
	Class          string         `json:"class"`
	State          string         `json:"state"`
	PublicKey      netmap.Key     `json:"publicKey"`
	Slot           int            `json:"slot"`
	OverlayIPv4    netip.Addr     `json:"overlayIPv4"`
	OverlayIPv6    netip.Addr     `json:"overlayIPv6,omitzero"`
	PodIPv4        netip.Prefix   `json:"podIPv4,omitzero"`
	PodIPv6        netip.Prefix   `json:"podIPv6,omitzero"`
	Endpoint       netip.AddrPort `json:"endpoint,omitzero"`
	PublicEndpoint netip.AddrPort `json:"publicEndpoint,omitzero"`
	TokenID        string         `json:"tokenID"`
	EnrolledAt     time.Time      `json:"enrolledAt"`
	// CertSerial is the serial of the node's current client certificate.
	CertSerial CertSerial `json:"certSerial"`
	// CertKey is the SHA-256 of the current certificate's public key
	// (SubjectPublicKeyInfo, hex): a node retrying its enrollment proves
	// it is the same node by signing its request with that key.
	CertKey KeyDigest `json:"certKey,omitzero"`
	// AKArea is the TPM attestation key proved at enrollment (strong
	// nodes): re-attestation quotes must verify with it.
	AKArea []byte `json:"akArea,omitempty"`
	// EKHash identifies the node's TPM (one TPM, one node).
	EKHash string `json:"ekHash,omitempty"`
	// AttestedAt is the last successful attestation.
	AttestedAt time.Time `json:"attestedAt,omitzero"`
	// Reason says why the node is quarantined or was downgraded.
	Reason string `json:"reason,omitempty"`
	// Labels are the node's own labels (policy selectors match them).
	Labels map[string]string `json:"labels,omitempty"`
}

// SessionRecord is an open attestation challenge. The secret is kept only
// as a hash; a session is consumed (deleted) by the evidence that answers
// it, whatever the verdict.
type SessionRecord struct {
	Nonce      []byte    `json:"nonce"`
	SecretHash []byte    `json:"secretHash,omitempty"`
	AKArea     []byte    `json:"akArea"`
	EKHash     string    `json:"ekHash"`
	TokenID    string    `json:"tokenID,omitempty"`
	Node       string    `json:"node,omitempty"`
	ExpiresAt  time.Time `json:"expiresAt"`
}

func (n *NodeRecord) topo(healthy bool) topology.Node {
	return topology.Node{
		Name: n.Name, Region: n.Region, Cluster: n.Cluster, Role: n.Role, Class: n.Class, State: n.State,
		PublicKey: n.PublicKey, OverlayIPv4: n.OverlayIPv4, OverlayIPv6: n.OverlayIPv6,
		PodIPv4: n.PodIPv4, PodIPv6: n.PodIPv6, Endpoint: n.Endpoint, PublicEndpoint: n.PublicEndpoint,
		Healthy: healthy,
	}
}

// SlotRecord holds an address slot for a node, or a released slot until its
// grace period ends (so a removed node's addresses are not handed to a new
// node while old peers may still route to them).
type SlotRecord struct {
	Node       string    `json:"node"`
	ReleasedAt time.Time `json:"releasedAt,omitzero"`
}

// free reports whether the slot may be allocated at now.
func (s SlotRecord) free(now time.Time, grace time.Duration) bool {
	return !s.ReleasedAt.IsZero() && now.Sub(s.ReleasedAt) >= grace
}

// TokenRecord is a join token. Only the SHA-256 of its secret is stored.
type TokenRecord struct {
	ID         string    `json:"id"`
	SecretHash []byte    `json:"secretHash"`
	Region     string    `json:"region"`
	Cluster    string    `json:"cluster,omitempty"`
	Role       string    `json:"role"`
	CreatedAt  time.Time `json:"createdAt"`
	ExpiresAt  time.Time `json:"expiresAt"`
	Uses       int       `json:"uses"`
	Used       int       `json:"used"`
	Revoked    bool      `json:"revoked"`
}

// HealthRecord is a gateway's liveness, written by the controller replica
// that receives its heartbeats and by the health monitor on expiry.
type HealthRecord struct {
	Healthy       bool      `json:"healthy"`
	LastHeartbeat time.Time `json:"lastHeartbeat"`
	Since         time.Time `json:"since"`
	Reason        string    `json:"reason,omitempty"`
}

// CARecord is the controller's certificate authority. Its private key is
// sealed with the controller's key-encryption keyring (secrets), the
// record's key as associated data; KeyPEM holds it in clear only when the
// controller runs without a keyring.
type CARecord struct {
	CertPEM   string `json:"certPEM"`
	KeySealed []byte `json:"keySealed,omitempty"`
	KeyPEM    string `json:"keyPEM,omitempty"`
}

// AdminRecord is an admin credential (hash only).
type AdminRecord struct {
	ID        string    `json:"id"`
	Name      string    `json:"name,omitempty"`
	Hash      []byte    `json:"hash"`
	CreatedAt time.Time `json:"createdAt"`
	// ExpiresAt is zero only for the bootstrap credential.
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Records are plain structs; failing to encode one is a bug.
		panic(fmt.Sprintf("controller: encoding %T: %v", v, err))
	}
	return b
}

func decode[T any](b []byte) (T, error) {
	var v T
	err := json.Unmarshal(b, &v)
	return v, err
}
