package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// controller is a Controller running in the test, with its own client.
type controller struct {
	*Controller
	t      *testing.T
	cli    *clientv3.Client
	cancel context.CancelFunc
	done   chan error
}

// startController runs a controller on its own client until stop or the
// end of the test.
func (e *env) startController(name string, opts ...func(*ControllerOptions)) *controller {
	e.t.Helper()
	cli := etcdtest.Client(e.t, e.endpoints)
	o := ControllerOptions{
		Name: name, Interval: 100 * time.Millisecond,
		Log: zaptest.NewLogger(e.t, zaptest.Level(zap.InfoLevel)).Named(name),
	}
	for _, opt := range opts {
		opt(&o)
	}
	c := NewController(etcdstore.New(cli, e.keys), o)
	ctx, cancel := context.WithCancel(context.Background())
	rc := &controller{Controller: c, t: e.t, cli: cli, cancel: cancel, done: make(chan error, 1)}
	go func() { rc.done <- c.Run(ctx) }()
	e.t.Cleanup(rc.stop)
	return rc
}

// stop cancels the controller and waits for Run to return.
func (c *controller) stop() {
	c.cancel()
	if err := <-c.done; err != nil {
		c.t.Errorf("controller %s: Run returned %v", c.name, err)
	}
	c.done <- nil // a second stop returns at once
}

// fakeAgent stands in for xdpfw-agent: it watches its host's desired key
// and writes a status as the real agent does (Applied, Revision = the
// etcd revision it has seen, InSync, LastError naming the refused
// document), under a lease, so that stopping it makes the host lost. It
// applies nothing: the real agents are exercised against the controller
// by the integration tests (integration/).
type fakeAgent struct {
	t      *testing.T
	cli    *clientv3.Client
	keys   proto.Keys
	host   string
	labels map[string]string

	mu sync.Mutex
	// refuse: versions it refuses (LastError about their document).
	refuse map[proto.RuleSetRef]bool
	// hold: versions it does not report applied until released (a slow
	// apply).
	hold map[proto.RuleSetRef]bool
	// seen and applied: when it first saw each version in its desired
	// state, and when it first reported it applied.
	seen, applied map[proto.RuleSetRef]time.Time
	status        proto.HostStatus
	// history lists each desired state it was given that differs from
	// the one before ("edge@1 core@2"; "" for none).
	history []string
	wake    chan struct{}

	lease  clientv3.LeaseID
	cancel context.CancelFunc
	done   chan struct{}
}

type agentOpt func(*fakeAgent)

func refusing(refs ...proto.RuleSetRef) agentOpt {
	return func(a *fakeAgent) {
		for _, r := range refs {
			a.refuse[r] = true
		}
	}
}

func holding(refs ...proto.RuleSetRef) agentOpt {
	return func(a *fakeAgent) {
		for _, r := range refs {
			a.hold[r] = true
		}
	}
}

func (e *env) startAgent(host string, labels map[string]string, opts ...agentOpt) *fakeAgent {
	e.t.Helper()
	a := &fakeAgent{
		t: e.t, cli: e.cli, keys: e.keys, host: host, labels: labels,
		refuse: map[proto.RuleSetRef]bool{}, hold: map[proto.RuleSetRef]bool{},
		seen: map[proto.RuleSetRef]time.Time{}, applied: map[proto.RuleSetRef]time.Time{},
		wake: make(chan struct{}, 1), done: make(chan struct{}),
	}
	for _, o := range opts {
		o(a)
	}
	lease, err := e.cli.Grant(testCtx(e.t), 30)
	if err != nil {
		e.t.Fatalf("agent %s: grant lease: %v", host, err)
	}
	a.lease = lease.ID
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	ka, err := e.cli.KeepAlive(ctx, lease.ID)
	if err != nil {
		e.t.Fatalf("agent %s: keep lease alive: %v", host, err)
	}
	go func() {
		defer close(a.done)
		a.run(ctx, ka)
	}()
	e.t.Cleanup(a.stop)
	return a
}

// stop ends the agent and revokes its lease: its status goes, the host
// is lost.
func (a *fakeAgent) stop() {
	a.cancel()
	<-a.done
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = a.cli.Revoke(ctx, a.lease)
}

// release lets the agent apply held versions.
func (a *fakeAgent) release(refs ...proto.RuleSetRef) {
	a.mu.Lock()
	for _, r := range refs {
		delete(a.hold, r)
	}
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *fakeAgent) seenAt(r proto.RuleSetRef) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.seen[r]
	return t, ok
}

func (a *fakeAgent) appliedAt(r proto.RuleSetRef) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.applied[r]
	return t, ok
}

// desiredHistory returns the desired states the agent was given, in
// order, each once (a controller that flaps shows as a repeat).
func (a *fakeAgent) desiredHistory() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.history)
}

// assertHistory asserts that every agent was given exactly the desired
// states want, in order.
func assertHistory(t *testing.T, agents []*fakeAgent, want ...string) {
	t.Helper()
	for _, a := range agents {
		if got := a.desiredHistory(); !slices.Equal(got, want) {
			t.Errorf("host %s was given desired states %q, want %q", a.host, got, want)
		}
	}
}

func (a *fakeAgent) lastStatus() proto.HostStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status
}

// reports says whether the agent's last status has exactly refs applied
// and in sync.
func (a *fakeAgent) reports(refs ...proto.RuleSetRef) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status.InSync && slices.Equal(a.status.Applied, refs)
}

func (a *fakeAgent) run(ctx context.Context, ka <-chan *clientv3.LeaseKeepAliveResponse) {
	key := a.keys.HostDesired(a.host)
	var doc []byte
	var rev int64
	for ctx.Err() == nil {
		resp, err := a.cli.Get(ctx, key)
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		rev = resp.Header.Revision
		if len(resp.Kvs) > 0 {
			doc = resp.Kvs[0].Value
		}
		break
	}
	a.process(ctx, doc, rev)
	wch := a.cli.Watch(ctx, key, clientv3.WithRev(rev+1))
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-ka:
			if !ok {
				ka = nil
			}
			continue
		case <-a.wake:
		case resp, ok := <-wch:
			if !ok || resp.Err() != nil {
				if ctx.Err() == nil {
					a.t.Errorf("agent %s: watch of %s ended: %v", a.host, key, resp.Err())
				}
				return
			}
			for _, ev := range resp.Events {
				doc = ev.Kv.Value
				if ev.Type == clientv3.EventTypeDelete {
					doc = nil
				}
			}
			rev = resp.Header.Revision
		}
		a.process(ctx, doc, rev)
	}
}

