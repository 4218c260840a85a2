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
	/* Loop bound of the classifier: one pass per summary bit, plus one per
	 * dry-run rule set that decides and lets evaluation continue. */
	FW_MAX_ITER = 64 + 64,
	FW_RULE_NAME_LEN = 128,
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
	/* IPv4 source (destination) addresses are looked up in the DIR-24
	 * table of this generation instead of the LPM trie. */
	FW_FIELD_SRC4_DIR24 = 1 << 8,
	FW_FIELD_DST4_DIR24 = 1 << 9,
	/* IPv6 source (destination) addresses are looked up in the /48 hash
	 * of this generation (H48 tables) instead of the LPM trie. */
	FW_FIELD_SRC6_H48 = 1 << 10,
	FW_FIELD_DST6_H48 = 1 << 11,
};

/* H48 entries (a __u64 per /48 that holds prefixes of /48 or longer): the
 * top two bits say what the rest is. Addresses whose /48 has no entry are
 * looked up in src6/dst6, which then hold only the prefixes shorter than
 * /48. */
enum fw_h48 {
	FW_H48_VEC = 0,   /* low 16 bits: the vector id of the whole /48 */
	FW_H48_ONE = 1,   /* one prefix of /49../64 inside: bits 0-15 the id
			   * outside it, 16-31 inside, 32-47 its bits 48..63,
			   * 48-52 its length minus 48 */
	FW_H48_BLOCK = 2, /* low 32 bits: index of a struct fw_v6_block */
	FW_H48_LPM = 3,   /* look the address up in the src6_long/dst6_long trie */
	FW_H48_SHIFT = 62,
	FW_V6_BLOCK_BOUNDS = 15,
};

/* DIR-24 entries (a __u32 per /24): the top two bits say what the rest is. */
enum fw_dir24 {
	FW_DIR24_VEC = 0,   /* low 16 bits: the vector id of the whole /24 */
	FW_DIR24_BLOCK = 1, /* low 30 bits: index of a struct fw_v4_block */
	FW_DIR24_T8 = 2,    /* low 30 bits: index of a struct fw_v4_t8 */
	FW_DIR24_SHIFT = 30,
	FW_DIR24_INDEX_MASK = (1 << 30) - 1,
	/* src4_t24/dst4_t24 inner maps: 1 << 24 entries, two per 8-byte value
	 * (array values are 8-byte aligned: a 4-byte value would cost 8). */
	FW_DIR24_PAIRS = 1 << 23,
	FW_V4_BLOCK_BOUNDS = 15,
};

/* What a rule (or a policy) does with a packet. */
enum fw_action {
	FW_ACTION_PASS = 0,
	FW_ACTION_DROP = 1,
};

/* fw_rule.flags */
enum fw_rule_flag {
	/* The rule belongs to a dry-run set: its decision is counted, then
	 * evaluation continues at the next rule set. */
	FW_RULE_DRY_RUN = 1 << 0,
	/* The implicit "drop the rest" rule that ends an allow-mode set. */
	FW_RULE_IMPLICIT = 1 << 1,
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
	FW_STAT_MAX = 8,
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

/* A /24 cut into up to 16 intervals: interval 0 starts at .0, interval i
 * (1 <= i <= n) at .bounds[i-1] (ascending, >= 1); unused bounds are 0;
 * ids[i] is interval i's vector id. 48 bytes: one cache line. */
struct fw_v4_block {
	__u8 n;
	__u8 bounds[FW_V4_BLOCK_BOUNDS];
	__u16 ids[FW_V4_BLOCK_BOUNDS + 1];
};

/* A /24 cut into more intervals: one vector id per last address byte. */
struct fw_v4_t8 {
	__u16 ids[256];
};

/* A /48 cut (by prefixes of /49 to /64) into up to 16 intervals of its
 * bits 48..63: as fw_v4_block with 16-bit bounds. 64 bytes. */
struct fw_v6_block {
	__u16 n;
	__u16 bounds[FW_V6_BLOCK_BOUNDS];
	__u16 ids[FW_V6_BLOCK_BOUNDS + 1];
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
