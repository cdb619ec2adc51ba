"""The `[bgp]` and `[escalation]` tables of the config file: typed, validated, nothing applied on error.

    [bgp]
    local_as = 64512
    router_id = "192.0.2.1"
    [[bgp.peers]]
    address = "192.0.2.2"               # the upstream edge router, over the management network
    peer_as = 64500
    flowspec = true                     # announce FlowSpec (ipv4-flowspec, ipv6-flowspec) to this peer
    rtbh = true                         # announce RTBH host routes to this peer
    rtbh_communities = ["65535:666"]    # default; providers often want their own as well
    # local_address = "192.0.2.1"       # this end of the session (default: router_id for an IPv4 peer)
    # rtbh_next_hop6 = "2001:db8::1"    # next hop of IPv6 RTBH routes: this end's IPv6 address on the link
    [escalation]
    uplink_bps = 10_000_000_000         # capacity of the external link, bits/s
    flowspec_at = 0.7                   # announce FlowSpec when inbound traffic reaches this share of uplink_bps
    hold_down_s = 120                   # keep an announcement this long after its attack ends
    max_announcements = 1000

`parse_bgp` and `parse_escalation` append every problem (each naming `[section] key`) to the
caller's list, as the rest of `appliance.config` does; `parse_escalation_tables` is the one
call for both tables that raises one ConfigError. Without `[bgp]` nothing escalates.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from typing import Any

from escalation.routes import FLOWSPEC
from tenants.errors import ConfigError, did_you_mean, type_name, whole_number

AS_RANGE = (1, 4294967295)            # 4-octet AS numbers (RFC 6793); 0 is reserved (RFC 7607)
COMMUNITY_PART_MAX = 65535            # each half of a standard community "ASN:value" is 16 bits
BLACKHOLE_COMMUNITY = "65535:666"     # RFC 7999 BLACKHOLE
DEFAULT_FLOWSPEC_AT = 0.7             # share of uplink_bps
DEFAULT_HOLD_DOWN_S = 120.0           # seconds
HOLD_DOWN_RANGE_S = (1.0, 86400.0)    # seconds: at least a second, at most a day
DEFAULT_MAX_ANNOUNCEMENTS = 1000      # routes; edge routers hold a few thousand FlowSpec rules in hardware
MAX_ANNOUNCEMENTS_LIMIT = 100000      # routes: beyond that no edge router takes them
MAX_PEERS = 16                        # BGP sessions; an appliance has one or two upstream routers

BGP_KEYS = ("local_as", "router_id", "peers")
PEER_KEYS = ("address", "peer_as", "flowspec", "rtbh", "rtbh_communities", "local_address", "rtbh_next_hop6")
ESCALATION_KEYS = ("uplink_bps", "flowspec_at", "hold_down_s", "max_announcements")


@dataclasses.dataclass(frozen=True, slots=True)
class PeerSettings:
    address: str                        # the peer's address (IPv4 or IPv6), normalised
    peer_as: int
    flowspec: bool = True
    rtbh: bool = False
    rtbh_communities: tuple[str, ...] = (BLACKHOLE_COMMUNITY,)
    local_address: str | None = None    # None: the router id (IPv4 peers)
    rtbh_next_hop6: str | None = None   # IPv6 RTBH next hop; None: the IPv4-mapped router id

    def takes(self, kind: str) -> bool:
        """Whether this peer is to receive announcements of `kind` (flowspec or rtbh)."""
        return self.flowspec if kind == FLOWSPEC else self.rtbh


@dataclasses.dataclass(frozen=True, slots=True)
class BgpSettings:
    local_as: int
    router_id: str
    peers: tuple[PeerSettings, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class EscalationSettings:
    uplink_bps: int | None = None       # bits/s; None: never automatic (manual only)
    flowspec_at: float = DEFAULT_FLOWSPEC_AT
    hold_down_s: float = DEFAULT_HOLD_DOWN_S
    max_announcements: int = DEFAULT_MAX_ANNOUNCEMENTS

    @property
    def rtbh_after_s(self) -> float:
        """Seconds FlowSpec must have been announced, the link still full, before RTBH (issue 14)."""
        return self.hold_down_s / 4


def _unknown(section: str, table: dict[str, Any], known: tuple[str, ...], problems: list[str]) -> None:
    problems.extend(f"[{section}] {key}: unknown key{did_you_mean(key, known)}" for key in table if key not in known)


def _bool(where: str, value: Any, problems: list[str]) -> bool | None:
    if not isinstance(value, bool):
        problems.append(f"{where}: expected true or false, got {type_name(value)} {value!r}")
        return None
    return value


def parse_community(text: Any) -> str:
    """A standard community "ASN:value" (each 0..65535), normalised; ValueError saying why not."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string like {BLACKHOLE_COMMUNITY!r}, got {type_name(text)} {text!r}")
    left, sep, right = text.strip().partition(":")
    if not sep or not (left.isascii() and left.isdigit() and right.isascii() and right.isdigit()) \
            or len(left) > 5 or len(right) > 5 or int(left) > COMMUNITY_PART_MAX or int(right) > COMMUNITY_PART_MAX:
        raise ValueError(f"{text!r} is not a community like {BLACKHOLE_COMMUNITY!r} (two numbers 0-65535)")
    return f"{int(left)}:{int(right)}"


