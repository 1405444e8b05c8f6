/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A pod's own addresses, as CNI ADD wrote them in its endpoint entry: what
 * the pod may claim and what it may receive. Checked on every packet,
 * before conntrack, so no established flow carries a packet past them.
 *
 * from_pod (the pod speaks):
 *   - Ethernet source is the pod's MAC (else the bridge would learn another
 *     pod's MAC behind this port and hand it that pod's frames);
 *   - ARP: Ethernet/IPv4 only, request or reply, sender MAC the pod's,
 *     sender IP the pod's IPv4 or 0.0.0.0 (a probe, RFC 5227);
 *   - ND: source the pod's IPv6, its link-local, or :: (DAD, RS); an NA's
 *     target, and a DAD probe's, one of those two; every link-layer address
 *     option the pod's MAC; RAs and redirects dropped (a pod is no router:
 *     either would take over its neighbours' routes);
 *   - any other IP packet comes from the pod's IPv4 or IPv6 address (not
 *     its link-local: local traffic is judged at the destination by the
 *     source address's endpoint, which a link-local address has none of).
 * to_pod (the pod is handed a frame):
 *   - unicast Ethernet destination is the pod's MAC;
 *   - ARP: target IP the pod's IPv4, or a broadcast gratuitous
 *     announcement (sender IP == target IP);
 *   - IPv4 destination: the pod's address, 255.255.255.255, the broadcast
 *     of the pod's subnet, or multicast (224.0.0.0/4);
 *   - IPv6 destination: the pod's address or link-local, the
 *     solicited-node group of either, or any other multicast group
 *     (ff02::1 among them); solicited-node groups of other addresses are
 *     other pods' neighbour solicitations.
 * See docs/architecture-dataplane.md for why each exception exists.
 */
#ifndef WEIR_ADDRS_H
#define WEIR_ADDRS_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include "weir_abi.h"
#include "parse.h"

/* ND options looked at before giving up (malformed): Linux sends one or
 * two (a link-layer address, a DAD nonce). */
#define WEIR_MAX_ND_OPTS 8
#define ND_OPT_SLLA 1
#define ND_OPT_TLLA 2

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) |
		(a[5] ^ b[5])) == 0;
}

static __always_inline int mac_is_broadcast(const __u8 *a)
{
	return (a[0] & a[1] & a[2] & a[3] & a[4] & a[5]) == 0xff;
}

/* 16-byte addresses, both 4-byte aligned (struct pkt, weir_endpoint and
 * the __u32 buffers below keep them so). */
static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;
	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

static __always_inline int addr_is_zero(const __u8 *a)
{
	const __u32 *x = (const __u32 *)a;
	return (x[0] | x[1] | x[2] | x[3]) == 0;
}

/* The pod's IPv4 or IPv6 address. An empty slot is all zero, which the
 * unspecified address :: would match: it is never the pod's. */
static __always_inline int ep_owns(const struct weir_endpoint *e, const __u8 *a)
{
	return !addr_is_zero(a) && (addr_eq(a, e->ipv4) || addr_eq(a, e->ipv6));
}

/* ep_owns, or the pod's link-local address: what it may use on the link. */
static __always_inline int ep_owns_on_link(const struct weir_endpoint *e, const __u8 *a)
{
	return ep_owns(e, a) || (!addr_is_zero(a) && addr_eq(a, e->ipv6_ll));
}

/* The pod's IPv4 address is `a` (network order). */
static __always_inline int ep_ipv4_is(const struct weir_endpoint *e, __be32 a)
{
	__u32 m[4] = { 0, 0, bpf_htonl(0xffff), a };
	return addr_eq((const __u8 *)m, e->ipv4);
}

struct weir_arp {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
};

