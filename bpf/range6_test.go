package bpf

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sort"
	"testing"

	"github.com/xdpfw/xdpfw/proto"
)

// placed is a range6 table laid out as the kernel holds it, in memory: the
// entries of placeRange6 with its lines and direct blocks written out.
type placed struct {
	st     *range6State
	lines  []v4Line
	direct []uint32
	short  map[netip.Prefix]VecID
	long   map[netip.Prefix]VecID
}

// placeInMemory lays a table out with kernel ids equal to the compiler's.
func placeInMemory(t *testing.T, r *range6) *placed {
	t.Helper()
	kid := make([]uint32, MaxVectors)
	for i := range kid {
		kid[i] = uint32(i)
	}
	st, err := placeRange6(r, nil, kid)
	if err != nil {
		t.Fatal(err)
	}
	p := &placed{st: st, lines: make([]v4Line, st.capacity), direct: make([]uint32, int(st.blocks)*r6DirectLen),
		short: r.short, long: make(map[netip.Prefix]VecID, len(st.long))}
	for q, id := range st.long {
		p.long[q] = VecID(id)
	}
	for _, tr := range st.trees {
		copy(p.lines[tr.start:], tr.lines)
	}
	for _, b := range st.directs {
		copy(p.direct[int(b.index)*r6DirectLen:], b.entries)
	}
	return p
}

// lookup is the kernel's lookup (lookup.h, range6_lookup) over the encoded
// table, step by step.
func (p *placed) lookup(a netip.Addr) VecID {
	hi, _ := v6Halves(a)
	walk := func(e uint32, low uint16) VecID {
		return VecID(lookupTree(func(i uint32) v4Line { return p.lines[i] }, e&r6IndexMask, int(e>>r6KindShift), low))
	}
	var e uint32
	e48, in48 := p.st.h48[v6Key48(hi)]
	if e32, ok := p.st.h32[uint32(hi>>32)]; ok {
		switch kind := e32 >> r6KindShift; kind {
		case r6Vec:
			return VecID(e32 & 0xFFFF)
		case r6Direct:
			e = p.direct[int(e32&r6IndexMask)*r6DirectLen+int(uint16(hi>>16))]
			in48 = false
		default:
			if id := walk(e32, uint16(hi>>16)); id != r6Cut {
				return id
			}
			if !in48 {
				return noID
			}
		}
	} else if !in48 {
		return longestMatch(p.short, a)
	}
	low := uint16(hi)
	if in48 {
		if e48&r6One != 0 {
			if first, last := uint16(e48>>28), uint16(e48>>44); low >= first && low <= last {
				return VecID(e48 >> 14 & 0x3FFF)
			}
			return VecID(e48 & 0x3FFF)
		}
		e = uint32(e48)
	}
	switch e >> r6KindShift {
	case r6Vec:
		return VecID(e & 0xFFFF)
	case r6LPM:
		return longestMatch(p.long, a)
	}
	return walk(e, low)
}

const noID = VecID(0xFFFFFFFF)

// kinds counts what a placed table holds, by kind of entry and depth of
// tree, so a test can show it covers each.
func (p *placed) kinds() map[string]int {
	k := map[string]int{}
	depth := func(e uint32) int { return int(e >> r6KindShift) }
	for _, e := range p.st.h32 {
		switch kind := e >> r6KindShift; kind {
		case r6Vec:
			k["h32 vec"]++
		case r6Direct:
			k["h32 direct"]++
			for _, d := range p.direct[int(e&r6IndexMask)*r6DirectLen:][:r6DirectLen] {
				switch d >> r6KindShift {
				case r6Vec:
					k["direct vec"]++
				case r6LPM:
					k["direct lpm"]++
				default:
					k[fmt.Sprintf("direct tree depth %d", depth(d))]++
				}
			}
		default:
			k[fmt.Sprintf("h32 tree depth %d", depth(e))]++
		}
	}
	for _, e := range p.st.h48 {
		switch {
		case e&r6One != 0:
			k["h48 one"]++
		case uint32(e)>>r6KindShift == r6Vec:
			k["h48 vec"]++
		case uint32(e)>>r6KindShift == r6LPM:
			k["h48 lpm"]++
		default:
			k[fmt.Sprintf("h48 tree depth %d", depth(uint32(e)))]++
		}
	}
	return k
}

