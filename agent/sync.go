package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/bpf"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// syncCache mirrors the part of etcd this host enforces: its desired state
// and the rule-set versions that state names. The sync loop owns it.
type syncCache struct {
	// rev is the etcd revision the cache reflects.
	rev int64
	// desired is the raw desired-state document (nil: no key).
	desired    []byte
	desiredRev int64
	// docs holds each referenced rule-set version by key.
	docs map[string]cachedDoc
	// next holds, by rule-set name, the newest version written of a rule
	// set the desired state names at an older version: decoded when the
	// watch brings it (the event carries the document, so this costs etcd
	// nothing), so that a rollout of it, which usually follows, finds it
	// decoded (see notePending and fetchReferenced).
	next map[string]pendingDoc
	// chunks holds the prefixes of each chunk the docs name, by hash
	// (chunks are immutable: fetched and checked once, dropped when
	// unreferenced); its Err says why a chunk the docs name is not there
	// (from the last fetch).
	chunks *etcdstore.ChunkCache
	// chunksWanted is set when a chunk the docs name is missing or was
	// refused: chunks/ is not watched, so the sync loop reads them again
	// every retry tick until they are there (a repaired chunk is picked
	// up without a restart).
	chunksWanted bool
	// refused is the chunks the last fetch refused, so that one refused
	// again at every retry is logged once.
	refused map[string]bool
	// refs are the references of the desired state (nil if it is bad).
	refs []proto.RuleSetRef

	// input fingerprints what was last applied or refused, so that an
	// event that changes nothing this host enforces applies nothing.
	input string
	// retry is set when the last apply failed in the kernel (not on bad
	// input): it is tried again after a pause.
	retry bool

	applied   []proto.RuleSetRef
	inSync    bool
	lastError *proto.StatusError
	// appliedDocs are the documents of applied as stored (big sets as
	// chunk references), by name: the next apply's set deltas are
	// computed against them, so their chunks stay cached until then.
	appliedDocs map[string]proto.RuleSet

	// timing measures the change being processed: begun by resync, by a
	// watch response and by a retry, added to by each phase, reported by
	// reconcile.
	timing applyTiming
	// release is set by a whole compile of big prefix tables: reconcile
	// writes the standby generations (bpf.Firewall.PrepareStandby, so
	// that the next update is written incrementally) and gives the
	// compile's memory back once the status is out (releaseMemory).
	release bool
}

// applyTiming is how long each phase of one change took: its etcd reads
// (fetch: the desired state, the documents and the chunks it needs), its
// decoding (chunks to prefixes, documents to rule sets, with their
// checks), bpf.Compile (compile), and the map writes, flip and attach
// (write), for every interface; the firewalls enforce the change from
// there (enforced). Then the status is handed to the reporter, the
// kernel's grace period after each flip waited out (settle) and the
// memory of a big apply given back (release). The total runs from the begin to the
// end of the release.
type applyTiming struct {
	begun                                  time.Time
	fetch, decode, compile, write, release time.Duration
	// enforced is when (since begun) every interface's packets saw the
	// change; settle is the wait for the kernel's grace period after the
	// flips, which follows the status (bpf.Firewall.Settle).
	enforced, settle time.Duration
	// cpu and gcCycles at the begin: the process's CPU time (user and
	// system, every thread) and completed GC cycles, so that an apply's
	// log says how much of its wall time was its own work and how many
	// collections it paid for; the rest is waiting (for etcd, for the
	// kernel's RCU grace period, for a CPU on a shared machine).
	cpu      time.Duration
	gcCycles uint64
}

// begin starts the timing of a change.
func (t *applyTiming) begin() {
	*t = applyTiming{begun: time.Now(), cpu: processCPU(), gcCycles: gcCycles()}
}

// since adds the time since start to a phase.
func since(phase *time.Duration, start time.Time) { *phase += time.Since(start) }

