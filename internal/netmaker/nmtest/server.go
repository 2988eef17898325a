// Package nmtest is a Netmaker server for tests: every request is checked
// against Netmaker's swagger.yaml (path, method, parameters, body schema)
// and every answer is schema-valid and comes from an in-memory model. It
// can fail, stall or forget its state on demand.
package nmtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/netmaker"
)

// SwaggerPath finds ../shared/netmaker/swagger.yaml beside the repository.
func SwaggerPath(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Dir(file)
	for range 8 {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, "..", "shared", "netmaker", "swagger.yaml")
			if _, err := os.Stat(p); err != nil {
				t.Fatalf("the Netmaker contract is missing: %v", err)
			}
			return p
		}
		dir = filepath.Dir(dir)
	}
	t.Fatal("repository root not found")
	return ""
}

// Server is the fake.
type Server struct {
	*httptest.Server
	Token    string
	Contract *netmaker.Contract

	mu         sync.Mutex
	t          testing.TB
	Violations []string
	Calls      []string // "METHOD /path"
	failNext   int
	failStatus int
	delay      time.Duration

	Networks map[string]netmaker.Network
	Keys     map[string]netmaker.EnrollmentKey
	Pending  map[string]netmaker.PendingHost
	Hosts    map[string]*HostState
	ACLs     map[string]netmaker.ACL
	seq      int
}

// HostState is a host and the networks it is in.
type HostState struct {
	Host     netmaker.Host
	Networks []string
}

// Start runs a server checking requests against the contract.
func Start(t testing.TB) *Server {
	c, err := netmaker.LoadContract(SwaggerPath(t))
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Token: "master-key-for-tests", Contract: c, t: t}
	s.Reset()
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

// Reset forgets every object (a server restarted without its database).
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Networks = map[string]netmaker.Network{}
	s.Keys = map[string]netmaker.EnrollmentKey{}
	s.Pending = map[string]netmaker.PendingHost{}
	s.Hosts = map[string]*HostState{}
	s.ACLs = map[string]netmaker.ACL{}
}

// Fail makes the next n requests answer status.
func (s *Server) Fail(n, status int) {
	s.mu.Lock()
	s.failNext, s.failStatus = n, status
	s.mu.Unlock()
}

// Stall delays every answer by d (0: none).
func (s *Server) Stall(d time.Duration) {
	s.mu.Lock()
	s.delay = d
	s.mu.Unlock()
}

// Register makes a host ask to join network (as netclient does with an
// enrollment key of a network that needs approval).
func (s *Server) Register(name, publicKey, network string, at time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	id := fmt.Sprintf("pending-%d", s.seq)
	hid := fmt.Sprintf("host-%d", s.seq)
	s.Pending[id] = netmaker.PendingHost{ID: id, HostID: hid, HostName: name, Network: network, PublicKey: publicKey, RequestedAt: at.UTC().Format(time.RFC3339)}
	s.Hosts[hid] = &HostState{Host: netmaker.Host{ID: hid, Name: name, PublicKey: publicKey}}
	return id
}

// HostNetworks returns the networks a host (by name) is in.
func (s *Server) HostNetworks(name string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.Hosts {
		if h.Host.Name == name {
			return slices.Clone(h.Networks)
		}
	}
	return nil
}

// WriteCount counts the calls that change something.
func (s *Server) WriteCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.Calls {
		if !strings.HasPrefix(c, "GET ") {
			n++
		}
	}
	return n
}

