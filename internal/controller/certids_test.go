package controller

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"strings"
	"testing"
)

// A record's serial and key digest are written as they were when they were
// strings (the CA's Text(16), 64 hex digits), so stored records, the API
// and older controllers read the same text.
func TestCertIDsKeepTheirTextForm(t *testing.T) {
	for range 200 {
		n := randSerial()
		s, err := SerialOf(n)
		if err != nil {
			t.Fatal(err)
		}
		if s.String() != n.Text(16) {
			t.Fatalf("serial %s written as %s", n.Text(16), s)
		}
		back, err := ParseCertSerial(n.Text(16))
		if err != nil || back != s {
			t.Fatalf("ParseCertSerial(%s) = %v, %v", n.Text(16), back, err)
		}
	}
	sum := sha256.Sum256([]byte("spki"))
	rec := NodeRecord{Name: "n", CertSerial: mustSerial(t, "1f"), CertKey: sum}
	b, _ := json.Marshal(rec)
	want := `"certSerial":"1f","certKey":"` + hex.EncodeToString(sum[:]) + `"`
	if !strings.Contains(string(b), want) {
		t.Fatalf("record %s lacks %s", b, want)
	}
	var back NodeRecord
	if err := json.Unmarshal(b, &back); err != nil || back.CertSerial != rec.CertSerial || back.CertKey != rec.CertKey {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	// A record without a key digest (written before there was one) has none.
	b, _ = json.Marshal(NodeRecord{Name: "old"})
	if strings.Contains(string(b), "certKey") {
		t.Fatalf("zero digest written: %s", b)
	}
}

func TestCertIDsRefuseBadText(t *testing.T) {
	for _, s := range []string{"", "-1", "+1", "xyz", "0x1f", "1" + strings.Repeat("0", 32)} {
		if _, err := ParseCertSerial(s); err == nil {
			t.Errorf("ParseCertSerial(%q) accepted", s)
		}
	}
	if _, err := SerialOf(new(big.Int).Lsh(big.NewInt(1), 128)); err == nil {
		t.Error("a 129-bit serial was accepted")
	}
	for _, s := range []string{"abcdef", strings.Repeat("z", 64), strings.Repeat("a", 66)} {
		var d KeyDigest
		if err := d.UnmarshalText([]byte(s)); err == nil {
			t.Errorf("KeyDigest %q accepted", s)
		}
	}
}

func mustSerial(t *testing.T, s string) CertSerial {
	t.Helper()
	v, err := ParseCertSerial(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
