package netmaker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// Client calls one Netmaker server's REST API. It is safe for concurrent
// use. Its token never appears in its String, in errors or in logs.
type Client struct {
	base string
	auth *Token // behind a pointer: %+v of a Client prints an address, not the token
	hc   *http.Client

	// Retries is how often a call answered 5xx or failed in transport
	// (timeout, refused, reset) is retried; default 3. Other answers
	// (4xx) are final.
	Retries int
	// Backoff is the delay before the first retry (default 200 ms); each
	// next one doubles, capped at MaxBackoff (default 5 s). Each delay
	// is drawn uniformly from [d/2, d] (jitter), so clients restarted
	// together do not retry in step.
	Backoff, MaxBackoff time.Duration
	// Log receives one debug line per attempt (method, path, status,
	// duration; never the token or bodies). Nil: no logging.
	Log *slog.Logger

	calls atomic.Int64
}

// NewClient returns a client of the Netmaker server at base
// (https://api.netmaker.example) authenticating with token (the master
// key or a user's access token: the caller reads it, see LoadToken).
// timeout bounds each attempt (default 10 s).
func NewClient(base, token string, timeout time.Duration) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" {
		return nil, fmt.Errorf("netmaker URL %q: want https://HOST[:PORT][/PREFIX]", base)
	}
	if token == "" {
		return nil, errors.New("netmaker: empty token")
	}
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	t := Token(token)
	return &Client{base: strings.TrimRight(base, "/"), auth: &t, hc: &http.Client{Timeout: timeout}, Retries: 3}, nil
}

// String names the server, never the token.
func (c *Client) String() string { return "netmaker client for " + c.base }

// Calls counts the HTTP attempts made so far.
func (c *Client) Calls() int64 { return c.calls.Load() }

// APIError is a final answer other than 2xx: the call, the HTTP status
// and Netmaker's own message.
type APIError struct {
	Op      Operation
	Status  int
	Message string
	// Attempts made (more than 1 when 5xx answers were retried).
	Attempts int
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	s := fmt.Sprintf("netmaker: %s (%s %s): %d: %s", e.Op.Name, e.Op.Method, e.Op.Path, e.Status, msg)
	if e.Attempts > 1 {
		s += fmt.Sprintf(" (after %d attempts)", e.Attempts)
	}
	return s
}

// Is makes 5xx answers match ErrUnavailable.
func (e *APIError) Is(target error) bool { return target == ErrUnavailable && e.Status >= 500 }

// transportError is a call that got no HTTP answer.
type transportError struct {
	op       Operation
	attempts int
	err      error
}

func (e *transportError) Error() string {
	return fmt.Sprintf("netmaker: %s (%s %s): %v (after %d attempts)", e.op.Name, e.op.Method, e.op.Path, e.err, e.attempts)
}
func (e *transportError) Unwrap() []error { return []error{ErrUnavailable, e.err} }

// do runs op: args fill the path template's parameters in order.
func (c *Client) do(ctx context.Context, op Operation, args []string, query url.Values, in, out any) error {
	path, err := op.expand(args)
	if err != nil {
		return err
	}
	var body []byte
	if in != nil {
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("netmaker: %s: encoding the request: %w", op.Name, err)
		}
	}
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	delay := c.Backoff
	if delay <= 0 {
		delay = 200 * time.Millisecond
	}
	maxDelay := c.MaxBackoff
	if maxDelay <= 0 {
		maxDelay = 5 * time.Second
	}
	for attempt := 1; ; attempt++ {
		status, data, err := c.once(ctx, op.Method, u, body)
		retry := false
		switch {
		case err != nil:
			retry = ctx.Err() == nil
			err = &transportError{op: op, attempts: attempt, err: c.redact(err)}
		case status/100 != 2:
			err = &APIError{Op: op, Status: status, Message: errorMessage(data), Attempts: attempt}
			retry = status >= 500
		default:
			if out == nil || len(bytes.TrimSpace(data)) == 0 {
				return nil
			}
			if err := decode(data, out); err != nil {
				return fmt.Errorf("netmaker: %s (%s %s): decoding the answer: %w", op.Name, op.Method, op.Path, err)
			}
			return nil
		}
		if !retry || attempt > c.Retries {
			return err
		}
		d := delay/2 + rand.N(delay/2+1)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(d):
		}
		delay = min(2*delay, maxDelay)
	}
}

func (c *Client) once(ctx context.Context, method, u string, body []byte) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.auth.Reveal())
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	c.calls.Add(1)
	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		c.log(method, req.URL.Path, 0, start, err)
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	c.log(method, req.URL.Path, resp.StatusCode, start, err)
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, data, nil
}

func (c *Client) log(method, path string, status int, start time.Time, err error) {
	if c.Log == nil {
		return
	}
	if err != nil {
		c.Log.Debug("netmaker call", "method", method, "path", path, "took", time.Since(start), "err", c.redact(err))
		return
	}
	c.Log.Debug("netmaker call", "method", method, "path", path, "status", status, "took", time.Since(start))
}

// redact removes the token from an error's text, should a transport ever
// echo it.
func (c *Client) redact(err error) error {
	tok := c.auth.Reveal()
	if tok == "" || !strings.Contains(err.Error(), tok) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), tok, redacted))
}

// errorMessage extracts models.ErrorResponse's message, or the body.
func errorMessage(data []byte) string {
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(data, &e) == nil && e.Message != "" {
		return e.Message
	}
	s := strings.TrimSpace(string(data))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// decode reads an answer into out. swagger.yaml documents bare payloads,
// but the server wraps some (pending hosts, ACLs, tags, feature flags) in
// models.SuccessResponse, whose fields have no json tags: the real server
// sends {"Code":…,"Message":…,"Response":…}. Both the bare payload and the
// wrapper (its keys in any case) are accepted.
func decode(data []byte, out any) error {
	var env map[string]json.RawMessage
	if json.Unmarshal(data, &env) == nil && isEnvelope(env) {
		for k, inner := range env {
			if !strings.EqualFold(k, "response") {
				continue
			}
			if string(bytes.TrimSpace(inner)) == "null" {
				return nil
			}
			return json.Unmarshal(inner, out)
		}
	}
	return json.Unmarshal(data, out)
}

// isEnvelope: the object has a response key and no keys but code, message
// and response (compared without case, as encoding/json does).
func isEnvelope(m map[string]json.RawMessage) bool {
	resp := false
	for k := range m {
		switch strings.ToLower(k) {
		case "response":
			resp = true
		case "code", "message":
		default:
			return false
		}
	}
	return resp
}