/* An Ethernet/IPv4 request or reply: the only ARP a pod's stack speaks. */
static __always_inline int arp_load(struct __sk_buff *skb, struct weir_arp *a)
{
	if (weir_load(skb, ETH_HLEN, a, sizeof(*a)))
		return -1;
	if (a->htype != bpf_htons(1) || a->ptype != bpf_htons(ETH_P_IP) || a->hlen != 6 ||
	    a->plen != 4 || (a->op != bpf_htons(1) && a->op != bpf_htons(2)))
		return -1;
	return 0;
}

static __always_inline __be32 arp_ip(const __u8 *b)
{
	__be32 a;
	__builtin_memcpy(&a, b, 4);
	return a;
}

/* ARP sent by the pod: WEIR_R_ALLOW_NOT_IP or the drop reason. */
static __always_inline __u8 arp_from_pod(struct __sk_buff *skb, const struct weir_endpoint *e)
{
	struct weir_arp a WEIR_WORDS;

	if (arp_load(skb, &a))
		return WEIR_R_DROP_MALFORMED;
	if (!mac_eq(a.sha, e->mac))
		return WEIR_R_DROP_SPOOFED_MAC;
	__be32 spa = arp_ip(a.spa);
	/* 0.0.0.0: a probe (RFC 5227), which no receiver learns from */
	if (spa && !ep_ipv4_is(e, spa))
		return WEIR_R_DROP_NEIGH_SPOOFED;
	return WEIR_R_ALLOW_NOT_IP;
}

/* ARP handed to the pod: WEIR_R_ALLOW_NOT_IP or WEIR_R_DROP_*. */
static __always_inline __u8 arp_to_pod(struct __sk_buff *skb, const struct weir_ethhdr *eth,
				       const struct weir_endpoint *e)
{
	struct weir_arp a WEIR_WORDS;

	if (arp_load(skb, &a))
		return WEIR_R_DROP_MALFORMED;
	__be32 tpa = arp_ip(a.tpa);
	if (ep_ipv4_is(e, tpa))
		return WEIR_R_ALLOW_NOT_IP;
	/* A gratuitous announcement refreshes the sender's entry in caches that
	 * hold one: how a pod reusing an address corrects its neighbours'
	 * stale entries. A pod of this node can only announce its own. */
	if (tpa && tpa == arp_ip(a.spa) && mac_is_broadcast(eth->dst))
		return WEIR_R_ALLOW_NOT_IP;
	return WEIR_R_DROP_NOT_FOR_POD;
}

/*
 * The options of an ND message from the pod, from `off` to the end of the
 * packet: every link-layer address option must carry the pod's MAC (the
 * receivers would learn it for the source or target address).
 */
static __always_inline __u8 nd_options_from_pod(struct __sk_buff *skb, const struct pkt *p,
						const struct weir_endpoint *e, __u32 off)
{
	__u8 o[8] WEIR_WORDS;
	int i;

#pragma unroll
	for (i = 0; i < WEIR_MAX_ND_OPTS; i++) {
		if (off >= p->l3_end)
			break;
		if (off + 8 > p->l3_end || weir_load(skb, off, o, 8) || o[1] == 0)
			return WEIR_R_DROP_MALFORMED;
		if (o[0] == ND_OPT_SLLA || o[0] == ND_OPT_TLLA) {
			if (o[1] != 1) /* not an Ethernet address: receivers drop it too */
				return WEIR_R_DROP_MALFORMED;
			if (!mac_eq(o + 2, e->mac))
				return WEIR_R_DROP_SPOOFED_MAC;
		}
		off += (__u32)o[1] * 8;
	}
	return off == p->l3_end ? WEIR_R_ALLOW_ND : WEIR_R_DROP_MALFORMED;
}

/* A link-scope multicast address (ff02::/16, ff12::/16, ...): where MLD
 * speaks, and what no router forwards. */
static __always_inline int link_scope_multicast(const __u8 *a)
{
	return a[0] == 0xff && (a[1] & 0x0f) == 2;
}

