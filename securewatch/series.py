"""Time series for the live console: tenant traffic rollups and per-destination (per-server) series.

What is stored (schema migration 7, `store.MIGRATIONS`):

    traffic_seconds / traffic_minutes   per tenant, from migration 1 (second rows, minute averages)
    traffic_hours                       per tenant, hour averages weighted by the seconds behind them
    destination_seconds                 per destination address, each second, for attacked and the
                                        appliance's top-N busiest destinations (`DestinationRecorder`)
    destination_minutes                 per destination, minute averages, for every destination with traffic

A destination row holds its per-class packet rates, the engine's learned baseline (mean and σ per
class), the threshold in force per class and its dropped packets/s; class arrays are JSON lists
in `CLASSES` order. How long each kind is kept is `SeriesRetention` (the `[securewatch]`
`*_retention_*` keys, defaults below).

Chart ranges (`RANGES`) name a span and the table that serves it, so a chart never fetches more
than about 1,500 points per series: 5 minutes of seconds, 24 hours of minutes, 30 days of hours.

The functions here take the store's backend (`b.execute`, `b.executemany`) and run on its database
thread (`Store.run`); this module imports nothing of the store so that the store can import it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

CLASSES = ("tcp_syn", "tcp_other", "udp", "icmp", "fragment", "other")   # dataplane TrafficClass order
TRAFFIC_KEYS = ("passed_pps", "dropped_pps", "passed_bps", "dropped_bps")
SECONDS_PER_DAY = 86400


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    name: str
    span_s: int          # seconds shown
    table: str           # "second", "minute" or "hour"
    step_s: int          # seconds between points


RANGES = {r.name: r for r in (
    Range("5m", 300, "second", 1),
    Range("1h", 3600, "minute", 60),
    Range("24h", SECONDS_PER_DAY, "minute", 60),
    Range("30d", 30 * SECONDS_PER_DAY, "hour", 3600),
)}
# Per-destination ranges: seconds where stored (attacked and top-N destinations), else minutes.
DESTINATION_RANGES = {r.name: r for r in (
    Range("5m", 300, "second", 1),
    Range("1h", 3600, "second", 1),
    Range("24h", SECONDS_PER_DAY, "minute", 60),
    Range("7d", 7 * SECONDS_PER_DAY, "minute", 60),
)}


@dataclasses.dataclass(frozen=True, slots=True)
class SeriesRetention:
    """How long each series is kept; the `[securewatch]` keys of the same names (see settings.py)."""

    traffic_second_retention_s: int = 3600               # tenant per-second rows: the 5-minute chart, 1 h of slack
    traffic_minute_retention_days: int = 90              # tenant minute rollups: the 24-hour chart and reports
    traffic_hour_retention_days: int = 400               # tenant hour rollups: the 30-day chart, a year back
    destination_second_retention_s: int = 6 * 3600       # per-second rows of attacked and top-N destinations
    destination_minute_retention_days: int = 30          # minute rollups of every destination with traffic
    # A fleet's central server (securewatch.fleet_store): per-site series, kept in partitions of an
    # hour (seconds), a day (minutes) and 30 days (hours), each dropped whole once past retention.
    fleet_second_retention_s: int = 3600                 # per-site, per-tenant seconds and destination seconds
    fleet_minute_retention_days: int = 30                # per-site, per-tenant minute rollups
    fleet_hour_retention_days: int = 400                 # per-site, per-tenant hour rollups
    fleet_destination_minute_retention_days: int = 30    # per-site, per-destination minute rollups
    fleet_evidence_retention_days: int = 90              # sites' incident PCAP files, after receipt (rows)

    # Bounds of each key (inclusive), in its own unit.
    BOUNDS = {"traffic_second_retention_s": (300, 7 * SECONDS_PER_DAY),
              "traffic_minute_retention_days": (2, 3650),
              "traffic_hour_retention_days": (31, 3650),
              "destination_second_retention_s": (300, 7 * SECONDS_PER_DAY),
              "destination_minute_retention_days": (1, 3650),
              "fleet_second_retention_s": (600, 7 * SECONDS_PER_DAY),
              "fleet_minute_retention_days": (1, 3650),
              "fleet_hour_retention_days": (31, 3650),
              "fleet_destination_minute_retention_days": (1, 3650),
              "fleet_evidence_retention_days": (1, 3650)}
    # (seconds key, the minutes key its rows are rolled up into): seconds kept past their minutes'
    # retention would be rows whose minute is gone (deleted, or its partition dropped), never rolled up.
    ROLLED_UP_INTO = (("traffic_second_retention_s", "traffic_minute_retention_days"),
                      ("destination_second_retention_s", "destination_minute_retention_days"),
                      ("fleet_second_retention_s", "fleet_minute_retention_days"),
                      ("fleet_second_retention_s", "fleet_destination_minute_retention_days"))


SERIES_KEYS = tuple(f.name for f in dataclasses.fields(SeriesRetention))


# -- schema (migration 7) --------------------------------------------------------------------

# IF NOT EXISTS: a database rewound to an older schema by hand (upgrade rehearsals, tests) keeps
# these tables; running the migration again must not fail on them.
MIGRATION = [
    """CREATE TABLE IF NOT EXISTS traffic_hours (
        tenant TEXT NOT NULL, t BIGINT NOT NULL, passed_pps {real} NOT NULL, dropped_pps {real} NOT NULL,
        passed_bps {real} NOT NULL, dropped_bps {real} NOT NULL, max_dropped_pps {real} NOT NULL,
        samples BIGINT NOT NULL, PRIMARY KEY (tenant, t))""",
    "CREATE INDEX IF NOT EXISTS traffic_hours_t ON traffic_hours (t)",
    "CREATE INDEX IF NOT EXISTS traffic_minutes_t ON traffic_minutes (t)",
    "CREATE INDEX IF NOT EXISTS traffic_seconds_t ON traffic_seconds (t)",
    """CREATE TABLE IF NOT EXISTS destination_seconds (
        tenant TEXT NOT NULL, address TEXT NOT NULL, t BIGINT NOT NULL, pps TEXT NOT NULL,
        dropped_pps {real} NOT NULL, mean TEXT NOT NULL, sigma TEXT NOT NULL, threshold TEXT NOT NULL,
        PRIMARY KEY (tenant, address, t))""",
    "CREATE INDEX IF NOT EXISTS destination_seconds_t ON destination_seconds (t)",
    """CREATE TABLE IF NOT EXISTS destination_minutes (
        tenant TEXT NOT NULL, address TEXT NOT NULL, t BIGINT NOT NULL, pps TEXT NOT NULL,
        dropped_pps {real} NOT NULL, mean TEXT NOT NULL, sigma TEXT NOT NULL, threshold TEXT NOT NULL,
        max_pps {real} NOT NULL, samples BIGINT NOT NULL, PRIMARY KEY (tenant, address, t))""",
    "CREATE INDEX IF NOT EXISTS destination_minutes_t ON destination_minutes (t)",
]


# -- tenant rollups ----------------------------------------------------------------------------

def roll_hours(b: Any, tenant: str, minutes: Iterable[int]) -> None:
    """Recompute the hour rows over `minutes` (start times) from the minute rows, weighted by the
    seconds behind each minute, so a partly filled minute counts for what it holds."""
    for hour in sorted({m // 3600 * 3600 for m in minutes}):
        b.execute("INSERT INTO traffic_hours (tenant, t, passed_pps, dropped_pps, passed_bps, dropped_bps, "
                  "max_dropped_pps, samples) "
                  "SELECT tenant, ?, SUM(passed_pps * samples) / SUM(samples), SUM(dropped_pps * samples) / SUM(samples), "
                  "SUM(passed_bps * samples) / SUM(samples), SUM(dropped_bps * samples) / SUM(samples), "
                  "MAX(max_dropped_pps), SUM(samples) FROM traffic_minutes WHERE tenant = ? AND t >= ? AND t < ? "
                  "GROUP BY tenant ON CONFLICT (tenant, t) DO UPDATE SET passed_pps = excluded.passed_pps, "
                  "dropped_pps = excluded.dropped_pps, passed_bps = excluded.passed_bps, "
                  "dropped_bps = excluded.dropped_bps, max_dropped_pps = excluded.max_dropped_pps, "
                  "samples = excluded.samples", (hour, tenant, hour, hour + 3600))


_TABLE = {"second": "traffic_seconds", "minute": "traffic_minutes", "hour": "traffic_hours"}


def tenant_series(b: Any, tenant: str, rng: Range, now: float,
                  with_sites: Callable[..., list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """A tenant's series over `rng` up to `now`, columnar (what uPlot draws): {"time": [...], key: [...]}.
    On a fleet's central server `with_sites` (fleet_tenant.with_sites, passed in by the caller:
    fleet_tenant reads fleet_store, which sizes its partitions by this module's SeriesRetention)
    adds the sites' seconds to the second and minute resolutions (no per-site hour rollups here yet)."""
    since = int(now) - rng.span_s
    rows = b.execute(f"SELECT t, passed_pps, dropped_pps, passed_bps, dropped_bps FROM {_TABLE[rng.table]} "
                     f"WHERE tenant = ? AND t > ? AND t <= ? ORDER BY t", (tenant, since, int(now) + 1)).fetchall()
    if with_sites is not None and rng.table in ("second", "minute"):
        own = [{"time": r[0], **dict(zip(TRAFFIC_KEYS, r[1:], strict=True))} for r in rows]
        merged = with_sites(b, own, tenant, since + 1, int(now) + 2, rng.table)
        rows = [(r["time"], *(r[k] for k in TRAFFIC_KEYS)) for r in merged]
    out: dict[str, Any] = {"time": [int(r[0]) for r in rows]}
    for i, key in enumerate(TRAFFIC_KEYS, 1):
        out[key] = [round(float(r[i]), 1) for r in rows]
    return out


