"""Per-tenant reports for a period: what a customer reads to learn what happened to its network.

One `Report` object is built from the store: the traffic over the period (passed and dropped, a
chart), each attack with its vectors, peak size, duration, time to mitigate, what was dropped and
what got through, the rules that dropped it and its own chart, the servers that were attacked or
busiest (per-server highlights) and the sources and ports of the attack traffic (top talkers,
from the engine's sampled packets). It is rendered as JSON (`to_dict`), CSV (`to_csv`, one
section per table) and as one self-contained HTML document that is also printed to PDF
(`reports_render`).
"""

from __future__ import annotations

import asyncio
import calendar
import collections
import csv
import dataclasses
import datetime
import io
import pathlib
import re
from typing import Any

from . import fleet_tenant
from .store import IncidentFilter, Store
from .talkers import incident_anatomy, rule_text

MINUTE_S = 60  # seconds per traffic_minutes row
PERIOD_YEARS = (1970, 9998)  # years a report period may fall in (see _check_year)
_MONTH = re.compile(r"(\d{4})-(\d{2})")
_RANGE = re.compile(r"(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})")


@dataclasses.dataclass(frozen=True, slots=True)
class Period:
    label: str          # "2025-05" or "2025-05-01..2025-05-15"
    start: float        # seconds since the epoch, inclusive
    end: float          # exclusive


def parse_period(text: str) -> Period:
    """'YYYY-MM' (a calendar month, UTC) or 'YYYY-MM-DD..YYYY-MM-DD' (inclusive days, UTC),
    within the years PERIOD_YEARS; ValueError starting with "period: " otherwise."""
    m = _MONTH.fullmatch(text)
    if m:
        year, month = int(m.group(1)), int(m.group(2))
        if not 1 <= month <= 12:
            raise ValueError(f"period: month {month} is not 01..12")
        _check_year(year)
        start = datetime.datetime(year, month, 1, tzinfo=datetime.UTC)
        days = calendar.monthrange(year, month)[1]
        return Period(text, start.timestamp(), (start + datetime.timedelta(days=days)).timestamp())
    m = _RANGE.fullmatch(text)
    if m:
        try:
            first = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.UTC)
            last = datetime.datetime.fromisoformat(m.group(2)).replace(tzinfo=datetime.UTC)
        except ValueError as exc:
            raise ValueError(f"period: {exc}") from None
        if last < first:
            raise ValueError("period: the range ends before it starts")
        _check_year(first.year)
        _check_year(last.year)
        return Period(text, first.timestamp(), (last + datetime.timedelta(days=1)).timestamp())
    raise ValueError(f"period: {text!r} is not YYYY-MM or YYYY-MM-DD..YYYY-MM-DD")


def _check_year(year: int) -> None:
    # Nothing is recorded before the epoch, and a period ending after 9999 has no datetime end.
    low, high = PERIOD_YEARS
    if not low <= year <= high:
        raise ValueError(f"period: year {year} is outside {low}..{high}")


def previous_month(now: float) -> Period:
    today = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
    last_month_end = today.replace(day=1) - datetime.timedelta(days=1)
    return parse_period(f"{last_month_end.year:04d}-{last_month_end.month:02d}")


