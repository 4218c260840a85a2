//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xdpfw: the XDP packet filter.
 *
 * A packet is parsed into the fields rules match on, each field is looked up
 * in its own table to get a bit vector of the rules that field allows, the
 * vectors are ANDed, and the lowest set bit is the first matching rule (the
 * Linear Bit Vector Search of bpf-iptables). Every table is keyed by the
 * generation read once at the start, so rule-set swaps are atomic. Map
 * layouts are documented in firewall.h.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "firewall.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Keeps the enums of firewall.h in BTF, so bpf2go exports them to Go. */
struct fw_btf_anchor {
	enum fw_limits limits;
	enum fw_dir24 dir24;
	enum fw_h48 h48;
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
	struct fw_v4_block v4_block;
	struct fw_v4_t8 v4_t8;
	struct fw_page page;
	struct fw_v6_block v6_block;
	struct fw_active active;
};
const struct fw_btf_anchor *fw_btf_anchor __attribute__((unused));

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define MAX_VLAN_TAGS 2
#define MAX_IPV6_EXT_HEADERS 8

#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

/* IPv6 extension headers the parser walks through. */
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_DEST 60

/* ---- maps (layouts in firewall.h) ---- */

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FW_MAX_PREFIXES);
	__type(key, struct fw_lpm4_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} src4 SEC(".maps"), dst4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FW_MAX_PREFIXES);
	__type(key, struct fw_lpm6_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} src6 SEC(".maps"), dst6 SEC(".maps");

/* src4_t24, dst4_t24 (and _blk, _t8): the DIR-24 tables of big IPv4
 * prefix sets, one inner map per generation (slot = generation), created by
 * user space only for a generation whose field needs one. Entry of /24 i:
 * t24[i / 2] >> (32 * (i % 2)), see enum fw_dir24. */
struct t24_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_DIR24_PAIRS);
	/* User space writes and reads these tables through mmap: a 64 MB
	 * table is one memcpy, not eight million syscalls. */
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
};

/* Blocks and t8 tables are sized to what a generation needs. */
struct blk_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fw_v4_block);
};

struct t8_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fw_v4_t8);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct t24_inner);
} src4_t24 SEC(".maps"), dst4_t24 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct blk_inner);
} src4_blk SEC(".maps"), dst4_blk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct t8_inner);
} src4_t8 SEC(".maps"), dst4_t8 SEC(".maps");

/* src6_h48, dst6_h48: the /48 hash of big IPv6 prefix sets, one inner map
 * per generation sized to what it holds (a hash map allocates its buckets
 * up front: a fixed 2M-entry map would cost every interface 64 MB). Key:
 * the top 48 bits of the address in the top 48 bits of a __u64 (host
 * order). Value: a __u64 entry, see enum fw_h48. */
struct h48_inner {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct h48_inner);
} src6_h48 SEC(".maps"), dst6_h48 SEC(".maps");

/* src6_long, dst6_long: the prefixes of the /48s that a block cannot
 * describe (longer than /64, or too many), each /48 with its own /48 entry;
 * keys as in src6. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FW_MAX_PREFIXES);
	__type(key, struct fw_lpm6_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} src6_long SEC(".maps"), dst6_long SEC(".maps");

struct v6blk_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fw_v6_block);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct v6blk_inner);
} src6_blk SEC(".maps"), dst6_blk SEC(".maps");

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

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * FW_MAX_VECS);
	__type(key, __u32);
	__type(value, struct fw_bitvec);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bitvecs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * FW_MAX_RULES);
	__type(key, __u32);
	__type(value, struct fw_rule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rules SEC(".maps");

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

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fw_settings);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, struct fw_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rule_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_STAT_MAX);
	__type(key, __u32);
	__type(value, struct fw_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} action_stats SEC(".maps");

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

/* rl_source: the token buckets of per-source limits. An LRU: a flood of
 * spoofed sources evicts the least recently seen buckets instead of
 * failing. Its size is set by user space when it creates the map. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FW_DEFAULT_SOURCE_BUCKETS);
	__type(key, struct fw_source_key);
	__type(value, struct fw_bucket);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rl_source SEC(".maps");

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

/* ---- clock ---- */

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

/* The benchmark loads the program with sampling compiled out, to show what
 * the one check every drop pays costs. */
volatile const __u32 fw_no_sampling = 0;

