"""Tenant model: parsing, set-wide validation with located messages, lookup, round trip."""

from __future__ import annotations

import ipaddress
import itertools
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tenant_strategies import tenant_tables

from tenants import AclEntry, ConfigError, PortRange, Tenant, TenantPolicy, TenantSet, parse_network
from tenants.errors import MAX_PROBLEMS_SHOWN
from tenants.policy import shown


def problems_of(tables: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        TenantSet.from_dicts(tables)
    return info.value.problems


def test_messages_name_tenant_field_and_value() -> None:
    problems = problems_of([
        {"id": "alpha", "prefixes": ["198.51.100.0/24", "198.51.100.0/33"]},
        {"id": "beta", "prefixes": ["198.51.100.0/25"]},
        {"id": "gamma", "prefixes": ["203.0.113.1/24"]},
    ])
    assert problems == [
        "tenant 'alpha': prefixes[1]: '198.51.100.0/33' is not a valid CIDR",
        "tenant 'gamma': prefixes[0]: 203.0.113.1/24 has host bits set (did you mean 203.0.113.0/24?)",
        "tenant 'beta': prefixes[0]: 198.51.100.0/25 overlaps 198.51.100.0/24 of tenant 'alpha'",
    ]


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of([
        {"id": "alpha", "prefixes": ["198.51.100.0/24"], "mode": "block", "polcy": {},
         "allow": [{"src": "192.0.2.0/24", "proto": "icmp", "dport": 80, "port": 1}],
         "policy": {"sensitivity": 20}},
        {"id": "Bad Id", "prefixes": ["2001:db8::/32"]},
        {"id": "alpha", "prefixes": []},
        {"id": "delta"},
        "not a table",
    ])
    assert problems == [
        "tenant 'alpha': polcy: unknown key (did you mean 'policy'?)",
        "tenant 'alpha': mode: 'block' is not one of 'monitor', 'mitigate'",
        "tenant 'alpha': allow[0]: port: unknown key (did you mean 'sport'?)",
        "tenant 'alpha': allow[0]: dport: ports apply only with proto 'tcp' or 'udp' (proto is 'icmp')",
        "tenant 'alpha': policy.sensitivity: must be between 0.1 and 10, got 20.0",
        "tenants[1]: id: 'Bad Id' is not a valid tenant id (lowercase letters, digits, '-' and '_', "
        "starting with a letter or digit, at most 63 characters)",
        "tenant 'alpha': prefixes: empty (a tenant owns at least one prefix)",
        "tenant 'delta': prefixes: missing (a tenant owns at least one prefix)",
        "tenants[4]: expected a table, got a string",
        "tenant 'alpha' (tenants[2]): id: duplicate, already used by tenants[0]; ids must be unique",
    ]


def test_overlaps_in_both_families_and_within_a_tenant() -> None:
    problems = problems_of([
        {"id": "alpha", "prefixes": ["2001:db8::/32", "198.51.100.0/24", "198.51.100.128/25"]},
        {"id": "beta", "prefixes": ["2001:db8:1::/48", "203.0.113.0/24"]},
        {"id": "gamma", "prefixes": ["203.0.113.0/24", "203.0.113.0/24"]},
    ])
    assert problems == [
        "tenant 'alpha': prefixes[2]: 198.51.100.128/25 overlaps prefixes[1] 198.51.100.0/24 of the same tenant",
        "tenant 'beta': prefixes[0]: 2001:db8:1::/48 overlaps 2001:db8::/32 of tenant 'alpha'",
        "tenant 'gamma': prefixes[0]: 203.0.113.0/24 duplicates 203.0.113.0/24 of tenant 'beta'",
        "tenant 'gamma': prefixes[1]: 203.0.113.0/24 duplicates prefixes[0] 203.0.113.0/24 of the same tenant",
    ]


def test_overlap_is_reported_on_the_later_tenant_whatever_the_nesting() -> None:
    problems = problems_of([{"id": "alpha", "prefixes": ["198.51.100.0/25"]},
                            {"id": "beta", "prefixes": ["198.51.100.0/24"]}])
    assert problems == ["tenant 'beta': prefixes[0]: 198.51.100.0/24 overlaps 198.51.100.0/25 of tenant 'alpha'"]


def test_ipv4_and_ipv6_never_overlap_each_other() -> None:
    # ::/0 numerically covers every IPv4 integer; families must be checked apart.
    tenant_set = TenantSet.from_dicts([{"id": "v6", "prefixes": ["::/0"]},
                                       {"id": "v4", "prefixes": ["0.0.0.0/0"]}])
    assert tenant_set.find("198.51.100.1").id == "v4"
    assert tenant_set.find("2001:db8::1").id == "v6"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(22, 28)), min_size=1, max_size=12))
