package etcd

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/statemesh/statemesh/internal/store"
)

// TestOverloadIsUnavailable: an overloaded or slow etcd is the store being
// unavailable (callers answer `unavailable` with Retry-After), not an
// internal error.
func TestOverloadIsUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name        string
		err         error
		unavailable bool
	}{
		{"too many requests (gRPC)", rpctypes.ErrGRPCRequestTooManyRequests, true},
		{"too many requests (client)", rpctypes.ErrTooManyRequests, true},
		{"resource exhausted", status.Error(codes.ResourceExhausted, "etcdserver: too many requests"), true},
		{"deadline", fmt.Errorf("txn: %w", context.DeadlineExceeded), true},
		{"unavailable", status.Error(codes.Unavailable, "connection refused"), true},
		{"no leader", rpctypes.ErrGRPCNoLeader, true},
		{"something else", errors.New("boom"), false},
		{"permission denied", rpctypes.ErrGRPCPermissionDenied, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := mapErr(context.Background(), tc.err)
			if got := errors.Is(err, store.ErrUnavailable); got != tc.unavailable {
				t.Errorf("mapErr(%v) = %v: unavailable %v, want %v", tc.err, err, got, tc.unavailable)
			}
		})
	}
}
