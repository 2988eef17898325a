// Package apiclient is the Go client of the controller's v1 API, used by
// the admin CLI and by agents. It speaks TLS 1.3 only and trusts the
// controller's CA: from the admin config, from the node's enrollment, or,
// before enrollment, by the CA pin carried in the join token.
package apiclient

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/atls"
	"github.com/statemesh/statemesh/internal/jointoken"
	"github.com/statemesh/statemesh/internal/netmap"
)

// Client calls one controller.
type Client struct {
	base  string
	hc    *http.Client
	token string
}

func newClient(base string, tc *tls.Config, token string) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("controller URL %q: want https://HOST:PORT", base)
	}
	atls.Harden(tc)
	tr := &http.Transport{
		TLSClientConfig:     tc,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   false,
	}
	return &Client{base: strings.TrimRight(base, "/"), hc: &http.Client{Transport: tr}, token: token}, nil
}

func poolFromPEM(caPEM string) (*x509.CertPool, error) {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM([]byte(caPEM)) {
		return nil, errors.New("no CA certificate in PEM")
	}
	return p, nil
}

// NewAdmin returns a client for admin calls.
func NewAdmin(cfg api.AdminConfig) (*Client, error) {
	pool, err := poolFromPEM(cfg.CA)
	if err != nil {
		return nil, fmt.Errorf("admin config: %w", err)
	}
	return newClient(cfg.Server, &tls.Config{RootCAs: pool}, cfg.Token)
}

// NewNode returns a client authenticated by a node certificate.
func NewNode(server, caPEM string, cert tls.Certificate) (*Client, error) {
	pool, err := poolFromPEM(caPEM)
	if err != nil {
		return nil, err
	}
	return newClient(server, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}, "")
}

// NewPinned returns a client that trusts the controller only if its
// certificate chain ends in a CA with the given pin (from a join token).
func NewPinned(server, pin string) (*Client, error) {
	u, err := url.Parse(server)
	if err != nil {
		return nil, err
	}
	host := u.Hostname()
	tc := &tls.Config{
		InsecureSkipVerify: true, // replaced by the pin check below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) < 2 {
				return errors.New("controller sent no CA certificate to pin")
			}
			ca := cs.PeerCertificates[len(cs.PeerCertificates)-1]
			if jointoken.CAPin(ca) != pin {
				return errors.New("controller CA does not match the join token's pin: wrong controller, or a machine in the middle")
			}
			roots := x509.NewCertPool()
			roots.AddCert(ca)
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: host})
			return err
		},
	}
	return newClient(server, tc, "")
}

// do sends a request and decodes a JSON answer into out (when not nil).
func (c *Client) do(ctx context.Context, method, path string, body io.Reader, contentType string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("calling controller: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if s, ok := out.(*string); ok {
		b, err := io.ReadAll(resp.Body)
		*s = string(b)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var er api.ErrorResponse
	if err := json.Unmarshal(b, &er); err != nil || er.Error.Code == "" {
		return &api.Error{Code: api.CodeInternal, Message: fmt.Sprintf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(b)), RetryAfter: retryAfter(resp)}
	}
	er.Error.RetryAfter = retryAfter(resp)
	return &er.Error
}

// retryAfter reads a Retry-After header in seconds (the form the
// controller sends), capped at 5 minutes; 0 when absent or malformed.
func retryAfter(resp *http.Response) time.Duration {
	secs, err := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After")))
	if err != nil || secs <= 0 {
		return 0
	}
	return min(time.Duration(secs)*time.Second, 5*time.Minute)
}

// RetryAfter is how long an error asks the caller to wait before it
// retries (the answer's Retry-After), or 0.
func RetryAfter(err error) time.Duration {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.RetryAfter
	}
	return 0
}

func (c *Client) jsonCall(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, ct = bytes.NewReader(b), "application/json"
	}
	return c.do(ctx, method, path, body, ct, out)
}

