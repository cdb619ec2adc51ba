"""The central server's side of the fleet (issue 17): what sites send and fetch, what the NOC sees.

Site-facing (a site's token, from `seawall fleet enroll SITE`, as `Authorization: Bearer`):

    POST /api/v1/fleet/site/sync     {"site", "time", "running_version", "backlog", "status",
                                      "running_versions"?: {"templates", "notify"},
                                      "config_errors"?: {document: why it was refused}}
                                     -> {"version", "tenants"?, "versions"?, "templates"?, "notify"?}:
                                        the tenant set for this site when the site does not run the
                                        newest version yet; with running_versions, the version of
                                        each document and each one the site does not run yet
                                        (`fleet_config`: what flows down, what does not, and why)
    POST /api/v1/fleet/site/ingest   {"site", "queue", "batches": [{"seq", "time", "traffic_columns",
                                     "destinations", "events"}]} -> {"acked": [seq...], "duplicates"}

A batch's traffic comes as columns, `"traffic_columns": {"tenant": [...], "time": [...],
"passed_pps": [...], "dropped_pps": [...], "passed_bps": [...], "dropped_bps": [...]}` (one array
per field, all of one length): decoding 10,000 rows that way takes a third of the time of 10,000
row arrays (measured), and each column is checked at once. The row form of the first fleet
version, `"traffic": [[tenant, time, passed_pps, dropped_pps, passed_bps, dropped_bps], ...]`,
is still taken: an appliance's queue may hold batches written before the upgrade.

A site's token authenticates that site only: a body naming another site is refused (403), and a
revoked or unknown token is refused (401) from its next request on (the token is looked up on
every request, nothing is cached). These paths bypass the user login (`app.auth_middleware`).

The configuration a site gets is the central tenant set (its version is the set's change counter,
`store.TenantState.version`), less the tenants whose `sites` leave this site out. The site applies
it atomically (the appliance's `apply_tenants`: all or nothing) and reports the version it runs.

Operator-facing (admin and NOC):

    GET /fleet                       sites, health, last contact, version in force, lagging flag,
                                     current traffic; ?site=NAME narrows to one site
    GET /api/v1/fleet/sites          the same as JSON
    GET /api/v1/fleet/traffic        ?site=&tenant=&seconds=&resolution=  per-site, per-tenant seconds
                                     (resolution=second), or the minute or hour rollups for longer spans
                                     (tenant required for those: 400 without)
    GET /api/v1/fleet/incidents      ?site=  incidents that came from sites
    GET /api/v1/fleet/tenants/{id}/traffic       ?site=&seconds=  the tenant's seconds summed over the
                                                 sites ("series") and each site's ("sites")
    GET /api/v1/fleet/tenants/{id}/destinations  ?site=&seconds=|range=  its per-destination series merged:
                                                 seconds up to an hour, minute rollups beyond (7 days at most)

A tenant's own views (/api/v1/tenants/{id}/traffic, the console, the reports) read its traffic
summed over the sites too (`fleet_tenant`), with ?site= for one site's; an incident lists the
incidents of other sites linked to it (`fleet_tenant.linked_incidents`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web

from . import auth, fleet_config, fleet_evidence_store, fleet_store, fleet_tenant
from .context import SETTINGS, STORE, ApiError, principal_of, query_int, read_json, visible_tenant
from .series import DESTINATION_RANGES
from .store import Store, record_event_in
from .ui import render

log = structlog.get_logger(__name__)

SITE_PREFIX = "/api/v1/fleet/site/"   # paths a site's token opens (and nothing else does)
MAX_BATCHES = 600                     # batches per ingest request: ten minutes at one a second
MAX_ROWS_PER_BATCH = 200_000          # traffic + destination rows + events in one batch
QUEUE_ID_MAX = 64                     # characters of a queue id (the appliance makes a 32-hex one)
CURRENT_SPAN_S = 30                   # seconds back that "current traffic" looks for a site's newest second
TRAFFIC_SPAN_MAX_S = 3600             # seconds of per-site rows one API call returns at most
ROLLUP_SPAN_MAX_S = {"minute": 7 * 86400, "hour": 400 * 86400}   # seconds back one rollup request reaches
DESTINATION_SPAN_MAX_S = max(r.span_s for r in DESTINATION_RANGES.values())   # seconds: 7 days, as a box's own
INCIDENTS_SHOWN = 100
RETENTION_EVERY_S = 60.0              # seconds between drops of expired fleet partitions (rows on SQLite)
ROLLUP_EVERY_S = 10.0                 # seconds between rollups of the minutes and hours that ended
INCIDENT_EVENT_TYPES = ("ATTACK_START", "ATTACK_UPDATE", "ATTACK_END")
DOWN_DOCUMENTS = ("templates", "notify")   # what flows down besides the tenant set (fleet_config)
# PostgreSQL connections (each with its own thread) that take ingests, besides the store's own:
# with one, the database works on one site's COPY at a time, one core, whatever the number of
# sites sending. A site always gets the same one (its requests come one after another anyway).
INGEST_CONNECTIONS = 3

INGEST_STORES = web.AppKey("fleet_ingest_stores", list)
# The central server's fleet counters (/metrics, seawall_fleet_central_*): rows not stored at any
# resolution (older than the minute rollups keep, or a site clock more than PARTITIONS_AHEAD_S
# ahead), rows folded straight into the minute rollups (older than the seconds keep), rollup keys
# that failed and were dropped, maintenance passes that failed.
FLEET_COUNTERS = web.AppKey("fleet_counters", dict)
COUNTER_NAMES = ("outside_rows", "ahead_rows", "folded_rows", "rollup_failures", "maintenance_failures")

# What the database holds (issue 17 review, item 2): a number outside these made the store fail
# with a 500, and the site sent the same batch again forever (it drops one on 413/422 only).
INT_MAX = 2**63 - 1        # BIGINT: sequence numbers, versions, counts
TIME_MAX_S = 2.0**53       # seconds either side of the epoch: exact in a double, whole in a BIGINT
# pps and bps a site may report (issue 17 review 2, item 1): 1e15 bit/s is a petabit, far past any
# link, and 3,600 seconds of 10,000 tenants at that still sum to a finite double. Finite values near
# the float limit (1e308) made the rollups' SUM overflow and stopped every rollup after it.
VALUE_MAX = 1e15


def _refuse_constant(name: str) -> Any:
    raise ApiError(422, f"request body: {name} is no JSON number (numbers must be finite)")


# A site's body: NaN and Infinity (Python's json takes them) are refused, not stored.
_strict_loads = functools.partial(json.loads, parse_constant=_refuse_constant)


def _whole(value: Any, low: int = 0) -> bool:
    return type(value) is int and low <= value <= INT_MAX


def _time(value: Any) -> bool:
    return type(value) in _NUMBER_TYPES and math.isfinite(value) and -TIME_MAX_S <= value <= TIME_MAX_S


def add_routes(app: web.Application) -> None:
    app[FLEET_COUNTERS] = dict.fromkeys(COUNTER_NAMES, 0)
    r = app.router
    r.add_post(SITE_PREFIX + "sync", site_sync)
    r.add_post(SITE_PREFIX + "ingest", site_ingest)
    r.add_get("/fleet", fleet_page)
    r.add_get("/api/v1/fleet/sites", api_sites)
    r.add_get("/api/v1/fleet/traffic", api_traffic)
    r.add_get("/api/v1/fleet/incidents", api_incidents)
    r.add_get("/api/v1/fleet/tenants/{tenant_id}/traffic", api_tenant_traffic)
    r.add_get("/api/v1/fleet/tenants/{tenant_id}/destinations", api_tenant_destinations)
    app.cleanup_ctx.append(_retention)
    app.cleanup_ctx.append(_ingest_stores)


async def _ingest_stores(app: web.Application) -> AsyncIterator[None]:
    """INGEST_CONNECTIONS stores of the central database on PostgreSQL; none on SQLite, whose one
    writer at a time gains nothing from more (ingest then uses the store itself)."""
    store = app[STORE]
    stores: list[Store] = []
    app[INGEST_STORES] = stores
    try:
        if store.dialect == "postgresql":
            for _ in range(INGEST_CONNECTIONS):
                stores.append(await Store.open(store.url))
        yield
    finally:
        for extra in stores:
            await extra.close()


def ingest_store(app: web.Application, site: str) -> Store:
    """The store that takes `site`'s ingests: the same one for a site, spread over the sites."""
    stores = app[INGEST_STORES]
    return stores[zlib.crc32(site.encode()) % len(stores)] if stores else app[STORE]


