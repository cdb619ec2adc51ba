/* Seawall: connection accounting, per-source limits and the dynamic block list (issue 15;
 * docs/design/connection-accounting.md).
 *
 * Only TCP to and from the addresses of protected tenants. What is counted is what the server
 * sees (the port program asks sw_flows_wanted() with the final verdict, after monitor mode and
 * for spliced flows too, synauth.h, and tail-calls SW_PROG_FLOWS, sw_flows_track(), when so):
 *   - sw_flow_conns, an LRU map keyed by the flow (server local), follows each connection
 *     from the client's SYN through the server's SYN-ACK to the client's ACK (a new connection)
 *     and to the first FIN or RST (closed: the entry goes), with its payload bytes per direction;
 *   - sw_flow_dests (per destination) and sw_flow_pairs (per destination and source), LRU maps
 *     of cumulative counters: handshakes completed, connections open now, HTTP/1.x request
 *     lines and TLS ClientHellos the clients sent, payload bytes per direction.
 * A connection adds its bytes to the two rows in batches (SW_FLOW_FLUSH_BYTES, or at a
 * request, a hello, the handshake's end or the close), so a segment in mid-connection costs
 * one lookup, not three. A pure ACK (the most common packet) costs no lookup and no tail call
 * unless it may end a handshake: the server's SYN-ACK leaves the acknowledgment number that
 * ends it in sw_flow_pending, an array the ACK reads inline.
 *
 * Mitigation, both behind gate bits in sw_config.flags (SW_FLOW_GATE_*) that user space sets
 * when a list has entries (empty lists cost one load per packet of a protected tenant):
 *   - sw_blocked: (tenant, source) -> expiry, ns; every inbound packet of the source to the
 *     tenant is dropped until then (SW_DROP_REASON_BLOCKED). Python caps it (oldest go first).
 *   - sw_source_limits: (tenant, destination, port or 0) -> limits on the inbound SYNs of each
 *     source: a token bucket of new connections (sw_limit_buckets, LRU, per source) and a
 *     ceiling on the source's open connections to the destination (its sw_flow_pairs gauge).
 * A blocked source's connections that the server holds are reset at the server (the slots go free):
 * soon after the block, by user space through sw_flows_reset_held() from what the entry recorded (the client's
 * next sequence number and frame header), and at any later segment of the source
 * (sw_flows_block_reset()).
 *
 * bcc rewrites map calls in seawall.c only: the maps are declared here, and seawall.c defines
 * the accessors declared below right after including this file.
 */
#ifndef SEAWALL_FLOWS_H
#define SEAWALL_FLOWS_H

/* From dataplane/constants.py (cflags()): SW_FLOW_STATE_* (connection states), SW_FLOW_STAT_*
 * (sw_flow_stats indices), SW_FLOW_GATE_* (sw_config.flags bits), SW_FLOW_TABLE_ENTRIES,
 * SW_FLOW_DESTINATION_ENTRIES, SW_FLOW_SOURCE_ENTRIES, SW_BLOCKED_SOURCES_MAX,
 * SW_SOURCE_LIMITS_MAX, SW_FLOW_FLUSH_BYTES, SW_FLOW_PENDING_BITS. */

/* The Ethernet header with SW_MAX_VLAN_DEPTH tags, to the L3 type: bytes. */
#define SW_FLOW_L2_BYTES (ETH_HLEN + 4 * SW_MAX_VLAN_DEPTH)

/* A tracked connection (sw_flow_conns, key: struct sw_flow_key with the server local). */
struct sw_flow_conn {
    /* TCP payload bytes while established not yet added to the destination and pair rows, client ->
     * server and server -> client. The two ports run on different CPUs: every change is atomic, and
     * a flush takes the bytes with an exchange, so no byte is added twice or lost (sw_flow_take). */
    __u64 to_server;
    __u64 to_client;
    __u64 state;           /* SW_FLOW_STATE_*; leaving ESTABLISHED is a compare-and-swap (one CPU; the
                            * program's atomics are 64-bit only) */
    __u32 tenant_idx;
    /* What a reset of the connection at the block needs (sw_flows_reset_held), written by the inbound
     * segments that already pay the accounting program, never by a pure ACK in mid-connection:
     * the client's next sequence number (host order; the handshake's last ACK carries ISN + 1, each
     * segment with payload moves it to its end), and the client -> server frame's Ethernet header with
     * its VLAN tags up to the L3 type (l2_len bytes of l2), so that the reset reaches the server's NIC
     * as the client's frames do. */
    __u32 client_next;
    __u8 l2[SW_FLOW_L2_BYTES];
    __u8 l2_len;
    __u8 pad;
};
_Static_assert(sizeof(struct sw_flow_conn) % 8 == 0, "no implicit padding: map values are copied whole");

/* A handshake in progress (sw_flow_handshakes, key as sw_flow_conns): SW_FLOW_STATE_SYN or SYN_ACK. */
struct sw_flow_handshake {
    __u32 state;
    __u32 tenant_idx;
};

/* Per (destination, source) row key (sw_flow_pairs). */
struct sw_flow_pair_key {
    __u8 dst[16] SW_ALIGNED(8);
    __u8 src[16] SW_ALIGNED(8);
};

