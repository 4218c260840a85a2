package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	wire "github.com/xdpfw/xdpfw/proto"
)

// The agent scenarios of the etcd-agent issue: a 3-member etcd cluster,
// agents in namespace hosts, and real packets from the client host decide
// every assertion about what is enforced.

// edgeRules is version 1 of the fleet's rule set; edgeWith changes the
// port of its first rule (one rule changed).
const edgeRules = `
apiVersion: xdpfw/v1
kind: RuleSet
name: edge
mode: deny
rules:
  - id: no-ssh
    action: drop
    protocol: tcp
    dstPorts: ["%d"]
  - id: no-9999
    action: drop
    protocol: udp
    dstPorts: ["9999"]
`

func edgeWith(sshPort int) string { return fmt.Sprintf(edgeRules, sshPort) }

// fleetTimeout bounds every wait for agents to converge: far above the
// milliseconds they take, so that only a real failure times out.
const fleetTimeout = 30 * time.Second

// putVersion stores a rule document as version v of its rule set, as the
// control plane would (the JSON of the decoded, validated document).
func (f *fleet) putVersion(t testing.TB, v int64, doc string) {
	t.Helper()
	rs, err := wire.DecodeRuleSet([]byte(doc))
	if err != nil {
		t.Fatalf("decode rule set: %v", err)
	}
	if err := rs.Validate(); err != nil {
		t.Fatalf("rule set %s: %v", rs.Name, err)
	}
	data, err := json.Marshal(rs)
	if err != nil {
		t.Fatal(err)
	}
	f.put(t, wire.NewKeys("").RuleSetVersion(rs.Name, v), string(data))
}

func (f *fleet) put(t testing.TB, key, value string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), etcdRequestTimeout)
	defer cancel()
	resp, err := f.etcd.Put(ctx, key, value)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return resp.Header.Revision
}

// desire writes the desired state of hosts and returns its revision.
func (f *fleet) desire(t testing.TB, hosts []*agentHost, refs ...wire.RuleSetRef) int64 {
	t.Helper()
	data, err := json.Marshal(wire.NewHostDesired(refs...))
	if err != nil {
		t.Fatal(err)
	}
	// One transaction: every host's desired state has the same revision.
	var ops []clientv3.Op
	for _, h := range hosts {
		ops = append(ops, clientv3.OpPut(wire.NewKeys("").HostDesired(h.name()), string(data)))
	}
	ctx, cancel := context.WithTimeout(t.Context(), etcdRequestTimeout)
	defer cancel()
	resp, err := f.etcd.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		t.Fatalf("write desired state of %v: %v", hosts, err)
	}
	return resp.Header.Revision
}

// get reads one JSON document; found is false when the key is absent.
func (f *fleet) get(t testing.TB, key string, v any) (found bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), etcdRequestTimeout)
	defer cancel()
	resp, err := f.etcd.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return false
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, v); err != nil {
		t.Fatalf("decode %s: %v", key, err)
	}
	return true
}

func (f *fleet) status(t testing.TB, h *agentHost) (wire.HostStatus, bool) {
	t.Helper()
	var st wire.HostStatus
	found := f.get(t, wire.NewKeys("").HostStatus(h.name()), &st)
	return st, found
}

func (f *fleet) telemetry(t testing.TB, h *agentHost) (wire.HostTelemetry, bool) {
	t.Helper()
	var tm wire.HostTelemetry
	found := f.get(t, wire.NewKeys("").HostTelemetry(h.name()), &tm)
	return tm, found
}

// waitApplied waits until every host's status says it enforces exactly
// refs, in sync at revision rev or later, and returns the statuses.
func (f *fleet) waitApplied(t testing.TB, hosts []*agentHost, rev int64, refs ...wire.RuleSetRef) []wire.HostStatus {
	t.Helper()
	out := make([]wire.HostStatus, len(hosts))
	for i, h := range hosts {
		waitFor(t, fleetTimeout, fmt.Sprintf("%s applies %v", h, refs), func() (bool, string) {
			st, found := f.status(t, h)
			if !found {
				return false, "no status"
			}
			out[i] = st
			ok := st.InSync && st.Revision >= rev && len(st.Applied) == len(refs)
			for j := range refs {
				ok = ok && st.Applied[j] == refs[j]
			}
			return ok, fmt.Sprintf("status: in sync %v, revision %d, applied %v, error %+v", st.InSync, st.Revision, st.Applied, st.LastError)
		})
	}
	return out
}

