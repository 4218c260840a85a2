package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/xdpfw/xdpfw/bpf"
	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// Changes to the members of a big chunked set are applied as updates of
// what was compiled before (no chunk resolved, no set compiled whole), and
// every one leaves the interface with exactly what a whole compile of the
// same rule set gives (its digest names the tables' content); a change of
// a rule compiles whole again.
func TestAgentAppliesSetChangesAsUpdates(t *testing.T) {
	f := newFixture(t)
	base := make([]string, 0, 20000)
	for i := range 20000 {
		base = append(base, fmt.Sprintf("10.%d.%d.0/24", i>>8, i&255))
	}
	rs := proto.RuleSet{APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "edge", Mode: proto.ModeDeny,
		Rules: []proto.Rule{{ID: "ssh", Action: proto.ActionDrop, Protocol: proto.ProtoTCP, DstPorts: []proto.PortSpec{"22"}, Src: []string{"set:big"}}}}
	versions := [][]string{
		base,
		append(slices.Clone(base), "198.18.7.0/24"),                  // one added
		slices.Concat(base[:5], base[6:], []string{"198.18.7.0/24"}), // one removed
		append(slices.Clone(base), "198.18.0.0/15", "198.18.7.0/24"), // one back, one shorter than /16
		base, // both gone
	}
	st := etcdstore.New(f.cli, f.keys)
	core, logs := observer.New(zapcore.InfoLevel)
	_, stop := f.startWith("", func(a *Agent) { a.log = zap.New(core) })
	defer stop()
	for i, members := range versions {
		rs.Sets = map[string]proto.PrefixSet{"big": {Prefixes: members}}
		if i == len(versions)-1 {
			rs.Rules[0].DstPorts = []proto.PortSpec{"22", "2222"} // a rule change: whole
		}
		if _, _, err := st.PutRuleSet(context.Background(), rs, int64(i)); err != nil {
			t.Fatal(err)
		}
		ref := proto.RuleSetRef{Name: "edge", Version: int64(i + 1)}
		f.desire(ref)
		status := f.waitStatus(ref.String()+" applied", applied(ref))
		whole, err := bpf.Compile([]proto.RuleSet{rs}, "lo")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := status.Interfaces[0].Digest, hex.EncodeToString(whole.Digest[:]); got != want {
			t.Fatalf("%s: interface digest %s, a whole compile gives %s", ref, got, want)
		}
		entries := waitLogged(t, logs, "applied desired state", i+1)
		fields := entries[i].ContextMap()
		want := i > 0 && i < len(versions)-1
		if fields["incremental"] != want {
			t.Errorf("%s: incremental %v, want %v", ref, fields["incremental"], want)
		}
	}
}

// waitLogged waits for n entries of a log message and returns them: the
// apply's log line comes after its status (and after the standby write of
// a whole compile).
func waitLogged(t *testing.T, logs *observer.ObservedLogs, msg string, n int) []observer.LoggedEntry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for logs.FilterMessage(msg).Len() < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	entries := logs.FilterMessage(msg).All()
	if len(entries) != n {
		t.Fatalf("%d entries %q logged, want %d", len(entries), msg, n)
	}
	return entries
}

