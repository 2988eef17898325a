// Package server exposes a controller over HTTPS: the v1 JSON API of
// package api, TLS 1.3 with the controller's CA, admin bearer tokens, node
// client certificates, body limits, and streaming of network maps.
package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/statemesh/statemesh/internal/api"
	"github.com/statemesh/statemesh/internal/atls"
	"github.com/statemesh/statemesh/internal/controller"
	"github.com/statemesh/statemesh/internal/dashboard"
	"github.com/statemesh/statemesh/internal/store"
)

// Config configures the server.
type Config struct {
	Controller Registry
	Logger     *slog.Logger
	// Hosts are the names and addresses the serving certificate is valid
	// for (the listen address is added).
	Hosts []string
	// PingEvery is the watch keepalive interval (default 15s).
	PingEvery time.Duration
	// Limits are the per-source rate limits and the timeouts.
	Limits Limits
	// HeldStreams serves every watch stream on its HTTP connection's
	// goroutine, as before detached streams (comparison benchmarks). By
	// default an HTTP/1.1 watch stream is detached: its connection is taken
	// over once the stream is open and written by a shared pool of writers.
	HeldStreams bool
}

// Server is the HTTPS API server.
type Server struct {
	cfg     Config
	c       Registry
	log     *slog.Logger
	http    *http.Server
	mux     *http.ServeMux
	limiter *rateLimiter // unauthenticated calls, per source
	nodes   *rateLimiter // node calls, per node
	streams *controller.Streams
}

// New builds a server.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.PingEvery == 0 {
		cfg.PingEvery = 15 * time.Second
	}
	cfg.Limits.setDefaults()
	s := &Server{cfg: cfg, c: cfg.Controller, log: cfg.Logger, mux: http.NewServeMux(),
		limiter: newRateLimiter(cfg.Limits.UnauthRate, cfg.Limits.UnauthBurst, cfg.Limits, nil),
		nodes:   newRateLimiter(cfg.Limits.NodeRate, cfg.Limits.NodeBurst, cfg.Limits, nil)}
	s.routes()
	return s
}

// Handler returns the API handler (tests wrap it).
func (s *Server) Handler() http.Handler { return s.mux }

// TLSConfig returns the server's TLS configuration: TLS 1.3 only, no
// session resumption, client certificates verified when presented.
func (s *Server) TLSConfig(hosts []string) (*tls.Config, error) {
	cert, err := s.c.CA().ServerCertificate(hosts, time.Now(), 365*24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("issuing serving certificate: %w", err)
	}
	return atls.Harden(&tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    s.c.CA().Pool(),
	}), nil
}

