/* SPDX-License-Identifier: Apache-2.0 */
/*
 * weir_abi.h - the map ABI between Weir's tc programs and user space.
 *
 * This header is the single source of truth for every pinned map's key and
 * value layout and for every constant both sides must agree on. The Rust
 * mirrors (bpf/src/abi.rs) are checked against it mechanically by a test
 * that compiles layout assertions generated from the Rust side.
 *
 * Addresses: every address is 16 bytes. IPv4 is stored IPv4-mapped
 * (::ffff:a.b.c.d), so one map serves both families and an IPv4 prefix of
 * length n is an IPv6 prefix of length 96 + n.
 *
 * Endpoint ids are the ifindex of the pod's host-side veth: the program
 * attached there finds its own endpoint with skb->ifindex, with no lookup
 * table in between.
 *
 * Layout rule: no implicit padding anywhere. Every struct spells out its
 * padding so that user space can treat keys and values as plain bytes
 * (uninitialised padding in a hash key silently makes two equal keys
 * differ).
 */
#ifndef WEIR_ABI_H
#define WEIR_ABI_H

#include <linux/types.h>

/* Bumped on any incompatible layout change; user space refuses to reuse
 * pins written under another version (see the `abi` pinned array).
 * 4: weir_endpoint carries the pod's MAC and addresses.
 * 5: weir_ct_value carries the policy generation it was judged under;
 *    weir_config carries the current one.
 * 6: policy values carry Admin and Baseline tier verdicts.
 * 7: a peer wildcard is WEIR_ID_ANY_POD for pods, WEIR_ID_ANY for others.
 * A map added beside the others needs no bump: a loader creates the pins
 * it does not find, and programs of an older build never read them (7 grew
 * weir_service_opens and weir_service_backends). */
#define WEIR_ABI_VERSION 7

/* ---- abi: array of one __u32, WEIR_ABI_VERSION of the pins' writer ----- */
/* Written by user space last, once maps and programs are pinned (0: a load
 * that did not finish, redone by the next loader); every later process
 * compares it before touching any other pin. */

/* ---- identities ------------------------------------------------------- */
/* Peer wildcards of the policy map, never assigned: a policy key with
 * identity WEIR_ID_ANY_POD matches every pod (every label identity), one
 * with WEIR_ID_ANY every other peer. A rule for every peer is written
 * under both; one for every pod (namespaceSelector {} and no or an empty
 * podSelector) under WEIR_ID_ANY_POD alone, one entry per port block where
 * it would otherwise take one per identity (egress rules with named ports
 * stay per identity: the port is each peer's own). */
#define WEIR_ID_ANY 0
/* This node: its addresses and the bridge gateway. Always allowed. */
#define WEIR_ID_HOST 1
/* Anything the ipcache has no more specific entry for. */
#define WEIR_ID_WORLD 2
#define WEIR_ID_ANY_POD 3
/* Label identities (namespace + pod labels) start here. */
#define WEIR_ID_FIRST_LABEL 256
/* Per-endpoint ipBlock classes (see weir_cidr_key) start here. */
#define WEIR_ID_FIRST_CIDR (1u << 24)

/* ---- ipcache: LPM trie, address prefix -> identity --------------------- */
/*
 * Full-length entries (a pod's /32 or /128, nearly all of them) live in the
 * hash map weir_ipcache_exact with prefixlen 128; shorter prefixes in the
 * LPM trie weir_ipcache. A lookup tries the hash first, which gives the
 * trie's answer (a full-length entry is always the longest match) at the
 * cost of one hash lookup instead of a walk whose depth, and cache misses,
 * grow with the number of entries. weir_policy_exact does the same for
 * full-length policy keys (one protocol and port).
 */
struct weir_ipcache_key {
	__u32 prefixlen; /* over addr: 96 + n for an IPv4 /n */
	__u8 addr[16];
};

/* The address is a Service VIP: the verdict is taken after kube-proxy's
 * DNAT, at the backend's hook, never on the VIP. */