/* ---- parsing ---- */

/* The fields of a packet that rules match on. Ports, flags and the ICMP
 * type hold their FW_*_NONE index when the packet has none. */
struct packet {
	__u32 sport;
	__u32 dport;
	__u32 tcpflags;
	__u32 icmptype;
	__u8 family; /* 4 or 6 */
	__u8 proto;
	__u8 fragment; /* non-first fragment */
	__u8 addr_src[16];
	__u8 addr_dst[16];
};

enum parse_result {
	PARSE_OK,
	PARSE_NON_IP,
	PARSE_ERROR,
};

/* A cursor check: true when [p, p+len) lies inside the frame. */
#define fits(p, len, end) ((void *)(p) + (len) <= (void *)(end))

/* avail is how many bytes the IP header says follow l4: an L4 header must
 * lie inside the IP packet, not in the Ethernet padding after it. */
static __always_inline int parse_l4(void *l4, void *end, __u32 avail, struct packet *pkt)
{
	pkt->sport = FW_PORT_NONE;
	pkt->dport = FW_PORT_NONE;
	pkt->tcpflags = FW_BYTE_NONE;
	pkt->icmptype = FW_BYTE_NONE;
	if (pkt->fragment)
		return PARSE_OK;

	switch (pkt->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = l4;
		if (!fits(tcp, sizeof(*tcp), end) || avail < sizeof(*tcp))
			return PARSE_ERROR;
		if (tcp->doff < 5)
			return PARSE_ERROR;
		pkt->sport = bpf_ntohs(tcp->source);
		pkt->dport = bpf_ntohs(tcp->dest);
		/* Byte 13 of the header: CWR ECE URG ACK PSH RST SYN FIN. */
		pkt->tcpflags = ((__u8 *)tcp)[13];
		return PARSE_OK;
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = l4;
		if (!fits(udp, sizeof(*udp), end) || avail < sizeof(*udp))
			return PARSE_ERROR;
		pkt->sport = bpf_ntohs(udp->source);
		pkt->dport = bpf_ntohs(udp->dest);
		return PARSE_OK;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		/* type, code, checksum: a shorter ICMP header is malformed. */
		__u8 *icmp = l4;
		if (!fits(icmp, 4, end) || avail < 4)
			return PARSE_ERROR;
		pkt->icmptype = icmp[0];
		return PARSE_OK;
	}
	default:
		/* Other protocols are matched on addresses and protocol. */
		return PARSE_OK;
	}
}

static __always_inline int parse_ipv4(void *l3, void *end, struct packet *pkt)
{
	struct iphdr *ip = l3;
	if (!fits(ip, sizeof(*ip), end))
		return PARSE_ERROR;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_ERROR;
	__u32 hdr_len = ip->ihl * 4;
	if (!fits(l3, hdr_len, end))
		return PARSE_ERROR;
	__u32 tot_len = bpf_ntohs(ip->tot_len);
	if (tot_len < hdr_len)
		return PARSE_ERROR;

	pkt->family = 4;
	pkt->proto = ip->protocol;
	pkt->fragment = (bpf_ntohs(ip->frag_off) & IP_OFFSET) != 0;
	__builtin_memcpy(pkt->addr_src, &ip->saddr, 4);
	__builtin_memcpy(pkt->addr_dst, &ip->daddr, 4);
	return parse_l4(l3 + hdr_len, end, tot_len - hdr_len, pkt);
}

/* An IPv6 extension header's first two bytes: next header and length. */
struct ext_hdr {
	__u8 nexthdr;
	__u8 hdrlen;
};

/* The fragment extension header (RFC 8200 section 4.5). */
struct frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset in 8-byte units << 3, then 2 bits, then M */
	__be32 id;
};

