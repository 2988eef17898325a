package netmaker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Network is Netmaker's schema.Network (the fields StateMesh uses).
type Network struct {
	NetID        string `json:"netid"`
	AddressRange string `json:"addressrange,omitempty"`
	DefaultMTU   int    `json:"defaultmtu,omitempty"`
	CreatedBy    string `json:"created_by,omitempty"`
}

// KeyRequest is models.APIEnrollmentKey.
type KeyRequest struct {
	Networks      []string `json:"networks"`
	Tags          []string `json:"tags"`
	Type          int      `json:"type"`
	UsesRemaining int      `json:"uses_remaining,omitempty"`
	Expiration    int64    `json:"expiration,omitempty"`
	Unlimited     bool     `json:"unlimited"`
}

// Key types (models.KeyType).
const (
	KeyTimeExpiration = 1
	KeyUses           = 2
	KeyUnlimited      = 3
)

// EnrollmentKey is models.EnrollmentKey.
type EnrollmentKey struct {
	Value         string   `json:"value"`
	Token         string   `json:"token,omitempty"`
	Networks      []string `json:"networks"`
	Tags          []string `json:"tags"`
	Type          int      `json:"type"`
	UsesRemaining int      `json:"uses_remaining"`
	Expiration    string   `json:"expiration,omitempty"`
}

// PendingHost is schema.PendingHost.
type PendingHost struct {
	ID          string `json:"id"`
	HostID      string `json:"host_id"`
	HostName    string `json:"host_name"`
	Network     string `json:"network"`
	PublicKey   string `json:"public_key"`
	RequestedAt string `json:"requested_at"`
}

// Host is models.ApiHost.
type Host struct {
	ID        string   `json:"id"`
	Name      string   `json:"name"`
	PublicKey string   `json:"publickey"`
	Nodes     []string `json:"nodes"`
}

// Node is models.ApiNode: a host's membership in one network.
type Node struct {
	ID      string `json:"id"`
	HostID  string `json:"hostid"`
	Network string `json:"network"`
}

// ACL is models.Acl.
type ACL struct {
	ID        string   `json:"id,omitempty"`
	Name      string   `json:"name"`
	MetaData  string   `json:"meta_data"`
	NetworkID string   `json:"network_id"`
	Policy    string   `json:"policy_type"`
	Src       []ACLTag `json:"src_type"`
	Dst       []ACLTag `json:"dst_type"`
	Protocol  string   `json:"protocol"`
	Ports     []string `json:"ports"`
	Direction int      `json:"allowed_traffic_direction"`
	Enabled   bool     `json:"enabled"`
}

// ACLTag is models.AclPolicyTag.
type ACLTag struct {
	ID    string `json:"id"`
	Value string `json:"value"`
}

// APIError is an answer other than 2xx.
type APIError struct {
	Op      string
	Status  int
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("netmaker %s: %d %s", e.Op, e.Status, e.Message)
}

// Client calls a Netmaker server's REST API with a bearer token (the
// master key or a user's access token). The token never appears in its
// String, errors or logs.
type Client struct {
	base  string
	token string
	hc    *http.Client
	// Retries is how often a 5xx answer, 429 or transport error is
	// retried (capped exponential backoff with jitter); default 3.
	Retries int
	// Backoff is the first retry's delay (default 200 ms, cap 5 s).
	Backoff time.Duration
}

// NewClient returns a client of the server at base (https://HOST).
func NewClient(base, token string, timeout time.Duration) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("netmaker URL %q: want https://HOST[:PORT]", base)
	}
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	return &Client{base: strings.TrimRight(base, "/"), token: token, hc: &http.Client{Timeout: timeout}, Retries: 3, Backoff: 200 * time.Millisecond}, nil
}

// String shows where the client points, never its token.
func (c *Client) String() string { return "netmaker client for " + c.base }

func (c *Client) call(ctx context.Context, method, path string, query url.Values, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	op := method + " " + path
	delay := c.Backoff
	for attempt := 0; ; attempt++ {
		err := c.once(ctx, method, u, op, body, out)
		var ae *APIError
		retry := err != nil && ctx.Err() == nil && (!errors.As(err, &ae) || ae.Status >= 500 || ae.Status == http.StatusTooManyRequests)
		if !retry || attempt >= c.Retries {
			return err
		}
		jitter := time.Duration(rand.Int64N(int64(delay)/2 + 1))
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay + jitter):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func (c *Client) once(ctx context.Context, method, u, op string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("netmaker %s: %w", op, redact(err, c.token))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("netmaker %s: %w", op, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Message string `json:"message"`
		}
		json.Unmarshal(data, &e)
		if e.Message == "" {
			e.Message = strings.TrimSpace(string(data))
		}
		return &APIError{Op: op, Status: resp.StatusCode, Message: e.Message}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("netmaker %s: decoding the answer: %w", op, err)
		}
	}
	return nil
}

func redact(err error, token string) error {
	if token == "" || !strings.Contains(err.Error(), token) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), token, "REDACTED"))
}