// Serve serves on l until ctx ends.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	hosts := append([]string{}, s.cfg.Hosts...)
	if host, _, err := net.SplitHostPort(l.Addr().String()); err == nil {
		hosts = append(hosts, host)
	}
	hosts = append(hosts, "localhost", "127.0.0.1", "::1")
	tc, err := s.TLSConfig(hosts)
	if err != nil {
		return err
	}
	s.http = &http.Server{
		Handler:           s.mux,
		TLSConfig:         tc,
		ReadHeaderTimeout: s.cfg.Limits.HeaderTimeout,
		IdleTimeout:       s.cfg.Limits.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	if !s.cfg.HeldStreams {
		s.streams = s.c.NewStreams(controller.StreamsConfig{PingEvery: s.cfg.PingEvery, WriteTimeout: s.cfg.Limits.StreamWriteTimeout})
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.http.Shutdown(sctx)
		s.http.Close()
		if s.streams != nil {
			s.streams.Close() // hijacked connections are the server's no more
		}
	}()
	err = s.http.Serve(tls.NewListener(l, tc))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

type handler func(w http.ResponseWriter, r *http.Request) error

func (s *Server) routes() {
	admin := func(pattern string, h handler) { s.mux.Handle(pattern, s.wrap(s.adminAuth(h))) }
	node := func(pattern string, h func(w http.ResponseWriter, r *http.Request, name string) error) {
		s.mux.Handle(pattern, s.wrap(s.nodeAuth(h)))
	}
	admin("PUT /v1/spec", s.applySpec)
	admin("GET /v1/spec", s.getSpec)
	admin("GET /v1/plan", s.getPlan)
	admin("GET /v1/regions", s.listRegions)
	admin("GET /v1/clusters", s.listClusters)
	admin("GET /v1/nodes", s.listNodes)
	admin("GET /v1/nodes/{name}", s.getNode)
	admin("DELETE /v1/nodes/{name}", s.removeNode)
	admin("GET /v1/nodes/{name}/map", s.nodeMap)
	admin("POST /v1/nodes/{name}/quarantine", s.quarantine)
	admin("POST /v1/nodes/{name}/release", s.release)
	admin("GET /v1/tokens", s.listTokens)
	admin("POST /v1/tokens", s.createToken)
	admin("DELETE /v1/tokens/{id}", s.revokeToken)
	admin("GET /v1/admin-tokens", s.listAdminTokens)
	admin("POST /v1/admin-tokens", s.createAdminToken)
	admin("DELETE /v1/admin-tokens/{id}", s.revokeAdminToken)
	admin("GET /v1/status", s.status)
	admin("GET /v1/events", s.listEvents)
	admin("GET /v1/paths", s.listPaths)
	admin("GET /v1/clients", s.listClients)
	admin("POST /v1/clients", s.addClient)
	admin("GET /v1/clients/{name}/config", s.clientConfig)
	admin("DELETE /v1/clients/{name}", s.removeClient)
	s.mux.Handle("POST /v1/enroll", s.limitUnauth(s.wrap(s.enroll)))
	s.mux.Handle("POST /v1/attest/challenge", s.limitUnauth(s.wrap(s.attestChallenge)))
	s.mux.Handle("GET /v1/attest/controller", s.limitUnauth(s.wrap(s.selfIdentity)))
	s.mux.Handle("POST /v1/attest/controller", s.limitUnauth(s.wrap(s.selfEvidence)))
	node("POST /v1/node/attest/challenge", s.nodeChallenge)
	node("POST /v1/node/attest", s.nodeAttest)
	node("POST /v1/node/renew", s.renew)
	node("GET /v1/node/map", s.watchMap)
	node("POST /v1/node/status", s.reportStatus)
	// The dashboard's files hold no data; its script calls the admin API
	// with the admin token (given once in the URL fragment).
	s.mux.Handle("GET /ui/", http.StripPrefix("/ui", dashboard.Handler()))
	s.mux.Handle("GET /{$}", http.RedirectHandler("/ui/", http.StatusFound))
	s.mux.HandleFunc("GET /v1/openapi.yaml", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		w.Write(api.OpenAPI)
	})
	s.mux.Handle("/", s.wrap(func(w http.ResponseWriter, r *http.Request) error {
		return &api.Error{Code: api.CodeNotFound, Message: fmt.Sprintf("no API route %s %s", r.Method, r.URL.Path)}
	}))
}

// status maps error codes to HTTP statuses.
func status(code string) int {
	switch code {
	case api.CodeInvalidArgument, api.CodeSpecInvalid, api.CodePlanInfeasible:
		return http.StatusBadRequest
	case api.CodeUnauthenticated, api.CodeTokenInvalid, api.CodeTokenExpired, api.CodeTokenUsedUp, api.CodeTokenRevoked:
		return http.StatusUnauthorized
	case api.CodePermissionDenied, api.CodeAttestationFailed, api.CodeQuarantined:
		return http.StatusForbidden
	case api.CodeNotFound:
		return http.StatusNotFound
	case api.CodeAlreadyExists, api.CodeConflict, api.CodeNoSpec:
		return http.StatusConflict
	case api.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case api.CodeClusterFull:
		return http.StatusInsufficientStorage
	case api.CodeUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// wrap turns handler errors into API error responses.
func (s *Server) wrap(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(controller.WithPeer(r.Context(), r.RemoteAddr))
		err := h(w, r)
		if err == nil {
			return
		}
		var ae *api.Error
		if !errors.As(err, &ae) {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				ae = &api.Error{Code: api.CodeTooLarge, Message: fmt.Sprintf("request body exceeds %d bytes", mbe.Limit)}
			} else if errors.Is(err, store.ErrNoSpace) {
				s.log.Error("store out of disk space", "method", r.Method, "path", r.URL.Path, "err", err)
				ae = &api.Error{Code: api.CodeUnavailable, Message: "the controller's store is out of disk space; nothing was written. Retry once space is freed"}
			} else if errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
				// DeadlineExceeded: the request's own deadline passed
				// while the store was slow to answer (an overloaded etcd).
				s.log.Warn("store unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
				w.Header().Set("Retry-After", "1")
				ae = &api.Error{Code: api.CodeUnavailable, Message: "the controller's store is unavailable (etcd unreachable, without quorum or overloaded); a write may or may not have been committed: retry, here or on another replica"}
			} else if errors.Is(err, store.ErrConflict) {
				s.log.Warn("store transaction kept conflicting", "method", r.Method, "path", r.URL.Path, "err", err)
				w.Header().Set("Retry-After", "1")
				ae = &api.Error{Code: api.CodeUnavailable, Message: "too many concurrent writes to the controller's store; nothing was written: retry"}
			} else if errors.Is(err, context.Canceled) {
				return
			} else {
				s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
				ae = &api.Error{Code: api.CodeInternal, Message: "internal error; see the controller log"}
			}
		}
		writeJSON(w, status(ae.Code), api.ErrorResponse{Error: *ae})
	})
}

