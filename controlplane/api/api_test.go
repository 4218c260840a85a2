package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/xdpfw/xdpfw/controlplane/auth"
	"github.com/xdpfw/xdpfw/controlplane/etcdserver"
	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// Tokens of the test's tokens file, one per role.
const (
	adminToken    = "admin-token-0123456789"
	operatorToken = "operator-token-0123456789"
	viewerToken   = "viewer-token-0123456789"
)

const testTokens = `
tokens:
  - {name: alice, role: admin, token: ` + adminToken + `}
  - {name: oscar, role: operator, token: ` + operatorToken + `}
  - {name: vera, role: viewer, token: ` + viewerToken + `}
`

// env is one API over one real etcd member.
type env struct {
	t    *testing.T
	etcd *etcdserver.Server
	cli  *clientv3.Client
	keys proto.Keys
	api  *Server
	srv  *httptest.Server
}

type envOption func(*Config)

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	srv, cli := etcdtest.StartWithClient(t)
	toks, err := auth.Parse([]byte(testTokens))
	if err != nil {
		t.Fatal(err)
	}
	keys := proto.NewKeys("/xdpfw-api-test/")
	cfg := Config{Store: etcdstore.New(cli, keys), Tokens: toks, EtcdTimeout: 3 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(a)
	t.Cleanup(hs.Close)
	return &env{t: t, etcd: srv, cli: cli, keys: keys, api: a, srv: hs}
}

// resp is an answer, its body read.
type resp struct {
	code   int
	header http.Header
	body   []byte
}

// apiError decodes an error answer.
func (r resp) apiError(t *testing.T) proto.APIErrorBody {
	t.Helper()
	var e proto.APIError
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error.Code == "" {
		t.Fatalf("answer %d is not a JSON APIError: %v: %s", r.code, err, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error answer with Content-Type %q", ct)
	}
	return e.Error
}

func (r resp) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode answer %d into %T: %v: %s", r.code, v, err, r.body)
	}
}

// do sends a request: body is sent as is when []byte or string, else as
// JSON. header holds extra headers.
func (e *env) do(method, path, token string, body any, header ...string) resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp{code: res.StatusCode, header: res.Header, body: data}
}

// must sends a request and fails the test unless the answer is want.
func (e *env) must(want int, method, path, token string, body any, header ...string) resp {
	e.t.Helper()
	r := e.do(method, path, token, body, header...)
	if r.code != want {
		e.t.Fatalf("%s %s: %d, want %d: %s", method, path, r.code, want, r.body)
	}
	return r
}

// revision returns etcd's current revision: unchanged means nothing was
// written.
// refusedOnly fails unless every write since revision before is the audit
// record of a refused request: a refusal writes that and nothing else.
func (e *env) refusedOnly(before int64, what string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	after := e.revision()
	r, err := e.cli.Get(ctx, e.keys.Prefix, clientv3.WithPrefix(), clientv3.WithMinModRev(before+1))
	if err != nil {
		e.t.Fatal(err)
	}
	for _, kv := range r.Kvs {
		var rec proto.AuditRecord
		if !strings.HasPrefix(string(kv.Key), e.keys.Audit()) || json.Unmarshal(kv.Value, &rec) != nil || rec.Target != "denied" {
			e.t.Fatalf("%s wrote %s", what, kv.Key)
		}
	}
	if int64(len(r.Kvs)) != after-before {
		e.t.Fatalf("%s: etcd moved from revision %d to %d with %d audit records of refusals", what, before, after, len(r.Kvs))
	}
}

func (e *env) revision() int64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := e.cli.Get(ctx, "/", clientv3.WithCountOnly())
	if err != nil {
		e.t.Fatal(err)
	}
	return r.Header.Revision
}

func (e *env) put(key, value string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.cli.Put(ctx, key, value); err != nil {
		e.t.Fatal(err)
	}
}

