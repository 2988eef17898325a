package server

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/statemesh/statemesh/internal/api"
)

// contract validates every request the server receives and every response
// it sends (except streams) against api/openapi.yaml.
type contract struct {
	t      testing.TB
	router routers.Router
	mu     sync.Mutex
	seen   map[string]bool // operation IDs exercised
}

func newContract(t testing.TB) *contract {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(api.OpenAPI)
	if err != nil {
		t.Fatalf("openapi.yaml does not load: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.yaml is not valid OpenAPI: %v", err)
	}
	doc.Servers = nil // match any host
	r, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &contract{t: t, router: r, seen: map[string]bool{}}
}

type recorder struct {
	http.ResponseWriter
	code int
	body bytes.Buffer
}

func (r *recorder) WriteHeader(c int) { r.code = c; r.ResponseWriter.WriteHeader(c) }
func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = 200
	}
	r.body.Write(b)
	return r.ResponseWriter.Write(b)
}
func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

var noAuth = &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}

func (c *contract) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 8<<20))
		r.Body = io.NopCloser(bytes.NewReader(body))
		route, params, err := c.router.FindRoute(r)
		if err != nil {
			c.t.Errorf("contract: %s %s is not in openapi.yaml: %v", r.Method, r.URL.Path, err)
			h.ServeHTTP(w, r)
			return
		}
		in := &openapi3filter.RequestValidationInput{Request: r.Clone(context.Background()), PathParams: params, Route: route, Options: noAuth}
		in.Request.Body = io.NopCloser(bytes.NewReader(body))
		reqErr := openapi3filter.ValidateRequest(context.Background(), in)
		rec := &recorder{ResponseWriter: w}
		r.Body = io.NopCloser(bytes.NewReader(body))
		h.ServeHTTP(rec, r)
		c.mu.Lock()
		c.seen[route.Operation.OperationID] = true
		c.mu.Unlock()
		// Requests the server rejects as malformed may violate the schema on
		// purpose; every accepted one must conform.
		if reqErr != nil && rec.code < 400 {
			c.t.Errorf("contract: accepted request %s %s violates openapi.yaml: %v", r.Method, r.URL.Path, reqErr)
		}
		if strings.Contains(rec.Header().Get("Content-Type"), "ndjson") {
			return
		}
		out := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: in, Status: rec.code, Header: rec.Header(),
			Body: io.NopCloser(bytes.NewReader(rec.body.Bytes())), Options: &openapi3filter.Options{IncludeResponseStatus: true},
		}
		if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
			c.t.Errorf("contract: response to %s %s (%d) violates openapi.yaml: %v\nbody: %s", r.Method, r.URL.Path, rec.code, err, rec.body.String())
		}
	})
}

var _ = httptest.NewServer