def test_overlap_detection_matches_brute_force(blocks: list[tuple[int, int]]) -> None:
    networks = [ipaddress.ip_network(f"198.18.{third}.0/{length}", strict=False) for third, length in blocks]
    tables = [{"id": f"t{i}", "prefixes": [str(network)]} for i, network in enumerate(networks)]
    overlapping = {k for i, j in itertools.combinations(range(len(networks)), 2)
                   if networks[i].overlaps(networks[j]) for k in (i, j)}
    try:
        TenantSet.from_dicts(tables)
        problems = []
    except ConfigError as error:
        problems = error.problems
    named: set[int] = set()
    for problem in problems:
        later, earlier = (int(number) for number in re.findall(r"tenant 't(\d+)'", problem))
        assert later > earlier and networks[later].overlaps(networks[earlier]), problem
        named |= {later, earlier}
    # Every prefix taking part in an overlap is named, in at most one message per prefix.
    assert named == overlapping
    assert len(problems) < len(networks)


def test_find_by_address() -> None:
    tenant_set = TenantSet.from_dicts([
        {"id": "alpha", "prefixes": ["198.51.100.0/25", "2001:db8:a::/48"]},
        {"id": "beta", "prefixes": ["198.51.100.128/26", "203.0.113.7/32"]},
    ])
    assert tenant_set.find("198.51.100.0").id == "alpha"
    assert tenant_set.find("198.51.100.127").id == "alpha"
    assert tenant_set.find(ipaddress.ip_address("198.51.100.130")).id == "beta"
    assert tenant_set.find("198.51.100.192") is None
    assert tenant_set.find("203.0.113.7").id == "beta"
    assert tenant_set.find("203.0.113.8") is None
    assert tenant_set.find("192.0.2.1") is None
    assert tenant_set.find("2001:db8:a:ffff::1").id == "alpha"
    assert tenant_set.find("2001:db8:b::1") is None
    assert TenantSet().find("198.51.100.1") is None


def test_lookup_by_id_and_order() -> None:
    tenant_set = TenantSet.from_dicts([{"id": "zulu", "prefixes": ["192.0.2.0/24"]},
                                       {"id": "alpha", "prefixes": ["198.51.100.0/24"], "name": "Alpha Ltd"}])
    assert tenant_set.ids == ("zulu", "alpha")
    assert tenant_set["alpha"].name == "Alpha Ltd"
    assert tenant_set["zulu"].name == "zulu"  # name defaults to the id
    assert "alpha" in tenant_set and "beta" not in tenant_set
    assert tenant_set.get("beta") is None
    with pytest.raises(KeyError, match="no tenant with id 'beta'"):
        tenant_set["beta"]


def test_tenant_set_is_immutable() -> None:
    tenant_set = TenantSet.from_dicts([{"id": "alpha", "prefixes": ["198.51.100.0/24"]}])
    with pytest.raises(AttributeError, match="immutable"):
        tenant_set.tenants = ()  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        tenant_set.extra = "a new attribute"  # type: ignore[attr-defined]
    assert tenant_set.ids == ("alpha",)
    with pytest.raises(AttributeError):
        tenant_set["alpha"].mode = "monitor"  # type: ignore[misc]
    assert isinstance(tenant_set.tenants, tuple)