// ruleSetYAML is a valid rule set whose rule "web" passes tcp port.
func ruleSetYAML(name string, port int) string {
	return fmt.Sprintf(`apiVersion: xdpfw/v1
kind: RuleSet
name: %s
mode: deny
sets:
  bad-actors: [203.0.113.0/24, "2001:db8:bad::/48"]
rules:
  - id: intel
    action: drop
    src: [set:bad-actors]
  - id: web
    action: pass
    protocol: tcp
    dstPorts: [%d]
`, name, port)
}

func TestHealthzAndReadyz(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.EtcdTimeout = time.Second })
	r := e.must(http.StatusOK, "GET", "/healthz", "", nil)
	if string(r.body) != "{\"status\":\"ok\"}\n" {
		t.Fatalf("/healthz: %s", r.body)
	}
	e.must(http.StatusOK, "GET", "/readyz", "", nil)

	// The member stops: /readyz fails within its second, /healthz stays
	// up, and /v1/ requests answer 503 once their etcd timeout passes.
	e.etcd.Close()
	start := time.Now()
	r = e.must(http.StatusServiceUnavailable, "GET", "/readyz", "", nil)
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("/readyz took %s with etcd stopped, want about %s", took, ReadyTimeout)
	}
	if eb := r.apiError(t); eb.Code != proto.CodeUnavailable || !strings.Contains(eb.Message, "etcd did not answer") ||
		strings.Contains(eb.Message, "deadline") || strings.Contains(eb.Message, "127.0.0.1") {
		t.Fatalf("/readyz error: %+v (want not ready, without etcd's own error: /readyz takes no token)", eb)
	}
	e.must(http.StatusOK, "GET", "/healthz", "", nil)
	r = e.must(http.StatusServiceUnavailable, "GET", "/v1/rulesets", viewerToken, nil)
	if eb := r.apiError(t); eb.Code != proto.CodeUnavailable {
		t.Fatalf("GET /v1/rulesets with etcd stopped: %+v", eb)
	}
	r = e.must(http.StatusServiceUnavailable, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 80))
	if eb := r.apiError(t); eb.Code != proto.CodeUnavailable {
		t.Fatalf("PUT with etcd stopped: %+v", eb)
	}
}

func TestMetrics(t *testing.T) {
	extra := prometheus.NewCounter(prometheus.CounterOpts{Name: "xdpfw_test_extra_total", Help: "a collector from the config"})
	extra.Add(3)
	e := newEnv(t, func(c *Config) { c.Collectors = []prometheus.Collector{extra} })
	e.must(http.StatusCreated, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 80))
	e.must(http.StatusNotFound, "GET", "/v1/rulesets/nope", viewerToken, nil)
	e.must(http.StatusNotFound, "GET", "/v1/rulesets/nope", viewerToken, nil)
	e.must(http.StatusUnauthorized, "GET", "/v1/hosts", "", nil)
	e.must(http.StatusNotFound, "GET", "/nowhere", "", nil)
	r := e.must(http.StatusOK, "GET", "/metrics", "", nil)
	for _, want := range []string{
		`xdpfw_api_requests_total{code="201",route="PUT /v1/rulesets/{name}"} 1`,
		`xdpfw_api_requests_total{code="404",route="GET /v1/rulesets/{name}"} 2`,
		`xdpfw_api_requests_total{code="401",route="GET /v1/hosts"} 1`,
		`xdpfw_api_requests_total{code="404",route="unmatched"} 1`,
		`xdpfw_api_request_duration_seconds_count{route="GET /v1/rulesets/{name}"} 2`,
		`xdpfw_api_request_duration_seconds_bucket{route="PUT /v1/rulesets/{name}",le="+Inf"} 1`,
		`xdpfw_test_extra_total 3`,
	} {
		if !strings.Contains(string(r.body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", r.body)
	}
}

func TestNew(t *testing.T) {
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "no etcd store") {
		t.Fatalf("New without a store: %v", err)
	}
	if _, err := New(Config{Store: etcdstore.New(&clientv3.Client{}, proto.NewKeys(""))}); err == nil || !strings.Contains(err.Error(), "no tokens") {
		t.Fatalf("New without tokens: %v", err)
	}
}

