package rollout

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"

	"github.com/xdpfw/xdpfw/proto"
)

// bigRuleSet is a rule set whose set of n prefixes is stored as chunks.
func bigRuleSet(name string, n, salt int) proto.RuleSet {
	rs := ruleSet(name, nil, 22)
	prefixes := make([]string, n)
	for i := range prefixes {
		prefixes[i] = fmt.Sprintf("10.%d.%d.%d/32", salt, i/256, i%256)
	}
	rs.Sets = map[string]proto.PrefixSet{"big": {Prefixes: prefixes}}
	rs.Rules[0].Src = []string{"set:big"}
	return rs
}

func TestStorageCollector(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	// edge: 12 versions; a host is given v2 and reports v3 applied; v4 is
	// released; a finished rollout could return a host to v5.
	e.putVersions("edge", nil, 12)
	e.release("edge", 4)
	d := proto.NewHostDesired(proto.RuleSetRef{Name: "edge", Version: 2})
	if _, err := e.store.SetDesired(ctx, "h1", d.RuleSets); err != nil {
		t.Fatal(err)
	}
	st, _ := json.Marshal(proto.HostStatus{APIVersion: proto.APIVersion, Kind: proto.KindHostStatus, Host: "h1",
		Applied: []proto.RuleSetRef{{Name: "edge", Version: 3}}})
	if _, err := e.cli.Put(ctx, e.keys.HostStatus("h1"), string(st)); err != nil {
		t.Fatal(err)
	}
	rs, _ := json.Marshal(proto.RolloutState{State: proto.RolloutAborted, Hosts: map[string]proto.RolloutHost{"h1": {Previous: 5}}})
	sp, _ := json.Marshal(proto.RolloutSpec{RuleSet: "edge", Version: 12, Waves: []string{"100%"}})
	for k, v := range map[string]string{e.keys.RolloutSpec("r1"): string(sp), e.keys.RolloutState("r1"): string(rs),
		e.keys.RolloutControl("r1"): `{"want":"abort"}`} {
		if _, err := e.cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	// big: v1 and v2 share no chunk; v3 drops both; only v3's chunks are
	// named once v1 and v2 go.
	for i := 1; i <= 3; i++ {
		if _, _, err := e.store.PutRuleSet(ctx, bigRuleSet("big", 5000, i), -1); err != nil {
			t.Fatal(err)
		}
	}
	// Audit records: two old, one new.
	old := time.Now().Add(-48 * time.Hour)
	for _, at := range []time.Time{old, old.Add(time.Minute), time.Now()} {
		if _, _, err := e.store.PutAudit(ctx, proto.AuditRecord{At: at, Who: "alice", Action: "PUT /v1/rulesets/edge"}); err != nil {
			t.Fatal(err)
		}
	}

	export := filepath.Join(t.TempDir(), "audit.jsonl")
	g, err := newCollector(e.store, GCOptions{KeepVersions: 2, ChunkGrace: time.Hour, AuditRetention: 24 * time.Hour, AuditExport: export},
		zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	term, err := e.store.Campaign(ctx, e.keys.Election(), "gc-test", SessionTTL)
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	collect := func(now time.Time) GCStats {
		t.Helper()
		snap, err := newSnapshotReader(e.store, zaptest.NewLogger(t)).read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		stats, err := g.collect(ctx, term, snap, now)
		if err != nil {
			t.Fatal(err)
		}
		return stats
	}
	versions := func(name string) []int64 {
		t.Helper()
		vs, err := e.store.Versions(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return vs
	}
	chunkCount := func() int {
		resp, err := e.cli.Get(ctx, e.keys.Chunks(), clientv3WithPrefixCount()...)
		if err != nil {
			t.Fatal(err)
		}
		return int(resp.Count)
	}

	chunksBefore := chunkCount()
	now := time.Now()
	stats := collect(now)
	if got, want := fmt.Sprint(versions("edge")), "[2 3 4 5 11 12]"; got != want {
		t.Errorf("edge's versions after collection: %s, want %s (the newest 2; desired, applied, released, a rollout's previous and its version)", got, want)
	}
	if got, want := fmt.Sprint(versions("big")), "[2 3]"; got != want {
		t.Errorf("big's versions: %s, want %s", got, want)
	}
	if stats.Chunks != 0 || chunkCount() != chunksBefore {
		t.Errorf("chunks deleted before the grace period passed: %+v", stats)
	}
	if stats.AuditRecords != 2 {
		t.Errorf("audit records collected: %d, want the 2 older than a day", stats.AuditRecords)
	}
	recs, err := e.store.AuditRecords(ctx, 10)
	if err != nil || len(recs) != 1 {
		t.Fatalf("audit records left: %d, %v; want the new one", len(recs), err)
	}
	f, err := os.Open(export)
	if err != nil {
		t.Fatal(err)
	}
	lines := 0
	for sc := bufio.NewScanner(f); sc.Scan(); lines++ {
		var line struct {
			Key    string
			Record proto.AuditRecord
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil || line.Record.Who != "alice" {
			t.Fatalf("export line %d: %s (%v)", lines, sc.Text(), err)
		}
	}
	f.Close()
	if lines != 2 {
		t.Fatalf("%d lines exported, want 2", lines)
	}

	// A grace period later, the chunks only v1 named go; v2's and v3's
	// stay (v2 is among the newest 2).
	stats = collect(now.Add(2 * time.Hour))
	if stats.Chunks == 0 {
		t.Fatalf("no chunk collected after the grace period: %+v", stats)
	}
	got, _, err := e.store.GetRuleSet(ctx, "big", 2)
	if err != nil || len(got.Sets["big"].Prefixes) != 5000 {
		t.Fatalf("version 2 of big after collection: %v", err)
	}
	if chunkCount() != chunksBefore-stats.Chunks {
		t.Fatalf("%d chunks left, want %d", chunkCount(), chunksBefore-stats.Chunks)
	}

	// A write reusing chunks guards on the collector's epoch: one that
	// read the epoch before a collection stores its chunks again.
	if _, _, err := e.store.PutRuleSet(ctx, bigRuleSet("big", 5000, 1), -1); err != nil {
		t.Fatalf("a version of big equal to its collected version 1: %v", err)
	}
	got, _, err = e.store.GetRuleSet(ctx, "big", 4)
	if err != nil || len(got.Sets["big"].Prefixes) != 5000 {
		t.Fatalf("version 4 of big (v1's chunks again): %v", err)
	}
}

func TestCollectorNeedsAnExportForAuditRetention(t *testing.T) {
	if _, err := newCollector(nil, GCOptions{AuditRetention: time.Hour}, nil); err == nil {
		t.Fatal("audit retention without an export file was accepted: records would be deleted unexported")
	}
}

func clientv3WithPrefixCount() []clientv3.OpOption {
	return []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCountOnly()}
}
