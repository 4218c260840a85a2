package bpf

import (
	"encoding/binary"
	"net/netip"
)

// The IPv6 prefix table for big sets. IPv6 is too sparse for a DIR-style
// array, but feeds are made of /48 to /64 prefixes, so above a threshold a
// field's IPv6 prefixes are split at /48: one hash lookup on the address's
// top 48 bits finds what its /48 holds. Most /48s of a big random feed hold
// one prefix, which the 64-bit entry encodes whole (ONE: no second read);
// a /48 cut into a few more intervals points to a 64-byte block; the rare
// /48 with prefixes longer than /64 or too many intervals falls back to an
// LPM trie of just those /48s. Addresses whose /48 has no entry (the flood
// case: random sources) are looked up in an LPM trie of the prefixes
// shorter than /48 only, which feeds keep small.

// Kinds of an H48 entry, in its top two bits.
const (
	h48Vec   = 0
	h48One   = 1
	h48Block = 2
	h48LPM   = 3

	v6BlockIntervals = 16
)

// v6Block lists the intervals of one /48 over its address bits 48..63, as
// v4Block does for a /24.
type v6Block struct {
	n      uint16
	bounds [v6BlockIntervals - 1]uint16
	ids    [v6BlockIntervals]uint16
}

// h48 is the split IPv6 table of one field.
type h48 struct {
	// entries maps a /48 (the address's top 48 bits in the top of a
	// uint64) to its encoded entry.
	entries map[uint64]uint64
	blocks  []v6Block
	// short holds the prefixes shorter than /48 (and /0): the LPM trie
	// addresses without an entry fall back to.
	short map[netip.Prefix]VecID
	// long holds the prefixes of LPM-kind /48s, and each such /48.
	long map[netip.Prefix]VecID
}

func v6Halves(a netip.Addr) (hi, lo uint64) {
	b := a.As16()
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
}

func h48Entry(kind uint64, rest uint64) uint64 { return kind<<62 | rest }

// buildH48 splits a field's IPv6 prefixes (final vectors, with /0) at /48.
func buildH48(t prefixTable) *h48 {
	h := &h48{entries: make(map[uint64]uint64), short: make(map[netip.Prefix]VecID), long: make(map[netip.Prefix]VecID)}
	blockIdx := make(map[v6Block]uint32)
	sorted := t.prefixes
	var stack []int // indexes of the enclosing prefixes shorter than /48
	popTo := func(p netip.Prefix) {
		for len(stack) > 0 && !sorted[stack[len(stack)-1]].Contains(p.Addr()) {
			stack = stack[:len(stack)-1]
		}
	}
	for i := 0; i < len(sorted); {
		p := sorted[i]
		if p.Bits() < 48 {
			popTo(p)
			stack = append(stack, i)
			h.short[p] = t.ids[i]
			i++
			continue
		}
		hi, _ := v6Halves(p.Addr())
		key := hi &^ 0xFFFF
		j := i
		for j < len(sorted) && sorted[j].Bits() >= 48 {
			if h2, _ := v6Halves(sorted[j].Addr()); h2&^0xFFFF != key {
				break
			}
			j++
		}
		popTo(p)
		base := t.ids[stack[len(stack)-1]] // ::/0 is always there
		inner := prefixTable{sorted[i:j], t.ids[i:j]}
		if inner.prefixes[0].Bits() == 48 {
			base = inner.ids[0]
			inner = prefixTable{inner.prefixes[1:], inner.ids[1:]}
		}
		h.entries[key] = h.bucket(key, base, inner, blockIdx)
		i = j
	}
	return h
}

// bucket encodes what one /48 holds: base outside its longer prefixes.
func (h *h48) bucket(key uint64, base VecID, inner prefixTable, blockIdx map[v6Block]uint32) uint64 {
	fallback := func() uint64 {
		var a [16]byte
		binary.BigEndian.PutUint64(a[:8], key)
		h.long[netip.PrefixFrom(netip.AddrFrom16(a), 48)] = base
		for i, q := range inner.prefixes {
			h.long[q] = inner.ids[i]
		}
		return h48Entry(h48LPM, 0)
	}
	for _, q := range inner.prefixes {
		if q.Bits() > 64 {
			return fallback()
		}
	}
	if len(inner.prefixes) == 0 {
		return h48Entry(h48Vec, uint64(base))
	}
	if len(inner.prefixes) == 1 {
		q := inner.prefixes[0]
		hi, _ := v6Halves(q.Addr())
		return h48Entry(h48One, uint64(q.Bits()-48)<<48|(hi&0xFFFF)<<32|uint64(inner.ids[0])<<16|uint64(base))
	}
	iv := flatten16(base, inner)
	if len(iv) > v6BlockIntervals {
		return fallback()
	}
	if len(iv) == 1 {
		return h48Entry(h48Vec, uint64(iv[0].id))
	}
	var b v6Block
	b.n = uint16(len(iv) - 1)
	for x, in := range iv {
		if x > 0 {
			b.bounds[x-1] = uint16(in.start)
		}
		b.ids[x] = uint16(in.id)
	}
	idx, ok := blockIdx[b]
	if !ok {
		idx = uint32(len(h.blocks))
		blockIdx[b] = idx
		h.blocks = append(h.blocks, b)
	}
	return h48Entry(h48Block, uint64(idx))
}

// flatten16 is flatten over the bits 48..63 of one /48: the intervals its
// prefixes (/49 to /64, sorted) cut it into, base outside them all.
func flatten16(base VecID, inner prefixTable) []interval {
	return flattenRanges(len(inner.prefixes), func(i int) (uint64, uint64, VecID) {
		hi, _ := v6Halves(inner.prefixes[i].Addr())
		start := hi & 0xFFFF
		return start, start + (1 << (64 - inner.prefixes[i].Bits())) - 1, inner.ids[i]
	}, base, 0xFFFF)
}

// lookup is the Go model of the XDP program's H48 lookup.
func (h *h48) lookup(a netip.Addr) VecID {
	hi, _ := v6Halves(a)
	e, ok := h.entries[hi&^0xFFFF]
	if !ok {
		return longestMatch(h.short, a)
	}
	sub := uint16(hi)
	switch e >> 62 {
	case h48Vec:
		return VecID(e & 0xFFFF)
	case h48One:
		l := (e >> 48) & 0x1F
		mask := uint16(0xFFFF << (16 - l))
		if sub&mask == uint16(e>>32) {
			return VecID((e >> 16) & 0xFFFF)
		}
		return VecID(e & 0xFFFF)
	case h48Block:
		b := &h.blocks[e&0xFFFFFFFF]
		i := 0
		for x := 0; x < int(b.n); x++ {
			if b.bounds[x] <= sub {
				i = x + 1
			}
		}
		return VecID(b.ids[i])
	}
	return longestMatch(h.long, a)
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
