// Package etcdstore is xdpfw's one way to etcd: every other package reads
// and writes its documents (docs/architecture.md, "The etcd key layout") through a Store, and only
// this package imports etcd's client. It holds:
//
//   - the documents: immutable, numbered rule-set versions with a head and
//     their big sets as chunks (store.go, chunks.go), each host's desired
//     state, status and telemetry, the audit trail (audited.go), fleet
//     reads (fleet.go);
//   - chunk resolution with a cache of checked chunks (ChunkCache);
//   - what an agent needs: the watch of its inputs (watch.go) and leased
//     writes (lease.go);
//   - what the rollout controller needs: guarded writes, a leader's
//     writes and elections, listings at a revision (txn.go).
//
// Every write is one etcd transaction guarded by a compare on what the
// writer read, so two writers never both win and nothing is half-written:
// an agent watching the keys sees either the old state or the new one.
package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/xdpfw/xdpfw/proto"
)

// MaxDocumentBytes is the largest document a write accepts. etcd refuses
// requests over 1.5 MiB by default; 1 MiB leaves room for the rest of the
// transaction (docs/architecture.md, "The etcd key layout": every request stays under 1 MiB).
const MaxDocumentBytes = 1 << 20

// maxPutAttempts bounds the retries of a PutRuleSet with ifMatch -1 that
// keeps losing races. Someone wins every round, so this is only reached
// under a storm of writers to the same rule set.
const maxPutAttempts = 100

// txnBatch is how many reads go in one transaction (etcd allows 128
// operations per transaction by default).
const txnBatch = 100

// pageSize is how many keys one range request returns when listing.
const pageSize = 1000

var (
	// ErrConflict is wrapped by a *ConflictError: the rule set is not at
	// the version the writer expected.
	ErrConflict = errors.New("version conflict")
	// ErrNotFound is wrapped by errors about a missing key.
	ErrNotFound = errors.New("not found")
	// ErrTooLarge is wrapped by errors about a document over
	// MaxDocumentBytes even with its big sets as chunks
	// (docs/architecture.md, "Chunks").
	ErrTooLarge = errors.New("document too large")
)

// ConflictError says that a rule set write lost: its If-Match version is
// not the rule set's current version. It wraps ErrConflict.
type ConflictError struct {
	// Name is the rule set; Key its head key.
	Name, Key string
	// IfMatch is what the writer expected: 0 for a new rule set.
	IfMatch int64
	// Current is the rule set's version (0: it does not exist).
	Current int64
}

func (e *ConflictError) Error() string {
	switch {
	case e.IfMatch == 0:
		return fmt.Sprintf("version conflict: rule set %s already exists at version %d (if-match 0 writes a new rule set only)", e.Name, e.Current)
	case e.Current == 0:
		return fmt.Sprintf("version conflict: rule set %s does not exist (if-match wants version %d)", e.Name, e.IfMatch)
	}
	return fmt.Sprintf("version conflict: rule set %s is at version %d, not %d (if-match): read it again and reapply the change", e.Name, e.Current, e.IfMatch)
}

// Unwrap makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Unwrap() error { return ErrConflict }

// Store reads and writes documents under one key prefix.
type Store struct {
	cli  *clientv3.Client
	keys proto.Keys
	// owned: the store made cli (Open) and closes it (Close).
	owned bool

	// beforeDesiredTxn runs between SetDesired's reads and its
	// transaction; tests use it to race a delete against the write.
	beforeDesiredTxn func()
	// afterChunksStored runs once a version's chunks are stored, before
	// its transaction; tests use it to collect chunks under the write.
	afterChunksStored func()
}

// New returns a store over a client; keys says where the documents are.
func New(cli *clientv3.Client, keys proto.Keys) *Store {
	if keys.Prefix == "" {
		keys = proto.NewKeys("")
	}
	return &Store{cli: cli, keys: keys}
}

// Keys returns the key builder of the store.
func (s *Store) Keys() proto.Keys { return s.keys }

