package etcdstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/xdpfw/xdpfw/proto"
)

// The control plane's writes: each rule-set write and its audit record
// in one transaction (docs/architecture.md, "The control plane": every write audited), so that
// there is never a version nobody is recorded as writing, nor a record of
// a write that did not happen.

// AuditTimeFormat is how an audit key writes its time: RFC 3339 in UTC
// with all nine digits of the nanoseconds, so that keys sort by time
// (RFC3339Nano drops trailing zeros and would not).
const AuditTimeFormat = "2006-01-02T15:04:05.000000000Z"

// maxDeleteAttempts bounds the retries of a DeleteRuleSetAudited whose
// checks keep being overtaken by other writes.
const maxDeleteAttempts = 10

// maxDesiredCompares is how many hosts' desired keys a delete compares in
// its transaction (etcd allows 128 operations per part of a transaction).
const maxDesiredCompares = 100

// ErrInUse is wrapped by a *InUseError.
var ErrInUse = errors.New("in use")

// InUseError says that a rule set cannot be deleted: hosts' desired
// states or active rollouts name it. It wraps ErrInUse.
type InUseError struct {
	Name string
	// Hosts whose desired state names the rule set, sorted.
	Hosts []string
	// Rollouts of the rule set that have not finished, sorted.
	Rollouts []string
}

func (e *InUseError) Error() string {
	var what []string
	if n := len(e.Hosts); n > 0 {
		what = append(what, fmt.Sprintf("the desired state of %d host(s) (%s)", n, list(e.Hosts)))
	}
	if n := len(e.Rollouts); n > 0 {
		what = append(what, fmt.Sprintf("%d active rollout(s) (%s)", n, list(e.Rollouts)))
	}
	return fmt.Sprintf("rule set %s is in use by %s: delete it once no host's desired state names it "+
		"(write a version whose selector matches none of them; a lost host keeps its desired state until its key is removed) "+
		"and its rollouts have finished or been aborted", e.Name, strings.Join(what, " and "))
}

// list shows the first few names of a list.
func list(names []string) string {
	const show = 5
	if len(names) <= show {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:show], ", "), len(names)-show)
}

// Unwrap makes errors.Is(err, ErrInUse) true.
func (e *InUseError) Unwrap() error { return ErrInUse }

// AuditFunc makes the audit record of a write once its resulting version
// is known. At is set by the store; Revision is left 0 in the stored
// record and filled in from the key's revision when it is read.
type AuditFunc func(version int64) proto.AuditRecord

// PutResult says what PutRuleSetAudited wrote.
type PutResult struct {
	Version  int64
	Revision int64
	// Previous is the version the write came after (nil and 0 for a new
	// rule set; nil too if it could not be decoded).
	Previous        *proto.RuleSet
	PreviousVersion int64
	// AuditKey is the key of the write's audit record.
	AuditKey string
}

// NewAuditKey returns a fresh audit key for a record made at at:
// audit/<time>-<random hex>.
func (s *Store) NewAuditKey(at time.Time) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("audit key: %w", err)
	}
	return s.keys.Audit() + at.UTC().Format(AuditTimeFormat) + "-" + hex.EncodeToString(b[:]), nil
}

// auditOp returns the put of an audit record with its time set, under a
// new key.
func (s *Store) auditOp(rec proto.AuditRecord) (key string, op clientv3.Op, err error) {
	if rec.At.IsZero() {
		rec.At = time.Now()
	}
	rec.At = rec.At.UTC()
	rec.Revision = 0
	key, err = s.NewAuditKey(rec.At)
	if err != nil {
		return "", clientv3.Op{}, err
	}
	doc, err := json.Marshal(rec)
	if err != nil {
		return "", clientv3.Op{}, fmt.Errorf("audit record %s: encode: %w", key, err)
	}
	return key, clientv3.OpPut(key, string(doc)), nil
}

