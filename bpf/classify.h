/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * classify.h: the classifier stage. Each field a generation's rules use is
 * looked up (lookup.h) to get a bit vector of the rules it allows; the
 * vectors are ANDed and the lowest set bit is the first matching rule (the
 * Linear Bit Vector Search of bpf-iptables). Every table is keyed by the
 * generation read once at the start, so rule-set swaps are atomic.
 *
 * The search runs in bpf_loop rounds. A round is a stage of its own
 * (fw_search_round), so the loop's callback holds no state the verifier
 * must follow from round to round: it converges at once.
 */
#ifndef XDPFW_CLASSIFY_H
#define XDPFW_CLASSIFY_H

#include "common.h"
#include "lookup.h"
#include "ratelimit.h"

#define FW_FIELDS 7

/* Index of the lowest set bit of x (x != 0), without branches: isolate the
 * bit, multiply by a de Bruijn constant, and read the index from a table. */
static const __u8 debruijn64[64] = {
	0,  1,  48, 2,  57, 49, 28, 3,  61, 58, 50, 42, 38, 29, 17, 4,
	62, 55, 59, 36, 53, 51, 43, 22, 45, 39, 33, 30, 24, 18, 12, 5,
	63, 47, 56, 27, 60, 41, 37, 16, 54, 35, 52, 21, 44, 32, 23, 11,
	46, 26, 40, 15, 34, 20, 31, 10, 25, 14, 19, 9,  13, 8,  7,  6,
};

static __always_inline __u32 ctz64(__u64 x)
{
	__u32 n = debruijn64[(((x & -x) * 0x03F79D71B4CB0A89ULL) >> 58) & 63];
	/* The compiler knows every table entry is below 64 and would drop a
	 * plain mask; the verifier does not know the table, so mask in asm. */
	asm volatile("%0 &= 63" : "+r"(n));
	return n;
}

static __always_inline struct fw_bitvec *vec(__u32 gen, __u32 id)
{
	__u32 key = gen * FW_MAX_VECS + (id % FW_MAX_VECS);
	return bpf_map_lookup_elem(&bitvecs, &key);
}

/* The state of one packet's first-match search: scalars only, so a stage
 * can take it (common.h). */
struct search {
	struct limit_req lim; /* the packet, for rate limits; lim.now is read
			       * at the first rate limit, 0 until then */
	__u64 summary;        /* AND of the summaries, minus words searched */
	__u32 ids[FW_FIELDS]; /* vector id of each field (an unused field
			       * repeats a used one's: ANDing a vector with
			       * itself changes nothing) */
	__u32 start;          /* first rule index still in play */
	__u32 gen;
	__u32 would_slot;     /* slot of the first dry-run drop, or FW_NO_SLOT */
	__u32 would_stat;     /* its enum fw_stat: drop-rule or rate-limited */
	struct verdict result;
	__u32 pad;
};

/* Moves the search on to rule index next: 1 when no rule is left. */
static __always_inline int skip_to(struct search *st, __u32 next)
{
	st->start = next;
	if (next >= FW_MAX_RULES)
		return 1;
	st->summary &= ~0ULL << (next >> 6);
	return 0;
}

/* A dry-run set decided: note a would-drop (drop_stat >= 0), go on at the
 * next set. Returns 1 when the search is over. */
static __always_inline int dry_run_next(struct search *st, struct fw_rule *r, int drop_stat)
{
	if (drop_stat >= 0) {
		count(&action_stats, FW_STAT_WOULD_DROP, st->lim.bytes);
		if (st->would_slot == FW_NO_SLOT) {
			st->would_slot = r->slot;
			st->would_stat = drop_stat;
		}
	}
	return skip_to(st, r->next);
}

static __always_inline int decide(struct search *st, __u32 stat, __u32 xdp, __u32 slot)
{
	st->result.stat = stat;
	st->result.xdp = xdp;
	st->result.slot = slot;
	return 1;
}

/* fw_search_round: one round of the search. Take the lowest word where
 * every field has a rule, AND it; the lowest bit is the first rule that
 * matches every field. A rule of a dry-run set is counted and the search
 * goes on at the next set; so does a rate limit told to go on. Returns 1
 * when the search is over (st->result holds the verdict), 0 to go on. Each
 * round either clears a summary bit or moves st->start past a rule, so the
 * search ends within FW_MAX_ITER rounds. */
FW_STAGE int fw_search_round(struct search *st)
{
	if (!st || !st->summary)
		return 1;
	__u32 gen = st->gen & 1;
	__u32 w = ctz64(st->summary);
	__u64 bits = ~0ULL;
	int f;
#pragma clang loop unroll(full)
	for (f = 0; f < FW_FIELDS; f++) {
		struct fw_bitvec *v = vec(gen, st->ids[f]);
		if (!v)
			return 1;
		bits &= v->words[w];
	}
	if (w == st->start >> 6)
		bits &= ~0ULL << (st->start & 63);
	if (!bits) {
		st->summary &= st->summary - 1;
		return 0;
	}
	__u32 index = w * 64 + ctz64(bits);
	__u32 rkey = gen * FW_MAX_RULES + index;
	struct fw_rule *r = bpf_map_lookup_elem(&rules, &rkey);
	if (!r)
		return 1;
	__u32 slot = r->slot % FW_COUNTER_SLOTS;
	count(&rule_stats, slot, st->lim.bytes);
	int dry = r->flags & FW_RULE_DRY_RUN;

	if (r->action == FW_ACTION_RATE_LIMIT) {
		st->lim.rkey = rkey;
		if (!fw_rate_limit(&st->lim)) {
			count(&rule_limited, slot, st->lim.bytes);
			if (dry)
				return dry_run_next(st, r, FW_STAT_RATE_LIMITED);
			return decide(st, FW_STAT_RATE_LIMITED, XDP_DROP, r->slot);
		}
		if (r->flags & FW_RULE_LIMIT_NEXT)
			return skip_to(st, index + 1); /* within the limit: go on */
		if (dry)
			return dry_run_next(st, r, -1);
		return decide(st, FW_STAT_PASS_RULE, XDP_PASS, r->slot);
	}
	if (dry)
		return dry_run_next(st, r, r->action == FW_ACTION_DROP ? FW_STAT_DROP_RULE : -1);
	if (r->action == FW_ACTION_DROP)
		return decide(st, FW_STAT_DROP_RULE, XDP_DROP, r->slot);
	return decide(st, FW_STAT_PASS_RULE, XDP_PASS, r->slot);
}

