package bpf

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"
)

// The IPv6 prefix table for big sets (docs/dataplane.md, "The IPv6 range table"). A hash of /48s
// with an LPM trie behind it was fast for feeds of /48 to /64 prefixes
// scattered over the address space, and slow for the realistic mix of /33
// to /64 packed into the /32s of a few networks: most /48s there hold more
// intervals than a block did (trie), and every address outside them went to
// a trie of the /33 to /47s. So the IPv6 table is a range table too, with
// the IPv4 table's lines (struct fw_v4_line): prefixes up to /64 cut the top
// 64 bits of the space into intervals, found per /32 and then per /48, 16
// bits a level. firewall.h (enum fw_range6) has the layout; in short:
//
//   - a dense /32 (one holding a prefix of /32 to /47, or more than
//     r6SparseSlash48s /48s with vectors of their own) has an H32 entry: its
//     vector, or a tree over its /48s whose leaves are vectors or "cut" (the
//     /48 has an H48 entry), or, for the densest (more than r6DirectParts
//     parts), a direct block of 65,536 /48 entries (a table without dense
//     /32s tells the program to skip H32: FW_FIELD_*6_DENSE);
//   - a /48 that intervals start inside (cut) holds a tree over its bits
//     48..63, or just one interval in its H48 entry; a /48 that holds a
//     prefix longer than /64 is looked up in an LPM trie of such /48s;
//   - a sparse /32 (every other /32 holding prefixes) has no H32 entry: its
//     /48s whose vector is not the /32's have H48 entries, as before, so a
//     feed of scattered /48s costs what it did;
//   - everything else is decided by the prefixes shorter than /32, in the
//     src6/dst6 trie: usually a handful.

// Layout constants, from firewall.h.
const (
	r6KindShift    = uint32(firewallFwRange6FW_R6KIND_SHIFT)
	r6IndexMask    = uint32(firewallFwRange6FW_R6INDEX_MASK)
	r6Vec          = uint32(firewallFwRange6FW_R6VEC)
	r6Direct       = uint32(firewallFwRange6FW_R6DIRECT)
	r6LPM          = uint32(firewallFwRange6FW_R6LPM)
	r6Cut          = VecID(firewallFwRange6FW_R6CUT)
	r6One          = uint64(1) << firewallFwRange6FW_R6ONE_BIT
	r6DirectValues = int(firewallFwRange6FW_R6DIRECT_VALUES)
	r6DirectLen    = r6DirectValues * 16 // /48 entries of a direct block
)

// Choices of the builder.
const (
	// r6DirectParts: a dense /32 cut into more /48-granular parts (a cut
	// /48 counting as one) gets a direct block (256 KB) instead of a tree:
	// a tree would need four levels, and its cut /48s an H48 entry each
	// (about 100 bytes of kernel memory, and a hash lookup per packet). So
	// a direct block costs at most 64 bytes a part, about what it saves.
	r6DirectParts = 4096
	// r6SparseSlash48s: a /32 whose prefixes are all /48 or longer, with at
	// most this many /48s whose vector differs from the /32's, keeps them
	// in H48 entries alone (no H32 entry, no tree: one line holds 16).
	r6SparseSlash48s = 16
)

// range6 is the range table of one field, in compiler vector ids.
type range6 struct {
	dense   []dense32 // by key
	parts32 []part    // the dense /32s' parts over bits 32..47
	s48     []slash48 // by key: the /48s with entries of their own
	parts48 []part    // their parts over bits 48..63
	// short holds the prefixes shorter than /32 (with ::/0): the LPM trie
	// addresses fall back to.
	short map[netip.Prefix]VecID
	// long holds the prefixes of the /48s that hold one longer than /64,
	// and each such /48 with the vector it has outside them.
	long map[netip.Prefix]VecID
}

// dense32 is a /32 with an H32 entry.
type dense32 struct {
	key        uint32 // the /32's top 32 bits
	first, end int32  // its parts in parts32; a part id r6Cut: a cut /48
	direct     bool
}

// slash48 is a /48 with an entry of its own: a cut /48 of a dense /32 (its
// direct entry, or an H48 entry), or a /48 of a sparse /32 whose vector is
// not the /32's (an H48 entry).
type slash48 struct {
	key        uint64 // the /48 in the top 48 bits
	first, end int32  // its parts in parts48 (none when lpm)
	lpm        bool   // it holds a prefix longer than /64: the long trie
	inDirect   bool   // of a /32 with a direct block
}

func (r *range6) partsOf32(d dense32) []part { return r.parts32[d.first:d.end] }
func (r *range6) partsOf48(s slash48) []part { return r.parts48[s.first:s.end] }

