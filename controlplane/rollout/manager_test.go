package rollout

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xdpfw/xdpfw/proto"
)

func TestCreateGetList(t *testing.T) {
	e := newEnv(t)
	e.putVersions("edge", nil, 2)
	e.putVersions("core", nil, 1)
	e.liveHost("web-1", nil)
	ctx := testCtx(t)

	first := e.create(proto.RolloutSpec{RuleSet: "edge", Version: 2, Waves: []string{"1", "100%"}, Pause: "30s"})
	if first.Status.State != proto.RolloutRunning || first.Status.Wave != 0 || first.Control.Want != proto.RolloutWantRun ||
		first.CreatedBy != "tester" || first.Control.By != "tester" || first.CreatedAt.IsZero() {
		t.Fatalf("created %+v", first)
	}
	wantSpec := proto.RolloutSpec{RuleSet: "edge", Version: 2, Waves: []string{"1", "100%"}, Pause: "30s", Deadline: "2m0s"}
	if !reflect.DeepEqual(first.Spec, wantSpec) {
		t.Fatalf("stored spec %+v, want %+v", first.Spec, wantSpec)
	}
	got := e.get(first.ID)
	if !reflect.DeepEqual(got.Spec, first.Spec) || got.CreatedBy != "tester" || !got.CreatedAt.Equal(first.CreatedAt) ||
		got.Status.State != proto.RolloutRunning {
		t.Fatalf("Get = %+v, want what Create returned %+v", got, first)
	}
	// The spec key reads as a RolloutSpec.
	resp, err := e.cli.Get(ctx, e.keys.RolloutSpec(first.ID))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("read %s: %v %v", e.keys.RolloutSpec(first.ID), resp, err)
	}
	var spec proto.RolloutSpec
	if err := json.Unmarshal(resp.Kvs[0].Value, &spec); err != nil || !reflect.DeepEqual(spec, wantSpec) {
		t.Fatalf("spec key = %s (%v), want %+v", resp.Kvs[0].Value, err, wantSpec)
	}

	// One active rollout per rule set.
	_, err = e.mgr.Create(ctx, proto.RolloutSpec{RuleSet: "edge", Version: 1}, "tester", nil)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), first.ID) {
		t.Fatalf("second rollout of edge: %v, want ErrConflict naming %s", err, first.ID)
	}
	second := e.create(proto.RolloutSpec{RuleSet: "core", Version: 1})
	if second.ID <= first.ID {
		t.Fatalf("IDs %s then %s do not sort by creation", first.ID, second.ID)
	}

	// Once the first is finished, edge takes a new rollout.
	e.control(first.ID, proto.RolloutWantAbort)
	setState(t, e, first.ID, proto.RolloutState{State: proto.RolloutAborted})
	third := e.create(proto.RolloutSpec{RuleSet: "edge", Version: 1})

	list, err := e.mgr.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, ro := range list {
		ids = append(ids, ro.ID)
	}
	if want := []string{third.ID, second.ID, first.ID}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("List = %v, want newest first %v", ids, want)
	}

	for _, id := range []string{"r-20991231T000000Z-0001", "../x", "a/b", ""} {
		if _, err := e.mgr.Get(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%q) = %v, want ErrNotFound", id, err)
		}
		if _, err := e.mgr.Control(ctx, id, proto.RolloutWantPause, "tester", nil); !errors.Is(err, ErrNotFound) {
			t.Errorf("Control(%q) = %v, want ErrNotFound", id, err)
		}
	}
}

// TestCreateRace: of concurrent creations for one rule set, one wins.
func TestCreateRace(t *testing.T) {
	e := newEnv(t)
	e.putVersions("edge", nil, 1)
	e.liveHost("web-1", nil)
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = e.mgr.Create(testCtx(t), proto.RolloutSpec{RuleSet: "edge", Version: 1}, "racer", nil)
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrConflict):
			t.Errorf("Create: %v, want success or ErrConflict", err)
		}
	}
	list, err := e.mgr.List(testCtx(t))
	if won != 1 || err != nil || len(list) != 1 {
		t.Fatalf("%d creations won, %d rollouts stored (%v); want 1", won, len(list), err)
	}
}

