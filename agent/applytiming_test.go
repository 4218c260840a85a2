package agent

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// applyPhases are the phases an apply reports, in the log line "applied
// desired state" (as durations under these keys) and in
// xdpfw_agent_apply_phase_duration_seconds (under the label phase).
var applyPhases = []string{"fetch", "decode", "compile", "write", "settle", "release"}

// Each apply reports how long its phases took: a first apply of a chunked
// set and a one-prefix change of it, which fetches one document and a new
// chunk or two.
func TestAgentReportsApplyPhases(t *testing.T) {
	f := newFixture(t)
	prefixes := make([]string, 0, 20001)
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
	f.desire(proto.RuleSetRef{Name: "edge", Version: 1})
	core, logs := observer.New(zapcore.InfoLevel)
	a, stop := f.startWith("", func(a *Agent) { a.log = zap.New(core) })
	f.waitStatus("edge@1 applied", applied(proto.RuleSetRef{Name: "edge", Version: 1}))

	rs.Sets = map[string]proto.PrefixSet{"big": {Prefixes: append(prefixes, "192.0.2.0/24")}}
	if _, _, err := st.PutRuleSet(context.Background(), rs, 1); err != nil {
		t.Fatal(err)
	}
	f.desire(proto.RuleSetRef{Name: "edge", Version: 2})
	f.waitStatus("edge@2 applied", applied(proto.RuleSetRef{Name: "edge", Version: 2}))

	entries := waitLogged(t, logs, "applied desired state", 2)
	for i, e := range entries {
		fields := e.ContextMap()
		var sum time.Duration
		for _, p := range applyPhases {
			d, ok := fields[p].(time.Duration)
			if !ok {
				t.Fatalf("apply %d: no duration %q in %v", i+1, p, fields)
			}
			// Every phase does work here but the release (a set of
			// 20,000 prefixes is not big enough to give memory back).
			if d <= 0 && p != "release" {
				t.Errorf("apply %d: %s took %v", i+1, p, d)
			}
			sum += d
		}
		if total, ok := fields["total"].(time.Duration); !ok || total < sum {
			t.Errorf("apply %d: total %v, the phases add up to %v", i+1, fields["total"], sum)
		}
	}
	// The second apply says what an incremental update would be given:
	// one prefix added to one set (the first had nothing to compare to).
	for i, want := range []map[string]any{
		{"incremental": false, "prefixesAdded": int64(0), "prefixesRemoved": int64(0)},
		{"incremental": true, "prefixesAdded": int64(1), "prefixesRemoved": int64(0)},
	} {
		fields := entries[i].ContextMap()
		for k, v := range want {
			if fields[k] != v {
				t.Errorf("apply %d: %s = %v, want %v", i+1, k, fields[k], v)
			}
		}
	}
	// The first version's chunks that the second does not name are gone
	// from the cache (they were kept for the delta until the apply).
	stop() // the cache is the sync loop's
	if n := a.cache.chunks.Len(); n != len(a.cache.appliedDocs["edge"].Sets["big"].Chunks) {
		t.Errorf("%d chunks cached, the applied version names %d", n, len(a.cache.appliedDocs["edge"].Sets["big"].Chunks))
	}

	// The metric has one sample per phase and apply.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(a.metrics.collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "xdpfw_agent_apply_phase_duration_seconds":
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "phase" {
						counts[l.GetValue()] = m.GetHistogram().GetSampleCount()
					}
				}
			}
		case "xdpfw_agent_apply_duration_seconds":
			counts["total"] = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	for _, p := range append(applyPhases, "total") {
		if counts[p] != 2 {
			t.Errorf("phase %s: %d samples, want 2 (%v)", p, counts[p], counts)
		}
	}
}
