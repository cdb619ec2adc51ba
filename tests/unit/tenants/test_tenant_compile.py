"""Compiling a TenantSet into dataplane tables: indices, policies, prefix-expanded ACLs."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.constants import ACL_ENTRIES_PER_PREFIX, MAX_ACL_PREFIXES, MAX_TENANTS, AclKind, TenantMode
from tenants import (
    AclEntry,
    CompiledAcl,
    CompiledPolicy,
    ConfigError,
    ReflectionFilter,
    TenantSet,
    assign_indices,
    compile_tenant_set,
    fresh_indices,
)
from tenants.compile import ANY_ENTRY, covers, expand_acl, reduce_entries
from tenants.model import parse_network

V4_ANY = ipaddress.ip_network("0.0.0.0/0")
V6_ANY = ipaddress.ip_network("::/0")


# -- indices -----------------------------------------------------------------------------------

def test_first_assignment_is_dense_in_order() -> None:
    assert assign_indices(["alpha", "beta", "gamma"], {}) == {"alpha": 0, "beta": 1, "gamma": 2}


def test_indices_are_stable_and_freed_ones_reused_lowest_first() -> None:
    first = assign_indices(["alpha", "beta", "gamma", "delta"], {})
    # beta and alpha leave, two tenants arrive: they take 0 then 1; the others keep theirs.
    second = assign_indices(["gamma", "epsilon", "delta", "zeta"], first)
    assert second == {"gamma": 2, "epsilon": 0, "delta": 3, "zeta": 1}
    third = assign_indices(["eta", "zeta", "gamma", "delta", "epsilon"], second)
    assert third == {"eta": 4, "zeta": 1, "gamma": 2, "delta": 3, "epsilon": 0}


def test_fresh_indices_are_the_ones_whose_owner_changed() -> None:
    first = assign_indices(["alpha", "beta", "gamma"], {})
    assert fresh_indices({}, first) == {0, 1, 2}
    second = assign_indices(["gamma", "delta"], first)   # delta takes alpha's freed 0
    assert fresh_indices(first, second) == {0}
    assert fresh_indices(second, second) == set()


def test_capacity() -> None:
    assert assign_indices(["a", "b"], {}, capacity=2) == {"a": 0, "b": 1}
    with pytest.raises(ConfigError, match="^3 tenants exceed the dataplane's capacity of 2 tenants$"):
        assign_indices(["a", "b", "c"], {}, capacity=2)
    # An index beyond a smaller capacity, or claimed twice, is reassigned instead of trusted.
    assert assign_indices(["a", "b", "c"], {"a": 7, "b": 0, "c": 0}, capacity=3) == {"a": 1, "b": 0, "c": 2}
    with pytest.raises(ValueError, match="unique"):
        assign_indices(["a", "a"], {})


def test_default_capacity_is_the_dataplane_limit() -> None:
    ids = [f"t{i}" for i in range(MAX_TENANTS)]
    assert max(assign_indices(ids, {}).values()) == MAX_TENANTS - 1
    with pytest.raises(ConfigError, match=f"exceed the dataplane's capacity of {MAX_TENANTS}"):
        assign_indices([*ids, "one-more"], {})


# -- tables ------------------------------------------------------------------------------------

TENANTS = TenantSet.from_dicts([
    {"id": "alpha", "prefixes": ["198.51.100.0/24", "2001:db8:a::/48"], "mode": "monitor",
     "policy": {"syn_protection": False, "reflection_filter": "always", "udp_rate_pps": 50000},
     "allow": [{"proto": "tcp", "dport": 443},
               {"src": "192.0.2.0/24", "proto": "tcp", "dport": "1-1024"},
               {"src": "192.0.2.128/25", "proto": "udp"},
               {"src": "192.0.2.128/25", "proto": "udp"},
               {"src": "2001:db8:ffff::/48", "proto": "icmpv6"}]},
    {"id": "beta", "prefixes": ["203.0.113.0/25"],
     "deny": [{"src": "198.18.0.0/15"}, {"src": "198.18.7.0/24", "proto": "udp", "sport": 53}]},
])


def test_prefixes_and_policies() -> None:
    tables = compile_tenant_set(TENANTS, {"alpha": 3, "beta": 0})
    assert tables.prefixes == [(parse_network("198.51.100.0/24"), 3), (parse_network("2001:db8:a::/48"), 3),
                               (parse_network("203.0.113.0/25"), 0)]
    assert tables.policies == {
        3: CompiledPolicy(mode=TenantMode.MONITOR, invalid_filters=True, syn_protection=False,
                          reflection=ReflectionFilter.ALWAYS, has_allow=True, has_deny=False,
                          syn_rate_pps=0, udp_rate_pps=50000, icmp_rate_pps=0, fragment_rate_pps=0),
        0: CompiledPolicy(mode=TenantMode.MITIGATE, invalid_filters=True, syn_protection=True,
                          reflection=ReflectionFilter.AUTO, has_allow=False, has_deny=True,
                          syn_rate_pps=0, udp_rate_pps=0, icmp_rate_pps=0, fragment_rate_pps=0),
    }


def test_acl_keys_are_expanded_merged_and_cover_both_families() -> None:
    tables = compile_tenant_set(TENANTS, {"alpha": 3, "beta": 0})
    tcp443, tcp_low, udp_any = (6, 0, 65535, 443, 443), (6, 0, 65535, 1, 1024), (17, 0, 65535, 0, 65535)
    assert tables.acl == [
        # The entry without src lands on both wildcard keys and is inherited by every IPv6/IPv4 key.
        CompiledAcl(AclKind.ALLOW, 3, V4_ANY, (tcp443,)),
        CompiledAcl(AclKind.ALLOW, 3, parse_network("192.0.2.0/24"), (tcp_low,)),  # 443 lies in 1-1024
        CompiledAcl(AclKind.ALLOW, 3, parse_network("192.0.2.128/25"), (udp_any, tcp_low)),  # duplicate merged
        CompiledAcl(AclKind.ALLOW, 3, V6_ANY, (tcp443,)),
        CompiledAcl(AclKind.ALLOW, 3, parse_network("2001:db8:ffff::/48"), ((58, 0, 65535, 0, 65535), tcp443)),
        CompiledAcl(AclKind.DENY, 0, parse_network("198.18.0.0/15"), (ANY_ENTRY,)),
        CompiledAcl(AclKind.DENY, 0, parse_network("198.18.7.0/24"), (ANY_ENTRY,)),  # covered by "any"
    ]


def test_index_mapping_must_cover_every_tenant() -> None:
    with pytest.raises(ValueError, match="no index assigned to tenants beta"):
        compile_tenant_set(TENANTS, {"alpha": 0})
    with pytest.raises(ValueError, match="share an index"):
        compile_tenant_set(TENANTS, {"alpha": 1, "beta": 1})


def test_too_many_entries_on_one_key_names_tenant_and_list() -> None:
    """Refused when the set is validated (item 11 of issue 12: the dataplane's limits hold at
    validation time, so a central server without a dataplane refuses it too), not only at compile."""
    ports = [{"proto": "udp", "dport": 1000 + 2 * i} for i in range(ACL_ENTRIES_PER_PREFIX - 1)]
    with pytest.raises(ConfigError) as info:
        TenantSet.from_dicts([{
            "id": "alpha", "prefixes": ["198.51.100.0/24"],
            # Seven entries for every source fit, and so does one more for 192.0.2.0/24 ...
            "allow": [*ports, {"src": "192.0.2.0/24", "proto": "tcp"}],
            # ... but two more for 192.0.2.0/25 (with the seven inherited from 0.0.0.0/0) do not.
            "deny": [*ports, {"src": "192.0.2.0/25", "proto": "tcp"}, {"src": "192.0.2.0/25", "proto": "icmp"}],
        }])
    assert info.value.problems == [
        f"tenant 'alpha': deny: more than {ACL_ENTRIES_PER_PREFIX} distinct entries apply to sources in "
        f"192.0.2.0/25 (counting the entries of less specific sources that cover it); the dataplane holds "
        f"{ACL_ENTRIES_PER_PREFIX} per source prefix: merge port ranges or use fewer entries",
    ]


def test_too_many_acl_keys_in_one_family() -> None:
    """The total over all tenants is refused when the set is validated (issue 12 item 11)."""
    sources = [{"src": f"198.{18 + i // 65536}.{i // 256 % 256}.{i % 256}/32"} for i in range(MAX_ACL_PREFIXES)]
    alpha = {"id": "alpha", "prefixes": ["198.51.100.0/24"], "deny": sources}
    with pytest.raises(ConfigError) as info:
        TenantSet.from_dicts([alpha, {"id": "beta", "prefixes": ["203.0.113.0/24"],
                                      "allow": [{"src": "192.0.2.0/24"}]}])
    assert info.value.problems == [f"{MAX_ACL_PREFIXES + 1} IPv4 allow/deny source prefixes (after expansion) "
                                   f"exceed the dataplane's {MAX_ACL_PREFIXES}"]
    fits = TenantSet.from_dicts([alpha])
    assert len(compile_tenant_set(fits, {"alpha": 0}).acl) == MAX_ACL_PREFIXES


def test_reduce_entries() -> None:
    tcp_any = (6, 0, 65535, 0, 65535)
    assert reduce_entries([(6, 0, 65535, 80, 80), tcp_any, tcp_any], limit=8) == (tcp_any,)
    assert reduce_entries([(6, 0, 65535, 80, 80), ANY_ENTRY], limit=8) == (ANY_ENTRY,)
    assert reduce_entries([(6, 0, 65535, 80, 80), (17, 0, 65535, 80, 80)], limit=1) is None
    assert covers(ANY_ENTRY, (47, 0, 65535, 0, 65535))
    assert not covers((6, 0, 65535, 0, 65535), (17, 0, 65535, 0, 65535))
    assert not covers((6, 10, 20, 0, 65535), (6, 5, 15, 0, 65535))


# -- the property the dataplane relies on ------------------------------------------------------

# Small, heavily nested source universes so that random entries cover each other often.
V4_SOURCES = [None, *(f"192.0.2.{base}/{length}" for length in (24, 25, 26, 28, 30, 32)
                      for base in (0, 64, 128, 192, 200) if base % (1 << (32 - length)) == 0)]
V6_SOURCES = [None, "2001:db8::/32", "2001:db8::/64", "2001:db8::/120", "2001:db8::80/121", "2001:db8::c8/128"]
PROTOCOLS = [None, "tcp", "udp", "icmp", "icmpv6", 47]
PORT_BOUNDS = [0, 53, 80, 443, 1024, 65535]  # few values, so ranges touch and nest


@st.composite
def acl_entries(draw: st.DrawFn) -> AclEntry:
    table: dict[str, object] = {}
    src = draw(st.sampled_from(V4_SOURCES + V6_SOURCES))
    if src is not None:
        table["src"] = src
    proto = draw(st.sampled_from(PROTOCOLS))
    if proto in ("icmp", "icmpv6") and src is not None:
        proto = "icmpv6" if ":" in src else "icmp"
    if proto is not None:
        table["proto"] = proto
    if proto in ("tcp", "udp"):
        for key in ("sport", "dport"):
            if draw(st.booleans()):
                lo, hi = sorted(draw(st.lists(st.sampled_from(PORT_BOUNDS), min_size=2, max_size=2)))
                table[key] = f"{lo}-{hi}"
    return AclEntry.from_dict(table)


packet_sources = st.one_of(
    st.builds(lambda last: ipaddress.ip_address(f"192.0.2.{last}"), st.integers(0, 255)),
    st.builds(lambda last: ipaddress.ip_address(f"2001:db8::{last:x}"), st.integers(0, 255)),
    st.sampled_from([ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("2001:db8:1::1")]),
)
packet_ports = st.one_of(st.sampled_from(PORT_BOUNDS), st.integers(0, 65535))


def longest_match_allows(keys: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, tuple]],
                         src: ipaddress.IPv4Address | ipaddress.IPv6Address, proto: int, sport: int,
                         dport: int) -> bool:
    """What the XDP program does: one LPM lookup, then any matching entry of that key."""
    candidates = [(net, entries) for net, entries in keys if net.version == src.version and src in net]
    if not candidates:
        return False
    _, entries = max(candidates, key=lambda item: item[0].prefixlen)
    return any((e_proto in (0, proto)) and s_lo <= sport <= s_hi and d_lo <= dport <= d_hi
               for e_proto, s_lo, s_hi, d_lo, d_hi in entries)


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(acl_entries(), max_size=12),
       packets=st.lists(st.tuples(packet_sources, st.sampled_from([1, 6, 17, 47, 58]), packet_ports,
                                  packet_ports), min_size=1, max_size=20))
def test_longest_match_after_expansion_equals_any_original_entry(entries: list[AclEntry], packets: list) -> None:
    keys = expand_acl(entries, limit=len(entries) + 1)  # no overflow: every reduced list fits
    assert len({src for src, _ in keys}) == len(keys)   # one key per source prefix
    for src, proto, sport, dport in packets:
        if proto not in (6, 17):
            sport = dport = 0  # the dataplane reads no ports for other protocols
        original = any(entry.matches(src, proto, sport, dport) for entry in entries)
        assert longest_match_allows(keys, src, proto, sport, dport) == original, (src, proto, sport, dport)


@settings(max_examples=60, deadline=None)
@given(st.lists(acl_entries(), max_size=12))
def test_compile_emits_what_expansion_computes(entries: list[AclEntry]) -> None:
    tenant_set = TenantSet.from_dicts([{"id": "alpha", "prefixes": ["198.51.100.0/24"],
                                        "deny": [entry.to_dict() for entry in entries]}])
    expected = expand_acl(tenant_set["alpha"].deny, limit=ACL_ENTRIES_PER_PREFIX)
    try:
        tables = compile_tenant_set(tenant_set, {"alpha": 5})
    except ConfigError as error:
        assert all(problem.startswith("tenant 'alpha': deny: more than") for problem in error.problems)
        assert any(not entries for _, entries in expected)
        return
    assert [(acl.src, acl.entries) for acl in tables.acl] == expected
    assert all(acl.kind is AclKind.DENY and acl.tenant_idx == 5 for acl in tables.acl)
    assert all(0 < len(acl.entries) <= ACL_ENTRIES_PER_PREFIX for acl in tables.acl)