// v6Key48 is the H48 key of an address's top 64 bits: its /48.
func v6Key48(hi uint64) uint64 { return hi &^ 0xFFFF }

func v6Halves(a netip.Addr) (hi, lo uint64) {
	b := a.As16()
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
}

func v6Addr(hi, lo uint64) netip.Addr {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], lo)
	return netip.AddrFrom16(b)
}

// partAt is the id of the part holding v (parts by start, the first at 0).
func partAt(ps []part, v uint16) VecID {
	i, _ := slices.BinarySearchFunc(ps, int(v)+1, func(p part, t int) int { return cmp.Compare(int(p.start), t) })
	return ps[i-1].id
}

// buildRange6 turns a field's IPv6 prefixes (final vectors, sorted, with
// ::/0) into a range table.
func buildRange6(t prefixTable) *range6 {
	r := &range6{short: make(map[netip.Prefix]VecID), long: make(map[netip.Prefix]VecID)}
	// One pass in address order: the prefixes up to /64 for the intervals,
	// the /32s that hold prefixes (with the vector their enclosing shorter
	// prefixes give), the /32s holding /32 to /47s, and the /48s holding a
	// prefix longer than /64 (the long trie's).
	var flat []int32
	type slash32 struct {
		key   uint32
		outer VecID // the vector of the longest prefix shorter than /32 over it
		mid   bool  // it holds a prefix of /32 to /47
	}
	var s32 []slash32
	var lpm48 []uint64
	var stack []int // the prefixes enclosing the current one
	ps := t.prefixes
	for i := 0; i < len(ps); {
		p := ps[i]
		for len(stack) > 0 && !ps[stack[len(stack)-1]].Contains(p.Addr()) {
			stack = stack[:len(stack)-1]
		}
		hi, _ := v6Halves(p.Addr())
		if p.Bits() >= 32 {
			if k := uint32(hi >> 32); len(s32) == 0 || s32[len(s32)-1].key != k {
				// The first prefix of its /32: nothing of the /32 is
				// on the stack yet.
				s32 = append(s32, slash32{key: k, outer: t.ids[stack[len(stack)-1]]})
			}
		}
		if p.Bits() < 48 {
			if p.Bits() < 32 {
				r.short[p] = t.ids[i]
			} else {
				s32[len(s32)-1].mid = true
			}
			flat = append(flat, int32(i))
			stack = append(stack, i)
			i++
			continue
		}
		// The /48's prefixes of /48 and longer come together (sorted by
		// address, then length): take them as a group.
		key := v6Key48(hi)
		j, longer := i, false
		for ; j < len(ps) && ps[j].Bits() >= 48; j++ {
			if h, _ := v6Halves(ps[j].Addr()); v6Key48(h) != key {
				break
			}
			if ps[j].Bits() > 64 {
				longer = true
			} else {
				flat = append(flat, int32(j))
			}
		}
		if longer {
			lpm48 = append(lpm48, key)
			base := t.ids[stack[len(stack)-1]] // ::/0 is always there
			if p.Bits() == 48 {
				base = t.ids[i]
			}
			r.long[netip.PrefixFrom(v6Addr(key, 0), 48)] = base
			for k := i; k < j; k++ {
				r.long[ps[k]] = t.ids[k]
			}
		}
		i = j
	}
	iv := flattenRanges(len(flat), func(k int) (uint64, uint64, VecID) {
		p := ps[flat[k]]
		start, _ := v6Halves(p.Addr())
		return start, start + (1<<(64-p.Bits()) - 1), t.ids[flat[k]]
	}, 0, 1<<64-1)

	k, l := 0, 0 // iv[k] holds the current /32's first address; lpm48[l:] are ahead
	var own []slash48
	for _, s := range s32 {
		lo := uint64(s.key) << 32
		for k+1 < len(iv) && iv[k+1].start <= lo {
			k++
		}
		first32 := int32(len(r.parts32))
		parts := r.parts32
		emit := func(at uint16, id VecID) {
			n := len(parts)
			if int32(n) > first32 && parts[n-1].start == at {
				parts[n-1].id = id
				if int32(n) > first32+1 && parts[n-2].id == id {
					parts = parts[:n-1]
				}
				return
			}
			if int32(n) == first32 || parts[n-1].id != id {
				parts = append(parts, part{at, id})
			}
		}
		emit(0, iv[k].id)
		cur := iv[k].id // the vector in effect
		own = own[:0]
		j := k + 1
		for {
			// The next /48 that an interval starts in, or that is LPM.
			m, ok := uint32(1<<16), false
			if j < len(iv) && iv[j].start <= lo|0xFFFFFFFF {
				m, ok = uint32(iv[j].start>>16)&0xFFFF, true
			}
			isLPM := false
			if l < len(lpm48) && lpm48[l]>>32 == uint64(s.key) && uint32(lpm48[l]>>16)&0xFFFF <= m {
				m, ok, isLPM = uint32(lpm48[l]>>16)&0xFFFF, true, true
				l++
			}
			if !ok {
				break
			}
			enter, cut, g := cur, isLPM, j
			for ; j < len(iv) && iv[j].start <= lo|0xFFFFFFFF && uint32(iv[j].start>>16)&0xFFFF == m; j++ {
				if iv[j].start&0xFFFF == 0 {
					enter = iv[j].id
				} else {
					cut = true
				}
				cur = iv[j].id
			}
			if !cut {
				emit(uint16(m), enter)
				continue
			}
			own48 := slash48{key: lo | uint64(m)<<16, lpm: isLPM, first: int32(len(r.parts48))}
			if !isLPM {
				r.parts48 = append(r.parts48, part{0, enter})
				for _, in := range iv[g:j] {
					if in.start&0xFFFF != 0 {
						r.parts48 = append(r.parts48, part{uint16(in.start), in.id})
					}
				}
			}
			own48.end = int32(len(r.parts48))
			own = append(own, own48)
			emit(uint16(m), r6Cut)
			if m < 0xFFFF {
				emit(uint16(m+1), cur)
			}
		}
		if j > k+1 {
			k = j - 1 // the next /32 starts inside the last interval seen
		}
		r.parts32 = parts
		mine := r.parts32[first32:]

		// Sparse, dense or direct.
		differ, granular := 0, 0
		for x, p := range mine {
			width := 1 << 16
			if x+1 < len(mine) {
				width = int(mine[x+1].start)
			}
			width -= int(p.start)
			if p.id != s.outer {
				differ += width
			}
			if p.id == r6Cut {
				granular += width
			} else {
				granular++
			}
		}
		if !s.mid && differ <= r6SparseSlash48s {
			// Sparse: the /48s that differ from the /32 (outside the cut
			// ones) get H48 entries of one part.
			for x, p := range mine {
				if p.id == s.outer || p.id == r6Cut {
					continue
				}
				end := 1 << 16
				if x+1 < len(mine) {
					end = int(mine[x+1].start)
				}
				for m := int(p.start); m < end; m++ {
					own = append(own, slash48{key: lo | uint64(m)<<16, first: int32(len(r.parts48)), end: int32(len(r.parts48) + 1)})
					r.parts48 = append(r.parts48, part{0, p.id})
				}
			}
			slices.SortFunc(own, func(a, b slash48) int { return cmp.Compare(a.key, b.key) })
			r.s48 = append(r.s48, own...)
			r.parts32 = r.parts32[:first32]
			continue
		}
		d := dense32{key: s.key, first: first32, end: int32(len(r.parts32)), direct: granular > r6DirectParts}
		for x := range own {
			own[x].inDirect = d.direct
		}
		r.dense = append(r.dense, d)
		r.s48 = append(r.s48, own...)
	}
	return r
}

