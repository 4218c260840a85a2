package bpf

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/xdpfw/xdpfw/bpf/internal/packet"
	"github.com/xdpfw/xdpfw/proto"
)

// clockFirewall is a firewall whose program reads the test's clock.
type clockFirewall struct {
	*Firewall
	t   *testing.T
	now time.Duration // since an arbitrary start
}

func openClockFirewall(t *testing.T) *clockFirewall {
	fw := openTestFirewallWith(t, Options{testClock: true})
	c := &clockFirewall{Firewall: fw, t: t, now: time.Hour} // far from 0
	c.advance(0)
	return c
}

func (c *clockFirewall) advance(d time.Duration) {
	c.t.Helper()
	c.now += d
	if err := c.objs.FwClockNs.Set(uint64(c.now)); err != nil {
		c.t.Fatalf("set clock: %v", err)
	}
}

// verdicts runs n frames and returns how many passed.
func (c *clockFirewall) passes(frame []byte, n int) int {
	c.t.Helper()
	passed := 0
	for range n {
		if run(c.t, c.Firewall, frame) == xdpPass {
			passed++
		}
	}
	return passed
}

func limitRules(limit string) string {
	return fmt.Sprintf(`
apiVersion: xdpfw/v1
kind: RuleSet
name: rl
mode: deny
rules:
  - id: dns
    action: rate-limit
    protocol: udp
    dstPorts: ["53"]
    rateLimit: %s
`, limit)
}

func ruleCounters(t *testing.T, fw *Firewall, id string) (matched, limited uint64) {
	t.Helper()
	st, err := fw.Stats()
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	for _, r := range st.Rules {
		if r.ID == id {
			if r.Action != "rate-limit" {
				t.Fatalf("rule %s is not a rate-limit rule: %+v", id, r)
			}
			return r.Packets, r.Limited.Packets
		}
	}
	t.Fatalf("no rule %s in %+v", id, st.Rules)
	return 0, 0
}

func TestRateLimitPerRuleRefillAndBurst(t *testing.T) {
	fw := openClockFirewall(t)
	mustApply(t, fw.Firewall, mustDecode(t, limitRules("{pps: 10, burst: 3}")))
	dns := packet.UDP("192.0.2.1", "198.51.100.1", 4000, 53).Bytes()
	other := packet.UDP("192.0.2.1", "198.51.100.1", 4000, 54).Bytes()

	// A full bucket: the burst passes back to back, then nothing.
	if got := fw.passes(dns, 5); got != 3 {
		t.Fatalf("at start: %d of 5 passed, want the burst of 3", got)
	}
	// Packets the rule does not match are not limited.
	if got := fw.passes(other, 5); got != 5 {
		t.Fatalf("other traffic: %d of 5 passed, want 5", got)
	}
	// 10 pps refills one token every 100 ms, not before.
	fw.advance(99 * time.Millisecond)
	if got := fw.passes(dns, 1); got != 0 {
		t.Fatalf("after 99 ms: a packet passed, want none")
	}
	fw.advance(time.Millisecond)
	if got := fw.passes(dns, 3); got != 1 {
		t.Fatalf("after 100 ms: %d of 3 passed, want 1", got)
	}
	// An idle bucket fills up to the burst and no further.
	fw.advance(10 * time.Second)
	if got := fw.passes(dns, 10); got != 3 {
		t.Fatalf("after 10 s idle: %d of 10 passed, want the burst of 3", got)
	}
	// Over a steady second, the rate.
	passed := 0
	for range 100 {
		fw.advance(10 * time.Millisecond)
		passed += fw.passes(dns, 1)
	}
	if passed != 10 {
		t.Fatalf("one packet every 10 ms for 1 s: %d passed, want 10", passed)
	}

	matched, limited := ruleCounters(t, fw.Firewall, "dns")
	if matched != 5+1+3+10+100 || limited != matched-(3+1+3+10) {
		t.Fatalf("rule counters: matched %d, limited %d; want 119 and 102", matched, limited)
	}
	st, _ := fw.Stats()
	if got := st.Actions["rate-limited"].Packets; got != limited {
		t.Fatalf("action rate-limited = %d, want %d", got, limited)
	}
}