// range6Kinds are the kinds a test of the IPv6 range table must cover.
var range6Kinds = []string{
	"h32 vec", "h32 direct", "h32 tree depth 1", "h32 tree depth 2", "h32 tree depth 3",
	"direct vec", "direct lpm", "direct tree depth 1", "direct tree depth 2",
	"h48 one", "h48 vec", "h48 lpm", "h48 tree depth 1", "h48 tree depth 2", "h48 tree depth 3", "h48 tree depth 4",
}

func missingKinds(k map[string]int) []string {
	var out []string
	for _, name := range range6Kinds {
		if k[name] == 0 {
			out = append(out, name)
		}
	}
	return out
}

// prefix6 is the prefix of the given length at top 64 bits hi (and low
// bits lo).
func prefix6(hi, lo uint64, bits int) netip.Prefix {
	p, _ := v6Addr(hi, lo).Prefix(bits)
	return p
}

// structured6 adds, around base /32s, prefixes that give every kind of
// entry: a /32 alone (vec), /32s with 100 and 1,000 /48s (trees of two and
// three levels) and one /48 with a /40 (one level), a /32 with 3,000 /48s
// (direct), some of them cut (one level, two) or holding a /128 (lpm), sparse
// /32s with one /48 of each H48 kind, and /48s cut into 20, 300 and 5,000
// intervals (H48 trees of two, three and four levels). ids says which
// vector each gets.
func structured6(into map[netip.Prefix]VecID, id func() VecID) {
	add := func(p netip.Prefix) { into[p] = id() }
	const (
		vec32    = 0x2001_0dbb_0000_0000
		tree2    = 0x2001_0dbc_0000_0000
		tree3    = 0x2001_0dbd_0000_0000
		tree1    = 0x2001_0dbe_0000_0000
		direct   = 0x2001_0dbf_0000_0000
		sparse   = 0x2a00_1450_0000_0000
		deep     = 0x2a00_1451_0000_0000
		deeper   = 0x2a00_1452_0000_0000
		deepest  = 0x2a00_1453_0000_0000
		shortish = 0x2a00_0000_0000_0000
	)
	add(prefix6(vec32, 0, 32))
	for k := uint64(0); k < 100; k++ {
		add(prefix6(tree2|k*600<<16, 0, 48))
	}
	for k := uint64(0); k < 1000; k++ {
		add(prefix6(tree3|k*60<<16, 0, 48))
	}
	add(prefix6(tree3|0xFF00<<16, 0, 40))    // a /40 at the end,
	add(prefix6(tree3|0xFFFE<<16|5, 0, 64))  // the last /48 but one cut
	add(prefix6(direct|0xFFFE<<16|5, 0, 64)) // (and in the direct /32's /36)
	add(prefix6(tree1|0x4000<<16, 0, 40))
	add(prefix6(tree1|0x4001<<16|0x1200, 0, 56))
	for k := uint64(0); k < 3000; k++ {
		add(prefix6(direct|k*2<<16, 0, 48))
	}
	add(prefix6(direct|7<<16|0x10, 0, 60))       // cut: one line
	add(prefix6(direct|10<<16|0x8000, 0, 49))    // cut: one line, inside a /48 prefix
	add(prefix6(direct|11<<16|0x20, 1<<40, 128)) // lpm
	add(prefix6(direct|0xF000<<16, 0, 36))       // a /36 over many /48s
	for k := uint64(0); k < 20; k++ {            // cut: two lines
		add(prefix6(direct|13<<16|k*1000, 0, 64))
	}
	add(prefix6(sparse|1<<16|0x100, 0, 56))  // one
	add(prefix6(sparse|2<<16, 0, 48))        // vec
	add(prefix6(sparse|3<<16|0x30, 0, 128))  // lpm
	add(prefix6(sparse|4<<16|0x10, 0, 60))   // tree: 5 intervals
	add(prefix6(sparse|4<<16|0x1000, 0, 52)) //
	add(prefix6(sparse|5<<16|0xFFFF, 0, 64)) // one, at the /48's end
	add(prefix6(sparse|0xFFFF<<16, 0, 64))   // one, at the /48's start
	add(prefix6(shortish, 0, 16))            // a short prefix over them
	add(prefix6(shortish|0x1450_0000_0000, 0, 24))
	for k := uint64(0); k < 10; k++ { // 20 intervals
		add(prefix6(deep|7<<16|k*5000, 0, 64))
	}
	for k := uint64(0); k < 150; k++ { // 300 intervals
		add(prefix6(deeper|7<<16|k*400, 0, 64))
	}
	for k := uint64(0); k < 2500; k++ { // 5,000 intervals
		add(prefix6(deepest|7<<16|k*26, 0, 64))
	}
}

