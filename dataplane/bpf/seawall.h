/* Seawall: layouts shared by the XDP program and the Python control plane.
 *
 * This header is the single source of truth for every struct that crosses
 * the kernel/user boundary. Python never re-declares these layouts: it gets
 * them from bcc (`table.Key`, `table.Leaf`) after compiling this program, and
 * a unit test pins their sizes. Enumerations and limits (SW_TRAFFIC_CLASS_*,
 * SW_DROP_REASON_*, SW_MAX_*) come from dataplane/constants.py as -D flags.
 */
#ifndef SEAWALL_H
#define SEAWALL_H

#ifndef SW_TRAFFIC_CLASS__COUNT
#error "compile with the -D flags of dataplane.constants.cflags()"
#endif

#define SW_CLASSES SW_TRAFFIC_CLASS__COUNT
/* SW_BUDGET_SLOT_OF_CLASS holds 4 bits per class in 32 bits. */
_Static_assert(SW_CLASSES <= 8, "SW_BUDGET_SLOT_OF_CLASS has room for 8 classes");
#define SW_REASONS SW_DROP_REASON__COUNT
#define SW_DIRS SW_DIRECTION__COUNT
/* Byte arrays that the program reads or writes as whole 32- or 64-bit words
 * (addresses, payload patterns). Without the alignment clang must assume they
 * are unaligned and splits every such copy into single-byte loads and stores:
 * about 45 instructions per 16-byte address compare. No offset moves. */
#define SW_ALIGNED(bytes) __attribute__((aligned(bytes)))

/* From dataplane/constants.py (cflags()), never defined here:
 *   SW_PORT_EXTERNAL, SW_PORT_INTERNAL          devmap keys: the port a frame leaves on
 *   SW_POLICY_*                                 sw_policy.flags; SW_POLICY_SLOT_* are the bits the
 *                                               address cache adds to its copy (sw_addr_entry.policy_flags)
 *   SW_MATCH_*                                  sw_rule.match: which optional fields a rule checks
 *   SW_SCOPE_ADDRESS, SW_SCOPE_TENANT           what a rule set or an attack mark is keyed by
 *   SW_BUDGET_CLASSES, SW_BUDGET_SLOT_OF_CLASS  classes with a per-destination budget; 4 bits per
 *                                               class: its slot in the budget arrays, 0xF for none */

/* Rule briefs: the cheap checks of a rule (protocol, ports, IP length, fragment state and
 * whether it needs the L4 header) as one range test over lanes of a 64-bit word, run
 * without reading the rule (sw_brief_key(), sw_brief_matches()). Lanes, low bits first,
 * each value followed by a guard bit that absorbs the borrow of the lane's subtraction: */
#define SW_BRIEF_DPORT_SHIFT 0   /* 16 bits */
#define SW_BRIEF_SPORT_SHIFT 17  /* 16 bits */
#define SW_BRIEF_LENGTH_SHIFT 34 /* 17 bits: an IPv6 length reaches 65,535 + 40 */
#define SW_BRIEF_STATE_SHIFT 52  /* 3 bits, sw_brief_key() */
#define SW_BRIEF_PROTO_SHIFT 56  /* 8 bits: equality, no guard (the lane above all others) */
#define SW_BRIEF_GUARDS ((1ULL << 16) | (1ULL << 33) | (1ULL << 51) | (1ULL << 55))
#define SW_BRIEF_PROTO_MASK (0xFFULL << SW_BRIEF_PROTO_SHIFT)
/* sw_addr_entry.rule_flags: the action, and whether the full rule must be read too (TTL,
 * TCP flags, payload; rate limits for their bucket). */
#define SW_BRIEF_ACTION_MASK 0x7F
#define SW_BRIEF_FULL 0x80

