"""Sample parsing (Ethernet, 802.1Q/QinQ, IPv4, IPv6 with extension headers, TCP, UDP) and rule matching."""

from __future__ import annotations

import ipaddress

import numpy as np
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from dataplane.api import Range, Rule, Sample
from dataplane.constants import Direction, DropReason, RuleAction, TrafficClass
from policy.packets import NO_PORT, classify_fields, match_rule, parse_frame, parse_samples
from tests.unit.policy.fakes import fragment_frame, icmp_frame, syn_frame, tcp_frame, udp_frame


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


def _frame_by_frame(frames: list[bytes]) -> dict[str, list]:
    """The columns `parse_frame` gives frame by frame (the reference of the vectorised IPv4 path)."""
    cols: dict[str, list] = {k: [] for k in ("parsed", "src", "dst", "proto", "ip_len", "ttl", "sport", "dport",
                                             "tcp_flags", "fragment", "traffic_class", "payload", "payload_len",
                                             "l4_ok")}
    for data in frames:
        fields = parse_frame(data, len(data) + 4)     # the wire length `sample` records
        if fields is None:
            for k, v in (("parsed", False), ("src", None), ("dst", None), ("proto", -1), ("ip_len", 0), ("ttl", 0),
                         ("sport", NO_PORT), ("dport", NO_PORT), ("tcp_flags", 0), ("fragment", False),
                         ("traffic_class", int(TrafficClass.OTHER)), ("payload", b"\0" * 8), ("payload_len", 0),
                         ("l4_ok", False)):
                cols[k].append(v)
            continue
        s, d, p, length, t, sp, dp, fl, frag, pl, l4 = fields
        for k, v in (("parsed", True), ("src", s), ("dst", d), ("proto", p), ("ip_len", length), ("ttl", t),
                     ("sport", sp), ("dport", dp), ("tcp_flags", fl), ("fragment", frag),
                     ("traffic_class", int(classify_fields(p, fl, frag))), ("payload", pl.ljust(8, b"\0")),
                     ("payload_len", len(pl)), ("l4_ok", l4)):
            cols[k].append(v)
    return cols


def test_vectorised_ipv4_parse_matches_frame_by_frame_parse():
    """Every column of parse_samples equals `parse_frame`'s on IPv4 frames of every shape the
    vectorised path handles (options, fragments, TCP data offsets, truncation, odd protocols)
    mixed with frames it leaves to `parse_frame` (VLAN, IPv6, ARP, garbage)."""
    rng = np.random.default_rng(7)
    bases = [
        udp_frame("198.18.0.1", "198.51.100.10", 53, 4444, b"\x12\x34abcdefgh"),
        tcp_frame("198.18.0.2", "198.51.100.11", 1234, 80, "S"),
        tcp_frame("198.18.0.3", "198.51.100.11", 1234, 80, "PA", b"GET / HTTP/1.1\r\n"),
        bytes(Ether() / IP(src="198.18.0.4", dst="198.51.100.12", options=b"\x01" * 8)
              / TCP(sport=5, dport=6, flags="A", options=[("NOP", None)] * 8) / Raw(b"payload!!")),
        bytes(Ether() / IP(src="198.18.0.5", dst="198.51.100.12", flags="MF", proto=17) / UDP(sport=7, dport=8)
              / Raw(b"z" * 40)),
        fragment_frame("198.18.0.6", "198.51.100.10", offset=185),
        icmp_frame("198.18.0.7", "198.51.100.10"),
        bytes(Ether() / IP(src="198.18.0.8", dst="198.51.100.10", proto=47) / Raw(b"gre-ish" * 4)),
        bytes(Ether() / IP(src="198.18.0.9", dst="198.51.100.10", proto=58) / Raw(b"x" * 20)),
        udp_frame("198.18.0.1", "198.51.100.10", 53, 4444, b"ab", vlan=42),
        bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::10") / UDP(sport=9, dport=10) / Raw(b"q" * 9)),
        bytes(Ether(type=0x0806)) + b"\x00" * 28,
        b"\x00" * 10,
    ]
    frames = list(bases)
    for base in bases:
        for _ in range(30):
            frame = bytearray(base[:int(rng.integers(10, len(base) + 1))])
            # Scramble the bytes that steer parsing: IHL, flags/offset, protocol, TCP data offset and flags.
            for at in rng.choice([14, 20, 21, 23, 26, 34, 46, 47, 54], size=int(rng.integers(0, 3))):
                if at < len(frame):
                    frame[at] = int(rng.integers(0, 256))
            frames.append(bytes(frame[:128]))
    f = parse_samples([sample(fr) for fr in frames])
    want = _frame_by_frame(frames)
    assert f.parsed.sum() > len(frames) // 3          # most frames parse, the rest exercise the failures
    for name, expected in want.items():
        got = getattr(f, name)
        if name == "payload":
            got = [bytes(row) for row in got]
        elif isinstance(got, np.ndarray):
            got = got.tolist()
        mismatched = [i for i, (g, w) in enumerate(zip(got, expected, strict=True)) if g != w]
        assert not mismatched, f"{name}: frame {mismatched[0]} {frames[mismatched[0]].hex()}: " \
                               f"{got[mismatched[0]]} != {expected[mismatched[0]]}"


