/* Seawall: kernel-only packet parsing helpers.
 *
 * One helper per header layer; each checks bounds against data_end before
 * reading and reports what it found in struct sw_packet. The structs here are
 * kernel-only; the header numbers come from dataplane/constants.py.
 */
#ifndef SEAWALL_PARSING_H
#define SEAWALL_PARSING_H

/* Ethernet types (SW_ETH_P_IP, _IPV6, _VLAN, _QINQ), IP protocol numbers (SW_IPPROTO_*) and
 * TCP flags (SW_TCP_*) come from dataplane/constants.py (cflags()): the sample parser in
 * policy/packets.py reads the same headers with the same numbers. */

/* An 802.1Q or 802.1ad tag, after the Ethernet addresses (the kernel's struct
 * vlan_hdr, which the uapi headers do not have). */
struct sw_vlan_tag {
    __be16 tci;                  /* priority, drop eligibility, VLAN id */
    __be16 encapsulated_proto;   /* the ethertype that follows */
};

/* What parse_frame() reports. */
enum sw_parse_result {
    SW_PARSE_NOT_IP = 0,   /* ARP, LLDP, other ethertypes: bridged untouched */
    SW_PARSE_UNREADABLE,   /* IP ethertype but no readable address header: bridged untouched */
    SW_PARSE_OK,           /* addresses read; see sw_packet.invalid for header problems */
};

enum sw_fragment {
    SW_FRAG_NONE = 0,
    SW_FRAG_FIRST,
    SW_FRAG_LATER,
};

struct sw_packet {
    /* Addresses as two 64-bit words (IPv4 as ::ffff:a.b.c.d), written and
     * read at the same width: byte stores followed by wide loads would stall
     * store forwarding on every packet. */
    __u64 src[2];
    __u64 dst[2];
    __u16 payload_offset;  /* bytes from the frame start to the L4 payload (valid when l4_ok) */
    __u16 l4_offset;       /* bytes from the frame start to the L4 header (valid when l4_ok) */
    __u32 ip_length;       /* IPv4 total length / IPv6 payload length + 40, bytes */
    __u16 sport;           /* host byte order, when l4_ok and TCP/UDP */
    __u16 dport;
    __u8 proto;            /* final upper-layer protocol */
    __u8 ttl;              /* TTL or hop limit */
    __u8 tcp_flags;
    __u8 is_v6;
    __u8 fragment;         /* enum sw_fragment */
    __u8 l4_ok;            /* the L4 header is inside the frame and the IP length */
    __u8 traffic_class;    /* SW_TRAFFIC_CLASS_* */
    __u8 invalid;          /* 0, or the invalid-packet drop reason: header problems (BAD_LENGTH,
                            * MALFORMED), then LAND, BAD_TCP_FLAGS, PORT_ZERO (sw_invalid_reason) */
    __u32 frame_length;    /* bytes of a multi-buffer frame, else 0 (the linear part is the frame) */
};

static __always_inline void sw_map_v4(__u64 *out, __be32 v4)
{
    out[0] = 0;
    /* bytes 8..15 in memory: 00 00 ff ff a b c d */
    out[1] = ((__u64)v4 << 32) | bpf_htonl(0x0000FFFF);
}

/* Ethernet plus up to SW_MAX_VLAN_DEPTH 802.1Q/802.1ad tags. Returns the
 * ethertype (network order) and advances *cursor to the L3 header, or 0 when
 * the frame is too short for what it announces. */
static __always_inline __u16 sw_parse_ethernet(void **cursor, void *data_end)
{
    struct ethhdr *eth = *cursor;
    if ((void *)(eth + 1) > data_end)
        return 0;
    __u16 proto = eth->h_proto;
    void *next = eth + 1;
#pragma unroll
    for (int i = 0; i < SW_MAX_VLAN_DEPTH; i++) {
        if (proto != bpf_htons(SW_ETH_P_VLAN) && proto != bpf_htons(SW_ETH_P_QINQ))
            break;
        struct sw_vlan_tag *vlan = next;
        if ((void *)(vlan + 1) > data_end)
            return 0;
        proto = vlan->encapsulated_proto;
        next = vlan + 1;
    }
    *cursor = next;
    return proto;
}

