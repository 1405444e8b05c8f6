/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Stateful connection tracking in the weir_ct LRU map. Entries are keyed
 * by the flow's two ends in a fixed order and remember which end opened
 * it, so every packet finds its flow with one lookup. Entries carry the
 * endpoints that allowed them and are only honoured for those endpoints
 * (see weir_abi.h).
 *
 * Timeouts: an unanswered flow (no reply yet) and a closing TCP flow (RST,
 * or FIN both ways) live ct_syn_timeout_s; an answered TCP flow
 * ct_tcp_timeout_s; everything else ct_udp_timeout_s. The expiry is written
 * back only when it moved by WEIR_CT_REFRESH_NS or the flags changed, so a
 * busy flow costs one map write per second, not one per packet.
 */
#ifndef WEIR_CONNTRACK_H
#define WEIR_CONNTRACK_H

#include "weir_abi.h"
#include "maps.h"
#include "parse.h"
#include "events.h"

static __always_inline int ct_tracked(const struct pkt *p)
{
	if (p->frag == FRAG_LATER)
		return 0;
	switch (p->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		return 1;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return p->icmp == ICMP_K_ECHO_REQ || p->icmp == ICMP_K_ECHO_REPLY;
	}
	return 0;
}

static __always_inline int is_icmp(__u8 proto)
{
	return proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6;
}

/* Compare two addresses as big-endian numbers. struct pkt keeps its
 * addresses 4-byte aligned. */
static __always_inline int addr_cmp(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;
	int i;
#pragma unroll
	for (i = 0; i < 4; i++)
		if (x[i] != y[i])
			return bpf_ntohl(x[i]) < bpf_ntohl(y[i]) ? -1 : 1;
	return 0;
}

/*
 * The key of the flow a packet belongs to: its two ends in a fixed order,
 * the lower (address, port) first, so both directions of a flow find the
 * one entry with one lookup. Returns 1 when the packet travels from the
 * key's second end to its first. ICMP echo needs no special case: parse.h
 * puts a request's identifier in sport and a reply's in dport, so request
 * and reply order to the same key, and the direction tells them apart.
 * saddr and daddr are 8-byte aligned (struct pkt's, a map value's) and so
 * is *k (WEIR_WORDS): the addresses are copied in words.
 */
static __always_inline int ct_key(const __u8 *saddr_, __be16 sport, const __u8 *daddr_,
				  __be16 dport, __u8 proto, struct weir_ct_key *k_)
{
	const __u8 *saddr = __builtin_assume_aligned(saddr_, 8);
	const __u8 *daddr = __builtin_assume_aligned(daddr_, 8);
	struct weir_ct_key *k = __builtin_assume_aligned(k_, 8);
	int c = addr_cmp(saddr, daddr);
	int swap = c > 0 || (c == 0 && bpf_ntohs(sport) > bpf_ntohs(dport));

	if (swap) {
		__builtin_memcpy(k->saddr, daddr, 16);
		__builtin_memcpy(k->daddr, saddr, 16);
		k->sport = dport;
		k->dport = sport;
	} else {
		__builtin_memcpy(k->saddr, saddr, 16);
		__builtin_memcpy(k->daddr, daddr, 16);
		k->sport = sport;
		k->dport = dport;
	}
	k->protocol = proto;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
	return swap;
}

static __always_inline int ct_key_of(const struct pkt *p, struct weir_ct_key *k)
{
	return ct_key(p->saddr, p->sport, p->daddr, p->dport, p->proto, k);
}

/* Whether a packet whose key came out `swapped` is a reply of flow v. */
static __always_inline int ct_is_reply(const struct weir_ct_value *v, int swapped)
{
	return swapped != !!(v->flags & WEIR_CT_ORIG_SWAPPED);
}

static __always_inline __u64 ct_timeout_ns(const struct weir_config *cfg, __u8 proto, __u32 flags)
{
	__u32 s;

	if (proto == IPPROTO_TCP && (flags & WEIR_CT_SEEN_REPLY) && !(flags & WEIR_CT_RST) &&
	    (flags & (WEIR_CT_FIN_FWD | WEIR_CT_FIN_REV)) != (WEIR_CT_FIN_FWD | WEIR_CT_FIN_REV)) {
		s = cfg ? cfg->ct_tcp_timeout_s : 0;
		if (!s)
			s = WEIR_CT_TCP_TIMEOUT_DEFAULT_S;
	} else if (proto == IPPROTO_TCP || !(flags & WEIR_CT_SEEN_REPLY)) {
		s = cfg ? cfg->ct_syn_timeout_s : 0;
		if (!s)
			s = WEIR_CT_SYN_TIMEOUT_DEFAULT_S;
	} else {
		s = cfg ? cfg->ct_udp_timeout_s : 0;
		if (!s)
			s = WEIR_CT_UDP_TIMEOUT_DEFAULT_S;
	}
	return (__u64)s * 1000000000ull;
}

