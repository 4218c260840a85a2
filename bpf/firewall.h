/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map layouts and constants shared by the XDP program (firewall.c) and user
 * space. bpf2go turns every type named here into a Go type (firewall_*.go),
 * so the two sides cannot drift apart.
 *
 * Generations. Every policy map holds two generations of the compiled rule
 * set side by side (the generation is part of each key). A packet reads the
 * active generation once, from gen_sel, and uses only that generation's
 * entries, so it sees the old rule set or the new one, never a mix. User
 * space writes the inactive generation, then flips gen_sel; that update
 * returns only after an RCU grace period, when no program still runs with the
 * old generation, so the old one can be rewritten next time.
 */
#ifndef XDPFW_FIREWALL_H
#define XDPFW_FIREWALL_H

#include <linux/types.h>

/* Limits and fixed indexes. An enum so that bpf2go exports them to Go. */
enum fw_limits {
	/* Rules of one host (all rule sets merged, implicit drops included). */
	FW_MAX_RULES = 4096,
	/* 64-bit words of a rule bit vector: FW_MAX_RULES / 64. */
	FW_VEC_WORDS = 64,
	/* Interned bit vectors per generation. */
	FW_MAX_VECS = 16384,
	/* Vector id 0 of each generation is reserved: every rule. */
	FW_VEC_ALL = 0,
	/* Counter slots: stable rule identities, twice the rules so a slot
	 * freed by one apply is not reused before the next. */
	FW_COUNTER_SLOTS = 8192,
	/* Port index used for packets that carry no ports (not TCP/UDP, or a
	 * non-first fragment): only rules without port matches are there. */
	FW_PORT_NONE = 65536,
	FW_PORT_SLOTS = 65537,
	/* Same for the TCP flags byte and the ICMP type. */
	FW_BYTE_NONE = 256,
	FW_BYTE_SLOTS = 257,
	FW_PROTO_SLOTS = 256,
	/* Prefix entries per address family and direction, both generations. */
	FW_MAX_PREFIXES = 2 * 1048576 + 2 * 65536,
	/* Loop bound of the classifier: a round either clears a summary bit
	 * or moves the first rule in play past the rule that matched (a
	 * dry-run decision, a rate limit passing to the next rule), so the
	 * search ends within this many rounds and never falls off the end. */
	FW_MAX_ITER = FW_VEC_WORDS + FW_MAX_RULES,
	FW_RULE_NAME_LEN = 128,
	/* Bytes of a dropped frame a drop sample carries. */
	FW_SAMPLE_BYTES = 128,
	/* Size of the samples ring buffer: about 1,500 samples. */
	FW_SAMPLE_RING_BYTES = 256 * 1024,
	/* Size of the src_samples ring buffer: about 1,600 samples. */
	FW_SOURCE_RING_BYTES = 64 * 1024,
	/* Samples per second per interface when none is configured. */
	FW_SAMPLE_DEFAULT_RATE = 1000,
	/* Source buckets (rl_source entries) when none is configured. */
	FW_DEFAULT_SOURCE_BUCKETS = 65536,
	/* Lines of the per-source sketch (rl_sketch) when none is configured:
	 * 256 KiB, 8 counters a line (see DefaultSourceSketchLines). */
	FW_DEFAULT_SKETCH_LINES = 4096,
	/* Counters of a sketch line (one cache line of __u64), and the rows
	 * of the count-min sketch: a source takes one counter of each row,
	 * row i choosing among counters 4i to 4i + 3 of its line. */
	FW_SKETCH_WAYS = 8,
	FW_SKETCH_ROWS = 2,
	FW_SKETCH_CHOICES = 4,
	/* fw_sample.slot of a drop no rule decided (parse error, non-IP). */
	FW_NO_SLOT = 0xFFFFFFFF,
};

/* Match fields, as bits of fw_gen_info.fields: a field no rule uses is not
 * looked up at all. */
