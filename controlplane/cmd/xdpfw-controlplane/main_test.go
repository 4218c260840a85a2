package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

const (
	adminToken    = "admin-token-0123456789"
	operatorToken = "operator-token-0123456789"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func tokensFile(t *testing.T) string {
	t.Helper()
	return writeFile(t, t.TempDir(), "tokens.yaml", `tokens:
  - {name: alice, role: admin, token: `+adminToken+`}
  - {name: oscar, role: operator, token: `+operatorToken+`}
`)
}

// syncBuffer is a bytes.Buffer that run's output and the test can share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// replica is one run() in a goroutine.
type replica struct {
	stdout, stderr syncBuffer
	cancel         context.CancelFunc
	hup            chan os.Signal
	code           chan int
	url            string
}

func start(t *testing.T, args ...string) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{cancel: cancel, hup: make(chan os.Signal, 1), code: make(chan int, 1)}
	go func() { r.code <- run(ctx, args, &r.stdout, &r.stderr, r.hup) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.code:
		case <-time.After(30 * time.Second):
			t.Error("run did not return 30s after its context ended")
		}
	})
	r.url = r.waitReady(t)
	return r
}

// waitReady waits for the ready line and returns the API's URL.
func (r *replica) waitReady(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if out := r.stdout.String(); strings.HasSuffix(out, "\n") {
			url, ok := strings.CutPrefix(strings.TrimSpace(out), "xdpfw-controlplane: ready, API at ")
			if !ok {
				t.Fatalf("stdout %q is not the ready line", out)
			}
			return url
		}
		select {
		case code := <-r.code:
			r.code <- code
			t.Fatalf("exited %d before it was ready; stderr:\n%s", code, r.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("no ready line after 60s; stderr:\n%s", r.stderr.String())
	return ""
}

func (r *replica) stop(t *testing.T) int {
	t.Helper()
	r.cancel()
	select {
	case code := <-r.code:
		r.code <- code
		return code
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return 30s after the signal")
		return -1
	}
}

func call(t *testing.T, c *http.Client, method, url, token, body string, header ...string) (int, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, data
}

const ruleSetYAML = `apiVersion: xdpfw/v1
kind: RuleSet
name: web
mode: deny
rules:
  - {id: ssh, action: drop, protocol: tcp, dstPorts: [22]}
`

func TestRunFlags(t *testing.T) {
	tokens := tokensFile(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	badTokens := writeFile(t, t.TempDir(), "bad.yaml", "tokens: [{name: a, role: root, token: x}]")
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no tokens file", []string{"--data-dir", "D"}, exitUsage, "--tokens-file is required"},
		{"no data dir", []string{"--tokens-file", tokens}, exitUsage, "--data-dir is required without --etcd-endpoints"},
		{"data dir and endpoints", []string{"--tokens-file", tokens, "--data-dir", "D", "--etcd-endpoints", "127.0.0.1:1"}, exitUsage, "with --etcd-endpoints drop them"},
		{"etcd tls without endpoints", []string{"--tokens-file", tokens, "--data-dir", "D", "--etcd-cert", "c"}, exitUsage, "are for --etcd-endpoints"},
		{"tls cert without key", []string{"--tokens-file", tokens, "--data-dir", "D", "--tls-cert", "c"}, exitUsage, "--tls-cert and --tls-key go together"},
		{"client ca without tls", []string{"--tokens-file", tokens, "--data-dir", "D", "--client-ca", "c"}, exitUsage, "--client-ca needs --tls-cert"},
		{"bad level", []string{"--tokens-file", tokens, "--data-dir", "D", "--log-level", "loud"}, exitUsage, `--log-level "loud"`},
		{"bad timeout", []string{"--tokens-file", tokens, "--data-dir", "D", "--etcd-timeout", "0s"}, exitUsage, "--etcd-timeout 0s"},
		{"extra argument", []string{"--tokens-file", tokens, "--data-dir", "D", "extra"}, exitUsage, `unexpected argument "extra"`},
		{"unknown flag", []string{"--nope"}, exitUsage, "flag provided but not defined"},
		{"missing tokens file", []string{"--tokens-file", "/nonexistent/tokens.yaml", "--data-dir", "D"}, exitError, "/nonexistent/tokens.yaml"},
		{"bad tokens file", []string{"--tokens-file", badTokens, "--data-dir", "D"}, exitError, `unknown role "root"`},
		{"missing tls files", []string{"--tokens-file", tokens, "--data-dir", "D", "--tls-cert", "/nonexistent/c", "--tls-key", "/nonexistent/k"}, exitError, "load --tls-cert /nonexistent/c"},
		{"plain HTTP off loopback", []string{"--tokens-file", tokens, "--data-dir", "D", "--listen", "198.18.0.1:8080"}, exitUsage, "not a loopback address"},
		{"plain HTTP on every address", []string{"--tokens-file", tokens, "--data-dir", "D", "--listen", ":8080"}, exitUsage, "not a loopback address"},
		{"secure member on http", []string{"--tokens-file", tokens, "--data-dir", "D", "--etcd-listen-client", "http://127.0.0.1:2379"}, exitUsage, "--insecure-etcd runs it on plain http://"},
		{"insecure member on https", []string{"--tokens-file", tokens, "--data-dir", "D", "--insecure-etcd", "--etcd-listen-client", "https://127.0.0.1:2379", "--etcd-listen-peer", "http://127.0.0.1:2380"}, exitUsage, "with --insecure-etcd the embedded member serves http://"},
		{"audit retention without an export", []string{"--tokens-file", tokens, "--etcd-endpoints", "127.0.0.1:1", "--audit-retention", "720h"}, exitUsage, "--audit-retention needs --audit-export"},
		{"negative audit retention", []string{"--tokens-file", tokens, "--data-dir", "D", "--audit-retention", "-1h"}, exitUsage, "--audit-retention -1h0m0s"},
		{"CA key without its certificate", []string{"--tokens-file", tokens, "--etcd-endpoints", "127.0.0.1:1", "--etcd-ca-key", "k"}, exitUsage, "--etcd-ca-key needs --etcd-cacert"},
		{"listen address in use", []string{"--tokens-file", tokens, "--data-dir", "D", "--listen", busy.Addr().String()}, exitError, "address already in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			urls := httpsURLs(t, 2)
			dir := t.TempDir()
			args := []string{"--listen", "127.0.0.1:0"}
			if !strings.Contains(strings.Join(tt.args, " "), "--etcd-") {
				args = append(args, "--etcd-listen-client", urls[0], "--etcd-listen-peer", urls[1])
			}
			for _, a := range tt.args {
				if a == "D" {
					a = dir
				}
				args = append(args, a)
			}
			var stdout, stderr syncBuffer
			hup := make(chan os.Signal)
			code := run(context.Background(), args, &stdout, &stderr, hup)
			if code != tt.code || !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("exit %d, want %d; stderr does not say %q:\n%s", code, tt.code, tt.want, stderr.String())
			}
			if stdout.String() != "" {
				t.Fatalf("stdout = %q, want nothing", stdout.String())
			}
		})
	}
}