def latest_tenant_rates(b: Any, since: float) -> dict[str, dict[str, float]]:
    """Each tenant's newest per-second row after `since` (central mode's 'current traffic')."""
    rows = b.execute("SELECT s.tenant, s.t, s.passed_pps, s.dropped_pps, s.passed_bps, s.dropped_bps "
                     "FROM traffic_seconds s JOIN (SELECT tenant, MAX(t) AS t FROM traffic_seconds WHERE t > ? "
                     "GROUP BY tenant) m ON m.tenant = s.tenant AND m.t = s.t", (int(since),)).fetchall()
    return {r[0]: {"time": float(r[1]), **dict(zip(TRAFFIC_KEYS, map(float, r[2:]), strict=True))} for r in rows}


# -- destinations --------------------------------------------------------------------------------

def _classes(values: Sequence[float] | None) -> str:
    values = list(values or [])
    if len(values) != len(CLASSES):
        raise ValueError(f"expected {len(CLASSES)} per-class values ({', '.join(CLASSES)}), got {len(values)}")
    return json.dumps([round(float(v), 2) for v in values], separators=(",", ":"))


def _row_values(tenant: str, r: dict[str, Any]) -> tuple[Any, ...]:
    return (tenant, str(r["address"]), int(r["time"]), _classes(r["pps"]), float(r.get("dropped_pps") or 0.0),
            _classes(r["mean"]), _classes(r["sigma"]), _classes(r["threshold"]))


