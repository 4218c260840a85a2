package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// h48State is an H48 table as one generation holds it in the kernel.
type h48State struct {
	entries map[uint64]uint64 // /48 key (without the generation) -> entry
	blocks  []v6Block         // one per slot of the blocks inner map
	long    map[netip.Prefix]uint32
	// Set by placeH48: what writeH48 must do.
	blockWrites []uint32
	newBlocks   bool
}

// h48Maps are the maps of one field's H48 table.
type h48Maps struct {
	name                string
	hash, blocks, long  *ebpf.Map
	blocksName, lpmName string
}

func (fw *Firewall) h48Maps(dst bool) h48Maps {
	if dst {
		return h48Maps{"dst6", fw.objs.Dst6H48, fw.objs.Dst6Blk, fw.objs.Dst6Long, "dst6_blk", "dst6_long"}
	}
	return h48Maps{"src6", fw.objs.Src6H48, fw.objs.Src6Blk, fw.objs.Src6Long, "src6_blk", "src6_long"}
}

// placeH48 translates a compiled H48 table into kernel ids and places its
// blocks, reusing slots that hold the same content.
func placeH48(h *h48, cur *h48State, kid []uint32) *h48State {
	if cur == nil {
		cur = &h48State{}
	}
	blocks := make([]v6Block, len(h.blocks))
	for k, b := range h.blocks {
		for x := 0; x <= int(b.n) && x < len(b.ids); x++ {
			b.ids[x] = uint16(kid[b.ids[x]])
		}
		blocks[k] = b
	}
	used := make([]bool, len(cur.blocks))
	for _, e := range cur.entries {
		if e>>62 == h48Block && int(e&0xFFFFFFFF) < len(used) {
			used[e&0xFFFFFFFF] = true
		}
	}
	w := &h48State{entries: make(map[uint64]uint64, len(h.entries)), long: remap(h.long, kid)}
	var idx []uint32
	w.blocks, idx, w.blockWrites, w.newBlocks = placeSlots(blocks, cur.blocks, used)
	for key, e := range h.entries {
		switch e >> 62 {
		case h48Vec:
			e = h48Entry(h48Vec, uint64(kid[e&0xFFFF]))
		case h48One:
			in, out := kid[(e>>16)&0xFFFF], kid[e&0xFFFF]
			e = e&^0xFFFFFFFF | uint64(in)<<16 | uint64(out)
		case h48Block:
			e = h48Entry(h48Block, uint64(idx[e&0xFFFFFFFF]))
		}
		w.entries[key] = e
	}
	return w
}

// writeH48 writes a generation's H48 table of one field (or removes it when
// want is nil): hash entries that differ, blocks, and the long trie.
func (fw *Firewall) writeH48(gen uint32, maps h48Maps, cur, want *h48State, rep *ApplyReport) error {
	if cur == nil {
		cur = &h48State{}
	}
	if want == nil {
		want = &h48State{}
		if err := maps.blocks.Delete(gen); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("drop %s[%d]: %w", maps.blocksName, gen, err)
		}
	}
	// The hash of the generation: kept if it has room, else a new one
	// sized to the entries with room to grow (then written whole).
	hash, err := innerMap(maps.hash, gen)
	if err != nil {
		return err
	}
	curEntries := cur.entries
	if hash != nil && (len(want.entries) == 0 || hash.MaxEntries() < uint32(len(want.entries))) {
		hash.Close()
		hash, curEntries = nil, nil
		if err := maps.hash.Delete(gen); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("drop %s[%d]: %w", maps.name+"_h48", gen, err)
		}
	}
	if hash == nil && len(want.entries) > 0 {
		size := uint32(len(want.entries) + len(want.entries)/4 + 1024)
		if hash, err = fw.newInner(maps.hash, gen, fw.spec.Maps[maps.name+"_h48"].InnerMap, size); err != nil {
			return err
		}
		curEntries = nil
	}
	if hash != nil {
		defer hash.Close()
	}
	var putKeys, putVals, delKeys []uint64
	for k, e := range want.entries {
		if old, ok := curEntries[k]; !ok || old != e {
			putKeys, putVals = append(putKeys, k), append(putVals, e)
		}
	}
	for k := range curEntries {
		if _, ok := want.entries[k]; !ok {
			delKeys = append(delKeys, k)
		}
	}
	// Blocks before the entries that point at them (the generation is not
	// active, but a table should never point at nothing).
	if want.blocks != nil || want.newBlocks {
		if err := writeSlots(fw, maps.blocks, gen, maps.blocksName, want.newBlocks || cur.blocks == nil, want.blocks, want.blockWrites, rep,
			func(b v6Block) firewallFwV6Block {
				return firewallFwV6Block{N: b.n, Bounds: b.bounds, Ids: b.ids}
			}); err != nil {
			return err
		}
	}
	if len(putKeys) > 0 {
		if _, err := hash.BatchUpdate(putKeys, putVals, nil); err != nil {
			return fmt.Errorf("write %s_h48: %w", maps.name, err)
		}
		rep.Writes[maps.name+"_h48"] += len(putKeys)
	}
	if len(delKeys) > 0 {
		if _, err := hash.BatchDelete(delKeys, nil); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from %s_h48: %w", maps.name, err)
		}
		rep.Writes[maps.name+"_h48"] += len(delKeys)
	}
	curLong, wantLong := cur.long, want.long
	if curLong == nil {
		curLong = map[netip.Prefix]uint32{}
	}
	if wantLong == nil {
		wantLong = map[netip.Prefix]uint32{}
	}
	return diffLPM(maps.long, gen, curLong, wantLong, rep, maps.lpmName)
}

// readH48 reads a generation's H48 table back from the kernel (nil when the
// generation has none).
func readH48(maps h48Maps, gen uint32) (*h48State, error) {
	st := &h48State{entries: make(map[uint64]uint64)}
	hash, err := innerMap(maps.hash, gen)
	if err != nil {
		return nil, err
	}
	if hash != nil {
		defer hash.Close()
		var k, v uint64
		it := hash.Iterate()
		for it.Next(&k, &v) {
			st.entries[k] = v
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("iterate %s_h48: %w", maps.name, err)
		}
	}
	if st.long, err = readLPM6(maps.long, gen); err != nil {
		return nil, err
	}
	if blk, err := innerMap(maps.blocks, gen); err != nil {
		return nil, err
	} else if blk != nil {
		defer blk.Close()
		raw := make([]firewallFwV6Block, blk.MaxEntries())
		if err := readArray(blk, 0, raw); err != nil {
			return nil, fmt.Errorf("read %s: %w", maps.blocksName, err)
		}
		st.blocks = make([]v6Block, len(raw))
		for i, b := range raw {
			st.blocks[i] = v6Block{n: b.N, bounds: b.Bounds, ids: b.Ids}
		}
	}
	if len(st.entries) == 0 && len(st.long) == 0 && st.blocks == nil {
		return nil, nil
	}
	return st, nil
}