func edge(v int64) wire.RuleSetRef { return wire.RuleSetRef{Name: "edge", Version: v} }

// enforcesSSHPort checks with packets from the client that h drops TCP to
// port (v4 and v6) and lets other TCP through.
func enforcesSSHPort(t testing.TB, f *fleet, h *agentHost, port int) {
	t.Helper()
	other := 80
	if port == other {
		other = 81
	}
	expectFlows(t, map[flow]outcome{
		tcp4(f.client, h.host, port):  blocked,
		tcp6(f.client, h.host, port):  blocked,
		tcp4(f.client, h.host, other): passes,
		tcp6(f.client, h.host, other): passes,
		udp4(f.client, h.host, 53):    passes,
	})
}

// agentLogCount counts the lines of h's agent log holding s.
func agentLogCount(t testing.TB, h *agentHost, s string) int {
	t.Helper()
	b, err := os.ReadFile(h.logPath)
	if err != nil {
		t.Fatalf("%s: read agent log: %v", h, err)
	}
	return strings.Count(string(b), s)
}

func TestFleetEnforcesRuleSetAndReportsIt(t *testing.T) {
	f := newFleet(t, 3)
	for _, h := range f.hosts {
		h.labels = []string{"role=edge"}
		h.startAgent(t)
	}
	f.putVersion(t, 1, edgeWith(22))
	rev := f.desire(t, f.hosts, edge(1))
	for i, st := range f.waitApplied(t, f.hosts, rev, edge(1)) {
		h := f.hosts[i]
		if st.Host != h.name() || st.Labels["role"] != "edge" || st.AgentVersion == "" || st.StartedAt.IsZero() {
			t.Errorf("%s: status %+v", h, st)
		}
		if len(st.Interfaces) != 1 || st.Interfaces[0].Name != ifaceName || !st.Interfaces[0].Attached ||
			st.Interfaces[0].Digest == "" || st.Interfaces[0].Rules != 2 || st.Interfaces[0].AttachMode == "" {
			t.Errorf("%s: interfaces %+v", h, st.Interfaces)
		}
		if mode := h.xdpMode(t); mode == "" || mode != st.Interfaces[0].AttachMode {
			t.Errorf("%s: kernel says XDP %q, status says %q", h, mode, st.Interfaces[0].AttachMode)
		}
		enforcesSSHPort(t, f, h, 22)
	}

	// Telemetry counts the packets: 25 datagrams to udp/9999 on each host
	// show up under rule no-9999 (and nowhere else does udp/9999 go).
	const sent = 25
	for _, h := range f.hosts {
		sendUDP(t, udp4(f.client, h.host, 9999), sent)
	}
	for _, h := range f.hosts {
		waitFor(t, fleetTimeout, fmt.Sprintf("%s telemetry counts %d drops", h, sent), func() (bool, string) {
			tm, found := f.telemetry(t, h)
			if !found || len(tm.Interfaces) != 1 {
				return false, fmt.Sprintf("telemetry %+v", tm)
			}
			it := tm.Interfaces[0]
			for _, r := range it.Rules {
				if r.RuleSet == "edge" && r.ID == "no-9999" {
					ok := r.Packets == sent && r.Action == "drop" && it.Actions["drop-rule"].Packets >= sent
					return ok, fmt.Sprintf("rule no-9999: %+v; drop-rule %+v", r, it.Actions["drop-rule"])
				}
			}
			return false, fmt.Sprintf("no rule no-9999 in %+v", it.Rules)
		})
	}
	m, err := f.hosts[0].metrics(t)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		fmt.Sprintf(`xdpfw_rule_packets_total{action="drop",interface="eth0",rule="no-9999",ruleset="edge"} %d`, sent),
		"xdpfw_agent_in_sync 1", "xdpfw_agent_etcd_connected 1", "xdpfw_agent_apply_duration_seconds_count 1",
	} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("%s: /metrics lacks %q", f.hosts[0], want)
		}
	}
}