/* Cumulative counters of a destination or a (destination, source) pair, shared by the CPUs
 * (atomic adds). */
struct sw_flow_counts {
    __u64 new_connections; /* handshakes completed */
    __s64 established;     /* gauge: completed, not yet closed */
    __u64 http_requests;   /* client segments starting an HTTP/1.x request line */
    __u64 tls_hellos;      /* client segments carrying a TLS ClientHello */
    __u64 bytes_to_server; /* TCP payload bytes */
    __u64 bytes_to_client;
    __u32 tenant_idx;
    __u32 pad;
};

/* Per-source limits of an attacked destination and port (sw_source_limits). */
struct sw_limit_key {
    __u32 tenant_idx;
    __u16 dport;           /* host byte order; 0 = every port of the destination */
    __u16 pad;
    __u8 dst[16] SW_ALIGNED(8);
};

struct sw_source_limit {
    __u32 new_per_s;       /* new connections (SYNs) a source may open a second; 0 = no rate limit */
    __u32 new_burst;       /* ... and its burst, SYNs */
    __u32 max_concurrent;  /* open connections a source may hold to the destination; 0 = no ceiling */
    __u32 pad;
};

/* A tenant's blocked source (sw_blocked). */
struct sw_block_key {
    __u32 tenant_idx;
    __u32 pad;
    __u8 src[16] SW_ALIGNED(8);
};

SW_MAP("lru_hash", struct sw_flow_key, struct sw_flow_conn, sw_flow_conns, SW_FLOW_TABLE_ENTRIES, 0);
/* Handshakes apart from the connections: unanswered SYNs (a flood's) push out only each other. */
SW_MAP("lru_hash", struct sw_flow_key, struct sw_flow_handshake, sw_flow_handshakes, SW_FLOW_HANDSHAKE_ENTRIES, 0);
SW_MAP("lru_hash", struct sw_addr_key, struct sw_flow_counts, sw_flow_dests, SW_FLOW_DESTINATION_ENTRIES, 0);
SW_MAP("lru_hash", struct sw_flow_pair_key, struct sw_flow_counts, sw_flow_pairs, SW_FLOW_SOURCE_ENTRIES, 0);
SW_MAP("hash", struct sw_limit_key, struct sw_source_limit, sw_source_limits, SW_SOURCE_LIMITS_MAX, 0);
/* Key: the destination local, the source remote, local_port the limit's port (0: all). */
SW_MAP("lru_hash", struct sw_flow_key, struct sw_token_bucket, sw_limit_buckets, SW_FLOW_SOURCE_ENTRIES, 0);
SW_MAP("hash", struct sw_block_key, __u64, sw_blocked, SW_BLOCKED_SOURCES_MAX, 0);
/* Handshakes waiting for the client's ACK: the acknowledgment number that ends each, the server's
 * ISN + 1 as the wire carries it (network order), in the slot its top SW_FLOW_PENDING_BITS bits
 * name (an ISN is random: they need no hash); 0 = none. Two handshakes whose numbers share a slot:
 * the later SYN-ACK wins, and the other's handshake counts at its client's first data segment, FIN
 * or RST instead. Not pinned: a lost entry only delays the count in the same way. */
BPF_ARRAY(sw_flow_pending, __u32, 1U << SW_FLOW_PENDING_BITS);
BPF_PERCPU_ARRAY(sw_flow_stats, __u64, SW_FLOW_STAT__COUNT);

/* Map access, defined in seawall.c. */
static __always_inline struct sw_flow_conn *sw_flow_conn_of(struct sw_flow_key *k);
static __always_inline int sw_flow_conn_new(struct sw_flow_key *k, struct sw_flow_conn *c);
static __always_inline int sw_flow_conn_forget(struct sw_flow_key *k);
static __always_inline struct sw_flow_handshake *sw_flow_handshake_of(struct sw_flow_key *k);
static __always_inline int sw_flow_handshake_new(struct sw_flow_key *k, struct sw_flow_handshake *h);
static __always_inline int sw_flow_handshake_forget(struct sw_flow_key *k);
static __always_inline struct sw_flow_counts *sw_flow_dest_of(struct sw_addr_key *k);
static __always_inline int sw_flow_dest_new(struct sw_addr_key *k, struct sw_flow_counts *c);
static __always_inline struct sw_flow_counts *sw_flow_pair_of(struct sw_flow_pair_key *k);
static __always_inline int sw_flow_pair_new(struct sw_flow_pair_key *k, struct sw_flow_counts *c);
static __always_inline struct sw_source_limit *sw_source_limit_of(struct sw_limit_key *k);
static __always_inline struct sw_token_bucket *sw_limit_bucket_of(struct sw_flow_key *k);
static __always_inline int sw_limit_bucket_new(struct sw_flow_key *k, struct sw_token_bucket *b);
static __always_inline __u64 *sw_blocked_until(struct sw_block_key *k);
static __always_inline __u32 *sw_flow_pending_slot(__u32 index);
static __always_inline void sw_flow_count(__u32 stat);

/* Bytes of TCP payload, from the IP length (a frame padded to Ethernet's minimum carries
 * trailing bytes that are not payload). Read only when the frame has bytes after the TCP header. */
