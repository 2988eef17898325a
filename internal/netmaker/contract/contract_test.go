package contract_test

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/statemesh/statemesh/internal/netmaker/contract"
	"github.com/statemesh/statemesh/internal/netmaker/nmtest"
)

func load(t testing.TB) *contract.Contract {
	t.Helper()
	c, err := contract.Load(nmtest.SwaggerPath(t))
	if err != nil {
		t.Fatal(err)
	}
	c.Strict = true
	return c
}

func auth() http.Header {
	return http.Header{"Authorization": {"Bearer x"}, "Content-Type": {"application/json"}}
}

// The checker must refuse what is off contract, or the contract tests
// prove nothing: each case names the field it must point at.
func TestValidatorRefusesOffContractRequests(t *testing.T) {
	c := load(t)
	noAuth := http.Header{"Content-Type": {"application/json"}}
	for _, tc := range []struct {
		name, method, path string
		query              url.Values
		header             http.Header
		body               string
		field, msg         string
	}{
		{"wrong method", "PATCH", "/api/networks", nil, auth(), "", "method", "the path takes GET, POST"},
		{"unknown path", "GET", "/api/nowhere", nil, auth(), "", "path", "no such operation"},
		{"path too long", "GET", "/api/networks/a/b", nil, auth(), "", "path", "no such operation"},
		{"missing required query parameter", "GET", "/api/v1/pending_hosts", nil, auth(), "", "query.network", "required parameter is missing"},
		{"unknown query parameter", "GET", "/api/networks", url.Values{"bogus": {"1"}}, auth(), "", "query.bogus", "no such query parameter"},
		{"query parameter of the wrong type", "DELETE", "/api/hosts/h1/networks/n", url.Values{"force": {"maybe"}}, auth(), "", "query.force", "not a boolean"},
		{"query parameter given twice", "GET", "/api/v1/acls", url.Values{"network": {"a", "b"}}, auth(), "", "query.network", "given 2 times"},
		{"array query parameter outside its enum", "GET", "/api/v1/hosts", url.Values{"os": {"linux,plan9"}}, auth(), "", "query.os", `"plan9" is not one of`},
		{"no bearer token on a secured operation", "GET", "/api/networks", nil, noAuth, "", "header.Authorization", "secured"},
		{"missing body", "POST", "/api/networks", nil, auth(), "", "body", "the body is required"},
		{"a body where none is taken", "DELETE", "/api/v1/acls", url.Values{"acl_id": {"x"}}, auth(), `{}`, "body", "takes no body"},
		{"body not JSON", "POST", "/api/networks", nil, auth(), `{netid:`, "body", "not JSON"},
		{"wrong content type", "POST", "/api/networks", nil, http.Header{"Authorization": {"Bearer x"}, "Content-Type": {"text/plain"}}, `{}`, "header.Content-Type", "application/json"},
		{"wrong type", "POST", "/api/networks", nil, auth(), `{"netid": 5}`, "body.netid", "want a string"},
		{"integer with a fraction", "POST", "/api/networks", nil, auth(), `{"netid": "a", "defaultmtu": 1420.5}`, "body.defaultmtu", "want an integer"},
		{"null where an array is due", "POST", "/api/v1/enrollment-keys", nil, auth(), `{"tags": null}`, "body.tags", "null, want an array"},
		{"unknown field (strict)", "POST", "/api/networks", nil, auth(), `{"netid": "a", "colour": "red"}`, "body.colour", "not a field of the schema"},
		{"missing required field", "POST", "/api/v1/enrollment-keys", nil, auth(), `{"networks": ["a"]}`, "body", `required field "tags" is missing`},
		{"integer outside its enum ($ref)", "POST", "/api/v1/enrollment-keys", nil, auth(), `{"tags": ["k"], "type": 9}`, "body.type", "is not one of"},
		{"string outside its enum (allOf)", "POST", "/api/v1/acls", nil, auth(), `{"protocol": "sctp"}`, "body.protocol", "is not one of"},
		{"enum deep in an array of $refs", "POST", "/api/v1/acls", nil, auth(), `{"src_type": [{"id": "planet", "value": "x"}]}`, "body.src_type[0].id", "is not one of"},
		{"minLength in nested items", "PUT", "/api/v1/tags", nil, auth(), `{"id": "n.t", "tagged_nodes": [{"id": "ab", "hostid": "host-1"}]}`, "body.tagged_nodes[0].id", "shorter than 5"},
		{"required field in nested items", "PUT", "/api/v1/tags", nil, auth(), `{"id": "n.t", "tagged_nodes": [{"id": "node-1"}]}`, "body.tagged_nodes[0]", `required field "hostid"`},
		{"additionalProperties schema", "PUT", "/api/nodes/n/node-1", nil, auth(), `{"id": "node-1", "hostid": "host-1", "auto_relayed_peers": {"p": 3}}`, "body.auto_relayed_peers.p", "want a string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body []byte
			if tc.body != "" {
				body = []byte(tc.body)
			}
			_, err := c.CheckRequest(tc.method, tc.path, tc.query, tc.header, body)
			var v *contract.Violation
			if !errors.As(err, &v) {
				t.Fatalf("accepted (err %v); want a violation at %s", err, tc.field)
			}
			if v.Field != tc.field || !strings.Contains(v.Msg, tc.msg) {
				t.Errorf("got %q (field %q), want field %q and %q", err, v.Field, tc.field, tc.msg)
			}
			if tc.field != "method" && tc.field != "path" && !strings.HasPrefix(err.Error(), v.Op+": ") {
				t.Errorf("the violation does not name the operation: %q", err)
			}
		})
	}
}

