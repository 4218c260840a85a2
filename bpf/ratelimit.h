/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ratelimit.h: the rate-limit stage. A limit is a GCRA token bucket per
 * packets and one per bytes (struct fw_limit), per rule (rl_rule, shared by
 * all CPUs) or per source prefix (rl_source, an LRU).
 */
#ifndef XDPFW_RATELIMIT_H
#define XDPFW_RATELIMIT_H

#include "common.h"

/* What the rate-limit stage needs of the packet and the search: a struct of
 * scalars, as a stage's argument must be. */
struct limit_req {
	__u64 bytes; /* the frame's length */
	__u64 now;   /* ticks (1/16 ns); 0: read the clock and set it */
	__u32 rkey;  /* the rule: its key in rules */
	__u32 family;
	__u8 src[16]; /* the packet's source address */
};

/* GCRA on one bucket: if the arrival time *tat is at most tol ticks ahead
 * of now, the packet conforms and moves it cost ticks on. CPUs share the
 * bucket: the update is a compare-and-swap, retried when another CPU moved
 * it first; a packet that loses every round is dropped, which errs on the
 * side of the limit. */
static __always_inline int gcra(__u64 *tat, __u64 now, __u64 cost, __u64 tol)
{
	int i;
#pragma clang loop unroll(full)
	for (i = 0; i < 4; i++) {
		__u64 old = *(volatile __u64 *)tat;
		__u64 t = old > now ? old : now;
		if (t - now > tol)
			return 0;
		if (__sync_val_compare_and_swap(tat, old, t + cost) == old)
			return 1;
	}
	return 0;
}

/* The mask of the first n bits (0 <= n <= 64) of a 64-bit word, without
 * shifting by 64, which BPF leaves undefined. */
static __always_inline __u64 high_bits(__u32 n)
{
	if (n >= 64)
		return ~0ULL;
	if (n == 0)
		return 0;
	return ~0ULL << (64 - n);
}

/* The per-source bucket key: the limit's id and the source masked to the
 * limit's prefix length n. */
static __always_inline void source_key(struct fw_source_key *k, __u64 id, const __u8 *src, __u32 n)
{
	__u64 hi, lo;
	__builtin_memcpy(&hi, src, 8);
	__builtin_memcpy(&lo, src + 8, 8);
	hi = __builtin_bswap64(__builtin_bswap64(hi) & high_bits(n));
	lo = __builtin_bswap64(__builtin_bswap64(lo) & high_bits(n > 64 ? n - 64 : 0));
	k->id = id;
	__builtin_memcpy(k->addr, &hi, 8);
	__builtin_memcpy(k->addr + 8, &lo, 8);
}

/* fw_rate_limit: whether the packet is within its rule's limit (1, and its
 * tokens are taken) or over it (0). */
FW_STAGE int fw_rate_limit(struct limit_req *req)
{
	if (!req)
		return 0;
	__u32 rkey = req->rkey;
	struct fw_rule *r = bpf_map_lookup_elem(&rules, &rkey);
	if (!r)
		return 0;
	struct fw_limit *l = &r->limit;
	struct fw_bucket *b;

	if (!req->now)
		req->now = now_ns() << 4;
	__u64 now = req->now;
	if (l->per == FW_PER_SOURCE) {
		struct fw_source_key k;
		source_key(&k, l->id, req->src, req->family == 4 ? l->prefix4 : l->prefix6);
		b = bpf_map_lookup_elem(&rl_source, &k);
		if (!b) {
			/* A new source (under a spoofed flood, every packet):
			 * its bucket is full, so the packet conforms; insert
			 * the bucket with this packet's tokens taken, one map
			 * operation. If another CPU added it first, use that. */
			struct fw_bucket fresh = {.id = l->id};
			if (l->pkt_cost)
				fresh.pkt_tat = now + l->pkt_cost;
			if (l->byte_cost)
				fresh.byte_tat = now + ((req->bytes * l->byte_cost) >> 16);
			if (bpf_map_update_elem(&rl_source, &k, &fresh, BPF_NOEXIST) == 0)
				return 1;
			b = bpf_map_lookup_elem(&rl_source, &k);
			if (!b)
				return 0;
		}
	} else {
		__u32 slot = r->slot % FW_COUNTER_SLOTS;
		b = bpf_map_lookup_elem(&rl_rule, &slot);
		if (!b)
			return 0;
		if (b->id != l->id) {
			/* The slot's bucket was another limit's: start afresh.
			 * CPUs racing here all write the same values. */
			b->pkt_tat = 0;
			b->byte_tat = 0;
			b->id = l->id;
		}
	}
	if (l->pkt_cost && !gcra(&b->pkt_tat, now, l->pkt_cost, l->pkt_tol))
		return 0;
	if (l->byte_cost && !gcra(&b->byte_tat, now, (req->bytes * l->byte_cost) >> 16, l->byte_tol))
		return 0;
	return 1;
}

#endif /* XDPFW_RATELIMIT_H */
