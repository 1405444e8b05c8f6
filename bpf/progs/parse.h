/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Header parsing. Every read goes through weir_load(): straight from the
 * packet when the bytes are in the linear area (always so for headers a
 * pod's stack built), through bpf_skb_load_bytes otherwise. Either way a
 * read past the end fails cleanly, so no read is ever verifier-unsafe and a
 * truncated packet is a parse result (PARSE_MALFORMED), never an accident.
 *
 * Lengths are checked against the IP header's own length fields: a packet
 * whose headers claim more than it carries, or an L4 header that does not
 * fit in the IP payload, is malformed. A first fragment too short to carry
 * its ports is malformed too (the classic tiny-fragment bypass).
 */
#ifndef WEIR_PARSE_H
#define WEIR_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif
#define WEIR_NEXTHDR_HOP 0
#define WEIR_NEXTHDR_ROUTING 43
#define WEIR_NEXTHDR_FRAGMENT 44
#define WEIR_NEXTHDR_AUTH 51
#define WEIR_NEXTHDR_NONE 59
#define WEIR_NEXTHDR_DEST 60
/* More extension headers than this is treated as malformed: no legitimate
 * pod traffic carries that many, and the walk must be bounded. */
#define WEIR_MAX_EXTHDRS 6

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IP = 1,
	PARSE_MALFORMED = 2,
	PARSE_VLAN = 3,
};

enum frag_kind {
	FRAG_NONE = 0,
	FRAG_FIRST = 1, /* offset 0, more fragments: carries the ports */
	FRAG_LATER = 2, /* offset > 0: no L4 header */
};

/* ICMPv6 neighbour discovery (RFC 4861) */
#define ND_RS 133
#define ND_RA 134
#define ND_NS 135
#define ND_NA 136
#define ND_REDIRECT 137

/* ICMPv6 multicast listener discovery (RFC 2710, RFC 3810) */
#define MLD_QUERY 130
#define MLD_REPORT 131
#define MLD_DONE 132
#define MLD2_REPORT 143

/* ICMP handling classes (both families) */
enum icmp_kind {
	ICMP_K_NONE = 0,
	ICMP_K_ECHO_REQ = 1,
	ICMP_K_ECHO_REPLY = 2,
	ICMP_K_ERROR = 3, /* quotes the packet that caused it */
	ICMP_K_ND = 4,    /* IPv6 neighbour discovery: RS, RA, NS, NA (redirects are OTHER) */
	ICMP_K_OTHER = 5,
	ICMP_K_MLD = 6,   /* IPv6 multicast listener discovery: query, reports, done */
};

struct pkt {
	__u8 saddr[16]; /* IPv4-mapped for IPv4 */
	__u8 daddr[16];
	__be16 sport; /* ICMP echo request: identifier; reply: 0 */
	__be16 dport; /* ICMP echo request: 0; reply: identifier */
	__u8 proto;
	__u8 family; /* 4 or 6 */
	__u8 tcp_flags;
	__u8 frag; /* enum frag_kind */
	__u8 icmp; /* enum icmp_kind */
	__u8 icmp_type; /* ICMP/ICMPv6 type when icmp != ICMP_K_NONE */
	__u8 source_audit; /* to_pod: the local source's egress is an audit would-be drop */
	__u8 pad;
	__u32 l4_off;  /* offset of the L4 header from the start of the frame */
	__u32 l3_end;  /* end of the IP packet as its header says */
};

/* Highest offset read directly; deeper reads (long IPv6 extension chains)
 * take the helper. Bounds the offset for the verifier. */
#define WEIR_DIRECT_MAX_OFF 1024

/*
 * Copy len bytes at off into to. The helper call costs about as much as
 * the rest of an established packet's path, so the common case reads the
 * packet directly; both ways give the same bytes or the same failure.
 */
/*
 * For what is copied on the hot path: weir_load()'s buffers, struct pkt
 * and conntrack keys. clang copies between memory it cannot prove aligned
 * one byte at a time (a load and a store per byte: a 40-byte IPv6 header
 * is 80 instructions, and every copy is inlined), and between 8-byte
 * aligned memory in words. weir_load() tells clang the packet is 8-byte
 * aligned too. It is not: the kernel lets tc programs load packet bytes at
 * any alignment on the architectures that load unaligned words
 * efficiently (x86-64, arm64), and elsewhere the verifier refuses the
 * program when it is loaded, so no packet is ever read wrong. The stack
 * is always accessed aligned.
 */
#define WEIR_WORDS __attribute__((aligned(8)))

