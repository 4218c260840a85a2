package rollout

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// The storage collector (docs/architecture.md, "Storage retention"): the
// leader deletes, between rounds, what nothing can need any more, so that
// etcd does not grow without end:
//
//   - rule-set versions beyond the newest KeepVersions of each rule set
//     that no host is given or reports, no release names, and no rollout
//     could return a host to;
//   - chunks no remaining version names, written longer than ChunkGrace
//     ago (a write stores its chunks before the version that names them);
//   - audit records older than AuditRetention, appended to AuditExport
//     (JSON lines, synced) before they are deleted.
//
// Each delete is a leader-guarded transaction, like every other write of
// the controller's.

// Defaults of the collector.
const (
	DefaultKeepVersions = 20
	DefaultChunkGrace   = time.Hour
	DefaultGCInterval   = 10 * time.Minute
	// gcBatch bounds the deletes of one transaction.
	gcBatch = 100
)

// GCOptions configure the storage collector.
type GCOptions struct {
	// KeepVersions is how many of each rule set's newest versions are
	// kept whatever uses them (0: DefaultKeepVersions; negative: every
	// version is kept).
	KeepVersions int
	// ChunkGrace is how long an unreferenced chunk is kept after it was
	// written (0: DefaultChunkGrace).
	ChunkGrace time.Duration
	// AuditRetention is how long audit records are kept (0: forever).
	AuditRetention time.Duration
	// AuditExport is the file older audit records are appended to before
	// they are deleted; required with AuditRetention.
	AuditExport string
	// Interval is how often the collector runs while leading (0:
	// DefaultGCInterval).
	Interval time.Duration
}

// collector holds what the collector remembers between runs of one term.
type collector struct {
	opts GCOptions
	st   *etcdstore.Store
	keys proto.Keys
	log  *zap.Logger
	// chunkRefs caches the chunks each version names, by version key
	// (versions are immutable).
	chunkRefs map[string][]string
	// marks are (time, revision) pairs seen by this term, oldest first:
	// the chunk grace is measured against them, so a new leader deletes
	// no chunk before it has watched for a grace period itself.
	marks []revMark
	last  time.Time
	stats GCStats
}

type revMark struct {
	at  time.Time
	rev int64
}

// GCStats counts what one collection deleted.
type GCStats struct {
	Versions, Chunks, AuditRecords int
}

func newCollector(st *etcdstore.Store, opts GCOptions, log *zap.Logger) (*collector, error) {
	if opts.KeepVersions == 0 {
		opts.KeepVersions = DefaultKeepVersions
	}
	if opts.ChunkGrace <= 0 {
		opts.ChunkGrace = DefaultChunkGrace
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultGCInterval
	}
	if opts.AuditRetention > 0 && opts.AuditExport == "" {
		return nil, fmt.Errorf("audit retention %s needs a file to export the records to before they are deleted", opts.AuditRetention)
	}
	return &collector{opts: opts, st: st, keys: st.Keys(), log: log, chunkRefs: map[string][]string{}}, nil
}

// due says whether a collection is due at now.
func (g *collector) due(now time.Time) bool { return now.Sub(g.last) >= g.opts.Interval }

// collect runs one collection over snap (the round's snapshot).
func (g *collector) collect(ctx context.Context, t *etcdstore.Term, snap *Snapshot, now time.Time) (GCStats, error) {
	g.last = now
	g.stats = GCStats{}
	g.marks = append(g.marks, revMark{at: now, rev: snap.Revision})
	// Keep one mark at least a grace period old (the one in use) and the
	// younger ones: a handful, whatever the runs find.
	for len(g.marks) > 1 && now.Sub(g.marks[1].at) >= g.opts.ChunkGrace {
		g.marks = g.marks[1:]
	}
	if err := g.collectVersionsAndChunks(ctx, t, snap, now); err != nil {
		return g.stats, err
	}
	if err := g.collectAudit(ctx, t, now); err != nil {
		return g.stats, err
	}
	if g.stats != (GCStats{}) {
		g.log.Info("storage collected", zap.Int("versions", g.stats.Versions), zap.Int("chunks", g.stats.Chunks),
			zap.Int("audit_records", g.stats.AuditRecords))
	}
	return g.stats, nil
}

