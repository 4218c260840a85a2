// Package rollout runs xdpfw's fleet rollouts (docs/architecture.md, "The control plane") and
// decides every host's desired state.
//
// The Manager is what the API calls: it creates rollouts, reads them and
// records what operators want of them (run, pause, abort), each write one
// etcd transaction guarded by compares. The Controller runs on the one
// control-plane replica elected leader: it moves rollouts through their
// waves as hosts report the version applied, halts them when too many
// hosts fail, takes hosts back to their previous versions on abort, and
// writes each host's desired state (Desired) whenever it differs from
// what the rule sets, their releases and the rollouts say. Everything it
// decides is in etcd, so a controller that dies is replaced by another
// that continues from there.
//
// Keys (proto.Keys):
//
//	rollouts/<id>/spec       the RolloutSpec with createdBy and createdAt (Create)
//	rollouts/<id>/control    RolloutControl (Create, Control)
//	rollouts/<id>/state      RolloutState (Create, then the controller)
//	rulesets/<name>/released Release (the controller, when a rollout succeeds)
//	hosts/<host>/desired     HostDesired (the controller)
package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// Errors the API branches on (errors.Is).
var (
	// ErrInvalid is wrapped with a *proto.ValidationError naming every
	// problem of a spec or a control request.
	ErrInvalid = errors.New("invalid")
	// ErrConflict: the rollout's state forbids the request, another
	// rollout of the rule set is active, or writers kept racing.
	ErrConflict = errors.New("conflict")
	// ErrNotFound: no such rollout.
	ErrNotFound = errors.New("not found")
)

// maxTxnAttempts bounds the retries of a write whose compares keep
// failing because others (the controller, other replicas) write the same
// keys in between.
const maxTxnAttempts = 20

// Manager creates, reads and controls rollouts.
type Manager struct {
	st   *etcdstore.Store
	keys proto.Keys
	now  func() time.Time
}

// NewManager returns a manager of the rollouts st holds.
func NewManager(st *etcdstore.Store) *Manager {
	return &Manager{st: st, keys: st.Keys(), now: time.Now}
}

func invalid(what string, problems []proto.Problem) error {
	return fmt.Errorf("%s: %w: %w", what, ErrInvalid, &proto.ValidationError{Problems: problems})
}

// AuditRecord makes the audit record of a rollout write, which the
// manager writes in the same transaction: the record exists if and only if
// the write does. result says what was done ("created", "want pause").
type AuditRecord func(ro proto.Rollout, result string) proto.AuditRecord

