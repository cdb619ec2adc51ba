"""Issue 12, items 11, 14 and 16 on the tenants side: every policy number bounded by what the
dataplane holds, ACL capacity checked when a set is validated, every problem reported at once,
tenant names and contacts validated."""

from __future__ import annotations

import ctypes

import pytest

from dataplane.constants import MAX_ACL_PREFIXES
from tenants import ConfigError, TenantPolicy, TenantSet
from tenants.model import NAME_MAX_CHARS
from tenants.policy import RATE_PPS_MAX

RATE_KEYS = ("syn_rate_pps", "udp_rate_pps", "icmp_rate_pps", "fragment_rate_pps")


def problems_of(tables: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        TenantSet.from_dicts(tables)
    return info.value.problems


def test_item11_rate_pps_max_is_what_a_u32_holds():
    """The bound is the largest value that survives the C field (struct sw_policy's __u32)."""
    assert ctypes.c_uint32(RATE_PPS_MAX).value == RATE_PPS_MAX
    assert ctypes.c_uint32(RATE_PPS_MAX + 1).value != RATE_PPS_MAX + 1


def test_item11_syn_rate_that_would_wrap_to_10_pps_is_refused():
    assert ctypes.c_uint32(4294967306).value == 10  # what the dataplane would have enforced
    problems = problems_of([{"id": "alpha", "prefixes": ["198.51.100.0/24"],
                             "policy": {"syn_rate_pps": 4294967306}}])
    assert problems == ["tenant 'alpha': policy.syn_rate_pps: must be at most 4294967295 packets/s "
                        "(the dataplane holds 32-bit rates), got 4294967306"]


@pytest.mark.parametrize("key", ["min_pps", "min_tenant_pps", *RATE_KEYS])
def test_item11_every_integer_key_is_bounded(key):
    assert TenantPolicy.from_dict({key: RATE_PPS_MAX}).to_dict()[key] == RATE_PPS_MAX
    with pytest.raises(ConfigError) as info:
        TenantPolicy.from_dict({key: 10**400})
    assert info.value.problems == [f"policy.{key}: must be at most 4294967295 packets/s (the dataplane holds "
                                   f"32-bit rates), got a 401-digit number"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 10**400, 10.01, 0.09])
def test_item11_sensitivity_nan_inf_and_out_of_range_refused(value):
    with pytest.raises(ConfigError) as info:
        TenantPolicy.from_dict({"sensitivity": value})
    (problem,) = info.value.problems
    assert problem.startswith("policy.sensitivity: must be between 0.1 and 10, got ")


def test_item14_three_independent_policy_errors_are_three_problems():
    problems = problems_of([{"id": "alpha", "prefixes": ["198.51.100.0/24"],
                             "policy": {"sensitivity": 50, "min_pps": -1, "udp_rate_pps": 2**32}}])
    assert problems == [
        "tenant 'alpha': policy.sensitivity: must be between 0.1 and 10, got 50.0",
        "tenant 'alpha': policy.min_pps: expected a non-negative integer, got -1",
        "tenant 'alpha': policy.udp_rate_pps: must be at most 4294967295 packets/s (the dataplane holds "
        "32-bit rates), got 4294967296",
    ]


def test_item11_acl_entries_of_one_tenant_beyond_the_dataplane_are_refused():
    """A central server has no dataplane to refuse 50,000 entries: validation does it."""
    sources = [{"src": f"198.18.{i // 256 % 256}.{i % 256}/32"} for i in range(MAX_ACL_PREFIXES + 1)]
    problems = problems_of([{"id": "alpha", "prefixes": ["198.51.100.0/24"], "deny": sources}])
    assert problems == [f"{MAX_ACL_PREFIXES + 1} IPv4 allow/deny source prefixes (after expansion) exceed "
                        f"the dataplane's {MAX_ACL_PREFIXES}"]
    # TenantSet(...) from Tenant objects checks the same.
    fits = TenantSet.from_dicts([{"id": "alpha", "prefixes": ["198.51.100.0/24"], "deny": sources[:-1]}])
    extra = TenantSet.from_dicts([{"id": "beta", "prefixes": ["203.0.113.0/24"], "allow": [{"src": "192.0.2.0/24"}]}])
    with pytest.raises(ConfigError, match=f"{MAX_ACL_PREFIXES + 1} IPv4 allow/deny"):
        TenantSet([*fits, *extra])


@pytest.mark.parametrize(("name", "problem"), [
    ("Alpha\r\nBcc: victim@example.com", "contains control or other non-printable characters"),
    ("Alpha\x00", "contains control or other non-printable characters"),
    ("Alpha\u2028Two", "contains control or other non-printable characters"),
    ("A" * (NAME_MAX_CHARS + 1), f"{NAME_MAX_CHARS + 1} characters, at most {NAME_MAX_CHARS}"),
])
def test_item16_tenant_names_are_bounded_and_printable(name, problem):
    (found,) = problems_of([{"id": "alpha", "name": name, "prefixes": ["198.51.100.0/24"]}])
    assert found.startswith("tenant 'alpha': name: ") and found.endswith(problem)


def test_item16_names_in_other_scripts_are_fine():
    tenant_set = TenantSet.from_dicts([{"id": "alpha", "name": "Ålpha Hosting — 東京", "prefixes": ["198.51.100.0/24"]}])
    assert tenant_set["alpha"].name == "Ålpha Hosting — 東京"


def test_item16_contacts_must_be_mail_addresses():
    problems = problems_of([{"id": "alpha", "prefixes": ["198.51.100.0/24"], "contacts": [
        "noc@alpha.example", "NOC team", "noc@alpha.example\r\nBcc: x@y.example", "a@b", 7,
        "x" * 250 + "@alpha.example"]}])
    assert problems == [
        "tenant 'alpha': contacts[1]: 'NOC team' is not an e-mail address (like noc@example.com)",
        "tenant 'alpha': contacts[2]: 'noc@alpha.example\\r\\nBcc: x@y.example' is not an e-mail address "
        "(like noc@example.com)",
        "tenant 'alpha': contacts[3]: 'a@b' is not an e-mail address (like noc@example.com)",
        "tenant 'alpha': contacts[4]: expected an e-mail address, got an integer 7",
        "tenant 'alpha': contacts[5]: 264 characters, at most 254",
    ]
    many = [f"noc{i}@alpha.example" for i in range(33)]
    assert problems_of([{"id": "alpha", "prefixes": ["198.51.100.0/24"], "contacts": many}]) == [
        "tenant 'alpha': contacts: 33 addresses, at most 32"]
