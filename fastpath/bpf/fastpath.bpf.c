// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* podswitch's kernel fast path: tc programs that execute what the switch has decided.
 *
 * `from_pod` runs at ingress of every pod's host-side veth. It forwards what the switch has
 * compiled into the maps (pod -> pod on this node, bpf_redirect_peer straight into the
 * destination's namespace) and hands everything else up to the switch unchanged, through the
 * pod's upcall device (a TAP whose descriptor the switch reads: the same port, GSO and partial
 * checksums included, as a TAP-mode pod). Nothing it does not understand is decided here.
 *
 * `to_pod` runs at ingress of every upcall device: what the switch writes there is delivered
 * into the pod.
 *
 * Invariants: a packet is forwarded only from the pod's own MAC and address (anti-spoofing
 * before any redirect), only to a destination in `pods`, only if well formed (IPv4 without
 * options, header checksum verified); a routed packet has its TTL decremented and its MACs
 * rewritten as the pipeline would (source the router, destination the pod). No program
 * returns TC_ACT_OK: a pod's packet never reaches the node's own stack.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "fastpath.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ps_node);
} node SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PS_MAX_PODS);
	__type(key, __u32);
	__type(value, struct ps_port);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PS_MAX_PODS);
	__type(key, __u32);
	__type(value, struct ps_pod);
} pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PS_MAX_PODS);
	__type(key, __u32);
	__type(value, struct ps_downcall);
} downcalls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PS_MAX_ENDPOINTS);
	__type(key, struct ps_endpoint);
	__type(value, __u8);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PS_MAX_PODS);
	__type(key, __u32);
	__type(value, struct ps_stats);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PS_PATH_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} paths SEC(".maps");

static __always_inline void count_path(__u32 path)
{
	__u64 *n = bpf_map_lookup_elem(&paths, &path);

	if (n)
		*n += 1;
}

static __always_inline int upcall(const struct ps_port *port, __u32 why)
{
	count_path(why);
	return bpf_redirect(port->upcall_ifindex, 0);
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return *(const __u32 *)a == *(const __u32 *)b &&
	       *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	*(__u32 *)dst = *(const __u32 *)src;
	*(__u16 *)(dst + 4) = *(const __u16 *)(src + 4);
}

/* The one's-complement sum of a 20-byte IPv4 header folds to 0xffff when its checksum holds. */
static __always_inline int ipv4_checksum_ok(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	__u32 in = skb->ingress_ifindex;
	struct ps_port *port = bpf_map_lookup_elem(&ports, &in);

	if (!port) {
		count_path(PS_PATH_DROP_UNKNOWN_DEVICE);
		return TC_ACT_SHOT;
	}
	if (port->flags & PS_F_SLOW)
		return upcall(port, PS_PATH_UP_WITHDRAWN);

	/* GSO and driver-built skbs may hold less than the headers (and the L4 ports) in the
	 * linear area. */
	__u32 want = ETH_HLEN + sizeof(struct iphdr) + 4;
	if (want > skb->len)
		want = skb->len;
	if ((long)skb->data + want > (long)skb->data_end && bpf_skb_pull_data(skb, want))
		return upcall(port, PS_PATH_UP_MALFORMED);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return upcall(port, PS_PATH_UP_MALFORMED);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return upcall(port, PS_PATH_UP_NOT_IPV4);
	if (!mac_eq(eth->h_source, port->mac))
		return upcall(port, PS_PATH_UP_SPOOFED);
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return upcall(port, PS_PATH_UP_MALFORMED);
	if (ip->version != 4 || ip->ihl != 5 ||
	    bpf_ntohs(ip->tot_len) < sizeof(struct iphdr) ||
	    ETH_HLEN + bpf_ntohs(ip->tot_len) > skb->len || !ipv4_checksum_ok(ip))
		return upcall(port, PS_PATH_UP_MALFORMED);
	if (ip->saddr != port->ip)
		return upcall(port, PS_PATH_UP_SPOOFED);
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		if (ip->frag_off & bpf_htons(0x3fff))
			return upcall(port, PS_PATH_UP_FRAGMENT);
		__be16 *ports = (void *)(ip + 1);
		if ((void *)(ports + 1) > end)
			return upcall(port, PS_PATH_UP_MALFORMED);
		struct ps_endpoint ep = {
			.ip = ip->saddr, .port = ports[0], .proto = ip->protocol, .pad = 0,
		};
		if (bpf_map_lookup_elem(&endpoints, &ep))
			return upcall(port, PS_PATH_UP_SERVICE);
	}

	__u32 daddr = ip->daddr;
	struct ps_pod *dst = bpf_map_lookup_elem(&pods, &daddr);
	if (!dst)
		return upcall(port, PS_PATH_UP_MISS);
	if (dst->flags & PS_F_SLOW)
		return upcall(port, PS_PATH_UP_WITHDRAWN);

	if (!mac_eq(eth->h_dest, dst->mac)) {
		__u32 zero = 0;
		struct ps_node *self = bpf_map_lookup_elem(&node, &zero);
		if (!self || !mac_eq(eth->h_dest, self->router_mac))
			return upcall(port, PS_PATH_UP_MISS);
		/* Routed: as ip_decrease_ttl, then the MACs as the pipeline writes them. */
		if (ip->ttl <= 1)
			return upcall(port, PS_PATH_UP_TTL);
		__u32 check = ip->check;
		check += bpf_htons(0x0100);
		ip->check = (__u16)(check + (check >= 0xFFFF));
		ip->ttl--;
		mac_copy(eth->h_source, self->router_mac);
		mac_copy(eth->h_dest, dst->mac);
	}

	__u32 from_slot = port->slot, to_slot = dst->slot;
	struct ps_stats *s = bpf_map_lookup_elem(&stats, &from_slot);
	if (s) {
		s->from_pod_packets += 1;
		s->from_pod_bytes += skb->len;
	}
	s = bpf_map_lookup_elem(&stats, &to_slot);
	if (s) {
		s->to_pod_packets += 1;
		s->to_pod_bytes += skb->len;
	}
	count_path(PS_PATH_LOCAL);
	return bpf_redirect_peer(dst->ifindex, 0);
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	__u32 in = skb->ingress_ifindex;
	struct ps_downcall *down = bpf_map_lookup_elem(&downcalls, &in);

	if (!down) {
		count_path(PS_PATH_DROP_UNKNOWN_DEVICE);
		return TC_ACT_SHOT;
	}
	count_path(PS_PATH_DOWN);
	return bpf_redirect_peer(down->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
