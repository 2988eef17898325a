package netmaker

import (
	"context"
	"fmt"
)

// Health is the Netmaker server's state as StateMesh sees it.
type Health struct {
	// Reachable: the status call answered.
	Reachable bool
	// Status is the server's own report (db_connected, broker_connected,
	// version, is_pro, ...).
	Status map[string]any
	// DeviceApproval: hosts wait as pending hosts (StateMesh can gate
	// admission on attestation).
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
	h.DeviceApproval = ff.DeviceApproval
	if !ff.DeviceApproval {
		return h, fmt.Errorf("%w: device approval is off on the Netmaker server", ErrUngated)
	}
	return h, nil
}
