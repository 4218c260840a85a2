/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ratelimit.h: the rate-limit stage. A limit is a GCRA token bucket per
 * packets and one per bytes (struct fw_limit), per rule (rl_rule, shared by
 * all CPUs) or per source prefix.
 *
 * Per source, a bucket for every source would make a spoofed flood insert
 * (and evict) one on every packet: 350-600 ns. So every packet is first
 * counted in a sketch (rl_sketch): a count-min sketch whose counters are
 * leaky buckets in the limit's own units, so that a counter's level never
 * falls below the backlog the source's own bucket would have. A source whose
 * estimated backlog is within the limit's tolerance cannot be over its limit,
 * and passes with no bucket; only a source the sketch finds at its limit (a
 * heavy hitter, or one whose counters others inflated) gets a bucket in
 * rl_source, debited with what the sketch counted. See docs/dataplane.md,
 * "Per-source limits under a flood".
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

/* The sketch's hash seed and size, set by user space at load (ratelimit.go)
 * from the map it creates or adopts: the seed, random and kept in
 * rl_sketch[0], makes the counters a source lands on unknowable from
 * outside, so a flood cannot aim at a real source's counters. */
volatile const __u64 fw_sketch_seed = 0;
volatile const __u32 fw_sketch_lines = FW_DEFAULT_SKETCH_LINES;

/* A 64-bit finaliser (MurmurHash3's fmix64): every input bit moves about
 * half the output bits. */
static __always_inline __u64 fmix64(__u64 h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return h;
}

static __always_inline __u64 source_hash(const struct fw_source_key *k)
{
	__u64 hi, lo;
	__builtin_memcpy(&hi, k->addr, 8);
	__builtin_memcpy(&lo, k->addr + 8, 8);
	return fmix64(fmix64(fmix64(k->id ^ fw_sketch_seed) ^ hi) ^ lo);
}

/* The counter of row i a source with hash h takes in its line: one of the
 * row's FW_SKETCH_CHOICES, by two low bits of h per row (the line is picked
 * by the high half). */
static __always_inline __u32 sketch_slot(__u64 h, int i)
{
	return (i * FW_SKETCH_CHOICES + ((h >> (2 * i)) & (FW_SKETCH_CHOICES - 1))) & (FW_SKETCH_WAYS - 1);
}

/* Raises a sketch counter, last read as cur, to at least target: 1 when it
 * is there, 0 when three rounds lost to other CPUs' raises that each fell
 * short of it. */
static __always_inline int raise_counter(__u64 *c, __u64 cur, __u64 target)
{
	int i;
#pragma clang loop unroll(full)
	for (i = 0; i < 3; i++) {
		if (cur >= target)
			return 1;
		__u64 seen = __sync_val_compare_and_swap(c, cur, target);
		if (seen == cur)
			return 1;
		cur = seen;
	}
	return cur >= target;
}

/* What fw_sketch_add returns when it could not count the packet: a backlog
 * no limit tolerates, so the packet takes the bucket path. */
#define SKETCH_UNKNOWN (~0ULL)

/* fw_sketch_add counts a packet of weight w ticks in the source's counters
 * and returns the source's estimated backlog before it, in ticks: the least,
 * over the rows, of how far the counter's arrival time is ahead of now. A
 * stage: its paths (each counter's raise can go several ways) are verified
 * once, not once for every path of the rate-limit stage.
 *
 * A counter is a leaky bucket of every packet hashed to it, passed or not,
 * draining one tick a tick: so it is never below the bucket the source would
 * have alone (count-min: the least of the rows is the closest). Conservative
 * update: only counters below the new estimate are raised, to it, which keeps
 * that true and inflates the other rows' counters less. A counter is raised
 * no further than cap ticks ahead of now (cap is at least the limit's
 * tolerance plus a packet, the most a bucket can hold), so a flood's backlog
 * is forgotten within cap of its end. Raises are compare-and-swaps: CPUs
 * share the counters, and a counter only ever grows, so a lost race whose
 * winner raised it far enough is done; one that still loses after three
 * rounds makes the packet take the bucket path, the exact one. */
FW_STAGE __u64 fw_sketch_add(struct fw_source_key *k, __u64 now, __u64 w, __u64 cap)
{
	if (!k)
		return SKETCH_UNKNOWN;
	__u64 h = source_hash(k);
	/* Line 1 + (h's top half scaled to the line count): no division,
	 * and any count works, not only powers of two. */
	__u32 line = 1 + (__u32)(((h >> 32) * (__u64)fw_sketch_lines) >> 32);
	struct fw_sketch_line *s = bpf_map_lookup_elem(&rl_sketch, &line);
	if (!s)
		return SKETCH_UNKNOWN; /* a sketch smaller than fw_sketch_lines */
	__u64 old[FW_SKETCH_ROWS];
	__u64 est = SKETCH_UNKNOWN;
	int i;
#pragma clang loop unroll(full)
	for (i = 0; i < FW_SKETCH_ROWS; i++) {
		old[i] = *(volatile __u64 *)&s->tat[sketch_slot(h, i)];
		__u64 t = old[i] > now ? old[i] : now;
		if (t < est)
			est = t;
	}
	__u64 target = est + w;
	if (target > now + cap)
		target = now + cap;
	int raised = 0;
#pragma clang loop unroll(full)
	for (i = 0; i < FW_SKETCH_ROWS; i++)
		raised += raise_counter(&s->tat[sketch_slot(h, i)], old[i], target);
	if (raised != FW_SKETCH_ROWS)
		return SKETCH_UNKNOWN;
	return est - now;
}

