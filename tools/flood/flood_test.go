package flood

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// newPair makes the namespaces and veth pair, removed when the test ends
// (after everything registered later: cleanups run last first).
func newPair(t testing.TB) *Pair {
	t.Helper()
	if err := CheckMachine(); err != nil {
		t.Fatal(err)
	}
	p, err := NewPair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

// senderCPU is the CPU trafgen floods from: FLOOD_CPU, or the last one.
func senderCPU(t testing.TB) int {
	t.Helper()
	if v := os.Getenv("FLOOD_CPU"); v != "" {
		cpu, err := strconv.Atoi(v)
		if err != nil || cpu < 0 {
			t.Fatalf("FLOOD_CPU=%q: want a CPU number", v)
		}
		return cpu
	}
	return runtime.NumCPU() - 1
}

func newSuite(t testing.TB, p *Pair, f Family, o SuiteOptions) *Suite {
	t.Helper()
	s, err := NewSuite(p, f, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// TestFloodHarness is the benchmark in miniature (one short round of every
// configuration with 10 prefixes, both families, and the rate-limit pair):
// the pair, trafgen, the attach and the counting work, xdpfw drops what the
// veth counts, the per-source limit passes the spoofed sources on to the
// drop rule on its sketch, and the check that nothing reaches the IP stack
// does catch packets that do.
func TestFloodHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("floods a veth pair: needs root, trafgen and nft; not run with -short")
	}
	p := newPair(t)
	set := Settings{
		CPU: senderCPU(t), Warmup: 200 * time.Millisecond, Duration: 300 * time.Millisecond, Dir: t.TempDir(),
		// Retried when trafgen lost its CPU for long (a shared machine):
		// the test checks the harness, not the figures.
		MaxWait: 0.2, Attempts: 3,
	}
	for _, f := range []Family{IPv4, IPv6} {
		s := newSuite(t, p, f, SuiteOptions{
			Counts: []int{10}, TrieCounts: []int{10}, NftCounts: []int{10}, XDPFilter: true, RateLimit: true, Seed: 1, Logf: t.Logf,
		})
		samples, _, err := s.Run(p, set, 1)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range s.Configs {
			got := samples[i][0]
			t.Logf("%v %s: %.3f Mpps (%d packets in %v), NET_RX softirqs on CPU %d: %d, elsewhere: %d, CPU idle %.1f%%, trafgen waited for its CPU %.1f%%, sender drops %d",
				f, c.Kind, got.Mpps(), got.Packets, got.Elapsed.Round(time.Millisecond), set.CPU,
				got.NetRXOnCPU, got.NetRXElsewhere, 100*got.Idle, 100*got.Waited, got.SenderDropped)
			if got.Packets == 0 || !(got.Mpps() > 0) {
				t.Errorf("%v %s: the receiver counted %d packets (%.3f Mpps)", f, c.Kind, got.Packets, got.Mpps())
			}
		}
		st, err := s.Firewalls[10].FW.Stats()
		if err != nil {
			t.Fatal(err)
		}
		var rules uint64
		for _, r := range st.Rules {
			rules += r.Packets
		}
		measured := func(kind string) Sample {
			for i, c := range s.Configs {
				if c.Kind == kind {
					return samples[i][0]
				}
			}
			t.Fatalf("%v: no %s configuration", f, kind)
			return Sample{}
		}
		xdpfw := measured("xdpfw")
		// Measure checked the window's counts agree; here: the counters
		// behind xdpfwctl saw at least what the veth counted while
		// measuring, as drops by the rules.
		if drops := st.Actions["drop-rule"].Packets; drops < xdpfw.Packets || rules < xdpfw.Packets {
			t.Errorf("%v: xdpfw counted %d drops (%d by its rules), the receiving veth %d packets", f, drops, rules, xdpfw.Packets)
		}
		// The per-source limit saw every packet, found every source within
		// it (each sends a packet or so), passed them on to the drop rule,
		// and did so on its sketch: few, if any, took a bucket.
		limited := measured(KindLimit)
		st, err = s.Limit.FW.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Rules) != 2 {
			t.Fatalf("%v: the rate-limit rule set has %d rules, want 2", f, len(st.Rules))
		}
		lim, rest := st.Rules[0], st.Rules[1]
		t.Logf("%v per-source limit: %d packets, %d over the limit, %d took a bucket (%d buckets created); the drop rule after it: %d",
			f, lim.Packets, lim.Limited.Packets, lim.Sources.BucketPackets, lim.Sources.BucketsCreated, rest.Packets)
		if lim.Packets < limited.Packets || rest.Packets < limited.Packets {
			t.Errorf("%v: the limit matched %d packets and the drop rule after it %d, the receiving veth counted %d", f, lim.Packets, rest.Packets, limited.Packets)
		}
		if lim.Limited.Packets != 0 {
			t.Errorf("%v: %d packets of spoofed sources over a limit of %d pps per source", f, lim.Limited.Packets, LimitPPS)
		}
		if lim.Sources.BucketPackets > lim.Packets/10 {
			t.Errorf("%v: %d of %d packets took a bucket: the sketch did not hold the flood", f, lim.Sources.BucketPackets, lim.Packets)
		}
	}

	// With nothing on the veth, the flood reaches the IP stack, and
	// Measure says so.
	fl, err := StartFlood(p, IPv4, set, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Stop()
	nothing := Config{Kind: "nothing", Enable: func() (func() error, error) { return func() error { return nil }, nil }}
	if got, err := fl.Measure(nothing); err == nil || !strings.Contains(err.Error(), "IP stack") {
		t.Errorf("measuring with nothing attached: %v (the IP stack received %d of %d packets), want the packets found in the IP stack",
			err, got.StackPackets, got.Packets)
	}
	if err := fl.Stop(); err != nil {
		t.Error(err)
	}
}

// envInt reads a positive integer setting, or gives the default.
func envInt(t testing.TB, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// envSeconds reads a duration in seconds (fractions allowed).
func envSeconds(t testing.TB, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	s, err := strconv.ParseFloat(v, 64)
	if err != nil || s <= 0 {
		t.Fatalf("%s=%q: want seconds", name, v)
	}
	return time.Duration(s * float64(time.Second))
}

// BenchmarkFlood is the flood benchmark (make bench): every configuration
// of each family measured once per round, the rounds interleaved, and a
// markdown table per family on stdout. Settings: FLOOD_SECONDS (counted
// time per measurement, default 2), FLOOD_WARMUP (default 0.5),
// FLOOD_ROUNDS (default 5), FLOOD_CPU (trafgen's CPU, default the last),
// FLOOD_COUNTS (xdpfw's prefix counts, default 10,10000,100000,1000000;
// the trie and nftables are measured at each), FLOOD_FAMILIES (default
// 4,6), FLOOD_PROGSTATS (1: turn on the kernel's run-time statistics of
// BPF programs and add each program's own time per packet to the tables;
// the statistics cost every program about 25 ns a packet, so rates are
// lower than without them and are not comparable with nftables').
func BenchmarkFlood(b *testing.B) {
	p := newPair(b)
	if os.Getenv("FLOOD_PROGSTATS") == "1" {
		stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			b.Fatalf("FLOOD_PROGSTATS: turn on the kernel's BPF run-time statistics: %v", err)
		}
		defer stats.Close()
	}
	set := Settings{
		CPU:      senderCPU(b),
		Warmup:   envSeconds(b, "FLOOD_WARMUP", 500*time.Millisecond),
		Duration: envSeconds(b, "FLOOD_SECONDS", 2*time.Second),
		Dir:      b.TempDir(),
		MaxWait:  0.05,
		Attempts: 3,
	}
	rounds := envInt(b, "FLOOD_ROUNDS", 5)
	counts := []int{10, 10_000, 100_000, 1_000_000}
	if v := os.Getenv("FLOOD_COUNTS"); v != "" {
		counts = nil
		for _, s := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n <= 0 {
				b.Fatalf("FLOOD_COUNTS=%q: want prefix counts separated by commas", v)
			}
			counts = append(counts, n)
		}
	}
	families := []Family{IPv4, IPv6}
	switch v := os.Getenv("FLOOD_FAMILIES"); v {
	case "", "4,6":
	case "4":
		families = []Family{IPv4}
	case "6":
		families = []Family{IPv6}
	default:
		b.Fatalf("FLOOD_FAMILIES=%q: want 4, 6 or 4,6", v)
	}
	start := time.Now()
	var targets strings.Builder
	for _, f := range families {
		b.Run(f.String(), func(b *testing.B) {
			s := newSuite(b, p, f, SuiteOptions{
				Counts: counts, TrieCounts: counts, NftCounts: counts, XDPFilter: true, RateLimit: true, Seed: 1,
				// Progress on stdout: a benchmark's log keeps 10 lines.
				Logf: func(format string, args ...any) { fmt.Printf(format+"\n", args...) },
			})
			measured := time.Now()
			samples, retries, err := s.Run(p, set, rounds)
			if err != nil {
				b.Fatal(err)
			}
			r := Results{Suite: s, Samples: samples, Retries: retries}
			fmt.Printf("\n%s\n%s\n", r.Table(set, rounds), r.Memory())
			targets.WriteString(r.Targets())
			fmt.Printf("%v: set up in %v, measured in %v\n", f, measured.Sub(start).Round(time.Second), time.Since(measured).Round(time.Second))
			start = time.Now()
		})
	}
	fmt.Printf("\n%s", targets.String())
}