static __always_inline int parse_ipv6(void *l3, void *end, struct packet *pkt)
{
	struct ipv6hdr *ip6 = l3;
	if (!fits(ip6, sizeof(*ip6), end))
		return PARSE_ERROR;
	if (ip6->version != 6)
		return PARSE_ERROR;

	pkt->family = 6;
	pkt->fragment = 0;
	__builtin_memcpy(pkt->addr_src, &ip6->saddr, 16);
	__builtin_memcpy(pkt->addr_dst, &ip6->daddr, 16);

	__u8 next = ip6->nexthdr;
	void *cur = l3 + sizeof(*ip6);
	int i;

#pragma clang loop unroll(full)
	for (i = 0; i < MAX_IPV6_EXT_HEADERS; i++) {
		struct ext_hdr *ext = cur;
		switch (next) {
		case NEXTHDR_HOP:
		case NEXTHDR_ROUTING:
		case NEXTHDR_DEST:
			if (!fits(ext, sizeof(*ext), end))
				return PARSE_ERROR;
			next = ext->nexthdr;
			cur += (ext->hdrlen + 1) * 8;
			break;
		case NEXTHDR_AUTH:
			if (!fits(ext, sizeof(*ext), end))
				return PARSE_ERROR;
			next = ext->nexthdr;
			cur += (ext->hdrlen + 2) * 4;
			break;
		case NEXTHDR_FRAGMENT: {
			struct frag_hdr *frag = cur;
			if (!fits(frag, sizeof(*frag), end))
				return PARSE_ERROR;
			next = frag->nexthdr;
			if (bpf_ntohs(frag->frag_off) & 0xFFF8)
				pkt->fragment = 1;
			cur += sizeof(*frag);
			break;
		}
		default:
			goto done;
		}
		if (pkt->fragment)
			goto done;
	}
	/* More extension headers than we walk: refuse to guess the protocol. */
	switch (next) {
	case NEXTHDR_HOP:
	case NEXTHDR_ROUTING:
	case NEXTHDR_DEST:
	case NEXTHDR_AUTH:
	case NEXTHDR_FRAGMENT:
		return PARSE_ERROR;
	}
done:
	pkt->proto = next;
	/* cur may lie past the end after a header length that overruns the
	 * frame; parse_l4 checks before it reads. A payload length of 0 is a
	 * jumbogram: no limit from the header. */
	__u32 payload = bpf_ntohs(ip6->payload_len);
	__u32 used = cur - (l3 + sizeof(*ip6));
	__u32 avail = 0xFFFFFFFF;
	if (payload)
		avail = payload > used ? payload - used : 0;
	return parse_l4(cur, end, avail, pkt);
}

