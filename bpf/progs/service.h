/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Which backend a Service flow's SERVICE entry stands for, when that
 * backend is on another node (weir_abi.h, "Service flows to a backend on
 * another node"). from_pod records the VIP a source port opens;
 * leave_node, creating the judged entry for the same packet after DNAT,
 * links the SERVICE entry to the backend; re-judging (rejudge.h) judges
 * the SERVICE entry against it. Both writers are out of line: from_pod's
 * runs when a SERVICE entry starts a flow, leave_node's when it creates an
 * entry (or a TCP connection reuses a closed one).
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
 * flight (from_pod and leave_node run back to back for one packet, or
 * as soon as the next hop's neighbour entry resolves). */
static __always_inline int service_open_fresh(const struct weir_service_open *o, __u64 now)
{
	return now - o->opened_ns < WEIR_SERVICE_OPEN_WINDOW_NS;
}

/*
 * from_pod: p (a pod's packet to a VIP) starts a flow on SERVICE entry k:
 * a new entry, or a new TCP connection on a closed one (reused: its entry
 * v). Whatever backend k was linked to belongs to an earlier flow, whose
 * verdict and revocation do not carry over either: the entry is restamped
 * (it holds no verdict of its own; the new flow is judged after DNAT). The
 * VIP is recorded for leave_node. A different VIP opened from the same
 * source port within the window makes the record ambiguous: neither is
 * linked.
 */
static __noinline void service_open(const struct pkt *p, const struct weir_ct_key *k,
				    struct weir_ct_value *reused, __u32 gen, __u64 now)
{
	struct weir_service_open_key ok;
	struct weir_service_open o = { .opened_ns = now, .vport = p->dport };
	const struct weir_service_open *was;

	if (is_icmp(p->proto))
		return; /* Services carry TCP, UDP and SCTP */
	bpf_map_delete_elem(&weir_service_backends, k);
	if (reused) {
		reused->policy_gen = gen;
		reused->flags &= ~WEIR_CT_REVOKED;
	}
	service_open_key(p, &ok);
	__builtin_memcpy(o.vaddr, p->daddr, 16);
	was = bpf_map_lookup_elem(&weir_service_opens, &ok);
	if (was && service_open_fresh(was, now) &&
	    ((was->flags & WEIR_SERVICE_OPEN_AMBIGUOUS) || was->vport != o.vport ||
	     addr_cmp(was->vaddr, o.vaddr)))
		o.flags = WEIR_SERVICE_OPEN_AMBIGUOUS;
	bpf_map_update_elem(&weir_service_opens, &ok, &o, BPF_ANY);
}

/*
 * leave_node: p, local endpoint sep's packet after DNAT, created a judged
 * entry (or reopened a closed one). When from_pod just recorded that this
 * source port opened a VIP, p is that flow's first packet and its
 * destination the backend: link the VIP's SERVICE entry to it.
 */
static __noinline void service_link(const struct pkt *p, __u32 sep, __u64 now)
{
	struct weir_service_open_key ok;
	struct weir_service_backend b = { .bport = p->dport };
	struct weir_ct_key sk WEIR_WORDS;
	const struct weir_service_open *o;
	const struct weir_ct_value *svc;

	service_open_key(p, &ok);
	o = bpf_map_lookup_elem(&weir_service_opens, &ok);
	if (!o || (o->flags & WEIR_SERVICE_OPEN_AMBIGUOUS) || !service_open_fresh(o, now))
		return;
	ct_key(p->saddr, p->sport, o->vaddr, o->vport, p->proto, &sk);
	/* o is not read past this point */
	bpf_map_delete_elem(&weir_service_opens, &ok);
	svc = ct_lookup(&sk, now);
	if (!svc || !(svc->flags & WEIR_CT_SERVICE) || svc->egress_ep != sep)
		return;
	__builtin_memcpy(b.baddr, p->daddr, 16);
	bpf_map_update_elem(&weir_service_backends, &sk, &b, BPF_ANY);
}

/* The backend SERVICE entry k was linked to, or NULL. */
static __always_inline const struct weir_service_backend *service_backend(const struct weir_ct_key *k)
{
	return bpf_map_lookup_elem(&weir_service_backends, k);
}

#endif
