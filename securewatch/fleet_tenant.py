"""A tenant across the fleet's sites (issue 17, item 3): one traffic view, one report, linked incidents.

A tenant whose prefixes are announced at two sites is seen by two appliances, each sending its own
per-second counters and per-destination rows (`fleet_store`). The tenant's views and reports on
the central server read them summed:

- **per-second tenant counters** are summed by second over the sites; a minute is the sum over
  the sites of each site's own mean of that minute (as `traffic_minutes` holds a box's own), so a
  site that sent 30 of a minute's 60 seconds counts at its rate, not at half of it;
- **the newest edge waits for the sites** (`complete`): the sites send their seconds a batch at a
  time and one lags another by a few seconds (a retry, a slow link), so the summed series ends at
  the oldest of the reporting sites' newest seconds: a second some site has not sent yet would
  show as a dip by that site's share. A site whose newest second trails the freshest site's by
  more than `EDGE_WAIT_S` is taken as stopped (down, cut off, or no longer carrying the tenant)
  and does not hold the edge back: the sum then shows the sites that report, and the fleet page
  flags the silent one;
- **per-destination series** are merged by (address, second): the pps of a server seen at both
  sites is the sum of both sites' figures; spans longer than the destination seconds' range
  (`DESTINATION_SECONDS_SPAN_S`, an hour: the seconds are kept that long) read the sites'
  destination minute rollups instead, merged by (address, minute) as the traffic minutes are;
- `site=NAME` narrows either to one site (the NOC looking at one edge).

The box's own rows (`traffic_seconds`: an appliance with its own SecureWatch) are added to the
sites' sum, so the same functions serve an appliance (no site rows) and the central server (no
own rows). Each site is read through its own key range ((site, tenant, t) leads the tables'
primary keys), never by scanning a time range of every tenant.

**Incidents across sites are two incidents, linked** (not one incident with two site legs): each
appliance decides on its own, with its own baselines, start, end, rules and evidence, and the
central server stores what each decided (`SITE:ID`). A merged incident would be a lifecycle no
appliance ran: when does it end, whose rules does it show, which acknowledgement counts? Links are
computed when the incident is read, from what is stored, so a leg that arrives late (a site's
backfill after an outage) is linked as soon as it is there, without rewriting anything. Two
incidents of different sites are linked when they are of the same tenant, overlap in time (with
`LINK_SLACK_S` either side: the sites' clocks and detection delays differ), and share an attacked
destination or, when either names none, a vector (`link_reason`). A report counts linked
incidents as one attack with a leg per incident (`attack_groups`, `reports.build_report`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from . import fleet_store
from .series import DESTINATION_RANGES

TRAFFIC_KEYS = ("passed_pps", "dropped_pps", "passed_bps", "dropped_bps")
MINUTE_S = 60                  # seconds per minute row
LINK_SLACK_S = 60.0            # seconds either side within which two sites' incidents still overlap
LINKED_MAX = 20                # linked incidents listed with one incident
# Seconds a site's newest second may trail the freshest site's and still hold the summed series'
# newest edge back: above the agent's longest retry pause (30 s) plus a batch, below what a live
# chart may stand still for while a site is gone.
EDGE_WAIT_S = 60.0


def _sites(b: Any, site: str | None) -> list[str]:
    return [site] if site is not None else [s.site for s in fleet_store.sites(b)]


# Per-destination spans longer than this (seconds) read the sites' destination minute rollups: the
# longest span a box's own destination charts show in seconds (series.DESTINATION_RANGES, 1 h).
DESTINATION_SECONDS_SPAN_S = max(r.span_s for r in DESTINATION_RANGES.values() if r.table == "second")
# Spans longer than this (seconds) read the sites' minute rollups when minutes are wanted (issue 17
# review 2, item 5): the per-site seconds are kept an hour only, and on PostgreSQL a tenant's
# second costs a pass over each site-second (about 1 s per 600 site-seconds).
SECONDS_SPAN_S = 300
# The newest seconds of a site past its newest rolled-up minute are read as seconds, this far back
# at most: a minute is rolled up ROLLUP_GRACE_S after it ends, by a pass every 10 s.
RECENT_SECONDS_S = 300


def site_seconds(b: Any, tenant: str, since: float, until: float, site: str | None = None,
                 rollups: bool = False) -> dict[str, list[dict[str, Any]]]:
    """{site: the tenant's per-second rows of that site, oldest first} (sites with none left out).
    rollups (minutes wanted) and a span over SECONDS_SPAN_S: each site's minute rollups (a row per
    minute, the mean of its seconds; one query for all sites), then its seconds after its newest
    rolled-up minute (RECENT_SECONDS_S before now at most)."""
    out: dict[str, list[dict[str, Any]]] = {}
    newest: dict[str, int] = {}
    if rollups and until - since > SECONDS_SPAN_S:
        for r in fleet_store.series(b, "minute", since, until, site=site, tenant=tenant):
            out.setdefault(r["site"], []).append({k: r[k] for k in ("site", "tenant", "time", *TRAFFIC_KEYS)})
            newest[r["site"]] = r["time"]
        # A period that ends ahead (today's report) has its newest seconds at now, not at its end.
        recent_from = max(since, min(until, time.time()) - RECENT_SECONDS_S)
    else:
        recent_from = since
    for name in _sites(b, site):
        start = max(recent_from, newest[name] + MINUTE_S) if name in newest else recent_from
        rows = fleet_store.traffic(b, start, until, site=name, tenant=tenant) if start < until else []
        if rows:
            out.setdefault(name, []).extend(rows)
    return out


def complete(per_site: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """`per_site` ({site: rows oldest first}) cut at the newest second every reporting site has
    sent (see the module's docstring): what may be summed without a partial newest edge."""
    newest = [rows[-1]["time"] for rows in per_site.values() if rows]
    if len(newest) < 2:
        return per_site
    freshest = max(newest)
    edge = min(t for t in newest if t >= freshest - EDGE_WAIT_S)
    return {site: [r for r in rows if r["time"] <= edge] for site, rows in per_site.items()}


def summed(rows_of_sites: Iterable[Iterable[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of several sources summed by their "time" (each row: TRAFFIC_KEYS), oldest first, each
    with the number of sources that had the second."""
    by_time: dict[float, dict[str, Any]] = {}
    for rows in rows_of_sites:
        for r in rows:
            into = by_time.get(r["time"])
            if into is None:
                by_time[r["time"]] = {"time": r["time"], **{k: float(r[k]) for k in TRAFFIC_KEYS}, "sites": 1}
            else:
                for k in TRAFFIC_KEYS:
                    into[k] += float(r[k])
                into["sites"] += 1
    return [by_time[t] for t in sorted(by_time)]


def minutes(seconds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-second rows as minute rows: the mean of each minute's seconds (a box's traffic_minutes)."""
    buckets: dict[int, list[dict[str, Any]]] = {}
    for r in seconds:
        buckets.setdefault(int(r["time"]) // MINUTE_S * MINUTE_S, []).append(r)
    return [{"time": float(t), **{k: sum(r[k] for r in rows) / len(rows) for k in TRAFFIC_KEYS}}
            for t, rows in sorted(buckets.items())]


def with_sites(b: Any, own: list[dict[str, Any]], tenant: str, since: float, until: float, resolution: str,
               site: str | None = None) -> list[dict[str, Any]]:
    """The tenant's series: the box's own rows (`own`, at `resolution`) and every site's (or `site`'s)
    summed by time. Own rows alone when no site sent any (the common case on an appliance)."""
    per_site = complete(site_seconds(b, tenant, since, until, site, rollups=resolution == "minute"))
    if not per_site:
        return own
    if resolution == "minute":
        fleet = summed(minutes(rows) for rows in per_site.values())   # each site's own mean, summed
    else:
        fleet = summed(per_site.values())
    if not own:
        return fleet
    return [{k: v for k, v in r.items() if k != "sites"} for r in summed([own, fleet])]


def destination_seconds(b: Any, tenant: str, since: float, until: float, site: str | None = None
                        ) -> list[dict[str, Any]]:
    """The tenant's per-destination seconds merged over the sites: one row per (address, second)
    with the summed pps and dropped pps and the sites that saw it, by address then time."""
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for name in _sites(b, site):
        rows = b.execute("SELECT address, t, pps, dropped_pps FROM fleet_destination_seconds "
                         "WHERE site = ? AND tenant = ? AND t >= ? AND t < ?",
                         (name, tenant, int(since), int(until))).fetchall()
        for address, t, pps, dropped in rows:
            into = merged.setdefault((address, int(t)), {"address": address, "time": int(t), "pps": 0.0,
                                                         "dropped_pps": 0.0, "sites": []})
            into["pps"] += float(pps)
            into["dropped_pps"] += float(dropped)
            into["sites"].append(name)
    return [merged[k] for k in sorted(merged)]


def destination_minutes(b: Any, tenant: str, since: float, until: float, site: str | None = None
                        ) -> list[dict[str, Any]]:
    """The tenant's per-destination minutes merged over the sites, by address then time: per
    (address, minute) the sum over the sites of each site's mean pps and dropped pps of that minute
    (as `minutes` does for traffic), the sum of their peak seconds (`max_pps`, `max_dropped_pps`:
    exact for one site; for several, their peaks may fall in different seconds), the seconds behind
    (`samples`) and the sites. Each site's rollups (`fleet_destination_minutes`), then its seconds
    after its newest rolled-up minute, as minutes (a minute is rolled up after it ends)."""
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for name in _sites(b, site):
        rows = b.execute("SELECT address, t, sum_pps, sum_dropped_pps, max_pps, max_dropped_pps, samples "
                         "FROM fleet_destination_minutes WHERE site = ? AND tenant = ? AND t >= ? AND t < ?",
                         (name, tenant, int(since) // MINUTE_S * MINUTE_S, int(until))).fetchall()
        start = max((int(r[1]) + MINUTE_S for r in rows), default=int(since))
        if start < until:
            rows += b.execute("SELECT address, t / 60 * 60, SUM(pps), SUM(dropped_pps), MAX(pps), MAX(dropped_pps), "
                              "COUNT(*) FROM fleet_destination_seconds WHERE site = ? AND tenant = ? AND t >= ? "
                              "AND t < ? GROUP BY address, t / 60 * 60",
                              (name, tenant, start, int(until))).fetchall()
        for address, t, total, dropped, peak, peak_dropped, samples in rows:
            into = merged.setdefault((address, int(t)), {"address": address, "time": int(t), "pps": 0.0,
                                                         "dropped_pps": 0.0, "max_pps": 0.0, "max_dropped_pps": 0.0,
                                                         "samples": 0, "sites": []})
            into["pps"] += float(total) / int(samples)
            into["dropped_pps"] += float(dropped) / int(samples)
            into["max_pps"] += float(peak)
            into["max_dropped_pps"] += float(peak_dropped)
            into["samples"] += int(samples)
            into["sites"].append(name)
    return [merged[k] for k in sorted(merged)]


def destination_resolution(span_s: float) -> str:
    """"second" for spans (seconds) up to DESTINATION_SECONDS_SPAN_S, else "minute" (the destination
    ranges of a box's own, `series.DESTINATION_RANGES`)."""
    return "second" if span_s <= DESTINATION_SECONDS_SPAN_S else "minute"


def destinations(b: Any, tenant: str, since: float, until: float, site: str | None = None,
                 resolution: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """(resolution, rows): `destination_seconds` or `destination_minutes`; resolution None: by the
    span (`destination_resolution`)."""
    resolution = resolution or destination_resolution(until - since)
    if resolution == "minute":
        return resolution, destination_minutes(b, tenant, since, until, site)
    return resolution, destination_seconds(b, tenant, since, until, site)


def busiest_destinations(b: Any, tenant: str, since: float, until: float, limit: int, site: str | None = None
                         ) -> list[dict[str, Any]]:
    """The tenant's destinations by their peak merged second (the report's servers), busiest first;
    over a span longer than the seconds' range, by the peak seconds of the minute rollups, each
    address's peak found by the database (a month is 43,200 minutes per address and site: not rows to
    bring into Python), then the seconds not rolled up yet (`destination_minutes`' tail, a few minutes)."""
    peaks: dict[str, list[float]] = {}

    def take(address: str, pps: float, dropped: float) -> None:
        peak = peaks.setdefault(address, [0.0, 0.0])
        peak[0], peak[1] = max(peak[0], float(pps)), max(peak[1], float(dropped))

    if destination_resolution(until - since) == "second":
        for r in destination_seconds(b, tenant, since, until, site):
            take(r["address"], r["pps"], r["dropped_pps"])
    else:
        first = int(since) // MINUTE_S * MINUTE_S
        where, args = "tenant = ? AND t >= ? AND t < ?", [tenant, first, int(until)]
        if site is not None:
            where, args = where + " AND site = ?", [*args, site]
        # A minute's peak over the sites is the sum of each site's peak second (as `destination_minutes`).
        for address, pps, dropped in b.execute(
                "SELECT address, MAX(p), MAX(d) FROM (SELECT address, t, SUM(max_pps) AS p, SUM(max_dropped_pps) AS d "
                f"FROM fleet_destination_minutes WHERE {where} GROUP BY address, t) AS m GROUP BY address",
                tuple(args)).fetchall():
            take(address, pps, dropped)
        # The tail: each site's seconds after its newest rolled-up minute (the seconds are kept an hour at
        # most), their peak second per minute summed over the sites.
        tail: dict[tuple[str, int], list[float]] = {}
        for name in _sites(b, site):
            newest = b.execute("SELECT MAX(t) FROM fleet_destination_minutes WHERE site = ? AND tenant = ? "
                               "AND t >= ? AND t < ?", (name, tenant, first, int(until))).fetchone()[0]
            start = int(newest) + MINUTE_S if newest is not None else first
            for address, t, pps, dropped in b.execute(
                    "SELECT address, t / 60 * 60, MAX(pps), MAX(dropped_pps) FROM fleet_destination_seconds "
                    "WHERE site = ? AND tenant = ? AND t >= ? AND t < ? GROUP BY address, t / 60 * 60",
                    (name, tenant, start, int(until))).fetchall():
                into = tail.setdefault((address, int(t)), [0.0, 0.0])
                into[0] += float(pps)
                into[1] += float(dropped)
        for (address, _), (pps, dropped) in tail.items():
            take(address, pps, dropped)
    ranked = sorted(peaks.items(), key=lambda item: (-item[1][0], item[0]))[:limit]
    return [{"address": address, "peak_pps": round(pps, 1), "peak_dropped_pps": round(dropped, 1)}
            for address, (pps, dropped) in ranked]


# An incident as the linking rule sees it: (site, started, end or last update, vectors, destinations).
Leg = tuple[str | None, float, float, set[str], set[str]]


def link_reason(one: Leg, other: Leg) -> dict[str, list[str]] | None:
    """Why two incidents of one tenant are linked (see the module's docstring): {"destinations":
    the shared ones} or {"vectors": the shared ones}; None when they are not (the same site, or no
    site: a box's own incidents are never linked)."""
    site, started, end, vectors, destinations = one
    o_site, o_started, o_end, o_vectors, o_destinations = other
    if site is None or o_site is None or site == o_site:
        return None
    if o_started > end + LINK_SLACK_S or o_end < started - LINK_SLACK_S:
        return None
    shared_destinations = sorted(destinations & o_destinations)
    if shared_destinations:
        return {"destinations": shared_destinations}
    shared_vectors = sorted(vectors & o_vectors)
    if (not destinations or not o_destinations) and shared_vectors:
        return {"vectors": shared_vectors}
    return None


def attack_groups(incidents: list[Any]) -> list[list[Any]]:
    """One tenant's incidents (`store.Incident`) grouped into attacks: the incidents linked to each
    other, directly or through another leg, are one attack seen at several sites (a report counts
    it once). Each group oldest first; the groups by their first leg's start."""
    legs = [(i.details.get("site") if isinstance(i.details, dict) else None, float(i.started),
             float(i.ended if i.ended is not None else i.updated), set(i.vectors), set(i.destinations))
            for i in incidents]
    parent = list(range(len(incidents)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a in range(len(incidents)):
        for b in range(a + 1, len(incidents)):
            if link_reason(legs[a], legs[b]) is not None:
                parent[root(b)] = root(a)
    groups: dict[int, list[Any]] = {}
    for k, incident in enumerate(incidents):
        groups.setdefault(root(k), []).append(incident)
    ordered = [sorted(g, key=lambda i: (i.started, i.id)) for g in groups.values()]
    return sorted(ordered, key=lambda g: (g[0].started, g[0].id))


def linked_incidents(b: Any, incident_id: str) -> list[dict[str, Any]]:
    """The incidents of other sites linked to `incident_id` (see the module's docstring), each with
    why: the destinations or vectors shared. [] for an incident of no site."""
    row = b.execute("SELECT site, tenant, started, ended, updated, vectors, destinations FROM incidents WHERE id = ?",
                    (incident_id,)).fetchone()
    if row is None or row[0] is None:
        return []
    site, tenant, started, ended, updated = row[0], row[1], float(row[2]), row[3], float(row[4])
    vectors, destinations = set(json.loads(row[5])), set(json.loads(row[6]))
    end = float(ended) if ended is not None else updated
    candidates = b.execute(
        "SELECT id, site, state, started, ended, updated, vectors, destinations FROM incidents "
        "WHERE tenant = ? AND site IS NOT NULL AND site <> ? AND started <= ? ORDER BY started",
        (tenant, site, end + LINK_SLACK_S)).fetchall()
    out = []
    for other_id, other_site, state, o_started, o_ended, o_updated, o_vectors, o_destinations in candidates:
        o_end = float(o_ended) if o_ended is not None else float(o_updated)
        why = link_reason((site, started, end, vectors, destinations),
                          (other_site, float(o_started), o_end, set(json.loads(o_vectors)),
                           set(json.loads(o_destinations))))
        if why is None:
            continue
        out.append({"id": other_id, "site": other_site, "state": state, "started": float(o_started),
                    "ended": None if o_ended is None else float(o_ended), **why})
        if len(out) >= LINKED_MAX:
            break
    return out