// PutRuleSet stores rs as the rule set's next version and moves its head
// to it, in one transaction. ifMatch is the version the writer based its
// change on: -1 accepts any (the write is retried if another writer gets
// in first), 0 means the rule set must not exist yet, N means its head
// must be version N. A stale write returns a *ConflictError and writes
// nothing. It returns the new version and the etcd revision of the write.
func (s *Store) PutRuleSet(ctx context.Context, rs proto.RuleSet, ifMatch int64) (version, revision int64, err error) {
	if ifMatch < -1 {
		return 0, 0, fmt.Errorf("rule set %s: if-match %d: want -1 (any version), 0 (a new rule set) or a version", rs.Name, ifMatch)
	}
	ev, err := s.encodeVersion(ctx, rs)
	if err != nil {
		return 0, 0, err
	}

	headKey := s.keys.RuleSetHead(rs.Name)
	for range maxPutAttempts {
		resp, err := s.cli.Get(ctx, headKey)
		if err != nil {
			return 0, 0, fmt.Errorf("rule set %s: read %s: %w", rs.Name, headKey, err)
		}
		cur, modRev, err := decodeHead(headKey, resp.Kvs)
		if err != nil {
			return 0, 0, err
		}
		if ifMatch >= 0 && ifMatch != cur {
			return 0, 0, &ConflictError{Name: rs.Name, Key: headKey, IfMatch: ifMatch, Current: cur}
		}

		next := cur + 1
		versionKey := s.keys.RuleSetVersion(rs.Name, next)
		head, err := json.Marshal(proto.RuleSetHead{Version: next})
		if err != nil {
			return 0, 0, fmt.Errorf("rule set %s: encode head: %w", rs.Name, err)
		}
		// ModRevision 0 is how etcd compares a key that does not exist.
		txn, err := s.cli.Txn(ctx).If(append([]clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(headKey), "=", modRev),
			clientv3.Compare(clientv3.CreateRevision(versionKey), "=", 0),
		}, s.epochGuard(ev)...)...).Then(
			clientv3.OpPut(versionKey, string(ev.doc)),
			clientv3.OpPut(headKey, string(head)),
		).Else(
			clientv3.OpGet(headKey),
		).Commit()
		if err != nil {
			return 0, 0, fmt.Errorf("rule set %s: write %s: %w", rs.Name, versionKey, err)
		}
		if txn.Succeeded {
			return next, txn.Header.Revision, nil
		}

		kvs := txn.Responses[0].GetResponseRange().Kvs
		now, nowRev, err := decodeHead(headKey, kvs)
		if err != nil {
			return 0, 0, err
		}
		if nowRev == modRev {
			if moved, err := s.epochMoved(ctx, ev); err != nil {
				return 0, 0, err
			} else if moved {
				continue // chunks were collected meanwhile: stored again, try again
			}
			// The head did not move, so the version key was there before
			// it: something other than this package wrote it.
			return 0, 0, fmt.Errorf("rule set %s: %s already exists but the head %s says version %d: refusing to overwrite an immutable version",
				rs.Name, versionKey, headKey, cur)
		}
		if ifMatch >= 0 {
			return 0, 0, &ConflictError{Name: rs.Name, Key: headKey, IfMatch: ifMatch, Current: now}
		}
		// Another writer won the race and ifMatch accepts any version:
		// try again on top of its version.
	}
	return 0, 0, fmt.Errorf("rule set %s: %w: lost the race to other writers %d times", rs.Name, ErrConflict, maxPutAttempts)
}

// decodeHead reads a head key's value: version 0 and revision 0 when the
// key does not exist.
func decodeHead(key string, kvs []*mvccpb.KeyValue) (version, modRevision int64, err error) {
	if len(kvs) == 0 {
		return 0, 0, nil
	}
	var h proto.RuleSetHead
	if err := json.Unmarshal(kvs[0].Value, &h); err != nil {
		return 0, 0, fmt.Errorf("decode %s: %w", key, err)
	}
	if h.Version < 1 {
		return 0, 0, fmt.Errorf("decode %s: version %d, want 1 or more", key, h.Version)
	}
	return h.Version, kvs[0].ModRevision, nil
}