def current_month(now: float) -> Period:
    today = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
    return parse_period(f"{today.year:04d}-{today.month:02d}")


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    tenant: str
    tenant_name: str
    period: Period
    generated: float
    attacks: list[dict[str, Any]]
    vectors: dict[str, int]
    targets: list[dict[str, Any]]
    traffic: dict[str, float]
    chart: dict[str, list[float]] = dataclasses.field(default_factory=dict)   # the period's traffic, columnar
    servers: list[dict[str, Any]] = dataclasses.field(default_factory=list)   # per-server highlights
    talkers: dict[str, Any] = dataclasses.field(default_factory=dict)         # attack anatomy (dropped samples)
    site: str | None = None            # a fleet's site the report is narrowed to (None: every site summed)

    @property
    def summary(self) -> dict[str, Any]:
        efficacies = [a["efficacy"] for a in self.attacks if a["efficacy"] is not None]
        mitigations = sorted(a["mitigation_s"] for a in self.attacks if a["mitigation_s"] is not None)
        return {
            "attacks": len(self.attacks),
            "peak_pps": max((a["peak_pps"] for a in self.attacks), default=0.0),
            "peak_bps": max((a["peak_bps"] for a in self.attacks), default=0.0),
            "longest_s": max((a["duration_s"] for a in self.attacks), default=0.0),
            "total_attack_s": round(sum(a["duration_s"] for a in self.attacks), 1),
            "packets_dropped": sum(a["packets_dropped"] for a in self.attacks),
            "packets_passed_during_attacks": sum(a["packets_passed"] for a in self.attacks),
            "median_mitigation_s": mitigations[len(mitigations) // 2] if mitigations else None,
            "slowest_mitigation_s": mitigations[-1] if mitigations else None,
            "mean_efficacy": round(sum(efficacies) / len(efficacies), 4) if efficacies else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "tenant_name": self.tenant_name, "period": self.period.label,
                "start": self.period.start, "end": self.period.end, "generated": self.generated,
                "summary": self.summary, "vectors": self.vectors, "attacks": self.attacks,
                "targets": self.targets, "traffic": self.traffic, "chart": self.chart, "servers": self.servers,
                "talkers": self.talkers, "site": self.site}

    def to_csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["section", "tenant", "period"])
        w.writerow(["report", self.tenant, self.period.label])
        w.writerow([])
        w.writerow(["summary", *self.summary.keys()])
        w.writerow(["summary", *("" if v is None else v for v in self.summary.values())])
        w.writerow([])
        w.writerow(["attack", "incident", "started_utc", "duration_s", "vectors", "peak_pps", "peak_bps",
                    "packets_dropped", "efficacy", "target", "mitigation_s", "packets_passed", "sites"])
        for a in self.attacks:
            w.writerow(["attack", *_attack_cells(a), " ".join(a["sites"])])
        if any(a["legs"] for a in self.attacks):
            # An attack seen at several sites: one row per site's incident, under the attack's id.
            w.writerow([])
            w.writerow(["attack_leg", "attack", "incident", "site", "started_utc", "duration_s", "vectors",
                        "peak_pps", "peak_bps", "packets_dropped", "efficacy", "target", "mitigation_s",
                        "packets_passed"])
            for a in self.attacks:
                for leg in a["legs"]:
                    cells = _attack_cells(leg)
                    w.writerow(["attack_leg", a["id"], cells[0], leg["site"] or "", *cells[1:]])
        w.writerow([])
        w.writerow(["target", "address", "attacks", "peak_pps"])
        for t in self.targets:
            w.writerow(["target", t["address"], t["attacks"], t["peak_pps"]])
        w.writerow([])
        w.writerow(["server", "address", "peak_pps", "peak_dropped_pps", "attacks"])
        for srv in self.servers:
            w.writerow(["server", srv["address"], srv["peak_pps"], srv["peak_dropped_pps"], srv["attacks"]])
        w.writerow([])
        w.writerow(["talker", "kind", "key", "samples", "share"])
        for kind in ("sources", "networks", "source_ports", "destination_ports"):
            for entry in self.talkers.get(kind, []):
                w.writerow(["talker", kind, entry["key"], entry["samples"], entry["share"]])
        w.writerow([])
        w.writerow(["traffic", *self.traffic.keys()])
        w.writerow(["traffic", *self.traffic.values()])
        return out.getvalue()


def _attack_cells(a: dict[str, Any]) -> list[Any]:
    return [a["id"], _utc(a["started"]), a["duration_s"], " ".join(a["vectors"]), a["peak_pps"], a["peak_bps"],
            a["packets_dropped"], "" if a["efficacy"] is None else a["efficacy"], a["target"] or "",
            "" if a["mitigation_s"] is None else a["mitigation_s"], a["packets_passed"]]


def _utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


TOP_TARGETS = 10  # servers listed under "most targeted"


