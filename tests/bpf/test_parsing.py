"""Every parse path of the program: Ethernet, VLAN/QinQ, IPv4 (options, fragments), IPv6 (extension
headers, fragments), L4 headers, truncated and garbage frames, and frames that are never IP.

The probe for "the parser reached the TCP header" is a NULL-flags segment to a mitigated tenant:
the spec drops it (BAD_TCP_FLAGS) only if the flags were read.
"""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.packet import Raw

from dataplane import bpfsys
from dataplane.constants import MAX_IPV6_EXT_HEADERS, NO_TENANT, Direction, DropReason, TrafficClass
from tests.bpf import frames
from tests.bpf.conftest import (
    ALPHA_DST,
    ALPHA_DST6,
    CLEAN_SRC,
    CLEAN_SRC6,
    XDP_DROP,
    XDP_REDIRECT,
    observe,
    run,
)
from tests.bpf.reference_model import bad_tcp_flags

QINQ = ((frames.ETH_P_8021AD, 100), (frames.ETH_P_8021Q, 10))
DOUBLE_8021Q = ((frames.ETH_P_8021Q, 100), (frames.ETH_P_8021Q, 10))
TRIPLE = ((frames.ETH_P_8021AD, 100), (frames.ETH_P_8021Q, 10), (frames.ETH_P_8021Q, 20))


@pytest.mark.parametrize("frame", [
    pytest.param(frames.arp(), id="arp"),
    pytest.param(frames.arp(vlans=((frames.ETH_P_8021Q, 5),)), id="arp-vlan"),
    pytest.param(frames.lldp(), id="lldp"),
    pytest.param(bytes(frames.ether())[:12] + b"\x90\x00" + b"\xab" * 50, id="unknown-ethertype"),
    pytest.param(b"\xff" * 14, id="bare-ethernet-header"),
    pytest.param(frames.tcp(CLEAN_SRC, ALPHA_DST, flags=0, vlans=TRIPLE), id="three-vlan-tags"),
])
def test_non_ip_frames_are_bridged_unread(dp, tenants, frame):
    action, sample = observe(dp, frame)
    assert action == XDP_REDIRECT
    assert sample is None  # never parsed as IP: no counters, no sample


@pytest.mark.parametrize("direction", list(Direction))
def test_bridged_frames_leave_untouched(dp, tenants, direction):
    for frame in (frames.arp(), frames.tcp(CLEAN_SRC, ALPHA_DST, flags="S", payload=b"hello"),
                  frames.udp(CLEAN_SRC6, ALPHA_DST6, vlans=QINQ)):
        run(dp, frame, direction)  # sets the test ports
        action, _, out = bpfsys.prog_test_run(dp.programs[direction].fd, frame)
        assert action == XDP_REDIRECT
        assert out == frame


def test_neighbour_discovery_is_bridged(dp, tenants):
    action, sample = observe(dp, frames.neighbour_solicitation(ALPHA_DST6))
    assert action == XDP_REDIRECT
    assert sample.tenant_idx == NO_TENANT and sample.reason == DropReason.NONE


def test_multicast_is_bridged(dp, tenants):
    assert run(dp, frames.udp(CLEAN_SRC, "239.1.2.3", sport=0, dport=0)) == XDP_REDIRECT
    assert run(dp, frames.udp(CLEAN_SRC6, "ff0e::1234", sport=0, dport=0)) == XDP_REDIRECT


@pytest.mark.parametrize("vlans", [(), ((frames.ETH_P_8021Q, 10),), ((frames.ETH_P_8021AD, 10),), QINQ,
                                   DOUBLE_8021Q], ids=["untagged", "8021q", "8021ad", "qinq", "double-8021q"])
@pytest.mark.parametrize("dst,src", [(ALPHA_DST, CLEAN_SRC), (ALPHA_DST6, CLEAN_SRC6)], ids=["v4", "v6"])
def test_tagged_frames_are_parsed_and_filtered(dp, tenants, vlans, dst, src):
    action, sample = observe(dp, frames.tcp(src, dst, flags=0, vlans=vlans))
    assert (action, sample.reason) == (XDP_DROP, DropReason.BAD_TCP_FLAGS)
    assert sample.tenant_idx == tenants["alpha"]
    clean = frames.tcp(src, dst, flags="S", vlans=vlans)
    action, sample = observe(dp, clean)
    assert (action, sample.reason) == (XDP_REDIRECT, DropReason.NONE)


def test_truncated_vlan_tag_is_bridged(dp, tenants):
    frame = frames.tcp(CLEAN_SRC, ALPHA_DST, flags=0, vlans=QINQ)[:16]
    action, sample = observe(dp, frame)
    assert (action, sample) == (XDP_REDIRECT, None)


