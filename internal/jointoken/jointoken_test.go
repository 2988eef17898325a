package jointoken

import "testing"

func TestParseRoundTrip(t *testing.T) {
	tok := Token{ID: "a1", Secret: "s3cr3t", CAPin: "pin"}
	got, err := Parse(" " + tok.String() + "\n")
	if err != nil || got != tok {
		t.Fatalf("Parse(String()) = %+v, %v; want %+v", got, err, tok)
	}
	for _, bad := range []string{"", "smt1.a.b", "smt2.a.b.c", "smt1..b.c", "smt1.a.b.c.d", "sma1.a.b.c"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}