func TestFleetChangingOneRuleWritesOnlyItsEntries(t *testing.T) {
	f := newFleet(t, 3)
	for _, h := range f.hosts {
		h.startAgent(t)
	}
	// v1 goes into generation 0 and v2 into the empty generation 1. v3
	// then goes into generation 0, which holds v1: it differs from v1 in
	// one rule's port, so the apply writes that rule's two port entries
	// (the old port loses the rule, the new one gains it) and the
	// generation's header, and nothing else.
	f.putVersion(t, 1, edgeWith(22))
	f.putVersion(t, 2, edgeWith(2222))
	f.putVersion(t, 3, edgeWith(2223))
	rev := f.desire(t, f.hosts, edge(1))
	f.waitApplied(t, f.hosts, rev, edge(1))
	rev = f.desire(t, f.hosts, edge(2))
	f.waitApplied(t, f.hosts, rev, edge(2))

	// Under traffic: DNS probes that all rule versions pass, and datagrams
	// to udp/9999 that all of them drop. A packet that saw a mix of two
	// versions could only go wrong on these if the swap were not atomic;
	// none may be lost or leak.
	var allowed, denied []flow
	for _, h := range f.hosts {
		allowed = append(allowed, udp4(f.client, h.host, 53), udp6(f.client, h.host, 53))
		denied = append(denied, udp4(f.client, h.host, 9999))
	}
	traffic := startUDPTraffic(t, allowed, denied)
	time.Sleep(200 * time.Millisecond)
	rev = f.desire(t, f.hosts, edge(3))
	statuses := f.waitApplied(t, f.hosts, rev, edge(3))
	time.Sleep(200 * time.Millisecond)
	probes, lost, errs := traffic.stop()
	for _, err := range errs {
		t.Error(err)
	}
	if lost != 0 || probes == 0 {
		t.Errorf("allowed DNS probes: %d of %d lost during the change, want none lost", lost, probes)
	}
	time.Sleep(100 * time.Millisecond)
	for i, h := range f.hosts {
		if n := h.udpReceived(9999); n != 0 {
			t.Errorf("%s: %d datagrams to udp/9999 got through during the change, want 0", h, n)
		}
		if w := statuses[i].Interfaces[0].Writes; w != 3 {
			t.Errorf("%s: the one-rule change wrote %d map entries, want 3 (two port entries and the header)", h, w)
		}
		enforcesSSHPort(t, f, h, 2223)
	}
}

func TestFleetAgentKilledMidApplyNeverStopsFiltering(t *testing.T) {
	f, h := oneHostEnforcingEdge1(t)

	// Version 2 adds a set of 50,000 prefixes (one etcd request stays
	// under 1 MiB): its apply writes the big-set tables for a few hundred
	// milliseconds, and the agent is killed in the middle of it.
	f.putVersion(t, 2, bigEdge(50_000))
	traffic := startUDPTraffic(t, []flow{udp4(f.client, h.host, 53), udp6(f.client, h.host, 53)}, []flow{udp4(f.client, h.host, 9999)})
	writing := agentLogCount(t, h, "writing maps")
	rev := f.desire(t, f.hosts, edge(2))
	waitFor(t, fleetTimeout, "the agent starts writing the maps", func() (bool, string) {
		return agentLogCount(t, h, "writing maps") > writing, "no new \"writing maps\" line in the agent's log"
	})
	h.kill9(t)
	if st, found := f.status(t, h); found && st.InSync && len(st.Applied) == 1 && st.Applied[0] == edge(2) {
		t.Fatal("the agent finished applying before it was killed: nothing was interrupted")
	}
	// Dead agent, half-written inactive generation: packets still see v1.
	time.Sleep(300 * time.Millisecond)
	enforcesSSHPort(t, f, h, 22)

	h.startAgent(t)
	f.waitApplied(t, f.hosts, rev, edge(2))
	time.Sleep(100 * time.Millisecond)
	traffic.stopClean(t, "across the kill and restart", h.host, 9999)
	if n := agentLogCount(t, h, "adopted pinned firewall"); n != 1 {
		t.Errorf("the restarted agent adopted the pinned firewall %d times, want once", n)
	}
	enforcesSSHPort(t, f, h, 22)
	// The big set is in force: the client's address is not in it, so only
	// the kernel's word says so; show reports the table layout.
	if s := h.show(t); s.Tables["src4"] != "range" {
		t.Errorf("after convergence the src4 field uses %q, want the range table of the 50,000-prefix set", s.Tables["src4"])
	}
}

// bigEdge is edge v1 plus a rule that drops a set of n /32s from
// 100.64.0.0/10 (none of them a test host's address).
func bigEdge(n int) string {
	var b strings.Builder
	b.WriteString(edgeWith(22))
	b.WriteString("  - id: blocklist\n    action: drop\n    src: [set:blocklist]\nsets:\n  blocklist:\n")
	for i := range n {
		fmt.Fprintf(&b, "    - 100.%d.%d.%d/32\n", 64+i>>16, (i>>8)&255, i&255)
	}
	return b.String()
}

