package nmtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/statemesh/statemesh/internal/netmaker/contract"
)

// Exchange is one request StateMesh made and the answer it got, as
// recorded in front of a Netmaker server (the real one, or this fake).
// Secrets are left out: the credential is named (Cred), enrollment key
// values and tokens read [REDACTED].
type Exchange struct {
	// Op is the swagger operation ("METHOD /template").
	Op    string `json:"op"`
	Path  string `json:"path"`
	Query string `json:"query,omitempty"`
	// Cred is "master-key", "access-token" or "other".
	Cred        string          `json:"cred"`
	Request     json.RawMessage `json:"request,omitempty"`
	Status      int             `json:"status"`
	ContentType string          `json:"content_type"`
	// Body is the answer: JSON as it came, or a JSON string for text.
	Body json.RawMessage `json:"body"`
}

// Recorder is a proxy in front of a Netmaker server that records every
// exchange.
type Recorder struct {
	// URL is where clients call (it forwards to the server).
	URL string

	c       *contract.Contract
	target  string
	creds   map[string]string // bearer token → name
	mu      sync.Mutex
	ex      []Exchange
	srv     *http.Server
	onwards *http.Client
}

// NewRecorder starts a recording proxy in front of target. creds names
// the bearer tokens (token → "master-key", "access-token").
func NewRecorder(t testing.TB, target string, creds map[string]string) *Recorder {
	t.Helper()
	c, err := contract.Load(SwaggerPath(t))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Recorder{URL: "http://" + ln.Addr().String(), c: c, target: strings.TrimRight(target, "/"), creds: creds, onwards: &http.Client{}}
	r.srv = &http.Server{Handler: r}
	go r.srv.Serve(ln)
	t.Cleanup(func() { r.srv.Close() })
	return r
}