static __always_inline int weir_load(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	/* Keeps clang from computing &skb->data_end once and spilling it: the
	 * verifier only accepts ctx reads at a constant offset from ctx. */
	barrier_var(skb);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (off <= WEIR_DIRECT_MAX_OFF && data + off + len <= end) {
		__builtin_memcpy(to, __builtin_assume_aligned(data + off, 8), len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

static __always_inline void map_v4(__u8 *dst, __be32 a)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &a, 4);
}

struct weir_iphdr {
	__u8 vihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__be16 check;
	__be32 saddr;
	__be32 daddr;
};

struct weir_ip6hdr {
	__be32 vtcfl;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

/*
 * L4 header: ports, TCP flags, ICMP type. Only called when the packet
 * carries its L4 header (not a later fragment). `need` is how many bytes
 * the protocol's fixed header has; it must fit within the IP payload.
 */
static __always_inline int parse_l4(struct __sk_buff *skb, struct pkt *p, int v6)
{
	__u8 b[14] WEIR_WORDS;
	__u32 off = p->l4_off;

	switch (p->proto) {
	case IPPROTO_TCP:
		if (off + 20 > p->l3_end || weir_load(skb, off, b, 14))
			return PARSE_MALFORMED;
		if ((b[12] >> 4) < 5 || off + (__u32)(b[12] >> 4) * 4 > p->l3_end)
			return PARSE_MALFORMED;
		__builtin_memcpy(&p->sport, b, 2);
		__builtin_memcpy(&p->dport, b + 2, 2);
		p->tcp_flags = b[13];
		return PARSE_OK;
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		/* UDP has 8 bytes, SCTP's common header 12 */
		if (off + (p->proto == IPPROTO_UDP ? 8 : 12) > p->l3_end ||
		    weir_load(skb, off, b, 4))
			return PARSE_MALFORMED;
		__builtin_memcpy(&p->sport, b, 2);
		__builtin_memcpy(&p->dport, b + 2, 2);
		return PARSE_OK;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		if ((p->proto == IPPROTO_ICMP) == v6)
			break; /* ICMP over IPv6 or ICMPv6 over IPv4: no special meaning */
		if (off + 8 > p->l3_end || weir_load(skb, off, b, 8))
			return PARSE_MALFORMED;
		p->icmp_type = b[0];
		if (!v6) {
			if (b[0] == 8)
				p->icmp = ICMP_K_ECHO_REQ;
			else if (b[0] == 0)
				p->icmp = ICMP_K_ECHO_REPLY;
			else if (b[0] == 3 || b[0] == 11 || b[0] == 12)
				p->icmp = ICMP_K_ERROR;
			else
				p->icmp = ICMP_K_OTHER;
		} else {
			if (b[0] == 128)
				p->icmp = ICMP_K_ECHO_REQ;
			else if (b[0] == 129)
				p->icmp = ICMP_K_ECHO_REPLY;
			else if (b[0] >= 1 && b[0] <= 4)
				p->icmp = ICMP_K_ERROR;
			else if (b[0] >= ND_RS && b[0] <= ND_NA)
				p->icmp = ICMP_K_ND;
			else if ((b[0] >= MLD_QUERY && b[0] <= MLD_DONE) || b[0] == MLD2_REPORT)
				p->icmp = ICMP_K_MLD;
			else
				p->icmp = ICMP_K_OTHER;
		}
		if (p->icmp == ICMP_K_ECHO_REQ)
			__builtin_memcpy(&p->sport, b + 4, 2);
		else if (p->icmp == ICMP_K_ECHO_REPLY)
			__builtin_memcpy(&p->dport, b + 4, 2);
		return PARSE_OK;
	}
	return PARSE_OK; /* other protocols: port 0 */
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt *p, __u32 off)
{
	struct weir_iphdr ip WEIR_WORDS;

	if (weir_load(skb, off, &ip, sizeof(ip)))
		return PARSE_MALFORMED;
	__u32 ihl = (ip.vihl & 0xf) * 4;
	__u32 tot = bpf_ntohs(ip.tot_len);
	if (tot == 0 && skb->gso_size)
		tot = skb->len - off; /* BIG TCP: the length lives in the skb only */
	if ((ip.vihl >> 4) != 4 || ihl < 20 || tot < ihl || off + tot > skb->len)
		return PARSE_MALFORMED;
	p->family = 4;
	p->proto = ip.protocol;
	map_v4(p->saddr, ip.saddr);
	map_v4(p->daddr, ip.daddr);
	p->l4_off = off + ihl; /* IP options are skipped, never interpreted */
	p->l3_end = off + tot;
	__u16 fo = bpf_ntohs(ip.frag_off);
	if (fo & 0x1fff) {
		p->frag = FRAG_LATER;
		return PARSE_OK;
	}
	if (fo & 0x2000)
		p->frag = FRAG_FIRST;
	return parse_l4(skb, p, 0);
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct pkt *p, __u32 off)
{
	struct weir_ip6hdr ip6 WEIR_WORDS;
	__u8 b[4] WEIR_WORDS;

	if (weir_load(skb, off, &ip6, sizeof(ip6)))
		return PARSE_MALFORMED;
	if ((((__u8 *)&ip6.vtcfl)[0] >> 4) != 6)
		return PARSE_MALFORMED;
	__u32 end = off + 40 + bpf_ntohs(ip6.payload_len);
	if (ip6.payload_len == 0 && skb->gso_size)
		end = skb->len; /* BIG TCP: the length lives in the skb only */
	if (end > skb->len)
		return PARSE_MALFORMED;
	p->family = 6;
	__builtin_memcpy(p->saddr, ip6.saddr, 16);
	__builtin_memcpy(p->daddr, ip6.daddr, 16);
	p->l3_end = end;

	__u8 nh = ip6.nexthdr;
	__u32 l4 = off + 40;
	int i;
#pragma unroll
	for (i = 0; i < WEIR_MAX_EXTHDRS; i++) {
		if (nh != WEIR_NEXTHDR_HOP && nh != WEIR_NEXTHDR_ROUTING &&
		    nh != WEIR_NEXTHDR_FRAGMENT && nh != WEIR_NEXTHDR_AUTH &&
		    nh != WEIR_NEXTHDR_DEST)
			break;
		if (l4 + 8 > end || weir_load(skb, l4, b, 4))
			return PARSE_MALFORMED;
		if (nh == WEIR_NEXTHDR_FRAGMENT) {
			__u16 fo = ((__u16)b[2] << 8) | b[3];
			nh = b[0];
			l4 += 8;
			if (fo & 0xfff8) {
				p->frag = FRAG_LATER;
				p->proto = nh;
				p->l4_off = l4;
				return PARSE_OK;
			}
			if (fo & 1)
				p->frag = FRAG_FIRST;
			continue;
		}
		if (nh == WEIR_NEXTHDR_AUTH)
			l4 += ((__u32)b[1] + 2) * 4;
		else
			l4 += ((__u32)b[1] + 1) * 8;
		nh = b[0];
	}
	if (nh == WEIR_NEXTHDR_HOP || nh == WEIR_NEXTHDR_ROUTING ||
	    nh == WEIR_NEXTHDR_FRAGMENT || nh == WEIR_NEXTHDR_AUTH || nh == WEIR_NEXTHDR_DEST)
		return PARSE_MALFORMED;
	if (l4 > end)
		return PARSE_MALFORMED;
	p->proto = nh;
	p->l4_off = l4;
	return parse_l4(skb, p, 1);
}

struct weir_ethhdr {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
};

/* The Ethernet header into *eth, then the IP packet (if it is one) into *p. */
static __always_inline int parse_packet(struct __sk_buff *skb, struct pkt *p,
					struct weir_ethhdr *eth)
{
	if (weir_load(skb, 0, eth, sizeof(*eth)))
		return PARSE_MALFORMED; /* shorter than an Ethernet header */
	__be16 proto = eth->proto;
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(skb, p, ETH_HLEN);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(skb, p, ETH_HLEN);
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return PARSE_VLAN;
	return PARSE_NOT_IP;
}

/*
 * The packet an ICMP error quotes, as the tuple of the flow it belonged to
 * (addresses and ports as the quoted packet had them). Returns 0 when the
 * quote holds at least the IP header and the ports.
 */
static __always_inline int parse_icmp_quote(struct __sk_buff *skb, const struct pkt *p,
					    struct pkt *q)
{
	__u32 off = p->l4_off + 8;
	__u8 b[4] WEIR_WORDS;

	if (p->family == 4) {
		struct weir_iphdr ip WEIR_WORDS;
		if (weir_load(skb, off, &ip, sizeof(ip)) || (ip.vihl >> 4) != 4)
			return -1;
		__u32 ihl = (ip.vihl & 0xf) * 4;
		if (ihl < 20)
			return -1;
		map_v4(q->saddr, ip.saddr);
		map_v4(q->daddr, ip.daddr);
		q->proto = ip.protocol;
		off += ihl;
	} else {
		struct weir_ip6hdr ip6 WEIR_WORDS;
		if (weir_load(skb, off, &ip6, sizeof(ip6)))
			return -1;
		__builtin_memcpy(q->saddr, ip6.saddr, 16);
		__builtin_memcpy(q->daddr, ip6.daddr, 16);
		q->proto = ip6.nexthdr; /* a quoted packet with extension headers is not matched */
		off += 40;
	}
	if (weir_load(skb, off, b, 4))
		return -1;
	switch (q->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		__builtin_memcpy(&q->sport, b, 2);
		__builtin_memcpy(&q->dport, b + 2, 2);
		return 0;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		/* a quoted echo request (what errors quote): identifier in sport */
		if (b[0] != 8 && b[0] != 128)
			return -1;
		if (weir_load(skb, off + 4, b, 2))
			return -1;
		__builtin_memcpy(&q->sport, b, 2);
		q->dport = 0;
		return 0;
	}
	return -1;
}

#endif