/*
 * Multicast listener discovery sent by the pod to a link-scope group: link
 * control, like ND, never a flow policy speaks of. A pod reports (from ::
 * before it has a link-local address, RFC 3590) and may not query, which
 * is a multicast router's part. WEIR_R_ALLOW_MLD, the drop reason, or 0
 * for one to any other address, which policy judges like any packet.
 */
static __always_inline __u8 mld_from_pod(const struct pkt *p, const struct weir_endpoint *e)
{
	if (!link_scope_multicast(p->daddr))
		return 0;
	if (p->icmp_type == MLD_QUERY)
		return WEIR_R_DROP_ROUTER_MSG;
	if (!addr_is_zero(p->saddr) && !ep_owns_on_link(e, p->saddr))
		return WEIR_R_DROP_NEIGH_SPOOFED;
	return WEIR_R_ALLOW_MLD;
}

/* Neighbour discovery (and redirects) sent by the pod: WEIR_R_ALLOW_ND or
 * the drop reason. */
static __always_inline __u8 nd_from_pod(struct __sk_buff *skb, const struct pkt *p,
					const struct weir_endpoint *e)
{
	__u8 type = p->icmp_type;
	int unspecified = addr_is_zero(p->saddr);
	__u32 off = p->l4_off + 8;

	if (type == ND_RA || type == ND_REDIRECT)
		return WEIR_R_DROP_ROUTER_MSG;
	/* receivers drop fragmented ND (RFC 6980): options past the first
	 * fragment would go unchecked here */
	if (p->frag != FRAG_NONE)
		return WEIR_R_DROP_MALFORMED;
	/* The source is learnt by receivers of RS and NS; :: is DAD's or an RS
	 * before any address, and never an NA's. */
	if (unspecified ? type == ND_NA : !ep_owns_on_link(e, p->saddr))
		return WEIR_R_DROP_NEIGH_SPOOFED;
	if (type != ND_RS) {
		__u32 target[4] WEIR_WORDS;
		if (off + 16 > p->l3_end || weir_load(skb, off, target, 16))
			return WEIR_R_DROP_MALFORMED;
		off += 16;
		/* An NA claims its target, and so does DAD (an NS from ::) for the
		 * address it is about to use; any other NS only asks. */
		if ((type == ND_NA || unspecified) && !ep_owns_on_link(e, (const __u8 *)target))
			return WEIR_R_DROP_NEIGH_SPOOFED;
	}
	return nd_options_from_pod(skb, p, e, off);
}

/* The pod's subnet broadcast is `a` (network order). */
static __always_inline int ep_subnet_broadcast(const struct weir_endpoint *e, __be32 a)
{
	__u8 plen = e->ipv4_prefixlen;
	__be32 own;

	/* /31 and /32 have no broadcast (RFC 3021) */
	if (plen == 0 || plen > 30 || addr_is_zero(e->ipv4))
		return 0;
	__builtin_memcpy(&own, e->ipv4 + 12, 4);
	return bpf_ntohl(a) == (bpf_ntohl(own) | ((1u << (32 - plen)) - 1));
}

/* ff02::1:ffXX:XXXX */
static __always_inline int is_solicited_node(const __u8 *d)
{
	const __u32 *w = (const __u32 *)d;
	return w[0] == bpf_htonl(0xff020000) && w[1] == 0 && w[2] == bpf_htonl(1) && d[12] == 0xff;
}

/* d is the solicited-node group of a (a set). */
static __always_inline int solicits(const __u8 *d, const __u8 *a)
{
	return !addr_is_zero(a) && d[13] == a[13] && d[14] == a[14] && d[15] == a[15];
}