static __always_inline __u32 sw_flow_payload_len(struct sw_packet *p, void *data, void *data_end, __u32 wire_len)
{
    if (wire_len <= p->payload_offset)
        return 0;
    /* The IP header's offset: Ethernet and its tags (as sw_parse_ethernet() walked them). */
    __u32 l3 = ETH_HLEN;
#pragma unroll
    for (int i = 0; i < SW_MAX_VLAN_DEPTH; i++) {
        __u8 *type = data + l3 - 2;
        if ((void *)(type + 2) > data_end)
            return 0;
        __u16 proto = type[0] << 8 | type[1];
        if (proto != SW_ETH_P_VLAN && proto != SW_ETH_P_QINQ)
            break;
        l3 += 4;
    }
    __u32 end = l3 + p->ip_length;
    return end > p->payload_offset ? end - p->payload_offset : 0;
}

/* Frames up to this long may carry Ethernet padding after a segment without payload: 60 bytes is
 * Ethernet's minimum without the FCS; 64 leaves room for one that keeps it. */
#define SW_FLOW_PADDED_MAX 64

/* Are the bytes after the TCP header of a short untagged frame only the padding of a frame below
 * Ethernet's minimum (a pure ACK over IPv4 is 54 bytes, padded to 60)? Its IP header is at
 * ETH_HLEN, so the IP length tells; a tagged or longer frame is left to sw_flows_track(). */
static __always_inline int sw_flow_padding(struct sw_packet *p, __u32 wire_len, void *data, void *data_end)
{
    if (wire_len > SW_FLOW_PADDED_MAX || data + ETH_HLEN > data_end)
        return 0;
    __u16 type = *(__u16 *)(data + 12);
    return (type == bpf_htons(SW_ETH_P_IP) || type == bpf_htons(SW_ETH_P_IPV6)) &&
           ETH_HLEN + p->ip_length <= p->payload_offset;
}

