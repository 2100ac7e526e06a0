// SPDX-License-Identifier: GPL-2.0
/* hpcmig's virtual-network fast path: tc ingress programs (see hpcmig/network/fastpath.py).
 *
 * hpcmig_ctr runs on the host side of every container's veth, hpcmig_link on the node's
 * uplinks. Neither writes to the packet: a TCP segment's headers are shared with the copy
 * in its socket's retransmission queue, and a write would make the kernel copy them first.
 * So no TTL decrement (the kernel still forwards what goes from one uplink to another) and
 * no MAC rewrite (into a container, bpf_redirect_peer marks the packet as the host's; out of
 * an uplink, bpf_redirect_neigh writes the next hop's MAC into the free headroom).
 *
 * hpcmig_l2_out and hpcmig_l2_in guard the L2 data path (hpcmig/network/l2.py): tc egress
 * and ingress of a container's macvlan, in its netns.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define PORT_CONTAINER 1 /* the host side of a container's veth */
#define PORT_UPLINK 2    /* the node's link towards the other nodes */
#define ROUTE_USES 1024 /* a cached decision is taken again after this many packets */
#define ROUTE_BITS 11 /* 2048 decisions cached per CPU */

struct block_key { __u32 prefixlen; __u32 addr; };
struct pair { __u32 src; __u32 dst; };
struct count { __u64 bytes; __u64 packets; };
struct route { __u64 gen; __u32 src, dst, ifindex, kind, nexthop, uses; };

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

/* Per CPU, slot of hash(source, destination) -> that pair and the decision of the lookups
 * below (one job, the FIB's port and next hop). Valid while its gen is hpcmig_gen's, which
 * the agent changes after every change of a route, a link, a job block or a port, and for
 * ROUTE_USES packets at most (a route someone else changed applies from then on). An array
 * slot is found without a helper call (a hash map's lookup cost 3x as much here), and one
 * CPU's slots are only ever written by that CPU's programs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1 << ROUTE_BITS);
	__type(key, __u32);
	__type(value, struct route);
} hpcmig_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} hpcmig_gen SEC(".maps");

/* The L2 data path's hold during a move: a container's data MAC (its 6 bytes, then two zero
 * bytes) -> the node's hold device and the MAC its other end answers to. */
struct held { __u32 ifindex; __u8 mac[ETH_ALEN]; __u16 pad; };
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct held);
} hpcmig_held SEC(".maps");

/* The decision for this packet, looked up afresh (and cached) unless cached and valid;
 * NULL: not ours, the kernel's forwarding and the nft table decide. */
static __always_inline struct route *decide(struct __sk_buff *skb, struct iphdr *ip)
{
	/* Fibonacci hashing: the top bits of the product depend on every bit of the pair */
	__u32 slot = ((ip->saddr ^ (ip->daddr << 16 | ip->daddr >> 16)) * 0x9E3779B1u) >>
		     (32 - ROUTE_BITS);
	struct block_key k = { 32, ip->saddr };
	struct bpf_fib_lookup fib = {};
	__u32 zero = 0, *sb, *db, *to;
	struct route *r;
	__u64 *gen;
	long rc;

	gen = bpf_map_lookup_elem(&hpcmig_gen, &zero);
	r = bpf_map_lookup_elem(&hpcmig_routes, &slot);
	if (!gen || !r)
		return NULL;
	if (r->src == ip->saddr && r->dst == ip->daddr && r->gen == *gen && *gen &&
	    ++r->uses < ROUTE_USES) /* generation 0: nothing cached yet, the slots are zero */
		return r;
	sb = bpf_map_lookup_elem(&hpcmig_jobs, &k);
	k.addr = ip->daddr;
	db = bpf_map_lookup_elem(&hpcmig_jobs, &k);
	if (!sb || !db || sb[0] != db[0] || sb[1] != db[1])
		return NULL; /* not within one allowed job */
	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = ip->protocol;
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return NULL; /* no route, a blackhole during a move */
	to = bpf_map_lookup_elem(&hpcmig_ports, &fib.ifindex);
	if (!to)
		return NULL; /* a held address during a move, another device */
	r->gen = *gen;
	r->src = ip->saddr;
	r->dst = ip->daddr;
	r->ifindex = fib.ifindex;
	r->kind = *to;
	r->nexthop = fib.ipv4_dst; /* the gateway where the route has one */
	r->uses = 0;
	return r;
}

/* A frame for a macvlan (not this node's MAC) on an uplink: if it is for a container that is
 * moving away (hpcmig_held), into the node's hold, addressed to its other end, whose IP
 * forwarding takes it on as the routed hold's packets (hpcmig/network/l2.py). */