// A chunked set whose chunks repeat a prefix cannot be updated from chunk
// deltas (removing one copy would remove the prefix): the distinct count
// after the update differs from the document's, and the change compiles
// whole.
func TestCheckSetSizesSendsRepeatsToAWholeCompile(t *testing.T) {
	rs := proto.RuleSet{APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "edge", Mode: proto.ModeDeny,
		Sets:  map[string]proto.PrefixSet{"big": {Prefixes: []string{"198.18.0.0/24", "198.18.1.0/24"}}},
		Rules: []proto.Rule{{ID: "b", Action: proto.ActionDrop, Src: []string{"set:big"}}}}
	c, err := bpf.Compile([]proto.RuleSet{rs}, "lo")
	if err != nil {
		t.Fatal(err)
	}
	stored := rs
	stored.Sets = map[string]proto.PrefixSet{"big": {Chunks: []string{"a", "b"}, Count: 2}}
	deltas := []setDelta{{ruleSet: "edge", set: "big"}}
	if err := checkSetSizes(c, []proto.RuleSet{stored}, deltas); err != nil {
		t.Fatalf("matching count: %v", err)
	}
	stored.Sets = map[string]proto.PrefixSet{"big": {Chunks: []string{"a", "b"}, Count: 3}}
	if err := checkSetSizes(c, []proto.RuleSet{stored}, deltas); !errors.Is(err, bpf.ErrNeedsCompile) {
		t.Fatalf("a repeated prefix: %v, want ErrNeedsCompile", err)
	}
}

// A new version of a rule set the host enforces is decoded when the watch
// brings it, so that its rollout reads no document from etcd; versions of
// rule sets the host does not enforce are left alone, and a version
// deleted before its rollout is not applied from what was decoded.
func TestAgentDecodesTheNextVersionAhead(t *testing.T) {
	f := newFixture(t)
	addr := strings.TrimPrefix(etcdtest.FreeURLs(t, 1)[0], "http://")
	_, stop := f.startWithMetrics(addr)
	defer stop()
	st := etcdstore.New(f.cli, f.keys)
	edge := func(port string) proto.RuleSet {
		return proto.RuleSet{APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "edge", Mode: proto.ModeDeny,
			Rules: []proto.Rule{{ID: "r", Action: proto.ActionDrop, Protocol: proto.ProtoTCP, DstPorts: []proto.PortSpec{proto.PortSpec(port)}}}}
	}
	put := func(rs proto.RuleSet, prev int64) {
		t.Helper()
		if _, _, err := st.PutRuleSet(context.Background(), rs, prev); err != nil {
			t.Fatal(err)
		}
	}
	v1 := proto.RuleSetRef{Name: "edge", Version: 1}
	put(edge("22"), 0)
	f.desire(v1)
	f.waitStatus("edge@1 applied", applied(v1))
	var reads float64
	waitMetricsFunc(t, addr, func(body string) string {
		if reads = metricValue(body, "xdpfw_agent_document_reads_total"); reads < 1 {
			return "xdpfw_agent_document_reads_total >= 1"
		}
		return ""
	})

	other := edge("80")
	other.Name = "other"
	put(other, 0)
	put(edge("23"), 1)
	waitMetrics(t, addr, "xdpfw_agent_documents_ahead_total 1")
	v2 := proto.RuleSetRef{Name: "edge", Version: 2}
	f.desire(v2)
	f.waitStatus("edge@2 applied", applied(v2))
	if got := f.applied(); got[0] != "edge:23" {
		t.Fatalf("maps enforce %v after edge@2, want edge:23", got)
	}
	waitMetrics(t, addr, fmt.Sprintf("xdpfw_agent_document_reads_total %v", reads),
		"xdpfw_agent_documents_ahead_total 1")

	// Version 3 is written, then deleted before its rollout.
	put(edge("24"), 2)
	waitMetrics(t, addr, "xdpfw_agent_documents_ahead_total 2")
	key := f.keys.RuleSetVersion("edge", 3)
	if _, err := f.cli.Delete(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	rev := f.desire(proto.RuleSetRef{Name: "edge", Version: 3})
	got := f.waitStatus("edge@3 refused", func(st proto.HostStatus) bool { return st.Revision >= rev && st.LastError != nil })
	if got.LastError.Document != key || !strings.Contains(got.LastError.Message, "not found") {
		t.Fatalf("status error %+v, want %s not found", got.LastError, key)
	}
	if got := f.applied(); got[0] != "edge:23" {
		t.Fatalf("maps enforce %v after the deleted edge@3, want edge:23 still", got)
	}
}
