"""Attack anatomy from an incident's (or a tenant's incidents') sampled packets: top sources and their /24 (IPv4) or /48 (IPv6),
top source and destination ports, protocol and TCP-flag mix, packet-size histogram.

The engine writes the packets it sampled during an incident to two PCAP files (`policy.pcap`:
dropped and passed, libpcap format, Ethernet frames); SecureWatch already keeps their paths (the
incident's `pcaps`). This module reads those files (bounded: at most `MAX_PACKETS` records) with
struct: Ethernet with up to two VLAN tags, IPv4 (first fragments only carry ports), IPv6 (no
extension headers walked: a packet behind one counts under its next-header number), TCP, UDP,
ICMP. Counts are of samples; `share` is each entry's fraction of the file's samples.

Also the rules of an incident in operator language (`rule_text`): `UDP dst port 28960, length 512,
TTL 55–59, payload 00000000…` instead of the rule's fields as Python writes them.
"""

from __future__ import annotations

import asyncio
import collections
import io
import ipaddress
import pathlib
import struct
import time
from typing import Any, BinaryIO

from aiohttp import web

from . import fleet_evidence_store
from .context import OPTIONS, STORE, query_int, visible_incident, visible_tenant
from .store import IncidentFilter

MAX_PACKETS = 200_000          # records read from one capture (the engine's files are bounded too)
TOP = 10                       # entries of each top list
SIZE_BUCKETS = (64, 128, 256, 512, 1024, 1518)   # upper bounds (bytes on the wire); past the last: jumbo
PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 47: "GRE", 50: "ESP", 58: "ICMPv6", 132: "SCTP"}
TCP_FLAGS = ((0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"), (0x20, "URG"),
             (0x40, "ECE"), (0x80, "CWR"))
_PCAP_HEADER = 24              # bytes of the global header
_RECORD = 16                   # bytes of a record header
_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}


class _Tally:
    def __init__(self) -> None:
        self.samples = 0
        self.sources: collections.Counter[str] = collections.Counter()
        self.networks: collections.Counter[str] = collections.Counter()
        self.sports: collections.Counter[str] = collections.Counter()
        self.dports: collections.Counter[str] = collections.Counter()
        self.protocols: collections.Counter[str] = collections.Counter()
        self.flags: collections.Counter[str] = collections.Counter()
        self.sizes: collections.Counter[str] = collections.Counter()

    def to_dict(self) -> dict[str, Any]:
        def top(counter: collections.Counter[str], n: int = TOP) -> list[dict[str, Any]]:
            return [{"key": k, "samples": v, "share": round(v / self.samples, 4)} for k, v in counter.most_common(n)]
        order = [*(f"≤ {b}" for b in SIZE_BUCKETS), f"> {SIZE_BUCKETS[-1]}"]
        return {"samples": self.samples, "sources": top(self.sources), "networks": top(self.networks),
                "source_ports": top(self.sports), "destination_ports": top(self.dports),
                "protocols": top(self.protocols, 32), "tcp_flags": top(self.flags, 32),
                "sizes": [{"key": k, "samples": self.sizes[k], "share": round(self.sizes[k] / self.samples, 4)}
                          for k in order if self.sizes[k]]}


def _size_bucket(length: int) -> str:
    for bound in SIZE_BUCKETS:
        if length <= bound:
            return f"≤ {bound}"
    return f"> {SIZE_BUCKETS[-1]}"


def _flags(bits: int) -> str:
    return "+".join(name for bit, name in TCP_FLAGS if bits & bit) or "none"


