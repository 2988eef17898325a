package netmaker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
)

// Health is the Netmaker server's state as StateMesh sees it.
type Health struct {
	// Reachable: the status call answered.
	Reachable bool
	// Status is the server's own report (db_connected, broker_connected,
	// version, is_pro, ...).
	Status map[string]any
	// DeviceApproval: hosts wait as pending hosts (StateMesh approves
	// them on attestation); without it they join at once and StateMesh
	// removes the unattested ones.
	DeviceApproval bool
}

// Health asks the server for its status and feature flags.
func (r *Reconciler) Health(ctx context.Context) (Health, error) {
	var h Health
	st, err := r.C.Status(ctx)
	if err != nil {
		return h, err
	}
	h.Reachable, h.Status = true, st
	ff, err := r.C.FeatureFlags(ctx)
	if err != nil {
		return h, err
	}
	// Device approval off (the community edition) is not an error: the
	// passes then gate admission by removal (docs/netmaker.md).
	h.DeviceApproval = ff.DeviceApproval
	return h, nil
}

// Credential is what CheckCredential learned of the token.
type Credential struct {
	// MasterKey: the token is the server's master key, not a user's
	// access token (IsMasterKey).
	MasterKey bool
	// Pro: the server says it is Netmaker Pro (tags, device approval).
	Pro bool
}

// CheckCredential checks the token before the first pass: the server
// must accept it (a secured read), and on Netmaker Pro it must be a
// user's access token. Netmaker looks the calling user up to create tags
// and ACL policies, and the master key's user (masteradministrator) is
// not in its database, so with the master key StateMesh could admit and
// remove hosts but never write the policy. On the community edition (no
// tags, no tag-based policies) the master key does what can be done.
// A server that cannot be reached is ErrUnavailable (the caller may go
// on: the passes retry).
func CheckCredential(ctx context.Context, c *Client) (Credential, error) {
	cr := Credential{MasterKey: IsMasterKey(c.auth.Reveal())}
	if _, err := c.Networks(ctx); err != nil {
		var ae *APIError
		if errors.As(err, &ae) && (ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden) {
			return cr, fmt.Errorf("the Netmaker server refused the token (%d %s): give its master key or a super-admin user's access token (docs/netmaker.md)", ae.Status, ae.Message)
		}
		return cr, err
	}
	st, err := c.Status(ctx)
	if err != nil {
		return cr, err
	}
	cr.Pro, _ = st["is_pro"].(bool)
	if cr.MasterKey && cr.Pro {
		return cr, fmt.Errorf("%w: the token is Netmaker's master key, and Netmaker Pro creates tags and ACL policies only for a user in its database (the master key's is not: the server answers 400 \"record not found\")", ErrCredential)
	}
	return cr, nil
}