type cachedDoc struct {
	modRev int64
	// rs is the document, decoded once when it arrives, its big sets
	// still chunk references; err says why it does not decode (reported
	// by reconcile).
	rs  proto.RuleSet
	err error
	// chunks are the hashes of the chunks its big sets are stored in.
	chunks []string
}

// pendingDoc is a version of a rule set decoded ahead of its rollout.
type pendingDoc struct {
	key     string
	version int64
	doc     cachedDoc
}

func newCachedDoc(raw []byte, modRev int64) cachedDoc {
	d := cachedDoc{modRev: modRev}
	d.rs, d.err = proto.DecodeRuleSet(raw)
	if d.err == nil {
		d.chunks = d.rs.ChunkRefs()
	}
	return d
}

// errResync asks the sync loop to read everything again.
var errResync = errors.New("resync")

// syncLoop keeps the firewalls equal to etcd: read everything at one
// revision and apply it, then watch from the next revision; on any watch
// error (compaction, lost leader, cancellation) start again from a fresh
// read. While etcd is unreachable nothing changes: the pinned maps keep
// enforcing the last applied rules (fail-static).
func (a *Agent) syncLoop(ctx context.Context) {
	bo := newBackoff(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		if err := a.resync(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Warn("read desired state from etcd", zap.Error(err))
			a.metrics.resyncErrors.Inc()
			sleep(ctx, bo.next())
			continue
		}
		bo.reset()
		err := a.watch(ctx)
		if ctx.Err() != nil {
			return
		}
		a.metrics.watchRestarts.Inc()
		if errors.Is(err, etcdstore.ErrCompacted) {
			a.log.Info("watch revision compacted: resync", zap.Int64("revision", a.cache.rev))
			continue
		}
		a.log.Warn("watch ended: resync", zap.Int64("revision", a.cache.rev), zap.Error(err))
		sleep(ctx, bo.next())
	}
}

// resync reads the host's desired state and the versions it names at one
// revision, replaces the cache with them (dropping whatever the new read no
// longer returns) and reconciles.
func (a *Agent) resync(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	c := &a.cache
	c.timing.begin()
	kv, rev, err := a.etcd.GetAt(rctx, a.keys.HostDesired(a.cfg.Host), 0)
	since(&c.timing.fetch, c.timing.begun)
	if err != nil {
		return err
	}
	c.rev, c.desired, c.desiredRev, c.refs = rev, nil, 0, nil
	c.docs, c.next = map[string]cachedDoc{}, nil
	if kv != nil {
		c.desired, c.desiredRev = kv.Value, kv.ModRevision
	}
	if err := a.fetchReferenced(rctx, rev); err != nil {
		return err
	}
	if _, err := a.fetchChunks(rctx); err != nil {
		return err
	}
	a.reconcile()
	return nil
}

// fetchChunks reads the chunks the cached documents name that the cache
// lacks, checks each against its hash and each of its prefixes (once: the
// documents are then validated without their chunked prefixes), and drops
// the ones no document names any more. A chunk missing from etcd or bad is
// left out: reconcile then refuses the document that needs it.
func (a *Agent) fetchChunks(ctx context.Context) (read int, err error) {
	c := &a.cache
	if c.chunks == nil {
		c.chunks = a.etcd.NewChunkCache()
	}
	var need []string
	for _, d := range c.docs {
		need = append(need, d.chunks...)
	}
	a.pruneChunks()
	f, err := c.chunks.Fetch(ctx, need)
	c.timing.fetch += f.Fetch
	c.timing.decode += f.Decode
	if err != nil {
		return 0, err
	}
	c.chunksWanted = false
	for _, h := range need {
		if _, ok := c.chunks.Prefixes(h); !ok {
			c.chunksWanted = true
			break
		}
	}
	for h, err := range f.Bad {
		if !c.refused[h] {
			a.log.Error("bad chunk", zap.String("key", a.keys.Chunk(h)), zap.Error(err))
		}
	}
	c.refused = make(map[string]bool, len(f.Bad))
	for h := range f.Bad {
		c.refused[h] = true
	}
	if f.Read > 0 {
		a.log.Info("fetched chunks", zap.Int("fetched", f.Read), zap.Int("refused", len(f.Bad)), zap.Int("cached", c.chunks.Len()))
	}
	return f.Read, nil
}

