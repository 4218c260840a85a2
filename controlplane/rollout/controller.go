package rollout

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// Defaults of ControllerOptions and the controller's timings.
const (
	DefaultInterval = time.Second
	// SessionTTL is the lease of the leader's election key, in seconds: a
	// leader that dies without resigning is replaced within about this.
	SessionTTL = 5
	// roundTimeout bounds one round's reads and writes.
	roundTimeout = 30 * time.Second
	// settle lets a burst of watch events fold into one round.
	settle = 10 * time.Millisecond
	// resignTimeout bounds the resignation when Run's context ends.
	resignTimeout = 2 * time.Second
)

var (
	// errNotLeader ends a leadership term: a guarded write found that the
	// election key is no longer this controller's.
	errNotLeader = etcdstore.ErrNotLeader
	// errStale: a write's compares failed because a key changed after
	// the round's snapshot; the round is run again.
	errStale = etcdstore.ErrStale
)

// ControllerOptions configure a Controller.
type ControllerOptions struct {
	// Name is the replica's name: the election value and
	// RolloutState.Controller.
	Name string
	// Interval is the resync period (default 1s): a round runs at least
	// this often while leading, and on every relevant etcd change.
	Interval time.Duration
	// Log receives the controller's logs (nil: none).
	Log *zap.Logger
	// Retention is how long a finished (succeeded or aborted) rollout is
	// kept after it finished (0: DefaultRetention; negative: forever). The
	// newest rollout of each rule set is kept whatever its age; the audit
	// trail keeps who did what.
	Retention time.Duration
	// GC configures the storage collector the leader runs between rounds.
	GC GCOptions
}

// DefaultRetention is how long finished rollouts are kept by default.
const DefaultRetention = 7 * 24 * time.Hour

// maxPrunesPerRound bounds the deletes of one round's transaction.
const maxPrunesPerRound = 64

// Controller is the rollout controller. Run campaigns for leadership
// and, while leading, runs rounds: read a snapshot, move each active
// rollout on (writing its state), and write the desired state of every
// host whose desired key differs from Desired. Every write is guarded by
// the leadership compare, so a deposed leader writes nothing.
type Controller struct {
	st       *etcdstore.Store
	keys     proto.Keys
	name     string
	interval time.Duration
	keep     time.Duration
	gc       GCOptions
	log      *zap.Logger
	metrics  *metrics

	leader atomic.Bool
	// now and sessionTTL are fixed but for tests.
	now        func() time.Time
	sessionTTL int
}

// NewController returns a controller of the documents st holds.
func NewController(st *etcdstore.Store, opts ControllerOptions) *Controller {
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.Retention == 0 {
		opts.Retention = DefaultRetention
	}
	return &Controller{
		st: st, keys: st.Keys(), name: opts.Name, interval: opts.Interval, keep: opts.Retention, gc: opts.GC,
		log:     opts.Log.With(zap.String("controller", opts.Name)),
		metrics: newMetrics(),
		now:     time.Now, sessionTTL: SessionTTL,
	}
}

// IsLeader says whether the controller leads now.
func (c *Controller) IsLeader() bool { return c.leader.Load() }

func (c *Controller) setLeader(on bool) {
	c.leader.Store(on)
	if on {
		c.metrics.leader.Set(1)
		return
	}
	c.metrics.leader.Set(0)
	c.metrics.rollouts.Reset()
}

