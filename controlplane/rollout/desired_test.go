package rollout

import (
	"reflect"
	"testing"

	"github.com/xdpfw/xdpfw/proto"
)

// live is a host whose agent reports labels and has desired refs (nil:
// no desired key).
func live(labels map[string]string, desired ...proto.RuleSetRef) HostView {
	hv := HostView{Status: &proto.HostStatus{Kind: proto.KindHostStatus, Labels: labels}}
	if desired != nil {
		d := proto.NewHostDesired(desired...)
		hv.Desired, hv.DesiredRevision = &d, 10
	}
	return hv
}

// lost is a host with no status and desired refs (nil: no desired key).
func lost(desired ...proto.RuleSetRef) HostView {
	hv := live(nil, desired...)
	hv.Status = nil
	return hv
}

func refs(rs ...proto.RuleSetRef) []proto.RuleSetRef {
	if rs == nil {
		return []proto.RuleSetRef{}
	}
	return rs
}

// rollout is a rollout of name@version in state, with hosts.
func rollout(id, name string, version int64, state string, hosts map[string]proto.RolloutHost) RolloutView {
	return RolloutView{
		ID: id, Spec: proto.RolloutSpec{RuleSet: name, Version: version},
		State: proto.RolloutState{State: state, Hosts: hosts},
	}
}

