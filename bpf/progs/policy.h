/* SPDX-License-Identifier: Apache-2.0 */
/*
 * "Judge endpoint X in direction D against peer P (address, identity) for
 * protocol/port": the one policy decision, shared by both hooks.
 *
 * Lookups, all full-length LPM lookups whose prefix-length wildcards
 * (weir_abi.h) give port ranges and "any port/protocol" for free, each
 * preceded by the exact-match hash that holds single-port rules:
 *   1. (X, P.identity, D, proto, port)
 *   2. (X, WEIR_PEER_WILDCARD(P.identity), D, proto, port): every pod, or
 *      every other peer
 *   3. cidr (X, D, P.address) -> class identity C, then (X, C, D, proto, port)
 * An endpoint that only NetworkPolicy selects stops at the first allow. One
 * that a ClusterNetworkPolicy selects (TIERED) folds all three, then reads
 * the tiers in order: Admin, NetworkPolicy, Baseline, default allow.
 * An endpoint only audit-mode policies isolate (AUDITED) is judged as if
 * nothing isolated it, and a flow its NetworkPolicy slot does not allow is
 * marked WEIR_R_ALLOW_AUDIT: what enforcing those policies would drop.
 * Cost is bounded and independent of the number of rules and policies.
 */
#ifndef WEIR_POLICY_H
#define WEIR_POLICY_H

#include "weir_abi.h"
#include "maps.h"
#include "parse.h"

static __always_inline const struct weir_policy_value *policy_lookup(const struct weir_policy_key *k)
{
	const struct weir_policy_value *v = bpf_map_lookup_elem(&weir_policy_exact, k);
	return v ? v : bpf_map_lookup_elem(&weir_policy, k);
}

/* The three lookups' answers folded into one: per tier the best rank, and
 * whether (and by which rule) NetworkPolicy allows. */
struct verdicts {
	struct weir_tier_verdict admin;
	struct weir_tier_verdict baseline;
	__u32 np_rule; /* 0: no NetworkPolicy rule allows */
};

static __always_inline void fold(struct verdicts *acc, const struct weir_policy_value *v)
{
	if (!v)
		return;
	if (v->verdict == WEIR_VERDICT_ALLOW && !acc->np_rule)
		acc->np_rule = v->rule;
	if (v->admin.rank < acc->admin.rank)
		acc->admin = v->admin;
	if (v->baseline.rank < acc->baseline.rank)
		acc->baseline = v->baseline;
}

/* The address's identity, WORLD when the ipcache knows nothing about it. */
static __always_inline const struct weir_ipcache_value *ipcache_lookup(const __u8 *addr)
{
	struct weir_ipcache_key k = { .prefixlen = 128 };
	__builtin_memcpy(k.addr, addr, 16);
	const struct weir_ipcache_value *v = bpf_map_lookup_elem(&weir_ipcache_exact, &k);
	return v ? v : bpf_map_lookup_elem(&weir_ipcache, &k);
}

static __always_inline const struct weir_endpoint *endpoint_lookup(__u32 ep)
{
	return bpf_map_lookup_elem(&weir_endpoints, &ep);
}

/* Readiness gate alone: 0 when the endpoint may be judged further, else
 * the verdict reason (a drop, or the fail-open allow). */
static __always_inline __u8 endpoint_gate(const struct weir_endpoint *e)
{
	if (!e)
		return WEIR_R_DROP_NO_ENDPOINT;
	if (!(e->flags & WEIR_EP_READY))
		return (e->flags & WEIR_EP_OPEN_UNTIL_READY) ? WEIR_R_ALLOW_OPEN_UNTIL_READY
							     : WEIR_R_DROP_NOT_READY;
	return 0;
}

/*
 * Returns the verdict reason (WEIR_REASON_IS_DROP tells which) and the rule
 * that allowed it in *rule. port is 0 for packets without ports.
 */
