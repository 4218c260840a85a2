package bpf

import (
	"cmp"
	"encoding/binary"
	"net/netip"
)

// The members of a prefix set, as the compiler keeps them between
// incremental updates and as the docs map stores them: integer keys in
// canonical order (IPv4 before IPv6, then by address, then shorter first),
// without duplicates. Sorted keys are the canonical order, so two sets are
// equal exactly when their key slices are.

// key4 is an IPv4 prefix as address<<8 | length.
type key4 = uint64

// key6 is an IPv6 prefix as integers, in sort order.
type key6 struct {
	hi, lo uint64
	bits   uint8
}

func compareKey6(a, b key6) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	if c := cmp.Compare(a.lo, b.lo); c != 0 {
		return c
	}
	return cmp.Compare(a.bits, b.bits)
}

func prefixKey4(p netip.Prefix) key4 {
	return uint64(v4Uint(p.Addr()))<<8 | uint64(p.Bits())
}

func prefixKey6(p netip.Prefix) key6 {
	b := p.Addr().As16()
	return key6{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:]), uint8(p.Bits())}
}

func (k key6) prefix() netip.Prefix {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], k.hi)
	binary.BigEndian.PutUint64(b[8:], k.lo)
	return netip.PrefixFrom(netip.AddrFrom16(b), int(k.bits))
}

func key4Prefix(k key4) netip.Prefix {
	a := uint32(k >> 8)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), int(k&0xff))
}

// setMembers is one prefix set of one rule set.
type setMembers struct {
	// ruleSet indexes appliedDoc.RuleSets; set is the set's name.
	ruleSet int
	set     string
	v4      []key4
	v6      []key6
}

// count is the number of members.
func (m *setMembers) count() int { return len(m.v4) + len(m.v6) }
