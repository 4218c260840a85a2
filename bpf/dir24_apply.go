package bpf

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
)

// dir24State is a DIR-24 table as one generation holds it in the kernel:
// kernel vector ids, kernel block and t8 indexes.
type dir24State struct {
	// t24 is the whole table (dir24Entries) while an apply writes it;
	// nil in the states kept between applies: the table is in the map
	// (64 MB a generation, read through mmap when needed), and a copy
	// per generation would double the agent's memory.
	t24 []uint32
	// What the table points at: vector ids, block and t8 slots.
	usedVecs     map[uint32]bool
	usedB, usedT []bool
	blocks       []v4Block // one per slot of the blocks inner map (its capacity)
	t8           []v4T8    // likewise
	// Set by placeDir24: what writeDir24 must do.
	blockWrites, t8Writes []uint32
	newBlocks, newT8      bool
}

// dir24Maps are the outer maps (one slot per generation) of one field.
type dir24Maps struct {
	name            string
	t24, blocks, t8 *ebpf.Map
}

func (fw *Firewall) dir24Maps(dst bool) dir24Maps {
	if dst {
		return dir24Maps{"dst4", fw.objs.Dst4T24, fw.objs.Dst4Blk, fw.objs.Dst4T8}
	}
	return dir24Maps{"src4", fw.objs.Src4T24, fw.objs.Src4Blk, fw.objs.Src4T8}
}

// innerMap opens the inner map of a generation's slot; nil when empty.
func innerMap(outer *ebpf.Map, gen uint32) (*ebpf.Map, error) {
	var id uint32
	if err := outer.Lookup(gen, &id); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read %s[%d]: %w", outer, gen, err)
	}
	m, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if err != nil {
		return nil, fmt.Errorf("open inner map %d of %s: %w", id, outer, err)
	}
	return m, nil
}

// placeDir24 translates a compiled table into kernel ids and places its
// blocks and t8 tables in the generation's slots, reusing every slot that
// already holds the same content, so a small change writes a few entries.
func placeDir24(d *dir24, cur *dir24State, kid []uint32) *dir24State {
	if cur == nil {
		cur = &dir24State{}
	}
	w := &dir24State{t24: make([]uint32, dir24Entries)}

	blocks := make([]v4Block, len(d.blocks))
	for k, b := range d.blocks {
		for x := range b.ids {
			if x <= int(b.n) {
				b.ids[x] = uint16(kid[b.ids[x]])
			}
		}
		blocks[k] = b
	}
	t8s := make([]v4T8, len(d.t8))
	for k, t := range d.t8 {
		for x := range t {
			t[x] = uint16(kid[t[x]])
		}
		t8s[k] = t
	}

	usedB := make([]bool, len(cur.blocks))
	usedT := make([]bool, len(cur.t8))
	copy(usedB, cur.usedB)
	copy(usedT, cur.usedT)
	var bIdx, tIdx []uint32
	w.blocks, bIdx, w.blockWrites, w.newBlocks = placeSlots(blocks, cur.blocks, usedB)
	w.t8, tIdx, w.t8Writes, w.newT8 = placeSlots(t8s, cur.t8, usedT)

	for i, e := range d.t24 {
		switch e & dir24Kind {
		case dir24Block:
			w.t24[i] = dir24Block | bIdx[e&dir24Index]
		case dir24T8:
			w.t24[i] = dir24T8 | tIdx[e&dir24Index]
		default:
			w.t24[i] = kid[e&0xFFFF]
		}
	}
	return w
}

