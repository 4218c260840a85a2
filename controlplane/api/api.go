// Package api is the control plane's HTTP/JSON API (docs/architecture.md,
// "The control plane"): rule sets with versions, diffs and rollbacks, rollouts, hosts, fleet
// telemetry and the audit trail under /v1/, plus /metrics, /healthz and
// /readyz.
//
// Every /v1/ request carries a bearer token; its role decides what the
// request may do (viewer: reads; operator: rule-set writes, rollbacks and
// rollouts; admin: deletes and the audit trail). Each write is one etcd
// transaction with its audit record. Errors are JSON proto.APIError.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/xdpfw/xdpfw/controlplane/auth"
	"github.com/xdpfw/xdpfw/controlplane/rollout"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// Defaults of Config.
const (
	DefaultEtcdTimeout = 5 * time.Second
	// DefaultMaxBodyBytes admits a rule set with a set of a million
	// prefixes (about 20 MB of YAML); the store cuts big sets into chunks.
	DefaultMaxBodyBytes = 64 << 20
	// ReadyTimeout bounds /readyz's etcd request.
	ReadyTimeout = time.Second
)

// Authenticator maps a bearer token to who holds it (*auth.File and
// *auth.Tokens are ones).
type Authenticator interface {
	Authenticate(token string) (auth.Identity, bool)
}

// Config is what a Server needs.
type Config struct {
	// Store is the API's way to etcd.
	Store  *etcdstore.Store
	Tokens Authenticator
	// Rollouts creates, reads and steers rollouts (nil: a
	// rollout.Manager over Store).
	Rollouts Rollouts
	// Log receives access and error logs (nil: none).
	Log *zap.Logger
	// Collectors are registered on /metrics beside the API's own (the
	// rollout controller's, the Go runtime's).
	Collectors []prometheus.Collector
	// EtcdTimeout bounds the etcd requests of one API request (5s); past
	// it the answer is 503.
	EtcdTimeout time.Duration
	// MaxBodyBytes caps request bodies (64 MiB); a bigger one is 413.
	MaxBodyBytes int64
	// AuthFailureLimit is how many failed authentications an address may
	// make within AuthFailureWindow before its requests get 429 (0:
	// MaxAuthFailures; negative: no limit, for a test that needs many).
	AuthFailureLimit int
	// Issuer signs enrolled hosts' etcd client certificates (nil:
	// enrollment answers 409).
	Issuer Issuer
	// EtcdEndpoints are the etcd client URLs an enrollment tells agents.
	EtcdEndpoints []string
}

// Server is the API as an http.Handler.
type Server struct {
	keys     proto.Keys
	store    *etcdstore.Store
	tokens   Authenticator
	rollouts Rollouts
	log      *zap.Logger
	timeout  time.Duration
	maxBody  int64
	issuer   Issuer
	// etcdEndpoints are told to enrolled hosts.
	etcdEndpoints []string

	mux      *http.ServeMux
	registry *prometheus.Registry
	// failures throttles addresses that keep failing authentication.
	failures *failures
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// New builds the API's handler.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("api: no etcd store")
	}
	if cfg.Tokens == nil {
		return nil, errors.New("api: no tokens: every /v1/ request needs one")
	}
	s := &Server{
		keys:     cfg.Store.Keys(),
		store:    cfg.Store,
		tokens:   cfg.Tokens,
		rollouts: cfg.Rollouts,
		log:      cfg.Log,
		timeout:  cfg.EtcdTimeout,
		maxBody:  cfg.MaxBodyBytes,
		mux:      http.NewServeMux(),
		registry: prometheus.NewRegistry(),
		failures: newFailures(cfg.AuthFailureLimit),
		issuer:   cfg.Issuer,

		etcdEndpoints: cfg.EtcdEndpoints,
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.rollouts == nil {
		s.rollouts = rollout.NewManager(cfg.Store)
	}
	if s.timeout <= 0 {
		s.timeout = DefaultEtcdTimeout
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "xdpfw_api_requests_total",
		Help: "API requests by route (the method and pattern) and HTTP status code.",
	}, []string{"route", "code"})
	s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "xdpfw_api_request_duration_seconds",
		Help:    "Time to answer API requests, by route.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"route"})
	for _, c := range append([]prometheus.Collector{s.requests, s.latency}, cfg.Collectors...) {
		if err := s.registry.Register(c); err != nil {
			return nil, fmt.Errorf("api: register metrics: %w", err)
		}
	}
	s.routes()
	return s, nil
}

// Registry returns the registry /metrics serves.
func (s *Server) Registry() *prometheus.Registry { return s.registry }

