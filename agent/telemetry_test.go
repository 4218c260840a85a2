package agent

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/xdpfw/xdpfw/bpf"
	"github.com/xdpfw/xdpfw/proto"
)

// fullSample is an interface with n busy rules of the longest names, all
// rate limits (whose telemetry is the largest: it has the over-limit rate).
func fullSample(at time.Time, n int, packets uint64) *sample {
	st := &bpf.Stats{Actions: map[string]bpf.Counter{}}
	for _, a := range []string{"pass-rule", "drop-rule", "pass-default", "parse-error", "non-ip", "would-drop", "fragment", "no-policy", "rate-limited"} {
		st.Actions[a] = bpf.Counter{Packets: packets * 1000, Bytes: packets * 1_000_000}
	}
	for i := range n {
		st.Rules = append(st.Rules, bpf.RuleStats{
			Index: i, RuleSet: strings.Repeat("r", 63), ID: fmt.Sprintf("%s-%05d", strings.Repeat("x", 57), i), Action: "rate-limit",
			Counter: bpf.Counter{Packets: packets * uint64(i+1), Bytes: packets * uint64(i+1) * 1500},
			Limited: bpf.Counter{Packets: packets * uint64(i), Bytes: packets * uint64(i) * 1500},
		})
	}
	return &sample{at: at, ifaces: []ifaceSample{{name: "eth0", stats: st}}}
}

// The telemetry budget (docs/architecture.md, "Telemetry"): a host's document stays a few
// KB whatever its rule set, so 10,000 hosts writing it fit in etcd.
func TestTelemetryDocumentStaysSmall(t *testing.T) {
	t0 := time.Now()
	prev, cur := fullSample(t0, 4096, 1_000_000), fullSample(t0.Add(5*time.Second), 4096, 2_000_000)
	doc := telemetryDoc("host-with-a-long-name.example", prev, cur)
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 5<<10 {
		t.Fatalf("telemetry of 4,096 busy rules is %d bytes, want at most 5 KiB", len(data))
	}
	it := doc.Interfaces[0]
	// Names this long and over-limit rates leave room for fewer than
	// maxTelemetryRules: the busiest fill the budget.
	if len(it.Rules) < maxTelemetryRules/2 || len(it.Rules)+it.RulesOmitted != 4096 {
		t.Fatalf("%d rules, %d omitted", len(it.Rules), it.RulesOmitted)
	}
	// The busiest first: rule i moved (i+1) million packets in 5 s.
	if top := it.Rules[0]; top.ID != fmt.Sprintf("%s-%05d", strings.Repeat("x", 57), 4095) || top.PPS != 4096*1e6/5 {
		t.Fatalf("busiest rule %s at %.0f pps", top.ID, top.PPS)
	}
	if got := it.Actions["drop-rule"].PPS; got != 1e9/5 {
		t.Fatalf("drop-rule at %.0f pps, want %.0f", got, 1e9/5)
	}
	if l := it.Rules[0].Limited; l == nil || l.PPS != 4095*1e6/5 {
		t.Fatalf("busiest rule's over-limit rate: %+v, want %.0f pps", l, 4095*1e6/5)
	}
	t.Logf("4,096 busy rules: %d bytes, %d listed", len(data), len(it.Rules))

	// Short names: all of the busiest fit.
	short := fullSample(t0.Add(5*time.Second), 100, 2_000_000)
	for i := range short.ifaces[0].stats.Rules {
		short.ifaces[0].stats.Rules[i].RuleSet, short.ifaces[0].stats.Rules[i].ID = "edge", fmt.Sprintf("r%d", i)
	}
	if it := telemetryDoc("h", nil, short).Interfaces[0]; len(it.Rules) != maxTelemetryRules || it.RulesOmitted != 100-maxTelemetryRules {
		t.Fatalf("short names: %d rules listed, %d omitted; want %d and %d", len(it.Rules), it.RulesOmitted, maxTelemetryRules, 100-maxTelemetryRules)
	}

	// Rules that never matched are left out and counted.
	idle := fullSample(t0, 10, 0)
	doc = telemetryDoc("h", nil, idle)
	if it := doc.Interfaces[0]; len(it.Rules) != 0 || it.RulesOmitted != 10 {
		t.Fatalf("idle rules: %d listed, %d omitted; want 0 and 10", len(it.Rules), it.RulesOmitted)
	}
}