// process reacts to the desired state doc seen at revision rev as the
// real agent does: refuse it (keeping what is applied), or apply it and
// report; a held version is neither, for now.
func (a *fakeAgent) process(ctx context.Context, doc []byte, rev int64) {
	a.mu.Lock()
	st := a.status
	st.APIVersion, st.Kind, st.Host, st.Labels = proto.APIVersion, proto.KindHostStatus, a.host, a.labels
	st.Revision, st.UpdatedAt = rev, time.Now().UTC()
	now := time.Now()
	desiredKey := a.keys.HostDesired(a.host)
	var refs []proto.RuleSetRef
	if doc == nil {
		st.InSync = false
		st.LastError = &proto.StatusError{Document: desiredKey, Revision: rev, Message: "no desired state for this host"}
	} else if d, err := proto.DecodeHostDesired(doc); err != nil {
		st.InSync = false
		st.LastError = &proto.StatusError{Document: desiredKey, Revision: rev, Message: err.Error()}
	} else {
		refs = d.RuleSets
		st.InSync, st.LastError = true, nil
		var parts []string
		for _, r := range refs {
			parts = append(parts, r.String())
		}
		if h := strings.Join(parts, " "); len(a.history) == 0 || a.history[len(a.history)-1] != h {
			a.history = append(a.history, h)
		}
	}
	for _, r := range refs {
		if _, ok := a.seen[r]; !ok {
			a.seen[r] = now
		}
	}
	for _, r := range refs {
		if a.hold[r] {
			a.mu.Unlock()
			return
		}
	}
	for _, r := range refs {
		if a.refuse[r] {
			st.InSync = false
			st.LastError = &proto.StatusError{Document: a.keys.RuleSetVersion(r.Name, r.Version), Version: r.Version,
				Revision: rev, Message: "refused by the test", At: now.UTC()}
			break
		}
	}
	if st.InSync {
		st.Applied = append([]proto.RuleSetRef{}, refs...)
		for _, r := range refs {
			if _, ok := a.applied[r]; !ok {
				a.applied[r] = now
			}
		}
	}
	if st.Applied == nil {
		st.Applied = []proto.RuleSetRef{}
	}
	a.status = st
	a.mu.Unlock()

	b, err := json.Marshal(st)
	if err != nil {
		a.t.Errorf("agent %s: encode status: %v", a.host, err)
		return
	}
	if _, err := a.cli.Put(ctx, a.keys.HostStatus(a.host), string(b), clientv3.WithLease(a.lease)); err != nil && ctx.Err() == nil {
		a.t.Errorf("agent %s: write status: %v", a.host, err)
	}
}

// startFleet starts agents host00..host<n-1> with labels and options.
func (e *env) startFleet(n int, labels map[string]string, opts ...agentOpt) map[string]*fakeAgent {
	agents := map[string]*fakeAgent{}
	for i := range n {
		h := fmt.Sprintf("host%02d", i)
		agents[h] = e.startAgent(h, labels, opts...)
	}
	return agents
}

func names(agents map[string]*fakeAgent) []string {
	out := make([]string, 0, len(agents))
	for h := range agents {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

// waitReports waits until every given agent reports refs applied.
func waitReports(t *testing.T, agents []*fakeAgent, timeout time.Duration, refs ...proto.RuleSetRef) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%d hosts to report %v", len(agents), refs), func() (bool, string) {
		var behind []string
		for _, a := range agents {
			if !a.reports(refs...) {
				behind = append(behind, a.host)
			}
		}
		return len(behind) == 0, "behind: " + strings.Join(behind, ", ")
	})
}

func pick(agents map[string]*fakeAgent, hosts ...string) []*fakeAgent {
	out := make([]*fakeAgent, len(hosts))
	for i, h := range hosts {
		out[i] = agents[h]
	}
	return out
}

// release writes rulesets/<name>/released as a finished rollout would.
func (e *env) release(name string, version int64) {
	e.t.Helper()
	b, _ := json.Marshal(proto.Release{Version: version, Rollout: "test", At: time.Now().UTC()})
	if _, err := e.cli.Put(testCtx(e.t), e.keys.RuleSetReleased(name), string(b)); err != nil {
		e.t.Fatalf("release %s@%d: %v", name, version, err)
	}
}

func (e *env) released(name string) proto.Release {
	e.t.Helper()
	resp, err := e.cli.Get(testCtx(e.t), e.keys.RuleSetReleased(name))
	if err != nil {
		e.t.Fatalf("read release of %s: %v", name, err)
	}
	var r proto.Release
	if len(resp.Kvs) > 0 {
		if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
			e.t.Fatalf("decode release of %s: %v", name, err)
		}
	}
	return r
}

// desired returns a host's desired rule sets and the key's mod revision
// (0: no key).
func (e *env) desired(host string) ([]proto.RuleSetRef, int64) {
	e.t.Helper()
	d, rev, err := e.store.GetDesired(testCtx(e.t), host)
	if errors.Is(err, etcdstore.ErrNotFound) {
		return nil, 0
	}
	if err != nil {
		e.t.Fatalf("desired state of %s: %v", host, err)
	}
	return d.RuleSets, rev
}

// waitRollout waits until cond holds for the rollout.
func (e *env) waitRollout(id string, timeout time.Duration, what string, cond func(proto.Rollout) bool) proto.Rollout {
	e.t.Helper()
	var last proto.Rollout
	waitFor(e.t, timeout, "rollout "+id+" "+what, func() (bool, string) {
		last = e.get(id)
		return cond(last), describe(last)
	})
	return last
}

func stateIs(state string) func(proto.Rollout) bool {
	return func(ro proto.Rollout) bool { return ro.Status.State == state }
}

// waitFor polls cond every 20ms until it holds or timeout passes; the
// failure says what was awaited and the last detail cond returned.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: still waiting for %s; last seen: %s", timeout, what, detail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var edgeLabels = map[string]string{"role": "edge"}

