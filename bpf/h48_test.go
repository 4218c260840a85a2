package bpf

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func TestH48MatchesLongestPrefix(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		r := rand.New(rand.NewPCG(seed, 48))
		final := map[netip.Prefix]VecID{netip.MustParsePrefix("::/0"): 0}
		// A few /32s hold everything, so /48s collide and nest: ONE,
		// BLOCK and LPM kinds, short prefixes above them, and misses.
		var bases []uint64
		for i := 0; i < 3; i++ {
			bases = append(bases, r.Uint64()&^(1<<32-1))
		}
		addr := func() netip.Addr {
			var a [16]byte
			hi := bases[r.IntN(len(bases))] | r.Uint64()&(1<<32-1)
			if r.IntN(3) == 0 {
				hi &^= 0xFF0000 // crowd a few /48s
			}
			binary.BigEndian.PutUint64(a[:8], hi)
			binary.BigEndian.PutUint64(a[8:], r.Uint64())
			return netip.AddrFrom16(a)
		}
		for i := 0; i < 4000; i++ {
			bits := []int{16, 33, 40, 47, 48, 49, 52, 56, 60, 63, 64, 64, 64, 65, 96, 128}[r.IntN(16)]
			p, _ := addr().Prefix(bits)
			final[p] = VecID(1 + r.IntN(300))
		}
		h := buildH48(tableOf(final))
		kinds := map[uint64]int{}
		for _, e := range h.entries {
			kinds[e>>62]++
		}
		if kinds[h48Vec] == 0 || kinds[h48One] == 0 || kinds[h48Block] == 0 || kinds[h48LPM] == 0 {
			t.Fatalf("seed %d: entry kinds %v: the test does not cover every kind", seed, kinds)
		}
		check := func(a netip.Addr) {
			if got, want := h.lookup(a), longestMatch(final, a); got != want {
				t.Fatalf("seed %d: %s: h48 %d, longest prefix %d", seed, a, got, want)
			}
		}
		for p := range final {
			check(p.Addr())
			last := p.Addr().As16()
			for b := p.Bits(); b < 128; b++ {
				last[b/8] |= 0x80 >> (b % 8)
			}
			check(netip.AddrFrom16(last))
			if n := netip.AddrFrom16(last).Next(); n.IsValid() {
				check(n)
			}
			if prev := p.Addr().Prev(); prev.IsValid() {
				check(prev)
			}
		}
		for i := 0; i < 20000; i++ {
			check(addr())
		}
	}
}