@pytest.mark.parametrize("vlans", [(), ((frames.ETH_P_8021Q, 10),)], ids=["fast-parser", "full-parser"])
def test_every_tcp_flag_byte_is_judged_as_the_reference_model(dp, tenants, vlans):
    """The program tells bad flag sets from a 64-bit mask indexed by the six classic flags (issue 18,
    pass path): all 256 flag bytes, on the fast parser's frames (untagged) and the full parser's (tagged)."""
    for flags in range(256):
        action, sample = observe(dp, frames.tcp(CLEAN_SRC, ALPHA_DST, flags=flags, vlans=vlans))
        expected = (XDP_DROP, DropReason.BAD_TCP_FLAGS) if bad_tcp_flags(flags) else (XDP_REDIRECT, DropReason.NONE)
        assert (action, sample.reason) == expected, f"flags {flags:#04x}"


@pytest.mark.parametrize("option_words", [1, 4, 10])
def test_ipv4_options_are_skipped_to_the_l4_header(dp, tenants, option_words):
    options = b"\x01" * (4 * option_words - 1) + b"\x00"  # NOPs, then end of options
    bad = frames.l2(IP(src=CLEAN_SRC, dst=ALPHA_DST, options=Raw(options)) / TCP(sport=1234, dport=80, flags=0))
    assert IP(bad[14:]).ihl == 5 + option_words
    action, sample = observe(dp, bad)
    assert (action, sample.reason) == (XDP_DROP, DropReason.BAD_TCP_FLAGS)
    good = frames.l2(IP(src=CLEAN_SRC, dst=ALPHA_DST, options=Raw(options)) / TCP(sport=1234, dport=80, flags="S"))
    action, sample = observe(dp, good)
    assert (action, sample.reason) == (XDP_REDIRECT, DropReason.NONE)


@pytest.mark.parametrize("chain", [["hop"], ["routing"], ["dest"], ["ah"], ["frag_first"],
                                   ["hop", "dest", "routing", "ah", "dest"]],
                         ids=lambda chain: "+".join(chain))
def test_ipv6_extension_headers_are_walked_to_the_l4_header(dp, tenants, chain):
    bad = frames.ipv6_with_extensions(CLEAN_SRC6, ALPHA_DST6, chain, TCP(sport=1234, dport=80, flags=0))
    action, sample = observe(dp, bad)
    assert (action, sample.reason) == (XDP_DROP, DropReason.BAD_TCP_FLAGS)
    good = frames.ipv6_with_extensions(CLEAN_SRC6, ALPHA_DST6, chain, TCP(sport=1234, dport=80, flags="S"))
    assert run(dp, good) == XDP_REDIRECT


def test_ipv6_chain_of_exactly_the_maximum_is_walked(dp, tenants):
    """MAX_IPV6_EXT_HEADERS extension headers are within the limit: the TCP header after them is read."""
    chain = ["hop"] + ["dest"] * (MAX_IPV6_EXT_HEADERS - 1)
    bad = frames.ipv6_with_extensions(CLEAN_SRC6, ALPHA_DST6, chain, TCP(sport=1234, dport=80, flags=0))
    action, sample = observe(dp, bad)
    assert (action, sample.reason) == (XDP_DROP, DropReason.BAD_TCP_FLAGS)


def test_ipv6_chain_longer_than_the_maximum_is_counted_other_and_passed(dp, tenants):
    chain = ["hop"] + ["dest"] * MAX_IPV6_EXT_HEADERS
    frame = frames.ipv6_with_extensions(CLEAN_SRC6, ALPHA_DST6, chain, TCP(sport=1234, dport=80, flags=0))
    before = dp.read_tenant_counters([tenants["alpha"]])[tenants["alpha"]]
    action, sample = observe(dp, frame)
    assert (action, sample.reason) == (XDP_REDIRECT, DropReason.NONE)
    after = dp.read_tenant_counters([tenants["alpha"]])[tenants["alpha"]]
    assert after.class_packets[Direction.INBOUND, TrafficClass.OTHER] == \
        before.class_packets[Direction.INBOUND, TrafficClass.OTHER] + 1


def _class_delta(dp, index, frame):
    before = dp.read_tenant_counters([index])[index].class_packets[Direction.INBOUND].copy()
    action, sample = observe(dp, frame)
    after = dp.read_tenant_counters([index])[index].class_packets[Direction.INBOUND]
    return action, sample, [TrafficClass(c) for c in range(len(after)) if after[c] != before[c]]


