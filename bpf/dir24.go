package bpf

import "net/netip"

// The IPv4 prefix table for big sets (DESIGN.md section 4): the kernel's
// LPM trie costs one cache miss per trie level, over 1 µs a lookup at a
// million random prefixes, so above a threshold a field's IPv4 prefixes are
// flattened into a DIR-24 table instead: one 32-bit entry per /24, read in
// one memory access. An entry is either the vector id for the whole /24, or
// points to a 48-byte block listing where inside the /24 the vector changes
// (up to 16 intervals: one more read, one cache line), or, for the rare
// /24 cut into more intervals, to a 256-entry table indexed by the last
// byte. A million random prefixes (a quarter of them /32, the rest /16 to
// /31) need about 64 MB of table plus 20 MB of blocks per generation.

// Kinds of a DIR-24 entry, in its top two bits.
const (
	dir24Vec   = 0 << 30
	dir24Block = 1 << 30
	dir24T8    = 2 << 30
	dir24Kind  = 3 << 30
	dir24Index = 1<<30 - 1

	dir24Entries     = 1 << 24
	v4BlockIntervals = 16
)

// v4Block lists the intervals of one /24: interval 0 starts at .0,
// interval i (1 <= i <= n) at bounds[i-1], ascending.
type v4Block struct {
	n      uint8
	bounds [v4BlockIntervals - 1]uint8
	ids    [v4BlockIntervals]uint16
}

// v4T8 holds one vector id per address of a /24.
type v4T8 [256]uint16

// dir24 is the flattened IPv4 table of one field.
type dir24 struct {
	t24    []uint32 // dir24Entries
	blocks []v4Block
	t8     []v4T8
}

// interval is a run of addresses, from start to the next interval's start,
// that share one vector.
type interval struct {
	start uint32
	id    VecID
}

// flatten turns a field's IPv4 prefixes (with their final vectors, as
// compilePrefixes computes them, with a /0 entry) into the sorted list of
// intervals a longest-prefix match gives over the whole address space.
func flatten(t prefixTable) []interval {
	return flattenRanges(len(t.prefixes), func(i int) (uint64, uint64, VecID) {
		start := uint64(v4Uint(t.prefixes[i].Addr()))
		return start, start + (1 << (32 - t.prefixes[i].Bits())) - 1, t.ids[i]
	}, 0, 1<<32-1)
}

// flattenRanges turns ranges [start, end] of addresses, each with a vector,
// into intervals: where each run of addresses starts, and the vector of the
// innermost range holding it; addresses in no range (up to last) get base.
// The ranges are prefixes in sortPrefixes order: each lies inside or after
// the ones before it.
func flattenRanges(n int, rangeOf func(i int) (start, end uint64, id VecID), base VecID, last uint64) []interval {
	type open struct {
		end uint64 // last address, inclusive
		id  VecID
	}
	out := []interval{{0, base}}
	emit := func(start uint64, id VecID) {
		n := len(out)
		if uint64(out[n-1].start) == start {
			out[n-1].id = id // a range starting where its sibling ended
			if n > 1 && out[n-2].id == id {
				out = out[:n-1]
			}
			return
		}
		if out[n-1].id != id {
			out = append(out, interval{uint32(start), id})
		}
	}
	stack := []open{{last, base}}
	closeTop := func() {
		top := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if top.end < last {
			emit(top.end+1, stack[len(stack)-1].id)
		}
	}
	for i := 0; i < n; i++ {
		start, end, id := rangeOf(i)
		for stack[len(stack)-1].end < start {
			closeTop()
		}
		emit(start, id)
		stack = append(stack, open{end, id})
	}
	for len(stack) > 1 {
		closeTop()
	}
	return out
}

func v4Uint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// buildDir24 flattens a field's IPv4 prefixes into a DIR-24 table.
// Identical blocks are stored once.
func buildDir24(t prefixTable) *dir24 {
	iv := flatten(t)
	d := &dir24{t24: make([]uint32, dir24Entries)}
	blockIdx := make(map[v4Block]uint32)
	t8Idx := make(map[v4T8]uint32)
	k := 0 // iv[k] is the interval holding the current /24's first address
	for i := 0; i < dir24Entries; i++ {
		lo := uint32(i) << 8
		for k+1 < len(iv) && iv[k+1].start <= lo {
			k++
		}
		// Intervals starting inside this /24, after its first address.
		j := k + 1
		for j < len(iv) && iv[j].start <= lo+255 {
			j++
		}
		inside := iv[k+1 : j]
		switch {
		case len(inside) == 0:
			d.t24[i] = dir24Vec | iv[k].id
		case len(inside) < v4BlockIntervals:
			var b v4Block
			b.n = uint8(len(inside))
			b.ids[0] = uint16(iv[k].id)
			for x, in := range inside {
				b.bounds[x] = uint8(in.start)
				b.ids[x+1] = uint16(in.id)
			}
			idx, ok := blockIdx[b]
			if !ok {
				idx = uint32(len(d.blocks))
				blockIdx[b] = idx
				d.blocks = append(d.blocks, b)
			}
			d.t24[i] = dir24Block | idx
		default:
			var t v4T8
			cur := iv[k].id
			next := 0
			for a := 0; a < 256; a++ {
				if next < len(inside) && int(uint8(inside[next].start)) == a {
					cur = inside[next].id
					next++
				}
				t[a] = uint16(cur)
			}
			idx, ok := t8Idx[t]
			if !ok {
				idx = uint32(len(d.t8))
				t8Idx[t] = idx
				d.t8 = append(d.t8, t)
			}
			d.t24[i] = dir24T8 | idx
		}
		// The next /24 starts inside the last interval seen here.
		if j > k+1 {
			k = j - 1
		}
	}
	return d
}

// lookup is the Go model of the XDP program's DIR-24 lookup.
func (d *dir24) lookup(a netip.Addr) VecID {
	u := v4Uint(a)
	e := d.t24[u>>8]
	low := uint8(u)
	switch e & dir24Kind {
	case dir24Block:
		b := &d.blocks[e&dir24Index]
		i := 0
		for x := 0; x < int(b.n); x++ {
			if b.bounds[x] <= low {
				i = x + 1
			}
		}
		return VecID(b.ids[i])
	case dir24T8:
		return VecID(d.t8[e&dir24Index][low])
	}
	return VecID(e & 0xFFFF)
}