// TestRolloutWavesAdvanceOnHealth: ten hosts, waves 1, 50%, 100% and a
// pause of 1s. Each wave starts only once every host of the one before
// reports the version applied and the pause has passed since.
func TestRolloutWavesAdvanceOnHealth(t *testing.T) {
	e := newEnv(t)
	e.putVersions("edge", edgeLabels, 2)
	e.release("edge", 1)
	v1, v2 := ref("edge", 1), ref("edge", 2)
	agents := e.startFleet(10, edgeLabels, holding(v2))
	ctrl := e.startController("c1")
	waitReports(t, pick(agents, names(agents)...), 20*time.Second, v1)

	const pause = time.Second
	ro := e.create(proto.RolloutSpec{RuleSet: "edge", Version: 2, Waves: []string{"1", "50%", "100%"}, Pause: "1s", Deadline: "1m"})
	order := orderHosts(ro.ID, names(agents))
	waves := [][]string{order[:1], order[1:5], order[5:]}
	t.Logf("rollout %s waves %v", ro.ID, waves)

	// seenBy returns the hosts that have been given v2.
	seenBy := func() []string {
		var out []string
		for _, h := range order {
			if _, ok := agents[h].seenAt(v2); ok {
				out = append(out, h)
			}
		}
		return out
	}
	// holdsBack asserts for d that only want have been given v2.
	holdsBack := func(d time.Duration, want []string, why string) {
		t.Helper()
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if got := seenBy(); !sameSet(got, want) {
				t.Fatalf("%s: hosts given %s: %v, want only %v", why, v2, got, want)
			}
		}
	}
	waitGiven := func(hosts []string) {
		t.Helper()
		waitFor(t, 20*time.Second, fmt.Sprintf("%v to be given %s", hosts, v2), func() (bool, string) {
			for _, h := range hosts {
				if _, ok := agents[h].seenAt(v2); !ok {
					return false, "given so far: " + strings.Join(seenBy(), ", ")
				}
			}
			return true, ""
		})
	}
	// lastApplied is when the last of hosts reported v2 applied.
	lastApplied := func(hosts []string) time.Time {
		t.Helper()
		var last time.Time
		for _, h := range hosts {
			at, ok := agents[h].appliedAt(v2)
			if !ok {
				t.Fatalf("%s has not applied %s", h, v2)
			}
			if at.After(last) {
				last = at
			}
		}
		return last
	}
	// firstGiven is when the first of hosts was given v2.
	firstGiven := func(hosts []string) time.Time {
		first := time.Now().Add(time.Hour)
		for _, h := range hosts {
			if at, ok := agents[h].seenAt(v2); ok && at.Before(first) {
				first = at
			}
		}
		return first
	}

	// Wave 0: one host, held: nothing else moves.
	waitGiven(waves[0])
	holdsBack(1500*time.Millisecond, waves[0], "wave 0 not healthy yet")
	if got := e.get(ro.ID); got.Status.State != proto.RolloutRunning || got.Status.Wave != 0 ||
		got.Status.Hosts[waves[0][0]].State != proto.HostApplying || len(got.Status.Hosts) != 1 {
		t.Fatalf("during wave 0: %s", describe(got))
	}
	agents[waves[0][0]].release(v2)

	// Wave 1 starts a pause after wave 0 is healthy.
	waitGiven(waves[1])
	if healthy, started := lastApplied(waves[0]), firstGiven(waves[1]); started.Sub(healthy) < pause {
		t.Fatalf("wave 1 started %s after wave 0 was healthy, before the pause of %s", started.Sub(healthy), pause)
	}
	holdsBack(200*time.Millisecond, append(slices.Clone(waves[0]), waves[1]...), "wave 1 just started")
	// Three of its four hosts apply: wave 2 waits for the fourth.
	for _, h := range waves[1][:3] {
		agents[h].release(v2)
	}
	waitReports(t, pick(agents, waves[1][:3]...), 10*time.Second, v2)
	holdsBack(1500*time.Millisecond, append(slices.Clone(waves[0]), waves[1]...), "one host of wave 1 still applying")
	agents[waves[1][3]].release(v2)

	waitGiven(waves[2])
	if healthy, started := lastApplied(waves[1]), firstGiven(waves[2]); started.Sub(healthy) < pause {
		t.Fatalf("wave 2 started %s after wave 1 was healthy, before the pause of %s", started.Sub(healthy), pause)
	}
	for _, h := range waves[2] {
		agents[h].release(v2)
	}

	got := e.waitRollout(ro.ID, 20*time.Second, "to succeed", stateIs(proto.RolloutSucceeded))
	if got.Status.Wave != 3 || got.Status.Controller != "c1" {
		t.Fatalf("succeeded: %s, controller %q", describe(got), got.Status.Controller)
	}
	for w, hosts := range waves {
		for _, h := range hosts {
			if hs := got.Status.Hosts[h]; hs.Wave != w || hs.State != proto.HostApplied || hs.Previous != 1 {
				t.Errorf("host %s: %+v, want wave %d applied, previous 1", h, hs, w)
			}
		}
	}
	if rel := e.released("edge"); rel.Version != 2 || rel.Rollout != ro.ID {
		t.Fatalf("release = %+v, want version 2 by %s", rel, ro.ID)
	}
	for _, h := range order {
		if refs, _ := e.desired(h); !slices.Equal(refs, []proto.RuleSetRef{v2}) {
			t.Errorf("host %s desires %v, want [%s]", h, refs, v2)
		}
	}
	waitReports(t, pick(agents, order...), 10*time.Second, v2)
	assertQuiet(t, ctrl, time.Second)
	assertHistory(t, pick(agents, order...), "edge@1", "edge@2")
}

// assertQuiet asserts that the controller writes no desired state for d
// (nothing changes, so nothing flaps).
func assertQuiet(t *testing.T, c *controller, d time.Duration) {
	t.Helper()
	before := counterValue(t, c, "xdpfw_controller_desired_writes_total")
	time.Sleep(d)
	if after := counterValue(t, c, "xdpfw_controller_desired_writes_total"); after != before {
		t.Fatalf("the controller wrote %v desired states while nothing changed", after-before)
	}
}

func sameSet(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}