#define WEIR_IPCACHE_SERVICE (1u << 0)

struct weir_ipcache_value {
	__u32 identity;
	__u32 endpoint; /* host veth ifindex when the address is a pod on this node, else 0 */
	__u32 flags;    /* WEIR_IPCACHE_* */
	__u32 pad;
};

/* ---- endpoints: hash, host veth ifindex -> endpoint -------------------- */
#define WEIR_EP_READY (1u << 0)            /* policyd has programmed it */
#define WEIR_EP_INGRESS_ISOLATED (1u << 1) /* some policy selects it for ingress */
#define WEIR_EP_EGRESS_ISOLATED (1u << 2)  /* some policy selects it for egress */
#define WEIR_EP_OPEN_UNTIL_READY (1u << 3) /* configured fail-open before READY */
#define WEIR_EP_INGRESS_TIERED (1u << 4)   /* some ClusterNetworkPolicy has ingress rules for it */
#define WEIR_EP_EGRESS_TIERED (1u << 5)    /* some ClusterNetworkPolicy has egress rules for it */
/* Its namespace asks for allowed new flows in the flow log (annotation
 * weir.io/flow-log: allow): they emit an event as with WEIR_CFG_EVENTS_ALLOW. */
#define WEIR_EP_LOG_ALLOW (1u << 6)
/* Only NetworkPolicies in audit mode (annotation policy.weir.io/mode:
 * audit) isolate it in this direction. They isolate nothing: the policy map
 * carries their allows in the NetworkPolicy slot, and a new flow none of
 * them allows passes as WEIR_R_ALLOW_AUDIT (counted, and an event without asking),
 * unless a cluster tier decides it. Never set with the direction's
 * ISOLATED flag: an enforced policy's isolation makes audit ones moot, and
 * their allows are then left out of the map so they cannot widen it. */
#define WEIR_EP_INGRESS_AUDITED (1u << 7)
#define WEIR_EP_EGRESS_AUDITED (1u << 8)
/* Each EGRESS flag is its INGRESS twin shifted by this much: the programs
 * read one direction's flags as one value. */
#define WEIR_EP_EGRESS_SHIFT 1
_Static_assert(WEIR_EP_EGRESS_ISOLATED == WEIR_EP_INGRESS_ISOLATED << WEIR_EP_EGRESS_SHIFT, "isolated");
_Static_assert(WEIR_EP_EGRESS_TIERED == WEIR_EP_INGRESS_TIERED << WEIR_EP_EGRESS_SHIFT, "tiered");
_Static_assert(WEIR_EP_EGRESS_AUDITED == WEIR_EP_INGRESS_AUDITED << WEIR_EP_EGRESS_SHIFT, "audited");

/*
 * Two writers, one half each. CNI ADD writes the whole entry before it
 * attaches the programs: the pod interface's MAC and addresses, identity 0,
 * not READY. So from the first packet the programs know what the pod may
 * claim as its own (Ethernet source, ARP and ND, IP source) and what it
 * may receive. weir-policyd then sets identity, flags and revision by
 * read-modify-write, keeping ADD's half as it is.
 *
 * Addresses follow this header's rule (16 bytes, IPv4 IPv4-mapped); all
 * zero means none. A pod has at most one address per family, as a
 * Kubernetes Pod's podIPs, plus the IPv6 link-local address its kernel
 * derives from the MAC (modified EUI-64, RFC 4291 appendix A: Linux's
 * default addr_gen_mode), which it uses for neighbour discovery only.
 */
struct weir_endpoint {
	__u32 identity;
	__u32 flags;          /* WEIR_EP_* */
	__u64 revision;       /* policy revision programmed for this endpoint */
	__u8 mac[6];          /* the pod interface's MAC */
	__u8 ipv4_prefixlen;  /* of the pod's IPv4 subnet, whose broadcast it receives */
	__u8 pad;
	__u8 ipv4[16];        /* IPv4-mapped; all zero: none */
	__u8 ipv6[16];        /* all zero: none */
	__u8 ipv6_ll[16];     /* fe80::/64 from mac; all zero: none */
};