def add_destination_seconds(b: Any, rows: Sequence[dict[str, Any]]) -> int:
    """Rows {"tenant", "address", "time", "pps", "dropped_pps", "mean", "sigma", "threshold"}."""
    values = [_row_values(r["tenant"], r) for r in rows]
    if values:
        b.executemany("INSERT INTO destination_seconds (tenant, address, t, pps, dropped_pps, mean, sigma, threshold) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, address, t) DO UPDATE SET "
                      "pps = excluded.pps, dropped_pps = excluded.dropped_pps, mean = excluded.mean, "
                      "sigma = excluded.sigma, threshold = excluded.threshold", values)
    return len(values)


def add_destination_minutes(b: Any, rows: Sequence[dict[str, Any]]) -> int:
    """Minute rollups: the rows of `add_destination_seconds` with "max_pps" and "samples" (seconds)."""
    values = [(*_row_values(r["tenant"], r), float(r.get("max_pps") or 0.0), int(r.get("samples") or 0))
              for r in rows]
    if values:
        b.executemany("INSERT INTO destination_minutes (tenant, address, t, pps, dropped_pps, mean, sigma, threshold, "
                      "max_pps, samples) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, address, t) DO "
                      "UPDATE SET pps = excluded.pps, dropped_pps = excluded.dropped_pps, mean = excluded.mean, "
                      "sigma = excluded.sigma, threshold = excluded.threshold, max_pps = excluded.max_pps, "
                      "samples = excluded.samples", values)
    return len(values)


