/* Seawall: SYN authentication with the kernel's raw SYN-cookie helpers (issue 19,
 * docs/design/syn-cookies.md).
 *
 * For a destination and port under SYN attack (the engine's mark, sw_attack), a SYN from a
 * source nobody validated never reaches the server: the bridge answers it itself with a
 * SYN-ACK whose sequence number is a cookie (bpf_tcp_raw_gen_syncookie_*, XDP_TX back out of
 * the external NIC). A spoofed source never sees that SYN-ACK, so it cannot answer it. A real
 * client's ACK carries the cookie back (ack = cookie + 1); bpf_tcp_raw_check_syncookie_* proves
 * it, and the source is validated for SW_SYN_VALIDATED_TTL_MS. The server never saw that
 * handshake; what follows is the tenant's syn_auth:
 *   - "splice" (default): the cookie SYN-ACK announced a zero window, so the client holds its data.
 *     The bridge recovers the MSS the cookie encodes (probing the check), records the flow in
 *     sw_splices and rewrites the ACK into the client's SYN (MSS option only) to the server. The
 *     server's SYN-ACK becomes the client's window update; the client's first data segment then
 *     completes the server's handshake. For the connection's life the bridge adds
 *     delta = server ISN - cookie to the client's ack numbers and subtracts it from the server's
 *     sequence numbers, with incremental checksum updates (SW_PROG_SPLICE, both directions). The
 *     spliced connection has no window scaling, SACK or timestamps: the cookie carries none.
 *   - "reset": the bridge resets the client's half of it (reset-and-retry); the retry passes.
 * Either way later SYNs of the source pass at once, without cookies and without the shared SYN
 * rule or budget, under the source's own limit (SW_SYN_SOURCE_PPS).
 *
 * Cost on the usual path: one array load per TCP packet (the splice gate, sw_spliced) until the
 * first splice; then one hash lookup (sw_splice_dests) per TCP packet to a tenant address, and
 * for splice-active destinations one flow lookup. sw_heuristics() runs only for destinations with an attack
 * mark, and reaches sw_synauth() only for TCP under a SYN mark with SYN protection on. The
 * rewrites (SYN into SYN-ACK, ACK into SYN or reset, splice translation) are separate programs,
 * tail-called at the end of the port program (SW_PROG_SYNAUTH, SW_PROG_SPLICE): their stack
 * copies, helper calls and tail adjustments stay out of the main program's verifier state. The
 * port program itself only looks spliced flows up (sw_spliced), behind a gate that is closed
 * until the first splice.
 *
 * Included by seawall.c after its helpers (sw_flow, sw_tcp_number, sw_parse_ethernet) and the
 * accessors of the maps (sw_syn_source_of, sw_synack_bucket_of, ...): bcc rewrites map calls in
 * the main source file only, so a header cannot call .lookup() itself. Layouts: seawall.h.
 */
#ifndef SEAWALL_SYNAUTH_H
#define SEAWALL_SYNAUTH_H

/* Defined in flows.h (included after this file): the connection accounting of a handshake the splice
 * program ends itself. */
struct sw_flow_key;
static __always_inline void sw_flows_splice_opened(struct xdp_md *ctx, struct sw_flow_key *k, const __u64 *server,
                                                   const __u64 *client, __u32 client_next);

/* sw_heuristics() result for a SYN of a validated source within its own limit: skip the shared
 * SYN rule and class budget (outside every drop reason's range). */
#define SW_SYNAUTH_BYPASS 0x100
/* Layouts the bridge writes: a SYN-ACK with one option (MSS), a bare reset. */
#define SW_SYNAUTH_SYNACK_TCP_LEN 24
#define SW_SYNAUTH_RST_TCP_LEN 20
#define SW_SYNAUTH_MAX_VLAN_BYTES (4 * SW_MAX_VLAN_DEPTH) /* bytes of tags before the IP header */
/* Bound of a spliced packet's TCP header offset for the verifier: Ethernet, tags, IPv6 and
 * SW_MAX_IPV6_EXT_HEADERS extension headers of at most 2,048 bytes each is far more than any
 * frame; 1,024 bytes covers every header chain a real stack sends. */
