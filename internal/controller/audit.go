package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/netmap"
)

// The audit log: one line for every refused enrollment and every
// certificate issued (enrollment, its retry, renewal), at level INFO or
// WARN with audit=true, naming who (the node), with what (the join token's
// ID, the fingerprints of the WireGuard key and of the certificate key)
// and from where (the client's address). Never a secret: token secrets,
// certificates and evidence stay out of it.

type peerKey struct{}

// WithPeer returns a context carrying the address of the client whose
// request it serves (the server sets it; the audit log reads it).
func WithPeer(ctx context.Context, addr string) context.Context {
	return context.WithValue(ctx, peerKey{}, addr)
}

func peerOf(ctx context.Context) string {
	s, _ := ctx.Value(peerKey{}).(string)
	return s
}

// KeyFingerprint names a WireGuard key in logs: the first 16 hex digits of
// its SHA-256 (the key itself is public, but a fingerprint is what the
// audit lines and the CLI agree on).
func KeyFingerprint(k netmap.Key) string {
	if k.IsZero() {
		return ""
	}
	sum := sha256.Sum256(k[:])
	return hex.EncodeToString(sum[:8])
}

func shortFingerprint(hexSum string) string {
	if len(hexSum) > 16 {
		return hexSum[:16]
	}
	return hexSum
}

func (c *Controller) auditRefused(ctx context.Context, what, node, tokenID string, wgKey netmap.Key, certKey KeyDigest, err error) {
	code, msg := errCode(err), err.Error()
	var ae *api.Error
	if errors.As(err, &ae) {
		msg = ae.Message
	}
	c.log.LogAttrs(ctx, slog.LevelWarn, what+" refused", slog.Bool("audit", true),
		slog.String("node", node), slog.String("token", tokenID), slog.String("wgKey", KeyFingerprint(wgKey)),
		slog.String("certKey", shortFingerprint(certKey.String())), slog.String("client", peerOf(ctx)),
		slog.String("code", code), slog.String("reason", msg))
}

func (c *Controller) auditIssued(ctx context.Context, what string, rec *NodeRecord, tokenID string) {
	c.log.LogAttrs(ctx, slog.LevelInfo, "certificate issued", slog.Bool("audit", true), slog.String("for", what),
		slog.String("node", rec.Name), slog.String("role", rec.Role), slog.String("class", rec.Class),
		slog.String("token", tokenID), slog.String("wgKey", KeyFingerprint(rec.PublicKey)),
		slog.String("certKey", shortFingerprint(rec.CertKey.String())), slog.String("serial", rec.CertSerial.String()),
		slog.String("client", peerOf(ctx)))
}