def _frame(t: _Tally, frame: bytes, wire_length: int) -> None:
    if len(frame) < 14:
        return
    offset, ethertype = 14, struct.unpack_from("!H", frame, 12)[0]
    while ethertype in (0x8100, 0x88A8) and len(frame) >= offset + 4:   # VLAN tags
        ethertype = struct.unpack_from("!H", frame, offset + 2)[0]
        offset += 4
    ports_at = None
    if ethertype == 0x0800 and len(frame) >= offset + 20:
        ihl = (frame[offset] & 0x0F) * 4
        proto = frame[offset + 9]
        src = ipaddress.IPv4Address(frame[offset + 12:offset + 16])
        network = ipaddress.IPv4Network((int(src) & 0xFFFFFF00, 24))
        fragment_offset = struct.unpack_from("!H", frame, offset + 6)[0] & 0x1FFF
        if fragment_offset == 0:
            ports_at = offset + ihl
    elif ethertype == 0x86DD and len(frame) >= offset + 40:
        proto = frame[offset + 6]
        src = ipaddress.IPv6Address(frame[offset + 8:offset + 24])
        network = ipaddress.IPv6Network((int(src) >> 80 << 80, 48))
        ports_at = offset + 40
    else:
        return
    t.samples += 1
    t.sources[str(src)] += 1
    t.networks[str(network)] += 1
    t.protocols[PROTOCOLS.get(proto, f"IP proto {proto}")] += 1
    t.sizes[_size_bucket(wire_length)] += 1
    if ports_at is not None and proto in (6, 17, 132) and len(frame) >= ports_at + 4:
        sport, dport = struct.unpack_from("!HH", frame, ports_at)
        name = PROTOCOLS[proto]
        t.sports[f"{name} {sport}"] += 1
        t.dports[f"{name} {dport}"] += 1
        if proto == 6 and len(frame) >= ports_at + 14:
            t.flags[_flags(frame[ports_at + 13])] += 1


def _read_into(tally: _Tally, path: pathlib.Path) -> None:
    with path.open("rb") as f:
        _tally_capture(tally, f, path.name)


def _tally_capture(tally: _Tally, f: BinaryIO, name: str) -> None:
    header = f.read(_PCAP_HEADER)
    order = _MAGICS.get(header[:4])
    if order is None or len(header) < _PCAP_HEADER:
        raise ValueError(f"{name} is not a libpcap capture")
    for _ in range(MAX_PACKETS):
        record = f.read(_RECORD)
        if len(record) < _RECORD:
            break
        _, _, captured, wire = struct.unpack(order + "IIII", record)
        frame = f.read(captured)
        if len(frame) < captured:
            break
        _frame(tally, frame, wire)


def uploaded_anatomy(files: dict[str, bytes]) -> dict[str, Any]:
    """The anatomy of a site incident's captures its agent uploaded (`fleet_evidence`), kind -> file."""
    tallies: dict[str, _Tally] = {}
    for kind, data in sorted(files.items()):
        tally = tallies.setdefault(kind, _Tally())
        try:
            _tally_capture(tally, io.BytesIO(data), f"{kind}.pcap")
        except ValueError:
            continue
    return {kind: t.to_dict() for kind, t in tallies.items() if t.samples}


def incident_anatomy(*pcap_sets: dict[str, dict[str, Any]], root: pathlib.Path | None) -> dict[str, Any]:
    """{"dropped": anatomy, "passed": anatomy} of the captures under `root` that are readable, summed
    over every set given (one incident's, or a tenant's incidents')."""
    tallies: dict[str, _Tally] = {}
    if root is None:
        return {}
    for pcaps in pcap_sets:
        for kind, ref in sorted(pcaps.items()):
            path = pathlib.Path(ref["path"]).resolve()
            if not path.is_relative_to(root) or not path.is_file():   # the same confinement as the download
                continue
            tally = tallies.setdefault(kind, _Tally())
            try:
                _read_into(tally, path)
            except (OSError, ValueError):
                continue
    return {kind: t.to_dict() for kind, t in tallies.items() if t.samples}


TENANT_INCIDENTS = 20          # most recent incidents whose captures make a tenant's anatomy
TENANT_SPAN_DAYS = 30          # default look-back of a tenant's anatomy, days


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/incidents/{incident_id}/talkers", api_talkers)
    app.router.add_get("/api/v1/tenants/{tenant_id}/talkers", api_tenant_talkers)