#define SW_SPLICE_MAX_L4_OFFSET 1024

/* Takes a token if there is one (sw_bucket_refill: rate per second, burst in tokens <= rate). */
static __always_inline int sw_synauth_take(struct sw_token_bucket *b, __u64 now, __u64 rate, __s64 burst)
{
    sw_bucket_refill(&b->last_ns, &b->tokens, now, rate, burst);
    if (b->tokens <= 0)
        return 0;
    b->tokens--;
    return 1;
}


static __always_inline void sw_synauth_validate(const __u64 *addr, __u64 now)
{
    struct sw_addr_key src;
    __builtin_memcpy(src.addr, addr, 16);
    struct sw_syn_source s = {.validated_ns = now, .bucket = {.last_ns = now, .tokens = SW_SYN_SOURCE_BURST}};
    sw_syn_source_set(&src, &s);
}

/* The IP header of a TCP packet the cookie helpers can take: IPv4 without options, IPv6
 * without extension headers (the helpers read fixed-size headers). 0 otherwise. */
static __always_inline void *sw_synauth_l3(struct sw_packet *p, void *data, void *data_end)
{
    void *cursor = data;
    if (!sw_parse_ethernet(&cursor, data_end))
        return 0;
    __u32 ip_len = p->is_v6 ? 40 : 20;
    if ((__u32)(cursor - data) + ip_len != p->l4_offset || p->fragment != SW_FRAG_NONE)
        return 0;
    return cursor;
}

/* Does a pure ACK (no payload) of an unknown source carry a valid cookie? */
static __always_inline int sw_synauth_cookie_ack(struct sw_packet *p, void *data, void *data_end)
{
    void *l3 = sw_synauth_l3(p, data, data_end);
    if (!l3)
        return 0;
    long r;
    if (p->is_v6) {
        if (l3 + 40 + 20 > data_end)
            return 0;
        struct tcphdr *th = l3 + 40;
        if (p->ip_length != 40 + th->doff * 4)
            return 0;
        r = bpf_tcp_raw_check_syncookie_ipv6(l3, th);
    } else {
        if (l3 + 20 + 20 > data_end)
            return 0;
        struct tcphdr *th = l3 + 20;
        if (p->ip_length != 20 + th->doff * 4)
            return 0;
        r = bpf_tcp_raw_check_syncookie_ipv4(l3, th);
        /* Unlike the other branch's: clang would otherwise sink both calls into one call of a
         * selected helper address, an indirect call the verifier rejects ("unknown opcode 8d"). */
        asm volatile("" : "+r"(r));
    }
    return r == 0;
}

/* sw_heuristics()' TCP part for a destination under SYN attack with SYN protection on:
 * 0 (continue with rules and budgets), a drop reason, SW_DROP_REASON_SYN_COOKIE (the port
 * program then tail-calls SW_PROG_SYNAUTH, which answers), or SW_SYNAUTH_BYPASS. */
