"""The per-server (per-destination) view: "was my server attacked?".

    GET /tenants/{id}/servers                        the tenant's servers, busiest first, and an address search
    GET /tenants/{id}/servers/{address}              one server: chart, baseline band, threshold, incidents
    GET /api/v1/tenants/{id}/servers                 the same list as JSON
    GET /api/v1/tenants/{id}/servers/{address}       ?range=5m|1h|24h|7d  series, current load, incidents

The series come from the appliance (`DestinationHooks`, filled after each engine tick by
`appliance.destinations`) and are stored by `sample_destinations` (`series.py` tables): per
second for attacked and the busiest destinations, minute rollups for the rest. For each class
a row holds the rate, the learned baseline mean, k·σ (the half-width of the band mean ± k·σ) and
the threshold in force; "load" is the busiest class's rate over its threshold (1.0 triggers).

Access: the tenant must be visible to the caller and the address inside the tenant's prefixes;
anything else is the same 404 as a tenant that does not exist.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Any, Protocol, runtime_checkable

import structlog
from aiohttp import web

from . import series
from .context import STORE, ApiError, not_found, visible_tenant
from .store import IncidentFilter, Store
from .ui import render

log = structlog.get_logger(__name__)

POLL_S = 5.0                   # seconds between reads of the appliance's destination rows
LIST_SPAN_S = 24 * 3600        # seconds: servers seen this recently are listed
LIST_MAX = 200                 # servers listed per tenant
INCIDENTS_SHOWN = 50           # incidents of one server listed


@runtime_checkable
class DestinationHooks(Protocol):
    """What an appliance offers for the per-server view (`appliance.service.Appliance` does)."""

    def destination_seconds(self, after: float) -> list[dict[str, Any]]:
        """Per-second rows newer than `after`: {"tenant", "address", "time", "pps", "dropped_pps", "mean",
        "sigma" (k·σ), "threshold"}, class arrays in `series.CLASSES` order."""

    def destination_minutes(self, after: float) -> list[dict[str, Any]]:
        """Minute rollups of minutes after `after`: the same keys plus "max_pps" and "samples"."""


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/tenants/{tenant_id}/servers", servers_page)
    r.add_get("/tenants/{tenant_id}/servers/{address}", server_page)
    r.add_get("/api/v1/tenants/{tenant_id}/servers", api_servers)
    r.add_get("/api/v1/tenants/{tenant_id}/servers/{address}", api_server)


# -- storing what the appliance recorded --------------------------------------------------------

async def sample_destinations(store: Store, hooks: DestinationHooks) -> None:
    """Copy the appliance's destination rows into the store every POLL_S seconds."""
    # At start, whatever the appliance still holds (it keeps minutes of rows): the store's upsert
    # makes a row read twice harmless.
    last_second, last_minute = time.time() - 300.0, time.time() - 3600.0
    while True:
        try:
            seconds = hooks.destination_seconds(last_second)
            if seconds:
                await store.run(series.add_destination_seconds, seconds)
                last_second = max(r["time"] for r in seconds)
            minutes = hooks.destination_minutes(last_minute)
            if minutes:
                await store.run(series.add_destination_minutes, minutes)
                last_minute = max(r["time"] for r in minutes)
        except Exception:
            log.exception("securewatch.destination_sample_failed")
        await asyncio.sleep(POLL_S)   # the sampling period, not a wait for an outcome


# -- lookups ----------------------------------------------------------------------------------

async def visible_server(request: web.Request) -> tuple[Any, str]:
    """The tenant and the canonical address of the URL's server; 404 unless both are the caller's."""
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    text = request.match_info["address"]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise not_found(f"no server {text[:64]!r} of tenant {tenant.id!r}") from None
    if not any(address in prefix for prefix in tenant.prefixes):
        raise not_found(f"no server {text[:64]!r} of tenant {tenant.id!r}")
    return tenant, str(address)


def _range(request: web.Request) -> series.Range:
    name = request.query.get("range", "1h")
    rng = series.DESTINATION_RANGES.get(name)
    if rng is None:
        choices = ", ".join(series.DESTINATION_RANGES)
        raise ApiError(400, f"range: {name!r} is not one of {choices}", [f"range: one of {choices}"])
    return rng


def current_state(data: dict[str, Any]) -> dict[str, Any] | None:
    """The newest row of a server's series per class: rate, baseline band, threshold, headroom, and the
    load (busiest class over its threshold: how far from triggering)."""
    if not data["time"]:
        return None
    classes = []
    for c in series.CLASSES:
        pps, mean, band, threshold = (data[k][c][-1] for k in ("pps", "mean", "sigma", "threshold"))
        classes.append({"class": c, "pps": pps, "mean": mean, "band_low": max(0.0, mean - band),
                        "band_high": mean + band, "threshold": threshold,
                        "headroom_pps": round(threshold - pps, 1), "load": series.load_of([pps], [threshold])})
    busiest = max(classes, key=lambda c: c["load"])
    return {"time": data["time"][-1], "load": busiest["load"], "closest_class": busiest["class"],
            "dropped_pps": data["dropped_pps"][-1], "classes": classes}


async def server_detail(request: web.Request) -> dict[str, Any]:
    tenant, address = await visible_server(request)
    rng = _range(request)
    store = request.app[STORE]
    data = await store.run(series.destination_series, tenant.id, address, rng, time.time())
    incidents = [i for i in await store.incidents(IncidentFilter(tenant=tenant.id, limit=10_000))
                 if i.target == address or address in i.destinations][:INCIDENTS_SHOWN]
    return {"tenant": tenant.id, "address": address, "range": rng.name, "span_s": rng.span_s, **data,
            "current": current_state(data),
            "incidents": [{"id": i.id, "state": i.state, "started": i.started, "ended": i.ended,
                           "vectors": i.vectors, "peak_pps": i.peak_pps, "efficacy": i.efficacy} for i in incidents]}


# -- API ------------------------------------------------------------------------------------------

async def api_servers(request: web.Request) -> web.Response:
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    servers = await request.app[STORE].run(series.tenant_destinations, tenant.id, time.time() - LIST_SPAN_S, LIST_MAX)
    return web.json_response({"tenant": tenant.id, "servers": servers})


async def api_server(request: web.Request) -> web.Response:
    return web.json_response(await server_detail(request))


# -- pages ------------------------------------------------------------------------------------------

async def servers_page(request: web.Request) -> web.Response:
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    wanted = request.query.get("address", "").strip()
    if wanted:   # the search box: straight to that server's page when it is the tenant's
        try:
            address = ipaddress.ip_address(wanted)
        except ValueError:
            address = None
        if address is not None and any(address in p for p in tenant.prefixes):
            raise web.HTTPFound(f"/tenants/{tenant.id}/servers/{address}")
    servers = await request.app[STORE].run(series.tenant_destinations, tenant.id, time.time() - LIST_SPAN_S, LIST_MAX)
    return render(request, "servers.html", tenant=tenant, servers=servers, wanted=wanted,
                  not_found=bool(wanted))


async def server_page(request: web.Request) -> web.Response:
    detail = await server_detail(request)
    return render(request, "server.html", d=detail, ranges=list(series.DESTINATION_RANGES))
