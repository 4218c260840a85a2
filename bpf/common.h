/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * common.h: what every stage uses: the parsed packet, verdicts, counters
 * and the clock.
 *
 * Stages are global functions (__noinline, not static): the verifier checks
 * each one once, on its own, with arguments it knows nothing about, instead
 * of once for every path that reaches it. That keeps the cost of loading the
 * program the sum of its stages, not their product (DESIGN §4, the budget
 * is tested by TestVerifierBudget). The rules for such a function, as the
 * oldest kernel we support (6.1) enforces them:
 *   - at most 5 arguments: scalars, the context, or pointers to structs of
 *     scalars only (no pointers inside), which may be NULL and are checked;
 *   - it returns a scalar (int), never void;
 *   - the memory it is given is fully initialised by the caller (no holes:
 *     structs passed to a stage have explicit padding and are zeroed);
 *   - what it decides, it returns. A caller must never branch on what a
 *     stage wrote into the caller's stack: 6.1's verifier does not know a
 *     stage writes there, believes the values from before the call, and
 *     rewrites a branch on them that it thinks is never taken into a jump
 *     (dead-code elimination). Reading such values straight through, into
 *     a map or another stage, is safe: the instructions stay.
 */
#ifndef XDPFW_COMMON_H
#define XDPFW_COMMON_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "firewall.h"
#include "maps.h"

/* A stage: see above. */
#define FW_STAGE __attribute__((noinline))

#define FW_NO_ID 0xFFFFFFFF

/* The fields of a packet that rules match on. Ports, flags and the ICMP
 * type hold their FW_*_NONE index when the packet has none. */
struct packet {
	__u32 sport;
	__u32 dport;
	__u32 tcpflags;
	__u32 icmptype;
	__u32 frame_len; /* the frame's length on the wire */
	__u8 family;     /* 4 or 6 */
	__u8 proto;
	__u8 fragment; /* non-first fragment */
	__u8 pad;
	__u8 addr_src[16];
	__u8 addr_dst[16];
};

/* The outcome of classification. */
struct verdict {
	__u32 stat; /* enum fw_stat */
	__u32 xdp;  /* XDP_PASS or XDP_DROP */
	__u32 slot; /* counter slot of the deciding rule, or FW_NO_SLOT */
};

/* An outcome of classification packed into a stage's return value (see
 * above): the verdict's stat, XDP action and rule slot, and the first dry-run
 * drop's slot and stat. Slots are below FW_COUNTER_SLOTS; FW_NO_SLOT packs
 * as 0xFFFF. Packed without branches (a branch on a value the verifier
 * believes known would be rewritten). */
static __always_inline __u64 pack_outcome(__u32 stat, __u32 xdp, __u32 slot, __u32 would_stat, __u32 would_slot)
{
	return (__u64)(slot & 0xFFFF) | (__u64)(would_slot & 0xFFFF) << 16 | (__u64)(stat & 0xFF) << 32 |
	       (__u64)(would_stat & 0xFF) << 40 | (__u64)(xdp & 0xFF) << 48;
}

static __always_inline __u32 unpack_slot(__u64 packed, int shift)
{
	__u32 s = (packed >> shift) & 0xFFFF;
	return s == 0xFFFF ? FW_NO_SLOT : s;
}

#define OUTCOME_SLOT(o) unpack_slot(o, 0)
#define OUTCOME_WOULD_SLOT(o) unpack_slot(o, 16)
#define OUTCOME_STAT(o) (((o) >> 32) & 0xFF)
#define OUTCOME_WOULD_STAT(o) (((o) >> 40) & 0xFF)
#define OUTCOME_XDP(o) (((o) >> 48) & 0xFF)

static __always_inline void count(void *map, __u32 idx, __u64 bytes)
{
	struct fw_counter *c = bpf_map_lookup_elem(map, &idx);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

/* Tests load the program with fw_test_clock set and drive fw_clock_ns, to
 * check the token buckets' arithmetic at chosen times. In production the
 * constant is 0 and the verifier removes the branch. */
volatile const __u32 fw_test_clock = 0;
volatile __u64 fw_clock_ns = 0;

static __always_inline __u64 now_ns(void)
{
	if (fw_test_clock)
		return fw_clock_ns;
	return bpf_ktime_get_ns();
}

/* The same clock at the resolution of a tick, for what needs only that
 * (sampling's lease and per-second cap): a fraction of the cost. */
static __always_inline __u64 now_coarse_ns(void)
{
	if (fw_test_clock)
		return fw_clock_ns;
	return bpf_ktime_get_coarse_ns();
}

#endif /* XDPFW_COMMON_H */