static __always_inline int sw_synauth(struct sw_packet *p, struct sw_addr_entry *st, void *data, void *data_end)
{
    __u8 tcp_flags = p->tcp_flags & (SW_TCP_FIN | SW_TCP_SYN | SW_TCP_ACK | SW_TCP_RST);
    if (tcp_flags == SW_TCP_ACK) {
        struct sw_addr_key src;
        __builtin_memcpy(src.addr, p->src, 16);
        __u64 now = bpf_ktime_get_ns();
        struct sw_syn_source *known = sw_syn_source_of(&src);
        if (known && now - known->validated_ns < SW_SYN_VALIDATED_TTL_MS * SW_MS)
            return 0;
        /* The ACK that completes a handshake with the server validates its source. */
        struct sw_flow_key k;
        sw_flow(&k, p->dst, p->src, p->dport, p->sport);
        __u32 *expected = sw_synack_expected(&k);
        __u32 ack;
        if (expected && sw_tcp_number(p, data, data_end, 0, &ack) && ack == *expected) {
            sw_synauth_validate(p->src, now);
            sw_synack_forget(&k);
            return 0;
        }
        /* ... and so does one that carries the cookie of the bridge's SYN-ACK. An invalid
         * cookie is no reason to drop: the ACK may belong to a connection older than the attack,
         * and the ACK-flood protection decides about it as before. */
        if (!sw_synauth_cookie_ack(p, data, data_end)) {
            sw_synauth_count(SW_SYN_AUTH_STAT_COOKIE_INVALID);
            return 0;
        }
        sw_synauth_count(SW_SYN_AUTH_STAT_COOKIE_VALID);
        sw_synauth_validate(p->src, now);
        return SW_DROP_REASON_SYN_COOKIE; /* the server never saw this handshake: reset it */
    }
    if (tcp_flags != SW_TCP_SYN)
        return 0;
    /* Only the attacked ports: a flood on 443 must not delay new visitors on 80. */
    struct sw_rule_set_key akey = {.tenant_idx = st->tenant_idx, .scope = SW_SCOPE_ADDRESS};
    __builtin_memcpy(akey.addr, p->dst, 16);
    struct sw_attack_state *a = sw_attack_of(&akey);
    if (a && (p->dport < a->syn_port_lo || p->dport > a->syn_port_hi))
        return 0;
    __u64 now = bpf_ktime_get_ns();
    struct sw_addr_key src;
    __builtin_memcpy(src.addr, p->src, 16);
    struct sw_syn_source *known = sw_syn_source_of(&src);
    if (known && now - known->validated_ns < SW_SYN_VALIDATED_TTL_MS * SW_MS) {
        /* A validated source never shares a limit with the flood; it has its own. */
        if (!sw_synauth_take(&known->bucket, now, SW_SYN_SOURCE_PPS, SW_SYN_SOURCE_BURST)) {
            sw_synauth_count(SW_SYN_AUTH_STAT_SOURCE_OVER_LIMIT);
            return SW_DROP_REASON_HEURISTIC;
        }
        sw_synauth_count(SW_SYN_AUTH_STAT_VALIDATED_SYN);
        return SW_SYNAUTH_BYPASS;
    }
    /* Unknown source: a cookie SYN-ACK, within the destination's and the appliance's budgets
     * (the bridge must never become a reflector for spoofed victims). */
    struct sw_addr_key dst;
    __builtin_memcpy(dst.addr, p->dst, 16);
    struct sw_token_bucket *per_dst = sw_synack_bucket_of(&dst, now);
    struct sw_token_bucket *global = sw_synack_global_bucket();
    if (!per_dst) {
        sw_synauth_count(SW_SYN_AUTH_STAT_SYNACK_BUDGET);
        return SW_DROP_REASON_HEURISTIC;
    }
    if (!global || !sw_synauth_take(per_dst, now, SW_SYNACK_RATE_PPS, SW_SYNACK_BURST(SW_SYNACK_RATE_PPS)) ||
        !sw_synauth_take(global, now, SW_SYNACK_GLOBAL_PPS, SW_SYNACK_BURST(SW_SYNACK_GLOBAL_PPS))) {
        sw_synauth_count(SW_SYN_AUTH_STAT_SYNACK_BUDGET);
        return SW_DROP_REASON_HEURISTIC;
    }
    return SW_DROP_REASON_SYN_COOKIE;
}

/* Ones' complement sum folded to 16 bits. */
static __always_inline __u16 sw_synauth_fold(__u64 sum)
{
    sum = (sum & 0xFFFFFFFF) + (sum >> 32);
    sum = (sum & 0xFFFFFFFF) + (sum >> 32);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    return (__u16)sum;
}

/* Sum of n 32-bit words at constant offsets (the loop unrolls). */
#define SW_SYNAUTH_SUM_WORDS(ptr, n, acc)                          \
    do {                                                           \
        _Pragma("unroll") for (int _i = 0; _i < (n); _i++)         \
            (acc) += ((const __u32 *)(ptr))[_i];                   \
    } while (0)

/* The IPv4 header of a segment of tcp_len bytes the bridge writes (checksum included), turned
 * around when `swap` (a reply); returns the pseudo-header sum of the TCP checksum. */