// ServeHTTP forwards one request and records it.
func (r *Recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	out, err := http.NewRequestWithContext(req.Context(), req.Method, r.target+req.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = req.Header.Clone()
	resp, err := r.onwards.Do(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	ex := Exchange{Path: req.URL.Path, Query: req.URL.RawQuery, Status: resp.StatusCode, Cred: "other"}
	if op, _, err := r.c.Match(req.Method, req.URL.EscapedPath()); err == nil {
		ex.Op = op.Name()
	} else {
		ex.Op = req.Method + " " + req.URL.Path
	}
	if name, ok := r.creds[strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer ")]; ok {
		ex.Cred = name
	}
	ex.ContentType, _, _ = mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if len(body) > 0 {
		ex.Request = redactJSON(body)
	}
	if json.Valid(data) && len(bytes.TrimSpace(data)) > 0 {
		ex.Body = redactJSON(data)
	} else {
		ex.Body, _ = json.Marshal(string(data))
	}
	r.mu.Lock()
	r.ex = append(r.ex, ex)
	r.mu.Unlock()
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	w.Write(data)
}

// Exchanges returns what was recorded so far.
func (r *Recorder) Exchanges() []Exchange {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ex)
}

// Count counts the recorded exchanges of an operation.
func (r *Recorder) Count(op string) int {
	n := 0
	for _, e := range r.Exchanges() {
		if e.Op == op {
			n++
		}
	}
	return n
}

// Save writes the exchanges as indented JSON.
func (r *Recorder) Save(path string) error {
	b, err := json.MarshalIndent(r.Exchanges(), "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// LoadExchanges reads a recording.
func LoadExchanges(path string) ([]Exchange, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ex []Exchange
	return ex, json.Unmarshal(b, &ex)
}

// secretFields are redacted in recordings: enrollment keys' values and
// join tokens, passwords, access tokens.
var secretFields = map[string]bool{"value": true, "token": true, "hostpass": true, "AuthToken": true, "MQPassword": true, "TrafficKey": true}

func redactJSON(data []byte) json.RawMessage {
	var v any
	if json.Unmarshal(data, &v) != nil {
		return data
	}
	var walk func(any) any
	walk = func(x any) any {
		switch x := x.(type) {
		case map[string]any:
			for k, e := range x {
				if s, ok := e.(string); ok && secretFields[k] && s != "" && s != "*" && !strings.Contains(s, ".") {
					x[k] = "[REDACTED]"
					continue
				}
				if s, ok := e.(string); ok && secretFields[k] && strings.HasPrefix(s, "eyJ") {
					x[k] = "[REDACTED]"
					continue
				}
				x[k] = walk(e)
			}
		case []any:
			for i, e := range x {
				x[i] = walk(e)
			}
		}
		return x
	}
	out, _ := json.Marshal(walk(v))
	return out
}

// Compare checks the fake's exchanges against a recording of the real
// server made by the same scenario: per operation and credential, in
// order, the same status and content type; for errors the same message;
// for answers the same wrapping ({"Code","Message","Response"} or bare)
// and no field the real server does not send. It returns the differences.
func Compare(real, fake []Exchange) []string {
	type key struct{ op, cred string }
	group := func(ex []Exchange) (map[key][]Exchange, []key) {
		m := map[key][]Exchange{}
		var order []key
		for _, e := range ex {
			k := key{e.Op, e.Cred}
			if _, ok := m[k]; !ok {
				order = append(order, k)
			}
			m[k] = append(m[k], e)
		}
		return m, order
	}
	rm, order := group(real)
	fm, forder := group(fake)
	for _, k := range forder {
		if _, ok := rm[k]; !ok {
			order = append(order, k)
		}
	}
	var diffs []string
	for _, k := range order {
		rs, fs := rm[k], fm[k]
		name := fmt.Sprintf("%s (%s)", k.op, k.cred)
		if len(rs) != len(fs) {
			diffs = append(diffs, fmt.Sprintf("%s: the real server got %d calls, the fake %d", name, len(rs), len(fs)))
		}
		for i := range min(len(rs), len(fs)) {
			r, f := rs[i], fs[i]
			at := fmt.Sprintf("%s #%d", name, i+1)
			if r.Status != f.Status {
				diffs = append(diffs, fmt.Sprintf("%s: status %d, the fake %d (real %s, fake %s)", at, r.Status, f.Status, short(r.Body), short(f.Body)))
				continue
			}
			if r.ContentType != f.ContentType {
				diffs = append(diffs, fmt.Sprintf("%s: content type %q, the fake %q", at, r.ContentType, f.ContentType))
			}
			if r.Status >= 400 {
				if rm, fm := message(r.Body), message(f.Body); rm != fm {
					diffs = append(diffs, fmt.Sprintf("%s: error %q, the fake %q", at, rm, fm))
				}
				continue
			}
			diffs = append(diffs, shapeDiffs(at, "", decodeAny(r.Body), decodeAny(f.Body))...)
		}
	}
	return diffs
}

// merge unites two JSON values' shapes: objects key by key, deeply.
func merge(a, b any) any {
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if !aok || !bok {
		if a == nil {
			return b
		}
		return a
	}
	out := make(map[string]any, len(am)+len(bm))
	for k, v := range am {
		out[k] = v
	}
	for k, v := range bm {
		out[k] = merge(out[k], v)
	}
	return out
}

func short(b []byte) string {
	if len(b) > 120 {
		return string(b[:120]) + "…"
	}
	return string(b)
}

func decodeAny(b []byte) any {
	var v any
	json.Unmarshal(b, &v)
	return v
}

// message is an error answer's text: Message of {"Code","Message"}, else
// the body.
func message(b []byte) string {
	switch v := decodeAny(b).(type) {
	case map[string]any:
		for _, k := range []string{"Message", "message"} {
			if s, ok := v[k].(string); ok {
				return s
			}
		}
	case string:
		return strings.TrimSpace(v)
	}
	return string(b)
}

// shapeDiffs: the fake's JSON must have the real one's type at every
// level and no object key the real one lacks (arrays: every element of
// the fake's against the union of the real one's elements).
func shapeDiffs(at, path string, real, fake any) []string {
	where := path
	if where == "" {
		where = "the answer"
	}
	switch r := real.(type) {
	case map[string]any:
		f, ok := fake.(map[string]any)
		if !ok {
			if fake == nil {
				return nil // null where the real server had an object: allowed
			}
			return []string{fmt.Sprintf("%s: %s is an object, the fake sends %T", at, where, fake)}
		}
		var out []string
		keys := make([]string, 0, len(f))
		for k := range f {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			rv, ok := r[k]
			if !ok {
				out = append(out, fmt.Sprintf("%s: the fake sends %s.%s, the real server does not", at, path, k))
				continue
			}
			out = append(out, shapeDiffs(at, path+"."+k, rv, f[k])...)
		}
		return out
	case []any:
		f, ok := fake.([]any)
		if !ok {
			if fake == nil {
				return nil
			}
			return []string{fmt.Sprintf("%s: %s is an array, the fake sends %T", at, where, fake)}
		}
		if len(r) == 0 {
			return nil
		}
		var union any
		var scalar any
		for _, e := range r {
			if _, ok := e.(map[string]any); ok {
				union = merge(union, e)
			} else {
				scalar = e
			}
		}
		var out []string
		for _, e := range f {
			if scalar != nil {
				out = append(out, shapeDiffs(at, path+"[]", scalar, e)...)
			} else {
				out = append(out, shapeDiffs(at, path+"[]", union, e)...)
			}
			if len(out) > 0 {
				break
			}
		}
		return out
	case nil:
		return nil // any type where the real server sent null
	default:
		if fake == nil {
			return nil
		}
		if fmt.Sprintf("%T", r) != fmt.Sprintf("%T", fake) {
			return []string{fmt.Sprintf("%s: %s is %T, the fake sends %T", at, where, r, fake)}
		}
		return nil
	}
}
