package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"

	"github.com/xdpfw/xdpfw/bpf"
	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// These tests run a real etcd member and real pinned BPF maps: the agent
// manages "lo" without attaching (lo takes no XDP program), so every map
// write is real and read back through the bpf package.

const testRules = `{"apiVersion":"xdpfw/v1","kind":"RuleSet","name":"%s","mode":"deny","rules":[
 {"id":"ssh","action":"drop","protocol":"tcp","dstPorts":["%d"]}]}`

type fixture struct {
	t       *testing.T
	cli     *clientv3.Client
	keys    proto.Keys
	pinPath string
	host    string
	// iface is the managed interface's configuration (lo, by default).
	iface InterfaceConfig
}

func newFixture(t *testing.T) *fixture {
	if testing.Short() {
		t.Skip("needs root and BPF; not run with -short")
	}
	_, cli := etcdtest.StartWithClient(t)
	pin := filepath.Join(bpf.DefaultPinPath+"-agent-test", fmt.Sprintf("%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_")))
	t.Cleanup(func() {
		bpf.Detach(bpf.Options{PinPath: pin, Interface: "lo"})
		os.RemoveAll(pin)
	})
	return &fixture{t: t, cli: cli, keys: proto.NewKeys(""), pinPath: pin, host: "h1", iface: InterfaceConfig{Name: "lo"}}
}

// start runs an agent until the test ends (or the returned stop is called).
func (f *fixture) start() (a *Agent, stop func()) {
	f.t.Helper()
	return f.startWithMetrics("")
}

func (f *fixture) startWithMetrics(metricsAddr string) (a *Agent, stop func()) {
	f.t.Helper()
	return f.startWith(metricsAddr, nil)
}

// startWith is start with /metrics on metricsAddr ("": off), New's options
// and a function that may change the agent before it runs.
func (f *fixture) startWith(metricsAddr string, before func(*Agent), opts ...Option) (a *Agent, stop func()) {
	f.t.Helper()
	off := metricsAddr
	a, err := New(Config{
		Endpoints: f.cli.Endpoints(), Host: f.host, Labels: map[string]string{"role": "edge"},
		Interfaces: []InterfaceConfig{f.iface}, PinPath: f.pinPath,
		LeaseTTL: Duration(2 * time.Second), TelemetryInterval: Duration(200 * time.Millisecond),
		MetricsAddr: &off,
	}, zaptest.NewLogger(f.t), opts...)
	if err != nil {
		f.t.Fatalf("new agent: %v", err)
	}
	a.noAttach = true
	if before != nil {
		before(a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			f.t.Errorf("agent run: %v", err)
		}
		a.Close()
	}
	f.t.Cleanup(stop)
	return a, stop
}

func (f *fixture) put(key, value string) int64 {
	f.t.Helper()
	resp, err := f.cli.Put(context.Background(), key, value)
	if err != nil {
		f.t.Fatalf("put %s: %v", key, err)
	}
	return resp.Header.Revision
}

func (f *fixture) putRuleSet(name string, version int64, port int) {
	f.put(f.keys.RuleSetVersion(name, version), fmt.Sprintf(testRules, name, port))
}

func (f *fixture) desire(refs ...proto.RuleSetRef) int64 {
	data, _ := json.Marshal(proto.NewHostDesired(refs...))
	return f.put(f.keys.HostDesired(f.host), string(data))
}

func (f *fixture) status() (proto.HostStatus, bool) {
	resp, err := f.cli.Get(context.Background(), f.keys.HostStatus(f.host))
	if err != nil || len(resp.Kvs) == 0 {
		return proto.HostStatus{}, false
	}
	var st proto.HostStatus
	if err := json.Unmarshal(resp.Kvs[0].Value, &st); err != nil {
		f.t.Fatalf("decode status: %v", err)
	}
	return st, true
}

