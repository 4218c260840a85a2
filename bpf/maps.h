/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * maps.h: every map the program reads or writes. Key and value layouts are
 * in firewall.h, shared with user space; what each map is for is said here,
 * beside it. Policy maps (written by user space, one generation active) and
 * counter maps (written by the program) are kept apart.
 */
#ifndef XDPFW_MAPS_H
#define XDPFW_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "firewall.h"

/* src4, dst4: the IPv4 source (destination) prefixes of both generations
 * in LPM tries, for tables too small to need a range table (lookup.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FW_MAX_PREFIXES);
	__type(key, struct fw_lpm4_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} src4 SEC(".maps"), dst4 SEC(".maps");

/* src6, dst6: the IPv6 prefixes, as src4; with a range table in use, only
 * the prefixes shorter than /32. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FW_MAX_PREFIXES);
	__type(key, struct fw_lpm6_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} src6 SEC(".maps"), dst6 SEC(".maps");

/* src4_direct, dst4_direct and src4_lines, dst4_lines: the range tables
 * (firewall.h, enum fw_range4) of big IPv4 prefix sets, one inner map per
 * generation (slot = generation), created by user space only for a
 * generation whose field needs one. The direct table is 256 KB whatever the
 * set: it stays in cache and within the TLB's reach, where a 64 MB DIR-24
 * table missed both on every random source. */
struct r4direct_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_R4_DIRECT_VALUES);
	/* User space reads and writes the tables through mmap. A fixed size
	 * (no BPF_F_INNER_MAP) lets the verifier inline the lookup. */
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fw_v4_direct);
};

/* The lines (of both families' range tables) are sized to what a
 * generation needs. */
struct line_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fw_v4_line);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct r4direct_inner);
} src4_direct SEC(".maps"), dst4_direct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct line_inner);
} src4_lines SEC(".maps"), dst4_lines SEC(".maps");

/* The IPv6 range tables of big prefix sets (firewall.h, enum fw_range6),
 * one inner map per generation for each of: src6_h32 (dst6_h32), the hash
 * of dense /32s; src6_cut48, the hash of the /48s with entries of their
 * own; src6_direct, the direct blocks of the densest /32s; src6_lines, the
 * lines of every tree. Each is sized to what the generation holds (a hash
 * map allocates its buckets up front: a fixed 2M-entry map would cost every
 * interface 64 MB), created by user space for a generation whose field
 * needs a table. */
struct r6h32_inner {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);   /* the address's top 32 bits, host order */
	__type(value, __u32); /* a /32 entry */
	__uint(map_flags, BPF_F_NO_PREALLOC);
};

struct r6h48_inner {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);   /* the address's top 48 bits, in the top 48 */
	__type(value, __u64); /* an H48 entry: a /48 entry, or one interval */
	__uint(map_flags, BPF_F_NO_PREALLOC);
};

/* FW_R6_DIRECT_VALUES values (65,536 /48 entries, 256 KB) a block. */
struct r6direct_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fw_v4_direct);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct r6h32_inner);
} src6_h32 SEC(".maps"), dst6_h32 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct r6h48_inner);
} src6_cut48 SEC(".maps"), dst6_cut48 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct r6direct_inner);
} src6_direct SEC(".maps"), dst6_direct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct line_inner);
} src6_lines SEC(".maps"), dst6_lines SEC(".maps");

/* src6_long, dst6_long: the prefixes of the /48s that hold a prefix longer
 * than /64 (FW_R6_LPM), each /48 with its own /48 entry; keys as in src6. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FW_MAX_PREFIXES);
	__type(key, struct fw_lpm6_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} src6_long SEC(".maps"), dst6_long SEC(".maps");

/* docs[gen]: the rule sets generation gen was compiled from, as user space
 * wrote them (gzip'd JSON; page 0 starts with the __u64 length), so a tool
 * can change one set of what is applied without the original files. The
 * program never reads it. */
struct docs_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fw_page);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct docs_inner);
} docs SEC(".maps");

