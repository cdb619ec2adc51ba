"""The fast parser (sw_parse_fast: untagged IPv4 TCP/UDP) against the full parser (sw_parse_frame).

The same frames go through the program built normally and built with -DSW_NO_FAST_PARSE, both
holding the same tenants and rules: every verdict, every sample's tenant and reason, and every
counter (per tenant, per destination, per rule) must be the same. The frames are the fast path's
own domain and its edges: a grid of every combination that decides a verdict there, then random
frames (hypothesis) with random ports, TCP flags, TTLs and payloads, lying IP, UDP and TCP header
lengths, options, fragments, VLAN tags and truncation.
"""

from __future__ import annotations

import dataclasses
import itertools
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from dataplane.constants import Direction
from tests.bpf.conftest import (
    ALLOWED_SRC,
    ALPHA_DST,
    BETA_DST,
    CLEAN_SRC,
    DENIED_SRC,
    GAMMA_DST,
    STANDARD_TENANTS,
    UNPROTECTED_DST,
    apply_tenant_dicts,
    dataplane_built_with,
)
from tests.bpf.test_fuzz import fuzz_rules

ADDRESSES = [ALPHA_DST, "198.51.100.11", BETA_DST, GAMMA_DST, UNPROTECTED_DST, CLEAN_SRC, DENIED_SRC]
PAYLOAD_RULE_DST = "198.51.100.11"   # fuzz_rules drops payload b"\x00\x01GET" to it
PORTS = st.one_of(st.sampled_from([0, 123, 443, 9999, 28960]), st.integers(0, 65535))


@st.composite
def ipv4_frames(draw) -> bytes:
    # Half the frames go to the server whose rule matches leading payload bytes (it checks the payload offset).
    src, dst = draw(st.sampled_from(ADDRESSES)), draw(st.sampled_from([PAYLOAD_RULE_DST] * 6 + ADDRESSES))
    ip = IP(src=src, dst=dst, ttl=draw(st.integers(0, 255)))
    if draw(st.integers(0, 7)) == 0:
        ip.options = b"\x01" * 4 * draw(st.integers(1, 3))      # options: the full parser's business
    if draw(st.integers(0, 9)) == 0:
        ip.flags, ip.frag = draw(st.sampled_from([("MF", 0), (0, 5), ("MF", 8)]))
    payload = draw(st.one_of(st.sampled_from([b"", b"\x00\x01GETxxxx", b"\x00\x01GET"]), st.binary(max_size=40)))
    if draw(st.booleans()):
        l4 = TCP(sport=draw(PORTS), dport=draw(PORTS), flags=draw(st.integers(0, 255)))
    else:
        l4 = UDP(sport=draw(PORTS), dport=draw(PORTS))
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if draw(st.integers(0, 9)) == 0:
        eth = eth / Dot1Q(vlan=draw(st.integers(0, 4095)))
    frame = bytearray(bytes(eth / ip / l4 / payload))
    l3 = len(frame) - len(bytes(ip / l4 / payload))
    if draw(st.integers(0, 3)):
        frame += bytes(max(0, 60 - len(frame)))                  # Ethernet's minimum frame, as a NIC pads it
    lie = draw(st.sampled_from(["none"] * 5 + ["ip_total", "udp_length", "tcp_offset"]))
    if lie == "ip_total":
        struct.pack_into("!H", frame, l3 + 2, draw(st.integers(0, 120)))
    elif lie == "udp_length" and isinstance(l4, UDP):
        struct.pack_into("!H", frame, l3 + ip.ihl * 4 if ip.ihl else l3 + 20, draw(st.integers(0, 120)))
    elif lie == "tcp_offset" and isinstance(l4, TCP):
        offset = l3 + len(bytes(ip)) - len(bytes(ip.payload)) + 12
        frame[offset] = (draw(st.integers(0, 15)) << 4) | (frame[offset] & 0x0F)
    if draw(st.integers(0, 7)) == 0:
        frame = frame[:draw(st.integers(14, len(frame)))]
    return bytes(frame)


