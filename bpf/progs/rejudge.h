/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Established flows follow policy changes. weir-policyd bumps
 * weir_config.policy_gen after every sync that may change a verdict (once
 * its removals are done); every conntrack entry carries the generation it
 * was judged under. A hit whose stamp differs is judged again before it
 * carries the packet: every side the entry was allowed by (the source's
 * egress, the destination's ingress), with the tuple as the flow was
 * opened, against the maps as they are now. Still allowed: the stamp is
 * refreshed (one write; the flow never notices). Refused: the packet is
 * dropped (WEIR_R_DROP_POLICY_REVOKED, counted and evented for the side
 * that refused) and the entry marked WEIR_CT_REVOKED, so the flow's every
 * later packet, in either direction and at whichever hook sees it first,
 * is judged again and dropped the same way (weir_abi.h says why the entry
 * is kept).
 *
 * The fast path pays one comparison of the stamp with the generation (the
 * config array's lookup is inlined by the verifier into a pointer); the
 * judgement is out of line. With WEIR_CFG_REJUDGE_OFF a stale entry passes
 * as it always did: entries keep their verdict until they expire.
 */
#ifndef WEIR_REJUDGE_H
#define WEIR_REJUDGE_H

#include "weir_abi.h"
#include "maps.h"
#include "parse.h"
#include "events.h"
#include "conntrack.h"
#include "policy.h"
#include "service.h"

/* The generation a judgement is stamped with. Read before any verdict
 * lookup: a judgement that races a sync then carries the old generation
 * and is judged again on its next packet. */
static __always_inline __u32 policy_gen_at_start(const struct weir_config *cfg)
{
	return cfg ? cfg->policy_gen : 0;
}

/* In judge_side's direction byte: judge only a peer that is a pod (a label
 * identity); any other passes. A SERVICE entry's link names the backend
 * a flow was DNATed to; once that address is no pod's (the backend pod is
 * gone, and the flow, a UDP one, moved on to another), judging the flow
 * against it would cut an allowed flow. */
#define JUDGE_PEER_POD_ONLY 0x80

/*
 * One side of a flow, judged as a new flow's would be (the node is always
 * allowed). *vc describes it for the verdict's counter and event.
 * Out of line (a BPF-to-BPF call): the judgement's lookups are emitted once,
 * not at every conntrack hit of every hook, and its keys get a frame of
 * their own. Inlined twice (egress, ingress), they sat on top of the hook's
 * frame and overflowed the 512 bytes of stack a call chain has.
 * dir_proto_port: direction | protocol << 8 | port (network order) << 16,
 * packed because a BPF-to-BPF call takes at most five arguments.
 */
static __noinline __u8 judge_side(__u32 ep, __u32 dir_proto_port, const __u8 *peer, __u32 *rule,
				  struct verdict_ctx *vc)
{
	__u8 dir = dir_proto_port & 0x7f;
	__u8 proto = (dir_proto_port >> 8) & 0xff;
	__be16 port = dir_proto_port >> 16;
	const struct weir_ipcache_value *pv = ipcache_lookup(peer);
	__u32 identity = pv ? pv->identity : WEIR_ID_WORLD;

	vc->endpoint = ep;
	vc->direction = dir;
	vc->peer_identity = identity;
	*rule = 0;
	if (identity == WEIR_ID_HOST)
		return WEIR_R_ALLOW_HOST;
	if ((dir_proto_port & JUDGE_PEER_POD_ONLY) && WEIR_PEER_WILDCARD(identity) != WEIR_ID_ANY_POD)
		return WEIR_R_ALLOW_DEFERRED;
	return judge(ep, endpoint_lookup(ep), dir, peer, identity, proto, port, 0, rule);
}

static __always_inline __u32 side_of(__u8 dir, __u8 proto, __be16 port)
{
	return dir | (__u32)proto << 8 | (__u32)port << 16;
}

/*
 * Judge entry v (stored under key k) again. Returns 0 when every side it
 * was allowed by still allows it (the stamp and the rule are refreshed),
 * else the refusing side's drop reason, described in *vc. A SERVICE entry
 * (a pod -> VIP, kept for the un-DNATed reply) was never a judgement: its
 * source's egress is judged against the backend leave_node linked it to
 * (service.h). Unlinked (a backend on this node, or a link that was never
 * made, was evicted or forgotten), the flow's verdict lives in the backend
 * tuple's entry alone, judged again where that is seen.
 */
static __always_inline __u8 ct_rejudge(const struct weir_ct_key *k, struct weir_ct_value *v,
				       __u32 gen, struct verdict_ctx *vc)
{
	int swapped = !!(v->flags & WEIR_CT_ORIG_SWAPPED);
	const __u8 *src = swapped ? k->daddr : k->saddr;
	const __u8 *dst = swapped ? k->saddr : k->daddr;
	__be16 dport = swapped ? k->sport : k->dport;
	__u32 rule = 0, ingress_rule = 0;
	__u8 reason;

	if (is_icmp(k->protocol))
		dport = 0; /* policy sees no port for ICMP */
	if (v->flags & WEIR_CT_SERVICE) {
		const struct weir_service_backend *b = v->egress_ep ? service_backend(k) : 0;
		if (b) {
			reason = judge_side(v->egress_ep,
					    side_of(WEIR_DIR_EGRESS | JUDGE_PEER_POD_ONLY, k->protocol, b->bport),
					    b->baddr, &rule, vc);
			if (WEIR_REASON_IS_DROP(reason))
				return reason;
		}
	} else if (v->egress_ep) {
		reason = judge_side(v->egress_ep, side_of(WEIR_DIR_EGRESS, k->protocol, dport), dst, &rule, vc);
		if (WEIR_REASON_IS_DROP(reason))
			return reason;
	}
	if (v->ingress_ep) {
		reason = judge_side(v->ingress_ep, side_of(WEIR_DIR_INGRESS, k->protocol, dport), src,
				    &ingress_rule, vc);
		if (WEIR_REASON_IS_DROP(reason))
			return reason;
		rule = ingress_rule;
	}
	v->rule = rule;
	v->policy_gen = gen;
	if (v->flags & WEIR_CT_REVOKED)
		v->flags &= ~WEIR_CT_REVOKED;
	return 0;
}

/*
 * The slow path of ct_still_allowed: the judgements are out of line
 * (judge_side), so what is inlined at each conntrack hit is two calls and
 * the drop.
 */
static __always_inline int ct_revalidate(struct __sk_buff *skb, const struct pkt *p,
				    const struct weir_ct_key *k, struct weir_ct_value *v, __u32 gen)
{
	struct verdict_ctx vc = {};
	if (!ct_rejudge(k, v, gen, &vc))
		return 1;
	if (!(v->flags & WEIR_CT_REVOKED))
		v->flags |= WEIR_CT_REVOKED;
	weir_drop(skb, p, &vc, WEIR_R_DROP_POLICY_REVOKED);
	return 0;
}

/*
 * A conntrack hit on v, whose key is k: whether it may carry the packet.
 * When it may not, the packet has been dropped (counted, evented) and the
 * entry marked revoked; the caller returns TC_ACT_SHOT.
 */
static __always_inline int ct_still_allowed(struct __sk_buff *skb, const struct pkt *p,
					    const struct weir_ct_key *k, struct weir_ct_value *v,
					    const struct weir_config *cfg, __u32 gen)
{
	if (__builtin_expect(v->policy_gen == gen && !(v->flags & WEIR_CT_REVOKED), 1))
		return 1;
	if (!cfg || (cfg->flags & WEIR_CFG_REJUDGE_OFF))
		return 1;
	return ct_revalidate(skb, p, k, v, gen);
}

#endif