func TestRateLimitPerSourceBuckets(t *testing.T) {
	fw := openClockFirewall(t)
	mustApply(t, fw.Firewall, mustDecode(t, limitRules("{pps: 1, burst: 2, per: source/24/64}")))
	frame := func(src string) []byte {
		dst := "198.51.100.1"
		if src[0] == '2' && src[1] == '0' && src[4] == ':' {
			dst = "2001:db8::53"
		}
		return packet.UDP(src, dst, 4000, 53).Bytes()
	}
	// Each /24 and each /64 has its own bucket of 2.
	for _, tc := range []struct {
		src  string
		want int
	}{
		{"192.0.2.1", 2},
		{"192.0.2.200", 0}, // same /24: the bucket is spent
		{"192.0.3.1", 2},   // another /24
		{"2001:db8:0:1::1", 2},
		{"2001:db8:0:1::ffff", 0}, // same /64
		{"2001:db8:0:2::1", 2},
	} {
		if got := fw.passes(frame(tc.src), 3); got != tc.want {
			t.Errorf("from %s: %d of 3 passed, want %d", tc.src, got, tc.want)
		}
	}
	fw.advance(time.Second)
	if got := fw.passes(frame("192.0.2.7"), 3); got != 1 {
		t.Errorf("after 1 s, from 192.0.2.7: %d of 3 passed, want 1", got)
	}
}

func TestRateLimitBytes(t *testing.T) {
	fw := openClockFirewall(t)
	// 80 kbit/s is 10,000 bytes a second; a burst of 1,000 bytes.
	mustApply(t, fw.Firewall, mustDecode(t, limitRules("{bps: 80000, burstBytes: 1000}")))
	f := packet.UDP("192.0.2.1", "198.51.100.1", 4000, 53)
	f.Payload = make([]byte, 100-42) // a 100-byte frame
	frame := f.Bytes()
	if len(frame) != 100 {
		t.Fatalf("frame is %d bytes, want 100", len(frame))
	}
	// A packet conforms while the backlog is within the burst: 1,000
	// bytes of backlog, and the packet that reaches it.
	if got := fw.passes(frame, 20); got != 11 {
		t.Fatalf("at start: %d of 20 passed, want 11", got)
	}
	// 10 ms is 100 bytes: one frame.
	fw.advance(10 * time.Millisecond)
	if got := fw.passes(frame, 5); got != 1 {
		t.Fatalf("after 10 ms: %d of 5 passed, want 1", got)
	}
}

func TestRateLimitBucketsSurviveSwapsAndResetOnChange(t *testing.T) {
	fw := openClockFirewall(t)
	dns := packet.UDP("192.0.2.1", "198.51.100.1", 4000, 53).Bytes()
	mustApply(t, fw.Firewall, mustDecode(t, limitRules("{pps: 1, burst: 2}")))
	if got := fw.passes(dns, 3); got != 2 {
		t.Fatalf("at start: %d of 3 passed, want 2", got)
	}

	// Another rule added before it: a swap that keeps the rule keeps its
	// spent bucket.
	kept := limitRules("{pps: 1, burst: 2}") + `
  - id: telnet
    action: drop
    protocol: tcp
    dstPorts: ["23"]
`
	mustApply(t, fw.Firewall, mustDecode(t, kept))
	if got := fw.passes(dns, 3); got != 0 {
		t.Fatalf("after a swap keeping the rule: %d of 3 passed, want 0 (bucket kept)", got)
	}

	// The limit changed: a new, full bucket.
	mustApply(t, fw.Firewall, mustDecode(t, limitRules("{pps: 1, burst: 4}")))
	if got := fw.passes(dns, 5); got != 4 {
		t.Fatalf("after the limit changed: %d of 5 passed, want the new burst of 4", got)
	}

	// Per source too: the same limit keeps the source's bucket.
	mustApply(t, fw.Firewall, mustDecode(t, limitRules("{pps: 1, burst: 2, per: source}")))
	if got := fw.passes(dns, 3); got != 2 {
		t.Fatalf("per source, at start: %d of 3 passed, want 2", got)
	}
	mustApply(t, fw.Firewall, mustDecode(t, kept[:len(kept)-1]+"\n"))
	mustApply(t, fw.Firewall, mustDecode(t, limitRules("{pps: 1, burst: 2, per: source}")+`
  - id: telnet
    action: drop
    protocol: tcp
    dstPorts: ["23"]
`))
	if got := fw.passes(dns, 3); got != 0 {
		t.Fatalf("per source, after a swap keeping the rule: %d of 3 passed, want 0", got)
	}
}

