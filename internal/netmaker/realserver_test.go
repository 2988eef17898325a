package netmaker_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmaker/nmtest"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/spec"
	"go.yaml.in/yaml/v3"
)

// The contract taken from the real server: one scenario (every call the
// integration makes, on a community server) runs against a real Netmaker
// (TestRealNetmaker, opt-in) and against the fake
// (TestFakeAnswersLikeTheRealServer); the real server's exchanges are
// recorded in testdata/netmaker-v1.5.1-ce.json, and the fake's must match
// them (nmtest.Compare).

const recordingFile = "testdata/netmaker-v1.5.1-ce.json"

// scenarioServer is a Netmaker server the scenario drives.
type scenarioServer interface {
	URL() string
	MasterKey() string
	AccessToken() string
	// Register is netclient registering a host with a join token
	// (POST /api/v1/host/register/{token} on the real server).
	Register(t *testing.T, name, publicKey, joinToken string)
	// Restart stops the server and starts it again on its database.
	Restart(t *testing.T)
}

// scenario runs the whole integration against s on a community server
// and returns what was recorded in front of it.
func scenario(t *testing.T, s scenarioServer) *nmtest.Recorder {
	rec := nmtest.NewRecorder(t, s.URL(), map[string]string{s.MasterKey(): "master-key", s.AccessToken(): "access-token"})
	ctx := context.Background()
	client := func(tok string) *netmaker.Client {
		c, err := netmaker.NewClient(rec.URL, tok, 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.Backoff, c.MaxBackoff = 50*time.Millisecond, 400*time.Millisecond
		return c
	}
	mk, ak := client(s.MasterKey()), client(s.AccessToken())
	// look reads the server without recording (polls vary in number).
	look, err := netmaker.NewClient(s.URL(), s.MasterKey(), 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}

	// The credential check at start.
	cr, err := netmaker.CheckCredential(ctx, mk)
	t.Logf("credential check, master key: %+v, %v", cr, err)
	if err != nil || !cr.MasterKey || cr.Pro {
		t.Errorf("master key on a community server: %+v, %v", cr, err)
	}
	if cr, err := netmaker.CheckCredential(ctx, ak); err != nil || cr.MasterKey {
		t.Errorf("access token: %+v, %v", cr, err)
	}

	var pol spec.Policy
	if err := yaml.Unmarshal([]byte("segments:\n  - {name: web, match: {clusters: [eu/prod]}}\n"), &pol); err != nil {
		t.Fatal(err)
	}
	cls := []netmaker.Cluster{{Region: "eu", Name: "prod", Network: "nm-eu"}}
	acls, tags, err := netmaker.MapPolicy(&pol, cls)
	if err != nil {
		t.Fatal(err)
	}
	d := netmaker.Desired{
		Networks: []netmaker.NetworkSpec{{Name: "nm-eu", AddressRange: "10.201.0.0/16", MTU: 1420}},
		Keys:     []netmaker.KeySpec{{Region: "eu", Cluster: "prod", Network: "nm-eu", Tags: tags["eu/prod"]}},
		ACLs:     acls,
		Hosts:    map[string]netmaker.Attested{}, Removed: map[string]time.Time{},
	}
	r := &netmaker.Reconciler{C: mk}
	pass := func(what string) netmaker.Report {
		rep, err := r.Reconcile(ctx, d)
		t.Logf("pass (%s): %d calls, writes %q, removals %+v, ungated %v; errors: %v", what, rep.Calls, rep.Writes, rep.Removals, rep.Ungated, err)
		if errors.Is(err, netmaker.ErrUnavailable) {
			t.Fatalf("pass (%s): %v", what, err)
		}
		return rep
	}
	rep := pass("first, master key")
	tok := rep.Keys["eu/prod"]
	if tok == "" || !rep.Ungated {
		t.Fatalf("first pass: join token %v, ungated %v", tok != "", rep.Ungated)
	}
	if n, err := look.Network(ctx, "nm-eu"); err != nil || n.AddressRange != "10.201.0.0/16" || !n.AutoJoin {
		t.Errorf("nm-eu: %+v, %v (auto_join is forced on without device approval)", n, err)
	}
	for i := range 3 {
		pass(fmt.Sprintf("idle %d", i+1))
	}
	if n := rec.Count("PUT /api/networks/{networkname}"); n != 0 {
		t.Errorf("%d network updates (auto_join) in 4 passes; want none: the server forces it on", n)
	}
	allowAll := func() bool {
		acls, err := look.ACLs(ctx, "nm-eu")
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(acls, func(a netmaker.ACL) bool { return a.Default && a.Name == "All Nodes" })
		return i >= 0 && acls[i].Enabled
	}
	if !allowAll() {
		t.Error("the allow-all default was disabled though StateMesh's policies could not be created")
	}

	// Hosts register with real WireGuard keys: one attested, one not.
	key := func() string {
		k, err := netmap.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		return k.PublicKey().String()
	}
	web, intruder := key(), key()
	d.Hosts[web] = netmaker.Attested{Node: "web-1", Region: "eu", Cluster: "prod", Class: netmap.ClassStrong}
	s.Register(t, "web-1", web, tok.Reveal())
	s.Register(t, "intruder", intruder, tok.Reveal())
	waitMembers(t, look, "nm-eu", 2)
	rep = pass("hosts joined")
	if got := membersOf(t, look, "nm-eu"); !slices.Equal(got, []string{web}) {
		t.Errorf("after a pass: members %v, want only web-1 (the unattested host removed)", got)
	}
	if !slices.ContainsFunc(rep.Removals, func(r netmaker.Removal) bool { return r.Host == "intruder" && r.Unattested }) {
		t.Errorf("the unattested host's removal is not reported: %+v", rep.Removals)
	}

	// A gateway: made once, then nothing to write (idempotent against
	// what the server sends back).
	gw := key()
	d.Hosts[gw] = netmaker.Attested{Node: "gw-1", Region: "eu", Cluster: "prod", Class: netmap.ClassStrong}
	s.Register(t, "gw-1", gw, tok.Reveal())
	waitMembers(t, look, "nm-eu", 2)
	d.Gateways = []netmaker.GatewaySpec{{Network: "nm-eu", Candidates: []string{gw}, Relayed: []string{web}}}
	rep = pass("gateway wanted")
	if rep.Gateways["nm-eu"] != "gw-1" {
		t.Errorf("gateway: %v", rep.Gateways)
	}
	if rep = pass("gateway in place"); len(rep.Writes) != 0 {
		t.Errorf("a pass after the gateway was made wrote %q", rep.Writes)
	}
	d.Gateways[0].Relayed = nil

	// Quarantine → removal.
	d.Removed[web] = time.Now()
	rep = pass("web-1 quarantined")
	if got := membersOf(t, look, "nm-eu"); !slices.Equal(got, []string{gw}) || rep.Removed["web-1"] == 0 {
		t.Errorf("after the quarantine: members %v, removed %v", got, rep.Removed)
	}

	// Restart (server and reconciler): the quarantined host registers
	// again and is removed again.
	s.Restart(t)
	r = &netmaker.Reconciler{C: mk}
	s.Register(t, "web-1", web, tok.Reveal())
	waitMembers(t, look, "nm-eu", 2)
	pass("after the restart")
	if got := membersOf(t, look, "nm-eu"); !slices.Equal(got, []string{gw}) {
		t.Errorf("after the restart the quarantined host stays: %v", got)
	}
	d.Gateways = nil
	pass("no gateway wanted")

	// The policy with a super-admin's access token: the community
	// edition refuses tag policies, and the allow-all default stays.
	r.C = ak
	_, err = r.Reconcile(ctx, d)
	t.Logf("policy with the access token: %v", err)
	if err == nil {
		t.Error("the policy was accepted on a community server (no tags)")
	}
	if !allowAll() {
		t.Error("the allow-all default was disabled though StateMesh's policies could not be created")
	}

	// The community edition's rules, one call each (recorded).
	n, err := mk.Network(ctx, "nm-eu")
	if err != nil {
		t.Fatal(err)
	}
	n.AutoJoin = false
	if got, err := mk.UpdateNetwork(ctx, n); err != nil || !got.AutoJoin {
		t.Errorf("auto_join off asked: answered %v, %v (the server forces it on)", got.AutoJoin, err)
	}
	all := []netmaker.ACLTag{{ID: "tag", Value: "*"}}
	probe := netmaker.ACL{Name: "statemesh-probe", MetaData: netmaker.ACLMeta, NetworkID: "nm-eu", Policy: netmaker.PolicyDevice,
		Src: all, Dst: all, Protocol: "all", ServiceType: "Any", Direction: netmaker.BothWays, Enabled: true}
	apiErr := func(what string, err error, status int, msg string) {
		t.Helper()
		var ae *netmaker.APIError
		if !errors.As(err, &ae) || ae.Status != status || ae.Message != msg {
			t.Errorf("%s: %v, want %d %q", what, err, status, msg)
		}
	}
	_, err = mk.CreateACL(ctx, probe)
	apiErr("an ACL policy with the master key", err, 400, "record not found")
	tagged := probe
	tagged.Src = []netmaker.ACLTag{{ID: "tag", Value: "nm-eu.sm-seg-web"}}
	_, err = ak.CreateACL(ctx, tagged)
	apiErr("a tag policy on CE", err, 400, "invalid policy")
	oneWay := probe
	oneWay.Direction = netmaker.OneWay
	_, err = ak.CreateACL(ctx, oneWay)
	apiErr("a one-way policy on CE", err, 400, "uni traffic flow not allowed on CE")
	created, err := ak.CreateACL(ctx, probe)
	if err != nil || created.ID == "" || created.CreatedBy != "superadmin" {
		t.Errorf("an all-nodes policy with the access token: %+v, %v", created, err)
	} else {
		created.Enabled = false
		if err := ak.UpdateACL(ctx, created); err != nil {
			t.Errorf("update ACL policy: %v", err)
		}
		if err := ak.DeleteACL(ctx, created.ID); err != nil {
			t.Errorf("delete ACL policy: %v", err)
		}
	}

	// Pending hosts: a community server has none, and approving or
	// rejecting one that is not there is an error.
	if ps, err := mk.PendingHosts(ctx, "nm-eu"); err != nil || len(ps) != 0 {
		t.Errorf("pending hosts: %v, %v", ps, err)
	}
	const noSuch = "00000000-0000-0000-0000-000000000001"
	_, err = mk.ApprovePendingHost(ctx, noSuch)
	t.Logf("approving a pending host that is not there: %v", err)
	if err == nil {
		t.Error("approving a pending host that is not there succeeded")
	}
	err = mk.RejectPendingHost(ctx, noSuch)
	t.Logf("rejecting a pending host that is not there: %v", err)
	if err == nil {
		t.Error("rejecting a pending host that is not there succeeded")
	}

	// Key rotation: a new key, the old one revoked.
	r.C = mk
	d.Keys[0].Generation = 1
	rep = pass("key rotated")
	if rep.Keys["eu/prod"] == tok || !slices.ContainsFunc(rep.Writes, func(w string) bool {
		return strings.HasPrefix(w, "revoke") || strings.HasPrefix(w, "delete enrollment key")
	}) {
		t.Errorf("rotation: writes %q", rep.Writes)
	}

	// Detach: StateMesh's objects go; the network, which still has a
	// host, is kept with its allow-all default on.
	drep, err := r.Detach(ctx)
	t.Logf("detach: writes %q, %v", drep.Writes, err)
	if err == nil || !strings.Contains(err.Error(), "still has 1 hosts") {
		t.Errorf("detach with a host in the network: %v", err)
	}
	if _, err := look.Network(ctx, "nm-eu"); err != nil {
		t.Errorf("nm-eu, which has a host, was deleted: %v", err)
	}
	hosts, err := look.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if h.PublicKey == gw {
			if err := mk.RemoveHostFromNetwork(ctx, h.ID, "nm-eu", true); err != nil {
				t.Fatal(err)
			}
		}
	}
	drep, err = r.Detach(ctx)
	t.Logf("detach once empty: writes %q, %v", drep.Writes, err)
	if err != nil || !slices.Contains(drep.Writes, "delete network nm-eu") {
		t.Errorf("detach of an empty network: %q, %v", drep.Writes, err)
	}
	keys, err := look.EnrollmentKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if strings.HasPrefix(strings.Join(k.Tags, ","), "sm:") {
			t.Errorf("StateMesh's key %v is left after detach", k.Tags)
		}
	}
	return rec
}

