/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Which backend a Service flow's SERVICE entry stands for, when that
 * backend is on another node (weir_abi.h, "Service flows to a backend on
 * another node"). from_pod records the VIP a source port opened;
 * leave_node, judging the same packet after DNAT, links the SERVICE entry
 * to the backend; re-judging (rejudge.h) judges the SERVICE entry against
 * it. Both writers are out of line and run on a flow's first packet only.
 */
#ifndef WEIR_SERVICE_H
#define WEIR_SERVICE_H

#include "weir_abi.h"
#include "maps.h"
#include "parse.h"
#include "conntrack.h"

static __always_inline void service_open_key(const struct pkt *p, struct weir_service_open_key *ok)
{
	__builtin_memcpy(ok->saddr, p->saddr, 16);
	ok->sport = p->sport;
	ok->protocol = p->proto;
	ok->pad = 0;
}

/* Whether record o, read at now, is still the open of the packet in
 * flight (from_pod and leave_node run back to back for one packet). */
static __always_inline int service_open_fresh(const struct weir_service_open *o, __u64 now)
{
	return now - o->opened_ns < WEIR_SERVICE_OPEN_WINDOW_NS;
}

/*
 * from_pod: p (a pod's packet to a VIP) starts a new flow on SERVICE entry
 * k. Whatever backend k was linked to belongs to an earlier flow; the VIP
 * is recorded for leave_node. A different VIP opened from the same source
 * port within the window makes the record ambiguous: neither is linked.
 */
static __noinline int service_open(const struct pkt *p, const struct weir_ct_key *k, __u64 now)
{
	struct weir_service_open_key ok;
	struct weir_service_open o = { .opened_ns = now, .vport = p->dport };
	const struct weir_service_open *was;

	if (is_icmp(p->proto))
		return 0; /* Services carry TCP, UDP and SCTP */
	bpf_map_delete_elem(&weir_service_backends, k);
	service_open_key(p, &ok);
	__builtin_memcpy(o.vaddr, p->daddr, 16);
	was = bpf_map_lookup_elem(&weir_service_opens, &ok);
	if (was && service_open_fresh(was, now) &&
	    ((was->flags & WEIR_SERVICE_OPEN_AMBIGUOUS) || was->vport != o.vport ||
	     addr_cmp(was->vaddr, o.vaddr)))
		o.flags = WEIR_SERVICE_OPEN_AMBIGUOUS;
	bpf_map_update_elem(&weir_service_opens, &ok, &o, BPF_ANY);
	return 0;
}

/*
 * leave_node: p, local endpoint sep's packet after DNAT, was judged and
 * its entry created. When from_pod just recorded that this source port
 * opened a VIP, p is that flow's first packet and its destination the
 * backend: link the VIP's SERVICE entry to it.
 */
static __noinline int service_link(const struct pkt *p, __u32 sep, __u64 now)
{
	struct weir_service_open_key ok;
	struct weir_service_backend b = { .bport = p->dport };
	struct weir_ct_key sk;
	const struct weir_service_open *o;
	const struct weir_ct_value *svc;

	service_open_key(p, &ok);
	o = bpf_map_lookup_elem(&weir_service_opens, &ok);
	if (!o || (o->flags & WEIR_SERVICE_OPEN_AMBIGUOUS) || !service_open_fresh(o, now))
		return 0;
	ct_key(p->saddr, p->sport, o->vaddr, o->vport, p->proto, &sk);
	bpf_map_delete_elem(&weir_service_opens, &ok);
	svc = ct_lookup(&sk, now);
	if (!svc || !(svc->flags & WEIR_CT_SERVICE) || svc->egress_ep != sep)
		return 0;
	__builtin_memcpy(b.baddr, p->daddr, 16);
	bpf_map_update_elem(&weir_service_backends, &sk, &b, BPF_ANY);
	return 0;
}

/* The backend SERVICE entry k was linked to, or NULL. */
static __always_inline const struct weir_service_backend *service_backend(const struct weir_ct_key *k)
{
	return bpf_map_lookup_elem(&weir_service_backends, k);
}

#endif