/* ---- policy: LPM trie, (endpoint, peer, direction, protocol, port) ----- */
/*
 * endpoint, identity and direction always match in full (the first
 * WEIR_POLICY_FIXED_BITS bits). Wildcards are prefix lengths:
 *   prefixlen == FIXED            any protocol, any port
 *   prefixlen == FIXED + 8        this protocol, any port
 *   prefixlen == FIXED + 8 + k    this protocol, ports sharing the top k bits
 * so a port range compiles to at most 30 aligned blocks and a lookup costs
 * the same whatever the number of rules. A peer wildcard is a second
 * lookup, under WEIR_PEER_WILDCARD of the peer's identity. Packets without
 * ports (ICMP, fragments after the first, unknown protocols) look up port
 * 0, which only a port wildcard matches: NetworkPolicy ports are 1..65535.
 */
/* The wildcard identity whose entries a peer of this identity matches: a
 * pod's (label identity) WEIR_ID_ANY_POD, anything else's WEIR_ID_ANY. */
#define WEIR_PEER_WILDCARD(identity)                                                                   \
	((identity) >= WEIR_ID_FIRST_LABEL && (identity) < WEIR_ID_FIRST_CIDR ? WEIR_ID_ANY_POD : WEIR_ID_ANY)
#define WEIR_DIR_INGRESS 0
#define WEIR_DIR_EGRESS 1
#define WEIR_POLICY_FIXED_BITS 72

struct weir_policy_key {
	__u32 prefixlen;
	__u32 endpoint;
	__u32 identity;
	__u8 direction; /* WEIR_DIR_* */
	__u8 protocol;  /* IPPROTO_* */
	__be16 port;    /* network order: prefixes are over its bits */
};

/*
 * A value holds what every rule covering its key says, one slot per tier
 * (policyd merges the rules of wider keys, "any port" or "any protocol",
 * into every narrower key of the same endpoint, peer and direction, since
 * the trie returns only the longest match):
 *   - NetworkPolicy: verdict ALLOW when some rule allows; rule names it.
 *   - Admin and Baseline (ClusterNetworkPolicy): the rule of highest
 *     precedence, as a rank (lower first) and its rule id.
 * The program takes the best rank of each tier over its three lookups
 * (peer identity, peer wildcard, ipBlock class), so the verdict still costs three
 * lookups whatever the number of policies in any tier.
 */
#define WEIR_VERDICT_ALLOW 1

/* Rank of a cluster rule within its tier: priority (0-1000) first, then the
 * rule's index in its policy (0-24), then the action, so that of two rules
 * of equal priority and index (two policies; the API lets either decide)
 * Deny wins. WEIR_TIER_NONE: no rule of the tier covers the key. */
#define WEIR_TIER_DENY 0
#define WEIR_TIER_PASS 1
#define WEIR_TIER_ACCEPT 2
#define WEIR_TIER_RANK(priority, index, action) (((priority) << 7) | ((index) << 2) | (action))
#define WEIR_TIER_ACTION(rank) ((rank) & 3)
#define WEIR_TIER_NONE 0xffffffffu

struct weir_tier_verdict {
	__u32 rank; /* WEIR_TIER_RANK(...) or WEIR_TIER_NONE */
	__u32 rule; /* rule id of that rule */
};

struct weir_policy_value {
	__u32 rule;    /* NetworkPolicy rule that allows (when verdict is ALLOW) */
	__u16 verdict; /* WEIR_VERDICT_ALLOW, or 0: no NetworkPolicy rule allows */
	__u16 pad;
	struct weir_tier_verdict admin;
	struct weir_tier_verdict baseline;
};