ATTACK_CHART_POINTS = 240     # points of an attack's chart (its per-second series, bucketed by maximum)
PERIOD_CHART_MINUTES_UP_TO = 2 * 86400   # seconds: periods up to this are charted per minute, longer per hour
TALKER_INCIDENTS = 50         # most recent incidents of the period whose captures make the top talkers
MAX_POINT_GAP_S = 60.0        # seconds one incident point may stand for when counting packets passed


def _explanation(incident: Any) -> str | None:
    """What was seen, for the application-layer vectors that say it (issue 15): the first vector's."""
    said = (incident.details or {}).get("explanations") or {}
    return next((said[v] for v in incident.vectors if v in said), None)


async def build_report(store: Store, tenant_id: str, tenant_name: str, period: Period, now: float,
                       pcap_root: pathlib.Path | None = None, site: str | None = None) -> Report:
    """The report of one tenant over `period`. pcap_root: where the engine's captures live (the top
    talkers are read from them); None (central mode, no captures here): no top talkers.

    On a fleet's central server the traffic and the servers are every site's summed (one report
    for a tenant seen at two sites, `fleet_tenant`), an attack seen at several sites one attack
    with a leg per site's incident (`sites`, `legs`); `site` narrows all three to that site's."""
    incidents = await store.incidents(IncidentFilter(tenant=tenant_id, until=period.end, limit=100000, site=site))
    incidents = [i for i in incidents if (i.ended if i.ended is not None else i.updated) >= period.start]
    incidents.sort(key=lambda i: i.started)
    # An attack seen at several sites is one attack with a leg per site's incident (the incidents
    # linked as on the incident page, fleet_tenant.attack_groups): counted once, here and per target.
    points = {i.id: await store.incident_points(i.id) for i in incidents}
    groups = fleet_tenant.attack_groups(incidents)
    attacks = [_attack(group, points) for group in groups]
    vectors: collections.Counter[str] = collections.Counter(v for a in attacks for v in a["vectors"])
    by_target: dict[str, dict[str, Any]] = {}
    for group, attack in zip(groups, attacks, strict=True):
        hit = dict.fromkeys(d for i in group for d in (i.destinations or ([i.target] if i.target else [])))
        for dst in hit:
            entry = by_target.setdefault(dst, {"address": dst, "attacks": 0, "peak_pps": 0.0})
            entry["attacks"] += 1
            entry["peak_pps"] = max(entry["peak_pps"], attack["peak_pps"])
    targets = sorted(by_target.values(), key=lambda t: (-t["attacks"], -t["peak_pps"], t["address"]))[:TOP_TARGETS]
    minutes = await store.traffic(tenant_id, period.start, period.end, "minute", site=site)
    traffic = {
        "minutes_with_data": len(minutes),
        "passed_packets": round(sum(m["passed_pps"] for m in minutes) * MINUTE_S),
        "dropped_packets": round(sum(m["dropped_pps"] for m in minutes) * MINUTE_S),
        "passed_bytes": round(sum(m["passed_bps"] for m in minutes) * MINUTE_S / 8),
        "dropped_bytes": round(sum(m["dropped_bps"] for m in minutes) * MINUTE_S / 8),
        "mean_passed_pps": round(sum(m["passed_pps"] for m in minutes) / len(minutes), 1) if minutes else 0.0,
        "peak_minute_passed_pps": round(max((m["passed_pps"] for m in minutes), default=0.0), 1),
        "peak_minute_dropped_pps": round(max((m["dropped_pps"] for m in minutes), default=0.0), 1),
        "peak_minute_passed_bps": round(max((m["passed_bps"] for m in minutes), default=0.0), 1),
        "peak_minute_dropped_bps": round(max((m["dropped_bps"] for m in minutes), default=0.0), 1),
    }
    if period.end - period.start <= PERIOD_CHART_MINUTES_UP_TO:
        chart = _columns(minutes)
    else:
        chart = await store.run(_hours, tenant_id, period.start, period.end)
        if not chart["time"] and minutes:   # a central server: no hour rollups of its own, the sites' minutes
            chart = _columns(minutes)
    servers = [] if site is not None else await store.run(_servers, tenant_id, period.start, period.end, TOP_TARGETS)
    fleet_servers = await store.run(fleet_tenant.busiest_destinations, tenant_id, period.start, period.end,
                                    TOP_TARGETS, site)
    if fleet_servers:
        by_address = {s["address"]: s for s in servers}
        for srv in fleet_servers:
            own = by_address.get(srv["address"])
            by_address[srv["address"]] = srv if own is None else {
                "address": srv["address"], "peak_pps": max(own["peak_pps"], srv["peak_pps"]),
                "peak_dropped_pps": max(own["peak_dropped_pps"], srv["peak_dropped_pps"])}
        servers = sorted(by_address.values(), key=lambda s: (-s["peak_pps"], s["address"]))[:TOP_TARGETS]
    for srv in servers:
        srv["attacks"] = by_target.get(srv["address"], {}).get("attacks", 0)
    talkers: dict[str, Any] = {}
    if pcap_root is not None and incidents:
        pcap_sets = [await store.pcaps(i.id) for i in incidents[-TALKER_INCIDENTS:]]
        anatomy = await asyncio.to_thread(incident_anatomy, *pcap_sets, root=pcap_root)
        talkers = anatomy.get("dropped", {})
    return Report(tenant=tenant_id, tenant_name=tenant_name, period=period, generated=now, attacks=attacks,
                  vectors=dict(vectors.most_common()), targets=targets, traffic=traffic, chart=chart,
                  servers=servers, talkers=talkers, site=site)