// Create validates a spec and starts a rollout of it: spec, control
// {want: run}, state {running, wave 0} and the audit record (when audit is
// not nil) written in one transaction. It refuses (ErrConflict) a second
// active rollout of a rule set.
func (m *Manager) Create(ctx context.Context, spec proto.RolloutSpec, by string, audit AuditRecord) (proto.Rollout, error) {
	norm, _, problems := checkSpec(spec)
	nameOK := validRuleSetName(spec.RuleSet)
	headKey := m.keys.RuleSetHead(spec.RuleSet)
	versionKey := m.keys.RuleSetVersion(spec.RuleSet, spec.Version)

	for range maxTxnAttempts {
		// Everything is read at the revision of the first read.
		rollouts, rev, err := m.st.GetPrefix(ctx, m.keys.Rollouts(), 0)
		if err != nil {
			return proto.Rollout{}, fmt.Errorf("create rollout of %s: %w", spec.RuleSet, err)
		}
		all := problems
		var head proto.RuleSetHead
		if nameOK {
			headKV, _, err := m.st.GetAt(ctx, headKey, rev)
			if err != nil {
				return proto.Rollout{}, fmt.Errorf("create rollout of %s: %w", spec.RuleSet, err)
			}
			exists := false
			if headKV != nil && spec.Version >= 1 {
				if exists, err = m.st.ExistsAt(ctx, versionKey, rev); err != nil {
					return proto.Rollout{}, fmt.Errorf("create rollout of %s: %w", spec.RuleSet, err)
				}
			}
			switch {
			case headKV == nil:
				all = append(all, proto.Problem{Path: "ruleset", Message: fmt.Sprintf("rule set %q does not exist (no %s)", spec.RuleSet, headKey)})
			case json.Unmarshal(headKV.Value, &head) != nil:
				return proto.Rollout{}, fmt.Errorf("create rollout of %s: decode %s: %q is not a head", spec.RuleSet, headKey, headKV.Value)
			case spec.Version >= 1 && !exists:
				all = append(all, proto.Problem{Path: "version", Message: fmt.Sprintf("rule set %s has no version %d (no %s; the latest is %d)", spec.RuleSet, spec.Version, versionKey, head.Version)})
			}
		}
		if len(all) == 0 {
			// A rollout that would reach no host is refused, not run to a
			// success that did nothing (docs/architecture.md, "The control plane").
			p, err := m.noHostProblem(ctx, rev, spec.RuleSet, head.Version, norm.Selector)
			if err != nil {
				return proto.Rollout{}, fmt.Errorf("create rollout of %s: %w", spec.RuleSet, err)
			}
			if p != nil {
				all = append(all, *p)
			}
		}
		if len(all) > 0 {
			return proto.Rollout{}, invalid("rollout spec", all)
		}

		ids, byID := groupRollouts(m.keys, rollouts)
		for _, id := range ids {
			v, _, err := decodeRollout(m.keys, id, byID[id])
			if err != nil {
				return proto.Rollout{}, fmt.Errorf("create rollout of %s: %w", spec.RuleSet, err)
			}
			if v.Spec.RuleSet == spec.RuleSet && active(v.State.State) {
				return proto.Rollout{}, fmt.Errorf("create rollout of %s: %w: rollout %s of rule set %s is %s (one active rollout per rule set: wait for it to finish or abort it)",
					spec.RuleSet, ErrConflict, id, spec.RuleSet, v.State.State)
			}
		}

		now := m.now().UTC()
		newest := ""
		if len(ids) > 0 {
			newest = ids[len(ids)-1]
		}
		id := nextID(now, newest)
		doc := specDoc{RolloutSpec: norm, CreatedBy: by, CreatedAt: now}
		control := proto.RolloutControl{Want: proto.RolloutWantRun, By: by, At: now}
		state := proto.RolloutState{
			State: proto.RolloutRunning, Hosts: map[string]proto.RolloutHost{},
			Message: "created" + byWhom(by), UpdatedAt: now,
		}
		writes, err := marshalPuts(map[string]any{
			m.keys.RolloutSpec(id): doc, m.keys.RolloutControl(id): control, m.keys.RolloutState(id): state,
		})
		if err != nil {
			return proto.Rollout{}, fmt.Errorf("create rollout %s: %w", id, err)
		}
		ro := proto.Rollout{ID: id, Spec: norm, Control: control, Status: state, CreatedBy: by, CreatedAt: now}
		if audit != nil {
			w, err := m.st.AuditWrite(audit(ro, "created"))
			if err != nil {
				return proto.Rollout{}, fmt.Errorf("create rollout %s: audit record: %w", id, err)
			}
			writes = append(writes, w)
		}
		ok, _, err := m.st.CommitIf(ctx, []etcdstore.Guard{
			// No rollout was created since the read: the check for an
			// active one and the ID's order still hold.
			etcdstore.NoneCreatedAfter(m.keys.Rollouts(), rev),
			// Versions are immutable, but a rule set can be deleted.
			etcdstore.Exists(versionKey),
		}, writes)
		if err != nil {
			return proto.Rollout{}, fmt.Errorf("create rollout %s: write %s: %w", id, m.keys.RolloutSpec(id), err)
		}
		if ok {
			return ro, nil
		}
	}
	return proto.Rollout{}, fmt.Errorf("create rollout of %s: %w: other writers kept creating rollouts (%d attempts)", spec.RuleSet, ErrConflict, maxTxnAttempts)
}

