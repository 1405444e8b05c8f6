/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The two tc programs on every pod's host-side veth.
 *
 *   from_pod    tc ingress of the host veth: what the pod sends
 *   to_pod      tc egress of the host veth: what the pod receives
 *   leave_node  tc egress of the device to other nodes: the post-DNAT
 *               packets of local pods bound for another node
 *
 * Traffic between pods of this node, and to Service VIPs, is judged once,
 * at the destination's to_pod: that hook runs after kube-proxy's DNAT in
 * the node's PREROUTING, so it sees the backend actually chosen, and it
 * holds both the source's egress and the destination's ingress decision.
 * from_pod decides alone only for destinations outside the node.
 * Before any of that, both hooks screen the frame against the pod's own
 * MAC and addresses (addrs.h): what it may claim, what it may be handed.
 * Every conntrack hit is checked against the policy generation first
 * (rejudge.h): a flow the current policy no longer allows stops there.
 * See docs/architecture-dataplane.md.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "weir_abi.h"
#include "maps.h"
#include "parse.h"
#include "events.h"
#include "conntrack.h"
#include "policy.h"
#include "addrs.h"
#include "rejudge.h"
#include "service.h"
#include "handoff.h"

/* The port policy sees: ICMP has none (its identifier is only for conntrack). */
static __always_inline __be16 policy_port(const struct pkt *p)
{
	return is_icmp(p->proto) ? 0 : p->dport;
}

static __always_inline int verdict(struct __sk_buff *skb, const struct pkt *p,
				   const struct verdict_ctx *vc, __u8 reason, int new_flow)
{
	if (WEIR_REASON_IS_DROP(reason))
		return weir_drop(skb, p, vc, reason);
	return weir_allow(skb, p, vc, reason, new_flow);
}

