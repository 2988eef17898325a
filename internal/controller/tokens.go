package controller

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/jointoken"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/store"
)

// Token formats. A join token is "smt1.<id>.<secret>.<ca pin>": the agent
// finds the token record by id, proves it knows the secret, and pins the
// controller's CA before it trusts the connection. An admin token is
// "sma1.<id>.<secret>".
const (
	adminPrefix = "sma1"
	// MaxTokenTTL bounds join token lifetimes.
	MaxTokenTTL = 365 * 24 * time.Hour
	// MaxTokenUses bounds multi-use tokens.
	MaxTokenUses = 1_000_000
)

func randomText(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashSecret(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

func newAdminCredential(now time.Time) (AdminRecord, string, error) {
	id := hex.EncodeToString([]byte(randomText(6)))[:12]
	secret := randomText(32)
	return AdminRecord{ID: id, Hash: hashSecret(secret), CreatedAt: now}, adminPrefix + "." + id + "." + secret, nil
}

// AuthenticateAdmin checks an admin token.
func (c *Controller) AuthenticateAdmin(ctx context.Context, token string) error {
	// One answer for every refusal (malformed, unknown, wrong secret,
	// expired, revoked): a caller learns nothing about which IDs exist.
	invalid := apiErr(api.CodeUnauthenticated, "invalid admin token (unknown, revoked, expired or mistyped)")
	parts := strings.Split(token, ".")
	if len(parts) != 3 || parts[0] != adminPrefix {
		return invalid
	}
	kv, err := c.st.Get(ctx, prefixAdmin+parts[1])
	if errors.Is(err, store.ErrNotFound) {
		subtle.ConstantTimeCompare(hashSecret(parts[2]), hashSecret(parts[1])) // as long as a known ID
		return invalid
	}
	if err != nil {
		return fmt.Errorf("reading admin credential: %w", err)
	}
	rec, err := decode[AdminRecord](kv.Value)
	if err != nil {
		return fmt.Errorf("decoding admin credential: %w", err)
	}
	if subtle.ConstantTimeCompare(rec.Hash, hashSecret(parts[2])) != 1 {
		return invalid
	}
	if !rec.ExpiresAt.IsZero() && !c.cfg.Now().Before(rec.ExpiresAt) {
		return invalid
	}
	return nil
}

// DefaultAdminTTL and MaxAdminTTL bound admin token lifetimes.
const (
	DefaultAdminTTL = 30 * 24 * time.Hour
	MaxAdminTTL     = 365 * 24 * time.Hour
)

func adminView(r AdminRecord, now time.Time) api.AdminToken {
	return api.AdminToken{ID: r.ID, Name: r.Name, CreatedAt: r.CreatedAt, ExpiresAt: r.ExpiresAt,
		Expired: !r.ExpiresAt.IsZero() && !now.Before(r.ExpiresAt)}
}

// CreateAdminToken creates an admin token that expires; its secret is
// returned once and stored hashed.
func (c *Controller) CreateAdminToken(ctx context.Context, req api.CreateAdminTokenRequest) (api.CreatedAdminToken, error) {
	now := c.cfg.Now()
	name := strings.TrimSpace(req.Name)
	if name == "" || len(name) > 64 || api.CleanText(name, 0) != name {
		return api.CreatedAdminToken{}, apiErr(api.CodeInvalidArgument, "name %q: say whose token it is, 1-64 printable characters", req.Name)
	}
	ttl := DefaultAdminTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 || d > MaxAdminTTL {
			return api.CreatedAdminToken{}, apiErr(api.CodeInvalidArgument, "ttl %q: use a positive Go duration up to %s (e.g. 720h)", req.TTL, MaxAdminTTL)
		}
		ttl = d
	}
	rec, secret, err := newAdminCredential(now)
	if err != nil {
		return api.CreatedAdminToken{}, err
	}
	rec.Name, rec.ExpiresAt = name, now.Add(ttl)
	if _, err := c.st.Update(ctx, func(tx store.Tx) error { return tx.Put(prefixAdmin+rec.ID, encode(rec)) }); err != nil {
		return api.CreatedAdminToken{}, err
	}
	c.log.Info("admin token created", "audit", true, "id", rec.ID, "name", rec.Name, "expires", rec.ExpiresAt, "client", peerOf(ctx))
	return api.CreatedAdminToken{AdminToken: adminView(rec, now), Secret: secret}, nil
}

// ListAdminTokens lists the admin tokens, never their secrets.
func (c *Controller) ListAdminTokens(ctx context.Context) ([]api.AdminToken, error) {
	kvs, _, err := c.st.List(ctx, prefixAdmin)
	if err != nil {
		return nil, err
	}
	now := c.cfg.Now()
	out := []api.AdminToken{}
	for _, kv := range kvs {
		if r, err := decode[AdminRecord](kv.Value); err == nil {
			out = append(out, adminView(r, now))
		}
	}
	slices.SortFunc(out, func(a, b api.AdminToken) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out, nil
}

// RevokeAdminToken deletes an admin token. The last token that has not
// expired cannot be revoked: nobody could administer the mesh after it.
func (c *Controller) RevokeAdminToken(ctx context.Context, id string) error {
	now := c.cfg.Now()
	_, err := c.st.Update(ctx, func(tx store.Tx) error {
		kvs, err := tx.List(prefixAdmin)
		if err != nil {
			return err
		}
		found, others := false, 0
		for _, kv := range kvs {
			r, err := decode[AdminRecord](kv.Value)
			if err != nil {
				continue
			}
			switch {
			case r.ID == id:
				found = true
			case r.ExpiresAt.IsZero() || now.Before(r.ExpiresAt):
				others++
			}
		}
		if !found {
			return apiErr(api.CodeNotFound, "no admin token %q", id)
		}
		if others == 0 {
			return apiErr(api.CodeConflict, "admin token %s is the last valid one: create another (statemesh admin-token create) before revoking it", id)
		}
		return tx.Delete(prefixAdmin + id)
	})
	if err == nil {
		c.log.Info("admin token revoked", "audit", true, "id", id, "client", peerOf(ctx))
	}
	return err
}

func tokenView(t TokenRecord) api.Token {
	return api.Token{ID: t.ID, Region: t.Region, Cluster: t.Cluster, Role: t.Role, CreatedAt: t.CreatedAt,
		ExpiresAt: t.ExpiresAt, Uses: t.Uses, Used: t.Used, Revoked: t.Revoked}
}

// CreateToken creates a join token bound to a cluster (nodes, operators)
// or a region (gateways). The secret is returned once and stored hashed.
func (c *Controller) CreateToken(ctx context.Context, req api.CreateTokenRequest) (api.CreatedToken, error) {
	now := c.cfg.Now()
	if req.Role == "" {
		req.Role = netmap.RoleNode
	}
	ttl := 24 * time.Hour
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 || d > MaxTokenTTL {
			return api.CreatedToken{}, apiErr(api.CodeInvalidArgument, "ttl %q: use a positive Go duration up to %s (e.g. 24h)", req.TTL, MaxTokenTTL)
		}
		ttl = d
	}
	if req.Uses == 0 {
		req.Uses = 1
	}
	if req.Uses < 0 || req.Uses > MaxTokenUses {
		return api.CreatedToken{}, apiErr(api.CodeInvalidArgument, "uses %d: use 1..%d", req.Uses, MaxTokenUses)
	}
	rec := TokenRecord{ID: hex.EncodeToString(hashSecret(randomText(16)))[:16], Role: req.Role, CreatedAt: now, ExpiresAt: now.Add(ttl), Uses: req.Uses}
	c.mu.RLock()
	p := c.plan
	c.mu.RUnlock()
	if p == nil {
		return api.CreatedToken{}, apiErr(api.CodeNoSpec, "no spec has been applied: statemesh apply -f mesh.yaml first")
	}
	switch req.Role {
	case netmap.RoleGateway:
		if req.Cluster != "" {
			return api.CreatedToken{}, apiErr(api.CodeInvalidArgument, "gateway tokens are bound to a region: use --region, not --cluster")
		}
		if _, ok := p.Region(req.Region); !ok {
			return api.CreatedToken{}, apiErr(api.CodeNotFound, "region %q is not in the plan", req.Region)
		}
		rec.Region = req.Region
	case netmap.RoleNode, netmap.RoleOperator, netmap.RoleHost:
		region, cluster, ok := strings.Cut(req.Cluster, "/")
		if !ok {
			return api.CreatedToken{}, apiErr(api.CodeInvalidArgument, "cluster %q: write REGION/CLUSTER", req.Cluster)
		}
		if _, ok := p.Cluster(region, cluster); !ok {
			return api.CreatedToken{}, apiErr(api.CodeNotFound, "cluster %s is not in the plan", req.Cluster)
		}
		rec.Region, rec.Cluster = region, cluster
	default:
		return api.CreatedToken{}, apiErr(api.CodeInvalidArgument, "role %q: use node, operator, gateway or host", req.Role)
	}
	secret := randomText(24)
	rec.SecretHash = hashSecret(secret)
	if _, err := c.st.Update(ctx, func(tx store.Tx) error { return tx.Put(tokenKey(rec.ID), encode(rec)) }); err != nil {
		return api.CreatedToken{}, fmt.Errorf("storing token: %w", err)
	}
	c.log.Info("join token created", "id", rec.ID, "region", rec.Region, "cluster", rec.Cluster, "role", rec.Role, "uses", rec.Uses, "expires", rec.ExpiresAt)
	return api.CreatedToken{Token: tokenView(rec), Secret: jointoken.Token{ID: rec.ID, Secret: secret, CAPin: c.ca.Pin()}.String()}, nil
}

// ListTokens lists join tokens (never their secrets).
func (c *Controller) ListTokens(ctx context.Context) ([]api.Token, error) {
	kvs, _, err := c.st.List(ctx, prefixTokens)
	if err != nil {
		return nil, err
	}
	out := []api.Token{}
	for _, kv := range kvs {
		t, err := decode[TokenRecord](kv.Value)
		if err != nil {
			continue
		}
		out = append(out, tokenView(t))
	}
	slices.SortFunc(out, func(a, b api.Token) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out, nil
}

// RevokeToken revokes a join token.
func (c *Controller) RevokeToken(ctx context.Context, id string) error {
	_, err := c.st.Update(ctx, func(tx store.Tx) error {
		kv, err := tx.Get(tokenKey(id))
		if errors.Is(err, store.ErrNotFound) {
			return apiErr(api.CodeNotFound, "no token %q", id)
		}
		if err != nil {
			return err
		}
		t, err := decode[TokenRecord](kv.Value)
		if err != nil {
			return err
		}
		t.Revoked = true
		return tx.Put(tokenKey(id), encode(t))
	})
	if err == nil {
		c.log.Info("join token revoked", "id", id)
	}
	return err
}

// checkToken verifies a join token inside a transaction and returns its
// record.
func checkToken(tx store.Tx, tok jointoken.Token, role string, now time.Time) (TokenRecord, error) {
	t, err := loadToken(tx, tok)
	if err != nil {
		return t, err
	}
	switch {
	case t.Revoked:
		return t, apiErr(api.CodeTokenRevoked, "join token %s was revoked", t.ID)
	case !now.Before(t.ExpiresAt):
		return t, apiErr(api.CodeTokenExpired, "join token %s expired at %s", t.ID, t.ExpiresAt.Format(time.RFC3339))
	case t.Used >= t.Uses:
		return t, apiErr(api.CodeTokenUsedUp, "join token %s is used up (%d of %d uses)", t.ID, t.Used, t.Uses)
	case role != t.Role:
		return t, apiErr(api.CodePermissionDenied, "join token %s is for role %s, not %s", t.ID, t.Role, role)
	}
	return t, nil
}

// loadToken finds a join token's record and checks its secret (nothing
// else: a revoked, expired or used-up token is still the token).
func loadToken(tx store.Tx, tok jointoken.Token) (TokenRecord, error) {
	kv, err := tx.Get(tokenKey(tok.ID))
	if errors.Is(err, store.ErrNotFound) {
		return TokenRecord{}, apiErr(api.CodeTokenInvalid, "unknown join token")
	}
	if err != nil {
		return TokenRecord{}, err
	}
	t, err := decode[TokenRecord](kv.Value)
	if err != nil {
		return TokenRecord{}, fmt.Errorf("decoding token: %w", err)
	}
	if subtle.ConstantTimeCompare(t.SecretHash, hashSecret(tok.Secret)) != 1 {
		return TokenRecord{}, apiErr(api.CodeTokenInvalid, "wrong join token secret")
	}
	return t, nil
}
