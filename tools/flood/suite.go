package flood

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/xdpfw/xdpfw/proto"
)

// SuiteOptions say which configurations a suite holds.
type SuiteOptions struct {
	// Counts are the prefix counts xdpfw is measured at.
	Counts []int
	// TrieCounts and NftCounts are those of the kernel-LPM-trie program
	// and of nftables (each must be one of Counts: they hold the same
	// prefixes as xdpfw at that count).
	TrieCounts, NftCounts []int
	// XDPFilter adds xdp-filter.
	XDPFilter bool
	// RateLimit adds xdpfw with a plain drop rule (DropRuleSet) and with a
	// per-source rate limit in front of it (LimitRuleSet).
	RateLimit bool
	// Seed makes the prefixes.
	Seed uint64
	// Logf reports the setup's progress.
	Logf func(format string, args ...any)
}

// Suite is every configuration of one family, set up on a pair: programs
// loaded, tries and nftables sets filled, xdpfw firewalls compiled and
// applied. Nothing is attached between measurements.
type Suite struct {
	Family  Family
	Configs []Config
	// Firewalls are xdpfw's, by prefix count; TrieMemory the kernel
	// memory of the trie at each count; Intervals what nftables' set holds
	// after auto-merge at each count.
	Firewalls map[int]*Firewall
	// Drop and Limit are the firewalls of the RateLimit configurations.
	Drop, Limit *Firewall
	TrieMemory  map[int]uint64
	Intervals   map[int]int
	closers     []func() error
}

// NewSuite sets up a family's configurations, in the order they are listed
// in: bare XDP_DROP, xdp-filter, the trie, nftables, xdpfw by count, then
// xdpfw's plain drop rule and per-source rate limit.
func NewSuite(p *Pair, f Family, o SuiteOptions) (s *Suite, err error) {
	s = &Suite{Family: f, Firewalls: map[int]*Firewall{}, TrieMemory: map[int]uint64{}, Intervals: map[int]int{}}
	defer func() {
		if err != nil {
			s.Close()
			s = nil
		}
	}()
	logf := o.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	for _, n := range slices.Concat(o.TrieCounts, o.NftCounts) {
		if !slices.Contains(o.Counts, n) {
			return s, fmt.Errorf("reference count %d is not one of xdpfw's counts %v", n, o.Counts)
		}
	}
	prefixes := map[int][]netip.Prefix{}
	for _, n := range o.Counts {
		prefixes[n] = RandomPrefixes(f, n, o.Seed)
	}
	// Every XDP program must drop a member of the set and a stranger.
	stranger := netip.MustParseAddr("198.18.0.1")
	if f == IPv6 {
		stranger = netip.MustParseAddr("2001:db8::1")
	}
	check := func(prog *ebpf.Program, n int) error {
		frames := [][]byte{SampleFrame(f, stranger)}
		if n > 0 {
			frames = append(frames, SampleFrame(f, prefixes[n][0].Addr()))
		}
		return CheckDrops(prog, frames...)
	}
	xdp := func(kind string, n int, prog *ebpf.Program) Config {
		return Config{Kind: kind, N: n, Prog: prog, Enable: func() (func() error, error) {
			l, err := p.AttachNative(prog)
			if err != nil {
				return nil, err
			}
			return l.Close, nil
		}}
	}

	bare, err := BareDrop()
	if err != nil {
		return s, err
	}
	s.closers = append(s.closers, bare.Close)
	if err := check(bare, 0); err != nil {
		return s, fmt.Errorf("bare XDP_DROP: %w", err)
	}
	s.Configs = append(s.Configs, xdp("bare", 0, bare))

	if o.XDPFilter {
		xf, err := NewXDPFilter()
		if err != nil {
			return s, err
		}
		s.closers = append(s.closers, xf.Close)
		if err := check(xf.Prog, 0); err != nil {
			return s, fmt.Errorf("xdp-filter: %w", err)
		}
		s.Configs = append(s.Configs, xdp("xdp-filter", 0, xf.Prog))
	}

	for _, n := range o.TrieCounts {
		start := time.Now()
		t, err := NewTrie(f, prefixes[n])
		if err != nil {
			return s, err
		}
		s.closers = append(s.closers, t.Close)
		if err := check(t.Prog, n); err != nil {
			return s, fmt.Errorf("LPM trie program: %w", err)
		}
		info, err := t.Map.Info()
		if err != nil {
			return s, fmt.Errorf("LPM trie info: %w", err)
		}
		s.TrieMemory[n], _ = info.Memlock()
		s.Configs = append(s.Configs, xdp("trie", n, t.Prog))
		logf("%v: LPM trie of %d prefixes filled in %v", f, n, time.Since(start).Round(time.Millisecond))
	}

	if len(o.NftCounts) > 0 {
		nft, err := NewNft(p, f)
		if err != nil {
			return s, err
		}
		s.closers = append(s.closers, nft.Close)
		for _, n := range o.NftCounts {
			start := time.Now()
			set := fmt.Sprintf("s%d", n)
			if err := nft.AddSet(set, f, prefixes[n]); err != nil {
				return s, err
			}
			s.Intervals[n] = MergedIntervals(prefixes[n])
			s.Configs = append(s.Configs, Config{
				Kind: "nftables", N: n,
				Enable: func() (func() error, error) {
					if err := nft.Enable(set, f); err != nil {
						return nil, err
					}
					return nft.Disable, nil
				},
			})
			logf("%v: nftables set of %d prefixes loaded in %v (%s after auto-merge)", f, n,
				time.Since(start).Round(time.Millisecond), intervals(s.Intervals[n]))
		}
	}

	// xdpfw counts its drops: every packet the veth counted must be one.
	xdpfw := func(kind string, n int, fw *Firewall) Config {
		c := xdp(kind, n, fw.FW.Program())
		c.Seen = func() (uint64, error) {
			st, err := fw.FW.Stats()
			if err != nil {
				return 0, err
			}
			return st.Actions["drop-rule"].Packets, nil
		}
		return c
	}
	for _, n := range o.Counts {
		fw, err := NewFirewall(p, prefixes[n])
		if err != nil {
			return s, err
		}
		s.closers = append(s.closers, fw.Close)
		s.Firewalls[n] = fw
		if err := check(fw.FW.Program(), n); err != nil {
			return s, fmt.Errorf("xdpfw with %d prefixes: %w", n, err)
		}
		s.Configs = append(s.Configs, xdpfw("xdpfw", n, fw))
		layout := "LPM trie"
		if fw.RangeTable {
			layout = "range table"
		}
		logf("%v: xdpfw with %d prefixes (%s): compiled in %v, applied in %v, %d MB of maps", f, n, layout,
			fw.Compile.Round(time.Millisecond), fw.Apply.Round(time.Millisecond), fw.Memory>>20)
	}

	if o.RateLimit {
		for _, c := range []struct {
			kind string
			rs   proto.RuleSet
			fw   **Firewall
		}{{KindDrop, DropRuleSet(), &s.Drop}, {KindLimit, LimitRuleSet(), &s.Limit}} {
			fw, err := NewFirewallOf(p, c.rs)
			if err != nil {
				return s, fmt.Errorf("xdpfw %s: %w", c.kind, err)
			}
			s.closers = append(s.closers, fw.Close)
			*c.fw = fw
			if err := check(fw.FW.Program(), 0); err != nil {
				return s, fmt.Errorf("xdpfw %s: %w", c.kind, err)
			}
			s.Configs = append(s.Configs, xdpfw(c.kind, 0, fw))
		}
	}
	return s, nil
}