func TestRateLimitWithinLimitGoesOnAndDryRunCounts(t *testing.T) {
	fw := openClockFirewall(t)
	mustApply(t, fw.Firewall, mustDecode(t, `
apiVersion: xdpfw/v1
kind: RuleSet
name: staged
priority: 1
mode: deny
enforcement: dry-run
rules:
  - id: dns-limit
    action: rate-limit
    protocol: udp
    dstPorts: ["53"]
    rateLimit: {pps: 1, burst: 1}
---
apiVersion: xdpfw/v1
kind: RuleSet
name: edge
priority: 2
mode: allow
rules:
  - id: dns-limit
    action: rate-limit
    protocol: udp
    dstPorts: ["53"]
    rateLimit: {pps: 1, burst: 2, withinLimit: next}
  - id: dns-servers
    action: pass
    protocol: udp
    dst: [198.51.100.0/24]
`))
	toServer := packet.UDP("192.0.2.1", "198.51.100.1", 4000, 53).Bytes()
	elsewhere := packet.UDP("192.0.2.1", "203.0.113.1", 4000, 53).Bytes()

	before := snapshot(t, fw.Firewall)
	// Within edge's limit, packets go on: to a server they pass, elsewhere
	// the allow set's end drops them. Over it, the limit drops them.
	if v := run(t, fw.Firewall, toServer); v != xdpPass {
		t.Fatalf("first packet to a server: verdict %d, want pass", v)
	}
	if v := run(t, fw.Firewall, elsewhere); v != xdpDrop {
		t.Fatalf("packet elsewhere: verdict %d, want drop", v)
	}
	if v := run(t, fw.Firewall, toServer); v != xdpDrop {
		t.Fatalf("third packet to a server: verdict %d, want drop (over the limit)", v)
	}
	want := counters{
		"staged/dns-limit": 3, "edge/dns-limit": 3, "edge/dns-servers": 1, "edge/(implicit-drop)": 1,
		"action:pass-rule": 1, "action:drop-rule": 1, "action:rate-limited": 1,
		// The dry-run limit (burst 1) would have dropped the second and
		// third packet; it changed no verdict.
		"action:would-drop": 2,
	}
	if got := delta(before, snapshot(t, fw.Firewall)); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("counters moved:\n got %v\nwant %v", got, want)
	}
	if _, limited := ruleCounters(t, fw.Firewall, "dns-limit"); limited != 2 {
		t.Fatalf("staged/dns-limit limited = %d, want 2", limited)
	}
}

// The kernel value of a limit is computed once, by Compile: the scope is
// parsed there (a bad one is an error, not a rule-wide limit) and apply
// writes what Compile computed.
func TestKernelLimitAtCompile(t *testing.T) {
	if _, err := kernelLimit("edge/r", &proto.RateLimit{PPS: 10, Per: "source/200"}); err == nil {
		t.Fatal("kernelLimit accepted per source/200")
	}
	l, err := kernelLimit("edge/r", &proto.RateLimit{PPS: 10, Per: "source/24"})
	if err != nil || l.Per != uint8(firewallFwLimitPerFW_PER_SOURCE) || l.Prefix4 != 24 {
		t.Fatalf("per source/24: %+v, %v", l, err)
	}
	whole, err := kernelLimit("edge/r", &proto.RateLimit{PPS: 10})
	if err != nil || whole.Per == l.Per || whole.Id == l.Id {
		t.Fatalf("rule-wide limit %+v (%v) against per-source %+v: want a different scope and identity", whole, err, l)
	}
	rs := proto.RuleSet{APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "edge", Mode: proto.ModeDeny,
		Rules: []proto.Rule{{ID: "r", Action: proto.ActionRateLimit, Protocol: proto.ProtoUDP,
			RateLimit: &proto.RateLimit{PPS: 10, Per: "source/24"}}}}
	c, err := Compile([]proto.RuleSet{rs}, "")
	if err != nil {
		t.Fatal(err)
	}
	if c.Rules[0].limit != l {
		t.Fatalf("compiled limit %+v, want %+v", c.Rules[0].limit, l)
	}
	rs.Rules[0].RateLimit.Per = "source/200"
	if _, err := Compile([]proto.RuleSet{rs}, ""); err == nil || !strings.Contains(err.Error(), "source/200") {
		t.Fatalf("Compile of a bad scope: %v, want an error naming it", err)
	}
}