func membersOf(t *testing.T, c *netmaker.Client, network string) []string {
	t.Helper()
	nodes, err := c.Nodes(context.Background(), network)
	if err != nil {
		t.Fatal(err)
	}
	hosts, err := c.Hosts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range nodes {
		if n.PendingDelete {
			continue
		}
		for _, h := range hosts {
			if h.ID == n.HostID {
				out = append(out, h.PublicKey)
			}
		}
	}
	slices.Sort(out)
	return out
}

// waitMembers waits for hosts to join (the real server adds the nodes of
// a registration in the background).
func waitMembers(t *testing.T, c *netmaker.Client, network string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := membersOf(t, c, network)
		if len(got) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has %d members after 30s, want %d", network, len(got), n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// fakeServer is the scenario's server made of nmtest (community edition).
type fakeServer struct{ nm *nmtest.Server }

func (f fakeServer) URL() string         { return f.nm.URL }
func (f fakeServer) MasterKey() string   { return nmtest.MasterKey }
func (f fakeServer) AccessToken() string { return nmtest.AccessToken }
func (f fakeServer) Restart(*testing.T)  { f.nm.Restart(true) }
func (f fakeServer) Register(t *testing.T, name, pub, tok string) {
	if _, err := f.nm.Join(name, pub, tok, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// TestFakeAnswersLikeTheRealServer runs the scenario against the fake and
// compares every exchange with the real server's recording.
func TestFakeAnswersLikeTheRealServer(t *testing.T) {
	real, err := nmtest.LoadExchanges(recordingFile)
	if err != nil {
		t.Fatal(err)
	}
	nm := nmtest.StartWith(t, nmtest.Options{CE: true})
	rec := scenario(t, fakeServer{nm})
	for _, d := range nmtest.Compare(real, rec.Exchanges()) {
		t.Error(d)
	}
	if len(nm.Violations) != 0 {
		t.Errorf("contract violations: %v", nm.Violations)
	}
}

// TestRealNetmaker runs the scenario against a real Netmaker server:
// STATEMESH_NETMAKER_BIN names a server binary built from source (see
// docs/netmaker.md). It runs as root: the server, mosquitto and a
// public-IP service run in a network namespace of their own (nmreal-PID,
// loopback only: no route out), with TELEMETRY=off and sqlite. With
// STATEMESH_NETMAKER_RECORD=FILE the exchanges are written to FILE (how
// testdata/netmaker-v1.5.1-ce.json was made).
func TestRealNetmaker(t *testing.T) {
	bin := os.Getenv("STATEMESH_NETMAKER_BIN")
	if bin == "" {
		t.Skip("STATEMESH_NETMAKER_BIN is not set (a Netmaker server binary; docs/netmaker.md)")
	}
	if ns := os.Getenv("STATEMESH_NETMAKER_NETNS"); ns != "" {
		realInside(t, bin)
		return
	}
	if os.Geteuid() != 0 {
		t.Fatal("the real-server test runs as root (it makes a network namespace)")
	}
	for _, tool := range []string{"ip", "mosquitto"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed: %v", tool, err)
		}
	}
	ns := fmt.Sprintf("nmreal-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	defer func() {
		// Whatever the run left in the namespace (only what it started
		// can be there), then the namespace.
		if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
			for _, f := range strings.Fields(string(out)) {
				var pid int
				if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		exec.Command("ip", "netns", "del", ns).Run()
	}()
	args := []string{"netns", "exec", ns, os.Args[0], "-test.run=^TestRealNetmaker$", "-test.count=1", "-test.timeout=5m"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), "STATEMESH_NETMAKER_NETNS="+ns)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("inside network namespace %s:\n%s", ns, out.String())
	if err != nil {
		t.Fatalf("the scenario against the real server failed: %v", err)
	}
}

// realServer is a Netmaker server process in this (isolated) namespace.
type realServer struct {
	bin, dir, url, master, access string
	env                           []string
	cmd                           *exec.Cmd
	hostIDs                       map[string]string
}

func (s *realServer) URL() string         { return s.url }
func (s *realServer) MasterKey() string   { return s.master }
func (s *realServer) AccessToken() string { return s.access }

func realInside(t *testing.T, bin string) {
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
	if out, _ := exec.Command("ip", "route", "show", "default").CombinedOutput(); len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("the namespace has a route out: %s", out)
	}
	dir := t.TempDir()
	port := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	mqPort, apiPort := port(), port()
	conf := filepath.Join(dir, "mosquitto.conf")
	os.WriteFile(conf, fmt.Appendf(nil, "listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n", mqPort), 0o644)
	mq := exec.Command("mosquitto", "-c", conf)
	mq.Stdout, mq.Stderr = io.Discard, io.Discard
	if err := mq.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mq.Process.Kill(); mq.Wait() })
	// The public-IP service the server asks at start.
	ipl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ipsrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "127.0.0.1") })}
	go ipsrv.Serve(ipl)
	t.Cleanup(func() { ipsrv.Close() })

	var mk [16]byte
	rand.Read(mk[:])
	s := &realServer{bin: bin, dir: dir, master: hex.EncodeToString(mk[:]), url: fmt.Sprintf("http://127.0.0.1:%d", apiPort), hostIDs: map[string]string{}}
	broker := fmt.Sprintf("tcp://127.0.0.1:%d", mqPort)
	s.env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir, "TELEMETRY=off", "DATABASE=sqlite", "MASTER_KEY=" + s.master,
		"SERVER_HOST=127.0.0.1", fmt.Sprintf("API_PORT=%d", apiPort), "SERVER_BROKER_ENDPOINT=" + broker, "BROKER_ENDPOINT=" + broker,
		"PUBLIC_IP_SERVICE=http://" + ipl.Addr().String() + "/ip", "MQ_USERNAME=statemesh", "MQ_PASSWORD=statemesh-test",
		"DNS_MODE=off", "VERBOSITY=1", fmt.Sprintf("SERVER_API_CONN_STRING=127.0.0.1:%d", apiPort), "SERVER_HTTP_HOST=127.0.0.1", "NODE_ID=statemesh-test"}
	s.start(t)
	t.Cleanup(func() { s.stop() })
	status := s.call(t, "GET", "/api/server/status", "", nil)
	t.Logf("Netmaker: %s", status)

	// A super-admin and an access token of theirs.
	const user, pass = "superadmin", "StateMesh-test-1"
	s.call(t, "POST", "/api/users/adm/createsuperadmin", "", map[string]string{"username": user, "password": pass})
	var auth struct{ Response struct{ AuthToken string } }
	json.Unmarshal(s.call(t, "POST", "/api/users/adm/authenticate", "", map[string]string{"username": user, "password": pass}), &auth)
	var at struct{ Response struct{ AuthToken string } }
	json.Unmarshal(s.call(t, "POST", "/api/v1/users/access_token", auth.Response.AuthToken,
		map[string]string{"name": "statemesh", "user_name": user, "expires_at": time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339)}), &at)
	if s.access = at.Response.AuthToken; s.access == "" {
		t.Fatal("no access token")
	}

	rec := scenario(t, s)
	if path := os.Getenv("STATEMESH_NETMAKER_RECORD"); path != "" {
		if err := rec.Save(path); err != nil {
			t.Fatal(err)
		}
		t.Logf("recorded %d exchanges in %s", len(rec.Exchanges()), path)
	}
	if real, err := nmtest.LoadExchanges(recordingFile); err == nil {
		for _, d := range nmtest.Compare(real, rec.Exchanges()) {
			t.Logf("this run differs from the recording (\"real server\": the recording, \"fake\": this run): %s", d)
		}
	}
}

