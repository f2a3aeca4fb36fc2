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
#include <linux/udp.h>
#include <linux/tcp.h>
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
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PS_MAX_FLOWS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ps_flow_key);
	__type(value, struct ps_flow);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, PS_FLOW_EVENTS_BYTES);
} flow_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, PS_MAX_PEERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ps_route_key);
	__type(value, struct ps_peer);
} routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PS_MAX_PEERS);
	__type(key, __u32);
	__type(value, struct ps_peer);
} peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PS_MAX_PEERS);
	__type(key, __u32);
	__type(value, struct ps_peer_stats);
} peer_stats SEC(".maps");

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

/* Into a stack buffer: byte by byte (the verifier refuses misaligned stack stores). */
static __always_inline void mac_copy_to_stack(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, 6);
}

/* Into a packet (unaligned access is fine there). */
static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	*(__u32 *)dst = *(const __u32 *)src;
	*(__u16 *)(dst + 4) = *(const __u16 *)(src + 4);
}

/* The folded one's-complement sum of a 20-byte IPv4 header. */
static __always_inline __u16 ipv4_header_sum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* A header whose checksum holds sums to all ones. */
static __always_inline int ipv4_checksum_ok(const struct iphdr *ip)
{
	return ipv4_header_sum(ip) == 0xffff;
}

static __always_inline void ttl_decrement(struct iphdr *ip)
{
	__u32 check = ip->check;

	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
}

static __always_inline void count_stats(__u32 slot, int from_pod, __u64 bytes)
{
	struct ps_stats *s = bpf_map_lookup_elem(&stats, &slot);

	if (!s)
		return;
	if (from_pod) {
		s->from_pod_packets += 1;
		s->from_pod_bytes += bytes;
	} else {
		s->to_pod_packets += 1;
		s->to_pod_bytes += bytes;
	}
}

static __always_inline void count_peer(__u32 slot, int tx, __u64 bytes)
{
	struct ps_peer_stats *s = bpf_map_lookup_elem(&peer_stats, &slot);

	if (!s)
		return;
	if (tx) {
		s->tx_packets += 1;
		s->tx_bytes += bytes;
	} else {
		s->rx_packets += 1;
		s->rx_bytes += bytes;
	}
}

/* What VXLAN puts in front of the inner IPv4 header: outer IPv4, UDP, VXLAN, inner
 * Ethernet. 50 bytes on the wire (the struct is padded to 52: always use VXLAN_OVERHEAD). */
#define VXLAN_OVERHEAD 50
struct vxlan_encap {
	struct iphdr ip;
	struct udphdr udp;
	__be32 vx_flags;
	__be32 vx_vni;
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
};

/* Encapsulates the pod's routed packet for `peer` as the kernel's vxlan device (flannel's)
 * does, and sends it out of the underlay. The packet was checked by the caller; nothing of it
 * has been changed yet. */