// placeSlots gives each wanted item a slot of an inner map: the slot that
// already holds it if one does, else a free one. When the map is too small
// it sizes a new one (fresh: every item is written). It returns the slots'
// new content (cur's slice, changed in place), the slot of each item, the
// slots to write, and whether a new map is needed.
func placeSlots[T comparable](want, cur []T, used []bool) (slots []T, idx []uint32, writes []uint32, fresh bool) {
	if len(want) > len(cur) {
		size := 1024
		for size < len(want)+len(want)/4 {
			size *= 2
		}
		cur, used, fresh = make([]T, size), make([]bool, size), true
	}
	byContent := make(map[T]uint32)
	for i, u := range used {
		if u {
			if _, dup := byContent[cur[i]]; !dup {
				byContent[cur[i]] = uint32(i)
			}
		}
	}
	idx = make([]uint32, len(want))
	taken := make([]bool, len(cur))
	placed := make([]bool, len(want))
	for k, v := range want {
		if i, ok := byContent[v]; ok && !taken[i] {
			idx[k], taken[i], placed[k] = i, true, true
		}
	}
	next, spare := 0, 0
	for k, v := range want {
		if placed[k] {
			continue
		}
		// Prefer slots the generation's table does not point at.
		for next < len(cur) && (taken[next] || used[next]) {
			next++
		}
		i := next
		if i >= len(cur) {
			for taken[spare] {
				spare++
			}
			i = spare
		}
		idx[k], taken[i] = uint32(i), true
		if fresh || cur[i] != v {
			cur[i] = v
			writes = append(writes, uint32(i))
		}
	}
	return cur, idx, writes, fresh
}

// writeDir24 writes a generation's DIR-24 table of one field, creating the
// inner maps it lacks, or removes the table when want is nil.
func (fw *Firewall) writeDir24(gen uint32, maps dir24Maps, cur, want *dir24State, rep *ApplyReport) error {
	if want == nil {
		for _, outer := range []*ebpf.Map{maps.t24, maps.blocks, maps.t8} {
			if err := outer.Delete(gen); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("drop %s[%d]: %w", outer, gen, err)
			}
		}
		return nil
	}
	inner := fw.spec.Maps[maps.name+"_t24"].InnerMap
	t24, err := innerMap(maps.t24, gen)
	if err != nil {
		return err
	}
	if t24 == nil || cur == nil {
		if t24 != nil {
			t24.Close()
		}
		if t24, err = fw.newInner(maps.t24, gen, inner, 0); err != nil {
			return err
		}
	}
	defer t24.Close()
	mem, err := t24.Memory()
	if err != nil {
		return fmt.Errorf("map %s t24: %w", maps.name, err)
	}
	// Compare with what the map holds a chunk at a time, and write the
	// runs of entries that differ straight into the map.
	changed := 0
	have := make([]uint32, 1<<16)
	for base := 0; base < dir24Entries; base += len(have) {
		if _, err := mem.ReadAt(u32Bytes(have), int64(base)*4); err != nil {
			return fmt.Errorf("read %s t24: %w", maps.name, err)
		}
		wantChunk := want.t24[base : base+len(have)]
		for i := 0; i < len(have); {
			if wantChunk[i] == have[i] {
				i++
				continue
			}
			j := i
			for j < len(have) && wantChunk[j] != have[j] {
				j++
			}
			if _, err := mem.WriteAt(u32Bytes(wantChunk[i:j]), int64(base+i)*4); err != nil {
				return fmt.Errorf("write %s t24: %w", maps.name, err)
			}
			changed += j - i
			i = j
		}
	}
	rep.Writes[maps.name+"_t24"] += changed
	// Kept between applies: what the table points at, not the table.
	want.noteUsed(want.t24)
	want.t24 = nil

	if err := writeSlots(fw, maps.blocks, gen, maps.name+"_blk", want.newBlocks || cur == nil, want.blocks, want.blockWrites, rep,
		func(b v4Block) firewallFwV4Block {
			return firewallFwV4Block{N: b.n, Bounds: b.bounds, Ids: b.ids}
		}); err != nil {
		return err
	}
	return writeSlots(fw, maps.t8, gen, maps.name+"_t8", want.newT8 || cur == nil, want.t8, want.t8Writes, rep,
		func(t v4T8) firewallFwV4T8 { return firewallFwV4T8{Ids: t} })
}

