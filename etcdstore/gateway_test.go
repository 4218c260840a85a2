package etcdstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/xdpfw/xdpfw/proto"
)

// chunkOf encodes prefixes as a stored chunk, with its hash.
func chunkOf(t *testing.T, prefixes ...string) proto.Chunk {
	t.Helper()
	chunks, err := proto.SplitChunks(prefixes)
	if err != nil || len(chunks) != 1 {
		t.Fatalf("SplitChunks(%v): %d chunks, %v", prefixes, len(chunks), err)
	}
	return chunks[0]
}

func TestChunkCacheFetchesOnceAndRefusesBadChunks(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	good := chunkOf(t, "198.18.0.0/24", "198.18.1.0/24")
	// Stored under the hash of other content: it does not match its key.
	forged := chunkOf(t, "198.18.2.0/24")
	// Its hash matches, but a prefix does not parse.
	badData := []byte("xdpfw-chunk v1\n198.18.3.0/33\n")
	sum := sha256.Sum256(badData)
	badPrefix := proto.Chunk{Hash: hex.EncodeToString(sum[:]), Data: badData}
	missing := chunkOf(t, "198.18.4.0/24")
	for key, data := range map[string][]byte{
		s.keys.Chunk(good.Hash): good.Data, s.keys.Chunk(forged.Hash): []byte("xdpfw-chunk v1\n198.19.0.0/16\n"),
		s.keys.Chunk(badPrefix.Hash): badPrefix.Data,
	} {
		if _, err := cli.Put(ctx, key, string(data)); err != nil {
			t.Fatal(err)
		}
	}

	c := s.NewChunkCache()
	need := []string{good.Hash, forged.Hash, badPrefix.Hash, missing.Hash, good.Hash}
	f, err := c.Fetch(ctx, need)
	if err != nil {
		t.Fatal(err)
	}
	if f.Read != 1 || len(f.Bad) != 2 || f.Bad[forged.Hash] == nil || f.Bad[badPrefix.Hash] == nil {
		t.Fatalf("first fetch: read %d, bad %v; want 1 read and the forged and bad-prefix chunks refused", f.Read, f.Bad)
	}
	if p, ok := c.Prefixes(good.Hash); !ok || !slices.Equal(p, []string{"198.18.0.0/24", "198.18.1.0/24"}) {
		t.Fatalf("good chunk: %v, %v", p, ok)
	}
	for _, h := range []string{forged.Hash, badPrefix.Hash, missing.Hash} {
		if _, ok := c.Prefixes(h); ok {
			t.Errorf("chunk %s cached, want left out", h[:8])
		}
	}
	if c.Err(forged.Hash) == nil || c.Err(missing.Hash) != nil {
		t.Errorf("Err: forged %v (want an error), missing %v (want nil: not refused, absent)", c.Err(forged.Hash), c.Err(missing.Hash))
	}

	// The good chunk is not read again; a repaired chunk is read the next
	// time it is needed.
	if _, err := cli.Put(ctx, s.keys.Chunk(forged.Hash), string(forged.Data)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, s.keys.Chunk(good.Hash)); err != nil {
		t.Fatal(err)
	}
	f, err = c.Fetch(ctx, []string{good.Hash, forged.Hash})
	if err != nil || f.Read != 1 || len(f.Bad) != 0 {
		t.Fatalf("second fetch: read %d, bad %v, %v; want the repaired chunk read and the cached one not", f.Read, f.Bad, err)
	}
	if _, ok := c.Prefixes(good.Hash); !ok {
		t.Fatal("the cached chunk was dropped")
	}
	if c.Err(forged.Hash) != nil {
		t.Fatalf("repaired chunk still refused: %v", c.Err(forged.Hash))
	}
	c.Retain(func(h string) bool { return h == forged.Hash })
	if _, ok := c.Prefixes(good.Hash); ok || c.Len() != 1 {
		t.Fatalf("Retain kept %d chunks, want only the one kept", c.Len())
	}
}

