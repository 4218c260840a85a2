package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xdpfw/xdpfw/agent"
	"github.com/xdpfw/xdpfw/proto"
)

func TestHostsEnrollWritesTheAgentsBundle(t *testing.T) {
	resp := proto.EnrollResponse{
		Enrollment: proto.HostEnrollment{APIVersion: proto.APIVersion, Kind: proto.KindHostEnrollment, Host: "web-1",
			User: proto.HostEtcdUser("web-1"), Labels: map[string]string{"role": "web"}, EnrolledAt: t0, By: "alice"},
		CertPEM: "CERT", KeyPEM: "KEY", CAPEM: "CA", Endpoints: []string{"https://198.18.0.10:2379"}, KeyPrefix: "/xdpfw/v1/",
	}
	f, srv := newFakeAPI(t, map[string]answer{
		"POST /v1/hosts/web-1/enrollment":   {200, resp},
		"DELETE /v1/hosts/web-1/enrollment": {204, nil},
	})
	out := filepath.Join(t.TempDir(), "web-1")
	code, stdout, stderr := ctl(srv, "hosts", "enroll", "web-1", "--labels", "role=web", "--out", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if len(f.seen) != 1 || f.seen[0].body != `{"labels":{"role":"web"}}` {
		t.Fatalf("requests: %+v", f.seen)
	}
	if !strings.Contains(stdout, "xdpfw-agent --config "+filepath.Join(out, "agent.yaml")) {
		t.Errorf("stdout does not say how to run the agent:\n%s", stdout)
	}
	key, err := os.Stat(filepath.Join(out, "etcd-client.key"))
	if err != nil || key.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", key, err)
	}
	cfg, err := agent.LoadConfig(filepath.Join(out, "agent.yaml"))
	if err != nil {
		t.Fatalf("agent.yaml does not load as the agent's configuration: %v", err)
	}
	if cfg.Host != "web-1" || cfg.Endpoints[0] != resp.Endpoints[0] || cfg.KeyPrefix != "/xdpfw/v1/" ||
		cfg.CertFile != filepath.Join(out, "etcd-client.crt") || cfg.CAFile != filepath.Join(out, "etcd-ca.crt") {
		t.Fatalf("agent.yaml: %+v", cfg)
	}
	if data, _ := os.ReadFile(cfg.KeyFile); string(data) != "KEY" {
		t.Fatalf("key file holds %q", data)
	}

	// A directory that is not empty is refused before the API is asked:
	// no certificate is issued that could not be written.
	code, _, stderr = ctl(srv, "hosts", "enroll", "web-1", "--out", out)
	if code != exitUsage || !strings.Contains(stderr, "not empty") || len(f.seen) != 1 {
		t.Fatalf("enroll into a used directory: exit %d, %d requests, stderr %s", code, len(f.seen), stderr)
	}
	if code, _, stderr := ctl(srv, "hosts", "enroll", "web-1"); code != exitUsage || !strings.Contains(stderr, "--out DIR") {
		t.Fatalf("enroll without --out: exit %d, %s", code, stderr)
	}
	if code, _, stderr := ctl(srv, "hosts", "enroll", "Web_1", "--out", t.TempDir()); code != exitUsage || !strings.Contains(stderr, "host name") {
		t.Fatalf("enroll a bad host name: exit %d, %s", code, stderr)
	}

	code, stdout, stderr = ctl(srv, "hosts", "revoke", "web-1")
	if code != 0 || !strings.Contains(stdout, "host web-1 revoked") || f.seen[len(f.seen)-1].method != "DELETE" {
		t.Fatalf("revoke: exit %d, %s %s", code, stdout, stderr)
	}
}

// The API's Warning headers (etcd's NOSPACE alarm) reach the operator.
func TestAPIWarningsPrinted(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Warning", `199 xdpfw "etcd raised NOSPACE on member 1: every write is refused"`)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("[]"))
	}))
	defer srv.Close()
	code, _, stderr := ctl(srv.URL, "get", "hosts")
	if code != 0 || !strings.Contains(stderr, "xdpfwctl: warning: etcd raised NOSPACE on member 1: every write is refused\n") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

// get hosts follows the API's pages (Link rel="next") to the end.
func TestGetHostsFollowsPages(t *testing.T) {
	var queries []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		queries = append(queries, r.URL.RawQuery)
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Get("continue") == "" {
			w.Header().Set("Link", `</v1/hosts?continue=web-1&limit=1000>; rel="next"`)
			w.Write([]byte(`[{"host":"web-1","state":"in sync","desired":[]}]`))
			return
		}
		w.Write([]byte(`[{"host":"web-2","state":"lost","desired":[]}]`))
	}))
	defer srv.Close()
	code, stdout, stderr := ctl(srv.URL, "get", "hosts")
	if code != 0 || !strings.Contains(stdout, "web-1") || !strings.Contains(stdout, "web-2") {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	if len(queries) != 2 || queries[0] != "limit=1000" || queries[1] != "continue=web-1&limit=1000" {
		t.Fatalf("queries %q", queries)
	}
}