static __always_inline __u64 sw_synauth_ipv4(struct iphdr *ip, __u32 tcp_len, int swap)
{
    if (swap) {
        __be32 s = ip->saddr;
        ip->saddr = ip->daddr;
        ip->daddr = s;
    }
    ip->tos = 0;
    ip->tot_len = bpf_htons(sizeof(*ip) + tcp_len);
    ip->id = 0;
    ip->frag_off = bpf_htons(0x4000); /* DF */
    ip->ttl = SW_SYNACK_TTL;
    ip->check = 0;
    __u64 sum = 0;
    SW_SYNAUTH_SUM_WORDS(ip, 5, sum);
    ip->check = ~sw_synauth_fold(sum);
    return (__u64)ip->saddr + ip->daddr + bpf_htons(SW_IPPROTO_TCP) + bpf_htons(tcp_len);
}

static __always_inline __u64 sw_synauth_ipv6(struct ipv6hdr *ip6, __u32 tcp_len, int swap)
{
    if (swap) {
        struct in6_addr s = ip6->saddr;
        ip6->saddr = ip6->daddr;
        ip6->daddr = s;
    }
    ip6->payload_len = bpf_htons(tcp_len);
    ip6->hop_limit = SW_SYNACK_TTL;
    __u64 sum = 0;
    SW_SYNAUTH_SUM_WORDS(&ip6->saddr, 8, sum); /* saddr and daddr are adjacent */
    return sum + bpf_htonl(tcp_len) + bpf_htonl(SW_IPPROTO_TCP);
}

/* The MSS a cookie's table index stands for (the kernel's tables, docs/design/syn-cookies.md). */
static __always_inline __u16 sw_splice_mss(__u32 is_v6, __u32 index)
{
    if (is_v6)
        return index == 0 ? 1220 : index == 1 ? 1420 : index == 2 ? 1440 : 8940;
    return index == 0 ? 536 : index == 1 ? 1300 : index == 2 ? 1440 : 1460;
}

/* What the bridge writes in place of the frame: a TCP segment without payload, with one option
 * (MSS) when mss is non-zero. `swap` turns it around (a reply, XDP_TX); otherwise it keeps its
 * addresses, ports and MACs (it continues in the frame's direction). l3_off: the IP header's
 * offset, of an IPv4 header without options or an IPv6 header without extension headers.
 * 0, or -1 when the frame cannot take it. */
static __always_inline int sw_synauth_write(struct xdp_md *ctx, __u64 l3_off, __u32 is_v6, int swap, __u32 seq,
                                            __u32 ack, __u8 flags, __u16 window, __u16 mss)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    if (l3_off > ETH_HLEN + SW_SYNAUTH_MAX_VLAN_BYTES)
        return -1;
    __u32 tcp_len = mss ? SW_SYNAUTH_SYNACK_TCP_LEN : SW_SYNAUTH_RST_TCP_LEN;
    __u32 l4_off = l3_off + (is_v6 ? 40 : 20);
    /* The frame becomes exactly this segment: grow a SYN without options, shrink anything longer. */
    int delta = (int)(l4_off + tcp_len) - (int)(data_end - data);
    if (delta && bpf_xdp_adjust_tail(ctx, delta))
        return -1;
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    void *l3 = data + l3_off;
    if (data + ETH_HLEN > data_end)
        return -1;
    if (swap) {
        struct ethhdr *eth = data;
        __u8 mac[ETH_ALEN];
        __builtin_memcpy(mac, eth->h_source, ETH_ALEN);
        __builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
        __builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
    }
    __u64 sum;
    struct tcphdr *tcp;
    if (is_v6) {
        if (l3 + 40 + SW_SYNAUTH_RST_TCP_LEN > data_end)
            return -1;
        sum = sw_synauth_ipv6(l3, tcp_len, swap);
        tcp = l3 + 40;
    } else {
        if (l3 + 20 + SW_SYNAUTH_RST_TCP_LEN > data_end)
            return -1;
        sum = sw_synauth_ipv4(l3, tcp_len, swap);
        tcp = l3 + 20;
    }
    if (swap) {
        __be16 port = tcp->source;
        tcp->source = tcp->dest;
        tcp->dest = port;
    }
    tcp->seq = bpf_htonl(seq);
    tcp->ack_seq = bpf_htonl(ack);
    ((__u8 *)tcp)[12] = (tcp_len / 4) << 4;
    ((__u8 *)tcp)[13] = flags;
    tcp->window = bpf_htons(window);
    tcp->check = 0;
    tcp->urg_ptr = 0;
    if (mss) {
        if ((void *)tcp + SW_SYNAUTH_SYNACK_TCP_LEN > data_end)
            return -1;
        __u8 *opt = (__u8 *)(tcp + 1);
        opt[0] = 2; /* TCPOPT_MSS, the only option a cookie carries */
        opt[1] = 4;
        opt[2] = mss >> 8;
        opt[3] = mss & 0xFF;
        SW_SYNAUTH_SUM_WORDS(tcp, SW_SYNAUTH_SYNACK_TCP_LEN / 4, sum);
    } else {
        SW_SYNAUTH_SUM_WORDS(tcp, SW_SYNAUTH_RST_TCP_LEN / 4, sum);
    }
    tcp->check = ~sw_synauth_fold(sum);
    return 0;
}