func TestFleetAgentCutOffFromEtcdKeepsEnforcingAndResyncs(t *testing.T) {
	f := newFleet(t, 2)
	cut, other := f.hosts[0], f.hosts[1]
	for _, h := range f.hosts {
		h.startAgent(t)
	}
	f.putVersion(t, 1, edgeWith(22))
	f.putVersion(t, 2, edgeWith(2222))
	rev := f.desire(t, f.hosts, edge(1))
	f.waitApplied(t, f.hosts, rev, edge(1))

	cut.cutOffEtcd(t)
	// Its lease expires (TTL 2 s): status and telemetry vanish; the other
	// host stays registered.
	waitFor(t, fleetTimeout, "the cut-off host's status and telemetry expire", func() (bool, string) {
		_, st := f.status(t, cut)
		_, tm := f.telemetry(t, cut)
		return !st && !tm, fmt.Sprintf("status present %v, telemetry present %v", st, tm)
	})
	if _, found := f.status(t, other); !found {
		t.Fatal("the connected host's status vanished too")
	}
	// A change made while it is cut off reaches the other host only.
	rev = f.desire(t, f.hosts, edge(2))
	f.waitApplied(t, []*agentHost{other}, rev, edge(2))
	enforcesSSHPort(t, f, other, 2222)
	// Fail-static: the cut-off host keeps enforcing v1, lease or not.
	enforcesSSHPort(t, f, cut, 22)

	cut.restoreEtcd(t)
	st := f.waitApplied(t, []*agentHost{cut}, rev, edge(2))[0]
	enforcesSSHPort(t, f, cut, 2222)
	if st.StartedAt.IsZero() {
		t.Errorf("re-registered status: %+v", st)
	}
	m, err := cut.metrics(t)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m, "xdpfw_agent_lease_grants_total 2\n") {
		t.Errorf("the cut-off agent should have registered twice (a new lease after the expiry); /metrics:\n%s", grepLines(m, "xdpfw_agent_"))
	}
}

func TestFleetSurvivesEtcdMemberAndLeaderLoss(t *testing.T) {
	f := newFleet(t, 3)
	for _, h := range f.hosts {
		h.startAgent(t)
	}
	for v := int64(1); v <= 3; v++ {
		f.putVersion(t, v, edgeWith(2220+int(v)))
	}
	rev := f.desire(t, f.hosts, edge(1))
	f.waitApplied(t, f.hosts, rev, edge(1))

	// One follower goes: two of three members keep the quorum.
	leader := f.leader(t)
	var follower *etcdMember
	for _, m := range f.members {
		if m != leader {
			follower = m
			break
		}
	}
	follower.stop(t)
	rev = f.desire(t, f.hosts, edge(2))
	f.waitApplied(t, f.hosts, rev, edge(2))
	for _, h := range f.hosts {
		enforcesSSHPort(t, f, h, 2222)
	}
	follower.restart(t)

	// Then the leader goes: the other two elect a new one; watches on a
	// member without a leader end (WithRequireLeader) and agents resync.
	leader = f.leader(t)
	leader.stop(t)
	f.leader(t)
	rev = f.desire(t, f.hosts, edge(3))
	f.waitApplied(t, f.hosts, rev, edge(3))
	for _, h := range f.hosts {
		enforcesSSHPort(t, f, h, 2223)
	}
}

func TestFleetCompactionPastAgentsWatchResyncs(t *testing.T) {
	f, h := oneHostEnforcingEdge1(t)

	// The agent's watch falls behind while it is cut off; meanwhile the
	// desired state changes twice and etcd compacts past all of it, so
	// the watch cannot resume where it was.
	h.cutOffEtcd(t)
	f.putVersion(t, 2, edgeWith(2222))
	f.putVersion(t, 3, edgeWith(2223))
	f.desire(t, f.hosts, edge(2))
	rev := f.desire(t, f.hosts, edge(3))
	ctx, cancel := context.WithTimeout(t.Context(), etcdRequestTimeout)
	defer cancel()
	if _, err := f.etcd.Compact(ctx, rev); err != nil {
		t.Fatalf("compact at %d: %v", rev, err)
	}
	enforcesSSHPort(t, f, h, 22)
	h.restoreEtcd(t)
	f.waitApplied(t, f.hosts, rev, edge(3))
	enforcesSSHPort(t, f, h, 2223)
	if n := agentLogCount(t, h, "watch revision compacted: resync"); n == 0 {
		t.Errorf("the agent never saw its watch revision compacted; log:\n%s", tailFile(t, h.logPath, 4096))
	}
}

