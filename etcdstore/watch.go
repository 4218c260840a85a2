package etcdstore

import (
	"context"
	"fmt"
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

// WatchHostInputs follows what an agent enforces from: the host's desired
// state key and every rule set's keys, from revision from, as one stream of
// batches. The watch fails, instead of going quiet, when the member it uses
// is cut off from the quorum. The channel closes after a batch with Err or
// when ctx ends; the caller cancels ctx to stop it.
func (s *Store) WatchHostInputs(ctx context.Context, host string, from int64) <-chan WatchBatch {
	wctx := clientv3.WithRequireLeader(ctx)
	sources := []clientv3.WatchChan{
		s.cli.Watch(wctx, s.keys.HostDesired(host), clientv3.WithRev(from)),
		s.cli.Watch(wctx, s.keys.RuleSets(), clientv3.WithPrefix(), clientv3.WithRev(from)),
	}
	return merge(ctx, sources, from)
}

// merge forwards the responses of several watches into one channel, which
// closes once every source has ended, failed or ctx ends. The first error
// ends the merged stream.
func merge(ctx context.Context, sources []clientv3.WatchChan, from int64) <-chan WatchBatch {
	out := make(chan WatchBatch)
	ctx, cancel := context.WithCancel(ctx)
	// send delivers one batch; after the first error nothing more is
	// sent, though several sources fail together (a compacted revision
	// fails them all). The lock is held across the send so that no batch
	// follows the error.
	var mu sync.Mutex
	failed := false
	send := func(b WatchBatch) bool {
		mu.Lock()
		defer mu.Unlock()
		if failed {
			return false
		}
		select {
		case out <- b:
		case <-ctx.Done():
			return false
		}
		if b.Err != nil {
			failed = true
			cancel() // one failed source ends the stream
			return false
		}
		return true
	}
	var wg sync.WaitGroup
	for _, src := range sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var resp clientv3.WatchResponse
				var ok bool
				select {
				case <-ctx.Done():
					return
				case resp, ok = <-src:
				}
				var b WatchBatch
				switch {
				case !ok:
					b.Err = fmt.Errorf("watch from revision %d: channel closed", from)
				case resp.Err() != nil:
					b.Err = fmt.Errorf("watch from revision %d: %w", from, resp.Err())
				default:
					b = toBatch(resp)
				}
				if !send(b) {
					return
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		cancel()
		close(out)
	}()
	return out
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