func (s *Server) routes() {
	viewer, operator, admin := proto.RoleViewer, proto.RoleOperator, proto.RoleAdmin

	s.handle("GET /v1/rulesets", viewer, s.listRuleSets)
	s.handle("PUT /v1/rulesets/{name}", operator, s.putRuleSet)
	s.handle("GET /v1/rulesets/{name}", viewer, s.getRuleSet)
	s.handle("DELETE /v1/rulesets/{name}", admin, s.deleteRuleSet)
	s.handle("GET /v1/rulesets/{name}/versions", viewer, s.listVersions)
	s.handle("GET /v1/rulesets/{name}/versions/{version}", viewer, s.getVersion)
	s.handle("GET /v1/rulesets/{name}/diff", viewer, s.diff)
	s.handle("POST /v1/rulesets/{name}/rollback", operator, s.rollback)

	s.handle("POST /v1/rollouts", operator, s.createRollout)
	s.handle("GET /v1/rollouts", viewer, s.listRollouts)
	s.handle("GET /v1/rollouts/{id}", viewer, s.getRollout)
	s.handle("POST /v1/rollouts/{id}/pause", operator, s.controlRollout(proto.RolloutWantPause))
	s.handle("POST /v1/rollouts/{id}/resume", operator, s.controlRollout(proto.RolloutWantRun))
	s.handle("POST /v1/rollouts/{id}/abort", operator, s.controlRollout(proto.RolloutWantAbort))

	s.handle("GET /v1/hosts", viewer, s.listHosts)
	s.handle("GET /v1/hosts/{host}", viewer, s.getHost)
	s.handle("POST /v1/hosts/{host}/enrollment", admin, s.enrollHost)
	s.handle("DELETE /v1/hosts/{host}/enrollment", admin, s.revokeHost)
	s.handle("GET /v1/telemetry", viewer, s.telemetry)
	s.handle("GET /v1/audit", admin, s.audit)

	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
}

// handlerFunc answers one /v1/ request; an error it returns becomes the
// JSON error answer (see errorOf).
type handlerFunc func(w http.ResponseWriter, r *http.Request, id auth.Identity) error

// handle registers a /v1/ route that needs at least role need.
func (s *Server) handle(pattern, need string, fn handlerFunc) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		id, _ := r.Context().Value(identityKey{}).(auth.Identity)
		if !auth.Allows(id.Role, need) {
			msg := fmt.Sprintf("%s (role %s) may not %s: it needs role %s or above", id.Name, id.Role, pattern, need)
			s.auditDenied(r, id, http.StatusForbidden, msg)
			s.writeError(w, r, &Error{Status: http.StatusForbidden, Code: proto.CodeForbidden, Message: msg})
			return
		}
		if err := fn(w, r, id); err != nil {
			s.writeError(w, r, err)
		}
	})
}

type identityKey struct{}

// ServeHTTP authenticates /v1/ requests, caps bodies, answers and counts.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	r.Body = http.MaxBytesReader(sw, r.Body, s.maxBody)
	_, pattern := s.mux.Handler(r)
	route := pattern
	if route == "" {
		route = "unmatched"
	}
	var who string
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.log.Error("request handler panicked", zap.String("route", route), zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
			if !sw.wrote {
				s.writeError(sw, r, fmt.Errorf("internal error: %v", p))
			}
		}
		code := sw.status()
		took := time.Since(start)
		s.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
		s.latency.WithLabelValues(route).Observe(took.Seconds())
		level := zapcore.DebugLevel
		switch {
		case code >= 500:
			level = zapcore.WarnLevel
		case r.Method != http.MethodGet && r.Method != http.MethodHead:
			level = zapcore.InfoLevel
		}
		if ce := s.log.Check(level, "request"); ce != nil {
			ce.Write(zap.String("method", r.Method), zap.String("route", route), zap.String("path", r.URL.Path),
				zap.Int("code", code), zap.Duration("took", took), zap.String("who", who), zap.String("remote", r.RemoteAddr))
		}
	}()

	if r.URL.Path == "/v1" || strings.HasPrefix(r.URL.Path, "/v1/") {
		ip := remoteIP(r.RemoteAddr)
		if blocked, left, first := s.failures.throttled(ip); blocked {
			msg := fmt.Sprintf("%d failed authentications from %s within %s: try again in %s", s.failures.limit, ip, AuthFailureWindow, left.Round(time.Second))
			if first {
				s.auditDenied(r, auth.Identity{}, http.StatusTooManyRequests, msg)
			}
			sw.Header().Set("Retry-After", strconv.Itoa(int(left.Seconds())+1))
			s.writeError(sw, r, &Error{Status: http.StatusTooManyRequests, Code: proto.CodeThrottled, Message: msg})
			return
		}
		id, err := s.authenticate(r)
		if err != nil {
			s.failures.fail(ip)
			var e *Error
			why := err.Error()
			if errors.As(err, &e) {
				why = e.Message
			}
			s.auditDenied(r, auth.Identity{}, http.StatusUnauthorized, why)
			sw.Header().Set("WWW-Authenticate", `Bearer realm="xdpfw"`)
			s.writeError(sw, r, err)
			return
		}
		who = id.Name
		r = r.WithContext(context.WithValue(r.Context(), identityKey{}, id))
	}
	if pattern == "" {
		s.unmatched(sw, r)
		return
	}
	s.mux.ServeHTTP(sw, r)
}

