"""The maps the control plane writes: configuration, tenant sets, heuristics and budgets, rules.

Every write goes through bcc's `table.Key` / `table.Leaf` of the loaded program, never
through a hand-written layout; every flag and number comes from `dataplane.constants`.
"""

from __future__ import annotations

import ctypes
import heapq
import os
import time
from collections.abc import Iterable

import numpy as np
import structlog

from dataplane import bpfsys, constants
from dataplane.api import DataplaneError, IPAddress, Range, Rule, RuleCounters
from dataplane.constants import (
    BUDGET_CLASSES,
    BUDGET_FIELDS,
    MAX_ACL_PREFIXES,
    MAX_RULES,
    MAX_TENANTS,
    PAYLOAD_MATCH_BYTES,
    RATE_PPS_MAX,
    RULES_PER_TARGET,
    TENANT_SET_SLOTS,
    AclKind,
    PolicyFlag,
    ReflectionFilter,
    RuleAction,
    RuleMatch,
    Scope,
    TrafficClass,
)
from dataplane.keys import address_from_key_bytes, key_bytes
from dataplane.reader import MapRef, read_all

log = structlog.get_logger("seawall.dataplane")

# The policy flags of each reflection filter mode.
_REFLECTION_FLAGS = {ReflectionFilter.OFF: PolicyFlag(0), ReflectionFilter.AUTO: PolicyFlag.REFLECTION_AUTO,
                     ReflectionFilter.ALWAYS: PolicyFlag.REFLECTION_ALWAYS}


def sw_acl_index(slot: int, kind: AclKind, tenant_idx: int) -> int:
    """Where the allow (or deny) trie of a tenant in a tenant-set slot sits in sw_acl4_tries / sw_acl6_tries
    (the same formula as sw_acl_match() in seawall.c)."""
    return (slot * 2 + int(kind)) * MAX_TENANTS + tenant_idx


