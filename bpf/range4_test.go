package bpf

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// lpm is the plain longest-prefix match the range table must equal.
func lpm(prefixes map[netip.Prefix]VecID, a netip.Addr) VecID {
	for bits := 32; bits >= 0; bits-- {
		p, _ := a.Prefix(bits)
		if id, ok := prefixes[p]; ok {
			return id
		}
	}
	panic("no /0 entry")
}

// denseSlash16 returns /32s at every step-th address from base (a /16's
// first address): n of them, 2n intervals in the /16.
func denseSlash16(base uint32, n, step int, id VecID, into map[netip.Prefix]VecID) {
	for k := 0; k < n; k++ {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], base+uint32(k*step))
		into[netip.PrefixFrom(netip.AddrFrom4(a), 32)] = id
	}
}

func TestRange4MatchesLongestPrefix(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		r := rand.New(rand.NewPCG(seed, 99))
		prefixes := map[netip.Prefix]VecID{netip.MustParsePrefix("0.0.0.0/0"): 0}
		// Clusters of nested, adjacent and overlapping prefixes inside a
		// few /16s, plus /0, /1 and /32 edges.
		var bases []uint32
		for i := 0; i < 4; i++ {
			bases = append(bases, r.Uint32()&0xFFFF0000)
		}
		bases = append(bases, 0, 0xFFFF0000)
		for i := 0; i < 3000; i++ {
			base := bases[r.IntN(len(bases))]
			var a [4]byte
			binary.BigEndian.PutUint32(a[:], base|r.Uint32()&0xFFFF)
			bits := []int{1, 8, 15, 16, 17, 20, 23, 24, 25, 26, 28, 30, 31, 32}[r.IntN(14)]
			p, _ := netip.AddrFrom4(a).Prefix(bits)
			prefixes[p] = VecID(1 + r.IntN(200))
		}
		// Trees of every depth: a /16 of one interval has none; 16 is one
		// line, 256 two levels, 4,096 three, more four.
		denseSlash16(0x0A000000, 8, 7, 201, prefixes)     // depth 1
		denseSlash16(0x0A010000, 100, 301, 202, prefixes) // depth 2
		denseSlash16(0x0A020000, 1500, 29, 203, prefixes) // depth 3
		denseSlash16(0x0A030000, 4000, 3, 204, prefixes)  // depth 4
		rt := buildRange4(tableOf(prefixes))
		depths := map[int]bool{}
		var all []v4Line
		roots := make([]uint32, r4Directs)
		treeDepth := make([]int, r4Directs)
		for i := range r4Directs {
			ps := rt.partsOf(i)
			if ps[0].start != 0 {
				t.Fatalf("seed %d: /16 %d's first part starts at %d", seed, i, ps[0].start)
			}
			if len(ps) == 1 {
				continue
			}
			lines, depth, err := encodeTree(ps, uint32(len(all)))
			if err != nil {
				t.Fatal(err)
			}
			if len(lines) != treeLines(len(ps)) {
				t.Fatalf("seed %d: %d parts laid out in %d lines, treeLines says %d", seed, len(ps), len(lines), treeLines(len(ps)))
			}
			roots[i], treeDepth[i] = uint32(len(all)), depth
			depths[depth] = true
			all = append(all, lines...)
		}
		for d := 1; d <= r4MaxDepth; d++ {
			if !depths[d] {
				t.Fatalf("seed %d: no tree of depth %d: the test does not cover it", seed, d)
			}
		}
		// The tables read back as laid out.
		used := map[uint32]bool{}
		for i, d := range treeDepth {
			if d == 0 {
				continue
			}
			n, err := walkTree(all, roots[i], d, vecLeaves(used))
			if err != nil || int(n) != treeLines(len(rt.partsOf(i))) {
				t.Fatalf("seed %d: /16 %d: walk gives %d lines, %v", seed, i, n, err)
			}
		}
		check := func(a netip.Addr) {
			want := lpm(prefixes, a)
			if got := rt.lookup(a); got != want {
				t.Fatalf("seed %d: %s: range table %d, longest prefix %d", seed, a, got, want)
			}
			u := v4Uint(a)
			if d := treeDepth[u>>16]; d > 0 {
				got := lookupTree(func(i uint32) v4Line { return all[i] }, roots[u>>16], d, uint16(u))
				if VecID(got) != want {
					t.Fatalf("seed %d: %s: tree of depth %d gives %d, longest prefix %d", seed, a, d, got, want)
				}
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
			binary.BigEndian.PutUint32(a[:], 0x0A000000|r.Uint32()&0x3FFFF)
			check(netip.AddrFrom4(a))
		}
	}
}

// TestWalkTreeRefusesDamage: a damaged lines map (anything root can write)
// gives an error when read back, never a crash or a wrong count.
func TestWalkTreeRefusesDamage(t *testing.T) {
	ps := []part{{0, 1}}
	for k := 1; k < 200; k++ {
		ps = append(ps, part{uint16(k * 300), VecID(k % 5)})
	}
	lines, depth, err := encodeTree(ps, 0)
	if err != nil || depth != 2 {
		t.Fatalf("depth %d, %v", depth, err)
	}
	if _, err := walkTree(lines[:len(lines)-1], 0, depth, vecLeaves(map[uint32]bool{})); err == nil {
		t.Error("a tree cut short read back without an error")
	}
	bad := append([]v4Line(nil), lines...)
	bad[0].Ids[0] = 7 // the leaves do not start after the root
	if _, err := walkTree(bad, 0, depth, vecLeaves(map[uint32]bool{})); err == nil {
		t.Error("a root pointing into its own level read back without an error")
	}
	if _, err := walkTree(lines, 0, r4MaxDepth+1, vecLeaves(map[uint32]bool{})); err == nil {
		t.Error("a tree deeper than the kernel walks read back without an error")
	}
	bad = append([]v4Line(nil), lines...)
	bad[len(bad)-1].Ids[1] = uint16(MaxVectors) // a vector id place would index past its ids with
	if _, err := walkTree(bad, 0, depth, vecLeaves(map[uint32]bool{})); err == nil {
		t.Error("a leaf with a vector id past the limit read back without an error")
	}
	if _, _, err := encodeTree(ps, r4LineMask); err == nil {
		t.Error("a tree beyond the lines an entry can point at was laid out")
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