/* ---- ipBlock classes: LPM trie, (endpoint, direction, address) --------- */
/*
 * ipBlock peers match by address, pod addresses included, so they cannot
 * live in the global ipcache (a pod address already carries its label
 * identity). For every endpoint and direction policyd splits the ipBlocks
 * (with their except holes) into disjoint prefixes, each labelled with a
 * class identity >= WEIR_ID_FIRST_CIDR; the policy map then holds the ports
 * of each class like those of any other peer.
 */
#define WEIR_CIDR_FIXED_BITS 64

struct weir_cidr_key {
	__u32 prefixlen; /* 64 + address bits (96 + n for IPv4 /n) */
	__u32 endpoint;
	__u8 direction;
	__u8 pad[3];
	__u8 addr[16];
};

struct weir_cidr_value {
	__u32 identity; /* class identity, >= WEIR_ID_FIRST_CIDR */
};

/* ---- conntrack: LRU hash, the flow's two ends -> state ------------------ */
/* The two ends are stored in a fixed order, the lower (address, port) as
 * saddr/sport (addresses and ports compared as big-endian numbers), so
 * both directions of a flow share one entry; WEIR_CT_ORIG_SWAPPED says the
 * flow was opened from the daddr end.
 * ICMP echo: a request has sport = identifier, dport = 0; a reply sport = 0,
 * dport = identifier, so request and reply order to the same key and a
 * request can never pass as a reply. Policy sees port 0 for ICMP. */
struct weir_ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 protocol;
	__u8 pad[3];
};

#define WEIR_CT_SEEN_REPLY (1u << 0)
#define WEIR_CT_FIN_FWD (1u << 1)
#define WEIR_CT_FIN_REV (1u << 2)
#define WEIR_CT_RST (1u << 3)
#define WEIR_CT_SERVICE (1u << 4) /* egress to a VIP, judged after DNAT */
#define WEIR_CT_ORIG_SWAPPED (1u << 5) /* opened from the key's daddr end */
#define WEIR_CT_REVOKED (1u << 6) /* re-judged and refused: carries nothing (see below) */

/*
 * Who may use an entry: a packet sent by endpoint X matches an entry in the
 * flow's direction only when egress_ep == X (or, at the destination's to_pod,
 * ingress_ep == the destination), and in the reverse direction only when the
 * endpoint receiving it is the one that allowed the flow. A pod spoofing
 * another pod's address therefore never rides that pod's entries.
 * Only flows get entries: TCP, UDP, SCTP (first fragments included) and
 * ICMP/ICMPv6 echo. ICMP errors pass when the packet they quote matches an
 * entry of the receiving endpoint (RELATED); everything else is judged per
 * packet.
 */

/*
 * policy_gen: weir_config.policy_gen when the flow was last judged. A hit
 * whose stamp differs is judged again (both of its sides, with the tuple
 * as opened) unless WEIR_CFG_REJUDGE_OFF: still allowed, the stamp is
 * refreshed; refused, the packet is dropped (WEIR_R_DROP_POLICY_REVOKED)
 * and the entry marked WEIR_CT_REVOKED, which every later hit judges
 * again (a policy allowing the flow again revives it). The entry is kept
 * rather than deleted: without it the backend's replies of a Service flow
 * would miss at the backend's from_pod, be deferred, and reach the client
 * on its SERVICE entry. Equality only, so the counter may wrap.
 */
struct weir_ct_value {
	__u64 expires_ns;     /* CLOCK_MONOTONIC deadline (coarse clock) */
	__u32 egress_ep;      /* source endpoint whose egress allowed it, or 0 */
	__u32 ingress_ep;     /* destination endpoint whose ingress allowed it, or 0 */
	__u32 rule;           /* rule that allowed it (ingress rule when both) */
	__u32 flags;          /* WEIR_CT_* */
	__u32 policy_gen;     /* weir_config.policy_gen it was judged under */
	__u32 pad;
};