/* Does the IP length fit the frame? Only when it exceeds the linear part is
 * the whole frame measured (a helper call): a multi-buffer frame (jumbo) keeps
 * its headers in the first buffer, and its length is recorded for counters. */
static __always_inline int sw_ip_length_fits(struct xdp_md *ctx, struct sw_packet *p, void *data, void *l3,
                                             void *data_end)
{
    if (l3 + p->ip_length <= data_end)
        return 1;
    __u32 frame_len = bpf_xdp_get_buff_len(ctx);
    if ((__u64)(l3 - data) + p->ip_length > frame_len)
        return 0;
    p->frame_length = frame_len;
    return 1;
}

/* Classifies by protocol, fragment state and TCP flags. */
static __always_inline void sw_classify(struct sw_packet *p)
{
    if (p->fragment != SW_FRAG_NONE)
        p->traffic_class = SW_TRAFFIC_CLASS_FRAGMENT;
    else if (p->proto == SW_IPPROTO_TCP)
        p->traffic_class = ((p->tcp_flags & (SW_TCP_SYN | SW_TCP_ACK)) == SW_TCP_SYN)
                               ? SW_TRAFFIC_CLASS_TCP_SYN : SW_TRAFFIC_CLASS_TCP_OTHER;
    else if (p->proto == SW_IPPROTO_UDP)
        p->traffic_class = SW_TRAFFIC_CLASS_UDP;
    else if (p->proto == SW_IPPROTO_ICMP || p->proto == SW_IPPROTO_ICMPV6)
        p->traffic_class = SW_TRAFFIC_CLASS_ICMP;
    else
        p->traffic_class = SW_TRAFFIC_CLASS_OTHER;
}

/* TCP, UDP, ICMP/ICMPv6 header at p->l4, bounded by the frame and by the IP
 * length (ip_end). Sets ports, flags, payload, l4_ok, or p->invalid. */
static __always_inline void sw_parse_l4(struct sw_packet *p, void *data, void *l4, void *ip_end, void *data_end)
{
    if (p->proto == SW_IPPROTO_TCP) {
        struct tcphdr *tcp = l4;
        if ((void *)(tcp + 1) > data_end || (void *)(tcp + 1) > ip_end) {
            p->invalid = SW_DROP_REASON_MALFORMED;
            return;
        }
        __u32 doff = tcp->doff * 4;
        if (doff < sizeof(*tcp) || l4 + doff > ip_end) {
            p->invalid = SW_DROP_REASON_BAD_LENGTH;
            return;
        }
        p->sport = bpf_ntohs(tcp->source);
        p->dport = bpf_ntohs(tcp->dest);
        p->tcp_flags = ((__u8 *)tcp)[13];
        p->payload_offset = (l4 + doff) - data;
        p->l4_offset = l4 - data;
        p->l4_ok = 1;
    } else if (p->proto == SW_IPPROTO_UDP) {
        struct udphdr *udp = l4;
        if ((void *)(udp + 1) > data_end || (void *)(udp + 1) > ip_end) {
            p->invalid = SW_DROP_REASON_MALFORMED;
            return;
        }
        __u32 ulen = bpf_ntohs(udp->len);
        /* A first fragment carries only part of the datagram the UDP length covers. */
        if (ulen < sizeof(*udp) || (p->fragment == SW_FRAG_NONE && l4 + ulen > ip_end)) {
            p->invalid = SW_DROP_REASON_BAD_LENGTH;
            return;
        }
        p->sport = bpf_ntohs(udp->source);
        p->dport = bpf_ntohs(udp->dest);
        p->payload_offset = (void *)(udp + 1) - data;
        p->l4_ok = 1;
    } else if (p->proto == SW_IPPROTO_ICMP || p->proto == SW_IPPROTO_ICMPV6) {
        if (l4 + 4 > data_end || l4 + 4 > ip_end) {
            p->invalid = SW_DROP_REASON_MALFORMED;
            return;
        }
        p->payload_offset = (l4 + 4) - data;
        p->l4_ok = 1;
    }
}