// PutRuleSetAudited is PutRuleSet with the write's audit record in the
// same transaction; it also returns the version the write came after,
// for a diff. ifMatch is as in PutRuleSet.
func (s *Store) PutRuleSetAudited(ctx context.Context, rs proto.RuleSet, ifMatch int64, audit AuditFunc) (PutResult, error) {
	if ifMatch < -1 {
		return PutResult{}, fmt.Errorf("rule set %s: if-match %d: want -1 (any version), 0 (a new rule set) or a version", rs.Name, ifMatch)
	}
	ev, err := s.encodeVersion(ctx, rs)
	if err != nil {
		return PutResult{}, err
	}

	headKey := s.keys.RuleSetHead(rs.Name)
	for range maxPutAttempts {
		resp, err := s.cli.Get(ctx, headKey)
		if err != nil {
			return PutResult{}, fmt.Errorf("rule set %s: read %s: %w", rs.Name, headKey, err)
		}
		cur, modRev, err := decodeHead(headKey, resp.Kvs)
		if err != nil {
			return PutResult{}, err
		}
		if ifMatch >= 0 && ifMatch != cur {
			return PutResult{}, &ConflictError{Name: rs.Name, Key: headKey, IfMatch: ifMatch, Current: cur}
		}
		res := PutResult{Version: cur + 1, PreviousVersion: cur}
		if cur > 0 {
			// Versions are immutable and the transaction below checks
			// that the head is still cur, so this is the version the
			// write comes after.
			prevKey := s.keys.RuleSetVersion(rs.Name, cur)
			pr, err := s.cli.Get(ctx, prevKey)
			if err != nil {
				return PutResult{}, fmt.Errorf("rule set %s: read %s: %w", rs.Name, prevKey, err)
			}
			if len(pr.Kvs) > 0 {
				if prev, err := s.decodeVersion(ctx, prevKey, pr.Kvs[0].Value); err == nil {
					res.Previous = &prev
				}
			}
		}

		versionKey := s.keys.RuleSetVersion(rs.Name, res.Version)
		head, err := json.Marshal(proto.RuleSetHead{Version: res.Version})
		if err != nil {
			return PutResult{}, fmt.Errorf("rule set %s: encode head: %w", rs.Name, err)
		}
		auditKey, auditPut, err := s.auditOp(audit(res.Version))
		if err != nil {
			return PutResult{}, fmt.Errorf("rule set %s: %w", rs.Name, err)
		}
		res.AuditKey = auditKey
		txn, err := s.cli.Txn(ctx).If(append([]clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(headKey), "=", modRev),
			clientv3.Compare(clientv3.CreateRevision(versionKey), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(auditKey), "=", 0),
		}, s.epochGuard(ev)...)...).Then(
			clientv3.OpPut(versionKey, string(ev.doc)),
			clientv3.OpPut(headKey, string(head)),
			auditPut,
		).Else(
			clientv3.OpGet(headKey),
		).Commit()
		if err != nil {
			return PutResult{}, fmt.Errorf("rule set %s: write %s: %w", rs.Name, versionKey, err)
		}
		if txn.Succeeded {
			res.Revision = txn.Header.Revision
			return res, nil
		}
		now, nowRev, err := decodeHead(headKey, txn.Responses[0].GetResponseRange().Kvs)
		if err != nil {
			return PutResult{}, err
		}
		if nowRev == modRev {
			if moved, err := s.epochMoved(ctx, ev); err != nil {
				return PutResult{}, err
			} else if moved {
				continue // chunks were collected meanwhile: stored again, try again
			}
			return PutResult{}, fmt.Errorf("rule set %s: %s already exists but the head %s says version %d: refusing to overwrite an immutable version",
				rs.Name, versionKey, headKey, cur)
		}
		if ifMatch >= 0 {
			return PutResult{}, &ConflictError{Name: rs.Name, Key: headKey, IfMatch: ifMatch, Current: now}
		}
	}
	return PutResult{}, fmt.Errorf("rule set %s: %w: lost the race to other writers %d times", rs.Name, ErrConflict, maxPutAttempts)
}

// DeleteResult says what DeleteRuleSetAudited removed.
type DeleteResult struct {
	// Version was the head when the rule set was deleted.
	Version int64
	// Keys is how many keys were deleted (versions, head, release).
	Keys     int64
	Revision int64
	AuditKey string
}