func (s *Server) adminAuth(h handler) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || tok == "" {
			return &api.Error{Code: api.CodeUnauthenticated, Message: "admin calls need Authorization: Bearer <admin token> (see the controller's admin.json)"}
		}
		if err := s.c.AuthenticateAdmin(r.Context(), tok); err != nil {
			return err
		}
		return h(w, r)
	}
}

func (s *Server) nodeAuth(h func(w http.ResponseWriter, r *http.Request, name string) error) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			return &api.Error{Code: api.CodeUnauthenticated, Message: "node calls need the client certificate issued at enrollment"}
		}
		name, serial, err := controller.NodeIdentity(r.TLS.VerifiedChains[0][0])
		if err != nil {
			return &api.Error{Code: api.CodeUnauthenticated, Message: err.Error()}
		}
		if err := s.c.AuthenticateNode(name, serial); err != nil {
			return err
		}
		if ok, wait := s.nodes.allowKey(name); !ok {
			tooMany(w, wait, "too many requests from node "+name)
			return nil
		}
		return h(w, r, name)
	}
}

// errBodyTimeout answers a request whose body did not arrive within
// Limits.BodyTimeout; it is also os.ErrDeadlineExceeded, so
// withBodyDeadline closes the connection.
var errBodyTimeout = fmt.Errorf("%w: %w", &api.Error{Code: api.CodeInvalidArgument, Message: "request body not received in time"}, os.ErrDeadlineExceeded)

// readJSON decodes a bounded JSON body, refusing unknown fields.
func (s *Server) readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	return s.withBodyDeadline(w, func() error { return decodeJSON(w, r, v) })
}

// decodeJSON decodes one JSON value of at most api.MaxRequestBytes from the
// body: unknown fields and trailing data are refused.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	r.Body = http.MaxBytesReader(w, r.Body, api.MaxRequestBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return errBodyTimeout
		}
		return &api.Error{Code: api.CodeInvalidArgument, Message: "malformed JSON body: " + err.Error()}
	}
	if dec.More() {
		return &api.Error{Code: api.CodeInvalidArgument, Message: "trailing data after the JSON body"}
	}
	return nil
}

func (s *Server) applySpec(w http.ResponseWriter, r *http.Request) error {
	var body []byte
	err := s.withBodyDeadline(w, func() (err error) {
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, api.MaxSpecBytes))
		return err
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return errBodyTimeout
	}
	if err != nil {
		return err
	}
	res, err := s.c.ApplySpec(r.Context(), body)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (s *Server) getSpec(w http.ResponseWriter, r *http.Request) error {
	y, err := s.c.Spec()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/yaml")
	io.WriteString(w, y)
	return nil
}

func (s *Server) getPlan(w http.ResponseWriter, r *http.Request) error {
	p, err := s.c.Plan()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

func (s *Server) listRegions(w http.ResponseWriter, r *http.Request) error {
	rs, err := s.c.Regions()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, rs)
	return nil
}

func (s *Server) listClusters(w http.ResponseWriter, r *http.Request) error {
	cs, err := s.c.Clusters()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, cs)
	return nil
}

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, s.c.Nodes(r.URL.Query().Get("region"), r.URL.Query().Get("cluster")))
	return nil
}

func (s *Server) getNode(w http.ResponseWriter, r *http.Request) error {
	n, err := s.c.Node(r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, n)
	return nil
}

func (s *Server) nodeMap(w http.ResponseWriter, r *http.Request) error {
	m, _, err := s.c.Snapshot(r.PathValue("name"))
	if errors.Is(err, controller.ErrNodeGone) {
		return &api.Error{Code: api.CodeNotFound, Message: fmt.Sprintf("no node %q", r.PathValue("name"))}
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, m)
	return nil
}