func TestWatchHostInputs(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	resp, err := cli.Put(ctx, s.keys.HostDesired("h1"), "before")
	if err != nil {
		t.Fatal(err)
	}
	from := resp.Header.Revision + 1
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	iw := s.WatchHostInputs(wctx, "h1", from)
	iw.Follow("edge", from)
	iw.Follow("edge", from) // again: nothing more
	iw.Follow("gone", from)
	iw.Unfollow("gone")
	if got := iw.Following(); !slices.Equal(got, []string{"edge"}) {
		t.Fatalf("following %v, want [edge]", got)
	}
	batches := iw.Batches()

	writes := []struct {
		key     string
		deleted bool
	}{
		{s.keys.HostDesired("h1"), false},
		{s.keys.RuleSetVersion("edge", 1), false},
		{s.keys.RuleSetVersion("web", 1), false},  // a rule set not followed: not seen
		{s.keys.RuleSetVersion("gone", 1), false}, // unfollowed: not seen
		{s.keys.RuleSetHead("edge"), false},       // not a version: not seen
		{s.keys.HostDesired("h2"), false},         // another host's: not seen
		{s.keys.HostStatus("h1"), false},          // not an input: not seen
		{s.keys.RuleSetVersion("edge", 1), true},
	}
	for i, w := range writes {
		var err error
		if w.deleted {
			_, err = cli.Delete(ctx, w.key)
		} else {
			_, err = cli.Put(ctx, w.key, fmt.Sprint(i))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for len(got) < 3 {
		select {
		case b, ok := <-batches:
			if !ok || b.Err != nil {
				t.Fatalf("watch ended: %v", b.Err)
			}
			for _, ev := range b.Events {
				got = append(got, fmt.Sprintf("%s %v", ev.Key, ev.Deleted))
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("events seen: %v, want 3", got)
		}
	}
	slices.Sort(got)
	want := []string{s.keys.HostDesired("h1") + " false", s.keys.RuleSetVersion("edge", 1) + " false", s.keys.RuleSetVersion("edge", 1) + " true"}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}

	// A watch from a compacted revision fails with ErrCompacted, then the
	// channel closes.
	cresp, err := cli.Put(ctx, "/unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, cresp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	oldWatch := s.WatchHostInputs(wctx, "h1", from)
	oldWatch.Follow("edge", from)
	old := oldWatch.Batches()
	b := <-old
	if !errors.Is(b.Err, ErrCompacted) {
		t.Fatalf("watch from a compacted revision: %v, want ErrCompacted", b.Err)
	}
	select {
	case _, ok := <-old:
		if ok {
			t.Fatal("the watch went on after its error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the watch's channel did not close after its error")
	}
}

func TestLeasedWrites(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	lease, err := s.GrantLease(ctx, 5*time.Second)
	if err != nil || lease.TTL < 1 {
		t.Fatalf("GrantLease: %+v, %v", lease, err)
	}
	kctx, cancel := context.WithCancel(ctx)
	defer cancel()
	alive, err := s.KeepLeaseAlive(kctx, lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	key := s.keys.HostStatus("h1")
	if err := s.PutLeased(ctx, key, []byte("{}"), lease.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeLease(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	if resp, err := cli.Get(ctx, key); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("%s after its lease was revoked: %v, %v; want gone", key, resp.Kvs, err)
	}
	if err := s.PutLeased(ctx, key, []byte("{}"), lease.ID); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("write under a revoked lease: %v, want ErrLeaseNotFound", err)
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-alive:
			if !ok {
				return // the keep-alive saw the lease go
			}
		case <-deadline:
			t.Fatal("the keep-alive channel did not close after the lease was revoked")
		}
	}
}

func TestGuardedWrites(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	key := s.keys.RolloutState("r1")
	w, err := PutJSON(key, map[string]int{"wave": 1})
	if err != nil {
		t.Fatal(err)
	}
	// Created only if absent (mod revision 0).
	ok, rev, err := s.CommitIf(ctx, []Guard{Unchanged(key, 0)}, []Write{w})
	if err != nil || !ok {
		t.Fatalf("first write: %v, %v", ok, err)
	}
	if ok, _, err := s.CommitIf(ctx, []Guard{Unchanged(key, 0)}, []Write{w}); err != nil || ok {
		t.Fatalf("second write guarded on absence: ok %v, %v; want refused", ok, err)
	}
	if ok, _, err := s.CommitIf(ctx, []Guard{Unchanged(key, rev)}, []Write{Put(key, []byte("{}"))}); err != nil || !ok {
		t.Fatalf("write guarded on the revision read: %v, %v", ok, err)
	}
	// No key under a prefix created after a revision.
	mid, err := cli.Put(ctx, "/other", "x")
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, _ := s.CommitIf(ctx, []Guard{NoneCreatedAfter(s.keys.Rollouts(), mid.Header.Revision)}, nil); !ok {
		t.Fatal("NoneCreatedAfter refused with nothing created since")
	}
	if _, err := cli.Put(ctx, s.keys.RolloutSpec("r2"), "{}"); err != nil {
		t.Fatal(err)
	}
	if ok, _, _ := s.CommitIf(ctx, []Guard{NoneCreatedAfter(s.keys.Rollouts(), mid.Header.Revision)}, nil); ok {
		t.Fatal("NoneCreatedAfter held after a key was created under the prefix")
	}
	if ok, _, _ := s.CommitIf(ctx, []Guard{Exists(s.keys.RolloutSpec("r3"))}, nil); ok {
		t.Fatal("Exists held for a missing key")
	}
	// DeletePrefix removes the rollout's keys and nothing beside them.
	if ok, _, err := s.CommitIf(ctx, nil, []Write{DeletePrefix(s.keys.Rollouts() + "r1/")}); err != nil || !ok {
		t.Fatal(err)
	}
	kvs, _, err := s.GetPrefix(ctx, s.keys.Rollouts(), 0)
	if err != nil || len(kvs) != 1 || kvs[0].Key != s.keys.RolloutSpec("r2") {
		t.Fatalf("after DeletePrefix: %v, %v; want only r2's spec", kvs, err)
	}
}

func TestLeaderWrites(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	term, err := s.Campaign(ctx, s.keys.Election(), "a", 5)
	if err != nil {
		t.Fatal(err)
	}
	key := s.keys.HostDesired("h1")
	rev, err := s.CommitAsLeader(ctx, term, []Guard{Unchanged(key, 0)}, []Write{Put(key, []byte("1"))})
	if err != nil || rev == 0 {
		t.Fatalf("leader's write: %d, %v", rev, err)
	}
	if _, err := s.CommitAsLeader(ctx, term, []Guard{Unchanged(key, 0)}, []Write{Put(key, []byte("2"))}); !errors.Is(err, ErrStale) {
		t.Fatalf("leader's write on a stale read: %v, want ErrStale", err)
	}
	// Another candidate waits while the term lasts, and wins once it ends.
	other := New(cli, s.keys)
	won := make(chan *Term, 1)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		t2, err := other.Campaign(cctx, s.keys.Election(), "b", 5)
		if err != nil {
			t2 = nil
		}
		won <- t2
	}()
	select {
	case <-won:
		t.Fatal("a second candidate won while the first leads")
	case <-time.After(300 * time.Millisecond):
	}
	if err := term.Close(); err != nil {
		t.Fatal(err)
	}
	if term.Context().Err() == nil {
		t.Error("a closed term's context has not ended")
	}
	if _, err := s.CommitAsLeader(ctx, term, nil, []Write{Put(key, []byte("3"))}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deposed leader's write: %v, want ErrNotLeader", err)
	}
	select {
	case t2 := <-won:
		if t2 == nil {
			t.Fatal("the second candidate's campaign failed")
		}
		defer t2.Close()
		if _, err := other.CommitAsLeader(ctx, t2, nil, []Write{Put(key, []byte("4"))}); err != nil {
			t.Fatalf("new leader's write: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second candidate did not win after the first term ended")
	}
	if resp, err := cli.Get(ctx, key); err != nil || string(resp.Kvs[0].Value) != "4" {
		t.Fatalf("%s: %v, %v; want the new leader's value", key, resp, err)
	}
}

func TestListKeysAndGetManyAt(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	const n = pageSize + 150
	var ops []clientv3.Op
	for i := range n {
		ops = append(ops, clientv3.OpPut(s.keys.HostStatus(fmt.Sprintf("h%05d", i)), fmt.Sprint(i)))
		if len(ops) == 100 || i == n-1 {
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = nil
		}
	}
	listed, rev, err := s.ListKeys(ctx, s.keys.Hosts(), 0, func(k string) bool { return k != s.keys.HostStatus("h00007") })
	if err != nil || len(listed) != n-1 {
		t.Fatalf("ListKeys: %d keys, %v; want %d", len(listed), err, n-1)
	}
	// A later write is not seen by reads at the listing's revision.
	if _, err := cli.Put(ctx, s.keys.HostStatus("h00000"), "later"); err != nil {
		t.Fatal(err)
	}
	keys := make([]string, len(listed))
	for i, l := range listed {
		keys[i] = l.Key
	}
	seen := 0
	err = s.GetManyAt(ctx, rev, append(keys, s.keys.HostStatus("nobody")), func(kv KeyValue) {
		if kv.Key == s.keys.HostStatus("h00000") && string(kv.Value) != "0" {
			t.Errorf("read at revision %d saw a later value %q", rev, kv.Value)
		}
		seen++
	})
	if err != nil || seen != n-1 {
		t.Fatalf("GetManyAt: %d values, %v; want %d", seen, err, n-1)
	}
}

// A chunk damaged in etcd is rewritten by the next write that names it;
// the chunks that are intact are not written again.
func TestWriteRepairsADamagedChunk(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	big := ruleSet("web", 1)
	var prefixes []string
	for i := range proto.ChunkThreshold + 1 {
		prefixes = append(prefixes, fmt.Sprintf("10.%d.%d.0/24", i/256%256, i%256))
	}
	big.Sets["bad"] = proto.PrefixSet{Prefixes: prefixes}
	mustPut(t, s, big, 0)
	_, chunks, err := big.ChunkSets()
	if err != nil || len(chunks) < 2 {
		t.Fatalf("%d chunks, %v", len(chunks), err)
	}

	damaged, intact := s.keys.Chunk(chunks[0].Hash), s.keys.Chunk(chunks[1].Hash)
	if _, err := cli.Put(ctx, damaged, "xdpfw-chunk v1\n198.18.0.0/15\n"); err != nil {
		t.Fatal(err)
	}
	before, err := cli.Get(ctx, intact)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.GetRuleSet(ctx, "web", 1); err == nil {
		t.Fatal("a version with a damaged chunk read back without an error")
	}

	big.Rules[0].DstPorts = []proto.PortSpec{"8080"} // a new version, same set
	mustPut(t, s, big, 1)
	got, err := cli.Get(ctx, damaged)
	if err != nil || string(got.Kvs[0].Value) != string(chunks[0].Data) {
		t.Fatalf("damaged chunk after a write that names it: %q, %v; want its content", got.Kvs[0].Value, err)
	}
	after, err := cli.Get(ctx, intact)
	if err != nil || after.Kvs[0].ModRevision != before.Kvs[0].ModRevision {
		t.Fatalf("an intact chunk was written again (mod revision %d, was %d)", after.Kvs[0].ModRevision, before.Kvs[0].ModRevision)
	}
	if _, _, err := s.GetRuleSet(ctx, "web", 1); err != nil {
		t.Fatalf("version 1 after the repair: %v", err)
	}
}

// A chunk collected after a write stored its chunks but before the write
// published its version (the collector bumps the chunk epoch with every
// delete) is stored again: the version never names a missing chunk.
func TestVersionWriteSurvivesAChunkCollectedUnderIt(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	prefixes := make([]string, 6000)
	for i := range prefixes {
		prefixes[i] = fmt.Sprintf("198.18.%d.%d/32", i/256, i%256)
	}
	rs := proto.RuleSet{APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "big", Mode: proto.ModeDeny,
		Sets:  map[string]proto.PrefixSet{"s": {Prefixes: prefixes}},
		Rules: []proto.Rule{{ID: "x", Action: proto.ActionDrop, Src: []string{"set:s"}}}}
	collected := 0
	s.afterChunksStored = func() {
		if collected > 0 {
			return
		}
		resp, err := cli.Get(ctx, s.keys.Chunks(), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(1))
		if err != nil || len(resp.Kvs) == 0 {
			t.Errorf("no chunk to collect: %v", err)
			return
		}
		if _, _, err := s.CommitIf(ctx, nil, []Write{Delete(string(resp.Kvs[0].Key)), s.ChunkEpochWrite()}); err != nil {
			t.Error(err)
		}
		collected++
	}
	if _, _, err := s.PutRuleSet(ctx, rs, -1); err != nil {
		t.Fatal(err)
	}
	if collected != 1 {
		t.Fatalf("the hook collected %d chunks", collected)
	}
	got, _, err := s.GetRuleSet(ctx, "big", 1)
	if err != nil || len(got.Sets["s"].Prefixes) != len(prefixes) {
		t.Fatalf("version 1 after a chunk was collected under its write: %v", err)
	}
}
