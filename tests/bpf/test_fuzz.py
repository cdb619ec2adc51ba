"""Property-based fuzz: random frames against the reference model (tests/bpf/reference_model.py).

Frames are well-formed packets of every header type the program parses (scapy), then maybe truncated,
maybe corrupted by byte flips, plus pure garbage. For each, in a random direction, the program's action,
the sample's tenant and reason, and whether a sample exists at all must be what the spec says.

The policy engine's Python twin of the program's rule matcher (`policy.packets.match_rule`, which
decides whether a signature spares legitimate samples) runs against the program too: random rules
and random frames, the program's rule counter against `match_rule` on the frame's sample.
"""

from __future__ import annotations

import collections
import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.packet import Raw

from dataplane.api import Range, Rule
from dataplane.constants import SAMPLE_BYTES, Direction, DropReason, RuleAction
from policy.packets import match_rule, parse_samples
from tests.bpf import frames
from tests.bpf.conftest import (
    ALLOWED_DNS_SRC6,
    ALLOWED_HTTPS_SRC,
    ALLOWED_SRC,
    ALPHA_DST,
    ALPHA_DST6,
    BETA_DST,
    BETA_DST6,
    CLEAN_SRC,
    CLEAN_SRC6,
    DENIED_SRC,
    DENIED_SRC6,
    GAMMA_DST,
    GAMMA_DST6,
    UNPROTECTED_DST,
    UNPROTECTED_DST6,
    XDP_DROP,
    XDP_REDIRECT,
)
from tests.bpf.reference_model import ReferenceModel

V4_ADDRESSES = [ALPHA_DST, "198.51.100.11", BETA_DST, GAMMA_DST, UNPROTECTED_DST, CLEAN_SRC, ALLOWED_SRC,
                ALLOWED_HTTPS_SRC, DENIED_SRC, "224.0.0.5", "255.255.255.255"]
V6_ADDRESSES = [ALPHA_DST6, "2001:db8:a::11", BETA_DST6, GAMMA_DST6, UNPROTECTED_DST6, CLEAN_SRC6,
                ALLOWED_DNS_SRC6, DENIED_SRC6, "ff02::1", "fe80::1"]
# IPv4-mapped IPv6 addresses (::ffff:198.51.100.10) are left out: they share the program's address cache slot
# with the IPv4 address, a stateful bug the stateless model reports only as a flaky failure; see
# test_policy.py::test_ipv6_traffic_to_a_v4_mapped_address_does_not_change_the_ipv4_verdict.
VLAN_TAGS = st.one_of(
    st.just(()),
    st.lists(st.tuples(st.sampled_from([frames.ETH_P_8021Q, frames.ETH_P_8021AD]), st.integers(0, 4095)),
             min_size=1, max_size=3).map(tuple))
PORTS = st.one_of(st.sampled_from([0, 19, 53, 80, 123, 443, 9999]), st.integers(0, 65535))
PAYLOADS = st.one_of(st.sampled_from([b"", b"\x00\x01GETxxxx", b"abcd\xde\xadzz"]), st.binary(max_size=64))
EXTENSIONS = st.one_of(st.just([]), st.lists(st.sampled_from(list(frames.EXTENSION_HEADERS)), max_size=8))


@st.composite
def l4_layers(draw, v6: bool):
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "other"]))
    payload = Raw(draw(PAYLOADS))
    if kind == "tcp":
        options = draw(st.sampled_from([[], [("MSS", 1460)], [("NOP", None)] * 4]))
        return TCP(sport=draw(PORTS), dport=draw(PORTS), flags=draw(st.integers(0, 255)), options=options) / payload
    if kind == "udp":
        return UDP(sport=draw(PORTS), dport=draw(PORTS)) / payload
    if kind == "icmp":
        return (ICMPv6EchoRequest(data=payload.load) if v6 else ICMP() / payload)
    return payload