static __always_inline __u8 judge(__u32 ep, const struct weir_endpoint *e, __u8 dir,
				  const __u8 *peer_addr, __u32 peer_identity, __u8 proto,
				  __be16 port, int later_fragment, __u32 *rule)
{
	struct verdicts acc = {
		.admin = { .rank = WEIR_TIER_NONE },
		.baseline = { .rank = WEIR_TIER_NONE },
	};
	__u32 f; /* this direction's flags, as WEIR_EP_INGRESS_* bits */
	__u8 gate = endpoint_gate(e);

	*rule = 0;
	if (gate)
		return gate;
	/* One variable for the three flags: the stack is tight (see below). */
	f = dir == WEIR_DIR_INGRESS ? e->flags : e->flags >> WEIR_EP_EGRESS_SHIFT;
	if (!(f & (WEIR_EP_INGRESS_ISOLATED | WEIR_EP_INGRESS_TIERED | WEIR_EP_INGRESS_AUDITED)))
		return WEIR_R_ALLOW_UNISOLATED;
	/* One key for every lookup, the cidr one included: judge() is inlined
	 * twice where established flows are judged again, on top of the hook's
	 * own frame, and the stack holds 512 bytes in all. */
	union {
		struct weir_policy_key policy;
		struct weir_cidr_key cidr;
	} key = { .policy = {
		.prefixlen = 96,
		.endpoint = ep,
		.identity = peer_identity,
		.direction = dir,
		.protocol = proto,
		.port = port,
	} };
	fold(&acc, policy_lookup(&key.policy));
	/* NetworkPolicy alone: any allow decides, no need to look further
	 * (an audited endpoint's allow is an audit rule's: not a decision). */
	if (!(f & WEIR_EP_INGRESS_TIERED) && acc.np_rule)
		goto np_decided;
	key.policy.identity = WEIR_PEER_WILDCARD(peer_identity);
	fold(&acc, policy_lookup(&key.policy));
	if (!(f & WEIR_EP_INGRESS_TIERED) && acc.np_rule)
		goto np_decided;
	key.cidr = (struct weir_cidr_key){
		.prefixlen = 192,
		.endpoint = ep,
		.direction = dir,
	};
	__builtin_memcpy(key.cidr.addr, peer_addr, 16);
	const struct weir_cidr_value *c = bpf_map_lookup_elem(&weir_cidr, &key.cidr);
	if (c) {
		key.policy = (struct weir_policy_key){
			.prefixlen = 96,
			.endpoint = ep,
			.identity = c->identity,
			.direction = dir,
			.protocol = proto,
			.port = port,
		};
		fold(&acc, policy_lookup(&key.policy));
	}

	/* Admin tier: Accept and Deny decide; Pass (or nothing) goes on. */
	if (acc.admin.rank != WEIR_TIER_NONE && WEIR_TIER_ACTION(acc.admin.rank) != WEIR_TIER_PASS) {
		*rule = acc.admin.rule;
		return WEIR_TIER_ACTION(acc.admin.rank) == WEIR_TIER_ACCEPT ? WEIR_R_ALLOW_CLUSTER_POLICY
									     : WEIR_R_DROP_CLUSTER_POLICY;
	}
	/* NetworkPolicy tier: decides for an endpoint it isolates. */
	if (f & WEIR_EP_INGRESS_ISOLATED) {
		if (acc.np_rule)
			goto np_allow;
		return later_fragment ? WEIR_R_DROP_FRAGMENT : WEIR_R_DROP_POLICY;
	}
	/* Baseline tier; Pass (or nothing) leaves the default: allowed. */
	if (acc.baseline.rank != WEIR_TIER_NONE && WEIR_TIER_ACTION(acc.baseline.rank) != WEIR_TIER_PASS) {
		*rule = acc.baseline.rule;
		if (WEIR_TIER_ACTION(acc.baseline.rank) != WEIR_TIER_ACCEPT)
			return WEIR_R_DROP_CLUSTER_POLICY;
		if (!(f & WEIR_EP_INGRESS_AUDITED) || acc.np_rule)
			return WEIR_R_ALLOW_CLUSTER_POLICY;
	}
	/* Audit policies would have decided before Baseline, and none allows. */
	return (f & WEIR_EP_INGRESS_AUDITED) && !acc.np_rule ? WEIR_R_ALLOW_AUDIT : WEIR_R_ALLOW_UNISOLATED;
np_decided:
	if (!(f & WEIR_EP_INGRESS_ISOLATED))
		return WEIR_R_ALLOW_UNISOLATED; /* audited, and an audit rule allows */
np_allow:
	*rule = acc.np_rule;
	return WEIR_R_ALLOW_POLICY;
}

#endif
