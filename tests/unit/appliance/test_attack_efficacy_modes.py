"""Generator modes of issue 20 (attacks nobody tuned for): SYN-ACK reflection, UDP with random
ports and sizes, an IPv6 carpet over a /64, pulse waves and slow ramps (no root, no bcc)."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from appliance.lab import Lab
from appliance.lab.attack import RANDOM_SIZES, TCP_REFLECTOR_PORTS, AttackSpec, build_streams
from appliance.lab.generator import full_rate_seconds

LAB = Lab("unit")


def test_synack_reflection_comes_from_a_service_port_to_random_client_ports():
    server = LAB.server("s7")
    (stream,) = build_streams(LAB, AttackSpec("synack", server.ipv4))
    packets = [Ether(f) for f in stream.frames]
    assert all(p[TCP].flags == "SA" for p in packets)
    assert {p[TCP].sport for p in packets} == set(TCP_REFLECTOR_PORTS)
    # Many reflectors: no single length or TTL band for a header signature to key on.
    assert len({p[IP].len for p in packets}) == 3 and max(p[IP].ttl for p in packets) > 100
    assert stream.edits.dport_off and stream.edits.dport_range[0] >= 1024   # the victim's "client" ports
    assert not stream.edits.sport_off                                        # the reflector's port stays


def test_udp_random_varies_sizes_and_destination_ports():
    server = LAB.server("s8")
    (stream,) = build_streams(LAB, AttackSpec("udp-random", server.ipv4))
    sizes = {Ether(f)[IP].len for f in stream.frames}
    assert len(sizes) >= RANDOM_SIZES // 2 and max(sizes) <= 1500
    assert stream.edits.dport_off and stream.edits.dport_range == (1, 65535)
    payloads = {bytes(Ether(f)[UDP].payload)[:8] for f in stream.frames}
    assert len(payloads) == len(stream.frames)                               # no payload to key on either
    with pytest.raises(ValueError, match="drop --size"):
        build_streams(LAB, AttackSpec("udp-random", server.ipv4, size=200))


def test_ipv6_carpet_spreads_over_a_64():
    prefix = ipaddress.ip_network("2001:db8:b::/64")
    (stream,) = build_streams(LAB, AttackSpec("carpet", str(prefix)))
    destinations = {Ether(f)[IPv6].dst for f in stream.frames}
    assert len(destinations) > 100 and all(ipaddress.ip_address(d) in prefix for d in destinations)
    assert {Ether(f).dst for f in stream.frames} == {s.mac for s in LAB.servers if s.tenant == "beta"}


def test_pulse_wave_sends_only_during_the_on_phases():
    pulse = (2.0, 2.0)
    assert full_rate_seconds(1.0, pulse) == 1.0
    assert full_rate_seconds(3.5, pulse) == 2.0          # silent from 2 to 4 s
    assert full_rate_seconds(5.0, pulse) == 3.0
    assert full_rate_seconds(14.0, pulse) == 8.0         # on 0-2, 4-6, 8-10, 12-14


def test_ramp_rises_linearly_then_holds():
    assert full_rate_seconds(0.0, ramp=60.0) == 0.0
    assert full_rate_seconds(30.0, ramp=60.0) == pytest.approx(7.5)     # a quarter of full rate on average
    assert full_rate_seconds(60.0, ramp=60.0) == pytest.approx(30.0)
    assert full_rate_seconds(70.0, ramp=60.0) == pytest.approx(40.0)
    assert full_rate_seconds(5.0) == 5.0


@pytest.mark.parametrize("kwargs,message", [
    ({"pulse": (2.0, 0.0)}, "--pulse"),
    ({"ramp": -1.0}, "--ramp"),
    ({"pulse": (2.0, 2.0), "ramp": 60.0}, "cannot be combined"),
])
def test_bad_shapes_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttackSpec("udp", LAB.game_server.ipv4, **kwargs).validate()