static __always_inline int hold_frame(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct held *h;
	__u64 key = 0;

	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	__builtin_memcpy(&key, eth->h_dest, ETH_ALEN);
	h = bpf_map_lookup_elem(&hpcmig_held, &key);
	if (!h)
		return TC_ACT_OK;
	if (bpf_skb_store_bytes(skb, 0, h->mac, ETH_ALEN, 0))
		return TC_ACT_SHOT;
	return bpf_redirect(h->ifindex, 0);
}

static __always_inline int forward(struct __sk_buff *skb, __u32 from)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct route *r;
	struct pair key;

	if (from == PORT_UPLINK && skb->pkt_type == PACKET_OTHERHOST)
		return hold_frame(skb); /* not to this node: a macvlan's (the L2 data path's) */
	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->ttl <= 1)
		return TC_ACT_OK;
	r = decide(skb, ip);
	if (!r || (from == PORT_UPLINK && r->kind == PORT_UPLINK))
		return TC_ACT_OK; /* passing through this node: the kernel decrements the TTL */
	if (from == PORT_CONTAINER) {
		key.src = ip->saddr;
		key.dst = ip->daddr;
		struct count *c = bpf_map_lookup_elem(&hpcmig_traffic, &key);
		if (c) {
			__sync_fetch_and_add(&c->bytes, skb->len - sizeof(*eth));
			__sync_fetch_and_add(&c->packets, 1);
		}
	}
	if (r->kind == PORT_CONTAINER)
		return bpf_redirect_peer(r->ifindex, 0);
	struct bpf_redir_neigh nh = { .nh_family = AF_INET, .ipv4_nh = r->nexthop };
	return bpf_redirect_neigh(r->ifindex, &nh, sizeof(nh), 0);
}

SEC("tc")
int hpcmig_ctr(struct __sk_buff *skb)
{
	return forward(skb, PORT_CONTAINER);
}

SEC("tc")
int hpcmig_link(struct __sk_buff *skb)
{
	return forward(skb, PORT_UPLINK);
}

/* Whether peer lies in the allowed job block of own (hpcmig_jobs holds the data blocks of
 * the L2 data path beside the routed blocks). */
static __always_inline int same_job(__u32 own, __u32 peer)
{
	struct block_key k = { 32, own };
	__u32 *b = bpf_map_lookup_elem(&hpcmig_jobs, &k);
	__u32 mask;

	if (!b || b[1] == 0 || b[1] > 32)
		return 0;
	mask = bpf_htonl(0xffffffffu << (32 - b[1]));
	return (peer & mask) == b[0];
}

struct arp_ipv4 { /* an Ethernet ARP frame's body for IPv4 */
	__be16 htype, ptype;
	__u8 hlen, plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__be32 spa;
	__u8 tha[ETH_ALEN];
	__be32 tpa;
} __attribute__((packed));

/* An IPv4 packet or ARP frame between two addresses of one allowed job passes, anything
 * else is dropped. own: the container's address (source going out, destination coming in).
 * What leaves is counted by its pair of data addresses where that pair is registered. */
static __always_inline int guard(struct __sk_buff *skb, int out)
{
	const __u32 need = sizeof(struct ethhdr) + sizeof(struct arp_ipv4); /* > an IPv4 header */
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if (data + need > end && skb->len >= need) {
		bpf_skb_pull_data(skb, need);
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		eth = data;
	}
	if ((void *)(eth + 1) > end)
		return TC_ACT_SHOT;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return TC_ACT_SHOT;
		if (!(out ? same_job(ip->saddr, ip->daddr) : same_job(ip->daddr, ip->saddr)))
			return TC_ACT_SHOT;
		if (out) { /* counted where it leaves its container, as on the routed path */
			struct pair key = { ip->saddr, ip->daddr };
			struct count *c = bpf_map_lookup_elem(&hpcmig_traffic, &key);

			if (c) {
				__sync_fetch_and_add(&c->bytes, skb->len - sizeof(*eth));
				__sync_fetch_and_add(&c->packets, 1);
			}
		}
		return TC_ACT_OK;
	}
	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		struct arp_ipv4 *a = (void *)(eth + 1);

		if ((void *)(a + 1) > end || a->ptype != bpf_htons(ETH_P_IP) || a->plen != 4)
			return TC_ACT_SHOT;
		if (out ? same_job(a->spa, a->tpa) : same_job(a->tpa, a->spa))
			return TC_ACT_OK;
	}
	return TC_ACT_SHOT;
}

SEC("tc")
int hpcmig_l2_out(struct __sk_buff *skb)
{
	return guard(skb, 1);
}

SEC("tc")
int hpcmig_l2_in(struct __sk_buff *skb)
{
	return guard(skb, 0);
}

char LICENSE[] SEC("license") = "GPL";