// setState writes a rollout's state as the controller would.
func setState(t *testing.T, e *env, id string, st proto.RolloutState) {
	t.Helper()
	b, _ := json.Marshal(st)
	if _, err := e.cli.Put(testCtx(t), e.keys.RolloutState(id), string(b)); err != nil {
		t.Fatal(err)
	}
}

func TestControl(t *testing.T) {
	e := newEnv(t)
	e.putVersions("edge", nil, 1)
	e.liveHost("web-1", nil)
	tests := []struct {
		state   string // the controller's
		control string // asked before, "" for the initial run
		want    string
		// wantErr is "" (accepted) or a part of the conflict's message.
		wantErr string
		// written: the control key changes.
		written bool
	}{
		{proto.RolloutRunning, "", proto.RolloutWantPause, "", true},
		{proto.RolloutRunning, "", proto.RolloutWantRun, "", false},
		{proto.RolloutRunning, "", proto.RolloutWantAbort, "", true},
		{proto.RolloutPaused, proto.RolloutWantPause, proto.RolloutWantRun, "", true},
		{proto.RolloutPaused, proto.RolloutWantPause, proto.RolloutWantPause, "", false},
		{proto.RolloutHalted, "", proto.RolloutWantRun, "", true},
		{proto.RolloutHalted, "", proto.RolloutWantPause, "is halted", false},
		{proto.RolloutHalted, "", proto.RolloutWantAbort, "", true},
		{proto.RolloutRunning, proto.RolloutWantAbort, proto.RolloutWantRun, "an abort was asked for", false},
		{proto.RolloutRunning, proto.RolloutWantAbort, proto.RolloutWantAbort, "", false},
		{proto.RolloutAborting, proto.RolloutWantAbort, proto.RolloutWantRun, "is aborting", false},
		{proto.RolloutAborting, proto.RolloutWantAbort, proto.RolloutWantPause, "is aborting", false},
		{proto.RolloutAborting, proto.RolloutWantAbort, proto.RolloutWantAbort, "", false},
		{proto.RolloutAborted, proto.RolloutWantAbort, proto.RolloutWantRun, "was aborted", false},
		{proto.RolloutAborted, proto.RolloutWantAbort, proto.RolloutWantAbort, "was aborted", false},
		{proto.RolloutSucceeded, "", proto.RolloutWantRun, "succeeded", false},
		{proto.RolloutSucceeded, "", proto.RolloutWantPause, "succeeded", false},
		{proto.RolloutSucceeded, "", proto.RolloutWantAbort, "succeeded", false},
	}
	for _, tt := range tests {
		t.Run(tt.state+"/"+tt.control+"/"+tt.want, func(t *testing.T) {
			ctx := testCtx(t)
			ro := e.create(proto.RolloutSpec{RuleSet: "edge", Version: 1})
			if tt.control != "" {
				e.control(ro.ID, tt.control)
			}
			setState(t, e, ro.ID, proto.RolloutState{State: tt.state})
			before, _ := e.cli.Get(ctx, e.keys.RolloutControl(ro.ID))
			got, err := e.mgr.Control(ctx, ro.ID, tt.want, "operator", nil)
			after, _ := e.cli.Get(ctx, e.keys.RolloutControl(ro.ID))
			written := after.Kvs[0].ModRevision != before.Kvs[0].ModRevision
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Control: %v", err)
			case tt.wantErr != "" && (!errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Control = %v, want ErrConflict saying %q", err, tt.wantErr)
			case written != tt.written:
				t.Fatalf("control key written: %v, want %v", written, tt.written)
			}
			if tt.written && (got.Control.Want != tt.want || got.Control.By != "operator") {
				t.Fatalf("Control returned control %+v", got.Control)
			}
			// Finish it, so that the next case may create one.
			setState(t, e, ro.ID, proto.RolloutState{State: proto.RolloutAborted})
		})
	}

	ro := e.create(proto.RolloutSpec{RuleSet: "edge", Version: 1})
	_, err := e.mgr.Control(testCtx(t), ro.ID, "stop", "operator", nil)
	var verr *proto.ValidationError
	if !errors.Is(err, ErrInvalid) || !errors.As(err, &verr) || verr.Problems[0].Path != "want" {
		t.Fatalf("Control(stop) = %v, want ErrInvalid with a problem at want", err)
	}
}

