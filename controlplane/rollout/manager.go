// Package rollout runs xdpfw's fleet rollouts (DESIGN.md section 6) and
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

	clientv3 "go.etcd.io/etcd/client/v3"

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
	cli  *clientv3.Client
	keys proto.Keys
	now  func() time.Time
}

// NewManager returns a manager of the rollouts under keys.
func NewManager(cli *clientv3.Client, keys proto.Keys) *Manager {
	if keys.Prefix == "" {
		keys = proto.NewKeys("")
	}
	return &Manager{cli: cli, keys: keys, now: time.Now}
}

func invalid(what string, problems []proto.Problem) error {
	return fmt.Errorf("%s: %w: %w", what, ErrInvalid, &proto.ValidationError{Problems: problems})
}

// AuditOp makes the audit record's write of a rollout write, which the
// manager puts in the same transaction: the record exists if and only if
// the write does. result says what was done ("created", "want pause").
type AuditOp func(ro proto.Rollout, result string) (clientv3.Op, error)

// Create validates a spec and starts a rollout of it: spec, control
// {want: run}, state {running, wave 0} and the audit record (when audit is
// not nil) written in one transaction. It refuses (ErrConflict) a second
// active rollout of a rule set.
func (m *Manager) Create(ctx context.Context, spec proto.RolloutSpec, by string, audit AuditOp) (proto.Rollout, error) {
	norm, _, problems := checkSpec(spec)
	nameOK := validRuleSetName(spec.RuleSet)
	headKey := m.keys.RuleSetHead(spec.RuleSet)
	versionKey := m.keys.RuleSetVersion(spec.RuleSet, spec.Version)

	for range maxTxnAttempts {
		ops := []clientv3.Op{clientv3.OpGet(m.keys.Rollouts(), clientv3.WithPrefix())}
		if nameOK {
			ops = append(ops, clientv3.OpGet(headKey), clientv3.OpGet(versionKey, clientv3.WithCountOnly()))
		}
		read, err := m.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return proto.Rollout{}, fmt.Errorf("create rollout of %s: read %s: %w", spec.RuleSet, m.keys.Rollouts(), err)
		}
		rev := read.Header.Revision

		all := problems
		var head proto.RuleSetHead
		if nameOK {
			headKVs := read.Responses[1].GetResponseRange().Kvs
			switch {
			case len(headKVs) == 0:
				all = append(all, proto.Problem{Path: "ruleset", Message: fmt.Sprintf("rule set %q does not exist (no %s)", spec.RuleSet, headKey)})
			case json.Unmarshal(headKVs[0].Value, &head) != nil:
				return proto.Rollout{}, fmt.Errorf("create rollout of %s: decode %s: %q is not a head", spec.RuleSet, headKey, headKVs[0].Value)
			case spec.Version >= 1 && read.Responses[2].GetResponseRange().Count == 0:
				all = append(all, proto.Problem{Path: "version", Message: fmt.Sprintf("rule set %s has no version %d (no %s; the latest is %d)", spec.RuleSet, spec.Version, versionKey, head.Version)})
			}
		}
		if len(all) == 0 {
			// A rollout that would reach no host is refused, not run to a
			// success that did nothing (DESIGN.md section 6).
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

		ids, byID := groupRollouts(m.keys, read.Responses[0].GetResponseRange().Kvs)
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
		puts, err := marshalPuts(map[string]any{
			m.keys.RolloutSpec(id): doc, m.keys.RolloutControl(id): control, m.keys.RolloutState(id): state,
		})
		if err != nil {
			return proto.Rollout{}, fmt.Errorf("create rollout %s: %w", id, err)
		}
		ro := proto.Rollout{ID: id, Spec: norm, Control: control, Status: state, CreatedBy: by, CreatedAt: now}
		if audit != nil {
			op, err := audit(ro, "created")
			if err != nil {
				return proto.Rollout{}, fmt.Errorf("create rollout %s: audit record: %w", id, err)
			}
			puts = append(puts, op)
		}
		txn, err := m.cli.Txn(ctx).If(
			// No rollout was created since the read: the check for an
			// active one and the ID's order still hold.
			clientv3.Compare(clientv3.CreateRevision(m.keys.Rollouts()), "<", rev+1).WithPrefix(),
			// Versions are immutable, but a rule set can be deleted.
			clientv3.Compare(clientv3.CreateRevision(versionKey), ">", 0),
		).Then(puts...).Commit()
		if err != nil {
			return proto.Rollout{}, fmt.Errorf("create rollout %s: write %s: %w", id, m.keys.RolloutSpec(id), err)
		}
		if txn.Succeeded {
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
	resp, err := m.cli.Get(ctx, headKey, clientv3.WithRev(rev))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", headKey, err)
	}
	var setSelector map[string]string
	if len(resp.Kvs) > 0 {
		var rs struct {
			Selector map[string]string `json:"selector"`
		}
		if err := json.Unmarshal(resp.Kvs[0].Value, &rs); err != nil {
			return nil, fmt.Errorf("decode %s: %w", headKey, err)
		}
		setSelector = rs.Selector
	}

	prefix := m.keys.Hosts()
	end := clientv3.GetPrefixRangeEnd(prefix)
	live := 0
	for from := prefix; ; {
		page, err := m.cli.Get(ctx, from, clientv3.WithRange(end), clientv3.WithKeysOnly(),
			clientv3.WithLimit(pageSize), clientv3.WithRev(rev))
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, err)
		}
		var statuses []clientv3.Op
		for _, kv := range page.Kvs {
			if _, leaf, ok := m.keys.ParseHostKey(string(kv.Key)); ok && leaf == "status" {
				statuses = append(statuses, clientv3.OpGet(string(kv.Key), clientv3.WithRev(rev)))
			}
		}
		for start := 0; start < len(statuses); start += txnOps {
			txn, err := m.cli.Txn(ctx).Then(statuses[start:min(start+txnOps, len(statuses))]...).Commit()
			if err != nil {
				return nil, fmt.Errorf("read host statuses under %s: %w", prefix, err)
			}
			for _, r := range txn.Responses {
				for _, kv := range r.GetResponseRange().Kvs {
					var st struct {
						Labels map[string]string `json:"labels"`
					}
					if json.Unmarshal(kv.Value, &st) != nil {
						continue // the controller ignores it too
					}
					live++
					if Matches(setSelector, st.Labels) && Matches(selector, st.Labels) {
						return nil, nil
					}
				}
			}
		}
		if !page.More || len(page.Kvs) == 0 {
			break
		}
		from = string(page.Kvs[len(page.Kvs)-1].Key) + "\x00"
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

func marshalPuts(docs map[string]any) ([]clientv3.Op, error) {
	ops := make([]clientv3.Op, 0, len(docs))
	for key, doc := range docs {
		b, err := json.Marshal(doc)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", key, err)
		}
		ops = append(ops, clientv3.OpPut(key, string(b)))
	}
	return ops, nil
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
	prefix := m.keys.Rollouts() + id + "/"
	resp, err := m.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return RolloutView{}, specDoc{}, fmt.Errorf("rollout %s: read %s: %w", id, prefix, err)
	}
	_, byID := groupRollouts(m.keys, resp.Kvs)
	r := byID[id]
	if r == nil || r.spec == nil {
		return RolloutView{}, specDoc{}, fmt.Errorf("rollout %s: %w (no %s)", id, ErrNotFound, m.keys.RolloutSpec(id))
	}
	return decodeRollout(m.keys, id, r)
}

