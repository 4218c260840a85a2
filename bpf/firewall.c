//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xdpfw: the XDP packet filter.
 *
 * Follow a packet from xdpfw_filter below: fw_parse (parse.h) reads the
 * fields rules match on; fw_classify (classify.h) looks each field up in
 * its own table (lookup.h), ANDs the rule bit vectors they give and searches
 * for the first matching rule, applying rate limits (ratelimit.h) on the
 * way; the verdict is counted, and a drop may be sampled (sample.h). Maps
 * are declared in maps.h; their key and value layouts, shared with user
 * space, are in firewall.h.
 *
 * Each stage is a global function that the verifier checks once on its own
 * (see common.h): the verifier's cost is the sum of the stages, and it is a
 * tested budget (TestVerifierBudget).
 */
#include "common.h"
#include "parse.h"
#include "classify.h"
#include "sample.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Keeps the enums of firewall.h in BTF, so bpf2go exports them to Go. */
struct fw_btf_anchor {
	enum fw_limits limits;
	enum fw_range4 range4;
	enum fw_range6 range6;
	enum fw_field field;
	enum fw_action action;
	enum fw_rule_flag rule_flag;
	enum fw_stat stat;
	enum fw_limit_per limit_per;
	enum fw_sampling_flag sampling_flag;
	enum fw_sample_stat sample_stat;
	struct fw_sample sample;
	struct fw_sample_reader sample_reader;
	struct fw_source_sample source_sample;
	enum fw_sample_consumer sample_consumer;
	/* Inner map value types, which BTF would otherwise only forward-declare. */
	struct fw_v4_direct v4_direct;
	struct fw_v4_line v4_line;
	struct fw_page page;
	struct fw_active active;
};
const struct fw_btf_anchor *fw_btf_anchor __attribute__((unused));

static __always_inline __u32 policy_action(int which)
{
	__u32 zero = 0;
	struct fw_settings *s = bpf_map_lookup_elem(&settings, &zero);
	if (!s)
		return FW_ACTION_PASS;
	return which == PARSE_ERROR ? s->parse_error_action : s->non_ip_action;
}

SEC("xdp")
int xdpfw_filter(struct xdp_md *ctx)
{
	__u64 bytes = ctx->data_end - ctx->data;
	struct packet pkt;
	__u64 out;

	/* Zeroed whole, padding included: a stage reads all of it. */
	__builtin_memset(&pkt, 0, sizeof(pkt));
	pkt.frame_len = bytes;

	int res = fw_parse(ctx, &pkt);
	if (res == PARSE_OK) {
		out = fw_classify(&pkt, bytes);
	} else {
		__u32 stat = res == PARSE_ERROR ? FW_STAT_PARSE_ERROR : FW_STAT_NON_IP;
		__u32 xdp = policy_action(res) == FW_ACTION_DROP ? XDP_DROP : XDP_PASS;
		out = pack_outcome(stat, xdp, FW_NO_SLOT, 0, FW_NO_SLOT);
	}

	/* Every verdict leaves through here and is counted once. */
	count(&action_stats, OUTCOME_STAT(out), bytes);
	if (OUTCOME_XDP(out) == XDP_DROP) {
		if (sample_readers())
			fw_sample_drop(ctx, &pkt, OUTCOME_SLOT(out), OUTCOME_STAT(out), 0);
		return XDP_DROP;
	}
	if (OUTCOME_WOULD_SLOT(out) != FW_NO_SLOT && sample_readers())
		fw_sample_drop(ctx, &pkt, OUTCOME_WOULD_SLOT(out), OUTCOME_WOULD_STAT(out), 1);
	return XDP_PASS;
}