// checkRuleSetName refuses names that would make keys of another shape
// (a "/" in a name). It relies on the key parser, which accepts only
// valid rule-set names.
func (s *Store) checkRuleSetName(name string) error {
	if _, _, ok := s.keys.ParseRuleSetVersion(s.keys.RuleSetVersion(name, 1)); !ok {
		return fmt.Errorf("rule set name %q: want a lowercase RFC 1123 label", name)
	}
	return nil
}

// Head returns the current version of a rule set.
func (s *Store) Head(ctx context.Context, name string) (int64, error) {
	if err := s.checkRuleSetName(name); err != nil {
		return 0, err
	}
	key := s.keys.RuleSetHead(name)
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("rule set %s: read %s: %w", name, key, err)
	}
	v, _, err := decodeHead(key, resp.Kvs)
	if err != nil {
		return 0, err
	}
	if v == 0 {
		return 0, fmt.Errorf("rule set %s: %w (no %s)", name, ErrNotFound, key)
	}
	return v, nil
}

// GetRuleSet returns a version of a rule set (0: the head) and its number.
func (s *Store) GetRuleSet(ctx context.Context, name string, version int64) (proto.RuleSet, int64, error) {
	if err := s.checkRuleSetName(name); err != nil {
		return proto.RuleSet{}, 0, err
	}
	if version < 0 {
		return proto.RuleSet{}, 0, fmt.Errorf("rule set %s: version %d: want 0 (the head) or more", name, version)
	}
	if version == 0 {
		v, err := s.Head(ctx, name)
		if err != nil {
			return proto.RuleSet{}, 0, err
		}
		version = v
	}
	key := s.keys.RuleSetVersion(name, version)
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return proto.RuleSet{}, 0, fmt.Errorf("rule set %s: read %s: %w", name, key, err)
	}
	if len(resp.Kvs) == 0 {
		return proto.RuleSet{}, 0, fmt.Errorf("rule set %s version %d: %w (no %s)", name, version, ErrNotFound, key)
	}
	rs, err := s.decodeVersion(ctx, key, resp.Kvs[0].Value)
	if err != nil {
		return proto.RuleSet{}, 0, err
	}
	if rs.Name != name {
		return proto.RuleSet{}, 0, fmt.Errorf("decode %s: the document is rule set %q", key, rs.Name)
	}
	return rs, version, nil
}

