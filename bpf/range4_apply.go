package bpf

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
)

// range4State is a range table as one generation holds it in the kernel:
// kernel vector ids, line indexes of the generation's lines map.
type range4State struct {
	direct []uint32 // r4Directs entries
	// runs[i] is the number of lines reserved for /16 i's tree, from its
	// root (0: no tree). A tree rewritten in place may be shorter.
	runs     []uint32
	capacity uint32 // lines in the generation's lines map
	top      uint32 // lines from top on are free
	usedVecs map[uint32]bool

	// Set by placeRange4: the trees to write, and whether the lines need
	// a new map (capacity changed).
	trees []lineRun
	fresh bool
}

// lineRun is the lines of one /16's tree, from line start.
type lineRun struct {
	start uint32
	lines []v4Line
}

// range4Maps are the outer maps (one slot per generation) of one field.
type range4Maps struct {
	name          string
	direct, lines *ebpf.Map
}

func (fw *Firewall) range4Maps(dst bool) range4Maps {
	if dst {
		return range4Maps{"dst4", fw.objs.Dst4Direct, fw.objs.Dst4Lines}
	}
	return range4Maps{"src4", fw.objs.Src4Direct, fw.objs.Src4Lines}
}

// placeRange4 translates a compiled table into kernel ids and places each
// /16's tree in the generation's lines: where the generation already keeps
// a tree for that /16, if it fits there (the generation is inactive, so it
// is rewritten in place), else after the last line in use. When the lines
// run out, every tree is laid out afresh in a new, bigger map. A change of
// a few prefixes so rewrites a few lines, and the writer skips the trees
// whose lines hold the same bytes already.
func placeRange4(r *range4, cur *range4State, kid []uint32) (*range4State, error) {
	w, err := layoutRange4(r, cur, kid, false)
	if err != nil {
		return nil, err
	}
	if w.top > w.capacity {
		return layoutRange4(r, cur, kid, true)
	}
	return w, nil
}

func layoutRange4(r *range4, cur *range4State, kid []uint32, fresh bool) (*range4State, error) {
	w := &range4State{direct: make([]uint32, r4Directs), runs: make([]uint32, r4Directs), usedVecs: map[uint32]bool{}}
	reuse := !fresh && cur != nil && cur.direct != nil
	if reuse {
		w.capacity, w.top = cur.capacity, cur.top
	} else {
		fresh = true
	}
	var kps []part
	for i := range r4Directs {
		var err error
		if kps, err = w.placeSlash16(r, cur, kid, i, reuse, kps); err != nil {
			return nil, err
		}
	}
	if fresh {
		// Room to grow: changes append trees until the next fresh layout.
		w.capacity = w.top + w.top/4 + 1024
		w.fresh = true
	}
	return w, nil
}

// placeSlash16 places /16 i's parts: its id in the direct table, or its
// tree in w's lines (where cur keeps one for i if it fits there and reuse
// is set, else at w.top). kps is scratch space, returned for reuse.
func (w *range4State) placeSlash16(r *range4, cur *range4State, kid []uint32, i int, reuse bool, kps []part) ([]part, error) {
	ps := r.partsOf(i)
	if len(ps) == 1 {
		id := kid[ps[0].id]
		w.direct[i], w.runs[i] = id, 0
		w.usedVecs[id] = true
		return kps, nil
	}
	kps = kps[:0]
	for _, p := range ps {
		id := kid[p.id]
		w.usedVecs[id] = true
		kps = append(kps, part{p.start, VecID(id)})
	}
	need := uint32(treeLines(len(kps)))
	var start uint32
	if reuse && cur.direct[i]>>r4DepthShift != 0 && cur.runs[i] >= need {
		start, w.runs[i] = cur.direct[i]&r4LineMask, cur.runs[i]
	} else {
		start, w.runs[i] = w.top, need
		w.top += need
	}
	lines, depth, err := encodeTree(kps, start)
	if err != nil {
		return kps, err
	}
	w.direct[i] = uint32(depth)<<r4DepthShift | start
	w.trees = append(w.trees, lineRun{start, lines})
	return kps, nil
}

