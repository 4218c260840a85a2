package flood

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Rate is a configuration's receiver rate over the rounds, in Mpps.
type Rate struct {
	Median, Min, Max float64
}

// NsPerPacket is the CPU time per packet at the median rate: the sending
// CPU does all the work, sending and receiving (see the package comment).
func (r Rate) NsPerPacket() float64 { return 1e3 / r.Median }

// Results are a family's samples, by configuration.
type Results struct {
	Suite   *Suite
	Samples [][]Sample
	// Retries counts measurements taken again for losing their CPU.
	Retries int
}

// Rate summarises one configuration's samples; ok is false when it was
// not measured.
func (r Results) Rate(kind string, n int) (Rate, bool) {
	for i, c := range r.Suite.Configs {
		if c.Kind != kind || c.N != n || len(r.Samples[i]) == 0 {
			continue
		}
		var mpps []float64
		for _, s := range r.Samples[i] {
			mpps = append(mpps, s.Mpps())
		}
		slices.Sort(mpps)
		m := mpps[len(mpps)/2]
		if len(mpps)%2 == 0 {
			m = (mpps[len(mpps)/2-1] + m) / 2
		}
		return Rate{Median: m, Min: mpps[0], Max: mpps[len(mpps)-1]}, true
	}
	return Rate{}, false
}

// progNs is the median of a configuration's time per packet inside its
// program (0: not measured).
func (r Results) progNs(kind string, n int) float64 {
	for i, c := range r.Suite.Configs {
		if c.Kind != kind || c.N != n {
			continue
		}
		var ns []float64
		for _, s := range r.Samples[i] {
			if v := s.ProgNs(); v > 0 {
				ns = append(ns, v)
			}
		}
		if len(ns) == 0 {
			return 0
		}
		slices.Sort(ns)
		return ns[len(ns)/2]
	}
	return 0
}

// above is a configuration's ns per packet above bare XDP_DROP's.
func (r Results) above(kind string, n int) (float64, bool) {
	x, ok := r.Rate(kind, n)
	bare, okb := r.Rate("bare", 0)
	if !ok || !okb {
		return 0, false
	}
	return x.NsPerPacket() - bare.NsPerPacket(), true
}

// Label names a prefix count the short way: 10, 10k, 100k, 1M.
func Label(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1_000 && n%1_000 == 0:
		return fmt.Sprintf("%dk", n/1_000)
	}
	return fmt.Sprint(n)
}

// thousands writes a number with thousands separators.
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

func (r Results) rowName(c Config) string {
	switch c.Kind {
	case "bare":
		return "bare XDP_DROP"
	case "xdp-filter":
		return "xdp-filter (deny policy, no filter matches)"
	case "trie":
		return fmt.Sprintf("kernel LPM trie program, %s prefixes", thousands(float64(c.N)))
	case "nftables":
		return fmt.Sprintf("nftables interval set (netdev ingress), %s prefixes (%s merged)",
			thousands(float64(c.N)), intervals(r.Suite.Intervals[c.N]))
	case KindDrop:
		return "xdpfw, plain drop rule (UDP to port 53: drop)"
	case KindLimit:
		return fmt.Sprintf("xdpfw, per-source rate limit (UDP to port 53: %d pps, burst %d, per source, within the limit next; then drop)",
			LimitPPS, LimitBurst)
	}
	return fmt.Sprintf("xdpfw, %s prefixes", thousands(float64(c.N)))
}

