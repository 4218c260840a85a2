package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/xdpfw/xdpfw/proto"
)

// A Guard is a condition of a guarded write (Store.CommitIf): what the
// writer read must still hold when the write commits.
type Guard struct{ cmp clientv3.Cmp }

// Unchanged guards on key's mod revision being modRev, as the writer read
// it (0: the key did not exist).
func Unchanged(key string, modRev int64) Guard {
	return Guard{clientv3.Compare(clientv3.ModRevision(key), "=", modRev)}
}

// NoneCreatedAfter guards on no key under prefix having been created after
// revision rev.
func NoneCreatedAfter(prefix string, rev int64) Guard {
	return Guard{clientv3.Compare(clientv3.CreateRevision(prefix), "<", rev+1).WithPrefix()}
}

// Exists guards on key existing.
func Exists(key string) Guard {
	return Guard{clientv3.Compare(clientv3.CreateRevision(key), ">", 0)}
}

// A Write is one change of a guarded write.
type Write struct{ op clientv3.Op }

// Put writes value at key.
func Put(key string, value []byte) Write { return Write{clientv3.OpPut(key, string(value))} }

// PutJSON writes v, encoded as JSON, at key.
func PutJSON(key string, v any) (Write, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return Write{}, fmt.Errorf("encode %s: %w", key, err)
	}
	return Put(key, b), nil
}

// DeletePrefix deletes every key under prefix.
func DeletePrefix(prefix string) Write {
	return Write{clientv3.OpDelete(prefix, clientv3.WithPrefix())}
}

// AuditWrite is the write of an audit record under a new key: put in the
// same guarded write as what it records, the record exists if and only if
// the change does.
func (s *Store) AuditWrite(rec proto.AuditRecord) (Write, error) {
	_, op, err := s.auditOp(rec)
	return Write{op}, err
}

func ops(writes []Write) []clientv3.Op {
	out := make([]clientv3.Op, len(writes))
	for i, w := range writes {
		out[i] = w.op
	}
	return out
}

func cmps(guards []Guard) []clientv3.Cmp {
	out := make([]clientv3.Cmp, len(guards))
	for i, g := range guards {
		out[i] = g.cmp
	}
	return out
}

// CommitIf makes writes in one transaction if every guard holds. It
// returns whether they held and the revision of the write (or of the
// failed compare).
func (s *Store) CommitIf(ctx context.Context, guards []Guard, writes []Write) (ok bool, rev int64, err error) {
	resp, err := s.cli.Txn(ctx).If(cmps(guards)...).Then(ops(writes)...).Commit()
	if err != nil {
		return false, 0, err
	}
	return resp.Succeeded, resp.Header.Revision, nil
}

// GetPrefix reads every key under prefix at revision rev (0: the newest)
// and returns them in key order with the revision read.
func (s *Store) GetPrefix(ctx context.Context, prefix string, rev int64) ([]KeyValue, int64, error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	resp, err := s.cli.Get(ctx, prefix, opts...)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", prefix, err)
	}
	out := make([]KeyValue, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		out[i] = KeyValue{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision}
	}
	return out, resp.Header.Revision, nil
}

// KeyRevision is a key and the revision of its last write.
type KeyRevision struct {
	Key         string
	ModRevision int64
}

