/* SPDX-License-Identifier: Apache-2.0 */
/* The cheapest possible tc program: passes every packet. Attached on both
 * hooks of both host veths it measures what the hooks themselves cost, the
 * part of Weir's overhead that no program logic can remove. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("classifier")
int pass(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Apache-2.0";
