"""Compile a TenantSet into the tables the dataplane loads into its maps (pure Python).

The XDP program does one longest-prefix-match lookup per packet and ACL kind,
keyed by (tenant, kind, source address). So that the longest match alone
decides, every emitted key carries its own entries plus those of every less
specific source prefix of the same tenant, kind and family that covers it
("prefix expansion"). Entries are then reduced: duplicates merge and an entry
that another entry of the same key fully covers is dropped, which keeps the
answer to "does any entry match?" unchanged while saving the per-key slots.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from dataplane.constants import (
    ACL_ENTRIES_PER_PREFIX,
    MAX_ACL_PREFIXES,
    MAX_PREFIXES,
    MAX_TENANTS,
    AclKind,
    ReflectionFilter,  # `policy.reflection_filter` as the dataplane reads it
    TenantMode,
)
from tenants.addresses import PORT_MAX, Network, network_bounds
from tenants.errors import ConfigError
from tenants.policy import TenantPolicy

if TYPE_CHECKING:  # the model imports this module (capacity_problems): only its types here
    from tenants.model import AclEntry, Tenant, TenantSet

# One ACL entry as the dataplane stores it: (proto, sport_lo, sport_hi, dport_lo, dport_hi).
# proto 0 means any protocol; 0..65535 means any port.
AclTuple = tuple[int, int, int, int, int]
ANY_PROTO = 0
ANY_ENTRY: AclTuple = (ANY_PROTO, 0, PORT_MAX, 0, PORT_MAX)
WILDCARD_SOURCES: dict[int, Network] = {4: ipaddress.IPv4Network("0.0.0.0/0"), 6: ipaddress.IPv6Network("::/0")}


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """Per-tenant switches and limits for the XDP program."""

    mode: TenantMode
    invalid_filters: bool
    syn_protection: bool
    reflection: ReflectionFilter
    has_allow: bool             # the tenant has an allow list: skip the lookup when False
    has_deny: bool
    syn_rate_pps: int           # per-destination token buckets, packets/s; 0 = derived from the baseline
    udp_rate_pps: int
    icmp_rate_pps: int
    fragment_rate_pps: int
    syn_reset: bool = False     # syn_auth = "reset": a valid cookie ACK is reset instead of spliced


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledAcl:
    """One LPM key (tenant, kind, source prefix) with every entry that applies to it."""

    kind: AclKind
    tenant_idx: int
    src: Network
    entries: tuple[AclTuple, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledTables:
    prefixes: list[tuple[Network, int]]         # destination prefix -> tenant index
    policies: dict[int, CompiledPolicy]         # tenant index -> policy
    acl: list[CompiledAcl]


def assign_indices(tenant_ids: Iterable[str], previous: Mapping[str, int],
                   capacity: int = MAX_TENANTS) -> dict[str, int]:
    """A stable small index per tenant, in the order of `tenant_ids`.

    A tenant keeps its index from `previous` (counters and rules are keyed by
    it); new tenants take the lowest free indices, including ones freed by
    tenants that left. More tenants than `capacity` is a ConfigError.
    """
    ids = list(tenant_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("tenant ids must be unique")
    if len(ids) > capacity:
        raise ConfigError(f"{len(ids)} tenants exceed the dataplane's capacity of {capacity} tenants")
    assigned: dict[str, int] = {}
    used: set[int] = set()
    for tenant_id in ids:
        index = previous.get(tenant_id)
        # An index outside a (smaller) capacity, or claimed twice, is reassigned rather than trusted.
        if index is not None and 0 <= index < capacity and index not in used:
            assigned[tenant_id] = index
            used.add(index)
    free = (index for index in range(capacity) if index not in used)
    for tenant_id in ids:
        if tenant_id not in assigned:
            assigned[tenant_id] = next(free)
    return {tenant_id: assigned[tenant_id] for tenant_id in ids}


def fresh_indices(previous: Mapping[str, int], assigned: Mapping[str, int]) -> set[int]:
    """Indices whose owner is new since `previous`: their counters must start from zero
    (for `Dataplane.apply_tenants(reset_stats=...)`), or a new tenant inherits a gone one's."""
    return {index for tenant_id, index in assigned.items() if previous.get(tenant_id) != index}


