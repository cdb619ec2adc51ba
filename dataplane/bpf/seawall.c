/* Seawall XDP program: a transparent L2 bridge between two NICs that filters
 * inbound traffic per tenant prefix.
 *
 * Every frame entering one NIC leaves the other untouched (XDP_REDIRECT through
 * a devmap) unless the filter drops it. Inbound IP traffic is matched to its
 * tenant by destination address and checked, in order, against the tenant's
 * allow list, deny list, invalid-packet filters and the dynamic rules of the
 * policy engine. Per-packet work is a fixed number of map lookups: the
 * per-address LRU caches the tenant and rule sets, so the common case never
 * walks a trie; caches refresh when sw_config.generation changes.
 *
 * All runtime data lives in maps; limits and enumerations arrive as -D flags
 * from dataplane/constants.py; layouts are in seawall.h.
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_vlan.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>

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
/* Allow and deny lists, per slot, kind and tenant, longest source-prefix match. */
SW_MAP("lpm_trie", struct sw_acl4_key, struct sw_acl_value, sw_acl4, SW_MAX_ACL_PREFIXES * SW_TENANT_SET_SLOTS, SW_NO_PREALLOC);
SW_MAP("lpm_trie", struct sw_acl6_key, struct sw_acl_value, sw_acl6, SW_MAX_ACL_PREFIXES * SW_TENANT_SET_SLOTS, SW_NO_PREALLOC);
/* Per customer-side address: cached lookups and per-class counters, per CPU. */
SW_MAP("lru_percpu_hash", struct sw_addr_key, struct sw_addr_state, sw_addr, SW_MAX_ADDRESSES, 0);
/* Per-tenant counters per CPU; the last entry counts traffic to no tenant. */
SW_MAP("percpu_array", __u32, struct sw_tenant_stats, sw_tenant_stats, SW_MAX_TENANTS + 1, 0);
/* Dynamic rules: (tenant, scope, address) -> rule set -> rules. */
SW_MAP("hash", struct sw_rule_set_key, __u32, sw_rule_set_index, SW_MAX_RULES, 0);
SW_MAP("array", __u32, struct sw_rule_set, sw_rule_sets, SW_MAX_RULES, 0);
SW_MAP("array", __u32, struct sw_rule, sw_rules, SW_MAX_RULES, 0);
SW_MAP("percpu_array", __u32, struct sw_rule_stats, sw_rule_stats, SW_MAX_RULES, 0);
SW_MAP("array", __u32, struct sw_rule_bucket, sw_rule_buckets, SW_MAX_RULES, 0);
/* Countdown to the next sampled packet, per CPU (1 entry). */
BPF_PERCPU_ARRAY(sw_sample_countdown, __u32, 1);
/* Sampled packets for the policy engine (SW_RINGBUF_PAGES pages of 4 KiB). */
BPF_RINGBUF_OUTPUT(sw_samples, SW_RINGBUF_PAGES);

struct sw_verdict {
    __u8 drop;
    __u8 reason;
};

static __always_inline __u32 sw_lookup_tenant(struct sw_packet *p, const __u8 *addr, __u32 slot)
{
    struct sw_tenant_ref *ref;
    if (p->is_v6) {
        struct sw_prefix6_key k6 = {.prefixlen = 32 + 128, .slot = slot};
        __builtin_memcpy(k6.addr, addr, 16);
        ref = sw_prefix6.lookup(&k6);
    } else {
        struct sw_prefix4_key k4 = {.prefixlen = 32 + 32, .slot = slot};
        __builtin_memcpy(k4.addr, addr + 12, 4);
        ref = sw_prefix4.lookup(&k4);
    }
    return ref ? ref->tenant_idx : SW_NO_TENANT;
}

static __always_inline __u32 sw_lookup_rule_set(__u32 tenant_idx, __u32 scope, const __u8 *addr)
{
    struct sw_rule_set_key key = {.tenant_idx = tenant_idx, .scope = scope};
    if (scope == SW_SCOPE_ADDRESS)
        __builtin_memcpy(key.addr, addr, 16);
    __u32 *set = sw_rule_set_index.lookup(&key);
    return set ? *set : SW_NO_RULE_SET;
}

/* The state of a customer-side address, refreshed when the configuration
 * generation moved on. NULL when no tenant owns the address and it was never
 * cached: such traffic is not tracked per address. */