/* ---- Service flows to a backend on another node ------------------------ */
/*
 * A pod's flow to a Service VIP leaves two entries on its node: the SERVICE
 * entry (S -> VIP, no verdict) that the un-DNATed reply finds at to_pod(S),
 * and, when the backend is on another node, leave_node's judged entry
 * (S -> backend). Re-judging (rejudge.h) must judge the SERVICE entry
 * against that backend, or a revoked flow's replies would still pass on it.
 * Nothing in the reply names the backend, and nothing leave_node sees names
 * the VIP, so the two are linked on the flow's first packet:
 *
 * weir_service_opens (LRU hash): from_pod, when a SERVICE entry starts a
 *   flow (a new entry, or a new TCP connection on a closed one), records the
 *   VIP under the source's (address, port, protocol). leave_node, creating
 *   the judged entry for a packet of that source port (or reopening a
 *   closed one), takes the record if it is younger than
 *   WEIR_SERVICE_OPEN_WINDOW_NS (the hooks run back to back for one packet,
 *   or once the next hop's neighbour resolves) and links. A second VIP
 *   opened from the same source port within the window marks the record
 *   AMBIGUOUS: neither flow is linked.
 * weir_service_backends (LRU hash): a SERVICE entry's key -> the backend
 *   leave_node saw. Removed by from_pod when the entry starts a flow, and
 *   emptied whenever programs are replaced (an older build's programs
 *   neither write nor remove links); read only when a SERVICE entry is
 *   judged again, and then only while the backend's address is a pod's.
 *   An entry not linked (a backend on this node, judged at its own to_pod;
 *   an ambiguous open; a link evicted) is judged as before: its flow is cut
 *   where the backend entry is seen, and a remote backend's replies pass.
 */
struct weir_service_open_key {
	__u8 saddr[16];
	__be16 sport;
	__u8 protocol;
	__u8 pad;
};

#define WEIR_SERVICE_OPEN_AMBIGUOUS (1u << 0)

struct weir_service_open {
	__u64 opened_ns; /* conntrack clock when from_pod recorded it */
	__u8 vaddr[16];  /* the VIP and port the source opened */
	__be16 vport;
	__u8 flags;      /* WEIR_SERVICE_OPEN_* */
	__u8 pad[5];
};

struct weir_service_backend {
	__u8 baddr[16]; /* the backend kube-proxy chose, as leave_node saw it */
	__be16 bport;
	__u8 pad[2];
};

#define WEIR_SERVICE_OPEN_WINDOW_NS 200000000ull

/* ---- verdicts, events and counters ------------------------------------ */
enum weir_reason {
	WEIR_R_ALLOW_UNISOLATED = 1, /* no policy selects the endpoint in this direction */
	WEIR_R_ALLOW_POLICY = 2,
	WEIR_R_ALLOW_ESTABLISHED = 3,
	WEIR_R_ALLOW_REPLY = 4,
	WEIR_R_ALLOW_HOST = 5,     /* to or from this node */
	WEIR_R_ALLOW_DEFERRED = 6, /* judged later, after DNAT, at the destination */
	WEIR_R_ALLOW_NOT_IP = 7,   /* ARP (checked against the endpoint) and other non-IP frames */
	WEIR_R_ALLOW_ND = 8,       /* IPv6 neighbour discovery (checked against the endpoint) */
	WEIR_R_ALLOW_RELATED = 9,  /* ICMP error quoting a tracked flow of this endpoint */
	WEIR_R_ALLOW_OPEN_UNTIL_READY = 10, /* not yet programmed, configured fail-open */
	WEIR_R_ALLOW_CLUSTER_POLICY = 11,   /* an Admin or Baseline Accept rule (rule names it) */
	WEIR_R_ALLOW_AUDIT = 12, /* allowed, but the audit-mode policies isolating it would drop it */
	WEIR_R_ALLOW_MLD = 13,   /* IPv6 multicast listener discovery to a group (checked against the endpoint) */

