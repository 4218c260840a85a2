/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parse.h: the parser stage. Ethernet, up to two VLAN tags, IPv4 (with
 * options), IPv6 (with up to 8 extension headers), then TCP, UDP or ICMP.
 * Every read is behind a cursor check against data_end, and an L4 header
 * must lie inside the IP packet, not in the Ethernet padding after it.
 */
#ifndef XDPFW_PARSE_H
#define XDPFW_PARSE_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "common.h"

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

/* The IP header starts at l3 bytes into the frame: after Ethernet and at
 * most MAX_VLAN_TAGS tags. As stages, the IPv4 and IPv6 parsers are
 * verified once, not once per number of VLAN tags. */
#define L3_MAX_OFFSET (sizeof(struct ethhdr) + 4 * MAX_VLAN_TAGS)

FW_STAGE int fw_parse_ip4(struct xdp_md *ctx, struct packet *pkt, __u32 l3)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (!pkt || l3 > L3_MAX_OFFSET)
		return PARSE_ERROR;
	return parse_ipv4(data + l3, end, pkt);
}

FW_STAGE int fw_parse_ip6(struct xdp_md *ctx, struct packet *pkt, __u32 l3)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (!pkt || l3 > L3_MAX_OFFSET)
		return PARSE_ERROR;
	return parse_ipv6(data + l3, end, pkt);
}

static __always_inline int parse_frame(struct xdp_md *ctx, struct packet *pkt)
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
		return fw_parse_ip4(ctx, pkt, cur - data);
	if (h_proto == bpf_htons(ETH_P_IPV6))
		return fw_parse_ip6(ctx, pkt, cur - data);
	if (h_proto == bpf_htons(ETH_P_8021Q_) || h_proto == bpf_htons(ETH_P_8021AD_))
		return PARSE_ERROR; /* a third tag: deeper than we look */
	return PARSE_NON_IP;
}

/* fw_parse reads a frame into *pkt and returns enum parse_result. It counts
 * a non-first fragment itself: its caller must not branch on what it wrote
 * (common.h). */
FW_STAGE int fw_parse(struct xdp_md *ctx, struct packet *pkt)
{
	if (!pkt)
		return PARSE_ERROR;
	int res = parse_frame(ctx, pkt);
	if (res == PARSE_OK && pkt->fragment)
		count(&action_stats, FW_STAT_FRAGMENT, pkt->frame_len);
	return res;
}

#endif /* XDPFW_PARSE_H */
