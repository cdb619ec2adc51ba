"""The short pass path (issue 18 item 3, sw_pass_plain in seawall.c) against the full path.

The usual packet, inbound to a protected tenant whose address cache slot has nothing but the
invalid-packet filters to check, is counted and bridged on a path of its own. The slot says so
with SW_POLICY_SLOT_PLAIN, set when the slot is filled: any list, heuristic, rule, budget or
monitor mode clears it. The same frames then go through the program built normally and built
with -DSW_NO_PLAIN_PASS, both holding the same tenants and rules: every verdict, every sample and
every counter (per tenant, per destination, per rule, connection accounting) must be the same.
"""

from __future__ import annotations

import ipaddress
import itertools
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from dataplane.api import BlockedSource, Range, Rule
from dataplane.constants import Direction, DropReason, PolicyFlag, TrafficClass
from tests.bpf.conftest import (
    ALPHA_DST,
    ALPHA_DST6,
    BETA_DST,
    CLEAN_SRC,
    CLEAN_SRC6,
    DENIED_SRC,
    GAMMA_DST,
    GAMMA_DST6,
    STANDARD_TENANTS,
    UNPROTECTED_DST,
    XDP_DROP,
    XDP_REDIRECT,
    apply_tenant_dicts,
    dataplane_built_with,
    run,
    tenant_counters,
)
from tests.bpf.test_address_cache import slot_of
from tests.bpf.test_fast_parse import _counters, _delta, ipv4_frames, load_alike
from tests.bpf.test_flows import rows

# A tenant with the default policy (mitigate, invalid filters on, no list): its slots are plain.
DELTA = {"id": "delta", "name": "Delta (defaults)", "prefixes": ["192.0.2.128/25", "2001:db8:d::/48"]}
DELTA_DST = "192.0.2.200"
DELTA_DST6 = "2001:db8:d::10"
TENANTS = [*STANDARD_TENANTS, DELTA]
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08


def slot_flags(dp, address: str) -> int | None:
    """policy_flags of the current cache slot of `address` (of whichever CPU filled it last)."""
    ip = ipaddress.ip_address(address)
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip
    cache = dp.program.maps["sw_addr_cache"]
    found = []
    for cpu in range(dp.ncpus):
        leaf = cache[cache.Key((cpu << dp.program.cache_bits) | slot_of(mapped))]
        if bytes(leaf.addr) == mapped.packed and leaf.generation:
            found.append((leaf.generation, leaf.policy_flags))
    return max(found)[1] if found else None


def test_plain_slot_flag_marks_only_slots_with_nothing_but_the_invalid_filters_to_check(dp):
    applied = apply_tenant_dicts(dp, TENANTS)
    plain = int(PolicyFlag.SLOT_PLAIN)

    def flags_after_a_packet(dst: str) -> int:
        frame = bytes(ETH / (IP(src=CLEAN_SRC, dst=dst) if ":" not in dst else IPv6(src=CLEAN_SRC6, dst=dst))
                      / TCP(sport=40000, dport=443, flags="A"))
        assert run(dp, frame) == XDP_REDIRECT
        flags = slot_flags(dp, dst)
        assert flags is not None, f"no cache slot for {dst}"
        return flags

    for dst in (DELTA_DST, DELTA_DST6, GAMMA_DST, GAMMA_DST6):   # defaults; gamma without invalid filters
        assert flags_after_a_packet(dst) & plain, dst
    for dst in (ALPHA_DST, ALPHA_DST6, BETA_DST, UNPROTECTED_DST):  # lists, monitor mode, no tenant
        assert not flags_after_a_packet(dst) & plain, dst
    rule = dp.add_rule(Rule(tenant_idx=applied["delta"], dst=ipaddress.ip_address(DELTA_DST), proto=17,
                            dport=Range(28960, 28960), comment="plain test"))
    try:
        assert not flags_after_a_packet(DELTA_DST) & plain, "a rule of the address"
        assert flags_after_a_packet(DELTA_DST6) & plain, "another address of the tenant keeps it"
    finally:
        dp.remove_rule(rule)
    assert flags_after_a_packet(DELTA_DST) & plain, "the rule gone"
    dp.set_class_budgets(applied["delta"], {TrafficClass.UDP: 1000})
    try:
        assert not flags_after_a_packet(DELTA_DST) & plain, "a class budget"
    finally:
        dp.set_class_budgets(applied["delta"], {TrafficClass.UDP: 0})
    assert flags_after_a_packet(DELTA_DST) & plain


