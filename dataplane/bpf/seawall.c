/* Seawall XDP program: a transparent L2 bridge between two NICs that filters
 * inbound traffic per tenant prefix.
 *
 * Every frame entering one NIC leaves the other untouched (XDP_REDIRECT through
 * a devmap) unless the filter drops it. Inbound IP traffic is matched to its
 * tenant by destination address and checked, in order, against the tenant's
 * allow list, deny list, invalid-packet filters and the dynamic rules of the
 * policy engine. Per-packet work is a fixed number of map lookups: the
 * address cache (one per CPU) holds the tenant and rule sets, so the common case never
 * walks a trie or hashes into a map; cache slots refresh when
 * sw_config.generation changes.
 *
 * All runtime data lives in maps; limits and enumerations arrive as -D flags
 * from dataplane/constants.py; layouts are in seawall.h.
 */
/* The user-space API headers only (uapi/): the kernel's own linux/ip.h and the like
 * pull in most of the kernel's internal headers, which tripled the time bcc takes
 * to parse the program (~1.2 s of every compile, measured). */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "seawall.h"
#include "parsing.h"

#ifndef NSEC_PER_SEC
#define NSEC_PER_SEC 1000000000ULL
#endif

/* Maps whose state must survive a restart of the control plane are pinned
 * under SW_PIN_DIR (a bpffs directory) when the loader sets it. */
