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
	if eb := r.apiError(t); eb.Code != proto.CodeUnavailable || !strings.Contains(eb.Message, "etcd did not answer") {
		t.Fatalf("/readyz error: %+v", eb)
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
