package netmap

import (
	"encoding/hex"
	"strings"
	"testing"
)

func TestCheckPublicKey(t *testing.T) {
	priv, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub := priv.PublicKey()
	if err := CheckPublicKey(pub); err != nil {
		t.Fatalf("a real public key is refused: %v", err)
	}
	hexKey := func(s string) Key {
		var k Key
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != KeyLen {
			t.Fatalf("bad test key %s", s)
		}
		copy(k[:], b)
		return k
	}
	highBit := pub
	highBit[31] |= 0x80
	refused := map[string]Key{
		"zero": {},
		// The points of small order on Curve25519 (RFC 7748 §6.1 lists why
		// implementations check for the all-zero output they produce).
		"order 1 (u=1)":    {1},
		"order 8 (a)":      hexKey("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
		"order 8 (b)":      hexKey("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
		"p-1 (order 2)":    hexKey("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
		"p (= 0)":          fieldPrime,
		"p+1 (= 1)":        hexKey("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
		"top bit set":      highBit,
		"all ones (≥ p)":   hexKey(strings.Repeat("ff", 31) + "7f"),
		"top bit, low u=0": hexKey(strings.Repeat("00", 31) + "80"),
	}
	for name, k := range refused {
		if err := CheckPublicKey(k); err == nil {
			t.Errorf("%s: %s accepted", name, k)
		}
	}
}
