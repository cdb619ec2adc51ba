"""Rule briefs (one range test over packed lanes, seawall.c sw_brief_matches) against the full matcher.

The same random rules and frames go through the program built normally and built with
-DSW_NO_RULE_BRIEFS, where every rule is read and matched field by field (sw_rule_matches):
verdicts and every rule's counters must be the same. Rules draw ranges at and around the lane
limits (0, 65,535, single values), protocols with and without ports, fragment conditions and
some fields only the full rule holds; frames draw ports and lengths at the rules' bounds,
IPv4 and IPv6, fragments (first and later) and truncated L4 headers.
"""

from __future__ import annotations

import dataclasses
import ipaddress

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether

from dataplane.api import Range, Rule
from dataplane.constants import RuleAction
from tests.bpf.conftest import (
    ALPHA_DST,
    ALPHA_DST6,
    CLEAN_SRC,
    CLEAN_SRC6,
    STANDARD_TENANTS,
    apply_tenant_dicts,
    dataplane_built_with,
)

BOUNDS = [0, 1, 52, 53, 123, 443, 1000, 28960, 65534, 65535]
PROTOCOLS = [None, 6, 17, 1, 58]


def random_rules(rng: np.random.Generator, alpha: int, count: int) -> list[Rule]:
    def port_range() -> Range | None:
        kind = rng.integers(0, 4)
        if kind == 0:
            return None
        lo = int(rng.choice(BOUNDS)) if rng.integers(0, 2) else int(rng.integers(0, 65536))
        hi = lo if kind == 1 else (65535 if kind == 2 else int(rng.integers(lo, 65536)))
        return Range(lo, hi)

    rules = []
    for n in range(count):
        dst = ipaddress.ip_address(ALPHA_DST if n % 2 == 0 else ALPHA_DST6)
        length = None
        if rng.integers(0, 2):
            lo = int(rng.integers(20, 700))
            length = Range(lo, int(rng.integers(lo, 1600)) if rng.integers(0, 3) else 65535)
        full_only = rng.integers(0, 6) == 0          # a field only the full rule holds
        rules.append(Rule(
            tenant_idx=alpha, dst=dst, action=RuleAction.DROP if rng.integers(0, 3) else RuleAction.COUNT,
            proto=PROTOCOLS[int(rng.integers(0, len(PROTOCOLS)))], sport=port_range(), dport=port_range(),
            length=length, fragments=[None, None, True, False][int(rng.integers(0, 4))],
            ttl=Range(0, 100) if full_only else None, comment=f"brief {n}"))
    return rules


@st.composite
def frames(draw) -> bytes:
    v6 = draw(st.booleans())
    ports = st.one_of(st.sampled_from(BOUNDS), st.integers(0, 65535))
    size = draw(st.one_of(st.sampled_from([0, 8, 500, 1400]), st.integers(0, 1500)))
    kind = draw(st.sampled_from(["udp", "tcp", "icmp"]))
    if kind == "udp":
        l4 = UDP(sport=draw(ports), dport=draw(ports)) / bytes(size)
    elif kind == "tcp":
        l4 = TCP(sport=draw(ports), dport=draw(ports), flags="A") / bytes(size)
    else:
        l4 = ICMP() / bytes(size)
    fragment = draw(st.sampled_from(["none", "none", "first", "later"]))
    if v6:
        ip = IPv6(src=CLEAN_SRC6, dst=ALPHA_DST6, hlim=64)
        if fragment != "none":
            ip = ip / IPv6ExtHdrFragment(m=1 if fragment == "first" else 0, offset=0 if fragment == "first" else 8)
    else:
        ip = IP(src=CLEAN_SRC, dst=ALPHA_DST, ttl=64)
        if fragment != "none":
            ip.flags, ip.frag = ("MF", 0) if fragment == "first" else (0, 8)
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / l4)
    if draw(st.integers(0, 9)) == 0:       # cut inside the L4 header: no ports
        frame = frame[:len(frame) - len(bytes(l4)) + draw(st.integers(0, 3))]
    return frame


def fragment_rules(alpha: int) -> list[Rule]:
    """The fragment-state lane: every fragment condition with and without an L4 condition, per family."""
    out = []
    for dst in (ALPHA_DST, ALPHA_DST6):
        for fragments in (None, True, False):
            for dport in (None, Range(53, 53)):
                out.append(Rule(tenant_idx=alpha, dst=ipaddress.ip_address(dst), action=RuleAction.COUNT, proto=17,
                                dport=dport, fragments=fragments, comment=f"fragments {fragments} dport {dport}"))
    return out


def fragment_grid() -> list[bytes]:
    out = []
    for v6 in (False, True):
        for fragment in ("none", "first", "later"):
            for dport in (53, 54):
                l4 = UDP(sport=1000, dport=dport) / bytes(16)
                if v6:
                    ip = IPv6(src=CLEAN_SRC6, dst=ALPHA_DST6)
                    if fragment != "none":
                        ip = ip / IPv6ExtHdrFragment(m=1 if fragment == "first" else 0,
                                                     offset=0 if fragment == "first" else 8)
                else:
                    ip = IP(src=CLEAN_SRC, dst=ALPHA_DST)
                    if fragment != "none":
                        ip.flags, ip.frag = ("MF", 0) if fragment == "first" else (0, 8)
                out.append(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / l4))
    return out


@pytest.fixture(scope="module")
def full_matcher():
    """The program built without rule briefs."""
    yield from dataplane_built_with("-DSW_NO_RULE_BRIEFS")


def _rule_counters(dp, ids: list[int]) -> list[tuple[int, ...]]:
    counters = dp.read_rule_counters()
    return [dataclasses.astuple(counters[rid]) for rid in ids]


def test_rule_briefs_match_what_the_full_matcher_matches(dp, full_matcher):
    both = [dp, full_matcher]
    alpha = [apply_tenant_dicts(d, STANDARD_TENANTS)["alpha"] for d in both]
    rng = np.random.default_rng(7)
    matched = 0
    for round_ in range(7):
        rules = fragment_rules(alpha[0]) if round_ == 0 else random_rules(rng, alpha[0], 8)
        ids = [[d.add_rule(dataclasses.replace(r, tenant_idx=a)) for r in rules] for d, a in zip(both, alpha, strict=True)]
        try:
            @settings(max_examples=150, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
            @given(frame=frames())
            def check(frame: bytes) -> None:
                actions = [d.test_run(frame)[0] for d in both]
                assert actions[0] == actions[1], f"frame {frame.hex()}: briefs {actions[0]}, full {actions[1]}"

            if round_ == 0:
                for frame in fragment_grid():
                    actions = [d.test_run(frame)[0] for d in both]
                    assert actions[0] == actions[1], f"frame {frame.hex()}: briefs {actions[0]}, full {actions[1]}"
            else:
                check()
            counters = [_rule_counters(d, i) for d, i in zip(both, ids, strict=True)]
            assert counters[0] == counters[1], f"rules {rules}: briefs {counters[0]}, full {counters[1]}"
            matched += sum(c[0] > 0 for c in counters[0])
        finally:
            for d, i in zip(both, ids, strict=True):
                for rid in i:
                    d.remove_rule(rid)
    assert matched >= 16, "the rules hardly matched anything: the briefs were not exercised"