def test_ipv4_first_fragment_reads_ports_and_skips_the_udp_length(dp, tenants):
    # A first fragment: the UDP length covers the whole datagram, the fragment only part of it.
    packet = IP(src=CLEAN_SRC, dst=ALPHA_DST, flags="MF") / UDP(sport=5000, dport=53, len=1480) / Raw(b"a" * 64)
    action, sample, classes = _class_delta(dp, tenants["alpha"], frames.l2(packet))
    assert (action, sample.reason, classes) == (XDP_REDIRECT, DropReason.NONE, [TrafficClass.FRAGMENT])
    zero_port = IP(src=CLEAN_SRC, dst=ALPHA_DST, flags="MF") / UDP(sport=5000, dport=0, len=1480) / Raw(b"a" * 64)
    action, sample = observe(dp, frames.l2(zero_port))
    assert (action, sample.reason) == (XDP_DROP, DropReason.PORT_ZERO)


def test_ipv4_later_fragment_is_not_looked_into(dp, tenants):
    # Bytes that would be a NULL-flags TCP header with port 0 if the parser read them.
    packet = IP(src=CLEAN_SRC, dst=ALPHA_DST, proto=6, frag=100) / Raw(b"\0" * 40)
    action, sample, classes = _class_delta(dp, tenants["alpha"], frames.l2(packet))
    assert (action, sample.reason, classes) == (XDP_REDIRECT, DropReason.NONE, [TrafficClass.FRAGMENT])


def test_ipv6_fragments(dp, tenants):
    first = IPv6(src=CLEAN_SRC6, dst=ALPHA_DST6) / IPv6ExtHdrFragment(offset=0, m=1) / \
        UDP(sport=5000, dport=53, len=1480) / Raw(b"a" * 64)
    action, sample, classes = _class_delta(dp, tenants["alpha"], frames.l2(first))
    assert (action, sample.reason, classes) == (XDP_REDIRECT, DropReason.NONE, [TrafficClass.FRAGMENT])
    later = IPv6(src=CLEAN_SRC6, dst=ALPHA_DST6) / IPv6ExtHdrFragment(offset=100, m=0, nh=6) / Raw(b"\0" * 40)
    action, sample, classes = _class_delta(dp, tenants["alpha"], frames.l2(later))
    assert (action, sample.reason, classes) == (XDP_REDIRECT, DropReason.NONE, [TrafficClass.FRAGMENT])
    first_null = IPv6(src=CLEAN_SRC6, dst=ALPHA_DST6) / IPv6ExtHdrFragment(offset=0, m=1) / TCP(flags=0)
    action, sample = observe(dp, frames.l2(first_null))
    assert (action, sample.reason) == (XDP_DROP, DropReason.BAD_TCP_FLAGS)