def test_match_rule_compares_tcp_flags_under_the_mask_as_the_program_does():
    """The program stores value & mask (Dataplane encodes it so): a value bit outside the mask
    never keeps a rule from matching (found by tests/bpf/test_fuzz.py's match_rule fuzz)."""
    f = parse_samples([sample(syn_frame("198.18.0.1", "198.51.100.10", 1234, 80))])
    assert match_rule(Rule(tenant_idx=1, dst=None, tcp_flags=(0x02, 0x12)), f).tolist() == [True]
    assert match_rule(Rule(tenant_idx=1, dst=None, tcp_flags=(0x12, 0x12)), f).tolist() == [False]


def test_match_rule_sees_icmp_ports_as_zero_and_its_payload_after_the_header():
    """The program parses ICMP's 4-byte header (l4_ok), its ports are 0 and its payload follows."""
    f = parse_samples([sample(icmp_frame("198.18.0.7", "198.51.100.10"))])
    assert f.l4_ok.tolist() == [True]
    assert match_rule(Rule(tenant_idx=1, dst=None, dport=Range(0, 0)), f).tolist() == [True]
    assert match_rule(Rule(tenant_idx=1, dst=None, sport=Range(1, 65535)), f).tolist() == [False]
    later = parse_samples([sample(fragment_frame("198.18.0.6", "198.51.100.10", offset=185))])
    assert match_rule(Rule(tenant_idx=1, dst=None, dport=Range(0, 65535)), later).tolist() == [False]


def test_match_rule_treats_an_empty_payload_as_no_payload_match():
    f = parse_samples([sample(syn_frame("198.18.0.1", "198.51.100.10", 1234, 80))])
    assert match_rule(Rule(tenant_idx=1, dst=None, payload=b""), f).tolist() == [True]


# The frame tests/bpf/test_fuzz.py's match_rule fuzz found: QinQ, IPv4 total length 296, cut after a
# 20-byte TCP header (ports 0, no flags). The program parses no L4 header of an IP packet longer than
# its frame (BAD_LENGTH), so no port rule matches it.
TRUNCATED_QINQ_TCP = bytes.fromhex("020000000002020000000001810000008100000008004500012800010000010652c9c633640acb"
                                   "0071c80000000000000000000000005000200028de0000")


def _exact(frame: bytes, wire_length: int) -> Sample:
    return Sample(timestamp_ns=1, tenant_idx=2, direction=Direction.INBOUND, dropped=False,
                  reason=DropReason.NONE, wire_length=wire_length, data=frame[:128])


def test_match_rule_sees_no_ports_in_a_packet_whose_ip_length_exceeds_the_frame():
    untagged = TRUNCATED_QINQ_TCP[:12] + TRUNCATED_QINQ_TCP[20:]      # the same packet on the vectorised path
    whole = untagged[:16] + (40).to_bytes(2, "big") + untagged[18:]   # total length 40: fits its frame
    frames = [TRUNCATED_QINQ_TCP, untagged, whole]
    f = parse_samples([_exact(fr, len(fr)) for fr in frames])
    assert f.parsed.all() and f.ip_len.tolist() == [296, 296, 40]
    assert f.l4_ok.tolist() == [False, False, True]
    assert f.dport.tolist() == [NO_PORT, NO_PORT, 0]
    rule = Rule(tenant_idx=2, dst=None, action=RuleAction.COUNT, dport=Range(0, 0))
    assert match_rule(rule, f).tolist() == [False, False, True]
    # A sample is a snapshot: what counts is the frame on the wire, which may hold all 296 bytes.
    on_wire = parse_samples([_exact(fr, 22 + 296) for fr in frames[:1]] + [_exact(frames[1], 14 + 296)])
    assert on_wire.l4_ok.tolist() == [True, True] and match_rule(rule, on_wire).tolist() == [True, True]


def test_match_rule_sees_no_ports_behind_l4_lengths_the_program_rejects():
    """TCP data offset below 20 or past the IP length, UDP length below 8 or past the IP length:
    the program's sw_parse_l4 leaves such packets without ports (BAD_LENGTH)."""
    tcp = bytes(Ether() / IP(src="198.18.0.1", dst="203.0.113.200") / TCP(sport=7, dport=80, flags="A"))
    bad_doff = bytearray(tcp)
    bad_doff[14 + 20 + 12] = 0x40                      # 16 bytes
    long_doff = bytearray(tcp)
    long_doff[14 + 20 + 12] = 0x60                     # 24 bytes, the IP length ends after 20
    udp = bytes(Ether() / IP(src="198.18.0.1", dst="203.0.113.200") / UDP(sport=7, dport=80) / Raw(b"x" * 8))
    short_ulen = bytearray(udp)
    short_ulen[14 + 20 + 4:14 + 20 + 6] = (4).to_bytes(2, "big")
    long_ulen = bytearray(udp)
    long_ulen[14 + 20 + 4:14 + 20 + 6] = (17).to_bytes(2, "big")
    frames = [tcp, bytes(bad_doff), bytes(long_doff), udp, bytes(short_ulen), bytes(long_ulen)]
    vlan = [fr[:12] + b"\x81\x00\x00\x2a" + fr[12:] for fr in frames]   # and the frame-by-frame path
    f = parse_samples([_exact(fr, len(fr)) for fr in frames + vlan])
    assert f.l4_ok.tolist() == [True, False, False, True, False, False] * 2
    assert match_rule(Rule(tenant_idx=2, dst=None, dport=Range(80, 80)), f).tolist() == \
        [True, False, False, True, False, False] * 2
