/* SPDX-License-Identifier: Apache-2.0 */
/*
 * "Judge endpoint X in direction D against peer P (address, identity) for
 * protocol/port": the one policy decision, shared by both hooks.
 *
 * Lookups, all full-length LPM lookups whose prefix-length wildcards
 * (weir_abi.h) give port ranges and "any port/protocol" for free, each
 * preceded by the exact-match hash that holds single-port rules:
 *   1. (X, P.identity, D, proto, port)
 *   2. (X, ANY, D, proto, port)
 *   3. cidr (X, D, P.address) -> class identity C, then (X, C, D, proto, port)
 * Cost is bounded and independent of the number of rules.
 */
#ifndef WEIR_POLICY_H
#define WEIR_POLICY_H

#include "weir_abi.h"
#include "maps.h"
#include "parse.h"

static __always_inline const struct weir_policy_value *
policy_lookup(__u32 ep, __u32 identity, __u8 dir, __u8 proto, __be16 port)
{
	struct weir_policy_key k = {
		.prefixlen = 96,
		.endpoint = ep,
		.identity = identity,
		.direction = dir,
		.protocol = proto,
		.port = port,
	};
	const struct weir_policy_value *v = bpf_map_lookup_elem(&weir_policy_exact, &k);
	if (!v)
		v = bpf_map_lookup_elem(&weir_policy, &k);
	if (v && v->verdict == WEIR_VERDICT_ALLOW)
		return v;
	return 0;
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
	const struct weir_policy_value *v;
	__u8 gate = endpoint_gate(e);

	*rule = 0;
	if (gate)
		return gate;
	if (!(e->flags & (dir == WEIR_DIR_INGRESS ? WEIR_EP_INGRESS_ISOLATED
						  : WEIR_EP_EGRESS_ISOLATED)))
		return WEIR_R_ALLOW_UNISOLATED;

	v = policy_lookup(ep, peer_identity, dir, proto, port);
	if (!v)
		v = policy_lookup(ep, WEIR_ID_ANY, dir, proto, port);
	if (!v) {
		struct weir_cidr_key ck = {
			.prefixlen = 192,
			.endpoint = ep,
			.direction = dir,
		};
		__builtin_memcpy(ck.addr, peer_addr, 16);
		const struct weir_cidr_value *c = bpf_map_lookup_elem(&weir_cidr, &ck);
		if (c)
			v = policy_lookup(ep, c->identity, dir, proto, port);
	}
	if (v) {
		*rule = v->rule;
		return WEIR_R_ALLOW_POLICY;
	}
	return later_fragment ? WEIR_R_DROP_FRAGMENT : WEIR_R_DROP_POLICY;
}

#endif
