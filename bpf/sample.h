/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sample.h: the drop-sampling stage. Dropped frames (and, on request,
 * dry-run would-drops) go to user space through ring buffers, one per
 * consumer, only while that consumer's reader holds its lease, 1 in N and
 * at most a capped number a second.
 */
#ifndef XDPFW_SAMPLE_H
#define XDPFW_SAMPLE_H

#include "common.h"

/* The benchmark loads the program with sampling compiled out, to show what
 * the one check every drop pays costs. */
volatile const __u32 fw_no_sampling = 0;

static __always_inline void count_sample(__u32 consumer, __u32 stat)
{
	__u32 key = consumer * FW_SAMPLE_STAT_MAX + stat;
	__u64 *c = bpf_map_lookup_elem(&sample_stats, &key);
	if (c)
		(*c)++;
}

/* Whether consumer takes a sample of this drop: its reader's rule filter,
 * 1 in N, and its per-second cap. */
static __always_inline int sample_gate(__u32 consumer, struct fw_sample_reader *rd, struct fw_sampling *cfg,
				       __u32 slot, __u64 coarse)
{
	if (rd->only_slot && rd->only_slot != slot + 1)
		return 0;
	if (coarse > rd->until_ns)
		return 0; /* the reader went away without saying so */
	if (cfg->every > 1 && bpf_get_prandom_u32() % cfg->every)
		return 0;
	struct fw_sample_win *win = bpf_map_lookup_elem(&sample_win, &consumer);
	if (!win)
		return 0;
	__u64 second = coarse / 1000000000ULL;
	__u64 cap = cfg->max_per_sec ? cfg->max_per_sec : FW_SAMPLE_DEFAULT_RATE;
	if (win->second != second) {
		/* A new second. CPUs racing here may each reset the count:
		 * at worst a few samples over the cap at a second's start. */
		win->second = second;
		win->count = 0;
	}
	/* Over the cap: a plain read, not the shared atomic add, so a flood
	 * of drops does not bounce the counter's cache line between CPUs. */
	if (win->count >= cap || __sync_fetch_and_add(&win->count, 1) >= cap) {
		count_sample(consumer, FW_SAMPLE_CAPPED);
		return 0;
	}
	return 1;
}

/* Waking a reader costs more than a sample: wake it once, when a quarter of
 * its ring is waiting; it polls for the rest (see DropReader.Read). */
static __always_inline __u64 wakeup(void *ring, __u64 ring_bytes, __u64 record)
{
	__u64 avail = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA); /* ours included */
	if (avail >= ring_bytes / 4 && avail < ring_bytes / 4 + 2 * record)
		return BPF_RB_FORCE_WAKEUP; /* this sample crossed the mark */
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void send_frame(struct xdp_md *ctx, __u32 frame_len, __u32 slot, __u32 stat, int would)
{
	struct fw_sample *s = bpf_ringbuf_reserve(&samples, sizeof(*s), 0);
	if (!s) {
		count_sample(FW_CONSUMER_FRAMES, FW_SAMPLE_LOST);
		return;
	}
	__u64 len = frame_len;
	s->ktime_ns = now_ns();
	s->ifindex = ctx->ingress_ifindex;
	s->slot = slot;
	s->frame_len = len;
	s->stat = stat;
	s->would_drop = would;
	if (len > FW_SAMPLE_BYTES)
		len = FW_SAMPLE_BYTES;
	s->cap_len = 0;
	if (len > 0) {
		/* The verifier must see 1 <= n <= FW_SAMPLE_BYTES on the very
		 * register it checks (6.1 does not carry the len > 0 test
		 * over): mask in asm, where clang cannot drop it. */
		__u64 n = len - 1;
		asm volatile("%0 &= 127" : "+r"(n));
		n += 1;
		if (bpf_xdp_load_bytes(ctx, 0, s->data, n) == 0)
			s->cap_len = n;
	}
	bpf_ringbuf_submit(s, wakeup(&samples, FW_SAMPLE_RING_BYTES, sizeof(*s)));
	count_sample(FW_CONSUMER_FRAMES, FW_SAMPLE_SENT);
}

static __always_inline void send_source(struct packet *pkt, __u32 slot, __u32 stat, int would, __u64 coarse)
{
	struct fw_source_sample *s = bpf_ringbuf_reserve(&src_samples, sizeof(*s), 0);
	if (!s) {
		count_sample(FW_CONSUMER_SOURCES, FW_SAMPLE_LOST);
		return;
	}
	s->ktime_ns = coarse;
	s->slot = slot;
	s->stat = stat;
	s->would_drop = would;
	s->family = pkt->family;
	s->pad = 0;
	__builtin_memcpy(s->src, pkt->addr_src, 16);
	bpf_ringbuf_submit(s, wakeup(&src_samples, FW_SOURCE_RING_BYTES, sizeof(*s)));
	count_sample(FW_CONSUMER_SOURCES, FW_SAMPLE_SENT);
}

/* Whether any consumer has a reader: the one check every drop pays, made
 * in the caller so that a drop with no reader (the usual case, and every
 * packet of a flood) does not pay for the stage's call either. */
static __always_inline int sample_readers(void)
{
	__u32 frames = FW_CONSUMER_FRAMES, sources = FW_CONSUMER_SOURCES;
	if (fw_no_sampling)
		return 0;
	struct fw_sample_reader *rf = bpf_map_lookup_elem(&sample_reader, &frames);
	struct fw_sample_reader *rs = bpf_map_lookup_elem(&sample_reader, &sources);
	return rf && rs && (rf->until_ns || rs->until_ns);
}

/* fw_sample_drop sends a dropped (or would-be dropped) frame to each consumer
 * that has a reader and whose sampling lets this one through. Returns 0. */
FW_STAGE int fw_sample_drop(struct xdp_md *ctx, struct packet *pkt, __u32 slot, __u32 stat, __u32 would)
{
	__u32 frames = FW_CONSUMER_FRAMES, sources = FW_CONSUMER_SOURCES, zero = 0;
	if (fw_no_sampling || !pkt)
		return 0;
	struct fw_sample_reader *rf = bpf_map_lookup_elem(&sample_reader, &frames);
	struct fw_sample_reader *rs = bpf_map_lookup_elem(&sample_reader, &sources);
	/* The caller checked (sample_readers); a reader may have gone since. */
	if (!rf || !rs || (!rf->until_ns && !rs->until_ns))
		return 0;
	struct fw_sampling *cfg = bpf_map_lookup_elem(&sampling, &zero);
	if (!cfg || (cfg->flags & FW_SAMPLING_OFF))
		return 0;
	if (would && !(cfg->flags & FW_SAMPLING_WOULD_DROP))
		return 0;
	__u64 coarse = now_coarse_ns();
	if (rf->until_ns && sample_gate(FW_CONSUMER_FRAMES, rf, cfg, slot, coarse))
		send_frame(ctx, pkt->frame_len, slot, stat, would);
	if (rs->until_ns && sample_gate(FW_CONSUMER_SOURCES, rs, cfg, slot, coarse))
		send_source(pkt, slot, stat, would, coarse);
	return 0;
}

#endif /* XDPFW_SAMPLE_H */
