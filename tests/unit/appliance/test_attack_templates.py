"""Attack templates: every vector's frames carry the right signature, and the per-frame
edits the XDP generator applies point at the fields they claim to (no root, no bcc)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether

from appliance.lab import Lab
from appliance.lab.attack import (
    FRAME_VECTORS,
    REFLECTION_PORTS,
    AttackSpec,
    build_streams,
    chargen_response,
    cldap_search_response,
    dns_any_response,
    memcached_stats_response,
    ntp_monlist_response,
)
from appliance.lab.livegen import FrameEdits

LAB = Lab("unit")
GAME = LAB.game_server
SPOOF = ipaddress.ip_network("198.18.0.0/15")


def streams(vector: str, target: str | None = None, **kwargs):
    if target is None:
        target = "198.51.100.0/25" if vector == "carpet" else GAME.ipv4
    return build_streams(LAB, AttackSpec(vector, target, **kwargs))


@pytest.mark.parametrize("vector", FRAME_VECTORS)
def test_every_vector_addresses_a_tenant_server_from_spoofed_sources(vector):
    built = streams(vector)
    assert built and all(s.frames for s in built)
    server_macs = {s.mac for s in LAB.servers}
    for stream in built:
        for frame in stream.frames:
            ether = Ether(frame)
            assert ether.dst in server_macs
            assert ipaddress.ip_address(ether[IP].src) in SPOOF
            assert len(frame) <= 1514           # never beyond the lab MTU
    assert sum(s.weight for s in built) == pytest.approx(1.0)


def test_syn_flood_frames_are_syns_with_options_to_port_80():
    (stream,) = streams("syn")
    tcp = Ether(stream.frames[0])[TCP]
    assert tcp.flags == "S" and tcp.dport == 80
    assert dict(tcp.options)["MSS"] == 1460


def test_rst_vector_alternates_rst_and_fin_ack():
    flags = sorted(str(Ether(s.frames[0])[TCP].flags) for s in streams("rst"))
    assert flags == ["FA", "R"]


def test_udp_flood_has_fixed_size_and_random_ports_unless_fixed():
    (stream,) = streams("udp", size=700)
    assert Ether(stream.frames[0])[IP].len == 700
    assert stream.edits.dport_off and stream.edits.sport_off
    (fixed,) = streams("udp", dport=28960, sport=5000)
    assert fixed.edits.dport_off == 0 and fixed.edits.sport_off == 0
    assert Ether(fixed.frames[0])[UDP].dport == 28960


@pytest.mark.parametrize("vector", sorted(REFLECTION_PORTS))
def test_reflection_frames_come_from_the_reflector_port(vector):
    first = Ether(streams(vector)[0].frames[0])
    assert first[UDP].sport == REFLECTION_PORTS[vector]
    assert first[UDP].dport >= 1024


def test_reflection_payloads_look_like_the_real_responses():
    ntp = Ether(streams("ntp")[0].frames[0])
    assert ntp[IP].len == 468                     # the classic monlist datagram
    assert bytes(ntp[UDP].payload)[3] == 42       # MON_GETLIST_1
    dns = streams("dns")
    first = Ether(dns[0].frames[0])
    assert first[IP].flags == "MF" and len(dns) >= 3          # ~3.4 KB ANY response, fragmented
    total = sum(len(Ether(s.frames[0])[IP].payload) for s in dns)
    assert 3000 <= total <= 4000
    single = Ether(streams("dns", size=1400)[0].frames[0])
    assert single[IP].len == pytest.approx(1400, abs=300) and single[IP].flags == 0
    ssdp = bytes(Ether(streams("ssdp")[0].frames[0])[UDP].payload)
    assert ssdp.startswith(b"HTTP/1.1 200 OK\r\n") and b"ST: upnp:rootdevice" in ssdp
    memcached = bytes(Ether(streams("memcached")[0].frames[0])[UDP].payload)
    assert memcached[8:].startswith(b"STAT pid ") and memcached.endswith(b"END\r\n")
    cldap = cldap_search_response(2900)
    assert cldap[0] == 0x30 and b"\x64" in cldap[:12] and b"supportedControl" in cldap
    assert 2900 <= len(cldap) <= 3000
    chargen = bytes(Ether(streams("chargen")[0].frames[0])[UDP].payload)
    assert chargen[:72] == bytes(range(33, 105)) and chargen[72:74] == b"\r\n"


def test_payload_builders_reach_the_requested_size():
    assert 3000 <= len(dns_any_response(3000)) <= 3300
    assert len(ntp_monlist_response(6)) == 440
    assert 1300 <= len(memcached_stats_response(1400)) <= 1450
    assert len(chargen_response(1000)) == 1000


def test_icmp_is_echo_request_v4_and_v6():
    v4 = Ether(streams("icmp")[0].frames[0])
    assert v4[ICMP].type == 8
    v6 = Ether(streams("icmp", target=GAME.ipv6)[0].frames[0])
    assert v6.haslayer(ICMPv6EchoRequest)
    assert ipaddress.ip_address(v6[IPv6].src) in ipaddress.ip_network("2001:db8:5f00::/40")


def test_frag_flood_is_fragments_only():
    built = streams("frag")
    offsets = [Ether(s.frames[0])[IP].frag for s in built]
    assert offsets[0] == 0 and all(o > 0 for o in offsets[1:])
    v6 = streams("frag", target=GAME.ipv6)
    assert all(Ether(s.frames[0]).haslayer(IPv6ExtHdrFragment) for s in v6)


def test_carpet_spreads_over_the_prefix_and_uses_tenant_macs():
    (stream,) = streams("carpet", target="203.0.113.0/24")
    destinations = {Ether(f)[IP].dst for f in stream.frames}
    assert len(destinations) == len(stream.frames) > 100
    assert all(ipaddress.ip_address(d) in ipaddress.ip_network("203.0.113.0/24") for d in destinations)
    gamma_macs = {s.mac for s in LAB.servers if s.tenant == "gamma"}
    assert {Ether(f).dst for f in stream.frames} == gamma_macs


def test_multi_combines_the_sub_vectors():
    built = streams("multi", vectors=("syn", "icmp", "ntp"))
    assert {s.vector for s in built} == {"syn", "icmp", "ntp"}


@pytest.mark.parametrize("vector,target", [("syn", GAME.ipv4), ("syn", GAME.ipv6), ("udp", GAME.ipv4),
                                            ("udp", GAME.ipv6), ("icmp", GAME.ipv4), ("dns", GAME.ipv4)])
def test_edit_offsets_point_at_the_fields(vector, target):
    stream = streams(vector, target=target)[0]
    frame, edits = stream.frames[0], stream.edits
    packet = Ether(frame)
    ip = packet[IP] if IP in packet else packet[IPv6]
    src = ipaddress.ip_address(ip.src).packed
    assert frame[edits.src_off:edits.src_off + 4] == src[-4:]
    if IP in packet:
        assert frame[edits.ip_csum_off:edits.ip_csum_off + 2] == struct.pack("!H", packet[IP].chksum)
        assert frame[edits.ipid_off:edits.ipid_off + 2] == struct.pack("!H", packet[IP].id)
    l4 = ip.payload
    assert frame[edits.l4_csum_off:edits.l4_csum_off + 2] == struct.pack("!H", l4.chksum)
    if edits.sport_off:   # the ICMP echo id stands in for a source port
        expected = l4.sport if hasattr(l4, "sport") else l4.id
        assert frame[edits.sport_off:edits.sport_off + 2] == struct.pack("!H", expected)
    if edits.dport_off:
        assert frame[edits.dport_off:edits.dport_off + 2] == struct.pack("!H", l4.dport)
    if edits.seq_off:
        assert frame[edits.seq_off:edits.seq_off + 4] == struct.pack("!I", l4.seq)
    assert edits.src_mask == ((1 << 17) - 1 if IP in packet else 0xFFFFFFFF)


def test_spoof_off_uses_the_attacker_address_unvaried():
    (stream,) = streams("syn", spoof="off")
    assert Ether(stream.frames[0])[IP].src == "192.0.2.130"
    assert stream.edits.src_off == 0


@pytest.mark.parametrize("kwargs,message", [
    ({"vector": "bogus"}, "unknown vector"),
    ({"target": "10.0.0.1"}, "not inside a lab tenant prefix"),
    ({"target": "not-an-ip"}, "not an address or prefix"),
    ({"vector": "carpet", "target": "198.51.100.10"}, "carpet needs a prefix"),
    ({"spoof": "2001:db8::/64"}, "differ in IP version"),
    ({"dport": 70000}, "--dport"),
    ({"pps": -1}, "--pps"),
    ({"duration": 0}, "--duration"),
    ({"size": 10}, "--size"),
    ({"vector": "ssdp", "size": 400}, "fixed size"),
    ({"vector": "frag", "size": 1000}, "exceed the MTU"),
    ({"vector": "multi", "vectors": ("syn", "multi")}, "sub-vectors"),
])
def test_bad_input_is_refused_with_a_clear_error(kwargs, message):
    spec = {"vector": "syn", "target": GAME.ipv4, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_streams(LAB, AttackSpec(**spec))


def test_frame_edits_refuse_out_of_range_fields():
    with pytest.raises(ValueError, match="sport_range"):
        FrameEdits(sport_off=34, sport_range=(1024, 65535))
    with pytest.raises(ValueError, match="first 252 bytes"):
        FrameEdits(src_off=300)