// fetchWantedChunks reads again the chunks the docs name that were missing
// or refused, and applies again if one has arrived or been repaired.
func (a *Agent) fetchWantedChunks(ctx context.Context) error {
	c := &a.cache
	c.timing.begin()
	fctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	read, err := a.fetchChunks(fctx)
	if err != nil {
		return err
	}
	if read > 0 {
		a.log.Info("a chunk that was missing or refused is here: applying again", zap.Int("fetched", read))
		c.input = "" // the documents are the same; what they resolve to is not
		a.reconcile()
	}
	return nil
}

// pruneChunks drops the cached chunks that neither a cached document nor
// an applied one names (those stay for the next apply's set deltas).
func (a *Agent) pruneChunks() {
	c := &a.cache
	need := map[string]bool{}
	for _, d := range c.docs {
		for _, h := range d.chunks {
			need[h] = true
		}
	}
	for _, rs := range c.appliedDocs {
		for _, h := range rs.ChunkRefs() {
			need[h] = true
		}
	}
	c.chunks.Retain(func(h string) bool { return need[h] })
}

// fetchReferenced decodes the cached desired state and reads, at revision
// rev, each version it names that the cache lacks.
func (a *Agent) fetchReferenced(ctx context.Context, rev int64) error {
	c := &a.cache
	c.refs = nil
	if c.desired == nil {
		return nil
	}
	d, err := proto.DecodeHostDesired(c.desired)
	if err != nil {
		return nil // reconcile reports it
	}
	c.refs = d.RuleSets
	keep := map[string]cachedDoc{}
	for _, ref := range c.refs {
		key := a.keys.RuleSetVersion(ref.Name, ref.Version)
		if doc, ok := c.docs[key]; ok {
			keep[key] = doc
			continue
		}
		if p, ok := c.next[ref.Name]; ok && p.key == key {
			keep[key] = p.doc
			continue
		}
		start := time.Now()
		a.metrics.docReads.Inc()
		kv, _, err := a.etcd.GetAt(ctx, key, rev)
		since(&c.timing.fetch, start)
		if err != nil {
			return err
		}
		if kv != nil {
			start = time.Now()
			keep[key] = newCachedDoc(kv.Value, kv.ModRevision)
			since(&c.timing.decode, start)
		}
	}
	c.docs = keep
	// What is referenced now is no longer ahead of its rollout.
	for name, p := range c.next {
		if ref, ok := c.refNamed(name); !ok || p.version <= ref.Version {
			delete(c.next, name)
		}
	}
	return nil
}

// refNamed is the desired state's reference to rule set name.
func (c *syncCache) refNamed(name string) (proto.RuleSetRef, bool) {
	for _, r := range c.refs {
		if r.Name == name {
			return r, true
		}
	}
	return proto.RuleSetRef{}, false
}

// notePending keeps a newer version of a rule set this host enforces,
// decoded, for its rollout (syncCache.next); the watch event carries it.
func (a *Agent) notePending(ev etcdstore.Event) {
	c := &a.cache
	key := ev.Key
	name, v, ok := a.keys.ParseRuleSetVersion(key)
	if !ok {
		return
	}
	if ref, ok := c.refNamed(name); !ok || v <= ref.Version {
		return
	}
	p, have := c.next[name]
	switch {
	case ev.Deleted:
		if have && p.key == key {
			delete(c.next, name)
		}
	case !have || v >= p.version:
		if c.next == nil {
			c.next = map[string]pendingDoc{}
		}
		c.next[name] = pendingDoc{key: key, version: v, doc: newCachedDoc(ev.Value, ev.ModRevision)}
		a.metrics.docsAhead.Inc()
	}
}