def _address(where: str, value: Any, problems: list[str], version: int | None = None) -> str | None:
    if not isinstance(value, str):
        problems.append(f"{where}: expected an address string, got {type_name(value)} {value!r}")
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        address = None
    if address is None or (version is not None and address.version != version):
        kind = {4: "an IPv4 address", 6: "an IPv6 address"}.get(version or 0, "an IP address")
        problems.append(f"{where}: {value!r} is not {kind}")
        return None
    return str(address)


def parse_bgp(table: Any, problems: list[str]) -> BgpSettings | None:
    """The `[bgp]` table (None when absent or when it has problems, which are appended)."""
    if table is None:
        return None
    if not isinstance(table, dict):
        problems.append(f"[bgp]: expected a table, got {type_name(table)}")
        return None
    before = len(problems)
    _unknown("bgp", table, BGP_KEYS, problems)
    for key in ("local_as", "router_id"):
        if key not in table:
            problems.append(f"[bgp] {key}: required")
    local_as = whole_number("[bgp] local_as", table.get("local_as", 1), *AS_RANGE, problems, " (an AS number)")
    router_id = _address("[bgp] router_id", table.get("router_id", "0.0.0.0"), problems, version=4)
    raw_peers = table.get("peers", [])
    peers: list[PeerSettings] = []
    if not isinstance(raw_peers, list) or not all(isinstance(p, dict) for p in raw_peers):
        problems.append("[bgp] peers: expected an array of tables ([[bgp.peers]])")
        raw_peers = []
    if not raw_peers:
        problems.append("[bgp] peers: at least one [[bgp.peers]] is needed to escalate")
    if len(raw_peers) > MAX_PEERS:
        problems.append(f"[bgp] peers: at most {MAX_PEERS} peers, got {len(raw_peers)}")
    seen: set[str] = set()
    for i, raw in enumerate(raw_peers[:MAX_PEERS]):
        peer = _parse_peer(f"[bgp] peers[{i}]", raw, problems)
        if peer is None:
            continue
        if peer.address in seen:
            problems.append(f"[bgp] peers[{i}] address: {peer.address} is listed twice")
        seen.add(peer.address)
        peers.append(peer)
    if len(problems) > before or local_as is None or router_id is None:
        return None
    return BgpSettings(local_as=local_as, router_id=router_id, peers=tuple(peers))