/* The bpf_loop callback: one round. The verifier needs a callback's return
 * value to be 0 or 1, which it cannot know of a stage's: mask it. */
static long search_step(__u64 round, void *ctx)
{
	long done = fw_search_round(ctx);
	asm volatile("%0 &= 1" : "+r"(done));
	return done;
}

/* What classification decided: the verdict, and the search's first dry-run
 * drop (would.slot FW_NO_SLOT when none). */
struct outcome {
	struct verdict v;
	struct verdict would;
};

/* fw_classify decides a parsed packet's verdict into *out. Returns 0. */
FW_STAGE int fw_classify(struct packet *pkt, __u64 bytes, struct outcome *out)
{
	__u32 zero = 0;

	if (!pkt || !out)
		return 0;
	out->would.slot = FW_NO_SLOT;
	out->v.stat = FW_STAT_NO_POLICY;
	out->v.xdp = XDP_PASS;
	out->v.slot = FW_NO_SLOT;
	void *inner = bpf_map_lookup_elem(&gen_sel, &zero);
	if (!inner)
		return 0;
	struct fw_active *active = bpf_map_lookup_elem(inner, &zero);
	if (!active)
		return 0;
	__u32 gen = active->gen & 1;
	__u32 fields = active->fields;

	/* From here on, no rule deciding means the default: pass. A field
	 * table without an entry means no rule can match (the compiler always
	 * writes a catch-all entry, so only a damaged map gets there). */
	out->v.stat = FW_STAT_PASS_DEFAULT;
	__u32 ids[FW_FIELDS];
	__u32 used[FW_FIELDS] = {
		fields & FW_FIELD_SRC, fields & FW_FIELD_DST, fields & FW_FIELD_SPORT,
		fields & FW_FIELD_DPORT, fields & FW_FIELD_PROTO, fields & FW_FIELD_TCPFLAGS,
		fields & FW_FIELD_ICMPTYPE,
	};
	ids[0] = used[0] ? addr_id(pkt, gen, fields, 0) : FW_NO_ID;
	ids[1] = used[1] ? addr_id(pkt, gen, fields, 1) : FW_NO_ID;
	ids[2] = used[2] ? array_id(&sport, gen, FW_PORT_SLOTS, pkt->sport % FW_PORT_SLOTS) : FW_NO_ID;
	ids[3] = used[3] ? array_id(&dport, gen, FW_PORT_SLOTS, pkt->dport % FW_PORT_SLOTS) : FW_NO_ID;
	ids[4] = used[4] ? array_id(&proto, gen, FW_PROTO_SLOTS, pkt->proto) : FW_NO_ID;
	ids[5] = used[5] ? array_id(&tcpflags, gen, FW_BYTE_SLOTS, pkt->tcpflags % FW_BYTE_SLOTS) : FW_NO_ID;
	ids[6] = used[6] ? array_id(&icmptype, gen, FW_BYTE_SLOTS, pkt->icmptype % FW_BYTE_SLOTS) : FW_NO_ID;

	/* A field no rule uses takes a used field's vector (no extra read of
	 * a cold cache line) or, when no field is used, the all-rules one. */
	__u32 base = FW_VEC_ALL;
	int f;
#pragma clang loop unroll(full)
	for (f = FW_FIELDS - 1; f >= 0; f--) {
		if (!used[f])
			continue;
		if (ids[f] == FW_NO_ID)
			return 0;
		base = ids[f];
	}

	struct search st;
	__builtin_memset(&st, 0, sizeof(st));
	st.summary = ~0ULL;
#pragma clang loop unroll(full)
	for (f = 0; f < FW_FIELDS; f++) {
		st.ids[f] = used[f] ? ids[f] : base;
		struct fw_bitvec *v = vec(gen, st.ids[f]);
		if (!v)
			return 0;
		st.summary &= v->summary;
	}
	st.gen = gen;
	st.would_slot = FW_NO_SLOT;
	st.result = out->v;
	st.lim.bytes = bytes;
	st.lim.family = pkt->family;
	__builtin_memcpy(st.lim.src, pkt->addr_src, 16);
	/* bpf_loop: the verifier checks the callback once, not once a round. */
	bpf_loop(FW_MAX_ITER, search_step, &st, 0);
	out->v = st.result;
	out->would.slot = st.would_slot;
	out->would.stat = st.would_stat;
	return 0;
}

#endif /* XDPFW_CLASSIFY_H */
