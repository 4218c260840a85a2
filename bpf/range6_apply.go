package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// range6State is an IPv6 range table as one generation holds it in the
// kernel: kernel vector ids, line indexes of the generation's lines map,
// block indexes of its direct map.
type range6State struct {
	h32  map[uint32]uint32 // /32 key -> /32 entry
	h48  map[uint64]uint64 // /48 key -> H48 entry
	long map[netip.Prefix]uint32

	capacity uint32 // lines in the generation's lines map
	top      uint32 // lines from top on are free
	// runs32[k] and runs48[k] are the lines reserved for the tree of /32
	// k (rooted where its H32 entry says) and of /48 k (as its H48 or
	// direct entry says). A tree rewritten in place may be shorter.
	runs32 map[uint32]uint32
	runs48 map[uint64]lineSpan
	blocks uint32 // direct blocks the generation's direct map holds
	// usedVecs are the vector ids the table points at.
	usedVecs map[uint32]bool

	// Set by placeRange6: the trees and direct blocks to write, and which
	// maps must be new (their capacity changed).
	trees                   []lineRun
	directs                 []directBlock
	freshLines, freshDirect bool
}

type lineSpan struct{ start, n uint32 }

// directBlock is the /48 entries of one dense /32's direct block.
type directBlock struct {
	index   uint32
	entries []uint32 // r6DirectLen
}

// range6Maps are the maps of one field's IPv6 range table.
type range6Maps struct {
	name                    string // "src6" or "dst6"
	h32, h48, direct, lines *ebpf.Map
	long                    *ebpf.Map
	h32Name, h48Name, dName string
	linesName, longName     string
}

func (fw *Firewall) range6Maps(dst bool) range6Maps {
	m := range6Maps{name: "src6", h32: fw.objs.Src6H32, h48: fw.objs.Src6Cut48, direct: fw.objs.Src6Direct,
		lines: fw.objs.Src6Lines, long: fw.objs.Src6Long}
	if dst {
		m = range6Maps{name: "dst6", h32: fw.objs.Dst6H32, h48: fw.objs.Dst6Cut48, direct: fw.objs.Dst6Direct,
			lines: fw.objs.Dst6Lines, long: fw.objs.Dst6Long}
	}
	m.h32Name, m.h48Name, m.dName = m.name+"_h32", m.name+"_cut48", m.name+"_direct"
	m.linesName, m.longName = m.name+"_lines", m.name+"_long"
	return m
}

// Encodings of the entries (firewall.h, enum fw_range6).
func r6Entry(kind, rest uint32) uint32 { return kind<<r6KindShift | rest }

func r6OneEntry(out, in uint32, first, last uint16) uint64 {
	return r6One | uint64(last)<<44 | uint64(first)<<28 | uint64(in)<<14 | uint64(out)
}

// placeRange6 translates a compiled IPv6 range table into kernel ids and
// places its trees in the generation's lines and its direct blocks in the
// generation's direct map: each tree where the generation already keeps a
// tree of that /32 or /48, if it fits there (the generation is inactive, so
// it is rewritten in place), else after the last line in use; each block
// where the generation keeps that /32's block, else in a free one. When the
// lines (the blocks) run out, they are laid out afresh in a new, bigger
// map. A change of a few prefixes so rewrites a few lines and entries.
func placeRange6(r *range6, cur *range6State, kid []uint32) (*range6State, error) {
	w, err := layoutRange6(r, cur, kid, false)
	if err != nil {
		return nil, err
	}
	if w.top > w.capacity {
		return layoutRange6(r, cur, kid, true)
	}
	return w, nil
}

