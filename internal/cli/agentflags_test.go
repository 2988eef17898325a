package cli

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestAgentFlagsLabelsAndEndpoint (issue 18 item 4): repeated --labels
// merge; a label value with a trailing comma is refused at once (it was
// refused only at enrollment); a bare IP as --public-endpoint takes
// --listen-port and an IPv6 one is bracketed (the controller wants
// [IPv6]:PORT and answered 400 to the chart's IP:51820).
func TestAgentFlagsLabelsAndEndpoint(t *testing.T) {
	for _, tc := range []struct {
		args                   []string
		labels                 map[string]string
		endpoint, errSubstring string
	}{
		{args: []string{"--labels=app=web", "--labels=tier=frontend"}, labels: map[string]string{"app": "web", "tier": "frontend"}},
		{args: []string{"--labels=app=web,tier=frontend"}, labels: map[string]string{"app": "web", "tier": "frontend"}},
		{args: []string{"--labels=app=web,"}, errSubstring: "labels"},
		{args: []string{"--labels=app=web,tier=frontend,"}, errSubstring: "labels"},
		{args: []string{"--role=gateway", "--public-endpoint=2001:db8::10"}, endpoint: "[2001:db8::10]:51820"},
		{args: []string{"--role=gateway", "--public-endpoint=192.0.2.10", "--listen-port=51821"}, endpoint: "192.0.2.10:51821"},
		{args: []string{"--role=gateway", "--public-endpoint=[2001:db8::10]:51820"}, endpoint: "[2001:db8::10]:51820"},
		{args: []string{"--role=gateway", "--public-endpoint=192.0.2.10:51820"}, endpoint: "192.0.2.10:51820"},
		{args: []string{"--role=gateway", "--public-endpoint=2001:db8::10:51820"}, errSubstring: "--public-endpoint"},
		{args: []string{"--role=gateway", "--public-endpoint=gw.example.com:51820"}, errSubstring: "--public-endpoint"},
		{args: []string{"--role=router"}, errSubstring: "--role"},
		{args: []string{"--wireguard=bpf"}, errSubstring: "--wireguard"},
		{args: []string{"--role=host", "--attest-only"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			root := newRoot(&env{})
			cmd, _, err := root.Find([]string{"agent"})
			if err != nil {
				t.Fatal(err)
			}
			err = cmd.ParseFlags(append([]string{"--controller=https://c:7443"}, tc.args...))
			if err == nil {
				err = cmd.PreRunE(cmd, nil)
			}
			if tc.errSubstring != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errSubstring) {
					t.Fatalf("error %v, want one about %s", err, tc.errSubstring)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.labels != nil {
				got, _ := cmd.Flags().GetStringToString("labels")
				if d := cmp.Diff(tc.labels, got); d != "" {
					t.Errorf("labels (-want +got):\n%s", d)
				}
			}
			if tc.endpoint != "" {
				if got, _ := cmd.Flags().GetString("public-endpoint"); got != tc.endpoint {
					t.Errorf("public endpoint %q, want %q", got, tc.endpoint)
				}
			}
		})
	}
}
