package netmaker_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"

	"github.com/statemesh/statemesh/internal/netmaker"
	"github.com/statemesh/statemesh/internal/netmaker/contract"
	"github.com/statemesh/statemesh/internal/netmaker/nmtest"
)

// FuzzCheckRequest: the contract checker takes whatever a client sends,
// and the client's readers of Netmaker's answers (the key a pending host
// used, in any of its shapes) take whatever a server sends, without
// panicking.
func FuzzCheckRequest(f *testing.F) {
	c, err := contract.Load(nmtest.SwaggerPath(f))
	if err != nil {
		f.Fatal(err)
	}
	c.Strict = true
	h := http.Header{"Authorization": {"Bearer x"}, "Content-Type": {"application/json"}}
	f.Add("POST", "/api/v1/acls", `{"name":"x","protocol":"tcp","src_type":[{"id":"tag","value":"n.t"}]}`)
	f.Add("GET", "/api/v1/pending_hosts", `[{"id":"p","enrollment_key_id":[123,125]}]`)
	f.Add("DELETE", "/api/hosts/h/networks/n", `[1,2,{"a":null}]`)
	f.Add("POST", "/api/v1/pending_hosts/reject/p", `{"enrollment_key_id":{"value":"v","tags":["sm:a/b#1"]}}`)
	f.Fuzz(func(t *testing.T, method, path, body string) {
		if op, _ := c.CheckRequest(method, path, url.Values{"network": {"n"}}, h, []byte(body)); op != nil {
			c.CheckResponse(op, 200, []byte(body))
		}
		var ps []netmaker.PendingHost
		if json.Unmarshal([]byte(body), &ps) == nil {
			for _, p := range ps {
				p.KeyUsed()
				p.Requested()
			}
		}
	})
}