func (s *Server) authenticate(r *http.Request) (auth.Identity, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return auth.Identity{}, &Error{Status: http.StatusUnauthorized, Code: proto.CodeUnauthorized,
			Message: "no token: send Authorization: Bearer TOKEN"}
	}
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return auth.Identity{}, &Error{Status: http.StatusUnauthorized, Code: proto.CodeUnauthorized,
			Message: "the Authorization header is not a bearer token: send Authorization: Bearer TOKEN"}
	}
	id, ok := s.tokens.Authenticate(strings.TrimSpace(token))
	if !ok {
		return auth.Identity{}, &Error{Status: http.StatusUnauthorized, Code: proto.CodeUnauthorized,
			Message: "unknown token: check it against the control plane's tokens file"}
	}
	return id, nil
}

// unmatched answers a request no route takes, as ServeMux would (404,
// 405 with Allow, or a redirect to the clean path) but in JSON.
func (s *Server) unmatched(w http.ResponseWriter, r *http.Request) {
	h, _ := s.mux.Handler(r)
	rec := &headerRecorder{header: http.Header{}}
	h.ServeHTTP(rec, r)
	switch {
	case rec.code == http.StatusMethodNotAllowed:
		w.Header().Set("Allow", rec.header.Get("Allow"))
		s.writeError(w, r, &Error{Status: http.StatusMethodNotAllowed, Code: proto.CodeInvalid,
			Message: fmt.Sprintf("%s is not allowed on %s: use %s", r.Method, r.URL.Path, rec.header.Get("Allow"))})
	case rec.code >= 300 && rec.code < 400:
		http.Redirect(w, r, rec.header.Get("Location"), rec.code)
	default:
		s.writeError(w, r, &Error{Status: http.StatusNotFound, Code: proto.CodeNotFound,
			Message: fmt.Sprintf("no route %s %s (the API is under /v1/)", r.Method, r.URL.Path)})
	}
}

// headerRecorder keeps the status and headers of ServeMux's own answers
// and drops their plain-text bodies.
type headerRecorder struct {
	header http.Header
	code   int
}

func (h *headerRecorder) Header() http.Header { return h.header }
func (h *headerRecorder) Write(p []byte) (int, error) {
	if h.code == 0 {
		h.code = http.StatusOK
	}
	return len(p), nil
}
func (h *headerRecorder) WriteHeader(code int) {
	if h.code == 0 {
		h.code = code
	}
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.code, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.code, w.wrote = http.StatusOK, true
	}
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) status() int {
	if !w.wrote {
		return http.StatusOK
	}
	return w.code
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Error is an API error answer.
type Error struct {
	Status   int
	Code     string
	Message  string
	Problems []proto.Problem
}

func (e *Error) Error() string { return e.Message }

func invalid(format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Code: proto.CodeInvalid, Message: fmt.Sprintf(format, args...)}
}

// errorOf maps an error to its answer.
func errorOf(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var mbe *http.MaxBytesError
	var ve *proto.ValidationError
	var inUse *etcdstore.InUseError
	switch {
	case errors.As(err, &mbe):
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: proto.CodeTooLarge,
			Message: fmt.Sprintf("the request body is over %d bytes", mbe.Limit)}
	case errors.As(err, &ve):
		return &Error{Status: http.StatusBadRequest, Code: proto.CodeInvalid,
			Message: fmt.Sprintf("%d problem(s); nothing was written: fix them all and send it again", len(ve.Problems)), Problems: ve.Problems}
	case errors.As(err, &inUse):
		return &Error{Status: http.StatusConflict, Code: proto.CodeConflict, Message: err.Error()}
	case errors.Is(err, etcdstore.ErrTooLarge):
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: proto.CodeTooLarge, Message: err.Error()}
	case errors.Is(err, rollout.ErrInvalid):
		return &Error{Status: http.StatusBadRequest, Code: proto.CodeInvalid, Message: err.Error()}
	case errors.Is(err, etcdstore.ErrConflict), errors.Is(err, rollout.ErrConflict):
		return &Error{Status: http.StatusConflict, Code: proto.CodeConflict, Message: err.Error()}
	case errors.Is(err, etcdstore.ErrNotFound), errors.Is(err, rollout.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Code: proto.CodeNotFound, Message: err.Error()}
	case etcdstore.Unavailable(err):
		return &Error{Status: http.StatusServiceUnavailable, Code: proto.CodeUnavailable,
			Message: "etcd did not answer in time: " + err.Error() + "; try again once etcd is reachable"}
	}
	return &Error{Status: http.StatusInternalServerError, Code: proto.CodeInternal, Message: err.Error()}
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := errorOf(err)
	if e.Status >= 500 {
		s.log.Warn("request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path),
			zap.Int("code", e.Status), zap.Error(err))
	}
	body := proto.APIError{Error: proto.APIErrorBody{Code: e.Code, Message: e.Message, Problems: e.Problems}}
	writeJSON(w, e.Status, body)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		data, _ = json.Marshal(proto.APIError{Error: proto.APIErrorBody{Code: proto.CodeInternal, Message: "encode the answer: " + err.Error()}})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(append(data, '\n')) //nolint:errcheck // the client went away
}