func TestDesired(t *testing.T) {
	edge := map[string]string{"role": "edge"}
	core := map[string]string{"role": "core"}
	edgeEU := map[string]string{"role": "edge", "dc": "eu"}
	sets := map[string]RuleSetView{
		"base":   {Head: 3, Released: 2},                             // every host
		"edge":   {Head: 5, Selector: edge, Released: 4},             // role=edge
		"euonly": {Head: 1, Selector: map[string]string{"dc": "eu"}}, // no release
		"gone":   {Head: 0, Released: 1},                             // no head any more
	}
	applying := func(prev int64) proto.RolloutHost {
		return proto.RolloutHost{State: proto.HostApplying, Previous: prev}
	}
	withState := func(state string, prev int64) proto.RolloutHost {
		return proto.RolloutHost{State: state, Previous: prev}
	}
	tests := []struct {
		name     string
		hosts    map[string]HostView
		rollouts []RolloutView
		want     map[string][]proto.RuleSetRef
	}{
		{
			name:  "selectors and releases, ordered by name",
			hosts: map[string]HostView{"e1": live(edge), "c1": live(core, ref("base", 1)), "eu1": live(edgeEU), "bare": live(nil)},
			want: map[string][]proto.RuleSetRef{
				"e1":   {ref("base", 2), ref("edge", 4)},
				"c1":   {ref("base", 2)},
				"eu1":  {ref("base", 2), ref("edge", 4)}, // euonly has no release: nothing
				"bare": {ref("base", 2)},
			},
		},
		{
			name:  "a running rollout gives its version to the hosts it has given it to",
			hosts: map[string]HostView{"e1": live(edge), "e2": live(edge), "e3": live(edge), "e4": live(edge)},
			rollouts: []RolloutView{rollout("r-1", "edge", 5, proto.RolloutRunning, map[string]proto.RolloutHost{
				"e1": withState(proto.HostApplied, 4), "e2": applying(4), "e3": withState(proto.HostFailed, 4),
				"e4": withState(proto.HostPending, 4),
			})},
			want: map[string][]proto.RuleSetRef{
				"e1": {ref("base", 2), ref("edge", 5)}, "e2": {ref("base", 2), ref("edge", 5)},
				"e3": {ref("base", 2), ref("edge", 5)}, "e4": {ref("base", 2), ref("edge", 4)},
			},
		},
		{
			name:  "paused and halted rollouts keep what they gave",
			hosts: map[string]HostView{"e1": live(edge), "eu1": live(edgeEU)},
			rollouts: []RolloutView{
				rollout("r-1", "edge", 5, proto.RolloutPaused, map[string]proto.RolloutHost{"e1": applying(4)}),
				rollout("r-2", "euonly", 1, proto.RolloutHalted, map[string]proto.RolloutHost{"eu1": withState(proto.HostFailed, 0)}),
			},
			want: map[string][]proto.RuleSetRef{
				"e1":  {ref("base", 2), ref("edge", 5)},
				"eu1": {ref("base", 2), ref("edge", 4), ref("euonly", 1)},
			},
		},
		{
			name:  "a rollout of a rule set with no release yet gives it to its hosts only",
			hosts: map[string]HostView{"eu1": live(edgeEU), "eu2": live(map[string]string{"dc": "eu"})},
			rollouts: []RolloutView{
				rollout("r-1", "euonly", 1, proto.RolloutRunning, map[string]proto.RolloutHost{"eu1": applying(0)}),
			},
			want: map[string][]proto.RuleSetRef{
				"eu1": {ref("base", 2), ref("edge", 4), ref("euonly", 1)},
				"eu2": {ref("base", 2)},
			},
		},
		{
			name:  "aborting returns hosts to their previous version, or takes the rule set away",
			hosts: map[string]HostView{"e1": live(edge), "e2": live(edge), "eu1": live(edgeEU)},
			rollouts: []RolloutView{
				rollout("r-1", "edge", 5, proto.RolloutAborting, map[string]proto.RolloutHost{
					"e1": withState(proto.HostApplied, 3), "e2": withState(proto.HostReverted, 4)}),
				rollout("r-2", "euonly", 1, proto.RolloutAborting, map[string]proto.RolloutHost{"eu1": withState(proto.HostApplied, 0)}),
			},
			want: map[string][]proto.RuleSetRef{
				"e1":  {ref("base", 2), ref("edge", 3)},
				"e2":  {ref("base", 2), ref("edge", 4)},
				"eu1": {ref("base", 2), ref("edge", 4)},
			},
		},
		{
			name:  "finished rollouts decide nothing: the release does",
			hosts: map[string]HostView{"e1": live(edge), "e2": live(edge)},
			rollouts: []RolloutView{
				rollout("r-1", "edge", 5, proto.RolloutAborted, map[string]proto.RolloutHost{"e1": withState(proto.HostReverted, 3)}),
				rollout("r-2", "edge", 3, proto.RolloutSucceeded, map[string]proto.RolloutHost{"e2": withState(proto.HostApplied, 2)}),
			},
			want: map[string][]proto.RuleSetRef{
				"e1": {ref("base", 2), ref("edge", 4)},
				"e2": {ref("base", 2), ref("edge", 4)},
			},
		},
		{
			name:  "a rollout's host whose labels no longer match loses the rule set",
			hosts: map[string]HostView{"was-edge": live(core, ref("base", 2), ref("edge", 5))},
			rollouts: []RolloutView{rollout("r-1", "edge", 5, proto.RolloutRunning, map[string]proto.RolloutHost{
				"was-edge": withState(proto.HostApplied, 4)})},
			want: map[string][]proto.RuleSetRef{"was-edge": {ref("base", 2)}},
		},
		{
			name: "lost hosts keep their desired state; a lost host with none is left out",
			hosts: map[string]HostView{
				"gone1": lost(ref("base", 1), ref("edge", 5)),
				"gone2": lost(),
				"gone3": lost(ref("zeta", 1), ref("alpha", 9)), // even unsorted, even unknown rule sets
			},
			rollouts: []RolloutView{rollout("r-1", "edge", 5, proto.RolloutRunning, map[string]proto.RolloutHost{
				"gone1": withState(proto.HostApplied, 4)})},
			want: map[string][]proto.RuleSetRef{
				"gone1": {ref("base", 1), ref("edge", 5)},
				"gone3": {ref("zeta", 1), ref("alpha", 9)},
			},
		},
		{
			name:  "an abort returns a lost host to its previous version",
			hosts: map[string]HostView{"gone1": lost(ref("base", 1), ref("edge", 5)), "gone2": lost(ref("euonly", 1))},
			rollouts: []RolloutView{
				rollout("r-1", "edge", 5, proto.RolloutAborting, map[string]proto.RolloutHost{"gone1": withState(proto.HostApplied, 4)}),
				rollout("r-2", "euonly", 1, proto.RolloutAborting, map[string]proto.RolloutHost{"gone2": applying(0)}),
			},
			want: map[string][]proto.RuleSetRef{
				"gone1": {ref("base", 1), ref("edge", 4)},
				"gone2": {},
			},
		},
		{
			name:  "a host that matches nothing gets an empty desired state",
			hosts: map[string]HostView{"x": live(core, ref("edge", 4))},
			want:  map[string][]proto.RuleSetRef{"x": {ref("base", 2)}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := &Snapshot{Hosts: tt.hosts, RuleSets: sets, Rollouts: tt.rollouts}
			got := Desired(snap)
			want := map[string][]proto.RuleSetRef{}
			for h, r := range tt.want {
				want[h] = refs(r...)
			}
			for h, r := range got {
				if r == nil {
					got[h] = []proto.RuleSetRef{}
				}
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("Desired:\n got %v\nwant %v", got, want)
			}
		})
	}

	// No rule sets at all: live hosts get an empty desired state.
	got := Desired(&Snapshot{Hosts: map[string]HostView{"a": live(edge)}})
	if r, ok := got["a"]; !ok || r == nil || len(r) != 0 {
		t.Fatalf("no rule sets: Desired = %#v, want an empty list for a", got)
	}
}

func TestMatches(t *testing.T) {
	tests := []struct {
		sel, labels map[string]string
		want        bool
	}{
		{nil, nil, true},
		{nil, map[string]string{"a": "1"}, true},
		{map[string]string{"a": "1"}, map[string]string{"a": "1", "b": "2"}, true},
		{map[string]string{"a": "1"}, map[string]string{"a": "2"}, false},
		{map[string]string{"a": "1"}, nil, false},
		{map[string]string{"a": ""}, nil, false},
		{map[string]string{"a": ""}, map[string]string{"a": ""}, true},
	}
	for _, tt := range tests {
		if got := Matches(tt.sel, tt.labels); got != tt.want {
			t.Errorf("Matches(%v, %v) = %v, want %v", tt.sel, tt.labels, got, tt.want)
		}
	}
}