/* The IP header of the frame in front of the program, if the bridge can write a segment over
 * it (IPv4 without options, not a fragment; IPv6 without extension headers; TCP): its offset,
 * and the family in *is_v6. -1 otherwise. */
static __always_inline __s64 sw_synauth_l3_of(struct xdp_md *ctx, __u32 *is_v6)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    void *cursor = data;
    __u16 proto = sw_parse_ethernet(&cursor, data_end);
    __u64 l3_off = cursor - data;
    asm volatile("" : "+r"(l3_off));
    if (l3_off > ETH_HLEN + SW_SYNAUTH_MAX_VLAN_BYTES)
        return -1;
    void *l3 = data + l3_off;
    if (proto == bpf_htons(SW_ETH_P_IP)) {
        struct iphdr *ip = l3;
        if ((void *)(ip + 1) > data_end || ip->ihl != 5 || ip->protocol != SW_IPPROTO_TCP ||
            (ip->frag_off & bpf_htons(0x3FFF)))
            return -1;
        *is_v6 = 0;
    } else if (proto == bpf_htons(SW_ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = l3;
        if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != SW_IPPROTO_TCP)
            return -1;
        *is_v6 = 1;
    } else {
        return -1;
    }
    return l3_off;
}

/* 32-bit field `field` of a TCP header set to `value` (network order) with the checksum updated
 * incrementally (RFC 1624): the payload is not read again. */
static __always_inline void sw_splice_set32(struct tcphdr *tcp, __be32 *field, __be32 value)
{
    __be32 old = *field;
    *field = value;
    __u64 sum = (__u16)~tcp->check;
    sum += (__u32)~old;
    sum += value;
    tcp->check = ~sw_synauth_fold(sum);
}

/* A valid cookie ACK in splice mode: recover the MSS the cookie encodes, record the splice,
 * and turn the ACK into the client's SYN to the server (MSS only: the cookie carries nothing
 * else, so the spliced connection runs without window scaling, SACK and timestamps). */
static __always_inline int sw_splice_open(struct xdp_md *ctx, struct sw_packet *p, __u64 l3_off, __u32 is_v6)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    if (l3_off > ETH_HLEN + SW_SYNAUTH_MAX_VLAN_BYTES)
        return XDP_DROP;
    void *l3 = data + l3_off;
    struct tcphdr probe;
    if (is_v6) {
        if (l3 + 40 + sizeof(probe) > data_end)
            return XDP_DROP;
        __builtin_memcpy(&probe, l3 + 40, sizeof(probe));
    } else {
        if (l3 + 20 + sizeof(probe) > data_end)
            return XDP_DROP;
        __builtin_memcpy(&probe, l3 + 20, sizeof(probe));
    }
    /* The check accepts the ack lowered by 1..index, where index (0..3) is the cookie's MSS
     * table index, and returns nothing else: the largest offset that still passes is it. */
    __u32 ack = bpf_ntohl(probe.ack_seq);
    __u32 index = 0;