def _set_ipv4_field(frame: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(frame)
    struct.pack_into(fmt, out, 14 + offset, value)
    return bytes(out)


V4_TCP = frames.tcp(CLEAN_SRC, ALPHA_DST, flags="S", payload=b"p" * 20)
V6_TCP = frames.tcp(CLEAN_SRC6, ALPHA_DST6, flags="S", payload=b"p" * 20)


@pytest.mark.parametrize("frame", [
    pytest.param(V4_TCP[:14 + 19], id="v4-header-cut"),
    pytest.param(V6_TCP[:14 + 39], id="v6-header-cut"),
    pytest.param(_set_ipv4_field(V4_TCP, 0, "!B", 0x55), id="v4-ethertype-version-5"),
    pytest.param(bytes(12) + b"\x08\x00" + b"\x45" + b"\0" * 10, id="v4-ethertype-short-junk"),
    pytest.param(bytes(12) + b"\x86\xdd" + b"\x60" + b"\0" * 30, id="v6-ethertype-short-junk"),
])
def test_unreadable_ip_headers_are_bridged(dp, tenants, frame):
    action, sample = observe(dp, frame)
    assert (action, sample) == (XDP_REDIRECT, None)


@pytest.mark.parametrize("frame,reason", [
    pytest.param(_set_ipv4_field(V4_TCP, 2, "!H", 2000), DropReason.BAD_LENGTH, id="v4-total-length-beyond-frame"),
    pytest.param(_set_ipv4_field(V4_TCP, 2, "!H", 19), DropReason.BAD_LENGTH, id="v4-total-length-below-header"),
    pytest.param(_set_ipv4_field(V4_TCP, 0, "!B", 0x44), DropReason.BAD_LENGTH, id="v4-ihl-4"),
    pytest.param(_set_ipv4_field(frames.tcp(CLEAN_SRC, ALPHA_DST), 0, "!B", 0x4F), DropReason.BAD_LENGTH,
                 id="v4-ihl-15-beyond-total"),
    pytest.param(frames.l2(IP(src=CLEAN_SRC, dst=ALPHA_DST, proto=6) / Raw(b"\x12\x34" * 5)), DropReason.MALFORMED,
                 id="v4-tcp-header-cut"),
    pytest.param(frames.l2(IP(src=CLEAN_SRC, dst=ALPHA_DST, proto=17) / Raw(b"\x12\x34" * 2)),
                 DropReason.MALFORMED, id="v4-udp-header-cut"),
    pytest.param(frames.l2(IP(src=CLEAN_SRC, dst=ALPHA_DST, proto=1) / Raw(b"\x08\x00")), DropReason.MALFORMED,
                 id="v4-icmp-header-cut"),
    pytest.param(frames.l2(IPv6(src=CLEAN_SRC6, dst=ALPHA_DST6, nh=6) / Raw(b"\x12\x34" * 5)),
                 DropReason.MALFORMED, id="v6-tcp-header-cut"),
    pytest.param(frames.l2(IPv6(src=CLEAN_SRC6, dst=ALPHA_DST6, nh=17) / Raw(b"\x12\x34" * 2)),
                 DropReason.MALFORMED, id="v6-udp-header-cut"),
    pytest.param(frames.l2(IPv6(src=CLEAN_SRC6, dst=ALPHA_DST6, nh=58) / Raw(b"\x80")), DropReason.MALFORMED,
                 id="v6-icmpv6-header-cut"),
    pytest.param(frames.l2(IPv6(src=CLEAN_SRC6, dst=ALPHA_DST6, nh=6, plen=500) / TCP()), DropReason.BAD_LENGTH,
                 id="v6-payload-length-beyond-frame"),
])
def test_length_problems_are_dropped_with_their_reason(dp, tenants, frame, reason):
    action, sample = observe(dp, frame)
    assert (action, sample.reason, sample.tenant_idx) == (XDP_DROP, reason, tenants["alpha"])


@pytest.mark.parametrize("frame", [
    pytest.param(frames.l2(IP(src=CLEAN_SRC, dst=ALPHA_DST) / TCP(flags="S", dataofs=15)), id="tcp-doff-beyond"),
    pytest.param(frames.l2(IP(src=CLEAN_SRC, dst=ALPHA_DST) / TCP(flags="S", dataofs=4)), id="tcp-doff-4"),
    pytest.param(frames.l2(IP(src=CLEAN_SRC, dst=ALPHA_DST) / UDP(sport=1, dport=53, len=7)), id="udp-length-7"),
    pytest.param(frames.l2(IP(src=CLEAN_SRC, dst=ALPHA_DST) / UDP(sport=1, dport=53, len=500) / Raw(b"x")),
                 id="udp-length-beyond-ip"),
    pytest.param(frames.l2(IPv6(src=CLEAN_SRC6, dst=ALPHA_DST6, nh=60) / Raw(b"\x06\x05" + b"\0" * 6)),
                 id="v6-extension-beyond-payload"),
    pytest.param(frames.l2(IPv6(src=CLEAN_SRC6, dst=ALPHA_DST6, nh=44) / Raw(b"\x06\0\0")),
                 id="v6-fragment-header-cut"),
])
def test_inconsistent_l4_lengths_are_dropped(dp, tenants, frame):
    action, sample = observe(dp, frame)
    assert action == XDP_DROP
    assert sample.reason in (DropReason.BAD_LENGTH, DropReason.MALFORMED)


def test_ethernet_padding_after_the_ip_packet_is_fine(dp, tenants):
    short = frames.tcp(CLEAN_SRC, ALPHA_DST, flags="S")
    padded = short + b"\0" * (60 - len(short)) + b"\xee" * 8
    action, sample = observe(dp, padded)
    assert (action, sample.reason) == (XDP_REDIRECT, DropReason.NONE)


@pytest.mark.parametrize("size", [1600, 3000, 9000])
@pytest.mark.parametrize("dst,src", [(ALPHA_DST, CLEAN_SRC), (ALPHA_DST6, CLEAN_SRC6)], ids=["v4", "v6"])
def test_jumbo_frames_are_bridged(dp, tenants, size, dst, src):
    header = len(frames.udp(src, dst, payload=b""))
    frame = frames.udp(src, dst, sport=5000, dport=5001, payload=b"j" * (size - header))
    assert len(frame) == size
    action, sample = observe(dp, frame)
    assert (action, sample.reason, sample.wire_length) == (XDP_REDIRECT, DropReason.NONE, size)


def test_garbage_after_an_ip_ethertype_never_aborts(dp, tenants):
    import random  # noqa: PLC0415 - a fixed seed: the same garbage every run

    rng = random.Random(2)
    for _ in range(300):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
        for ethertype in (b"\x08\x00", b"\x86\xdd", b"\x81\x00", b"\x88\xa8"):
            frame = bytes(12) + ethertype + body
            for direction in Direction:
                assert run(dp, frame, direction) in (XDP_DROP, XDP_REDIRECT)