func (s *Server) removeNode(w http.ResponseWriter, r *http.Request) error {
	if err := s.c.RemoveNode(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) quarantine(w http.ResponseWriter, r *http.Request) error {
	n, err := s.c.Quarantine(r.Context(), r.PathValue("name"), "quarantined by admin")
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, n)
	return nil
}

func (s *Server) release(w http.ResponseWriter, r *http.Request) error {
	n, err := s.c.Release(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, n)
	return nil
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) error {
	ts, err := s.c.ListTokens(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ts)
	return nil
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateTokenRequest
	if err := s.readJSON(w, r, &req); err != nil {
		return err
	}
	t, err := s.c.CreateToken(r.Context(), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, t)
	return nil
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) error {
	st, err := s.c.Status()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

func (s *Server) listPaths(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, s.c.Paths())
	return nil
}

func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) error {
	limit := 0
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return &api.Error{Code: api.CodeInvalidArgument, Message: fmt.Sprintf("limit %q: a number ≥ 0", v)}
		}
		limit = n
	}
	writeJSON(w, http.StatusOK, s.c.Events(limit))
	return nil
}

func (s *Server) listClients(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, s.c.Clients())
	return nil
}

func (s *Server) addClient(w http.ResponseWriter, r *http.Request) error {
	var req api.AddClientRequest
	if err := s.readJSON(w, r, &req); err != nil {
		return err
	}
	cfg, err := s.c.AddClient(r.Context(), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, cfg)
	return nil
}

func (s *Server) clientConfig(w http.ResponseWriter, r *http.Request) error {
	cfg, err := s.c.ClientConfig(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, cfg)
	return nil
}