// lookup is the Go model of the XDP program's lookup (lookup.h), on the
// compiled table: where it ends, not how the kernel's maps encode it.
func (r *range6) lookup(a netip.Addr) VecID {
	hi, _ := v6Halves(a)
	key48 := v6Key48(hi)
	if i, ok := slices.BinarySearchFunc(r.dense, uint32(hi>>32), func(d dense32, k uint32) int { return cmp.Compare(d.key, k) }); ok {
		if id := partAt(r.partsOf32(r.dense[i]), uint16(hi>>16)); id != r6Cut {
			return id
		}
	}
	i, ok := slices.BinarySearchFunc(r.s48, key48, func(s slash48, k uint64) int { return cmp.Compare(s.key, k) })
	if !ok {
		return longestMatch(r.short, a)
	}
	if s := r.s48[i]; !s.lpm {
		return partAt(r.partsOf48(s), uint16(hi))
	}
	return longestMatch(r.long, a)
}

// longestMatch is a plain longest-prefix match over a map.
func longestMatch(m map[netip.Prefix]VecID, a netip.Addr) VecID {
	for bits := a.BitLen(); bits >= 0; bits-- {
		p, _ := a.Prefix(bits)
		if id, ok := m[p]; ok {
			return id
		}
	}
	return 0
}
