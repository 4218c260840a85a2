package etcdstore

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrLeaseNotFound is wrapped by a write under a lease that has expired or
// been revoked: the writer must grant a new one.
var ErrLeaseNotFound = rpctypes.ErrLeaseNotFound

// Lease is an etcd lease: keys written under it are deleted when it
// expires (TTL seconds without a keep-alive) or is revoked.
type Lease struct {
	ID  int64
	TTL int64
}

// GrantLease grants a lease of ttl (whole seconds, at least one).
func (s *Store) GrantLease(ctx context.Context, ttl time.Duration) (Lease, error) {
	secs := max(int64(ttl/time.Second), 1)
	resp, err := s.cli.Grant(ctx, secs)
	if err != nil {
		return Lease{}, fmt.Errorf("grant a lease of %ds: %w", secs, err)
	}
	return Lease{ID: int64(resp.ID), TTL: resp.TTL}, nil
}

// KeepLeaseAlive keeps a lease alive until ctx ends. The channel receives a
// value at each renewal and closes when the lease is lost (expired,
// revoked, or etcd unreachable for its TTL) or ctx ends.
func (s *Store) KeepLeaseAlive(ctx context.Context, id int64) (<-chan struct{}, error) {
	ka, err := s.cli.KeepAlive(ctx, clientv3.LeaseID(id))
	if err != nil {
		return nil, fmt.Errorf("keep lease %x alive: %w", id, err)
	}
	out := make(chan struct{}, 1)
	go func() {
		defer close(out)
		for range ka { // closes when the lease is lost or ctx ends
			select {
			case out <- struct{}{}:
			default: // the reader has one pending already
			}
		}
	}()
	return out, nil
}

// RevokeLease revokes a lease: its keys are deleted at once.
func (s *Store) RevokeLease(ctx context.Context, id int64) error {
	if _, err := s.cli.Revoke(ctx, clientv3.LeaseID(id)); err != nil {
		return fmt.Errorf("revoke lease %x: %w", id, err)
	}
	return nil
}

// PutLeased writes value at key under a lease (errors.Is(err,
// ErrLeaseNotFound) when the lease is gone).
func (s *Store) PutLeased(ctx context.Context, key string, value []byte, lease int64) error {
	if _, err := s.cli.Put(ctx, key, string(value), clientv3.WithLease(clientv3.LeaseID(lease))); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}
