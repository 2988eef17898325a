package netmaker

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/statemesh/statemesh/internal/netmap"
)

// Desired is the state StateMesh wants in Netmaker, built by the caller
// from its registry and spec. All maps are keyed by WireGuard public key
// (base64, as netclient reports it). The zero value wants nothing.
type Desired struct {
	// Networks: one per region (the caller maps region → name; see
	// docs/netmaker.md). Only these networks are looked at for pending
	// hosts, removals, tags, ACLs and gateways.
	Networks []NetworkSpec
	// Keys: one enrollment key per cluster.
	Keys []KeySpec

	// Hosts are the keys of nodes that passed StateMesh attestation (the
	// agent's attest-only mode bound netclient's key into the evidence).
	// A pending host is approved only if its key is here with class
	// strong and not in Removed or Refused.
	Hosts map[string]Attested
	// Attested is the short form of Hosts: key → node name, class strong,
	// cluster unknown (read from the host's cluster tag).
	Attested map[string]string

	// Removed: keys of nodes StateMesh quarantined or removed, with when.
	// Their hosts are taken out of every network in Networks, and the
	// time from then to the removal is reported.
	Removed map[string]time.Time
	// Refused: keys StateMesh explicitly refuses (failed attestation, an
	// operator's decision), with why. Their pending requests made with a
	// StateMesh key are rejected at once; members are taken out.
	Refused map[string]string

	// ACLs are the policy's ACL policies (MapPolicy). With SkipPolicy
	// the tags and ACLs in Netmaker are left as they are (use it when
	// MapPolicy refused the policy: admission and removal go on).
	ACLs       []ACL
	SkipPolicy bool

	// Gateways: regional gateways as Netmaker gateways (relays).
	Gateways []GatewaySpec

	// Grace is how long a host that registered with a StateMesh key but
	// that no attested node owns may wait before it is rejected (default
	// 5 minutes).
	Grace time.Duration
}

// NetworkSpec is a network StateMesh wants.
type NetworkSpec struct {
	Name string
	// AddressRange is the network's CIDR (IPv4 or IPv6).
	AddressRange string
	// MTU is the network's default MTU (0: Netmaker's default).
	MTU int
}

// KeySpec is a cluster's enrollment key.
type KeySpec struct {
	Region, Cluster, Network string
	// Tags are the segment tag names of the cluster (MapPolicy's map
	// entry for REGION/CLUSTER): hosts joining with the key get them.
	Tags []string
	// Generation: raise it to rotate the key (a new key is created, then
	// the old one revoked).
	Generation int
	// TTL: 0 for a key that does not expire; otherwise the key expires
	// TTL after creation and is replaced once less than a fifth is left.
	TTL time.Duration
}

// Attested is what StateMesh knows of a host's key.
type Attested struct {
	// Node is the StateMesh node's name.
	Node string
	// Region and Cluster the node enrolled in (optional: when empty, the
	// host's cluster tag is used for segment membership).
	Region, Cluster string
	// Class is netmap.ClassStrong or netmap.ClassWeak; only strong hosts
	// are admitted (weak ones are rejected).
	Class string
}

// GatewaySpec makes one host of a network its Netmaker gateway: relay for
// the hosts listed and ingress for remote-access clients.
type GatewaySpec struct {
	Network string
	// Candidates are gateway hosts' public keys, most preferred first;
	// the caller leaves out unhealthy ones. The first that is a member of
	// the network is the gateway; when it goes, the next takes over
	// (failover) and the relayed hosts move with it.
	Candidates []string
	// Relayed are public keys of hosts to relay through the gateway.
	Relayed []string
}

// Report says what one pass did and saw.
type Report struct {
	// Writes are the changes made, in order ("create network nm-eu", ...);
	// none on a second pass with the same Desired.
	Writes []string
	// Approved and Rejected are pending host IDs.
	Approved, Rejected []string
	// Decisions are all pending hosts seen and what became of them.
	Decisions []Decision
	// Removed maps a host's name to the time from its node's quarantine
	// or removal (Desired.Removed) to its removal from Netmaker (the
	// longest, if it was in several networks).
	Removed map[string]time.Duration
	// Removals are the removals one by one.
	Removals []Removal
	// Absent are the keys of Desired.Removed that Netmaker lists nowhere:
	// no host and no pending host has them (sorted). Only a pass that read
	// every host and every network's pending hosts says so: the caller
	// may then forget the decision (netmakersync does once the node has
	// also left its registry).
	Absent []string
	// Keys maps REGION/CLUSTER to the token netclient joins with
	// (netclient join -t TOKEN). Secret: it prints as [REDACTED].
	Keys map[string]Token
	// Gateways maps a network to its gateway host's name.
	Gateways map[string]string
	// Unattested lists "HOST in NETWORK" for members of StateMesh's
	// networks that no attested node owns and that stay: on a server
	// with device approval an operator admitted them (not StateMesh's to
	// remove unless quarantined, removed or refused). Without device
	// approval such hosts of networks StateMesh created are removed
	// instead (Removals with Unattested set).
	Unattested []string
	// Ungated: the server's device approval is off (the community
	// edition): hosts join without approval and removal is the gate.
	Ungated bool
	// Notes are things left alone or only approximated.
	Notes []string
	// Calls is the number of HTTP attempts; Took the pass's duration.
	Calls int64
	Took  time.Duration
}

