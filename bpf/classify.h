/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * classify.h: the classifier stage. Each field a generation's rules use is
 * looked up (lookup.h) to get a bit vector of the rules it allows; the
 * vectors are ANDed and the lowest set bit is the first matching rule (the
 * Linear Bit Vector Search of bpf-iptables). Every table is keyed by the
 * generation read once at the start, so rule-set swaps are atomic.
 *
 * The search runs in rounds, the first called directly and the rest in
 * bpf_loop. A round is a stage of its own (fw_search_round), so the loop's
 * callback holds no state the verifier must follow from round to round: it
 * converges at once.
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
	__u32 ids[FW_FIELDS]; /* vector id of each field in use */
	__u32 start;          /* first rule index still in play */
	__u32 gen;
	__u32 would_slot;     /* slot of the first dry-run drop, or FW_NO_SLOT */
	__u32 would_stat;     /* its enum fw_stat: drop-rule or rate-limited */
	struct verdict result;
	__u32 used;           /* bit f: field f is in use (enum fw_field);
			       * only those are read */
};

/* fw_search_init computes the summary, from the fields in use only: a
 * field no rule uses is not read at all (each vector read is a dozen
 * instructions, and the search reads every field's twice: over a flood, the
 * seven fields' reads were a fifth of the program's time). When no field is
 * used, the all-rules vector stands in for field 0. Returns 0 when a used
 * field's table had no entry: no rule can match (the compiler always writes
 * a catch-all, so only a damaged map gets there). */
FW_STAGE int fw_search_init(struct search *st)
{
	if (!st)
		return 0;
	__u32 gen = st->gen & 1;
	__u64 summary = ~0ULL;
	int f;
	if (!(st->used & ((1 << FW_FIELDS) - 1))) {
		st->used = 1;
		st->ids[0] = FW_VEC_ALL;
	}
#pragma clang loop unroll(full)
	for (f = 0; f < FW_FIELDS; f++) {
		if (!(st->used & (1 << f)))
			continue;
		if (st->ids[f] == FW_NO_ID)
			return 0;
		struct fw_bitvec *v = vec(gen, st->ids[f]);
		if (!v)
			return 0;
		summary &= v->summary;
	}
	st->summary = summary;
	return 1;
}

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
		if (!(st->used & (1 << f)))
			continue;
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

/* fw_classify decides a parsed packet's verdict: a packed outcome (see
 * pack_outcome). */
FW_STAGE __u64 fw_classify(struct packet *pkt, __u64 bytes)
{
	__u64 no_policy = pack_outcome(FW_STAT_NO_POLICY, XDP_PASS, FW_NO_SLOT, 0, FW_NO_SLOT);
	__u64 pass = pack_outcome(FW_STAT_PASS_DEFAULT, XDP_PASS, FW_NO_SLOT, 0, FW_NO_SLOT);
	__u32 zero = 0;

	if (!pkt)
		return no_policy;
	void *inner = bpf_map_lookup_elem(&gen_sel, &zero);
	if (!inner)
		return no_policy;
	struct fw_active *active = bpf_map_lookup_elem(inner, &zero);
	if (!active)
		return no_policy;
	__u32 gen = active->gen & 1;
	__u32 fields = active->fields;

	/* From here on, no rule deciding means the default: pass. */
	struct search st;
	__builtin_memset(&st, 0, sizeof(st));
	/* The lookups of the fields in use; the rest is fw_search_init's, a
	 * stage, so these branches do not multiply its paths. */
	st.used = fields & ((1 << FW_FIELDS) - 1);
	st.ids[0] = fields & FW_FIELD_SRC ? fw_src_id(pkt, gen, fields) : FW_NO_ID;
	st.ids[1] = fields & FW_FIELD_DST ? fw_dst_id(pkt, gen, fields) : FW_NO_ID;
	st.ids[2] = fields & FW_FIELD_SPORT ? array_id(&sport, gen, FW_PORT_SLOTS, pkt->sport % FW_PORT_SLOTS)
					    : FW_NO_ID;
	st.ids[3] = fields & FW_FIELD_DPORT ? array_id(&dport, gen, FW_PORT_SLOTS, pkt->dport % FW_PORT_SLOTS)
					    : FW_NO_ID;
	st.ids[4] = fields & FW_FIELD_PROTO ? array_id(&proto, gen, FW_PROTO_SLOTS, pkt->proto) : FW_NO_ID;
	st.ids[5] = fields & FW_FIELD_TCPFLAGS
			    ? array_id(&tcpflags, gen, FW_BYTE_SLOTS, pkt->tcpflags % FW_BYTE_SLOTS)
			    : FW_NO_ID;
	st.ids[6] = fields & FW_FIELD_ICMPTYPE
			    ? array_id(&icmptype, gen, FW_BYTE_SLOTS, pkt->icmptype % FW_BYTE_SLOTS)
			    : FW_NO_ID;
	st.gen = gen;
	if (!fw_search_init(&st))
		return pass;
	st.would_slot = FW_NO_SLOT;
	st.result.stat = FW_STAT_PASS_DEFAULT;
	st.result.xdp = XDP_PASS;
	st.result.slot = FW_NO_SLOT;
	st.lim.bytes = bytes;
	st.lim.family = pkt->family;
	__builtin_memcpy(st.lim.src, pkt->addr_src, 16);
	/* The first round is called directly: it decides nearly every packet
	 * (the lowest word where every field has a rule holds the first match,
	 * unless that rule is a dry-run's or a rate limit that goes on), and
	 * bpf_loop's set-up and callback cost a call more. The rest run in
	 * bpf_loop: the verifier checks the callback once, not once a round. */
	if (!fw_search_round(&st))
		bpf_loop(FW_MAX_ITER - 1, search_step, &st, 0);
	/* Read straight through, no branch: see common.h. */
	return pack_outcome(st.result.stat, st.result.xdp, st.result.slot, st.would_stat, st.would_slot);
}

#endif /* XDPFW_CLASSIFY_H */