func (s *Server) removeClient(w http.ResponseWriter, r *http.Request) error {
	if err := s.c.RemoveClient(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) error {
	if err := s.c.RevokeToken(r.Context(), r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listAdminTokens(w http.ResponseWriter, r *http.Request) error {
	ts, err := s.c.ListAdminTokens(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ts)
	return nil
}

func (s *Server) createAdminToken(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateAdminTokenRequest
	if err := s.readJSON(w, r, &req); err != nil {
		return err
	}
	t, err := s.c.CreateAdminToken(r.Context(), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, t)
	return nil
}

func (s *Server) revokeAdminToken(w http.ResponseWriter, r *http.Request) error {
	if err := s.c.RevokeAdminToken(r.Context(), r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) enroll(w http.ResponseWriter, r *http.Request) error {
	var req api.EnrollRequest
	if err := s.readJSON(w, r, &req); err != nil {
		return err
	}
	var exporter []byte
	if len(req.Evidence) > 0 {
		var err error
		if exporter, err = atls.Exporter(r.TLS); err != nil {
			return &api.Error{Code: api.CodeAttestationFailed, Message: err.Error()}
		}
	}
	resp, err := s.c.Enroll(r.Context(), req, exporter)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) attestChallenge(w http.ResponseWriter, r *http.Request) error {
	var req api.AttestChallengeRequest
	if err := s.readJSON(w, r, &req); err != nil {
		return err
	}
	ch, err := s.c.Challenge(r.Context(), "", req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ch)
	return nil
}

// selfIdentity and selfEvidence let agents attest the controller (mutual
// aTLS): unauthenticated (an agent checks the controller before it
// enrolls), rate-limited like enrollment.
func (s *Server) selfIdentity(w http.ResponseWriter, r *http.Request) error {
	id, err := s.c.SelfIdentity()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.ControllerIdentity{Identity: id})
	return nil
}

func (s *Server) selfEvidence(w http.ResponseWriter, r *http.Request) error {
	var req api.ControllerAttestRequest
	if err := s.readJSON(w, r, &req); err != nil {
		return err
	}
	exporter, err := atls.Exporter(r.TLS)
	if err != nil {
		return &api.Error{Code: api.CodeInvalidArgument, Message: "mutual aTLS needs TLS 1.3 without resumption: " + err.Error()}
	}
	ev, err := s.c.SelfEvidence(r.Context(), req.Challenge, exporter)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ev)
	return nil
}

func (s *Server) nodeChallenge(w http.ResponseWriter, r *http.Request, name string) error {
	var req api.AttestChallengeRequest
	if err := s.readJSON(w, r, &req); err != nil {
		return err
	}
	ch, err := s.c.Challenge(r.Context(), name, req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ch)
	return nil
}

func (s *Server) nodeAttest(w http.ResponseWriter, r *http.Request, name string) error {
	var req api.AttestRequest
	if err := s.readJSON(w, r, &req); err != nil {
		return err
	}
	exporter, err := atls.Exporter(r.TLS)
	if err != nil {
		return &api.Error{Code: api.CodeAttestationFailed, Message: err.Error()}
	}
	if err := s.c.Reattest(r.Context(), name, req.Evidence, exporter); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) renew(w http.ResponseWriter, r *http.Request, name string) error {
	var req api.RenewRequest
	if err := s.readJSON(w, r, &req); err != nil {
		return err
	}
	cert, err := s.c.Renew(r.Context(), name, req.CSR)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.RenewResponse{Certificate: cert})
	return nil
}

func (s *Server) reportStatus(w http.ResponseWriter, r *http.Request, name string) error {
	var rep api.StatusReport
	if err := s.readJSON(w, r, &rep); err != nil {
		return err
	}
	if err := s.c.ReportStatus(r.Context(), name, rep); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// streamSink writes frames to a streaming response. Every write and flush
// must complete within timeout: a client that stops reading is cut off
// rather than holding its connection and goroutine forever.
type streamSink struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func (s streamSink) deadline() { s.rc.SetWriteDeadline(time.Now().Add(s.timeout)) }

func (s streamSink) Write(b []byte) error {
	s.deadline()
	_, err := s.w.Write(b)
	return err
}

func (s streamSink) Flush() error {
	s.deadline()
	return s.rc.Flush()
}

func (s *Server) watchMap(w http.ResponseWriter, r *http.Request, name string) error {
	q := r.URL.Query()
	var from int64
	if v := q.Get("revision"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return &api.Error{Code: api.CodeInvalidArgument, Message: fmt.Sprintf("revision %q: want a non-negative integer", v)}
		}
		from = n
	}
	watch := q.Get("watch") == "true" || q.Get("watch") == "1"
	if !watch {
		m, _, err := s.c.Snapshot(name)
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		json.NewEncoder(w).Encode(api.Frame{Type: api.FrameSnapshot, Revision: m.Revision, Map: &m})
		return nil
	}
	if hj, ok := w.(http.Hijacker); ok && s.streams != nil && r.ProtoMajor == 1 {
		return s.detachedWatch(w, r, hj, name, from)
	}
	if _, ok := w.(http.Flusher); !ok {
		return errors.New("response writer cannot stream")
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	sink := streamSink{w: w, rc: http.NewResponseController(w), timeout: s.cfg.Limits.StreamWriteTimeout}
	err := s.c.Watch(r.Context(), name, from, sink, s.cfg.PingEvery)
	if err != nil && !errors.Is(err, context.Canceled) {
		s.log.Debug("watch stream ended", "node", name, "err", err)
	}
	return nil
}

// streamHeader starts a detached watch stream's response: its body is the
// frames until the connection closes (HTTP/1.1 without a length).
const streamHeader = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"

// detachedWatch opens a watch stream that keeps no goroutine: once its
// first frames are computed the connection is hijacked and handed to the
// controller's stream writers (controller.Streams).
func (s *Server) detachedWatch(w http.ResponseWriter, r *http.Request, hj http.Hijacker, name string, from int64) error {
	hijacked := false
	err := s.streams.Open(r.Context(), name, from, func() (controller.StreamConn, []byte, error) {
		conn, _, err := hj.Hijack()
		hijacked = err == nil
		if err != nil {
			return nil, nil, err
		}
		tc, ok := conn.(*tls.Conn)
		if !ok {
			conn.Close()
			return nil, nil, errors.New("watch stream without TLS")
		}
		return rawClose{tc}, []byte(streamHeader), nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		s.log.Debug("watch stream ended", "node", name, "err", err)
	}
	if err != nil && !hijacked {
		// Not hijacked (the stream did not open): as a held stream that
		// ends at once.
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
	}
	return nil
}

// rawClose closes a detached stream's TCP connection without TLS's
// close_notify, which could wait seconds on a client that stopped reading
// (and would hold a stream writer meanwhile).
type rawClose struct{ *tls.Conn }

func (c rawClose) Close() error { return c.Conn.NetConn().Close() }