/* Global settings, one entry (key 0). Written by the control plane only. */
struct sw_config {
    __u32 active_slot;     /* tenant-set slot in use (0 or 1); flipped atomically */
    __u32 generation;      /* bumped on every tenant-set or rule change; caches refresh on mismatch */
    __u32 sample_every;    /* copy one packet in N to the sample ring per CPU; 0 = off */
    __u32 flags;           /* SW_FLOW_GATE_*: the block list, per-source limits hold entries (flows.h) */
};

/* Destination-prefix tries: (slot, address) -> tenant. prefixlen counts the
 * 32 slot bits plus the address prefix length. */
struct sw_prefix4_key {
    __u32 prefixlen;
    __u32 slot;
    __u8 addr[4] SW_ALIGNED(4);
};

struct sw_prefix6_key {
    __u32 prefixlen;
    __u32 slot;
    __u8 addr[16] SW_ALIGNED(8);
};

struct sw_tenant_ref {
    __u32 tenant_idx;
};

/* Per-tenant policy, indexed by slot * SW_MAX_TENANTS + tenant index. */
struct sw_policy {
    __u8 in_use;
    __u8 mode;             /* SW_TENANT_MODE_* */
    __u16 flags;           /* SW_POLICY_* */
    __u32 rate_pps[SW_BUDGET_CLASSES]; /* per-destination class budgets (slot per SW_BUDGET_SLOT_OF_CLASS),
                                        * packets/s; 0 = off */
};

/* Allow/deny lists: one small longest-prefix-match trie of source prefixes per
 * (slot, kind, tenant) and family, reached through an array of maps indexed by
 * sw_acl_index(). One shared trie keyed by (slot, kind, tenant, source) would
 * walk a node per bit of the tenant index before it reached the source: about
 * 80 ns a packet with 10,000 tenants holding lists. The control plane expands
 * entries so that the longest match carries every entry of the covering
 * prefixes too: one lookup answers the whole list. */
struct sw_acl4_key {
    __u32 prefixlen;       /* source prefix length */
    __u8 src[4] SW_ALIGNED(4);
};

struct sw_acl6_key {
    __u32 prefixlen;       /* source prefix length */
    __u8 src[16] SW_ALIGNED(4);
};

struct sw_acl_entry {
    __u8 proto;            /* IP protocol; 0 = any */
    __u8 pad;
    __u16 sport_lo;        /* inclusive, host byte order */
    __u16 sport_hi;
    __u16 dport_lo;
    __u16 dport_hi;
};

struct sw_acl_value {
    __u32 count;
    struct sw_acl_entry entries[SW_ACL_ENTRIES_PER_PREFIX];
};

/* Per customer-side address. IPv4 addresses are stored IPv4-mapped
 * (::ffff:a.b.c.d). Inbound counters feed the per-server baselines. */
struct sw_addr_key {
    __u8 addr[16] SW_ALIGNED(8);
};

struct sw_addr_counters {
    __u64 packets[SW_CLASSES]; /* inbound, passed + dropped */
    __u64 bytes[SW_CLASSES];
    __u64 dropped_packets;     /* inbound */
    __u64 outbound_packets;
    __u64 outbound_bytes;
};

/* Counters of an address whose cache slot was taken over (summed over the CPUs
 * that spilled it), with the tenant it belonged to when it last left a cache. */
struct sw_addr_spilled {
    struct sw_addr_counters counters;
    __u32 tenant_idx;
    __u32 claimed;             /* in the spill store: 1 from the spill that claims the slot until user
                                  space frees it (0: a free slot); unused in the overflow map */
};

/* One slot of the spill store (sw_addr_store): the spilled counters of one address in
 * a plain array that user space maps into memory, so that a tick reads every spilled
 * address in place; walking a hash map through bpf() cost ~300 ns an entry in the
 * kernel (~300 ms a tick at a million addresses). sw_addr_store_index says which slot
 * an address has; user space frees the slots of idle addresses (dataplane/spill.py). */
