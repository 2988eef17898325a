package apiclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/atls"
)

// lazyBody builds the request body on first read: after the transport has
// picked the connection the request goes over, so the body can be bound to
// that connection's TLS exporter value.
type lazyBody struct {
	build func() ([]byte, error)
	r     *bytes.Reader
	err   error
}

func (b *lazyBody) Read(p []byte) (int, error) {
	if b.r == nil && b.err == nil {
		data, err := b.build()
		if err != nil {
			b.err = err
		} else {
			b.r = bytes.NewReader(data)
		}
	}
	if b.err != nil {
		return 0, b.err
	}
	return b.r.Read(p)
}

func (b *lazyBody) Close() error { return nil }

// PostBound sends a JSON body that build makes from the exporter value of
// the very TLS connection the request travels on (attested TLS). It uses a
// fresh connection so that no stale keep-alive connection forces a retry
// with a body bound to another one.
func (c *Client) PostBound(ctx context.Context, path string, build func(exporter []byte) (any, error), out any) error {
	ctx, exporter := connExporter(ctx)
	body := &lazyBody{build: func() ([]byte, error) {
		exp, err := exporter()
		if err != nil {
			return nil, err
		}
		v, err := build(exp)
		if err != nil {
			return nil, err
		}
		return json.Marshal(v)
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	tr, ok := c.hc.Transport.(*http.Transport)
	if !ok {
		return errors.New("bound request needs an *http.Transport")
	}
	once := tr.Clone()
	once.DisableKeepAlives = true
	defer once.CloseIdleConnections()
	resp, err := (&http.Client{Transport: once}).Do(req)
	if err != nil {
		if body.err != nil {
			return body.err
		}
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
	return json.NewDecoder(resp.Body).Decode(out)
}

// AttestChallenge opens an enrollment attestation session with a join
// token and the TPM identity.
func (c *Client) AttestChallenge(ctx context.Context, token string, identity []byte) (api.AttestChallenge, error) {
	var ch api.AttestChallenge
	return ch, c.jsonCall(ctx, http.MethodPost, "/v1/attest/challenge", api.AttestChallengeRequest{Token: token, Identity: identity}, &ch)
}

// NodeChallenge opens a re-attestation session for the calling node.
func (c *Client) NodeChallenge(ctx context.Context) (api.AttestChallenge, error) {
	var ch api.AttestChallenge
	return ch, c.jsonCall(ctx, http.MethodPost, "/v1/node/attest/challenge", api.AttestChallengeRequest{}, &ch)
}

// Reattest sends re-attestation evidence built for the connection.
func (c *Client) Reattest(ctx context.Context, build func(exporter []byte) ([]byte, error)) error {
	return c.PostBound(ctx, "/v1/node/attest", func(exp []byte) (any, error) {
		ev, err := build(exp)
		if err != nil {
			return nil, err
		}
		return api.AttestRequest{Evidence: ev}, nil
	}, nil)
}

// connExporter notes the TLS connection a request made with the returned
// context goes over (the last one, should the transport retry on another)
// and gives its exporter value (attested TLS binds evidence to it).
func connExporter(ctx context.Context) (context.Context, func() ([]byte, error)) {
	var mu sync.Mutex
	var state *tls.ConnectionState
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if tc, ok := info.Conn.(*tls.Conn); ok {
			s := tc.ConnectionState()
			mu.Lock()
			state = &s
			mu.Unlock()
		}
	}}
	return httptrace.WithClientTrace(ctx, trace), func() ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		return atls.Exporter(state)
	}
}