#ifdef SW_PIN_DIR
#define SW_MAP(type, key, leaf, name, size, flags) \
    BPF_TABLE_PINNED7(type, key, leaf, name, size, SW_PIN_DIR "/" #name, flags)
#else
#define SW_MAP(type, key, leaf, name, size, flags) BPF_F_TABLE(type, key, leaf, name, size, flags)
#endif
#ifdef SW_PIN_DIR
#define SW_QUEUE(name, leaf, size) BPF_QUEUESTACK_PINNED("queue", name, leaf, size, 0, SW_PIN_DIR "/" #name)
#else
#define SW_QUEUE(name, leaf, size) BPF_QUEUE(name, leaf, size)
#endif
#define SW_NO_PREALLOC 1 /* BPF_F_NO_PREALLOC, required by LPM tries */

/* Global settings (1 entry). */
SW_MAP("array", __u32, struct sw_config, sw_config, 1, 0);
/* Egress ports: key SW_PORT_EXTERNAL / SW_PORT_INTERNAL -> ifindex (2 entries). */
BPF_DEVMAP(sw_ports, 2);
/* Destination prefix -> tenant, for both tenant-set slots. */
SW_MAP("lpm_trie", struct sw_prefix4_key, struct sw_tenant_ref, sw_prefix4, SW_MAX_PREFIXES * SW_TENANT_SET_SLOTS, SW_NO_PREALLOC);
SW_MAP("lpm_trie", struct sw_prefix6_key, struct sw_tenant_ref, sw_prefix6, SW_MAX_PREFIXES * SW_TENANT_SET_SLOTS, SW_NO_PREALLOC);
/* Tenant policy by slot * SW_MAX_TENANTS + tenant index. */
SW_MAP("array", __u32, struct sw_policy, sw_policy, SW_MAX_TENANTS * SW_TENANT_SET_SLOTS, 0);
/* Allow and deny lists: per family, an array of maps indexed by (slot, kind,
 * tenant) whose entries are tries of source prefixes (up to SW_MAX_ACL_PREFIXES
 * each, allocated per entry) that the control plane creates per tenant. The two
 * templates only give the inner maps' layout; the program never reads them. */
BPF_F_TABLE("lpm_trie", struct sw_acl4_key, struct sw_acl_value, sw_acl4_template, SW_MAX_ACL_PREFIXES, SW_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct sw_acl6_key, struct sw_acl_value, sw_acl6_template, SW_MAX_ACL_PREFIXES, SW_NO_PREALLOC);
SW_MAP("array_of_maps$sw_acl4_template", int, int, sw_acl4_tries, SW_TENANT_SET_SLOTS * 2 * SW_MAX_TENANTS, 0);
SW_MAP("array_of_maps$sw_acl6_template", int, int, sw_acl6_tries, SW_TENANT_SET_SLOTS * 2 * SW_MAX_TENANTS, 0);
/* Per customer-side address: a direct-mapped cache of lookups and counters with
 * one region of 2^SW_ADDRESS_CACHE_BITS slots per CPU id (index cpu << bits |
 * slot), and the spill store, shared by all CPUs, that keeps the counters of
 * evicted slots. The cache is a plain array kept per CPU by hand rather than a
 * per-CPU array so that user space can map it and read the counters in place:
 * copying it through bpf() took ~23 ms a tick (then 16 MiB per CPU). The store is
 * mapped too: SW_MAX_ADDRESSES slots, an index (address -> slot), the count of
 * slots handed out so far (those above it were never used) and the slots user
 * space freed. When every slot is taken, spills go to the LRU map sw_addr_spill
 * (SW_ADDRESS_OVERFLOW_ENTRIES), which user space reads through bpf(). */
SW_MAP("array", __u32, struct sw_addr_entry, sw_addr_cache, SW_CPU_REGIONS << SW_ADDRESS_CACHE_BITS,
       BPF_F_MMAPABLE);
SW_MAP("array", __u32, struct sw_addr_stored, sw_addr_store, SW_MAX_ADDRESSES, BPF_F_MMAPABLE);
SW_MAP("hash", struct sw_addr_key, __u32, sw_addr_store_index, SW_MAX_ADDRESSES, 0);
SW_MAP("array", __u32, __u64, sw_addr_store_next, 1, 0);
SW_QUEUE(sw_addr_store_free, __u32, SW_MAX_ADDRESSES);
SW_MAP("lru_hash", struct sw_addr_key, struct sw_addr_spilled, sw_addr_spill, SW_ADDRESS_OVERFLOW_ENTRIES, 0);
/* Per-tenant counters per CPU; the last entry counts traffic to no tenant. */
SW_MAP("percpu_array", __u32, struct sw_tenant_stats, sw_tenant_stats, SW_MAX_TENANTS + 1, 0);
/* Dynamic rules: (tenant, scope, address) -> rule set -> rules. */
SW_MAP("hash", struct sw_rule_set_key, __u32, sw_rule_set_index, SW_MAX_RULES, 0);
SW_MAP("array", __u32, struct sw_rule_set, sw_rule_sets, SW_MAX_RULES, 0);
SW_MAP("array", __u32, struct sw_rule, sw_rules, SW_MAX_RULES, 0);
SW_MAP("percpu_array", __u32, struct sw_rule_stats, sw_rule_stats, SW_MAX_RULES, 0);
SW_MAP("array", __u32, struct sw_rule_bucket, sw_rule_buckets, SW_MAX_RULES, 0);
/* Heuristics: destinations under attack, reflection ports (bitmap of 65,536
 * bits in 2,048 words), and the LRU state they learn from both directions. */
SW_MAP("hash", struct sw_rule_set_key, struct sw_attack_state, sw_attack, SW_MAX_RULES, 0);
SW_MAP("array", __u32, __u32, sw_reflection_ports, 2048, 0);
SW_MAP("lru_hash", struct sw_flow_key, __u64, sw_udp_requests, SW_MAX_FLOWS, 0);     /* -> last request, ns */
SW_MAP("lru_hash", struct sw_flow_key, __u32, sw_synacks, SW_MAX_FLOWS, 0);          /* -> expected ack number */
SW_MAP("lru_hash", struct sw_flow_key, __u64, sw_connections, SW_MAX_FLOWS, 0);      /* -> server sent, ns */
/* SYN authentication (synauth.h): validated sources with their own SYN budget, cookie SYN-ACK
 * budgets per protected destination (key: the server) and appliance-wide, counters per CPU. */
SW_MAP("lru_hash", struct sw_addr_key, struct sw_syn_source, sw_syn_sources, SW_MAX_FLOWS, 0);
SW_MAP("lru_hash", struct sw_addr_key, struct sw_token_bucket, sw_synack_buckets, SW_MAX_FLOWS, 0);
BPF_ARRAY(sw_synack_global, struct sw_token_bucket, 1);
BPF_PERCPU_ARRAY(sw_synauth_stats, __u64, SW_SYN_AUTH_STAT__COUNT);
/* The splice (synauth.h): the flows, per server address the last spliced packet (ns; a
 * destination stays "splice active" while its flows talk, attack mark or not), and one word
 * that is non-zero once anything was spliced, so that an appliance that never spliced pays one
 * array load per TCP packet and nothing more. Pinned: a spliced connection must survive a
 * restart of the control plane. */
SW_MAP("lru_hash", struct sw_flow_key, struct sw_splice, sw_splices, SW_MAX_SPLICES, 0);
SW_MAP("lru_hash", struct sw_addr_key, __u64, sw_splice_dests, SW_MAX_FLOWS, 0);
SW_MAP("array", __u32, __u64, sw_splice_gate, 1, 0);

#define SW_MS (1000ULL * 1000ULL) /* nanoseconds per millisecond */

/* The programs, one pair per direction, in the tail-call array: a port's main
 * program tail-calls its refresh program on an address cache miss, which fills
 * the slot and tail-calls the main program again, which then hits the cache. */
#define SW_PROG_MAIN(dir) (dir)
#define SW_PROG_REFRESH(dir) (SW_DIRS + (dir))
#define SW_PROG_SYNAUTH (2 * SW_DIRS) /* answers a SYN or a cookie ACK itself (synauth.h) */
#define SW_PROG_SPLICE(dir) (2 * SW_DIRS + 1 + (dir)) /* translates a spliced flow's packet (synauth.h) */
#define SW_PROG_FLOWS(dir) (3 * SW_DIRS + 1 + (dir)) /* connection accounting of a segment, then on (flows.h) */
#define SW_PROG_BLOCK_RESET (4 * SW_DIRS + 1) /* a blocked source's segment becomes a reset to the server (flows.h) */
BPF_PROG_ARRAY(sw_progs, 4 * SW_DIRS + 2);
/* Per-CPU scratch memory for the parsed packet and its verdict. Parsing
 * assigns constants on each path (protocol, class, fragment state, drop
 * reason); kept on the stack, the verifier would prove the rest of the program
 * once per combination of them and exceed its budget. Values read back from
 * map memory are unknown to it, so every path joins into one state. */
struct sw_verdict {
    __u8 drop;
    __u8 reason;
    __u8 splice;   /* a packet of a spliced connection: SW_PROG_SPLICE translates and sends it */
    __u8 syn_reset; /* for SW_PROG_SYNAUTH: the tenant's syn_auth is "reset" (else "splice") */
    /* Set with splice: the flow's state and delta as the port program found them, so that
     * SW_PROG_SPLICE translates an open flow's segment without a second lookup. */
    __u32 splice_state;
    __u32 splice_delta;
    __u32 flows_tenant; /* for SW_PROG_FLOWS: the tenant of the protected address (set with the call) */
};

struct sw_scratch {
    struct sw_packet packet;
    struct sw_verdict verdict;
};
BPF_PERCPU_ARRAY(sw_scratch, struct sw_scratch, 1);
/* Countdown to the next sampled packet, per CPU (1 entry). */
BPF_PERCPU_ARRAY(sw_sample_countdown, __u32, 1);
/* Sampled packets for the policy engine (SW_RINGBUF_PAGES pages of 4 KiB). */
BPF_RINGBUF_OUTPUT(sw_samples, SW_RINGBUF_PAGES);
/* Never read by the program: it gives user space bcc's description of struct
 * sw_sample, which bcc cannot derive from a ring buffer reservation (1 entry). */
BPF_ARRAY(sw_sample_layout, struct sw_sample, 1);

/* Stage markers for `seawall bench dataplane --stages`: compiled with
 * -DSW_PROFILE_STOP=n, the program returns XDP_DROP at marker n, so the cost
 * of each stage is the difference between consecutive builds. No-ops otherwise. */
#ifdef SW_PROFILE_STOP
#define SW_STAGE(n) do { if (SW_PROFILE_STOP == (n)) return XDP_DROP; } while (0)
#else
#define SW_STAGE(n) do { } while (0)
#endif

static __always_inline __u32 sw_lookup_tenant(__u32 is_v6, const __u64 *addr, __u32 slot)
{
    struct sw_tenant_ref *ref;
    if (is_v6) {
        struct sw_prefix6_key k6 = {.prefixlen = 32 + 128, .slot = slot};
        __builtin_memcpy(k6.addr, addr, 16);
        ref = sw_prefix6.lookup(&k6);
    } else {
        struct sw_prefix4_key k4 = {.prefixlen = 32 + 32, .slot = slot};
        __builtin_memcpy(k4.addr, (const __u8 *)addr + 12, 4);
        ref = sw_prefix4.lookup(&k4);
    }
    return ref ? ref->tenant_idx : SW_NO_TENANT;
}

/* The brief of a rule: lane minimums and maximums for sw_brief_matches(). */
static __always_inline void sw_brief(struct sw_rule *r, __u64 *lo, __u64 *hi, __u8 *flags)
{
    __u16 m = r->match;
    __u64 dlo = 0, dhi = 0xFFFF, slo = 0, shi = 0xFFFF, llo = 0, lhi = 0x1FFFF, stlo = 0, sthi = 7;
    if (m & SW_MATCH_DPORT) {
        dlo = r->dport_lo;
        dhi = r->dport_hi;
    }
    if (m & SW_MATCH_SPORT) {
        slo = r->sport_lo;
        shi = r->sport_hi;
    }
    if (m & SW_MATCH_LENGTH) {
        llo = r->length_lo;
        lhi = r->length_hi;
    }
    /* States (sw_brief_key()): 0 whole without L4, 1 whole with L4, 2 first fragment with
     * L4, 3 first fragment without, 4 later fragment: every condition is a range of them. */
    if (m & (SW_MATCH_SPORT | SW_MATCH_DPORT | SW_MATCH_TCP_FLAGS | SW_MATCH_PAYLOAD)) {
        stlo = 1;
        sthi = 2;
    }
    if ((m & SW_MATCH_FRAGMENT) && stlo < 2)
        stlo = 2;
    if ((m & SW_MATCH_NOT_FRAGMENT) && sthi > 1)
        sthi = 1;
    if (stlo > sthi) { /* no packet has that state: an empty range */
        stlo = 1;
        sthi = 0;
    }
    __u64 proto = 0, proto_mask = 0;
    if (m & SW_MATCH_PROTO) {
        proto = r->proto;
        proto_mask = 0xFF;
    }
    *lo = (dlo << SW_BRIEF_DPORT_SHIFT) | (slo << SW_BRIEF_SPORT_SHIFT) | (llo << SW_BRIEF_LENGTH_SHIFT) |
          (stlo << SW_BRIEF_STATE_SHIFT) | (proto << SW_BRIEF_PROTO_SHIFT);
    *hi = (dhi << SW_BRIEF_DPORT_SHIFT) | (shi << SW_BRIEF_SPORT_SHIFT) | (lhi << SW_BRIEF_LENGTH_SHIFT) |
          (sthi << SW_BRIEF_STATE_SHIFT) | (proto_mask << SW_BRIEF_PROTO_SHIFT);
    __u8 f = r->action & SW_BRIEF_ACTION_MASK;
    if ((m & (SW_MATCH_TTL | SW_MATCH_TCP_FLAGS | SW_MATCH_PAYLOAD)) || r->action == SW_RULE_ACTION_RATE_LIMIT)
        f |= SW_BRIEF_FULL;
    *flags = f;
}

/* Appends the rules of one (tenant, scope, address) set to a cache slot. */
static __always_inline void sw_merge_rule_set(struct sw_addr_entry *e, __u32 tenant_idx, __u32 scope,
                                              const __u64 *addr)
{
    struct sw_rule_set_key key = {.tenant_idx = tenant_idx, .scope = scope};
    if (scope == SW_SCOPE_ADDRESS)
        __builtin_memcpy(key.addr, addr, 16);
    __u32 *set_id = sw_rule_set_index.lookup(&key);
    if (!set_id)
        return;
    struct sw_rule_set *set = sw_rule_sets.lookup(set_id);
    if (!set)
        return;
#pragma unroll
    for (int i = 0; i < SW_RULES_PER_TARGET; i++) {
        if (i >= set->count)
            break;
        __u32 n = e->rule_count;
        if (n >= SW_RULES_PER_TARGET)
            break;
        __u32 id = set->rule_ids[i];
        struct sw_rule *r = sw_rules.lookup(&id);
        if (!r || !r->in_use)
            continue; /* a rule being removed: it matched nothing before either */
        sw_brief(r, &e->rule_lo[n], &e->rule_hi[n], &e->rule_flags[n]);
        e->rule_ids[n] = id;
        e->rule_count = n + 1;
    }
}

static __always_inline __u32 sw_addr_slot(const __u64 *addr)
{
    __u64 x = addr[0] ^ addr[1];
    /* Fibonacci hashing: the top bits of a multiplicative hash spread both
     * sequential IPv4 hosts and sparse IPv6 interface ids over the slots. */
    return ((__u32)(x ^ (x >> 32)) * 0x9E3779B1U) >> (32 - SW_ADDRESS_CACHE_BITS);
}

static __always_inline int sw_addr_equal(const __u8 *stored, const __u64 *addr)
{
    /* Cache slots keep addresses 8-byte aligned (SW_ALIGNED): two loads, not sixteen. */
    const __u8 *aligned = __builtin_assume_aligned(stored, 8);
    __u64 a0, a1;
    __builtin_memcpy(&a0, aligned, 8);
    __builtin_memcpy(&a1, aligned + 8, 8);
    return a0 == addr[0] && a1 == addr[1];
}

/* The spill store's slot of an address, claimed for it when it has none: a slot user space
 * freed, else one never used. NULL when every slot is taken (the caller spills into the LRU
 * overflow map). A claimed slot holds the address and the tenant before it is in the index,
 * so user space may read it with no counts yet (harmless: it adds zeros). */
static __always_inline struct sw_addr_spilled *sw_addr_store_slot(struct sw_addr_key *key, __u32 tenant)
{
    __u32 *at = sw_addr_store_index.lookup(key);
    if (!at) {
        __u32 slot;
        if (sw_addr_store_free.pop(&slot) != 0) {
            __u32 zero = 0;
            __u64 *next = sw_addr_store_next.lookup(&zero);
            if (!next || *next >= SW_MAX_ADDRESSES)
                return NULL;
            __u64 fresh = __sync_fetch_and_add(next, 1);
            if (fresh >= SW_MAX_ADDRESSES)
                return NULL;
            slot = (__u32)fresh;
        }
        struct sw_addr_stored *s = sw_addr_store.lookup(&slot);
        if (!s)
            return NULL;
        __builtin_memcpy(s->addr, key->addr, 16);
        s->spilled.tenant_idx = tenant;
        s->spilled.claimed = 1;
        if (sw_addr_store_index.insert(key, &slot) == 0)
            return &s->spilled;
        /* Another CPU claimed a slot for this address first (or the index is full): give this one
         * back, empty, and use theirs. */
        s->spilled.claimed = 0;
        __builtin_memset(s->addr, 0, 16);
        s->spilled.tenant_idx = 0;
        sw_addr_store_free.push(&slot, 0);
        at = sw_addr_store_index.lookup(key);
        if (!at)
            return NULL;
    }
    struct sw_addr_stored *s = sw_addr_store.lookup(at);
    return s ? &s->spilled : NULL;
}

/* Moves the counters of a slot's previous address into the spill store (the overflow map
 * when the store is full). */
static __always_inline void sw_addr_spill_counters(struct sw_addr_entry *e)
{
    struct sw_addr_counters *c = &e->counters;
    __u64 inbound = 0;
#pragma unroll
    for (int i = 0; i < SW_CLASSES; i++)
        inbound += c->packets[i];
    if (e->tenant_idx == SW_NO_TENANT || (c->dropped_packets == 0 && c->outbound_packets == 0 && inbound == 0))
        return;
    struct sw_addr_key key;
    __builtin_memcpy(key.addr, e->addr, 16);
    struct sw_addr_spilled *spill = sw_addr_store_slot(&key, e->tenant_idx);
    if (!spill)
        spill = sw_addr_spill.lookup(&key);
    if (!spill) {
        struct sw_addr_spilled fresh = {};
        __builtin_memcpy(&fresh.counters, c, sizeof(*c));
        fresh.tenant_idx = e->tenant_idx;
        if (sw_addr_spill.insert(&key, &fresh) == 0)
            return;
        /* Another CPU spilled the same address first: add to its entry. */
        spill = sw_addr_spill.lookup(&key);
        if (!spill)
            return;
    }
    /* Shared by all CPUs: atomic adds (a spill is a cache miss, already the slow path). */
#pragma unroll
    for (int i = 0; i < SW_CLASSES; i++) {
        __sync_fetch_and_add(&spill->counters.packets[i], c->packets[i]);
        __sync_fetch_and_add(&spill->counters.bytes[i], c->bytes[i]);
    }
    __sync_fetch_and_add(&spill->counters.dropped_packets, c->dropped_packets);
    __sync_fetch_and_add(&spill->counters.outbound_packets, c->outbound_packets);
    __sync_fetch_and_add(&spill->counters.outbound_bytes, c->outbound_bytes);
    spill->tenant_idx = e->tenant_idx;
}

/* Fills or refreshes a cache slot: the only code that walks the prefix tries
 * or hashes into the rule index. It runs in its own program, reached by tail
 * call on a miss: inlined into the main program, its key set-up and register
 * spills cost every packet about 10 ns even on the hit path. */
static __always_inline void sw_address_refresh(struct sw_addr_entry *e, const __u64 *addr, __u32 is_v6,
                                               struct sw_config *cfg)
{
    /* The generation is read before anything it guards: should user space change a rule, a policy
     * or the tenant set (and then bump it) while this refresh runs, the slot keeps the older
     * generation and the next packet refreshes it again, instead of stamping what it read as new. */
    __u64 generation = *(volatile __typeof__(cfg->generation) *)&cfg->generation;
    asm volatile("" ::: "memory");
    if (!sw_addr_equal(e->addr, addr) || e->is_v6 != is_v6) {
        if (e->generation)
            sw_addr_spill_counters(e);
        __builtin_memset(&e->counters, 0, sizeof(e->counters));
        __builtin_memcpy(e->addr, addr, 16);
    }
    __u32 tenant = sw_lookup_tenant(is_v6, addr, cfg->active_slot);
    e->is_v6 = is_v6;
    e->tenant_idx = tenant;
    e->rule_count = 0;
    e->attack_classes = 0;
    e->policy_flags = 0;
    if (tenant < SW_MAX_TENANTS) {
        __u32 policy_idx = cfg->active_slot * SW_MAX_TENANTS + tenant;
        struct sw_policy *pol = sw_policy.lookup(&policy_idx);
        if (pol && pol->in_use)
            e->policy_flags = pol->flags | SW_POLICY_SLOT_PROTECTED |
                              (pol->mode == SW_TENANT_MODE_MONITOR ? SW_POLICY_SLOT_MONITOR : 0);
    }
    if (tenant != SW_NO_TENANT) {
        sw_merge_rule_set(e, tenant, SW_SCOPE_ADDRESS, addr);
        sw_merge_rule_set(e, tenant, SW_SCOPE_TENANT, addr);
        struct sw_rule_set_key key = {.tenant_idx = tenant, .scope = SW_SCOPE_ADDRESS};
        __builtin_memcpy(key.addr, addr, 16);
        struct sw_attack_state *a = sw_attack.lookup(&key);
        if (a)
            e->attack_classes |= a->classes;
        struct sw_rule_set_key tkey = {.tenant_idx = tenant, .scope = SW_SCOPE_TENANT};
        a = sw_attack.lookup(&tkey);
        if (a)
            e->attack_classes |= a->classes;
    }
    if ((e->policy_flags & (SW_POLICY_HAS_ALLOW | SW_POLICY_HAS_DENY | SW_POLICY_REFLECTION_ALWAYS)) ||
        e->attack_classes)
        e->policy_flags |= SW_POLICY_SLOT_LISTS_OR_HEURISTICS;
    if ((e->policy_flags & (SW_POLICY_SLOT_PROTECTED | SW_POLICY_SLOT_MONITOR | SW_POLICY_SLOT_LISTS_OR_HEURISTICS |
                            SW_POLICY_HAS_BUDGET)) == SW_POLICY_SLOT_PROTECTED && e->rule_count == 0)
        e->policy_flags |= SW_POLICY_SLOT_PLAIN; /* sw_pass_plain() may take its packets */
    e->generation = generation;
}

/* This CPU's copy of a cache slot. The verifier inlines both the CPU id and the
 * array lookup: no helper call. */
static __always_inline struct sw_addr_entry *sw_addr_cache_slot(__u32 slot)
{
    __u32 index = (bpf_get_smp_processor_id() << SW_ADDRESS_CACHE_BITS) | slot;
    return sw_addr_cache.lookup(&index);
}

/* The cache slot of a customer-side address when it is current, else NULL
 * (the caller tail-calls the refresh program). A hit is two compares. */
static __always_inline struct sw_addr_entry *sw_address(const __u64 *addr, __u32 is_v6, struct sw_config *cfg)
{
    struct sw_addr_entry *e = sw_addr_cache_slot(sw_addr_slot(addr));
    if (e && sw_addr_equal(e->addr, addr) && e->generation == cfg->generation && e->is_v6 == is_v6)
        return e;
    return 0;
}

static __always_inline int sw_ports_match(struct sw_packet *p, __u16 lo, __u16 hi, __u16 port)
{
    if (lo == 0 && hi == 0xFFFF)
        return 1;
    return p->l4_ok && (p->proto == SW_IPPROTO_TCP || p->proto == SW_IPPROTO_UDP) && port >= lo && port <= hi;
}

/* Does any entry of the tenant's allow (or deny) list match? One LPM lookup. */
static __always_inline int sw_acl_match(struct sw_packet *p, __u32 slot, __u32 kind, __u32 tenant)
{
    struct sw_acl_value *v;
    __u32 index = (slot * 2 + kind) * SW_MAX_TENANTS + tenant; /* sw_acl_index() of dataplane.py */
    if (p->is_v6) {
        void *trie = sw_acl6_tries.lookup(&index);
        if (!trie)
            return 0;
        struct sw_acl6_key k6 = {.prefixlen = 128};
        __builtin_memcpy(k6.src, p->src, 16);
        v = bpf_map_lookup_elem(trie, &k6);
    } else {
        void *trie = sw_acl4_tries.lookup(&index);
        if (!trie)
            return 0;
        struct sw_acl4_key k4 = {.prefixlen = 32};
        __builtin_memcpy(k4.src, (const __u8 *)p->src + 12, 4);
        v = bpf_map_lookup_elem(trie, &k4);
    }
    if (!v)
        return 0;
#pragma unroll
    for (int i = 0; i < SW_ACL_ENTRIES_PER_PREFIX; i++) {
        if (i >= v->count)
            break;
        struct sw_acl_entry *e = &v->entries[i];
        if (e->proto && e->proto != p->proto)
            continue;
        if (sw_ports_match(p, e->sport_lo, e->sport_hi, p->sport) &&
            sw_ports_match(p, e->dport_lo, e->dport_hi, p->dport))
            return 1;
    }
    return 0;
}

/* The invalid-packet drop reason of a packet sw_parse_frame() parsed (sw_parse_fast()
 * computes the same while parsing). */
static __always_inline int sw_invalid_reason(struct sw_packet *p)
{
    if (p->invalid)
        return p->invalid;
    if (p->src[0] == p->dst[0] && p->src[1] == p->dst[1])
        return SW_DROP_REASON_LAND;
    if (p->l4_ok && p->proto == SW_IPPROTO_TCP && sw_bad_tcp_flags(p->tcp_flags))
        return SW_DROP_REASON_BAD_TCP_FLAGS;
    if (p->l4_ok && (p->proto == SW_IPPROTO_TCP || p->proto == SW_IPPROTO_UDP) &&
        (p->sport == 0 || p->dport == 0))
        return SW_DROP_REASON_PORT_ZERO;
    return SW_DROP_REASON_NONE;
}

static __always_inline int sw_rule_matches(struct sw_rule *r, struct sw_packet *p, void *data, void *data_end)
{
    __u16 m = r->match;
    if ((m & SW_MATCH_PROTO) && r->proto != p->proto)
        return 0;
    if ((m & SW_MATCH_FRAGMENT) && p->fragment == SW_FRAG_NONE)
        return 0;
    if ((m & SW_MATCH_NOT_FRAGMENT) && p->fragment != SW_FRAG_NONE)
        return 0;
    if ((m & SW_MATCH_LENGTH) && (p->ip_length < r->length_lo || p->ip_length > r->length_hi))
        return 0;
    if ((m & SW_MATCH_TTL) && (p->ttl < r->ttl_lo || p->ttl > r->ttl_hi))
        return 0;
    if (m & (SW_MATCH_SPORT | SW_MATCH_DPORT | SW_MATCH_TCP_FLAGS | SW_MATCH_PAYLOAD)) {
        if (!p->l4_ok)
            return 0;
        if ((m & SW_MATCH_SPORT) && (p->sport < r->sport_lo || p->sport > r->sport_hi))
            return 0;
        if ((m & SW_MATCH_DPORT) && (p->dport < r->dport_lo || p->dport > r->dport_hi))
            return 0;
        if ((m & SW_MATCH_TCP_FLAGS) &&
            (p->proto != SW_IPPROTO_TCP || (p->tcp_flags & r->tcp_flags_mask) != r->tcp_flags_value))
            return 0;
        if (m & SW_MATCH_PAYLOAD) {
            __u8 *pl = data + (p->payload_offset & 0x3FFF); /* bounded offset for the verifier */
            if ((void *)(pl + SW_PAYLOAD_MATCH_BYTES) > data_end)
                return 0;
            __u64 got, want, mask;
            __builtin_memcpy(&got, pl, sizeof(got));
            __builtin_memcpy(&want, r->payload, sizeof(want));
            __builtin_memcpy(&mask, r->payload_mask, sizeof(mask));
            if ((got & mask) != want)
                return 0;
        }
    }
    return 1;
}

/* The packet's lanes for sw_brief_matches(), with the guard bits set. */
static __always_inline __u64 sw_brief_key(struct sw_packet *p)
{
    __u64 ports_proto = *(__u64 *)&p->sport; /* sport, dport, proto, ttl, tcp_flags, is_v6 */
    __u64 frag_l4 = *(__u16 *)&p->fragment;  /* fragment, l4_ok */
    __u64 k = ((frag_l4 & 0xFF) << 1) | ((frag_l4 >> 8) & 1);
    /* fragment * 2 + l4_ok -> state: 0->0, 1->1, 2->3, 3->2, 4->4 (5 cannot happen) */
    __u64 state = (0x442310ULL >> ((k & 7) * 4)) & 7;
    return (((ports_proto >> 16) & 0xFFFF) << SW_BRIEF_DPORT_SHIFT) |
           ((ports_proto & 0xFFFF) << SW_BRIEF_SPORT_SHIFT) |
           ((__u64)(p->ip_length & 0x1FFFF) << SW_BRIEF_LENGTH_SHIFT) | (state << SW_BRIEF_STATE_SHIFT) |
           (((ports_proto >> 32) & 0xFF) << SW_BRIEF_PROTO_SHIFT) | SW_BRIEF_GUARDS;
}

/* Every lane within [lo, hi] and the protocol equal where the rule names one: no borrow
 * clears a guard bit. key comes from sw_brief_key(). */
static __always_inline int sw_brief_matches(__u64 key, __u64 lo, __u64 hi)
{
    __u64 above = key - lo;                         /* guard set: lane >= its minimum */
    __u64 below = (hi | SW_BRIEF_GUARDS) - (key & ~SW_BRIEF_GUARDS); /* guard set: lane <= maximum */
    return (((above & below & SW_BRIEF_GUARDS) ^ SW_BRIEF_GUARDS) | (above & hi & SW_BRIEF_PROTO_MASK)) == 0;
}

/* Refills a token bucket shared by the CPUs (races only blur the rate a little): rate in tokens
 * per second, burst in tokens. The clock advances only by the time the whole tokens earned took,
 * so the fraction carries over and low rates refill too; a full second (or more) refills any
 * bucket outright, which also keeps elapsed * rate from overflowing. A bucket whose last refill
 * lies in the future (tests set one), or whose rate is 0, does not refill. */
static __always_inline void sw_bucket_refill(__u64 *last_ns, __s64 *tokens, __u64 now, __u64 rate, __s64 burst)
{
    if (now <= *last_ns || rate == 0)
        return;
    __u64 elapsed = now - *last_ns;
    if (elapsed >= NSEC_PER_SEC) {
        *tokens = burst;
        *last_ns = now;
        return;
    }
    __u64 whole = elapsed * rate / NSEC_PER_SEC; /* whole tokens earned */
    if (whole == 0)
        return;
    __s64 refilled = *tokens + (__s64)whole;
    if (refilled >= burst) {
        *tokens = burst;
        *last_ns = now;
    } else {
        *tokens = refilled;
        *last_ns += whole * NSEC_PER_SEC / rate;
    }
}

/* Token bucket of a rate-limit rule: 1 when the packet is within the rate. */
static __always_inline int sw_rule_admit(__u32 id, struct sw_rule *r)
{
    struct sw_rule_bucket *b = sw_rule_buckets.lookup(&id);
    if (!b)
        return 1;
    sw_bucket_refill(&b->last_ns, &b->tokens, bpf_ktime_get_ns(), r->rate_pps,
                     r->rate_pps / 10 + 1 /* 100 ms worth of packets */);
    if (b->tokens <= 0)
        return 0;
    __sync_fetch_and_add(&b->tokens, -1);
    return 1;
}

/* Walks the rules cached for the destination; the first rule that drops or
 * admits decides (count-only rules just count). Each rule's brief in the slot
 * settles protocol, ports, length and fragment state in one range test without
 * reading the rule; only rules that also match TTL, TCP flags or payload, and
 * rate limits, read it. */
static __always_inline void sw_apply_rules(struct sw_addr_entry *e, struct sw_packet *p, void *data,
                                           void *data_end, __u32 wire_len, struct sw_verdict *v)
{
#ifndef SW_NO_RULE_BRIEFS
    __u64 key = sw_brief_key(p);
#endif
#pragma unroll
    for (int i = 0; i < SW_RULES_PER_TARGET; i++) {
        if (i >= e->rule_count)
            break;
        __u8 flags = e->rule_flags[i];
#ifdef SW_NO_RULE_BRIEFS
        flags |= SW_BRIEF_FULL; /* a build for the test that holds the briefs to the full matcher */
#else
        if (!sw_brief_matches(key, e->rule_lo[i], e->rule_hi[i]))
            continue;
#endif
        __u32 id = e->rule_ids[i];
        __u8 action = flags & SW_BRIEF_ACTION_MASK;
        struct sw_rule *r = 0;
        if (flags & SW_BRIEF_FULL) {
            r = sw_rules.lookup(&id);
            if (!r || !r->in_use || !sw_rule_matches(r, p, data, data_end))
                continue;
        }
        struct sw_rule_stats *rs = sw_rule_stats.lookup(&id);
        if (rs) {
            rs->matched_packets++;
            rs->matched_bytes += wire_len;
        }
        if (action == SW_RULE_ACTION_COUNT)
            continue;
        if (action == SW_RULE_ACTION_RATE_LIMIT && r && sw_rule_admit(id, r))
            return; /* within the rate: pass, no further rules */
        if (rs)
            rs->dropped_packets++;
        v->drop = 1;
        v->reason = action == SW_RULE_ACTION_RATE_LIMIT ? SW_DROP_REASON_RATE_LIMIT : SW_DROP_REASON_RULE;
        return;
    }
}

static __always_inline int sw_reflection_port(__u16 port)
{
    __u32 word = port >> 5;
    __u32 *bits = sw_reflection_ports.lookup(&word);
    return bits && (*bits >> (port & 31)) & 1;
}

static __always_inline void sw_flow(struct sw_flow_key *k, const __u64 *local, const __u64 *remote,
                                    __u16 local_port, __u16 remote_port)
{
    __builtin_memcpy(k->local, local, 16);
    __builtin_memcpy(k->remote, remote, 16);
    k->local_port = local_port;
    k->remote_port = remote_port;
    k->pad = 0;
}

/* TCP sequence (seq = 1) or acknowledgement (seq = 0) number, host order. */
static __always_inline int sw_tcp_number(struct sw_packet *p, void *data, void *data_end, int seq, __u32 *out)
{
    __u8 *tcp = data + (p->l4_offset & 0x3FFF);
    if ((void *)(tcp + 12) > data_end)
        return 0;
    __u32 raw;
    __builtin_memcpy(&raw, tcp + (seq ? 4 : 8), 4);
    *out = bpf_ntohl(raw);
    return 1;
}

/* Map access for synauth.h (bcc rewrites map calls in this file only). */
static __always_inline void sw_synauth_count(__u32 stat)
{
    __u64 *c = sw_synauth_stats.lookup(&stat);
    if (c)
        (*c)++;
}
static __always_inline struct sw_syn_source *sw_syn_source_of(struct sw_addr_key *src)
{
    return sw_syn_sources.lookup(src);
}
static __always_inline void sw_syn_source_set(struct sw_addr_key *src, struct sw_syn_source *s)
{
    sw_syn_sources.update(src, s);
}
static __always_inline struct sw_attack_state *sw_attack_of(struct sw_rule_set_key *k)
{
    return sw_attack.lookup(k);
}
static __always_inline __u32 *sw_synack_expected(struct sw_flow_key *k)
{
    return sw_synacks.lookup(k);
}
static __always_inline void sw_synack_forget(struct sw_flow_key *k)
{
    sw_synacks.delete(k);
}
static __always_inline struct sw_token_bucket *sw_synack_global_bucket(void)
{
    __u32 zero = 0;
    return sw_synack_global.lookup(&zero);
}
/* Tokens of a full SYN-ACK bucket: SW_SYNACK_BURST_MS of its rate, in 64 bits (no overflow). */
#define SW_SYNACK_BURST(rate) ((__s64)((__u64)(rate) * SW_SYNACK_BURST_MS / 1000) + 1) /* 64-bit: no overflow */
/* A destination's SYN-ACK bucket, created full (SW_SYNACK_RATE_PPS) on its first SYN. */
static __always_inline struct sw_token_bucket *sw_synack_bucket_of(struct sw_addr_key *dst, __u64 now)
{
    struct sw_token_bucket *b = sw_synack_buckets.lookup(dst);
    if (b)
        return b;
    struct sw_token_bucket fresh = {.last_ns = now, .tokens = SW_SYNACK_BURST(SW_SYNACK_RATE_PPS)};
    sw_synack_buckets.update(dst, &fresh);
    return sw_synack_buckets.lookup(dst);
}

static __always_inline struct sw_scratch *sw_scratch_of(void)
{
    __u32 zero = 0;
    return sw_scratch.lookup(&zero);
}
static __always_inline int sw_redirect(__u32 port)
{
    return sw_ports.redirect_map(port, XDP_DROP);
}
static __always_inline struct sw_splice *sw_splice_of(struct sw_flow_key *k)
{
    return sw_splices.lookup(k);
}
static __always_inline void sw_splice_set(struct sw_flow_key *k, struct sw_splice *s)
{
    sw_splices.update(k, s);
}
static __always_inline void sw_splice_forget(struct sw_flow_key *k)
{
    sw_splices.delete(k);
}
/* A new splice towards `server`: the destination is splice active, and the gate opens. */
static __always_inline void sw_splice_dest_open(const __u64 *server, __u64 now)
{
    struct sw_addr_key d;
    __builtin_memcpy(d.addr, server, 16);
    sw_splice_dests.update(&d, &now);
    __u32 zero = 0;
    __u64 *gate = sw_splice_gate.lookup(&zero);
    /* Opened with a fetching atomic add (fully ordered: the destination's time above is visible before
     * it, and the gate is set even if the control plane closed it a moment ago: dataplane/splices.py
     * closes it, then reads the destinations). The word counts splices opened; non-zero is open. */
    if (gate) {
        __u64 before = __sync_fetch_and_add(gate, 1);
        asm volatile("" ::"r"(before)); /* the fetch is used: clang keeps the ordered (fetching) form */
    }
}

/* Is this TCP packet one of a spliced connection (server: the tenant's side)? Then it skips
 * every check (its source proved itself) and SW_PROG_SPLICE translates it. Independent of the
 * attack mark: a connection spliced during an attack lives on after it. A client's new SYN on
 * the tuple ends the splice: that connection goes straight to the server. */
static __always_inline int sw_spliced(struct sw_packet *p, struct sw_verdict *v, const __u64 *server,
                                      const __u64 *client, __u16 server_port, __u16 client_port, const __u32 dir)
{
    if (p->proto != SW_IPPROTO_TCP || !p->l4_ok)
        return 0; /* before the gate: a UDP packet pays no lookup */
    __u32 zero = 0;
    __u64 *gate = sw_splice_gate.lookup(&zero);
    if (!gate || !*gate)
        return 0;
    struct sw_addr_key d;
    __builtin_memcpy(d.addr, server, 16);
    __u64 *last = sw_splice_dests.lookup(&d);
    if (!last)
        return 0;
    __u64 now = bpf_ktime_get_ns();
    if (now - *last > SW_SPLICE_IDLE_MS * SW_MS)
        return 0;
    struct sw_flow_key k;
    sw_flow(&k, server, client, server_port, client_port);
    struct sw_splice *s = sw_splices.lookup(&k);
    if (!s)
        return 0;
    if (dir == SW_DIRECTION_INBOUND && (p->tcp_flags & (SW_TCP_SYN | SW_TCP_ACK)) == SW_TCP_SYN) {
        sw_splices.delete(&k);
        return 0;
    }
    if (now - *last > SW_SPLICE_TOUCH_MS * SW_MS)
        *last = now;
    v->splice_state = s->state;
    v->splice_delta = s->delta;
    return 1;
}

#include "synauth.h"
#include "flows.h"

/* Map access for flows.h (bcc rewrites map calls in this file only). */
static __always_inline struct sw_flow_conn *sw_flow_conn_of(struct sw_flow_key *k) { return sw_flow_conns.lookup(k); }
static __always_inline int sw_flow_conn_new(struct sw_flow_key *k, struct sw_flow_conn *c) { return sw_flow_conns.insert(k, c); }
static __always_inline int sw_flow_conn_forget(struct sw_flow_key *k) { return sw_flow_conns.delete(k); }
static __always_inline struct sw_flow_handshake *sw_flow_handshake_of(struct sw_flow_key *k) { return sw_flow_handshakes.lookup(k); }
static __always_inline int sw_flow_handshake_new(struct sw_flow_key *k, struct sw_flow_handshake *h) { return sw_flow_handshakes.insert(k, h); }
static __always_inline int sw_flow_handshake_forget(struct sw_flow_key *k) { return sw_flow_handshakes.delete(k); }
static __always_inline struct sw_flow_counts *sw_flow_dest_of(struct sw_addr_key *k) { return sw_flow_dests.lookup(k); }
static __always_inline int sw_flow_dest_new(struct sw_addr_key *k, struct sw_flow_counts *c) { return sw_flow_dests.insert(k, c); }
static __always_inline struct sw_flow_counts *sw_flow_pair_of(struct sw_flow_pair_key *k) { return sw_flow_pairs.lookup(k); }
static __always_inline int sw_flow_pair_new(struct sw_flow_pair_key *k, struct sw_flow_counts *c) { return sw_flow_pairs.insert(k, c); }
static __always_inline struct sw_source_limit *sw_source_limit_of(struct sw_limit_key *k) { return sw_source_limits.lookup(k); }
static __always_inline struct sw_token_bucket *sw_limit_bucket_of(struct sw_flow_key *k) { return sw_limit_buckets.lookup(k); }
static __always_inline int sw_limit_bucket_new(struct sw_flow_key *k, struct sw_token_bucket *b) { return sw_limit_buckets.insert(k, b); }
static __always_inline __u64 *sw_blocked_until(struct sw_block_key *k) { return sw_blocked.lookup(k); }
static __always_inline __u32 *sw_flow_pending_slot(__u32 index) { return sw_flow_pending.lookup(&index); }
static __always_inline void sw_flow_count(__u32 stat) { __u64 *c = sw_flow_stats.lookup(&stat); if (c) (*c)++; }

/* Always-on heuristics for a destination under attack (or reflection filtering
 * set to "always"): a drop reason, or 0. Learned state comes from the outbound
 * direction (sw_learn_outbound) and from completed handshakes. */
static __always_inline int sw_heuristics(struct sw_packet *p, struct sw_addr_entry *st, __u16 flags,
                                         void *data, void *data_end)
{
    __u32 attack = st->attack_classes;
    if (p->proto == SW_IPPROTO_UDP && p->l4_ok &&
        ((flags & SW_POLICY_REFLECTION_ALWAYS) ||
         ((flags & SW_POLICY_REFLECTION_AUTO) &&
          (attack & ((1U << SW_TRAFFIC_CLASS_UDP) | (1U << SW_TRAFFIC_CLASS_FRAGMENT))))) &&
        sw_reflection_port(p->sport)) {
        struct sw_flow_key k;
        sw_flow(&k, p->dst, p->src, 0, p->sport);
        __u64 *asked = sw_udp_requests.lookup(&k);
        if (!asked || bpf_ktime_get_ns() - *asked > SW_REFLECTION_WINDOW_MS * SW_MS)
            return SW_DROP_REASON_HEURISTIC; /* a reply nobody here asked for */
        return 0;
    }
    if (p->proto != SW_IPPROTO_TCP || !p->l4_ok)
        return 0;
    int answer = 0; /* a SYN-ACK, or an RST/ACK refusing a SYN, to check against the servers' SYNs */
    if ((p->tcp_flags & (SW_TCP_SYN | SW_TCP_ACK)) == (SW_TCP_SYN | SW_TCP_ACK)) {
        answer = (flags & SW_POLICY_REFLECTION_ALWAYS) ||
                 ((flags & SW_POLICY_REFLECTION_AUTO) && (attack & (1U << SW_TRAFFIC_CLASS_TCP_OTHER)));
    } else if ((p->tcp_flags & (SW_TCP_RST | SW_TCP_ACK)) == (SW_TCP_RST | SW_TCP_ACK) &&
               (flags & SW_POLICY_REFLECTION_ALWAYS)) {
        /* Only with "always" (under "auto", the ACK/RST/FIN incident path below). A reset refusing
         * a SYN carries sequence number 0 (RFC 793 answers a segment without ACK with SEQ=0);
         * one closing a connection carries its sender's next sequence number, and outside an
         * incident nothing here records the connections clients open: those pass as before. */
        __u32 seq;
        answer = sw_tcp_number(p, data, data_end, 1, &seq) && seq == 0;
    }
    if (answer) {
        /* SYN-ACK and RST/ACK reflection: either answers a SYN; a server here must have
         * sent it (sw_learn_outbound records every outbound SYN), else it was someone
         * else's spoofed SYN that a reflector answered towards us. By state, not by rate. */
        struct sw_flow_key k;
        sw_flow(&k, p->dst, p->src, p->dport, p->sport);
        __u64 *opened = sw_connections.lookup(&k);
        if (!opened || bpf_ktime_get_ns() - *opened > SW_TCP_OPEN_WINDOW_MS * SW_MS)
            return SW_DROP_REASON_HEURISTIC;
        return 0;
    }
    if ((attack & (1U << SW_TRAFFIC_CLASS_TCP_OTHER)) && !(p->tcp_flags & SW_TCP_SYN)) {
        /* ACK, RST and FIN floods: only packets of connections the server is
         * talking on pass, after a grace period that learns them. */
        struct sw_flow_key k;
        sw_flow(&k, p->dst, p->src, p->dport, p->sport);
        __u64 *seen = sw_connections.lookup(&k);
        __u64 now = bpf_ktime_get_ns();
        if (seen && now - *seen < SW_CONN_IDLE_MS * SW_MS)
            return 0;
        struct sw_rule_set_key akey = {.tenant_idx = st->tenant_idx, .scope = SW_SCOPE_ADDRESS};
        __builtin_memcpy(akey.addr, p->dst, 16);
        struct sw_attack_state *a = sw_attack.lookup(&akey);
        if (a && now - a->since_ns < SW_CONN_GRACE_MS * SW_MS)
            return 0;
        return SW_DROP_REASON_HEURISTIC;
    }
    if (!(flags & SW_POLICY_SYN_PROTECTION) || !(attack & (1U << SW_TRAFFIC_CLASS_TCP_SYN)))
        return 0;
    return sw_synauth(p, st, data, data_end); /* cookies, validated sources: synauth.h */
}

/* Per-destination, per-class token bucket of the tenant's policy (sw_policy.rate_pps[], one
 * slot per class with a budget: SW_BUDGET_SLOT_OF_CLASS): acts from the first packet,
 * no control-plane round trip. Kept per CPU in the address cache slot, each CPU
 * admitting rate / SW_NR_CPUS (RSS spreads a flood's flows over the CPUs). */
static __always_inline int sw_over_budget(struct sw_addr_entry *st, struct sw_config *cfg, struct sw_packet *p)
{
    __u32 policy_idx = cfg->active_slot * SW_MAX_TENANTS + st->tenant_idx;
    struct sw_policy *pol = sw_policy.lookup(&policy_idx);
    if (!pol)
        return 0;
    __u32 b = (SW_BUDGET_SLOT_OF_CLASS >> (4 * (p->traffic_class & 7))) & 0xF;
    if (b >= SW_BUDGET_CLASSES)
        return 0;
    __u32 rate = pol->rate_pps[b];
    if (!rate)
        return 0;
    __u64 per_cpu = rate / SW_NR_CPUS + 1;
    __s64 burst = per_cpu * SW_BUDGET_BURST_MS / 1000 + 1;
    __u64 now = bpf_ktime_get_ns();
    __u64 whole = (now - st->budget_ns[b]) * per_cpu / NSEC_PER_SEC;
    if (whole > 0) {
        __s64 tokens = st->budget_tokens[b] + (__s64)whole;
        if (tokens >= burst || st->budget_ns[b] == 0) {
            st->budget_tokens[b] = burst;
            st->budget_ns[b] = now;
        } else {
            st->budget_tokens[b] = tokens;
            st->budget_ns[b] += whole * NSEC_PER_SEC / per_cpu;
        }
    }
    if (st->budget_tokens[b] <= 0)
        return 1;
    st->budget_tokens[b]--;
    return 0;
}

/* What the heuristics learn from the customer side: requests to reflector
 * ports (their replies are then admitted), SYN-ACKs (the client's ACK then
 * validates it). Only for tenant addresses. */
static __always_inline void sw_learn_outbound(struct sw_packet *p, struct sw_addr_entry *st, void *data,
                                              void *data_end)
{
    if (!p->l4_ok)
        return;
    if (p->proto == SW_IPPROTO_TCP && !(p->tcp_flags & SW_TCP_RST) &&
        ((st->attack_classes & (1U << SW_TRAFFIC_CLASS_TCP_OTHER)) ||
         (p->tcp_flags & (SW_TCP_SYN | SW_TCP_ACK)) == SW_TCP_SYN)) {
        /* The server talks on this connection: its client's ACKs, FINs and RSTs belong.
         * Its own SYNs are recorded always (rare next to the traffic it serves): the
         * SYN-ACK and RST/ACK answering them pass the reflection check from the first
         * packet of an attack, with no grace period. */
        struct sw_flow_key k;
        sw_flow(&k, p->src, p->dst, p->sport, p->dport);
        __u64 now = bpf_ktime_get_ns();
        sw_connections.update(&k, &now);
    }
    if (p->proto == SW_IPPROTO_UDP && sw_reflection_port(p->dport)) {
        struct sw_flow_key k;
        sw_flow(&k, p->src, p->dst, 0, p->dport);
        __u64 now = bpf_ktime_get_ns();
        sw_udp_requests.update(&k, &now);
    } else if (p->proto == SW_IPPROTO_TCP &&
               (p->tcp_flags & (SW_TCP_SYN | SW_TCP_ACK)) == (SW_TCP_SYN | SW_TCP_ACK)) {
        __u32 seq;
        if (!sw_tcp_number(p, data, data_end, 1, &seq))
            return;
        struct sw_flow_key k;
        sw_flow(&k, p->src, p->dst, p->sport, p->dport);
        __u32 expected = seq + 1;
        sw_synacks.update(&k, &expected);
    }
}

static __always_inline void sw_sample(struct xdp_md *ctx, struct sw_config *cfg, __u32 tenant, __u32 dir,
                                      __u32 drop, __u32 reason, __u32 wire_len)
{
    __u32 zero = 0;
    __u32 *countdown = sw_sample_countdown.lookup(&zero);
    if (!countdown)
        return;
    if (*countdown > 1) {
        (*countdown)--;
        return;
    }
    *countdown = cfg->sample_every;
    struct sw_sample *s = sw_samples.ringbuf_reserve(sizeof(struct sw_sample));
    if (!s)
        return;
    s->timestamp_ns = bpf_ktime_get_ns();
    s->tenant_idx = tenant;
    s->direction = dir;
    s->dropped = drop;
    s->reason = reason;
    s->pad = 0;
    s->wire_length = wire_len;
    s->captured = 0;
    if (wire_len >= SW_SAMPLE_BYTES) {
        if (bpf_xdp_load_bytes(ctx, 0, s->data, SW_SAMPLE_BYTES) == 0)
            s->captured = SW_SAMPLE_BYTES;
    } else {
        /* The mask, not the comparison, is what bounds the length for the verifier. */
        __u32 cap = wire_len;
        asm volatile("" : "+r"(cap)); /* keep clang from proving the mask redundant */
        cap &= SW_SAMPLE_BYTES - 1;
        if (cap > 0 && bpf_xdp_load_bytes(ctx, 0, s->data, cap) == 0)
            s->captured = cap;
    }
    sw_samples.ringbuf_submit(s, 0);
}

/* The usual packet on a short path of its own: inbound to a protected tenant whose slot has
 * nothing but the invalid-packet filters to check (SW_POLICY_SLOT_PLAIN: no list, heuristic,
 * rule or budget, not in monitor mode), valid, with no flow gate open (cfg->flags) and not of a
 * spliced connection. sw_plain_stats() asks whether it may take the packet, writing nothing:
 * it returns the tenant's counters, or NULL for the full path. sw_pass_plain() then counts it
 * as the full path counts a passed packet (tenant class, address class), asks the same
 * connection-accounting question, samples and bridges it, and returns the XDP action. The full
 * path's register pressure (it keeps a dozen values alive across its checks) costs the usual
 * packet its spills and far jumps; alone, this one is a straight line. */
static __always_inline struct sw_tenant_stats *sw_plain_stats(struct sw_config *cfg, struct sw_addr_entry *st,
                                                              struct sw_packet *p, __u64 cls)
{
    __u16 flags = st->policy_flags;
    if (!(flags & SW_POLICY_SLOT_PLAIN) || cfg->flags || ((flags & SW_POLICY_INVALID_FILTERS) && p->invalid))
        return 0;
    /* sw_spliced()'s gate: once anything was spliced, the full path looks the flow up. It asks for
     * TCP with its header; every class but UDP can be that (a TCP first fragment is of class
     * FRAGMENT), and the class is at hand where protocol and header state are two loads. */
    if (cls != SW_TRAFFIC_CLASS_UDP) {
        __u32 zero = 0;
        __u64 *gate = sw_splice_gate.lookup(&zero);
        if (!gate || *gate)
            return 0;
    }
    /* A protected slot holds a tenant's index, below SW_MAX_TENANTS: the slot's field is the key. */
    struct sw_tenant_stats *ts = sw_tenant_stats.lookup(&st->tenant_idx);
    if (cls >= SW_CLASSES)
        return 0;
    return ts;
}

static __always_inline int sw_pass_plain(struct xdp_md *ctx, struct sw_config *cfg, struct sw_addr_entry *st,
                                         struct sw_packet *p, struct sw_verdict *v, struct sw_tenant_stats *ts,
                                         __u64 cls, __u32 wire_len, const __u32 dir, const __u32 egress)
{
    SW_STAGE(4); /* policy: the short path's checks */
    struct sw_direction_stats *ds = &ts->dir[dir];
    ds->class_packets[cls]++;
    ds->class_bytes[cls] += wire_len;
    st->counters.packets[cls]++;
    st->counters.bytes[cls] += wire_len;
    SW_STAGE(5); /* counters */
    /* The frame's bounds for sw_flows_wanted()'s look at a short frame's padding. */
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    int flows = cls <= SW_TRAFFIC_CLASS_TCP_OTHER && sw_flows_wanted(p, wire_len, dir, data, data_end);
    if (cfg->sample_every)
        sw_sample(ctx, cfg, st->tenant_idx, dir, 0, SW_DROP_REASON_NONE, wire_len);
    if (flows) {
        v->flows_tenant = st->tenant_idx;
        sw_progs.call(ctx, SW_PROG_FLOWS(dir)); /* accounts, then forwards */
    }
    return sw_ports.redirect_map(egress, XDP_PASS);
}

/* The program of one port: xdp_seawall_inbound runs on the external NIC,
 * xdp_seawall_outbound on the internal one. With the direction a constant, each
 * is compiled for its own work alone (the inbound one filters, the outbound one
 * learns) and neither reads the ingress device (three dependent loads): ~3 ns a
 * packet against one program that tells the NICs apart. */
static __always_inline int sw_port_program(struct xdp_md *ctx, const __u32 dir)
{
    const __u32 egress = dir == SW_DIRECTION_INBOUND ? SW_PORT_INTERNAL : SW_PORT_EXTERNAL;
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    __u32 zero = 0;
    struct sw_config *cfg = sw_config.lookup(&zero);
    if (!cfg)
        return XDP_PASS;

    SW_STAGE(1); /* configuration read */

    struct sw_scratch *scratch = sw_scratch.lookup(&zero);
    if (!scratch)
        return XDP_PASS;
    struct sw_packet *p = &scratch->packet;
    struct sw_verdict *v = &scratch->verdict;
    /* Parsing writes the addresses, lengths, protocol, TTL and class of every
     * IP packet; only the words after the addresses hold fields it sets on
     * some paths alone (ports, offsets, flags, fragment state). */
    *(__u32 *)v = 0;
#ifdef SW_NO_FAST_PARSE
    int parsed_fast = 0; /* a build for the test that compares the two parsers */
#else
    int parsed_fast = sw_parse_fast(p, data, data_end);
#endif
    if (!parsed_fast) {
        __u64 *conditional = (__u64 *)&p->payload_offset;
        conditional[0] = 0;
        conditional[1] = 0;
        conditional[2] = 0;
        if (sw_parse_frame(ctx, p, data, data_end) != SW_PARSE_OK)
            return sw_ports.redirect_map(egress, XDP_PASS); /* ARP, ND over non-IP, LLDP, garbage: bridged */
        p->invalid = sw_invalid_reason(p);
    }

    SW_STAGE(2); /* parsed */
    /* A frame the fast parser took is one buffer: no need to read frame_length back. */
    __u32 wire_len = !parsed_fast && p->frame_length ? p->frame_length : (__u32)(data_end - data);
    struct sw_addr_entry *st = sw_address(dir == SW_DIRECTION_INBOUND ? p->dst : p->src, p->is_v6, cfg);
    if (!st) {
        sw_progs.call(ctx, SW_PROG_REFRESH(dir));
        /* Reached only if the tail call failed (tail-call depth exhausted by
         * a configuration changing under every pass of this packet): bridge it. */
        return sw_ports.redirect_map(egress, XDP_PASS);
    }
    SW_STAGE(3); /* address cache */
#ifndef SW_NO_PLAIN_PASS /* a build for the test that holds the short path to the full one */
    if (dir == SW_DIRECTION_INBOUND) {
        /* A 64-bit copy keeps the class's bound for the verifier, as on the full path. */
        __u64 plain_cls = p->traffic_class;
        asm volatile("" : "+r"(plain_cls));
        struct sw_tenant_stats *plain = sw_plain_stats(cfg, st, p, plain_cls);
        if (plain)
            return sw_pass_plain(ctx, cfg, st, p, v, plain, plain_cls, wire_len, dir, egress);
    }
#endif
    __u32 tenant = st->tenant_idx;
    __u32 stats_idx = tenant < SW_MAX_TENANTS ? tenant : SW_MAX_TENANTS;

    if (dir == SW_DIRECTION_INBOUND && tenant < SW_MAX_TENANTS) {
        __u16 flags = st->policy_flags;
        /* The block list before the splice: a blocked source's spliced connections go too (flows.h). */
        int blocked = (flags & SW_POLICY_SLOT_PROTECTED) ? sw_flows_blocked(p, tenant, cfg) : 0;
        if (blocked) {
            v->reason = blocked;
            v->drop = !(flags & SW_POLICY_SLOT_MONITOR);
            if (!v->drop) /* monitor mode: counted, and on as it would have gone */
                v->splice = sw_spliced(p, v, p->dst, p->src, p->dport, p->sport, dir);
        } else if (sw_spliced(p, v, p->dst, p->src, p->dport, p->sport, dir)) {
            v->splice = 1;
        } else if (flags & SW_POLICY_SLOT_PROTECTED) {
            if (flags & SW_POLICY_SLOT_LISTS_OR_HEURISTICS) {
                if ((flags & SW_POLICY_HAS_ALLOW) && sw_acl_match(p, cfg->active_slot, SW_ACL_KIND_ALLOW, tenant))
                    goto verdict;
                if ((flags & SW_POLICY_HAS_DENY) && sw_acl_match(p, cfg->active_slot, SW_ACL_KIND_DENY, tenant)) {
                    v->drop = 1;
                    v->reason = SW_DROP_REASON_DENY_LIST;
                    goto verdict;
                }
            }
            if (flags & SW_POLICY_INVALID_FILTERS) {
                int reason = p->invalid;
                if (reason) {
                    v->drop = 1;
                    v->reason = reason;
                    goto verdict;
                }
            }
            if ((v->reason = sw_flows_admit(p, tenant, cfg))) { /* per-source limits: flows.h */
                v->drop = 1;
                goto verdict;
            }
            if ((flags & SW_POLICY_SLOT_LISTS_OR_HEURISTICS) && (st->attack_classes || (flags & SW_POLICY_REFLECTION_ALWAYS))) {
                int reason = sw_heuristics(p, st, flags, data, data_end);
                if (reason == SW_SYNAUTH_BYPASS)
                    goto verdict; /* a validated source's SYN: not the flood's shared limits */
                if (reason) {
                    v->drop = 1;
                    v->reason = reason;
                    goto verdict;
                }
            }
            if (st->rule_count)
                sw_apply_rules(st, p, data, data_end, wire_len, v);
            if (!v->drop && (flags & SW_POLICY_HAS_BUDGET) && sw_over_budget(st, cfg, p)) {
                v->drop = 1;
                v->reason = SW_DROP_REASON_HEURISTIC;
            }
        verdict:
            if (flags & SW_POLICY_SLOT_MONITOR)
                v->drop = 0; /* monitor mode: count what would be dropped, pass it */
        }
    }

    if (dir == SW_DIRECTION_OUTBOUND && tenant < SW_MAX_TENANTS) {
        v->splice = sw_spliced(p, v, p->src, p->dst, p->sport, p->dport, dir);
        sw_learn_outbound(p, st, data, data_end);
    }

    SW_STAGE(4); /* policy: lists, filters, rules */
    /* 64-bit copies: clang would otherwise re-read and re-extend the narrow
     * fields after the range checks below, and the verifier lose the bounds. */
    __u64 cls = p->traffic_class, reason = v->reason;
    __u32 drop = v->drop;
    asm volatile("" : "+r"(cls), "+r"(reason));
    struct sw_tenant_stats *ts = sw_tenant_stats.lookup(&stats_idx);
    if (ts && cls < SW_CLASSES && reason < SW_REASONS) {
        struct sw_direction_stats *ds = &ts->dir[dir];
        ds->class_packets[cls]++;
        ds->class_bytes[cls] += wire_len;
        if (reason)
            ds->reason_packets[reason]++;
        if (drop) {
            ds->dropped_packets++;
            ds->dropped_bytes += wire_len;
        }
    }
    if (tenant != SW_NO_TENANT) {
        struct sw_addr_counters *c = &st->counters;
        if (dir == SW_DIRECTION_INBOUND && cls < SW_CLASSES) {
            c->packets[cls]++;
            c->bytes[cls] += wire_len;
            if (drop)
                c->dropped_packets++;
        } else {
            c->outbound_packets++;
            c->outbound_bytes += wire_len;
        }
    }
    SW_STAGE(5); /* counters */
    /* Connection accounting of what the server sees (flows.h): the usual pure ACK is settled here. */
    int flows = !drop && cls <= SW_TRAFFIC_CLASS_TCP_OTHER && tenant < SW_MAX_TENANTS &&
                (st->policy_flags & SW_POLICY_SLOT_PROTECTED) && sw_flows_wanted(p, wire_len, dir, data, data_end);
    if (cfg->sample_every)
        sw_sample(ctx, cfg, tenant, dir, drop, reason, wire_len);

    if (drop) {
        if (dir == SW_DIRECTION_INBOUND && reason == SW_DROP_REASON_SYN_COOKIE) {
            /* Set here, not for every packet: only the SYN authentication program reads it. */
            v->syn_reset = !!(st->policy_flags & SW_POLICY_SYN_RESET);
            sw_progs.call(ctx, SW_PROG_SYNAUTH); /* the bridge answers (synauth.h) */
        }
        if (dir == SW_DIRECTION_INBOUND && reason == SW_DROP_REASON_BLOCKED && cls == SW_TRAFFIC_CLASS_TCP_OTHER)
            sw_progs.call(ctx, SW_PROG_BLOCK_RESET); /* the server lets the connection go (flows.h) */
        return XDP_DROP;
    }
    if (flows) {
        v->flows_tenant = tenant;
        sw_progs.call(ctx, SW_PROG_FLOWS(dir)); /* accounts, then splices or forwards */
    }
    if (v->splice) {
        sw_progs.call(ctx, SW_PROG_SPLICE(dir));
        return XDP_DROP; /* untranslated, it would only confuse both ends */
    }
    return sw_ports.redirect_map(egress, XDP_PASS);
}

int xdp_seawall_inbound(struct xdp_md *ctx)
{
    return sw_port_program(ctx, SW_DIRECTION_INBOUND);
}

int xdp_seawall_outbound(struct xdp_md *ctx)
{
    return sw_port_program(ctx, SW_DIRECTION_OUTBOUND);
}

/* Tail-called on an address cache miss: fills the slot, then runs the port's
 * main program again from the start. */
static __always_inline int sw_refresh_program(struct xdp_md *ctx, const __u32 dir)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    __u32 zero = 0;
    struct sw_config *cfg = sw_config.lookup(&zero);
    if (!cfg)
        return XDP_PASS;
    struct sw_packet p = {};
    if (sw_parse_frame(ctx, &p, data, data_end) != SW_PARSE_OK)
        return XDP_PASS;
    const __u64 *addr = dir == SW_DIRECTION_INBOUND ? p.dst : p.src;
    struct sw_addr_entry *e = sw_addr_cache_slot(sw_addr_slot(addr));
    if (e)
        sw_address_refresh(e, addr, p.is_v6, cfg);
    sw_progs.call(ctx, SW_PROG_MAIN(dir));
    return XDP_PASS; /* the main program is not installed: nothing sensible to do but pass */
}

