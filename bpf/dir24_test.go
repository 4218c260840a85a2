package bpf

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// lpm is the plain longest-prefix match the DIR-24 table must equal.
func lpm(prefixes map[netip.Prefix]VecID, a netip.Addr) VecID {
	for bits := 32; bits >= 0; bits-- {
		p, _ := a.Prefix(bits)
		if id, ok := prefixes[p]; ok {
			return id
		}
	}
	panic("no /0 entry")
}

func TestDir24MatchesLongestPrefix(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		r := rand.New(rand.NewPCG(seed, 99))
		prefixes := map[netip.Prefix]VecID{netip.MustParsePrefix("0.0.0.0/0"): 0}
		// Clusters of nested, adjacent and overlapping prefixes inside a
		// few /16s, so many /24s hold several intervals (blocks), some
		// more than a block takes (t8), plus /0, /1 and /32 edges.
		var bases []uint32
		for i := 0; i < 4; i++ {
			bases = append(bases, r.Uint32()&0xFFFF0000)
		}
		bases = append(bases, 0, 0xFFFF0000)
		for i := 0; i < 3000; i++ {
			base := bases[r.IntN(len(bases))]
			var a [4]byte
			binary.BigEndian.PutUint32(a[:], base|r.Uint32()&0xFFFF)
			bits := []int{1, 8, 16, 20, 23, 24, 25, 26, 28, 30, 31, 32}[r.IntN(12)]
			p, _ := netip.AddrFrom4(a).Prefix(bits)
			prefixes[p] = VecID(1 + r.IntN(200))
		}
		// A few dense /24s: more intervals than a block holds.
		for i := 0; i < 3; i++ {
			dense := bases[i] | uint32(r.IntN(256))<<8
			for j := 0; j < 40; j++ {
				var a [4]byte
				binary.BigEndian.PutUint32(a[:], dense|uint32(r.IntN(256)))
				p, _ := netip.AddrFrom4(a).Prefix([]int{27, 29, 30, 32}[r.IntN(4)])
				prefixes[p] = VecID(1 + r.IntN(200))
			}
		}
		d := buildDir24(tableOf(prefixes))
		if len(d.blocks) == 0 || len(d.t8) == 0 {
			t.Fatalf("seed %d: %d blocks and %d t8 tables: the test does not cover both", seed, len(d.blocks), len(d.t8))
		}
		check := func(a netip.Addr) {
			if got, want := d.lookup(a), lpm(prefixes, a); got != want {
				t.Fatalf("seed %d: %s: dir24 %d, longest prefix %d", seed, a, got, want)
			}
		}
		for p := range prefixes {
			// Both ends of every prefix and the addresses just outside.
			first := v4Uint(p.Addr())
			last := first + uint32(uint64(1)<<(32-p.Bits())-1)
			for _, u := range []uint32{first, last, first - 1, last + 1} {
				var a [4]byte
				binary.BigEndian.PutUint32(a[:], u)
				check(netip.AddrFrom4(a))
			}
		}
		for i := 0; i < 20000; i++ {
			var a [4]byte
			binary.BigEndian.PutUint32(a[:], bases[r.IntN(len(bases))]|r.Uint32()&0xFFFF)
			check(netip.AddrFrom4(a))
		}
	}
}

// tableOf turns final vectors by prefix into a sorted prefix table.
func tableOf(m map[netip.Prefix]VecID) prefixTable {
	var t prefixTable
	for p := range m {
		t.prefixes = append(t.prefixes, p)
	}
	sortPrefixes(t.prefixes)
	for _, p := range t.prefixes {
		t.ids = append(t.ids, m[p])
	}
	return t
}