SEC("classifier/from_pod")
int from_pod(struct __sk_buff *skb)
{
	__u32 ep = skb->ifindex;
	struct verdict_ctx vc = { .endpoint = ep, .direction = WEIR_DIR_EGRESS };
	struct pkt p WEIR_WORDS = {};
	struct weir_ct_key k WEIR_WORDS;
	__u32 rule = 0;
	__u8 reason;

	/* The pod's own entry says what it may claim; without one it is no
	 * pod of ours (fail-closed, even towards the node). */
	const struct weir_endpoint *e = endpoint_lookup(ep);
	if (!e)
		return weir_drop(skb, &p, &vc, WEIR_R_DROP_NO_ENDPOINT);
	vc.log_allow = !!(e->flags & WEIR_EP_LOG_ALLOW);
	/* Before conntrack, so no established flow carries a spoofed frame. */
	reason = screen_from_pod(skb, &p, e);
	if (reason)
		return verdict(skb, &p, &vc, reason, 0);

	__u64 now = ct_now();
	int tracked = ct_tracked(&p);
	struct weir_ct_value *ct = 0;
	const struct weir_config *cfg = weir_cfg();
	__u32 gen = policy_gen_at_start(cfg);

	/* A flow already judged for this endpoint passes on one hash lookup,
	 * so established traffic never walks the LPM tries whatever their
	 * size. For a local peer its to_pod refreshes the entry; only flows
	 * that leave the node are refreshed here. */
	if (tracked) {
		int reply = ct_is_reply_lookup(&p, &k, &ct, now);
		if (ct && !reply && ct->egress_ep == ep) {
			/* A new connection on a closed SERVICE tuple is a new
			 * flow, maybe to another backend: not judged by the
			 * old one's. */
			if ((ct->flags & WEIR_CT_SERVICE) && ct_tcp_reuse(ct->flags, &p, 0))
				service_open(&p, &k, ct, gen, now);
			if (!ct_still_allowed(skb, &p, &k, ct, cfg, gen))
				return TC_ACT_SHOT;
			if (!ct->ingress_ep) {
				ct_touch(ct, &p, 0, cfg, now);
				if (!(ct->flags & WEIR_CT_SERVICE))
					handoff_record(&p, gen, now);
			}
			return weir_allow(skb, &p, &vc, WEIR_R_ALLOW_ESTABLISHED, 0);
		}
		if (ct && reply && ct->ingress_ep == ep) {
			if (!ct_still_allowed(skb, &p, &k, ct, cfg, gen))
				return TC_ACT_SHOT;
			if (!ct->egress_ep) {
				ct_touch(ct, &p, 1, cfg, now);
				handoff_record(&p, gen, now);
			}
			return weir_allow(skb, &p, &vc, WEIR_R_ALLOW_REPLY, 0);
		}
	}

	const struct weir_ipcache_value *dst = ipcache_lookup(p.daddr);
	vc.peer_identity = dst ? dst->identity : WEIR_ID_WORLD;
	if (vc.peer_identity == WEIR_ID_HOST)
		return weir_allow(skb, &p, &vc, WEIR_R_ALLOW_HOST, 0);

	reason = endpoint_gate(e);
	if (reason)
		return verdict(skb, &p, &vc, reason, 0);

	if (dst && (dst->endpoint || (dst->flags & WEIR_IPCACHE_SERVICE))) {
		/* Judged at the destination's to_pod, after DNAT. For a VIP,
		 * remember that ep talks to it: the reply comes back from the VIP
		 * (kube-proxy un-DNATs it) and must find ep's entry. A live entry
		 * of another endpoint is left alone: a spoofer gets no reply path,
		 * the owner keeps its own. leave_node links the entry to the
		 * backend when that is on another node (service.h). */
		if (tracked && !dst->endpoint && !ct) {
			if (ct_create(&p, ep, 0, 0, WEIR_CT_SERVICE, gen, now))
				return weir_drop(skb, &p, &vc, WEIR_R_DROP_CT_FULL);
			service_open(&p, &k, 0, gen, now);
		}
		return weir_allow(skb, &p, &vc, WEIR_R_ALLOW_DEFERRED, 0);
	}

	/* Outside the node: this is the only hook that sees it. */
	if (p.icmp == ICMP_K_ERROR && ct_related(skb, &p, ep, 0, now))
		return weir_allow(skb, &p, &vc, WEIR_R_ALLOW_RELATED, 0);

	reason = judge(ep, e, WEIR_DIR_EGRESS, p.daddr, vc.peer_identity, p.proto, policy_port(&p),
		       p.frag == FRAG_LATER, &rule);
	vc.rule = rule;
	if (WEIR_REASON_IS_DROP(reason))
		return weir_drop(skb, &p, &vc, reason);
	if (tracked && ct_create(&p, ep, 0, rule, 0, gen, now))
		return weir_drop(skb, &p, &vc, WEIR_R_DROP_CT_FULL);
	return weir_allow(skb, &p, &vc, reason, 1);
}