/* Little-endian word of the first n bytes of a string, and its mask. */
#define SW_FLOW_MASK(n) ((n) >= 8 ? ~0ULL : ((1ULL << (8 * (n))) - 1))
#define SW_FLOW_WORD(a, b, c, d, e, f, g, h) \
    ((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24 | (__u64)(e) << 32 | \
     (__u64)(f) << 40 | (__u64)(g) << 48 | (__u64)(h) << 56)
#define SW_FLOW_IS(w, n, word) (((w) & SW_FLOW_MASK(n)) == (word))
#define SW_FLOW_HTTP 1
#define SW_FLOW_TLS 2

/* What a client segment's payload starts: an HTTP/1.x request line (method, then a space),
 * a TLS ClientHello (record type 22, version 3.x, handshake type 1), or neither (0). The
 * shortest of these is 6 bytes; fewer are never a request start. */
static __always_inline int sw_flow_payload_kind(struct sw_packet *p, void *data, void *data_end)
{
    __u8 *pl = data + (p->payload_offset & 0x3FFF);
    __u64 w;
    if ((void *)(pl + 8) <= data_end) {
        __builtin_memcpy(&w, pl, 8);
    } else if ((void *)(pl + 6) <= data_end) {
        w = 0;
        __builtin_memcpy(&w, pl, 6);
    } else {
        return 0;
    }
    __u8 first = w & 0xFF;
    if (first == 0x16)
        return ((w >> 8) & 0xFF) == 0x03 && ((w >> 16) & 0xF0) == 0 && ((w >> 40) & 0xFF) == 1 ? SW_FLOW_TLS : 0;
    if (first < 'C' || first > 'T')
        return 0;
    if (SW_FLOW_IS(w, 4, SW_FLOW_WORD('G', 'E', 'T', ' ', 0, 0, 0, 0)) ||
        SW_FLOW_IS(w, 4, SW_FLOW_WORD('P', 'U', 'T', ' ', 0, 0, 0, 0)) ||
        SW_FLOW_IS(w, 5, SW_FLOW_WORD('P', 'O', 'S', 'T', ' ', 0, 0, 0)) ||
        SW_FLOW_IS(w, 5, SW_FLOW_WORD('H', 'E', 'A', 'D', ' ', 0, 0, 0)) ||
        SW_FLOW_IS(w, 6, SW_FLOW_WORD('P', 'A', 'T', 'C', 'H', ' ', 0, 0)) ||
        SW_FLOW_IS(w, 6, SW_FLOW_WORD('T', 'R', 'A', 'C', 'E', ' ', 0, 0)) ||
        SW_FLOW_IS(w, 7, SW_FLOW_WORD('D', 'E', 'L', 'E', 'T', 'E', ' ', 0)) ||
        SW_FLOW_IS(w, 8, SW_FLOW_WORD('O', 'P', 'T', 'I', 'O', 'N', 'S', ' ')) ||
        SW_FLOW_IS(w, 8, SW_FLOW_WORD('C', 'O', 'N', 'N', 'E', 'C', 'T', ' ')))
        return SW_FLOW_HTTP;
    return 0;
}

static __always_inline void sw_flow_counts_add(struct sw_flow_counts *c, __s64 opened, __u32 kind, __u64 to_server,
                                               __u64 to_client)
{
    if (opened > 0)
        __sync_fetch_and_add(&c->new_connections, 1);
    if (opened)
        __sync_fetch_and_add(&c->established, opened);
    if (kind == SW_FLOW_HTTP)
        __sync_fetch_and_add(&c->http_requests, 1);
    else if (kind == SW_FLOW_TLS)
        __sync_fetch_and_add(&c->tls_hellos, 1);
    if (to_server)
        __sync_fetch_and_add(&c->bytes_to_server, to_server);
    if (to_client)
        __sync_fetch_and_add(&c->bytes_to_client, to_client);
}

/* Adds a connection's news to its destination's and its pair's rows (created on first use):
 * opened +1 (the handshake completed), -1 (it closed) or 0, the kind of a request segment, and
 * the bytes not yet added. */
static __always_inline void sw_flow_flush(const __u64 *server, const __u64 *client, __u32 tenant, __s64 opened,
                                          __u32 kind, __u64 to_server, __u64 to_client)
{
    struct sw_addr_key dk;
    __builtin_memcpy(dk.addr, server, 16);
    struct sw_flow_counts *c = sw_flow_dest_of(&dk);
    if (!c) {
        struct sw_flow_counts fresh = {.tenant_idx = tenant};
        if (sw_flow_dest_new(&dk, &fresh) == 0)
            sw_flow_count(SW_FLOW_STAT_DESTINATION_ROWS);
        c = sw_flow_dest_of(&dk);
    }
    if (c)
        sw_flow_counts_add(c, opened, kind, to_server, to_client);
    struct sw_flow_pair_key pk;
    __builtin_memcpy(pk.dst, server, 16);
    __builtin_memcpy(pk.src, client, 16);
    c = sw_flow_pair_of(&pk);
    if (!c) {
        struct sw_flow_counts fresh = {.tenant_idx = tenant};
        if (sw_flow_pair_new(&pk, &fresh) == 0)
            sw_flow_count(SW_FLOW_STAT_SOURCE_ROWS);
        c = sw_flow_pair_of(&pk);
    }
    if (c)
        sw_flow_counts_add(c, opened, kind, to_server, to_client);
}

/* Takes a connection's bytes not yet in its rows (an exchange: the other port's CPU may add or
 * take at the same time). */
static __always_inline __u64 sw_flow_take(__u64 *unflushed)
{
    return __sync_lock_test_and_set(unflushed, 0);
}

/* Moves a connection out of ESTABLISHED (to `state`): 1 for the one CPU that did it, which then
 * owns the gauges' decrement. */
static __always_inline int sw_flow_leave_established(struct sw_flow_conn *conn, __u64 state)
{
    return __sync_val_compare_and_swap(&conn->state, SW_FLOW_STATE_ESTABLISHED, state) == SW_FLOW_STATE_ESTABLISHED;
}

/* A new connection's entry from the inbound segment that completes it (the handshake's last ACK, or
 * the client's first data segment when that ACK went unseen): what a reset at the block needs
 * (struct sw_flow_conn). Once per connection, in the accounting program. */
static __always_inline void sw_flow_conn_l2(struct sw_flow_conn *c, void *data, void *data_end)
{
    void *cursor = data;
    if (!sw_parse_ethernet(&cursor, data_end))
        return;
    __u64 l2_len = cursor - data;
    /* A TCP segment's frame is longer than the header: one constant-size copy. */
    if (l2_len > SW_FLOW_L2_BYTES || data + SW_FLOW_L2_BYTES > data_end)
        return;
    __builtin_memcpy(c->l2, data, SW_FLOW_L2_BYTES);
    c->l2_len = l2_len;
}

static __always_inline void sw_flow_conn_frame(struct sw_flow_conn *c, struct sw_packet *p, void *data,
                                               void *data_end, __u32 len)
{
    __u32 seq = 0;
    if (sw_tcp_number(p, data, data_end, 1, &seq))
        c->client_next = seq + len;
    sw_flow_conn_l2(c, data, data_end);
}

/* A handshake ends (its entry already forgotten by this CPU): the connection `fresh` goes into the table. */
static __always_inline void sw_flow_open(struct sw_flow_key *k, struct sw_flow_conn *fresh)
{
    sw_flow_count(SW_FLOW_STAT_HANDSHAKES_ENDED);
    if (sw_flow_conn_new(k, fresh) == 0)
        sw_flow_count(SW_FLOW_STAT_CONNECTIONS_OPENED);
}

/* A client segment with payload ending at sequence number `end`: the connection's next sequence number
 * moves there, never back (a retransmission, or a segment that overtook another, leaves it). Inbound
 * segments of one flow arrive at one CPU (the NIC's flow hash): a plain store. */
static __always_inline void sw_flow_advance(struct sw_flow_conn *c, __u32 end)
{
    if ((__s32)(end - c->client_next) > 0)
        c->client_next = end;
}

/* The connection ends (FIN or RST from either side): its entry goes, and if it was open, the
 * gauges drop (once: the CPU that moved it out of ESTABLISHED) with the bytes not yet added. The
 * bytes are taken before the delete: a deleted element may be reused at once. */
static __always_inline void sw_flow_close(struct sw_flow_key *k, struct sw_flow_conn *conn, const __u64 *server,
                                          const __u64 *client)
{
    __u32 tenant = conn->tenant_idx;
    __s64 closed = sw_flow_leave_established(conn, SW_FLOW_STATE_RESET) ? -1 : 0;
    __u64 ds = sw_flow_take(&conn->to_server), dc = sw_flow_take(&conn->to_client);
    if (sw_flow_conn_forget(k) == 0)
        sw_flow_count(SW_FLOW_STAT_CONNECTIONS_CLOSED);
    if (closed || ds || dc)
        sw_flow_flush(server, client, tenant, closed, 0, ds, dc);
}

/* The port program asks sw_flows_wanted() for the TCP classes alone, with one comparison. */
_Static_assert(SW_TRAFFIC_CLASS_TCP_SYN <= 1 && SW_TRAFFIC_CLASS_TCP_OTHER <= 1, "TCP classes come first");

/* Is this pure ACK the client's end of a handshake the server answered? It acknowledges the
 * SYN-ACK's sequence number, which that segment left in sw_flow_pending (the slot is cleared: one
 * ACK ends a handshake). A blind ACK (a spoofed source never saw the server's ISN) ends none.
 * The number read raw is its own slot and tag: cheaper than hashing the client's address and
 * port (~0.4 ns a pure ACK, the short path's usual packet). Number 0 never matches (an ACK flood's
 * tools send it, and an empty slot holds it); an ACK that matches another flow's entry costs only
 * a tail call: the accounting program opens a connection for a handshake of its own flow alone. */
static __always_inline int sw_flow_ends_handshake(struct sw_packet *p, void *data, void *data_end)
{
    __u8 *tcp = data + (p->l4_offset & 0x3FFF);
    if ((void *)(tcp + 12) > data_end)
        return 0;
    __u32 ack = *(__u32 *)(tcp + 8); /* network order, as stored */
    __u32 *pending = sw_flow_pending_slot(ack >> (32 - SW_FLOW_PENDING_BITS));
    if (!ack || !pending || *pending != ack)
        return 0;
    *pending = 0;
    return 1;
}

/* Everything but the usual pure ACK (sw_flows_wanted): a SYN, the server's SYN-ACK, a segment
 * with payload, a FIN or RST, a handshake's last ACK. Runs in a program of its own
 * (SW_PROG_FLOWS, tail-called): inlined into the port program, its register needs cost every
 * packet ~3 ns. */
static __always_inline void sw_flows_track(struct xdp_md *ctx, struct sw_packet *p, __u32 tenant, const __u32 dir)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    if (!p->l4_ok)
        return;
    __u32 wire_len = p->frame_length ? p->frame_length : (__u32)(data_end - data);
    const int inbound = dir == SW_DIRECTION_INBOUND;
    const __u64 *server = inbound ? p->dst : p->src;
    const __u64 *client = inbound ? p->src : p->dst;
    __u16 server_port = inbound ? p->dport : p->sport;
    __u16 client_port = inbound ? p->sport : p->dport;
    __u8 flags = p->tcp_flags;
    __u8 syn_ack = flags & (SW_TCP_SYN | SW_TCP_ACK);
    struct sw_flow_key k;
    sw_flow(&k, server, client, server_port, client_port);
    if (inbound && syn_ack == SW_TCP_SYN) {
        /* A client's SYN: a connection begins (a retransmission or a reused tuple starts over). */
        struct sw_flow_conn *conn = sw_flow_conn_of(&k);
        if (conn)
            sw_flow_close(&k, conn, server, client); /* a reused tuple: the old connection is gone */
        struct sw_flow_handshake fresh = {.state = SW_FLOW_STATE_SYN, .tenant_idx = tenant};
        if (sw_flow_handshake_new(&k, &fresh) == 0) /* a retransmitted SYN changes nothing */
            sw_flow_count(SW_FLOW_STAT_HANDSHAKES_STARTED);
        return;
    }
    if (!inbound && syn_ack == (SW_TCP_SYN | SW_TCP_ACK)) {
        /* The server answers. Under a splice (synauth.h) the server's SYN came from the bridge,
         * never through here: its SYN-ACK begins the entry. */
        struct sw_flow_handshake *h = sw_flow_handshake_of(&k);
        if (!h) {
            struct sw_flow_handshake fresh = {.state = SW_FLOW_STATE_SYN_ACK, .tenant_idx = tenant};
            if (!sw_flow_conn_of(&k) && sw_flow_handshake_new(&k, &fresh) == 0)
                sw_flow_count(SW_FLOW_STAT_HANDSHAKES_STARTED);
        } else if (h->state == SW_FLOW_STATE_SYN) {
            h->state = SW_FLOW_STATE_SYN_ACK;
        }
        __u32 seq;
        if (sw_tcp_number(p, data, data_end, 1, &seq)) {
            __u32 expected = bpf_htonl(seq + 1); /* the client's ACK acknowledges the SYN */
            __u32 *pending = sw_flow_pending_slot(expected >> (32 - SW_FLOW_PENDING_BITS));
            if (pending)
                *pending = expected;
        }
        return;
    }
    __u32 len = sw_flow_payload_len(p, data, data_end, wire_len);
    __u32 closing = flags & (SW_TCP_FIN | SW_TCP_RST);
    /* A pure ACK with bytes after its header that sw_flows_wanted() could not tell from payload
     * (tagged, or longer than a padded frame): its handshake's entry is checked here. An untagged
     * padded one's was checked there, as a short frame's. */
    if (!len && !closing && wire_len > p->payload_offset &&
        (!inbound || (!sw_flow_padding(p, wire_len, data, data_end) && !sw_flow_ends_handshake(p, data, data_end))))
        return;
    struct sw_flow_conn *conn = sw_flow_conn_of(&k);
    __s64 opened = 0;
    if (!conn) {
        struct sw_flow_handshake *h = sw_flow_handshake_of(&k);
        if (!h)
            return; /* opened before the program was loaded, or evicted: not counted */
        if (h->state == SW_FLOW_STATE_SYN_ACK && inbound && (flags & SW_TCP_ACK) &&
            !(flags & (SW_TCP_SYN | SW_TCP_RST))) {
            /* The client's ACK: the server's handshake is done; the CPU whose delete succeeds moves it
             * to the connections. */
            struct sw_flow_conn fresh = {.state = SW_FLOW_STATE_ESTABLISHED, .tenant_idx = h->tenant_idx};
            if (sw_flow_handshake_forget(&k) != 0)
                return;
            sw_flow_conn_frame(&fresh, p, data, data_end, len);
            sw_flow_open(&k, &fresh);
            conn = sw_flow_conn_of(&k);
            if (!conn)
                return;
            opened = 1;
        } else {
            if ((flags & SW_TCP_RST) && sw_flow_handshake_forget(&k) == 0)
                sw_flow_count(SW_FLOW_STAT_HANDSHAKES_ENDED); /* refused or aborted before it opened */
            return;
        }
    } else if (conn->state != SW_FLOW_STATE_ESTABLISHED) {
        if (flags & SW_TCP_RST)
            sw_flow_close(&k, conn, server, client); /* reset by the bridge (a blocked source): the server's RST ends it */
        return;
    }
    __u32 kind = 0;
    __u64 pending;
    if (inbound) {
        pending = __sync_fetch_and_add(&conn->to_server, len) + len + conn->to_client;
        if (len) {
            kind = sw_flow_payload_kind(p, data, data_end);
            __u32 seq;
            if (sw_tcp_number(p, data, data_end, 1, &seq))
                sw_flow_advance(conn, seq + len);
        }
    } else {
        pending = __sync_fetch_and_add(&conn->to_client, len) + len + conn->to_server;
    }
    if (closing) {
        /* Opened and closed in one segment (an ACK with FIN) counts both. */
        if (opened || kind)
            sw_flow_flush(server, client, conn->tenant_idx, opened, kind, 0, 0);
        sw_flow_close(&k, conn, server, client);
        return;
    }
    if (opened || kind || pending >= SW_FLOW_FLUSH_BYTES) {
        __u64 ds = sw_flow_take(&conn->to_server), dc = sw_flow_take(&conn->to_client);
        sw_flow_flush(server, client, conn->tenant_idx, opened, kind, ds, dc);
    }
}