func layoutRange6(r *range6, cur *range6State, kid []uint32, fresh bool) (*range6State, error) {
	w := &range6State{
		h32: make(map[uint32]uint32, len(r.dense)), h48: make(map[uint64]uint64, len(r.s48)),
		long: remap(r.long, kid), runs32: map[uint32]uint32{}, runs48: map[uint64]lineSpan{},
		usedVecs: map[uint32]bool{},
	}
	if cur == nil {
		cur = &range6State{}
	}
	reuse := !fresh && cur.runs32 != nil
	if reuse {
		w.capacity, w.top = cur.capacity, cur.top
	} else {
		w.freshLines = true
	}
	for _, id := range w.long {
		w.usedVecs[id] = true
	}
	vec := func(id VecID) uint32 {
		if id == r6Cut {
			return uint32(r6Cut)
		}
		k := kid[id]
		w.usedVecs[k] = true
		return k
	}
	var kps []part
	// tree lays out the tree of parts ps (compiler ids) in the lines
	// reserved by old (if it fits) or new ones, and returns its entry.
	tree := func(ps []part, old lineSpan, reserved func(lineSpan)) (uint32, error) {
		kps = kps[:0]
		for _, p := range ps {
			kps = append(kps, part{p.start, VecID(vec(p.id))})
		}
		need := uint32(treeLines(len(kps)))
		span := lineSpan{w.top, need}
		if reuse && old.n >= need {
			span = old
		} else {
			w.top += need
		}
		lines, depth, err := encodeTree(kps, span.start)
		if err != nil {
			return 0, err
		}
		reserved(span)
		w.trees = append(w.trees, lineRun{span.start, lines})
		return r6Entry(uint32(depth), span.start), nil
	}
	oldSpan48 := func(key uint64) lineSpan {
		if reuse {
			return cur.runs48[key]
		}
		return lineSpan{}
	}
	// entry48 is the entry of a /48 of its own: its direct entry (one
	// part: its vector), or the low half of its H48 entry.
	entry48 := func(s slash48) (uint32, error) {
		if s.lpm {
			return r6Entry(r6LPM, 0), nil
		}
		ps := r.partsOf48(s)
		if len(ps) == 1 {
			return r6Entry(r6Vec, vec(ps[0].id)), nil
		}
		return tree(ps, oldSpan48(s.key), func(sp lineSpan) { w.runs48[s.key] = sp })
	}

	// put48 gives a /48 of its own outside a direct block its H48 entry:
	// one interval when its parts are a run inside another (no line to
	// keep or read: a feed's /48 mostly holds one prefix), else its /48
	// entry.
	put48 := func(s slash48) error {
		if s.inDirect {
			return fmt.Errorf("range table: /48 %s of a direct block out of order", v6Addr(s.key, 0))
		}
		ps := r.partsOf48(s)
		switch {
		case !s.lpm && len(ps) == 2:
			w.h48[s.key] = r6OneEntry(vec(ps[0].id), vec(ps[1].id), ps[1].start, 0xFFFF)
		case !s.lpm && len(ps) == 3 && ps[0].id == ps[2].id:
			w.h48[s.key] = r6OneEntry(vec(ps[0].id), vec(ps[1].id), ps[1].start, ps[2].start-1)
		default:
			e, err := entry48(s)
			if err != nil {
				return err
			}
			w.h48[s.key] = uint64(e)
		}
		return nil
	}

	// Direct blocks: each /32 keeps its block if it had one.
	taken := map[uint32]bool{}
	blockOf := map[uint32]uint32{}
	for _, d := range r.dense {
		if e, ok := cur.h32[d.key]; ok && d.direct && e>>r6KindShift == r6Direct && e&r6IndexMask < cur.blocks {
			blockOf[d.key], taken[e&r6IndexMask] = e&r6IndexMask, true
		}
	}
	next := uint32(0)
	for _, d := range r.dense {
		if _, ok := blockOf[d.key]; !d.direct || ok {
			continue
		}
		for taken[next] {
			next++
		}
		blockOf[d.key], taken[next] = next, true
	}
	need := uint32(0)
	for _, b := range blockOf {
		need = max(need, b+1)
	}
	switch {
	case need == 0:
		w.blocks = 0 // no direct map
	case need > cur.blocks:
		w.blocks, w.freshDirect = need+need/4, true // room to grow, as for lines
	default:
		w.blocks = cur.blocks
	}

	x := 0 // r.s48[x:] are the /48s of this /32 on
	for _, d := range r.dense {
		lo := uint64(d.key) << 32
		for x < len(r.s48) && r.s48[x].key < lo {
			if err := put48(r.s48[x]); err != nil {
				return nil, err
			}
			x++
		}
		ps := r.partsOf32(d)
		switch {
		case d.direct:
			blk := directBlock{index: blockOf[d.key], entries: make([]uint32, r6DirectLen)}
			for i, p := range ps {
				end := 1 << 16
				if i+1 < len(ps) {
					end = int(ps[i+1].start)
				}
				if p.id != r6Cut {
					e := r6Entry(r6Vec, vec(p.id))
					for m := int(p.start); m < end; m++ {
						blk.entries[m] = e
					}
					continue
				}
				for m := int(p.start); m < end; m++ {
					key := lo | uint64(m)<<16
					if x >= len(r.s48) || r.s48[x].key != key {
						return nil, fmt.Errorf("range table: /48 %s is cut but has no entry", v6Addr(key, 0))
					}
					e, err := entry48(r.s48[x])
					if err != nil {
						return nil, err
					}
					blk.entries[m] = e
					x++
				}
			}
			w.directs = append(w.directs, blk)
			w.h32[d.key] = r6Entry(r6Direct, blk.index)
		case len(ps) == 1 && ps[0].id != r6Cut:
			w.h32[d.key] = r6Entry(r6Vec, vec(ps[0].id))
		default:
			old := lineSpan{}
			if n := cur.runs32[d.key]; reuse && n > 0 {
				old = lineSpan{cur.h32[d.key] & r6IndexMask, n}
			}
			e, err := tree(ps, old, func(sp lineSpan) { w.runs32[d.key] = sp.n })
			if err != nil {
				return nil, err
			}
			w.h32[d.key] = e
		}
	}
	for ; x < len(r.s48); x++ {
		if err := put48(r.s48[x]); err != nil {
			return nil, err
		}
	}
	if w.freshLines {
		// Room to grow: changes append trees until the next fresh layout.
		w.capacity = w.top + w.top/4 + 1024
	}
	return w, nil
}