// The same checker accepts what is on contract (it does not refuse all).
func TestValidatorAcceptsOnContractRequests(t *testing.T) {
	c := load(t)
	for _, tc := range []struct {
		method, path string
		query        url.Values
		body, op     string
	}{
		{"GET", "/api/networks", nil, "", "GET /api/networks"},
		{"POST", "/api/networks", nil, `{"netid": "nm-eu", "addressrange": "10.1.0.0/16", "defaultmtu": 1420, "auto_join": false, "created_by": "statemesh"}`, "POST /api/networks"},
		{"POST", "/api/v1/pending_hosts/approve/p1", nil, "", "POST /api/v1/pending_hosts/approve/{id}"},
		{"DELETE", "/api/hosts/h1/networks/nm-eu", url.Values{"force": {"true"}}, "", "DELETE /api/hosts/{hostid}/networks/{network}"},
		{"POST", "/api/v1/acls", nil, `{"name": "a", "network_id": "nm-eu", "policy_type": "device-policy", "src_type": [{"id": "tag", "value": "nm-eu.x"}], "dst_type": [], "protocol": "tcp", "ports": ["443"], "allowed_traffic_direction": 0, "enabled": true}`, "POST /api/v1/acls"},
		{"GET", "/api/v1/hosts", url.Values{"os": {"linux,darwin"}}, "", "GET /api/v1/hosts"},
		{"GET", "/api/server/status", nil, "", "GET /api/server/status"},
	} {
		op, err := c.CheckRequest(tc.method, tc.path, tc.query, auth(), []byte(tc.body))
		if err != nil || op.Name() != tc.op {
			t.Errorf("%s %s: got %v, %v; want %s accepted", tc.method, tc.path, op, err, tc.op)
		}
	}
	// Literal segments win over parameters, as in the server's router.
	if op, _, _ := c.Match("POST", "/api/v1/pending_hosts/reject/p1"); op == nil || op.Path != "/api/v1/pending_hosts/reject/{id}" {
		t.Errorf("matched %v", op)
	}
	// The server status takes no token.
	if _, err := c.CheckRequest("GET", "/api/server/status", nil, http.Header{}, nil); err != nil {
		t.Errorf("an unsecured operation wanted a token: %v", err)
	}
}

func TestResponsesAreChecked(t *testing.T) {
	c := load(t)
	op := c.Lookup("GET", "/api/nodes/{network}")
	if err := c.CheckResponse(op, 200, []byte(`[{"id": "node-00000001", "hostid": "host-00000001", "network": "n"}]`)); err != nil {
		t.Errorf("a valid answer refused: %v", err)
	}
	for body, want := range map[string]string{
		`{"id": "node-00000001"}`:                           "want an array",
		`[{"id": "node-00000001"}]`:                         `required field "hostid"`,
		`[{"id": "n1", "hostid": "host-00000001"}]`:         "shorter than 5",
		`[{"id": "node-1", "hostid": "host-1", "x": 1}]`:    "not a field",
		`[{"id": "node-1", "hostid": "host-1", "tags": 1}]`: "want an object",
	} {
		if err := c.CheckResponse(op, 200, []byte(body)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", body, err, want)
		}
	}
	if err := c.CheckResponse(op, 418, nil); err == nil || !strings.Contains(err.Error(), "not a declared answer") {
		t.Errorf("an undeclared status: %v", err)
	}
}

// Schema features the Netmaker document uses, on a document of our own.
func TestSchemaKeywords(t *testing.T) {
	c, err := contract.Parse([]byte(`
swagger: "2.0"
paths:
  /x:
    post:
      parameters:
      - {in: body, name: body, required: true, schema: {$ref: '#/definitions/X'}}
      responses: {"200": {description: OK}}
definitions:
  Base:
    type: object
    required: [id]
    properties:
      id: {type: string, minLength: 2, maxLength: 4}
  X:
    allOf:
    - $ref: '#/definitions/Base'
    - type: object
      additionalProperties: false
      properties:
        id: {type: string}
        n: {type: integer, format: int32, minimum: 1, maximum: 10}
        f: {type: number}
        m: {type: object, additionalProperties: {type: boolean}}
`))
	if err != nil {
		t.Fatal(err)
	}
	check := func(body string) error {
		_, err := c.CheckRequest("POST", "/x", nil, http.Header{"Content-Type": {"application/json"}}, []byte(body))
		return err
	}
	if err := check(`{"id": "ab", "n": 3, "f": 1.5, "m": {"a": true}}`); err != nil {
		t.Fatalf("valid body refused: %v", err)
	}
	for body, want := range map[string]string{
		`{"n": 3}`:                    `required field "id"`,
		`{"id": "a"}`:                 "shorter than 2",
		`{"id": "abcde"}`:             "longer than 4",
		`{"id": "ab", "n": 0}`:        "below the minimum",
		`{"id": "ab", "n": 11}`:       "above the maximum",
		`{"id": "ab", "n": 1e10}`:     "int32",
		`{"id": "ab", "f": "1"}`:      "want a number",
		`{"id": "ab", "m": {"a": 1}}`: "want a boolean",
		`{"id": "ab", "zz": 1}`:       "allows no additional fields",
	} {
		if err := check(body); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", body, err, want)
		}
	}
}