// httpsURLs are etcdtest.FreeURLs for a secure member.
func httpsURLs(t *testing.T, n int) []string {
	urls := etcdtest.FreeURLs(t, n)
	for i, u := range urls {
		urls[i] = "https" + strings.TrimPrefix(u, "http")
	}
	return urls
}

// With no endpoints it runs its own etcd member, secure by default, which
// enrolled agents reach on --etcd-listen-client; SIGHUP reads the tokens
// file again.
func TestRunEmbedded(t *testing.T) {
	urls := httpsURLs(t, 2)
	tokens := tokensFile(t)
	dataDir := t.TempDir()
	r := start(t, "--tokens-file", tokens, "--data-dir", dataDir, "--listen", "127.0.0.1:0",
		"--etcd-listen-client", urls[0], "--etcd-listen-peer", urls[1], "--prefix", "/cp-test/", "--name", "cp1")
	if !strings.HasPrefix(r.url, "http://127.0.0.1:") {
		t.Fatalf("API URL %q", r.url)
	}
	c := &http.Client{}
	if code, body := call(t, c, "GET", r.url+"/readyz", "", ""); code != 200 {
		t.Fatalf("/readyz: %d %s", code, body)
	}
	if code, body := call(t, c, "PUT", r.url+"/v1/rulesets/web", operatorToken, ruleSetYAML); code != 201 {
		t.Fatalf("PUT: %d %s", code, body)
	}
	// An enrolled agent's view: the version under the prefix, on the
	// member's URL, with the bundle enrollment returned; and nothing
	// without a certificate.
	code, body := call(t, c, "POST", r.url+"/v1/hosts/web-1/enrollment", adminToken, `{"labels": {"role": "web"}}`)
	if code != 200 {
		t.Fatalf("enroll web-1: %d %s", code, body)
	}
	var bundle proto.EnrollResponse
	if err := json.Unmarshal([]byte(body), &bundle); err != nil {
		t.Fatal(err)
	}
	if len(bundle.Endpoints) != 1 || bundle.Endpoints[0] != urls[0] {
		t.Fatalf("enrollment tells agents etcd is at %v, want %s", bundle.Endpoints, urls[0])
	}
	bdir := t.TempDir()
	writeFile(t, bdir, "host.crt", bundle.CertPEM)
	writeFile(t, bdir, "host.key", bundle.KeyPEM)
	writeFile(t, bdir, "ca.crt", bundle.CAPEM)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	agent, err := etcdstore.Open(etcdstore.ClientConfig{Endpoints: bundle.Endpoints, CertFile: filepath.Join(bdir, "host.crt"),
		KeyFile: filepath.Join(bdir, "host.key"), CAFile: filepath.Join(bdir, "ca.crt")}, proto.NewKeys("/cp-test/"))
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	if kv, _, err := agent.GetAt(ctx, "/cp-test/rulesets/web/versions/1", 0); err != nil || kv == nil {
		t.Fatalf("version 1 through the embedded member, as web-1: %v %v", kv, err)
	}
	if _, _, err := agent.CommitIf(ctx, nil, []etcdstore.Write{etcdstore.Put("/cp-test/rulesets/web/head", []byte("{}"))}); err == nil {
		t.Fatal("web-1 rewrote a rule set's head")
	}
	stranger, err := etcdstore.Open(etcdstore.ClientConfig{Endpoints: bundle.Endpoints, CAFile: filepath.Join(bdir, "ca.crt")}, proto.NewKeys("/cp-test/"))
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	defer scancel()
	if err := stranger.Ping(sctx); err == nil {
		t.Fatal("a client with no certificate reads the embedded member")
	}
	if _, err := os.Stat(filepath.Join(dataDir, "pki", "ca.key")); err != nil {
		t.Fatalf("the CA is not in <data-dir>/pki: %v", err)
	}

	// SIGHUP: the operator token goes, a new viewer comes.
	writeFile(t, filepath.Dir(tokens), "tokens.yaml", "tokens: [{name: alice, role: admin, token: "+adminToken+"}, {name: v, role: viewer, token: new-viewer-token-0123456789}]")
	r.hup <- syscall.SIGHUP
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, _ := call(t, c, "GET", r.url+"/v1/rulesets", "new-viewer-token-0123456789", "")
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new token is refused 10s after SIGHUP (%d); stderr:\n%s", code, r.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, _ := call(t, c, "GET", r.url+"/v1/rulesets", operatorToken, ""); code != 401 {
		t.Fatalf("the removed token: %d, want 401", code)
	}
	// A bad file keeps the tokens in use.
	writeFile(t, filepath.Dir(tokens), "tokens.yaml", "tokens: [{name: x, role: wizard, token: y}]")
	r.hup <- syscall.SIGHUP
	deadline = time.Now().Add(10 * time.Second)
	for !strings.Contains(r.stderr.String(), "tokens file not reloaded") {
		if time.Now().After(deadline) {
			t.Fatalf("no log of the refused reload; stderr:\n%s", r.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, _ := call(t, c, "GET", r.url+"/v1/rulesets", "new-viewer-token-0123456789", ""); code != 200 {
		t.Fatalf("after a bad reload: %d, want the tokens in use kept", code)
	}

	if code := r.stop(t); code != exitOK {
		t.Fatalf("exit %d, want 0; stderr:\n%s", code, r.stderr.String())
	}
	logs := r.stderr.String()
	for _, want := range []string{`"msg":"ready"`, `"msg":"stopping on a signal"`, `"msg":"embedded etcd member stopped"`, `"msg":"stopped"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", logs)
	}
}

// Two replicas over one external etcd serve the same data.
func TestRunReplicasShareEtcd(t *testing.T) {
	srv := etcdtest.Start(t)
	tokens := tokensFile(t)
	args := []string{"--tokens-file", tokens, "--etcd-endpoints", strings.Join(srv.Endpoints(), ","), "--listen", "127.0.0.1:0"}
	r1 := start(t, append(args, "--name", "cp1")...)
	r2 := start(t, append(args, "--name", "cp2")...)
	c := &http.Client{}
	if code, body := call(t, c, "PUT", r1.url+"/v1/rulesets/web", operatorToken, ruleSetYAML); code != 201 {
		t.Fatalf("PUT through replica 1: %d %s", code, body)
	}
	code, body := call(t, c, "GET", r2.url+"/v1/rulesets/web", operatorToken, "")
	var v proto.RuleSetVersion
	if code != 200 || json.Unmarshal(body, &v) != nil || v.Version != 1 {
		t.Fatalf("GET through replica 2: %d %s", code, body)
	}
	// Replica 2 sees what replica 1 wrote: creating it again is a
	// conflict, writing on top of version 1 is not.
	if code, body := call(t, c, "PUT", r2.url+"/v1/rulesets/web", operatorToken, ruleSetYAML, "If-Match", "0"); code != 409 {
		t.Fatalf("PUT If-Match 0 through replica 2: %d %s", code, body)
	}
	if code, body := call(t, c, "PUT", r2.url+"/v1/rulesets/web", operatorToken, ruleSetYAML, "If-Match", "1"); code != 200 {
		t.Fatalf("PUT If-Match 1 through replica 2: %d %s", code, body)
	}
	for _, r := range []*replica{r1, r2} {
		if code := r.stop(t); code != exitOK {
			t.Fatalf("exit %d; stderr:\n%s", code, r.stderr.String())
		}
	}
}

// certs is a test CA with a server and a client certificate.
type certs struct {
	dir                       string
	ca, serverCert, serverKey string
	clientCert, clientKey     string
	pool                      *x509.CertPool
	clientPair                tls.Certificate
}

func newCerts(t *testing.T) *certs {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "xdpfw test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	c := &certs{dir: dir, pool: x509.NewCertPool()}
	c.pool.AddCert(caCert)
	c.ca = writeFile(t, dir, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})))
	issue := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return writeFile(t, dir, name+".pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))),
			writeFile(t, dir, name+"-key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})))
	}
	c.serverCert, c.serverKey = issue("server", 2, x509.ExtKeyUsageServerAuth)
	c.clientCert, c.clientKey = issue("client", 3, x509.ExtKeyUsageClientAuth)
	c.clientPair, err = tls.LoadX509KeyPair(c.clientCert, c.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRunTLS(t *testing.T) {
	srv := etcdtest.Start(t)
	c := newCerts(t)
	base := []string{"--tokens-file", tokensFile(t), "--etcd-endpoints", strings.Join(srv.Endpoints(), ","), "--listen", "127.0.0.1:0",
		"--tls-cert", c.serverCert, "--tls-key", c.serverKey}

	t.Run("https", func(t *testing.T) {
		r := start(t, base...)
		if !strings.HasPrefix(r.url, "https://127.0.0.1:") {
			t.Fatalf("API URL %q, want https", r.url)
		}
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool}}}
		if code, body := call(t, client, "GET", r.url+"/v1/rulesets", operatorToken, ""); code != 200 {
			t.Fatalf("GET over https: %d %s", code, body)
		}
		if code := r.stop(t); code != exitOK {
			t.Fatalf("exit %d", code)
		}
	})

	t.Run("mtls", func(t *testing.T) {
		r := start(t, append(base, "--client-ca", c.ca)...)
		noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool}}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", r.url+"/healthz", nil)
		if resp, err := noCert.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("a client with no certificate got %d, want the handshake refused", resp.StatusCode)
		}
		// The refusal is in the log, as JSON at warn level.
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(r.stderr.String(), "TLS handshake error") {
			if time.Now().After(deadline) {
				t.Fatalf("the refused handshake is not logged:\n%s", r.stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		// A certificate of another CA is refused too.
		other := newCerts(t)
		wrongCA := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool, Certificates: []tls.Certificate{other.clientPair}}}}
		req, _ = http.NewRequestWithContext(ctx, "GET", r.url+"/healthz", nil)
		if resp, err := wrongCA.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("a client certificate of another CA got %d", resp.StatusCode)
		}
		withCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool, Certificates: []tls.Certificate{c.clientPair}}}}
		if code, body := call(t, withCert, "GET", r.url+"/v1/rulesets", operatorToken, ""); code != 200 {
			t.Fatalf("GET with a client certificate: %d %s", code, body)
		}
		// The certificate does not replace the token.
		if code, _ := call(t, withCert, "GET", r.url+"/v1/rulesets", "", ""); code != 401 {
			t.Fatalf("a client certificate without a token: %d, want 401", code)
		}
		if code := r.stop(t); code != exitOK {
			t.Fatalf("exit %d", code)
		}
	})
}

// The binary itself: built, started with an embedded etcd in a temp dir,
// serving, stopped by SIGTERM.
func TestBinaryStopsOnSIGTERM(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to build the binary: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "xdpfw-controlplane")
	if out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	urls := httpsURLs(t, 2)
	cmd := exec.Command(bin, "--tokens-file", tokensFile(t), "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0",
		"--etcd-listen-client", urls[0], "--etcd-listen-peer", urls[1])
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill() //nolint:errcheck // it has normally exited

	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- line
	}()
	var url string
	select {
	case line := <-lines:
		var ok bool
		url, ok = strings.CutPrefix(strings.TrimSpace(line), "xdpfw-controlplane: ready, API at http://127.0.0.1:")
		if !ok {
			t.Fatalf("stdout = %q, want the ready line; stderr:\n%s", line, stderr.String())
		}
		url = "http://127.0.0.1:" + url
	case <-time.After(60 * time.Second):
		t.Fatalf("no ready line after 60s; stderr:\n%s", stderr.String())
	}
	c := &http.Client{}
	if code, body := call(t, c, "PUT", url+"/v1/rulesets/web", operatorToken, ruleSetYAML); code != 201 {
		t.Fatalf("PUT: %d %s", code, body)
	}
	if code, body := call(t, c, "GET", url+"/v1/audit", adminToken, ""); code != 200 || !strings.Contains(string(body), `"who":"oscar"`) {
		t.Fatalf("audit: %d %s", code, body)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("still running 30s after SIGTERM")
	}
	logs := strings.TrimSpace(stderr.String())
	for _, l := range strings.Split(logs, "\n") {
		if !strings.HasPrefix(l, "{") {
			t.Fatalf("stderr line is not JSON: %q", l)
		}
	}
	if strings.Contains(logs, `"level":"error"`) {
		t.Fatalf("a clean stop logged errors:\n%s", logs)
	}
	for _, want := range []string{"stopping on a signal", `"msg":"stopped"`} {
		if !strings.Contains(logs, want) {
			t.Fatalf("log lacks %q:\n%s", want, logs)
		}
	}
	if _, err := net.DialTimeout("tcp", strings.TrimPrefix(url, "http://"), time.Second); err == nil {
		t.Fatal("the API still accepts connections after the exit")
	}
}

// leads reads a replica's xdpfw_controller_leader gauge.
func (r *replica) leads(t *testing.T) bool {
	t.Helper()
	code, body := call(t, &http.Client{}, "GET", r.url+"/metrics", "", "")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	switch {
	case strings.Contains(string(body), "\nxdpfw_controller_leader 1\n"):
		return true
	case strings.Contains(string(body), "\nxdpfw_controller_leader 0\n"):
		return false
	}
	t.Fatalf("/metrics has no xdpfw_controller_leader gauge:\n%s", body)
	return false
}

// waitLeader waits until exactly one of the replicas leads and returns it.
func waitLeader(t *testing.T, rs ...*replica) *replica {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var leaders []*replica
		for _, r := range rs {
			if r.leads(t) {
				leaders = append(leaders, r)
			}
		}
		if len(leaders) == 1 {
			return leaders[0]
		}
		if len(leaders) > 1 {
			t.Fatalf("%d replicas lead at once", len(leaders))
		}
		if time.Now().After(deadline) {
			t.Fatal("no replica leads after 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Replicas elect one rollout controller; the leader's stop hands over at
// once (it resigns), and the new leader moves rollouts on.
func TestRunControllerLeadership(t *testing.T) {
	srv := etcdtest.Start(t)
	args := []string{"--tokens-file", tokensFile(t), "--etcd-endpoints", strings.Join(srv.Endpoints(), ","), "--listen", "127.0.0.1:0",
		"--rollout-interval", "100ms"}
	r1 := start(t, append(args, "--name", "cp1")...)
	r2 := start(t, append(args, "--name", "cp2")...)
	leader := waitLeader(t, r1, r2)
	other := r1
	if leader == r1 {
		other = r2
	}
	// Stay with one leader for a while.
	for range 10 {
		if waitLeader(t, r1, r2) != leader {
			t.Fatal("leadership moved with both replicas up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopped := time.Now()
	if code := leader.stop(t); code != exitOK {
		t.Fatalf("leader exit %d; stderr:\n%s", code, leader.stderr.String())
	}
	if !strings.Contains(leader.stderr.String(), "rollout controller stopped (leadership resigned)") {
		t.Fatalf("the leader's log does not say its controller stopped:\n%s", leader.stderr.String())
	}
	if waitLeader(t, other) != other {
		t.Fatal("the other replica does not lead")
	}
	// A resigned leader hands over without waiting for its session to
	// expire (5s).
	if took := time.Since(stopped); took > 4*time.Second {
		t.Fatalf("the other replica took %s to lead", took)
	}

	// The new leader runs rollouts created through it.
	c := &http.Client{}
	if code, body := call(t, c, "PUT", other.url+"/v1/rulesets/web", operatorToken, ruleSetYAML); code != 201 {
		t.Fatalf("PUT: %d %s", code, body)
	}
	// A live host for the rollout (a rollout of no host is refused).
	status, _ := json.Marshal(proto.HostStatus{APIVersion: proto.APIVersion, Kind: proto.KindHostStatus, Host: "web-1", Applied: []proto.RuleSetRef{}})
	if _, err := etcdtest.Client(t, srv.Endpoints()).Put(context.Background(), proto.NewKeys("").HostStatus("web-1"), string(status)); err != nil {
		t.Fatal(err)
	}
	code, body := call(t, c, "POST", other.url+"/v1/rollouts", operatorToken, `{"ruleset": "web", "version": 1}`)
	var ro proto.Rollout
	if code != 201 || json.Unmarshal(body, &ro) != nil {
		t.Fatalf("POST /v1/rollouts: %d %s", code, body)
	}
	otherName := "cp1"
	if other == r2 {
		otherName = "cp2"
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := call(t, c, "GET", other.url+"/v1/rollouts/"+ro.ID, operatorToken, "")
		if code != 200 || json.Unmarshal(body, &ro) != nil {
			t.Fatalf("GET rollout: %d %s", code, body)
		}
		if ro.Status.Controller == otherName {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the leader did not move the rollout on in 30s: %+v", ro.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// --insecure-etcd runs the member on plain HTTP with no authentication,
// and says so where an operator looks.
func TestRunInsecureEtcdWarns(t *testing.T) {
	urls := etcdtest.FreeURLs(t, 2)
	r := start(t, "--tokens-file", tokensFile(t), "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--insecure-etcd",
		"--etcd-listen-client", urls[0], "--etcd-listen-peer", urls[1])
	if !strings.Contains(r.stderr.String(), "WARNING: etcd at "+urls[0]+" has no TLS and no authentication") {
		t.Errorf("no warning of the insecure member; stderr:\n%s", r.stderr.String())
	}
	cli := etcdtest.Client(t, []string{urls[0]})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/anyone/can", "write"); err != nil {
		t.Fatalf("a plain client of the insecure member: %v", err)
	}
	if code := r.stop(t); code != exitOK {
		t.Fatalf("exit %d; stderr:\n%s", code, r.stderr.String())
	}
}