static __always_inline int encap(struct __sk_buff *skb, const struct ps_port *port,
				 const struct ps_node *self, const struct ps_peer *peer)
{
	/* The flow's hash before the packet changes: the outer source port, as
	 * udp_flow_src_port() picks it. */
	__u32 hash = bpf_get_hash_recalc(skb);
	__u32 inner_len = skb->len;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;

	if ((void *)(ip + 1) > end)
		return upcall(port, PS_PATH_UP_MALFORMED);
	__u8 ecn = ip->tos & 3;
	if (ecn == 3)
		ecn = 2; /* CE inside: ECT(0) outside, as INET_ECN_encapsulate */

	if (bpf_skb_adjust_room(skb, VXLAN_OVERHEAD, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
				BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
				BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN) | BPF_F_ADJ_ROOM_FIXED_GSO))
		return upcall(port, PS_PATH_UP_TUNNEL);

	struct vxlan_encap h = {};
	__u32 outer_len = inner_len + VXLAN_OVERHEAD - ETH_HLEN;
	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.tos = ecn;
	/* A superframe over 64 KiB says 0: segmentation writes each segment's length. */
	h.ip.tot_len = outer_len > 0xffff ? 0 : bpf_htons(outer_len);
	h.ip.id = (__u16)bpf_get_prandom_u32();
	h.ip.ttl = 64;
	h.ip.protocol = IPPROTO_UDP;
	h.ip.saddr = self->underlay_ip;
	h.ip.daddr = peer->underlay_ip;
	h.ip.check = (__u16)~ipv4_header_sum(&h.ip); /* `check` is 0 here */
	hash ^= hash << 16;
	__u32 span = self->port_max > self->port_min ? self->port_max - self->port_min : 1;
	h.udp.source = bpf_htons((__u16)((((__u64)hash * span) >> 32) + self->port_min));
	h.udp.dest = self->vxlan_port;
	__u32 udp_len = outer_len - sizeof(struct iphdr);
	h.udp.len = udp_len > 0xffff ? 0 : bpf_htons(udp_len);
	h.udp.check = 0;
	h.vx_flags = bpf_htonl(0x08000000);
	h.vx_vni = bpf_htonl(self->vni << 8);
	mac_copy_to_stack(h.dst, peer->vtep_mac);
	mac_copy_to_stack(h.src, self->router_mac);
	h.proto = bpf_htons(ETH_P_IP);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &h, VXLAN_OVERHEAD, 0)) {
		count_path(PS_PATH_UP_TUNNEL);
		return TC_ACT_SHOT;
	}

	/* The inner packet is routed: its TTL goes down by one (checked above 1 by the caller). */
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	struct iphdr *inner = data + ETH_HLEN + VXLAN_OVERHEAD;
	if ((void *)(inner + 1) > end) {
		count_path(PS_PATH_UP_TUNNEL);
		return TC_ACT_SHOT;
	}
	ttl_decrement(inner);

	count_stats(port->slot, 1, inner_len);
	count_peer(peer->slot, 1, inner_len);
	count_path(PS_PATH_ENCAP);
	return bpf_redirect_neigh(self->underlay_ifindex, NULL, 0, 0);
}

/* An ICMP echo request or reply (not a fragment): what the fast path may carry. Every other
 * ICMP message (errors above all) is the switch's to decide. */
static __always_inline int icmp_is_echo(const struct iphdr *ip, const void *end)
{
	const __u8 *type = (const void *)(ip + 1);

	if ((ip->frag_off & bpf_htons(0x3fff)) || (const void *)(type + 1) > end)
		return 0;
	return *type == 0 || *type == 8;
}

/* A Service flow the switch compiled, as a packet found it: its entry, the key it was found
 * by, and what the packet shows of the connection (PS_SEEN_*). */
struct flow_hit {
	struct ps_flow *flow;
	struct ps_flow_key key;
	__u32 seen;
	/* The client's SYN opens a new connection on the flow (see switch_decides). */
	__u32 reopen;
};

/* TCP flags, in the header's 14th byte. */
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* Whether the switch must see this IPv4 packet whatever its destination, and why (a
 * PS_PATH_UP_* reason; 0: the fast path may carry it). TCP and UDP fragments (no ports); the
 * RSTs and SYNs of a compiled Service flow (connection tracking sees every opening and every
 * reset), but for the backend's first SYN-ACK; anything else sent from a Service backend's address and port that no compiled flow
 * covers (a reply the switch translates back to the VIP); ICMP other than echo (errors quote
 * packets the switch may translate). A packet of a compiled flow is returned in `hit`. */
static __always_inline __u32 switch_decides(const struct iphdr *ip, const void *end,
					    struct flow_hit *hit)
{
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		const __be16 *ports = (const void *)(ip + 1);
		if (ip->frag_off & bpf_htons(0x3fff))
			return PS_PATH_UP_FRAGMENT;
		if ((const void *)(ports + 2) > end)
			return PS_PATH_UP_MALFORMED;
		hit->key.saddr = ip->saddr;
		hit->key.daddr = ip->daddr;
		hit->key.sport = ports[0];
		hit->key.dport = ports[1];
		hit->key.proto = ip->protocol;
		hit->flow = bpf_map_lookup_elem(&flows, &hit->key);
		if (hit->flow) {
			hit->seen = PS_SEEN_PACKET;
			if (ip->protocol == IPPROTO_TCP) {
				const __u8 *flags = (const __u8 *)(ip + 1) + 13;
				if ((const void *)(flags + 1) > end)
					return PS_PATH_UP_MALFORMED;
				if (*flags & TCP_RST)
					return PS_PATH_UP_FLOW_CONTROL;
				/* A SYN is the switch's, but for two the switch has decided already,
				 * carried here and reported by their events: the backend's SYN-ACK
				 * answering the client's SYN that compiled the flow (the entry has
				 * carried nothing yet), and the client's SYN on a port whose last
				 * connection it closed (its FIN carried here): a new connection to the
				 * same backend, as the switch keeps a reused port's. */
				if (*flags & TCP_SYN) {
					int reply = hit->flow->flags & PS_FLOW_REPLY;
					if (reply && (!(*flags & TCP_ACK) || hit->flow->seen))
						return PS_PATH_UP_FLOW_CONTROL;
					if (!reply && ((*flags & TCP_ACK) ||
						       !(hit->flow->seen & PS_SEEN_FIN)))
						return PS_PATH_UP_FLOW_CONTROL;
					hit->reopen = !reply;
					hit->seen |= PS_SEEN_SYN;
				}
				if (*flags & TCP_ACK)
					hit->seen |= PS_SEEN_ACK;
				if (*flags & TCP_FIN)
					hit->seen |= PS_SEEN_FIN;
			}
			return 0;
		}
		struct ps_endpoint ep = {
			.ip = ip->saddr, .port = ports[0], .proto = ip->protocol, .pad = 0,
		};
		if (bpf_map_lookup_elem(&endpoints, &ep))
			return PS_PATH_UP_SERVICE;
	} else if (ip->protocol == IPPROTO_ICMP && !icmp_is_echo(ip, end)) {
		return PS_PATH_UP_ICMP;
	}
	return 0;
}