int xdp_seawall_refresh_inbound(struct xdp_md *ctx)
{
    return sw_refresh_program(ctx, SW_DIRECTION_INBOUND);
}

int xdp_seawall_refresh_outbound(struct xdp_md *ctx)
{
    return sw_refresh_program(ctx, SW_DIRECTION_OUTBOUND);
}

int xdp_seawall_synauth(struct xdp_md *ctx)
{
    return sw_synauth_program(ctx);
}

int xdp_seawall_splice_inbound(struct xdp_md *ctx)
{
    return sw_splice_program(ctx, SW_DIRECTION_INBOUND);
}

int xdp_seawall_splice_outbound(struct xdp_md *ctx)
{
    return sw_splice_program(ctx, SW_DIRECTION_OUTBOUND);
}

/* SW_PROG_FLOWS(dir): connection accounting of a segment the port program passed (flows.h), then
 * what the port program would have done: the splice translation or the redirect. */
static __always_inline int sw_flows_program(struct xdp_md *ctx, const __u32 dir)
{
    struct sw_scratch *scratch = sw_scratch_of();
    if (!scratch)
        return XDP_DROP;
    sw_flow_count(SW_FLOW_STAT_ACCOUNTING_CALLS);
    sw_flows_track(ctx, &scratch->packet, scratch->verdict.flows_tenant, dir);
    if (scratch->verdict.splice) {
        sw_progs.call(ctx, SW_PROG_SPLICE(dir));
        return XDP_DROP;
    }
    return sw_ports.redirect_map(dir == SW_DIRECTION_INBOUND ? SW_PORT_INTERNAL : SW_PORT_EXTERNAL, XDP_PASS);
}

