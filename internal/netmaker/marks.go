package netmaker

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strconv"
	"strings"
)

// Marks. Everything StateMesh creates in Netmaker carries one, chosen
// from what swagger.yaml lets a client set and the server keeps:
//
//	network          created_by = "statemesh"           (schema.Network.created_by)
//	enrollment key   its name (tags[0]) starts "sm:"    (the server sets no creator)
//	tag              its name starts "sm-" AND color_code = TagColor (created_by is the caller's user)
//	ACL policy       name starts "statemesh-" AND meta_data = ACLMeta
//	gateway          the node's metadata = GatewayMeta  (CreateGwReq.metadata)
//
// StateMesh changes or deletes only marked objects. The one exception is
// documented where it happens: in a network StateMesh created, Netmaker's
// own default allow-all policy is disabled (never deleted) because
// StateMesh's policy replaces it; Detach turns it back on.
const (
	CreatedBy   = "statemesh"
	KeyPrefix   = "sm:"
	TagPrefix   = "sm-"
	TagColor    = "#0e7c86"
	ACLPrefix   = "statemesh-"
	ACLMeta     = "managed by StateMesh; changes are reverted"
	GatewayMeta = "StateMesh regional gateway; managed by StateMesh"
)

// Netmaker's default ACL policy of a network: it allows all nodes to talk
// (created with the network, Default: true, cannot be deleted).
func defaultPolicyID(network string) string { return network + ".all-nodes" }

// SegmentTag is a segment's Netmaker tag name.
func SegmentTag(segment string) string { return TagPrefix + "seg-" + segment }

// ClusterTag is the tag every host admitted with a cluster's key gets, so
// a host's cluster is known later (to recompute segment membership).
func ClusterTag(region, cluster string) string {
	return TagPrefix + "cl-" + region + "--" + cluster
}

// maxGeneration keeps key names within Netmaker's 32 characters.
const maxGeneration = 9999

// keyID is the cluster part of a key name: "REGION/CLUSTER", or when that
// is too long its first 15 characters, "~" and 8 hex digits of a hash
// (24 characters at most).
func keyID(region, cluster string) string {
	id := region + "/" + cluster
	if len(id) <= 24 {
		return id
	}
	h := sha256.Sum256([]byte(id))
	return id[:15] + "~" + hex.EncodeToString(h[:4])
}

// KeyName is the name (only tag) of a cluster's enrollment key of a
// generation: "sm:REGION/CLUSTER#GEN", at most 32 characters.
func KeyName(region, cluster string, generation int) string {
	return KeyPrefix + keyID(region, cluster) + "#" + strconv.Itoa(generation)
}

// ourKey reports whether StateMesh created a key, and the cluster part of
// its name.
func ourKey(k EnrollmentKey) (id string, ok bool) {
	if len(k.Tags) != 1 || !strings.HasPrefix(k.Tags[0], KeyPrefix) {
		return "", false
	}
	name := strings.TrimPrefix(k.Tags[0], KeyPrefix)
	i := strings.LastIndex(name, "#")
	if i < 0 {
		return "", false
	}
	return name[:i], true
}

func ourNetwork(n Network) bool { return n.CreatedBy == CreatedBy }

// ourTagName: a name StateMesh would give a tag.
func ourTagName(name string) bool { return strings.HasPrefix(name, TagPrefix) }

// ourTag: a tag StateMesh created (name and colour).
func ourTag(t Tag) bool { return ourTagName(t.Name) && t.ColorCode == TagColor }

func ourACL(a ACL) bool {
	return !a.Default && strings.HasPrefix(a.Name, ACLPrefix) && a.MetaData == ACLMeta
}

func ourGateway(n Node) bool { return n.IsGateway && n.Metadata == GatewayMeta }

// Netmaker's rules for names (validateNetName; CheckIDSyntax for tags).
var (
	networkName = regexp.MustCompile(`^[a-z0-9_-]{1,32}$`)
	tagName     = regexp.MustCompile(`^[a-zA-Z0-9- ]{3,}$`)
)