def grid_frames() -> list[bytes]:
    """Every combination that decides a verdict in the fast parser's domain: protocol, TCP flags,
    zero ports, land, listed sources, TTL, payloads the rules look for, padded or not."""
    out = []
    payloads = [b"", b"\x00\x01GETxxxx", b"\0\0\0\0\xde\xadzz"]
    ports = [(5000, 80), (0, 80), (9999, 123), (5000, 0), (40000, 123)]
    for dst, payload, (sport, dport), ttl, pad in itertools.product(ADDRESSES, payloads, ports, (30, 200), (0, 60)):
        for src in (CLEAN_SRC, DENIED_SRC, ALLOWED_SRC, dst):
            l4s = [UDP(sport=sport, dport=dport)] + [TCP(sport=sport, dport=dport, flags=f)
                                                     for f in (0x02, 0x12, 0x10, 0x00, 0x03, 0x29)]
            for l4 in l4s:
                frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                              / IP(src=src, dst=dst, ttl=ttl) / l4 / payload)
                out.append(frame + bytes(max(0, pad - len(frame))))
    return out


@pytest.fixture(scope="module")
def full_parser():
    """The program built without the fast parser."""
    yield from dataplane_built_with("-DSW_NO_FAST_PARSE")


def _counters(dp, rule_ids: list[int]) -> dict[str, np.ndarray]:
    """Every counter the program keeps, flattened: per tenant, per destination, per rule (in installation order)."""
    out = {f"tenant {i}": np.concatenate([np.ravel(getattr(c, f.name)) for f in dataclasses.fields(c)]).astype(np.int64)
           for i, c in dp.read_tenant_counters().items()}
    dest = dp.read_destination_counters()
    for row, address in enumerate(dest.addresses):
        out[f"destination {address}"] = np.concatenate([dest.packets[row], dest.bytes[row],
                                                        [dest.dropped_packets[row]]]).astype(np.int64)
    rule_counters = dp.read_rule_counters()
    for n, rid in enumerate(rule_ids):
        out[f"rule {n}"] = np.array(dataclasses.astuple(rule_counters[rid]), np.int64)
    return out


def _delta(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> dict[str, list[int]]:
    return {k: (v - before.get(k, 0)).tolist() for k, v in after.items() if (v - before.get(k, 0)).any()}


def load_alike(builds: list, tenants: list[dict]) -> tuple[list[list[int]], dict[str, int]]:
    """The same tenants, fuzz rules and sampling of every packet in each build: each build's rule
    ids, and the tenants' indices (the same in every build, as they are applied alike)."""
    installed: list[list[int]] = []
    for d in builds:
        applied = apply_tenant_dicts(d, tenants)
        installed.append([d.add_rule(r) for r in fuzz_rules(applied["alpha"], applied["beta"])])
        d.set_sample_every(1)
    return installed, applied


def test_fast_and_full_parser_agree(dp, full_parser):
    both = [dp, full_parser]
    installed, _ = load_alike(both, STANDARD_TENANTS)
    before = [_counters(d, ids) for d, ids in zip(both, installed, strict=True)]
    seen = {"tcp_udp": 0}

    @settings(max_examples=400, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(frame=ipv4_frames(), direction=st.sampled_from(list(Direction)))
    def check(frame: bytes, direction: Direction) -> None:
        outcomes = []
        for d in both:
            action, _ = d.test_run(frame, direction)
            samples = [(s.tenant_idx, s.reason, s.dropped) for s in d.drain_samples()]
            outcomes.append((action, samples))
        assert outcomes[0] == outcomes[1], f"frame {frame.hex()} {direction.name}: fast {outcomes[0]}, full {outcomes[1]}"
        seen["tcp_udp"] += len(frame) >= 54 and frame[12:14] == b"\x08\x00" and frame[14] == 0x45 and frame[23] in (6, 17)

    try:
        for frame in grid_frames():
            for direction in Direction:
                outcomes = [(d.test_run(frame, direction)[0],
                             [(s.tenant_idx, s.reason, s.dropped) for s in d.drain_samples()]) for d in both]
                assert outcomes[0] == outcomes[1], (f"frame {frame.hex()} {direction.name}: "
                                                    f"fast {outcomes[0]}, full {outcomes[1]}")
        check()
        deltas = [_delta(b, _counters(d, ids)) for b, d, ids in zip(before, both, installed, strict=True)]
        assert seen["tcp_udp"] > 100, "the random frames hardly exercised the fast parser's domain"
        assert any(k.startswith("rule") for k in deltas[0]), "no rule matched: the rules were not exercised"
        assert deltas[0] == deltas[1]
    finally:
        for d, ids in zip(both, installed, strict=True):
            d.set_sample_every(0)
            d.drain_samples(limit=1 << 20)
            for rid in ids:
                d.remove_rule(rid)
