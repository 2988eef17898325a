package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/store"
)

// TestStoreOverloadAnswersUnavailable: a refusal caused by an unavailable,
// overloaded or slow store (an enrollment under etcd overload) is
// `unavailable` with Retry-After, which agents retry, not `internal`.
func TestStoreOverloadAnswersUnavailable(t *testing.T) {
	s := &Server{log: slog.New(slog.DiscardHandler)}
	for _, tc := range []struct {
		name   string
		err    error
		code   string
		status int
		retry  string
	}{
		{"store unavailable", fmt.Errorf("enrolling: %w", store.ErrUnavailable), api.CodeUnavailable, http.StatusServiceUnavailable, "1"},
		{"request deadline passed waiting on the store", fmt.Errorf("enrolling: %w", context.DeadlineExceeded), api.CodeUnavailable, http.StatusServiceUnavailable, "1"},
		{"transaction conflicts", fmt.Errorf("enrolling: %w", store.ErrConflict), api.CodeUnavailable, http.StatusServiceUnavailable, "1"},
		{"a bug", errors.New("boom"), api.CodeInternal, http.StatusInternalServerError, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			s.wrap(func(http.ResponseWriter, *http.Request) error { return tc.err }).ServeHTTP(w, httptest.NewRequest("POST", "/v1/enroll", nil))
			var resp api.ErrorResponse
			if err := json.NewDecoder(w.Body).Decode(&resp); err != nil {
				t.Fatalf("decoding the answer: %v", err)
			}
			if w.Code != tc.status || resp.Error.Code != tc.code || w.Header().Get("Retry-After") != tc.retry {
				t.Errorf("%v: answered %d %q Retry-After %q, want %d %q Retry-After %q",
					tc.err, w.Code, resp.Error.Code, w.Header().Get("Retry-After"), tc.status, tc.code, tc.retry)
			}
		})
	}
}