// watch follows the host's desired-state key and every rule set's versions
// from the revision after the cache's, applying each change in revision
// order, until a watch error (a watch on a member cut off from the quorum
// fails instead of going quiet).
func (a *Agent) watch(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	from := a.cache.rev + 1
	iw := a.etcd.WatchHostInputs(wctx, a.cfg.Host, from)
	a.follow(iw, from)
	batches := iw.Batches()

	retry := time.NewTicker(2 * time.Second)
	defer retry.Stop()
	for {
		var b etcdstore.WatchBatch
		var ok bool
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-retry.C:
			if a.cache.chunksWanted {
				if err := a.fetchWantedChunks(wctx); err != nil {
					return err
				}
				continue
			}
			if a.cache.retry {
				a.cache.input = "" // force a new attempt
				a.cache.timing.begin()
				a.reconcile()
			}
			continue
		case b, ok = <-batches:
		}
		if !ok {
			return fmt.Errorf("watch channel closed: %w", errResync)
		}
		if b.Err != nil {
			return b.Err
		}
		desiredRev := a.cache.desiredRev
		if err := a.applyEvents(wctx, b); err != nil {
			return err
		}
		if a.cache.desiredRev != desiredRev {
			// The versions it names were read at desiredRev: follow
			// their rule sets from the revision after.
			a.follow(iw, a.cache.desiredRev+1)
		}
	}
}

// follow makes the watch follow exactly the rule sets the desired state
// names: a version write of any other rule set reaches this host no more
// (a new rule set is followed from revision from).
func (a *Agent) follow(iw *etcdstore.InputWatch, from int64) {
	want := map[string]bool{}
	for _, r := range a.cache.refs {
		want[r.Name] = true
	}
	for _, name := range iw.Following() {
		if !want[name] {
			iw.Unfollow(name)
		}
	}
	for name := range want {
		iw.Follow(name, from)
	}
}

// applyEvents folds one watch response into the cache and reconciles.
func (a *Agent) applyEvents(ctx context.Context, b etcdstore.WatchBatch) error {
	c := &a.cache
	c.timing.begin()
	desiredKey := a.keys.HostDesired(a.cfg.Host)
	desiredChanged := false
	for _, ev := range b.Events {
		key := ev.Key
		a.metrics.watchEvents.Inc()
		a.metrics.watchBytes.Add(float64(len(ev.Value)))
		switch {
		case key == desiredKey:
			if ev.ModRevision <= c.desiredRev && !ev.Deleted {
				continue // already read (a resync raced the watch)
			}
			desiredChanged = true
			if ev.Deleted {
				c.desired, c.desiredRev = nil, ev.ModRevision
			} else {
				c.desired, c.desiredRev = ev.Value, ev.ModRevision
			}
		case a.referenced(key):
			cur, have := c.docs[key]
			if have && ev.ModRevision <= cur.modRev {
				continue
			}
			if ev.Deleted {
				delete(c.docs, key)
			} else {
				start := time.Now()
				c.docs[key] = newCachedDoc(ev.Value, ev.ModRevision)
				since(&c.timing.decode, start)
			}
		default:
			a.notePending(ev)
		}
	}
	if b.Revision > c.rev {
		c.rev = b.Revision
	}
	fctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if desiredChanged {
		if err := a.fetchReferenced(fctx, c.desiredRev); err != nil {
			return err
		}
	}
	if _, err := a.fetchChunks(fctx); err != nil {
		return err
	}
	a.reconcile()
	return nil
}

func (a *Agent) referenced(key string) bool {
	name, v, ok := a.keys.ParseRuleSetVersion(key)
	if !ok {
		return false
	}
	for _, r := range a.cache.refs {
		if r.Name == name && r.Version == v {
			return true
		}
	}
	return false
}

// fingerprint identifies the input of an apply: the desired state and the
// revision of each document it names.
func (a *Agent) fingerprint() string {
	c := &a.cache
	var b strings.Builder
	b.WriteString(strconv.FormatInt(c.desiredRev, 10))
	for _, r := range c.refs {
		key := a.keys.RuleSetVersion(r.Name, r.Version)
		fmt.Fprintf(&b, " %s=%d", key, c.docs[key].modRev)
	}
	return b.String()
}

