// Package secrets encrypts secrets at rest: an AEAD envelope
// (XChaCha20-Poly1305) under a key-encryption key (KEK) from a keyring
// loaded from a file or the environment. Every envelope names the key that
// sealed it (rotation: add a new primary key, keep the old ones to open
// what they sealed, re-seal), carries a fresh random nonce, and is bound to
// the record it belongs to by associated data: a ciphertext moved to
// another record does not open.
//
// Envelope: "smenc1" | key ID length (1 byte) | key ID | nonce (24) | ciphertext+tag.
package secrets

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/statemesh/statemesh/internal/atomicfile"
)

var magic = []byte("smenc1")

// Sentinel errors.
var (
	ErrNotSealed  = errors.New("not a sealed secret")
	ErrUnknownKey = errors.New("sealed with a key this keyring does not hold")
	ErrOpen       = errors.New("secret does not open: wrong key, wrong record, or tampered")
	ErrKeyring    = errors.New("invalid keyring")
)

// KeySize is the size of a KEK.
const KeySize = chacha20poly1305.KeySize

var keyID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// Keyring holds KEKs by ID; the primary seals.
type Keyring struct {
	primary string
	keys    map[string][]byte
	order   []string
}

// Primary returns the ID of the key that seals.
func (k *Keyring) Primary() string { return k.primary }

// Parse reads a keyring: one key per line, "ID:BASE64", the first is the
// primary; blank lines and lines starting with # are ignored.
func Parse(text string) (*Keyring, error) {
	k := &Keyring{keys: map[string][]byte{}}
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, b64, ok := strings.Cut(line, ":")
		if !ok || !keyID.MatchString(id) {
			return nil, fmt.Errorf("%w: line %d: want ID:BASE64 with an ID of letters, digits, - or _", ErrKeyring, n+1)
		}
		key, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(key) != KeySize {
			return nil, fmt.Errorf("%w: line %d: key %q is not %d base64 bytes", ErrKeyring, n+1, id, KeySize)
		}
		if _, dup := k.keys[id]; dup {
			return nil, fmt.Errorf("%w: line %d: key %q twice", ErrKeyring, n+1, id)
		}
		if k.primary == "" {
			k.primary = id
		}
		k.keys[id] = key
		k.order = append(k.order, id)
	}
	if k.primary == "" {
		return nil, fmt.Errorf("%w: no key", ErrKeyring)
	}
	return k, nil
}

// Load reads a keyring file, refusing one that others can read.
func Load(path string) (*Keyring, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s is readable by others (mode %v); chmod 600 it", ErrKeyring, path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(string(b))
}

// NewKey returns a keyring line with a fresh random key.
func NewKey(id string) (string, error) {
	if !keyID.MatchString(id) {
		return "", fmt.Errorf("%w: key ID %q", ErrKeyring, id)
	}
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return "", err
	}
	return id + ":" + base64.StdEncoding.EncodeToString(key), nil
}

// Seal encrypts plaintext for the record named aad with the primary key.
func (k *Keyring) Seal(aad string, plaintext []byte) ([]byte, error) {
	aead, err := chacha20poly1305.NewX(k.keys[k.primary])
	if err != nil {
		return nil, err
	}
	out := append([]byte{}, magic...)
	out = append(out, byte(len(k.primary)))
	out = append(out, k.primary...)
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out = append(out, nonce...)
	return aead.Seal(out, nonce, plaintext, []byte(aad)), nil
}

// KeyID returns the ID of the key an envelope was sealed with.
func KeyID(sealed []byte) (string, error) {
	if !bytes.HasPrefix(sealed, magic) || len(sealed) < len(magic)+1 {
		return "", ErrNotSealed
	}
	n := int(sealed[len(magic)])
	if n == 0 || len(sealed) < len(magic)+1+n {
		return "", fmt.Errorf("%w: truncated header", ErrNotSealed)
	}
	return string(sealed[len(magic)+1 : len(magic)+1+n]), nil
}

// Open decrypts an envelope for the record named aad.
func (k *Keyring) Open(aad string, sealed []byte) ([]byte, error) {
	id, err := KeyID(sealed)
	if err != nil {
		return nil, err
	}
	key, ok := k.keys[id]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownKey, id)
	}
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, err
	}
	rest := sealed[len(magic)+1+len(id):]
	if len(rest) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("%w: truncated", ErrNotSealed)
	}
	pt, err := aead.Open(nil, rest[:aead.NonceSize()], rest[aead.NonceSize():], []byte(aad))
	if err != nil {
		return nil, ErrOpen
	}
	return pt, nil
}

// Reseal re-encrypts an envelope with the primary key when another key
// sealed it; changed reports whether it did.
func (k *Keyring) Reseal(aad string, sealed []byte) (out []byte, changed bool, err error) {
	id, err := KeyID(sealed)
	if err != nil {
		return nil, false, err
	}
	if id == k.primary {
		return sealed, false, nil
	}
	pt, err := k.Open(aad, sealed)
	if err != nil {
		return nil, false, err
	}
	out, err = k.Seal(aad, pt)
	return out, err == nil, err
}

// FromEnvOrFile loads the keyring from the environment variable (its value
// is the keyring text) or, when unset, the file; ok is false when neither
// is set.
func FromEnvOrFile(env, path string) (k *Keyring, ok bool, err error) {
	if v := os.Getenv(env); v != "" {
		k, err = Parse(strings.ReplaceAll(v, ";", "\n"))
		return k, true, err
	}
	if path == "" {
		return nil, false, nil
	}
	k, err = Load(path)
	return k, true, err
}

// CreateFile writes a new keyring file (0600) with one key, unless it
// exists.
func CreateFile(path string) (*Keyring, error) {
	line, err := NewKey("k1")
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	if _, err := f.WriteString("# StateMesh key-encryption keys: ID:BASE64, the first seals.\n" + line + "\n"); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return Load(path)
}

// AddPrimary prepends a new key to a keyring file (the old keys stay, to
// open what they sealed) and returns the new keyring.
func AddPrimary(path, id string) (*Keyring, error) {
	old, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if _, err := Parse(string(old)); err != nil {
		return nil, err
	}
	line, err := NewKey(id)
	if err != nil {
		return nil, err
	}
	text := line + "\n" + string(old)
	if _, err := Parse(text); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(path, []byte(text), 0o600); err != nil {
		return nil, err
	}
	return Load(path)
}