// writeRange6 writes a generation's IPv6 range table of one field, creating
// the inner maps it lacks, or removes the table when want is nil.
func (fw *Firewall) writeRange6(gen uint32, maps range6Maps, cur, want *range6State, rep *ApplyReport) error {
	if cur == nil {
		cur = &range6State{}
	}
	curLong := cur.long
	if curLong == nil {
		curLong = map[netip.Prefix]uint32{}
	}
	if want == nil {
		for _, outer := range []*ebpf.Map{maps.h32, maps.h48, maps.direct, maps.lines} {
			if err := outer.Delete(gen); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("drop %s[%d]: %w", outer, gen, err)
			}
		}
		return diffLPM(maps.long, gen, curLong, map[netip.Prefix]uint32{}, rep, maps.longName)
	}
	// Lines and blocks before the entries that point at them (the
	// generation is not active, but a table should never point at
	// nothing).
	if err := fw.writeLines(gen, maps.lines, maps.linesName, want.freshLines || cur.runs32 == nil, want.capacity, want.trees, rep); err != nil {
		return err
	}
	want.trees = nil // kept between applies: where the trees are, not their lines
	if err := fw.writeDirect(gen, maps, want, rep); err != nil {
		return err
	}
	want.directs = nil
	if err := writeHash(fw, maps.h32, gen, maps.h32Name, cur.h32, want.h32, rep); err != nil {
		return err
	}
	if err := writeHash(fw, maps.h48, gen, maps.h48Name, cur.h48, want.h48, rep); err != nil {
		return err
	}
	return diffLPM(maps.long, gen, curLong, want.long, rep, maps.longName)
}

// writeDirect writes the direct blocks that differ from what the
// generation's direct map holds, in a new map when the layout asks.
func (fw *Firewall) writeDirect(gen uint32, maps range6Maps, want *range6State, rep *ApplyReport) error {
	if want.blocks == 0 {
		if err := maps.direct.Delete(gen); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("drop %s[%d]: %w", maps.dName, gen, err)
		}
		return nil
	}
	var m *ebpf.Map
	var err error
	if !want.freshDirect {
		if m, err = innerMap(maps.direct, gen); err != nil {
			return err
		}
	}
	size := want.blocks * uint32(r6DirectValues)
	if m == nil {
		if m, err = fw.newInner(maps.direct, gen, fw.spec.Maps[maps.dName].InnerMap, size); err != nil {
			return err
		}
	}
	defer m.Close()
	if m.MaxEntries() != size {
		return fmt.Errorf("%s of generation %d: %d entries, the placement assumed %d", maps.dName, gen, m.MaxEntries(), size)
	}
	mem, err := fw.memoryOf(maps.direct, gen, m)
	if err != nil {
		return fmt.Errorf("map %s: %w", maps.dName, err)
	}
	// Compare with what the map holds (a new map holds zeroes) and write
	// the runs of entries that differ.
	have := make([]uint32, r6DirectLen)
	changed := 0
	for _, b := range want.directs {
		base := int64(b.index) * int64(r6DirectLen) * 4
		if _, err := mem.ReadAt(u32Bytes(have), base); err != nil {
			return fmt.Errorf("read %s: %w", maps.dName, err)
		}
		for i := 0; i < r6DirectLen; {
			if b.entries[i] == have[i] {
				i++
				continue
			}
			j := i
			for j < r6DirectLen && b.entries[j] != have[j] {
				j++
			}
			if _, err := mem.WriteAt(u32Bytes(b.entries[i:j]), base+int64(i)*4); err != nil {
				return fmt.Errorf("write %s: %w", maps.dName, err)
			}
			changed += j - i
			i = j
		}
	}
	rep.Writes[maps.dName] += changed
	return nil
}

