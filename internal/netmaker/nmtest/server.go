// Package nmtest is a Netmaker server for tests. Every request is checked
// against Netmaker's swagger.yaml (operation, method, path and query
// parameters, the Authorization header of secured operations, the body
// against its schema with unknown fields refused); an off-contract
// request fails the test with a message naming the operation and the
// field. Answers come from an in-memory model (networks, enrollment keys,
// pending hosts, hosts, nodes, tags, ACL policies, gateways) that follows
// the real server's rules, and each answer is itself checked against the
// response schema. By default it answers as the real server (v1.5.1) was
// recorded answering (internal/netmaker/testdata; Compare checks it):
// Options.Swagger answers as swagger.yaml describes, Options.CE as the
// community edition. Errors, latency, timeouts and restarts (state kept
// or lost) can be injected. Recorder records the exchanges in front of
// any Netmaker server.
package nmtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/netmaker/contract"
)

// SwaggerPath finds Netmaker's swagger.yaml, kept in the repository as
// test data (internal/netmaker/contract/testdata/swagger.yaml; its source
// commit and licence are in SOURCE.md beside it).
func SwaggerPath(t testing.TB) string {
	t.Helper()
	p, err := FindSwagger()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// FindSwagger walks up from this package to the module root.
func FindSwagger() (string, error) {
	_, file, _, _ := runtime.Caller(0)
	for dir := filepath.Dir(file); ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, "internal", "netmaker", "contract", "testdata", "swagger.yaml")
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("the Netmaker contract is missing from the repository: %w", err)
			}
			return p, nil
		}
		if filepath.Dir(dir) == dir {
			return "", errors.New("the repository root (go.mod) was not found above " + file)
		}
	}
}

// Options shape the server. The zero value answers as the real server
// (Netmaker v1.5.1, built from commit 006dfdced) did when it was recorded
// (testdata/recorded, see README.md there): wrapped answers as
// {"Code":…,"Message":…,"Response":…}, errors as {"Code":…,"Message":…,
// "Response":null}, every pending host listed whatever network is asked
// for, enrollment_key_id as the key's JSON object, and the calling user
// looked up where the server does (the master key's user is not there).
type Options struct {
	// Swagger answers as swagger.yaml describes instead (bare payloads,
	// lowercase error bodies, pending hosts filtered by network, the key
	// as an array of byte values).
	Swagger bool
	// NoDeviceApproval: the server's device approval is off (hosts join
	// without approval; the server forces auto_join on).
	NoDeviceApproval bool
	// NoPro: a community server: the tags API answers 404.
	NoPro bool
	// CE is the community edition: NoDeviceApproval and NoPro, and its
	// ACL rules (one-way policies refused, tag sources invalid).
	CE bool
}

func (o Options) normal() Options {
	if o.CE {
		o.NoDeviceApproval, o.NoPro = true, true
	}
	return o
}

// The credentials the server accepts. AccessToken is a super-admin
// user's access token (a JWT, as the real server issues them);
// MasterKey is the server's MASTER_KEY, whose user is not in the
// database: calls that look the caller up (creating ACL policies and
// tags) fail with 400 "record not found", as on the real server.
const (
	AccessToken = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzdXBlcmFkbWluIn0.c2lnbmF0dXJlLWZvci10ZXN0cw"
	MasterKey   = "master-key-for-tests"
)

// Server is the fake Netmaker.
type Server struct {
	// URL is where it listens (it keeps its address across restarts).
	URL string
	// Token is the bearer token tests give the client: AccessToken (a
	// super-admin's). MasterKey is accepted too.
	Token string
	// Contract is the loaded swagger.yaml (strict).
	Contract *contract.Contract
	// Violations are the off-contract requests seen (also test errors).
	// Read it after the calls are done.
	Violations []string

	t    testing.TB
	opts Options

	mu     sync.Mutex
	m      *Model
	addr   string
	srv    *http.Server
	faults []Fault
	delay  time.Duration
	calls  []Call
}

// Call is one request the server saw.
type Call struct {
	Method, Path string
	// Op is the swagger operation matched ("METHOD /template"), "" if none.
	Op     string
	Status int
	At     time.Time
}

// Write reports whether the call asked for a change.
func (c Call) Write() bool { return c.Method != http.MethodGet }

// Fault makes matching requests fail.
type Fault struct {
	// Op is "METHOD /path/{template}" as in swagger.yaml; "" matches all.
	Op string
	// Status answers the request (with a models.ErrorResponse); 0 with
	// Delay only slows it.
	Status int
	// Times is how many requests it hits (0: until cleared).
	Times int
	// AfterApply makes the change first, then answers Status (as a
	// server that fails after committing, or a lost answer).
	AfterApply bool
	// Delay is added before answering.
	Delay time.Duration
}

// Start runs a server with the default options.
func Start(t testing.TB) *Server { return StartWith(t, Options{}) }