/* The packet's destination address once a compiled flow's translation is applied. */
static __always_inline __u32 translated_daddr(const struct flow_hit *hit, __u32 daddr)
{
	return hit->flow ? hit->flow->daddr : daddr;
}

/* Rewrites the TCP or UDP packet whose IPv4 header is at `ip_off` as the flow's entry says,
 * checksums updated incrementally (a partial one, CHECKSUM_PARTIAL, stays partial: the
 * helpers know), and records the packet in the entry: counters, last seen, and an event for
 * connection tracking the first time the entry carries a packet, an ACK, a FIN or a SYN. Non-zero if
 * the packet could not be rewritten (it is then dropped). Invalidates packet pointers. */
static __always_inline int translate(struct __sk_buff *skb, struct flow_hit *hit, __u32 ip_off)
{
	struct ps_flow *f = hit->flow;
	__u8 proto = hit->key.proto;
	__u32 csum_off = ip_off + sizeof(struct iphdr) +
			 (proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
					       : offsetof(struct udphdr, check));
	__u64 mangled0 = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 saddr = f->saddr, daddr = f->daddr;
	__be16 sport = f->sport, dport = f->dport;

	if (saddr != hit->key.saddr &&
	    (bpf_l4_csum_replace(skb, csum_off, hit->key.saddr, saddr,
				 BPF_F_PSEUDO_HDR | mangled0 | 4) ||
	     bpf_l3_csum_replace(skb, ip_off + offsetof(struct iphdr, check), hit->key.saddr,
				 saddr, 4) ||
	     bpf_skb_store_bytes(skb, ip_off + offsetof(struct iphdr, saddr), &saddr, 4, 0)))
		return -1;
	if (daddr != hit->key.daddr &&
	    (bpf_l4_csum_replace(skb, csum_off, hit->key.daddr, daddr,
				 BPF_F_PSEUDO_HDR | mangled0 | 4) ||
	     bpf_l3_csum_replace(skb, ip_off + offsetof(struct iphdr, check), hit->key.daddr,
				 daddr, 4) ||
	     bpf_skb_store_bytes(skb, ip_off + offsetof(struct iphdr, daddr), &daddr, 4, 0)))
		return -1;
	if (sport != hit->key.sport &&
	    (bpf_l4_csum_replace(skb, csum_off, hit->key.sport, sport, mangled0 | 2) ||
	     bpf_skb_store_bytes(skb, ip_off + sizeof(struct iphdr), &sport, 2, 0)))
		return -1;
	if (dport != hit->key.dport &&
	    (bpf_l4_csum_replace(skb, csum_off, hit->key.dport, dport, mangled0 | 2) ||
	     bpf_skb_store_bytes(skb, ip_off + sizeof(struct iphdr) + 2, &dport, 2, 0)))
		return -1;

	if (hit->reopen) {
		/* Both directions start over: what they carry is reported anew. */
		struct ps_flow_key back = {
			.saddr = daddr, .daddr = saddr, .sport = dport, .dport = sport,
			.proto = proto,
		};
		struct ps_flow *r = bpf_map_lookup_elem(&flows, &back);
		if (r)
			r->seen = 0;
		f->seen = 0;
	}
	f->last_ns = bpf_ktime_get_ns();
	__sync_fetch_and_add(&f->packets, 1);
	__sync_fetch_and_add(&f->bytes, skb->len);
	count_path(PS_PATH_TRANSLATED);
	if ((f->seen & hit->seen) == hit->seen)
		return 0;
	/* One CPU reports a change: the one whose OR set the bit. */
	__u64 was = __sync_fetch_and_or(&f->seen, (__u64)hit->seen);
	if ((was & hit->seen) == hit->seen)
		return 0;
	struct ps_flow_event *ev = bpf_ringbuf_reserve(&flow_events, sizeof(*ev), 0);
	if (!ev) {
		count_path(PS_PATH_EVENT_LOST);
		return 0;
	}
	ev->key = hit->key;
	ev->epoch = f->epoch;
	ev->flags = f->flags;
	/* What is new only: an event plays each thing once, in the order it happened. */
	ev->seen = hit->seen & ~(__u32)was;
	ev->pad = 0;
	/* Read by the switch every half second: nobody to wake. */
	bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
	return 0;
}