func TestRange6MatchesLongestPrefix(t *testing.T) {
	for seed := uint64(1); seed <= 2; seed++ {
		r := rand.New(rand.NewPCG(seed, 6))
		final := map[netip.Prefix]VecID{netip.MustParsePrefix("::/0"): 0}
		id := func() VecID { return VecID(1 + r.IntN(300)) }
		structured6(final, id)
		// Random nested prefixes of every length in a few /32s, crowded
		// into a few /48s, so they nest, collide and cut.
		var bases []uint64
		for i := 0; i < 3; i++ {
			bases = append(bases, r.Uint64()&^(1<<32-1))
		}
		bases = append(bases, 0x2001_0dbd_0000_0000, 0x2001_0dbf_0000_0000, 0) // inside the structured ones, and ::/32
		addr := func() netip.Addr {
			hi := bases[r.IntN(len(bases))] | r.Uint64()&(1<<32-1)
			if r.IntN(3) == 0 {
				hi &^= 0xFFF0000 // crowd a few /48s
			}
			return v6Addr(hi, r.Uint64())
		}
		for i := 0; i < 4000; i++ {
			bits := r.IntN(129)
			if r.IntN(2) == 0 {
				bits = []int{32, 33, 40, 47, 48, 49, 56, 63, 64, 64, 65, 127, 128}[r.IntN(13)]
			}
			p, _ := addr().Prefix(bits)
			final[p] = id()
		}
		rt := buildRange6(tableOf(final))
		pl := placeInMemory(t, rt)
		if missing := missingKinds(pl.kinds()); len(missing) > 0 {
			t.Fatalf("seed %d: no %v (%v): the test does not cover them", seed, missing, pl.kinds())
		}
		// The encoded table reads back as laid out.
		for k, e := range pl.st.h32 {
			if kind := e >> r6KindShift; kind >= 1 && int(kind) <= r4MaxDepth {
				n, err := walkTree(pl.lines, e&r6IndexMask, int(kind), func(uint16) error { return nil })
				if err != nil || n != pl.st.runs32[k] {
					t.Fatalf("seed %d: /32 %#x: walk gives %d lines (%v), placed %d", seed, k, n, err, pl.st.runs32[k])
				}
			}
		}
		check := func(a netip.Addr) {
			want := longestMatch(final, a)
			if got := rt.lookup(a); got != want {
				t.Fatalf("seed %d: %s: range table %d, longest prefix %d", seed, a, got, want)
			}
			if got := pl.lookup(a); got != want {
				t.Fatalf("seed %d: %s: encoded range table %d, longest prefix %d", seed, a, got, want)
			}
		}
		for p := range final {
			for _, a := range edges(p) {
				check(a)
			}
		}
		for i := 0; i < 20000; i++ {
			check(addr())
		}
		// Every /48 start and a random address of a direct /32, and of a
		// tree /32.
		for m := uint64(0); m < 1<<16; m += 1 + uint64(r.IntN(6)) {
			check(v6Addr(0x2001_0dbf_0000_0000|m<<16, 0))
			check(v6Addr(0x2001_0dbf_0000_0000|m<<16|r.Uint64()&0xFFFF, r.Uint64()))
			check(v6Addr(0x2001_0dbd_0000_0000|m<<16|r.Uint64()&0xFFFF, r.Uint64()))
		}
	}
}