// reconcile applies the cached desired state if it differs from what was
// last applied or refused. A bad document is refused: the last good rules
// stay in force and the status says which document and why.
func (a *Agent) reconcile() {
	c := &a.cache
	fp := a.fingerprint()
	if fp == c.input {
		// Nothing this host enforces changed (another host's rule set, say):
		// no apply and no status write, which would cost every host a write
		// per change anywhere in the fleet.
		return
	}
	c.input, c.retry = fp, false
	t := &c.timing
	start := time.Now()
	refs, stored, serr := a.desiredRuleSets()
	var byName map[string]proto.RuleSet
	var deltas []setDelta
	incremental := false
	if serr == nil {
		byName = make(map[string]proto.RuleSet, len(refs))
		for _, rs := range stored {
			byName[rs.Name] = rs
		}
		var err error
		deltas, incremental, err = setDeltas(c.appliedDocs, stored, func(h string) ([]string, bool) {
			return c.chunks.Prefixes(h)
		})
		if err != nil {
			a.log.Warn("set deltas", zap.Error(err))
		}
	}
	since(&t.decode, start)
	if serr == nil {
		serr, incremental = a.applyAll(refs, stored, deltas, incremental)
	}
	switch {
	case serr != nil && c.desired == nil:
		// Not an error: nobody has said what this host should enforce
		// (a new host before the control plane sees it). Not in sync
		// either: what is pinned is nobody's desired state.
		c.lastError, c.inSync = nil, false
		a.log.Info("no desired state for this host yet", zap.String("key", serr.Document), zap.Int64("revision", c.rev))
	case serr != nil:
		serr.Revision, serr.At = c.rev, time.Now().UTC()
		c.lastError, c.inSync = serr, false
		a.metrics.applyErrors.Inc()
		a.log.Error("desired state refused; last good rules stay in force",
			zap.String("document", serr.Document), zap.Int64("version", serr.Version),
			zap.Int64("revision", c.rev), zap.String("reason", serr.Message))
	default:
		c.applied, c.lastError, c.inSync, c.appliedDocs = refs, nil, true, byName
		a.pruneChunks() // the previous version's chunks
	}
	a.metrics.revision.Set(float64(c.rev))
	t.enforced = time.Since(t.begun)
	a.publishStatus()
	if c.inSync && a.onApplied != nil {
		a.onApplied(c.rev)
	}
	// After the status, off the change's path: the kernel's grace period
	// after each flip (the next apply would wait for it otherwise).
	settleStart := time.Now()
	for _, m := range a.ifaces {
		if m.fw == nil {
			continue
		}
		if err := m.fw.Settle(); err != nil {
			a.log.Warn("settle the last flip", zap.String("iface", m.cfg.Name), zap.Error(err))
		}
	}
	since(&t.settle, settleStart)
	if c.release {
		// After the status: a rollout waits for it, not for this.
		c.release = false
		start := time.Now()
		for _, m := range a.ifaces {
			if m.base == nil || m.fw == nil {
				continue
			}
			if _, err := m.fw.PrepareStandby(m.base); err != nil {
				// Not an error for the change: the next update is
				// written whole, which is slower, not wrong.
				a.log.Warn("prepare standby generation", zap.String("iface", m.cfg.Name), zap.Error(err))
			}
		}
		releaseMemory()
		since(&t.release, start)
	}
	if serr == nil {
		total := time.Since(t.begun)
		a.metrics.observeApply(t, total)
		added, removed := 0, 0
		for _, d := range deltas {
			added, removed = added+len(d.added), removed+len(d.removed)
		}
		a.log.Info("applied desired state", zap.Int64("revision", c.rev),
			zap.Strings("ruleSets", refStrings(refs)), zap.Duration("took", time.Since(start)),
			zap.Duration("fetch", t.fetch), zap.Duration("decode", t.decode), zap.Duration("compile", t.compile),
			zap.Duration("write", t.write), zap.Duration("enforced", t.enforced), zap.Duration("settle", t.settle),
			zap.Duration("release", t.release), zap.Duration("total", total),
			zap.Duration("cpu", processCPU()-t.cpu), zap.Uint64("gcCycles", gcCycles()-t.gcCycles),
			zap.Bool("incremental", incremental), zap.Int("prefixesAdded", added), zap.Int("prefixesRemoved", removed))
	}
}