// placeRange4Changed is placeRange4 for a table that differs from what
// the generation holds (cur) only in the /16s of changed: it places those
// and keeps the rest of cur as it is, so an apply rewrites only them.
// cur's other /16s must point at vector ids whose content the apply keeps
// (place sees to it); usedVecs grows to a superset of the ids in use
// until the next whole placement. When the lines run out, every tree is
// laid out afresh.
func placeRange4Changed(r *range4, cur *range4State, kid []uint32, changed []int) (*range4State, error) {
	// cur is the inactive generation's state, replaced by w once written
	// (and read back from the kernel if the write fails): w takes over
	// its arrays and changes them in place.
	w := &range4State{direct: cur.direct, runs: cur.runs,
		capacity: cur.capacity, top: cur.top, usedVecs: cur.usedVecs}
	var kps []part
	for _, i := range changed {
		var err error
		if kps, err = w.placeSlash16(r, cur, kid, i, true, kps); err != nil {
			return nil, err
		}
	}
	if w.top > w.capacity {
		return layoutRange4(r, cur, kid, true)
	}
	return w, nil
}

// writeRange4 writes a generation's range table of one field, creating the
// inner maps it lacks, or removes the table when want is nil.
func (fw *Firewall) writeRange4(gen uint32, maps range4Maps, cur, want *range4State, rep *ApplyReport) error {
	if want == nil {
		for _, outer := range []*ebpf.Map{maps.direct, maps.lines} {
			if err := outer.Delete(gen); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("drop %s[%d]: %w", outer, gen, err)
			}
		}
		return nil
	}
	direct, err := innerMap(maps.direct, gen)
	if err != nil {
		return err
	}
	if direct == nil || cur == nil {
		if direct != nil {
			direct.Close()
		}
		if direct, err = fw.newInner(maps.direct, gen, fw.spec.Maps[maps.name+"_direct"].InnerMap, 0); err != nil {
			return err
		}
	}
	defer direct.Close()
	mem, err := fw.memoryOf(maps.direct, gen, direct)
	if err != nil {
		return fmt.Errorf("map %s direct: %w", maps.name, err)
	}
	// Compare with what the map holds and write the runs of entries
	// that differ straight into it.
	if fw.directScratch == nil {
		fw.directScratch = make([]uint32, r4Directs)
	}
	have := fw.directScratch
	if _, err := mem.ReadAt(u32Bytes(have), 0); err != nil {
		return fmt.Errorf("read %s direct: %w", maps.name, err)
	}
	changed := 0
	for i := 0; i < r4Directs; {
		if want.direct[i] == have[i] {
			i++
			continue
		}
		j := i
		for j < r4Directs && want.direct[j] != have[j] {
			j++
		}
		if _, err := mem.WriteAt(u32Bytes(want.direct[i:j]), int64(i)*4); err != nil {
			return fmt.Errorf("write %s direct: %w", maps.name, err)
		}
		changed += j - i
		i = j
	}
	rep.Writes[maps.name+"_direct"] += changed

	if err := fw.writeLines(gen, maps.lines, maps.name+"_lines", want.fresh, want.capacity, want.trees, rep); err != nil {
		return err
	}
	want.trees = nil // kept between applies: where the trees are, not their lines
	return nil
}

// writeLines writes trees into the lines inner map of a generation's slot
// of outer, skipping those whose lines already hold the same bytes; fresh:
// into a new map of capacity lines.
func (fw *Firewall) writeLines(gen uint32, outer *ebpf.Map, name string, fresh bool, capacity uint32, trees []lineRun, rep *ApplyReport) error {
	var lines *ebpf.Map
	var err error
	if !fresh {
		if lines, err = innerMap(outer, gen); err != nil {
			return err
		}
	}
	if lines == nil {
		fresh = true
		if lines, err = fw.newInner(outer, gen, fw.spec.Maps[name].InnerMap, capacity); err != nil {
			return err
		}
	}
	defer lines.Close()
	if lines.MaxEntries() != capacity {
		return fmt.Errorf("%s of generation %d: %d entries, the placement assumed %d", name, gen, lines.MaxEntries(), capacity)
	}
	lmem, err := fw.memoryOf(outer, gen, lines)
	if err != nil {
		return fmt.Errorf("map %s: %w", name, err)
	}
	written := 0
	var old []byte
	for _, t := range trees {
		b := linesBytes(t.lines)
		off := int64(t.start) * int64(unsafe.Sizeof(v4Line{}))
		if !fresh {
			old = append(old[:0], make([]byte, len(b))...)
			if _, err := lmem.ReadAt(old, off); err != nil {
				return fmt.Errorf("read %s: %w", name, err)
			}
			if bytes.Equal(old, b) {
				continue
			}
		}
		if _, err := lmem.WriteAt(b, off); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
		written += len(t.lines)
	}
	rep.Writes[name] += written
	return nil
}

