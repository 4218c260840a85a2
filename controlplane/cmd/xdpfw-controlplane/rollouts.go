package main

import (
	"time"

	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/controlplane/rollout"
	"github.com/xdpfw/xdpfw/etcdstore"
)

// newController returns the rollout controller of this replica: Run
// campaigns for leadership among the replicas sharing the etcd, and the
// leader moves the rollouts on.
func newController(st *etcdstore.Store, name string, interval, retention time.Duration, gc rollout.GCOptions, lg *zap.Logger) *rollout.Controller {
	return rollout.NewController(st, rollout.ControllerOptions{Name: name, Interval: interval, Retention: retention, GC: gc, Log: lg.Named("rollout")})
}