// edges are the first and last addresses of a prefix and the addresses
// just outside it.
func edges(p netip.Prefix) []netip.Addr {
	last := p.Addr().As16()
	for b := p.Bits(); b < 128; b++ {
		last[b/8] |= 0x80 >> (b % 8)
	}
	out := []netip.Addr{p.Addr(), netip.AddrFrom16(last)}
	if n := netip.AddrFrom16(last).Next(); n.IsValid() {
		out = append(out, n)
	}
	if prev := p.Addr().Prev(); prev.IsValid() {
		out = append(out, prev)
	}
	return out
}

// TestRange6SparseKeepsTheShortTrieSmall: a feed of /48 to /64 scattered
// over the space costs no /32 entry and no line, and the trie keeps only
// the prefixes shorter than /32.
func TestRange6SparseKeepsTheShortTrieSmall(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	final := map[netip.Prefix]VecID{netip.MustParsePrefix("::/0"): 0, netip.MustParsePrefix("2000::/3"): 1}
	for i := 0; i < 5000; i++ {
		hi := 0x2000_0000_0000_0000 | r.Uint64()>>3
		final[prefix6(hi, 0, 48+r.IntN(17))] = 2
	}
	rt := buildRange6(tableOf(final))
	if len(rt.dense) != 0 || len(rt.short) != 2 {
		t.Fatalf("%d dense /32s, %d short prefixes: want 0 and 2", len(rt.dense), len(rt.short))
	}
	pl := placeInMemory(t, rt)
	if len(pl.st.trees) > len(final)/10 {
		t.Fatalf("%d trees for %d scattered prefixes: most should be one interval of an H48 entry", len(pl.st.trees), len(final))
	}
	for p := range final {
		for _, a := range edges(p) {
			if got, want := pl.lookup(a), longestMatch(final, a); got != want {
				t.Fatalf("%s: %d, longest prefix %d", a, got, want)
			}
		}
	}
}

// TestRange6PlacementReusesLines: placing the table of a slightly changed
// set over the old one rewrites a few lines and entries, in place.
func TestRange6PlacementReusesLines(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	final := map[netip.Prefix]VecID{netip.MustParsePrefix("::/0"): 0}
	structured6(final, func() VecID { return VecID(1 + r.IntN(3)) })
	kid := make([]uint32, MaxVectors)
	for i := range kid {
		kid[i] = uint32(i)
	}
	old, err := placeRange6(buildRange6(tableOf(final)), nil, kid)
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]netip.Prefix, 0, len(final))
	for p := range final {
		keys = append(keys, p)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	for _, p := range keys[:20] {
		final[p] = 4 // new vectors for 20 prefixes: their intervals change, not their layout
	}
	w, err := placeRange6(buildRange6(tableOf(final)), old, kid)
	if err != nil {
		t.Fatal(err)
	}
	if w.freshLines || w.freshDirect || w.capacity != old.capacity || w.top != old.top {
		t.Fatalf("fresh lines %v, blocks %v, capacity %d (was %d), top %d (was %d): want the old layout", w.freshLines, w.freshDirect, w.capacity, old.capacity, w.top, old.top)
	}
	for k, e := range w.h32 {
		if oe := old.h32[k]; e>>r6KindShift != 0 && e != oe && oe>>r6KindShift == e>>r6KindShift {
			t.Errorf("/32 %#x moved from %#x to %#x", k, oe, e)
		}
	}
	for k, sp := range w.runs48 {
		if o, ok := old.runs48[k]; ok && o.n >= sp.n && o.start != sp.start {
			t.Errorf("/48 %#x's tree moved from line %d to %d", k, o.start, sp.start)
		}
	}
}