// writeSlots writes the changed slots of a blocks or t8 inner map, after
// putting a new map of the right size in the generation's slot if needed.
func writeSlots[T any, K any](fw *Firewall, outer *ebpf.Map, gen uint32, name string, fresh bool, content []T, writes []uint32, rep *ApplyReport, conv func(T) K) error {
	var m *ebpf.Map
	var err error
	if !fresh {
		m, err = innerMap(outer, gen)
		if err != nil {
			return err
		}
	}
	if m == nil {
		if m, err = fw.newInner(outer, gen, fw.spec.Maps[name].InnerMap, uint32(len(content))); err != nil {
			return err
		}
		writes = writes[:0]
		for i := range content {
			writes = append(writes, uint32(i))
		}
	}
	defer m.Close()
	mem, err := m.Memory()
	if err != nil {
		return fmt.Errorf("map %s: %w", name, err)
	}
	for _, s := range writes {
		v := conv(content[s])
		b := unsafe.Slice((*byte)(unsafe.Pointer(&v)), unsafe.Sizeof(v))
		if _, err := mem.WriteAt(b, int64(s)*int64(len(b))); err != nil {
			return fmt.Errorf("write %s[%d]: %w", name, s, err)
		}
	}
	rep.Writes[name] += len(writes)
	return nil
}

// u32Bytes views a []uint32 as bytes (host order, as the kernel reads it).
func u32Bytes(v []uint32) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), len(v)*4)
}

// newInner creates an inner map (of size entries, 0: the template's) and
// puts it in a generation's slot of an outer map.
func (fw *Firewall) newInner(outer *ebpf.Map, gen uint32, spec *ebpf.MapSpec, entries uint32) (*ebpf.Map, error) {
	s := spec.Copy()
	if entries > 0 {
		s.MaxEntries = entries
	}
	m, err := ebpf.NewMap(s)
	if err != nil {
		return nil, fmt.Errorf("create %s inner map for generation %d (%d entries): %w", outer, gen, s.MaxEntries, err)
	}
	if err := outer.Put(gen, m); err != nil {
		m.Close()
		return nil, fmt.Errorf("install %s[%d]: %w", outer, gen, err)
	}
	return m, nil
}

// noteUsed records what a table points at: vector ids, block and t8 slots.
func (st *dir24State) noteUsed(t24 []uint32) {
	st.usedVecs = map[uint32]bool{}
	st.usedB, st.usedT = make([]bool, len(st.blocks)), make([]bool, len(st.t8))
	for _, e := range t24 {
		switch e & dir24Kind {
		case dir24Block:
			if i := e & dir24Index; int(i) < len(st.usedB) {
				st.usedB[i] = true
			}
		case dir24T8:
			if i := e & dir24Index; int(i) < len(st.usedT) {
				st.usedT[i] = true
			}
		default:
			st.usedVecs[e&0xFFFF] = true
		}
	}
}

// readDir24 reads a generation's DIR-24 table of one field back from the
// kernel (nil when the slot is empty).
func readDir24(maps dir24Maps, gen uint32) (*dir24State, error) {
	t24, err := innerMap(maps.t24, gen)
	if err != nil || t24 == nil {
		return nil, err
	}
	defer t24.Close()
	st := &dir24State{}
	table := make([]uint32, dir24Entries) // only while it is read
	mem, err := t24.Memory()
	if err != nil {
		return nil, fmt.Errorf("map %s t24: %w", maps.name, err)
	}
	if _, err := mem.ReadAt(u32Bytes(table), 0); err != nil {
		return nil, fmt.Errorf("read %s t24: %w", maps.name, err)
	}
	if blk, err := innerMap(maps.blocks, gen); err != nil {
		return nil, err
	} else if blk != nil {
		defer blk.Close()
		raw := make([]firewallFwV4Block, blk.MaxEntries())
		if err := readArray(blk, 0, raw); err != nil {
			return nil, fmt.Errorf("read %s blocks: %w", maps.name, err)
		}
		st.blocks = make([]v4Block, len(raw))
		for i, b := range raw {
			st.blocks[i] = v4Block{n: b.N, bounds: b.Bounds, ids: b.Ids}
		}
	}
	if t8, err := innerMap(maps.t8, gen); err != nil {
		return nil, err
	} else if t8 != nil {
		defer t8.Close()
		raw := make([]firewallFwV4T8, t8.MaxEntries())
		if err := readArray(t8, 0, raw); err != nil {
			return nil, fmt.Errorf("read %s t8: %w", maps.name, err)
		}
		st.t8 = make([]v4T8, len(raw))
		for i, t := range raw {
			st.t8[i] = t.Ids
		}
	}
	st.noteUsed(table)
	return st, nil
}