// TestControlRacesController: a control request whose read is overtaken
// by a state write is decided again on the new state, never against a
// state it did not see.
func TestControlRacesController(t *testing.T) {
	e := newEnv(t)
	e.putVersions("edge", nil, 1)
	e.liveHost("web-1", nil)
	ro := e.create(proto.RolloutSpec{RuleSet: "edge", Version: 1})
	calls := 0
	e.mgr.now = func() time.Time {
		// Between Control's read and its transaction, the controller
		// finishes the rollout.
		if calls++; calls == 1 {
			setState(t, e, ro.ID, proto.RolloutState{State: proto.RolloutSucceeded})
		}
		return time.Now()
	}
	_, err := e.mgr.Control(testCtx(t), ro.ID, proto.RolloutWantPause, "operator", nil)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "succeeded") {
		t.Fatalf("Control raced by a success: %v, want ErrConflict (succeeded)", err)
	}
	if got := e.get(ro.ID); got.Control.Want != proto.RolloutWantRun {
		t.Fatalf("control = %+v, want the pause not written", got.Control)
	}
}

// TestCreateRefusesARolloutOfNoHost: a rollout whose selectors (the rule
// set's and its own) match no live host is refused with a problem at
// "selector" that says why, and writes nothing (docs/architecture.md, "The control plane").
func TestCreateRefusesARolloutOfNoHost(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	edge := map[string]string{"role": "edge"}
	e.putVersions("edge", edge, 1)
	refused := func(spec proto.RolloutSpec, want string) {
		t.Helper()
		before, err := e.cli.Get(ctx, "/")
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.mgr.Create(ctx, spec, "tester", nil)
		var ve *proto.ValidationError
		if !errors.Is(err, ErrInvalid) || !errors.As(err, &ve) || len(ve.Problems) != 1 {
			t.Fatalf("Create(%+v) = %v, want ErrInvalid with one problem", spec, err)
		}
		if got := ve.Problems[0].String(); got != want {
			t.Errorf("problem\n%q\nwant\n%q", got, want)
		}
		after, err := e.cli.Get(ctx, "/")
		if err != nil {
			t.Fatal(err)
		}
		if after.Header.Revision != before.Header.Revision {
			t.Errorf("a refused rollout wrote (revision %d -> %d)", before.Header.Revision, after.Header.Revision)
		}
	}

	refused(proto.RolloutSpec{RuleSet: "edge", Version: 1},
		"selector: no live host: no agent reports a status (are the agents running and registered?); a rollout of no host would do nothing")

	e.liveHost("db-1", map[string]string{"role": "db"})
	e.liveHost("web-1", map[string]string{"role": "edge", "dc": "1"})
	// A desired state alone is not a live host.
	if _, err := e.cli.Put(ctx, e.keys.HostDesired("web-2"), `{"apiVersion":"xdpfw/v1","kind":"HostDesired","ruleSets":[]}`); err != nil {
		t.Fatal(err)
	}
	refused(proto.RolloutSpec{RuleSet: "edge", Version: 1, Selector: map[string]string{"dc": "2"}},
		"selector: no live host matches the rule set's selector {role=edge} and the rollout's selector {dc=2}: 2 hosts report a status, none with these labels; a rollout of no host would do nothing")

	// The rule set's selector is its head's, as the controller's.
	if _, _, err := e.store.PutRuleSet(ctx, ruleSet("edge", map[string]string{"role": "cache"}, 2002), -1); err != nil {
		t.Fatal(err)
	}
	refused(proto.RolloutSpec{RuleSet: "edge", Version: 1},
		"selector: no live host matches the rule set's selector {role=cache} and the rollout's selector {} (every host): 2 hosts report a status, none with these labels; a rollout of no host would do nothing")

	e.liveHost("cache-1", map[string]string{"role": "cache", "dc": "1"})
	ro := e.create(proto.RolloutSpec{RuleSet: "edge", Version: 2, Selector: map[string]string{"dc": "1"}})
	if ro.Status.State != proto.RolloutRunning {
		t.Fatalf("created %+v", ro)
	}
}