def _leg(i: Any, points: list[dict[str, float]]) -> dict[str, Any]:
    """One incident as a report's attack (or as one site's leg of it)."""
    return {"id": i.id, "site": (i.details or {}).get("site"), "started": i.started, "ended": i.ended,
            "duration_s": round(i.duration_s, 1), "vectors": i.vectors, "peak_pps": i.peak_pps,
            "peak_bps": i.peak_bps, "packets_dropped": i.packets_dropped, "efficacy": i.efficacy,
            "target": i.target, "confidence": i.confidence, "mitigation_s": _mitigation_s(i.started, points),
            "packets_passed": _packets_passed(points)}


LEG_KEYS = ("id", "site", "started", "ended", "duration_s", "vectors", "peak_pps", "peak_bps", "packets_dropped",
            "efficacy", "target", "mitigation_s", "packets_passed")   # what an attack lists of each of its legs


def _attack(group: list[Any], points: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """The report's attack of linked incidents (`group`, oldest first; one incident: that one's
    figures). Several legs: from the first start to the last end, the peak of the sites' per-second
    sums, the packets of all legs, `sites` and `legs` (each leg's own figures)."""
    first = group[0]
    legs = [_leg(i, points[i.id]) for i in group]
    rules = dict.fromkeys(rule_text(r) for i in group for r in (i.details.get("rules") or []) if isinstance(r, dict))
    sites = sorted({leg["site"] for leg in legs if leg["site"] is not None})
    if len(group) == 1:
        only = points[first.id]
        return {**legs[0], "sites": sites, "legs": [], "rules": list(rules), "chart": _attack_chart(only),
                "explanation": _explanation(first)}
    merged = _summed_points(points[i.id] for i in group)
    ends = [i.ended for i in group]
    end = max(i.ended if i.ended is not None else i.updated for i in group)
    return {"id": first.id, "site": None, "started": first.started,
            "ended": None if None in ends else max(e for e in ends if e is not None),
            "duration_s": round(max(0.0, end - first.started), 1),
            "vectors": list(dict.fromkeys(v for i in group for v in i.vectors)),
            "peak_pps": max(max(i.peak_pps for i in group), max((p["pps"] for p in merged), default=0.0)),
            "peak_bps": max(max(i.peak_bps for i in group), max((p["bps"] for p in merged), default=0.0)),
            "packets_dropped": sum(i.packets_dropped for i in group), "efficacy": _efficacy(group),
            "target": next((i.target for i in group if i.target), None),
            "confidence": max((i.confidence for i in group if i.confidence is not None), default=None),
            "mitigation_s": _mitigation_s(first.started, merged),
            "packets_passed": sum(leg["packets_passed"] for leg in legs),
            "sites": sites, "legs": [{k: leg[k] for k in LEG_KEYS} for leg in legs], "rules": list(rules),
            "chart": _attack_chart(merged), "explanation": next((e for e in map(_explanation, group) if e), None)}


_POINT_KEYS = ("pps", "bps", "attack_pps", "dropped_pps", "passed_pps")


def _summed_points(legs: Any) -> list[dict[str, float]]:
    """Incident points of several sites summed by second (their times are each site's reading)."""
    by_second: dict[int, dict[str, float]] = {}
    for points in legs:
        for p in points:
            into = by_second.setdefault(int(p["t"]), {"t": float(int(p["t"])), **dict.fromkeys(_POINT_KEYS, 0.0)})
            for k in _POINT_KEYS:
                into[k] += float(p[k] or 0.0)
    return [by_second[t] for t in sorted(by_second)]


def _efficacy(group: list[Any]) -> float | None:
    """The share of the attack's packets dropped over all legs: each leg's attack packets are its
    dropped packets over its efficacy; the plain mean where a leg dropped nothing to weigh by."""
    known = [i for i in group if i.efficacy is not None]
    if not known:
        return None
    if all(i.efficacy > 0 and i.packets_dropped > 0 for i in known):
        return round(sum(i.packets_dropped for i in known) / sum(i.packets_dropped / i.efficacy for i in known), 4)
    return round(sum(i.efficacy for i in known) / len(known), 4)


def _mitigation_s(started: float, points: list[dict[str, float]]) -> float | None:
    """Seconds from the attack's start to the first second with traffic dropped (None: nothing was)."""
    first = next((p["t"] for p in points if p["dropped_pps"] > 0), None)
    return None if first is None else round(max(0.0, first - started), 1)


def _packets_passed(points: list[dict[str, float]]) -> int:
    """Packets that got through during the attack: each point's passed rate over the seconds to the next."""
    total = 0.0
    for here, after in zip(points, points[1:], strict=False):
        total += here["passed_pps"] * min(after["t"] - here["t"], MAX_POINT_GAP_S)
    if points:
        total += points[-1]["passed_pps"]       # the last point stands for its own second
    return round(total)


def _attack_chart(points: list[dict[str, float]]) -> dict[str, list[float]]:
    """At most ATTACK_CHART_POINTS points: the per-second series bucketed, keeping each bucket's maximum
    (a peak must not be averaged away in the customer's chart)."""
    keys = ("attack_pps", "dropped_pps", "passed_pps")
    out: dict[str, list[float]] = {"time": [], **{k: [] for k in keys}}
    if not points:
        return out
    size = -(-len(points) // ATTACK_CHART_POINTS)
    for i in range(0, len(points), size):
        bucket = points[i:i + size]
        out["time"].append(bucket[0]["t"])
        for k in keys:
            out[k].append(max(p[k] for p in bucket))
    return out


_CHART_KEYS = ("passed_pps", "dropped_pps", "passed_bps", "dropped_bps")


def _columns(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    return {"time": [r["time"] for r in rows], **{k: [r[k] for r in rows] for k in _CHART_KEYS}}


def _hours(b: Any, tenant: str, start: float, end: float) -> dict[str, list[float]]:
    rows = b.execute("SELECT t, passed_pps, dropped_pps, passed_bps, dropped_bps FROM traffic_hours "
                     "WHERE tenant = ? AND t >= ? AND t < ? ORDER BY t", (tenant, int(start), int(end))).fetchall()
    return _columns([dict(zip(("time", *_CHART_KEYS), (float(v) for v in r), strict=True)) for r in rows])


def _servers(b: Any, tenant: str, start: float, end: float, limit: int) -> list[dict[str, Any]]:
    """The tenant's busiest destinations of the period by their peak second (minute rollups keep it)."""
    rows = b.execute("SELECT address, MAX(max_pps), MAX(dropped_pps) FROM destination_minutes "
                     "WHERE tenant = ? AND t >= ? AND t < ? GROUP BY address ORDER BY MAX(max_pps) DESC, address "
                     "LIMIT ?", (tenant, int(start), int(end), limit)).fetchall()
    return [{"address": r[0], "peak_pps": round(float(r[1]), 1), "peak_dropped_pps": round(float(r[2]), 1)}
            for r in rows]