	WEIR_R_DROP_POLICY = 64,     /* isolated and no rule allows it */
	WEIR_R_DROP_NOT_READY = 65,  /* endpoint not yet programmed */
	WEIR_R_DROP_MALFORMED = 66,  /* truncated or inconsistent headers */
	WEIR_R_DROP_FRAGMENT = 67,   /* a later fragment no port-wildcard rule allows */
	WEIR_R_DROP_NO_ENDPOINT = 68,/* program on a veth with no endpoint entry */
	WEIR_R_DROP_CT_FULL = 69,    /* conntrack insert failed: never pass untracked */
	WEIR_R_DROP_VLAN = 70,       /* 802.1Q/802.1ad frame: could hide an IP packet */
	WEIR_R_DROP_SPOOFED = 71,    /* source address is not the sending pod's own */
	WEIR_R_DROP_SPOOFED_MAC = 72,   /* Ethernet source or ARP/ND link-layer address is not the pod's MAC */
	WEIR_R_DROP_NEIGH_SPOOFED = 73, /* ARP or ND claiming an address that is not the pod's */
	WEIR_R_DROP_ROUTER_MSG = 74,    /* router advertisement or redirect sent by a pod */
	WEIR_R_DROP_NOT_FOR_POD = 75,   /* to_pod: addressed to neither the pod nor a group it takes */
	WEIR_R_DROP_POLICY_REVOKED = 76, /* established flow the current policy no longer allows */
	WEIR_R_DROP_CLUSTER_POLICY = 77, /* an Admin or Baseline Deny rule (rule names it) */
};
#define WEIR_REASON_MAX 128
#define WEIR_REASON_IS_DROP(r) ((r) >= 64)
/* Not a verdict: the counter slot (weir_counter_key.reason) of events the
 * ring had no room for, per endpoint and direction of the verdict. */
#define WEIR_COUNT_EVENT_LOST 127

struct weir_event {
	__u64 ts_ns;
	__u32 endpoint;
	__u32 peer_identity;
	__u32 rule;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 protocol;
	__u8 direction;
	__u8 reason; /* enum weir_reason */
	__u8 flags;  /* WEIR_EVENT_* */
	__u8 pad[4];
};
/* At to_pod, where one event stands for both sides of a local flow: the
 * source's egress (endpoint: the source address's) is an audit policy's
 * would-be drop too. */
#define WEIR_EVENT_SOURCE_AUDIT (1u << 0)

struct weir_counter_key {
	__u32 endpoint;
	__u8 direction;
	__u8 reason;
	__u16 pad;
};

struct weir_counter_value {
	__u64 packets;
	__u64 bytes;
};

/* ---- rule counters: per-CPU hash, rule id -> weir_counter_value ---------- */
/* The packets each rule decided: the first packet of every flow a rule
 * allowed (later ones ride conntrack and are not judged again) and every
 * packet a cluster Deny rule dropped. Keyed by the rule id the policy map
 * carries; policyd removes the ids of rules that are gone. Created by
 * whichever loader first runs programs that use it, so older roots gain it
 * on upgrade without a new ABI version. */

/* ---- runtime configuration: array of one --------------------------------- */
#define WEIR_CFG_EVENTS_ALLOW (1u << 0) /* also emit events for allowed new flows */
/* Established flows keep their verdict until their entry expires, whatever
 * the policy becomes (off: all-zero config re-judges). */
#define WEIR_CFG_REJUDGE_OFF (1u << 1)
/* No events at all (the flow log is off): verdicts are still counted. */
#define WEIR_CFG_EVENTS_OFF (1u << 2)

/*
 * policy_gen is not configuration: weir-policyd bumps it after every sync
 * that changed a map a verdict reads (policy, ipBlock classes, endpoints'
 * identity and isolation, ipcache), once that sync's removals are done, so
 * a flow judged while old allows still existed carries the old value.
 */
struct weir_config {
	__u32 flags;            /* WEIR_CFG_* */
	__u32 ct_tcp_timeout_s; /* established TCP idle timeout */
	__u32 ct_udp_timeout_s; /* UDP / SCTP / ICMP / other idle timeout */
	__u32 ct_syn_timeout_s; /* unanswered new flow and closing TCP timeout */
	__u32 policy_gen;       /* the policy generation now programmed */
	__u32 events_per_s;     /* per CPU and window of 2^30 ns; 0: no limit (see below) */
};