// Run campaigns for leadership on keys.Election() and leads until ctx
// ends or the session is lost, then campaigns again. When ctx ends it
// resigns (so another replica takes over at once) and returns nil.
func (c *Controller) Run(ctx context.Context) error {
	wait := 200 * time.Millisecond
	for {
		err := c.term(ctx)
		if ctx.Err() != nil {
			return nil
		}
		c.log.Warn("leadership: campaigning again", zap.Duration("after", wait), zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
		if errors.Is(err, errNotLeader) {
			wait = 200 * time.Millisecond
		}
	}
}

// term is one session: campaign, lead, step down.
func (c *Controller) term(ctx context.Context) error {
	t, err := c.st.Campaign(ctx, c.keys.Election(), c.name, c.sessionTTL)
	if err != nil {
		return err
	}
	defer func() {
		if err := t.Close(); err != nil {
			c.log.Debug("revoke the session lease", zap.Error(err))
		}
	}()
	// The term ends when ctx does or when the session is lost.
	tctx, tcancel := context.WithCancel(ctx)
	defer tcancel()
	stop := context.AfterFunc(t.Context(), tcancel)
	defer stop()

	c.setLeader(true)
	c.log.Info("leading", zap.String("key", t.Key), zap.Int64("revision", t.Rev))
	err = c.lead(tctx, t)
	c.setLeader(false)

	lost := t.Context().Err() != nil
	if !lost && !errors.Is(err, errNotLeader) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resignTimeout)
		if rerr := t.Resign(rctx); rerr != nil {
			c.log.Warn("resign", zap.String("key", t.Key), zap.Error(rerr))
		}
		cancel()
	}
	switch {
	case err != nil:
		c.log.Warn("stepped down", zap.Error(err))
		return err
	case lost:
		c.log.Warn("stepped down: session lost", zap.String("key", t.Key))
		return fmt.Errorf("%w: session of %s lost", errNotLeader, t.Key)
	}
	c.log.Info("stepped down")
	return nil
}

// lead runs rounds until ctx ends or the leadership is lost.
func (c *Controller) lead(ctx context.Context, t *etcdstore.Term) error {
	kick := make(chan struct{}, 1)
	wctx, wcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.watch(wctx, kick)
	}()
	defer func() {
		wcancel()
		wg.Wait()
	}()

	reader := newSnapshotReader(c.st, c.log)
	gc, err := newCollector(c.st, c.gc, c.log)
	if err != nil {
		return err
	}
	tick := time.NewTicker(c.interval)
	defer tick.Stop()
	for {
		err := c.round(ctx, t, reader, gc)
		switch {
		case errors.Is(err, errNotLeader):
			return err
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, errStale):
			c.log.Debug("round: snapshot stale, again", zap.Error(err))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(settle):
			}
			continue
		case err != nil:
			c.log.Warn("round failed", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-kick:
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(settle):
			}
		}
	}
}

// watch signals kick on every change a round may act on, restarting its
// watches on errors (rounds read everything again, so nothing is lost
// between two watches).
func (c *Controller) watch(ctx context.Context, kick chan<- struct{}) {
	for ctx.Err() == nil {
		err := c.watchOnce(ctx, kick)
		if ctx.Err() != nil {
			return
		}
		c.log.Debug("watch ended: restarting", zap.Error(err))
		select {
		case kick <- struct{}{}:
		default:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *Controller) watchOnce(ctx context.Context, kick chan<- struct{}) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := c.st.WatchPrefixes(wctx, c.keys.Hosts(), c.keys.RuleSets(), c.keys.Rollouts())
	for {
		var b etcdstore.WatchBatch
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case b, ok = <-batches:
		}
		if !ok {
			return errors.New("watch channel closed")
		}
		if b.Err != nil {
			return b.Err
		}
		if slices.ContainsFunc(b.Events, func(ev etcdstore.Event) bool { return c.relevant(ev.Key) }) {
			select {
			case kick <- struct{}{}:
			default:
			}
		}
	}
}

// relevant says whether a change of key can change a round's decisions:
// statuses and desired states, heads and releases, rollouts (not
// telemetry, nor versions, which only matter once a head names them).
func (c *Controller) relevant(key string) bool {
	if _, leaf, ok := c.keys.ParseHostKey(key); ok {
		return leaf == "status" || leaf == "desired"
	}
	if _, _, ok := c.keys.ParseRuleSetVersion(key); ok {
		return false
	}
	return true
}

