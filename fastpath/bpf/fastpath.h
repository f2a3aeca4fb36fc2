/* The maps the switch writes and the fast path reads: one layout, shared with Rust
 * (fastpath/src/maps.rs mirrors every struct field for field; its unit tests check the
 * sizes). All addresses are in network byte order, all MACs as on the wire.
 *
 * Invariants the switch keeps:
 *  - `ports` holds an entry for a pod's host-side veth exactly while its upcall device and its
 *    `downcalls` entry exist, and `pods` holds the pod's address only while `ports` holds it;
 *  - a slot (`stats` index) belongs to one pod at a time and is zeroed before it is reused.
 */
#ifndef PODSWITCH_FASTPATH_H
#define PODSWITCH_FASTPATH_H

#include <linux/types.h>

/* Pods (slots) one node's fast path holds. */
#define PS_MAX_PODS 4096

/* `ps_port.flags` and `ps_pod.flags`: the pod is withdrawn from the fast path (a capture runs):
 * everything it sends and everything sent to it goes through the switch. */
#define PS_F_SLOW 1u

/* Indexes of `paths`: what happened to each packet the programs saw. */
enum ps_path {
	/* Forwarded pod -> pod on this node by the program. */
	PS_PATH_LOCAL = 0,
	/* Handed up to the switch: not IPv4 (ARP, ...). */
	PS_PATH_UP_NOT_IPV4 = 1,
	/* Handed up: source MAC or address not the pod's (the pipeline drops and counts it). */
	PS_PATH_UP_SPOOFED = 2,
	/* Handed up: malformed, IP options, or a checksum that does not verify. */
	PS_PATH_UP_MALFORMED = 3,
	/* Handed up: no compiled decision for the destination. */
	PS_PATH_UP_MISS = 4,
	/* Handed up: TTL would expire (the switch answers with ICMP). */
	PS_PATH_UP_TTL = 5,
	/* Handed up: the source or destination pod is withdrawn (capture). */
	PS_PATH_UP_WITHDRAWN = 6,
	/* Written by the switch, delivered into the pod. */
	PS_PATH_DOWN = 7,
	/* Dropped: arrived on a device the maps do not know (being set up or torn down). */
	PS_PATH_DROP_UNKNOWN_DEVICE = 8,
	/* Handed up: a TCP or UDP fragment (no ports to look at). */
	PS_PATH_UP_FRAGMENT = 9,
	/* Handed up: sent from a Service backend's address and port, so possibly a reply the
	 * switch must translate back (from the VIP) before the client sees it. */
	PS_PATH_UP_SERVICE = 10,
	/* Encapsulated in VXLAN by the program and sent to the peer owning the destination. */
	PS_PATH_ENCAP = 11,
	/* Handed up: the encapsulation failed (the pod tunnels itself, say). */
	PS_PATH_UP_TUNNEL = 12,
	/* Decapsulated by the program from a peer and delivered into the pod. */
	PS_PATH_DECAP = 13,
	/* A VXLAN datagram for this node left to the switch's own socket: a UDP GSO train of
	 * several datagrams, or one the program does not decide (unknown peer or destination,
	 * TTL, malformed). */
	PS_PATH_UNDERLAY_PASS = 14,
	/* Handed up: ICMP other than echo (errors quote packets the switch may translate). */
	PS_PATH_UP_ICMP = 15,
	/* Handed up: a TCP SYN or RST of a Service flow the switch compiled (connection tracking
	 * sees every reset and decides every opening; the backend's first SYN-ACK and a closed
	 * port's new connection stay in the kernel, reported as events). */
	PS_PATH_UP_FLOW_CONTROL = 16,
	/* Not a path of its own: of the packets above forwarded by the program (local, encap,
	 * decap), those it translated for a Service flow the switch compiled into `flows`. */
	PS_PATH_TRANSLATED = 17,
	/* Not a path of its own: a flow event the ring buffer had no room for (the switch then
	 * reads every flow's `seen` bits instead). */
	PS_PATH_EVENT_LOST = 18,
	/* Dropped: a compiled flow's translation could not be written (a packet cut short). */
	PS_PATH_DROP_TRANSLATION = 19,
	PS_PATH_COUNT = 20,
};

