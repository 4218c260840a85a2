package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/xdpfw/xdpfw/controlplane/auth"
	"github.com/xdpfw/xdpfw/controlplane/etcdserver"
	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// When etcd's database reaches its quota, etcd raises NOSPACE and refuses
// every write: /readyz says so, and the hosts list warns that statuses
// may be stale.
func TestQuotaAlarmSurfaces(t *testing.T) {
	cfg := etcdtest.Config(t, "quota")
	cfg.QuotaBackendBytes = 4 << 20
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := etcdserver.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	cli := etcdtest.Client(t, srv.Endpoints())
	toks, err := auth.Parse([]byte(testTokens))
	if err != nil {
		t.Fatal(err)
	}
	keys := proto.NewKeys("/xdpfw-api-test/")
	a, err := New(Config{Store: etcdstore.New(cli, keys), Tokens: toks, EtcdTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(a)
	t.Cleanup(hs.Close)
	e := &env{t: t, etcd: srv, cli: cli, keys: keys, api: a, srv: hs}

	if r := e.do("GET", "/readyz", "", nil); r.code != http.StatusOK {
		t.Fatalf("/readyz before the quota: %d %s", r.code, r.body)
	}
	if r := e.do("GET", "/v1/hosts", viewerToken, nil); r.header.Get("Warning") != "" {
		t.Fatalf("a warning before any alarm: %s", r.header.Get("Warning"))
	}
	value := strings.Repeat("x", 512<<10)
	full := false
	for i := 0; i < 64 && !full; i++ {
		if _, err := cli.Put(ctx, keys.Prefix+"filler", value); err != nil {
			if !strings.Contains(err.Error(), "database space exceeded") {
				t.Fatalf("put %d: %v", i, err)
			}
			full = true
		}
	}
	if !full {
		t.Fatal("etcd never reached its 4 MiB quota")
	}
	r := e.do("GET", "/readyz", "", nil)
	if r.code != http.StatusServiceUnavailable || !strings.Contains(string(r.body), "NOSPACE") || strings.Contains(string(r.body), "member") {
		t.Fatalf("/readyz with NOSPACE raised: %d %s; want 503 naming the alarm, not the member", r.code, r.body)
	}
	r = e.do("GET", "/v1/hosts", viewerToken, nil)
	if r.code != http.StatusOK || !strings.Contains(r.header.Get("Warning"), "NOSPACE") {
		t.Fatalf("GET /v1/hosts with NOSPACE raised: %d, Warning %q", r.code, r.header.Get("Warning"))
	}
}