static __always_inline struct sw_addr_state *sw_address(struct sw_packet *p, const __u8 *addr,
                                                        struct sw_config *cfg)
{
    struct sw_addr_key key;
    __builtin_memcpy(key.addr, addr, 16);
    struct sw_addr_state *st = sw_addr.lookup(&key);
    if (st && st->generation == cfg->generation)
        return st;
    __u32 tenant = sw_lookup_tenant(p, addr, cfg->active_slot);
    __u32 address_set = SW_NO_RULE_SET, tenant_set = SW_NO_RULE_SET;
    if (tenant != SW_NO_TENANT) {
        address_set = sw_lookup_rule_set(tenant, SW_SCOPE_ADDRESS, addr);
        tenant_set = sw_lookup_rule_set(tenant, SW_SCOPE_TENANT, addr);
    }
    if (st) {
        st->tenant_idx = tenant;
        st->address_rule_set = address_set;
        st->tenant_rule_set = tenant_set;
        st->generation = cfg->generation;
        return st;
    }
    if (tenant == SW_NO_TENANT)
        return 0;
    struct sw_addr_state fresh = {};
    fresh.tenant_idx = tenant;
    fresh.generation = cfg->generation;
    fresh.address_rule_set = address_set;
    fresh.tenant_rule_set = tenant_set;
    sw_addr.update(&key, &fresh);
    return sw_addr.lookup(&key);
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
    if (p->is_v6) {
        struct sw_acl6_key k6 = {.prefixlen = 96 + 128, .slot = slot, .kind = kind, .tenant_idx = tenant};
        __builtin_memcpy(k6.src, p->src, 16);
        v = sw_acl6.lookup(&k6);
    } else {
        struct sw_acl4_key k4 = {.prefixlen = 96 + 32, .slot = slot, .kind = kind, .tenant_idx = tenant};
        __builtin_memcpy(k4.src, p->src + 12, 4);
        v = sw_acl4.lookup(&k4);
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

static __always_inline int sw_invalid_reason(struct sw_packet *p)
{
    if (p->invalid)
        return p->invalid;
    __u64 s0, s1, d0, d1;
    __builtin_memcpy(&s0, p->src, 8);
    __builtin_memcpy(&s1, p->src + 8, 8);
    __builtin_memcpy(&d0, p->dst, 8);
    __builtin_memcpy(&d1, p->dst + 8, 8);
    if (s0 == d0 && s1 == d1)
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

/* Token bucket of a rate-limit rule: 1 when the packet is within the rate. */
static __always_inline int sw_rule_admit(__u32 id, struct sw_rule *r)
{
    struct sw_rule_bucket *b = sw_rule_buckets.lookup(&id);
    if (!b)
        return 1;
    __u64 now = bpf_ktime_get_ns();
    __u64 elapsed = now - b->last_ns;
    __s64 burst = r->rate_pps / 10 + 1; /* 100 ms worth of packets */
    if (elapsed > NSEC_PER_SEC / 1000) { /* refill at most every 1 ms: fewer writes to a shared line */
        __s64 tokens = b->tokens + (__s64)(elapsed * r->rate_pps / NSEC_PER_SEC);
        b->tokens = tokens > burst ? burst : tokens;
        b->last_ns = now;
    }
    if (b->tokens <= 0)
        return 0;
    __sync_fetch_and_add(&b->tokens, -1);
    return 1;
}

/* Walks one rule set; returns 1 when a rule decided (verdict filled in). */
static __always_inline int sw_apply_rule_set(__u32 set_id, struct sw_packet *p, void *data, void *data_end,
                                             __u32 wire_len, struct sw_verdict *v)
{
    if (set_id == SW_NO_RULE_SET)
        return 0;
    struct sw_rule_set *set = sw_rule_sets.lookup(&set_id);
    if (!set)
        return 0;
#pragma unroll
    for (int i = 0; i < SW_RULES_PER_TARGET; i++) {
        if (i >= set->count)
            break;
        __u32 id = set->rule_ids[i];
        struct sw_rule *r = sw_rules.lookup(&id);
        if (!r || !r->in_use || !sw_rule_matches(r, p, data, data_end))
            continue;
        struct sw_rule_stats *rs = sw_rule_stats.lookup(&id);
        if (rs) {
            rs->matched_packets++;
            rs->matched_bytes += wire_len;
        }
        if (r->action == SW_RULE_ACTION_COUNT)
            continue;
        if (r->action == SW_RULE_ACTION_RATE_LIMIT && sw_rule_admit(id, r))
            return 1; /* within the rate: pass, no further rules */
        if (rs)
            rs->dropped_packets++;
        v->drop = 1;
        v->reason = r->action == SW_RULE_ACTION_RATE_LIMIT ? SW_DROP_REASON_RATE_LIMIT : SW_DROP_REASON_RULE;
        return 1;
    }
    return 0;
}

static __always_inline void sw_sample(struct xdp_md *ctx, struct sw_config *cfg, __u32 tenant, __u32 dir,
                                      struct sw_verdict *v, __u32 wire_len)
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
    s->dropped = v->drop;
    s->reason = v->reason;
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

int xdp_seawall(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    __u32 zero = 0;
    struct sw_config *cfg = sw_config.lookup(&zero);
    if (!cfg)
        return XDP_PASS;

    __u32 dir, egress;
    if (ctx->ingress_ifindex == cfg->external_ifindex) {
        dir = SW_DIRECTION_INBOUND;
        egress = SW_PORT_INTERNAL;
    } else if (ctx->ingress_ifindex == cfg->internal_ifindex) {
        dir = SW_DIRECTION_OUTBOUND;
        egress = SW_PORT_EXTERNAL;
    } else {
        return XDP_PASS; /* not one of our two ports */
    }

    struct sw_packet p = {};
    if (sw_parse_frame(&p, data, data_end) != SW_PARSE_OK)
        return sw_ports.redirect_map(egress, XDP_PASS); /* ARP, ND over non-IP, LLDP, garbage: bridged */

    __u32 wire_len = data_end - data;
    struct sw_verdict v = {};
    struct sw_addr_state *st = sw_address(&p, dir == SW_DIRECTION_INBOUND ? p.dst : p.src, cfg);
    __u32 tenant = st ? st->tenant_idx : SW_NO_TENANT;
    __u32 stats_idx = tenant < SW_MAX_TENANTS ? tenant : SW_MAX_TENANTS;

    if (dir == SW_DIRECTION_INBOUND && tenant < SW_MAX_TENANTS) {
        __u32 policy_idx = cfg->active_slot * SW_MAX_TENANTS + tenant;
        struct sw_policy *pol = sw_policy.lookup(&policy_idx);
        if (pol && pol->in_use) {
            __u16 flags = pol->flags;
            if ((flags & SW_POLICY_HAS_ALLOW) && sw_acl_match(&p, cfg->active_slot, SW_ACL_KIND_ALLOW, tenant))
                goto verdict;
            if ((flags & SW_POLICY_HAS_DENY) && sw_acl_match(&p, cfg->active_slot, SW_ACL_KIND_DENY, tenant)) {
                v.drop = 1;
                v.reason = SW_DROP_REASON_DENY_LIST;
                goto verdict;
            }
            if (flags & SW_POLICY_INVALID_FILTERS) {
                int reason = sw_invalid_reason(&p);
                if (reason) {
                    v.drop = 1;
                    v.reason = reason;
                    goto verdict;
                }
            }
            if (!sw_apply_rule_set(st->address_rule_set, &p, data, data_end, wire_len, &v))
                sw_apply_rule_set(st->tenant_rule_set, &p, data, data_end, wire_len, &v);
        verdict:
            if (v.drop && pol->mode == SW_TENANT_MODE_MONITOR)
                v.drop = 0; /* monitor mode: count what would be dropped, pass it */
        }
    }

    /* Indices live in registers the verifier can bound: clang would otherwise
     * re-read the u8 fields after the range checks. */
    __u64 cls = p.traffic_class, reason = v.reason, d = dir;
    asm volatile("" : "+r"(cls), "+r"(reason), "+r"(d));
    struct sw_tenant_stats *ts = sw_tenant_stats.lookup(&stats_idx);
    if (ts && d < SW_DIRS && cls < SW_CLASSES && reason < SW_REASONS) {
        struct sw_direction_stats *ds = &ts->dir[d];
        ds->class_packets[cls]++;
        ds->class_bytes[cls] += wire_len;
        if (reason)
            ds->reason_packets[reason]++;
        if (v.drop) {
            ds->dropped_packets++;
            ds->dropped_bytes += wire_len;
        } else {
            ds->passed_packets++;
            ds->passed_bytes += wire_len;
        }
    }
    if (st) {
        if (dir == SW_DIRECTION_INBOUND && cls < SW_CLASSES) {
            st->packets[cls]++;
            st->bytes[cls] += wire_len;
            if (v.drop)
                st->dropped_packets++;
        } else {
            st->outbound_packets++;
            st->outbound_bytes += wire_len;
        }
    }
    if (cfg->sample_every)
        sw_sample(ctx, cfg, tenant, dir, &v, wire_len);

    if (v.drop)
        return XDP_DROP;
    return sw_ports.redirect_map(egress, XDP_PASS);
}