// inUse lists the versions something needs, by rule set.
func inUse(snap *Snapshot) map[string]map[int64]bool {
	used := map[string]map[int64]bool{}
	mark := func(name string, v int64) {
		if v <= 0 {
			return
		}
		if used[name] == nil {
			used[name] = map[int64]bool{}
		}
		used[name][v] = true
	}
	for _, hv := range snap.Hosts {
		if hv.Desired != nil {
			for _, r := range hv.Desired.RuleSets {
				mark(r.Name, r.Version)
			}
		}
		if hv.Status != nil {
			for _, r := range hv.Status.Applied {
				mark(r.Name, r.Version)
			}
		}
	}
	for name, rs := range snap.RuleSets {
		mark(name, rs.Head)
		mark(name, rs.Released)
	}
	for _, ro := range snap.Rollouts {
		mark(ro.Spec.RuleSet, ro.Spec.Version)
		for _, h := range ro.State.Hosts {
			mark(ro.Spec.RuleSet, h.Previous)
		}
	}
	return used
}

func (g *collector) collectVersionsAndChunks(ctx context.Context, t *etcdstore.Term, snap *Snapshot, now time.Time) error {
	listed, rev, err := g.st.ListKeys(ctx, g.keys.RuleSets(), snap.Revision, func(k string) bool {
		_, _, ok := g.keys.ParseRuleSetVersion(k)
		return ok
	})
	if err != nil {
		return err
	}
	byName := map[string][]int64{}
	for _, l := range listed {
		name, v, _ := g.keys.ParseRuleSetVersion(l.Key)
		byName[name] = append(byName[name], v)
	}
	used := inUse(snap)
	var doomed, kept []string
	for name, versions := range byName {
		sort.Slice(versions, func(i, j int) bool { return versions[i] > versions[j] })
		for i, v := range versions {
			key := g.keys.RuleSetVersion(name, v)
			if g.opts.KeepVersions < 0 || i < g.opts.KeepVersions || used[name][v] {
				kept = append(kept, key)
				continue
			}
			doomed = append(doomed, key)
		}
	}
	sort.Strings(doomed)
	for lo := 0; lo < len(doomed); lo += gcBatch {
		batch := doomed[lo:min(lo+gcBatch, len(doomed))]
		writes := make([]etcdstore.Write, len(batch))
		for i, k := range batch {
			writes[i] = etcdstore.Delete(k)
		}
		if _, err := g.st.CommitAsLeader(ctx, t, nil, writes); err != nil {
			return fmt.Errorf("delete %d old versions: %w", len(batch), err)
		}
		g.stats.Versions += len(batch)
		g.log.Info("old rule-set versions deleted", zap.Strings("keys", batch), zap.Int("keep_versions", g.opts.KeepVersions))
	}
	for _, k := range doomed {
		delete(g.chunkRefs, k)
	}

	// Chunks: what the kept versions name.
	var unread []string
	for _, k := range kept {
		if _, ok := g.chunkRefs[k]; !ok {
			unread = append(unread, k)
		}
	}
	var decodeErr error
	err = g.st.GetManyAt(ctx, rev, unread, func(kv etcdstore.KeyValue) {
		var doc struct {
			Sets map[string]struct {
				Chunks []string `json:"chunks"`
			} `json:"sets"`
		}
		if err := json.Unmarshal(kv.Value, &doc); err != nil {
			// A version that does not decode names no chunk we can
			// see: collect no chunk this run rather than guess.
			decodeErr = fmt.Errorf("%s does not decode: %w", kv.Key, err)
			return
		}
		refs := []string{}
		for _, s := range doc.Sets {
			refs = append(refs, s.Chunks...)
		}
		g.chunkRefs[kv.Key] = refs
	})
	if err != nil {
		return err
	}
	if decodeErr != nil {
		g.log.Warn("chunks not collected", zap.Error(decodeErr))
		return nil
	}
	named := map[string]bool{}
	for _, k := range kept {
		for _, h := range g.chunkRefs[k] {
			named[h] = true
		}
	}
	graceRev := int64(0)
	for _, m := range g.marks {
		if now.Sub(m.at) >= g.opts.ChunkGrace {
			graceRev = m.rev
		}
	}
	if graceRev == 0 {
		return nil // this term has not watched for a grace period yet
	}
	chunks, _, err := g.st.ListKeys(ctx, g.keys.Chunks(), rev, nil)
	if err != nil {
		return err
	}
	var unnamed []etcdstore.KeyRevision
	for _, c := range chunks {
		hash := c.Key[len(g.keys.Chunks()):]
		if !named[hash] && c.ModRevision <= graceRev {
			unnamed = append(unnamed, c)
		}
	}
	for lo := 0; lo < len(unnamed); lo += gcBatch {
		batch := unnamed[lo:min(lo+gcBatch, len(unnamed))]
		guards := make([]etcdstore.Guard, len(batch))
		writes := make([]etcdstore.Write, len(batch), len(batch)+1)
		for i, c := range batch {
			// A chunk written again since the listing (a new version
			// names it) is not deleted: the whole batch waits.
			guards[i] = etcdstore.Unchanged(c.Key, c.ModRevision)
			writes[i] = etcdstore.Delete(c.Key)
		}
		// A version write in flight that reused one of these chunks
		// guards on the epoch: it stores its chunks again and retries.
		writes = append(writes, g.st.ChunkEpochWrite())
		if _, err := g.st.CommitAsLeader(ctx, t, guards, writes); err != nil {
			return fmt.Errorf("delete %d unreferenced chunks: %w", len(batch), err)
		}
		g.stats.Chunks += len(batch)
	}
	return nil
}

