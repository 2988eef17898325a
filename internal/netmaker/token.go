package netmaker

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
)

// Token is a secret: a Netmaker bearer token (master key or access
// token), an enrollment key's value or its join token. It prints as
// [REDACTED] with every fmt verb, in slog and in JSON; Reveal gives the
// value.
type Token string

const redacted = "[REDACTED]"

// Reveal returns the secret itself.
func (t Token) Reveal() string { return string(t) }

// String redacts.
func (t Token) String() string { return redacted }

// GoString redacts (%#v).
func (t Token) GoString() string { return redacted }

// Format redacts for every verb (%s, %v, %q, %x, ...).
func (t Token) Format(f fmt.State, _ rune) { fmt.Fprint(f, redacted) }

// MarshalJSON redacts: a report or key written as JSON (a status page,
// slog's JSON handler) carries no secret. Decoding is unaffected.
func (t Token) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// LogValue redacts in slog.
func (t Token) LogValue() slog.Value { return slog.StringValue(redacted) }

// TokenEnv is the environment variable LoadToken reads when no file is
// given.
const TokenEnv = "STATEMESH_NETMAKER_TOKEN"

// LoadToken reads the Netmaker token from file (surrounding white space
// trimmed) or, when file is "", from $STATEMESH_NETMAKER_TOKEN. Errors
// never contain the token.
func LoadToken(file string) (Token, error) {
	var s string
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("reading the Netmaker token: %w", err)
		}
		s = strings.TrimSpace(string(b))
		if s == "" {
			return "", fmt.Errorf("the Netmaker token file %s is empty", file)
		}
		return Token(s), nil
	}
	if s = strings.TrimSpace(os.Getenv(TokenEnv)); s == "" {
		return "", errors.New("no Netmaker token: give a token file or set $" + TokenEnv)
	}
	return Token(s), nil
}

// credential names the master key's failure: Netmaker answers 400 "record
// not found" when the calling user is not in its database, which for the
// calls that look the caller up (creating ACL policies and tags) means
// the master key was used.
func credential(err error) error {
	var ae *APIError
	if errors.As(err, &ae) && ae.Status == http.StatusBadRequest && strings.Contains(ae.Message, "record not found") {
		return fmt.Errorf("%w: %w", ErrCredential, err)
	}
	return err
}

// IsMasterKey tells a Netmaker master key from a user's access token:
// access tokens are JWTs (three dot-separated base64url parts starting
// with a JSON header); the master key is an opaque string.
func IsMasterKey(token string) bool {
	parts := strings.Split(token, ".")
	return len(parts) != 3 || !strings.HasPrefix(parts[0], "eyJ")
}