func (s *realServer) start(t *testing.T) {
	t.Helper()
	s.cmd = exec.Command(s.bin)
	s.cmd.Dir, s.cmd.Env = s.dir, s.env
	logf, err := os.OpenFile(filepath.Join(s.dir, "server.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		resp, err := http.Get(s.url + "/api/server/status")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
			t.Fatalf("the Netmaker server did not answer in 90s: %v\n%s", err, log)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func (s *realServer) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			s.cmd.Process.Kill()
			<-done
		}
	}
}

func (s *realServer) Restart(t *testing.T) {
	s.stop()
	s.start(t)
}

// call makes a setup call straight to the server (not recorded).
func (s *realServer) call(t *testing.T, method, path, token string, body any) []byte {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, s.url+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, data)
	}
	return data
}

// Register is netclient's registration: the host (its WireGuard public
// key as the server's wgtypes.Key, an array of bytes) and a traffic key.
func (s *realServer) Register(t *testing.T, name, pub, tok string) {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(pub)
	if err != nil {
		t.Fatal(err)
	}
	id, ok := s.hostIDs[name]
	if !ok {
		var b [16]byte
		rand.Read(b[:])
		b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
		h := hex.EncodeToString(b[:])
		id = h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
		s.hostIDs[name] = id
	}
	ints := func(b []byte) []int {
		out := make([]int, len(b))
		for i, c := range b {
			out[i] = int(c)
		}
		return out
	}
	traffic := make([]byte, 32)
	rand.Read(traffic)
	body := map[string]any{"id": id, "name": name, "publickey": ints(raw), "traffickeypublic": ints(traffic),
		"version": "v1.5.1", "os": "linux", "hostpass": hex.EncodeToString(traffic[:12]), "listenport": 51821, "interface": "netmaker"}
	s.call(t, "POST", "/api/v1/host/register/"+tok, "", body)
}