enum fw_field {
	FW_FIELD_SRC = 1 << 0,
	FW_FIELD_DST = 1 << 1,
	FW_FIELD_SPORT = 1 << 2,
	FW_FIELD_DPORT = 1 << 3,
	FW_FIELD_PROTO = 1 << 4,
	FW_FIELD_TCPFLAGS = 1 << 5,
	FW_FIELD_ICMPTYPE = 1 << 6,
	/* IPv4 source (destination) addresses are looked up in the range
	 * table of this generation instead of the LPM trie. */
	FW_FIELD_SRC4_RANGE = 1 << 8,
	FW_FIELD_DST4_RANGE = 1 << 9,
	/* IPv6 source (destination) addresses are looked up in the range
	 * table of this generation (enum fw_range6) instead of the LPM trie. */
	FW_FIELD_SRC6_RANGE = 1 << 10,
	FW_FIELD_DST6_RANGE = 1 << 11,
	/* That range table has dense /32s (H32 entries). Without them the
	 * lookup skips H32: a miss there cost 20 to 45 ns a packet (measured)
	 * on tables of scattered /48s, which have none. */
	FW_FIELD_SRC6_DENSE = 1 << 12,
	FW_FIELD_DST6_DENSE = 1 << 13,
};

/* The IPv4 range table of a big prefix set (lookup.h): the address space
 * cut into the intervals a longest-prefix match gives, each with its vector
 * id. A direct table, indexed by an address's top 16 bits, says for each /16
 * either its one vector id or where the B-tree of its intervals starts: a
 * tree of 64-byte lines (struct fw_v4_line), 16 children or intervals to a
 * line, whose leaves hold the intervals. Direct entries are __u32s, 16 to a
 * value (struct fw_v4_direct: array values are 8-byte aligned, so a lone
 * __u32 would cost 8). */
enum fw_range4 {
	FW_R4_DIRECT_BITS = 16,
	FW_R4_DIRECT_VALUES = 1 << (FW_R4_DIRECT_BITS - 4),
	/* Entry: bits 29-31 the depth of the /16's tree (0: no tree, low 16
	 * bits the vector id of the whole /16), bits 0-28 its root line. */
	FW_R4_DEPTH_SHIFT = 29,
	FW_R4_LINE_MASK = (1 << 29) - 1,
	/* 16^4 intervals: every address of a /16. */
	FW_R4_MAX_DEPTH = 4,
	FW_R4_LINE_BOUNDS = 15,
};

/* The IPv6 range table of a big prefix set (lookup.h). Prefixes up to /64
 * cut the top 64 bits of the address space into intervals, as IPv4
 * prefixes cut the IPv4 space; a /48 that holds a prefix longer than /64 is
 * left to an LPM trie (src6_long) of such /48s. The intervals are found
 * per /32, then per /48, in the lines of the IPv4 table (struct fw_v4_line,
 * over 16 bits of the address at each level):
 *
 * H32 (src6_h32): a hash of the "dense" /32s, those holding a prefix of /32
 * to /47 or more than a few /48s with prefixes. Key: the address's top 32
 * bits (__u32, host order). Value: a __u32 /32 entry, bits 29-31 the kind:
 *   FW_R6_VEC (0)      bits 0-15: the vector id of the whole /32;
 *   1 to 4             the depth of a B-tree of lines over address bits
 *                      32..47 (the /48s), root line in bits 0-28; a leaf id
 *                      is a vector id, or FW_R6_CUT: the address's /48 has
 *                      an H48 entry;
 *   FW_R6_DIRECT (7)   bits 0-28: the /32's block in src6_direct: the /48
 *                      entries of its 65,536 /48s, FW_R6_DIRECT_VALUES
 *                      struct fw_v4_direct values from block * that.
 * A /48 entry (__u32; a direct entry, or an H48 entry's low half), bits
 * 29-31 the kind:
 *   FW_R6_VEC (0)      bits 0-15: the vector id of the whole /48;
 *   1 to 4             the depth of a B-tree of lines over address bits
 *                      48..63, root line in bits 0-28, leaves vector ids;
 *   FW_R6_LPM (7)      look the address up in src6_long.
 * H48 (src6_cut48): a hash of the cut /48s (intervals start inside them, or
 * LPM) of tree /32s, and of the /48s of "sparse" /32s (not in H32) whose
 * vector differs from their /32's. Key: the address's top 48 bits in the
 * top 48 bits of a __u64 (host order). Value: a __u64: bit 63 clear, a /48
 * entry in bits 0-31 (the rest 0); bit 63 set (FW_R6_ONE_BIT), one interval
 * of bits 48..63 with its own vector: bits 0-13 the vector id outside it,
 * 14-27 inside, 28-43 its first value, 44-59 its last (a feed's /48 mostly
 * holds one prefix: no line to read, or to keep).
 * An address whose /32 is not in H32 nor its /48 in H48 is looked up in
 * src6, which then holds only the prefixes shorter than /32.
 */
