package flood

import (
	"math"
	"net/netip"
	"testing"
)

func TestMergedIntervals(t *testing.T) {
	for _, tc := range []struct {
		prefixes []string
		want     int
	}{
		{[]string{"10.0.0.0/8"}, 1},
		{[]string{"10.0.0.0/8", "10.1.0.0/16"}, 1},                // nested
		{[]string{"10.0.0.0/9", "10.128.0.0/9"}, 1},               // adjacent
		{[]string{"10.0.0.0/9", "10.129.0.0/16"}, 2},              // apart
		{[]string{"255.255.255.255/32", "255.255.255.254/32"}, 1}, // the last address
		{[]string{"2001:db8::/33", "2001:db8:8000::/33", "2001:db8:1::/48"}, 1},
		{[]string{"2001:db8::/48", "2001:db8:2::/48"}, 2},
	} {
		var ps []netip.Prefix
		for _, s := range tc.prefixes {
			ps = append(ps, netip.MustParsePrefix(s))
		}
		if got := MergedIntervals(ps); got != tc.want {
			t.Errorf("MergedIntervals(%v) = %d, want %d", tc.prefixes, got, tc.want)
		}
	}
}

// TestIPv6MixIsSparse: the benchmark's IPv6 prefixes cover a small share of
// 2001:db8::/32, so nftables' merged set keeps nearly an interval a prefix
// (an earlier mix, /33 to /64, covered the whole /32 from a few thousand
// prefixes on, and nftables merged it into one interval).
func TestIPv6MixIsSparse(t *testing.T) {
	const n = 100_000
	ps := RandomPrefixes(IPv6, n, 1)
	slash32 := netip.MustParsePrefix("2001:db8::/32")
	covered := 0.0 // share of the /32, counting overlaps twice: an upper bound
	for _, p := range ps {
		if !slash32.Contains(p.Addr()) || p.Bits() < 40 || p.Bits() > 64 {
			t.Fatalf("prefix %v: want /40 to /64 inside %v", p, slash32)
		}
		covered += math.Ldexp(1, 32-p.Bits())
	}
	if covered > 0.01 {
		t.Errorf("%d IPv6 prefixes cover up to %.2f%% of %v, want at most 1%%", n, 100*covered, slash32)
	}
	if got := MergedIntervals(ps); got < n*98/100 {
		t.Errorf("%d IPv6 prefixes merge into %d intervals, want at least 98%% of them", n, got)
	}
}