def test_defaults() -> None:
    tenant = TenantSet.from_dicts([{"id": "alpha", "prefixes": ["198.51.100.0/24"]}])["alpha"]
    assert tenant.mode == "mitigate"
    assert tenant.allow == () and tenant.deny == () and tenant.contacts == ()
    assert tenant.policy == TenantPolicy()


def test_constructor_validates_set_wide_invariants_too() -> None:
    alpha = Tenant("alpha", "Alpha", (parse_network("198.51.100.0/24"),))
    beta = Tenant("beta", "Beta", [parse_network("198.51.100.64/26")])
    assert beta.prefixes == (parse_network("198.51.100.64/26"),)  # lists become tuples
    with pytest.raises(ConfigError) as info:
        TenantSet([alpha, beta, alpha, Tenant("empty", "Empty", ())])
    assert info.value.problems == [
        "tenant 'empty': prefixes: empty (a tenant owns at least one prefix)",
        "tenant 'alpha' (tenants[2]): id: duplicate, already used by tenants[0]; ids must be unique",
        # Each prefix is reported against its innermost container, on the later of the two.
        "tenant 'alpha': prefixes[0]: 198.51.100.0/24 duplicates 198.51.100.0/24 of tenant 'alpha' (tenants[0])",
        "tenant 'alpha': prefixes[0]: 198.51.100.0/24 overlaps 198.51.100.64/26 of tenant 'beta'",
    ]
    with pytest.raises(ValueError, match="not a valid tenant id"):
        Tenant("Alpha", "Alpha", ())
    with pytest.raises(ValueError, match="mode: 'block'"):
        Tenant("alpha", "Alpha", (), mode="block")


def test_top_level_must_be_an_array() -> None:
    assert problems_of({"id": "alpha"}) == ["tenants: expected an array of tables ([[tenants]]), got a table"]


def test_tenant_ids() -> None:
    ok = ["a", "0", "alpha-1_b", "a" * 63]
    bad = ["", "A", "-a", "_a", "a" * 64, "a.b", "a b", 7]
    for tenant_id in ok:
        TenantSet.from_dicts([{"id": tenant_id, "prefixes": ["198.51.100.0/24"]}])
    for tenant_id in bad:
        assert "is not a valid tenant id" in problems_of([{"id": tenant_id, "prefixes": ["198.51.100.0/24"]}])[0]


