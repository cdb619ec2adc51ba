"""What Seawall announces upstream: FlowSpec rules (RFC 8955, RFC 8956) and RTBH host routes (RFC 7999).

`flowspec_for_rule` translates one of the policy engine's rules (`dataplane.api.Rule`, the
signature the XDP program enforces) into FlowSpec routes; `blackhole_for` makes the RTBH host
route of one attacked address. Both refuse (`Refused`) any destination that is not inside one
of the tenant's own prefixes, and never announce anything wider than that prefix.

Each route knows its ExaBGP API text (`exabgp_nlri`), used by `escalation.speaker`, and its JSON
form (`to_dict`, the `match` of `bgp.announcements[]`). What a FlowSpec route cannot carry (the
TTL band and payload bytes of a signature: FlowSpec has no such components) is listed under
`omitted`: upstream, the route matches a superset of what the XDP rule drops.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from typing import Any

from dataplane.api import Range, Rule
from dataplane.constants import RuleAction

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FLOWSPEC = "flowspec"
RTBH = "rtbh"
KINDS = (FLOWSPEC, RTBH)
PORT_ANY = Range(0, 0xFFFF)
IPV6_HEADER_BYTES = 40          # the dataplane's IPv6 length is payload + 40; FlowSpec's is the payload (RFC 8956)
ASSUMED_PACKET_BYTES = 1500     # bytes/packet when a rate-limited rule names no length: traffic-rate
                                # is in bytes/s (RFC 8955 7.3), so the limit errs on the generous side
# TCP flag bits as ExaBGP names them (RFC 793/3168 bit order).
TCP_FLAG_NAMES = ((0x01, "fin"), (0x02, "syn"), (0x04, "rst"), (0x08, "push"), (0x10, "ack"),
                  (0x20, "urgent"), (0x40, "ece"), (0x80, "cwr"))
PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 47: "gre"}


class Refused(ValueError):
    """An announcement Seawall will not make (outside the tenant's prefixes, over the cap, ...)."""


@dataclasses.dataclass(frozen=True, slots=True)
class FlowSpecRoute:
    """One FlowSpec NLRI with its action. `rate_bytes` 0 is discard (traffic-rate 0)."""

    destination: IPNetwork
    protocol: int | None = None
    source_port: Range | None = None
    destination_port: Range | None = None
    packet_length: Range | None = None     # RFC 8955/8956 semantics (IPv6: payload bytes)
    fragment: bool | None = None           # True: only fragments; False: only non-fragments
    tcp_flags: tuple[int, int] | None = None   # (mask, value) as the dataplane's rule
    rate_bytes: int = 0                    # bytes/s; 0 = discard
    omitted: tuple[str, ...] = ()          # signature fields FlowSpec cannot carry

    kind = FLOWSPEC

    @property
    def key(self) -> str:
        """Identity of the route (what a withdraw must name): the match, without the action."""
        return f"{FLOWSPEC} {self.match_text()}"

    def match_text(self) -> str:
        v6 = self.destination.version == 6
        parts = [f"destination {self.destination}"]
        if self.protocol is not None:
            parts.append(f"{'next-header' if v6 else 'protocol'} ={self.protocol}")
        for name, r in (("source-port", self.source_port), ("destination-port", self.destination_port),
                        ("packet-length", self.packet_length)):
            if r is not None:
                parts.append(f"{name} {_range_text(r)}")
        if self.fragment is not None:
            parts.append(f"fragment [ {'' if self.fragment else '!'}is-fragment ]")
        if self.tcp_flags is not None:
            parts.append(f"tcp-flags [ {_tcp_flags_text(*self.tcp_flags)} ]")
        return "; ".join(parts) + ";"

    def exabgp_nlri(self) -> str:
        action = "discard;" if self.rate_bytes == 0 else f"rate-limit {self.rate_bytes};"
        return f"flow route {{ match {{ {self.match_text()} }} then {{ {action} }} }}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "destination": str(self.destination), "protocol": self.protocol,
            "protocol_name": PROTOCOL_NAMES.get(self.protocol) if self.protocol is not None else None,
            "source_port": _range_list(self.source_port), "destination_port": _range_list(self.destination_port),
            "packet_length": _range_list(self.packet_length), "fragment": self.fragment,
            "tcp_flags": list(self.tcp_flags) if self.tcp_flags else None,
            "action": "discard" if self.rate_bytes == 0 else "rate-limit", "rate_bytes": self.rate_bytes,
            "omitted": list(self.omitted),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class BlackholeRoute:
    """An RTBH host route (/32 or /128); the communities come from each peer's settings."""

    destination: IPNetwork

    kind = RTBH

    @property
    def key(self) -> str:
        return f"{RTBH} {self.destination}"

    def exabgp_nlri(self, communities: Iterable[str], router_id: str, next_hop6: str | None = None) -> str:
        # next-hop self names an IPv4 session's own address, which an IPv6 route cannot carry: the
        # peer's rtbh_next_hop6 (this end's IPv6 address on the link, which a router such as BIRD
        # needs to accept the route), else the IPv4-mapped router id.
        hop = "self" if self.destination.version == 4 else (next_hop6 or f"::ffff:{router_id}")
        return f"route {self.destination} next-hop {hop} community [ {' '.join(communities)} ]"

    def to_dict(self) -> dict[str, Any]:
        return {"destination": str(self.destination)}


Route = FlowSpecRoute | BlackholeRoute


def route_from_dict(kind: str, match: dict[str, Any]) -> Route:
    """A route back from its `to_dict()` form (the announcements saved across restarts)."""
    destination = ipaddress.ip_network(match["destination"])
    if kind == RTBH:
        return BlackholeRoute(destination)

    def rng(key: str) -> Range | None:
        value = match.get(key)
        return None if value is None else Range(int(value[0]), int(value[1]))

    flags = match.get("tcp_flags")
    return FlowSpecRoute(destination=destination, protocol=match.get("protocol"), source_port=rng("source_port"),
                         destination_port=rng("destination_port"), packet_length=rng("packet_length"),
                         fragment=match.get("fragment"), tcp_flags=(int(flags[0]), int(flags[1])) if flags else None,
                         rate_bytes=int(match.get("rate_bytes") or 0), omitted=tuple(match.get("omitted") or ()))


def _range_text(r: Range) -> str:
    return f"={r.lo}" if r.lo == r.hi else f">={r.lo}&<={r.hi}"


def _range_list(r: Range | None) -> list[int] | None:
    return None if r is None else [r.lo, r.hi]


def _flag_names(bits: int) -> str:
    return "+".join(name for bit, name in TCP_FLAG_NAMES if bits & bit)


def _tcp_flags_text(mask: int, value: int) -> str:
    """(flags & mask) == value as RFC 8955 bitmask terms: the set bits must all be set (match
    bit), the other masked bits must all be clear (not bit), both terms ANDed."""
    must_set, must_clear = value & mask & 0xFF, mask & ~value & 0xFF
    terms = ([f"={_flag_names(must_set)}"] if must_set else []) + ([f"!{_flag_names(must_clear)}"] if must_clear else [])
    return "&".join(terms)


def inside(prefixes: Iterable[IPNetwork], network: IPNetwork) -> bool:
    """Whether `network` lies within one of `prefixes` (a tenant's own)."""
    return any(network.version == p.version and network.subnet_of(p) for p in prefixes)  # type: ignore[arg-type]


def host_network(address: str) -> IPNetwork:
    ip = ipaddress.ip_address(address)
    return ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")


def flowspec_for_rule(rule: Rule, prefixes: Iterable[IPNetwork]) -> list[FlowSpecRoute]:
    """The FlowSpec routes that carry `rule` upstream: one for its destination (/32 or /128), or
    one per tenant prefix for a tenant-wide rule. Refused when the destination is outside them."""
    prefixes = list(prefixes)
    if rule.action == RuleAction.COUNT:
        raise Refused("a count-only rule (monitor mode) is never escalated")
    if rule.dst is not None:
        destinations = [host_network(str(rule.dst))]
        if not inside(prefixes, destinations[0]):
            raise Refused(f"{destinations[0]} is not inside the tenant's prefixes")
    else:
        destinations = prefixes
    if not destinations:
        raise Refused("the tenant has no prefixes")
    omitted = tuple(name for name, value in (("ttl", rule.ttl), ("payload", rule.payload)) if value is not None)
    routes = []
    for destination in destinations:
        length = rule.length
        if length is not None and destination.version == 6:
            length = Range(max(length.lo - IPV6_HEADER_BYTES, 0), max(length.hi - IPV6_HEADER_BYTES, 0))
        rate = 0
        if rule.action == RuleAction.RATE_LIMIT:
            per_packet = rule.length.hi if rule.length is not None else ASSUMED_PACKET_BYTES
            rate = max(int(rule.rate_pps) * per_packet, 1)
        routes.append(FlowSpecRoute(
            destination=destination, protocol=rule.proto,
            source_port=None if rule.sport in (None, PORT_ANY) else rule.sport,
            destination_port=None if rule.dport in (None, PORT_ANY) else rule.dport,
            packet_length=length, fragment=rule.fragments, tcp_flags=rule.tcp_flags or None,
            rate_bytes=rate, omitted=omitted))
    return routes


def blackhole_for(address: str, prefixes: Iterable[IPNetwork]) -> BlackholeRoute:
    """The RTBH host route of one attacked address; Refused outside the tenant's prefixes."""
    network = host_network(address)
    if not inside(prefixes, network):
        raise Refused(f"{network} is not inside the tenant's prefixes")
    return BlackholeRoute(network)