static __always_inline int sw_parse_ipv4(struct xdp_md *ctx, struct sw_packet *p, void *data, void *l3, void *data_end)
{
    struct iphdr *ip = l3;
    if ((void *)(ip + 1) > data_end || ip->version != 4)
        return SW_PARSE_UNREADABLE;
    sw_map_v4(p->src, ip->saddr);
    sw_map_v4(p->dst, ip->daddr);
    p->proto = ip->protocol;
    p->ttl = ip->ttl;
    p->ip_length = bpf_ntohs(ip->tot_len);
    __u32 ihl = ip->ihl * 4;
    if (ihl < sizeof(*ip) || p->ip_length < ihl || !sw_ip_length_fits(ctx, p, data, l3, data_end)) {
        p->invalid = SW_DROP_REASON_BAD_LENGTH;
        sw_classify(p);
        return SW_PARSE_OK;
    }
    __u16 frag = bpf_ntohs(ip->frag_off);
    if (frag & 0x1FFF)
        p->fragment = SW_FRAG_LATER;
    else if (frag & 0x2000)
        p->fragment = SW_FRAG_FIRST;
    if (p->fragment != SW_FRAG_LATER)
        sw_parse_l4(p, data, l3 + ihl, l3 + p->ip_length, data_end);
    sw_classify(p);
    return SW_PARSE_OK;
}

static __always_inline int sw_parse_ipv6(struct xdp_md *ctx, struct sw_packet *p, void *data, void *l3, void *data_end)
{
    struct ipv6hdr *ip6 = l3;
    if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
        return SW_PARSE_UNREADABLE;
    p->is_v6 = 1;
    __builtin_memcpy(p->src, &ip6->saddr, 16);
    __builtin_memcpy(p->dst, &ip6->daddr, 16);
    p->ttl = ip6->hop_limit;
    p->ip_length = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
    void *ip_end = l3 + p->ip_length;
    if (!sw_ip_length_fits(ctx, p, data, l3, data_end)) {
        p->invalid = SW_DROP_REASON_BAD_LENGTH;
        p->proto = ip6->nexthdr;
        sw_classify(p);
        return SW_PARSE_OK;
    }
    __u8 next = ip6->nexthdr;
    void *cursor = ip6 + 1;
    int done = 0;
#pragma unroll
    for (int i = 0; i < SW_MAX_IPV6_EXT_HEADERS; i++) {
        if (next == SW_IPPROTO_FRAGMENT) {
            __u8 *fh = cursor;
            if ((void *)(fh + 8) > data_end || (void *)(fh + 8) > ip_end) {
                p->invalid = SW_DROP_REASON_MALFORMED;
                done = 1;
                break;
            }
            __u16 off = (((__u16)fh[2] << 8) | fh[3]);
            p->fragment = (off & 0xFFF8) ? SW_FRAG_LATER : SW_FRAG_FIRST;
            next = fh[0];
            cursor = fh + 8;
            if (p->fragment == SW_FRAG_LATER) {
                done = 1;
                break;
            }
        } else if (next == SW_IPPROTO_HOPOPTS || next == SW_IPPROTO_ROUTING ||
                   next == SW_IPPROTO_DSTOPTS || next == SW_IPPROTO_AH) {
            __u8 *eh = cursor;
            if ((void *)(eh + 2) > data_end) {
                p->invalid = SW_DROP_REASON_MALFORMED;
                done = 1;
                break;
            }
            __u32 len = (next == SW_IPPROTO_AH) ? ((__u32)eh[1] + 2) * 4 : ((__u32)eh[1] + 1) * 8;
            next = eh[0];
            cursor = eh + len;
            if (cursor > ip_end) {
                p->invalid = SW_DROP_REASON_BAD_LENGTH;
                done = 1;
                break;
            }
        } else {
            done = 2; /* reached an upper-layer header */
            break;
        }
    }
    /* A chain of exactly SW_MAX_IPV6_EXT_HEADERS ends on an upper-layer header. */
    if (done == 0 && next != SW_IPPROTO_HOPOPTS && next != SW_IPPROTO_ROUTING && next != SW_IPPROTO_DSTOPTS &&
        next != SW_IPPROTO_AH && next != SW_IPPROTO_FRAGMENT)
        done = 2;
    p->proto = next;
    /* done == 0: more extension headers than SW_MAX_IPV6_EXT_HEADERS; the
     * packet is counted as OTHER and never looked into further. */
    if (done == 0) {
        p->proto = 255;
    } else if (done == 2) {
        sw_parse_l4(p, data, cursor, ip_end, data_end);
    }
    sw_classify(p);
    return SW_PARSE_OK;
}

