package etcdstore

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrCompacted is wrapped by a watch error whose start revision etcd has
// compacted away: the watcher must read everything again.
var ErrCompacted = rpctypes.ErrCompacted

// KeyValue is a key's value as etcd holds it.
type KeyValue struct {
	Key   string
	Value []byte
	// ModRevision is the revision of the key's last write.
	ModRevision int64
}

// Event is one change of a watched key: a put of Value, or a delete.
type Event struct {
	KeyValue
	Deleted bool
}

// WatchBatch is one watch response: the events of one or more revisions in
// revision order, and the store's revision when they were sent. Err ends a
// watch: the channel closes after it.
type WatchBatch struct {
	Revision int64
	Events   []Event
	Err      error
}

// GetAt reads key at revision rev (0: the newest). It returns the value (nil
// if the key does not exist there) and the revision the read saw.
func (s *Store) GetAt(ctx context.Context, key string, rev int64) (*KeyValue, int64, error) {
	var opts []clientv3.OpOption
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	resp, err := s.cli.Get(ctx, key, opts...)
	if err != nil {
		if rev > 0 {
			return nil, 0, fmt.Errorf("get %s at revision %d: %w", key, rev, err)
		}
		return nil, 0, fmt.Errorf("get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, resp.Header.Revision, nil
	}
	kv := resp.Kvs[0]
	return &KeyValue{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision}, resp.Header.Revision, nil
}

// InputWatch follows what an agent enforces from: its desired-state key,
// and the versions of the rule sets it follows (Follow), as one stream of
// batches. Only the rule sets a host follows reach it: a version write of
// any other costs it nothing. The watch fails, instead of going quiet,
// when the member it uses is cut off from the quorum. The channel closes
// after a batch with Err or when ctx ends; the caller cancels ctx to stop
// it.
type InputWatch struct {
	s    *Store
	ctx  context.Context
	m    *mergedWatch
	mu   sync.Mutex
	rule map[string]context.CancelFunc
}

// WatchHostInputs starts an InputWatch of host's desired state from
// revision from, following no rule set yet.
func (s *Store) WatchHostInputs(ctx context.Context, host string, from int64) *InputWatch {
	m := newMergedWatch(ctx)
	w := &InputWatch{s: s, ctx: m.ctx, m: m, rule: map[string]context.CancelFunc{}}
	m.add(m.ctx, s.cli.Watch(clientv3.WithRequireLeader(m.ctx), s.keys.HostDesired(host), clientv3.WithRev(from)), from)
	return w
}

// Batches is the stream.
func (w *InputWatch) Batches() <-chan WatchBatch { return w.m.out }

// Follow adds the versions of rule set name, from revision from (the
// revision after the one its referenced version was read at, so that no
// write is missed). Following a rule set already followed does nothing.
func (w *InputWatch) Follow(name string, from int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.rule[name]; ok {
		return
	}
	ctx, cancel := context.WithCancel(w.ctx)
	w.rule[name] = cancel
	w.m.add(ctx, w.s.cli.Watch(clientv3.WithRequireLeader(ctx), w.s.keys.RuleSetVersions(name), clientv3.WithPrefix(), clientv3.WithRev(from)), from)
}

// Unfollow stops following rule set name.
func (w *InputWatch) Unfollow(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if cancel, ok := w.rule[name]; ok {
		cancel()
		delete(w.rule, name)
	}
}

// Following lists the rule sets followed.
func (w *InputWatch) Following() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, 0, len(w.rule))
	for n := range w.rule {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// mergedWatch forwards the responses of several watches into one channel,
// which closes when ctx ends or after the first error. A source whose own
// context was canceled (Unfollow) just stops.
type mergedWatch struct {
	ctx    context.Context
	cancel context.CancelFunc
	out    chan WatchBatch
	// mu is held across a send so that no batch follows the error.
	mu     sync.Mutex
	failed bool
	// addMu orders adds against the closer: no source is added once the
	// stream is closing (a send on the closed channel would panic).
	addMu   sync.Mutex
	closing bool
	wg      sync.WaitGroup
}

func newMergedWatch(ctx context.Context) *mergedWatch {
	ctx, cancel := context.WithCancel(ctx)
	m := &mergedWatch{ctx: ctx, cancel: cancel, out: make(chan WatchBatch)}
	// The closer: once ctx ends, every source goroutine returns; then the
	// channel closes. It holds one wg slot until then, so that sources
	// added later are waited for too.
	m.wg.Add(1)
	go func() {
		<-ctx.Done()
		m.addMu.Lock()
		m.closing = true
		m.addMu.Unlock()
		m.wg.Done()
	}()
	go func() {
		m.wg.Wait()
		close(m.out)
	}()
	return m
}

// send delivers one batch; false once the stream has failed or ended.
func (m *mergedWatch) send(b WatchBatch) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failed {
		return false
	}
	select {
	case m.out <- b:
	case <-m.ctx.Done():
		return false
	}
	if b.Err != nil {
		m.failed = true
		m.cancel() // one failed source ends the stream
		return false
	}
	return true
}

// add forwards a watch's responses. A source ends without an error when
// etcd's client closes it because its own context was canceled.
func (m *mergedWatch) add(srcCtx context.Context, src clientv3.WatchChan, from int64) {
	m.addMu.Lock()
	defer m.addMu.Unlock()
	if m.closing {
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for {
			var resp clientv3.WatchResponse
			var ok bool
			select {
			case <-m.ctx.Done():
				return
			case resp, ok = <-src:
			}
			var b WatchBatch
			switch {
			case (!ok || resp.Canceled) && srcCtx.Err() != nil:
				return // the stream ended, or this source was Unfollowed
			case !ok:
				b.Err = fmt.Errorf("watch from revision %d: channel closed", from)
			case resp.Err() != nil:
				b.Err = fmt.Errorf("watch from revision %d: %w", from, resp.Err())
			default:
				b = toBatch(resp)
			}
			if !m.send(b) {
				return
			}
		}
	}()
}

// merge is a mergedWatch of fixed sources.
func merge(ctx context.Context, sources []clientv3.WatchChan, from int64) <-chan WatchBatch {
	m := newMergedWatch(ctx)
	for _, src := range sources {
		m.add(m.ctx, src, from)
	}
	return m.out
}

func toBatch(resp clientv3.WatchResponse) WatchBatch {
	b := WatchBatch{Revision: resp.Header.Revision, Events: make([]Event, len(resp.Events))}
	for i, ev := range resp.Events {
		b.Events[i] = Event{
			KeyValue: KeyValue{Key: string(ev.Kv.Key), Value: ev.Kv.Value, ModRevision: ev.Kv.ModRevision},
			Deleted:  ev.Type == mvccpb.DELETE,
		}
	}
	return b
}