// TestRolloutHaltsWhenHostRefuses: a host that refuses the version halts
// the rollout (maxErrorHosts 0); the others keep it; a resume retries
// and halts again; an abort returns every host to version 1.
func TestRolloutHaltsWhenHostRefuses(t *testing.T) {
	e := newEnv(t)
	e.putVersions("edge", edgeLabels, 2)
	e.release("edge", 1)
	v1, v2 := ref("edge", 1), ref("edge", 2)
	agents := e.startFleet(3, edgeLabels)
	agents["bad"] = e.startAgent("bad", edgeLabels, refusing(v2))
	e.startController("c1")
	waitReports(t, pick(agents, names(agents)...), 20*time.Second, v1)

	ro := e.create(proto.RolloutSpec{RuleSet: "edge", Version: 2})
	got := e.waitRollout(ro.ID, 20*time.Second, "to halt", stateIs(proto.RolloutHalted))
	msg := got.Status.Message
	if !strings.Contains(msg, "bad (refused edge@2: "+e.keys.RuleSetVersion("edge", 2)+": refused by the test)") ||
		!strings.Contains(msg, "1 hosts failed, more than maxErrorHosts 0") {
		t.Fatalf("halt message %q does not say which host and why", msg)
	}
	if hs := got.Status.Hosts["bad"]; hs.State != proto.HostFailed || !strings.Contains(hs.Error, "refused edge@2") {
		t.Fatalf("host bad: %+v", hs)
	}
	// The others keep the version: a halt rolls nothing back.
	good := []string{"host00", "host01", "host02"}
	waitReports(t, pick(agents, good...), 10*time.Second, v2)
	e.waitRollout(ro.ID, 10*time.Second, "to see the others applied", func(ro proto.Rollout) bool {
		for _, h := range good {
			if ro.Status.Hosts[h].State != proto.HostApplied {
				return false
			}
		}
		return true
	})
	if st := agents["bad"].lastStatus(); st.InSync || !slices.Equal(st.Applied, []proto.RuleSetRef{v1}) {
		t.Fatalf("the refusing host reports %+v, want %s still applied and not in sync", st, v1)
	}

	// A pause makes no sense on a halted rollout; a resume retries the
	// host, which refuses again.
	if _, err := e.mgr.Control(testCtx(t), ro.ID, proto.RolloutWantPause, "tester", nil); !errors.Is(err, ErrConflict) {
		t.Fatalf("pause of a halted rollout: %v, want ErrConflict", err)
	}
	resumed := e.control(ro.ID, proto.RolloutWantRun)
	resp, err := e.cli.Get(testCtx(t), e.keys.RolloutControl(ro.ID))
	if err != nil {
		t.Fatal(err)
	}
	controlRev := resp.Kvs[0].ModRevision
	got = e.waitRollout(ro.ID, 20*time.Second, "to halt again after the resume", func(ro proto.Rollout) bool {
		return ro.Status.State == proto.RolloutHalted && ro.Status.ControlRevision == controlRev
	})
	if resumed.Control.Want != proto.RolloutWantRun || got.Status.Hosts["bad"].State != proto.HostFailed {
		t.Fatalf("after the resume: %s", describe(got))
	}

	e.control(ro.ID, proto.RolloutWantAbort)
	got = e.waitRollout(ro.ID, 20*time.Second, "to be aborted", stateIs(proto.RolloutAborted))
	for h := range agents {
		if hs := got.Status.Hosts[h]; hs.State != proto.HostReverted || hs.Previous != 1 {
			t.Errorf("host %s: %+v, want reverted to 1", h, hs)
		}
		if refs, _ := e.desired(h); !slices.Equal(refs, []proto.RuleSetRef{v1}) {
			t.Errorf("host %s desires %v, want [%s]", h, refs, v1)
		}
	}
	waitReports(t, pick(agents, names(agents)...), 10*time.Second, v1)
	if rel := e.released("edge"); rel.Version != 1 {
		t.Fatalf("release = %+v, want still 1", rel)
	}
	if _, err := e.mgr.Control(testCtx(t), ro.ID, proto.RolloutWantRun, "tester", nil); !errors.Is(err, ErrConflict) {
		t.Fatalf("resume of an aborted rollout: %v, want ErrConflict", err)
	}
	assertHistory(t, pick(agents, names(agents)...), "edge@1", "edge@2", "edge@1")
}

