package controller

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/netmap"
)

func nodeDecodeSeeds() [][]byte {
	k, _ := netmap.GeneratePrivateKey()
	now := time.Date(2026, 12, 6, 14, 0, 0, 123456789, time.FixedZone("x", 3600))
	full := NodeRecord{Name: "eu-central-c01-n0001", Region: "eu-central", Cluster: "c01", Role: "node", Class: "strong", State: "quarantined",
		PublicKey: k.PublicKey(), Slot: 4999, OverlayIPv4: netip.MustParseAddr("100.64.1.2"), OverlayIPv6: netip.MustParseAddr("fd7a:5e00::1:2"),
		PodIPv4: netip.MustParsePrefix("10.1.2.0/24"), PodIPv6: netip.MustParsePrefix("fd00:10:0:1::/64"),
		Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), PublicEndpoint: netip.MustParseAddrPort("[2001:db8::1]:51820"),
		TokenID: "tok", EnrolledAt: now, CertSerial: CertSerial{15: 0x12, 14: 0x34}, CertKey: KeyDigest{0: 0xab, 31: 0xef}, AKArea: []byte{0, 1, 2, 250},
		EKHash: "ek", AttestedAt: now.UTC(), Reason: "a reason: <ünïcode> & more"}
	gw := NodeRecord{Name: "gw", Region: "r", Role: "gateway", Class: "weak", State: "active", Slot: 0, EnrolledAt: now}
	labels := full
	labels.Labels = map[string]string{"tier": "front"}
	empty := NodeRecord{AKArea: []byte{}}
	var out [][]byte
	for _, r := range []NodeRecord{full, gw, labels, empty, {}} {
		b, _ := json.Marshal(r)
		out = append(out, b)
	}
	return append(out,
		[]byte(`{"name":"a","Name":"b"}`), []byte(`{"name":"a\u0041"}`), []byte(`{"slot":-0}`), []byte(`{"slot":01}`),
		[]byte(`{"slot":1.5}`), []byte(`{"slot":1e2}`), []byte(`{"slot":-12,"name":"x"}`), []byte(`{"slot":99999999999999999999}`),
		[]byte(`{"name":null}`), []byte(`{"publicKey":""}`), []byte(`{"publicKey":"AAAA"}`), []byte(`{"overlayIPv4":""}`),
		[]byte(`{"overlayIPv4":"1.2.3"}`), []byte(`{"enrolledAt":"yesterday"}`), []byte(`{"akArea":"!!"}`), []byte(`{"akArea":""}`),
		[]byte(`{ "name":"a"}`), []byte(`{"name":"a"} `), []byte(`{"name":"a"}x`), []byte(`{"name":"a",}`), []byte(`{}`), []byte(`{`),
		[]byte(`{"unknown":"x"}`), []byte(`{"name":"\xff"}`), []byte("{\"name\":\"a\x01\"}"), []byte(`[]`), []byte(``), []byte(`{"slot":}`),
		[]byte(`{"certSerial":"0"}`), []byte(`{"certSerial":"00ABcd"}`), []byte(`{"certSerial":"-1"}`), []byte(`{"certSerial":"+1"}`),
		[]byte(`{"certSerial":"xyz"}`), []byte(`{"certSerial":"1ffffffffffffffffffffffffffffffff"}`), []byte(`{"certSerial":""}`),
		[]byte(`{"certKey":"abcdef"}`), []byte(`{"certKey":""}`), []byte(`{"certKey":"`+strings.Repeat("Ag", 32)+`"}`),
		[]byte(`{"certKey":"`+strings.Repeat("zz", 32)+`"}`))
}

// The hand decoder agrees with encoding/json on everything it accepts.
func FuzzDecodeNode(f *testing.F) {
	for _, s := range nodeDecodeSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkDecodeNode(t, b) })
}

func TestDecodeNodeAgreesWithJSON(t *testing.T) {
	fast := 0
	for _, b := range nodeDecodeSeeds() {
		if checkDecodeNode(t, b) {
			fast++
		}
	}
	if fast < 6 {
		t.Errorf("the hand decoder took only %d of the seeds", fast)
	}
}

func checkDecodeNode(t *testing.T, b []byte) (fast bool) {
	t.Helper()
	var want NodeRecord
	werr := json.Unmarshal(b, &want)
	var got NodeRecord
	if decodeNodeFast(&got, b, nodeStrings{}) {
		if werr != nil {
			t.Fatalf("%q: the hand decoder accepted what encoding/json refuses (%v)", b, werr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: hand decoder %+v, encoding/json %+v", b, got, want)
		}
		fast = true
	}
	got = NodeRecord{}
	err := decodeNodeWith(&got, b, nodeStrings{})
	if (err != nil) != (werr != nil) {
		t.Fatalf("%q: error %v, encoding/json %v", b, err, werr)
	}
	if err == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: decoded %+v, encoding/json %+v", b, got, want)
	}
	return fast
}