/* A spliced handshake ended by the bridge's own ACK (synauth.h): a server that missed the client's first
 * segment (a silent client never sends one) retransmits its SYN-ACK, and the splice program answers it
 * with the handshake's ACK, sent back by XDP_TX: that ACK never crosses the port program. The connection
 * opens here as at a client's ACK, with the client's next sequence number `client_next` and the L2
 * header of the frame just written (client -> server, as the server receives the client's frames), so
 * that a block resets it at the server too (sw_flows_reset_held). Only for a flow the accounting
 * follows: its handshake entry, which the server's SYN-ACK left in SYN_ACK. */
static __always_inline void sw_flows_splice_opened(struct xdp_md *ctx, struct sw_flow_key *k, const __u64 *server,
                                                   const __u64 *client, __u32 client_next)
{
    struct sw_flow_handshake *h = sw_flow_handshake_of(k);
    if (!h || h->state != SW_FLOW_STATE_SYN_ACK)
        return;
    struct sw_flow_conn fresh = {.state = SW_FLOW_STATE_ESTABLISHED, .tenant_idx = h->tenant_idx,
                                 .client_next = client_next};
    if (sw_flow_handshake_forget(k) != 0)
        return; /* another CPU ended it */
    sw_flow_conn_l2(&fresh, (void *)(long)ctx->data, (void *)(long)ctx->data_end);
    sw_flow_open(k, &fresh);
    sw_flow_flush(server, client, fresh.tenant_idx, 1, 0, 0, 0);
}