// ApplySpec applies a spec (YAML).
func (c *Client) ApplySpec(ctx context.Context, yaml []byte) (api.ApplyResult, error) {
	var r api.ApplyResult
	err := c.do(ctx, http.MethodPut, "/v1/spec", bytes.NewReader(yaml), "application/yaml", &r)
	return r, err
}

// Spec returns the spec in force.
func (c *Client) Spec(ctx context.Context) (string, error) {
	var s string
	err := c.do(ctx, http.MethodGet, "/v1/spec", nil, "", &s)
	return s, err
}

// PlanJSON returns the plan in force as JSON.
func (c *Client) PlanJSON(ctx context.Context) ([]byte, error) {
	var s string
	err := c.do(ctx, http.MethodGet, "/v1/plan", nil, "", &s)
	return []byte(s), err
}

// Regions lists regions.
func (c *Client) Regions(ctx context.Context) ([]api.Region, error) {
	var r []api.Region
	return r, c.jsonCall(ctx, http.MethodGet, "/v1/regions", nil, &r)
}

// Clusters lists clusters.
func (c *Client) Clusters(ctx context.Context) ([]api.Cluster, error) {
	var r []api.Cluster
	return r, c.jsonCall(ctx, http.MethodGet, "/v1/clusters", nil, &r)
}

// Nodes lists nodes, optionally filtered.
func (c *Client) Nodes(ctx context.Context, region, cluster string) ([]api.Node, error) {
	q := url.Values{}
	if region != "" {
		q.Set("region", region)
	}
	if cluster != "" {
		q.Set("cluster", cluster)
	}
	path := "/v1/nodes"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var r []api.Node
	return r, c.jsonCall(ctx, http.MethodGet, path, nil, &r)
}

// Node returns a node.
func (c *Client) Node(ctx context.Context, name string) (api.Node, error) {
	var n api.Node
	return n, c.jsonCall(ctx, http.MethodGet, "/v1/nodes/"+url.PathEscape(name), nil, &n)
}

// NodeMap returns a node's map as the controller computes it.
func (c *Client) NodeMap(ctx context.Context, name string) (netmap.Map, error) {
	var m netmap.Map
	return m, c.jsonCall(ctx, http.MethodGet, "/v1/nodes/"+url.PathEscape(name)+"/map", nil, &m)
}

// RemoveNode removes a node.
func (c *Client) RemoveNode(ctx context.Context, name string) error {
	return c.jsonCall(ctx, http.MethodDelete, "/v1/nodes/"+url.PathEscape(name), nil, nil)
}