/* A live entry for the key, or NULL (expired entries are misses; the LRU
 * reclaims them or a new judgement overwrites them). */
static __always_inline struct weir_ct_value *ct_lookup(const struct weir_ct_key *k, __u64 now)
{
	struct weir_ct_value *v = bpf_map_lookup_elem(&weir_ct, k);
	if (!v || v->expires_ns < now)
		return 0;
	return v;
}

/* The packet's flow entry in *v (NULL when none is live); returns whether
 * the packet is a reply of that flow. */
static __always_inline int ct_is_reply_lookup(const struct pkt *p, struct weir_ct_key *k,
					      struct weir_ct_value **v, __u64 now)
{
	int swapped = ct_key_of(p, k);
	*v = ct_lookup(k, now);
	return *v ? ct_is_reply(*v, swapped) : 0;
}

/*
 * The conntrack clock. The coarse clock is CLOCK_MONOTONIC at tick
 * resolution and costs half of bpf_ktime_get_ns(); timeouts are seconds,
 * so a tick of lag does not matter. Deadlines stay comparable with
 * CLOCK_MONOTONIC in user space.
 */
static __always_inline __u64 ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* Whether p, sent the flow's way on entry flags, opens a new TCP
 * connection on the tuple of a closed one. */
static __always_inline int ct_tcp_reuse(__u32 flags, const struct pkt *p, int reply)
{
	return p->proto == IPPROTO_TCP && !reply && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN &&
	       (flags & (WEIR_CT_RST | WEIR_CT_FIN_FWD | WEIR_CT_FIN_REV));
}

/* A packet of the flow passed: advance the TCP state and the expiry.
 * cfg: weir_cfg(), which the caller has at hand. Returns 1 when the packet
 * starts a new TCP connection on the tuple of a closed one. */
static __always_inline int ct_touch(struct weir_ct_value *v, const struct pkt *p, int reply,
				    const struct weir_config *cfg, __u64 now)
{
	__u32 flags = v->flags;
	__u32 nflags = flags;
	int reused = ct_tcp_reuse(flags, p, reply);

	if (reply)
		nflags |= WEIR_CT_SEEN_REPLY;
	if (p->proto == IPPROTO_TCP) {
		if (reused)
			/* the tuple is reused by a new connection */
			nflags = flags & (WEIR_CT_ORIG_SWAPPED | WEIR_CT_SERVICE);
		if (p->tcp_flags & TCP_RST)
			nflags |= WEIR_CT_RST;
		if (p->tcp_flags & TCP_FIN)
			nflags |= reply ? WEIR_CT_FIN_REV : WEIR_CT_FIN_FWD;
	}
	__u64 exp = now + ct_timeout_ns(cfg, p->proto, nflags);
	if (nflags != flags) {
		v->flags = nflags;
		v->expires_ns = exp;
	} else if (exp > v->expires_ns + WEIR_CT_REFRESH_NS) {
		v->expires_ns = exp;
	}
	return reused;
}

/* gen: the policy generation read before the flow was judged (policy_gen_at_start). */
static __always_inline int ct_create(const struct pkt *p, __u32 egress_ep, __u32 ingress_ep,
				     __u32 rule, __u32 flags, __u32 gen, __u64 now)
{
	struct weir_ct_key k WEIR_WORDS;
	struct weir_ct_value v = {
		.egress_ep = egress_ep,
		.ingress_ep = ingress_ep,
		.rule = rule,
		.flags = flags,
		.policy_gen = gen,
	};
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & TCP_RST))
		v.flags |= WEIR_CT_RST;
	v.expires_ns = now + ct_timeout_ns(weir_cfg(), p->proto, v.flags);
	if (ct_key_of(p, &k))
		v.flags |= WEIR_CT_ORIG_SWAPPED;
	return bpf_map_update_elem(&weir_ct, &k, &v, BPF_ANY);
}

/*
 * An ICMP error is related to a flow when the packet it quotes belongs to a
 * live entry of `ep`. At to_pod the quote is a packet ep sent (quoted_sent):
 * its forward entry allowed by ep's egress, or the reverse of a flow ep
 * accepted. At from_pod ep is the one reporting an error about a packet it
 * received: the mirror image.
 */
static __always_inline int ct_related(struct __sk_buff *skb, const struct pkt *p, __u32 ep,
				      int quoted_sent, __u64 now)
{
	struct pkt q WEIR_WORDS = {};
	struct weir_ct_key k WEIR_WORDS;
	struct weir_ct_value *v;

	if (parse_icmp_quote(skb, p, &q))
		return 0;
	int swapped = ct_key_of(&q, &k);
	v = ct_lookup(&k, now);
	if (!v || (v->flags & WEIR_CT_REVOKED))
		return 0;
	/* the quoted packet went the flow's way: its sender allowed it at egress */
	if (!ct_is_reply(v, swapped))
		return (quoted_sent ? v->egress_ep : v->ingress_ep) == ep;
	return (quoted_sent ? v->ingress_ep : v->egress_ep) == ep;
}

#endif
