/* SPDX-License-Identifier: Apache-2.0 */
/*
 * from_pod -> leave_node, per CPU: the packet from_pod just passed on its
 * conntrack entry alone, so leave_node need not look the same flow up
 * again when that packet reaches the node's device.
 *
 * A pod's packet bound for another node meets both hooks in one softirq
 * on one CPU: from_pod on the host veth's ingress, then the bridge,
 * netfilter and routing, then leave_node on the device's egress. For a
 * flow already judged (to a remote pod or the world, or a reply to a
 * remote peer) leave_node's lookups would find the entry from_pod just
 * checked and pass the packet: one ipcache and one conntrack lookup, about
 * a quarter of the programs' cost on the packet's whole path.
 *
 * from_pod records the packet's tuple, as parsed, with the policy
 * generation it checked the entry against and the coarse clock. leave_node
 * passes a packet only when all of it is equal: the same tuple in the same
 * direction (so a packet that netfilter rewrote in between, DNAT to a
 * Service's backend above all, is judged as before), under the same
 * generation (a policy change in between re-judges), within the same clock
 * tick (an old record stands for nothing). Anything else, a packet queued
 * and sent later from another CPU included, takes leave_node's full path.
 *
 * Only entries of this endpoint alone are recorded (the flow has no other
 * local side, which from_pod refreshes), and never a SERVICE entry: a packet
 * that leaves still addressed to the VIP is leave_node's to judge.
 *
 * The map is the programs' own: not pinned, created with each load of the
 * object and shared by its programs. A leave_node of another load (during
 * an upgrade) sees an empty slot and takes the full path.
 */
#ifndef WEIR_HANDOFF_H
#define WEIR_HANDOFF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "parse.h"
#include "addrs.h"
#include "events.h"
#include "conntrack.h"
#include "rejudge.h"

struct weir_handoff {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
	__u32 gen;   /* the policy generation the entry was checked under */
	__u32 pad2;
	__u64 at_ns; /* ct_now() when from_pod passed the packet */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct weir_handoff);
	__uint(max_entries, 1);
} weir_handoff SEC(".maps");

static __always_inline struct weir_handoff *handoff_slot(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&weir_handoff, &zero);
}

/* from_pod passed p on a conntrack entry of its endpoint alone. */
static __always_inline void handoff_record(const struct pkt *p, __u32 gen, __u64 now)
{
	struct weir_handoff *h = handoff_slot();
	if (!h)
		return;
	__builtin_memcpy(h->saddr, p->saddr, 16);
	__builtin_memcpy(h->daddr, p->daddr, 16);
	h->sport = p->sport;
	h->dport = p->dport;
	h->proto = p->proto;
	h->gen = gen;
	h->at_ns = now;
}

/* leave_node: p is the packet from_pod just passed, unchanged. The tuple
 * first: what is no pod's flow (the node's own traffic on a host-gw
 * uplink) costs no clock read. */
static __always_inline int handoff_holds(const struct pkt *p)
{
	const struct weir_handoff *h = handoff_slot();
	if (!h || h->sport != p->sport || h->dport != p->dport || h->proto != p->proto ||
	    !addr_eq(h->saddr, p->saddr) || !addr_eq(h->daddr, p->daddr))
		return 0;
	return h->gen == policy_gen_at_start(weir_cfg()) && h->at_ns == ct_now();
}

#endif
