package server

import (
	"bytes"
	"net/http/httptest"
	"testing"

	"github.com/statemesh/statemesh/internal/api"
)

// FuzzDecodeRequests feeds arbitrary bodies to the decoder every JSON
// endpoint uses: it must refuse or decode, never panic.
func FuzzDecodeRequests(f *testing.F) {
	f.Add([]byte(`{"name":"n1","role":"node","publicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","csr":"x","token":"t"}`))
	f.Add([]byte(`{"appliedRevision":3,"peers":2,"healthy":true,"paths":[{"peer":"g","region":"r","rttMillis":1,"loss":0,"pathMTU":1400,"plannedMTU":1440,"at":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"a":1} {"b":2}`))
	f.Add([]byte(`{"routing":{"bird":"running","sessions":[{"name":"x"}]}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, v := range []any{&api.EnrollRequest{}, &api.StatusReport{}, &api.CreateTokenRequest{}, &api.AddClientRequest{}} {
			r := httptest.NewRequest("POST", "/v1/x", bytes.NewReader(body))
			w := httptest.NewRecorder()
			decodeJSON(w, r, v) // refuses or decodes; must not panic
		}
	})
}
