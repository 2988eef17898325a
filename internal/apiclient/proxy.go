package apiclient

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"

	"github.com/statemesh/statemesh/internal/api"
)

// ReadOnlyProxy forwards GET /v1/ calls to the controller with the admin
// token, for a local dashboard (like kubectl proxy). Other methods and
// paths are refused, and so are requests naming another host than a
// loopback one or allowedHost (DNS rebinding).
func (c *Client) ReadOnlyProxy(allowedHost string) http.Handler {
	target, _ := url.Parse(c.base) // checked by newClient
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Header.Set("Authorization", "Bearer "+c.token)
			r.Out.Header.Del("Cookie")
		},
		Transport: c.hc.Transport,
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !localHost(r.Host, allowedHost) {
			http.Error(w, "host not allowed", http.StatusForbidden)
			return
		}
		if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.Path, "/v1/") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusMethodNotAllowed)
			w.Write([]byte(`{"error":{"code":"` + api.CodeInvalidArgument + `","message":"the dashboard proxy only reads (GET /v1/...)"}}`))
			return
		}
		rp.ServeHTTP(w, r)
	})
}

func localHost(hostport, allowed string) bool {
	if hostport == allowed {
		return true
	}
	h, _, err := net.SplitHostPort(hostport)
	if err != nil {
		h = hostport
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// DashboardURL is the controller's own dashboard with the admin token in
// the fragment (browsers do not send it; the page keeps it for the tab).
func (c *Client) DashboardURL() string {
	return c.base + "/ui/#token=" + url.QueryEscape(c.token)
}
