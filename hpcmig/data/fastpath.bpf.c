// SPDX-License-Identifier: GPL-2.0
/* hpcmig's virtual-network fast path: a tc ingress program (see hpcmig/network/fastpath.py). */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define PORT_CONTAINER 1 /* the host side of a container's veth */
#define PORT_UPLINK 2    /* the node's link towards the other nodes */

struct block_key { __u32 prefixlen; __u32 addr; };
struct pair { __u32 src; __u32 dst; };
struct count { __u64 bytes; __u64 packets; };

struct { /* address -> its job block {network, prefix length}, allowed blocks only */
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__type(key, struct block_key);
	__type(value, __u32[2]);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} hpcmig_jobs SEC(".maps");

struct { /* ifindex -> PORT_* */
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} hpcmig_ports SEC(".maps");

struct { /* counted pairs (source on this node) -> bytes, packets */
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pair);
	__type(value, struct count);
} hpcmig_traffic SEC(".maps");

SEC("tc")
int hpcmig_fast(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct bpf_fib_lookup fib = {};
	__u32 in = skb->ingress_ifindex, *from, *to, *sb, *db;
	struct block_key k = { 32, 0 };
	long rc;

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->ttl <= 1)
		return TC_ACT_OK;
	from = bpf_map_lookup_elem(&hpcmig_ports, &in);
	if (!from)
		return TC_ACT_OK;
	k.addr = ip->saddr;
	sb = bpf_map_lookup_elem(&hpcmig_jobs, &k);
	k.addr = ip->daddr;
	db = bpf_map_lookup_elem(&hpcmig_jobs, &k);
	if (!sb || !db || sb[0] != db[0] || sb[1] != db[1])
		return TC_ACT_OK; /* not within one allowed job: the forward path decides */
	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = ip->protocol;
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = in;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_OK;
	to = bpf_map_lookup_elem(&hpcmig_ports, &fib.ifindex);
	if (!to || (*to == PORT_CONTAINER && rc != BPF_FIB_LKUP_RET_SUCCESS))
		return TC_ACT_OK; /* a held or blackholed address, another device */
	if (*from == PORT_CONTAINER) {
		struct pair p = { ip->saddr, ip->daddr };
		struct count *c = bpf_map_lookup_elem(&hpcmig_traffic, &p);
		if (c) {
			__sync_fetch_and_add(&c->bytes, skb->len - sizeof(*eth));
			__sync_fetch_and_add(&c->packets, 1);
		}
	}
	/* forward like the kernel would: TTL - 1 */
	__u16 old = *(__u16 *)&ip->ttl;
	ip->ttl--;
	bpf_l3_csum_replace(skb, sizeof(*eth) + __builtin_offsetof(struct iphdr, check), old,
			    *(__u16 *)&ip->ttl, 2);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_SHOT;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	if (*to == PORT_CONTAINER)
		return bpf_redirect_peer(fib.ifindex, 0);
	return bpf_redirect(fib.ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