func refStrings(refs []proto.RuleSetRef) []string {
	out := make([]string, len(refs))
	for i, r := range refs {
		out[i] = r.String()
	}
	return out
}

// desiredRuleSets decodes the desired state and every version it names,
// each validated, as stored: big sets still chunk references (see
// resolveRuleSets).
func (a *Agent) desiredRuleSets() ([]proto.RuleSetRef, []proto.RuleSet, *proto.StatusError) {
	c := &a.cache
	desiredKey := a.keys.HostDesired(a.cfg.Host)
	if c.desired == nil {
		return nil, nil, &proto.StatusError{Document: desiredKey,
			Message: "no desired state for this host: what is pinned stays in force"}
	}
	d, err := proto.DecodeHostDesired(c.desired)
	if err != nil {
		return nil, nil, &proto.StatusError{Document: desiredKey, Message: err.Error()}
	}
	sets := make([]proto.RuleSet, 0, len(d.RuleSets))
	for _, ref := range d.RuleSets {
		key := a.keys.RuleSetVersion(ref.Name, ref.Version)
		doc, ok := c.docs[key]
		if !ok {
			return nil, nil, &proto.StatusError{Document: key, Version: ref.Version,
				Message: fmt.Sprintf("rule set %s version %d not found", ref.Name, ref.Version)}
		}
		// The document was decoded when it arrived and each chunk's
		// prefixes checked when it was fetched: validating the document
		// with its chunk references costs the chunk list, not a parse of
		// every prefix of a big set.
		rs, err := doc.rs, doc.err
		if err == nil {
			err = rs.ValidateWith(proto.ValidateOptions{AllowChunks: true})
		}
		if err == nil && rs.Name != ref.Name {
			err = fmt.Errorf("document is named %q, not %q", rs.Name, ref.Name)
		}
		if err != nil {
			return nil, nil, &proto.StatusError{Document: key, Version: ref.Version, Message: err.Error()}
		}
		sets = append(sets, rs)
	}
	return d.RuleSets, sets, nil
}

// resolveRuleSets replaces the chunk references of stored documents (as
// desiredRuleSets returns them) with the chunks' prefixes: what a whole
// compile needs.
func (a *Agent) resolveRuleSets(refs []proto.RuleSetRef, stored []proto.RuleSet) ([]proto.RuleSet, *proto.StatusError) {
	c := &a.cache
	sets := make([]proto.RuleSet, len(stored))
	for i, rs := range stored {
		rs.Sets = maps.Clone(rs.Sets) // ResolveChunks replaces sets; the cached document keeps its references
		err := rs.ResolveChunks(func(h string) ([]string, error) {
			p, ok := c.chunks.Prefixes(h)
			if !ok {
				if cerr := c.chunks.Err(h); cerr != nil {
					return nil, fmt.Errorf("%s refused: %w", a.keys.Chunk(h), cerr)
				}
				return nil, fmt.Errorf("chunk %s not found", a.keys.Chunk(h))
			}
			return p, nil
		})
		if err != nil {
			return nil, &proto.StatusError{Document: a.keys.RuleSetVersion(refs[i].Name, refs[i].Version),
				Version: refs[i].Version, Message: err.Error()}
		}
		sets[i] = rs
	}
	return sets, nil
}