// The kinds of the RateLimit configurations.
const (
	KindDrop  = "xdpfw-drop"
	KindLimit = "xdpfw-limit"
)

// Close unloads everything the suite set up, last first.
func (s *Suite) Close() error {
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		errs = append(errs, s.closers[i]())
	}
	s.closers = nil
	return errors.Join(errs...)
}

// Run floods the pair and measures every configuration once per round,
// the order rotated by one each round (so that no configuration always
// follows the same one or always comes first). It returns the samples by
// configuration index, and how many measurements were taken again for
// losing their CPU.
func (s *Suite) Run(p *Pair, set Settings, rounds int) (samples [][]Sample, retries int, err error) {
	each := set.Warmup + set.Duration + time.Second // and the switching
	limit := time.Duration(rounds*len(s.Configs)*max(set.Attempts, 1))*each + time.Minute
	fl, err := StartFlood(p, s.Family, set, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("%v: %w", s.Family, err)
	}
	defer func() {
		if serr := fl.Stop(); serr != nil {
			err = errors.Join(err, serr)
		}
	}()
	samples = make([][]Sample, len(s.Configs))
	for r := 0; r < rounds; r++ {
		for k := range s.Configs {
			i := (k + r) % len(s.Configs)
			c := s.Configs[i]
			var best Sample
			for attempt := 1; ; attempt++ {
				got, err := fl.Measure(c)
				if err != nil {
					return samples, retries, fmt.Errorf("%v round %d: %w", s.Family, r+1, err)
				}
				if attempt == 1 || (got.Packets > 0 && (best.Packets == 0 || got.Waited < best.Waited)) {
					best = got
				}
				if got.Packets > 0 && got.Waited <= set.MaxWait {
					break
				}
				if attempt >= set.Attempts {
					if best.Packets == 0 {
						return samples, retries, fmt.Errorf("%v round %d: %s %d: the receiver counted no packets in %d attempts", s.Family, r+1, c.Kind, c.N, attempt)
					}
					break
				}
				retries++
			}
			samples[i] = append(samples[i], best)
		}
	}
	return samples, retries, nil
}
