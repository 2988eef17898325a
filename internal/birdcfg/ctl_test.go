package birdcfg

import (
	"bufio"
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/statemesh/statemesh/internal/testenv"
)

func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		name, in, text, code string
		wantErr              bool
	}{
		{name: "greeting", in: "0001 BIRD 2.15 ready.\n", text: "BIRD 2.15 ready.\n", code: "0001"},
		{name: "table", in: "2002-Name       Proto      Table      State  Since         Info\n1002-device1    Device     ---        up     1765000000    \n bb_smbb0   BGP        ---        up     1765000001    Established   \n0000 \n",
			text: "Name       Proto      Table      State  Since         Info\ndevice1    Device     ---        up     1765000000    \nbb_smbb0   BGP        ---        up     1765000001    Established   \n", code: "0000"},
		{name: "error", in: "8003 No protocols match\n", text: "No protocols match\n", code: "8003"},
		{name: "garbage", in: "hello\n", wantErr: true},
		{name: "cut short", in: "1002-device1 Device\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text, code, err := readReply(bufio.NewReader(strings.NewReader(tc.in)))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if d := cmp.Diff(tc.text, text); d != "" || code != tc.code {
				t.Errorf("code %q (want %q), text (-want +got):\n%s", code, tc.code, d)
			}
		})
	}
}

// TestStatusWithoutBirdc: the status (asked every second on every BIRD-mode
// gateway) comes from BIRD's control socket, not from a birdc process, and
// says what birdc says.
func TestStatusWithoutBirdc(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "bird")
	testenv.RequireBinary(t, "birdc")
	ctx := context.Background()
	r := &Runner{Dir: t.TempDir()}
	t.Cleanup(r.Stop)
	if _, err := r.Apply(ctx, []byte(harmless+"protocol static s4 { ipv4; }\n")); err != nil {
		t.Fatal(err)
	}
	waitAnswers(t, r)
	out, err := r.birdc(ctx, "show", "protocols")
	if err != nil {
		t.Fatal(err)
	}
	want := ParseProtocols(out)
	t.Setenv("PATH", t.TempDir()) // no birdc
	st, err := r.Status(ctx)
	if err != nil {
		t.Fatalf("status without birdc: %v", err)
	}
	if d := cmp.Diff(want, st.Protocols); d != "" || len(want) != 2 {
		t.Errorf("protocols (-birdc +socket):\n%s", d)
	}
	if _, err := query(ctx, r.socket(), "show protocols nonesuch"); err == nil {
		t.Error("an error reply is no error")
	}
}
