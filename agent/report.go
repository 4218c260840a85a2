package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/etcdstore"
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
		lease, err := a.etcd.GrantLease(gctx, time.Duration(a.cfg.LeaseTTL))
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
		a.log.Info("registered", zap.String("host", a.cfg.Host), zap.Int64("lease", lease.ID), zap.Int64("ttl", lease.TTL))
		err = a.report(ctx, lease.ID)
		if ctx.Err() != nil {
			a.revoke(lease.ID)
			return
		}
		a.metrics.etcdConnected.Set(0)
		a.log.Warn("lease lost: registering again", zap.Int64("lease", lease.ID), zap.Error(err))
	}
}

func (a *Agent) revoke(id int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.etcd.RevokeLease(ctx, id); err != nil {
		a.log.Warn("revoke lease", zap.Int64("lease", id), zap.Error(err))
		return
	}
	a.log.Info("lease revoked", zap.Int64("lease", id))
}

// report writes the latest status and telemetry under lease id whenever
// they change, until the lease is lost or ctx ends.
func (a *Agent) report(ctx context.Context, id int64) error {
	kctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ka, err := a.etcd.KeepLeaseAlive(kctx, id)
	if err != nil {
		return err
	}
	var wroteStatus, wroteTelemetry uint64
	retry := time.NewTicker(time.Second)
	defer retry.Stop()
	for {
		if st, seq := a.status.get(); seq != wroteStatus {
			if err := a.put(ctx, a.keys.HostStatus(a.cfg.Host), st, id); err != nil {
				if errors.Is(err, etcdstore.ErrLeaseNotFound) {
					return fmt.Errorf("write status: %w", errLeaseLost)
				}
				a.log.Warn("write status", zap.Error(err))
			} else {
				wroteStatus = seq
			}
		}
		if tm, seq := a.telemetry.get(); seq != wroteTelemetry && seq != 0 {
			if err := a.put(ctx, a.keys.HostTelemetry(a.cfg.Host), tm, id); err != nil {
				if errors.Is(err, etcdstore.ErrLeaseNotFound) {
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

func (a *Agent) put(ctx context.Context, key string, v any, id int64) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	pctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	return a.etcd.PutLeased(pctx, key, data, id)
}