// noHostProblem returns the problem of a rollout no live host would take,
// read at revision rev: one whose rule set's selector (its head version's,
// as the controller matches hosts) and own selector match the labels of no
// host with a status (a status exists only under its agent's lease). It
// stops reading at the first host that matches.
func (m *Manager) noHostProblem(ctx context.Context, rev int64, name string, head int64, selector map[string]string) (*proto.Problem, error) {
	headKey := m.keys.RuleSetVersion(name, head)
	headKV, _, err := m.st.GetAt(ctx, headKey, rev)
	if err != nil {
		return nil, err
	}
	var setSelector map[string]string
	if headKV != nil {
		var rs struct {
			Selector map[string]string `json:"selector"`
		}
		if err := json.Unmarshal(headKV.Value, &rs); err != nil {
			return nil, fmt.Errorf("decode %s: %w", headKey, err)
		}
		setSelector = rs.Selector
	}

	// The statuses are listed first (keys only), then read in batches,
	// until one matches.
	statuses, _, err := m.st.ListKeys(ctx, m.keys.Hosts(), rev, func(k string) bool {
		_, leaf, ok := m.keys.ParseHostKey(k)
		return ok && leaf == "status"
	})
	if err != nil {
		return nil, err
	}
	// An enrolled host is matched by its enrollment's labels (HostView.Labels).
	enrolled, _, err := m.st.Enrollments(ctx, rev)
	if err != nil {
		return nil, fmt.Errorf("read enrollments: %w", err)
	}
	live := 0
	for lo := 0; lo < len(statuses); lo += txnOps {
		batch := statuses[lo:min(lo+txnOps, len(statuses))]
		keys := make([]string, len(batch))
		for i, l := range batch {
			keys[i] = l.Key
		}
		matched := false
		err := m.st.GetManyAt(ctx, rev, keys, func(kv etcdstore.KeyValue) {
			var st struct {
				Labels map[string]string `json:"labels"`
			}
			if matched || json.Unmarshal(kv.Value, &st) != nil {
				return // the controller ignores it too
			}
			live++
			labels := st.Labels
			if host, _, _ := m.keys.ParseHostKey(kv.Key); enrolled[host].User != "" {
				labels = enrolled[host].Labels
			}
			matched = Matches(setSelector, labels) && Matches(selector, labels)
		})
		if err != nil {
			return nil, fmt.Errorf("read host statuses: %w", err)
		}
		if matched {
			return nil, nil
		}
	}
	msg := fmt.Sprintf("no live host matches the rule set's selector %s and the rollout's selector %s: %d hosts report a status, none with these labels; a rollout of no host would do nothing",
		selectorString(setSelector), selectorString(selector), live)
	if live == 0 {
		msg = "no live host: no agent reports a status (are the agents running and registered?); a rollout of no host would do nothing"
	}
	return &proto.Problem{Path: "selector", Message: msg}, nil
}

// selectorString is a selector as k=v,k2=v2 ({} for every host).
func selectorString(sel map[string]string) string {
	if len(sel) == 0 {
		return "{} (every host)"
	}
	keys := slices.Sorted(maps.Keys(sel))
	for i, k := range keys {
		keys[i] = k + "=" + sel[k]
	}
	return "{" + strings.Join(keys, ",") + "}"
}

func marshalPuts(docs map[string]any) ([]etcdstore.Write, error) {
	writes := make([]etcdstore.Write, 0, len(docs))
	for key, doc := range docs {
		w, err := etcdstore.PutJSON(key, doc)
		if err != nil {
			return nil, err
		}
		writes = append(writes, w)
	}
	return writes, nil
}

// Get returns a rollout.
func (m *Manager) Get(ctx context.Context, id string) (proto.Rollout, error) {
	v, doc, err := m.read(ctx, id)
	if err != nil {
		return proto.Rollout{}, err
	}
	return apiRollout(v, doc), nil
}

func (m *Manager) read(ctx context.Context, id string) (RolloutView, specDoc, error) {
	if !validID(id) {
		return RolloutView{}, specDoc{}, fmt.Errorf("rollout %q: %w", id, ErrNotFound)
	}
	kvs, _, err := m.st.GetPrefix(ctx, m.keys.Rollouts()+id+"/", 0)
	if err != nil {
		return RolloutView{}, specDoc{}, fmt.Errorf("rollout %s: %w", id, err)
	}
	_, byID := groupRollouts(m.keys, kvs)
	r := byID[id]
	if r == nil || r.spec == nil {
		return RolloutView{}, specDoc{}, fmt.Errorf("rollout %s: %w (no %s)", id, ErrNotFound, m.keys.RolloutSpec(id))
	}
	return decodeRollout(m.keys, id, r)
}

// List returns every rollout, newest first.
func (m *Manager) List(ctx context.Context) ([]proto.Rollout, error) {
	kvs, _, err := m.st.GetPrefix(ctx, m.keys.Rollouts(), 0)
	if err != nil {
		return nil, fmt.Errorf("list rollouts: %w", err)
	}
	ids, byID := groupRollouts(m.keys, kvs)
	out := make([]proto.Rollout, 0, len(ids))
	for i := len(ids) - 1; i >= 0; i-- {
		v, doc, err := decodeRollout(m.keys, ids[i], byID[ids[i]])
		if err != nil {
			return nil, fmt.Errorf("list rollouts: %w", err)
		}
		out = append(out, apiRollout(v, doc))
	}
	return out, nil
}

