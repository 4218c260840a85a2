package api

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/xdpfw/xdpfw/controlplane/auth"
	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// newSecureEnv is an API over a secure etcd member, as root, with the
// member's CA as its issuer.
func newSecureEnv(t *testing.T) (*env, *etcdtest.Secure, *etcdstore.Store) {
	t.Helper()
	sec := etcdtest.StartSecure(t)
	keys := proto.NewKeys("/xdpfw-api-test/")
	st, err := etcdstore.Open(etcdstore.ClientConfig{Endpoints: sec.Endpoints(), CertFile: sec.Files.RootCertFile,
		KeyFile: sec.Files.RootKeyFile, CAFile: sec.Files.CAFile}, keys)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	toks, err := auth.Parse([]byte(testTokens))
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{Store: st, Tokens: toks, EtcdTimeout: 3 * time.Second, Issuer: sec.CA, EtcdEndpoints: sec.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(a)
	t.Cleanup(hs.Close)
	return &env{t: t, etcd: sec.Server, keys: keys, api: a, srv: hs}, sec, st
}

func TestEnrollAndRevokeAHost(t *testing.T) {
	e, _, root := newSecureEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := root.SetDesired(ctx, "web-1", nil); err != nil {
		t.Fatal(err)
	}
	path := "/v1/hosts/web-1/enrollment"
	body := proto.EnrollRequest{Labels: map[string]string{"role": "web"}}

	if r := e.do("POST", path, operatorToken, body); r.code != http.StatusForbidden {
		t.Fatalf("an operator enrolls: %d %s, want 403", r.code, r.body)
	}
	if r := e.do("POST", path, adminToken, proto.EnrollRequest{Labels: map[string]string{"role": "web server"}}); r.code != http.StatusBadRequest {
		t.Fatalf("a label with a space: %d %s, want 400", r.code, r.body)
	}
	if r := e.do("POST", "/v1/hosts/Web_1/enrollment", adminToken, body); r.code != http.StatusBadRequest {
		t.Fatalf("a bad host name: %d %s, want 400", r.code, r.body)
	}
	r := e.do("POST", path, adminToken, body)
	if r.code != http.StatusOK {
		t.Fatalf("enroll: %d %s", r.code, r.body)
	}
	var got proto.EnrollResponse
	if err := json.Unmarshal(r.body, &got); err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(got.CertPEM))
	if block == nil {
		t.Fatalf("no certificate in the answer: %s", r.body)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != proto.HostEtcdUser("web-1") || got.Enrollment.Labels["role"] != "web" || got.CAPEM == "" || len(got.Endpoints) == 0 {
		t.Fatalf("answer: CN %q, enrollment %+v, endpoints %v", cert.Subject.CommonName, got.Enrollment, got.Endpoints)
	}

	// The bundle works, for web-1's keys only.
	dir := t.TempDir()
	files := map[string]string{"host.crt": got.CertPEM, "host.key": got.KeyPEM, "ca.crt": got.CAPEM}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	host, err := etcdstore.Open(etcdstore.ClientConfig{Endpoints: got.Endpoints, CertFile: filepath.Join(dir, "host.crt"),
		KeyFile: filepath.Join(dir, "host.key"), CAFile: filepath.Join(dir, "ca.crt")}, e.keys)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	if _, _, err := host.GetDesired(ctx, "web-1"); err != nil {
		t.Fatalf("web-1 reads its desired state with its bundle: %v", err)
	}
	if _, err := host.SetDesired(ctx, "web-2", nil); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("web-1 writes web-2's desired state: %v, want permission denied", err)
	}

	// The fleet view shows the enrollment; the audit trail records it.
	r = e.do("GET", "/v1/hosts/web-1", viewerToken, nil)
	var info proto.HostInfo
	if err := json.Unmarshal(r.body, &info); err != nil || r.code != http.StatusOK {
		t.Fatalf("GET host: %d %s %v", r.code, r.body, err)
	}
	if info.Enrollment == nil || info.Enrollment.By != "alice" || info.Enrollment.Labels["role"] != "web" {
		t.Fatalf("host web-1's enrollment in the fleet view: %+v", info.Enrollment)
	}
	recs, err := root.AuditRecords(ctx, 10)
	if err != nil || len(recs) == 0 || recs[0].Target != "host web-1" || recs[0].Who != "alice" {
		t.Fatalf("audit trail after enrolling: %+v, %v", recs, err)
	}

	// Revoked: etcd refuses the certificate; a second revoke is 404.
	if r := e.do("DELETE", path, operatorToken, nil); r.code != http.StatusForbidden {
		t.Fatalf("an operator revokes: %d %s, want 403", r.code, r.body)
	}
	if r := e.do("DELETE", path, adminToken, nil); r.code != http.StatusNoContent {
		t.Fatalf("revoke: %d %s", r.code, r.body)
	}
	if _, _, err := host.GetDesired(ctx, "web-1"); err == nil {
		t.Fatal("a revoked host's certificate still reads")
	}
	if r := e.do("DELETE", path, adminToken, nil); r.code != http.StatusNotFound {
		t.Fatalf("revoke again: %d %s, want 404", r.code, r.body)
	}
}

// Without a CA (an etcd the control plane does not run) enrollment says
// why it cannot, and writes nothing.
func TestEnrollWithoutAnIssuer(t *testing.T) {
	e := newEnv(t)
	r := e.do("POST", "/v1/hosts/web-1/enrollment", adminToken, proto.EnrollRequest{Labels: map[string]string{"role": "web"}})
	if r.code != http.StatusConflict {
		t.Fatalf("enroll with no CA: %d %s, want 409", r.code, r.body)
	}
	resp, err := e.cli.Get(context.Background(), e.keys.HostEnrollment("web-1"))
	if err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("an enrollment was written: %v, %v", resp, err)
	}
}