// TestAbortRestoresPreviousVersions: aborting mid-rollout returns the
// hosts of the first wave to their previous version, and takes a rule
// set that had no release away again; hosts no rollout touched are never
// written.
func TestAbortRestoresPreviousVersions(t *testing.T) {
	e := newEnv(t)
	e.putVersions("edge", nil, 2)
	e.release("edge", 1)
	e.putVersions("canary", nil, 1) // never released
	v1, v2, c1 := ref("edge", 1), ref("edge", 2), ref("canary", 1)
	agents := e.startFleet(6, edgeLabels)
	e.startController("c1")
	waitReports(t, pick(agents, names(agents)...), 20*time.Second, v1)
	untouchedRev := map[string]int64{}
	for h := range agents {
		_, untouchedRev[h] = e.desired(h)
	}

	a := e.create(proto.RolloutSpec{RuleSet: "edge", Version: 2, Waves: []string{"50%", "100%"}, Pause: "1h"})
	b := e.create(proto.RolloutSpec{RuleSet: "canary", Version: 1, Waves: []string{"1", "100%"}, Pause: "1h"})
	waveA := orderHosts(a.ID, names(agents))[:3]
	waveB := orderHosts(b.ID, names(agents))[:1]
	healthy := func(ro proto.Rollout) bool { return !ro.Status.WaveHealthyAt.IsZero() }
	e.waitRollout(a.ID, 20*time.Second, "wave 0 healthy", healthy)
	e.waitRollout(b.ID, 20*time.Second, "wave 0 healthy", healthy)
	for h := range agents {
		want := []proto.RuleSetRef{}
		if slices.Contains(waveB, h) {
			want = append(want, c1)
		}
		if slices.Contains(waveA, h) {
			want = append(want, v2)
		} else {
			want = append(want, v1)
		}
		if !agents[h].reports(want...) {
			t.Fatalf("before the abort, host %s should report %v", h, want)
		}
	}

	e.control(a.ID, proto.RolloutWantAbort)
	e.control(b.ID, proto.RolloutWantAbort)
	gotA := e.waitRollout(a.ID, 20*time.Second, "to be aborted", stateIs(proto.RolloutAborted))
	gotB := e.waitRollout(b.ID, 20*time.Second, "to be aborted", stateIs(proto.RolloutAborted))
	for _, h := range waveA {
		if hs := gotA.Status.Hosts[h]; hs.State != proto.HostReverted || hs.Previous != 1 {
			t.Errorf("rollout %s host %s: %+v, want reverted to 1", a.ID, h, hs)
		}
	}
	if hs := gotB.Status.Hosts[waveB[0]]; hs.State != proto.HostReverted || hs.Previous != 0 || len(gotB.Status.Hosts) != 1 {
		t.Errorf("rollout %s: %s, want %s reverted to nothing", b.ID, describe(gotB), waveB[0])
	}
	if len(gotA.Status.Hosts) != 3 {
		t.Errorf("rollout %s touched %s, want only its first wave", a.ID, describe(gotA))
	}
	waitReports(t, pick(agents, names(agents)...), 10*time.Second, v1)
	for h := range agents {
		refs, rev := e.desired(h)
		if !slices.Equal(refs, []proto.RuleSetRef{v1}) {
			t.Errorf("host %s desires %v, want [%s]", h, refs, v1)
		}
		if !slices.Contains(waveA, h) && !slices.Contains(waveB, h) && rev != untouchedRev[h] {
			t.Errorf("host %s, which no rollout touched, was written (revision %d, was %d)", h, rev, untouchedRev[h])
		}
		want := []string{"edge@1"}
		switch {
		case slices.Contains(waveA, h) && slices.Contains(waveB, h):
			// Given canary and edge@2 in either order, then both back.
			if hist := agents[h].desiredHistory(); len(hist) < 3 || hist[0] != "edge@1" || hist[len(hist)-1] != "edge@1" {
				t.Errorf("host %s was given %q", h, hist)
			}
			continue
		case slices.Contains(waveA, h):
			want = append(want, "edge@2", "edge@1")
		case slices.Contains(waveB, h):
			want = append(want, "canary@1 edge@1", "edge@1")
		}
		assertHistory(t, []*fakeAgent{agents[h]}, want...)
	}
}

// TestPauseAndResume: a paused rollout gives the version to no more
// hosts, even once the current wave is healthy; a resume finishes it.
func TestPauseAndResume(t *testing.T) {
	e := newEnv(t)
	e.putVersions("edge", nil, 2)
	e.release("edge", 1)
	v1, v2 := ref("edge", 1), ref("edge", 2)
	agents := e.startFleet(3, edgeLabels, holding(v2))
	e.startController("c1")
	waitReports(t, pick(agents, names(agents)...), 20*time.Second, v1)

	ro := e.create(proto.RolloutSpec{RuleSet: "edge", Version: 2, Waves: []string{"1", "100%"}})
	order := orderHosts(ro.ID, names(agents))
	waitFor(t, 20*time.Second, order[0]+" to be given "+v2.String(), func() (bool, string) {
		_, ok := agents[order[0]].seenAt(v2)
		return ok, ""
	})
	e.control(ro.ID, proto.RolloutWantPause)
	e.waitRollout(ro.ID, 10*time.Second, "to pause", stateIs(proto.RolloutPaused))
	agents[order[0]].release(v2)
	got := e.waitRollout(ro.ID, 10*time.Second, "to see wave 0 applied while paused", func(ro proto.Rollout) bool {
		return ro.Status.Hosts[order[0]].State == proto.HostApplied
	})
	if got.Status.State != proto.RolloutPaused || got.Status.Message != "paused by tester" {
		t.Fatalf("paused: %s", describe(got))
	}
	// The pause of the spec is 0: only the operator's pause holds it.
	time.Sleep(1500 * time.Millisecond)
	for _, h := range order[1:] {
		if _, ok := agents[h].seenAt(v2); ok {
			t.Fatalf("host %s was given %s while the rollout was paused", h, v2)
		}
	}
	if got := e.get(ro.ID); got.Status.State != proto.RolloutPaused || got.Status.Wave != 0 {
		t.Fatalf("after 1.5s paused: %s", describe(got))
	}
	if again := e.control(ro.ID, proto.RolloutWantPause); again.Control.Want != proto.RolloutWantPause {
		t.Fatalf("pausing twice: %+v", again.Control)
	}

	e.control(ro.ID, proto.RolloutWantRun)
	for _, h := range order[1:] {
		agents[h].release(v2)
	}
	e.waitRollout(ro.ID, 20*time.Second, "to succeed after the resume", stateIs(proto.RolloutSucceeded))
	waitReports(t, pick(agents, order...), 10*time.Second, v2)
	for _, want := range []string{proto.RolloutWantRun, proto.RolloutWantPause, proto.RolloutWantAbort} {
		if _, err := e.mgr.Control(testCtx(t), ro.ID, want, "tester", nil); !errors.Is(err, ErrConflict) {
			t.Errorf("%s of a succeeded rollout: %v, want ErrConflict", want, err)
		}
	}
}