// etcdCtx bounds the etcd requests of one API request.
func (s *Server) etcdCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.timeout)
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz answers 200 when etcd serves a linearizable read within
// ReadyTimeout.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), ReadyTimeout)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		// Unauthenticated: the answer says not ready, the log says why
		// (an etcd error can name endpoints and members).
		s.log.Warn("not ready: etcd did not answer", zap.Duration("within", ReadyTimeout), zap.Error(err))
		s.writeError(w, r, &Error{Status: http.StatusServiceUnavailable, Code: proto.CodeUnavailable,
			Message: fmt.Sprintf("not ready: etcd did not answer within %s", ReadyTimeout)})
		return
	}
	if alarms, err := s.store.Alarms(ctx); err == nil && len(alarms) > 0 {
		s.log.Warn("not ready: etcd raised alarms", zap.Strings("alarms", alarms))
		s.writeError(w, r, &Error{Status: http.StatusServiceUnavailable, Code: proto.CodeUnavailable,
			Message: "not ready: " + etcdstore.AlarmsMessage(alarmTypes(alarms))})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// alarmTypes keeps the alarm names (NOSPACE, CORRUPT) of etcd's alarms,
// not the members they name: /readyz answers anyone.
func alarmTypes(alarms []string) []string {
	out := make([]string, len(alarms))
	for i, a := range alarms {
		out[i], _, _ = strings.Cut(a, " ")
	}
	return out
}

// warnAlarms adds a Warning header naming etcd's raised alarms, if any,
// to an answer that lists the fleet: hosts cannot report while etcd
// refuses writes, so what the list says may be stale.
func (s *Server) warnAlarms(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	alarms, err := s.store.Alarms(ctx)
	if err != nil || len(alarms) == 0 {
		return
	}
	w.Header().Add("Warning", "199 xdpfw "+strconv.Quote(etcdstore.AlarmsMessage(alarms)+"; hosts' statuses may be stale"))
}

// audit answers GET /v1/audit?limit=N: the newest N records (100 by
// default, at most 10,000), newest first.
func (s *Server) audit(w http.ResponseWriter, r *http.Request, _ auth.Identity) error {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			return invalid("limit=%q: want a number from 1 to 10000", v)
		}
		limit = n
	}
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	recs, err := s.store.AuditRecords(ctx, limit)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, recs)
	return nil
}

// auditRecord starts the record of a write by id.
func auditRecord(r *http.Request, id auth.Identity, target string) proto.AuditRecord {
	return proto.AuditRecord{
		At:     time.Now().UTC(),
		Who:    id.Name,
		Role:   id.Role,
		Action: r.Method + " " + r.URL.Path,
		Target: target,
		Remote: r.RemoteAddr,
	}
}

// maxAuditedPath bounds the path a denied request's record keeps: the
// client chose it.
const maxAuditedPath = 256

// auditDenied records a request refused before it did anything (401, 403,
// 429): who (the token's name when it was known), what it asked, from
// where and why. A failure to write it is logged; the answer stays the
// refusal.
func (s *Server) auditDenied(r *http.Request, id auth.Identity, code int, why string) {
	rec := auditRecord(r, id, "denied")
	if rec.Who == "" {
		rec.Who = "(unauthenticated)"
	}
	if len(rec.Action) > maxAuditedPath {
		rec.Action = rec.Action[:maxAuditedPath] + "..."
	}
	rec.Result = fmt.Sprintf("%d %s: %s", code, http.StatusText(code), why)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.timeout)
	defer cancel()
	if _, _, err := s.store.PutAudit(ctx, rec); err != nil {
		s.log.Warn("audit record of a refused request not written", zap.String("who", rec.Who),
			zap.String("action", rec.Action), zap.String("remote", rec.Remote), zap.Error(err))
	}
}