// serveFrom answers one request as if it came from remote.
func (e *env) serveFrom(remote, method, path, token string) *httptest.ResponseRecorder {
	e.t.Helper()
	req := httptest.NewRequest(method, path, nil)
	req.RemoteAddr = remote
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	e.api.ServeHTTP(rec, req)
	return rec
}

// deniedRecords are the audit records of refused requests, oldest first.
func (e *env) deniedRecords() []proto.AuditRecord {
	e.t.Helper()
	recs, err := etcdstore.New(e.cli, e.keys).AuditRecords(context.Background(), 1000)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []proto.AuditRecord
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].Target == "denied" {
			out = append(out, recs[i])
		}
	}
	return out
}

// Requests refused for their token (401) or their role (403) are audited
// with who, what and from where; an address that keeps failing gets 429,
// audited once, even with a good token, while other addresses go on.
func TestRefusedRequestsAuditedAndThrottled(t *testing.T) {
	e := newEnv(t)
	const attacker, other = "198.18.0.66:40000", "198.18.0.7:50000"
	if rec := e.serveFrom(attacker, "GET", "/v1/rulesets", "guess-0"); rec.Code != http.StatusUnauthorized {
		t.Fatalf("unknown token: %d", rec.Code)
	}
	if rec := e.serveFrom(other, "DELETE", "/v1/rulesets/edge", viewerToken); rec.Code != http.StatusForbidden {
		t.Fatalf("viewer's delete: %d", rec.Code)
	}
	recs := e.deniedRecords()
	if len(recs) != 2 {
		t.Fatalf("%d audit records of refused requests, want 2: %+v", len(recs), recs)
	}
	if r := recs[0]; r.Who != "(unauthenticated)" || r.Remote != attacker || r.Action != "GET /v1/rulesets" || !strings.HasPrefix(r.Result, "401") {
		t.Errorf("401 record: %+v", r)
	}
	if r := recs[1]; r.Who != "vera" || r.Role != proto.RoleViewer || r.Remote != other || !strings.HasPrefix(r.Result, "403") {
		t.Errorf("403 record: %+v", r)
	}
	for _, r := range recs {
		if strings.Contains(fmt.Sprintf("%+v", r), "guess-0") || strings.Contains(fmt.Sprintf("%+v", r), viewerToken) {
			t.Errorf("a token in the audit trail: %+v", r)
		}
	}

	for i := 1; i < MaxAuthFailures; i++ {
		if rec := e.serveFrom(attacker, "GET", "/v1/rulesets", fmt.Sprintf("guess-%d", i)); rec.Code != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d, want 401", i, rec.Code)
		}
	}
	for i := range 3 {
		rec := e.serveFrom(attacker, "GET", "/v1/rulesets", viewerToken)
		if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
			t.Fatalf("request %d after %d failures: %d (Retry-After %q), want 429", i, MaxAuthFailures, rec.Code, rec.Header().Get("Retry-After"))
		}
	}
	if rec := e.serveFrom(other, "GET", "/v1/rulesets", viewerToken); rec.Code != http.StatusOK {
		t.Fatalf("another address: %d, want 200", rec.Code)
	}
	recs = e.deniedRecords()
	throttled := 0
	for _, r := range recs {
		if strings.HasPrefix(r.Result, "429") {
			throttled++
		}
	}
	if len(recs) != 1+MaxAuthFailures+1 || throttled != 1 {
		t.Fatalf("%d records (%d of 429), want %d failures, the 403 and one 429", len(recs), throttled, MaxAuthFailures)
	}

	// The window ends: the address may try again.
	e.api.failures.now = func() time.Time { return time.Now().Add(AuthFailureWindow) }
	if rec := e.serveFrom(attacker, "GET", "/v1/rulesets", viewerToken); rec.Code != http.StatusOK {
		t.Fatalf("after the window: %d, want 200", rec.Code)
	}
}
