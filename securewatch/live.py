"""The live dashboard: tenants with their current traffic (search, sort, paging on the server),
per-tenant charts from the stored series, and live updates as server-sent events.

    GET /                                  the dashboard page (active incidents on top)
    GET /api/v1/console/tenants            ?q=&sort=traffic|drops|name&page=&per_page=
    GET /api/v1/tenants/{id}/series        ?range=5m|1h|24h|30d   columnar, what the chart draws
    GET /api/v1/tenants/{id}/live          ?ids=a,b,...&after=T&events=N   text/event-stream

Current traffic is the appliance's status (the engine's last tick); in central mode, with no
appliance, the newest stored second of each tenant. The event stream sends one `tick` event a
second: the charted tenant's new seconds, the listed tenants' current rates and the active
incidents, all scoped to what the caller may read (a tenant user names only its own tenant;
another tenant's stream is a 404, another id is left out of `ids`). `events`: end the stream
after that many events (for scripts and tests; the browser's stream runs until the page goes).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import time
from typing import Any

import structlog
from aiohttp import web

from . import fleet_tenant, series
from .context import (
    APPLIANCE,
    STORE,
    ApiError,
    principal_of,
    query_int,
    scoped_status,
    visible_tenant,
)
from .store import IncidentFilter
from .ui import render

log = structlog.get_logger(__name__)

LIVE_PERIOD_S = 1.0            # seconds between events of a live stream (the engine's tick)
LIVE_MAX_IDS = 200             # tenants one stream reports rates for (a page of the table)
LIVE_BACKFILL_S = 30           # seconds of series a stream sends at most in one event
PER_PAGE_DEFAULT = 50          # tenants per dashboard page
PER_PAGE_MAX = 500
CENTRAL_FRESH_S = 30.0         # seconds: in central mode, a stored second newer than this is "current"
ACTIVE_SHOWN = 50              # active incidents listed on top
SORTS = ("traffic", "drops", "name")
LIVE_STOP = web.AppKey("live_stop", asyncio.Event)


def add_routes(app: web.Application) -> None:
    app[LIVE_STOP] = asyncio.Event()
    app.on_shutdown.append(_stop_streams)
    r = app.router
    r.add_get("/", dashboard_page)
    r.add_get("/api/v1/console/tenants", api_console_tenants)
    r.add_get("/api/v1/tenants/{tenant_id}/series", api_tenant_series)
    r.add_get("/api/v1/tenants/{tenant_id}/live", api_live)


async def _stop_streams(app: web.Application) -> None:
    app[LIVE_STOP].set()   # open streams end their loop; the server can then close


# -- the tenant table ---------------------------------------------------------------------------

async def current_rates(request: web.Request) -> dict[str, dict[str, Any]]:
    """Each readable tenant's current rates: the appliance's last tick, or the newest stored second."""
    p = principal_of(request)
    appliance = request.app[APPLIANCE]
    if appliance is not None:
        return dict(scoped_status(appliance.status(), p).get("tenants") or {})
    rates = await request.app[STORE].run(series.latest_tenant_rates, time.time() - CENTRAL_FRESH_S)
    return {tid: r for tid, r in rates.items() if p.can_read(tid)}


def _matches(tenant: Any, q: str) -> bool:
    """Search by id or name (case-insensitive substring), or by an address inside the tenant's prefixes."""
    if q.lower() in tenant.id.lower() or q.lower() in tenant.name.lower():
        return True
    try:
        address = ipaddress.ip_address(q)
    except ValueError:
        return False
    return any(address in prefix for prefix in tenant.prefixes)


