/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every verdict is counted (per endpoint, direction and reason) and every
 * drop goes through weir_drop(), the one place that drops a packet: it
 * counts, emits an event (except for flooded frames not for the pod) and
 * returns the drop action. WEIR_CFG_EVENTS_OFF turns every event off. Allowed new flows
 * emit an event when WEIR_CFG_EVENTS_ALLOW is set or the endpoint judged
 * has WEIR_EP_LOG_ALLOW, and always when an audit policy would drop them
 * (WEIR_R_ALLOW_AUDIT). An event the ring has no room for is counted in
 * the WEIR_COUNT_EVENT_LOST slot.
 */
#ifndef WEIR_EVENTS_H
#define WEIR_EVENTS_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "weir_abi.h"
#include "maps.h"
#include "parse.h"

/* What a verdict is about: the endpoint judged, in which direction, against
 * which peer identity and (when allowed by a rule) which rule. */
struct verdict_ctx {
	__u32 endpoint;
	__u32 peer_identity;
	__u32 rule;
	__u8 direction;
	__u8 log_allow; /* an endpoint of the verdict has WEIR_EP_LOG_ALLOW */
	__u8 pad[2];
};

static __always_inline void weir_count(struct __sk_buff *skb, __u32 endpoint, __u8 direction,
				       __u8 reason)
{
	struct weir_counter_key k = {
		.endpoint = endpoint,
		.direction = direction,
		.reason = reason,
	};
	struct weir_counter_value *v = bpf_map_lookup_elem(&weir_counters, &k);
	if (v) {
		/* per-CPU value: no atomics needed */
		v->packets += 1;
		v->bytes += skb->len;
		return;
	}
	struct weir_counter_value init = { .packets = 1, .bytes = skb->len };
	bpf_map_update_elem(&weir_counters, &k, &init, BPF_NOEXIST);
}

/* Out of line (a BPF-to-BPF call): its key and value get a frame of their
 * own instead of growing the hooks', whose deepest chain is near the
 * verifier's 512 bytes. */
static __noinline void weir_count_rule(__u32 rule, __u32 len)
{
	struct weir_counter_value *v = bpf_map_lookup_elem(&weir_rule_counters, &rule);
	if (v) {
		v->packets += 1;
		v->bytes += len;
		return;
	}
	struct weir_counter_value init = { .packets = 1, .bytes = len };
	bpf_map_update_elem(&weir_rule_counters, &rule, &init, BPF_NOEXIST);
}

static __always_inline const struct weir_config *weir_cfg(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&weir_config, &zero);
}

/* Whether this CPU may emit one more event in the current window (see
 * struct weir_event_budget); counts the refusal when not. */
static __always_inline int event_budget_take(__u32 limit)
{
	__u32 zero = 0;
	struct weir_event_budget *b = bpf_map_lookup_elem(&weir_event_budget, &zero);
	if (!b)
		return 1;
	__u64 window = bpf_ktime_get_coarse_ns() >> 30;
	if (b->window != window) {
		b->window = window;
		b->used = 0;
	}
	if (b->used >= limit) {
		b->limited += 1;
		return 0;
	}
	b->used += 1;
	return 1;
}

static __always_inline void weir_emit(struct __sk_buff *skb, const struct pkt *p,
				      const struct verdict_ctx *vc, __u8 reason)
{
	const struct weir_config *cfg = weir_cfg();
	if (cfg && (cfg->flags & WEIR_CFG_EVENTS_OFF))
		return;
	if (cfg && cfg->events_per_s && !event_budget_take(cfg->events_per_s))
		return;
	struct weir_event *e = bpf_ringbuf_reserve(&weir_events, sizeof(*e), 0);
	if (!e) {
		/* ring full: the verdict's counter still counts the packet */
		weir_count(skb, vc->endpoint, vc->direction, WEIR_COUNT_EVENT_LOST);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->endpoint = vc->endpoint;
	e->peer_identity = vc->peer_identity;
	e->rule = vc->rule;
	__builtin_memcpy(e->saddr, p->saddr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	e->sport = p->sport;
	e->dport = p->dport;
	e->protocol = p->proto;
	e->direction = vc->direction;
	e->reason = reason;
	e->flags = p->source_audit ? WEIR_EVENT_SOURCE_AUDIT : 0;
	__builtin_memset(e->pad, 0, sizeof(e->pad));
	bpf_ringbuf_submit(e, 0);
}

/* The only way a packet is dropped. A frame the bridge flooded to every
 * port that is not for this pod (another pod's neighbour solicitation,
 * unknown unicast) is counted, not logged: every pod start floods some, and
 * it is no flow of the pod's. */
static __always_inline int weir_drop(struct __sk_buff *skb, const struct pkt *p,
				     const struct verdict_ctx *vc, __u8 reason)
{
	weir_count(skb, vc->endpoint, vc->direction, reason);
	if (vc->rule)
		weir_count_rule(vc->rule, skb->len);
	if (reason != WEIR_R_DROP_NOT_FOR_POD)
		weir_emit(skb, p, vc, reason);
	return TC_ACT_SHOT;
}

/*
 * Allowed: count, and for a newly judged flow optionally emit. Returns
 * TC_ACT_UNSPEC (TCX_NEXT) so that programs after ours still run.
 */
static __always_inline int weir_allow(struct __sk_buff *skb, const struct pkt *p,
				      const struct verdict_ctx *vc, __u8 reason, int new_flow)
{
	weir_count(skb, vc->endpoint, vc->direction, reason);
	if (new_flow && vc->rule)
		weir_count_rule(vc->rule, skb->len);
	if (new_flow) {
		const struct weir_config *cfg = weir_cfg();
		/* An audit policy's would-be drop is reported without asking (within the event budget). */
		if (reason == WEIR_R_ALLOW_AUDIT || p->source_audit || vc->log_allow ||
		    (cfg && (cfg->flags & WEIR_CFG_EVENTS_ALLOW)))
			weir_emit(skb, p, vc, reason);
	}
	return TC_ACT_UNSPEC;
}

#endif