// Versions returns the versions of a rule set, oldest first.
func (s *Store) Versions(ctx context.Context, name string) ([]int64, error) {
	if err := s.checkRuleSetName(name); err != nil {
		return nil, err
	}
	prefix := s.keys.RuleSetVersions(name)
	var out []int64
	err := s.rangeKeys(ctx, prefix, func(key string) {
		if n, v, ok := s.keys.ParseRuleSetVersion(key); ok && n == name {
			out = append(out, v)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("rule set %s: %w", name, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("rule set %s: %w (nothing under %s)", name, ErrNotFound, prefix)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// SetDesired makes refs the rule sets host must enforce (none: enforce
// nothing). A ref of version 0 means the rule set's current head. The
// write checks, in the same transaction, that every referenced version
// exists, so that no host is ever told to enforce a version that is not
// there. It returns the etcd revision of the write.
func (s *Store) SetDesired(ctx context.Context, host string, refs []proto.RuleSetRef) (int64, error) {
	if err := proto.ValidateHostName(host); err != nil {
		return 0, err
	}
	// Check names, duplicates and the count before reading anything; the
	// head versions are not known yet, so stand in 1 for them.
	stand := make([]proto.RuleSetRef, len(refs))
	for i, r := range refs {
		stand[i] = r
		if r.Version == 0 {
			stand[i].Version = 1
		}
	}
	check := proto.NewHostDesired(stand...)
	if err := check.Validate(); err != nil {
		return 0, fmt.Errorf("desired state of host %s: %w", host, err)
	}

	resolved := make([]proto.RuleSetRef, len(refs))
	for i, r := range refs {
		resolved[i] = r
		if r.Version == 0 {
			v, err := s.Head(ctx, r.Name)
			if err != nil {
				return 0, fmt.Errorf("desired state of host %s: %w", host, err)
			}
			resolved[i].Version = v
		}
	}
	doc, err := json.Marshal(proto.NewHostDesired(resolved...))
	if err != nil {
		return 0, fmt.Errorf("desired state of host %s: encode: %w", host, err)
	}

	cmps := make([]clientv3.Cmp, len(resolved))
	missing := make([]clientv3.Op, len(resolved))
	for i, r := range resolved {
		key := s.keys.RuleSetVersion(r.Name, r.Version)
		cmps[i] = clientv3.Compare(clientv3.CreateRevision(key), ">", 0)
		missing[i] = clientv3.OpGet(key, clientv3.WithCountOnly())
	}
	key := s.keys.HostDesired(host)
	if s.beforeDesiredTxn != nil {
		s.beforeDesiredTxn()
	}
	txn, err := s.cli.Txn(ctx).If(cmps...).Then(clientv3.OpPut(key, string(doc))).Else(missing...).Commit()
	if err != nil {
		return 0, fmt.Errorf("write %s: %w", key, err)
	}
	if !txn.Succeeded {
		var names []string
		for i, r := range txn.Responses {
			if r.GetResponseRange().Count == 0 {
				names = append(names, fmt.Sprintf("rule set %s (no %s)", resolved[i], s.keys.RuleSetVersion(resolved[i].Name, resolved[i].Version)))
			}
		}
		return 0, fmt.Errorf("desired state of host %s: %s: %w", host, strings.Join(names, ", "), ErrNotFound)
	}
	return txn.Header.Revision, nil
}

// PutRawDesired writes a host's desired-state document as it is, with no
// validation of the document (the host name is checked: it makes the
// key). It is for tests and operators who need an agent to meet a bad
// document.
func (s *Store) PutRawDesired(ctx context.Context, host string, raw []byte) (int64, error) {
	if err := proto.ValidateHostName(host); err != nil {
		return 0, err
	}
	key := s.keys.HostDesired(host)
	resp, err := s.cli.Put(ctx, key, string(raw))
	if err != nil {
		return 0, fmt.Errorf("write %s: %w", key, err)
	}
	return resp.Header.Revision, nil
}

// GetDesired returns a host's desired state and the revision it was last
// written at. A document that does not decode or validate is an error.
func (s *Store) GetDesired(ctx context.Context, host string) (proto.HostDesired, int64, error) {
	key, value, rev, err := s.hostDoc(ctx, host, "desired")
	if err != nil {
		return proto.HostDesired{}, 0, err
	}
	d, err := proto.DecodeHostDesired(value)
	if err != nil {
		return proto.HostDesired{}, 0, fmt.Errorf("decode %s: %w", key, err)
	}
	return d, rev, nil
}

// GetStatus returns what a host's agent last reported. There is none when
// the agent never ran or its lease expired (ErrNotFound).
func (s *Store) GetStatus(ctx context.Context, host string) (proto.HostStatus, error) {
	key, value, _, err := s.hostDoc(ctx, host, "status")
	if err != nil {
		return proto.HostStatus{}, err
	}
	return decodeStatus(key, value)
}

// GetTelemetry returns a host's last telemetry document.
func (s *Store) GetTelemetry(ctx context.Context, host string) (proto.HostTelemetry, error) {
	key, value, _, err := s.hostDoc(ctx, host, "telemetry")
	if err != nil {
		return proto.HostTelemetry{}, err
	}
	// Decoding is lenient (unknown fields are ignored): newer agents may
	// report more than this reader knows.
	var t proto.HostTelemetry
	if err := json.Unmarshal(value, &t); err != nil {
		return proto.HostTelemetry{}, fmt.Errorf("decode %s: %w", key, err)
	}
	if t.Kind != proto.KindHostTelemetry {
		return proto.HostTelemetry{}, fmt.Errorf("decode %s: kind %q, want %q", key, t.Kind, proto.KindHostTelemetry)
	}
	return t, nil
}

// GetStatuses returns the status of each host that has one, reading many
// per round trip.
func (s *Store) GetStatuses(ctx context.Context, hosts []string) (map[string]proto.HostStatus, error) {
	out := make(map[string]proto.HostStatus, len(hosts))
	for start := 0; start < len(hosts); start += txnBatch {
		batch := hosts[start:min(start+txnBatch, len(hosts))]
		ops := make([]clientv3.Op, len(batch))
		for i, h := range batch {
			if err := proto.ValidateHostName(h); err != nil {
				return nil, err
			}
			ops[i] = clientv3.OpGet(s.keys.HostStatus(h))
		}
		txn, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read %s...: %w", s.keys.HostStatus(batch[0]), err)
		}
		for i, r := range txn.Responses {
			kvs := r.GetResponseRange().Kvs
			if len(kvs) == 0 {
				continue
			}
			st, err := decodeStatus(string(kvs[0].Key), kvs[0].Value)
			if err != nil {
				return nil, err
			}
			out[batch[i]] = st
		}
	}
	return out, nil
}

// decodeTelemetry decodes a host's telemetry document; like a status it is
// decoded leniently (a newer agent may report more), but its kind must be
// right.
func decodeTelemetry(key string, value []byte) (proto.HostTelemetry, error) {
	var t proto.HostTelemetry
	if err := json.Unmarshal(value, &t); err != nil {
		return proto.HostTelemetry{}, fmt.Errorf("decode %s: %w", key, err)
	}
	if t.Kind != proto.KindHostTelemetry {
		return proto.HostTelemetry{}, fmt.Errorf("decode %s: kind %q, want %q", key, t.Kind, proto.KindHostTelemetry)
	}
	return t, nil
}

func decodeStatus(key string, value []byte) (proto.HostStatus, error) {
	var st proto.HostStatus
	if err := json.Unmarshal(value, &st); err != nil {
		return proto.HostStatus{}, fmt.Errorf("decode %s: %w", key, err)
	}
	if st.Kind != proto.KindHostStatus {
		return proto.HostStatus{}, fmt.Errorf("decode %s: kind %q, want %q", key, st.Kind, proto.KindHostStatus)
	}
	return st, nil
}

// hostDoc reads one of a host's keys.
func (s *Store) hostDoc(ctx context.Context, host, leaf string) (key string, value []byte, modRevision int64, err error) {
	if err := proto.ValidateHostName(host); err != nil {
		return "", nil, 0, err
	}
	key = s.keys.Host(host) + leaf
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return key, nil, 0, fmt.Errorf("read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return key, nil, 0, fmt.Errorf("host %s has no %s: %w (no %s)", host, leaf, ErrNotFound, key)
	}
	return key, resp.Kvs[0].Value, resp.Kvs[0].ModRevision, nil
}

// ListHosts returns every host with a desired state, a status or
// telemetry, sorted.
func (s *Store) ListHosts(ctx context.Context) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	err := s.rangeKeys(ctx, s.keys.Hosts(), func(key string) {
		host, leaf, ok := s.keys.ParseHostKey(key)
		if !ok || seen[host] {
			return
		}
		switch leaf {
		case "desired", "status", "telemetry", "enrollment":
			seen[host] = true
			out = append(out, host)
		}
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(out)
	return out, nil
}

// rangeKeys calls fn with every key under prefix, in pages read at one
// revision so that a listing of many hosts is neither one huge response
// nor a mix of two moments.
func (s *Store) rangeKeys(ctx context.Context, prefix string, fn func(key string)) error {
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(pageSize)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, from, opts...)
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		rev = resp.Header.Revision
		for _, kv := range resp.Kvs {
			fn(string(kv.Key))
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
