"""Shared fixtures of the bpf tier: one compiled Dataplane per session, a known tenant set per test.

Compiling the XDP program costs seconds of CPU, so every test shares one
`Dataplane` (unpinned, unattached: verdicts come from BPF_PROG_TEST_RUN). Each
test that needs tenants takes the `tenants` fixture, which applies the standard
tenant set below, and installs rules through `rules`, which removes them again
in teardown, so no test sees another's state. Counters are cumulative across
tests: assert on deltas (`counter_delta`), never on absolute values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
from collections.abc import Iterator

import numpy as np
import pytest

from dataplane.api import Rule, TenantCounters
from dataplane.constants import Direction
from tenants import TenantSet, assign_indices, compile_tenant_set

# XDP actions as BPF_PROG_TEST_RUN returns them.
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)

# Addresses (documentation and benchmarking ranges only). Sources in 198.18.0.0/16 are on
# alpha's and beta's deny lists; CLEAN_SRC* are on no list of any tenant.
CLEAN_SRC = "198.19.7.7"
CLEAN_SRC6 = "2001:db8:5::1"
ALLOWED_SRC = "203.0.113.5"          # alpha allow: any protocol
ALLOWED_HTTPS_SRC = "198.18.5.9"     # alpha allow: tcp dport 443 only, inside the denied 198.18.0.0/16
ALLOWED_DNS_SRC6 = "2001:db8:f00d::53"  # alpha allow: udp sport 53 only
DENIED_SRC = "198.18.9.9"
DENIED_SRC6 = "2001:db8:bad::1"
ALPHA_DST = "198.51.100.10"
ALPHA_DST6 = "2001:db8:a::10"
BETA_DST = "198.51.100.200"          # monitor mode
BETA_DST6 = "2001:db8:b::10"
GAMMA_DST = "203.0.113.200"          # invalid_filters = false
GAMMA_DST6 = "2001:db8:c::10"
UNPROTECTED_DST = "192.0.2.10"       # no tenant owns 192.0.2.0/24 in the standard set
UNPROTECTED_DST6 = "2001:db8:ffff::10"

STANDARD_TENANTS: list[dict[str, object]] = [
    {
        "id": "alpha", "name": "Alpha (mitigate)",
        "prefixes": ["198.51.100.0/25", "2001:db8:a::/48"],
        "mode": "mitigate",
        "allow": [
            {"src": "203.0.113.0/28"},
            {"src": "198.18.5.0/24", "proto": "tcp", "dport": 443},
            {"src": "2001:db8:f00d::/48", "proto": "udp", "sport": 53},
        ],
        "deny": [
            {"src": "198.18.0.0/16"},
            {"src": "2001:db8:bad::/48"},
            {"proto": "udp", "dport": 19},  # no source: both families
        ],
    },
    {
        "id": "beta", "name": "Beta (monitor)",
        "prefixes": ["198.51.100.128/25", "2001:db8:b::/48"],
        "mode": "monitor",
        "deny": [{"src": "198.18.0.0/16"}],
    },
    {
        "id": "gamma", "name": "Gamma (no invalid filters)",
        "prefixes": ["203.0.113.128/25", "2001:db8:c::/48"],
        "policy": {"invalid_filters": False},
    },
]


@dataclasses.dataclass(frozen=True, slots=True)
class AppliedTenants:
    """A tenant set as loaded into the dataplane, with the index of each tenant."""

    tenant_set: TenantSet
    indices: dict[str, int]

    def __getitem__(self, tenant_id: str) -> int:
        return self.indices[tenant_id]


def apply_tenant_dicts(dp, tables: list[dict[str, object]], previous: dict[str, int] | None = None
                       ) -> AppliedTenants:
    tenant_set = TenantSet.from_dicts(tables)
    indices = assign_indices(tenant_set.ids, previous or {})
    dp.apply_tenants(compile_tenant_set(tenant_set, indices))
    return AppliedTenants(tenant_set, indices)


def dataplane_built_with(*defines: str) -> Iterator:
    """A Dataplane compiled with extra -D flags: the test builds that hold a fast path to the code
    it shortcuts (-DSW_NO_FAST_PARSE, -DSW_NO_RULE_BRIEFS). Yields it and closes it."""
    from dataplane import Dataplane  # noqa: PLC0415 - the bpf tier may be skipped before this

    dp = Dataplane(defines=defines)
    yield dp
    dp.close()


@pytest.fixture(scope="session")
def dataplane():
    """The compiled program, shared by the whole tier (imports bcc only when the tier runs)."""
    from dataplane import Dataplane  # noqa: PLC0415 - the bpf tier may be skipped before this

    dp = Dataplane()
    yield dp
    dp.close()


@pytest.fixture
def dp(dataplane):
    """The shared dataplane, with sampling off and the sample ring empty before and after the test."""
    dataplane.set_sample_every(0)
    dataplane.drain_samples(limit=1 << 20)
    yield dataplane
    dataplane.set_sample_every(0)
    dataplane.drain_samples(limit=1 << 20)


@pytest.fixture
def tenants(dp) -> AppliedTenants:
    """The standard tenant set, freshly applied."""
    return apply_tenant_dicts(dp, STANDARD_TENANTS)


@pytest.fixture
def rules(dp) -> Iterator[RuleInstaller]:
    installer = RuleInstaller(dp)
    yield installer
    installer.remove_all()


class RuleInstaller:
    """Adds rules for one test and removes every one of them in teardown, failed test or not."""

    def __init__(self, dp) -> None:
        self.dp = dp
        self.ids: list[int] = []

    def add(self, rule: Rule) -> int:
        rule_id = self.dp.add_rule(rule)
        self.ids.append(rule_id)
        return rule_id

    def remove(self, rule_id: int) -> None:
        self.ids.remove(rule_id)
        self.dp.remove_rule(rule_id)

    def remove_all(self) -> None:
        for rule_id in list(self.ids):
            with contextlib.suppress(KeyError):  # a test may have removed it itself
                self.dp.remove_rule(rule_id)
        self.ids.clear()


def run(dp, frame: bytes, direction: Direction = Direction.INBOUND) -> int:
    """The XDP action of one frame."""
    action, _ = dp.test_run(frame, direction)
    return action


def tenant_counters(dp, index: int) -> TenantCounters:
    return dp.read_tenant_counters([index])[index]


def counter_delta(before: TenantCounters, after: TenantCounters) -> dict[str, np.ndarray]:
    """after - before for every field of TenantCounters (signed, so a decrease shows)."""
    return {field.name: getattr(after, field.name).astype(np.int64) - getattr(before, field.name).astype(np.int64)
            for field in dataclasses.fields(TenantCounters)}


def destination_row(dp, address: str) -> dict[str, np.ndarray | int] | None:
    """Per-destination counters of one address, or None when the dataplane has none."""
    counters = dp.read_destination_counters()
    wanted = ipaddress.ip_address(address)
    for row, addr in enumerate(counters.addresses):
        if addr == wanted:
            return {"tenant_idx": int(counters.tenant_idx[row]),
                    "packets": counters.packets[row].astype(np.int64),
                    "bytes": counters.bytes[row].astype(np.int64),
                    "dropped_packets": int(counters.dropped_packets[row])}
    return None


def observe(dp, frame: bytes, direction: Direction = Direction.INBOUND):
    """(XDP action, the frame's sample or None): sampling every packet shows tenant and reason."""
    dp.set_sample_every(1)
    action = run(dp, frame, direction)
    samples = dp.drain_samples()
    assert len(samples) <= 1, f"one frame produced {len(samples)} samples"
    return action, (samples[0] if samples else None)
