package apiclient

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/api"
)

func answer(status int, retryAfter, body string) *http.Response {
	h := http.Header{}
	if retryAfter != "" {
		h.Set("Retry-After", retryAfter)
	}
	return &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader(body))}
}

func TestDecodeErrorKeepsRetryAfter(t *testing.T) {
	body := `{"error":{"code":"unavailable","message":"too many unauthenticated requests"}}`
	for _, c := range []struct {
		header string
		want   time.Duration
	}{
		{"3", 3 * time.Second},
		{"", 0},
		{"soon", 0},
		{"-2", 0},
		{"86400", 5 * time.Minute}, // capped
	} {
		err := decodeError(answer(http.StatusTooManyRequests, c.header, body))
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeUnavailable {
			t.Fatalf("Retry-After %q: %v", c.header, err)
		}
		if got := RetryAfter(err); got != c.want {
			t.Errorf("Retry-After %q: %s, want %s", c.header, got, c.want)
		}
	}
	// A body that is not ours (a proxy's page) still carries the header.
	if got := RetryAfter(decodeError(answer(http.StatusServiceUnavailable, "7", "<html>busy</html>"))); got != 7*time.Second {
		t.Errorf("non-JSON 503: Retry-After %s, want 7s", got)
	}
}
