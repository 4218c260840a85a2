package etcdserver_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/xdpfw/xdpfw/controlplane/etcdserver"
	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
)

func putGet(t *testing.T, cli *clientv3.Client, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, value); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	expectValue(t, cli, key, value)
}

func expectValue(t *testing.T, cli *clientv3.Client, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != value {
		t.Fatalf("get %s: got %v, want one key of value %q", key, resp.Kvs, value)
	}
}

func TestSingleMember(t *testing.T) {
	cfg := etcdtest.Config(t, "solo")
	ctx, cancel := context.WithTimeout(context.Background(), etcdtest.StartTimeout)
	defer cancel()
	s, err := etcdserver.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.Endpoints(); len(got) != 1 || got[0] != cfg.ClientURLs[0] {
		t.Fatalf("Endpoints() = %v, want %v", got, cfg.ClientURLs)
	}
	cli := etcdtest.Client(t, s.Endpoints())
	putGet(t, cli, "/k", "v")

	// The periodic compactor is on: the member reports no error and the
	// client sees a single-member cluster.
	mctx, mcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer mcancel()
	members, err := cli.MemberList(mctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(members.Members) != 1 || members.Members[0].Name != "solo" {
		t.Fatalf("members = %v, want one named solo", members.Members)
	}
	select {
	case err := <-s.Err():
		t.Fatalf("Err() reported %v on a healthy member", err)
	default:
	}

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	select {
	case err, ok := <-s.Err():
		if ok {
			t.Fatalf("Err() after Close delivered %v, want a closed channel", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Err() not closed by Close")
	}
}

// A member restarted on the same data dir keeps its data: the binary is
// restarted by the integration harness and by systemd.
func TestRestartKeepsData(t *testing.T) {
	cfg := etcdtest.Config(t, "again")
	ctx, cancel := context.WithTimeout(context.Background(), etcdtest.StartTimeout)
	defer cancel()
	s, err := etcdserver.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cli := etcdtest.Client(t, s.Endpoints())
	putGet(t, cli, "/kept", "yes")
	s.Close()

	s, err = etcdserver.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	defer s.Close()
	expectValue(t, etcdtest.Client(t, s.Endpoints()), "/kept", "yes")
}

func TestThreeMembersSurviveLosingTheLeader(t *testing.T) {
	var cfgs []etcdserver.Config
	var peers []string
	for i := range 3 {
		cfg := etcdtest.Config(t, fmt.Sprintf("m%d", i+1))
		cfgs = append(cfgs, cfg)
		peers = append(peers, cfg.Name+"="+cfg.PeerURLs[0])
	}
	var endpoints []string
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(peers, ",")
		endpoints = append(endpoints, cfgs[i].ClientURLs[0])
	}

	// Every member waits for a quorum, so they must start together.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	servers := make([]*etcdserver.Server, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range cfgs {
		wg.Go(func() { servers[i], errs[i] = etcdserver.Start(ctx, cfgs[i]) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("member %d: %v", i+1, err)
		}
		t.Cleanup(func() { servers[i].Close() })
	}

	cli := etcdtest.Client(t, endpoints)
	putGet(t, cli, "/before", "1")

	// Close the leader: the worst member to lose.
	leader := -1
	for i, ep := range endpoints {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := cli.Status(sctx, ep)
		scancel()
		if err != nil {
			t.Fatalf("status of %s: %v", ep, err)
		}
		if st.Header.MemberId == st.Leader {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no member says it is the leader")
	}
	if err := servers[leader].Close(); err != nil {
		t.Fatal(err)
	}

	var rest []string
	for i, ep := range endpoints {
		if i != leader {
			rest = append(rest, ep)
		}
	}
	cli2 := etcdtest.Client(t, rest)
	// A new leader is elected within an election timeout or two.
	deadline := time.Now().Add(20 * time.Second)
	for {
		pctx, pcancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli2.Put(pctx, "/after", "2")
		pcancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("two of three members still refuse writes: %v", err)
		}
	}
	expectValue(t, cli2, "/before", "1")
	expectValue(t, cli2, "/after", "2")
	for i, s := range servers {
		if i == leader {
			continue
		}
		select {
		case err := <-s.Err():
			t.Fatalf("member %d reported %v after losing a peer", i+1, err)
		default:
		}
	}
}

func TestStartErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	tests := []struct {
		name   string
		change func(*etcdserver.Config)
		want   string
	}{
		{"no data dir", func(c *etcdserver.Config) { c.DataDir = "" }, "no data dir"},
		{"data dir under a file", func(c *etcdserver.Config) { c.DataDir = filepath.Join(file, "etcd") }, "data dir " + file},
		{"bad cluster state", func(c *etcdserver.Config) { c.ClusterState = "old" }, `cluster state "old"`},
		{"port 0", func(c *etcdserver.Config) { c.ClientURLs = []string{"http://127.0.0.1:0"} }, "port 0"},
		{"no scheme", func(c *etcdserver.Config) { c.PeerURLs = []string{"127.0.0.1:2380"} }, "want http(s)://HOST:PORT"},
		{"bad log level", func(c *etcdserver.Config) { c.LogLevel = "loud" }, `log level "loud"`},
		{"client port in use", func(c *etcdserver.Config) { c.ClientURLs = []string{"http://" + busy.Addr().String()} }, "address already in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := etcdtest.Config(t, "bad")
			tt.change(&cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := etcdserver.Start(ctx, cfg)
			if err == nil {
				s.Close()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not say %q", err, tt.want)
			}
		})
	}
}

// A member whose peers never come up fails when ctx ends, saying what it
// waited for, and leaves nothing listening.
func TestStartTimesOutWithoutQuorum(t *testing.T) {
	cfg := etcdtest.Config(t, "lonely")
	absent := etcdtest.FreeURLs(t, 1)[0]
	cfg.InitialCluster = "lonely=" + cfg.PeerURLs[0] + ",absent=" + absent
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	s, err := etcdserver.Start(ctx, cfg)
	if err == nil {
		s.Close()
		t.Fatal("Start succeeded without a quorum")
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "absent="+absent) {
		t.Fatalf("error %q: want a deadline naming the cluster", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("Start took %v to give up", d)
	}
	l, err := net.Listen("tcp", strings.TrimPrefix(cfg.ClientURLs[0], "http://"))
	if err != nil {
		t.Fatalf("client port still taken after a failed start: %v", err)
	}
	l.Close()
}

// A clean stop logs no errors (embed logs each listener it closes as a
// failure); a start that fails does log why.
func TestCloseLogsNoErrors(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	cfg := etcdtest.Config(t, "quiet")
	cfg.Logger = zap.New(core)
	ctx, cancel := context.WithTimeout(context.Background(), etcdtest.StartTimeout)
	defer cancel()
	s, err := etcdserver.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	putGet(t, etcdtest.Client(t, s.Endpoints()), "/k", "v")
	s.Close()
	for _, e := range logs.All() {
		if e.Level >= zapcore.ErrorLevel {
			t.Errorf("clean stop logged %s: %s %v", e.Level, e.Message, e.ContextMap())
		}
		if e.Level < zapcore.WarnLevel {
			t.Errorf("etcd logged at %s, below the default warn: %s", e.Level, e.Message)
		}
	}
}