// applyAll compiles the rule sets for every interface first, so that a
// compile error changes nothing anywhere, then applies them interface by
// interface (each apply is atomic). An interface whose active digest is
// already the compiled one is left alone.
//
// When the rule sets differ from those last applied only in set members
// (incremental, with deltas), each interface's last compiled value is
// updated with the deltas instead: no chunk is resolved and no set
// compiled whole. Whatever the update cannot take falls back to a whole
// compile. It returns whether the update was used.
func (a *Agent) applyAll(refs []proto.RuleSetRef, stored []proto.RuleSet, deltas []setDelta, incremental bool) (*proto.StatusError, bool) {
	desiredKey := a.keys.HostDesired(a.cfg.Host)
	t := &a.cache.timing
	compiled := make([]*bpf.Compiled, len(a.ifaces))
	updated := incremental && len(a.ifaces) > 0
	if updated {
		start := time.Now()
		bd := bpfDeltas(deltas)
		for i, m := range a.ifaces {
			if m.base == nil {
				updated = false
				break
			}
			u, err := m.base.Update(bd)
			if err == nil {
				err = checkSetSizes(u, stored, deltas)
			}
			if errors.Is(err, bpf.ErrNeedsCompile) {
				a.log.Info("compiling whole: the change does not fit an update", zap.String("iface", m.cfg.Name), zap.Error(err))
				updated = false
				break
			}
			if err != nil {
				since(&t.compile, start)
				return &proto.StatusError{Document: desiredKey, Message: fmt.Sprintf("compile for %s: %v", m.cfg.Name, err)}, false
			}
			compiled[i] = u
		}
		since(&t.compile, start)
	}
	if !updated {
		start := time.Now()
		sets, serr := a.resolveRuleSets(refs, stored)
		since(&t.decode, start)
		if serr != nil {
			return serr, false
		}
		for i, m := range a.ifaces {
			start := time.Now()
			c, err := bpf.Compile(sets, m.cfg.Name)
			since(&t.compile, start)
			if err != nil {
				return &proto.StatusError{Document: desiredKey, Message: fmt.Sprintf("compile for %s: %v", m.cfg.Name, err)}, false
			}
			compiled[i] = c
		}
	}
	// Until every interface has applied, no interface's compiled value
	// matches what the agent counts as applied: an update must start from
	// a whole compile again.
	for _, m := range a.ifaces {
		m.base = nil
	}
	start := time.Now()
	defer since(&t.write, start)
	for i, m := range a.ifaces {
		if m.digest == hex.EncodeToString(compiled[i].Digest[:]) {
			if err := a.attach(m); err != nil {
				a.cache.retry = true
				return &proto.StatusError{Document: desiredKey, Message: fmt.Sprintf("attach to %s: %v", m.cfg.Name, err)}, false
			}
			m.writes = 0
			continue
		}
		a.log.Info("writing maps", zap.String("iface", m.cfg.Name), zap.Int("rules", len(compiled[i].Rules)))
		rep, err := m.fw.Enforce(compiled[i])
		if err != nil {
			a.cache.retry = true
			return &proto.StatusError{Document: desiredKey, Message: fmt.Sprintf("apply to %s: %v", m.cfg.Name, err)}, false
		}
		m.writes = rep.TotalWrites()
		a.log.Info("maps written", zap.String("iface", m.cfg.Name), zap.Int("writes", m.writes),
			zap.Bool("incremental", rep.Incremental), zap.Duration("place", rep.Steps.Place),
			zap.Duration("tables", rep.Steps.Tables), zap.Duration("docs", rep.Steps.Docs), zap.Duration("flip", rep.Steps.Flip))
		m.digest, m.rules, m.appliedAt = hex.EncodeToString(rep.Digest[:]), rep.Rules, time.Now().UTC()
		a.metrics.mapWrites.Add(float64(m.writes))
		if err := a.attach(m); err != nil {
			a.cache.retry = true
			return &proto.StatusError{Document: desiredKey, Message: fmt.Sprintf("attach to %s: %v", m.cfg.Name, err)}, false
		}
	}
	for i, m := range a.ifaces {
		m.base = compiled[i]
	}
	// A whole compile of big tables leaves much garbage; an update little.
	a.cache.release = !updated && bigTables(compiled)
	return nil, updated
}