static __always_inline int parse(struct xdp_md *ctx, struct packet *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if (!fits(eth, sizeof(*eth), end))
		return PARSE_ERROR;

	__u16 h_proto = eth->h_proto;
	void *cur = data + sizeof(*eth);
	int i;

#pragma clang loop unroll(full)
	for (i = 0; i < MAX_VLAN_TAGS; i++) {
		if (h_proto != bpf_htons(ETH_P_8021Q_) && h_proto != bpf_htons(ETH_P_8021AD_))
			break;
		/* TCI then the encapsulated EtherType. */
		if (!fits(cur, 4, end))
			return PARSE_ERROR;
		h_proto = ((__be16 *)cur)[1];
		cur += 4;
	}

	if (h_proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(cur, end, pkt);
	if (h_proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(cur, end, pkt);
	if (h_proto == bpf_htons(ETH_P_8021Q_) || h_proto == bpf_htons(ETH_P_8021AD_))
		return PARSE_ERROR; /* a third tag: deeper than we look */
	return PARSE_NON_IP;
}

/* ---- classification ---- */

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

static __always_inline struct fw_bitvec *vec(__u32 gen, __u32 *id)
{
	if (!id)
		return 0;
	__u32 key = gen * FW_MAX_VECS + (*id % FW_MAX_VECS);
	return bpf_map_lookup_elem(&bitvecs, &key);
}

static __always_inline __u32 *lookup_array(void *map, __u32 gen, __u32 slots, __u32 idx)
{
	__u32 key = gen * slots + idx;
	return bpf_map_lookup_elem(map, &key);
}

#define FW_NO_ID 0xFFFFFFFF

/* The interval of a block an address falls in: how many of its n bounds lie
 * at or below v. Bounds are >= 1 and unused ones are 0, so "0 < bound <= v"
 * is "bound - 1 < v" in unsigned arithmetic: the sign of a 64-bit
 * difference, without a branch (the asm keeps clang from turning it back
 * into n branches: 2^n verifier paths). */
#define bounds_at_or_below(bounds, n, v)                                      \
	({                                                                    \
		__u64 __i = 0;                                                \
		int __x;                                                      \
		_Pragma("clang loop unroll(full)")                            \
		for (__x = 0; __x < (n); __x++) {                             \
			__u64 __d = (__u64)(__u32)((bounds)[__x] - 1) - (v); \
			asm volatile("" : "+r"(__d));                         \
			__i += __d >> 63;                                     \
		}                                                             \
		__i;                                                          \
	})

/* The vector id of an IPv4 address (host order) in a DIR-24 table: one
 * read for most addresses, two where its /24 is cut into intervals. */
static __always_inline __u32 dir24_lookup(void *t24s, void *blks, void *t8s, __u32 gen, __u32 a)
{
	void *t24 = bpf_map_lookup_elem(t24s, &gen);
	if (!t24)
		return FW_NO_ID;
	__u32 idx = a >> 8;
	__u32 key = idx >> 1;
	__u64 *pair = bpf_map_lookup_elem(t24, &key);
	if (!pair)
		return FW_NO_ID;
	__u32 e = (idx & 1) ? (__u32)(*pair >> 32) : (__u32)*pair;
	__u32 low = a & 0xFF;
	__u32 index = e & FW_DIR24_INDEX_MASK;

	switch (e >> FW_DIR24_SHIFT) {
	case FW_DIR24_VEC:
		return e & 0xFFFF;
	case FW_DIR24_BLOCK: {
		void *blk = bpf_map_lookup_elem(blks, &gen);
		if (!blk)
			return FW_NO_ID;
		struct fw_v4_block *b = bpf_map_lookup_elem(blk, &index);
		if (!b)
			return FW_NO_ID;
		return b->ids[bounds_at_or_below(b->bounds, FW_V4_BLOCK_BOUNDS, low) & FW_V4_BLOCK_BOUNDS];
	}
	case FW_DIR24_T8: {
		void *t8 = bpf_map_lookup_elem(t8s, &gen);
		if (!t8)
			return FW_NO_ID;
		struct fw_v4_t8 *t = bpf_map_lookup_elem(t8, &index);
		if (!t)
			return FW_NO_ID;
		return t->ids[low];
	}
	}
	return FW_NO_ID;
}

/* Global functions: the verifier checks each once, on its own, instead of
 * once per path through the classifier. */
__noinline __u32 fw_dir24_src(__u32 gen, __u32 addr)
{
	return dir24_lookup(&src4_t24, &src4_blk, &src4_t8, gen, addr);
}

__noinline __u32 fw_dir24_dst(__u32 gen, __u32 addr)
{
	return dir24_lookup(&dst4_t24, &dst4_blk, &dst4_t8, gen, addr);
}

/* The vector id of an IPv6 address (first and last 8 bytes, host order) in
 * the H48 tables; short is the LPM trie of the prefixes shorter than /48. */
static __always_inline __u32 h48_lookup(void *h48, void *blks, void *longs, void *shorts, __u32 gen,
					__u64 hi, __u64 lo)
{
	__u64 key = hi & ~0xFFFFULL;
	void *hash = bpf_map_lookup_elem(h48, &gen);
	__u64 *e = hash ? bpf_map_lookup_elem(hash, &key) : 0;
	struct fw_lpm6_key k = {.prefixlen = 8 + 128, .gen = gen};
	__u64 be_hi = __builtin_bswap64(hi), be_lo = __builtin_bswap64(lo);
	__builtin_memcpy(k.addr, &be_hi, 8);
	__builtin_memcpy(k.addr + 8, &be_lo, 8);
	if (!e) {
		__u32 *id = bpf_map_lookup_elem(shorts, &k);
		return id ? *id : FW_NO_ID;
	}
	__u64 v = *e;
	__u32 sub = hi & 0xFFFF; /* address bits 48..63 */
	switch (v >> FW_H48_SHIFT) {
	case FW_H48_VEC:
		return v & 0xFFFF;
	case FW_H48_ONE: {
		__u32 len = (v >> 48) & 0x1F;
		__u32 mask = (0xFFFFU << ((16 - len) & 15)) & 0xFFFF;
		if (len >= 16)
			mask = 0xFFFF;
		return (sub & mask) == ((v >> 32) & 0xFFFF) ? (v >> 16) & 0xFFFF : v & 0xFFFF;
	}
	case FW_H48_BLOCK: {
		__u32 index = v & 0xFFFFFFFF;
		void *blk = bpf_map_lookup_elem(blks, &gen);
		if (!blk)
			return FW_NO_ID;
		struct fw_v6_block *b = bpf_map_lookup_elem(blk, &index);
		if (!b)
			return FW_NO_ID;
		return b->ids[bounds_at_or_below(b->bounds, FW_V6_BLOCK_BOUNDS, sub) & FW_V6_BLOCK_BOUNDS];
	}
	default: {
		__u32 *id = bpf_map_lookup_elem(longs, &k);
		return id ? *id : FW_NO_ID;
	}
	}
}

__noinline __u32 fw_h48_src(__u32 gen, __u64 hi, __u64 lo)
{
	return h48_lookup(&src6_h48, &src6_blk, &src6_long, &src6, gen, hi, lo);
}

__noinline __u32 fw_h48_dst(__u32 gen, __u64 hi, __u64 lo)
{
	return h48_lookup(&dst6_h48, &dst6_blk, &dst6_long, &dst6, gen, hi, lo);
}

static __always_inline __u32 *lookup_addr(struct packet *pkt, __u32 gen, __u32 fields, int dst, __u32 *id)
{
	if (pkt->family == 4) {
		if (fields & (dst ? FW_FIELD_DST4_DIR24 : FW_FIELD_SRC4_DIR24)) {
			const __u8 *b = dst ? pkt->addr_dst : pkt->addr_src;
			__u32 a = (__u32)b[0] << 24 | (__u32)b[1] << 16 | (__u32)b[2] << 8 | b[3];
			*id = dst ? fw_dir24_dst(gen, a) : fw_dir24_src(gen, a);
			return *id == FW_NO_ID ? 0 : id;
		}
		struct fw_lpm4_key k = {.prefixlen = 8 + 32, .gen = gen};
		__builtin_memcpy(k.addr, dst ? pkt->addr_dst : pkt->addr_src, 4);
		return bpf_map_lookup_elem(dst ? (void *)&dst4 : (void *)&src4, &k);
	}
	if (fields & (dst ? FW_FIELD_DST6_H48 : FW_FIELD_SRC6_H48)) {
		const __u8 *b = dst ? pkt->addr_dst : pkt->addr_src;
		__u64 hi, lo;
		__builtin_memcpy(&hi, b, 8);
		__builtin_memcpy(&lo, b + 8, 8);
		hi = __builtin_bswap64(hi);
		lo = __builtin_bswap64(lo);
		*id = dst ? fw_h48_dst(gen, hi, lo) : fw_h48_src(gen, hi, lo);
		return *id == FW_NO_ID ? 0 : id;
	}
	struct fw_lpm6_key k = {.prefixlen = 8 + 128, .gen = gen};
	__builtin_memcpy(k.addr, dst ? pkt->addr_dst : pkt->addr_src, 16);
	return bpf_map_lookup_elem(dst ? (void *)&dst6 : (void *)&src6, &k);
}

/* The outcome of classification. */
struct verdict {
	int stat;   /* enum fw_stat */
	int xdp;    /* XDP_PASS or XDP_DROP */
	__u32 slot; /* counter slot of the deciding rule, or FW_NO_SLOT */
};

static __always_inline void count(void *map, __u32 idx, __u64 bytes)
{
	struct fw_counter *c = bpf_map_lookup_elem(map, &idx);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

#define FW_FIELDS 7

/* State of the first-match search over the ANDed field vectors. */
struct search {
	struct fw_bitvec *v[FW_FIELDS];
	__u64 summary; /* AND of the summaries, minus words already searched */
	__u32 start;   /* first rule index still in play */
	__u32 gen;
	__u64 bytes;
	__u64 now;        /* ticks, read at the first rate limit; 0 until then */
	__u32 would_slot; /* slot of the first dry-run drop, or FW_NO_SLOT */
	__u32 would_stat; /* its enum fw_stat: drop-rule or rate-limited */
	__u8 family;      /* the packet's source address, for per-source limits */
	__u8 src[16];
	struct verdict result;
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

/* Whether a packet is within a rate-limit rule's limit (and, if so, takes
 * its tokens). */
static __always_inline int within_limit(struct search *st, struct fw_rule *r)
{
	struct fw_limit *l = &r->limit;
	struct fw_bucket *b;

	if (!st->now)
		st->now = now_ns() << 4;
	if (l->per == FW_PER_SOURCE) {
		struct fw_source_key k = {.id = l->id};
		__u32 n = st->family == 4 ? l->prefix4 : l->prefix6;
		__u32 i;
		/* Copy the prefix's whole bytes, then mask the partial one. */
#pragma clang loop unroll(full)
		for (i = 0; i < 16; i++) {
			__u8 m = 0;
			if (8 * i + 8 <= n)
				m = 0xFF;
			else if (8 * i < n)
				m = (__u8)(0xFF00 >> (n - 8 * i));
			k.addr[i] = st->src[i] & m;
		}
		b = bpf_map_lookup_elem(&rl_source, &k);
		if (!b) {
			/* A new source (under a spoofed flood, every packet):
			 * its bucket is full, so the packet conforms; insert
			 * the bucket with this packet's tokens taken, one map
			 * operation. If another CPU added it first, use that. */
			struct fw_bucket fresh = {.id = l->id};
			if (l->pkt_cost)
				fresh.pkt_tat = st->now + l->pkt_cost;
			if (l->byte_cost)
				fresh.byte_tat = st->now + ((st->bytes * l->byte_cost) >> 16);
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
	if (l->pkt_cost && !gcra(&b->pkt_tat, st->now, l->pkt_cost, l->pkt_tol))
		return 0;
	if (l->byte_cost && !gcra(&b->byte_tat, st->now, (st->bytes * l->byte_cost) >> 16, l->byte_tol))
		return 0;
	return 1;
}

/* A dry-run set decided: note a would-drop, go on at the next set. Returns
 * 1 when the search is over. */
static __always_inline long dry_run_next(struct search *st, struct fw_rule *r, int drop_stat)
{
	if (drop_stat >= 0) {
		count(&action_stats, FW_STAT_WOULD_DROP, st->bytes);
		if (st->would_slot == FW_NO_SLOT) {
			st->would_slot = r->slot;
			st->would_stat = drop_stat;
		}
	}
	st->start = r->next;
	if (st->start >= FW_MAX_RULES)
		return 1;
	st->summary &= ~0ULL << (st->start >> 6);
	return 0;
}

/* One round: take the lowest word where every field has a rule, AND it;
 * the lowest bit is the first rule that matches every field. A rule of a
 * dry-run set is counted and the search goes on at the next set. Returns 1
 * when the search is over. */
static long search_step(__u64 round, void *ctx)
{
	struct search *st = ctx;
	if (!st->summary)
		return 1;
	__u32 w = ctz64(st->summary);
	__u64 bits = ~0ULL;
	int f;
#pragma clang loop unroll(full)
	for (f = 0; f < FW_FIELDS; f++) {
		struct fw_bitvec *v = st->v[f];
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
	__u32 rkey = st->gen * FW_MAX_RULES + index;
	struct fw_rule *r = bpf_map_lookup_elem(&rules, &rkey);
	if (!r)
		return 1;
	__u32 slot = r->slot % FW_COUNTER_SLOTS;
	count(&rule_stats, slot, st->bytes);
	int dry = r->flags & FW_RULE_DRY_RUN;

	if (r->action == FW_ACTION_RATE_LIMIT) {
		if (!within_limit(st, r)) {
			count(&rule_limited, slot, st->bytes);
			if (dry)
				return dry_run_next(st, r, FW_STAT_RATE_LIMITED);
			st->result = (struct verdict){FW_STAT_RATE_LIMITED, XDP_DROP, r->slot};
			return 1;
		}
		if (r->flags & FW_RULE_LIMIT_NEXT) {
			/* Within the limit, and told to go on: the next rule. */
			st->start = index + 1;
			if (st->start >= FW_MAX_RULES)
				return 1;
			st->summary &= ~0ULL << (st->start >> 6);
			return 0;
		}
		if (dry)
			return dry_run_next(st, r, -1);
		st->result = (struct verdict){FW_STAT_PASS_RULE, XDP_PASS, r->slot};
		return 1;
	}
	if (dry)
		return dry_run_next(st, r, r->action == FW_ACTION_DROP ? FW_STAT_DROP_RULE : -1);
	if (r->action == FW_ACTION_DROP)
		st->result = (struct verdict){FW_STAT_DROP_RULE, XDP_DROP, r->slot};
	else
		st->result = (struct verdict){FW_STAT_PASS_RULE, XDP_PASS, r->slot};
	return 1;
}

/* classify decides a packet's verdict; *would is set to the search's
 * first dry-run drop (slot FW_NO_SLOT when none). */
static __always_inline struct verdict classify(struct packet *pkt, __u64 bytes, struct verdict *would)
{
	struct verdict pass = {FW_STAT_PASS_DEFAULT, XDP_PASS, FW_NO_SLOT};
	__u32 zero = 0;

	would->slot = FW_NO_SLOT;
	void *inner = bpf_map_lookup_elem(&gen_sel, &zero);
	if (!inner)
		return (struct verdict){FW_STAT_NO_POLICY, XDP_PASS, FW_NO_SLOT};
	struct fw_active *active = bpf_map_lookup_elem(inner, &zero);
	if (!active)
		return (struct verdict){FW_STAT_NO_POLICY, XDP_PASS, FW_NO_SLOT};
	__u32 gen = active->gen & 1;
	__u32 fields = active->fields;

	/* One vector per used field. A missing entry means no rule can match
	 * (the compiler always writes a catch-all entry, so this only happens
	 * with a damaged map). */
	struct fw_bitvec *v_src = 0, *v_dst = 0, *v_sport = 0, *v_dport = 0;
	struct fw_bitvec *v_proto = 0, *v_flags = 0, *v_icmp = 0;
	__u32 src_id, dst_id;
	if (fields & FW_FIELD_SRC) {
		v_src = vec(gen, lookup_addr(pkt, gen, fields, 0, &src_id));
		if (!v_src)
			return pass;
	}
	if (fields & FW_FIELD_DST) {
		v_dst = vec(gen, lookup_addr(pkt, gen, fields, 1, &dst_id));
		if (!v_dst)
			return pass;
	}
	if (fields & FW_FIELD_SPORT) {
		v_sport = vec(gen, lookup_array(&sport, gen, FW_PORT_SLOTS, pkt->sport % FW_PORT_SLOTS));
		if (!v_sport)
			return pass;
	}
	if (fields & FW_FIELD_DPORT) {
		v_dport = vec(gen, lookup_array(&dport, gen, FW_PORT_SLOTS, pkt->dport % FW_PORT_SLOTS));
		if (!v_dport)
			return pass;
	}
	if (fields & FW_FIELD_PROTO) {
		v_proto = vec(gen, lookup_array(&proto, gen, FW_PROTO_SLOTS, pkt->proto));
		if (!v_proto)
			return pass;
	}
	if (fields & FW_FIELD_TCPFLAGS) {
		v_flags = vec(gen, lookup_array(&tcpflags, gen, FW_BYTE_SLOTS, pkt->tcpflags % FW_BYTE_SLOTS));
		if (!v_flags)
			return pass;
	}
	if (fields & FW_FIELD_ICMPTYPE) {
		v_icmp = vec(gen, lookup_array(&icmptype, gen, FW_BYTE_SLOTS, pkt->icmptype % FW_BYTE_SLOTS));
		if (!v_icmp)
			return pass;
	}
	/* A field no rule uses matches every rule: it takes the vector of a
	 * used field (a vector ANDed with itself is unchanged), or, when no
	 * field is used, the all-rules vector. Either way no extra read of a
	 * cold cache line. */
	struct fw_bitvec *base = v_src;
	if (!base)
		base = v_dst;
	if (!base)
		base = v_sport;
	if (!base)
		base = v_dport;
	if (!base)
		base = v_proto;
	if (!base)
		base = v_flags;
	if (!base)
		base = v_icmp;
	if (!base) {
		__u32 all = FW_VEC_ALL;
		base = vec(gen, &all);
		if (!base)
			return pass;
	}
	if (!v_src)
		v_src = base;
	if (!v_dst)
		v_dst = base;
	if (!v_sport)
		v_sport = base;
	if (!v_dport)
		v_dport = base;
	if (!v_proto)
		v_proto = base;
	if (!v_flags)
		v_flags = base;
	if (!v_icmp)
		v_icmp = base;

	struct search st = {
		.v = {v_src, v_dst, v_sport, v_dport, v_proto, v_flags, v_icmp},
		.summary = v_src->summary & v_dst->summary & v_sport->summary & v_dport->summary &
			   v_proto->summary & v_flags->summary & v_icmp->summary,
		.gen = gen,
		.bytes = bytes,
		.would_slot = FW_NO_SLOT,
		.family = pkt->family,
		.result = pass,
	};
	__builtin_memcpy(st.src, pkt->addr_src, 16);
	/* bpf_loop: the verifier checks the step once, not once per round. */
	bpf_loop(FW_MAX_ITER, search_step, &st, 0);
	would->slot = st.would_slot;
	would->stat = st.would_stat;
	return st.result;
}

static __always_inline __u32 policy_action(int which)
{
	__u32 zero = 0;
	struct fw_settings *s = bpf_map_lookup_elem(&settings, &zero);
	if (!s)
		return FW_ACTION_PASS;
	return which == PARSE_ERROR ? s->parse_error_action : s->non_ip_action;
}

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

static __always_inline void send_frame(struct xdp_md *ctx, __u32 slot, __u32 stat, int would)
{
	struct fw_sample *s = bpf_ringbuf_reserve(&samples, sizeof(*s), 0);
	if (!s) {
		count_sample(FW_CONSUMER_FRAMES, FW_SAMPLE_LOST);
		return;
	}
	__u64 len = ctx->data_end - ctx->data;
	s->ktime_ns = now_ns();
	s->ifindex = ctx->ingress_ifindex;
	s->slot = slot;
	s->frame_len = len;
	s->stat = stat;
	s->would_drop = would;
	/* The verifier needs len's bounds on the register it sees: mask in
	 * asm (clang would drop a mask it can prove idle), then clamp. */
	asm volatile("%0 &= 0xffff" : "+r"(len));
	if (len > FW_SAMPLE_BYTES)
		len = FW_SAMPLE_BYTES;
	s->cap_len = len;
	if (len == 0 || bpf_xdp_load_bytes(ctx, 0, s->data, len) < 0)
		s->cap_len = 0;
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

/* sample sends a dropped (or would-be dropped) frame to each consumer that
 * has a reader and whose sampling lets this one through. */
static __noinline void sample(struct xdp_md *ctx, struct packet *pkt, __u32 slot, __u32 stat, int would)
{
	__u32 frames = FW_CONSUMER_FRAMES, sources = FW_CONSUMER_SOURCES, zero = 0;
	if (fw_no_sampling)
		return;
	struct fw_sample_reader *rf = bpf_map_lookup_elem(&sample_reader, &frames);
	struct fw_sample_reader *rs = bpf_map_lookup_elem(&sample_reader, &sources);
	/* The one check every drop pays: is anyone reading? */
	if (!rf || !rs || (!rf->until_ns && !rs->until_ns))
		return;
	struct fw_sampling *cfg = bpf_map_lookup_elem(&sampling, &zero);
	if (!cfg || (cfg->flags & FW_SAMPLING_OFF))
		return;
	if (would && !(cfg->flags & FW_SAMPLING_WOULD_DROP))
		return;
	__u64 coarse = now_coarse_ns();
	if (rf->until_ns && sample_gate(FW_CONSUMER_FRAMES, rf, cfg, slot, coarse))
		send_frame(ctx, slot, stat, would);
	if (rs->until_ns && sample_gate(FW_CONSUMER_SOURCES, rs, cfg, slot, coarse))
		send_source(pkt, slot, stat, would, coarse);
}

SEC("xdp")
int xdpfw_filter(struct xdp_md *ctx)
{
	__u64 bytes = ctx->data_end - ctx->data;
	struct packet pkt = {};
	struct verdict v, would = {0, 0, FW_NO_SLOT};

	int res = parse(ctx, &pkt);
	if (res != PARSE_OK) {
		v.stat = res == PARSE_ERROR ? FW_STAT_PARSE_ERROR : FW_STAT_NON_IP;
		v.xdp = policy_action(res) == FW_ACTION_DROP ? XDP_DROP : XDP_PASS;
		v.slot = FW_NO_SLOT;
		goto out;
	}
	if (pkt.fragment)
		count(&action_stats, FW_STAT_FRAGMENT, bytes);
	v = classify(&pkt, bytes, &would);

out:
	/* Every verdict leaves through here and is counted once. */
	count(&action_stats, v.stat, bytes);
	if (v.xdp == XDP_DROP)
		sample(ctx, &pkt, v.slot, v.stat, 0);
	else if (would.slot != FW_NO_SLOT)
		sample(ctx, &pkt, would.slot, would.stat, 1);
	return v.xdp;
}