// round reads a snapshot, moves the rollouts on and writes the desired
// states that differ.
func (c *Controller) round(ctx context.Context, t *etcdstore.Term, reader *snapshotReader, gc *collector) (err error) {
	start := time.Now()
	defer func() {
		c.metrics.roundSeconds.Observe(time.Since(start).Seconds())
		c.metrics.rounds.WithLabelValues(roundResult(err)).Inc()
	}()
	ctx, cancel := context.WithTimeout(ctx, roundTimeout)
	defer cancel()

	snap, err := reader.read(ctx)
	if err != nil {
		return err
	}
	now := c.now().UTC()
	s := &stepper{snap: snap, keys: c.keys, now: now}
	for i := range snap.Rollouts {
		ro := &snap.Rollouts[i]
		next, release := s.step(ro)
		if sameState(ro.State, next) {
			continue
		}
		next.UpdatedAt, next.Controller = now, c.name
		if err := c.writeState(ctx, t, ro, next, release, now); err != nil {
			return err
		}
		c.logChanges(ro, next)
		ro.State = next
		if release {
			// The desired states below must see the release just written,
			// or they would send the hosts back to the old one for a round.
			rs := snap.RuleSets[ro.Spec.RuleSet]
			rs.Released = ro.Spec.Version
			snap.RuleSets[ro.Spec.RuleSet] = rs
		}
	}
	counts := map[string]float64{}
	for _, ro := range snap.Rollouts {
		counts[ro.State.State]++
	}
	for _, st := range []string{proto.RolloutRunning, proto.RolloutPaused, proto.RolloutHalted,
		proto.RolloutSucceeded, proto.RolloutAborting, proto.RolloutAborted} {
		c.metrics.rollouts.WithLabelValues(st).Set(counts[st])
	}
	if err := c.writeDesired(ctx, t, snap); err != nil {
		return err
	}
	if err := c.prune(ctx, t, snap, now); err != nil {
		return err
	}
	if gc != nil && gc.due(now) {
		if _, err := gc.collect(ctx, t, snap, now); err != nil {
			return fmt.Errorf("storage collection: %w", err)
		}
	}
	return nil
}

// prune deletes finished rollouts older than the retention, but for the
// newest rollout of each rule set. Finished rollouts decide nothing (only
// active ones enter Desired), so deleting them changes no host. Each is
// deleted only if its state is as the snapshot read it.
func (c *Controller) prune(ctx context.Context, t *etcdstore.Term, snap *Snapshot, now time.Time) error {
	if c.keep < 0 {
		return nil
	}
	newest := map[string]string{} // rule set -> newest rollout id
	for _, ro := range snap.Rollouts {
		if id, ok := newest[ro.Spec.RuleSet]; !ok || ro.ID > id {
			newest[ro.Spec.RuleSet] = ro.ID
		}
	}
	var guards []etcdstore.Guard
	var writes []etcdstore.Write
	var ids []string
	for _, ro := range snap.Rollouts {
		if active(ro.State.State) || newest[ro.Spec.RuleSet] == ro.ID || now.Sub(ro.State.UpdatedAt) < c.keep {
			continue
		}
		if len(ids) == maxPrunesPerRound {
			break // the next round goes on
		}
		guards = append(guards, etcdstore.Unchanged(c.keys.RolloutState(ro.ID), ro.StateRevision))
		writes = append(writes, etcdstore.DeletePrefix(c.keys.Rollouts()+ro.ID+"/"))
		ids = append(ids, ro.ID)
	}
	if len(ids) == 0 {
		return nil
	}
	if _, err := c.st.CommitAsLeader(ctx, t, guards, writes); err != nil {
		return fmt.Errorf("prune finished rollouts %v: %w", ids, err)
	}
	c.log.Info("finished rollouts pruned", zap.Strings("rollouts", ids), zap.Duration("retention", c.keep))
	return nil
}

func roundResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, errStale):
		return "stale"
	case errors.Is(err, errNotLeader):
		return "deposed"
	}
	return "error"
}

// sameState compares two rollout states but for when and by whom they
// were written.
func sameState(a, b proto.RolloutState) bool {
	a.UpdatedAt, b.UpdatedAt = time.Time{}, time.Time{}
	a.Controller, b.Controller = "", ""
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}