// DeleteRuleSetAudited deletes every key of a rule set (its versions,
// head and release) and writes the audit record, in one transaction. It
// refuses with an *InUseError while a host's desired state or a rollout
// that has not finished names the rule set. ifMatch is -1 (any version)
// or the version the head must be at.
//
// The transaction checks that, since the references were read, the head
// and release did not move, no rollout was created, no host key was
// created and (for up to 100 hosts with a desired state) no desired
// state changed. In a bigger fleet a desired state rewritten in the
// millisecond between the check and the delete can still name the rule
// set; its agent refuses the missing version and keeps what it enforces,
// as for any bad document.
func (s *Store) DeleteRuleSetAudited(ctx context.Context, name string, ifMatch int64, audit AuditFunc) (DeleteResult, error) {
	if err := s.checkRuleSetName(name); err != nil {
		return DeleteResult{}, err
	}
	if ifMatch < -1 || ifMatch == 0 {
		return DeleteResult{}, fmt.Errorf("rule set %s: if-match %d: want -1 (any version) or a version", name, ifMatch)
	}
	headKey := s.keys.RuleSetHead(name)
	releasedKey := s.keys.RuleSetReleased(name)
	prefix := s.keys.RuleSets() + name + "/"
	for range maxDeleteAttempts {
		read, err := s.cli.Txn(ctx).Then(clientv3.OpGet(headKey), clientv3.OpGet(releasedKey)).Commit()
		if err != nil {
			return DeleteResult{}, fmt.Errorf("rule set %s: read %s: %w", name, headKey, err)
		}
		rev := read.Header.Revision
		cur, headRev, err := decodeHead(headKey, read.Responses[0].GetResponseRange().Kvs)
		if err != nil {
			return DeleteResult{}, err
		}
		if cur == 0 {
			return DeleteResult{}, fmt.Errorf("rule set %s: %w (no %s)", name, ErrNotFound, headKey)
		}
		if ifMatch > 0 && ifMatch != cur {
			return DeleteResult{}, &ConflictError{Name: name, Key: headKey, IfMatch: ifMatch, Current: cur}
		}
		var releasedRev int64
		if kvs := read.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
			releasedRev = kvs[0].ModRevision
		}

		desired, users, err := s.desiredUsers(ctx, name, rev)
		if err != nil {
			return DeleteResult{}, fmt.Errorf("rule set %s: %w", name, err)
		}
		rollouts, err := s.activeRollouts(ctx, name, rev)
		if err != nil {
			return DeleteResult{}, fmt.Errorf("rule set %s: %w", name, err)
		}
		if len(users) > 0 || len(rollouts) > 0 {
			return DeleteResult{}, &InUseError{Name: name, Hosts: users, Rollouts: rollouts}
		}

		auditKey, auditPut, err := s.auditOp(audit(cur))
		if err != nil {
			return DeleteResult{}, fmt.Errorf("rule set %s: %w", name, err)
		}
		cmps := []clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(headKey), "=", headRev),
			clientv3.Compare(clientv3.ModRevision(releasedKey), "=", releasedRev),
			clientv3.Compare(clientv3.CreateRevision(s.keys.Rollouts()), "<", rev+1).WithPrefix(),
			clientv3.Compare(clientv3.CreateRevision(s.keys.Hosts()), "<", rev+1).WithPrefix(),
			clientv3.Compare(clientv3.CreateRevision(auditKey), "=", 0),
		}
		if len(desired) <= maxDesiredCompares {
			for key, modRev := range desired {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", modRev))
			}
		}
		txn, err := s.cli.Txn(ctx).If(cmps...).Then(
			clientv3.OpDelete(prefix, clientv3.WithPrefix()),
			auditPut,
		).Commit()
		if err != nil {
			return DeleteResult{}, fmt.Errorf("rule set %s: delete %s: %w", name, prefix, err)
		}
		if txn.Succeeded {
			return DeleteResult{
				Version:  cur,
				Keys:     txn.Responses[0].GetResponseDeleteRange().Deleted,
				Revision: txn.Header.Revision,
				AuditKey: auditKey,
			}, nil
		}
		// Something moved between the check and the delete: check again.
	}
	return DeleteResult{}, fmt.Errorf("rule set %s: %w: other writes kept overtaking the delete %d times; try again", name, ErrConflict, maxDeleteAttempts)
}