// waitStatus waits for a status document that satisfies ok.
func (f *fixture) waitStatus(what string, ok func(proto.HostStatus) bool) proto.HostStatus {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var last proto.HostStatus
	for time.Now().Before(deadline) {
		if st, found := f.status(); found {
			last = st
			if ok(st) {
				return st
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	got, _ := json.Marshal(last)
	f.t.Fatalf("status never showed %s; last: %s", what, got)
	return last
}

// applied reads the rule sets the pinned maps enforce, straight from bpffs.
func (f *fixture) applied() []string {
	f.t.Helper()
	fw, err := bpf.OpenPinned(bpf.Options{PinPath: f.pinPath, Interface: "lo"})
	if err != nil {
		f.t.Fatalf("open pinned firewall: %v", err)
	}
	defer fw.Close()
	st, err := fw.State()
	if err != nil {
		f.t.Fatal(err)
	}
	sets, _, err := fw.AppliedRuleSets()
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, rs := range sets {
		out = append(out, fmt.Sprintf("%s:%s", rs.Name, rs.Rules[0].DstPorts[0]))
	}
	return append(out, "digest="+st.Digest[:12])
}

func applied(refs ...proto.RuleSetRef) func(proto.HostStatus) bool {
	return func(st proto.HostStatus) bool {
		if !st.InSync || len(st.Applied) != len(refs) {
			return false
		}
		for i := range refs {
			if st.Applied[i] != refs[i] {
				return false
			}
		}
		return true
	}
}

func TestAgentEnforcesDesiredVersionsAndRefusesBadOnes(t *testing.T) {
	f := newFixture(t)
	f.putRuleSet("edge", 1, 22)
	rev := f.desire(proto.RuleSetRef{Name: "edge", Version: 1})
	f.start()
	st := f.waitStatus("edge@1 applied", applied(proto.RuleSetRef{Name: "edge", Version: 1}))
	if st.Revision < rev || st.Labels["role"] != "edge" || st.AgentVersion == "" || len(st.Interfaces) != 1 || st.Interfaces[0].Rules != 1 {
		t.Fatalf("status %+v", st)
	}
	if got := f.applied(); got[0] != "edge:22" {
		t.Fatalf("maps enforce %v, want edge:22", got)
	}

	// A new version through the watch.
	f.putRuleSet("edge", 2, 2222)
	f.desire(proto.RuleSetRef{Name: "edge", Version: 2})
	f.waitStatus("edge@2 applied", applied(proto.RuleSetRef{Name: "edge", Version: 2}))
	good := f.applied()
	if good[0] != "edge:2222" {
		t.Fatalf("maps enforce %v, want edge:2222", good)
	}

	// Bad documents written straight into etcd are refused, each named in
	// the status, and the maps keep enforcing edge@2.
	for _, bad := range []struct {
		name    string
		write   func() int64
		docKey  string
		message string
	}{
		{"malformed desired state", func() int64 {
			return f.put(f.keys.HostDesired(f.host), `{"apiVersion":"xdpfw/v1","kind":"HostDesired","ruleSets":[{"name":"edge"}]}`)
		},
			f.keys.HostDesired(f.host), "ruleSets[0].version"},
		{"missing version", func() int64 { return f.desire(proto.RuleSetRef{Name: "edge", Version: 9}) },
			f.keys.RuleSetVersion("edge", 9), "version 9 not found"},
		{"invalid rule set", func() int64 {
			f.put(f.keys.RuleSetVersion("edge", 3), strings.Replace(fmt.Sprintf(testRules, "edge", 22), `"22"`, `"70000"`, 1))
			return f.desire(proto.RuleSetRef{Name: "edge", Version: 3})
		}, f.keys.RuleSetVersion("edge", 3), "dstPorts[0]"},
		{"rule set under another name", func() int64 {
			f.put(f.keys.RuleSetVersion("edge", 4), fmt.Sprintf(testRules, "core", 22))
			return f.desire(proto.RuleSetRef{Name: "edge", Version: 4})
		}, f.keys.RuleSetVersion("edge", 4), `named "core"`},
	} {
		rev := bad.write()
		st := f.waitStatus(bad.name+" refused", func(st proto.HostStatus) bool {
			return st.Revision >= rev && st.LastError != nil
		})
		if st.InSync || st.LastError.Document != bad.docKey || !strings.Contains(st.LastError.Message, bad.message) {
			t.Errorf("%s: status %+v, error %+v; want document %s and %q", bad.name, st, st.LastError, bad.docKey, bad.message)
		}
		if len(st.Applied) != 1 || st.Applied[0] != (proto.RuleSetRef{Name: "edge", Version: 2}) {
			t.Errorf("%s: applied %v, want edge@2 still", bad.name, st.Applied)
		}
		if got := f.applied(); fmt.Sprint(got) != fmt.Sprint(good) {
			t.Errorf("%s: maps changed to %v, want %v", bad.name, got, good)
		}
	}

	// The missing version appears: the agent applies it without any
	// change to the desired state (it watches the versions it names).
	f.desire(proto.RuleSetRef{Name: "edge", Version: 9})
	f.waitStatus("edge@9 refused", func(st proto.HostStatus) bool { return st.LastError != nil && st.LastError.Version == 9 })
	f.putRuleSet("edge", 9, 9999)
	f.waitStatus("edge@9 applied", applied(proto.RuleSetRef{Name: "edge", Version: 9}))
	if got := f.applied(); got[0] != "edge:9999" {
		t.Fatalf("maps enforce %v, want edge:9999", got)
	}
}

func TestAgentRestartAdoptsAndAppliesNothingNew(t *testing.T) {
	f := newFixture(t)
	f.putRuleSet("edge", 1, 22)
	f.desire(proto.RuleSetRef{Name: "edge", Version: 1})
	_, stop := f.start()
	f.waitStatus("edge@1 applied", applied(proto.RuleSetRef{Name: "edge", Version: 1}))
	before := f.applied()
	stop()
	// SIGTERM revoked the lease: the status is gone at once, the maps stay.
	if _, found := f.status(); found {
		t.Fatal("status still present after the agent stopped")
	}
	if got := f.applied(); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Fatalf("maps changed on stop: %v, want %v", got, before)
	}

	f.start()
	st := f.waitStatus("edge@1 adopted", applied(proto.RuleSetRef{Name: "edge", Version: 1}))
	if st.Interfaces[0].Writes != 0 {
		t.Fatalf("restarted agent wrote %d map entries for an unchanged rule set, want 0", st.Interfaces[0].Writes)
	}
}

func TestAgentWatchResyncsAfterCompaction(t *testing.T) {
	f := newFixture(t)
	f.putRuleSet("edge", 1, 22)
	f.desire(proto.RuleSetRef{Name: "edge", Version: 1})
	a, _ := f.start()
	f.waitStatus("edge@1 applied", applied(proto.RuleSetRef{Name: "edge", Version: 1}))

	// A watch from a compacted revision fails with ErrCompacted, which the
	// sync loop answers with a fresh read (it is what a long cut-off from
	// etcd ends with).
	for range 5 {
		f.put("/unrelated", "x")
	}
	rev := f.put("/unrelated", "y")
	if _, err := f.cli.Compact(context.Background(), rev); err != nil {
		t.Fatal(err)
	}
	probe := &Agent{etcd: etcdstore.New(f.cli, f.keys), keys: f.keys, cfg: a.cfg, log: a.log, metrics: newMetrics()}
	probe.cache.rev = 1
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := probe.watch(ctx); !errors.Is(err, etcdstore.ErrCompacted) {
		t.Fatalf("watch from a compacted revision: %v, want ErrCompacted", err)
	}

	// The running agent still follows changes after the compaction.
	f.putRuleSet("edge", 2, 2222)
	f.desire(proto.RuleSetRef{Name: "edge", Version: 2})
	f.waitStatus("edge@2 applied", applied(proto.RuleSetRef{Name: "edge", Version: 2}))
}

func TestAgentTelemetryAndLeaseExpiry(t *testing.T) {
	f := newFixture(t)
	f.putRuleSet("edge", 1, 22)
	f.desire(proto.RuleSetRef{Name: "edge", Version: 1})
	f.start()
	f.waitStatus("edge@1 applied", applied(proto.RuleSetRef{Name: "edge", Version: 1}))
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := f.cli.Get(context.Background(), f.keys.HostTelemetry(f.host))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 1 {
			if resp.Kvs[0].Lease == 0 {
				t.Fatal("telemetry written without a lease")
			}
			var tm proto.HostTelemetry
			if err := json.Unmarshal(resp.Kvs[0].Value, &tm); err != nil {
				t.Fatal(err)
			}
			// The one rule never matched (no packets on lo): counted, not listed.
			if len(tm.Interfaces) == 1 && len(tm.Interfaces[0].Rules) == 0 && tm.Interfaces[0].RulesOmitted == 1 &&
				len(tm.Interfaces[0].Actions) == 9 {
				// The status shares the lease: revoking it removes both.
				sresp, err := f.cli.Get(context.Background(), f.keys.HostStatus(f.host))
				if err != nil || len(sresp.Kvs) != 1 || sresp.Kvs[0].Lease != resp.Kvs[0].Lease {
					t.Fatalf("status lease %v, telemetry lease %x", sresp.Kvs, resp.Kvs[0].Lease)
				}
				if _, err := f.cli.Revoke(context.Background(), clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
					t.Fatal(err)
				}
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no telemetry with 9 outcomes and 1 rule omitted: %v", resp.Kvs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The lease is gone (as if it expired): the agent registers again and
	// rewrites its status under a new lease.
	f.waitStatus("status written again", func(st proto.HostStatus) bool { return st.InSync })
}

func TestAgentServesMetrics(t *testing.T) {
	f := newFixture(t)
	f.putRuleSet("edge", 1, 22)
	rev := f.desire(proto.RuleSetRef{Name: "edge", Version: 1})
	addr := strings.TrimPrefix(etcdtest.FreeURLs(t, 1)[0], "http://")
	f.startWithMetrics(addr)
	f.waitStatus("edge@1 applied", applied(proto.RuleSetRef{Name: "edge", Version: 1}))
	want := []string{
		"xdpfw_agent_in_sync 1",
		"xdpfw_agent_etcd_connected 1",
		"xdpfw_agent_apply_duration_seconds_count 1",
		`xdpfw_rule_packets_total{action="drop",interface="lo",rule="ssh",ruleset="edge"} 0`,
		`xdpfw_action_packets_total{interface="lo",outcome="parse-error"} 0`,
		"xdpfw_agent_watch_restarts_total 0",
	}
	waitMetricsFunc(t, addr, func(body string) string {
		for _, w := range want {
			if !strings.Contains(body, w+"\n") {
				return w
			}
		}
		// The revision the agent reports is the one its read saw: the
		// desired state's or a later one (its own status writes come
		// first sometimes).
		applied := int64(0)
		for _, line := range strings.Split(body, "\n") {
			if v, ok := strings.CutPrefix(line, "xdpfw_agent_applied_revision "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				applied = int64(f)
			}
		}
		if applied < rev {
			return fmt.Sprintf("xdpfw_agent_applied_revision >= %d (got %d)", rev, applied)
		}
		return ""
	})
}

// An interface's sampling, bucket map and sketch sizes come from the
// agent's configuration; rate-limit rules are served with their over-limit count.
func TestAgentConfiguresSamplingAndServesRateLimits(t *testing.T) {
	f := newFixture(t)
	f.iface = InterfaceConfig{Name: "lo", SourceBuckets: 1024, SourceSketchLines: 512, Sampling: &bpf.SamplingConfig{Every: 10, MaxPerSecond: 50}}
	f.put(f.keys.RuleSetVersion("edge", 1), `{"apiVersion":"xdpfw/v1","kind":"RuleSet","name":"edge","mode":"deny","rules":[
 {"id":"dns","action":"rate-limit","protocol":"udp","dstPorts":["53"],"rateLimit":{"pps":100,"per":"source/24"}}]}`)
	f.desire(proto.RuleSetRef{Name: "edge", Version: 1})
	addr := strings.TrimPrefix(etcdtest.FreeURLs(t, 1)[0], "http://")
	f.startWithMetrics(addr)
	f.waitStatus("edge@1 applied", applied(proto.RuleSetRef{Name: "edge", Version: 1}))

	fw, err := bpf.OpenPinned(bpf.Options{PinPath: f.pinPath, Interface: "lo"})
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	st, err := fw.Sampling()
	if err != nil {
		t.Fatal(err)
	}
	if st.Every != 10 || st.MaxPerSecond != 50 || st.Off || fw.SourceBuckets() != 1024 || fw.SourceSketchLines() != 512 {
		t.Fatalf("sampling %+v, %d source buckets, %d sketch lines; want 1 in 10, 50/s, 1024 and 512",
			st, fw.SourceBuckets(), fw.SourceSketchLines())
	}
	waitMetrics(t, addr,
		`xdpfw_rule_limited_packets_total{interface="lo",rule="dns",ruleset="edge"} 0`,
		`xdpfw_rule_packets_total{action="rate-limit",interface="lo",rule="dns",ruleset="edge"} 0`)
}

// waitMetrics waits until /metrics at addr has every line of want.
func waitMetrics(t *testing.T, addr string, want ...string) {
	t.Helper()
	waitMetricsFunc(t, addr, func(body string) string {
		for _, w := range want {
			if !strings.Contains(body, w+"\n") {
				return w
			}
		}
		return ""
	})
}

// waitMetricsFunc waits until missing finds nothing missing from /metrics.
func waitMetricsFunc(t *testing.T, addr string, missing func(body string) string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := missing(string(body))
		if m == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks %q:\n%s", m, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A big set arrives as chunks (written by the store): the agent fetches
// them, checks them against their hashes, and enforces the whole set.
func TestAgentFetchesChunkedSets(t *testing.T) {
	f := newFixture(t)
	var prefixes []string
	for i := range 20000 {
		prefixes = append(prefixes, fmt.Sprintf("10.%d.%d.0/24", i>>8, i&255))
	}
	rs := proto.RuleSet{APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "edge", Mode: proto.ModeDeny,
		Sets:  map[string]proto.PrefixSet{"big": {Prefixes: prefixes}},
		Rules: []proto.Rule{{ID: "ssh", Action: proto.ActionDrop, Protocol: proto.ProtoTCP, DstPorts: []proto.PortSpec{"22"}, Src: []string{"set:big"}}}}
	st := etcdstore.New(f.cli, f.keys)
	if _, _, err := st.PutRuleSet(context.Background(), rs, 0); err != nil {
		t.Fatal(err)
	}
	raw, err := f.cli.Get(context.Background(), f.keys.RuleSetVersion("edge", 1))
	if err != nil || !strings.Contains(string(raw.Kvs[0].Value), `"chunks"`) {
		t.Fatalf("the version is not stored as chunks: %v", err)
	}
	f.desire(proto.RuleSetRef{Name: "edge", Version: 1})
	f.start()
	f.waitStatus("edge@1 applied", applied(proto.RuleSetRef{Name: "edge", Version: 1}))
	fw, err := bpf.OpenPinned(bpf.Options{PinPath: f.pinPath, Interface: "lo"})
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	sets, _, err := fw.AppliedRuleSets()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(sets[0].Sets["big"].Prefixes); n != 20000 {
		t.Fatalf("the maps enforce a set of %d prefixes, want 20,000", n)
	}
	state, err := fw.State()
	if err != nil {
		t.Fatal(err)
	}
	if state.Tables["src4"] != "range" {
		t.Fatalf("src4 table %q, want range for 20,000 prefixes", state.Tables["src4"])
	}

	// A chunk that does not match its hash is refused, named in the status.
	bad := rs
	bad.Sets = map[string]proto.PrefixSet{"big": {Prefixes: append(prefixes[:10000:10000], "192.0.2.0/24")}}
	stored, chunks, err := bad.ChunkSets()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		f.put(f.keys.Chunk(c.Hash), string(c.Data)+"tampered\n")
	}
	doc, _ := json.Marshal(stored)
	f.put(f.keys.RuleSetVersion("edge", 2), string(doc))
	rev := f.desire(proto.RuleSetRef{Name: "edge", Version: 2})
	got := f.waitStatus("edge@2 refused", func(st proto.HostStatus) bool { return st.Revision >= rev && st.LastError != nil })
	if !strings.Contains(got.LastError.Message, "chunk") || got.Applied[0].Version != 1 {
		t.Fatalf("status %+v, error %+v", got, got.LastError)
	}
}
