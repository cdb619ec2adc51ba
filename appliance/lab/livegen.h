/* Live-frames attack generator: the layout shared by livegen.c and Python.
 *
 * Python reads this struct back through bcc's table.Leaf (never a hand-written
 * ctypes copy) and fills it per stream. Offsets are bytes from the start of the
 * Ethernet frame; an offset of 0 means "leave that field alone".
 */
#ifndef SEAWALL_LIVEGEN_H
#define SEAWALL_LIVEGEN_H

struct livegen_config {
	__u32 egress_ifindex;  /* where every repeat of the template frame is sent */
	__u32 src_mask;        /* host-order bits of the 32-bit source word to randomize */
	__u16 src_off;         /* IPv4 source address, or the low 32 bits of an IPv6 source */
	__u16 ip_csum_off;     /* IPv4 header checksum (0 for IPv6) */
	__u16 l4_csum_off;     /* TCP/UDP/ICMP checksum; 0 when absent (later fragments) */
	__u16 l4_pseudo;       /* 1 when the source word is in the L4 pseudo header (TCP, UDP) */
	__u16 l4_udp;          /* 1 for UDP: a computed 0 is sent as 0xffff (RFC 768) */
	__u16 ipid_off;        /* IPv4 identification */
	__u16 sport_off;       /* L4 source port, randomized in [sport_min, sport_min + sport_span) */
	__u16 sport_min;
	__u16 sport_span;      /* 0 = keep the template's port */
	__u16 dport_off;       /* L4 destination port, randomized in [dport_min, dport_min + dport_span) */
	__u16 dport_min;
	__u16 dport_span;
	__u16 seq_off;         /* TCP sequence number (32 bits, random) */
	__u16 pad;
	__u32 ingress_ifindex; /* where the frames to edit come in: egress_ifindex for live-frames test
	                        * runs, the anchor veth for frames written into it (livegen.py) */
	__u32 pad2;
};

#define LIVEGEN_TEMPLATE_BYTES 4096  /* bytes: a power of two above livegen.py's MAX_LIVE_FRAME_BYTES */

/* The template frame itself, written by Python before each test run that sends it. The kernel
 * copies the template into a page only when its page pool allocates that page; a page that comes
 * back during the run (its frame dropped further on) is reused with whatever the last program
 * wrote into it, e.g. a SYN-ACK the appliance built in place and sent back by XDP_TX, and with
 * that frame's length. The program therefore restores the whole frame from here before it edits
 * it, and trims the padding the sender appends so that the kernel takes the length from the
 * context again. Without this the lab's random SYN flood sent the appliance's own SYN-ACKs
 * (source MAC: the server's) through to the customer switch, which then learnt the server's MAC
 * on its uplink. */
struct livegen_template {
	__u32 len;             /* bytes of `bytes` in use */
	__u32 pad;
	__u8 bytes[LIVEGEN_TEMPLATE_BYTES];
};

#endif
