package api

import (
	"net/netip"
	"testing"
)

// An IPv6 host rotating through its /64 is one client to the throttle;
// another /64, or another IPv4 address, is not.
func TestThrottleCountsAnIPv6Slash64AsOneClient(t *testing.T) {
	f := newFailures(3)
	for i := 1; i <= 3; i++ {
		f.fail(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i)}))
	}
	if blocked, _, _ := f.throttled(netip.MustParseAddr("2001:db8::ffff")); !blocked {
		t.Fatal("a fourth address of the same /64 is not throttled after three failures in that /64")
	}
	if blocked, _, _ := f.throttled(netip.MustParseAddr("2001:db8:0:1::1")); blocked {
		t.Fatal("another /64 is throttled")
	}
	for i := 1; i <= 3; i++ {
		f.fail(netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}))
	}
	if blocked, _, _ := f.throttled(netip.MustParseAddr("198.18.0.4")); blocked {
		t.Fatal("an IPv4 address is throttled for its neighbours' failures")
	}
	for i := 0; i < 3; i++ {
		f.fail(remoteIP("[::ffff:198.18.0.9]:443"))
	}
	if blocked, _, _ := f.throttled(netip.MustParseAddr("198.18.0.9")); !blocked {
		t.Fatal("an IPv4-mapped peer is not counted as its IPv4 address")
	}
}