/* sport, dport: [gen * FW_PORT_SLOTS + port] -> vector id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * FW_PORT_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sport SEC(".maps"), dport SEC(".maps");

/* proto: [gen * FW_PROTO_SLOTS + IP protocol] -> vector id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * FW_PROTO_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} proto SEC(".maps");

/* tcpflags, icmptype: [gen * FW_BYTE_SLOTS + byte, or FW_BYTE_NONE] -> id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * FW_BYTE_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tcpflags SEC(".maps"), icmptype SEC(".maps");

/* bitvecs[gen * FW_MAX_VECS + id]: struct fw_bitvec, the interned rule
 * bit vectors every field table points at by id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * FW_MAX_VECS);
	__type(key, __u32);
	__type(value, struct fw_bitvec);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bitvecs SEC(".maps");

/* rules[gen * FW_MAX_RULES + i]: struct fw_rule, rule i of a generation. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * FW_MAX_RULES);
	__type(key, __u32);
	__type(value, struct fw_rule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rules SEC(".maps");

/* gen_info[gen]: struct fw_gen_info, what a generation holds (user space
 * reads it; the program reads fw_active instead). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct fw_gen_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gen_info SEC(".maps");

/* gen_sel[0] -> a one-entry array holding the active generation (struct
 * fw_active). User space flips generations by replacing the inner map; the
 * kernel returns from that update after an RCU grace period. */
struct gen_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fw_active);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct gen_inner);
} gen_sel SEC(".maps");

/* settings[0]: struct fw_settings, the parse-error and non-IP policies. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fw_settings);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} settings SEC(".maps");

/* rule_stats[slot]: per-CPU struct fw_counter of the packets each rule
 * matched, by the rule's counter slot (its stable identity). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, struct fw_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rule_stats SEC(".maps");

/* action_stats[enum fw_stat]: per-CPU struct fw_counter of how packets
 * ended. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_STAT_MAX);
	__type(key, __u32);
	__type(value, struct fw_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} action_stats SEC(".maps");

/* rule_names[slot]: struct fw_rule_name, for readers of the counters; the
 * program never reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, struct fw_rule_name);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rule_names SEC(".maps");

/* rule_limited[slot]: packets and bytes a rate-limit rule dropped (or, in a
 * dry-run set, would have dropped) because they were over its limit. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, struct fw_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rule_limited SEC(".maps");

/* rl_rule[slot]: the token bucket of a per-rule limit, shared by all CPUs
 * (updated with compare-and-swap), keyed like the rule's counters. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, struct fw_bucket);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rl_rule SEC(".maps");

/* rl_source: the token buckets of per-source limits, key struct
 * fw_source_key (the limit's id and the masked source), value struct
 * fw_bucket. Only sources the sketch (rl_sketch) finds near their limit get
 * one (ratelimit.h): a spoofed flood of new sources passes on the sketch and
 * creates none. An LRU, so that even a flood the sketch is too small for
 * evicts the least recently seen buckets instead of failing. Its size is
 * set by user space when it creates the map. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FW_DEFAULT_SOURCE_BUCKETS);
	__type(key, struct fw_source_key);
	__type(value, struct fw_bucket);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rl_source SEC(".maps");

/* rl_sketch[1 + i]: struct fw_sketch_line, line i of the count-min sketch
 * of leaky buckets that every per-source packet is counted in (a hash of
 * its fw_source_key picks the line, and one counter of each row in it);
 * rl_sketch[0].tat[0]: the hash seed, for user space. Shared by all CPUs
 * (compare-and-swap), so a source spread over CPUs is counted whole.
 * Mmapable: the kernel then puts the values on a page boundary, so each
 * 64-byte line is one cache line. Its size (lines + 1) is set by user space
 * when it creates the map, like rl_source's. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_DEFAULT_SKETCH_LINES + 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fw_sketch_line);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rl_sketch SEC(".maps");

/* rl_src_stats[slot]: per-CPU struct fw_rl_src_stat of a per-source limit
 * rule, by its counter slot: how many of its packets needed a bucket and how
 * many buckets it created. Counted on the bucket path only. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, struct fw_rl_src_stat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rl_src_stats SEC(".maps");

/* sampling[0]: struct fw_sampling. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fw_sampling);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sampling SEC(".maps");

/* sample_reader[consumer]: struct fw_sample_reader. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_CONSUMERS);
	__type(key, __u32);
	__type(value, struct fw_sample_reader);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sample_reader SEC(".maps");

/* sample_win[consumer]: struct fw_sample_win. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_CONSUMERS);
	__type(key, __u32);
	__type(value, struct fw_sample_win);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sample_win SEC(".maps");

/* sample_stats[consumer * FW_SAMPLE_STAT_MAX + enum fw_sample_stat]:
 * per-CPU counts. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_CONSUMERS * FW_SAMPLE_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sample_stats SEC(".maps");

/* samples: struct fw_sample records for user space (xdpfwctl local drops).
 * 256 KB hold about 1,500 samples: a second and a half at the default cap. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, FW_SAMPLE_RING_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} samples SEC(".maps");

/* src_samples: struct fw_source_sample records, for the agent's count of
 * the top dropped sources. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, FW_SOURCE_RING_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} src_samples SEC(".maps");

#endif /* XDPFW_MAPS_H */