// Control records what an operator wants of a rollout: run (resume a
// paused rollout, or retry a halted one), pause or abort. It refuses
// (ErrConflict) what the rollout's state makes meaningless: anything on
// a succeeded or aborted rollout, run or pause once an abort is asked
// for, pause of a halted rollout. Asking again for what is already asked
// writes nothing (except run on a halted rollout, which retries it). A
// write carries its audit record (when audit is not nil) in its transaction.
func (m *Manager) Control(ctx context.Context, id, want, by string, audit AuditRecord) (proto.Rollout, error) {
	switch want {
	case proto.RolloutWantRun, proto.RolloutWantPause, proto.RolloutWantAbort:
	default:
		return proto.Rollout{}, invalid("rollout "+id, []proto.Problem{{Path: "want",
			Message: fmt.Sprintf("%q is not %q, %q or %q", want, proto.RolloutWantRun, proto.RolloutWantPause, proto.RolloutWantAbort)}})
	}
	for range maxTxnAttempts {
		v, doc, err := m.read(ctx, id)
		if err != nil {
			return proto.Rollout{}, err
		}
		write, err := allowControl(v, want)
		if err != nil {
			return proto.Rollout{}, fmt.Errorf("rollout %s: %w", id, err)
		}
		if !write {
			return apiRollout(v, doc), nil
		}
		control := proto.RolloutControl{Want: want, By: by, At: m.now().UTC()}
		key := m.keys.RolloutControl(id)
		w, err := etcdstore.PutJSON(key, control)
		if err != nil {
			return proto.Rollout{}, fmt.Errorf("rollout %s: %w", id, err)
		}
		writes := []etcdstore.Write{w}
		if audit != nil {
			next := v
			next.Control = control
			w, err := m.st.AuditWrite(audit(apiRollout(next, doc), "want "+want))
			if err != nil {
				return proto.Rollout{}, fmt.Errorf("rollout %s: audit record: %w", id, err)
			}
			writes = append(writes, w)
		}
		ok, rev, err := m.st.CommitIf(ctx, []etcdstore.Guard{
			etcdstore.Unchanged(key, v.ControlRevision),
			etcdstore.Unchanged(m.keys.RolloutState(id), v.StateRevision),
		}, writes)
		if err != nil {
			return proto.Rollout{}, fmt.Errorf("rollout %s: write %s: %w", id, key, err)
		}
		if ok {
			v.Control, v.ControlRevision = control, rev
			return apiRollout(v, doc), nil
		}
		// The controller moved the rollout on (or another operator asked
		// something): decide again on what it is now.
	}
	return proto.Rollout{}, fmt.Errorf("rollout %s: %w: its state kept changing under the request (%d attempts)", id, ErrConflict, maxTxnAttempts)
}

// allowControl says whether want makes sense for a rollout and needs a
// write, or why not (wrapping ErrConflict).
func allowControl(v RolloutView, want string) (write bool, err error) {
	state, cur := v.State.State, v.Control.Want
	switch state {
	case proto.RolloutSucceeded:
		return false, fmt.Errorf("%w: it succeeded and cannot be %s (roll back with a new rollout of the version you want)", ErrConflict, wantDone(want))
	case proto.RolloutAborted:
		return false, fmt.Errorf("%w: it was aborted: nothing more can be done with it (create a new rollout)", ErrConflict)
	case proto.RolloutAborting:
		if want == proto.RolloutWantAbort {
			return false, nil
		}
		return false, fmt.Errorf("%w: it is aborting and cannot be %s", ErrConflict, wantDone(want))
	}
	if cur == proto.RolloutWantAbort {
		if want == proto.RolloutWantAbort {
			return false, nil
		}
		return false, fmt.Errorf("%w: an abort was asked for; it cannot be %s", ErrConflict, wantDone(want))
	}
	if state == proto.RolloutHalted {
		if want == proto.RolloutWantPause {
			return false, fmt.Errorf("%w: it is halted and does not advance: run retries the failed hosts, abort rolls it back", ErrConflict)
		}
		return true, nil
	}
	return want != cur, nil
}

func wantDone(want string) string {
	switch want {
	case proto.RolloutWantRun:
		return "resumed"
	case proto.RolloutWantPause:
		return "paused"
	}
	return "aborted"
}
