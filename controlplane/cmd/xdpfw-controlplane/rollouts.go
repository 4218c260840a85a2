package main

import (
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/controlplane/rollout"
	"github.com/xdpfw/xdpfw/proto"
)

// newController returns the rollout controller of this replica: Run
// campaigns for leadership among the replicas sharing the etcd, and the
// leader moves the rollouts on.
func newController(cli *clientv3.Client, keys proto.Keys, name string, interval, retention time.Duration, lg *zap.Logger) *rollout.Controller {
	return rollout.NewController(cli, keys, rollout.ControllerOptions{Name: name, Interval: interval, Retention: retention, Log: lg.Named("rollout")})
}