// List returns every rollout, newest first.
func (m *Manager) List(ctx context.Context) ([]proto.Rollout, error) {
	resp, err := m.cli.Get(ctx, m.keys.Rollouts(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list rollouts: read %s: %w", m.keys.Rollouts(), err)
	}
	ids, byID := groupRollouts(m.keys, resp.Kvs)
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
func (m *Manager) Control(ctx context.Context, id, want, by string, audit AuditOp) (proto.Rollout, error) {
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
		b, err := json.Marshal(control)
		if err != nil {
			return proto.Rollout{}, fmt.Errorf("rollout %s: encode %s: %w", id, m.keys.RolloutControl(id), err)
		}
		key := m.keys.RolloutControl(id)
		ops := []clientv3.Op{clientv3.OpPut(key, string(b))}
		if audit != nil {
			next := v
			next.Control = control
			op, err := audit(apiRollout(next, doc), "want "+want)
			if err != nil {
				return proto.Rollout{}, fmt.Errorf("rollout %s: audit record: %w", id, err)
			}
			ops = append(ops, op)
		}
		txn, err := m.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(key), "=", v.ControlRevision),
			clientv3.Compare(clientv3.ModRevision(m.keys.RolloutState(id)), "=", v.StateRevision),
		).Then(ops...).Commit()
		if err != nil {
			return proto.Rollout{}, fmt.Errorf("rollout %s: write %s: %w", id, key, err)
		}
		if txn.Succeeded {
			v.Control, v.ControlRevision = control, txn.Header.Revision
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
