package flood

import (
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
	// The benchmark's IPv6 mix covers all of 2001:db8::/32 from a few
	// thousand prefixes on (its two /33s are both drawn): nftables' merged
	// set is then one interval, whatever the count.
	if got := MergedIntervals(RandomPrefixes(IPv6, 10_000, 1)); got != 1 {
		t.Errorf("IPv6 mix of 10,000 prefixes: %d intervals merged, want 1", got)
	}
}