SEC("classifier/to_pod")
int to_pod(struct __sk_buff *skb)
{
	__u32 ep = skb->ifindex;
	struct verdict_ctx vc = { .endpoint = ep, .direction = WEIR_DIR_INGRESS };
	struct pkt p WEIR_WORDS = {};
	struct weir_ct_key k WEIR_WORDS;
	struct weir_ct_value *ct = 0;
	__u32 rule = 0, egress_ep = 0;
	__u32 egress_rule = 0; /* the rule allowing a local source's egress */
	__u8 reason;

	const struct weir_endpoint *e = endpoint_lookup(ep);
	if (!e)
		return weir_drop(skb, &p, &vc, WEIR_R_DROP_NO_ENDPOINT);
	vc.log_allow = !!(e->flags & WEIR_EP_LOG_ALLOW);
	/* Before conntrack: nothing addressed to another pod is delivered. */
	reason = screen_to_pod(skb, &p, e);
	if (reason)
		return verdict(skb, &p, &vc, reason, 0);

	__u64 now = ct_now();
	int tracked = ct_tracked(&p);
	const struct weir_config *cfg = weir_cfg();
	__u32 gen = policy_gen_at_start(cfg);
	if (tracked) {
		int reply = ct_is_reply_lookup(&p, &k, &ct, now);
		if (ct && reply && ct->egress_ep == ep) {
			if (!ct_still_allowed(skb, &p, &k, ct, cfg, gen))
				return TC_ACT_SHOT;
			ct_touch(ct, &p, 1, cfg, now);
			return weir_allow(skb, &p, &vc, WEIR_R_ALLOW_REPLY, 0);
		}
		if (ct && !reply && ct->ingress_ep == ep) {
			if (!ct_still_allowed(skb, &p, &k, ct, cfg, gen))
				return TC_ACT_SHOT;
			ct_touch(ct, &p, 0, cfg, now);
			return weir_allow(skb, &p, &vc, WEIR_R_ALLOW_ESTABLISHED, 0);
		}
	}

	const struct weir_ipcache_value *src = ipcache_lookup(p.saddr);
	vc.peer_identity = src ? src->identity : WEIR_ID_WORLD;
	if (vc.peer_identity == WEIR_ID_HOST)
		return weir_allow(skb, &p, &vc, WEIR_R_ALLOW_HOST, 0);
	if (p.icmp == ICMP_K_ERROR && ct_related(skb, &p, ep, 1, now))
		return weir_allow(skb, &p, &vc, WEIR_R_ALLOW_RELATED, 0);

	reason = endpoint_gate(e);
	if (reason)
		return verdict(skb, &p, &vc, reason, 0);

	if (src && src->endpoint) {
		/* A pod of this node: its egress was deferred to here. */
		__u32 sep = src->endpoint;
		const struct weir_endpoint *se = endpoint_lookup(sep);
		struct verdict_ctx svc = {
			.endpoint = sep,
			.direction = WEIR_DIR_EGRESS,
			.peer_identity = e->identity,
		};
		/* The flow's one event (the ingress side's) logs the source's
		 * namespace asking too. */
		if (se && (se->flags & WEIR_EP_LOG_ALLOW))
			vc.log_allow = 1;
		reason = judge(sep, se, WEIR_DIR_EGRESS, p.daddr, e->identity,
			       p.proto, policy_port(&p), p.frag == FRAG_LATER, &rule);
		svc.rule = rule;
		if (WEIR_REASON_IS_DROP(reason))
			return weir_drop(skb, &p, &svc, reason);
		weir_count(skb, sep, WEIR_DIR_EGRESS, reason);
		egress_rule = rule;
		/* An audit would-be drop of the source's: the flow's one event
		 * (the ingress side's) says so. */
		p.source_audit = reason == WEIR_R_ALLOW_AUDIT;
		egress_ep = sep;
	}

	reason = judge(ep, e, WEIR_DIR_INGRESS, p.saddr, vc.peer_identity, p.proto, policy_port(&p),
		       p.frag == FRAG_LATER, &rule);
	vc.rule = rule;
	if (WEIR_REASON_IS_DROP(reason))
		return weir_drop(skb, &p, &vc, reason);
	/* The clock read again rather than kept: one value less to keep across
	 * the judgements holds to_pod's frame at 384 bytes. Kernels before 6.9
	 * round each frame up to 32 bytes, and with judge_side's 112 (128) a
	 * call chain must stay within the verifier's 512. */
	if (tracked && ct_create(&p, egress_ep, ep, rule, 0, gen, ct_now()))
		return weir_drop(skb, &p, &vc, WEIR_R_DROP_CT_FULL);
	/* The source's rule, counted once the flow passes. */
	if (egress_rule)
		weir_count_rule(egress_rule, skb->len);
	return weir_allow(skb, &p, &vc, reason, 1);
}

