"""Sample parsing (Ethernet, 802.1Q/QinQ, IPv4, IPv6 with extension headers, TCP, UDP) and rule matching."""

from __future__ import annotations

import ipaddress

import numpy as np
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from dataplane.api import Range, Rule, Sample
from dataplane.constants import Direction, DropReason, TrafficClass
from policy.packets import NO_PORT, match_rule, parse_samples
from tests.unit.policy.fakes import fragment_frame, syn_frame, tcp_frame, udp_frame


def sample(frame: bytes, tenant: int = 1, direction: Direction = Direction.INBOUND) -> Sample:
    return Sample(timestamp_ns=1, tenant_idx=tenant, direction=direction, dropped=False, reason=DropReason.NONE,
                  wire_length=len(frame) + 4, data=frame[:128])


def test_ipv4_udp_with_vlan_and_qinq():
    plain = udp_frame("198.18.0.1", "198.51.100.10", 53, 4444, b"\x12\x34abcdefgh")
    vlan = udp_frame("198.18.0.1", "198.51.100.10", 53, 4444, b"\x12\x34abcdefgh", vlan=42)
    qinq = bytes(Ether() / Dot1AD(vlan=7) / Dot1Q(vlan=42) / IP(src="198.18.0.1", dst="198.51.100.10", ttl=9)
                 / UDP(sport=53, dport=4444) / Raw(b"\x12\x34abcdefgh"))
    f = parse_samples([sample(plain), sample(vlan), sample(qinq)])
    assert f.parsed.all()
    assert f.dst == [ipaddress.ip_address("198.51.100.10")] * 3
    assert f.proto.tolist() == [17] * 3
    assert f.sport.tolist() == [53] * 3 and f.dport.tolist() == [4444] * 3
    assert f.ip_len.tolist() == [20 + 8 + 10] * 3
    assert f.ttl.tolist()[2] == 9
    assert bytes(f.payload[0]) == b"\x12\x34abcdef" and f.payload_len.tolist() == [8] * 3
    assert (f.traffic_class == TrafficClass.UDP).all()


def test_ipv6_tcp_behind_extension_header_and_flags():
    frame = bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::10", hlim=33) / IPv6ExtHdrHopByHop()
                  / TCP(sport=1234, dport=443, flags="S") / Raw(b"xy"))
    ack = tcp_frame("198.18.0.1", "198.51.100.10", 1234, 443, "A", b"data")
    f = parse_samples([sample(frame), sample(ack)])
    assert f.proto.tolist() == [6, 6]
    assert f.dport.tolist() == [443, 443]
    assert f.ttl.tolist()[0] == 33
    assert f.ip_len.tolist()[0] == 8 + 20 + 2 + 40     # Rule.length for IPv6: payload length + 40
    assert f.traffic_class.tolist() == [TrafficClass.TCP_SYN, TrafficClass.TCP_OTHER]
    assert f.tcp_flags.tolist() == [0x02, 0x10]
    assert bytes(f.payload[1][:4]) == b"data"


def test_fragments_first_carries_ports_later_does_not():
    first = bytes(Ether() / IP(src="198.18.0.1", dst="198.51.100.10", flags="MF", frag=0, proto=17)
                  / UDP(sport=53, dport=999) / Raw(b"z" * 100))
    later = fragment_frame("198.18.0.1", "198.51.100.10", offset=185)
    v6 = bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::10") / IPv6ExtHdrFragment(offset=100, m=1, nh=17)
               / Raw(b"q" * 64))
    f = parse_samples([sample(first), sample(later), sample(v6)])
    assert f.fragment.tolist() == [True, True, True]
    assert (f.traffic_class == TrafficClass.FRAGMENT).all()
    assert f.sport.tolist() == [53, NO_PORT, NO_PORT]
    assert f.proto.tolist() == [17, 17, 17]


def test_garbage_and_truncated_frames_keep_a_row():
    f = parse_samples([sample(b"\x00" * 10), sample(bytes(Ether(type=0x0806)) + b"\x00" * 28),
                       sample(udp_frame("198.18.0.1", "198.51.100.10", 1, 2)[:30])])
    assert len(f) == 3 and not f.parsed.any()


def test_match_rule_fields_and_payload_mask():
    dst = ipaddress.ip_address("198.51.100.10")
    frames = [udp_frame("198.18.0.1", str(dst), 5000, 28960, b"\x13\x37" + b"A" * 510),
              udp_frame("203.0.113.5", str(dst), 5001, 28960, b"\xff\xff\xff\xff" + b"B" * 100),
              udp_frame("198.18.0.1", "198.51.100.11", 5000, 28960, b"\x13\x37" + b"A" * 510),
              syn_frame("198.18.0.1", str(dst), 5000, 443)]
    f = parse_samples([sample(fr) for fr in frames] + [sample(frames[0], tenant=2),
                                                       sample(frames[0], direction=Direction.OUTBOUND)])
    rule = Rule(tenant_idx=1, dst=dst, proto=17, dport=Range(28960, 28960), length=Range(540, 540),
                payload=b"\x13\x00", payload_mask=b"\xff\x00")
    assert match_rule(rule, f).tolist() == [True, False, False, False, False, False]
    tenant_wide = Rule(tenant_idx=1, dst=None, proto=17)
    assert match_rule(tenant_wide, f).tolist() == [True, True, True, False, False, False]
    syn = Rule(tenant_idx=1, dst=dst, proto=6, tcp_flags=(0x12, 0x02))
    assert np.flatnonzero(match_rule(syn, f)).tolist() == [3]
    later = parse_samples([sample(fragment_frame("198.18.0.1", str(dst), offset=10))])
    assert not match_rule(Rule(tenant_idx=1, dst=dst, sport=Range(0, 0xFFFF)), later).any()
    assert match_rule(Rule(tenant_idx=1, dst=dst, fragments=True), later).all()


def test_payload_rules_need_eight_payload_bytes_like_the_xdp_program():
    dst = ipaddress.ip_address("198.51.100.10")
    short = udp_frame("198.18.0.1", str(dst), 5000, 28960, b"\x13\x37\x00")
    full = udp_frame("198.18.0.1", str(dst), 5000, 28960, b"\x13\x37\x00" + bytes(5))
    f = parse_samples([sample(short), sample(full)])
    rule = Rule(tenant_idx=1, dst=dst, payload=b"\x13\x37", payload_mask=b"\xff\xff")
    assert match_rule(rule, f).tolist() == [False, True]