// writeHash brings the hash inner map of a generation's slot of outer from
// cur to want: the entries that differ, or all of them into a new map when
// the map is missing, too small, or far too big (a hash allocates its
// buckets up front).
func writeHash[K, V comparable](fw *Firewall, outer *ebpf.Map, gen uint32, name string, cur, want map[K]V, rep *ApplyReport) error {
	hash, err := innerMap(outer, gen)
	if err != nil {
		return err
	}
	size := uint32(len(want) + len(want)/4 + 1024)
	if hash != nil && (hash.MaxEntries() < uint32(len(want)) || hash.MaxEntries() > 4*size) {
		hash.Close()
		hash = nil
	}
	if hash == nil {
		if hash, err = fw.newInner(outer, gen, fw.spec.Maps[name].InnerMap, size); err != nil {
			return err
		}
		cur = nil
	}
	defer hash.Close()
	var putKeys, delKeys []K
	var putVals []V
	for k, v := range want {
		if old, ok := cur[k]; !ok || old != v {
			putKeys, putVals = append(putKeys, k), append(putVals, v)
		}
	}
	for k := range cur {
		if _, ok := want[k]; !ok {
			delKeys = append(delKeys, k)
		}
	}
	if len(putKeys) > 0 {
		if _, err := hash.BatchUpdate(putKeys, putVals, nil); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	if len(delKeys) > 0 {
		if _, err := hash.BatchDelete(delKeys, nil); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from %s: %w", name, err)
		}
	}
	rep.Writes[name] += len(putKeys) + len(delKeys)
	return nil
}

