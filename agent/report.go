package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// errLeaseLost ends a reporting round: the lease expired (etcd did not
// hear from this host for a TTL) and must be granted again.
var errLeaseLost = errors.New("lease lost")

// reportLoop registers the host: it grants a lease, keeps it alive, and
// writes the status and telemetry documents under it, so a dead host's
// documents expire with its lease. When the lease is lost it grants a new
// one and writes both documents again. It never touches the data plane:
// losing etcd changes nothing for packets. On ctx's end it revokes the
// lease, which removes the documents at once.
func (a *Agent) reportLoop(ctx context.Context) {
	bo := newBackoff(200*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		gctx, cancel := context.WithTimeout(ctx, opTimeout)
		lease, err := a.cli.Grant(gctx, int64(time.Duration(a.cfg.LeaseTTL).Seconds()))
		cancel()
		if err != nil {
			a.metrics.etcdConnected.Set(0)
			if ctx.Err() == nil {
				a.log.Warn("grant lease", zap.Error(err))
			}
			sleep(ctx, bo.next())
			continue
		}
		bo.reset()
		a.metrics.leaseGrants.Inc()
		a.metrics.etcdConnected.Set(1)
		a.log.Info("registered", zap.String("host", a.cfg.Host), zap.Int64("lease", int64(lease.ID)), zap.Int64("ttl", lease.TTL))
		err = a.report(ctx, lease.ID)
		if ctx.Err() != nil {
			a.revoke(lease.ID)
			return
		}
		a.metrics.etcdConnected.Set(0)
		a.log.Warn("lease lost: registering again", zap.Int64("lease", int64(lease.ID)), zap.Error(err))
	}
}

func (a *Agent) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := a.cli.Revoke(ctx, id); err != nil {
		a.log.Warn("revoke lease", zap.Int64("lease", int64(id)), zap.Error(err))
		return
	}
	a.log.Info("lease revoked", zap.Int64("lease", int64(id)))
}

// report writes the latest status and telemetry under lease id whenever
// they change, until the lease is lost or ctx ends.
func (a *Agent) report(ctx context.Context, id clientv3.LeaseID) error {
	kctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ka, err := a.cli.KeepAlive(kctx, id)
	if err != nil {
		return fmt.Errorf("keep lease alive: %w", err)
	}
	var wroteStatus, wroteTelemetry uint64
	retry := time.NewTicker(time.Second)
	defer retry.Stop()
	for {
		if st, seq := a.status.get(); seq != wroteStatus {
			if err := a.put(ctx, a.keys.HostStatus(a.cfg.Host), st, id); err != nil {
				if errors.Is(err, rpctypes.ErrLeaseNotFound) {
					return fmt.Errorf("write status: %w", errLeaseLost)
				}
				a.log.Warn("write status", zap.Error(err))
			} else {
				wroteStatus = seq
			}
		}
		if tm, seq := a.telemetry.get(); seq != wroteTelemetry && seq != 0 {
			if err := a.put(ctx, a.keys.HostTelemetry(a.cfg.Host), tm, id); err != nil {
				if errors.Is(err, rpctypes.ErrLeaseNotFound) {
					return fmt.Errorf("write telemetry: %w", errLeaseLost)
				}
				a.log.Warn("write telemetry", zap.Error(err))
			} else {
				wroteTelemetry = seq
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case _, ok := <-ka:
			if !ok {
				return errLeaseLost
			}
			a.metrics.etcdConnected.Set(1)
		case <-a.status.changed:
		case <-a.telemetry.changed:
		case <-retry.C:
		}
	}
}

func (a *Agent) put(ctx context.Context, key string, v any, id clientv3.LeaseID) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	pctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if _, err := a.cli.Put(pctx, key, string(data), clientv3.WithLease(id)); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}