class Tables:
    """The maps the control plane writes: the configuration (sw_config), tenant sets (prefix
    tries, policies, ACL tries in a double-buffered slot), heuristics (attack marks, the
    reflection ports, per-destination class budgets) and dynamic rules (encode, index, recover
    after a restart). `maps` are the loaded program's maps by name (`dataplane.loader.Program`)."""

    def __init__(self, maps: dict, policy_ref: MapRef, pinned: bool) -> None:
        self.maps = maps
        self._policy_ref = policy_ref
        self._rules: dict[int, Rule] = {}
        # Rule ids not in use, lowest first (a heap; None: to be made from `_rules`): finding the lowest
        # free id by scanning all MAX_RULES made each add slower as the table filled (a wide attack adds
        # thousands in one tick).
        self._free_rule_ids: list[int] | None = None
        self._next_set_id = 0
        self._acl_indices: dict[int, set[int]] = {4: set(), 6: set()}   # filled entries of sw_acl4_tries / sw_acl6_tries
        # Slots whose tries an earlier run may have left in pinned arrays (a fresh program's are empty).
        self._acl_slots_unscanned = set(range(TENANT_SET_SLOTS)) if pinned else set()

    # -- configuration -----------------------------------------------------

    def config(self):
        table = self.maps["sw_config"]
        return table[table.Key(0)]

    def write_config(self, cfg) -> None:
        table = self.maps["sw_config"]
        table[table.Key(0)] = cfg

    def bump_generation(self) -> None:
        cfg = self.config()
        cfg.generation = (cfg.generation + 1) & 0xFFFFFFFF or 1
        self.write_config(cfg)

    def set_sample_every(self, every: int) -> None:
        cfg = self.config()
        cfg.sample_every = max(0, int(every))
        self.write_config(cfg)

    def apply_tenants(self, tables, reset_stats: Iterable[int] = ()) -> int:
        """Load a compiled tenant set (tenants.compile.CompiledTables) atomically.

        The set is written into the inactive slot, then one write of sw_config
        flips the active slot and bumps the generation: every packet sees either
        the old set or the new one, never a mixture. The old slot is cleared at
        the next apply. `reset_stats`: tenant indices newly (re)assigned, whose
        counters start from zero. Returns how many tenant stats rows the set uses.
        """
        cfg = self.config()
        target = 1 - cfg.active_slot
        self._clear_slot(target)
        p4, p6 = self.maps["sw_prefix4"], self.maps["sw_prefix6"]
        try:
            for network, idx in tables.prefixes:
                trie = p4 if network.version == 4 else p6
                key = trie.Key()
                key.prefixlen = 32 + network.prefixlen
                key.slot = target
                _fill(key.addr, network.network_address.packed)
                trie[key] = trie.Leaf(idx)
            policy_map = self.maps["sw_policy"]
            for idx, pol in tables.policies.items():
                leaf = policy_map.Leaf()
                leaf.in_use = 1
                leaf.mode = int(pol.mode)
                flags = PolicyFlag(0)
                if pol.invalid_filters:
                    flags |= PolicyFlag.INVALID_FILTERS
                if pol.has_allow:
                    flags |= PolicyFlag.HAS_ALLOW
                if pol.has_deny:
                    flags |= PolicyFlag.HAS_DENY
                if pol.syn_protection:
                    flags |= PolicyFlag.SYN_PROTECTION
                if pol.syn_reset:
                    flags |= PolicyFlag.SYN_RESET
                flags |= _REFLECTION_FLAGS[ReflectionFilter(pol.reflection)]
                rates = [int(getattr(pol, field)) for field in BUDGET_FIELDS.values()]
                if any(rates):
                    flags |= PolicyFlag.HAS_BUDGET
                leaf.flags = int(flags)
                for slot, pps in enumerate(rates):
                    leaf.rate_pps[slot] = pps
                policy_map[policy_map.Key(target * MAX_TENANTS + idx)] = leaf
            self._load_acls(target, tables.acl)
        except Exception as exc:
            self._clear_slot(target)  # the running set stays untouched
            raise DataplaneError(f"cannot load the tenant set into the dataplane: {exc}") from exc
        stats = self.maps["sw_tenant_stats"]
        for idx in reset_stats:
            stats[stats.Key(idx)] = stats.Leaf()
        cfg.active_slot = target
        cfg.generation = (cfg.generation + 1) & 0xFFFFFFFF or 1
        self.write_config(cfg)
        log.info("dataplane.tenants_applied", slot=target, tenants=len(tables.policies),
                 prefixes=len(tables.prefixes), acl_keys=len(tables.acl))
        return max(tables.policies, default=-1) + 1

    def _load_acls(self, slot: int, acls) -> None:
        """One trie of source prefixes per (kind, tenant) and family, created here and put into
        the family's array of maps at sw_acl_index(); the array keeps it alive once our fd closes."""
        groups: dict[tuple[int, int], list] = {}
        for acl in acls:
            groups.setdefault((acl.src.version, sw_acl_index(slot, acl.kind, acl.tenant_idx)), []).append(acl)
        for (version, index), members in groups.items():
            template = self.maps["sw_acl4_template" if version == 4 else "sw_acl6_template"]
            fd = bpfsys.map_create(bpfsys.BPF_MAP_TYPE_LPM_TRIE, ctypes.sizeof(template.Key),
                                   ctypes.sizeof(template.Leaf), MAX_ACL_PREFIXES, bpfsys.BPF_F_NO_PREALLOC,
                                   name=f"sw_acl{version}_{index}")
            try:
                for acl in members:
                    key = template.Key()
                    key.prefixlen = acl.src.prefixlen
                    _fill(key.src, acl.src.network_address.packed)
                    leaf = template.Leaf()
                    leaf.count = len(acl.entries)
                    for i, (proto, slo, shi, dlo, dhi) in enumerate(acl.entries):
                        e = leaf.entries[i]
                        e.proto, e.sport_lo, e.sport_hi, e.dport_lo, e.dport_hi = proto, slo, shi, dlo, dhi
                    bpfsys.map_update(fd, bytes(key), bytes(leaf))
                outer = self.maps["sw_acl4_tries" if version == 4 else "sw_acl6_tries"]
                bpfsys.map_update(outer.map_fd, bytes(ctypes.c_uint32(index)), bytes(ctypes.c_uint32(fd)))
                self._acl_indices[version].add(index)
            finally:
                os.close(fd)

    def _clear_acls(self, slot: int) -> None:
        lo, hi = sw_acl_index(slot, AclKind.ALLOW, 0), sw_acl_index(slot, AclKind.DENY, MAX_TENANTS - 1) + 1
        for version in (4, 6):
            outer = self.maps[f"sw_acl{version}_tries"]
            known = self._acl_indices[version]
            if slot in self._acl_slots_unscanned:
                # After a restart the arrays may hold tries of an earlier run: find them once.
                known |= {i for i in range(lo, hi) if bpfsys.map_lookup(outer.map_fd, bytes(ctypes.c_uint32(i)), 4)}
            for index in [i for i in known if lo <= i < hi]:
                bpfsys.map_delete(outer.map_fd, bytes(ctypes.c_uint32(index)))
                known.discard(index)
        self._acl_slots_unscanned.discard(slot)

    def _clear_slot(self, slot: int) -> None:
        for name in ("sw_prefix4", "sw_prefix6"):
            trie = self.maps[name]
            stale = [k for k in trie if k.slot == slot]
            for k in stale:
                del trie[k]
        self._clear_acls(slot)
        policy_map = self.maps["sw_policy"]
        base = slot * MAX_TENANTS
        _, values, _ = read_all(self._policy_ref)
        in_use = values[:, 0]
        for i in np.nonzero(in_use[base:base + MAX_TENANTS])[0]:
            policy_map[policy_map.Key(base + int(i))] = policy_map.Leaf()

    @property
    def active_slot(self) -> int:
        return int(self.config().active_slot)

    @property
    def generation(self) -> int:
        return int(self.config().generation)

    def fill_reflection_ports(self) -> None:
        words = [0] * 2048
        for port in constants.REFLECTION_PORTS:
            words[port >> 5] |= 1 << (port & 31)
        table = self.maps["sw_reflection_ports"]
        for i, word in enumerate(words):
            if word:
                table[table.Key(i)] = table.Leaf(word)

    def set_under_attack(self, tenant_idx: int, dst: IPAddress | None, classes: Iterable[TrafficClass],
                         syn_ports: Range | None = None) -> None:
        """Mark a destination (or a whole tenant, dst None) as under attack in these classes.

        It switches on the stateful heuristics there at once: SYN authentication
        (cookie SYN-ACKs from the bridge, validated sources; bpf/synauth.h) for TCP_SYN
        (on `syn_ports` only, default every port),
        connection tracking for TCP_OTHER (ACK/RST/FIN floods: after a grace
        period that learns the server's connections, only those pass), the
        reflection filter (policy "auto") for UDP and FRAGMENT. An empty
        `classes` clears the mark.
        """
        table = self.maps["sw_attack"]
        key = table.Key()
        key.tenant_idx = tenant_idx
        if dst is None:
            key.scope = Scope.TENANT
        else:
            key.scope = Scope.ADDRESS
            _fill(key.addr, key_bytes(dst))
        bits = 0
        for c in classes:
            bits |= 1 << int(c)
        if bits:
            current = table.get(key)
            leaf = table.Leaf()
            leaf.classes = bits
            # The mark's age drives grace periods: a refreshed mark keeps its start.
            leaf.since_ns = current.since_ns if current is not None else time.monotonic_ns()
            leaf.syn_port_lo, leaf.syn_port_hi = (syn_ports.lo, syn_ports.hi) if syn_ports else (0, 0xFFFF)
            table[key] = leaf
        else:
            try:
                del table[key]
            except KeyError:
                pass
        self.bump_generation()

    def set_class_budgets(self, tenant_idx: int, budgets: dict[TrafficClass, int]) -> dict[TrafficClass, int]:
        """Set per-destination class budgets (packets/s, 0 = none) of one tenant of the active set, in place.

        Only the budget fields named in `budgets` (TCP_SYN, UDP, ICMP, FRAGMENT) change; the rest of
        the tenant's policy leaf, the other tenants and the inactive slot stay as they are, and no
        flip happens: the program reads the leaf per packet, so the new budget counts from the next
        packet (each destination's bucket keeps its tokens, capped at the new burst). The next
        `apply_tenants` writes the leaf anew from the compiled policy: whoever derives budgets must
        push them again after it (the policy engine does, in `set_tenants`). A tenant in monitor
        mode counts packets over budget (reason HEURISTIC) and passes them, as for its other drops.
        Returns the four budgets now in the leaf. DataplaneError: the tenant is not in the active set.
        """
        if isinstance(tenant_idx, bool) or not isinstance(tenant_idx, int) or not 0 <= tenant_idx < MAX_TENANTS:
            raise DataplaneError(f"tenant index {tenant_idx!r} is not within 0..{MAX_TENANTS - 1}")
        values: dict[int, int] = {}   # budget slot -> packets/s
        for cls, pps in budgets.items():
            cls = TrafficClass(cls)
            if cls not in BUDGET_CLASSES:
                raise DataplaneError(f"traffic class {cls.name} has no per-destination budget "
                                     f"(only {', '.join(c.name for c in BUDGET_CLASSES)})")
            if isinstance(pps, bool) or not isinstance(pps, int) or not 0 <= pps <= RATE_PPS_MAX:
                raise DataplaneError(f"budget of {cls.name}: {pps!r} is not 0..{RATE_PPS_MAX} packets/s")
            values[BUDGET_CLASSES.index(cls)] = pps
        table = self.maps["sw_policy"]
        key = table.Key(self.config().active_slot * MAX_TENANTS + tenant_idx)
        leaf = table[key]
        if not leaf.in_use:
            raise DataplaneError(f"tenant index {tenant_idx} is not in the active tenant set")
        for slot, pps in values.items():
            leaf.rate_pps[slot] = pps
        now = {cls: int(leaf.rate_pps[slot]) for slot, cls in enumerate(BUDGET_CLASSES)}
        flags_before = int(leaf.flags)
        if any(now.values()):
            leaf.flags |= int(PolicyFlag.HAS_BUDGET)
        else:
            leaf.flags &= ~int(PolicyFlag.HAS_BUDGET) & 0xFFFF
        table[key] = leaf
        if leaf.flags != flags_before:
            self.bump_generation()   # address cache slots hold a copy of the policy flags
        return now

    def add_rule(self, rule: Rule) -> int:
        """Install a rule; returns its id. DataplaneError when the target is full."""
        if self._free_rule_ids is None:
            self._free_rule_ids = sorted(set(range(MAX_RULES)) - self._rules.keys())   # sorted: a heap
        if not self._free_rule_ids:
            raise DataplaneError(f"all {MAX_RULES} rule slots are in use")
        free = self._free_rule_ids[0]          # taken off the heap once the rule is in
        rules = self.maps["sw_rules"]
        rules[rules.Key(free)] = self.encode_rule(rule)
        stats = self.maps["sw_rule_stats"]
        stats[stats.Key(free)] = stats.Leaf()
        buckets = self.maps["sw_rule_buckets"]
        bucket = buckets.Leaf()
        bucket.last_ns = time.monotonic_ns()
        bucket.tokens = rule.rate_pps // 10 + 1
        buckets[buckets.Key(free)] = bucket
        key = self._set_key(rule)
        current = self._rule_set_ids(key)
        if len(current) >= RULES_PER_TARGET:
            rules[rules.Key(free)] = rules.Leaf()
            raise DataplaneError(f"{rule.dst or 'tenant ' + str(rule.tenant_idx)} already has "
                                 f"{RULES_PER_TARGET} rules")
        heapq.heappop(self._free_rule_ids)
        self._rules[free] = rule
        self._write_rule_set(key, [*current, free])
        return free

    def remove_rule(self, rule_id: int) -> None:
        rule = self._rules.pop(rule_id, None)
        if rule is None:
            raise KeyError(f"no rule {rule_id}")
        if self._free_rule_ids is not None:
            heapq.heappush(self._free_rule_ids, rule_id)
        key = self._set_key(rule)
        self._write_rule_set(key, [i for i in self._rule_set_ids(key) if i != rule_id])
        rules = self.maps["sw_rules"]
        rules[rules.Key(rule_id)] = rules.Leaf()

    def installed_rules(self) -> dict[int, Rule]:
        return dict(self._rules)

    def read_rule_counters(self) -> dict[int, RuleCounters]:
        if not self._rules:
            return {}
        stats = self.maps["sw_rule_stats"]
        out = {}
        for rid in self._rules:
            per_cpu = stats[stats.Key(rid)]
            out[rid] = RuleCounters(matched_packets=sum(v.matched_packets for v in per_cpu),
                                    matched_bytes=sum(v.matched_bytes for v in per_cpu),
                                    dropped_packets=sum(v.dropped_packets for v in per_cpu))
        return out

    def _set_key(self, rule: Rule):
        index = self.maps["sw_rule_set_index"]
        key = index.Key()
        key.tenant_idx = rule.tenant_idx
        if rule.dst is None:
            key.scope = Scope.TENANT
        else:
            key.scope = Scope.ADDRESS
            _fill(key.addr, key_bytes(rule.dst))
        return key

    def _rule_set_ids(self, key) -> list[int]:
        index = self.maps["sw_rule_set_index"]
        set_id = index.get(key)
        if set_id is None:
            return []
        rule_set = self.maps["sw_rule_sets"][ctypes.c_uint32(set_id.value)]
        return [int(rule_set.rule_ids[i]) for i in range(rule_set.count)]

    def _write_rule_set(self, key, ids: list[int]) -> None:
        """Publish a rule list as a fresh set, then repoint the index: readers never see a torn set."""
        index = self.maps["sw_rule_set_index"]
        sets = self.maps["sw_rule_sets"]
        if ids:
            set_id = self._next_set_id
            self._next_set_id = (self._next_set_id + 1) % MAX_RULES  # round robin: a freed set rests long
            leaf = sets.Leaf()
            leaf.count = len(ids)
            for i, rid in enumerate(ids):
                leaf.rule_ids[i] = rid
            sets[sets.Key(set_id)] = leaf
            index[key] = index.Leaf(set_id)
        else:
            try:
                del index[key]
            except KeyError:
                pass
        self.bump_generation()

    def encode_rule(self, rule: Rule):
        rules = self.maps["sw_rules"]
        r = rules.Leaf()
        r.in_use = 1
        r.action = int(rule.action)
        match = RuleMatch(0)
        if rule.proto is not None:
            match |= RuleMatch.PROTO
            r.proto = rule.proto
        if rule.sport is not None:
            match |= RuleMatch.SPORT
            r.sport_lo, r.sport_hi = rule.sport.lo, rule.sport.hi
        if rule.dport is not None:
            match |= RuleMatch.DPORT
            r.dport_lo, r.dport_hi = rule.dport.lo, rule.dport.hi
        if rule.length is not None:
            match |= RuleMatch.LENGTH
            r.length_lo, r.length_hi = rule.length.lo, min(rule.length.hi, 0xFFFF)
        if rule.ttl is not None:
            match |= RuleMatch.TTL
            r.ttl_lo, r.ttl_hi = rule.ttl.lo, min(rule.ttl.hi, 255)
        if rule.tcp_flags is not None:
            match |= RuleMatch.TCP_FLAGS
            r.tcp_flags_mask, r.tcp_flags_value = rule.tcp_flags[0], rule.tcp_flags[0] & rule.tcp_flags[1]
        if rule.payload:
            if len(rule.payload) > PAYLOAD_MATCH_BYTES:
                raise DataplaneError(f"payload match is limited to {PAYLOAD_MATCH_BYTES} bytes")
            mask = rule.payload_mask or b"\xff" * len(rule.payload)
            if len(mask) != len(rule.payload):
                raise DataplaneError("payload_mask must be as long as payload")
            match |= RuleMatch.PAYLOAD
            padded_mask = mask.ljust(PAYLOAD_MATCH_BYTES, b"\0")
            padded = bytes(a & b for a, b in zip(rule.payload.ljust(PAYLOAD_MATCH_BYTES, b"\0"), padded_mask,
                                                 strict=True))
            _fill(r.payload, padded)
            _fill(r.payload_mask, padded_mask)
        if rule.fragments is True:
            match |= RuleMatch.FRAGMENT
        elif rule.fragments is False:
            match |= RuleMatch.NOT_FRAGMENT
        r.match = int(match)
        r.rate_pps = rule.rate_pps
        return r

    def recover_rules(self) -> None:
        """Rebuild the rule list from pinned maps after a restart."""
        index = self.maps["sw_rule_set_index"]
        sets = self.maps["sw_rule_sets"]
        rules = self.maps["sw_rules"]
        max_set = -1
        for key, set_id in index.items():
            max_set = max(max_set, set_id.value)
            rule_set = sets[ctypes.c_uint32(set_id.value)]
            dst = None if key.scope == Scope.TENANT else address_from_key_bytes(bytes(key.addr))
            for i in range(rule_set.count):
                rid = int(rule_set.rule_ids[i])
                self._rules[rid] = _decode_rule(rules[ctypes.c_uint32(rid)], key.tenant_idx, dst)
        self._next_set_id = (max_set + 1) % MAX_RULES
        self._free_rule_ids = None
        if self._rules:
            log.info("dataplane.rules_recovered", rules=len(self._rules))