def compile_tenant_set(tenant_set: TenantSet, indices: Mapping[str, int]) -> CompiledTables:
    """The dataplane tables of a tenant set; ConfigError when they do not fit the dataplane's limits."""
    missing = [tenant.id for tenant in tenant_set if tenant.id not in indices]
    if missing:
        raise ValueError(f"no index assigned to tenants {', '.join(missing)}")
    if len({indices[tenant.id] for tenant in tenant_set}) != len(tenant_set):
        raise ValueError("two tenants share an index")

    problems: list[str] = []
    prefixes: list[tuple[Network, int]] = []
    policies: dict[int, CompiledPolicy] = {}
    acl: list[CompiledAcl] = []
    for tenant in tenant_set:
        index = indices[tenant.id]
        prefixes.extend((prefix, index) for prefix in tenant.prefixes)
        policies[index] = _compile_policy(tenant.mode, tenant.policy, bool(tenant.allow), bool(tenant.deny))
        for kind, entries in ((AclKind.ALLOW, tenant.allow), (AclKind.DENY, tenant.deny)):
            for src, expanded in expand_acl(entries, _limit_reporter(problems, tenant.id, kind)):
                acl.append(CompiledAcl(kind, index, src, expanded))
    problems.extend(_total_problems(len(tenant_set), prefixes, [entry.src for entry in acl]))
    if problems:
        raise ConfigError(problems)
    return CompiledTables(prefixes=prefixes, policies=policies, acl=acl)


def capacity_problems(tenants: Sequence[Tenant]) -> list[str]:
    """Every way `tenants` would not fit the dataplane's maps, found without compiling the whole set:
    TenantSet validation runs this, so the config file, the API, the UI and a central server without
    a dataplane refuse the same sets the appliance would (compile_tenant_set checks the same)."""
    problems: list[str] = []
    prefixes: list[tuple[Network, int]] = []
    acl_sources: list[Network] = []
    for tenant in tenants:
        prefixes.extend((prefix, 0) for prefix in tenant.prefixes)
        for kind, entries in ((AclKind.ALLOW, tenant.allow), (AclKind.DENY, tenant.deny)):
            if len(entries) <= ACL_ENTRIES_PER_PREFIX:
                # No key can collect more entries than the list has: the keys are its distinct
                # sources, found without expanding (most tenants have a few entries, if any).
                acl_sources.extend({source for entry in entries
                                    for source in ([entry.src] if entry.src is not None
                                                   else WILDCARD_SOURCES.values())})
            else:
                acl_sources.extend(src for src, _ in expand_acl(entries, _limit_reporter(problems, tenant.id, kind)))
    return problems + _total_problems(len(tenants), prefixes, acl_sources)


def _total_problems(tenant_count: int, prefixes: Sequence[tuple[Network, int]],
                    acl_sources: Sequence[Network]) -> list[str]:
    problems = []
    if tenant_count > MAX_TENANTS:
        problems.append(f"{tenant_count} tenants exceed the dataplane's capacity of {MAX_TENANTS} tenants")
    for version in (4, 6):
        family = f"IPv{version}"
        prefix_count = sum(1 for prefix, _ in prefixes if prefix.version == version)
        if prefix_count > MAX_PREFIXES:
            problems.append(f"{prefix_count} {family} tenant prefixes exceed the dataplane's {MAX_PREFIXES}")
        key_count = sum(1 for src in acl_sources if src.version == version)
        if key_count > MAX_ACL_PREFIXES:
            problems.append(f"{key_count} {family} allow/deny source prefixes (after expansion) exceed "
                            f"the dataplane's {MAX_ACL_PREFIXES}")
    return problems


def _compile_policy(mode: str, policy: TenantPolicy, has_allow: bool, has_deny: bool) -> CompiledPolicy:
    return CompiledPolicy(
        mode=TenantMode.MONITOR if mode == "monitor" else TenantMode.MITIGATE,
        invalid_filters=policy.invalid_filters,
        syn_protection=policy.syn_protection,
        reflection=ReflectionFilter[policy.reflection_filter.upper()],
        has_allow=has_allow,
        has_deny=has_deny,
        syn_rate_pps=policy.syn_rate_pps,
        udp_rate_pps=policy.udp_rate_pps,
        icmp_rate_pps=policy.icmp_rate_pps,
        fragment_rate_pps=policy.fragment_rate_pps,
        syn_reset=policy.syn_auth == "reset",
    )


