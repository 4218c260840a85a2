/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lookup.h: the per-field lookups. Each turns one field of a packet into the
 * id of a bit vector of the rules that field allows (bitvecs). Addresses go
 * to a prefix table: an LPM trie for small tables, a range table for big
 * ones, chosen per generation by user space (the FW_FIELD_*_RANGE bits of
 * fw_active.fields). Ports, protocol, TCP flags and ICMP type index arrays.
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

/* The id a B-tree of lines (struct fw_v4_line) holds for a 16-bit part of
 * an address, low: one line a level, from the root down to the leaf. A
 * depth outside 1..FW_R4_MAX_DEPTH (a damaged entry) gives FW_NO_ID. */
static __always_inline __u32 walk(void *lines, __u32 root, __u32 depth, __u32 low)
{
	__u32 index = root;
	int level;

	for (level = 1; level <= FW_R4_MAX_DEPTH; level++) {
		struct fw_v4_line *l = bpf_map_lookup_elem(lines, &index);
		if (!l)
			return FW_NO_ID;
		__u32 part = bounds_at_or_below(l->bounds, FW_R4_LINE_BOUNDS, low) & FW_R4_LINE_BOUNDS;
		if (level == depth)
			return l->ids[part];
		index = ((__u32)l->ids[0] | (__u32)l->ids[1] << 16) + part;
	}
	return FW_NO_ID;
}

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
	return walk(lines, e & FW_R4_LINE_MASK, depth, a & 0xFFFF);
}

/* The id of an IPv6 address (first and last 8 bytes, host order) in an LPM
 * trie of fw_lpm6_key. */
static __always_inline __u32 lpm6_id(void *trie, __u32 gen, __u64 hi, __u64 lo)
{
	struct fw_lpm6_key k = {.prefixlen = 8 + 128, .gen = gen};
	__u64 be_hi = __builtin_bswap64(hi), be_lo = __builtin_bswap64(lo);
	__builtin_memcpy(k.addr, &be_hi, 8);
	__builtin_memcpy(k.addr + 8, &be_lo, 8);
	__u32 *id = bpf_map_lookup_elem(trie, &k);
	return id ? *id : FW_NO_ID;
}

/* The maps of one field's IPv6 range table (outer maps: slot = gen). */
struct range6_maps {
	void *h32, *h48, *direct, *lines, *longs, *shorts;
};

/* The vector id of an IPv6 address (first and last 8 bytes, host order) in
 * a range table (firewall.h, enum fw_range6). A dense /32 (H32) gives its
 * vector, or a /48 entry from its direct block, or walks its tree over bits
 * 32..47 to a vector or to the address's H48 entry. A sparse /32's /48 may
 * have an H48 entry; an address that reaches none is in a /32 where only
 * prefixes shorter than /32 count: the src6 trie, which then holds only
 * those. A /48 entry gives a vector, a tree over bits 48..63, or the long
 * trie. A table without dense /32s (!dense) skips H32. */
/* The H48 entry of an address's /48, or NULL. */
static __always_inline __u64 *h48_entry(void *h48s, __u32 gen, __u64 hi)
{
	__u64 key48 = hi & ~0xFFFFULL;
	void *h48 = bpf_map_lookup_elem(h48s, &gen);
	return h48 ? bpf_map_lookup_elem(h48, &key48) : 0;
}

/* walk in the generation's lines, from an entry holding depth and root. */
static __always_inline __u32 walk_entry(void *lines_of, __u32 gen, __u32 e, __u32 low)
{
	void *lines = bpf_map_lookup_elem(lines_of, &gen);
	if (!lines)
		return FW_NO_ID;
	return walk(lines, e & FW_R6_INDEX_MASK, e >> FW_R6_KIND_SHIFT, low);
}