enum fw_range6 {
	FW_R6_KIND_SHIFT = 29,
	FW_R6_INDEX_MASK = (1 << 29) - 1,
	FW_R6_VEC = 0,
	FW_R6_DIRECT = 7,
	FW_R6_LPM = 7,
	FW_R6_CUT = 0x8000,
	FW_R6_ONE_BIT = 63,
	FW_R6_DIRECT_VALUES = 4096,
};

/* What a rule (or a policy) does with a packet. */
enum fw_action {
	FW_ACTION_PASS = 0,
	FW_ACTION_DROP = 1,
	/* Pass within the rule's limit (see struct fw_limit), drop beyond. */
	FW_ACTION_RATE_LIMIT = 2,
};

/* fw_rule.flags */
enum fw_rule_flag {
	/* The rule belongs to a dry-run set: its decision is counted, then
	 * evaluation continues at the next rule set. */
	FW_RULE_DRY_RUN = 1 << 0,
	/* The implicit "drop the rest" rule that ends an allow-mode set. */
	FW_RULE_IMPLICIT = 1 << 1,
	/* A rate-limit rule whose packets within the limit go on to the next
	 * rule instead of passing. */
	FW_RULE_LIMIT_NEXT = 1 << 2,
};

/* fw_limit.per: whose packets share a token bucket. */
enum fw_limit_per {
	FW_PER_RULE = 0,   /* one bucket for the rule, shared by all CPUs */
	FW_PER_SOURCE = 1, /* one bucket per source prefix, in rl_source */
};

/* Indexes of action_stats: how each packet ended, plus would-drops and
 * fragments, which are counted beside the verdict. */
enum fw_stat {
	FW_STAT_PASS_RULE = 0,    /* a pass rule decided */
	FW_STAT_DROP_RULE = 1,    /* a drop rule (or an allow set's end) decided */
	FW_STAT_PASS_DEFAULT = 2, /* no rule decided: past the last set */
	FW_STAT_PARSE_ERROR = 3,  /* unreadable frame, handled by policy */
	FW_STAT_NON_IP = 4,       /* ARP, LLDP, ...: handled by policy */
	FW_STAT_WOULD_DROP = 5,   /* a dry-run set would have dropped it */
	FW_STAT_FRAGMENT = 6,     /* a non-first fragment (matched without ports) */
	FW_STAT_NO_POLICY = 7,    /* no generation active yet: passed */
	FW_STAT_RATE_LIMITED = 8, /* a rate-limit rule's limit dropped it */
	FW_STAT_MAX = 9,
};

/* src4, dst4: LPM trie key. data = generation byte then the address, so
 * prefixlen = 8 + the prefix length. Value: __u32 bit vector id. */
struct fw_lpm4_key {
	__u32 prefixlen;
	__u8 gen;
	__u8 addr[4];
	__u8 pad[3];
};

/* src6, dst6: as fw_lpm4_key with a 16-byte address. */
struct fw_lpm6_key {
	__u32 prefixlen;
	__u8 gen;
	__u8 addr[16];
	__u8 pad[3];
};

/* bitvecs[gen * FW_MAX_VECS + id]: bit i of words[] is rule i of that
 * generation; bit w of summary is set when words[w] is non-zero, so the AND
 * of several vectors visits only words where every vector has a rule. */
struct fw_bitvec {
	__u64 summary;
	__u64 words[FW_VEC_WORDS];
};

/* A rate limit: a token bucket per packets and one per bytes, kept as
 * GCRA theoretical arrival times (struct fw_bucket). Time is counted in
 * ticks of 1/16 ns, so a 64-bit clock lasts 36 years and the cost of a
 * packet at 100 Mpps is still exact. A packet conforms when its bucket's
 * arrival time is at most tol ticks ahead of now; it then moves the
 * arrival time cost ticks on. tol = (burst - 1) * cost lets burst packets
 * through back to back. */