/*
 * leave_node: tc egress of the device traffic to other nodes leaves by
 * (the VXLAN device, or the underlay interface with host-gw). It runs after
 * the node's netfilter, so a Service packet carries the backend kube-proxy
 * chose. from_pod deferred Service traffic to the destination's to_pod,
 * which for a backend on another node is never reached: here the source
 * pod's egress is judged against that backend, and the flow's S->VIP
 * entry linked to it, so that re-judging can cut the replies that come
 * back from the VIP. Flows judged already (to a
 * remote pod directly, at from_pod) pass on their conntrack entry, or with
 * no lookup at all when from_pod has just passed the very packet
 * (handoff.h); the S->VIP entries from_pod keeps for replies do not; packets
 * that are not a local pod's (the node's own, VXLAN's outer packets, other
 * protocols) are not Weir's to judge and pass untouched.
 */
SEC("classifier/leave_node")
int leave_node(struct __sk_buff *skb)
{
	struct pkt p WEIR_WORDS = {};
	struct weir_ethhdr eth WEIR_WORDS;
	struct weir_ct_key k WEIR_WORDS;
	struct weir_ct_value *ct = 0;
	__u32 rule = 0;
	__u8 reason;

	if (parse_packet(skb, &p, &eth) != PARSE_OK || p.icmp == ICMP_K_ND ||
	    (p.icmp == ICMP_K_MLD && link_scope_multicast(p.daddr)))
		return TC_ACT_UNSPEC;
	/* from_pod just passed it on its conntrack entry (handoff.h). */
	if (handoff_holds(&p))
		return TC_ACT_UNSPEC;
	const struct weir_ipcache_value *src = ipcache_lookup(p.saddr);
	if (!src || !src->endpoint)
		return TC_ACT_UNSPEC;
	__u32 sep = src->endpoint;
	struct verdict_ctx vc = { .endpoint = sep, .direction = WEIR_DIR_EGRESS };

	__u64 now = ct_now();
	int tracked = ct_tracked(&p);
	const struct weir_config *cfg = weir_cfg();
	__u32 gen = policy_gen_at_start(cfg);
	if (tracked) {
		int reply = ct_is_reply_lookup(&p, &k, &ct, now);
		/* A SERVICE entry was never judged: from_pod recorded S->VIP only
		 * for the un-DNATed reply. A packet that leaves still addressed to
		 * the VIP is judged here like any other. */
		if (ct && !reply && ct->egress_ep == sep && !(ct->flags & WEIR_CT_SERVICE)) {
			if (!ct_still_allowed(skb, &p, &k, ct, cfg, gen))
				return TC_ACT_SHOT;
			/* A new connection to the same backend: its VIP entry,
			 * opened afresh, links here again. */
			if (ct_touch(ct, &p, 0, cfg, now))
				service_link(&p, sep, now);
			return TC_ACT_UNSPEC;
		}
		if (ct && reply && ct->ingress_ep == sep)
			return ct_still_allowed(skb, &p, &k, ct, cfg, gen) ? TC_ACT_UNSPEC : TC_ACT_SHOT;
	}

	const struct weir_ipcache_value *dst = ipcache_lookup(p.daddr);
	vc.peer_identity = dst ? dst->identity : WEIR_ID_WORLD;
	if (p.icmp == ICMP_K_ERROR && ct_related(skb, &p, sep, 0, now))
		return weir_allow(skb, &p, &vc, WEIR_R_ALLOW_RELATED, 0);
	const struct weir_endpoint *se = endpoint_lookup(sep);
	vc.log_allow = se && (se->flags & WEIR_EP_LOG_ALLOW);
	reason = judge(sep, se, WEIR_DIR_EGRESS, p.daddr, vc.peer_identity, p.proto,
		       policy_port(&p), p.frag == FRAG_LATER, &rule);
	vc.rule = rule;
	if (WEIR_REASON_IS_DROP(reason))
		return weir_drop(skb, &p, &vc, reason);
	if (tracked) {
		if (ct_create(&p, sep, 0, rule, 0, gen, now))
			return weir_drop(skb, &p, &vc, WEIR_R_DROP_CT_FULL);
		/* A Service flow's first packet: its SERVICE entry learns the backend. */
		service_link(&p, sep, now);
	}
	return weir_allow(skb, &p, &vc, reason, 1);
}

/* No GPL-only helper is used. */
char LICENSE[] SEC("license") = "Apache-2.0";