/* Does a TCP segment that reaches its side (verdict pass or splice) of a protected tenant's
 * address need connection accounting (SW_PROG_FLOWS)? dir: who sent it (inbound: the client,
 * outbound: the server). The usual packet, an ACK without payload, is settled with a few
 * instructions: only a client's ACK hashes its flow, to see whether it ends a handshake. */
static __always_inline int sw_flows_wanted(struct sw_packet *p, __u32 wire_len, const __u32 dir, void *data,
                                           void *data_end)
{
    /* (Without an L4 header, flags and payload offset are 0: sw_flows_track() checks l4_ok.) */
    if (p->tcp_flags & (SW_TCP_SYN | SW_TCP_FIN | SW_TCP_RST))
        return 1;
    if (wire_len > p->payload_offset && !sw_flow_padding(p, wire_len, data, data_end))
        return 1;
    return dir == SW_DIRECTION_INBOUND && sw_flow_ends_handshake(p, data, data_end);
}

/* The block list for an inbound packet of a protected tenant: SW_DROP_REASON_BLOCKED or 0.
 * Checked first, before the splice (a blocked source's spliced connections go too). Behind its
 * gate bit: an empty list costs one load of the configuration. */
static __always_inline int sw_flows_blocked(struct sw_packet *p, __u32 tenant, struct sw_config *cfg)
{
    if (!(cfg->flags & SW_FLOW_GATE_BLOCKED)) /* the configuration is at hand, a map lookup is not */
        return 0;
    struct sw_block_key bk = {.tenant_idx = tenant};
    __builtin_memcpy(bk.src, p->src, 16);
    __u64 *until = sw_blocked_until(&bk);
    if (!until)
        return 0;
    if (bpf_ktime_get_ns() < *until) {
        sw_flow_count(SW_FLOW_STAT_BLOCK_DROPS);
        return SW_DROP_REASON_BLOCKED;
    }
    /* Expired: user space removes the entry and closes the gate when none is left (Flows._prune,
     * every engine tick). Not deleted here: a block user space renewed between this lookup and a
     * delete would be lost while the list still shows it. */
    return 0;
}

