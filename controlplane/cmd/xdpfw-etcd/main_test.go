package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/controlplane/pki"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

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

// member is one run() in a goroutine.
type member struct {
	stdout, stderr syncBuffer
	cancel         context.CancelFunc
	code           chan int
}

func startMember(args ...string) *member {
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{cancel: cancel, code: make(chan int, 1)}
	go func() { m.code <- run(ctx, args, &m.stdout, &m.stderr) }()
	return m
}

// waitReady waits for the ready line and returns it.
func (m *member) waitReady(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if out := m.stdout.String(); strings.HasSuffix(out, "\n") {
			return out
		}
		select {
		case code := <-m.code:
			t.Fatalf("exited %d before it was ready; stderr:\n%s", code, m.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("no ready line after 60s; stderr:\n%s", m.stderr.String())
	return ""
}

// stop cancels run's context, as a signal does, and returns its exit code.
func (m *member) stop(t *testing.T) int {
	t.Helper()
	m.cancel()
	select {
	case code := <-m.code:
		return code
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return 30s after the signal")
		return -1
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

// rootClient is a client of endpoints with the root certificate in a
// member's PKI directory.
func rootClient(t *testing.T, pkiDir string, endpoints []string) *etcdstore.Store {
	t.Helper()
	st, err := etcdstore.Open(etcdstore.ClientConfig{Endpoints: endpoints, CertFile: filepath.Join(pkiDir, pki.RootCertFile),
		KeyFile: filepath.Join(pkiDir, pki.RootKeyFile), CAFile: filepath.Join(pkiDir, pki.CACertFile)}, proto.NewKeys(""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestRunServesUntilSignalled(t *testing.T) {
	urls := httpsURLs(t, 2)
	dataDir := t.TempDir()
	m := startMember("--name", "solo", "--data-dir", dataDir, "--listen-client", urls[0], "--listen-peer", urls[1], "--log-level", "info")
	line := m.waitReady(t)
	if want := "xdpfw-etcd: ready, clients at " + urls[0] + "\n"; line != want {
		t.Fatalf("stdout = %q, want %q", line, want)
	}
	if !strings.Contains(m.stderr.String(), `"root_cert":"`+filepath.Join(dataDir, "pki", "root.crt")) {
		t.Errorf("stderr does not say which certificate the control plane uses:\n%s", m.stderr.String())
	}
	root := rootClient(t, filepath.Join(dataDir, "pki"), []string{urls[0]})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := root.CommitIf(ctx, nil, []etcdstore.Write{etcdstore.Put("/k", []byte("v"))}); err != nil {
		t.Fatalf("root writes: %v", err)
	}
	if on, err := root.AuthEnabled(ctx); err != nil || !on {
		t.Fatalf("etcd auth on: %v, %v; want on", on, err)
	}
	plain := etcdtest.Client(t, []string{"http" + strings.TrimPrefix(urls[0], "https")})
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	defer pcancel()
	if _, err := plain.Put(pctx, "/k", "plain"); err == nil {
		t.Fatal("a plain-HTTP client wrote to the secure member")
	}
	if code := m.stop(t); code != exitOK {
		t.Fatalf("exit %d after a signal, want 0; stderr:\n%s", code, m.stderr.String())
	}
	if out := m.stdout.String(); out != line {
		t.Fatalf("stdout holds more than the ready line: %q", out)
	}
}

// Three secure members sharing one CA (created by the first, copied to
// the others as an operator would) form a cluster with auth on.
func TestRunThreeMembers(t *testing.T) {
	var members []*member
	var cluster, clients []string
	urls := httpsURLs(t, 6)
	for i := range 3 {
		cluster = append(cluster, fmt.Sprintf("m%d=%s", i+1, urls[2*i+1]))
		clients = append(clients, urls[2*i])
	}
	first := filepath.Join(t.TempDir(), "pki")
	if _, err := pki.LoadOrCreateCA(first, "test CA"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		dir := t.TempDir()
		if i > 0 {
			for _, f := range []string{pki.CACertFile, pki.CAKeyFile} {
				data, err := os.ReadFile(filepath.Join(first, f))
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(dir, "pki"), f, data)
			}
		}
		pkiDir := filepath.Join(dir, "pki")
		if i == 0 {
			pkiDir = first
		}
		members = append(members, startMember(
			"--name", fmt.Sprintf("m%d", i+1), "--data-dir", dir, "--pki-dir", pkiDir,
			"--listen-client", urls[2*i], "--listen-peer", urls[2*i+1],
			"--initial-cluster", strings.Join(cluster, ",")))
	}
	for _, m := range members {
		m.waitReady(t)
	}
	root := rootClient(t, first, clients)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := root.CommitIf(ctx, nil, []etcdstore.Write{etcdstore.Put("/k", []byte("v"))}); err != nil {
		t.Fatalf("root writes to the cluster: %v", err)
	}
	if on, err := root.AuthEnabled(ctx); err != nil || !on {
		t.Fatalf("etcd auth on: %v, %v; want on", on, err)
	}
	for i, m := range members {
		if code := m.stop(t); code != exitOK {
			t.Fatalf("member %d exit %d; stderr:\n%s", i+1, code, m.stderr.String())
		}
	}
}

func TestRunFailures(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no data dir", nil, exitUsage, "--data-dir is required"},
		{"bad state", []string{"--data-dir", "D", "--initial-cluster-state", "old"}, exitUsage, `--initial-cluster-state "old"`},
		{"bad level", []string{"--data-dir", "D", "--log-level", "loud"}, exitUsage, `--log-level "loud"`},
		{"bad flag", []string{"--data-dir", "D", "--nope"}, exitUsage, "flag provided but not defined"},
		{"extra argument", []string{"--data-dir", "D", "extra"}, exitUsage, `unexpected argument "extra"`},
		{"port in use", []string{"--data-dir", "D", "--listen-client", "https://" + busy.Addr().String()}, exitError, "address already in use"},
		{"plain HTTP without --insecure", []string{"--data-dir", "D", "--listen-client", "http://127.0.0.1:2379"}, exitUsage, "--insecure runs it on plain http://"},
		{"https with --insecure", []string{"--data-dir", "D", "--insecure", "--listen-client", "https://127.0.0.1:2379", "--listen-peer", "http://127.0.0.1:2380"}, exitUsage, "with --insecure the member serves http://"},
		{"no quorum", []string{"--data-dir", "D", "--name", "a", "--start-timeout", "1s",
			"--initial-cluster", "a=PEER,b=http://127.0.0.1:1"}, exitError, "waiting for the cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			urls := httpsURLs(t, 2)
			dir := t.TempDir()
			var args []string
			if !strings.Contains(strings.Join(tt.args, " "), "--listen-client") {
				args = []string{"--listen-client", urls[0], "--listen-peer", urls[1]}
			} else if !strings.Contains(strings.Join(tt.args, " "), "--listen-peer") {
				args = []string{"--listen-peer", urls[1]}
			}
			for _, a := range tt.args {
				a = strings.ReplaceAll(a, "PEER", urls[1])
				if a == "D" {
					a = dir
				}
				args = append(args, a)
			}
			var stdout, stderr syncBuffer
			code := run(context.Background(), args, &stdout, &stderr)
			if code != tt.code || !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("exit %d, want %d; stderr does not say %q:\n%s", code, tt.code, tt.want, stderr.String())
			}
			if stdout.String() != "" {
				t.Fatalf("stdout = %q, want nothing", stdout.String())
			}
		})
	}
}

// The integration harness runs the binary and stops it with SIGTERM: build
// it and do the same.
func TestBinaryStopsOnSIGTERM(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to build the binary: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "xdpfw-etcd")
	if out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	urls := httpsURLs(t, 2)
	cmd := exec.Command(bin, "--data-dir", t.TempDir(), "--listen-client", urls[0], "--listen-peer", urls[1], "--log-level", "info")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- line
	}()
	select {
	case line := <-lines:
		if want := "xdpfw-etcd: ready, clients at " + urls[0] + "\n"; line != want {
			t.Fatalf("stdout = %q, want %q; stderr:\n%s", line, want, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("no ready line after 60s; stderr:\n%s", stderr.String())
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
	// The log is JSON lines and says it stopped on the signal.
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if !strings.HasPrefix(l, "{") {
			t.Fatalf("stderr line is not JSON: %q", l)
		}
	}
	if strings.Contains(stderr.String(), `"level":"error"`) {
		t.Fatalf("a clean stop logged errors:\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "stopping on a signal") {
		t.Fatalf("log does not say it stopped on the signal:\n%s", stderr.String())
	}
}

func writeFile(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
		t.Fatal(err)
	}
}