// errBadEntry is the error of a table entry that no layout writes.
var errBadEntry = errors.New("not an entry the compiler writes")

// linesBytes views lines as bytes (host order, as the kernel reads them).
func linesBytes(l []v4Line) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(l))), len(l)*int(unsafe.Sizeof(v4Line{})))
}

// readRange4 reads a generation's range table of one field back from the
// kernel (nil when the slot is empty): where its trees are and which
// vectors they use. A tree that points outside the lines is an error, not
// a crash: the maps are the kernel's, but anything root can write.
func readRange4(maps range4Maps, gen uint32) (*range4State, error) {
	direct, err := innerMap(maps.direct, gen)
	if err != nil || direct == nil {
		return nil, err
	}
	defer direct.Close()
	st := &range4State{direct: make([]uint32, r4Directs), runs: make([]uint32, r4Directs), usedVecs: map[uint32]bool{}}
	mem, err := direct.Memory()
	if err != nil {
		return nil, fmt.Errorf("map %s direct: %w", maps.name, err)
	}
	if _, err := mem.ReadAt(u32Bytes(st.direct), 0); err != nil {
		return nil, fmt.Errorf("read %s direct: %w", maps.name, err)
	}
	var all []v4Line
	if lines, err := innerMap(maps.lines, gen); err != nil {
		return nil, err
	} else if lines != nil {
		defer lines.Close()
		st.capacity = lines.MaxEntries()
		all = make([]v4Line, st.capacity)
		lmem, err := lines.Memory()
		if err != nil {
			return nil, fmt.Errorf("map %s lines: %w", maps.name, err)
		}
		if _, err := lmem.ReadAt(linesBytes(all), 0); err != nil {
			return nil, fmt.Errorf("read %s lines: %w", maps.name, err)
		}
	}
	leaf := vecLeaves(st.usedVecs)
	for i, e := range st.direct {
		depth := int(e >> r4DepthShift)
		if depth == 0 {
			if err := leaf(uint16(e)); err != nil || e>>16 != 0 {
				return nil, fmt.Errorf("%s range table of generation %d, /16 %d: entry %#x: %w", maps.name, gen, i, e, cmp.Or(err, errBadEntry))
			}
			continue
		}
		root := e & r4LineMask
		n, err := walkTree(all, root, depth, leaf)
		if err != nil {
			return nil, fmt.Errorf("%s range table of generation %d, /16 %d: %w", maps.name, gen, i, err)
		}
		st.runs[i] = n
		st.top = max(st.top, root+n)
	}
	return st, nil
}

// walkTree checks a tree laid out by encodeTree, hands each leaf id to
// leaf (which refuses what cannot be there), and returns its number of
// lines.
func walkTree(all []v4Line, root uint32, depth int, leaf func(id uint16) error) (uint32, error) {
	if depth < 1 || depth > r4MaxDepth {
		return 0, fmt.Errorf("tree of depth %d (1 to %d)", depth, r4MaxDepth)
	}
	first, count := uint64(root), uint64(1) // this level's lines
	total := uint64(0)
	for level := 1; ; level++ {
		if first+count > uint64(len(all)) {
			return 0, fmt.Errorf("lines %d..%d beyond the map's %d", first, first+count-1, len(all))
		}
		total += count
		lvl := all[first : first+count]
		if level == depth {
			for _, l := range lvl {
				for x := 0; x <= int(l.N) && x < r4Fanout; x++ {
					if err := leaf(l.Ids[x]); err != nil {
						return 0, err
					}
				}
			}
			return uint32(total), nil
		}
		next := uint64(lvl[0].Ids[0]) | uint64(lvl[0].Ids[1])<<16
		if next != first+count {
			return 0, fmt.Errorf("level %d starts at line %d, not right after level %d", level+1, next, level)
		}
		n := uint64(0)
		for _, l := range lvl {
			n += uint64(l.N) + 1
		}
		first, count = next, n
	}
}

// vecLeaves is a walkTree leaf check for trees whose leaves are vector
// ids: it notes them in used. A vector id past the limit is damage, which
// would otherwise index past the ids in place.
func vecLeaves(used map[uint32]bool) func(uint16) error {
	return func(id uint16) error {
		if int(id) >= MaxVectors {
			return fmt.Errorf("vector id %d (at most %d)", id, MaxVectors-1)
		}
		used[uint32(id)] = true
		return nil
	}
}
