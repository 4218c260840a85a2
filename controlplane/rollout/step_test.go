package rollout

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xdpfw/xdpfw/proto"
)

// reporting is a live host that was given desired refs at revision 10 and
// reports applied refs at revision rev (InSync unless lastErr is set).
func reporting(labels map[string]string, desired []proto.RuleSetRef, rev int64, applied []proto.RuleSetRef, lastErr *proto.StatusError) HostView {
	hv := live(labels, desired...)
	hv.Status.Revision, hv.Status.Applied = rev, applied
	hv.Status.InSync, hv.Status.LastError = lastErr == nil, lastErr
	return hv
}

// TestStep covers the decisions that depend on time and on lost hosts,
// which the controller tests against etcd reach only slowly.
func TestStep(t *testing.T) {
	keys := proto.NewKeys("/t/")
	now := time.Date(2026, 12, 2, 3, 15, 0, 0, time.UTC)
	edge := map[string]string{"role": "edge"}
	v1, v2 := []proto.RuleSetRef{ref("edge", 1)}, []proto.RuleSetRef{ref("edge", 2)}
	sets := map[string]RuleSetView{"edge": {Head: 2, Released: 1}}
	host := func(state string, wave int, since time.Duration) proto.RolloutHost {
		return proto.RolloutHost{State: state, Wave: wave, Previous: 1, UpdatedAt: now.Add(-since)}
	}
	spec := proto.RolloutSpec{RuleSet: "edge", Version: 2, Waves: []string{"1", "100%"}, Pause: "10s", Deadline: "1m"}

	tests := []struct {
		name        string
		hosts       map[string]HostView
		spec        func(*proto.RolloutSpec)
		control     string
		controlRev  int64
		state       proto.RolloutState
		wantState   string
		wantWave    int
		wantHosts   map[string]string // host -> state
		wantMessage string
		wantRelease bool
	}{
		{
			name:        "a host past the deadline fails and halts the rollout",
			hosts:       map[string]HostView{"a": reporting(edge, v2, 9, v1, nil)},
			state:       proto.RolloutState{State: proto.RolloutRunning, Hosts: map[string]proto.RolloutHost{"a": host(proto.HostApplying, 0, 2*time.Minute)}},
			wantState:   proto.RolloutHalted,
			wantHosts:   map[string]string{"a": proto.HostFailed},
			wantMessage: "halted: 1 hosts failed, more than maxErrorHosts 0: a (did not apply edge@2 within the deadline of 1m0s)",
		},
		{
			name:      "within the deadline the host is waited for",
			hosts:     map[string]HostView{"a": reporting(edge, v2, 9, v1, nil)},
			state:     proto.RolloutState{State: proto.RolloutRunning, Hosts: map[string]proto.RolloutHost{"a": host(proto.HostApplying, 0, 30*time.Second)}},
			wantState: proto.RolloutRunning,
			wantHosts: map[string]string{"a": proto.HostApplying},
		},
		{
			name: "a status older than the desired write does not count",
			// InSync with edge@2 but at revision 9, before the desired
			// write at 10: the agent has not seen it yet.
			hosts:     map[string]HostView{"a": reporting(edge, v2, 9, v2, nil)},
			state:     proto.RolloutState{State: proto.RolloutRunning, Hosts: map[string]proto.RolloutHost{"a": host(proto.HostApplying, 0, time.Second)}},
			wantState: proto.RolloutRunning,
			wantHosts: map[string]string{"a": proto.HostApplying},
		},
		{
			name: "failures within maxErrorHosts do not stop the waves",
			hosts: map[string]HostView{
				"a": reporting(edge, v2, 11, v1, &proto.StatusError{Document: keys.RuleSetVersion("edge", 2), Message: "bad"}),
				"b": reporting(edge, v1, 11, v1, nil),
			},
			spec:      func(s *proto.RolloutSpec) { s.MaxErrorHosts, s.Pause = 1, "0s" },
			state:     proto.RolloutState{State: proto.RolloutRunning, Hosts: map[string]proto.RolloutHost{"a": host(proto.HostApplying, 0, time.Second)}},
			wantState: proto.RolloutRunning, wantWave: 1,
			wantHosts: map[string]string{"a": proto.HostFailed, "b": proto.HostApplying},
		},
		{
			name:      "an error about another rule set's document is not this rollout's",
			hosts:     map[string]HostView{"a": reporting(edge, v2, 11, v1, &proto.StatusError{Document: keys.RuleSetVersion("other", 1), Message: "bad"})},
			state:     proto.RolloutState{State: proto.RolloutRunning, Hosts: map[string]proto.RolloutHost{"a": host(proto.HostApplying, 0, time.Second)}},
			wantState: proto.RolloutRunning,
			wantHosts: map[string]string{"a": proto.HostApplying},
		},
		{
			name: "a host whose data plane did not load fails at once and halts the rollout",
			hosts: map[string]HostView{"a": func() HostView {
				// Its agent runs (a status, under its lease) but has no
				// program: it reads no desired state, so its revision is 0.
				hv := reporting(edge, v2, 0, nil, nil)
				hv.Status.InSync = false
				hv.Status.DataPlaneError = &proto.DataPlaneError{Interface: "eth0", Attempts: 2,
					Message: "load XDP program and maps for eth0: the kernel's verifier refused the program after 1000001 instructions: BPF program is too large. Processed 1000001 insn"}
				return hv
			}()},
			state:       proto.RolloutState{State: proto.RolloutRunning, Hosts: map[string]proto.RolloutHost{"a": host(proto.HostApplying, 0, time.Second)}},
			wantState:   proto.RolloutHalted,
			wantHosts:   map[string]string{"a": proto.HostFailed},
			wantMessage: "halted: 1 hosts failed, more than maxErrorHosts 0: a (cannot apply edge@2: its data plane did not load: load XDP program and maps for eth0: the kernel's verifier refused the program after 1000001 instructions: BPF program is too large. Processed 1000001 insn)",
		},
		{
			name: "a host that applied the version and then lost its data plane fails",
			hosts: map[string]HostView{"a": func() HostView {
				hv := reporting(edge, v2, 11, v2, nil)
				hv.Status.DataPlaneError = &proto.DataPlaneError{Interface: "eth0", Message: "kernel too old"}
				return hv
			}()},
			state:     proto.RolloutState{State: proto.RolloutRunning, Hosts: map[string]proto.RolloutHost{"a": host(proto.HostApplied, 0, time.Minute)}},
			wantState: proto.RolloutHalted,
			wantHosts: map[string]string{"a": proto.HostFailed},
		},
		{
			name: "a host in sync with the version but reporting an error is not healthy",
			hosts: map[string]HostView{"a": func() HostView {
				hv := reporting(edge, v2, 11, v2, nil)
				hv.Status.LastError = &proto.StatusError{Document: keys.RuleSetVersion("other", 1), Message: "bad"}
				return hv
			}()},
			state:     proto.RolloutState{State: proto.RolloutRunning, Hosts: map[string]proto.RolloutHost{"a": host(proto.HostApplying, 0, time.Second)}},
			wantState: proto.RolloutRunning,
			wantHosts: map[string]string{"a": proto.HostApplying},
		},
		{
			name:        "every host gone: halted, not a success that applied nothing",
			hosts:       map[string]HostView{"gone": lost(ref("edge", 2)), "moved": reporting(map[string]string{"role": "db"}, v2, 11, v1, nil)},
			spec:        func(s *proto.RolloutSpec) { s.Waves, s.Selector = []string{"100%"}, edge },
			state:       proto.RolloutState{State: proto.RolloutRunning, Hosts: map[string]proto.RolloutHost{"gone": host(proto.HostApplying, 0, time.Second), "moved": host(proto.HostApplying, 0, time.Second)}},
			wantState:   proto.RolloutHalted,
			wantHosts:   map[string]string{"gone": proto.HostApplying, "moved": proto.HostApplying},
			wantMessage: "halted: no live host matches the selectors any more: of its 2 hosts, 1 lost (gone) and 1 no longer selected (moved); resume once hosts are back, or abort",
		},
		{
			name:        "every host failed within maxErrorHosts: halted, not released",
			hosts:       map[string]HostView{"a": reporting(edge, v2, 11, v1, &proto.StatusError{Document: keys.RuleSetVersion("edge", 2), Message: "bad"})},
			spec:        func(s *proto.RolloutSpec) { s.Waves, s.MaxErrorHosts = []string{"100%"}, 1 },
			state:       proto.RolloutState{State: proto.RolloutRunning, Hosts: map[string]proto.RolloutHost{"a": host(proto.HostApplying, 0, time.Second)}},
			wantState:   proto.RolloutHalted,
			wantHosts:   map[string]string{"a": proto.HostFailed},
			wantMessage: "halted: no host applied edge@2 (1 failed: a (refused edge@2: /t/rulesets/edge/versions/2: bad)): not released",
		},
		{
			name:        "no host at all: halted",
			hosts:       map[string]HostView{},
			state:       proto.RolloutState{State: proto.RolloutRunning, Hosts: map[string]proto.RolloutHost{}},
			wantState:   proto.RolloutHalted,
			wantHosts:   map[string]string{},
			wantMessage: "halted: no live host matches the selectors any more (it had not reached any); resume once hosts are back, or abort",
		},
		{
			name:    "a halted rollout stays halted on the control that was there when it halted",
			hosts:   map[string]HostView{"a": reporting(edge, v2, 11, v1, &proto.StatusError{Document: keys.RuleSetVersion("edge", 2), Message: "bad"})},
			control: proto.RolloutWantRun, controlRev: 7,
			state:     proto.RolloutState{State: proto.RolloutHalted, ControlRevision: 7, Message: "halted", Hosts: map[string]proto.RolloutHost{"a": host(proto.HostFailed, 0, time.Second)}},
			wantState: proto.RolloutHalted, wantHosts: map[string]string{"a": proto.HostFailed}, wantMessage: "halted",
		},
		{
			name:    "run written after the halt retries the failed hosts",
			hosts:   map[string]HostView{"a": reporting(edge, v2, 11, v1, nil)},
			control: proto.RolloutWantRun, controlRev: 8,
			state:     proto.RolloutState{State: proto.RolloutHalted, ControlRevision: 7, Hosts: map[string]proto.RolloutHost{"a": host(proto.HostFailed, 0, time.Hour)}},
			wantState: proto.RolloutRunning, wantHosts: map[string]string{"a": proto.HostApplying},
		},
		{
			name: "a pause stops giving the version, even to hosts of the current wave",
			hosts: map[string]HostView{
				"a": reporting(edge, v2, 11, v2, nil),
				"b": reporting(edge, v1, 11, v1, nil),
			},
			spec:      func(s *proto.RolloutSpec) { s.Waves = []string{"100%"} },
			control:   proto.RolloutWantPause,
			state:     proto.RolloutState{State: proto.RolloutRunning, Hosts: map[string]proto.RolloutHost{"a": host(proto.HostApplying, 0, time.Second)}},
			wantState: proto.RolloutPaused, wantHosts: map[string]string{"a": proto.HostApplied},
			wantMessage: "paused",
		},
		{
			name:        "the pause runs from when the wave was healthy",
			hosts:       map[string]HostView{"a": reporting(edge, v2, 11, v2, nil), "b": reporting(edge, v1, 11, v1, nil)},
			state:       proto.RolloutState{State: proto.RolloutRunning, WaveHealthyAt: now.Add(-9 * time.Second), Hosts: map[string]proto.RolloutHost{"a": host(proto.HostApplied, 0, time.Minute)}},
			wantState:   proto.RolloutRunning,
			wantHosts:   map[string]string{"a": proto.HostApplied},
			wantMessage: "wave 1 of 2 is healthy: the next starts after the pause of 10s, at 2026-12-02T03:15:01Z",
		},
		{
			name:      "after the pause the next wave starts",
			hosts:     map[string]HostView{"a": reporting(edge, v2, 11, v2, nil), "b": reporting(edge, v1, 11, v1, nil)},
			state:     proto.RolloutState{State: proto.RolloutRunning, WaveHealthyAt: now.Add(-10 * time.Second), Hosts: map[string]proto.RolloutHost{"a": host(proto.HostApplied, 0, time.Minute)}},
			wantState: proto.RolloutRunning, wantWave: 1,
			wantHosts: map[string]string{"a": proto.HostApplied, "b": proto.HostApplying},
		},
		{
			name:      "the last wave healthy: succeeded, with the release",
			hosts:     map[string]HostView{"a": reporting(edge, v2, 11, v2, nil), "b": reporting(edge, v2, 11, v2, nil)},
			state:     proto.RolloutState{State: proto.RolloutRunning, Wave: 1, Hosts: map[string]proto.RolloutHost{"a": host(proto.HostApplied, 0, time.Minute), "b": host(proto.HostApplying, 1, time.Second)}},
			wantState: proto.RolloutSucceeded, wantWave: 2, wantRelease: true,
			wantHosts: map[string]string{"a": proto.HostApplied, "b": proto.HostApplied},
		},
		{
			name: "lost hosts neither block a wave nor fail",
			hosts: map[string]HostView{
				"a":    reporting(edge, v2, 11, v2, nil),
				"gone": lost(ref("edge", 2)),
			},
			spec:      func(s *proto.RolloutSpec) { s.Waves = []string{"100%"} },
			state:     proto.RolloutState{State: proto.RolloutRunning, Hosts: map[string]proto.RolloutHost{"a": host(proto.HostApplying, 0, time.Second), "gone": host(proto.HostApplying, 0, time.Hour)}},
			wantState: proto.RolloutSucceeded, wantWave: 1, wantRelease: true,
			wantHosts: map[string]string{"a": proto.HostApplied, "gone": proto.HostApplying},
		},
		{
			name: "aborting waits for live hosts to report their previous version, not for lost ones",
			hosts: map[string]HostView{
				"a":    reporting(edge, v1, 11, v1, nil),
				"b":    reporting(edge, v1, 9, v2, nil), // not yet
				"gone": lost(ref("edge", 1)),
			},
			control:   proto.RolloutWantAbort,
			state:     proto.RolloutState{State: proto.RolloutAborting, Hosts: map[string]proto.RolloutHost{"a": host(proto.HostApplied, 0, time.Second), "b": host(proto.HostApplied, 0, time.Second), "gone": host(proto.HostApplied, 0, time.Second)}},
			wantState: proto.RolloutAborting,
			wantHosts: map[string]string{"a": proto.HostReverted, "b": proto.HostApplied, "gone": proto.HostApplied},
		},
		{
			name: "aborted once every live host reports it",
			hosts: map[string]HostView{
				"b":    reporting(edge, v1, 11, v1, nil),
				"gone": lost(ref("edge", 1)),
			},
			control:   proto.RolloutWantAbort,
			state:     proto.RolloutState{State: proto.RolloutAborting, Hosts: map[string]proto.RolloutHost{"b": host(proto.HostApplied, 0, time.Second), "gone": host(proto.HostApplied, 0, time.Second)}},
			wantState: proto.RolloutAborted, wantMessage: "aborted: 1 hosts reverted to their previous versions",
			wantHosts: map[string]string{"b": proto.HostReverted, "gone": proto.HostApplied},
		},
		{
			name:      "an abort is not finished while a lost host's desired state still has the version",
			hosts:     map[string]HostView{"gone": lost(ref("edge", 2))},
			control:   proto.RolloutWantAbort,
			state:     proto.RolloutState{State: proto.RolloutAborting, Hosts: map[string]proto.RolloutHost{"gone": host(proto.HostApplied, 0, time.Second)}},
			wantState: proto.RolloutAborting,
			wantHosts: map[string]string{"gone": proto.HostApplied},
		},
		{
			name:        "a host that does not return within the deadline is named, and the abort ends",
			hosts:       map[string]HostView{"b": reporting(edge, v1, 11, v2, &proto.StatusError{Document: keys.HostDesired("b"), Message: "compile"})},
			control:     proto.RolloutWantAbort,
			state:       proto.RolloutState{State: proto.RolloutAborting, Hosts: map[string]proto.RolloutHost{"b": host(proto.HostApplied, 0, 2*time.Minute)}},
			wantState:   proto.RolloutAborted,
			wantHosts:   map[string]string{"b": proto.HostApplied},
			wantMessage: "aborted: 0 hosts reverted; 1 did not report their previous version within 1m0s: b (did not return to edge@1 within the deadline of 1m0s)",
		},
	}
	// An ID for which the rollout takes host a before host b.
	id := ""
	for i := 0; id == ""; i++ {
		if cand := fmt.Sprintf("r-%d", i); orderHosts(cand, []string{"a", "b"})[0] == "a" {
			id = cand
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sp := spec
			if tt.spec != nil {
				tt.spec(&sp)
			}
			control := tt.control
			if control == "" {
				control = proto.RolloutWantRun
			}
			ro := RolloutView{ID: id, Spec: sp, Control: proto.RolloutControl{Want: control}, ControlRevision: tt.controlRev, State: tt.state}
			s := &stepper{snap: &Snapshot{Hosts: tt.hosts, RuleSets: sets, Rollouts: []RolloutView{ro}}, keys: keys, now: now}
			before := describe(proto.Rollout{Status: ro.State})
			got, release := s.step(&ro)
			if after := describe(proto.Rollout{Status: ro.State}); after != before {
				t.Fatalf("step changed its input: %s, was %s", after, before)
			}
			if got.State != tt.wantState || got.Wave != tt.wantWave || release != tt.wantRelease {
				t.Fatalf("step = %s wave %d release %v, want %s wave %d release %v (%s)",
					got.State, got.Wave, release, tt.wantState, tt.wantWave, tt.wantRelease, describe(proto.Rollout{Status: got}))
			}
			gotHosts := map[string]string{}
			for h, e := range got.Hosts {
				gotHosts[h] = e.State
			}
			if describeMap(gotHosts) != describeMap(tt.wantHosts) {
				t.Fatalf("hosts = %s, want %s", describeMap(gotHosts), describeMap(tt.wantHosts))
			}
			if tt.wantMessage != "" && got.Message != tt.wantMessage {
				t.Fatalf("message = %q, want %q", got.Message, tt.wantMessage)
			}
			if got.State == proto.RolloutHalted && tt.state.State != proto.RolloutHalted && got.ControlRevision != tt.controlRev {
				t.Fatalf("halted with controlRevision %d, want the control's %d", got.ControlRevision, tt.controlRev)
			}
		})
	}
}

func describeMap(m map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, " ")
}