#pragma unroll
    for (int d = 1; d <= 3; d++) {
        probe.ack_seq = bpf_htonl(ack - d);
        long r;
        if (is_v6) {
            r = bpf_tcp_raw_check_syncookie_ipv6(l3, &probe);
        } else {
            r = bpf_tcp_raw_check_syncookie_ipv4(l3, &probe);
            asm volatile("" : "+r"(r)); /* no sinking into an indirect call, as in sw_synauth_cookie_ack */
        }
        if (r != 0)
            break;
        index = d;
    }
    __u64 now = bpf_ktime_get_ns();
    struct sw_splice sp = {.client_isn = bpf_ntohl(probe.seq) - 1, .cookie = ack - 1,
                           .client_window = bpf_ntohs(probe.window), .state = SW_SPLICE_SYN_SENT,
                           .mss_index = index, .syn_ns = now};
    struct sw_flow_key k;
    sw_flow(&k, p->dst, p->src, p->dport, p->sport);
    sw_splice_set(&k, &sp);
    sw_splice_dest_open(p->dst, now);
    if (sw_synauth_write(ctx, l3_off, is_v6, 0, sp.client_isn, 0, SW_TCP_SYN, sp.client_window,
                         sw_splice_mss(is_v6, index)))
        return XDP_DROP;
    sw_synauth_count(SW_SYN_AUTH_STAT_SPLICE_SYN);
    return sw_redirect(SW_PORT_INTERNAL);
}

/* SW_PROG_SYNAUTH: tail-called by the inbound program for a packet it marked
 * SW_DROP_REASON_SYN_COOKIE (already counted there). A SYN becomes the cookie SYN-ACK (XDP_TX);
 * a cookie ACK becomes the client's SYN to the server (splice) or the reset of the client's
 * half-open connection (syn_auth = "reset", XDP_TX). Anything it cannot answer is dropped, as
 * the port program would have. */
static __always_inline int sw_synauth_program(struct xdp_md *ctx)
{
    struct sw_scratch *scratch = sw_scratch_of();
    if (!scratch)
        return XDP_DROP;
    __u32 is_v6 = 0;
    __s64 l3 = sw_synauth_l3_of(ctx, &is_v6);
    if (l3 < 0) {
        sw_synauth_count(SW_SYN_AUTH_STAT_INELIGIBLE);
        return XDP_DROP;
    }
    __u64 l3_off = l3;
    asm volatile("" : "+r"(l3_off));
    if (l3_off > ETH_HLEN + SW_SYNAUTH_MAX_VLAN_BYTES)
        return XDP_DROP;
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    __u32 l4_off = l3_off + (is_v6 ? 40 : 20);
    struct tcphdr *tcp = data + l4_off;
    if ((void *)(tcp + 1) > data_end)
        return XDP_DROP;
    __u8 flags = ((__u8 *)tcp)[13] & (SW_TCP_FIN | SW_TCP_SYN | SW_TCP_RST | SW_TCP_ACK);
#ifdef SW_SYNAUTH_BENCH
    /* BPF_PROG_TEST_RUN with repeat > 1 runs again on the SYN-ACK it wrote: treat it as the SYN. */
    if (flags == (SW_TCP_SYN | SW_TCP_ACK))
        flags = SW_TCP_SYN;
#endif
    int splice = !scratch->verdict.syn_reset;
    if (flags == SW_TCP_ACK) {
        if (splice)
            return sw_splice_open(ctx, &scratch->packet, l3_off, is_v6);
        /* Reset-and-retry: seq exactly what the client expects next, so it is accepted. */
        if (sw_synauth_write(ctx, l3_off, is_v6, 1, bpf_ntohl(tcp->ack_seq), 0, SW_TCP_RST, 0, 0))
            return XDP_DROP;
        sw_synauth_count(SW_SYN_AUTH_STAT_RST_SENT);
        return XDP_TX;
    }
    if (flags != SW_TCP_SYN)
        return XDP_DROP;
    /* The helper wants the TCP header with its options as one block of doff * 4 bytes; a
     * packet pointer would need 60 readable bytes after it, which a short SYN lacks: copy. */
    __u8 th[60] = {};
    __u32 th_len = tcp->doff * 4; /* at most 60: one comparison (not clang's fused range
                                   * check, which loses the bound) proves it non-zero */
    if (th_len < 20 || bpf_xdp_load_bytes(ctx, l4_off, th, th_len))
        return XDP_DROP;
    void *ip = data + l3_off;
    __s64 r;
    if (is_v6) {
        if (ip + 40 > data_end)
            return XDP_DROP;
        r = bpf_tcp_raw_gen_syncookie_ipv6(ip, (struct tcphdr *)th, th_len);
    } else {
        if (ip + 20 > data_end)
            return XDP_DROP;
        r = bpf_tcp_raw_gen_syncookie_ipv4(ip, (struct tcphdr *)th, th_len);
        asm volatile("" : "+r"(r)); /* no sinking into an indirect call, as in sw_synauth_cookie_ack */
    }
    if (r < 0) {
        sw_synauth_count(SW_SYN_AUTH_STAT_GEN_ERROR);
        return XDP_DROP;
    }
    /* Splice: a zero window holds the client's data until the server has answered (the
     * server's SYN-ACK becomes the window update, sw_splice_program). */
    if (sw_synauth_write(ctx, l3_off, is_v6, 1, (__u32)r, bpf_ntohl(((struct tcphdr *)th)->seq) + 1,
                         SW_TCP_SYN | SW_TCP_ACK, splice ? 0 : SW_SYNACK_WINDOW, (__u16)(r >> 32)))
        return XDP_DROP;
    sw_synauth_count(SW_SYN_AUTH_STAT_SYNACK_SENT);
    return XDP_TX;
}

