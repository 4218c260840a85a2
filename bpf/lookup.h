/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lookup.h: the per-field lookups. Each turns one field of a packet into the
 * id of a bit vector of the rules that field allows (bitvecs). Addresses go
 * to a prefix table: an LPM trie for small tables, DIR-24 (IPv4) or the /48
 * hash (IPv6) for big ones, chosen per generation by user space (the
 * FW_FIELD_*_DIR24 and *_H48 bits of fw_active.fields). Ports, protocol,
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

/* The vector id of an IPv4 address (host order) in a DIR-24 table: one
 * read for most addresses, two where its /24 is cut into intervals. */
static __always_inline __u32 dir24_lookup(void *t24s, void *blks, void *t8s, __u32 gen, __u32 a)
{
	void *t24 = bpf_map_lookup_elem(t24s, &gen);
	if (!t24)
		return FW_NO_ID;
	__u32 idx = a >> 8;
	__u32 key = idx >> 1;
	__u64 *pair = bpf_map_lookup_elem(t24, &key);
	if (!pair)
		return FW_NO_ID;
	__u32 e = (idx & 1) ? (__u32)(*pair >> 32) : (__u32)*pair;
	__u32 low = a & 0xFF;
	__u32 index = e & FW_DIR24_INDEX_MASK;

	switch (e >> FW_DIR24_SHIFT) {
	case FW_DIR24_VEC:
		return e & 0xFFFF;
	case FW_DIR24_BLOCK: {
		void *blk = bpf_map_lookup_elem(blks, &gen);
		if (!blk)
			return FW_NO_ID;
		struct fw_v4_block *b = bpf_map_lookup_elem(blk, &index);
		if (!b)
			return FW_NO_ID;
		return b->ids[bounds_at_or_below(b->bounds, FW_V4_BLOCK_BOUNDS, low) & FW_V4_BLOCK_BOUNDS];
	}
	case FW_DIR24_T8: {
		void *t8 = bpf_map_lookup_elem(t8s, &gen);
		if (!t8)
			return FW_NO_ID;
		struct fw_v4_t8 *t = bpf_map_lookup_elem(t8, &index);
		if (!t)
			return FW_NO_ID;
		return t->ids[low];
	}
	}
	return FW_NO_ID;
}

/* Global functions: the verifier checks each once, on its own, instead of
 * once per path through the classifier. */
FW_STAGE __u32 fw_dir24_src(__u32 gen, __u32 addr)
{
	return dir24_lookup(&src4_t24, &src4_blk, &src4_t8, gen, addr);
}

FW_STAGE __u32 fw_dir24_dst(__u32 gen, __u32 addr)
{
	return dir24_lookup(&dst4_t24, &dst4_blk, &dst4_t8, gen, addr);
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
		if (fields & (dst ? FW_FIELD_DST4_DIR24 : FW_FIELD_SRC4_DIR24)) {
			__u32 a = (__u32)b[0] << 24 | (__u32)b[1] << 16 | (__u32)b[2] << 8 | b[3];
			return dst ? fw_dir24_dst(gen, a) : fw_dir24_src(gen, a);
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