def _decode_rule(r, tenant_idx: int, dst: IPAddress | None) -> Rule:
    m = r.match
    payload = bytes(r.payload) if m & RuleMatch.PAYLOAD else None
    mask = bytes(r.payload_mask) if m & RuleMatch.PAYLOAD else None
    if payload is not None and mask is not None:
        n = len(mask.rstrip(b"\0")) or PAYLOAD_MATCH_BYTES
        payload, mask = payload[:n], mask[:n]
    return Rule(
        tenant_idx=tenant_idx, dst=dst, action=RuleAction(r.action),
        proto=r.proto if m & RuleMatch.PROTO else None,
        sport=Range(r.sport_lo, r.sport_hi) if m & RuleMatch.SPORT else None,
        dport=Range(r.dport_lo, r.dport_hi) if m & RuleMatch.DPORT else None,
        length=Range(r.length_lo, r.length_hi) if m & RuleMatch.LENGTH else None,
        ttl=Range(r.ttl_lo, r.ttl_hi) if m & RuleMatch.TTL else None,
        tcp_flags=(r.tcp_flags_mask, r.tcp_flags_value) if m & RuleMatch.TCP_FLAGS else None,
        payload=payload, payload_mask=mask,
        fragments=True if m & RuleMatch.FRAGMENT else (False if m & RuleMatch.NOT_FRAGMENT else None),
        rate_pps=r.rate_pps)


def _fill(array, data: bytes) -> None:
    for i, b in enumerate(data):
        array[i] = b
