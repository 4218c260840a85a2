package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// startForDefrag runs a member on loopback ports that were free a moment
// ago (etcdtest cannot be used from inside the package it imports).
func startForDefrag(t *testing.T) (*Server, *clientv3.Client) {
	t.Helper()
	var urls []string
	var ls []net.Listener
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		urls = append(urls, "http://"+l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	cfg := Config{Name: "defrag", DataDir: t.TempDir(), ClientURLs: urls[:1], PeerURLs: urls[1:],
		Logger: zap.NewNop(), DefragInterval: -1}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	cli, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return s, cli
}

func TestDefragmentsWhenHalfTheFileIsFree(t *testing.T) {
	s, cli := startForDefrag(t)
	ctx := context.Background()
	// 40 MB of values, overwritten once and compacted: the old half of the
	// pages is free inside the file, which keeps its size.
	val := strings.Repeat("x", 1<<20)
	var rev int64
	for round := range 2 {
		for i := range 20 {
			resp, err := cli.Put(ctx, fmt.Sprintf("/k/%d", i), val+strconv.Itoa(round))
			if err != nil {
				t.Fatal(err)
			}
			rev = resp.Header.Revision
		}
	}
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	be := s.etcd.Server.Backend()
	before := be.Size()
	if s.maybeDefrag(1<<40, zap.NewNop()) {
		t.Fatal("defragmented with less free space than the minimum")
	}
	if !s.maybeDefrag(8<<20, zap.NewNop()) {
		t.Fatalf("no defragmentation: size %d, in use %d", be.Size(), be.SizeInUse())
	}
	if after := be.Size(); after >= before*3/4 {
		t.Fatalf("database file %d bytes after defragmentation, %d before: not smaller", after, before)
	}
	for i := range 20 {
		resp, err := cli.Get(ctx, fmt.Sprintf("/k/%d", i))
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != val+"1" {
			t.Fatalf("key %d after defragmentation: %v %v", i, resp, err)
		}
	}
}

// A read its client cancels is not logged as an error by the member; any
// other readonly-txn error still is.
func TestCancelledReadsAreNotErrors(t *testing.T) {
	var out strings.Builder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&out), zapcore.WarnLevel)
	lg := zap.New(closingFilter{core, new(atomic.Bool)})
	lg.Error(cancelledTxn, zap.Error(errors.New("applyTxn: failed Range: rangeKeys: context cancelled: context canceled")))
	if out.Len() != 0 {
		t.Fatalf("a cancelled read was logged: %s", out.String())
	}
	lg.Error(cancelledTxn, zap.Error(errors.New("applyTxn: failed Range: mvcc: database space exceeded")))
	lg.Error("something else", zap.Error(errors.New("context canceled")))
	if n := strings.Count(out.String(), "\n"); n != 2 {
		t.Fatalf("want the other two errors logged, got:\n%s", out.String())
	}
}