// StartWith runs a server.
func StartWith(t testing.TB, o Options) *Server {
	t.Helper()
	c, err := contract.Load(SwaggerPath(t))
	if err != nil {
		t.Fatal(err)
	}
	c.Strict = true
	o = o.normal()
	s := &Server{Token: AccessToken, Contract: c, t: t, opts: o, m: newModel(o)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	s.URL = "http://" + s.addr
	s.serveOn(ln)
	t.Cleanup(s.Down)
	return s
}

func (s *Server) serveOn(ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 5 * time.Second}
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
	go srv.Serve(ln)
}

// Down stops the server: connections are refused until Up.
func (s *Server) Down() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// Up starts a stopped server again on the same address.
func (s *Server) Up() {
	var ln net.Listener
	var err error
	for range 50 {
		if ln, err = net.Listen("tcp", s.addr); err == nil {
			s.serveOn(ln)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.t.Fatalf("nmtest: listening again on %s: %v", s.addr, err)
}

// Restart stops and starts the server, keeping its state or, like a
// server restarted without its database, losing it.
func (s *Server) Restart(keepState bool) {
	s.Down()
	if !keepState {
		s.Reset()
	}
	if keepState && s.opts.NoPro && !s.opts.Swagger {
		// The community server keeps the tags a key's groups gave its
		// nodes in memory only: after a restart only the gateways tag
		// is left (as recorded).
		s.Do(func(m *Model) {
			for _, n := range m.Nodes {
				for id := range n.Tags {
					if id != n.Network+".gateways" {
						delete(n.Tags, id)
					}
				}
			}
		})
	}
	s.Up()
}

// Reset forgets every object.
func (s *Server) Reset() {
	s.mu.Lock()
	s.m = newModel(s.opts)
	s.mu.Unlock()
}

// Inject adds a fault.
func (s *Server) Inject(f Fault) {
	s.mu.Lock()
	s.faults = append(s.faults, f)
	s.mu.Unlock()
}

// Fail makes the next n requests answer status; Fail(0, 0) clears all
// faults.
func (s *Server) Fail(n, status int) {
	s.mu.Lock()
	s.faults = nil
	if n > 0 {
		s.faults = []Fault{{Status: status, Times: n}}
	}
	s.mu.Unlock()
}

// Stall delays every answer by d (0: none); with d above the client's
// timeout the server looks hung.
func (s *Server) Stall(d time.Duration) {
	s.mu.Lock()
	s.delay = d
	s.mu.Unlock()
}

// Calls returns the requests seen so far.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// WriteCount counts the requests that asked for a change.
func (s *Server) WriteCount() int {
	n := 0
	for _, c := range s.Calls() {
		if c.Write() {
			n++
		}
	}
	return n
}

// Do runs f on the model (to seed or inspect it) under the server's lock.
func (s *Server) Do(f func(m *Model)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s.m)
}

func (s *Server) violation(err error) {
	s.Violations = append(s.Violations, err.Error())
	s.t.Errorf("Netmaker contract violation: %v", err)
}

// takeFault returns the fault hitting a request of op (s.mu held).
func (s *Server) takeFault(op string) (Fault, bool) {
	for i := range s.faults {
		f := &s.faults[i]
		if f.Op != "" && f.Op != op {
			continue
		}
		hit := *f
		if f.Times > 0 {
			if f.Times--; f.Times == 0 {
				s.faults = append(s.faults[:i], s.faults[i+1:]...)
			}
		}
		return hit, true
	}
	return Fault{}, false
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	call := Call{Method: r.Method, Path: r.URL.Path, At: time.Now()}
	op, err := s.Contract.CheckRequest(r.Method, r.URL.EscapedPath(), r.URL.Query(), r.Header, body)
	if op != nil {
		call.Op = op.Name()
	}
	record := func(status int) {
		call.Status = status
		s.calls = append(s.calls, call)
	}
	if err != nil {
		s.violation(err)
		record(http.StatusBadRequest)
		s.mu.Unlock()
		writeJSON(w, http.StatusBadRequest, s.m.errorBody(http.StatusBadRequest, "off contract: "+err.Error()))
		return
	}
	auth := r.Header.Get("Authorization")
	if op.Secured && auth != "Bearer "+AccessToken && auth != "Bearer "+MasterKey {
		record(http.StatusUnauthorized)
		s.mu.Unlock()
		// The real server: 401 {"Code":401,"Message":"unauthorized","Response":null}.
		writeJSON(w, http.StatusUnauthorized, s.m.errorBody(http.StatusUnauthorized, "unauthorized"))
		return
	}
	s.m.master = auth == "Bearer "+MasterKey
	delay := s.delay
	fault, faulted := s.takeFault(op.Name())
	delay += fault.Delay
	var status int
	var out any
	if !faulted || fault.Status == 0 || fault.AfterApply {
		status, out = s.m.handle(op.Name(), r, body)
	}
	if faulted && fault.Status != 0 {
		status, out = fault.Status, s.m.errorBody(fault.Status, "injected failure")
	}
	ctype := "application/json"
	if !s.opts.Swagger && sniffed[op.Name()] {
		ctype = "text/plain; charset=utf-8"
	}
	var data []byte
	switch b := out.(type) {
	case textBody:
		ctype, data = "text/plain; charset=utf-8", []byte(b)
	case emptyBody:
		ctype = ""
	default:
		data, _ = json.Marshal(out)
	}
	if status < 400 && len(data) > 0 {
		s.checkAnswer(op, status, data)
	}
	record(status)
	s.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	if ctype != "" {
		w.Header().Set("Content-Type", ctype)
	}
	w.WriteHeader(status)
	w.Write(data)
}

// sniffed are the operations whose JSON answers the real server sends
// without a Content-Type: net/http sniffs them as text/plain.
var sniffed = map[string]bool{
	"GET /api/networks": true, "GET /api/v1/enrollment-keys": true, "POST /api/v1/enrollment-keys": true, "PUT /api/v1/enrollment-keys/{keyID}": true,
}

// checkAnswer checks the model's own answer against the contract (inside
// the wrapper, unless in Swagger mode).
func (s *Server) checkAnswer(op *contract.Operation, status int, data []byte) {
	if !s.opts.Swagger {
		// models.SuccessResponse as the server sends it: capitalised
		// keys. Inside it for the operations swagger.yaml describes as
		// bare; with swagger's lowercase keys for the others.
		var env map[string]json.RawMessage
		if json.Unmarshal(data, &env) == nil && env["Message"] != nil && len(env) <= 3 {
			if quirkWrapped[op.Name()] {
				data = env["Response"]
			} else {
				low := map[string]json.RawMessage{}
				for k, v := range env {
					if k != "Response" || string(v) != "null" {
						low[strings.ToLower(k)] = v
					}
				}
				data, _ = json.Marshal(low)
			}
		}
		data = keyAsBytes(data)
	}
	if err := s.Contract.CheckResponse(op, status, data); err != nil {
		s.Violations = append(s.Violations, "the fake's own answer: "+err.Error())
		s.t.Errorf("nmtest answered off contract: %v", err)
	}
}

// keyAsBytes turns the enrollment_key_id objects the real server sends
// into what swagger.yaml declares (the bytes of their JSON), so the rest
// of a quirky answer is still checked.
func keyAsBytes(data []byte) []byte {
	var v any
	if json.Unmarshal(data, &v) != nil {
		return data
	}
	var walk func(any)
	walk = func(x any) {
		switch x := x.(type) {
		case []any:
			for _, e := range x {
				walk(e)
			}
		case map[string]any:
			if k, ok := x["enrollment_key_id"].(map[string]any); ok {
				raw, _ := json.Marshal(k)
				ints := make([]any, len(raw))
				for i, b := range raw {
					ints[i] = float64(b)
				}
				x["enrollment_key_id"] = ints
			}
		}
	}
	walk(v)
	out, _ := json.Marshal(v)
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// errorBody is models.ErrorResponse: its fields have no json tags, so the
// real server sends {"Code":…,"Message":…,"Response":null}.
func (m *Model) errorBody(code int, msg string) map[string]any {
	if m.opts.Swagger {
		return map[string]any{"code": code, "message": msg}
	}
	return map[string]any{"Code": code, "Message": msg, "Response": nil}
}

// quirkWrapped are the operations the real server answers inside
// {code, message, response}.
var quirkWrapped = map[string]bool{
	"GET /api/v1/pending_hosts": true, "POST /api/v1/pending_hosts/approve/{id}": true, "POST /api/v1/pending_hosts/reject/{id}": true,
	"GET /api/v1/acls": true, "POST /api/v1/acls": true, // PUT: {code, message, response} is its declared answer
	"GET /api/v1/tags": true, "POST /api/v1/tags": true, "PUT /api/v1/tags": true,
	"GET /api/server/feature_flags": true,
}

// HostNetworks returns the networks a host (by name) is a member of.
func (s *Server) HostNetworks(name string) []string {
	var out []string
	s.Do(func(m *Model) {
		for _, n := range m.sortedNodes() {
			if h := m.Hosts[n.HostID]; h != nil && h.Name == name {
				out = append(out, n.Network)
			}
		}
	})
	return out
}

// PendingIDs returns the IDs of the hosts waiting for approval.
func (s *Server) PendingIDs() map[string]bool {
	out := map[string]bool{}
	s.Do(func(m *Model) {
		for id := range m.Pending {
			out[id] = true
		}
	})
	return out
}

// Register makes a host ask to join a network without saying which key it
// used (as a pending host created by an older server).
func (s *Server) Register(name, publicKey, network string, at time.Time) string {
	var id string
	s.Do(func(m *Model) { id = m.addPending(m.hostFor(name, publicKey), network, nil, at) })
	return id
}

// Join is netclient joining with an enrollment key (its value or token):
// for each of the key's networks the host waits as a pending host, or
// joins at once where auto_join is on. It returns the pending IDs.
func (s *Server) Join(name, publicKey, key string, at time.Time) ([]string, error) {
	var ids []string
	var err error
	s.Do(func(m *Model) { ids, err = m.join(name, publicKey, key, at) })
	return ids, err
}

// AddMember puts a host into a network directly (an operator adding it).
func (s *Server) AddMember(name, publicKey, network string) string {
	var id string
	s.Do(func(m *Model) { id = m.addNode(m.hostFor(name, publicKey), network, nil).ID })
	return id
}