func (s *Server) violation(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.Violations = append(s.Violations, msg)
	s.t.Errorf("Netmaker contract violation: %s", msg)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	delay := s.delay
	s.Calls = append(s.Calls, r.Method+" "+r.URL.Path)
	if err := s.Contract.CheckRequest(r.Method, r.URL.Path, r.URL.Query(), body); err != nil {
		s.violation("%v", err)
		s.mu.Unlock()
		http.Error(w, `{"code":400,"message":"off contract"}`, http.StatusBadRequest)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+s.Token {
		s.mu.Unlock()
		writeJSON(w, http.StatusUnauthorized, map[string]any{"code": 401, "message": "unauthorized"})
		return
	}
	if s.failNext > 0 {
		s.failNext--
		st := s.failStatus
		s.mu.Unlock()
		time.Sleep(delay)
		writeJSON(w, st, map[string]any{"code": st, "message": "injected failure"})
		return
	}
	status, out := s.handle(r, body)
	s.mu.Unlock()
	time.Sleep(delay)
	data, _ := json.Marshal(out)
	if err := s.Contract.CheckResponse(r.Method, r.URL.Path, status, data); err != nil {
		s.mu.Lock()
		s.violation("the fake's own answer: %v", err)
		s.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(data)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func errResp(code int, msg string) (int, any) {
	return code, map[string]any{"code": code, "message": msg}
}

func ok() (int, any) { return 200, map[string]any{"code": 200, "message": "ok"} }

// handle answers from the model (s.mu held).
func (s *Server) handle(r *http.Request, body []byte) (int, any) {
	seg := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	q := r.URL.Query()
	key := r.Method + " " + r.URL.Path
	dec := func(v any) error { return json.NewDecoder(bytes.NewReader(body)).Decode(v) }
	switch {
	case key == "GET /api/networks":
		out := []netmaker.Network{}
		for _, n := range s.Networks {
			out = append(out, n)
		}
		slices.SortFunc(out, func(a, b netmaker.Network) int { return strings.Compare(a.NetID, b.NetID) })
		return 200, out
	case key == "POST /api/networks":
		var n netmaker.Network
		if err := dec(&n); err != nil || n.NetID == "" {
			return errResp(400, "invalid network")
		}
		if _, dup := s.Networks[n.NetID]; dup {
			return errResp(400, "network exists")
		}
		s.Networks[n.NetID] = n
		return 200, n
	case r.Method == "PUT" && len(seg) == 3 && seg[1] == "networks":
		var n netmaker.Network
		dec(&n)
		if _, ok := s.Networks[seg[2]]; !ok {
			return errResp(400, "no such network")
		}
		n.NetID = seg[2]
		s.Networks[seg[2]] = n
		return 200, n
	case r.Method == "DELETE" && len(seg) == 3 && seg[1] == "networks":
		if _, ok := s.Networks[seg[2]]; !ok {
			return errResp(400, "no such network")
		}
		delete(s.Networks, seg[2])
		return ok()
	case key == "GET /api/v1/enrollment-keys":
		out := []netmaker.EnrollmentKey{}
		for _, k := range s.Keys {
			out = append(out, k)
		}
		slices.SortFunc(out, func(a, b netmaker.EnrollmentKey) int { return strings.Compare(a.Value, b.Value) })
		return 200, out
	case key == "POST /api/v1/enrollment-keys":
		var k netmaker.KeyRequest
		dec(&k)
		s.seq++
		ek := netmaker.EnrollmentKey{Value: fmt.Sprintf("key-%d", s.seq), Token: fmt.Sprintf("token-%d", s.seq), Networks: k.Networks, Tags: k.Tags, Type: k.Type, UsesRemaining: k.UsesRemaining}
		s.Keys[ek.Value] = ek
		return 200, ek
	case r.Method == "DELETE" && len(seg) == 4 && seg[2] == "enrollment-keys":
		if _, ok := s.Keys[seg[3]]; !ok {
			return errResp(500, "no such key")
		}
		delete(s.Keys, seg[3])
		return 200, "deleted"
	case key == "GET /api/v1/pending_hosts":
		out := []netmaker.PendingHost{}
		for _, p := range s.Pending {
			if p.Network == q.Get("network") {
				out = append(out, p)
			}
		}
		slices.SortFunc(out, func(a, b netmaker.PendingHost) int { return strings.Compare(a.ID, b.ID) })
		return 200, out
	case r.Method == "POST" && len(seg) == 5 && seg[2] == "pending_hosts":
		p, found := s.Pending[seg[4]]
		if !found {
			return errResp(500, "no such pending host")
		}
		delete(s.Pending, p.ID)
		if seg[3] == "reject" {
			return 200, p
		}
		h := s.Hosts[p.HostID]
		h.Networks = append(h.Networks, p.Network)
		h.Host.Nodes = append(h.Host.Nodes, p.HostID+"-"+p.Network)
		return 200, map[string]any{"id": p.HostID + "-" + p.Network, "network": p.Network, "hostid": p.HostID}
	case r.Method == "GET" && len(seg) == 3 && seg[1] == "nodes":
		out := []map[string]any{}
		for _, h := range s.Hosts {
			if slices.Contains(h.Networks, seg[2]) {
				out = append(out, map[string]any{"id": h.Host.ID + "-" + seg[2], "hostid": h.Host.ID, "network": seg[2]})
			}
		}
		slices.SortFunc(out, func(a, b map[string]any) int { return strings.Compare(a["id"].(string), b["id"].(string)) })
		return 200, out
	case key == "GET /api/hosts":
		out := []netmaker.Host{}
		for _, h := range s.Hosts {
			out = append(out, h.Host)
		}
		slices.SortFunc(out, func(a, b netmaker.Host) int { return strings.Compare(a.ID, b.ID) })
		return 200, out
	case r.Method == "DELETE" && len(seg) == 5 && seg[1] == "hosts" && seg[3] == "networks":
		h, found := s.Hosts[seg[2]]
		if !found || !slices.Contains(h.Networks, seg[4]) {
			return errResp(500, "host not in network")
		}
		h.Networks = slices.DeleteFunc(h.Networks, func(n string) bool { return n == seg[4] })
		h.Host.Nodes = slices.DeleteFunc(h.Host.Nodes, func(n string) bool { return n == h.Host.ID+"-"+seg[4] })
		return 200, "removed"
	case key == "GET /api/v1/acls":
		out := []netmaker.ACL{}
		for _, a := range s.ACLs {
			if a.NetworkID == q.Get("network") {
				out = append(out, a)
			}
		}
		slices.SortFunc(out, func(a, b netmaker.ACL) int { return strings.Compare(a.ID, b.ID) })
		return 200, out
	case key == "POST /api/v1/acls":
		var a netmaker.ACL
		dec(&a)
		s.seq++
		a.ID = fmt.Sprintf("acl-%d", s.seq)
		s.ACLs[a.ID] = a
		return 200, a
	case key == "DELETE /api/v1/acls":
		if _, found := s.ACLs[q.Get("acl_id")]; !found {
			return errResp(400, "no such acl")
		}
		delete(s.ACLs, q.Get("acl_id"))
		return ok()
	}
	return errResp(500, "the fake does not implement "+key)
}

// PendingIDs returns the IDs of the hosts still waiting for approval.
func (s *Server) PendingIDs() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]bool{}
	for id := range s.Pending {
		out[id] = true
	}
	return out
}