struct sw_addr_stored {
    struct sw_addr_spilled spilled;    /* first: the program's pointer to it is the slot's own */
    __u8 addr[16] SW_ALIGNED(8);
};

/* One slot of a CPU's direct-mapped address cache (2^SW_ADDRESS_CACHE_BITS
 * slots per CPU, indexed by a multiplicative hash of the address). A hit costs
 * no helper call at all: the verifier inlines the CPU id and the array lookup.
 * Only its CPU writes a slot. A slot taken over by another address first spills
 * its counters into the spill store (sw_addr_store; the LRU map sw_addr_spill when
 * the store is full), so no count is lost; user space adds them. */
struct sw_addr_entry {
    __u8 addr[16] SW_ALIGNED(8);
    __u32 tenant_idx;          /* SW_NO_TENANT when no tenant owns it */
    __u32 generation;          /* sw_config.generation the cached fields belong to; 0 = empty slot */
    __u32 is_v6;               /* the family: ::ffff:a.b.c.d is also a valid IPv6 address */
    __u32 attack_classes;      /* bit per SW_TRAFFIC_CLASS_* under attack (set by the policy engine) */
    __u16 policy_flags;        /* the tenant's sw_policy.flags plus SW_POLICY_SLOT_* (saves a lookup per packet) */
    __u16 pad;
    __s32 budget_tokens[SW_BUDGET_CLASSES]; /* per-destination class budgets (as sw_policy.rate_pps), packets */
    __u64 budget_ns[SW_BUDGET_CLASSES];     /* last refill of each budget, bpf_ktime_get_ns */
    __u32 rule_count;          /* rules that apply: the address's own, then the tenant-wide ones */
    __u32 rule_ids[SW_RULES_PER_TARGET];
    __u64 rule_lo[SW_RULES_PER_TARGET];    /* rule briefs (SW_BRIEF_*), copied from sw_rules: */
    __u64 rule_hi[SW_RULES_PER_TARGET];    /* lane minimums / maximums (proto lane: protocol, mask) */
    __u8 rule_flags[SW_RULES_PER_TARGET];  /* action | SW_BRIEF_FULL */
    struct sw_addr_counters counters;
};

/* Counters of one direction of one tenant. (bcc describes nested arrays
 * wrongly to Python, so two-dimensional counters are arrays of this struct.)
 * Passed packets and bytes are the class totals minus the dropped ones: user
 * space derives them, which saves two increments per packet. */
struct sw_direction_stats {
    __u64 dropped_packets;
    __u64 dropped_bytes;
    __u64 class_packets[SW_CLASSES];   /* passed + dropped */
    __u64 class_bytes[SW_CLASSES];
    __u64 reason_packets[SW_REASONS];  /* also counts what monitor mode would drop */
};

/* Per-tenant counters, per CPU; index SW_MAX_TENANTS counts traffic to no tenant. */
struct sw_tenant_stats {
    struct sw_direction_stats dir[SW_DIRS];
};

/* Dynamic rules (installed by the policy engine). An address's own rules and
 * its tenant's tenant-wide rules together never exceed SW_RULES_PER_TARGET: the
 * refresh program merges both lists into the address cache slot, so a packet
 * walks one short list and never the index. */
struct sw_rule_set_key {
    __u32 tenant_idx;
    __u32 scope;           /* SW_SCOPE_* */
    __u8 addr[16] SW_ALIGNED(8);         /* zero for SW_SCOPE_TENANT */
};

struct sw_rule_set {
    __u32 count;
    __u32 rule_ids[SW_RULES_PER_TARGET];
};