// Table is the family's markdown table: every configuration's rate, its
// time per packet, that time above bare XDP_DROP's, that cost as a share
// of the kernel trie's at the same prefix count, and the rate as a
// multiple of nftables' at the same count.
func (r Results) Table(set Settings, rounds int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v flood, trafgen on CPU %d, receiver rate over %d rounds of %v (after %v of warm-up each)\n\n",
		r.Suite.Family, set.CPU, rounds, set.Duration, set.Warmup)
	inProg := r.progNs("bare", 0) > 0
	if inProg {
		b.WriteString("| configuration | Mpps median (min–max) | ns/packet | ns above bare | cost above bare ÷ trie's | rate ÷ nftables' | ns in the program |\n")
		b.WriteString("|---|---|---|---|---|---|---|\n")
	} else {
		b.WriteString("| configuration | Mpps median (min–max) | ns/packet | ns above bare | cost above bare ÷ trie's | rate ÷ nftables' |\n")
		b.WriteString("|---|---|---|---|---|---|\n")
	}
	for _, c := range r.Suite.Configs {
		rate, ok := r.Rate(c.Kind, c.N)
		if !ok {
			continue
		}
		above, _ := r.above(c.Kind, c.N)
		aboveCell, trieCell, nftCell := thousands(above), "–", "–"
		if c.Kind == "bare" {
			aboveCell = "0"
		}
		if trieAbove, ok := r.above("trie", c.N); ok && c.N > 0 && trieAbove > 0 {
			trieCell = fmt.Sprintf("%.2f", above/trieAbove)
		}
		if nft, ok := r.Rate("nftables", c.N); ok && c.N > 0 {
			nftCell = fmt.Sprintf("%.2f", rate.Median/nft.Median)
		}
		fmt.Fprintf(&b, "| %s | %.3f (%.3f–%.3f) | %s | %s | %s | %s |", r.rowName(c),
			rate.Median, rate.Min, rate.Max, thousands(rate.NsPerPacket()), aboveCell, trieCell, nftCell)
		if inProg {
			cell := "–"
			if v := r.progNs(c.Kind, c.N); v > 0 {
				cell = thousands(v)
			}
			fmt.Fprintf(&b, " %s |", cell)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
	if bare, ok := r.Rate("bare", 0); ok {
		for _, c := range r.Suite.Configs {
			if c.Kind != "nftables" {
				continue
			}
			nft, _ := r.Rate("nftables", c.N)
			fmt.Fprintf(&b, "bare XDP_DROP's rate is %.2f× nftables' with %s prefixes.\n", bare.Median/nft.Median, Label(c.N))
			break
		}
	}
	b.WriteString(r.quality())
	b.WriteString(r.limitNote())
	return b.String()
}

// limitNote says how the per-source limit's packets went, over the whole
// run: on the sketch alone (the flood's sources, each far within its limit)
// or to a bucket (the sketch found the source at its limit, or was too
// small for the flood).
func (r Results) limitNote() string {
	if r.Suite.Limit == nil {
		return ""
	}
	st, err := r.Suite.Limit.FW.Stats()
	if err != nil || len(st.Rules) == 0 {
		return fmt.Sprintf("per-source limit: its counters could not be read (%v).\n", err)
	}
	l := st.Rules[0]
	return fmt.Sprintf("per-source limit: %d packets matched it, %d over the limit, %d took a bucket (%d buckets created); the rest passed on the sketch alone.\n",
		l.Packets, l.Limited.Packets, l.Sources.BucketPackets, l.Sources.BucketsCreated)
}

// quality sums up what says the measurements are sound: where the receive
// work ran, whether trafgen kept its CPU busy and had it to itself, and
// whether the sender ever found the receiver full.
func (r Results) quality() string {
	var onCPU, elsewhere, dropped, packets uint64
	var maxIdle, maxWait, maxSteal float64
	for _, ss := range r.Samples {
		for _, s := range ss {
			onCPU += s.NetRXOnCPU
			elsewhere += s.NetRXElsewhere
			dropped += s.SenderDropped
			packets += s.Packets
			maxIdle, maxWait, maxSteal = max(maxIdle, s.Idle), max(maxWait, s.Waited), max(maxSteal, s.Steal)
		}
	}
	share := 0.0
	if onCPU+elsewhere > 0 {
		share = float64(onCPU) / float64(onCPU+elsewhere)
	}
	return fmt.Sprintf("NET_RX softirqs on the sending CPU: %.2f%% of all (%.2f per received packet); "+
		"largest share of a measurement the sending CPU was idle: %.1f%%, trafgen waited for it: %.1f%%, stolen by the hypervisor: %.1f%%; "+
		"packets the sender could not hand over: %d of %d; measurements taken again for losing their CPU: %d.\n",
		100*share, float64(onCPU)/float64(max(packets, 1)), 100*maxIdle, 100*maxWait, 100*maxSteal, dropped, packets+dropped, r.Retries)
}

// Memory is the table of xdpfw's memory and set-up times by prefix count,
// beside the kernel trie's memory.
func (r Results) Memory() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v: kernel memory of the maps (memlock)\n\n", r.Suite.Family)
	b.WriteString("| prefixes | xdpfw, all maps, both generations | per prefix | compile | first apply | kernel LPM trie |\n")
	b.WriteString("|---|---|---|---|---|---|\n")
	var counts []int
	for n := range r.Suite.Firewalls {
		counts = append(counts, n)
	}
	slices.Sort(counts)
	for _, n := range counts {
		fw := r.Suite.Firewalls[n]
		trie := "–"
		if m, ok := r.Suite.TrieMemory[n]; ok {
			trie = mb(m)
		}
		// Per prefix only where the prefixes, not the fixed maps, are most
		// of it.
		per := "–"
		if n >= 10_000 {
			per = thousands(float64(fw.Memory)/float64(n)) + " B"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %v | %v | %s |\n", thousands(float64(n)), mb(fw.Memory),
			per, fw.Compile.Round(time.Millisecond), fw.Apply.Round(time.Millisecond), trie)
	}
	return b.String()
}