// Networks lists the networks.
func (c *Client) Networks(ctx context.Context) ([]Network, error) {
	var out []Network
	return out, c.call(ctx, http.MethodGet, "/api/networks", nil, nil, &out)
}

// CreateNetwork creates a network.
func (c *Client) CreateNetwork(ctx context.Context, n Network) error {
	return c.call(ctx, http.MethodPost, "/api/networks", nil, n, nil)
}

// UpdateNetwork changes a network.
func (c *Client) UpdateNetwork(ctx context.Context, n Network) error {
	return c.call(ctx, http.MethodPut, "/api/networks/"+url.PathEscape(n.NetID), nil, n, nil)
}

// DeleteNetwork deletes a network.
func (c *Client) DeleteNetwork(ctx context.Context, name string) error {
	return c.call(ctx, http.MethodDelete, "/api/networks/"+url.PathEscape(name), nil, nil, nil)
}

// EnrollmentKeys lists the enrollment keys.
func (c *Client) EnrollmentKeys(ctx context.Context) ([]EnrollmentKey, error) {
	var out []EnrollmentKey
	return out, c.call(ctx, http.MethodGet, "/api/v1/enrollment-keys", nil, nil, &out)
}

// CreateEnrollmentKey creates a key.
func (c *Client) CreateEnrollmentKey(ctx context.Context, k KeyRequest) (EnrollmentKey, error) {
	var out EnrollmentKey
	return out, c.call(ctx, http.MethodPost, "/api/v1/enrollment-keys", nil, k, &out)
}

// DeleteEnrollmentKey revokes a key.
func (c *Client) DeleteEnrollmentKey(ctx context.Context, id string) error {
	return c.call(ctx, http.MethodDelete, "/api/v1/enrollment-keys/"+url.PathEscape(id), nil, nil, nil)
}

// PendingHosts lists a network's hosts waiting for approval.
func (c *Client) PendingHosts(ctx context.Context, network string) ([]PendingHost, error) {
	var out []PendingHost
	return out, c.call(ctx, http.MethodGet, "/api/v1/pending_hosts", url.Values{"network": {network}}, nil, &out)
}

// Approve admits a pending host.
func (c *Client) Approve(ctx context.Context, id string) error {
	return c.call(ctx, http.MethodPost, "/api/v1/pending_hosts/approve/"+url.PathEscape(id), nil, nil, nil)
}

// Reject refuses a pending host.
func (c *Client) Reject(ctx context.Context, id string) error {
	return c.call(ctx, http.MethodPost, "/api/v1/pending_hosts/reject/"+url.PathEscape(id), nil, nil, nil)
}

// Hosts lists the hosts.
func (c *Client) Hosts(ctx context.Context) ([]Host, error) {
	var out []Host
	return out, c.call(ctx, http.MethodGet, "/api/hosts", nil, nil, &out)
}

// Nodes lists a network's nodes (one per member host).
func (c *Client) Nodes(ctx context.Context, network string) ([]Node, error) {
	var out []Node
	return out, c.call(ctx, http.MethodGet, "/api/nodes/"+url.PathEscape(network), nil, nil, &out)
}

// RemoveHost takes a host out of a network.
func (c *Client) RemoveHost(ctx context.Context, hostID, network string) error {
	return c.call(ctx, http.MethodDelete, "/api/hosts/"+url.PathEscape(hostID)+"/networks/"+url.PathEscape(network), nil, nil, nil)
}

// ACLs lists a network's ACL policies.
func (c *Client) ACLs(ctx context.Context, network string) ([]ACL, error) {
	var out []ACL
	return out, c.call(ctx, http.MethodGet, "/api/v1/acls", url.Values{"network": {network}}, nil, &out)
}

// CreateACL adds an ACL policy.
func (c *Client) CreateACL(ctx context.Context, a ACL) error {
	return c.call(ctx, http.MethodPost, "/api/v1/acls", nil, a, nil)
}

// DeleteACL removes an ACL policy.
func (c *Client) DeleteACL(ctx context.Context, id string) error {
	return c.call(ctx, http.MethodDelete, "/api/v1/acls", url.Values{"acl_id": {id}}, nil, nil)
}

// Operations lists every call the client makes (method and path
// template); a test checks each against the contract.
var Operations = [][2]string{
	{"GET", "/api/networks"}, {"POST", "/api/networks"}, {"PUT", "/api/networks/{networkname}"}, {"DELETE", "/api/networks/{networkname}"},
	{"GET", "/api/v1/enrollment-keys"}, {"POST", "/api/v1/enrollment-keys"}, {"DELETE", "/api/v1/enrollment-keys/{keyID}"},
	{"GET", "/api/v1/pending_hosts"}, {"POST", "/api/v1/pending_hosts/approve/{id}"}, {"POST", "/api/v1/pending_hosts/reject/{id}"},
	{"GET", "/api/hosts"}, {"GET", "/api/nodes/{network}"}, {"DELETE", "/api/hosts/{hostid}/networks/{network}"},
	{"GET", "/api/v1/acls"}, {"POST", "/api/v1/acls"}, {"DELETE", "/api/v1/acls"},
}
