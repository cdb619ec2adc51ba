"""An independent Python model of the XDP program's verdict, written from the spec (issue #2).

It reads raw frame bytes (so truncated and corrupted frames are modelled too)
and answers: the XDP action, the drop reasons the spec allows for it, which
tenant's counters move, and the traffic class. Where the spec leaves a choice
open (is a TCP data offset beyond the IP length a bad length or a malformed
header?), the model accepts every reason the spec allows rather than copying
the program's choice. It shares no code with the program or with
policy/packets.py; it takes only the tenant set and the rules as data.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from dataplane.api import Rule
from dataplane.constants import (
    MAX_IPV6_EXT_HEADERS,
    MAX_VLAN_DEPTH,
    NO_TENANT,
    PAYLOAD_MATCH_BYTES,
    Direction,
    DropReason,
    RuleAction,
    TrafficClass,
)
from tenants import TenantSet

XDP_DROP, XDP_REDIRECT = 1, 4
ETH_HEADER = 14        # bytes: destination, source, ethertype
VLAN_TAG = 4           # bytes: TCI, encapsulated ethertype
VLAN_ETHERTYPES = (0x8100, 0x88A8)
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
HOP_BY_HOP, ROUTING, FRAGMENT, AH, DEST_OPTS = 0, 43, 44, 51, 60
EXTENSION_HEADERS = (HOP_BY_HOP, ROUTING, FRAGMENT, AH, DEST_OPTS)
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
TOO_MANY_EXTENSIONS_PROTO = 255   # protocol reported when the extension chain is longer than walked

# A length the packet declares that the bytes do not back up: either reason fits the spec's words.
LENGTH_PROBLEM = frozenset({DropReason.BAD_LENGTH, DropReason.MALFORMED})
TRUNCATED_L4 = frozenset({DropReason.MALFORMED})
BAD_IP_LENGTH = frozenset({DropReason.BAD_LENGTH})


@dataclasses.dataclass(slots=True)
class ParsedPacket:
    is_v6: bool
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    proto: int
    ttl: int
    ip_length: int                        # IPv4 total length, IPv6 payload length + 40
    fragment: str = "none"                # none | first | later
    l4_ok: bool = False
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    payload_offset: int = 0               # frame offset of the L4 payload, when l4_ok
    invalid: frozenset[DropReason] = frozenset()  # non-empty: a header problem, any of these reasons

    @property
    def traffic_class(self) -> TrafficClass:
        if self.fragment != "none":
            return TrafficClass.FRAGMENT
        if self.proto == TCP:
            return TrafficClass.TCP_SYN if self.tcp_flags & (SYN | ACK) == SYN else TrafficClass.TCP_OTHER
        if self.proto == UDP:
            return TrafficClass.UDP
        if self.proto in (ICMP, ICMPV6):
            return TrafficClass.ICMP
        return TrafficClass.OTHER


def _u16(frame: bytes, offset: int) -> int:
    return struct.unpack_from("!H", frame, offset)[0]


def parse(frame: bytes) -> ParsedPacket | None:
    """The IP packet in a frame, or None when the frame is bridged unread (not IP, or no readable IP header)."""
    if len(frame) < ETH_HEADER:
        return None
    ethertype = _u16(frame, 12)
    offset = ETH_HEADER
    for _ in range(MAX_VLAN_DEPTH):
        if ethertype not in VLAN_ETHERTYPES:
            break
        if len(frame) < offset + VLAN_TAG:
            return None
        ethertype = _u16(frame, offset + 2)
        offset += VLAN_TAG
    if ethertype == 0x0800:
        return _parse_ipv4(frame, offset)
    if ethertype == 0x86DD:
        return _parse_ipv6(frame, offset)
    return None  # ARP, LLDP, unknown ethertypes, more tags than walked


def _parse_ipv4(frame: bytes, l3: int) -> ParsedPacket | None:
    if len(frame) < l3 + 20 or frame[l3] >> 4 != 4:
        return None
    p = ParsedPacket(is_v6=False, src=ipaddress.IPv4Address(frame[l3 + 12:l3 + 16]),
                     dst=ipaddress.IPv4Address(frame[l3 + 16:l3 + 20]), proto=frame[l3 + 9], ttl=frame[l3 + 8],
                     ip_length=_u16(frame, l3 + 2))
    header_length = (frame[l3] & 0x0F) * 4
    if header_length < 20 or p.ip_length < header_length or l3 + p.ip_length > len(frame):
        p.invalid = BAD_IP_LENGTH
        return p
    flags_offset = _u16(frame, l3 + 6)
    if flags_offset & 0x1FFF:
        p.fragment = "later"
    elif flags_offset & 0x2000:
        p.fragment = "first"
    if p.fragment != "later":
        _parse_l4(p, frame, l3 + header_length, l3 + p.ip_length)
    return p


def _parse_ipv6(frame: bytes, l3: int) -> ParsedPacket | None:
    if len(frame) < l3 + 40 or frame[l3] >> 4 != 6:
        return None
    p = ParsedPacket(is_v6=True, src=ipaddress.IPv6Address(frame[l3 + 8:l3 + 24]),
                     dst=ipaddress.IPv6Address(frame[l3 + 24:l3 + 40]), proto=frame[l3 + 6], ttl=frame[l3 + 7],
                     ip_length=_u16(frame, l3 + 4) + 40)
    ip_end = l3 + p.ip_length
    if ip_end > len(frame):
        p.invalid = BAD_IP_LENGTH
        return p
    next_header, cursor = frame[l3 + 6], l3 + 40
    walked = 0
    while next_header in EXTENSION_HEADERS:
        if walked == MAX_IPV6_EXT_HEADERS:  # more than the spec walks: counted as OTHER, never looked into
            p.proto = TOO_MANY_EXTENSIONS_PROTO
            return p
        walked += 1
        if next_header == FRAGMENT:
            if cursor + 8 > ip_end:
                p.invalid = LENGTH_PROBLEM
                return p
            p.fragment = "later" if _u16(frame, cursor + 2) & 0xFFF8 else "first"
            next_header, cursor = frame[cursor], cursor + 8
            if p.fragment == "later":
                p.proto = next_header
                return p
            continue
        if cursor + 2 > ip_end:
            p.invalid = LENGTH_PROBLEM
            return p
        length = (frame[cursor + 1] + 2) * 4 if next_header == AH else (frame[cursor + 1] + 1) * 8
        next_header, cursor = frame[cursor], cursor + length
        if cursor > ip_end:
            p.invalid = LENGTH_PROBLEM
            return p
    p.proto = next_header
    _parse_l4(p, frame, cursor, ip_end)
    return p


def _parse_l4(p: ParsedPacket, frame: bytes, l4: int, ip_end: int) -> None:
    """TCP, UDP, ICMP/ICMPv6 header at l4; ip_end never exceeds the frame here."""
    if p.proto == TCP:
        if l4 + 20 > ip_end:
            p.invalid = TRUNCATED_L4
            return
        data_offset = (frame[l4 + 12] >> 4) * 4
        if data_offset < 20 or l4 + data_offset > ip_end:
            p.invalid = LENGTH_PROBLEM
            return
        p.sport, p.dport = _u16(frame, l4), _u16(frame, l4 + 2)
        p.tcp_flags = frame[l4 + 13]
        p.payload_offset = l4 + data_offset
        p.l4_ok = True
    elif p.proto == UDP:
        if l4 + 8 > ip_end:
            p.invalid = TRUNCATED_L4
            return
        udp_length = _u16(frame, l4 + 4)
        # A first fragment holds only the start of the datagram that the UDP length describes.
        if udp_length < 8 or (p.fragment == "none" and l4 + udp_length > ip_end):
            p.invalid = LENGTH_PROBLEM
            return
        p.sport, p.dport = _u16(frame, l4), _u16(frame, l4 + 2)
        p.payload_offset = l4 + 8
        p.l4_ok = True
    elif p.proto in (ICMP, ICMPV6):
        if l4 + 4 > ip_end:
            p.invalid = TRUNCATED_L4
            return
        p.payload_offset = l4 + 4
        p.l4_ok = True


def bad_tcp_flags(flags: int) -> bool:
    f = flags & (FIN | SYN | RST | PSH | ACK | URG)
    return (f == 0 or f & (SYN | FIN) == SYN | FIN or f & (SYN | RST) == SYN | RST
            or f & (FIN | PSH | URG) == FIN | PSH | URG)


@dataclasses.dataclass(frozen=True, slots=True)
class Expected:
    action: int                                  # XDP_DROP or XDP_REDIRECT
    reasons: frozenset[DropReason]               # empty: the sample's reason must be NONE
    tenant_idx: int | None                       # None: the frame is not parsed as IP (no counters, no sample)
    traffic_class: TrafficClass | None
    matched_rules: tuple[int, ...] = ()          # rule ids whose counters this frame moves


@dataclasses.dataclass(frozen=True, slots=True)
class _TenantView:
    index: int
    monitor: bool
    invalid_filters: bool
    networks: tuple
    allow: tuple
    deny: tuple


class ReferenceModel:
    """The verdict the spec demands, for a tenant set and the installed rules (id -> Rule, in install order)."""

    def __init__(self, tenant_set: TenantSet, indices: dict[str, int], rules: dict[int, Rule] | None = None) -> None:
        self.tenants = [_TenantView(indices[t.id], t.mode == "monitor", t.policy.invalid_filters, t.prefixes,
                                    t.allow, t.deny) for t in tenant_set]
        self.rules = dict(rules or {})

    def tenant_of(self, address) -> _TenantView | None:
        for tenant in self.tenants:
            if any(net.version == address.version and address in net for net in tenant.networks):
                return tenant
        return None

    def expect(self, frame: bytes, direction: Direction) -> Expected:
        p = parse(frame)
        if p is None:
            return Expected(XDP_REDIRECT, frozenset(), None, None)
        if direction == Direction.OUTBOUND:
            owner = self.tenant_of(p.src)
            return Expected(XDP_REDIRECT, frozenset(), owner.index if owner else NO_TENANT, p.traffic_class)
        tenant = self.tenant_of(p.dst)
        if tenant is None:
            return Expected(XDP_REDIRECT, frozenset(), NO_TENANT, p.traffic_class)
        reasons, matched = self._inbound_reasons(tenant, p, frame)
        drop = bool(reasons) and not tenant.monitor
        return Expected(XDP_DROP if drop else XDP_REDIRECT, reasons, tenant.index, p.traffic_class, matched)

    def _inbound_reasons(self, tenant: _TenantView, p: ParsedPacket, frame: bytes
                         ) -> tuple[frozenset[DropReason], tuple[int, ...]]:
        if any(_acl_matches(entry, p) for entry in tenant.allow):
            return frozenset(), ()
        if any(_acl_matches(entry, p) for entry in tenant.deny):
            return frozenset({DropReason.DENY_LIST}), ()
        if tenant.invalid_filters:
            if p.invalid:
                return p.invalid, ()
            found = set()
            if p.src == p.dst:
                found.add(DropReason.LAND)
            if p.l4_ok and p.proto == TCP and bad_tcp_flags(p.tcp_flags):
                found.add(DropReason.BAD_TCP_FLAGS)
            if p.l4_ok and p.proto in (TCP, UDP) and (p.sport == 0 or p.dport == 0):
                found.add(DropReason.PORT_ZERO)
            if found:
                return frozenset(found), ()
        matched: list[int] = []
        own = [i for i, r in self.rules.items() if r.tenant_idx == tenant.index and r.dst == p.dst]
        wide = [i for i, r in self.rules.items() if r.tenant_idx == tenant.index and r.dst is None]
        for rule_id in own + wide:
            rule = self.rules[rule_id]
            if not _rule_matches(rule, p, frame):
                continue
            matched.append(rule_id)
            if rule.action == RuleAction.COUNT:
                continue
            if rule.action == RuleAction.RATE_LIMIT:
                raise ValueError("the model is stateless: it does not predict rate-limit rules")
            return frozenset({DropReason.RULE}), tuple(matched)
        return frozenset(), tuple(matched)


def _acl_matches(entry, p: ParsedPacket) -> bool:
    if entry.src is not None and (entry.src.version != p.src.version or p.src not in entry.src):
        return False
    if entry.proto is not None and entry.proto != p.proto:
        return False
    for port_range, port in ((entry.sport, p.sport), (entry.dport, p.dport)):
        if port_range is None or (port_range.lo == 0 and port_range.hi == 0xFFFF):
            continue
        if not (p.l4_ok and p.proto in (TCP, UDP) and port_range.lo <= port <= port_range.hi):
            return False
    return True


def _rule_matches(rule: Rule, p: ParsedPacket, frame: bytes) -> bool:
    if rule.proto is not None and rule.proto != p.proto:
        return False
    if rule.fragments is True and p.fragment == "none":
        return False
    if rule.fragments is False and p.fragment != "none":
        return False
    if rule.length is not None and not rule.length.lo <= p.ip_length <= rule.length.hi:
        return False
    if rule.ttl is not None and not rule.ttl.lo <= p.ttl <= rule.ttl.hi:
        return False
    needs_l4 = rule.sport is not None or rule.dport is not None or rule.tcp_flags is not None or rule.payload
    if needs_l4 and not p.l4_ok:
        return False
    if rule.sport is not None and not rule.sport.lo <= p.sport <= rule.sport.hi:
        return False
    if rule.dport is not None and not rule.dport.lo <= p.dport <= rule.dport.hi:
        return False
    if rule.tcp_flags is not None:
        mask, value = rule.tcp_flags
        if p.proto != TCP or p.tcp_flags & mask != value & mask:
            return False
    if rule.payload:
        # The rule compares PAYLOAD_MATCH_BYTES bytes: they must all be in the frame.
        window = frame[p.payload_offset:p.payload_offset + PAYLOAD_MATCH_BYTES]
        if len(window) < PAYLOAD_MATCH_BYTES:
            return False
        mask = rule.payload_mask or b"\xff" * len(rule.payload)
        if any(window[i] & mask[i] != rule.payload[i] & mask[i] for i in range(len(rule.payload))):
            return False
    return True