// readRange6 reads a generation's IPv6 range table of one field back from
// the kernel (nil when the generation has none), checking every entry and
// walking every tree: a table that points outside its maps, or holds what
// the compiler never writes, is an error, not a crash (the maps are the
// kernel's, but anything root can write).
func readRange6(maps range6Maps, gen uint32) (*range6State, error) {
	h32, err := innerMap(maps.h32, gen)
	if err != nil || h32 == nil {
		return nil, err
	}
	defer h32.Close()
	st := &range6State{h32: map[uint32]uint32{}, h48: map[uint64]uint64{}, runs32: map[uint32]uint32{},
		runs48: map[uint64]lineSpan{}, usedVecs: map[uint32]bool{}}
	if err := readHash(h32, maps.h32Name, st.h32); err != nil {
		return nil, err
	}
	h48, err := innerMap(maps.h48, gen)
	if err != nil {
		return nil, err
	}
	if h48 == nil {
		return nil, fmt.Errorf("%s range table of generation %d: no %s map", maps.name, gen, maps.h48Name)
	}
	defer h48.Close()
	if err := readHash(h48, maps.h48Name, st.h48); err != nil {
		return nil, err
	}
	var all []v4Line
	if lines, err := innerMap(maps.lines, gen); err != nil {
		return nil, err
	} else if lines != nil {
		defer lines.Close()
		st.capacity = lines.MaxEntries()
		all = make([]v4Line, st.capacity)
		if err := readMemory(lines, maps.linesName, linesBytes(all)); err != nil {
			return nil, err
		}
	}
	var direct []uint32
	if d, err := innerMap(maps.direct, gen); err != nil {
		return nil, err
	} else if d != nil {
		defer d.Close()
		if d.MaxEntries()%uint32(r6DirectValues) != 0 {
			return nil, fmt.Errorf("%s of generation %d: %d entries, not whole blocks", maps.dName, gen, d.MaxEntries())
		}
		st.blocks = d.MaxEntries() / uint32(r6DirectValues)
		direct = make([]uint32, int(st.blocks)*r6DirectLen)
		if err := readMemory(d, maps.dName, u32Bytes(direct)); err != nil {
			return nil, err
		}
	}
	if st.long, err = readLPM6(maps.long, gen); err != nil {
		return nil, err
	}

	vecs := vecLeaves(st.usedVecs)
	cuts := func(id uint16) error { // the leaves of a /32's tree
		if VecID(id) == r6Cut {
			return nil
		}
		return vecs(id)
	}
	tree := func(e uint32, leaf func(uint16) error) (lineSpan, error) {
		root := e & r6IndexMask
		n, err := walkTree(all, root, int(e>>r6KindShift), leaf)
		st.top = max(st.top, root+n)
		return lineSpan{root, n}, err
	}
	// entry48 checks a /48 entry and notes its tree's lines.
	entry48 := func(key uint64, e uint32) error {
		switch kind := e >> r6KindShift; {
		case kind == r6Vec && e>>16 == 0:
			return vecs(uint16(e))
		case kind == r6LPM && e&r6IndexMask == 0:
			return nil
		case kind >= 1 && int(kind) <= r4MaxDepth:
			span, err := tree(e, vecs)
			st.runs48[key] = span
			return err
		}
		return fmt.Errorf("entry %#x: %w", e, errBadEntry)
	}
	fail := func(what string, key uint64, err error) error {
		return fmt.Errorf("%s range table of generation %d, %s %s: %w", maps.name, gen, what, v6Addr(key, 0), err)
	}
	for k, e := range st.h32 {
		lo := uint64(k) << 32
		switch kind := e >> r6KindShift; {
		case kind == r6Vec && e>>16 == 0:
			err = vecs(uint16(e))
		case kind == r6Direct:
			b := e & r6IndexMask
			if b >= st.blocks {
				return nil, fail("/32", lo, fmt.Errorf("direct block %d of %d", b, st.blocks))
			}
			for m, e48 := range direct[int(b)*r6DirectLen : int(b+1)*r6DirectLen] {
				key := lo | uint64(m)<<16
				if err := entry48(key, e48); err != nil {
					return nil, fail("/48", key, err)
				}
			}
		case kind >= 1 && int(kind) <= r4MaxDepth:
			var span lineSpan
			span, err = tree(e, cuts)
			st.runs32[k] = span.n
		default:
			err = fmt.Errorf("entry %#x: %w", e, errBadEntry)
		}
		if err != nil {
			return nil, fail("/32", lo, err)
		}
	}
	for k, v := range st.h48 {
		switch {
		case k&0xFFFF != 0:
			err = fmt.Errorf("key %#x: not a /48", k)
		case v&r6One != 0:
			first, last := uint16(v>>28), uint16(v>>44)
			if v>>60 != r6One>>60 || first > last {
				err = fmt.Errorf("entry %#x: %w", v, errBadEntry)
			} else if err = vecs(uint16(v & 0x3FFF)); err == nil {
				err = vecs(uint16(v >> 14 & 0x3FFF))
			}
		case v>>32 != 0:
			err = fmt.Errorf("entry %#x: %w", v, errBadEntry)
		default:
			err = entry48(k, uint32(v))
		}
		if err != nil {
			return nil, fail("/48", k, err)
		}
	}
	for p, id := range st.long {
		if int(id) >= MaxVectors {
			return nil, fmt.Errorf("%s of generation %d, %s: vector id %d (at most %d)", maps.longName, gen, p, id, MaxVectors-1)
		}
		st.usedVecs[id] = true
	}
	return st, nil
}

// readHash reads every entry of a hash map into out.
func readHash[K comparable, V any](m *ebpf.Map, name string, out map[K]V) error {
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate %s: %w", name, err)
	}
	return nil
}

// readMemory reads an mmapable map whole into b.
func readMemory(m *ebpf.Map, name string, b []byte) error {
	mem, err := m.Memory()
	if err != nil {
		return fmt.Errorf("map %s: %w", name, err)
	}
	if _, err := mem.ReadAt(b, 0); err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	return nil
}