static __always_inline __u32 range6_lookup(const struct range6_maps *m, __u32 gen, __u64 hi, __u64 lo,
					   __u32 dense)
{
	__u32 key32 = hi >> 32;
	__u32 mid = (hi >> 16) & 0xFFFF; /* address bits 32..47 */
	__u32 *e32 = 0;
	__u64 *e48 = 0;
	__u32 e;

	/* Each map is found only when the address needs it: a cold cache
	 * line less on the common paths. */
	if (dense) {
		void *h32 = bpf_map_lookup_elem(m->h32, &gen);
		if (!h32)
			return FW_NO_ID;
		e32 = bpf_map_lookup_elem(h32, &key32);
	}
	if (e32) {
		e = *e32;
		__u32 kind = e >> FW_R6_KIND_SHIFT;
		if (kind == FW_R6_VEC)
			return e & 0xFFFF;
		if (kind == FW_R6_DIRECT) {
			void *direct = bpf_map_lookup_elem(m->direct, &gen);
			if (!direct)
				return FW_NO_ID;
			__u32 key = (e & FW_R6_INDEX_MASK) * FW_R6_DIRECT_VALUES + (mid >> 4);
			struct fw_v4_direct *d = bpf_map_lookup_elem(direct, &key);
			if (!d)
				return FW_NO_ID;
			e = d->e[mid & 15];
		} else {
			__u32 id = walk_entry(m->lines, gen, e, mid);
			if (id != FW_R6_CUT)
				return id;
			e48 = h48_entry(m->h48, gen, hi);
			if (!e48)
				return FW_NO_ID;
		}
	} else {
		e48 = h48_entry(m->h48, gen, hi);
		if (!e48)
			return lpm6_id(m->shorts, gen, hi, lo);
	}
	__u32 low = hi & 0xFFFF; /* address bits 48..63 */
	if (e48) {
		__u64 v = *e48;
		if (v >> FW_R6_ONE_BIT) {
			/* low in [first, last], in unsigned arithmetic */
			__u32 first = (v >> 28) & 0xFFFF, last = (v >> 44) & 0xFFFF;
			return low - first <= last - first ? (v >> 14) & 0x3FFF : v & 0x3FFF;
		}
		e = v;
	}
	__u32 kind = e >> FW_R6_KIND_SHIFT;
	if (kind == FW_R6_VEC)
		return e & 0xFFFF;
	if (kind == FW_R6_LPM)
		return lpm6_id(m->longs, gen, hi, lo);
	return walk_entry(m->lines, gen, e, low);
}

/* dense: the table has dense /32s (FW_FIELD_*6_DENSE). */
FW_STAGE __u32 fw_range6_src(__u32 gen, __u64 hi, __u64 lo, __u32 dense)
{
	const struct range6_maps m = {&src6_h32, &src6_cut48, &src6_direct, &src6_lines, &src6_long, &src6};
	return range6_lookup(&m, gen, hi, lo, dense);
}

FW_STAGE __u32 fw_range6_dst(__u32 gen, __u64 hi, __u64 lo, __u32 dense)
{
	const struct range6_maps m = {&dst6_h32, &dst6_cut48, &dst6_direct, &dst6_lines, &dst6_long, &dst6};
	return range6_lookup(&m, gen, hi, lo, dense);
}

/* The vector id of a packet's source (dst = 0) or destination address, or
 * FW_NO_ID when its table has no entry (a damaged map: the compiler always
 * writes a catch-all). dst is a constant in each caller, so that every map
 * lookup below has one map: a call site that sees two maps cannot have the
 * lookup inlined or called directly, and gets the generic helper's indirect
 * call (a retpoline on this machine class). */
static __always_inline __u32 addr_id(struct packet *pkt, __u32 gen, __u32 fields, const int dst)
{
	if (!pkt)
		return FW_NO_ID;
	const __u8 *b = dst ? pkt->addr_dst : pkt->addr_src;
	__u32 *id;

	if (pkt->family == 4) {
		if (fields & (dst ? FW_FIELD_DST4_RANGE : FW_FIELD_SRC4_RANGE)) {
			__u32 a = (__u32)b[0] << 24 | (__u32)b[1] << 16 | (__u32)b[2] << 8 | b[3];
			return dst ? range4_lookup(&dst4_direct, &dst4_lines, gen, a)
				   : range4_lookup(&src4_direct, &src4_lines, gen, a);
		}
		struct fw_lpm4_key k = {.prefixlen = 8 + 32, .gen = gen};
		__builtin_memcpy(k.addr, b, 4);
		id = bpf_map_lookup_elem(dst ? (void *)&dst4 : (void *)&src4, &k);
		return id ? *id : FW_NO_ID;
	}
	if (fields & (dst ? FW_FIELD_DST6_RANGE : FW_FIELD_SRC6_RANGE)) {
		__u64 hi, lo;
		__builtin_memcpy(&hi, b, 8);
		__builtin_memcpy(&lo, b + 8, 8);
		hi = __builtin_bswap64(hi);
		lo = __builtin_bswap64(lo);
		__u32 dense = fields & (dst ? FW_FIELD_DST6_DENSE : FW_FIELD_SRC6_DENSE);
		return dst ? fw_range6_dst(gen, hi, lo, dense) : fw_range6_src(gen, hi, lo, dense);
	}
	struct fw_lpm6_key k = {.prefixlen = 8 + 128, .gen = gen};
	__builtin_memcpy(k.addr, b, 16);
	id = bpf_map_lookup_elem(dst ? (void *)&dst6 : (void *)&src6, &k);
	return id ? *id : FW_NO_ID;
}

/* fw_src_id, fw_dst_id: addr_id as stages, one per direction (above). */
FW_STAGE __u32 fw_src_id(struct packet *pkt, __u32 gen, __u32 fields)
{
	return addr_id(pkt, gen, fields, 0);
}

FW_STAGE __u32 fw_dst_id(struct packet *pkt, __u32 gen, __u32 fields)
{
	return addr_id(pkt, gen, fields, 1);
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