/* A TCP segment (not a SYN) of a blocked source, dropped by the inbound program: if the server
 * holds the connection (sw_flow_conns), the segment goes on to it as a reset of that connection
 * instead (its sequence number, RST, no payload, checksums written anew), so the server frees the
 * slot a bot holds (slowloris, connection floods) at the bot's next segment. The connection's
 * entry stays, in SW_FLOW_STATE_RESET, so that later segments reset it again should one reset be
 * lost; its gauges dropped with the first. Anything else is dropped: the server holds nothing. */
static __always_inline int sw_flows_block_reset(struct xdp_md *ctx, struct sw_packet *p)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    if (!p->l4_ok || p->proto != SW_IPPROTO_TCP || (p->tcp_flags & SW_TCP_SYN))
        return XDP_DROP;
    struct sw_flow_key k;
    sw_flow(&k, p->dst, p->src, p->dport, p->sport);
    struct sw_flow_conn *conn = sw_flow_conn_of(&k);
    __u32 seq, is_v6;
    if (!conn || !sw_tcp_number(p, data, data_end, 1, &seq))
        return XDP_DROP;
    __s64 l3_off = sw_synauth_l3_of(ctx, &is_v6);
    if (l3_off < 0)
        return XDP_DROP;
    int left = sw_flow_leave_established(conn, SW_FLOW_STATE_RESET);
    if (!left) {
        /* A handshake the server has pending goes too, by compare-and-swap from the state seen:
         * should another CPU complete the open meanwhile, the open is left (its gauge counted
         * down) instead of overwritten, which would keep `established` one too high. */
        __u64 seen = conn->state;
        if (seen == SW_FLOW_STATE_ESTABLISHED ||
            __sync_val_compare_and_swap(&conn->state, seen, SW_FLOW_STATE_RESET) != seen)
            left = sw_flow_leave_established(conn, SW_FLOW_STATE_RESET);
    }
    if (left) {
        __u64 ds = sw_flow_take(&conn->to_server), dc = sw_flow_take(&conn->to_client);
        sw_flow_flush(p->dst, p->src, conn->tenant_idx, -1, 0, ds, dc);
    }
    /* RST without ACK: the server checks only the sequence number, and a spliced connection's
     * acknowledgment numbers (synauth.h) need no translation. */
    if (sw_synauth_write(ctx, l3_off, is_v6, 0, seq, 0, SW_TCP_RST, 0, 0))
        return XDP_DROP;
    sw_flow_count(SW_FLOW_STAT_BLOCK_RESETS);
    return sw_redirect(SW_PORT_INTERNAL);
}

/* A connection a blocked source holds, reset at the block without waiting for the source's next
 * segment (a silent connection-flood bot sends none: the server would hold the slot until its own idle
 * timeout, 10 s to minutes). User space (dataplane/flows.py, Flows.reset_held) finds the blocked sources'
 * ESTABLISHED entries in sw_flow_conns in one batch read, BLOCK_RESET_DELAY_MS after it installed the
 * blocks (the engine's next tick still sees the flood it blocked), and runs this
 * program (xdp_seawall_reset_held, by BPF_PROG_TEST_RUN) on a frame it builds from each entry: the client's
 * recorded Ethernet header and tags, the IP header, a TCP header with the flow's addresses and ports.
 * The program does what sw_flows_block_reset() does for a bot's segment, from the entry: the
 * compare-and-swap out of ESTABLISHED (the CPU that wins drops the gauges: a bot segment arriving
 * later finds the entry in SW_FLOW_STATE_RESET and is reset again without counting twice; one that
 * came first leaves nothing to do here: XDP_DROP), and the frame becomes the RST with the checksums.
 * XDP_TX: user space sends the frame out of the internal NIC (an AF_PACKET socket).
 *
 * Why user space sends, and not a live BPF_PROG_TEST_RUN that redirects through sw_ports: a live
 * frame's redirect needs the internal NIC's ndo_xdp_xmit (absent in generic mode and on a veth whose
 * peer runs no XDP), while a packet socket works on every NIC; and the state change stays in the
 * program, atomic against the ports' CPUs, where a map update from user space would race them.
 *
 * The sequence number must be exact: Linux (RFC 5961) takes a RST only at seq == rcv_nxt and answers any
 * other in the window with a challenge ACK, which goes to the blocked client and is dropped there; the
 * server then holds the slot until its idle timeout, as it did before this reset existed. client_next is
 * exact for a silent connection (ISN + 1) and for one whose every byte passed the bridge and reached the
 * server; a segment lost between the bridge and the server leaves it ahead of rcv_nxt (the bot's next
 * segment, if any, still resets through sw_flows_block_reset()). */