async def anatomy_of(request: web.Request, incident_id: str) -> dict[str, Any]:
    """The anatomy of an incident the caller may read (404 otherwise), read off the event loop."""
    incident = await visible_incident(request, incident_id)
    # A site's incident: the samples its agent uploaded with the PCAP files (issue 17, item 3).
    uploaded = await request.app[STORE].run(fleet_evidence_store.site_pcap_files, incident.id)
    if uploaded:
        return await asyncio.to_thread(uploaded_anatomy, uploaded)
    pcaps = await request.app[STORE].pcaps(incident.id)
    return await asyncio.to_thread(lambda: incident_anatomy(pcaps, root=request.app[OPTIONS]["pcap_root"]))


async def api_talkers(request: web.Request) -> web.Response:
    incident_id = request.match_info["incident_id"]
    return web.json_response({"incident": incident_id, **await anatomy_of(request, incident_id)})


async def api_tenant_talkers(request: web.Request) -> web.Response:
    """A tenant's attack anatomy: the captures of its most recent incidents over `days`."""
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    days = query_int(request, "days", TENANT_SPAN_DAYS, 1, 366)
    store = request.app[STORE]
    incidents = await store.incidents(IncidentFilter(tenant=tenant.id, since=time.time() - days * 86400,
                                                     limit=TENANT_INCIDENTS))
    pcap_sets = [await store.pcaps(i.id) for i in incidents]
    anatomy = await asyncio.to_thread(lambda: incident_anatomy(*pcap_sets, root=request.app[OPTIONS]["pcap_root"]))
    return web.json_response({"tenant": tenant.id, "days": days, "incidents": [i.id for i in incidents],
                              **anatomy})


# -- rules in operator language ---------------------------------------------------------------------

PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", "tcp": "TCP", "udp": "UDP", "icmp": "ICMP",
               "icmpv6": "ICMPv6"}
PAYLOAD_SHOWN = 8              # bytes of a payload match written out before "…"


def _span(value: Any) -> str | None:
    """[lo, hi] as "lo" or "lo–hi"; a single number as itself."""
    if value is None:
        return None
    if isinstance(value, list | tuple) and len(value) == 2:
        lo, hi = int(value[0]), int(value[1])
        return f"{lo}" if lo == hi else f"{lo}–{hi}"
    return str(value)


def _rule_flags(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        mask, want = value
        named = [name if want & bit else f"no {name}" for bit, name in TCP_FLAGS if mask & bit]
        return "flags " + " ".join(named)
    if isinstance(value, list | tuple):
        return "flags " + "+".join(str(v) for v in value)
    return f"flags {value}"


def rule_text(rule: dict[str, Any]) -> str:
    """What a rule matches, as an operator writes it: `UDP dst port 28960, length 512, TTL 55–59`."""
    proto = rule.get("proto")
    head = (PROTO_NAMES.get(proto if not isinstance(proto, str) else proto.lower(), f"IP proto {proto}")
            if proto is not None else "")
    if rule.get("dst"):
        head = f"{head or 'any protocol'} to {rule['dst']},"
    parts: list[str] = []
    for key, label in (("sport", "src port"), ("dport", "dst port")):
        span = _span(rule.get(key))
        if span is not None:
            parts.append(f"{label}{'s' if '–' in span else ''} {span}")
    for key, label in (("length", "length"), ("ttl", "TTL")):
        span = _span(rule.get(key))
        if span is not None:
            parts.append(f"{label} {span}")
    flags = _rule_flags(rule.get("tcp_flags"))
    if flags:
        parts.append(flags)
    if rule.get("fragments") is True:
        parts.append("fragments only")
    elif rule.get("fragments") is False:
        parts.append("no fragments")
    payload = rule.get("payload")
    if payload:
        shown = payload[:2 * PAYLOAD_SHOWN] + ("…" if len(payload) > 2 * PAYLOAD_SHOWN else "")
        mask = rule.get("payload_mask")
        parts.append(f"payload {shown}" + (" (masked)" if mask and set(mask.lower()) != {"f"} else ""))
    if not parts:
        return head.rstrip(",") or "any packet"
    return f"{head} {', '.join(parts)}".strip()


def action_text(rule: dict[str, Any]) -> str:
    action = str(rule.get("action") or "drop").lower()
    if action == "rate_limit":
        return f"rate-limit to {int(rule.get('rate_pps') or 0):,} pps"
    return {"drop": "drop", "count": "count only (monitor mode)"}.get(action, action)
