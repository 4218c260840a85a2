/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lookup.h: the per-field lookups. Each turns one field of a packet into the
 * id of a bit vector of the rules that field allows (bitvecs). Addresses go
 * to a prefix table: an LPM trie for small tables, the range table (IPv4) or
 * the /48 hash (IPv6) for big ones, chosen per generation by user space (the
 * FW_FIELD_*4_RANGE and *_H48 bits of fw_active.fields). Ports, protocol,
 * TCP flags and ICMP type index arrays.
 */
#ifndef XDPFW_LOOKUP_H
#define XDPFW_LOOKUP_H

#include "common.h"

/* The interval of a block an address falls in: how many of its n bounds lie
 * at or below v. Bounds are >= 1 and unused ones are 0, so "0 < bound <= v"
 * is "bound - 1 < v" in unsigned arithmetic: the sign of a 64-bit
 * difference, without a branch (the asm keeps clang from turning it back
 * into n branches: 2^n verifier paths). */
#define bounds_at_or_below(bounds, n, v)                                      \
	({                                                                    \
		__u64 __i = 0;                                                \
		int __x;                                                      \
		_Pragma("clang loop unroll(full)")                            \
		for (__x = 0; __x < (n); __x++) {                             \
			__u64 __d = (__u64)(__u32)((bounds)[__x] - 1) - (v); \
			asm volatile("" : "+r"(__d));                         \
			__i += __d >> 63;                                     \
		}                                                             \
		__i;                                                          \
	})

/* The vector id of an IPv4 address (host order) in a range table: one
 * read of the direct table (256 KB, cached), then one 64-byte line per
 * level of the /16's B-tree: one line for a /16 of up to 16 intervals, two
 * for up to 256 (a million random prefixes give about 30 a /16). */
static __always_inline __u32 range4_lookup(void *directs, void *lines_of, __u32 gen, __u32 a)
{
	void *direct = bpf_map_lookup_elem(directs, &gen);
	if (!direct)
		return FW_NO_ID;
	__u32 top = a >> (32 - FW_R4_DIRECT_BITS);
	__u32 key = top >> 4;
	struct fw_v4_direct *d = bpf_map_lookup_elem(direct, &key);
	if (!d)
		return FW_NO_ID;
	__u32 e = d->e[top & 15];
	__u32 depth = e >> FW_R4_DEPTH_SHIFT;
	if (!depth)
		return e & 0xFFFF;
	void *lines = bpf_map_lookup_elem(lines_of, &gen);
	if (!lines)
		return FW_NO_ID;
	__u32 low = a & 0xFFFF;
	__u32 index = e & FW_R4_LINE_MASK;
	int level;

	for (level = 1; level <= FW_R4_MAX_DEPTH; level++) {
		struct fw_v4_line *l = bpf_map_lookup_elem(lines, &index);
		if (!l)
			return FW_NO_ID;
		__u32 part = bounds_at_or_below(l->bounds, FW_R4_LINE_BOUNDS, low) & FW_R4_LINE_BOUNDS;
		if (level >= depth)
			return l->ids[part];
		index = ((__u32)l->ids[0] | (__u32)l->ids[1] << 16) + part;
	}
	return FW_NO_ID;
}

/* Global functions: the verifier checks each once, on its own, instead of
 * once per path through the classifier. */
FW_STAGE __u32 fw_range4_src(__u32 gen, __u32 addr)
{
	return range4_lookup(&src4_direct, &src4_lines, gen, addr);
}

FW_STAGE __u32 fw_range4_dst(__u32 gen, __u32 addr)
{
	return range4_lookup(&dst4_direct, &dst4_lines, gen, addr);
}

/* The vector id of an IPv6 address (first and last 8 bytes, host order) in
 * the H48 tables; short is the LPM trie of the prefixes shorter than /48. */
