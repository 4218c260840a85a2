package bpf

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
)

// Inner maps: the big-set tables of each generation live in maps created by
// user space and put in a generation's slot of an outer map (one slot per
// generation), sized to what the generation holds.

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
