package controller

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// Decoding node records fast. At the design limit a restart decodes
// 1,000,000 node records, and encoding/json's reflection was most of the
// load's CPU. decodeNodeFast reads the records this package writes (compact
// JSON, known fields, strings without escapes) by hand, calling the same
// UnmarshalText and UnmarshalJSON methods encoding/json calls; on anything
// else (an unknown or differently cased key, an escape, null, labels,
// whitespace it does not expect, invalid input) it gives up and the record
// goes through encoding/json. Its results are therefore encoding/json's
// (FuzzDecodeNode checks that they agree).

// nodeStrings interns strings that repeat across records (region, cluster,
// role, class, state, token) without allocating for the ones it has.
type nodeStrings map[string]string

func (m nodeStrings) get(b []byte) string {
	if s, ok := m[string(b)]; ok {
		return s
	}
	s := intern(string(b))
	if m != nil && len(m) < 4096 {
		m[s] = s
	}
	return s
}

// decodeNodeFast decodes b into n (zero on entry) and reports whether it
// could; when it could not, n is in an undefined state.
func decodeNodeFast(n *NodeRecord, b []byte, strs nodeStrings) bool {
	i := 0
	if len(b) < 2 || b[0] != '{' {
		return false
	}
	i++
	if b[i] == '}' {
		return i+1 == len(b)
	}
	for {
		key, j, ok := fastString(b, i)
		if !ok || j >= len(b) || b[j] != ':' {
			return false
		}
		i = j + 1
		if i >= len(b) {
			return false
		}
		if b[i] == '"' {
			val, j, ok := fastString(b, i)
			if !ok {
				return false
			}
			if !fastStringField(n, key, val, b[i:j], strs) {
				return false
			}
			i = j
		} else {
			// The only field that is not a string is the slot.
			if string(key) != "slot" {
				return false
			}
			j := i
			if j < len(b) && b[j] == '-' {
				j++
			}
			for j < len(b) && b[j] >= '0' && b[j] <= '9' {
				j++
			}
			v, err := strconv.ParseInt(string(b[i:j]), 10, strconv.IntSize)
			if err != nil || (b[i] == '0' && j-i > 1) || (b[i] == '-' && (j-i < 2 || b[i+1] == '0')) {
				return false
			}
			n.Slot = int(v)
			i = j
		}
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ',':
			i++
		case '}':
			return i+1 == len(b)
		default:
			return false
		}
	}
}

// fastString reads the string starting at b[i] (a quote) and returns its
// contents and the index after its closing quote; ok is false for an
// escape, a control character or invalid UTF-8.
func fastString(b []byte, i int) (s []byte, next int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, 0, false
	}
	end := bytes.IndexByte(b[i+1:], '"')
	if end < 0 {
		return nil, 0, false
	}
	s = b[i+1 : i+1+end]
	ascii := true
	for _, c := range s {
		if c < 0x20 || c == '\\' {
			return nil, 0, false
		}
		if c >= utf8.RuneSelf {
			ascii = false
		}
	}
	if !ascii && !utf8.Valid(s) {
		return nil, 0, false
	}
	return s, i + 1 + end + 1, true
}

// fastStringField sets the field named key from a string value (val its
// contents, quoted the value with its quotes).
func fastStringField(n *NodeRecord, key, val, quoted []byte, strs nodeStrings) bool {
	var err error
	switch string(key) {
	case "name":
		n.Name = string(val)
	case "region":
		n.Region = strs.get(val)
	case "cluster":
		n.Cluster = strs.get(val)
	case "role":
		n.Role = strs.get(val)
	case "class":
		n.Class = strs.get(val)
	case "state":
		n.State = strs.get(val)
	case "tokenID":
		n.TokenID = strs.get(val)
	case "certSerial":
		err = n.CertSerial.UnmarshalText(val)
	case "certKey":
		err = n.CertKey.UnmarshalText(val)
	case "ekHash":
		n.EKHash = string(val)
	case "reason":
		n.Reason = string(val)
	case "publicKey":
		err = n.PublicKey.UnmarshalText(val)
	case "overlayIPv4":
		err = n.OverlayIPv4.UnmarshalText(val)
	case "overlayIPv6":
		err = n.OverlayIPv6.UnmarshalText(val)
	case "podIPv4":
		err = n.PodIPv4.UnmarshalText(val)
	case "podIPv6":
		err = n.PodIPv6.UnmarshalText(val)
	case "endpoint":
		err = n.Endpoint.UnmarshalText(val)
	case "publicEndpoint":
		err = n.PublicEndpoint.UnmarshalText(val)
	case "enrolledAt":
		err = n.EnrolledAt.UnmarshalJSON(quoted)
	case "attestedAt":
		err = n.AttestedAt.UnmarshalJSON(quoted)
	case "akArea":
		out := make([]byte, base64.StdEncoding.DecodedLen(len(val)))
		var k int
		k, err = base64.StdEncoding.Decode(out, val)
		n.AKArea = out[:k]
	default:
		return false
	}
	return err == nil
}

// decodeNodeWith decodes a node record, by hand when it can.
func decodeNodeWith(n *NodeRecord, b []byte, strs nodeStrings) error {
	if decodeNodeFast(n, b, strs) {
		return nil
	}
	*n = NodeRecord{}
	if err := json.Unmarshal(b, n); err != nil {
		return err
	}
	for _, s := range []*string{&n.Region, &n.Cluster, &n.Role, &n.Class, &n.State, &n.TokenID} {
		*s = intern(*s)
	}
	return nil
}