// TestHostJoinsDuringRollout: a host that joins falls into a wave by the
// same rule as the others: into the current wave (and gets the version),
// or into a later one (and gets the release). A host the rule set's
// selector does not match gets nothing, and a lost host's desired state
// stays as it is.
func TestHostJoinsDuringRollout(t *testing.T) {
	e := newEnv(t)
	e.putVersions("edge", edgeLabels, 2)
	e.release("edge", 1)
	v1, v2 := ref("edge", 1), ref("edge", 2)
	agents := e.startFleet(4, edgeLabels)
	coreHost := e.startAgent("core00", map[string]string{"role": "core"})
	e.startController("c1")
	waitReports(t, pick(agents, names(agents)...), 20*time.Second, v1)
	waitReports(t, []*fakeAgent{coreHost}, 10*time.Second)

	ro := e.create(proto.RolloutSpec{RuleSet: "edge", Version: 2, Waves: []string{"50%", "100%"}, Pause: "1h"})
	got := e.waitRollout(ro.ID, 20*time.Second, "wave 0 healthy", func(ro proto.Rollout) bool { return !ro.Status.WaveHealthyAt.IsZero() })
	wave0 := slices.Sorted(maps.Keys(got.Status.Hosts))
	if len(wave0) != 2 {
		t.Fatalf("wave 0 of 4 hosts at 50%%: %s", describe(got))
	}

	// Pick joiners by the rollout's own order: "early" falls into wave 0
	// (the first 3 of 5), "late" after it (past the first 3 of 6), and
	// neither moves a waiting host into wave 0.
	existing := names(agents)
	early, late := "", ""
	for i := 0; early == "" || late == ""; i++ {
		cand := fmt.Sprintf("join%03d", i)
		if early == "" {
			first := orderHosts(ro.ID, append(slices.Clone(existing), cand))[:3]
			if sameSet(first, append(slices.Clone(wave0), cand)) {
				early = cand
				continue
			}
		}
		if early != "" && late == "" {
			first := orderHosts(ro.ID, append(slices.Clone(existing), early, cand))[:3]
			if sameSet(first, append(slices.Clone(wave0), early)) {
				late = cand
			}
		}
	}
	agents[early] = e.startAgent(early, edgeLabels)
	waitReports(t, []*fakeAgent{agents[early]}, 20*time.Second, v2)
	got = e.waitRollout(ro.ID, 10*time.Second, early+" applied in wave 0", func(ro proto.Rollout) bool {
		hs := ro.Status.Hosts[early]
		return hs.State == proto.HostApplied && hs.Wave == 0 && hs.Previous == 1
	})
	agents[late] = e.startAgent(late, edgeLabels)
	waitReports(t, []*fakeAgent{agents[late]}, 20*time.Second, v1)
	time.Sleep(500 * time.Millisecond)
	if !agents[late].reports(v1) {
		t.Fatalf("%s, of wave 1, should keep %s while wave 0 pauses", late, v1)
	}
	got = e.get(ro.ID)
	if _, touched := got.Status.Hosts[late]; touched || len(got.Status.Hosts) != 3 || got.Status.Wave != 0 {
		t.Fatalf("after %s joined: %s", late, describe(got))
	}
	if refs, _ := e.desired("core00"); len(refs) != 0 {
		t.Fatalf("core00 (role core) desires %v, want nothing", refs)
	}

	// A host that goes away keeps its desired state, even when the
	// release changes.
	goner := existing[0]
	if slices.Contains(wave0, goner) {
		goner = existing[1]
		if slices.Contains(wave0, goner) {
			goner = existing[2]
		}
	}
	before, rev := e.desired(goner)
	agents[goner].stop()
	waitFor(t, 10*time.Second, goner+" to be lost", func() (bool, string) {
		_, err := e.store.GetStatus(testCtx(t), goner)
		return errors.Is(err, etcdstore.ErrNotFound), fmt.Sprint(err)
	})
	time.Sleep(500 * time.Millisecond)
	if after, afterRev := e.desired(goner); !slices.Equal(after, before) || afterRev != rev {
		t.Fatalf("lost host %s: desired %v at %d, was %v at %d", goner, after, afterRev, before, rev)
	}
}

// TestFailover: two controllers, one leads; cancelling it hands over at
// once (it resigns), and a leader that dies without resigning is
// replaced once its session expires. The rollout goes on from what etcd
// holds and completes.
func TestFailover(t *testing.T) {
	e := newEnv(t)
	e.putVersions("edge", nil, 2)
	e.release("edge", 1)
	v1, v2 := ref("edge", 1), ref("edge", 2)
	agents := e.startFleet(6, edgeLabels)
	var mu sync.Mutex // guards ctrls
	ctrls := []*controller{e.startController("c1"), e.startController("c2")}
	leaders := func() []*controller {
		mu.Lock()
		defer mu.Unlock()
		var out []*controller
		for _, c := range ctrls {
			if c.IsLeader() {
				out = append(out, c)
			}
		}
		return out
	}

	// Never two leaders at once.
	var both sync.Once
	stopWatch := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if len(leaders()) > 1 {
				both.Do(func() { t.Error("two controllers lead at once") })
			}
		}
	}()
	t.Cleanup(func() { close(stopWatch); <-watched })

	leader := func() *controller {
		var l *controller
		waitFor(t, 15*time.Second, "one leader", func() (bool, string) {
			ls := leaders()
			if len(ls) != 1 {
				return false, fmt.Sprintf("%d leaders", len(ls))
			}
			l = ls[0]
			return true, ""
		})
		return l
	}
	first := leader()
	waitReports(t, pick(agents, names(agents)...), 20*time.Second, v1)
	ro := e.create(proto.RolloutSpec{RuleSet: "edge", Version: 2, Waves: []string{"1", "50%", "100%"}, Pause: "1s"})
	e.waitRollout(ro.ID, 20*time.Second, "to reach wave 1", func(ro proto.Rollout) bool { return ro.Status.Wave >= 1 })

	// Cancelled, the leader resigns: the other leads within a few seconds.
	stoppedAt := time.Now()
	first.stop()
	second := leader()
	if second == first {
		t.Fatal("the stopped controller still leads")
	}
	if took := time.Since(stoppedAt); took > 5*time.Second {
		t.Fatalf("handover after a resignation took %s", took)
	}
	if gauge := counterValue(t, first, "xdpfw_controller_leader"); gauge != 0 {
		t.Fatalf("stopped controller's leader gauge = %v", gauge)
	}
	got := e.waitRollout(ro.ID, 30*time.Second, "to succeed under the second leader", stateIs(proto.RolloutSucceeded))
	if got.Status.Controller != second.name {
		t.Fatalf("succeeded, written by %q, want %q", got.Status.Controller, second.name)
	}
	waitReports(t, pick(agents, names(agents)...), 10*time.Second, v2)

	// A leader that dies without resigning (its etcd client gone) is
	// replaced when its session expires.
	third := e.startController("c3")
	mu.Lock()
	ctrls = append(ctrls, third)
	mu.Unlock()
	time.Sleep(200 * time.Millisecond)
	if !second.IsLeader() || third.IsLeader() {
		t.Fatal("the leader should stay the leader when another replica starts")
	}
	diedAt := time.Now()
	second.cli.Close()
	waitFor(t, time.Duration(SessionTTL+10)*time.Second, "c3 to lead after c2's session expired", func() (bool, string) {
		return third.IsLeader(), ""
	})
	t.Logf("took over %s after the leader's client closed (session TTL %ds)", time.Since(diedAt), SessionTTL)

	// The new leader carries on: a new rollout completes under it.
	ro2 := e.create(proto.RolloutSpec{RuleSet: "edge", Version: 1})
	got = e.waitRollout(ro2.ID, 30*time.Second, "to succeed under c3", stateIs(proto.RolloutSucceeded))
	if got.Status.Controller != "c3" {
		t.Fatalf("rollout %s written by %q, want c3", ro2.ID, got.Status.Controller)
	}
	waitReports(t, pick(agents, names(agents)...), 10*time.Second, v1)
}