// Decision is what became of a pending host.
type Decision struct {
	PendingID, Host, Network, PublicKey string
	// Node is the StateMesh node owning the key, if any.
	Node string
	// Action: "approve", "reject", "wait" (StateMesh key, not attested,
	// within the grace period) or "leave" (not registered with a
	// StateMesh key: the operator decides).
	Action, Reason string
}

// Removal is one host taken out of one network.
type Removal struct {
	Host, HostID, Network, PublicKey string
	// Since is the time from Desired.Removed[PublicKey] to the removal
	// (zero for refused keys, which carry no time).
	Since time.Duration
	// Unattested: removed because no attested node owns the key and the
	// host joined without approval (device approval off).
	Unattested bool
}

// validate checks what Netmaker would refuse or StateMesh could not
// manage, before any call.
func (d *Desired) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...))
	}
	nets := map[string]bool{}
	for i, n := range d.Networks {
		switch {
		case !networkName.MatchString(n.Name):
			bad("networks[%d]: name %q: Netmaker takes 1-32 of a-z 0-9 - _", i, n.Name)
		case nets[n.Name]:
			bad("networks[%d]: network %q is listed twice", i, n.Name)
		}
		nets[n.Name] = true
		if p, err := netip.ParsePrefix(n.AddressRange); err != nil || p.Bits() > p.Addr().BitLen()-2 {
			bad("networks[%d] (%s): address range %q: want a CIDR of 4 addresses or more", i, n.Name, n.AddressRange)
		}
		if n.MTU < 0 || (n.MTU > 0 && n.MTU < 576) {
			bad("networks[%d] (%s): MTU %d", i, n.Name, n.MTU)
		}
	}
	keys := map[string]bool{}
	tags := map[string]string{} // network/tag → cluster
	for i, k := range d.Keys {
		at := fmt.Sprintf("keys[%d] (%s/%s)", i, k.Region, k.Cluster)
		id := keyID(k.Region, k.Cluster)
		switch {
		case k.Region == "" || k.Cluster == "":
			bad("%s: region and cluster are required", at)
		case !nets[k.Network]:
			bad("%s: network %q is not in Networks", at, k.Network)
		case keys[id]:
			bad("%s: a second key for the cluster", at)
		case k.Generation < 0 || k.Generation > maxGeneration:
			bad("%s: generation %d is outside 0..%d", at, k.Generation, maxGeneration)
		case k.TTL < 0:
			bad("%s: negative TTL", at)
		}
		keys[id] = true
		ct := ClusterTag(k.Region, k.Cluster)
		if !tagName.MatchString(ct) {
			bad("%s: cluster tag %q: Netmaker takes letters, digits, - and space", at, ct)
		}
		if other, dup := tags[k.Network+"/"+ct]; dup {
			bad("%s: cluster tag %q is also %s's", at, ct, other)
		}
		tags[k.Network+"/"+ct] = k.Region + "/" + k.Cluster
		for _, t := range k.Tags {
			if !tagName.MatchString(t) || !ourTagName(t) {
				bad("%s: tag %q: want %sNAME of letters, digits and -", at, t, TagPrefix)
			}
		}
	}
	acls := map[string]bool{}
	for i, a := range d.ACLs {
		at := fmt.Sprintf("acls[%d] (%s)", i, a.Name)
		switch {
		case !nets[a.NetworkID]:
			bad("%s: network %q is not in Networks", at, a.NetworkID)
		case len(a.Name) <= len(ACLPrefix) || a.Name[:len(ACLPrefix)] != ACLPrefix || a.MetaData != ACLMeta:
			bad("%s: StateMesh's ACL policies are named %s... with meta_data %q (MapPolicy makes them)", at, ACLPrefix, ACLMeta)
		case acls[a.NetworkID+"/"+a.Name]:
			bad("%s: listed twice in network %s", at, a.NetworkID)
		}
		acls[a.NetworkID+"/"+a.Name] = true
	}
	gws := map[string]bool{}
	for i, g := range d.Gateways {
		switch {
		case !nets[g.Network]:
			bad("gateways[%d]: network %q is not in Networks", i, g.Network)
		case gws[g.Network]:
			bad("gateways[%d]: a second gateway spec for %s", i, g.Network)
		}
		gws[g.Network] = true
	}
	for k, a := range d.Hosts {
		if a.Class != netmap.ClassStrong && a.Class != netmap.ClassWeak {
			bad("hosts[%s] (%s): class %q, want strong or weak", shortKey(k), a.Node, a.Class)
		}
	}
	if d.Grace < 0 {
		bad("negative grace period")
	}
	return errors.Join(errs...)
}

// attested returns what is known of a key: from Hosts, else Attested.
func (d *Desired) attested(key string) (Attested, bool) {
	if a, ok := d.Hosts[key]; ok {
		return a, true
	}
	if name, ok := d.Attested[key]; ok {
		return Attested{Node: name, Class: netmap.ClassStrong}, true
	}
	return Attested{}, false
}

// admitted: attested strong, and neither removed nor refused.
func (d *Desired) admitted(key string) bool {
	a, ok := d.attested(key)
	_, removed := d.Removed[key]
	_, refused := d.Refused[key]
	return ok && a.Class == netmap.ClassStrong && !removed && !refused
}

// shortKey abbreviates a public key for messages.
func shortKey(k string) string {
	if len(k) > 10 {
		return k[:10] + "…"
	}
	return k
}