/* Raises a bucket's arrival time to at least t (a CPU that moved it on
 * first has done at least as much). */
static __always_inline void raise_tat(__u64 *tat, __u64 t)
{
	__u64 old = *(volatile __u64 *)tat;
	if (old < t)
		__sync_val_compare_and_swap(tat, old, t);
}

/* The per-source stats of a rule's slot: the bucket path only. */
static __always_inline void count_src(__u32 slot, int created)
{
	struct fw_rl_src_stat *st = bpf_map_lookup_elem(&rl_src_stats, &slot);
	if (st) {
		st->checked++;
		st->created += created;
	}
}

/* source_limit: a per-source limit on a packet; 1: within it. See the
 * top of this file; docs/dataplane.md says why each bound is what it is. */
static __always_inline int source_limit(struct limit_req *req, struct fw_limit *l, __u32 slot, __u64 now)
{
	struct fw_source_key k;
	source_key(&k, l->id, req->src, req->family == 4 ? l->prefix4 : l->prefix6);

	/* The packet's weight in ticks: its cost in each bucket, summed, so
	 * that the counters (one per source for both buckets) are never below
	 * either bucket. tol_lo, the smaller tolerance, decides; tol_hi sizes
	 * the counters' cap. */
	__u64 pc = l->pkt_cost, bc = 0;
	__u64 tol_lo = SKETCH_UNKNOWN, tol_hi = 0;
	if (pc) {
		tol_lo = l->pkt_tol;
		tol_hi = l->pkt_tol;
	}
	if (l->byte_cost) {
		bc = (req->bytes * l->byte_cost) >> 16;
		if (l->byte_tol < tol_lo)
			tol_lo = l->byte_tol;
		if (l->byte_tol > tol_hi)
			tol_hi = l->byte_tol;
	}
	__u64 w = pc + bc;
	/* 2^61 ticks is 4.5 years: no overflow in what follows. */
	if (tol_hi > (1ULL << 61))
		tol_hi = 1ULL << 61;
	__u64 prev = fw_sketch_add(&k, now, w, 2 * (tol_hi + w));

	/* If even the estimate of the source's backlog leaves room for this
	 * packet in every bucket, the source's own bucket would too: the
	 * packet conforms, and needs no bucket. So does the first packet of a
	 * source with no backlog at all, which a limit with a burst of 1 (no
	 * room for a second packet) would otherwise never give. */
	if (prev == 0 || (w <= tol_lo && prev <= tol_lo - w))
		return 1;

	struct fw_bucket *b = bpf_map_lookup_elem(&rl_source, &k);
	if (!b) {
		/* A source at its limit: its bucket starts with the backlog
		 * the sketch counted, so the packets that passed on the sketch
		 * are not granted again; at most a full tolerance, so this
		 * packet conforms. An estimate is at least the source's own
		 * backlog; one that others inflated (or a heavy source's,
		 * after an eviction) would otherwise drop a packet its own
		 * bucket holds a token for. Inserted with this packet's
		 * tokens taken: one map operation. If another CPU added it
		 * first, use that. */
		struct fw_bucket fresh = {.id = l->id};
		if (pc)
			fresh.pkt_tat = now + (prev < l->pkt_tol ? prev : l->pkt_tol) + pc;
		if (l->byte_cost)
			fresh.byte_tat = now + (prev < l->byte_tol ? prev : l->byte_tol) + bc;
		if (bpf_map_update_elem(&rl_source, &k, &fresh, BPF_NOEXIST) == 0) {
			count_src(slot, 1);
			return 1;
		}
		b = bpf_map_lookup_elem(&rl_source, &k);
		if (!b)
			return 0;
	} else if (prev <= tol_lo || prev <= w) {
		/* The estimate just crossed (a packet ago it left room for a
		 * packet, so it is at most the tolerance, or a packet for a
		 * burst of 1): the source's packets passed on the sketch
		 * until now, unseen by its bucket (kept from an earlier
		 * spell). Debit them as a new bucket would be. A source over
		 * its limit soon has its counters above this (they count its
		 * dropped packets too), and its bucket's arithmetic is left
		 * alone. */
		if (pc)
			raise_tat(&b->pkt_tat, now + (prev < l->pkt_tol ? prev : l->pkt_tol));
		if (l->byte_cost)
			raise_tat(&b->byte_tat, now + (prev < l->byte_tol ? prev : l->byte_tol));
	}
	count_src(slot, 0);
	if (pc && !gcra(&b->pkt_tat, now, pc, l->pkt_tol))
		return 0;
	if (l->byte_cost && !gcra(&b->byte_tat, now, bc, l->byte_tol))
		return 0;
	return 1;
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
	__u32 slot = r->slot % FW_COUNTER_SLOTS;
	if (l->per == FW_PER_SOURCE)
		return source_limit(req, l, slot, now);
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
	if (l->pkt_cost && !gcra(&b->pkt_tat, now, l->pkt_cost, l->pkt_tol))
		return 0;
	if (l->byte_cost && !gcra(&b->byte_tat, now, (req->bytes * l->byte_cost) >> 16, l->byte_tol))
		return 0;
	return 1;
}

#endif /* XDPFW_RATELIMIT_H */