@st.composite
def well_formed_frames(draw, targets: tuple[str, str] | None = None) -> bytes:
    """`targets`: (IPv4, IPv6) destination of every frame; default: drawn from the pools."""
    v6 = draw(st.booleans())
    pool = V6_ADDRESSES if v6 else V4_ADDRESSES
    # mostly the mitigated tenant
    dst = draw(st.sampled_from(pool[:2] * 3 + pool)) if targets is None else targets[v6]
    src = draw(st.sampled_from(pool + [dst]))  # sometimes land
    upper = draw(l4_layers(v6))
    ttl = draw(st.sampled_from([1, 64, 255]))
    vlans = draw(VLAN_TAGS)
    if v6:
        chain = draw(EXTENSIONS)
        other_proto = draw(st.sampled_from([59, 47, 50, 132]))
        if isinstance(upper, Raw):
            packet = frames.ipv6_with_extensions(src, dst, chain, upper)
            body = bytearray(packet[14:])
            if not chain:
                body[6] = other_proto
            packet_bytes = bytes(body)
        else:
            packet_bytes = frames.ipv6_with_extensions(src, dst, chain, upper)[14:]
        head = bytearray(packet_bytes)
        head[7] = ttl
        return bytes(frames.ether(vlans) / IPv6(bytes(head)))
    fragment = draw(st.sampled_from(["none", "none", "first", "later"]))
    fields = {"flags": "MF" if fragment == "first" else 0, "frag": draw(st.integers(1, 8191)) if fragment == "later"
              else 0, "ttl": ttl}
    options = draw(st.integers(0, 10))
    if options:
        fields["options"] = Raw(b"\x01" * (4 * options - 1) + b"\x00")
    if isinstance(upper, Raw):
        fields["proto"] = draw(st.sampled_from([47, 50, 132, 6, 17]))
    return bytes(frames.ether(vlans) / IP(src=src, dst=dst, **fields) / upper)


@st.composite
def mutated(draw, frame_strategy) -> bytes:
    frame = bytearray(draw(frame_strategy))
    for _ in range(draw(st.integers(0, 3))):
        position = draw(st.integers(0, len(frame) - 1))
        frame[position] ^= draw(st.integers(1, 255))
    if draw(st.booleans()):
        frame = frame[:draw(st.integers(14, len(frame)))]
    elif draw(st.integers(0, 4)) == 0:
        frame += draw(st.binary(min_size=1, max_size=20))  # Ethernet padding or trailing junk
    return bytes(frame)


GARBAGE = st.builds(lambda ethertype, body: bytes(12) + ethertype + body,
                    st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x81\x00", b"\x88\xa8", b"\x08\x06", b"\x12\x34"]),
                    st.binary(max_size=120))
FRAMES = st.one_of(well_formed_frames(), well_formed_frames(), mutated(well_formed_frames()), GARBAGE)


def fuzz_rules(alpha: int, beta: int) -> list[Rule]:
    """Stateless rules (no rate limit: the model has no clock) over the addresses of the pools."""
    a, a2, a6 = (ipaddress.ip_address(x) for x in (ALPHA_DST, "198.51.100.11", ALPHA_DST6))
    return [
        Rule(tenant_idx=alpha, dst=a, action=RuleAction.COUNT, proto=17),
        Rule(tenant_idx=alpha, dst=a, proto=17, dport=Range(123, 123), length=Range(28, 600)),
        Rule(tenant_idx=alpha, dst=a, proto=6, tcp_flags=(0x12, 0x02), ttl=Range(0, 64)),
        Rule(tenant_idx=alpha, dst=a2, payload=b"\x00\x01GET"),
        Rule(tenant_idx=alpha, dst=a6, payload=b"\0\0\0\0\xde\xad", payload_mask=b"\0\0\0\0\xff\xff"),
        Rule(tenant_idx=alpha, dst=a6, fragments=True, proto=17),
        Rule(tenant_idx=alpha, dst=None, sport=Range(9999, 9999), proto=6),
        Rule(tenant_idx=beta, dst=None, fragments=False, proto=1),
    ]