/* `node[0]`: the node's own identity and its tunnel. */
struct ps_node {
	__u8 router_mac[6];      /* also the VTEP MAC */
	__be16 vxlan_port;       /* UDP destination port */
	__u32 underlay_ip;       /* 0: the fast path does not tunnel (the slow path does) */
	__u32 underlay_ifindex;  /* where encapsulated packets leave */
	__u32 vni;               /* host order */
	__u16 port_min;          /* outer UDP source ports, as the kernel's vxlan picks them */
	__u16 port_max;
};

/* `routes`, an LPM trie keyed by destination prefix: the peer owning a remote pod CIDR. */
struct ps_route_key {
	__u32 prefixlen;
	__u32 addr;
};

/* A peer node, in `routes` (by its pod CIDR) and `peers` (by its underlay address). */
struct ps_peer {
	__u8 vtep_mac[6];
	__u16 slot;              /* `peer_stats` index */
	__u32 underlay_ip;
};

/* Peers (slots) one node's fast path holds. */
#define PS_MAX_PEERS 1024

/* `peer_stats[slot]`, per CPU: what the program carried to and from the peer. */
struct ps_peer_stats {
	__u64 tx_packets;
	__u64 tx_bytes;          /* inner frames, as the switch counts a peer's traffic */
	__u64 rx_packets;
	__u64 rx_bytes;
};

/* `ports`, keyed by the pod's host-side veth ifindex: what the pod may send from, and where
 * what the program does not decide goes. */
struct ps_port {
	__u8 mac[6];
	__u16 slot;
	__u32 ip;
	__u32 upcall_ifindex;
	__u32 flags;
};

/* `pods`, keyed by IPv4 address: a pod of this node, as a destination. */
struct ps_pod {
	__u8 mac[6];
	__u16 slot;
	__u32 ifindex; /* its host-side veth */
	__u32 flags;
};

/* `downcalls`, keyed by an upcall device's ifindex: the pod the switch's writes go to. */
struct ps_downcall {
	__u32 ifindex; /* the pod's host-side veth */
	__u32 slot;
};

/* `endpoints`, keyed by a Service backend's address, port and protocol: what it sends from
 * there goes through the switch (connection tracking translates replies). */
struct ps_endpoint {
	__u32 ip;
	__u16 port; /* network order */
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
};

/* Service backends the fast path knows. */
#define PS_MAX_ENDPOINTS 65536

/* `flows`, keyed by a packet's addresses, ports and protocol as the program sees them: a
 * Service flow the switch has decided (its first packet went through Maglev and connection
 * tracking), one entry per direction. The client's direction (client -> VIP) is rewritten to
 * the backend, the backend's (backend -> client) back from the VIP; hairpin flows rewrite both
 * ends. The packet is then forwarded by its new destination like any other. */
struct ps_flow_key {
	__u32 saddr;
	__u32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* `ps_flow.seen` and `ps_flow_event.seen`: what the entry has carried since it was written. */
#define PS_SEEN_PACKET 1u
#define PS_SEEN_ACK 2u
#define PS_SEEN_FIN 4u
#define PS_SEEN_SYN 8u

/* `ps_flow.flags` */
#define PS_FLOW_REPLY 1u /* the backend's direction */

struct ps_flow {
	__u32 saddr;   /* rewritten to */
	__u32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 epoch;   /* the switch's install of this flow (events carry it) */
	__u32 flags;   /* PS_FLOW_* */
	__u32 pad;
	__u64 seen;    /* PS_SEEN_*, set by the program (64 bits: atomic OR with fetch) */
	__u64 last_ns; /* bpf_ktime_get_ns() of the last packet */
	__u64 packets;
	__u64 bytes;
};

/* Entries `flows` holds (two per flow). */
#define PS_MAX_FLOWS 131072

/* An event in the `flow_events` ring buffer: an entry carried something it had not carried
 * before (its first packet, the first ACK, a FIN, the backend's SYN-ACK). Connection tracking follows the flow's
 * state from these, in the order they happened. */
struct ps_flow_event {
	struct ps_flow_key key;
	__u32 epoch;
	__u32 flags;  /* the entry's PS_FLOW_* */
	__u32 seen;   /* the PS_SEEN_* bits this packet set (what is new) */
	__u32 pad;
};

/* Bytes of the ring buffer (a power of two, a multiple of the page size). */
#define PS_FLOW_EVENTS_BYTES (1u << 21)

/* `stats[slot]`, per CPU: the pod's packets the program forwarded (not what the switch did). */
struct ps_stats {
	__u64 from_pod_packets;
	__u64 from_pod_bytes;
	__u64 to_pod_packets;
	__u64 to_pod_bytes;
};

#endif
