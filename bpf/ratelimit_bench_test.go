package bpf

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"testing"
	"text/tabwriter"

	"github.com/cilium/ebpf"
	"github.com/xdpfw/xdpfw/proto"
)

// BenchmarkRateLimitAndSampling (make bench) measures, in one run and the
// same way for each: a plain drop rule (sampling compiled out), the same
// rule with sampling built in but no reader, with drop sampling
// on (a reader draining the ring buffer; at the default cap, where most
// drops are over it, and with every drop sent), and rate-limit rules per
// rule and per source, beside bare XDP_DROP. "repeat" runs one packet
// 100,000 times (hot caches: the code path); "pool" runs 100,000 packets
// from distinct random sources once each (the flood: a per-source limit
// meets a new source, and evicts an old bucket, on every packet).
func BenchmarkRateLimitAndSampling(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	pool := randomSourceFrames(r, 100_000)
	one := pool[0]

	limit := func(rl proto.RateLimit) proto.RuleSet {
		return proto.RuleSet{APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "bench", Mode: proto.ModeDeny,
			Rules: []proto.Rule{{ID: "dns", Action: proto.ActionRateLimit, Protocol: proto.ProtoUDP,
				DstPorts: []proto.PortSpec{"53"}, RateLimit: &rl}}}
	}
	dropRule := proto.RuleSet{APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "bench", Mode: proto.ModeDeny,
		Rules: []proto.Rule{{ID: "dns", Action: proto.ActionDrop, Protocol: proto.ProtoUDP, DstPorts: []proto.PortSpec{"53"}}}}

	type config struct {
		name     string
		rules    *proto.RuleSet
		sampling *SamplingConfig // nil: no reader
		opts     Options
	}
	configs := []config{
		{name: "bare XDP_DROP"},
		{name: "drop rule, sampling compiled out", rules: &dropRule, opts: Options{noSampling: true}},
		{name: "drop rule, no sample reader", rules: &dropRule},
		{name: "drop rule, sampling on, default cap 1,000/s", rules: &dropRule, sampling: &SamplingConfig{}},
		{name: "drop rule, sampling on, every drop sent", rules: &dropRule, sampling: &SamplingConfig{MaxPerSecond: 1 << 31}},
	}
	for _, c := range []struct {
		name string
		rl   proto.RateLimit
	}{
		{"rate-limit per rule, within the limit", proto.RateLimit{PPS: proto.MaxPPS, Burst: proto.MaxBurst}},
		{"rate-limit per rule, over the limit", proto.RateLimit{PPS: 1, Burst: 1}},
		{"rate-limit per source, within the limit", proto.RateLimit{PPS: proto.MaxPPS, Burst: proto.MaxBurst, Per: proto.PerSource}},
		{"rate-limit per source, over the limit", proto.RateLimit{PPS: 1, Burst: 1, Per: proto.PerSource}},
	} {
		rs := limit(c.rl)
		configs = append(configs, config{name: c.name, rules: &rs})
	}

	// Each configuration is loaded several times (JIT placement moves a
	// program's cost by tens of percent); a cell is the median over
	// instances of each instance's best of three interleaved rounds.
	const instances = 3
	type measured struct {
		repeat, pool [instances]float64
	}
	progs := make([][]*ebpf.Program, len(configs))
	var readers []*DropReader
	for i, c := range configs {
		for range instances {
			if c.rules == nil {
				progs[i] = append(progs[i], bareDrop(b))
				continue
			}
			fw := openTestFirewallWith(b, c.opts)
			mustApply(b, fw, []proto.RuleSet{*c.rules})
			if c.sampling != nil {
				if err := fw.SetSampling(*c.sampling); err != nil {
					b.Fatal(err)
				}
				rd, err := fw.ReadDrops("")
				if err != nil {
					b.Fatal(err)
				}
				readers = append(readers, rd)
			}
			progs[i] = append(progs[i], fw.Program())
		}
	}
	// Readers drain their ring buffers as a real reader would.
	var wg sync.WaitGroup
	for _, rd := range readers {
		wg.Go(func() {
			for {
				if _, err := rd.Read(); err != nil {
					return
				}
			}
		})
	}
	defer func() {
		for _, rd := range readers {
			rd.Close()
		}
		wg.Wait()
	}()

	results := make([]measured, len(configs))
	for round := range 3 {
		for i := range configs {
			for k, prog := range progs[i] {
				_, d, err := prog.Benchmark(one, 100_000, nil)
				if err != nil {
					b.Fatalf("BPF_PROG_RUN: %v", err)
				}
				rep := float64(d.Nanoseconds())
				pl := poolNs(b, prog, pool)
				if round == 0 || rep < results[i].repeat[k] {
					results[i].repeat[k] = rep
				}
				if round == 0 || pl < results[i].pool[k] {
					results[i].pool[k] = pl
				}
			}
		}
	}
	median := func(v [instances]float64) float64 {
		s := v[:]
		s = slices.Clone(s)
		slices.Sort(s)
		return s[len(s)/2]
	}
	out := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	defer out.Flush()
	plainRep, plainPool := median(results[1].repeat), median(results[1].pool)
	fmt.Fprintf(out, "\nns/packet (plain drop: sampling compiled out)\trepeat\tpool\trepeat / plain drop\tpool / plain drop\t\n")
	for i, c := range configs {
		rep, pl := median(results[i].repeat), median(results[i].pool)
		fmt.Fprintf(out, "%s\t%.1f\t%.1f\t%.2f\t%.2f\t\n", c.name, rep, pl, rep/plainRep, pl/plainPool)
	}
}