def _parse_peer(where: str, raw: dict[str, Any], problems: list[str]) -> PeerSettings | None:
    before = len(problems)
    problems.extend(f"{where} {key}: unknown key{did_you_mean(key, PEER_KEYS)}" for key in raw if key not in PEER_KEYS)
    for key in ("address", "peer_as"):
        if key not in raw:
            problems.append(f"{where} {key}: required")
    address = _address(f"{where} address", raw.get("address", "0.0.0.0"), problems)
    peer_as = whole_number(f"{where} peer_as", raw.get("peer_as", 1), *AS_RANGE, problems, " (an AS number)")
    flowspec = _bool(f"{where} flowspec", raw.get("flowspec", True), problems)
    rtbh = _bool(f"{where} rtbh", raw.get("rtbh", False), problems)
    communities: list[str] = []
    raw_communities = raw.get("rtbh_communities", [BLACKHOLE_COMMUNITY])
    if not isinstance(raw_communities, list) or not raw_communities:
        problems.append(f"{where} rtbh_communities: expected a non-empty array of communities like "
                        f"{BLACKHOLE_COMMUNITY!r}")
    else:
        for j, community in enumerate(raw_communities):
            try:
                communities.append(parse_community(community))
            except ValueError as exc:
                problems.append(f"{where} rtbh_communities[{j}]: {exc}")
    local_address = None
    if "local_address" in raw:
        local_address = _address(f"{where} local_address", raw["local_address"], problems)
    elif address is not None and ":" in address:
        problems.append(f"{where} local_address: required for an IPv6 peer (the default is router_id, IPv4)")
    next_hop6 = None
    if "rtbh_next_hop6" in raw:
        next_hop6 = _address(f"{where} rtbh_next_hop6", raw["rtbh_next_hop6"], problems, version=6)
    if len(problems) > before:
        return None
    return PeerSettings(address=address, peer_as=peer_as, flowspec=flowspec, rtbh=rtbh,  # type: ignore[arg-type]
                        rtbh_communities=tuple(dict.fromkeys(communities)), local_address=local_address,
                        rtbh_next_hop6=next_hop6)


def parse_escalation(table: Any, problems: list[str]) -> EscalationSettings:
    """The `[escalation]` table (defaults when absent); problems are appended."""
    if table is None:
        return EscalationSettings()
    if not isinstance(table, dict):
        problems.append(f"[escalation]: expected a table, got {type_name(table)}")
        return EscalationSettings()
    _unknown("escalation", table, ESCALATION_KEYS, problems)
    uplink = None
    if "uplink_bps" in table:
        uplink = whole_number("[escalation] uplink_bps", table["uplink_bps"], 1, 10 ** 15, problems, " bits/s")
    share = table.get("flowspec_at", DEFAULT_FLOWSPEC_AT)
    if isinstance(share, bool) or not isinstance(share, int | float) or not math.isfinite(share) \
            or not 0 < share <= 1:
        problems.append(f"[escalation] flowspec_at: must be a share of uplink_bps in (0, 1], got {share!r}")
        share = DEFAULT_FLOWSPEC_AT
    hold = table.get("hold_down_s", DEFAULT_HOLD_DOWN_S)
    low, high = HOLD_DOWN_RANGE_S
    if isinstance(hold, bool) or not isinstance(hold, int | float) or not math.isfinite(hold) \
            or not low <= hold <= high:
        problems.append(f"[escalation] hold_down_s: must be between {low:g} and {high:g} seconds, got {hold!r}")
        hold = DEFAULT_HOLD_DOWN_S
    cap = whole_number("[escalation] max_announcements", table.get("max_announcements", DEFAULT_MAX_ANNOUNCEMENTS),
                   1, MAX_ANNOUNCEMENTS_LIMIT, problems)
    return EscalationSettings(uplink_bps=uplink, flowspec_at=float(share), hold_down_s=float(hold),
                              max_announcements=cap or DEFAULT_MAX_ANNOUNCEMENTS)


def parse_escalation_tables(bgp: Any, escalation: Any, source: str | None = None
                            ) -> tuple[BgpSettings | None, EscalationSettings]:
    """Both tables at once; one ConfigError listing every problem, nothing returned on error."""
    problems: list[str] = []
    parsed_bgp = parse_bgp(bgp, problems)
    parsed = parse_escalation(escalation, problems)
    if problems:
        raise ConfigError(problems, source=source)
    return parsed_bgp, parsed
