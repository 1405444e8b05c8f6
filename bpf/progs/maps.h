/* SPDX-License-Identifier: Apache-2.0 */
/* The pinned maps. Layouts and capacities come from weir_abi.h only. */
#ifndef WEIR_MAPS_H
#define WEIR_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weir_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct weir_ipcache_key);
	__type(value, struct weir_ipcache_value);
	__uint(max_entries, WEIR_IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_ipcache SEC(".maps");

/* Full-length ipcache entries (see weir_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct weir_ipcache_key);
	__type(value, struct weir_ipcache_value);
	__uint(max_entries, WEIR_IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_ipcache_exact SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct weir_endpoint);
	__uint(max_entries, WEIR_ENDPOINTS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct weir_policy_key);
	__type(value, struct weir_policy_value);
	__uint(max_entries, WEIR_POLICY_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_policy SEC(".maps");

/* Full-length policy keys (see weir_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct weir_policy_key);
	__type(value, struct weir_policy_value);
	__uint(max_entries, WEIR_POLICY_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_policy_exact SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct weir_cidr_key);
	__type(value, struct weir_cidr_value);
	__uint(max_entries, WEIR_CIDR_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_cidr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct weir_ct_key);
	__type(value, struct weir_ct_value);
	__uint(max_entries, WEIR_CT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_ct SEC(".maps");

/* Service flows to another node's backend (see weir_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct weir_service_open_key);
	__type(value, struct weir_service_open);
	__uint(max_entries, WEIR_SERVICE_OPENS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_service_opens SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct weir_ct_key);
	__type(value, struct weir_service_backend);
	__uint(max_entries, WEIR_SERVICE_BACKENDS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_service_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WEIR_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct weir_counter_key);
	__type(value, struct weir_counter_value);
	__uint(max_entries, WEIR_COUNTERS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, __u32); /* rule id */
	__type(value, struct weir_counter_value);
	__uint(max_entries, WEIR_RULE_COUNTERS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_rule_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct weir_event_budget);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_event_budget SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct weir_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_abi SEC(".maps");

#endif