@pytest.fixture(scope="module")
def short_path():
    """The program as built for use, fresh: the tier's shared one holds flows and splices of
    earlier tests, which this comparison must not inherit."""
    yield from dataplane_built_with()


@pytest.fixture(scope="module")
def full_path():
    """The program built without the short pass path."""
    yield from dataplane_built_with("-DSW_NO_PLAIN_PASS")


def grid_frames() -> list[tuple[Direction, bytes]]:
    """Both directions of every protocol and TCP flag set that matters to the short path and to
    connection accounting (handshakes, data, requests, closes, bad flags, zero ports, land), both
    families, to plain and not plain tenants and to no tenant, padded or not."""
    out = []
    dsts = [(DELTA_DST, CLEAN_SRC), (GAMMA_DST, CLEAN_SRC), (ALPHA_DST, CLEAN_SRC), (BETA_DST, CLEAN_SRC),
            (UNPROTECTED_DST, CLEAN_SRC), (DELTA_DST, DENIED_SRC), (DELTA_DST, DELTA_DST),
            (DELTA_DST6, CLEAN_SRC6), (GAMMA_DST6, CLEAN_SRC6), (ALPHA_DST6, CLEAN_SRC6)]
    flags = [SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST | ACK, 0x00, SYN | FIN]
    payloads = [b"", b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", b"x" * 30]
    for (server, client), pad in itertools.product(dsts, (0, 60)):
        ip_in = IPv6(src=client, dst=server) if ":" in server else IP(src=client, dst=server)
        ip_out = IPv6(src=server, dst=client) if ":" in server else IP(src=server, dst=client)
        l4s = [(TCP(sport=40000, dport=443, flags=f), TCP(sport=443, dport=40000, flags=f), p)
               for f, p in itertools.product(flags, payloads)]
        l4s += [(UDP(sport=5353, dport=53), UDP(sport=53, dport=5353), b"q"),
                (UDP(sport=0, dport=53), UDP(sport=53, dport=0), b""),
                (TCP(sport=40000, dport=0, flags=ACK), TCP(sport=0, dport=40000, flags=ACK), b"")]
        if ":" not in server:
            l4s.append((ICMP(), ICMP(), b"ping"))
        for inbound, outbound, payload in l4s:
            for direction, ip, l4 in ((Direction.INBOUND, ip_in, inbound), (Direction.OUTBOUND, ip_out, outbound)):
                frame = bytes(ETH / ip / l4 / payload)
                out.append((direction, frame + bytes(max(0, pad - len(frame)))))
    return out


def conversation() -> list[tuple[Direction, bytes]]:
    """A whole connection to a plain tenant's server: handshake, request, reply, close."""
    def seg(direction: Direction, flags: int, payload: bytes = b"") -> tuple[Direction, bytes]:
        if direction is Direction.INBOUND:
            return direction, bytes(ETH / IP(src=CLEAN_SRC, dst=DELTA_DST) / TCP(sport=41000, dport=80, flags=flags)
                                    / payload)
        return direction, bytes(ETH / IP(src=DELTA_DST, dst=CLEAN_SRC) / TCP(sport=80, dport=41000, flags=flags)
                                / payload)
    i, o = Direction.INBOUND, Direction.OUTBOUND
    return [seg(i, SYN), seg(o, SYN | ACK), seg(i, ACK), seg(i, ACK | PSH, b"GET / HTTP/1.1\r\n\r\n"), seg(o, ACK),
            seg(o, ACK | PSH, b"HTTP/1.1 200 OK\r\n\r\n"), seg(i, ACK), seg(i, FIN | ACK), seg(o, FIN | ACK),
            seg(i, ACK)]


def test_plain_and_full_pass_path_agree(short_path, full_path):
    both = [short_path, full_path]
    installed, applied = load_alike(both, TENANTS)
    before = [_counters(d, ids) for d, ids in zip(both, installed, strict=True)]
    flows_before = [(rows(d, False), rows(d, True)) for d in both]

    def outcome(d, direction: Direction, frame: bytes) -> tuple:
        action, _ = d.test_run(frame, direction)
        return action, [(s.tenant_idx, s.reason, s.dropped, s.direction) for s in d.drain_samples()]

    def agree(direction: Direction, frame: bytes) -> None:
        got = [outcome(d, direction, frame) for d in both]
        assert got[0] == got[1], f"frame {frame.hex()} {direction.name}: short {got[0]}, full {got[1]}"

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(frame=ipv4_frames(), direction=st.sampled_from(list(Direction)))
    def random_frames(frame: bytes, direction: Direction) -> None:
        agree(direction, frame)

    try:
        for direction, frame in [*conversation(), *grid_frames(), *conversation()]:
            agree(direction, frame)
        random_frames()
        deltas = [_delta(b, _counters(d, ids)) for b, d, ids in zip(before, both, installed, strict=True)]
        assert any(k.startswith(f"tenant {applied['delta']}") for k in deltas[0]), "the plain tenant saw no packet"
        assert deltas[0] == deltas[1]
        flows_after = [(rows(d, False), rows(d, True)) for d in both]
        assert flows_after[0] != flows_before[0], "connection accounting saw nothing"
        assert flows_after[0] == flows_after[1]
    finally:
        for d, ids in zip(both, installed, strict=True):
            d.set_sample_every(0)
            d.drain_samples(limit=1 << 20)
            for rid in ids:
                d.remove_rule(rid)


def test_a_blocked_source_is_dropped_at_a_plain_slot(dp):
    """The short path leaves to the full one while the block list holds anything (the gate bit in
    the configuration): a blocked source's segment to an address whose slot is plain is dropped as
    BLOCKED, and passes again once unblocked. (The agreement test above runs with no block, so it
    cannot see the short path skip the list.)"""
    applied = apply_tenant_dicts(dp, TENANTS)
    bot = "198.19.91.7"
    frame = bytes(ETH / IP(src=bot, dst=DELTA_DST) / TCP(sport=40001, dport=80, flags="A"))
    assert run(dp, frame) == XDP_REDIRECT
    assert slot_flags(dp, DELTA_DST) & int(PolicyFlag.SLOT_PLAIN), "delta's slot is plain"
    block = BlockedSource(applied["delta"], ipaddress.ip_address(bot), time.monotonic_ns() + 3600 * 10**9, "test")
    dp.block_sources([block])
    try:
        before = tenant_counters(dp, applied["delta"]).reason_packets[0, DropReason.BLOCKED]
        assert slot_flags(dp, DELTA_DST) & int(PolicyFlag.SLOT_PLAIN), "the block is not in the slot"
        assert run(dp, frame) == XDP_DROP
        assert tenant_counters(dp, applied["delta"]).reason_packets[0, DropReason.BLOCKED] - before == 1
    finally:
        dp.unblock_source(applied["delta"], ipaddress.ip_address(bot))
    assert run(dp, frame) == XDP_REDIRECT


def test_a_spliced_connection_at_a_plain_slot_is_translated_also_in_a_first_fragment(dp):
    """The short path asks the splice gate for every class that can carry a TCP header, the class
    FRAGMENT too: a connection spliced while its server was under a SYN mark outlives the mark, and
    at the slot, plain again, its segments are still translated, a first fragment (more-fragments
    set, the whole TCP header in it) as well. (The agreement test above opens no splice.)"""
    from tests.bpf.test_synauth import MOD, ack, open_splice, run_frame  # noqa: PLC0415

    applied = apply_tenant_dicts(dp, TENANTS)
    client, sport, client_isn, server_isn = "198.19.92.7", 50500, 100, 7000
    cookie = open_splice(dp, applied["delta"], client, DELTA_DST, sport, client_isn, server_isn)
    segment = Ether(ack(client, DELTA_DST, sport, seq=client_isn + 1, ack_no=cookie + 1, flags="PA", payload=b"x"))
    assert run(dp, bytes(segment)) == XDP_REDIRECT
    assert slot_flags(dp, DELTA_DST) & int(PolicyFlag.SLOT_PLAIN), "the mark gone, the slot is plain"
    whole = segment.copy()
    first_fragment = segment.copy()
    first_fragment[IP].flags = "MF"
    for frame in (whole, first_fragment):
        del frame[IP].chksum
        action, out = run_frame(dp, bytes(frame))
        assert action == XDP_REDIRECT and Ether(out)[TCP].ack == (server_isn + 1) % MOD, Ether(out)[IP].flags
