package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/controller"
)

// The authorization policy, as a table: for each kind of route (from the
// security of its operation in openapi.yaml) and each credential a caller
// can bring, what the server must answer. docs/api.md shows the same
// table; TestAuthorizationPolicy walks every route of openapi.yaml with
// every credential and checks the answers against it.
//
//	allowed   the call reaches its handler (any answer but 401, 403, 429)
//	401       refused: unauthenticated
//	403       refused: the node is quarantined
//	tls       the TLS handshake fails (a certificate the CA did not sign)
//	ignored   the answer is the same as without any credential (public
//	          routes: credentials neither grant nor take away anything)
var authzPolicy = map[string]map[string]string{
	"admin": {
		"none": "401", "wrong admin token": "401", "foreign certificate": "tls", "superseded node certificate": "401",
		"node certificate": "401", "quarantined node certificate": "401", "admin token": "allowed",
	},
	"node": {
		"none": "401", "wrong admin token": "401", "foreign certificate": "tls", "superseded node certificate": "401",
		"node certificate": "allowed", "quarantined node certificate": "403", "admin token": "401",
	},
	"public": {
		"none": "ignored", "wrong admin token": "ignored", "foreign certificate": "tls", "superseded node certificate": "ignored",
		"node certificate": "ignored", "quarantined node certificate": "ignored", "admin token": "ignored",
	},
}

// bodies are valid requests where the handler would accept "{}" though
// the contract does not (the contract check fails accepted requests that
// violate it).
var bodies = map[string]string{
	"reportStatus": `{"appliedRevision": 0, "peers": 0, "healthy": true}`,
}

var credentials = []string{"none", "wrong admin token", "foreign certificate", "superseded node certificate",
	"node certificate", "quarantined node certificate", "admin token"}

// routeKind reads an operation's security: none (public), node, or the
// document's default (admin).
func routeKind(op *openapi3.Operation) string {
	if op.Security == nil {
		return "admin"
	}
	if len(*op.Security) == 0 {
		return "public"
	}
	for _, req := range *op.Security {
		if _, ok := req["node"]; ok {
			return "node"
		}
	}
	return "admin"
}

func foreignCertificate(t *testing.T) tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "mallory"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestAuthorizationPolicy(t *testing.T) {
	h := smallHarness(t, controller.Config{})
	ctx := context.Background()
	tok := h.token(api.CreateTokenRequest{Cluster: "eu-central/prod", Uses: 3})
	node, err := h.enroll(tok, "node-a", "node")
	if err != nil {
		t.Fatal(err)
	}
	superseded := *node
	if node, err = node.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	quarantined, err := h.enroll(tok, "node-q", "node")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.admin.Quarantine(ctx, "node-q"); err != nil {
		t.Fatal(err)
	}
	clients := map[string]*http.Client{
		"none": h.httpClient(nil), "wrong admin token": h.httpClient(nil), "admin token": h.httpClient(nil),
		"superseded node certificate": h.httpClient(&superseded), "node certificate": h.httpClient(node),
		"quarantined node certificate": h.httpClient(quarantined),
	}
	foreign := h.httpClient(nil)
	fc := foreignCertificate(t)
	// Sent even though the server asks for certificates of its own CA (a
	// client with Certificates would send none).
	foreign.Transport.(*http.Transport).TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &fc, nil }
	clients["foreign certificate"] = foreign
	bearer := map[string]string{"wrong admin token": "sma1.000000000000.not-a-secret", "admin token": h.cfg.Token}

	doc, err := openapi3.NewLoader().LoadFromData(api.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	paths := doc.Paths.InMatchingOrder()
	slices.Sort(paths)
	routes := 0
	for _, path := range paths {
		for method, op := range doc.Paths.Find(path).Operations() {
			kind := routeKind(op)
			url := h.url + strings.NewReplacer("{name}", "nobody", "{id}", "nobody").Replace(path)
			call := func(cred string) (status int, err error) {
				var body io.Reader
				if op.RequestBody != nil {
					body = strings.NewReader(bodies[op.OperationID])
					if bodies[op.OperationID] == "" {
						body = strings.NewReader("{}")
					}
				}
				req, _ := http.NewRequest(method, url, body)
				if body != nil {
					req.Header.Set("Content-Type", "application/json")
				}
				if b := bearer[cred]; b != "" {
					req.Header.Set("Authorization", "Bearer "+b)
				}
				resp, err := clients[cred].Do(req)
				if err != nil {
					return 0, err
				}
				defer resp.Body.Close()
				io.Copy(io.Discard, resp.Body)
				return resp.StatusCode, nil
			}
			base, baseErr := call("none")
			for _, cred := range credentials {
				routes++
				want := authzPolicy[kind][cred]
				status, err := call(cred)
				got := "allowed"
				switch {
				case err != nil && want == "tls":
					continue
				case err != nil:
					t.Errorf("%s %s (%s) with %s: %v, want %s", method, path, kind, cred, err, want)
					continue
				case status == http.StatusUnauthorized:
					got = "401"
				case status == http.StatusForbidden:
					got = "403"
				case status == http.StatusTooManyRequests:
					got = "429"
				}
				switch {
				case want == "ignored":
					if baseErr != nil || status != base {
						t.Errorf("%s %s (public) with %s: %d, without a credential %d (%v): a credential changed the answer", method, path, cred, status, base, baseErr)
					}
				case got != want:
					t.Errorf("%s %s (%s) with %s: %s (HTTP %d), want %s", method, path, kind, cred, got, status, want)
				}
			}
		}
	}
	if routes < 30*len(credentials) {
		t.Errorf("walked only %d route×credential pairs: openapi.yaml not read?", routes)
	}
	// The table covers every kind of route the document has.
	for _, path := range paths {
		for _, op := range doc.Paths.Find(path).Operations() {
			if _, ok := authzPolicy[routeKind(op)]; !ok {
				t.Errorf("%s: no policy for routes of kind %s", path, routeKind(op))
			}
		}
	}
}