func TestRateOfACounterThatWentBack(t *testing.T) {
	r := rate(bpf.Counter{Packets: 100, Bytes: 1000}, bpf.Counter{Packets: 10, Bytes: 100}, 2)
	if r.PPS != 5 || r.BPS != 50 {
		t.Fatalf("rate after a reset: %+v, want 5 pps and 50 bps", r)
	}
}

func TestTopSourcesScaleSamplesToDrops(t *testing.T) {
	a, b, c, d := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8::1"),
		netip.MustParseAddr("198.51.100.3"), netip.MustParseAddr("198.51.100.4")
	// 100 samples of 10,000 drops: each sample stands for 100 drops.
	got := topSources(map[netip.Addr]uint64{a: 50, b: 30, c: 15, d: 5}, 10_000)
	want := []proto.SourceCount{{Src: "198.51.100.1", Packets: 5000}, {Src: "2001:db8::1", Packets: 3000}, {Src: "198.51.100.3", Packets: 1500}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("topSources = %v, want %v", got, want)
	}
	// Every drop sampled: the counts as they are.
	if got := topSources(map[netip.Addr]uint64{a: 2, b: 2}, 4); fmt.Sprint(got) != "[{198.51.100.1 2} {2001:db8::1 2}]" {
		t.Fatalf("all sampled: %v", got)
	}
	if got := topSources(nil, 100); got != nil {
		t.Fatalf("no samples: %v", got)
	}
	// Past maxTrackedSources a rule's new sources (a among them) are
	// counted, not listed.
	var dt dropTally
	for i := range maxTrackedSources + 100 {
		dt.add("edge/dns", netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
	}
	dt.add("edge/dns", a)
	dt.add("edge/dns", a)
	tally := dt.take()["edge/dns"]
	if len(tally) != maxTrackedSources+1 || tally[otherSources] != 102 || tally[a] != 0 {
		t.Fatalf("tally past the cap: %d entries, %d others, %d of a; want %d, 102, 0", len(tally), tally[otherSources], tally[a], maxTrackedSources+1)
	}
	// 4,198 samples for 41,980 drops: 10 each.
	if got := topSources(tally, 41_980); len(got) != maxTopSources || got[0].Src != "10.0.0.0" || got[0].Packets != 10 {
		t.Fatalf("top sources with others: %v", got)
	}
	if dt.take() != nil {
		t.Fatal("take did not start a new tally")
	}

	// In the document, under the rule that dropped them.
	t0 := time.Now()
	prev, cur := fullSample(t0, 1, 0), fullSample(t0.Add(time.Second), 1, 1000)
	cur.ifaces[0].stats.Rules[0].RuleSet, cur.ifaces[0].stats.Rules[0].ID = "edge", "dns"
	prev.ifaces[0].stats.Rules[0].RuleSet, prev.ifaces[0].stats.Rules[0].ID = "edge", "dns"
	cur.ifaces[0].dropped = map[string]map[netip.Addr]uint64{"edge/dns": {a: 3, b: 1}}
	rt := telemetryDoc("h", prev, cur).Interfaces[0].Rules[0]
	// A rate-limit rule's drops are its over-limit packets: 0 in the
	// first sample (i = 0), so the samples count as they are.
	if fmt.Sprint(rt.TopSources) != "[{198.51.100.1 3} {2001:db8::1 1}]" {
		t.Fatalf("rule %s: top sources %v", rt.ID, rt.TopSources)
	}
}