int xdp_seawall_flows_inbound(struct xdp_md *ctx)
{
    return sw_flows_program(ctx, SW_DIRECTION_INBOUND);
}

int xdp_seawall_flows_outbound(struct xdp_md *ctx)
{
    return sw_flows_program(ctx, SW_DIRECTION_OUTBOUND);
}

/* SW_PROG_BLOCK_RESET: a TCP segment (not a SYN) of a blocked source that the inbound program
 * dropped (reason SW_DROP_REASON_BLOCKED, counted there) goes on to the server as a reset of its
 * connection (flows.h, sw_flows_block_reset), or is dropped. */
int xdp_seawall_block_reset(struct xdp_md *ctx)
{
    struct sw_scratch *scratch = sw_scratch_of();
    if (!scratch)
        return XDP_DROP;
    return sw_flows_block_reset(ctx, &scratch->packet);
}

/* Not a port's program: user space runs it (BPF_PROG_TEST_RUN) on a frame it built for a connection a
 * source held when it was blocked; the frame comes back as the reset to send the server (XDP_TX) or is
 * not to be sent (XDP_DROP). flows.h, sw_flows_reset_held. */
int xdp_seawall_reset_held(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct sw_packet p = {};
    if (sw_parse_frame(ctx, &p, data, data_end) != SW_PARSE_OK)
        return XDP_DROP;
    return sw_flows_reset_held(ctx, &p);
}