/* Translates the Ethernet frame's IPv4 packet for its compiled flow: the frame's Ethernet
 * header, its IPv4 header checked to be there; NULL (counted) if the packet could not be
 * rewritten, to be dropped. */
static __always_inline struct ethhdr *translate_frame(struct __sk_buff *skb,
						      struct flow_hit *hit)
{
	if (translate(skb, hit, ETH_HLEN)) {
		count_path(PS_PATH_DROP_TRANSLATION);
		return NULL;
	}
	struct ethhdr *eth = (void *)(long)skb->data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > (void *)(long)skb->data_end) {
		count_path(PS_PATH_DROP_TRANSLATION);
		return NULL;
	}
	return eth;
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

	/* GSO and driver-built skbs may hold less than the headers (up to the TCP flags) in the
	 * linear area. */
	__u32 want = ETH_HLEN + sizeof(struct iphdr) + sizeof(struct tcphdr);
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
	struct flow_hit hit = {};
	__u32 why = switch_decides(ip, end, &hit);
	if (why)
		return upcall(port, why);

	/* Every decision is taken before a compiled flow's translation is applied: a packet
	 * the switch must see goes up as the pod sent it. */
	__u32 daddr = translated_daddr(&hit, ip->daddr);
	struct ps_pod *dst = bpf_map_lookup_elem(&pods, &daddr);
	if (!dst) {
		/* Another node's pod, routed through the gateway: the peer owning its CIDR. */
		__u32 zero = 0;
		struct ps_node *self = bpf_map_lookup_elem(&node, &zero);
		if (!self || !self->underlay_ip || !mac_eq(eth->h_dest, self->router_mac))
			return upcall(port, PS_PATH_UP_MISS);
		struct ps_route_key key = { .prefixlen = 32, .addr = daddr };
		struct ps_peer *peer = bpf_map_lookup_elem(&routes, &key);
		if (!peer)
			return upcall(port, PS_PATH_UP_MISS);
		if (ip->ttl <= 1)
			return upcall(port, PS_PATH_UP_TTL);
		if (hit.flow && !translate_frame(skb, &hit))
			return TC_ACT_SHOT;
		return encap(skb, port, self, peer);
	}
	if (dst->flags & PS_F_SLOW)
		return upcall(port, PS_PATH_UP_WITHDRAWN);

	struct ps_node *router = NULL;
	if (!mac_eq(eth->h_dest, dst->mac)) {
		__u32 zero = 0;
		router = bpf_map_lookup_elem(&node, &zero);
		if (!router || !mac_eq(eth->h_dest, router->router_mac))
			return upcall(port, PS_PATH_UP_MISS);
		if (ip->ttl <= 1)
			return upcall(port, PS_PATH_UP_TTL);
	}
	if (hit.flow) {
		eth = translate_frame(skb, &hit);
		if (!eth)
			return TC_ACT_SHOT;
		ip = (void *)(eth + 1);
	}
	if (router) {
		/* Routed: as ip_decrease_ttl, then the MACs as the pipeline writes them. */
		ttl_decrement(ip);
		mac_copy(eth->h_source, router->router_mac);
		mac_copy(eth->h_dest, dst->mac);
	}

	count_stats(port->slot, 1, skb->len);
	count_stats(dst->slot, 0, skb->len);
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