// desiredUsers reads every host's desired state at revision rev and
// returns their keys with their revisions, and the hosts that name the
// rule set. A desired state that does not decode is read leniently: a
// reference in it still counts.
func (s *Store) desiredUsers(ctx context.Context, name string, rev int64) (map[string]int64, []string, error) {
	var keys []string
	err := s.rangeKeysAt(ctx, s.keys.Hosts(), rev, func(key string) {
		if _, leaf, ok := s.keys.ParseHostKey(key); ok && leaf == "desired" {
			keys = append(keys, key)
		}
	})
	if err != nil {
		return nil, nil, err
	}
	revs := make(map[string]int64, len(keys))
	var users []string
	for start := 0; start < len(keys); start += txnBatch {
		batch := keys[start:min(start+txnBatch, len(keys))]
		ops := make([]clientv3.Op, len(batch))
		for i, key := range batch {
			ops[i] = clientv3.OpGet(key, clientv3.WithRev(rev))
		}
		txn, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, nil, fmt.Errorf("read %s...: %w", batch[0], err)
		}
		for _, r := range txn.Responses {
			for _, kv := range r.GetResponseRange().Kvs {
				key := string(kv.Key)
				revs[key] = kv.ModRevision
				var d proto.HostDesired
				if err := json.Unmarshal(kv.Value, &d); err != nil {
					continue
				}
				for _, ref := range d.RuleSets {
					if ref.Name == name {
						host, _, _ := s.keys.ParseHostKey(key)
						users = append(users, host)
						break
					}
				}
			}
		}
	}
	sort.Strings(users)
	return revs, users, nil
}

// activeRollouts returns the rollouts of rule set name, read at revision
// rev, that have not finished (succeeded or aborted).
func (s *Store) activeRollouts(ctx context.Context, name string, rev int64) ([]string, error) {
	prefix := s.keys.Rollouts()
	specs := map[string]proto.RolloutSpec{}
	states := map[string]string{}
	err := s.rangeValuesAt(ctx, prefix, rev, func(key string, value []byte) {
		id, leaf, ok := strings.Cut(strings.TrimPrefix(key, prefix), "/")
		if !ok {
			return
		}
		switch leaf {
		case "spec":
			var spec proto.RolloutSpec
			if json.Unmarshal(value, &spec) == nil {
				specs[id] = spec
			}
		case "state":
			var st proto.RolloutState
			if json.Unmarshal(value, &st) == nil {
				states[id] = st.State
			}
		}
	})
	if err != nil {
		return nil, err
	}
	var out []string
	for id, spec := range specs {
		if spec.RuleSet != name {
			continue
		}
		switch states[id] {
		case proto.RolloutSucceeded, proto.RolloutAborted:
		default:
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out, nil
}

// rangeKeysAt is rangeKeys at a given revision.
func (s *Store) rangeKeysAt(ctx context.Context, prefix string, rev int64, fn func(key string)) error {
	return s.rangeAt(ctx, prefix, rev, true, func(key string, _ []byte) { fn(key) })
}

// rangeValuesAt calls fn with every key and value under prefix at
// revision rev, a page at a time.
func (s *Store) rangeValuesAt(ctx context.Context, prefix string, rev int64, fn func(key string, value []byte)) error {
	return s.rangeAt(ctx, prefix, rev, false, fn)
}

func (s *Store) rangeAt(ctx context.Context, prefix string, rev int64, keysOnly bool, fn func(key string, value []byte)) error {
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize), clientv3.WithRev(rev)}
		if keysOnly {
			opts = append(opts, clientv3.WithKeysOnly())
		}
		resp, err := s.cli.Get(ctx, from, opts...)
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		for _, kv := range resp.Kvs {
			fn(string(kv.Key), kv.Value)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// PutAudit writes an audit record on its own, for writes made by other
// packages' transactions (rollouts). It returns the record's key and
// revision.
func (s *Store) PutAudit(ctx context.Context, rec proto.AuditRecord) (string, int64, error) {
	key, op, err := s.auditOp(rec)
	if err != nil {
		return "", 0, err
	}
	txn, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(op).Commit()
	if err != nil {
		return "", 0, fmt.Errorf("write %s: %w", key, err)
	}
	if !txn.Succeeded {
		return "", 0, fmt.Errorf("write %s: the key exists already", key)
	}
	return key, txn.Header.Revision, nil
}

// AuditRecords returns the newest limit audit records, newest first,
// each with the revision it was written at.
func (s *Store) AuditRecords(ctx context.Context, limit int) ([]proto.AuditRecord, error) {
	if limit < 1 {
		return nil, fmt.Errorf("audit records: limit %d: want 1 or more", limit)
	}
	prefix := s.keys.Audit()
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", prefix, err)
	}
	out := make([]proto.AuditRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var rec proto.AuditRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		rec.Revision = kv.ModRevision
		out = append(out, rec)
	}
	return out, nil
}