// ListKeys lists the keys under prefix that keep accepts (nil: all), with
// their mod revisions, at revision rev (0: now), pageSize keys a request.
// It returns the revision read.
func (s *Store) ListKeys(ctx context.Context, prefix string, rev int64, keep func(key string) bool) ([]KeyRevision, int64, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	var out []KeyRevision
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(pageSize)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, from, opts...)
		if err != nil {
			return nil, 0, fmt.Errorf("list %s at revision %d: %w", prefix, rev, err)
		}
		rev = resp.Header.Revision
		for _, kv := range resp.Kvs {
			if k := string(kv.Key); keep == nil || keep(k) {
				out = append(out, KeyRevision{Key: k, ModRevision: kv.ModRevision})
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// GetManyAt reads keys at revision rev, txnBatch to a transaction, calling
// fn with each that exists, in the order given.
func (s *Store) GetManyAt(ctx context.Context, rev int64, keys []string, fn func(KeyValue)) error {
	for lo := 0; lo < len(keys); lo += txnBatch {
		batch := keys[lo:min(lo+txnBatch, len(keys))]
		gets := make([]clientv3.Op, len(batch))
		for i, k := range batch {
			gets[i] = clientv3.OpGet(k, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Txn(ctx).Then(gets...).Commit()
		if err != nil {
			return fmt.Errorf("read %s (and %d more) at revision %d: %w", batch[0], len(batch)-1, rev, err)
		}
		for _, r := range resp.Responses {
			for _, kv := range r.GetResponseRange().Kvs {
				fn(KeyValue{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision})
			}
		}
	}
	return nil
}

// ExistsAt says whether key exists at revision rev.
func (s *Store) ExistsAt(ctx context.Context, key string, rev int64) (bool, error) {
	resp, err := s.cli.Get(ctx, key, clientv3.WithRev(rev), clientv3.WithCountOnly())
	if err != nil {
		return false, fmt.Errorf("read %s at revision %d: %w", key, rev, err)
	}
	return resp.Count > 0, nil
}

// WatchPrefixes follows every key under each prefix from now on, as one
// stream of batches (see WatchHostInputs).
func (s *Store) WatchPrefixes(ctx context.Context, prefixes ...string) <-chan WatchBatch {
	wctx := clientv3.WithRequireLeader(ctx)
	sources := make([]clientv3.WatchChan, len(prefixes))
	for i, p := range prefixes {
		sources[i] = s.cli.Watch(wctx, p, clientv3.WithPrefix())
	}
	return merge(ctx, sources, 0)
}

var (
	// ErrNotLeader ends a leadership term: a write found that the
	// election key is no longer the term's.
	ErrNotLeader = errors.New("not the leader any more")
	// ErrStale: a leader's write was refused because a key it guards on
	// changed since it was read.
	ErrStale = errors.New("read is stale")
)

// Term is a won election: the election key and the revision that created
// it guard every write of the term (CommitAsLeader), so a deposed leader
// writes nothing.
type Term struct {
	s    *Store
	sess *concurrency.Session
	el   *concurrency.Election
	// Key is the election key; Rev the revision that created it.
	Key string
	Rev int64
}

// Campaign waits until value is elected leader on election (ctx's end
// gives up), in a session of ttl seconds whose keep-alives outlive ctx
// until Close: a term can step down (Resign) after its context ends.
// Term.Context ends when the session is lost.
func (s *Store) Campaign(ctx context.Context, election, value string, ttl int) (*Term, error) {
	lease, err := s.cli.Grant(ctx, int64(ttl))
	if err != nil {
		return nil, fmt.Errorf("grant the session lease for %s: %w", election, err)
	}
	sess, err := concurrency.NewSession(s.cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(ttl),
		concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_, _ = s.cli.Revoke(rctx, lease.ID)
		cancel()
		return nil, fmt.Errorf("session for %s: %w", election, err)
	}
	// The campaign ends when ctx does or when the session is lost.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(sess.Ctx(), cancel)
	defer stop()
	el := concurrency.NewElection(sess, election)
	if err := el.Campaign(cctx, value); err != nil {
		_ = sess.Close()
		if sess.Ctx().Err() != nil {
			return nil, fmt.Errorf("campaign on %s: session lost: %w", election, err)
		}
		return nil, fmt.Errorf("campaign on %s: %w", election, err)
	}
	return &Term{s: s, sess: sess, el: el, Key: el.Key(), Rev: el.Rev()}, nil
}

// Context ends when the term's session is lost (its lease expired or was
// revoked) or closed.
func (t *Term) Context() context.Context { return t.sess.Ctx() }

// Resign gives the leadership up at once, so another candidate takes over
// without waiting for the session's TTL.
func (t *Term) Resign(ctx context.Context) error { return t.el.Resign(ctx) }

// Close ends the session: its lease is revoked.
func (t *Term) Close() error { return t.sess.Close() }

// CommitAsLeader makes writes in one transaction if the term still leads
// and every guard holds. It returns the write's revision, ErrNotLeader
// when the election key is gone, ErrStale when only a guard failed.
func (s *Store) CommitAsLeader(ctx context.Context, t *Term, guards []Guard, writes []Write) (int64, error) {
	lead := clientv3.Compare(clientv3.CreateRevision(t.Key), "=", t.Rev)
	resp, err := s.cli.Txn(ctx).If(append([]clientv3.Cmp{lead}, cmps(guards)...)...).Then(ops(writes)...).Else(clientv3.OpGet(t.Key)).Commit()
	if err != nil {
		return 0, err
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 || kvs[0].CreateRevision != t.Rev {
		return 0, fmt.Errorf("%w: election key %s (created at revision %d) is gone", ErrNotLeader, t.Key, t.Rev)
	}
	return 0, ErrStale
}
