"""Per-tenant reports for a period: attacks, traffic summary, most targeted servers.

One `Report` object is built from the store and rendered three ways: JSON
(`to_dict`), CSV (`to_csv`, one section per table) and printable HTML (the
`report.html` template of the web UI).
"""

from __future__ import annotations

import calendar
import collections
import csv
import dataclasses
import datetime
import io
import re
from typing import Any

from .store import IncidentFilter, Store

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

    @property
    def summary(self) -> dict[str, Any]:
        efficacies = [a["efficacy"] for a in self.attacks if a["efficacy"] is not None]
        return {
            "attacks": len(self.attacks),
            "peak_pps": max((a["peak_pps"] for a in self.attacks), default=0.0),
            "peak_bps": max((a["peak_bps"] for a in self.attacks), default=0.0),
            "longest_s": max((a["duration_s"] for a in self.attacks), default=0.0),
            "total_attack_s": round(sum(a["duration_s"] for a in self.attacks), 1),
            "packets_dropped": sum(a["packets_dropped"] for a in self.attacks),
            "mean_efficacy": round(sum(efficacies) / len(efficacies), 4) if efficacies else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "tenant_name": self.tenant_name, "period": self.period.label,
                "start": self.period.start, "end": self.period.end, "generated": self.generated,
                "summary": self.summary, "vectors": self.vectors, "attacks": self.attacks,
                "targets": self.targets, "traffic": self.traffic}

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
                    "packets_dropped", "efficacy", "target"])
        for a in self.attacks:
            w.writerow(["attack", a["id"], _utc(a["started"]), a["duration_s"], " ".join(a["vectors"]),
                        a["peak_pps"], a["peak_bps"], a["packets_dropped"],
                        "" if a["efficacy"] is None else a["efficacy"], a["target"] or ""])
        w.writerow([])
        w.writerow(["target", "address", "attacks", "peak_pps"])
        for t in self.targets:
            w.writerow(["target", t["address"], t["attacks"], t["peak_pps"]])
        w.writerow([])
        w.writerow(["traffic", *self.traffic.keys()])
        w.writerow(["traffic", *self.traffic.values()])
        return out.getvalue()


def _utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


TOP_TARGETS = 10  # servers listed under "most targeted"


def _explanation(incident: Any) -> str | None:
    """What was seen, for the application-layer vectors that say it (issue 15): the first vector's."""
    said = (incident.details or {}).get("explanations") or {}
    return next((said[v] for v in incident.vectors if v in said), None)


async def build_report(store: Store, tenant_id: str, tenant_name: str, period: Period, now: float) -> Report:
    incidents = await store.incidents(IncidentFilter(tenant=tenant_id, until=period.end, limit=100000))
    incidents = [i for i in incidents if (i.ended if i.ended is not None else i.updated) >= period.start]
    incidents.sort(key=lambda i: i.started)
    attacks = [{"id": i.id, "started": i.started, "ended": i.ended, "duration_s": round(i.duration_s, 1),
                "vectors": i.vectors, "peak_pps": i.peak_pps, "peak_bps": i.peak_bps,
                "packets_dropped": i.packets_dropped, "efficacy": i.efficacy, "target": i.target,
                "confidence": i.confidence, "explanation": _explanation(i)} for i in incidents]
    vectors: collections.Counter[str] = collections.Counter(v for i in incidents for v in i.vectors)
    by_target: dict[str, dict[str, Any]] = {}
    for i in incidents:
        for dst in i.destinations or ([i.target] if i.target else []):
            entry = by_target.setdefault(dst, {"address": dst, "attacks": 0, "peak_pps": 0.0})
            entry["attacks"] += 1
            entry["peak_pps"] = max(entry["peak_pps"], i.peak_pps)
    targets = sorted(by_target.values(), key=lambda t: (-t["attacks"], -t["peak_pps"], t["address"]))[:TOP_TARGETS]
    minutes = await store.traffic(tenant_id, period.start, period.end, "minute")
    traffic = {
        "minutes_with_data": len(minutes),
        "passed_packets": round(sum(m["passed_pps"] for m in minutes) * MINUTE_S),
        "dropped_packets": round(sum(m["dropped_pps"] for m in minutes) * MINUTE_S),
        "passed_bytes": round(sum(m["passed_bps"] for m in minutes) * MINUTE_S / 8),
        "dropped_bytes": round(sum(m["dropped_bps"] for m in minutes) * MINUTE_S / 8),
        "mean_passed_pps": round(sum(m["passed_pps"] for m in minutes) / len(minutes), 1) if minutes else 0.0,
        "peak_minute_passed_pps": round(max((m["passed_pps"] for m in minutes), default=0.0), 1),
        "peak_minute_dropped_pps": round(max((m["dropped_pps"] for m in minutes), default=0.0), 1),
    }
    return Report(tenant=tenant_id, tenant_name=tenant_name, period=period, generated=now, attacks=attacks,
                  vectors=dict(vectors.most_common()), targets=targets, traffic=traffic)