/* ---- event budget: per-CPU array of one -------------------------------- */
/* The flow log writes a few hundred lines a second; emitting every event of
 * a flood costs each drop a ring reservation and a 64-byte record (about a
 * third of a drop's time). So each CPU emits at most events_per_s events in
 * a window of 2^30 ns (the coarse clock's, about a second) and counts the
 * rest in `limited`, which user space reports: nothing is lost uncounted.
 * Created by the loader of programs that use it, like the rule counters. */
struct weir_event_budget {
	__u64 window;  /* coarse clock >> 30 of the current window */
	__u64 used;    /* events emitted in it */
	__u64 limited; /* events over the budget, ever */
};
/* A zero timeout means the default below (what an all-zero entry gives). */
#define WEIR_CT_TCP_TIMEOUT_DEFAULT_S 21600
#define WEIR_CT_UDP_TIMEOUT_DEFAULT_S 60
#define WEIR_CT_SYN_TIMEOUT_DEFAULT_S 60
/* Expiry is written back only when it moved by more than this: one write
 * per flow per second instead of one per packet. */
#define WEIR_CT_REFRESH_NS 1000000000ull

/* ---- map capacities ------------------------------------------------------ */
#define WEIR_IPCACHE_MAX 262144
#define WEIR_ENDPOINTS_MAX 65536
#define WEIR_POLICY_MAX 1048576
#define WEIR_CIDR_MAX 262144
#define WEIR_CT_MAX 262144
#define WEIR_EVENTS_BYTES (1u << 20)
#define WEIR_COUNTERS_MAX 65536
#define WEIR_RULE_COUNTERS_MAX 65536
#define WEIR_SERVICE_OPENS_MAX 16384
#define WEIR_SERVICE_BACKENDS_MAX 65536

/* ---- pinned names (under the bpffs root, default /sys/fs/bpf/weir) ----- */
#define WEIR_MAP_IPCACHE "weir_ipcache"
#define WEIR_MAP_IPCACHE_EXACT "weir_ipcache_exact"
#define WEIR_MAP_ENDPOINTS "weir_endpoints"
#define WEIR_MAP_POLICY "weir_policy"
#define WEIR_MAP_POLICY_EXACT "weir_policy_exact"
#define WEIR_MAP_CIDR "weir_cidr"
#define WEIR_MAP_CT "weir_ct"
#define WEIR_MAP_EVENTS "weir_events"
#define WEIR_MAP_COUNTERS "weir_counters"
#define WEIR_MAP_RULE_COUNTERS "weir_rule_counters"
#define WEIR_MAP_EVENT_BUDGET "weir_event_budget"
#define WEIR_MAP_CONFIG "weir_config"
#define WEIR_MAP_ABI "weir_abi"
#define WEIR_MAP_SERVICE_OPENS "weir_service_opens"
#define WEIR_MAP_SERVICE_BACKENDS "weir_service_backends"

/*
 * Other pins under the root:
 *   progs/{from_pod,to_pod,leave_node}  the loaded programs, so that a
 *                                  later process attaches the same program
 *   links/<ifindex>_from_pod       TCX links (tc ingress of the host veth)
 *   links/<ifindex>_to_pod         TCX links (tc egress of the host veth)
 *   node-links/<ifindex>_leave_node  TCX link (tc egress of the device to
 *                                  other nodes: VXLAN or the underlay)
 *   migrating-abi-<N>/             while weir-policyd carries pins of an
 *                                  older ABI over: the new set, staged
 * ifindexes are per network namespace: one root serves one node netns.
 */
#define WEIR_PROG_FROM_POD "from_pod"
#define WEIR_PROG_TO_POD "to_pod"
#define WEIR_PROG_LEAVE_NODE "leave_node"

#endif /* WEIR_ABI_H */
