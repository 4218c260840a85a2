package bpf

import (
	"fmt"
	"net/netip"
)

// The IPv4 prefix table for big sets (docs/dataplane.md, "The IPv4 range table"). The kernel's LPM
// trie costs a cache miss per trie level, over 2 µs a lookup under a flood
// of random sources at a million prefixes; a DIR-24 table (one read of a
// 64 MB array) missed the TLB and the caches on nearly every random source.
// A table that small enough to stay cached wins, as DXR and Poptrie show: so
// above a threshold a field's IPv4 prefixes become a range table instead.
//
// A longest-prefix match cuts the address space into intervals, each with
// the vector of the innermost prefix holding it. The range table keeps them
// per /16: a direct table of 65,536 __u32 entries (256 KB) says for each /16
// either the one vector of the whole /16, or the depth and root line of a
// B-tree of the /16's intervals, in 64-byte lines (struct fw_v4_line, one
// cache line each) of up to 16 intervals (a leaf) or 16 children (an inner
// line, whose children are consecutive lines). A /16 of up to 16 intervals
// is one line; of up to 256, two levels; a million random prefixes (a
// quarter /32, the rest /16 to /31) give about 30 intervals a /16, so a
// lookup reads the direct table and two lines. The whole is about 12 bytes
// a prefix at that size, where DIR-24 took 165.

// Layout constants, from firewall.h.
const (
	r4DirectBits = int(firewallFwRange4FW_R4DIRECT_BITS)
	r4Directs    = 1 << r4DirectBits
	r4DepthShift = uint32(firewallFwRange4FW_R4DEPTH_SHIFT)
	r4LineMask   = uint32(firewallFwRange4FW_R4LINE_MASK)
	r4Bounds     = int(firewallFwRange4FW_R4LINE_BOUNDS)
	r4Fanout     = r4Bounds + 1
	r4MaxDepth   = int(firewallFwRange4FW_R4MAX_DEPTH)
)

// part is an interval of a /16: from start (the address's low 16 bits) to
// the next part's start.
type part struct {
	start uint16
	id    VecID
}

// range4 is the range table of one field, in compiler vector ids.
type range4 struct {
	// slash16 holds the parts of each /16, the first starting at 0. One
	// part: the /16 has one vector, and no tree. An incremental update
	// replaces the /16s it changes and shares the others with the table
	// it started from.
	slash16 *paged16[part]
}