static __always_inline __u32 h48_lookup(void *h48, void *blks, void *longs, void *shorts, __u32 gen,
					__u64 hi, __u64 lo)
{
	__u64 key = hi & ~0xFFFFULL;
	void *hash = bpf_map_lookup_elem(h48, &gen);
	__u64 *e = hash ? bpf_map_lookup_elem(hash, &key) : 0;
	struct fw_lpm6_key k = {.prefixlen = 8 + 128, .gen = gen};
	__u64 be_hi = __builtin_bswap64(hi), be_lo = __builtin_bswap64(lo);
	__builtin_memcpy(k.addr, &be_hi, 8);
	__builtin_memcpy(k.addr + 8, &be_lo, 8);
	if (!e) {
		__u32 *id = bpf_map_lookup_elem(shorts, &k);
		return id ? *id : FW_NO_ID;
	}
	__u64 v = *e;
	__u32 sub = hi & 0xFFFF; /* address bits 48..63 */
	switch (v >> FW_H48_SHIFT) {
	case FW_H48_VEC:
		return v & 0xFFFF;
	case FW_H48_ONE: {
		__u32 len = (v >> 48) & 0x1F;
		__u32 mask = (0xFFFFU << ((16 - len) & 15)) & 0xFFFF;
		if (len >= 16)
			mask = 0xFFFF;
		return (sub & mask) == ((v >> 32) & 0xFFFF) ? (v >> 16) & 0xFFFF : v & 0xFFFF;
	}
	case FW_H48_BLOCK: {
		__u32 index = v & 0xFFFFFFFF;
		void *blk = bpf_map_lookup_elem(blks, &gen);
		if (!blk)
			return FW_NO_ID;
		struct fw_v6_block *b = bpf_map_lookup_elem(blk, &index);
		if (!b)
			return FW_NO_ID;
		return b->ids[bounds_at_or_below(b->bounds, FW_V6_BLOCK_BOUNDS, sub) & FW_V6_BLOCK_BOUNDS];
	}
	default: {
		__u32 *id = bpf_map_lookup_elem(longs, &k);
		return id ? *id : FW_NO_ID;
	}
	}
}

FW_STAGE __u32 fw_h48_src(__u32 gen, __u64 hi, __u64 lo)
{
	return h48_lookup(&src6_h48, &src6_blk, &src6_long, &src6, gen, hi, lo);
}

FW_STAGE __u32 fw_h48_dst(__u32 gen, __u64 hi, __u64 lo)
{
	return h48_lookup(&dst6_h48, &dst6_blk, &dst6_long, &dst6, gen, hi, lo);
}

/* fw_addr_id: the vector id of a packet's source (dst = 0) or destination
 * address, or FW_NO_ID when its table has no entry (a damaged map: the
 * compiler always writes a catch-all). */
FW_STAGE __u32 fw_addr_id(struct packet *pkt, __u32 gen, __u32 fields, __u32 dst)
{
	if (!pkt)
		return FW_NO_ID;
	const __u8 *b = dst ? pkt->addr_dst : pkt->addr_src;
	__u32 *id;

	if (pkt->family == 4) {
		if (fields & (dst ? FW_FIELD_DST4_RANGE : FW_FIELD_SRC4_RANGE)) {
			__u32 a = (__u32)b[0] << 24 | (__u32)b[1] << 16 | (__u32)b[2] << 8 | b[3];
			return dst ? fw_range4_dst(gen, a) : fw_range4_src(gen, a);
		}
		struct fw_lpm4_key k = {.prefixlen = 8 + 32, .gen = gen};
		__builtin_memcpy(k.addr, b, 4);
		id = bpf_map_lookup_elem(dst ? (void *)&dst4 : (void *)&src4, &k);
		return id ? *id : FW_NO_ID;
	}
	if (fields & (dst ? FW_FIELD_DST6_H48 : FW_FIELD_SRC6_H48)) {
		__u64 hi, lo;
		__builtin_memcpy(&hi, b, 8);
		__builtin_memcpy(&lo, b + 8, 8);
		hi = __builtin_bswap64(hi);
		lo = __builtin_bswap64(lo);
		return dst ? fw_h48_dst(gen, hi, lo) : fw_h48_src(gen, hi, lo);
	}
	struct fw_lpm6_key k = {.prefixlen = 8 + 128, .gen = gen};
	__builtin_memcpy(k.addr, b, 16);
	id = bpf_map_lookup_elem(dst ? (void *)&dst6 : (void *)&src6, &k);
	return id ? *id : FW_NO_ID;
}

/* The vector id at index idx of an array field table (ports, protocol,
 * flags, ICMP type), or FW_NO_ID. */
static __always_inline __u32 array_id(void *map, __u32 gen, __u32 slots, __u32 idx)
{
	__u32 key = gen * slots + idx;
	__u32 *id = bpf_map_lookup_elem(map, &key);
	return id ? *id : FW_NO_ID;
}

#endif /* XDPFW_LOOKUP_H */
