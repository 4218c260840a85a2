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

// innerSlot is a generation's slot of an outer map.
type innerSlot struct {
	outer *ebpf.Map
	gen   uint32
}

// mappedInner is the memory mapping of the inner map in a slot.
type mappedInner struct {
	id  ebpf.MapID
	mem *ebpf.Memory
}

// memoryOf returns the memory mapping of m, the inner map in a
// generation's slot of outer, kept between applies: a fresh mapping costs
// a page fault for every page an apply touches (about 6 ms for the 5 MB
// document of a million IPv4 prefixes, more than the rest of a one-prefix
// apply). A mapping outlives the map's descriptor; it is dropped when the
// slot holds another map, and unmapped when collected.
func (fw *Firewall) memoryOf(outer *ebpf.Map, gen uint32, m *ebpf.Map) (*ebpf.Memory, error) {
	info, err := m.Info()
	if err != nil {
		return nil, fmt.Errorf("inner map of %s[%d]: %w", outer, gen, err)
	}
	id, _ := info.ID()
	slot := innerSlot{outer, gen}
	if c, ok := fw.mapped[slot]; ok && c.id == id {
		return c.mem, nil
	}
	mem, err := m.Memory()
	if err != nil {
		return nil, err
	}
	if fw.mapped == nil {
		fw.mapped = make(map[innerSlot]mappedInner)
	}
	fw.mapped[slot] = mappedInner{id, mem}
	return mem, nil
}