/* Flag sets no TCP stack sends: NULL (no flag), SYN+FIN, SYN+RST, XMAS (FIN+PSH+URG). As one bit
 * per combination of the six classic flags (bit f of the mask: flags & 0x3F == f is bad), a shift
 * and a mask instead of four compares and branches on every TCP packet. The ECE and CWR bits play
 * no part. tests/bpf/test_parsing.py holds every flag byte to the reference model's rule. */
#define SW_BAD_TCP_FLAGS_MASK 0xEAC8EAC8C8C8C8C9ULL
_Static_assert(SW_TCP_FIN == 0x01 && SW_TCP_SYN == 0x02 && SW_TCP_RST == 0x04 && SW_TCP_PSH == 0x08 &&
               SW_TCP_ACK == 0x10 && SW_TCP_URG == 0x20 && SW_DROP_REASON_NONE == 0, "SW_BAD_TCP_FLAGS_MASK is indexed by the flag bits");

static __always_inline int sw_bad_tcp_flags(__u8 flags)
{
    return (SW_BAD_TCP_FLAGS_MASK >> (flags & 0x3F)) & 1;
}

/* The common frame, parsed with as few instructions as possible: untagged
 * IPv4 without options or fragmentation carrying a TCP or UDP header whose
 * lengths agree with the frame. Writes every field of *p (the narrow ones as
 * three whole words) and returns 1; returns 0, having written nothing, for
 * anything else, which sw_parse_frame() then parses in full. Both give the
 * same result for the frames this one accepts. */
#define SW_FAST_MIN_FRAME (14 + 20 + 20) /* Ethernet, IPv4 and a TCP header (UDP frames are padded to 60) */

_Static_assert(__builtin_offsetof(struct sw_packet, payload_offset) == 32 &&
               __builtin_offsetof(struct sw_packet, l4_offset) == 34 &&
               __builtin_offsetof(struct sw_packet, ip_length) == 36 &&
               __builtin_offsetof(struct sw_packet, sport) == 40 && __builtin_offsetof(struct sw_packet, dport) == 42 &&
               __builtin_offsetof(struct sw_packet, proto) == 44 && __builtin_offsetof(struct sw_packet, ttl) == 45 &&
               __builtin_offsetof(struct sw_packet, tcp_flags) == 46 &&
               __builtin_offsetof(struct sw_packet, is_v6) == 47 &&
               __builtin_offsetof(struct sw_packet, fragment) == 48 &&
               __builtin_offsetof(struct sw_packet, l4_ok) == 49 &&
               __builtin_offsetof(struct sw_packet, traffic_class) == 50 &&
               __builtin_offsetof(struct sw_packet, invalid) == 51 &&
               __builtin_offsetof(struct sw_packet, frame_length) == 52 && sizeof(struct sw_packet) == 56,
               "sw_parse_fast() writes struct sw_packet as words with this layout");

