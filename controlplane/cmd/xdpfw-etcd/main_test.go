package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
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

func TestRunServesUntilSignalled(t *testing.T) {
	urls := etcdtest.FreeURLs(t, 2)
	m := startMember("--name", "solo", "--data-dir", t.TempDir(), "--listen-client", urls[0], "--listen-peer", urls[1])
	line := m.waitReady(t)
	if want := "xdpfw-etcd: ready, clients at " + urls[0] + "\n"; line != want {
		t.Fatalf("stdout = %q, want %q", line, want)
	}
	cli := etcdtest.Client(t, []string{urls[0]})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	if code := m.stop(t); code != exitOK {
		t.Fatalf("exit %d after a signal, want 0; stderr:\n%s", code, m.stderr.String())
	}
	if out := m.stdout.String(); out != line {
		t.Fatalf("stdout holds more than the ready line: %q", out)
	}
}

func TestRunThreeMembers(t *testing.T) {
	var members []*member
	var cluster, clients []string
	urls := etcdtest.FreeURLs(t, 6)
	for i := range 3 {
		cluster = append(cluster, fmt.Sprintf("m%d=%s", i+1, urls[2*i+1]))
		clients = append(clients, urls[2*i])
	}
	for i := range 3 {
		members = append(members, startMember(
			"--name", fmt.Sprintf("m%d", i+1), "--data-dir", t.TempDir(),
			"--listen-client", urls[2*i], "--listen-peer", urls[2*i+1],
			"--initial-cluster", strings.Join(cluster, ",")))
	}
	for _, m := range members {
		m.waitReady(t)
	}
	cli := etcdtest.Client(t, clients)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Members) != 3 {
		t.Fatalf("%d members, want 3", len(resp.Members))
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
		{"port in use", []string{"--data-dir", "D", "--listen-client", "http://" + busy.Addr().String()}, exitError, "address already in use"},
		{"no quorum", []string{"--data-dir", "D", "--name", "a", "--start-timeout", "1s",
			"--initial-cluster", "a=PEER,b=http://127.0.0.1:1"}, exitError, "waiting for the cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			urls := etcdtest.FreeURLs(t, 2)
			dir := t.TempDir()
			args := []string{"--listen-client", urls[0], "--listen-peer", urls[1]}
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
	urls := etcdtest.FreeURLs(t, 2)
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