struct fw_limit {
	/* Bucket identity: a hash of the rule's identity and its limit, so
	 * a swap that keeps the rule keeps its buckets and a changed limit
	 * starts afresh. */
	__u64 id;
	__u64 pkt_cost;  /* ticks per packet; 0: no packet rate */
	__u64 pkt_tol;   /* ticks */
	__u64 byte_cost; /* ticks per byte, 16.16 fixed point; 0: no byte rate */
	__u64 byte_tol;  /* ticks */
	__u8 per;        /* enum fw_limit_per */
	__u8 prefix4;    /* FW_PER_SOURCE: sources aggregated to this IPv4 prefix */
	__u8 prefix6;    /* ... and to this IPv6 prefix */
	__u8 pad[5];
};

/* rules[gen * FW_MAX_RULES + i]: rule i of a generation, in first-match
 * order. */
struct fw_rule {
	/* Counter slot in rule_stats: the rule's stable identity. */
	__u32 slot;
	/* First rule index after this rule's rule set (where a dry-run
	 * decision continues). */
	__u16 next;
	__u8 action; /* enum fw_action */
	__u8 flags;  /* enum fw_rule_flag */
	/* FW_ACTION_RATE_LIMIT only; zero otherwise. */
	struct fw_limit limit;
};

/* rl_rule[slot] (FW_PER_RULE, indexed by the rule's counter slot) and
 * rl_source values: a bucket's state, written by the program only. A bucket
 * whose id differs from its rule's limit id belongs to an old limit and
 * starts afresh (full burst). */
struct fw_bucket {
	__u64 id;
	__u64 pkt_tat;  /* ticks */
	__u64 byte_tat; /* ticks */
};

/* rl_source key: the limit's id and the source address masked to the
 * limit's prefix (IPv4 in the first 4 bytes, the rest zero). */
struct fw_source_key {
	__u64 id;
	__u8 addr[16];
};

/* rl_sketch[1 + i]: line i of the per-source sketch (see maps.h and
 * ratelimit.h). Each counter is a leaky bucket kept as a theoretical arrival
 * time in ticks (as fw_bucket's), shared by every source and limit that
 * hashes to it; only ever raised, with compare-and-swap. 64 bytes: one cache
 * line, so a source's counters cost one memory read. rl_sketch[0] holds the
 * hash seed in tat[0], written by user space when it creates the map (the
 * program takes the seed from fw_sketch_seed and never reads entry 0). */
struct fw_sketch_line {
	__u64 tat[FW_SKETCH_WAYS];
};

/* rl_src_stats[slot]: per-CPU counts of a per-source limit's sketch, by
 * the rule's counter slot. The rest of the rule's packets (rule_stats) were
 * passed on the sketch alone, with no bucket. */
struct fw_rl_src_stat {
	__u64 checked; /* packets that took the bucket path (rl_source) */
	__u64 created; /* buckets created: sources admitted as heavy */
};

/* gen_info[gen]: what a generation holds. */
struct fw_gen_info {
	__u32 fields; /* enum fw_field bits in use */
	__u32 rules;  /* number of rules */
	__u64 seq;    /* apply sequence number that wrote it */
	__u64 applied_unix_ns;
	__u8 digest[32]; /* sha256 of the compiled input */
};

/* The value of gen_sel's inner map: the active generation and what it
 * needs from gen_info on every packet, so a packet reads one value, not two
 * (each is a cache miss under a flood of random sources). */
struct fw_active {
	__u32 gen;    /* 0 or 1 */
	__u32 fields; /* gen_info[gen].fields */
};

/* settings[0]: policies outside the rule sets. */
struct fw_settings {
	__u32 parse_error_action; /* enum fw_action, default pass */
	__u32 non_ip_action;      /* enum fw_action, default pass */
};

/* 16 entries of a range table's direct table: /16s 16 * i to 16 * i + 15
 * of the IPv4 table; /48s 16 * i to 16 * i + 15 of a direct block of the
 * IPv6 table. */
struct fw_v4_direct {
	__u32 e[16];
};

/* One line of a range table's B-tree, 64 bytes: one cache line. A tree
 * covers 16 bits of the address: an IPv4 /16's low 16 bits, an IPv6 /32's
 * bits 32..47 or a /48's bits 48..63. A line cuts what it covers (from the
 * bound its parent chose it by) at up to 15 ascending bounds into up to 16
 * parts: part i (0 <= i <= n) starts at bounds[i - 1], part 0 where the
 * line's range starts. Unused bounds are 0 (a bound is never 0: part 0
 * takes the start of the tree's range). In a leaf, ids[i] is the vector
 * id of part i (or, in a tree over an IPv6 /32, FW_R6_CUT); in an inner
 * line, part i is the line base + i, base = ids[0] | ids[1] << 16. */
