package integration

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestFleetHarness checks the fleet harness itself, with no agent: the
// cluster forms and serves the test, hosts reach each other over the
// segment, cutOffEtcd cuts a host off from etcd and nothing else, and the
// cluster survives the loss of its leader (SIGTERM) and of a follower
// (SIGKILL), each of which rejoins.
func TestFleetHarness(t *testing.T) {
	start := time.Now()
	f := newFleet(t, 1)
	h1 := f.hosts[0]
	t.Logf("fleet up in %s", time.Since(start).Round(time.Millisecond))

	// The three members form one cluster, and the test writes and reads
	// through it.
	mustPut(t, f.etcd, "/xdpfw-it/harness/a", "1")
	if got := mustGet(t, f.etcd, "/xdpfw-it/harness/a"); got != "1" {
		t.Fatalf("get after put: %q, want %q", got, "1")
	}
	ctx, cancel := context.WithTimeout(t.Context(), etcdRequestTimeout)
	ml, err := f.etcd.MemberList(ctx)
	cancel()
	if err != nil {
		t.Fatalf("member list: %v", err)
	}
	if len(ml.Members) != len(f.members) {
		t.Fatalf("member list: %d members, want %d: %v", len(ml.Members), len(f.members), ml.Members)
	}

	// The client reaches the agent host over the bridge.
	reachable := map[flow]outcome{
		tcp4(f.client, h1.host, 8080): passes,
		tcp6(f.client, h1.host, 8080): passes,
		ping4(f.client, h1.host):      passes,
	}
	expectFlows(t, reachable)
	dialMembers(t, h1, true)

	// Cut off, h1 reaches no member, and the client still reaches h1.
	h1.cutOffEtcd(t)
	dialMembers(t, h1, false)
	expectFlows(t, reachable)
	h1.restoreEtcd(t)
	dialMembers(t, h1, true)

	// The leader goes: the two others elect a new one and take puts.
	old := f.leader(t)
	old.stop(t)
	waitFor(t, 10*time.Second, fmt.Sprintf("a put with %s stopped", old), func() (bool, string) {
		ctx, cancel := context.WithTimeout(t.Context(), etcdRequestTimeout)
		defer cancel()
		_, err := f.etcd.Put(ctx, "/xdpfw-it/harness/b", "2")
		return err == nil, fmt.Sprint(err)
	})
	t.Logf("%s led and was stopped; %s leads now", old, f.leader(t))
	if got := mustGet(t, f.etcd, "/xdpfw-it/harness/b"); got != "2" {
		t.Fatalf("get with %s stopped: %q, want %q", old, got, "2")
	}

	// It comes back on its data dir and catches up with what it missed.
	old.restart(t)
	catchesUp(t, f, old, "/xdpfw-it/harness/b", "2")

	// A follower killed with SIGKILL recovers from its data dir too.
	leader := f.leader(t)
	follower := f.members[0]
	if follower == leader {
		follower = f.members[1]
	}
	follower.kill(t)
	mustPut(t, f.etcd, "/xdpfw-it/harness/c", "3")
	follower.restart(t)
	catchesUp(t, f, follower, "/xdpfw-it/harness/c", "3")
	t.Logf("done in %s", time.Since(start).Round(time.Millisecond))
}

// catchesUp waits until member m has key at val in its own store (a
// serializable read, which m answers alone) and follows the leader of
// the others.
func catchesUp(t testing.TB, f *fleet, m *etcdMember, key, val string) {
	t.Helper()
	only := f.newClient(t, m)
	waitFor(t, 10*time.Second, fmt.Sprintf("%s has %s=%s", m, key, val), func() (bool, string) {
		ctx, cancel := context.WithTimeout(t.Context(), etcdRequestTimeout)
		defer cancel()
		r, err := only.Get(ctx, key, clientv3.WithSerializable())
		switch {
		case err != nil:
			return false, err.Error()
		case len(r.Kvs) != 1:
			return false, fmt.Sprintf("%d keys", len(r.Kvs))
		}
		return string(r.Kvs[0].Value) == val, fmt.Sprintf("value %q", r.Kvs[0].Value)
	})
	leader := f.leader(t)
	waitFor(t, 10*time.Second, fmt.Sprintf("%s follows %s", m, leader), func() (bool, string) {
		ctx, cancel := context.WithTimeout(t.Context(), etcdRequestTimeout)
		defer cancel()
		st, err := f.etcd.Status(ctx, m.clientURL())
		if err != nil {
			return false, err.Error()
		}
		return st.Leader == leader.id, fmt.Sprintf("its leader is %x, %s is %x", st.Leader, leader, leader.id)
	})
}

// dialMembers checks whether a TCP connection from h to each member's
// client port succeeds (want true) or fails (want false).
func dialMembers(t testing.TB, h *agentHost, want bool) {
	t.Helper()
	for _, m := range memberV4 {
		dst := netip.AddrPortFrom(m.Addr(), etcdClientPort)
		c, err := h.dial("tcp", dst)
		if err == nil {
			c.Close()
		}
		if (err == nil) != want {
			t.Errorf("%s -> %s: dial error %v, want success %v", h, dst, err, want)
		}
	}
}

func mustPut(t testing.TB, c *clientv3.Client, key, val string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), etcdRequestTimeout)
	defer cancel()
	if _, err := c.Put(ctx, key, val); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// mustGet reads key (linearizable: the cluster's leader confirms it) and
// returns its value, "" if it has none.
func mustGet(t testing.TB, c *clientv3.Client, key string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), etcdRequestTimeout)
	defer cancel()
	r, err := c.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(r.Kvs) == 0 {
		return ""
	}
	return string(r.Kvs[0].Value)
}