# -- the site's side ------------------------------------------------------------------------------

async def authenticated_site(request: web.Request) -> str:
    """The site whose token the request carries; 401 for none, an unknown or a revoked one."""
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("bearer "):
        raise ApiError(401, "a site's token is required (Authorization: Bearer ..., from `seawall fleet enroll`)")
    found = await request.app[STORE].run(fleet_store.site_by_token, auth.token_hash(header[7:].strip()))
    if found is None:
        log.info("fleet.auth_refused", remote=request.remote)
        raise ApiError(401, "unknown or revoked site token")
    return found.site


def _own_site(body: Any, site: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object")
    claimed = body.get("site")
    if claimed != site:
        raise ApiError(403, f"site: this token belongs to site {site!r}; it cannot write the data of {claimed!r}")
    return body


def _number(value: Any, field: str, problems: list[str]) -> float | None:
    """A time in seconds: a finite number within ±2**53."""
    if not _time(value):
        problems.append(f"{field}: expected a time in seconds (a number within ±2**53), got {value!r}"[:200])
        return None
    return float(value)


async def site_sync(request: web.Request) -> web.Response:
    site = await authenticated_site(request)
    body = _own_site(await read_json(request, _strict_loads), site)
    problems: list[str] = []
    appliance_time = _number(body.get("time"), "time", problems)
    running = body.get("running_version")
    if running is not None and not _whole(running):
        problems.append(f"running_version: expected a whole number (0 to 2**63-1) or null, got {running!r}"[:200])
    backlog = body.get("backlog", 0)
    if not _whole(backlog):
        problems.append(f"backlog: expected a whole number (0 to 2**63-1), got {backlog!r}"[:200])
    status = body.get("status", {})
    if not isinstance(status, dict):
        problems.append("status: expected an object")
    # An agent that runs the templates and the receivers from the centre says which versions it
    # runs (an older one does not, and gets the tenant set alone, as before).
    running_versions = body.get("running_versions")
    if running_versions is not None and not (
            isinstance(running_versions, dict) and set(running_versions) <= set(DOWN_DOCUMENTS)
            and all(v is None or _whole(v) for v in running_versions.values())):
        problems.append(f"running_versions: expected an object of {', '.join(DOWN_DOCUMENTS)} to a whole "
                        f"number or null")
    errors = body.get("config_errors", {})
    if not (isinstance(errors, dict) and set(errors) <= set(fleet_config.KINDS)
            and all(isinstance(v, str) for v in errors.values())):
        problems.append(f"config_errors: expected an object of {', '.join(fleet_config.KINDS)} to a string")
    if problems:
        raise ApiError(422, "the sync request is not valid", problems)
    store = request.app[STORE]
    state = await store.tenant_state()
    documents = await store.run(fleet_config.central_documents) if running_versions is not None else {}
    reported = {"tenants": running, **(running_versions or {})}

    def record(b: Any) -> None:
        fleet_store.record_contact(b, site, time.time(), appliance_time, running, backlog, status)
        fleet_config.record_site_versions(b, site, reported, errors)

    with refused_by_store(site):
        await store.run(record)
    answer: dict[str, Any] = {"version": state.version}
    site_tenants = [t for t in state.tenants if t.runs_at(site)]
    if running != state.version:
        answer["tenants"] = [t.to_dict() for t in site_tenants]
    if running_versions is not None:
        answer["versions"] = {"tenants": state.version, **{kind: v for kind, (v, _) in documents.items()}}
        ids = frozenset(t.id for t in site_tenants)
        for kind, (version, document) in documents.items():
            if version > 0 and running_versions.get(kind) != version:
                answer[kind] = fleet_config.for_site(kind, document, ids)
    return web.json_response(answer)


def check_batches(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(queue, batches) of an ingest body; ApiError 422 naming every problem."""
    problems: list[str] = []
    queue = body.get("queue")
    if not isinstance(queue, str) or not 0 < len(queue) <= QUEUE_ID_MAX:
        problems.append(f"queue: expected the queue's id (1-{QUEUE_ID_MAX} characters)")
    batches = body.get("batches")
    if not isinstance(batches, list) or not 0 < len(batches) <= MAX_BATCHES:
        problems.append(f"batches: expected an array of 1 to {MAX_BATCHES} batches")
        batches = []
    for i, batch in enumerate(batches):
        where = f"batches[{i}]"
        if not isinstance(batch, dict):
            problems.append(f"{where}: expected an object")
            continue
        seq = batch.get("seq")
        if not _whole(seq, 1):
            problems.append(f"{where}.seq: expected a whole number from 1 to 2**63-1")
        _number(batch.get("time"), f"{where}.time", problems)
        traffic, destinations, events = (batch.get(k, []) for k in ("traffic", "destinations", "events"))
        if not all(isinstance(x, list) for x in (traffic, destinations, events)):
            problems.append(f"{where}: traffic, destinations and events must be arrays")
            continue
        columns = batch.get("traffic_columns")
        column_rows = 0
        if columns is not None:
            problem = _bad_traffic_columns(columns)
            if problem is not None:
                problems.append(f"{where}.traffic_columns{problem}")
                continue
            column_rows = len(columns["tenant"])
        if len(traffic) + column_rows + len(destinations) + len(events) > MAX_ROWS_PER_BATCH:
            problems.append(f"{where}: more than {MAX_ROWS_PER_BATCH} rows")
            continue
        j = _bad_traffic_row(traffic)
        if j is not None:
            problems.append(f"{where}.traffic[{j}]: expected [tenant, time, passed_pps, dropped_pps, "
                            f"passed_bps, dropped_bps] (pps and bps within ±{VALUE_MAX:g})")
        for j, row in enumerate(destinations):
            if not (isinstance(row, dict) and isinstance(row.get("tenant"), str) and isinstance(row.get("address"), str)
                    and _time(row.get("time")) and _strings_or_numbers(row.get("pps", []))
                    and (row.get("dropped_pps") is None or (_finite(row["dropped_pps"])
                                                            and abs(row["dropped_pps"]) <= VALUE_MAX))):
                problems.append(f"{where}.destinations[{j}]: expected a destination row (tenant, address, time "
                                f"within ±2**53, pps an array of numbers and dropped_pps a number, within "
                                f"±{VALUE_MAX:g})")
                break
        for j, event in enumerate(events):
            if not (isinstance(event, dict) and event.get("type") in INCIDENT_EVENT_TYPES
                    and isinstance(event.get("incident_id"), str) and isinstance(event.get("tenant"), str)):
                problems.append(f"{where}.events[{j}]: expected an incident event (type, incident_id, tenant)")
                break
            problem = _bad_event(event)
            if problem is not None:
                problems.append(f"{where}.events[{j}].{problem}"[:200])
                break
        if len(problems) > 20:   # enough to see what is wrong
            break
    if problems:
        raise ApiError(422, "the batches are not valid; none was stored", problems)
    return queue, batches  # type: ignore[return-value]


_NUMBER_TYPES = (int, float)   # exactly: bool is an int subclass and no number here


def _finite(value: Any) -> bool:
    return type(value) in _NUMBER_TYPES and math.isfinite(value)


def _strings(value: Any) -> bool:
    return type(value) is list and all(type(v) is str for v in value)


def _strings_or_numbers(value: Any) -> bool:
    """An array of finite numbers within ±VALUE_MAX (a destination's per-second pps)."""
    return type(value) is list and all(_finite(v) and -VALUE_MAX <= v <= VALUE_MAX for v in value)


# An event's optional fields and what each must be when present (None allowed for all): what
# store._record_event, the reports (_explanation) and incident.html take without failing.
_EVENT_NUMBERS = ("timestamp", "pps", "bps", "confidence")
_DETAIL_NUMBERS = ("started", "ended", "peak_pps", "peak_bps", "efficacy")


def _bad_event(event: dict[str, Any]) -> str | None:
    """What is wrong with an incident event's optional fields (None: nothing), as "field: problem"."""
    for field in ("vectors", "destinations"):
        if event.get(field) is not None and not _strings(event[field]):
            return f"{field}: expected an array of strings"
    for field in _EVENT_NUMBERS:
        if event.get(field) is not None and not _finite(event[field]):
            return f"{field}: expected a finite number, got {event[field]!r}"
    if event.get("timestamp") is not None and not _time(event["timestamp"]):
        return f"timestamp: expected a time within ±2**53 s, got {event['timestamp']!r}"
    for field in ("sequence", "packets_dropped"):
        if event.get(field) is not None and not _whole(event[field]):
            return f"{field}: expected a whole number (0 to 2**63-1), got {event[field]!r}"
    for field in ("message", "severity"):
        if event.get(field) is not None and type(event[field]) is not str:
            return f"{field}: expected a string"
    details = event.get("details")
    if details is None:
        return None
    if type(details) is not dict:
        return "details: expected an object"
    for field in _DETAIL_NUMBERS:
        if details.get(field) is not None and not _finite(details[field]):
            return f"details.{field}: expected a finite number, got {details[field]!r}"
    for field in ("started", "ended"):
        if details.get(field) is not None and not _time(details[field]):
            return f"details.{field}: expected a time within ±2**53 s, got {details[field]!r}"
    if details.get("target") is not None and type(details["target"]) is not str:
        return "details.target: expected a string"
    explanations = details.get("explanations")
    if explanations is not None and not (type(explanations) is dict
                                         and all(type(v) is str for v in explanations.values())):
        return "details.explanations: expected an object of strings (vector -> what was seen)"
    series = details.get("series")
    if series is not None and not (type(series) is list and all(
            type(p) is dict and _time(p.get("t")) and all(_finite(v) for k, v in p.items() if k != "t")
            for p in series)):
        return "details.series: expected an array of points (t and finite numbers)"
    pcap = details.get("pcap")
    if pcap is not None and type(pcap) is not dict:
        return "details.pcap: expected an object"
    if details.get("rules") is not None and type(details["rules"]) is not list:
        return "details.rules: expected an array"
    return None


def _bad_traffic_row(rows: list[Any]) -> int | None:
    """Index of the first traffic row that is not [tenant, time, 4 finite numbers] (None: all are).
    Written for speed: a request carries up to millions of rows, checked on the event loop."""
    numbers = _NUMBER_TYPES
    for j, row in enumerate(rows):
        if type(row) is not list or len(row) != 6 or type(row[0]) is not str:
            return j
        _, t, a, b, c, d = row
        if (type(t) not in numbers or type(a) not in numbers or type(b) not in numbers or type(c) not in numbers
                or type(d) not in numbers or not math.isfinite(t + a + b + c + d)   # a NaN or inf makes the sum one
                or not -TIME_MAX_S <= t <= TIME_MAX_S
                or not -VALUE_MAX <= min(a, b, c, d) <= max(a, b, c, d) <= VALUE_MAX):
            return j
    return None


_TRAFFIC_FIELDS = ("tenant", "time", "passed_pps", "dropped_pps", "passed_bps", "dropped_bps")
_NUMBER_TYPE_SET = frozenset(_NUMBER_TYPES)


def _bad_traffic_columns(columns: Any) -> str | None:
    """What is wrong with a batch's `traffic_columns` (None: nothing), as the rest of a problem's
    text after "batches[i].traffic_columns". Each column is checked whole (its set of element types,
    the sum of its numbers), element by element only to name the first bad one."""
    if type(columns) is not dict or set(columns) != set(_TRAFFIC_FIELDS):
        return f": expected an object of the arrays {', '.join(_TRAFFIC_FIELDS)}"
    length = None
    for field in _TRAFFIC_FIELDS:
        column = columns[field]
        if type(column) is not list:
            return f".{field}: expected an array"
        if length is None:
            length = len(column)
        elif len(column) != length:
            return f".{field}: {len(column)} values where tenant has {length}"
        if field == "tenant":
            if column and set(map(type, column)) != {str}:
                return f".tenant[{next(j for j, v in enumerate(column) if type(v) is not str)}]: expected a string"
            continue
        # A NaN or an infinity makes the sum one; so may finite numbers near the float limit, which
        # the element-wise pass below then lets through.
        if column and (not set(map(type, column)) <= _NUMBER_TYPE_SET or not math.isfinite(sum(column))):
            for j, v in enumerate(column):
                if type(v) not in _NUMBER_TYPE_SET or not math.isfinite(v):
                    return f".{field}[{j}]: expected a finite number, got {v!r}"[:200]
        if field == "time" and column and not (min(column) >= -TIME_MAX_S and max(column) <= TIME_MAX_S):
            j = next(j for j, v in enumerate(column) if not -TIME_MAX_S <= v <= TIME_MAX_S)
            return f".time[{j}]: expected a time within ±2**53 s, got {column[j]!r}"[:200]
        if field != "time" and column and not (min(column) >= -VALUE_MAX and max(column) <= VALUE_MAX):
            j = next(j for j, v in enumerate(column) if not -VALUE_MAX <= v <= VALUE_MAX)
            return f".{field}[{j}]: expected a number within ±{VALUE_MAX:g}, got {column[j]!r}"[:200]
    return None


def _data_errors() -> tuple[type[BaseException], ...]:
    """What a store raises for a value it cannot hold (psycopg's DataError only where installed)."""
    try:
        import psycopg  # noqa: PLC0415 - a SQLite-only central need not have it
    except ImportError:
        return (OverflowError, ValueError)
    return (psycopg.DataError, OverflowError, ValueError)


@contextlib.contextmanager
def refused_by_store(site: str) -> Any:
    """A value the checks let through and the database refuses: 422 (the site drops the batch),
    not a 500 that it retries forever."""
    try:
        yield
    except _data_errors() as exc:
        log.warning("fleet.refused_by_store", site=site, error=str(exc)[:300])
        raise ApiError(422, f"the database refused a value of the request: {exc}"[:300]) from None


async def site_ingest(request: web.Request) -> web.Response:
    site = await authenticated_site(request)
    body = _own_site(await read_json(request, _strict_loads), site)
    queue, batches = check_batches(body)
    received = time.time()
    # Only the tenants the central set gives this site (as site_sync sends them) may be written.
    state = await request.app[STORE].tenant_state()
    tenants = frozenset(t.id for t in state.tenants if t.runs_at(site))
    with refused_by_store(site):
        result = await ingest_store(request.app, site).run(fleet_store.ingest, site, queue, batches, received,
                                                            record_event_in, tenants, request.app[SETTINGS].retention)
    if result.foreign:
        log.warning("fleet.foreign_tenant_skipped", site=site, rows=result.foreign)
    counters = request.app[FLEET_COUNTERS]
    counters["outside_rows"] += result.outside
    counters["ahead_rows"] += result.ahead
    counters["folded_rows"] += result.folded
    # Acknowledged and stored nowhere: said here, in /metrics and to the site (issue 17 review 2, item 3).
    if result.ahead:
        log.warning("fleet.clock_ahead_not_stored", site=site, rows=result.ahead,
                    ahead_max_s=fleet_store.PARTITIONS_AHEAD_S)
    if result.outside > result.ahead:
        log.warning("fleet.too_old_not_stored", site=site, rows=result.outside - result.ahead)
    if result.folded:
        log.info("fleet.backfill_folded_into_minutes", site=site, rows=result.folded)
    log.debug("fleet.ingested", site=site, batches=len(batches), duplicates=result.duplicates,
              traffic_rows=result.traffic_rows, events=result.events)
    return web.json_response({"acked": result.acked, "duplicates": result.duplicates, "outside": result.outside,
                              "folded": result.folded})


# -- the operator's side --------------------------------------------------------------------------

def _require_noc(request: web.Request) -> None:
    if principal_of(request).role not in ("admin", "noc"):
        raise ApiError(403, "only an administrator or the NOC may see the fleet")


def _site_filter(request: web.Request) -> str | None:
    site = request.query.get("site") or None
    if site is not None and fleet_store.site_problem(site) is not None:
        raise ApiError(400, f"site: {fleet_store.site_problem(site)}")
    return site


async def central_versions(store: Store) -> dict[str, int]:
    """The version of each configuration document in force centrally (what sites should run)."""
    documents = await store.run(fleet_config.central_documents)
    return {"tenants": (await store.tenant_state()).version, **{kind: v for kind, (v, _) in documents.items()}}


async def fleet_view(request: web.Request, site: str | None) -> list[dict[str, Any]]:
    """Each site's health with its current traffic and the version of each configuration document
    it runs against the central one (`versions`; `lagging` when any lags), in site order."""
    store = request.app[STORE]
    now = time.time()
    state = await store.tenant_state()
    sites = await store.run(fleet_store.sites)
    current = await store.run(fleet_store.current_traffic, now - CURRENT_SPAN_S, site)
    central = await central_versions(store)
    reported = await store.run(fleet_config.site_versions)
    rows = []
    for s in sites:
        if site is not None and s.site != site:
            continue
        row = fleet_config.with_versions(s.health(now, state.version), central, reported.get(s.site, {}))
        row["traffic"] = current.get(s.site)
        rows.append(row)
    return rows


async def api_sites(request: web.Request) -> web.Response:
    _require_noc(request)
    return web.json_response({"sites": await fleet_view(request, _site_filter(request))})


async def api_traffic(request: web.Request) -> web.Response:
    """?resolution=second (default; up to TRAFFIC_SPAN_MAX_S back), minute or hour (the rollups:
    mean pps and bps per row, maxima, samples; up to ROLLUP_SPAN_MAX_S back)."""
    _require_noc(request)
    resolution = request.query.get("resolution", "second")
    if resolution not in ("second", *fleet_store.RESOLUTIONS):
        raise ApiError(400, f"resolution: expected second, minute or hour, got {resolution!r}"[:200])
    span_max = TRAFFIC_SPAN_MAX_S if resolution == "second" else ROLLUP_SPAN_MAX_S[resolution]
    seconds = query_int(request, "seconds", 300, 1, span_max)
    now = time.time()
    site, tenant = _site_filter(request), request.query.get("tenant") or None
    if resolution != "second" and tenant is None:
        # A week of minutes of every tenant at every site is billions of rows (issue 17 review 2, item 4).
        raise ApiError(400, f"tenant: required for resolution={resolution} (one tenant's rollups per request)")
    if resolution == "second":
        rows = await request.app[STORE].run(lambda b: fleet_store.traffic(b, now - seconds, site=site, tenant=tenant))
    else:
        rows = await request.app[STORE].run(lambda b: fleet_store.series(b, resolution, now - seconds, site=site,
                                                                         tenant=tenant))
    return web.json_response({"rows": rows})


async def api_tenant_traffic(request: web.Request) -> web.Response:
    """One tenant's seconds summed over the sites (`series`), with each site's own (`sites`);
    ?site= narrows both to one site. A tenant's user sees its own tenant's."""
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    seconds = query_int(request, "seconds", 300, 1, TRAFFIC_SPAN_MAX_S)
    site = _site_filter(request)
    now = time.time()
    per_site = await request.app[STORE].run(fleet_tenant.site_seconds, tenant.id, now - seconds, now + 1, site)
    return web.json_response({"tenant": tenant.id, "site": site, "series": fleet_tenant.summed(fleet_tenant.complete(per_site).values()),
                              "sites": per_site})


async def api_tenant_destinations(request: web.Request) -> web.Response:
    """One tenant's per-destination series merged over the sites (?site=: one site's) over
    ?seconds= (up to DESTINATION_SPAN_MAX_S) or ?range= (a box's own destination ranges, 5m|1h|24h|7d):
    seconds up to an hour, the destination minute rollups beyond (`fleet_tenant.destinations`)."""
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    if "range" in request.query:
        name = request.query["range"]
        if name not in DESTINATION_RANGES:
            choices = ", ".join(DESTINATION_RANGES)
            raise ApiError(400, f"range: {name[:20]!r} is not one of {choices}", [f"range: one of {choices}"])
        seconds = DESTINATION_RANGES[name].span_s
    else:
        seconds = query_int(request, "seconds", 300, 1, DESTINATION_SPAN_MAX_S)
    site = _site_filter(request)
    now = time.time()
    resolution, rows = await request.app[STORE].run(fleet_tenant.destinations, tenant.id, now - seconds, now + 1,
                                                    site, fleet_tenant.destination_resolution(seconds))
    return web.json_response({"tenant": tenant.id, "site": site, "resolution": resolution, "destinations": rows})


async def api_incidents(request: web.Request) -> web.Response:
    _require_noc(request)
    site = _site_filter(request)
    return web.json_response({"incidents": await request.app[STORE].run(fleet_store.incidents, site,
                                                                         INCIDENTS_SHOWN)})


async def fleet_page(request: web.Request) -> web.Response:
    _require_noc(request)
    site = _site_filter(request)
    store = request.app[STORE]
    sites = await fleet_view(request, site)
    names = [s.site for s in await store.run(fleet_store.sites)]
    incidents = await store.run(fleet_store.incidents, site, INCIDENTS_SHOWN)
    return render(request, "fleet.html", sites=sites, site=site, names=names, incidents=incidents,
                  in_force=await central_versions(store))


# -- retention ------------------------------------------------------------------------------------

async def partition_upkeep(worker: Store, retention: Any, counters: dict[str, int]) -> bool:
    """Partitions made ahead, expired series dropped: True when done. A failure (a lock timeout
    behind an ingest, say) is logged and counted; the caller tries again on its next pass."""
    try:
        await worker.run(fleet_store.apply_retention, time.time(), retention)
        # Sites' PCAP files (up to 2 x 8 MiB an incident) are kept fleet_evidence_retention_days too.
        pruned = await worker.run(fleet_evidence_store.apply_retention, time.time(),
                                  retention.fleet_evidence_retention_days)
        if pruned:
            log.info("fleet.evidence_pruned", rows=pruned, retention_days=retention.fleet_evidence_retention_days)
        return True
    except Exception:
        counters["maintenance_failures"] += 1
        log.exception("fleet.partition_upkeep_failed")
        return False


async def rollup_pass(worker: Store, retention: Any, counters: dict[str, int]) -> None:
    """The pending minutes and hours rolled up; a key that fails is dropped there (its own
    savepoint, logged by fleet_store) and counted here."""
    try:
        done = await worker.run(fleet_store.rollup, time.time(), retention)
        counters["rollup_failures"] += done["failed"]
    except Exception:
        counters["maintenance_failures"] += 1
        log.exception("fleet.rollup_failed")


async def _retention(app: web.Application) -> AsyncIterator[None]:
    """Rollups every ROLLUP_EVERY_S, partitions made ahead and expired series dropped every
    RETENTION_EVERY_S. On PostgreSQL on a connection of their own: a pass of rollups unnests each
    site-minute's seconds, which would hold up the UI's queries on the store's connection. The
    partitions are made before the server takes requests (ingest stores only what has one); when
    that fails (a lock timeout) the server starts anyway and the next pass tries again.

    The partition upkeep runs first and apart from the rollups (issue 17 review 2, item 1): a
    rollup that fails must not stop the partitions ahead from being made, or after
    PARTITIONS_AHEAD_S every second sent would be outside them."""
    store = app[STORE]
    retention = app[SETTINGS].retention
    counters = app[FLEET_COUNTERS]
    own = await Store.open(store.url) if store.dialect == "postgresql" else None
    worker = own or store
    upkeep_due = not await partition_upkeep(worker, retention, counters)

    async def loop() -> None:
        nonlocal upkeep_due
        last_upkeep = time.monotonic()
        while True:
            await asyncio.sleep(ROLLUP_EVERY_S)   # the period, not a wait for an outcome
            if upkeep_due or time.monotonic() - last_upkeep >= RETENTION_EVERY_S:
                last_upkeep = time.monotonic()
                upkeep_due = not await partition_upkeep(worker, retention, counters)
            await rollup_pass(worker, retention, counters)

    task = asyncio.get_running_loop().create_task(loop(), name="securewatch:fleet-maintenance")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if own is not None:
            await own.close()