// bpfDeltas converts set deltas for Compiled.Update.
func bpfDeltas(deltas []setDelta) []bpf.SetDelta {
	out := make([]bpf.SetDelta, len(deltas))
	for i, d := range deltas {
		out[i] = bpf.SetDelta{RuleSet: d.ruleSet, Set: d.set, Added: d.added, Removed: d.removed}
	}
	return out
}

// checkSetSizes checks that each changed chunked set holds, after the
// update, as many prefixes as its document says. Deltas come from the
// chunks that changed: if chunks repeated a prefix, removing one copy
// would remove it from the update but not from the set, and only a whole
// compile sees the set as its chunks list it.
func checkSetSizes(u *bpf.Compiled, stored []proto.RuleSet, deltas []setDelta) error {
	for _, d := range deltas {
		for _, rs := range stored {
			set, ok := rs.Sets[d.set]
			if rs.Name != d.ruleSet || !ok || len(set.Chunks) == 0 {
				continue
			}
			if n, ok := u.SetSize(d.ruleSet, d.set); ok && n != set.Count {
				return fmt.Errorf("%w: set %s/%s holds %d distinct prefixes, its document says %d", bpf.ErrNeedsCompile, d.ruleSet, d.set, n, set.Count)
			}
		}
	}
	return nil
}

// bigTables reports whether an apply wrote big prefix tables: then the
// compiled tables are much garbage once it is done, and so are the mmaps
// of the maps they were written through, which are only unmapped when a
// collection finds them.
func bigTables(compiled []*bpf.Compiled) bool {
	for _, c := range compiled {
		if c.Src4Range != nil || c.Dst4Range != nil || c.Src6Range != nil || c.Dst6Range != nil {
			return true
		}
	}
	return false
}

// releaseMemory gives the memory of an apply of big prefix tables back at
// once. Without it an idle agent keeps it until the heap grows enough for
// the next collection.
func releaseMemory() { debug.FreeOSMemory() }

// publishStatus hands the reporter a new status document.
func (a *Agent) publishStatus() {
	c := &a.cache
	st := proto.HostStatus{
		APIVersion: proto.APIVersion, Kind: proto.KindHostStatus,
		Host: a.cfg.Host, Labels: a.cfg.Labels, AgentVersion: agentVersion(),
		StartedAt: a.started, UpdatedAt: time.Now().UTC(),
		Applied: c.applied, Revision: c.rev, InSync: c.inSync, LastError: c.lastError,
	}
	if st.Applied == nil {
		st.Applied = []proto.RuleSetRef{}
	}
	for _, m := range a.ifaces {
		is := proto.InterfaceStatus{Name: m.cfg.Name, AttachMode: string(m.mode), Attached: m.attached,
			Digest: m.digest, Rules: m.rules, AppliedAt: m.appliedAt, Writes: m.writes}
		if m.fw == nil && m.loadErr != nil {
			// Not loaded: whether a program pinned before still filters.
			is.Error = m.loadErr.Error()
			is.Attached = bpf.LinkPinned(bpf.Options{PinPath: a.cfg.PinPath, Interface: m.cfg.Name})
			if st.DataPlaneError == nil {
				st.DataPlaneError = &proto.DataPlaneError{Interface: m.cfg.Name, Message: m.loadErr.Error(),
					Since: a.dataPlane.since, Attempts: a.dataPlane.attempts, NextAttemptAt: a.dataPlane.next}
			}
		}
		st.Interfaces = append(st.Interfaces, is)
	}
	sort.Slice(st.Interfaces, func(i, j int) bool { return st.Interfaces[i].Name < st.Interfaces[j].Name })
	a.metrics.inSync.Set(boolFloat(c.inSync))
	a.status.set(st)
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
