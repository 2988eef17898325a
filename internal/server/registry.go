package server

import (
	"context"
	"encoding/json"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/netmap"
	"github.com/statemesh/statemesh/internal/plan"
)

// Registry is what the server asks of the source of truth: one method for
// each call of the API it serves, and nothing else. *controller.Controller
// implements it; a test can serve the API over a fake.
type Registry interface {
	// Credentials and the CA.
	CA() *controller.CA
	AuthenticateAdmin(ctx context.Context, token string) error
	AuthenticateNode(name, serial string) error

	// The spec and what it plans.
	ApplySpec(ctx context.Context, yaml []byte) (api.ApplyResult, error)
	Spec() (string, error)
	Plan() (*plan.Plan, error)
	Regions() ([]api.Region, error)
	Clusters() ([]api.Cluster, error)

	// Nodes.
	Nodes(region, cluster string) []api.Node
	Node(name string) (api.Node, error)
	Snapshot(name string) (netmap.Map, int64, error)
	RemoveNode(ctx context.Context, name string) error
	Quarantine(ctx context.Context, name, reason string) (api.Node, error)
	Release(ctx context.Context, name string) (api.Node, error)

	// Join and admin tokens.
	CreateToken(ctx context.Context, req api.CreateTokenRequest) (api.CreatedToken, error)
	ListTokens(ctx context.Context) ([]api.Token, error)
	RevokeToken(ctx context.Context, id string) error
	CreateAdminToken(ctx context.Context, req api.CreateAdminTokenRequest) (api.CreatedAdminToken, error)
	ListAdminTokens(ctx context.Context) ([]api.AdminToken, error)
	RevokeAdminToken(ctx context.Context, id string) error

	// The operator's view.
	Status() (api.Status, error)
	Paths() []api.Path
	Events(limit int) []api.Event

	// External clients.
	AddClient(ctx context.Context, req api.AddClientRequest) (api.ClientConfig, error)
	Clients() []api.Client
	ClientConfig(ctx context.Context, name string) (api.ClientConfig, error)
	RemoveClient(ctx context.Context, name string) error

	// Enrollment and attestation (nodes), and the controller's own
	// attestation (mutual aTLS).
	Enroll(ctx context.Context, req api.EnrollRequest, exporter []byte) (api.EnrollResponse, error)
	Challenge(ctx context.Context, node string, req api.AttestChallengeRequest) (api.AttestChallenge, error)
	Reattest(ctx context.Context, node string, raw []byte, exporter []byte) error
	Renew(ctx context.Context, node, csrPEM string) (string, error)
	SelfIdentity() (json.RawMessage, error)
	SelfEvidence(ctx context.Context, challenge json.RawMessage, exporter []byte) (api.ControllerEvidence, error)

	// A node's status and its map stream.
	ReportStatus(ctx context.Context, name string, r api.StatusReport) error
	Watch(ctx context.Context, name string, from int64, sink controller.Sink, pingEvery time.Duration) error
	NewStreams(cfg controller.StreamsConfig) *controller.Streams
}

var _ Registry = (*controller.Controller)(nil)