@pytest.mark.parametrize(("text", "network"), [
    ("198.51.100.0/24", "198.51.100.0/24"),
    (" 198.51.100.7 ", "198.51.100.7/32"),
    ("2001:DB8::/32", "2001:db8::/32"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("::/0", "::/0"),
])
def test_parse_network(text: str, network: str) -> None:
    assert parse_network(text) == ipaddress.ip_network(network)


@pytest.mark.parametrize(("value", "message"), [
    ("198.51.100.0/33", "'198.51.100.0/33' is not a valid CIDR"),
    ("198.51.100.0/", "'198.51.100.0/' is not a valid CIDR"),
    ("198.051.100.0/24", "'198.051.100.0/24' is not a valid CIDR"),
    ("2001:db8::/129", "'2001:db8::/129' is not a valid CIDR"),
    ("fe80::1%eth0/64", "zone ids are not allowed"),
    ("2001:db8::1/32", "2001:db8::1/32 has host bits set (did you mean 2001:db8::/32?)"),
    (24, "expected a CIDR string such as '198.51.100.0/24', got an integer 24"),
])
def test_parse_network_errors(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_network(value)
    assert message in str(info.value)


def test_port_range() -> None:
    assert PortRange.parse(80) == PortRange(80, 80)
    assert PortRange.parse("1024-65535") == PortRange(1024, 65535)
    assert PortRange.parse(" 53 ") == PortRange(53, 53)
    assert str(PortRange(1, 2)) == "1-2" and PortRange(7, 7).to_toml() == 7
    assert 1500 in PortRange(1024, 2048) and 80 not in PortRange(1024, 2048)
    for bad, message in [(65536, "between 0 and 65535"), ("90-80", "is empty"), ("http", "not a port"),
                         (True, "expected a port number"), ("1-2-3", "not a port"), (-1, "between 0 and 65535")]:
        with pytest.raises(ValueError, match=message):
            PortRange.parse(bad)


def test_acl_entry_parsing() -> None:
    entry = AclEntry.from_dict({"src": "192.0.2.0/24", "proto": "TCP", "sport": 53, "dport": "1024-65535"})
    assert entry == AclEntry(parse_network("192.0.2.0/24"), 6, PortRange(53, 53), PortRange(1024, 65535))
    assert AclEntry.from_dict({}) == AclEntry()
    assert AclEntry.from_dict({"proto": 47}).proto == 47
    assert AclEntry.from_dict({"proto": "icmpv6"}).to_dict() == {"proto": "icmpv6"}


@pytest.mark.parametrize("text", ["47", " 47 ", "047"])
def test_a_protocol_number_written_as_text_is_that_number(text: str) -> None:
    # The policy form writes proto=47 and posts it back as text: it means what the number 47 does.
    assert AclEntry.from_dict({"proto": text}) == AclEntry.from_dict({"proto": 47})
    assert AclEntry.from_dict({"proto": text}).to_dict() == {"proto": 47}


@pytest.mark.parametrize(("table", "problems"), [
    ({"source": "192.0.2.0/24"}, ["source: unknown key (did you mean 'src'?)"]),
    ({"proto": "sctp"}, ["proto: unknown protocol 'sctp' (use icmp, tcp, udp, icmpv6 or a number 1-255)"]),
    ({"proto": 256}, ["proto: protocol number 256 is outside 1-255"]),
    ({"proto": 0}, ["proto: 0 is not a transport protocol; omit proto to match any protocol"]),
    ({"proto": "0"}, ["proto: 0 is not a transport protocol; omit proto to match any protocol"]),
    ({"proto": "0" * 5000}, ["proto: 0 is not a transport protocol; omit proto to match any protocol"]),
    ({"proto": "256"}, ["proto: protocol number 256 is outside 1-255"]),
    ({"proto": "1" + "0" * 5000}, [f"proto: protocol number {shown('1' + '0' * 5000)} is outside 1-255"]),
    ({"proto": "abc"}, ["proto: unknown protocol 'abc' (use icmp, tcp, udp, icmpv6 or a number 1-255)"]),
    ({"dport": 80}, ["dport: ports apply only with proto 'tcp' or 'udp' (proto is not set)"]),
    ({"proto": "udp", "sport": "x"}, ["sport: 'x' is not a port or a range like '1024-65535'"]),
    ({"src": "2001:db8::/32", "proto": "icmp"},
     ["proto: 'icmp' never matches IPv6 source 2001:db8::/32; use 'icmpv6'"]),
    ({"src": "192.0.2.1/24", "proto": "tcp", "dport": 70000},
     ["src: 192.0.2.1/24 has host bits set (did you mean 192.0.2.0/24?)",
      "dport: port 70000 is not an integer between 0 and 65535"]),
    ("tcp/80", ["expected a table with keys src, proto, sport, dport, got a string"]),
])
def test_acl_entry_errors(table: object, problems: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        AclEntry.from_dict(table)
    assert info.value.problems == problems


def test_acl_problems_name_tenant_and_list() -> None:
    problems = problems_of([{"id": "alpha", "prefixes": ["198.51.100.0/24"],
                             "allow": [{"proto": "tcp"}, {"proto": "gre"}], "deny": {"src": "x"}}])
    assert problems == [
        "tenant 'alpha': allow[1]: proto: unknown protocol 'gre' (use icmp, tcp, udp, icmpv6 or a number 1-255)",
        "tenant 'alpha': deny: expected an array of tables ([[tenants.deny]]), got a table",
    ]


def test_acl_entry_matches() -> None:
    entry = AclEntry.from_dict({"src": "192.0.2.0/24", "proto": "udp", "dport": "53"})
    src = ipaddress.ip_address("192.0.2.9")
    assert entry.matches(src, 17, 4000, 53)
    assert not entry.matches(src, 6, 4000, 53)
    assert not entry.matches(src, 17, 4000, 54)
    assert not entry.matches(ipaddress.ip_address("192.0.3.9"), 17, 4000, 53)
    assert not entry.matches(ipaddress.ip_address("2001:db8::1"), 17, 4000, 53)
    assert AclEntry().matches(ipaddress.ip_address("2001:db8::1"), 58)


def test_other_field_types() -> None:
    problems = problems_of([{"id": "alpha", "name": "", "prefixes": "198.51.100.0/24", "policy": [],
                             "contacts": "noc@example.org"}])
    assert problems == [
        "tenant 'alpha': name: expected a non-empty string, got a string ''",
        "tenant 'alpha': prefixes: expected an array of CIDR strings, got a string",
        "tenant 'alpha': policy: expected a table ([tenants.policy]), got an array",
        "tenant 'alpha': contacts: expected an array of e-mail addresses, got a string",
    ]


def test_error_message_is_readable_and_bounded() -> None:
    tables = [{"id": f"t{i}", "prefixes": ["198.51.100.0/24"]} for i in range(MAX_PROBLEMS_SHOWN + 11)]
    with pytest.raises(ConfigError) as info:
        TenantSet.from_dicts(tables)
    text = str(info.value)
    assert text.startswith(f"{MAX_PROBLEMS_SHOWN + 10} problems:\n  - tenant 't1': prefixes[0]: ")
    assert text.endswith("\n  ... and 10 more")
    assert len(info.value.problems) == MAX_PROBLEMS_SHOWN + 10
    assert str(ConfigError("one thing", source="x.toml")) == "x.toml: one thing"


@settings(max_examples=40, deadline=None)
@given(tenant_tables())
def test_to_dicts_round_trips_the_same_tables(tables: list[dict[str, object]]) -> None:
    tenant_set = TenantSet.from_dicts(tables)
    assert tenant_set.to_dicts() == tables
    assert TenantSet.from_dicts(tenant_set.to_dicts()) == tenant_set
    assert TenantSet(tenant_set.tenants) == tenant_set


def test_ten_thousand_tenants() -> None:
    """Scale check (prints the figure; the house rule forbids timed assertions)."""
    tables = [{"id": f"t{i}", "prefixes": [f"198.{18 + i // 8192}.{i // 32 % 256}.{i % 32 * 8}/29",
                                           f"2001:db8:{i:x}::/48"]} for i in range(10_000)]
    start = time.perf_counter()
    tenant_set = TenantSet.from_dicts(tables)
    elapsed = time.perf_counter() - start
    print(f"\nTenantSet.from_dicts: 10,000 tenants, 20,000 prefixes in {elapsed * 1000:.0f} ms")
    assert len(tenant_set) == 10_000
    assert tenant_set.find("198.19.56.127").id == "t9999"
    assert tenant_set.find("198.19.56.128") is None
    assert tenant_set.find("2001:db8:1a2b::1").id == f"t{0x1a2b}"
    # One overlapping prefix among them is still found, and only it.
    tables[-1]["prefixes"].append("198.18.0.0/29")
    assert problems_of(tables) == ["tenant 't9999': prefixes[2]: 198.18.0.0/29 duplicates 198.18.0.0/29 of tenant 't0'"]