func TestFleetRefusesBadDocumentAndKeepsLastGoodRules(t *testing.T) {
	f, h := oneHostEnforcingEdge1(t)

	keys := wire.NewKeys("")
	for _, bad := range []struct {
		name, key, value, want string
		refs                   []wire.RuleSetRef
	}{
		{"desired state that is not JSON", keys.HostDesired(h.name()), "ruleSets: [edge]", "decode", nil},
		{"rule set with a port out of range", keys.RuleSetVersion("edge", 2),
			`{"apiVersion":"xdpfw/v1","kind":"RuleSet","name":"edge","mode":"deny","rules":[{"id":"x","action":"drop","protocol":"tcp","dstPorts":["70000"]}]}`,
			"rules[0].dstPorts[0]", []wire.RuleSetRef{edge(2)}},
	} {
		rev := f.put(t, bad.key, bad.value)
		if bad.refs != nil {
			rev = f.desire(t, f.hosts, bad.refs...)
		}
		waitFor(t, fleetTimeout, bad.name+" refused in the status", func() (bool, string) {
			st, found := f.status(t, h)
			ok := found && !st.InSync && st.Revision >= rev && st.LastError != nil &&
				st.LastError.Document == bad.key && strings.Contains(st.LastError.Message, bad.want) &&
				len(st.Applied) == 1 && st.Applied[0] == edge(1)
			return ok, fmt.Sprintf("status %+v, error %+v", st, st.LastError)
		})
		enforcesSSHPort(t, f, h, 22)
	}
	// Fixed: the next good version applies.
	f.putVersion(t, 3, edgeWith(2223))
	rev := f.desire(t, f.hosts, edge(3))
	f.waitApplied(t, f.hosts, rev, edge(3))
	enforcesSSHPort(t, f, h, 2223)
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func tailFile(t testing.TB, path string, n int) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return string(b[max(0, len(b)-n):])
}

func TestFleetAgentStopRevokesLeaseAndLeavesFirewallFiltering(t *testing.T) {
	f, h := oneHostEnforcingEdge1(t, "--lease-ttl", "30s")
	waitFor(t, fleetTimeout, "telemetry written", func() (bool, string) {
		_, found := f.telemetry(t, h)
		return found, "no telemetry"
	})

	// SIGTERM: the lease is revoked, so the documents go at once, not
	// after the 30 s TTL; the program stays attached and filtering.
	h.stop(t)
	if _, found := f.status(t, h); found {
		t.Error("status still present after SIGTERM: the lease was not revoked")
	}
	if _, found := f.telemetry(t, h); found {
		t.Error("telemetry still present after SIGTERM: the lease was not revoked")
	}
	if mode := h.xdpMode(t); mode == "" {
		t.Fatal("no XDP program attached after the agent stopped")
	}
	enforcesSSHPort(t, f, h, 22)
}

func TestFleetAgentRefusesToStartOnUnknownInterface(t *testing.T) {
	f := newFleet(t, 1)
	h := f.hosts[0]
	h.startAgent(t, "--iface", "nosuch0")
	err := h.waitExit(t, fleetTimeout)
	if err == nil {
		t.Fatal("the agent started on an interface that does not exist")
	}
	if log := tailFile(t, h.logPath, 4096); !strings.Contains(log, "no such interface: nosuch0") {
		t.Errorf("exit %v; the log does not say which interface is missing:\n%s", err, log)
	}
	if h.xdpMode(t) != "" {
		t.Error("an XDP program is attached to eth0, which the agent was not told to manage")
	}
}

// oneHostEnforcingEdge1 is a fleet of one agent host enforcing edge@1
// (TCP to port 22 dropped).
func oneHostEnforcingEdge1(t *testing.T, agentArgs ...string) (*fleet, *agentHost) {
	t.Helper()
	f := newFleet(t, 1)
	h := f.hosts[0]
	h.startAgent(t, agentArgs...)
	f.putVersion(t, 1, edgeWith(22))
	rev := f.desire(t, f.hosts, edge(1))
	f.waitApplied(t, f.hosts, rev, edge(1))
	return f, h
}
