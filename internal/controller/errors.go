package controller

import (
	"fmt"

	"github.com/statemesh/statemesh/internal/api"
)

// apiErr returns an API error with a specific code. The controller returns
// these for everything a caller can cause; anything else is internal.
func apiErr(code, format string, args ...any) *api.Error {
	return &api.Error{Code: code, Message: fmt.Sprintf(format, args...)}
}