static __always_inline int sw_flows_reset_held(struct xdp_md *ctx, struct sw_packet *p)
{
    if (!p->l4_ok || p->proto != SW_IPPROTO_TCP)
        return XDP_DROP;
    struct sw_flow_key k;
    sw_flow(&k, p->dst, p->src, p->dport, p->sport);
    struct sw_flow_conn *conn = sw_flow_conn_of(&k);
    if (!conn)
        return XDP_DROP;
    /* Only a source blocked now (user space may race an expiry or an unblock). */
    struct sw_block_key bk = {.tenant_idx = conn->tenant_idx};
    __builtin_memcpy(bk.src, p->src, 16);
    __u64 *until = sw_blocked_until(&bk);
    if (!until || bpf_ktime_get_ns() >= *until)
        return XDP_DROP;
    __u32 is_v6;
    __s64 l3_off = sw_synauth_l3_of(ctx, &is_v6);
    if (l3_off < 0 || !sw_flow_leave_established(conn, SW_FLOW_STATE_RESET))
        return XDP_DROP;
    __u32 seq = conn->client_next;
    __u64 ds = sw_flow_take(&conn->to_server), dc = sw_flow_take(&conn->to_client);
    sw_flow_flush(p->dst, p->src, conn->tenant_idx, -1, 0, ds, dc);
    if (sw_synauth_write(ctx, l3_off, is_v6, 0, seq, 0, SW_TCP_RST, 0, 0))
        return XDP_DROP; /* not written (a frame user space built wrong): the bot's next segment resets it */
    sw_flow_count(SW_FLOW_STAT_BLOCK_RESETS_SENT);
    return XDP_TX;
}

/* Per-source limits for an inbound packet of a protected tenant: a drop reason or 0. Behind the
 * gate bit: nothing to check costs one load of the configuration. */
static __always_inline int sw_flows_admit(struct sw_packet *p, __u32 tenant, struct sw_config *cfg)
{
    __u32 bits = cfg->flags; /* SW_FLOW_GATE_* */
    if (!(bits & SW_FLOW_GATE_LIMITS) || p->proto != SW_IPPROTO_TCP || !p->l4_ok ||
        (p->tcp_flags & (SW_TCP_SYN | SW_TCP_ACK)) != SW_TCP_SYN)
        return 0;
    __u64 now = 0;
    struct sw_limit_key lk = {.tenant_idx = tenant, .dport = p->dport};
    __builtin_memcpy(lk.dst, p->dst, 16);
    struct sw_source_limit *lim = sw_source_limit_of(&lk);
    if (!lim) {
        lk.dport = 0;
        lim = sw_source_limit_of(&lk);
        if (!lim)
            return 0;
    }
    __u32 ceiling = lim->max_concurrent, rate = lim->new_per_s;
    __s64 burst = lim->new_burst ? lim->new_burst : 1;
    if (ceiling) {
        struct sw_flow_pair_key pk;
        __builtin_memcpy(pk.dst, p->dst, 16);
        __builtin_memcpy(pk.src, p->src, 16);
        struct sw_flow_counts *c = sw_flow_pair_of(&pk);
        if (c && c->established >= (__s64)ceiling) {
            sw_flow_count(SW_FLOW_STAT_LIMIT_CONCURRENT_DROPS);
            return SW_DROP_REASON_SOURCE_LIMIT;
        }
    }
    if (!rate)
        return 0;
    if (!now)
        now = bpf_ktime_get_ns();
    struct sw_flow_key bk;
    sw_flow(&bk, p->dst, p->src, lk.dport, 0);
    struct sw_token_bucket *b = sw_limit_bucket_of(&bk);
    if (!b) {
        struct sw_token_bucket fresh = {.last_ns = now, .tokens = burst};
        sw_limit_bucket_new(&bk, &fresh);
        b = sw_limit_bucket_of(&bk);
        if (!b)
            return 0;
    }
    sw_bucket_refill(&b->last_ns, &b->tokens, now, rate, burst);
    if (b->tokens <= 0) {
        sw_flow_count(SW_FLOW_STAT_LIMIT_RATE_DROPS);
        return SW_DROP_REASON_SOURCE_LIMIT;
    }
    __sync_fetch_and_add(&b->tokens, -1);
    return 0;
}

#endif /* SEAWALL_FLOWS_H */