/* SW_PROG_SPLICE(dir): a packet of a spliced connection (sw_spliced). Inbound (client to
 * server): ack += delta; before the server answered, the client's segments are dropped (its
 * probe resends the SYN to a silent server). Outbound (server to client): the server's SYN-ACK
 * becomes the client's window update (the client's first data segment then completes the
 * server's handshake; a retransmitted SYN-ACK, which means the server missed that, is answered
 * with the handshake's ACK by XDP_TX inside); a reset of the SYN is put into the client's
 * numbering; everything else gets seq -= delta. */
static __always_inline int sw_splice_program(struct xdp_md *ctx, const __u32 dir)
{
    struct sw_scratch *scratch = sw_scratch_of();
    if (!scratch)
        return XDP_DROP;
    struct sw_packet *p = &scratch->packet;
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    __u64 l4_off = p->l4_offset;
    asm volatile("" : "+r"(l4_off));
    if (l4_off > SW_SPLICE_MAX_L4_OFFSET)
        return XDP_DROP;
    struct tcphdr *tcp = data + l4_off;
    if ((void *)(tcp + 1) > data_end)
        return XDP_DROP;
    __u8 flags = ((__u8 *)tcp)[13] & (SW_TCP_FIN | SW_TCP_SYN | SW_TCP_RST | SW_TCP_ACK);
    /* The usual segment of an open flow: the port program's lookup gave the delta. */
    if (scratch->verdict.splice_state == SW_SPLICE_OPEN && !(flags & SW_TCP_SYN)) {
        __u32 delta = scratch->verdict.splice_delta;
        if (dir == SW_DIRECTION_INBOUND) {
            if (flags & SW_TCP_ACK)
                sw_splice_set32(tcp, &tcp->ack_seq, bpf_htonl(bpf_ntohl(tcp->ack_seq) + delta));
            return sw_redirect(SW_PORT_INTERNAL);
        }
        sw_splice_set32(tcp, &tcp->seq, bpf_htonl(bpf_ntohl(tcp->seq) - delta));
        return sw_redirect(SW_PORT_EXTERNAL);
    }
    struct sw_flow_key k;
    if (dir == SW_DIRECTION_INBOUND)
        sw_flow(&k, p->dst, p->src, p->dport, p->sport);
    else
        sw_flow(&k, p->src, p->dst, p->sport, p->dport);
    struct sw_splice *s = sw_splice_of(&k);
    if (!s)
        return XDP_DROP; /* evicted since the port program saw it */
    if (dir == SW_DIRECTION_INBOUND) {
        if (s->state != SW_SPLICE_OPEN) {
            __u64 now = bpf_ktime_get_ns();
            if (flags == SW_TCP_ACK && bpf_ntohl(tcp->ack_seq) == s->cookie + 1 &&
                now - s->syn_ns >= SW_SPLICE_SYN_RETRY_MS * SW_MS) {
                __u32 is_v6 = 0;
                __s64 l3 = sw_synauth_l3_of(ctx, &is_v6);
                if (l3 < 0)
                    return XDP_DROP;
                s->syn_ns = now;
                if (sw_synauth_write(ctx, l3, is_v6, 0, s->client_isn, 0, SW_TCP_SYN, s->client_window,
                                     sw_splice_mss(is_v6, s->mss_index)))
                    return XDP_DROP;
                sw_synauth_count(SW_SYN_AUTH_STAT_SPLICE_SYN_RETRY);
                return sw_redirect(SW_PORT_INTERNAL);
            }
            sw_synauth_count(SW_SYN_AUTH_STAT_SPLICE_EARLY_DROP);
            return XDP_DROP;
        }
        if (flags & SW_TCP_ACK)
            sw_splice_set32(tcp, &tcp->ack_seq, bpf_htonl(bpf_ntohl(tcp->ack_seq) + s->delta));
        return sw_redirect(SW_PORT_INTERNAL);
    }
    if ((flags & (SW_TCP_SYN | SW_TCP_ACK | SW_TCP_RST)) == (SW_TCP_SYN | SW_TCP_ACK)) {
        if (bpf_ntohl(tcp->ack_seq) != s->client_isn + 1) {
            sw_synauth_count(SW_SYN_AUTH_STAT_SPLICE_BAD_SYNACK);
            return XDP_DROP;
        }
        __u32 server_isn = bpf_ntohl(tcp->seq);
        __u16 window = bpf_ntohs(tcp->window);
        int retransmitted = s->state == SW_SPLICE_OPEN;
        s->delta = server_isn - s->cookie;
        s->state = SW_SPLICE_OPEN;
        __u32 is_v6 = 0;
        __s64 l3 = sw_synauth_l3_of(ctx, &is_v6);
        if (l3 < 0)
            return XDP_DROP;
        if (retransmitted) {
            __u32 client_next = s->client_isn + 1;
            if (sw_synauth_write(ctx, l3, is_v6, 1, client_next, server_isn + 1, SW_TCP_ACK,
                                 s->client_window, 0))
                return XDP_DROP;
            sw_synauth_count(SW_SYN_AUTH_STAT_SPLICE_ACK_TO_SERVER);
            /* The server's handshake ends here: its connection is accounted (and reset at a block) from now. */
            sw_flows_splice_opened(ctx, &k, p->src, p->dst, client_next);
            return XDP_TX;
        }
        if (sw_synauth_write(ctx, l3, is_v6, 0, s->cookie + 1, s->client_isn + 1, SW_TCP_ACK, window, 0))
            return XDP_DROP;
        sw_synauth_count(SW_SYN_AUTH_STAT_SPLICE_OPEN);
        return sw_redirect(SW_PORT_EXTERNAL);
    }
    if (s->state != SW_SPLICE_OPEN) {
        if (!(flags & SW_TCP_RST)) {
            sw_synauth_count(SW_SYN_AUTH_STAT_SPLICE_BAD_SYNACK);
            return XDP_DROP;
        }
        /* The server refused the SYN: the client, established with the bridge, must hear it
         * at the sequence number it expects next. The splice ends. */
        sw_splice_set32(tcp, &tcp->seq, bpf_htonl(s->cookie + 1));
        sw_splice_forget(&k);
        sw_synauth_count(SW_SYN_AUTH_STAT_SPLICE_SERVER_RST);
        return sw_redirect(SW_PORT_EXTERNAL);
    }
    sw_splice_set32(tcp, &tcp->seq, bpf_htonl(bpf_ntohl(tcp->seq) - s->delta));
    return sw_redirect(SW_PORT_EXTERNAL);
}

#endif /* SEAWALL_SYNAUTH_H */