/* The IP packet's destination is one the pod takes (see the top). */
static __always_inline int ip_for_pod(const struct pkt *p, const struct weir_endpoint *e)
{
	const __u8 *d = p->daddr;

	if (p->family == 4) {
		__be32 a;
		__builtin_memcpy(&a, d + 12, 4);
		return addr_eq(d, e->ipv4) || a == 0xffffffff ||
		       (a & bpf_htonl(0xf0000000)) == bpf_htonl(0xe0000000) ||
		       ep_subnet_broadcast(e, a);
	}
	if (ep_owns_on_link(e, d))
		return 1;
	if (d[0] != 0xff)
		return 0;
	if (is_solicited_node(d))
		return solicits(d, e->ipv6) || solicits(d, e->ipv6_ll);
	return 1;
}

/*
 * Everything a pod may not claim, before any policy. Parses the packet into
 * *p. Returns 0 for an IP packet policy goes on to judge, else the reason
 * that settles the frame (allowed ARP/ND/non-IP, or a drop).
 */
static __always_inline __u8 screen_from_pod(struct __sk_buff *skb, struct pkt *p,
					    const struct weir_endpoint *e)
{
	struct weir_ethhdr eth WEIR_WORDS;
	int parsed = parse_packet(skb, p, &eth);

	if (parsed == PARSE_VLAN)
		return WEIR_R_DROP_VLAN;
	if (parsed == PARSE_MALFORMED)
		return WEIR_R_DROP_MALFORMED;
	if (!mac_eq(eth.src, e->mac))
		return WEIR_R_DROP_SPOOFED_MAC;
	if (parsed == PARSE_NOT_IP)
		return eth.proto == bpf_htons(ETH_P_ARP) ? arp_from_pod(skb, e) : WEIR_R_ALLOW_NOT_IP;
	if (p->family == 6 && p->proto == IPPROTO_ICMPV6 &&
	    (p->icmp == ICMP_K_ND || p->icmp_type == ND_REDIRECT))
		return nd_from_pod(skb, p, e);
	if (p->icmp == ICMP_K_MLD) {
		__u8 r = mld_from_pod(p, e);
		if (r)
			return r;
	}
	/* Without this a pod could claim another local pod's address: its
	 * packet would be deferred, then judged at the destination as that
	 * other pod, escaping this endpoint's egress policy and borrowing the
	 * other's identity. Also towards the node, whose replies would go to
	 * the address's owner. */
	if (!ep_owns(e, p->saddr))
		return WEIR_R_DROP_SPOOFED;
	return 0;
}

/*
 * Everything not addressed to the pod, before any policy. Parses the packet
 * into *p; returns like screen_from_pod.
 */
static __always_inline __u8 screen_to_pod(struct __sk_buff *skb, struct pkt *p,
					  const struct weir_endpoint *e)
{
	struct weir_ethhdr eth WEIR_WORDS;
	int parsed = parse_packet(skb, p, &eth);

	if (parsed == PARSE_VLAN)
		return WEIR_R_DROP_VLAN;
	if (parsed == PARSE_MALFORMED)
		return WEIR_R_DROP_MALFORMED;
	/* unicast for another MAC: flooded by the bridge, or misdirected */
	if (!(eth.dst[0] & 1) && !mac_eq(eth.dst, e->mac))
		return WEIR_R_DROP_NOT_FOR_POD;
	if (parsed == PARSE_NOT_IP)
		return eth.proto == bpf_htons(ETH_P_ARP) ? arp_to_pod(skb, &eth, e) : WEIR_R_ALLOW_NOT_IP;
	if (!ip_for_pod(p, e))
		return WEIR_R_DROP_NOT_FOR_POD;
	/* Group membership on the link: a query (only the node may send one)
	 * is the pod's to answer; other pods' reports and dones are for
	 * multicast routers (RFC 3810, 6), not for a pod, and a channel past
	 * policy if handed over: counted, not logged (as every NOT_FOR_POD). */
	if (p->icmp == ICMP_K_MLD && link_scope_multicast(p->daddr))
		return p->icmp_type == MLD_QUERY ? WEIR_R_ALLOW_MLD : WEIR_R_DROP_NOT_FOR_POD;
	return p->icmp == ICMP_K_ND ? WEIR_R_ALLOW_ND : 0;
}

#endif