// intervals says how many intervals an nftables set holds.
func intervals(n int) string {
	if n == 1 {
		return "1 interval"
	}
	return thousands(float64(n)) + " intervals"
}

func mb(v uint64) string {
	return fmt.Sprintf("%.1f MB", float64(v)/(1<<20))
}

// Targets are the checks, one line each, at the largest and
// smallest prefix counts measured.
func (r Results) Targets() string {
	var counts []int
	for n := range r.Suite.Firewalls {
		counts = append(counts, n)
	}
	if len(counts) == 0 {
		return ""
	}
	slices.Sort(counts)
	small, big := counts[0], counts[len(counts)-1]
	fam := r.Suite.Family
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	var b strings.Builder
	fwAbove, okFW := r.above("xdpfw", big)
	if trieAbove, ok := r.above("trie", big); ok && okFW {
		if fwAbove <= 0 {
			fmt.Fprintf(&b, "%v: xdpfw@%s costs no more than bare XDP_DROP (%s ns above; the trie: %s ns): target ≥10× below the trie's met\n",
				fam, Label(big), thousands(fwAbove), thousands(trieAbove))
		} else {
			x := trieAbove / fwAbove
			fmt.Fprintf(&b, "%v: xdpfw@%s cost above bare is %.1f× below the trie's (target ≥10×): %s\n", fam, Label(big), x, met(x >= 10))
		}
	}
	if limit, ok := r.above(KindLimit, 0); ok {
		if drop, ok := r.above(KindDrop, 0); ok && drop > 0 {
			x := limit / drop
			fmt.Fprintf(&b, "%v: xdpfw per-source rate limit costs %.2f× the plain drop rule above bare (%s vs %s ns; target ≤2×): %s\n",
				fam, x, thousands(limit), thousands(drop), met(x <= 2))
		}
	}
	fw, okFW := r.Rate("xdpfw", big)
	if nft, ok := r.Rate("nftables", big); ok && okFW {
		x := fw.Median / nft.Median
		fmt.Fprintf(&b, "%v: xdpfw@%s rate is %.2f× nftables' (target ≥2×): %s\n", fam, Label(big), x, met(x >= 2))
	}
	if fwSmall, ok := r.Rate("xdpfw", small); ok && okFW && small != big {
		x := fw.NsPerPacket() / fwSmall.NsPerPacket()
		fmt.Fprintf(&b, "%v: xdpfw@%s ns/packet is %.2f× xdpfw@%s's (target ≤1.25×): %s\n", fam, Label(big), x, Label(small), met(x <= 1.25))
		smallAbove, _ := r.above("xdpfw", small)
		if smallAbove > 0 {
			x := fwAbove / smallAbove
			fmt.Fprintf(&b, "%v: xdpfw@%s ns above bare is %.2f× xdpfw@%s's (%s vs %s ns; target ≤1.25×): %s\n", fam, Label(big), x, Label(small),
				thousands(fwAbove), thousands(smallAbove), met(x <= 1.25))
		} else {
			fmt.Fprintf(&b, "%v: xdpfw@%s ns above bare: %s, xdpfw@%s's: %s (no ratio: the smaller is not above bare)\n", fam, Label(big),
				thousands(fwAbove), Label(small), thousands(smallAbove))
		}
	}
	return b.String()
}