// counterValue sums a metric of a controller's collectors over the
// series whose labels include every value of labels.
func counterValue(t *testing.T, c *controller, name string, labels ...string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	for _, col := range c.Collectors() {
		if err := reg.Register(col); err != nil {
			t.Fatal(err)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			for _, want := range labels {
				found := false
				for _, l := range m.GetLabel() {
					found = found || l.GetValue() == want
				}
				if !found {
					continue series
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// TestDeposedLeaderCannotWrite: a term's writes carry the leadership
// compare; once the election key is gone (the session expired) and
// another replica leads, the old term writes nothing.
func TestDeposedLeaderCannotWrite(t *testing.T) {
	e := newEnv(t)
	e.putVersions("edge", nil, 1)
	e.release("edge", 1)
	ctx := testCtx(t)
	agent := e.startAgent("host00", edgeLabels)
	waitFor(t, 10*time.Second, "host00's status", func() (bool, string) {
		_, err := e.store.GetStatus(ctx, "host00")
		return err == nil, fmt.Sprint(err)
	})

	campaign := func(name string) *etcdstore.Term {
		t.Helper()
		st := etcdstore.New(etcdtest.Client(t, e.endpoints), e.keys)
		term, err := st.Campaign(ctx, e.keys.Election(), name, SessionTTL)
		if err != nil {
			t.Fatal(err)
		}
		return term
	}
	oldTerm := campaign("old")
	c := NewController(e.store, ControllerOptions{Name: "old", Log: zaptest.NewLogger(t)})
	snap, err := newSnapshotReader(e.store, zap.NewNop()).read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The old leader's session expires (revoked here, at once), and
	// another replica wins the election.
	if err := oldTerm.Close(); err != nil {
		t.Fatal(err)
	}
	newTerm := campaign("new")

	if err := c.writeDesired(ctx, oldTerm, snap); !errors.Is(err, errNotLeader) {
		t.Fatalf("deposed leader's desired-state write: %v, want errNotLeader", err)
	}
	if refs, rev := e.desired("host00"); rev != 0 {
		t.Fatalf("host00 desired state written by a deposed leader: %v", refs)
	}
	ro := e.create(proto.RolloutSpec{RuleSet: "edge", Version: 1})
	view := RolloutView{ID: ro.ID, Spec: ro.Spec, State: ro.Status}
	resp, _ := e.cli.Get(ctx, e.keys.Rollouts(), clientv3.WithPrefix())
	for _, kv := range resp.Kvs {
		switch string(kv.Key) {
		case e.keys.RolloutControl(ro.ID):
			view.ControlRevision = kv.ModRevision
		case e.keys.RolloutState(ro.ID):
			view.StateRevision = kv.ModRevision
		}
	}
	next := ro.Status
	next.State, next.Message = proto.RolloutSucceeded, "by a deposed leader"
	if err := c.writeState(ctx, oldTerm, &view, next, true, time.Now()); !errors.Is(err, errNotLeader) {
		t.Fatalf("deposed leader's state write: %v, want errNotLeader", err)
	}
	if got := e.get(ro.ID); got.Status.State != proto.RolloutRunning {
		t.Fatalf("rollout state written by a deposed leader: %s", describe(got))
	}
	if rel := e.released("edge"); rel.Rollout != "test" {
		t.Fatalf("release written by a deposed leader: %+v", rel)
	}

	// The same writes under the new term go through.
	if err := c.writeDesired(ctx, newTerm, snap); err != nil {
		t.Fatalf("leader's desired-state write: %v", err)
	}
	waitReports(t, []*fakeAgent{agent}, 10*time.Second, ref("edge", 1))

	// A running controller whose election key vanishes steps down and
	// campaigns again. (The rollout above is set aside first.)
	setState(t, e, ro.ID, proto.RolloutState{State: proto.RolloutAborted})
	if err := newTerm.Close(); err != nil {
		t.Fatal(err)
	}
	rc := e.startController("c1")
	waitFor(t, 15*time.Second, "c1 to lead", func() (bool, string) { return rc.IsLeader(), "" })
	del, err := e.cli.Delete(ctx, e.keys.Election()+"/", clientv3.WithPrefix())
	if err != nil || del.Deleted == 0 {
		t.Fatalf("delete the election keys: %v %v", del, err)
	}
	// A change that needs a write makes it find out.
	e.putVersions("edge", nil, 1)
	e.release("edge", 2)
	waitFor(t, 15*time.Second, "c1 to be deposed and lead again", func() (bool, string) {
		return counterValue(t, rc, "xdpfw_controller_rounds_total", "deposed") >= 1 && rc.IsLeader(), ""
	})
	waitReports(t, []*fakeAgent{agent}, 15*time.Second, ref("edge", 2))
}

// TestFinishedRolloutsArePruned: finished rollouts go after the retention,
// but for each rule set's newest; the hosts' desired states do not move.
func TestFinishedRolloutsArePruned(t *testing.T) {
	e := newEnv(t)
	e.putVersions("edge", nil, 3)
	e.putVersions("core", nil, 1)
	e.release("edge", 1)
	agents := e.startFleet(2, edgeLabels)
	const retention = 2 * time.Second
	e.startController("c1", func(o *ControllerOptions) { o.Retention = retention })
	waitReports(t, pick(agents, names(agents)...), 10*time.Second, ref("edge", 1))

	var ids []string
	for _, spec := range []proto.RolloutSpec{{RuleSet: "edge", Version: 2}, {RuleSet: "core", Version: 1}, {RuleSet: "edge", Version: 3}} {
		ro := e.create(spec)
		e.waitRollout(ro.ID, 20*time.Second, "to succeed", stateIs(proto.RolloutSucceeded))
		ids = append(ids, ro.ID)
	}
	finished := time.Now()
	waitReports(t, pick(agents, names(agents)...), 10*time.Second, ref("core", 1), ref("edge", 3))

	// Within the retention, every rollout stays.
	if list, err := e.mgr.List(testCtx(t)); err != nil || len(list) != 3 {
		t.Fatalf("before the retention ran out: %d rollouts (%v), want 3", len(list), err)
	}
	waitFor(t, retention+10*time.Second, "the first edge rollout to be pruned", func() (bool, string) {
		list, err := e.mgr.List(testCtx(t))
		if err != nil {
			return false, err.Error()
		}
		var got []string
		for _, ro := range list {
			got = append(got, ro.ID)
		}
		slices.Sort(got)
		return slices.Equal(got, ids[1:]), fmt.Sprintf("rollouts %v", got)
	})
	if time.Since(finished) < retention/2 {
		t.Fatalf("pruned %v after %v, before the retention of %v", ids[0], time.Since(finished), retention)
	}
	resp, err := e.cli.Get(testCtx(t), e.keys.Rollouts()+ids[0]+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Fatalf("keys of the pruned rollout: %d (%v)", resp.Count, err)
	}
	// The newest of each rule set stays past the retention, and no host
	// was given anything else.
	time.Sleep(retention)
	if list, err := e.mgr.List(testCtx(t)); err != nil || len(list) != 2 {
		t.Fatalf("later: %d rollouts (%v), want the newest of edge and of core", len(list), err)
	}
	for _, a := range agents {
		if h := a.desiredHistory(); len(h) == 0 || h[len(h)-1] != "core@1 edge@3" {
			t.Errorf("%s: desired states %q", a.host, h)
		}
	}
}

// A rollout's spec is immutable, so the snapshot reader parses it once and
// later rounds reuse the plan; a spec changed by hand is parsed again.
func TestSnapshotParsesASpecOnce(t *testing.T) {
	e := newEnv(t)
	e.putVersions("edge", nil, 1)
	e.release("edge", 1)
	ctx := testCtx(t)
	e.startAgent("host00", edgeLabels)
	waitFor(t, 10*time.Second, "host00's status", func() (bool, string) {
		_, err := e.store.GetStatus(ctx, "host00")
		return err == nil, fmt.Sprint(err)
	})
	ro := e.create(proto.RolloutSpec{RuleSet: "edge", Version: 1, Waves: []string{"1", "100%"}})
	r := newSnapshotReader(e.store, zap.NewNop())
	parsedOf := func() *parsedSpec {
		t.Helper()
		snap, err := r.read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range snap.Rollouts {
			if v.ID == ro.ID {
				return v.parsed
			}
		}
		t.Fatalf("rollout %s not in the snapshot", ro.ID)
		return nil
	}
	first := parsedOf()
	if first == nil || first.err != nil || first.planErr != nil || len(first.plan.waves) != 2 {
		t.Fatalf("first read: parsed %+v, want the spec's plan with 2 waves", first)
	}
	if again := parsedOf(); again != first {
		t.Fatal("the second read parsed the unchanged spec again")
	}
	p, err := (&RolloutView{Spec: ro.Spec, parsed: first}).plan()
	if err != nil || len(p.waves) != 2 {
		t.Fatalf("plan of the parsed view: %+v, %v", p, err)
	}

	// Rewritten by hand (the API never does): parsed again, and refused.
	if _, err := e.cli.Put(ctx, e.keys.RolloutSpec(ro.ID), `{"ruleset":"edge","version":1,"waves":["0%"]}`); err != nil {
		t.Fatal(err)
	}
	if again := parsedOf(); again == first || again.planErr == nil {
		t.Fatalf("after a hand-written spec: parsed %+v (same as before: %v), want parsed again and refused", again, again == first)
	}
}

// An enrolled host's rules follow its enrollment's labels, not the ones
// its agent reports: a host cannot claim a role to pick its rules, or to
// join (or leave) a rollout.
func TestEnrollmentLabelsOverrideWhatAHostReports(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	e.putVersions("edge", edgeLabels, 1)
	e.release("edge", 1)
	e.startAgent("honest", edgeLabels)
	e.startAgent("liar", edgeLabels)
	waitFor(t, 10*time.Second, "both statuses", func() (bool, string) {
		_, err1 := e.store.GetStatus(ctx, "honest")
		_, err2 := e.store.GetStatus(ctx, "liar")
		return err1 == nil && err2 == nil, fmt.Sprint(err1, err2)
	})
	enroll := func(host string, labels map[string]string) {
		t.Helper()
		w, err := etcdstore.PutJSON(e.keys.HostEnrollment(host), proto.HostEnrollment{APIVersion: proto.APIVersion,
			Kind: proto.KindHostEnrollment, Host: host, User: proto.HostEtcdUser(host), Labels: labels})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := e.store.CommitIf(ctx, nil, []etcdstore.Write{w}); err != nil {
			t.Fatal(err)
		}
	}
	enroll("honest", edgeLabels)
	enroll("liar", map[string]string{"role": "core"})

	snap, err := newSnapshotReader(e.store, zap.NewNop()).read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Hosts["liar"].Labels()["role"]; got != "core" {
		t.Fatalf("liar's labels: role %q, want its enrollment's core", got)
	}
	want := map[string]bool{"honest": true, "liar": false}
	for host, gets := range want {
		has := false
		for _, r := range Desired(snap)[host] {
			has = has || r.Name == "edge"
		}
		if has != gets {
			t.Errorf("%s gets edge: %v, want %v (its enrollment says %v)", host, has, gets, snap.Hosts[host].Labels())
		}
	}
	// A rollout of a rule set for every host, selecting role=core, finds
	// the liar by its enrollment (both agents report role=edge).
	e.putVersions("base", nil, 1)
	if _, err := e.mgr.Create(ctx, proto.RolloutSpec{RuleSet: "base", Version: 1, Waves: []string{"100%"},
		Selector: map[string]string{"role": "core"}}, "tester", nil); err != nil {
		t.Fatalf("a rollout of role=core, the liar's enrolled role: %v", err)
	}
}