def _limit_reporter(problems: list[str], tenant_id: str, kind: AclKind) -> Callable[[Network], None]:
    list_name = kind.name.lower()

    def report(src: Network) -> None:
        problems.append(
            f"tenant {tenant_id!r}: {list_name}: more than {ACL_ENTRIES_PER_PREFIX} distinct entries apply to "
            f"sources in {src} (counting the entries of less specific sources that cover it); the dataplane "
            f"holds {ACL_ENTRIES_PER_PREFIX} per source prefix: merge port ranges or use fewer entries")
    return report


def entry_tuple(entry: AclEntry) -> AclTuple:
    sport = (entry.sport.lo, entry.sport.hi) if entry.sport else (0, PORT_MAX)
    dport = (entry.dport.lo, entry.dport.hi) if entry.dport else (0, PORT_MAX)
    return (entry.proto or ANY_PROTO, *sport, *dport)


def expand_acl(entries: Sequence[AclEntry], on_overflow: Callable[[Network], None] | None = None,
               limit: int = ACL_ENTRIES_PER_PREFIX) -> list[tuple[Network, tuple[AclTuple, ...]]]:
    """(source key, reduced entries) for one tenant's list, per family in address order.

    An entry without a source applies to both families, so it lands on both
    wildcard keys. `on_overflow(src)` is called for each key that would hold
    more than `limit` entries (the key is still returned, with no entries).
    """
    by_source: dict[Network, list[AclTuple]] = {}
    for entry in entries:
        sources = [entry.src] if entry.src is not None else list(WILDCARD_SOURCES.values())
        for src in sources:
            by_source.setdefault(src, []).append(entry_tuple(entry))

    out: list[tuple[Network, tuple[AclTuple, ...]]] = []
    for version in (4, 6):
        keys = sorted((src for src in by_source if src.version == version),
                      key=lambda net: (int(net.network_address), net.prefixlen))
        # Sorted by (first address, length), a key's covering keys are exactly
        # the ones still on the stack once the disjoint ones are popped.
        stack: list[tuple[int, int, tuple[AclTuple, ...]]] = []  # (first, last, expanded entries)
        for src in keys:
            first, last = network_bounds(src)
            while stack and not (stack[-1][0] <= first and last <= stack[-1][1]):
                stack.pop()
            inherited = stack[-1][2] if stack else ()
            expanded = reduce_entries([*inherited, *by_source[src]], limit)
            if expanded is None:
                if on_overflow is not None:
                    on_overflow(src)
                expanded = ()
            stack.append((first, last, expanded))
            out.append((src, expanded))
    return out


def covers(wide: AclTuple, narrow: AclTuple) -> bool:
    """Whether every packet `narrow` matches is also matched by `wide`."""
    return ((wide[0] == ANY_PROTO or wide[0] == narrow[0])
            and wide[1] <= narrow[1] and narrow[2] <= wide[2]
            and wide[3] <= narrow[3] and narrow[4] <= wide[4])


def reduce_entries(entries: Iterable[AclTuple], limit: int) -> tuple[AclTuple, ...] | None:
    """Entries without duplicates or covered ones, widest first; None if more than `limit` remain.

    Sorting widest first (any protocol, then widest port spans) puts every
    covering entry before what it covers, so one pass against the kept ones
    suffices, and it stops as soon as the limit is passed.
    """
    def widest_first(entry: AclTuple) -> tuple[bool, int, int, AclTuple]:
        return entry[0] != ANY_PROTO, entry[1] - entry[2], entry[3] - entry[4], entry

    kept: list[AclTuple] = []
    for entry in sorted(set(entries), key=widest_first):
        if any(covers(wider, entry) for wider in kept):
            continue
        kept.append(entry)
        if len(kept) > limit:
            return None
    return tuple(kept)
