package bpf

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
)

// The members of a prefix set, as the compiler keeps them between
// incremental updates and as the docs map stores them: integer keys in
// canonical order (IPv4 before IPv6, then by address, then shorter first),
// without duplicates. Sorted keys are the canonical order, so two sets are
// equal exactly when their key slices are.

// key4 is an IPv4 prefix as address<<8 | length.
type key4 = uint64

// key6 is an IPv6 prefix as integers, in sort order.
type key6 struct {
	hi, lo uint64
	bits   uint8
}

func compareKey6(a, b key6) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	if c := cmp.Compare(a.lo, b.lo); c != 0 {
		return c
	}
	return cmp.Compare(a.bits, b.bits)
}

func prefixKey4(p netip.Prefix) key4 {
	return uint64(v4Uint(p.Addr()))<<8 | uint64(p.Bits())
}

func prefixKey6(p netip.Prefix) key6 {
	b := p.Addr().As16()
	return key6{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:]), uint8(p.Bits())}
}

func (k key6) prefix() netip.Prefix {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], k.hi)
	binary.BigEndian.PutUint64(b[8:], k.lo)
	return netip.PrefixFrom(netip.AddrFrom16(b), int(k.bits))
}

func key4Prefix(k key4) netip.Prefix {
	a := uint32(k >> 8)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), int(k&0xff))
}

// setMembers is one prefix set of one rule set. Its keys are kept in
// blocks, each with its records as the docs map stores them and their
// digest: a change of a few members re-encodes and rehashes the blocks it
// touches, not a million keys (see encodeDocParts).
type setMembers struct {
	// ruleSet indexes appliedDoc.RuleSets; set is the set's name.
	ruleSet int
	set     string
	v4      []memberBlock[key4]
	v6      []memberBlock[key6]
}

// memberBlock is a run of a set's keys, sorted, all after the keys of the
// blocks before it. rec and sum are set for every block the compiler
// makes (nil rec: encodeDocParts encodes and checks the keys).
type memberBlock[K any] struct {
	keys []K
	rec  []byte   // the keys' records in the docs map
	sum  [32]byte // sha256 of rec
}

// Block boundaries depend only on the keys (as the chunks of etcd's big
// sets do): a block ends after a key whose hash is 0 modulo
// memberBlockAverage, or at memberBlockMax keys. So the same members are
// cut the same way whether they were compiled whole or changed by
// updates, and the document's digest, made of the blocks' digests, is
// the same.
const (
	memberBlockAverage = 4096
	memberBlockMax     = 8 * memberBlockAverage
)

// count is the number of members.
func (m *setMembers) count() int {
	n := 0
	for _, b := range m.v4 {
		n += len(b.keys)
	}
	for _, b := range m.v6 {
		n += len(b.keys)
	}
	return n
}

// keyCodec is what blocks of one key type need.
type keyCodec[K any] struct {
	compare  func(a, b K) int
	boundary func(k K) bool
	size     int                                   // bytes a record
	put      func(b []byte, keys []K) (int, error) // encodes and checks records
}

var (
	codec4 = keyCodec[key4]{cmpKey4, func(k key4) bool { return mix64(k)%memberBlockAverage == 0 }, docRecord4, putKeys4}
	codec6 = keyCodec[key6]{compareKey6, func(k key6) bool {
		return mix64(k.hi^mix64(k.lo^uint64(k.bits)))%memberBlockAverage == 0
	}, docRecord6, putKeys6}
)

// mix64 is splitmix64's finalizer: a well-spread hash of a key.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// newBlock encodes and hashes a block of keys (kept, not copied).
func (c keyCodec[K]) newBlock(keys []K) (memberBlock[K], error) {
	rec := make([]byte, c.size*len(keys))
	if i, err := c.put(rec, keys); err != nil {
		return memberBlock[K]{}, fmt.Errorf("member %d: %w", i, err)
	}
	return memberBlock[K]{keys: keys, rec: rec, sum: sha256.Sum256(rec)}, nil
}

// cut splits sorted keys at the block boundaries: the blocks that end at
// a boundary (or at memberBlockMax keys), and the keys after the last
// cut, which end a block only at the end of the set.
func (c keyCodec[K]) cut(keys []K) (full [][]K, rest []K) {
	start := 0
	for i, k := range keys {
		if c.boundary(k) || i+1-start == memberBlockMax {
			full = append(full, keys[start:i+1:i+1])
			start = i + 1
		}
	}
	return full, keys[start:]
}

// blocks cuts a set's sorted keys into blocks.
func (c keyCodec[K]) blocks(keys []K) ([]memberBlock[K], error) {
	full, rest := c.cut(keys)
	if len(rest) > 0 {
		full = append(full, rest)
	}
	out := make([]memberBlock[K], len(full))
	for i, ks := range full {
		var err error
		if out[i], err = c.newBlock(ks); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// merge returns the blocks of the keys of blocks with add inserted and rm
// removed (both sorted); a key added that is there, or removed that is
// not, is an error. A change goes to the block whose last key is the
// first at or after it (the last block for a key past them all); from the
// first changed block on, the keys are cut again until a cut falls where
// an old block ended after the last change: the blocks from there are
// kept as they are.
func (c keyCodec[K]) merge(blocks []memberBlock[K], add, rm []K) ([]memberBlock[K], error) {
	if len(add) == 0 && len(rm) == 0 {
		return blocks, nil
	}
	if len(blocks) == 0 {
		if len(rm) > 0 {
			return nil, fmt.Errorf("a removed prefix is not a member")
		}
		return c.blocks(slices.Clone(add))
	}
	target := func(k K) int {
		i, _ := slices.BinarySearchFunc(blocks, k, func(b memberBlock[K], k K) int { return c.compare(b.keys[len(b.keys)-1], k) })
		return min(i, len(blocks)-1)
	}
	type changes struct{ add, rm []K }
	byBlock := map[int]*changes{}
	first, last := len(blocks), -1
	at := func(k K) *changes {
		i := target(k)
		first, last = min(first, i), max(last, i)
		if byBlock[i] == nil {
			byBlock[i] = &changes{}
		}
		return byBlock[i]
	}
	for _, k := range add {
		ch := at(k)
		ch.add = append(ch.add, k)
	}
	for _, k := range rm {
		ch := at(k)
		ch.rm = append(ch.rm, k)
	}
	out := slices.Clone(blocks[:first])
	var pending []K
	j := first
	for j < len(blocks) {
		keys := blocks[j].keys
		if ch, ok := byBlock[j]; ok {
			var err error
			if keys, err = mergeKeys(keys, ch.add, ch.rm, c.compare); err != nil {
				return nil, err
			}
		}
		pending = append(pending, keys...)
		j++
		full, rest := c.cut(pending)
		for _, ks := range full {
			b, err := c.newBlock(ks)
			if err != nil {
				return nil, err
			}
			out = append(out, b)
		}
		pending = slices.Clone(rest)
		if len(pending) == 0 && j > last {
			break // in step with the old blocks again
		}
	}
	if len(pending) > 0 {
		b, err := c.newBlock(pending)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return append(out, blocks[j:]...), nil
}