// Quarantine quarantines a node.
func (c *Client) Quarantine(ctx context.Context, name string) (api.Node, error) {
	var n api.Node
	return n, c.jsonCall(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/quarantine", nil, &n)
}

// Release lifts a quarantine.
func (c *Client) Release(ctx context.Context, name string) (api.Node, error) {
	var n api.Node
	return n, c.jsonCall(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/release", nil, &n)
}

// CreateToken creates a join token.
func (c *Client) CreateToken(ctx context.Context, req api.CreateTokenRequest) (api.CreatedToken, error) {
	var t api.CreatedToken
	return t, c.jsonCall(ctx, http.MethodPost, "/v1/tokens", req, &t)
}

// Tokens lists join tokens.
func (c *Client) Tokens(ctx context.Context) ([]api.Token, error) {
	var t []api.Token
	return t, c.jsonCall(ctx, http.MethodGet, "/v1/tokens", nil, &t)
}

// RevokeToken revokes a join token.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.jsonCall(ctx, http.MethodDelete, "/v1/tokens/"+url.PathEscape(id), nil, nil)
}

// CreateAdminToken creates an admin token (the secret is in the answer,
// once).
func (c *Client) CreateAdminToken(ctx context.Context, req api.CreateAdminTokenRequest) (api.CreatedAdminToken, error) {
	var t api.CreatedAdminToken
	return t, c.jsonCall(ctx, http.MethodPost, "/v1/admin-tokens", req, &t)
}

// AdminTokens lists admin tokens.
func (c *Client) AdminTokens(ctx context.Context) ([]api.AdminToken, error) {
	var t []api.AdminToken
	return t, c.jsonCall(ctx, http.MethodGet, "/v1/admin-tokens", nil, &t)
}

// RevokeAdminToken revokes an admin token.
func (c *Client) RevokeAdminToken(ctx context.Context, id string) error {
	return c.jsonCall(ctx, http.MethodDelete, "/v1/admin-tokens/"+url.PathEscape(id), nil, nil)
}

// Enroll enrolls a node.
func (c *Client) Enroll(ctx context.Context, req api.EnrollRequest) (api.EnrollResponse, error) {
	var r api.EnrollResponse
	return r, c.jsonCall(ctx, http.MethodPost, "/v1/enroll", req, &r)
}

// ReportStatus reports the node's status.
func (c *Client) ReportStatus(ctx context.Context, r api.StatusReport) error {
	return c.jsonCall(ctx, http.MethodPost, "/v1/node/status", r, nil)
}

// Map fetches the node's map once.
func (c *Client) Map(ctx context.Context) (api.Frame, error) {
	var f api.Frame
	return f, c.jsonCall(ctx, http.MethodGet, "/v1/node/map", nil, &f)
}

// Watch streams the node's map from revision from (0: snapshot first) and
// calls fn for every frame until ctx ends, fn fails or the stream breaks.
func (c *Client) Watch(ctx context.Context, from int64, fn func(api.Frame) error) error {
	path := "/v1/node/map?watch=true"
	if from > 0 {
		path += "&revision=" + strconv.FormatInt(from, 10)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("opening watch: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	for sc.Scan() {
		var f api.Frame
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			return fmt.Errorf("decoding watch frame: %w", err)
		}
		if err := fn(f); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.ErrUnexpectedEOF
}

// CloseIdle closes idle connections.
func (c *Client) CloseIdle() { c.hc.CloseIdleConnections() }

// AddClient registers an external client (only its public key).
func (c *Client) AddClient(ctx context.Context, req api.AddClientRequest) (api.ClientConfig, error) {
	var r api.ClientConfig
	return r, c.jsonCall(ctx, http.MethodPost, "/v1/clients", req, &r)
}

// Clients lists the external clients.
func (c *Client) Clients(ctx context.Context) ([]api.Client, error) {
	var r []api.Client
	return r, c.jsonCall(ctx, http.MethodGet, "/v1/clients", nil, &r)
}

// ClientConfig returns a client's configuration (without its private key).
func (c *Client) ClientConfig(ctx context.Context, name string) (api.ClientConfig, error) {
	var r api.ClientConfig
	return r, c.jsonCall(ctx, http.MethodGet, "/v1/clients/"+url.PathEscape(name)+"/config", nil, &r)
}

// RemoveClient revokes an external client.
func (c *Client) RemoveClient(ctx context.Context, name string) error {
	return c.jsonCall(ctx, http.MethodDelete, "/v1/clients/"+url.PathEscape(name), nil, nil)
}

// Status returns the mesh's one-screen summary.
func (c *Client) Status(ctx context.Context) (api.Status, error) {
	var r api.Status
	return r, c.jsonCall(ctx, http.MethodGet, "/v1/status", nil, &r)
}

// Events returns recent events (limit 0: all the controller keeps).
func (c *Client) Events(ctx context.Context, limit int) ([]api.Event, error) {
	var r []api.Event
	return r, c.jsonCall(ctx, http.MethodGet, fmt.Sprintf("/v1/events?limit=%d", limit), nil, &r)
}

// Paths returns the paths the nodes measured.
func (c *Client) Paths(ctx context.Context) ([]api.Path, error) {
	var r []api.Path
	return r, c.jsonCall(ctx, http.MethodGet, "/v1/paths", nil, &r)
}