// TestReadRange6RefusesDamage writes a table into the kernel, damages its
// maps the ways root could, and reads it back: an error each time, never a
// crash or a table that points nowhere.
func TestReadRange6RefusesDamage(t *testing.T) {
	fw := openTestFirewall(t)
	rs, _ := structuredRuleSet(rand.New(rand.NewPCG(9, 9)))
	c, err := CompileWith([]proto.RuleSet{rs}, fw.Interface(), CompileOptions{BigSetThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := fw.Apply(c)
	if err != nil {
		t.Fatal(err)
	}
	gen := uint32(rep.Generation)
	maps := fw.range6Maps(false)
	if _, err := readRange6(maps, gen); err != nil {
		t.Fatalf("undamaged table: %v", err)
	}
	h32, err := innerMap(maps.h32, gen)
	if err != nil {
		t.Fatal(err)
	}
	defer h32.Close()
	h48, err := innerMap(maps.h48, gen)
	if err != nil {
		t.Fatal(err)
	}
	defer h48.Close()
	var treeKey, directKey uint32
	var iter32 uint32
	var e32 uint32
	for it := h32.Iterate(); it.Next(&iter32, &e32); {
		switch kind := e32 >> r6KindShift; {
		case kind == r6Direct:
			directKey = iter32
		case kind >= 1 && int(kind) <= r4MaxDepth:
			treeKey = iter32
		}
	}
	var oneKey uint64
	var iter48, e48 uint64
	for it := h48.Iterate(); it.Next(&iter48, &e48); {
		if e48&r6One != 0 {
			oneKey = iter48
		}
	}
	damage := []struct {
		name  string
		apply func() error
	}{
		{"a tree beyond the lines", func() error { return h32.Put(treeKey, r6Entry(2, r6IndexMask)) }},
		{"a tree of depth 5", func() error { return h32.Put(treeKey, r6Entry(5, 0)) }},
		{"a direct block beyond the map", func() error { return h32.Put(directKey, r6Entry(r6Direct, 1000)) }},
		{"a vector id past the limit", func() error { return h32.Put(treeKey, r6Entry(r6Vec, uint32(MaxVectors))) }},
		{"an interval entry with stray bits", func() error { return h48.Put(oneKey, r6OneEntry(1, 2, 3, 9)|1<<60) }},
		{"an interval ending before it starts", func() error { return h48.Put(oneKey, r6OneEntry(1, 2, 9, 3)) }},
		{"a key that is not a /48", func() error { return h48.Put(oneKey|1, r6OneEntry(1, 2, 3, 9)) }},
	}
	for _, d := range damage {
		var save32 uint32
		var save48 uint64
		if err := h32.Lookup(treeKey, &save32); err != nil {
			t.Fatal(err)
		}
		saveDirect := uint32(0)
		if err := h32.Lookup(directKey, &saveDirect); err != nil {
			t.Fatal(err)
		}
		if err := h48.Lookup(oneKey, &save48); err != nil {
			t.Fatal(err)
		}
		if err := d.apply(); err != nil {
			t.Fatalf("%s: %v", d.name, err)
		}
		if _, err := readRange6(maps, gen); err == nil {
			t.Errorf("%s: read back without an error", d.name)
		} else {
			t.Logf("%s: %v", d.name, err)
		}
		// Repair.
		if err := h32.Put(treeKey, save32); err != nil {
			t.Fatal(err)
		}
		if err := h32.Put(directKey, saveDirect); err != nil {
			t.Fatal(err)
		}
		if err := h48.Put(oneKey, save48); err != nil {
			t.Fatal(err)
		}
		_ = h48.Delete(oneKey | 1)
		if _, err := readRange6(maps, gen); err != nil {
			t.Fatalf("after %s, repaired: %v", d.name, err)
		}
	}
}
