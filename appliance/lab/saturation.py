"""The figures of an upstream-saturation run (issue 14, item 6): what the demo summary and the netns test read.

Per attack (its target and wall-clock window, first frame to last second), from what the lab
measured independently of Seawall: the edge-router agent's log of what BIRD received and what it
enforced (`EdgeRouterAgent.events`), the router's uplink counters (`Upstream.samples`: the flood
handed to the uplink after the FlowSpec rules, the shaper's drops) and the legitimate clients'
per-second records.

    flowspec_s        attack onset -> the FlowSpec route in BIRD's table (announced upstream)
    enforced_s        attack onset -> the router's nftables rule for it installed
    rtbh_s            attack onset -> the blackhole route for the target installed (None: no RTBH)
    flood_gone_s      attack onset -> the flood handed to the uplink below GONE_SHARE of its peak
    withdrawn_s       attack end   -> the last of its routes gone from BIRD (None: still announced)
    legit_*           legitimate success rate before the attack, while the link was full, after
                      the flood was gone (the blackholed server apart: RTBH drops its traffic too)
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

GONE_SHARE = 0.05          # the flood is gone from the uplink below this share of its peak packets/s
SETTLE_S = 1.0             # seconds after the flood is gone before "after" legitimate seconds count


@dataclasses.dataclass(slots=True)
class AttackFigures:
    target: str
    vector: str
    onset: float                       # wall clock of its first frame
    end: float                         # wall clock of its last second
    peak_flood_bps: float = 0.0        # flood offered to the uplink at its peak, bits/s
    uplink_bps: int = 0
    peak_drops_pps: float = 0.0        # the shaper's drops at the peak (the link was full)
    flowspec_s: float | None = None
    enforced_s: float | None = None
    rtbh_s: float | None = None
    flood_gone_s: float | None = None
    withdrawn_s: float | None = None
    legit_before: float | None = None
    legit_saturated: float | None = None
    legit_after: float | None = None
    blackholed_server_after: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _first(events: list[dict], action: str, kind: str, after: float, needle: str) -> float | None:
    return next((e["time"] for e in events
                 if e["action"] == action and e["kind"] == kind and e["time"] >= after and needle in e["route"]), None)


def _last(events: list[dict], action: str, kind: str, after: float, needle: str) -> float | None:
    times = [e["time"] for e in events
             if e["action"] == action and e["kind"] == kind and e["time"] >= after and needle in e["route"]]
    return max(times) if times else None


def _success(seconds: list[dict], started_at: float, start: float, end: float,
             include: set[str] | None = None, exclude: set[str] = frozenset()) -> float | None:
    sent = ok = 0
    for record in seconds:
        middle = started_at + record["second"] - 0.5
        if not start <= middle < end:
            continue
        for server, services in record.get("servers", {}).items():
            if server in exclude or (include is not None and server not in include):
                continue
            for stats in services.values():
                sent += stats["sent"]
                ok += stats["ok"]
    return round(ok / sent, 4) if sent else None


def figures(target: str, vector: str, window: tuple[float, float], *, events: list[dict], rates: list[dict],
            uplink_bps: int, legit_seconds: list[dict], legit_started_at: float | None,
            server_of: dict[str, str]) -> AttackFigures:
    """The figures of one attack. `rates`: `Upstream.rates()`; `server_of`: address -> lab server name."""
    onset, end = window
    out = AttackFigures(target=target, vector=vector, onset=onset, end=end, uplink_bps=uplink_bps)
    host = str(ipaddress.ip_network(target, strict=False).network_address)
    needle_flow, needle_host = f"dst {host}/", f"{host}/"
    flowspec = _first(events, "received", "flowspec", onset, needle_flow)
    enforced = _first(events, "install", "flowspec", onset, needle_flow)
    rtbh = _first(events, "install", "rtbh", onset, needle_host)
    out.flowspec_s = None if flowspec is None else round(flowspec - onset, 2)
    out.enforced_s = None if enforced is None else round(enforced - onset, 2)
    out.rtbh_s = None if rtbh is None else round(rtbh - onset, 2)
    inside = [r for r in rates if onset <= r["time"] <= end]
    if inside:
        peak = max(inside, key=lambda r: r["flood_pps"])
        out.peak_flood_bps, out.peak_drops_pps = round(peak["flood_bps"]), round(max(r["dropped_pps"] for r in inside))
        acted = min((t for t in (enforced, rtbh) if t is not None), default=None)
        if acted is not None and peak["flood_pps"] > 0:
            gone = next((r["time"] for r in inside if r["time"] > acted and r["flood_pps"] < GONE_SHARE * peak["flood_pps"]),
                        None)
            out.flood_gone_s = None if gone is None else round(gone - onset, 2)
    removed = [t for t in (_last(events, "remove", "flowspec", end, needle_flow),
                           _last(events, "remove", "rtbh", end, needle_host)) if t is not None]
    still = [r for r in (flowspec, rtbh) if r is not None]
    if removed and len(removed) >= len(still):
        out.withdrawn_s = round(max(removed) - end, 2)
    if legit_started_at is not None:
        blackholed = {server_of[host]} if rtbh is not None and host in server_of else set()
        out.legit_before = _success(legit_seconds, legit_started_at, onset - 10.0, onset)
        gone_at = onset + out.flood_gone_s if out.flood_gone_s is not None else end
        out.legit_saturated = _success(legit_seconds, legit_started_at, onset, gone_at)
        out.legit_after = _success(legit_seconds, legit_started_at, gone_at + SETTLE_S, end, exclude=blackholed)
        if blackholed:
            out.blackholed_server_after = _success(legit_seconds, legit_started_at, gone_at + SETTLE_S, end,
                                                   include=blackholed)
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _s(value: float | None, missing: str = "not seen") -> str:
    return missing if value is None else f"{value:.2f} s"


def lines(figs: list[AttackFigures], hold_down_s: float | None) -> list[str]:
    """The summary's upstream-escalation block."""
    out = ["", "  upstream escalation (measured at the lab's upstream router):"]
    for f in figs:
        out.append(f"    {f.vector} flood at {f.target}: offered {f.peak_flood_bps / 1e6:.1f} Mbit/s to a "
                   f"{f.uplink_bps / 1e6:.1f} Mbit/s uplink (shaper dropping {f.peak_drops_pps:,.0f} pps)")
        out.append(f"      {'FlowSpec route at the router (BIRD):':<50}{_s(f.flowspec_s)} after onset")
        out.append(f"      {'FlowSpec rule enforced (nftables):':<50}"
                   f"{_s(f.enforced_s, 'not enforced (no room at the router)')}" + (" after onset" if f.enforced_s
                                                                                   is not None else ""))
        if f.rtbh_s is not None:
            out.append(f"      {'RTBH blackhole at the router:':<50}{f.rtbh_s:.2f} s after onset "
                       f"(FlowSpec was not enough; the tenant agreed)")
        out.append(f"      {'flood gone from the uplink:':<50}{_s(f.flood_gone_s)}" +
                   (" after onset" if f.flood_gone_s is not None else ""))
        out.append(f"      {'legitimate success before / link full / after:':<50}{_pct(f.legit_before)} / "
                   f"{_pct(f.legit_saturated)} / {_pct(f.legit_after)}")
        if f.blackholed_server_after is not None:
            out.append(f"      {'  to the blackholed server after RTBH:':<50}{_pct(f.blackholed_server_after)} "
                       f"(RTBH drops everything to the address)")
        hold = f" (hold_down_s {hold_down_s:g} after the engine ended the incident)" if hold_down_s else ""
        out.append(f"      {'withdrawn:':<50}{_s(f.withdrawn_s, 'still announced at the end of the run')}"
                   + (f" after the attack's end{hold}" if f.withdrawn_s is not None else ""))
    return out