def test_program_verdicts_equal_the_reference_model(dp, tenants, rules):
    for rule in fuzz_rules(tenants["alpha"], tenants["beta"]):
        rules.add(rule)
    model = ReferenceModel(tenants.tenant_set, tenants.indices, dp.installed_rules())
    dp.set_sample_every(1)

    @settings(max_examples=1500, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(frame=FRAMES, direction=st.sampled_from(list(Direction)))
    def check(frame: bytes, direction: Direction) -> None:
        expected = model.expect(frame, direction)
        outcomes[(expected.action, min(expected.reasons, default=DropReason.NONE).name,
                  expected.tenant_idx is not None)] += 1
        action, _ = dp.test_run(frame, direction)
        samples = dp.drain_samples()
        context = f"frame {frame.hex()} {direction.name}: expected {expected}, got action {action}, {samples}"
        assert action in (XDP_DROP, XDP_REDIRECT), context  # never ABORTED, never PASS (to the host)
        assert action == expected.action, context
        if expected.tenant_idx is None:
            assert samples == [], context
            return
        assert len(samples) == 1, context
        sample = samples[0]
        assert sample.tenant_idx == expected.tenant_idx, context
        assert sample.dropped == (expected.action == XDP_DROP), context
        if expected.reasons:
            assert sample.reason in expected.reasons, context
        else:
            assert sample.reason == DropReason.NONE, context
        assert sample.data == frame[:len(sample.data)] and sample.wire_length == len(frame), context

    outcomes: collections.Counter = collections.Counter()
    check()
    print("fuzz outcomes (action, a reason, parsed as IP):", dict(outcomes))
    # The fuzz must reach the interesting verdicts, or a passing run proves little.
    reached = {reason for (_, reason, _) in outcomes}
    assert {"NONE", "DENY_LIST", "BAD_LENGTH", "BAD_TCP_FLAGS", "LAND", "PORT_ZERO", "RULE"} <= reached


# Frames to gamma, the tenant without lists or invalid-packet filters: every parsed inbound frame to it
# reaches the rule matcher. Short enough that the sample holds the whole frame (the twin sees what
# the program saw).
GAMMA_FRAMES = st.one_of(well_formed_frames((GAMMA_DST, GAMMA_DST6)),
                         mutated(well_formed_frames((GAMMA_DST, GAMMA_DST6)))).filter(
    lambda frame: len(frame) <= SAMPLE_BYTES)
RULE_PAYLOADS = st.sampled_from([b"\x00\x01GET", b"abcd", b"\x00\x01GETxxx", b"xxxx", b"\xde\xad", b"\x00"])


def _maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """None (the field is not checked) three times in four: rules of a few fields match often."""
    return st.one_of(st.none(), st.none(), st.none(), strategy)


def _ranges(values: st.SearchStrategy[int]) -> st.SearchStrategy[Range | None]:
    return _maybe(st.tuples(values, values).map(lambda ab: Range(min(ab), max(ab))))


@st.composite
def gamma_rules(draw, gamma: int) -> Rule:
    """Count-only rules of every field, with flag values that have bits outside their mask, payloads with
    and without masks."""
    payload = draw(_maybe(RULE_PAYLOADS))
    mask = None
    if payload is not None and draw(st.booleans()):
        mask = draw(st.binary(min_size=len(payload), max_size=len(payload)))
    return Rule(
        tenant_idx=gamma,
        dst=draw(st.sampled_from([None, ipaddress.ip_address(GAMMA_DST), ipaddress.ip_address(GAMMA_DST6)])),
        action=RuleAction.COUNT,
        proto=draw(_maybe(st.sampled_from([1, 6, 17, 58, 47]))),
        sport=draw(_ranges(PORTS)),
        dport=draw(_ranges(PORTS)),
        length=draw(_ranges(st.integers(0, 200))),
        ttl=draw(_ranges(st.sampled_from([0, 1, 2, 63, 64, 65, 254, 255]))),
        tcp_flags=draw(_maybe(st.tuples(st.sampled_from([0x02, 0x12, 0x10, 0x3F, 0x00]), st.integers(0, 255)))),
        payload=payload, payload_mask=mask,
        fragments=draw(_maybe(st.booleans())))


def test_match_rule_agrees_with_the_program(dp, tenants):
    """For random rules and frames, the program counts a rule match exactly where `match_rule` finds one
    in the frame's sample (the program is the truth)."""
    gamma = tenants["gamma"]
    dp.set_sample_every(1)
    seen = collections.Counter()

    @settings(max_examples=400, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                     HealthCheck.filter_too_much])
    @given(rule=gamma_rules(gamma), cases=st.lists(st.tuples(GAMMA_FRAMES, st.sampled_from(list(Direction))),
                                                  min_size=1, max_size=6))
    def check(rule: Rule, cases: list[tuple[bytes, Direction]]) -> None:
        rule_id = dp.add_rule(rule)
        try:
            for frame, direction in cases:
                before = dp.read_rule_counters()[rule_id].matched_packets
                dp.test_run(frame, direction)
                samples = dp.drain_samples()
                matched = dp.read_rule_counters()[rule_id].matched_packets - before
                if len(samples) != 1 or samples[0].reason != DropReason.NONE:
                    continue     # dropped before the rules (or no tenant): the matcher never ran
                expected = bool(match_rule(rule, parse_samples(samples))[0])
                seen[(direction.name, expected)] += 1
                assert matched == int(expected), f"rule {rule}, frame {frame.hex()} {direction.name}: " \
                    f"the program counted {matched}, match_rule says {expected}"
        finally:
            dp.remove_rule(rule_id)

    check()
    print("match_rule fuzz (direction, matched):", dict(seen))
    # Both answers, on inbound frames, often enough to mean something.
    assert seen[("INBOUND", True)] >= 50 and seen[("INBOUND", False)] >= 50, dict(seen)