async def tenant_page(request: web.Request) -> dict[str, Any]:
    """One page of the caller's tenants, searched and sorted on the server."""
    p = principal_of(request)
    q = request.query.get("q", "").strip()[:200]
    sort = request.query.get("sort") or "traffic"
    if sort not in SORTS:
        raise ApiError(400, f"sort: {sort!r} is not one of {', '.join(SORTS)}", [f"sort: one of {', '.join(SORTS)}"])
    per_page = query_int(request, "per_page", PER_PAGE_DEFAULT, 1, PER_PAGE_MAX)
    page = query_int(request, "page", 1, 1, 10**6)
    tenants = [t for t in await request.app[STORE].tenant_set() if p.can_read(t.id)]
    if q:
        tenants = [t for t in tenants if _matches(t, q)]
    rates = await current_rates(request)
    active = await request.app[STORE].incidents(IncidentFilter(tenants=p.visible_tenants(()), state="active",
                                                               limit=10_000))
    attacked: dict[str, int] = {}
    for inc in active:
        attacked[inc.tenant] = attacked.get(inc.tenant, 0) + 1
    rows = []
    for t in tenants:
        r = rates.get(t.id) or {}
        rows.append({"id": t.id, "name": t.name, "mode": t.mode, "active_incidents": attacked.get(t.id, 0),
                     **{k: float(r.get(k) or 0.0) for k in series.TRAFFIC_KEYS}})
    if sort == "name":
        rows.sort(key=lambda r: (r["name"].lower(), r["id"]))
    elif sort == "drops":
        rows.sort(key=lambda r: (-r["dropped_pps"], -r["passed_pps"], r["id"]))
    else:
        rows.sort(key=lambda r: (-(r["passed_pps"] + r["dropped_pps"]), r["id"]))
    total = len(rows)
    pages = max(1, -(-total // per_page))
    start = (page - 1) * per_page
    return {"q": q, "sort": sort, "page": page, "per_page": per_page, "pages": pages, "total": total,
            "rows": rows[start:start + per_page]}


async def api_console_tenants(request: web.Request) -> web.Response:
    return web.json_response(await tenant_page(request))


# -- series --------------------------------------------------------------------------------------

async def api_tenant_series(request: web.Request) -> web.Response:
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    name = request.query.get("range", "5m")
    rng = series.RANGES.get(name)
    if rng is None:
        raise ApiError(400, f"range: {name!r} is not one of {', '.join(series.RANGES)}",
                       [f"range: one of {', '.join(series.RANGES)}"])
    data = await request.app[STORE].run(series.tenant_series, tenant.id, rng, time.time(), fleet_tenant.with_sites)
    return web.json_response({"tenant": tenant.id, "range": rng.name, "resolution": rng.table,
                              "step_s": rng.step_s, "span_s": rng.span_s, **data})


# -- the event stream --------------------------------------------------------------------------------

async def _new_seconds(request: web.Request, tenant_id: str, after: float) -> list[dict[str, Any]]:
    appliance = request.app[APPLIANCE]
    if appliance is not None:
        rows = appliance.traffic_series(tenant_id, LIVE_BACKFILL_S)
    else:
        now = time.time()
        rows = await request.app[STORE].traffic(tenant_id, max(after, now - LIVE_BACKFILL_S), now + 1, "second")
    return [{"time": float(r["time"]), **{k: float(r.get(k) or 0.0) for k in series.TRAFFIC_KEYS}}
            for r in rows if float(r["time"]) > after]


async def live_tick(request: web.Request, tenant_id: str, ids: list[str], after: float) -> dict[str, Any]:
    """One event's data (see the module docstring); `after`: the newest second already sent."""
    p = principal_of(request)
    rates = await current_rates(request) if ids else {}
    active = await request.app[STORE].incidents(IncidentFilter(tenants=p.visible_tenants(()), state="active",
                                                               limit=ACTIVE_SHOWN))
    return {"now": time.time(), "tenant": tenant_id,
            "points": await _new_seconds(request, tenant_id, after),
            "rows": {i: {k: float((rates.get(i) or {}).get(k) or 0.0) for k in series.TRAFFIC_KEYS} for i in ids},
            "active": [{"id": i.id, "tenant": i.tenant, "target": i.target, "vectors": i.vectors,
                        "peak_pps": i.peak_pps, "started": i.started} for i in active]}


async def api_live(request: web.Request) -> web.StreamResponse:
    p = principal_of(request)
    tenant_id = (await visible_tenant(request, request.match_info["tenant_id"])).id
    events = query_int(request, "events", 0, 0, 10**9)   # 0: until the client goes away
    ids = [i for i in dict.fromkeys(request.query.get("ids", "").split(",")) if i and p.can_read(i)][:LIVE_MAX_IDS]
    try:
        after = float(request.query.get("after") or 0.0)
    except ValueError:
        raise ApiError(400, "after: expected seconds since the epoch", ["after: expected a number"]) from None
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})   # a proxy must not buffer the stream
    await response.prepare(request)
    stop = request.app[LIVE_STOP]
    sent = 0
    try:
        while not stop.is_set() and (not events or sent < events):
            data = await live_tick(request, tenant_id, ids, after)
            if data["points"]:
                after = data["points"][-1]["time"]
            await response.write(f"event: tick\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())
            sent += 1
            if events and sent >= events:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LIVE_PERIOD_S)   # the stream's cadence, or shutdown
    except (ConnectionResetError, asyncio.CancelledError):
        log.debug("securewatch.live_closed", tenant=tenant_id)
        raise
    return response


# -- the page ----------------------------------------------------------------------------------------

async def dashboard_page(request: web.Request) -> web.Response:
    p = principal_of(request)
    table = await tenant_page(request)
    active = await request.app[STORE].incidents(IncidentFilter(tenants=p.visible_tenants(()), state="active",
                                                               limit=ACTIVE_SHOWN))
    appliance = request.app[APPLIANCE]
    status = appliance.status() if appliance is not None else {}
    receivers = []
    if p.sees_all:  # the NOC's receivers: health and backlog of each
        for name, r in sorted((status.get("notifiers") or {}).items()):
            receivers.append({"name": name, "kind": r.get("kind", ""), "healthy": r.get("healthy"),
                              "backlog": r.get("backlog", 0), "delivered": r.get("delivered", 0),
                              "last_error": r.get("last_error") or ""})
    selected = request.query.get("tenant") or (table["rows"][0]["id"] if table["rows"] else "")
    if selected and not p.can_read(selected):
        selected = ""
    return render(request, "dashboard.html", table=table, active=active, receivers=receivers, selected=selected,
                  ranges=list(series.RANGES), sorts=SORTS)