/* The fast parser reads the headers as a few wide words, whose byte order is the CPU's: the BPF
 * targets bcc builds for here are little-endian. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "sw_parse_fast() decodes little-endian words");

static __always_inline int sw_parse_fast(struct sw_packet *p, void *data, void *data_end)
{
    if (data + SW_FAST_MIN_FRAME > data_end)
        return 0;
    /* Bytes 12..14, the ethertype then version and header length, in one load: 08 00 45. */
    if ((*(__u32 *)(data + 12) & 0x00FFFFFF) != 0x00450008)
        return 0; /* another ethertype (or a VLAN tag), IP options, another version */
    /* Bytes 16..23 in one load: total length, identification, fragment word, TTL, protocol. */
    __u64 w = *(__u64 *)(data + 16);
    if (w & 0x0000FF3F00000000ULL)
        return 0; /* a fragment: offset bits or more-fragments set (the fragment word's 0x3FFF) */
    __u32 ip_length = bpf_ntohs((__u16)w);
    if (data + 14 + ip_length > data_end)
        return 0; /* truncated, or a multi-buffer frame */
    __u64 proto = w >> 56;
    __u64 word0, flags, traffic_class, bad_flags;
    if (proto == SW_IPPROTO_TCP) {
        __u16 t = *(__u16 *)(data + 46); /* data offset, then the flags */
        __u32 doff = (t & 0xF0) >> 2;
        if (doff < 20 || 20 + doff > ip_length)
            return 0;
        flags = t >> 8;
        traffic_class = (flags & (SW_TCP_SYN | SW_TCP_ACK)) == SW_TCP_SYN ? SW_TRAFFIC_CLASS_TCP_SYN
                                                                         : SW_TRAFFIC_CLASS_TCP_OTHER;
        word0 = (34 + doff) | (34 << 16) | ((__u64)ip_length << 32); /* payload, L4 header, IP length */
        bad_flags = sw_bad_tcp_flags(flags);
    } else if (proto == SW_IPPROTO_UDP) {
        __u32 udp_length = bpf_ntohs(*(__u16 *)(data + 38));
        if (udp_length < 8 || 20 + udp_length > ip_length)
            return 0;
        flags = 0;
        traffic_class = SW_TRAFFIC_CLASS_UDP;
        word0 = 42 | ((__u64)ip_length << 32); /* as sw_parse_l4: only TCP records the L4 offset */
        bad_flags = 0;
    } else {
        return 0;
    }
    /* Source and destination address in one load (the source in the low half), both ports in
     * another (network order). */
    __u64 addrs = *(__u64 *)(data + 26);
    __u32 raw_ports = *(__u32 *)(data + 34);
    __u64 mapped = bpf_htonl(0x0000FFFF);
    p->src[0] = 0;
    p->src[1] = (addrs << 32) | mapped;
    p->dst[0] = 0;
    p->dst[1] = (addrs & 0xFFFFFFFF00000000ULL) | mapped;
    __u64 *words = (__u64 *)&p->payload_offset;
    words[0] = word0;
    __u64 ports = bpf_ntohs((__u16)raw_ports) | ((__u64)bpf_ntohs((__u16)(raw_ports >> 16)) << 16);
    words[1] = ports | (proto << 32) | (((w >> 48) & 0xFF) << 40) | (flags << 48);  /* TTL; is_v6 = 0 */
    /* The invalid-packet checks of sw_invalid_reason(): four branches the usual packet does not
     * take, then their order of precedence only for a packet that took one. */
    __u64 invalid = SW_DROP_REASON_NONE;
    if (__builtin_expect(bad_flags || (raw_ports & 0xFFFF) == 0 || (raw_ports >> 16) == 0 ||
                         (__u32)addrs == (addrs >> 32), 0))
        invalid = (__u32)addrs == (addrs >> 32) ? SW_DROP_REASON_LAND
                  : bad_flags                    ? SW_DROP_REASON_BAD_TCP_FLAGS
                                                 : SW_DROP_REASON_PORT_ZERO;
    words[2] = (1ULL << 8) | (traffic_class << 16) | (invalid << 24);  /* fragment none, l4_ok, one buffer */
    return 1;
}

static __always_inline int sw_parse_frame(struct xdp_md *ctx, struct sw_packet *p, void *data, void *data_end)
{
    void *cursor = data;
    __u16 proto = sw_parse_ethernet(&cursor, data_end);
    if (proto == bpf_htons(SW_ETH_P_IP))
        return sw_parse_ipv4(ctx, p, data, cursor, data_end);
    if (proto == bpf_htons(SW_ETH_P_IPV6))
        return sw_parse_ipv6(ctx, p, data, cursor, data_end);
    return SW_PARSE_NOT_IP;
}

#endif /* SEAWALL_PARSING_H */