struct fw_v4_line {
	__u16 n;
	__u16 bounds[FW_R4_LINE_BOUNDS];
	__u16 ids[FW_R4_LINE_BOUNDS + 1];
};

/* sampling[0]: drop sampling of this interface, written by user space (the
 * agent or an operator). Zero values mean the defaults, so a new map samples
 * every drop, at most FW_SAMPLE_DEFAULT_RATE a second, once a reader comes. */
struct fw_sampling {
	__u32 every;       /* sample 1 drop in every; 0: 1 */
	__u32 max_per_sec; /* at most this many samples a second; 0: default */
	__u32 flags;       /* enum fw_sampling_flag */
	__u32 pad;
};

/* Who samples go to. Each consumer has its own ring buffer, reader lease
 * (sample_reader) and per-second cap (sample_win), so an operator's
 * `xdpfwctl local drops` and the agent's count of dropped sources never take
 * samples from each other. */
enum fw_sample_consumer {
	FW_CONSUMER_FRAMES = 0,  /* samples: the frames' first bytes */
	FW_CONSUMER_SOURCES = 1, /* src_samples: rule and source address */
	FW_CONSUMERS = 2,
};

/* sample_reader[consumer]: who reads that consumer's ring buffer, written
 * by that reader only (a map apart from sampling, so neither writer can
 * undo the other's change). The program sends no samples unless a reader
 * is there, so sampling costs a drop one array read while no one reads. */
struct fw_sample_reader {
	/* Reading until this CLOCK_MONOTONIC time; the reader renews it
	 * every second and clears it when it stops. 0: no reader. */
	__u64 until_ns;
	__u32 pid;       /* the reader's process, for "another reader" errors */
	__u32 only_slot; /* counter slot + 1 of the only rule to sample; 0: all */
};

enum fw_sampling_flag {
	FW_SAMPLING_OFF = 1 << 0,        /* send no samples, reader or not */
	FW_SAMPLING_WOULD_DROP = 1 << 1, /* sample dry-run would-drops too */
};

/* sample_win[consumer]: the per-second cap's window, written by the
 * program. */
struct fw_sample_win {
	__u64 second; /* CLOCK_MONOTONIC second of the window */
	__u64 count;  /* samples sent in it */
};

/* sample_stats[consumer * FW_SAMPLE_STAT_MAX + stat]: per-CPU __u64 counts. */
enum fw_sample_stat {
	FW_SAMPLE_SENT = 0,    /* written to the ring buffer */
	FW_SAMPLE_CAPPED = 1,  /* skipped: over the per-second cap */
	FW_SAMPLE_LOST = 2,    /* skipped: the ring buffer was full */
	FW_SAMPLE_STAT_MAX = 3,
};

/* A record of the samples ring buffer. */
struct fw_sample {
	__u64 ktime_ns;   /* CLOCK_MONOTONIC */
	__u32 ifindex;
	__u32 slot;       /* the deciding rule's counter slot, or FW_NO_SLOT */
	__u32 frame_len;  /* the frame's length on the wire */
	__u16 cap_len;    /* bytes of it in data */
	__u8 stat;        /* enum fw_stat: why it was (or would be) dropped */
	__u8 would_drop;  /* 1: a dry-run set's would-drop; the frame passed */
	__u8 data[FW_SAMPLE_BYTES];
};

/* A record of the src_samples ring buffer: enough to count drops by rule
 * and source. */
struct fw_source_sample {
	__u64 ktime_ns;  /* CLOCK_MONOTONIC */
	__u32 slot;      /* as in fw_sample */
	__u8 stat;
	__u8 would_drop;
	__u8 family;     /* 4 or 6; 0 for a frame that was not parsed */
	__u8 pad;
	__u8 src[16];    /* IPv4 in the first 4 bytes */
};

/* A page of the docs maps (see firewall.c). */
struct fw_page {
	__u8 data[4096];
};

/* rule_stats[slot] and action_stats[stat]: per-CPU, summed in user space. */
struct fw_counter {
	__u64 packets;
	__u64 bytes;
};

/* rule_names[slot]: "ruleset/rule-id" of a counter slot, NUL-terminated;
 * empty when the slot is free. Written by user space only. */
struct fw_rule_name {
	char name[FW_RULE_NAME_LEN];
};

#endif /* XDPFW_FIREWALL_H */