def destination_series(b: Any, tenant: str, address: str, rng: Range, now: float) -> dict[str, Any]:
    """One destination's series over `rng`: per-class pps, baseline mean and σ, threshold in force.
    A second-resolution range falls back to minutes when the destination has no second rows
    (it was neither attacked nor among the busiest)."""
    since = int(now) - rng.span_s
    resolution = rng.table
    rows: list[Any] = []
    if resolution == "second":
        rows = b.execute("SELECT t, pps, dropped_pps, mean, sigma, threshold FROM destination_seconds "
                         "WHERE tenant = ? AND address = ? AND t > ? ORDER BY t", (tenant, address, since)).fetchall()
        if not rows:
            resolution = "minute"
    if resolution == "minute":
        rows = b.execute("SELECT t, pps, dropped_pps, mean, sigma, threshold FROM destination_minutes "
                         "WHERE tenant = ? AND address = ? AND t > ? ORDER BY t",
                         (tenant, address, since - 60)).fetchall()
    out: dict[str, Any] = {"resolution": resolution, "classes": list(CLASSES), "time": [], "dropped_pps": [],
                           "pps": {c: [] for c in CLASSES}, "mean": {c: [] for c in CLASSES},
                           "sigma": {c: [] for c in CLASSES}, "threshold": {c: [] for c in CLASSES}}
    for t, pps, dropped, mean, sigma, threshold in rows:
        out["time"].append(int(t))
        out["dropped_pps"].append(float(dropped))
        for key, text in (("pps", pps), ("mean", mean), ("sigma", sigma), ("threshold", threshold)):
            for c, v in zip(CLASSES, json.loads(text), strict=True):
                out[key][c].append(v)
    return out


def tenant_destinations(b: Any, tenant: str, since: float, limit: int) -> list[dict[str, Any]]:
    """A tenant's destinations seen since `since`, busiest first: their newest row (second or minute),
    its total pps and how close its busiest class is to its threshold ("load", 1.0 = triggering)."""
    found: dict[str, tuple[int, str, float, str]] = {}
    for table in ("destination_minutes", "destination_seconds"):   # seconds win: newer
        for address, t, pps, dropped, threshold in b.execute(
                f"SELECT d.address, d.t, d.pps, d.dropped_pps, d.threshold FROM {table} d JOIN "
                f"(SELECT address, MAX(t) AS t FROM {table} WHERE tenant = ? AND t > ? GROUP BY address) m "
                f"ON m.address = d.address AND m.t = d.t WHERE d.tenant = ?", (tenant, int(since), tenant)).fetchall():
            if address not in found or found[address][0] <= t:
                found[address] = (int(t), pps, float(dropped), threshold)
    out = []
    for address, (t, pps, dropped, threshold) in found.items():
        rates, limits = json.loads(pps), json.loads(threshold)
        out.append({"address": address, "time": t, "pps": round(sum(rates), 1), "dropped_pps": round(dropped, 1),
                    "load": load_of(rates, limits)})
    out.sort(key=lambda r: (-r["pps"], r["address"]))
    return out[:limit]


def load_of(rates: Sequence[float], thresholds: Sequence[float]) -> float:
    """The busiest class's rate as a share of its threshold (1.0: at the threshold, detection triggers)."""
    return round(max((r / max(t, 1.0) for r, t in zip(rates, thresholds, strict=True)), default=0.0), 3)


# -- retention ---------------------------------------------------------------------------------

def apply_retention(b: Any, now: float, retention: SeriesRetention) -> dict[str, int]:
    day = SECONDS_PER_DAY
    cut = {
        "seconds": ("traffic_seconds", now - retention.traffic_second_retention_s),
        "minutes": ("traffic_minutes", now - retention.traffic_minute_retention_days * day),
        "hours": ("traffic_hours", now - retention.traffic_hour_retention_days * day),
        "destination_seconds": ("destination_seconds", now - retention.destination_second_retention_s),
        "destination_minutes": ("destination_minutes", now - retention.destination_minute_retention_days * day),
    }
    return {name: b.execute(f"DELETE FROM {table} WHERE t < ?", (int(before),)).rowcount
            for name, (table, before) in cut.items()}