// collectAudit exports and deletes audit records older than the
// retention, oldest first, a batch at a time: a batch is synced to the
// export file before it is deleted, so a crash in between exports some
// records twice, never loses one.
func (g *collector) collectAudit(ctx context.Context, t *etcdstore.Term, now time.Time) error {
	if g.opts.AuditRetention <= 0 {
		return nil
	}
	before := now.Add(-g.opts.AuditRetention)
	for {
		kvs, _, err := g.st.AuditBefore(ctx, before, gcBatch)
		if err != nil {
			return err
		}
		if len(kvs) == 0 {
			return nil
		}
		if err := g.export(kvs); err != nil {
			return fmt.Errorf("export audit records to %s (none deleted): %w", g.opts.AuditExport, err)
		}
		guards := make([]etcdstore.Guard, len(kvs))
		writes := make([]etcdstore.Write, len(kvs))
		for i, kv := range kvs {
			guards[i] = etcdstore.Unchanged(kv.Key, kv.ModRevision)
			writes[i] = etcdstore.Delete(kv.Key)
		}
		if _, err := g.st.CommitAsLeader(ctx, t, guards, writes); err != nil {
			return fmt.Errorf("delete %d exported audit records: %w", len(kvs), err)
		}
		g.stats.AuditRecords += len(kvs)
		if len(kvs) < gcBatch {
			return nil
		}
	}
}

// export appends records to the export file as JSON lines ({"key",
// "revision", "record"}) and syncs it.
func (g *collector) export(kvs []etcdstore.KeyValue) error {
	f, err := os.OpenFile(g.opts.AuditExport, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for _, kv := range kvs {
		line := struct {
			Key      string          `json:"key"`
			Revision int64           `json:"revision"`
			Record   json.RawMessage `json:"record"`
		}{kv.Key, kv.ModRevision, kv.Value}
		if !json.Valid(kv.Value) {
			line.Record, _ = json.Marshal(string(kv.Value))
		}
		if err := enc.Encode(line); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
