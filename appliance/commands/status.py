"""`seawall status [--json]`: interfaces, attach mode, per-tenant traffic of the running appliance.

`forwarding` (true/false) and `forwarding_state` say whether the bridge forwards now, as the
running appliance last checked with the kernel (both NICs up, the program attached to each):
health checks and orchestration wait for `"forwarding": true`, not for the status to exist.

The report is the appliance's status file (`securewatch.status_types.ApplianceStatus`, keys
unchanged) with what this command adds (`StatusSummary`); `render_human` is the text form.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, NotRequired, TypedDict, cast

from appliance.config import DEFAULT_CONFIG_PATH
from appliance.destinations import SECOND_MAX_ATTACKED
from dataplane.constants import MAX_RULES
from policy.config import PolicyConfig
from securewatch.status_types import (
    ApplianceStatus,
    BgpStatus,
    IncidentStatus,
    InterfaceStatus,
    PolicyStatus,
    SpillStoreStatus,
    SpliceGateStatus,
    TenantStatus,
    UnprotectedStatus,
)


class StatusSummary(TypedDict):
    """What `seawall status --json` prints: the appliance's last `ApplianceStatus` (the keys
    marked NotRequired are absent when it never wrote one) with what this command adds."""

    control_plane: str                    # "running", or "down" when the status is stale or its process gone
    status_age_s: float | None            # seconds since the appliance last wrote the status
    dataplane_attached_to: list[str]      # NICs with a pinned XDP link (that forwards without the control plane)
    forwarding: bool                      # False whenever the control plane is down
    forwarding_state: str
    interfaces: list[InterfaceStatus]
    tenants: dict[str, TenantStatus]
    pid: NotRequired[int]
    updated: NotRequired[float]
    started: NotRequired[float]
    bpffs: NotRequired[str]
    unprotected: NotRequired[UnprotectedStatus]
    policy: NotRequired[PolicyStatus | None]
    incidents: NotRequired[list[IncidentStatus]]
    notifiers: NotRequired[dict[str, dict[str, Any]]]
    securewatch: NotRequired[str | None]
    bgp: NotRequired[BgpStatus | None]
    synauth: NotRequired[dict[str, int]]
    spill_store: NotRequired[SpillStoreStatus | None]
    splice_gate: NotRequired[SpliceGateStatus | None]


STALE_AFTER_S = 5.0  # seconds without a status update before the control plane counts as down
BLOCKED_SHOWN = 20   # blocked sources printed per tenant (the rest: --json, the API)


def register(subparsers) -> None:
    p = subparsers.add_parser("status", help="show the interfaces, attach mode and per-tenant traffic")
    p.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="appliance TOML file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=status)


def status(args) -> int:
    from appliance.service import appliance_paths, pinned_links, read_status  # noqa: PLC0415
    from tenants import ConfigError  # noqa: PLC0415

    try:
        state_dir, bpffs = appliance_paths(args.config)
    except ConfigError as exc:
        print(f"seawall status: {exc}", file=sys.stderr)
        return 2
    report = read_status(state_dir)
    links = [p.name.removeprefix("link_") for p in pinned_links(bpffs)]
    summary = summarize(report, links, time.time())
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(render_human(summary))
    return 0 if summary["control_plane"] == "running" or links else 1


def summarize(report: ApplianceStatus | None, links: list[str], now: float) -> StatusSummary:
    """The command's report from the last status file (`report`, None without one), the NICs with a
    pinned link and the time now (seconds since the epoch)."""
    age = None if report is None else now - report.get("updated", 0)
    running = report is not None and age is not None and age < STALE_AFTER_S and _alive(report.get("pid"))
    summary = cast(StatusSummary, {
        "control_plane": "running" if running else "down", "status_age_s": None if age is None else round(age, 1),
        "dataplane_attached_to": links, **(report or {"interfaces": [], "tenants": {}})})
    if not running:  # a stale report's word on forwarding is not news
        summary["forwarding"] = False
        summary["forwarding_state"] = "unknown: the control plane is down" + (
            " (the pinned bridge keeps forwarding without it)" if links else "")
    else:
        summary.setdefault("forwarding", False)
        summary.setdefault("forwarding_state", "unknown")
    return summary


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def render_human(s: StatusSummary) -> str:
    """The summary as `seawall status` prints it without --json (several lines, no trailing newline)."""
    lines: list[str] = []
    line = lines.append
    cp = s["control_plane"]
    line(f"control plane: {cp}" + ("" if cp == "running" else
                                     f" (last status {s['status_age_s']} s ago)" if s["status_age_s"] else ""))
    forwarding = s.get("forwarding", False)
    line(f"forwarding:    {'yes' if forwarding else 'no'}"
          + ("" if forwarding else f" ({s.get('forwarding_state', 'unknown')})"))
    if s["dataplane_attached_to"]:
        line(f"dataplane:     attached to {', '.join(s['dataplane_attached_to'])} (pinned, forwards without the control plane)")
    else:
        line("dataplane:     not attached")
    for itf in s.get("interfaces", []):
        line(f"  {itf['role']:<9} {itf['name']:<16} ifindex {itf['ifindex']:<5} XDP {itf['mode']}")
    tenants = s.get("tenants", {})
    if tenants:
        line(f"\n{'tenant':<16} {'mode':<9} {'passed pps':>11} {'dropped pps':>12} {'passed pkts':>13} {'dropped pkts':>13}")
        for tid, t in tenants.items():
            line(f"{tid:<16} {t['mode']:<9} {t['passed_pps']:>11.0f} {t['dropped_pps']:>12.0f} "
                  f"{t['passed_packets']:>13} {t['dropped_packets']:>13}")
        budgets = {tid: t["class_budgets"] for tid, t in tenants.items() if t.get("class_budgets")}
        if budgets:
            line("\nper-destination class budgets, packets/s (source: policy, baseline, or none while warming up)")
            for tid, b in budgets.items():
                line(f"{tid:<16} " + "  ".join(f"{cls} {v['pps']} ({v['source'].split()[0]})" for cls, v in b.items()))
    blocked = {tid: t for tid, t in tenants.items() if t.get("blocked_sources")}
    if blocked:
        line("\nblocked sources (application-layer floods), newest first")
        for tid, t in blocked.items():
            shown = t["blocked_sources"]
            for b in shown[:BLOCKED_SHOWN]:
                line(f"{tid:<16} {b['src']:<39} {b['reason']}")
            total = t.get("blocked_sources_total", len(shown))
            if total > min(len(shown), BLOCKED_SHOWN):
                line(f"{tid:<16} ... {total} in all (seawall status --json, or the API's blocked-sources)")
    synauth = {name: n for name, n in (s.get("synauth") or {}).items() if n}
    if synauth:
        line("\nSYN authentication: " + "  ".join(f"{name} {n}" for name, n in synauth.items()))
    gate = s.get("splice_gate")
    if gate and (gate["open"] or gate["closes"]):
        line(f"splice gate:   {'open' if gate['open'] else 'closed'}"
             + (f", {gate['active_destinations']:,} destinations splice active at the last look" if gate["open"] else "")
             + f"; closed {gate['closes']:,} times since the control plane started")
    store = s.get("spill_store")
    if store:
        line(f"\nspill store:   {store['in_use']:,} of {store['slots']:,} slots in use "
             f"({100.0 * store['in_use'] / max(store['slots'], 1):.0f} %), {store['freed']:,} freed"
             + (f"; {store['overflow_entries']:,} addresses in the overflow map (of {store['overflow_capacity']:,}): "
                f"the store was full, raise [appliance] max_addresses" if store.get("overflow_entries") else ""))
    pol = s.get("policy") or {}
    if pol:
        waiting = pol.get("rules_waiting_for_room", 0)
        line(f"\nincidents open: {pol.get('open_incidents', 0)}   rules installed: {pol.get('rules_installed', 0)}"
             + (f"   {waiting:,} attacks wait for room in the rule table (full at {MAX_RULES:,})" if waiting else ""))
        tick = pol.get("last_tick") or {}
        if tick.get("wall_ms") is not None:
            overrun = pol.get("ticks_overrun", 0)
            line(f"policy tick:   {tick['wall_ms']:,.0f} ms ({tick.get('cpu_ms', 0.0):,.0f} ms CPU) of every "
                 f"{1000.0 * pol.get('tick_s', 0.0):,.0f} ms, {tick.get('destinations', 0):,} destinations"
                 + (f"; {overrun:,} ticks overran it (raise tick_ms: detection slows by as much)" if overrun else ""))
        if pol.get("attacked_rows_left_out"):
            line(f"per-second rows left out: {pol['attacked_rows_left_out']:,} (attacked destinations past the "
                 f"busiest {SECOND_MAX_ATTACKED:,} a second; their minute rollups are kept)")
        if pol.get("events_dropped"):
            line(f"events dropped: {pol['events_dropped']:,} (a subscriber's queue stayed full: SecureWatch, "
                 f"the notifiers or the fleet agent missed them; see the log)")
        changed = _knobs_set(pol.get("knobs") or {})
        if changed:
            line("policy knobs:  " + ", ".join(f"{key} {value}" for key, value in changed.items())
                 + " ([policy]; the others at their defaults)")
    bgp = s.get("bgp")
    if bgp:
        for peer in bgp["peers"]:
            line(f"BGP peer:      {peer['address']} AS{peer['peer_as']} {peer['state']}"
                 + (f" for {peer['uptime_s']:.0f} s" if peer["uptime_s"] else ""))
        kinds = [a["kind"] for a in bgp["announcements"]]
        line(f"announced:     {kinds.count('flowspec')} FlowSpec, {kinds.count('rtbh')} RTBH"
             f" (speaker restarts: {bgp['speaker'].get('restarts', 0)})")
    if s.get("securewatch"):
        line(f"SecureWatch:   {s['securewatch']}")
    return "\n".join(lines)


def _knobs_set(knobs: dict[str, Any]) -> dict[str, Any]:
    """The engine's knobs (the status's policy.knobs) that differ from the engine's defaults; false for a
    fast confirmation turned off, as [policy] writes it."""
    defaults = PolicyConfig()
    def shown(value: Any) -> Any:
        if value is None:
            return "false"
        return int(value) if isinstance(value, float) and value.is_integer() else value

    return {key: shown(value) for key, value in knobs.items()
            if hasattr(defaults, key) and value != getattr(defaults, key)}