// writeState writes a rollout's next state (and, when it succeeded, the
// rule set's release) if neither its control nor its state changed
// since the snapshot.
func (c *Controller) writeState(ctx context.Context, t *etcdstore.Term, ro *RolloutView, next proto.RolloutState, release bool, now time.Time) error {
	stateKey := c.keys.RolloutState(ro.ID)
	docs := map[string]any{stateKey: next}
	if release {
		docs[c.keys.RuleSetReleased(ro.Spec.RuleSet)] = proto.Release{Version: ro.Spec.Version, Rollout: ro.ID, At: now}
	}
	writes, err := marshalPuts(docs)
	if err != nil {
		return fmt.Errorf("rollout %s: %w", ro.ID, err)
	}
	guards := []etcdstore.Guard{
		etcdstore.Unchanged(c.keys.RolloutControl(ro.ID), ro.ControlRevision),
		etcdstore.Unchanged(stateKey, ro.StateRevision),
	}
	rev, err := c.st.CommitAsLeader(ctx, t, guards, writes)
	if err != nil {
		return fmt.Errorf("rollout %s: write %s: %w", ro.ID, stateKey, err)
	}
	ro.StateRevision = rev
	return nil
}

// logChanges logs what a round changed in a rollout.
func (c *Controller) logChanges(ro *RolloutView, next proto.RolloutState) {
	log := c.log.With(zap.String("rollout", ro.ID), zap.String("ruleset", ro.Spec.RuleSet), zap.Int64("version", ro.Spec.Version))
	prev := ro.State
	if prev.State != next.State {
		log.Info("rollout state", zap.String("state", next.State), zap.Int("wave", next.Wave), zap.String("message", next.Message))
	}
	if prev.Wave != next.Wave && next.State != proto.RolloutSucceeded {
		log.Info("wave started", zap.String("state", next.State), zap.Int("wave", next.Wave))
	}
	hosts := make([]string, 0, len(next.Hosts))
	for h := range next.Hosts {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	for _, h := range hosts {
		e, old := next.Hosts[h], prev.Hosts[h]
		if e.State == old.State {
			continue
		}
		fields := []zap.Field{zap.String("host", h), zap.Int("wave", e.Wave), zap.String("state", e.State)}
		if e.State == proto.HostFailed {
			log.Warn("host failed", append(fields, zap.String("error", e.Error))...)
			continue
		}
		log.Debug("host", append(fields, zap.Int64("previous", e.Previous))...)
	}
}

// writeDesired writes the desired state of each host whose key differs
// from Desired(snap), at most txnOps hosts per transaction, each guarded
// by the leadership and by the key's mod revision in the snapshot.
func (c *Controller) writeDesired(ctx context.Context, t *etcdstore.Term, snap *Snapshot) error {
	want := Desired(snap)
	hosts := make([]string, 0, len(want))
	for h, refs := range want {
		if !sameRefs(snap.Hosts[h].Desired, refs) {
			hosts = append(hosts, h)
		}
	}
	sort.Strings(hosts)
	for start := 0; start < len(hosts); start += txnOps {
		batch := hosts[start:min(start+txnOps, len(hosts))]
		guards := make([]etcdstore.Guard, 0, len(batch))
		writes := make([]etcdstore.Write, 0, len(batch))
		for _, h := range batch {
			key := c.keys.HostDesired(h)
			refs := want[h]
			if refs == nil {
				refs = []proto.RuleSetRef{}
			}
			w, err := etcdstore.PutJSON(key, proto.NewHostDesired(refs...))
			if err != nil {
				return fmt.Errorf("host %s: %w", h, err)
			}
			guards = append(guards, etcdstore.Unchanged(key, snap.Hosts[h].DesiredRevision))
			writes = append(writes, w)
		}
		if _, err := c.st.CommitAsLeader(ctx, t, guards, writes); err != nil {
			return fmt.Errorf("write %s (and %d more hosts' desired states): %w", c.keys.HostDesired(batch[0]), len(batch)-1, err)
		}
		c.metrics.desiredWrites.Add(float64(len(batch)))
		for _, h := range batch {
			c.log.Debug("desired state written", zap.String("host", h), zap.Stringers("ruleSets", refsOf(want[h])))
		}
	}
	if len(hosts) > 0 {
		c.log.Info("desired states written", zap.Int("hosts", len(hosts)), zap.Int64("snapshot", snap.Revision))
	}
	return nil
}

func refsOf(refs []proto.RuleSetRef) []fmt.Stringer {
	out := make([]fmt.Stringer, len(refs))
	for i, r := range refs {
		out[i] = r
	}
	return out
}

// sameRefs says whether a host's desired document already says refs.
func sameRefs(d *proto.HostDesired, refs []proto.RuleSetRef) bool {
	return d != nil && slices.Equal(d.RuleSets, refs)
}