// interval is a run of addresses, from start to the next interval's start,
// that share one vector.
type interval struct {
	start uint64 // an IPv4 address, or the top 64 bits of an IPv6 one
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
		if out[n-1].start == start {
			out[n-1].id = id // a range starting where its sibling ended
			if n > 1 && out[n-2].id == id {
				out = out[:n-1]
			}
			return
		}
		if out[n-1].id != id {
			out = append(out, interval{start, id})
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

// buildRange4 flattens a field's IPv4 prefixes into a range table.
func buildRange4(t prefixTable) *range4 {
	return range4FromIntervals(flatten(t))
}

// range4FromIntervals cuts the intervals of the address space at every
// /16.
func range4FromIntervals(iv []interval) *range4 {
	all := make([]part, 0, len(iv)+r4Directs)
	r := &range4{slash16: &paged16[part]{}}
	k := 0 // iv[k] holds the current /16's first address
	for i := 0; i < r4Directs; i++ {
		lo := uint64(i) << 16
		for k+1 < len(iv) && iv[k+1].start <= lo {
			k++
		}
		first := len(all)
		all = append(all, part{0, iv[k].id})
		j := k + 1
		for j < len(iv) && iv[j].start <= lo|0xFFFF {
			all = append(all, part{uint16(iv[j].start), iv[j].id})
			j++
		}
		if j > k+1 {
			k = j - 1 // the next /16 starts inside the last interval seen
		}
		r.slash16.set(i, all[first:len(all):len(all)])
	}
	return r
}

// partsOf returns the parts of /16 i.
func (r *range4) partsOf(i int) []part { return r.slash16.get(i) }

// lookup is the Go model of the table's lookup, for the compiler's tests.
func (r *range4) lookup(a netip.Addr) VecID {
	u := v4Uint(a)
	ps := r.partsOf(int(u >> 16))
	low := uint16(u)
	id := ps[0].id
	for _, p := range ps[1:] {
		if p.start > low {
			break
		}
		id = p.id
	}
	return id
}

// v4Line is struct fw_v4_line: a line of a /16's B-tree.
type v4Line = firewallFwV4Line

// treeShape gives the number of lines on each level of the B-tree of n
// parts, leaves first; the root is the last level, of one line.
func treeShape(n int) []int {
	levels := []int{(n + r4Fanout - 1) / r4Fanout}
	for levels[len(levels)-1] > 1 {
		levels = append(levels, (levels[len(levels)-1]+r4Fanout-1)/r4Fanout)
	}
	return levels
}

// treeLines is the number of lines of the B-tree of n parts.
func treeLines(n int) int {
	total := 0
	for _, l := range treeShape(n) {
		total += l
	}
	return total
}

// encodeTree lays out the B-tree of a /16's parts (two or more, in kernel
// vector ids) as lines starting at line index base: the root first, then
// each level down to the leaves, each level's lines in address order, so
// an inner line's children are consecutive. It returns the lines and the
// tree's depth.
func encodeTree(ps []part, base uint32) ([]v4Line, int, error) {
	shape := treeShape(len(ps))
	depth := len(shape)
	if depth > r4MaxDepth {
		return nil, 0, fmt.Errorf("range table: %d intervals in a /16 need a tree of depth %d (at most %d)", len(ps), depth, r4MaxDepth)
	}
	total := treeLines(len(ps))
	if uint64(base)+uint64(total) > uint64(r4LineMask)+1 {
		return nil, 0, fmt.Errorf("range table: line %d beyond the %d an entry can point at", uint64(base)+uint64(total), r4LineMask+1)
	}
	lines := make([]v4Line, total)
	// levelStart[k]: index in lines of level k's first line (0: leaves).
	levelStart := make([]int, depth)
	at := 0
	for k := depth - 1; k >= 0; k-- {
		levelStart[k] = at
		at += shape[k]
	}
	// firsts[j]: the start of leaf (then node) j's range, for its parent.
	firsts := make([]uint16, shape[0])
	for j := range shape[0] {
		group := ps[j*r4Fanout : min((j+1)*r4Fanout, len(ps))]
		l := &lines[levelStart[0]+j]
		firsts[j] = group[0].start
		l.N = uint16(len(group) - 1)
		for x, p := range group {
			if x > 0 {
				l.Bounds[x-1] = p.start
			}
			l.Ids[x] = uint16(p.id)
		}
	}
	for k := 1; k < depth; k++ {
		next := make([]uint16, shape[k])
		for j := range shape[k] {
			children := firsts[j*r4Fanout : min((j+1)*r4Fanout, len(firsts))]
			l := &lines[levelStart[k]+j]
			next[j] = children[0]
			l.N = uint16(len(children) - 1)
			copy(l.Bounds[:], children[1:])
			child := base + uint32(levelStart[k-1]+j*r4Fanout)
			l.Ids[0], l.Ids[1] = uint16(child), uint16(child>>16)
		}
		firsts = next
	}
	return lines, depth, nil
}

// lookupTree is the Go model of the kernel's walk down a /16's tree: the
// vector id of the address whose low 16 bits are low.
func lookupTree(lines func(i uint32) v4Line, root uint32, depth int, low uint16) uint16 {
	index := root
	for level := 1; ; level++ {
		l := lines(index)
		p := 0
		for _, b := range l.Bounds {
			if b != 0 && b <= low {
				p++
			}
		}
		if level >= depth {
			return l.Ids[p]
		}
		index = (uint32(l.Ids[0]) | uint32(l.Ids[1])<<16) + uint32(p)
	}
}
