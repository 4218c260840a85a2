package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// env is one test's etcd member and the control plane's pieces over it.
type env struct {
	t         *testing.T
	endpoints []string
	cli       *clientv3.Client
	keys      proto.Keys
	store     *etcdstore.Store
	mgr       *Manager
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv, cli := etcdtest.StartWithClient(t)
	keys := proto.NewKeys("/xdpfw-test/")
	return &env{t: t, endpoints: srv.Endpoints(), cli: cli, keys: keys, store: etcdstore.New(cli, keys), mgr: NewManager(etcdstore.New(cli, keys))}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// ruleSet is a valid rule set whose one rule drops tcp port `port`.
func ruleSet(name string, selector map[string]string, port int) proto.RuleSet {
	return proto.RuleSet{
		APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: name, Selector: selector, Mode: proto.ModeDeny,
		Rules: []proto.Rule{{ID: "r1", Action: proto.ActionDrop, Protocol: proto.ProtoTCP,
			DstPorts: []proto.PortSpec{proto.PortSpec(fmt.Sprint(port))}}},
	}
}

// putVersions writes versions 1..n of a rule set.
func (e *env) putVersions(name string, selector map[string]string, n int) {
	e.t.Helper()
	for i := 1; i <= n; i++ {
		if _, _, err := e.store.PutRuleSet(testCtx(e.t), ruleSet(name, selector, 1000+i), -1); err != nil {
			e.t.Fatalf("put rule set %s version %d: %v", name, i, err)
		}
	}
}

// liveHost writes a status for host, as its agent would under its lease:
// a host rollouts can be for.
func (e *env) liveHost(host string, labels map[string]string) {
	e.t.Helper()
	b, _ := json.Marshal(proto.HostStatus{APIVersion: proto.APIVersion, Kind: proto.KindHostStatus, Host: host, Labels: labels, Applied: []proto.RuleSetRef{}})
	if _, err := e.cli.Put(testCtx(e.t), e.keys.HostStatus(host), string(b)); err != nil {
		e.t.Fatalf("status of %s: %v", host, err)
	}
}

func (e *env) create(spec proto.RolloutSpec) proto.Rollout {
	e.t.Helper()
	ro, err := e.mgr.Create(testCtx(e.t), spec, "tester", nil)
	if err != nil {
		e.t.Fatalf("create rollout %+v: %v", spec, err)
	}
	return ro
}

func (e *env) get(id string) proto.Rollout {
	e.t.Helper()
	ro, err := e.mgr.Get(testCtx(e.t), id)
	if err != nil {
		e.t.Fatalf("get rollout %s: %v", id, err)
	}
	return ro
}

func (e *env) control(id, want string) proto.Rollout {
	e.t.Helper()
	ro, err := e.mgr.Control(testCtx(e.t), id, want, "tester", nil)
	if err != nil {
		e.t.Fatalf("control rollout %s %s: %v", id, want, err)
	}
	return ro
}

func describe(ro proto.Rollout) string {
	var b strings.Builder
	fmt.Fprintf(&b, "state %s wave %d %q; hosts:", ro.Status.State, ro.Status.Wave, ro.Status.Message)
	for _, h := range slices.Sorted(maps.Keys(ro.Status.Hosts)) {
		e := ro.Status.Hosts[h]
		fmt.Fprintf(&b, " %s=%s/w%d/prev%d", h, e.State, e.Wave, e.Previous)
		if e.Error != "" {
			fmt.Fprintf(&b, "(%s)", e.Error)
		}
	}
	return b.String()
}

func ref(name string, v int64) proto.RuleSetRef { return proto.RuleSetRef{Name: name, Version: v} }