struct sw_rule {
    __u8 in_use;
    __u8 action;           /* SW_RULE_ACTION_* */
    __u8 proto;
    __u8 tcp_flags_mask;
    __u8 tcp_flags_value;
    __u8 ttl_lo;
    __u8 ttl_hi;
    __u8 pad;
    __u16 match;           /* SW_MATCH_* */
    __u16 sport_lo;
    __u16 sport_hi;
    __u16 dport_lo;
    __u16 dport_hi;
    __u16 length_lo;       /* IP length in bytes, inclusive */
    __u16 length_hi;
    __u16 pad2;
    __u32 rate_pps;        /* SW_RULE_ACTION_RATE_LIMIT: packets per second admitted */
    __u8 payload[SW_PAYLOAD_MATCH_BYTES];
    __u8 payload_mask[SW_PAYLOAD_MATCH_BYTES];
};

struct sw_rule_stats {     /* per CPU */
    __u64 matched_packets;
    __u64 matched_bytes;
    __u64 dropped_packets;
};

struct sw_rule_bucket {    /* shared by all CPUs; races only blur the rate slightly */
    __u64 last_ns;
    __s64 tokens;          /* packets */
};

/* Destinations under attack, per class: (tenant, scope, address) -> bit per
 * SW_TRAFFIC_CLASS_*. Set by the policy engine; it switches on the stateful
 * heuristics (SYN challenge, reflection filter in auto mode) for them. */
struct sw_attack_state {
    __u32 classes;
    __u16 syn_port_lo;     /* destination ports the SYN challenge covers (inclusive, host order); */
    __u16 syn_port_hi;     /* 0-65535 when the flood's port is not known */
    __u64 since_ns;        /* bpf_ktime_get_ns (CLOCK_MONOTONIC) when the mark was first set */
};

/* A flow seen from the customer side: the customer's address, the remote
 * address and both ports. Keys of the heuristics' LRU maps. */
struct sw_flow_key {
    __u8 local[16] SW_ALIGNED(8);
    __u8 remote[16] SW_ALIGNED(8);
    __u16 local_port;      /* host byte order; 0 where it does not matter */
    __u16 remote_port;
    __u32 pad;
};

/* A packet copied to user space through the ring buffer. */
struct sw_sample {
    __u64 timestamp_ns;    /* bpf_ktime_get_ns */
    __u32 tenant_idx;
    __u8 direction;
    __u8 dropped;
    __u8 reason;
    __u8 pad;
    __u32 wire_length;     /* bytes of the whole frame */
    __u32 captured;        /* bytes valid in data */
    __u8 data[SW_SAMPLE_BYTES];
};

/* SYN authentication (synauth.h). */
/* A token bucket shared by every CPU: races only blur the rate a little. */
struct sw_token_bucket {
    __u64 last_ns;         /* last refill, bpf_ktime_get_ns */
    __s64 tokens;
};

/* A validated source: when its cookie (or its handshake with the server) proved it, and its
 * own SYN budget, in one LRU value so that a SYN costs one lookup. */
struct sw_syn_source {
    __u64 validated_ns;    /* bpf_ktime_get_ns */
    struct sw_token_bucket bucket;
};

/* A spliced connection (syn_auth = "splice", synauth.h), keyed by sw_flow_key with the server
 * local. The client numbers the bridge's side from the cookie; the server from its own ISN:
 * delta = server ISN - cookie is added to the client's ack numbers and subtracted from the
 * server's sequence numbers for the connection's life. */
#define SW_SPLICE_SYN_SENT 1   /* the client's SYN went to the server, its SYN-ACK not seen yet */
#define SW_SPLICE_OPEN 2
struct sw_splice {
    __u32 delta;           /* server ISN - cookie (valid in SW_SPLICE_OPEN) */
    __u32 client_isn;
    __u32 cookie;          /* the ISN of the bridge's SYN-ACK, as the client saw it */
    __u16 client_window;   /* the cookie ACK's window, bytes (no scaling on a splice) */
    __u8 state;            /* SW_SPLICE_* */
    __u8 mss_index;        /* the cookie's MSS table index (0..3), recovered by probing */
    __u64 syn_ns;          /* when the SYN last went to the server, bpf_ktime_get_ns */
};

#endif /* SEAWALL_H */
