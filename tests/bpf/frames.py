"""Frames for the bpf tier, built with scapy and returned as wire bytes."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6ND_NS,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

MAC_EXTERNAL = "02:00:00:00:00:01"
MAC_INTERNAL = "02:00:00:00:00:02"
ETH_P_8021Q, ETH_P_8021AD = 0x8100, 0x88A8


def ether(vlans: tuple[tuple[int, int], ...] = ()) -> Packet:
    """Ethernet with (tag ethertype, vlan id) tags, outermost first: ((0x88a8, 100), (0x8100, 10)) is QinQ."""
    if not vlans:
        return Ether(src=MAC_EXTERNAL, dst=MAC_INTERNAL)
    head: Packet = Ether(src=MAC_EXTERNAL, dst=MAC_INTERNAL, type=vlans[0][0])
    for position, (_, vid) in enumerate(vlans):
        tag = Dot1Q(vlan=vid)
        if position + 1 < len(vlans):
            tag.type = vlans[position + 1][0]
        head = head / tag
    return head


def l2(packet: Packet, vlans: tuple[tuple[int, int], ...] = ()) -> bytes:
    return bytes(ether(vlans) / packet)


def ip(src: str, dst: str, **fields) -> Packet:
    """IPv4 or IPv6 header by the address family of `dst`."""
    if ":" in dst:
        if "ttl" in fields:
            fields["hlim"] = fields.pop("ttl")
        if "proto" in fields:
            fields["nh"] = fields.pop("proto")
        return IPv6(src=src, dst=dst, **fields)
    return IP(src=src, dst=dst, **fields)


def tcp(src: str, dst: str, sport: int = 40000, dport: int = 80, flags: str | int = "S", payload: bytes = b"",
        vlans: tuple[tuple[int, int], ...] = (), seq: int = 0, ack: int = 0, **ip_fields) -> bytes:
    return l2(ip(src, dst, **ip_fields) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack) / Raw(payload),
              vlans)


def udp(src: str, dst: str, sport: int = 40000, dport: int = 53, payload: bytes = b"x" * 16,
        vlans: tuple[tuple[int, int], ...] = (), **ip_fields) -> bytes:
    return l2(ip(src, dst, **ip_fields) / UDP(sport=sport, dport=dport) / Raw(payload), vlans)


def icmp(src: str, dst: str, payload: bytes = b"ping", vlans: tuple[tuple[int, int], ...] = ()) -> bytes:
    if ":" in dst:
        from scapy.layers.inet6 import ICMPv6EchoRequest  # noqa: PLC0415

        return l2(IPv6(src=src, dst=dst) / ICMPv6EchoRequest(data=payload), vlans)
    return l2(IP(src=src, dst=dst) / ICMP() / Raw(payload), vlans)


def arp(vlans: tuple[tuple[int, int], ...] = ()) -> bytes:
    return l2(ARP(psrc="192.0.2.1", pdst="192.0.2.2"), vlans)


def lldp() -> bytes:
    """An LLDP frame (ethertype 0x88cc) with chassis id, port id, TTL and end TLVs."""
    tlvs = bytes.fromhex("0207" "04020000000001" "0403" "0565" "30" "0602" "0078" "0000")
    return bytes(Ether(src=MAC_EXTERNAL, dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(tlvs))


def neighbour_solicitation(target: str) -> bytes:
    return l2(IPv6(src="fe80::1", dst="ff02::1:ff00:10", hlim=255) / ICMPv6ND_NS(tgt=target))


EXTENSION_HEADERS = {
    "hop": lambda: IPv6ExtHdrHopByHop(),
    "routing": lambda: IPv6ExtHdrRouting(),
    "dest": lambda: IPv6ExtHdrDestOpt(),
    "ah": lambda: AH(spi=1, seq=1, icv=b"\0" * 12),
    "frag_first": lambda: IPv6ExtHdrFragment(offset=0, m=1, id=7),
    "frag_later": lambda: IPv6ExtHdrFragment(offset=100, m=0, id=7),
}


EXTENSION_PROTOCOLS = {"hop": 0, "routing": 43, "dest": 60, "ah": 51, "frag_first": 44, "frag_later": 44}
AH_PAYLOAD_LENGTH = 4  # 32-bit words minus 2: 12 bytes of header and a 12-byte ICV


def ipv6_with_extensions(src: str, dst: str, chain: list[str], upper: Packet) -> bytes:
    """IPv6 / the named extension headers in order / `upper` (scapy fills neither nh nor length of AH)."""
    packet: Packet = IPv6(src=src, dst=dst)
    for position, name in enumerate(chain):
        header = EXTENSION_HEADERS[name]()
        if name == "ah":
            header.payloadlen = AH_PAYLOAD_LENGTH
            header.nh = (EXTENSION_PROTOCOLS[chain[position + 1]] if position + 1 < len(chain)
                         else _upper_protocol(upper))
        packet = packet / header
    return l2(packet / upper)


def _upper_protocol(upper: Packet) -> int:
    probe = bytes(IPv6() / upper)
    return probe[6]