/* Leaves a VXLAN datagram for this node to the switch's own socket. */
static __always_inline int pass_up(void)
{
	count_path(PS_PATH_UNDERLAY_PASS);
	return TC_ACT_OK;
}

/* At ingress of the underlay interface: VXLAN from a known peer, for a pod of this node, is
 * decapsulated and delivered into the pod; everything else goes on into the node's stack
 * untouched (the switch's socket decides the rest of the tunnel's traffic). */
SEC("classifier")
int from_underlay(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct ps_node *self = bpf_map_lookup_elem(&node, &zero);

	if (!self || !self->underlay_ip)
		return TC_ACT_OK;
	/* Outer Ethernet, IPv4, UDP, VXLAN, inner Ethernet and IPv4 headers, and the inner
	 * TCP header (up to its flags) or what there is of it. */
	__u32 want = ETH_HLEN + VXLAN_OVERHEAD + sizeof(struct iphdr);
	if (want > skb->len)
		return TC_ACT_OK;
	want += sizeof(struct tcphdr);
	if (want > skb->len)
		want = skb->len;
	if ((long)skb->data + want > (long)skb->data_end && bpf_skb_pull_data(skb, want))
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__be32 *vx = (void *)(udp + 1);
	struct ethhdr *ieth = (void *)(vx + 2);
	struct iphdr *inner = (void *)(ieth + 1);
	if ((void *)(inner + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->version != 4 || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x3fff)) ||
	    ip->daddr != self->underlay_ip || udp->dest != self->vxlan_port)
		return TC_ACT_OK; /* not VXLAN for this node: not the fast path's business */
	__u32 saddr = ip->saddr;
	struct ps_peer *peer = bpf_map_lookup_elem(&peers, &saddr);
	if (!peer || !(vx[0] & bpf_htonl(0x08000000)) || vx[1] != bpf_htonl(self->vni << 8) ||
	    !mac_eq(ieth->h_dest, self->router_mac) || ieth->h_proto != bpf_htons(ETH_P_IP) ||
	    inner->version != 4 || inner->ihl != 5 || inner->ttl <= 1 ||
	    !ipv4_checksum_ok(inner))
		return pass_up();
	/* As from a pod: a Service backend's reply (on the peer) to a client of this node is
	 * translated back to the VIP here if the switch compiled its flow, else by the switch;
	 * ICMP errors too. */
	struct flow_hit hit = {};
	if (switch_decides(inner, end, &hit))
		return pass_up();
	__u32 daddr = translated_daddr(&hit, inner->daddr);
	struct ps_pod *pod = bpf_map_lookup_elem(&pods, &daddr);
	if (!pod || (pod->flags & PS_F_SLOW))
		return pass_up();
	/* One tunnel superframe (one inner packet, its IPv4 length the whole payload) is
	 * decapsulated; a UDP GSO train of several datagrams (a sender's UDP_SEGMENT) would lose
	 * all but its first header: it goes to the switch's socket. */
	__u32 payload = skb->len - ETH_HLEN - VXLAN_OVERHEAD;
	__u32 inner_len = bpf_ntohs(inner->tot_len);
	if (skb->gso_size) {
		if (!(inner_len == payload || (inner_len == 0 && payload > 0xffff)))
			return pass_up();
	} else if (inner_len > payload || inner_len < sizeof(struct iphdr)) {
		return pass_up();
	}
	__u8 pod_mac[6];
	mac_copy_to_stack(pod_mac, pod->mac);
	__u32 to_slot = pod->slot, peer_slot = peer->slot, ifindex = pod->ifindex;

	if (bpf_skb_adjust_room(skb, -VXLAN_OVERHEAD, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO))
		return pass_up();
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end) {
		count_path(PS_PATH_UNDERLAY_PASS);
		return TC_ACT_SHOT;
	}
	if (hit.flow) {
		eth = translate_frame(skb, &hit);
		if (!eth)
			return TC_ACT_SHOT;
		ip = (void *)(eth + 1);
	}
	/* The outer Ethernet header is now the frame's: the pipeline's MACs, router -> pod. */
	mac_copy(eth->h_source, self->router_mac);
	mac_copy(eth->h_dest, pod_mac);
	ttl_decrement(ip);

	count_stats(to_slot, 0, skb->len);
	count_peer(peer_slot, 0, skb->len);
	count_path(PS_PATH_DECAP);
	return bpf_redirect_peer(ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
