"""Incidents as the API and the UI both handle them: listing, detail, acknowledging, notes.

The handlers of `api` and `ui` differ only in how they read the request (JSON or a form with its
CSRF token) and answer (JSON or a page); who may see and do what is decided here, once.
"""

from __future__ import annotations

import datetime
import pathlib
import time
from typing import Any

import structlog
from aiohttp import web

from . import fleet_evidence_store
from .context import (
    OPTIONS,
    SETTINGS,
    STORE,
    ApiError,
    audit,
    check_csrf,
    principal_of,
    shown_actors,
    visible_incident,
)
from .fleet_store import site_problem
from .fleet_tenant import linked_incidents
from .store import INCIDENT_STATES, Incident, IncidentFilter

log = structlog.get_logger(__name__)

MAX_NOTE_CHARS = 4000
INCIDENT_PAGE_DEFAULT = 200        # incidents per list when the caller names no limit
INCIDENT_PAGE_MAX = 10000          # most incidents one list returns


def parse_since(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"since: {text!r} is neither seconds since the epoch nor ISO 8601") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


async def incident_filter(request: web.Request, query: Any) -> IncidentFilter:
    p = principal_of(request)
    tenant = query.get("tenant") or None
    state = query.get("state") or None
    if state is not None and state not in INCIDENT_STATES:
        raise ApiError(400, f"state: {state!r} is not one of {', '.join(INCIDENT_STATES)}")
    try:
        limit = int(query.get("limit", INCIDENT_PAGE_DEFAULT))
    except ValueError:
        raise ApiError(400, "limit: expected an integer") from None
    if not 1 <= limit <= INCIDENT_PAGE_MAX:
        raise ApiError(400, f"limit: must be between 1 and {INCIDENT_PAGE_MAX}")
    visible = p.visible_tenants(())
    site = query.get("site") or None
    if site is not None and site_problem(site) is not None:
        raise ApiError(400, f"site: {site_problem(site)}")
    return IncidentFilter(tenant=tenant, tenants=visible, state=state, vector=query.get("vector") or None,
                          since=parse_since(query.get("since")), limit=limit, site=site)


async def incident_list(request: web.Request) -> list[Incident]:
    """The incidents the request's query asks for, among those the caller may read."""
    return await request.app[STORE].incidents(await incident_filter(request, request.query))


async def scoped_incidents(request: web.Request, incidents: list[Any]) -> list[dict[str, Any]]:
    """Incidents as dicts, who acknowledged them shown as the caller may see it."""
    shown = await shown_actors(request, [i.acknowledged_by for i in incidents])
    return [{**i.to_dict(), "acknowledged_by": shown[i.acknowledged_by]} for i in incidents]


async def incident_detail(request: web.Request, incident_id: str) -> dict[str, Any]:
    store = request.app[STORE]
    incident = await visible_incident(request, incident_id)
    out = (await scoped_incidents(request, [incident]))[0]
    out["events"] = await store.incident_events(incident_id)
    out["timeline"] = await store.incident_points(incident_id)
    # Internal notes are the operator's and the NOC's: a tenant never receives them.
    notes = await store.incident_notes(incident_id, internal=principal_of(request).sees_all)
    shown = await shown_actors(request, [n["author"] for n in notes])
    out["notes"] = [{**n, "author": shown[n["author"]]} for n in notes]
    # Each capture the incident's events named, and whether this server still has it: a file aged
    # out (pcap_retention_days here, fleet_evidence_retention_days at the central server) is noted.
    out["pcaps"] = {}
    for kind, ref in (await store.pcaps(incident_id)).items():
        missing = await capture_missing(request, incident, kind, ref)
        out["pcaps"][kind] = {"packets": ref["packets"], "bytes": ref["bytes"],
                              "url": f"/api/v1/incidents/{incident_id}/pcap/{kind}",
                              "kept": missing is None, "note": missing}
    # The same attack seen at other sites: their incidents, linked (fleet_tenant: why two, not one).
    out["linked"] = await store.run(linked_incidents, incident_id)
    # A site's incident: the BGP announcements its appliance made for it (issue 17, item 3).
    # Its peers (the provider's routers) for admin and noc only, as on a local incident's page.
    announcements = await store.run(fleet_evidence_store.site_announcements, incident_id)
    if not principal_of(request).sees_all:
        announcements = [{k: v for k, v in a.items() if k != "peers"} for a in announcements]
    out["site_announcements"] = announcements
    return out


async def capture_missing(request: web.Request, incident: Incident, kind: str,
                          ref: dict[str, Any]) -> str | None:
    """None when the `kind` capture named by `ref` (a `store.pcaps` entry) can be served, else why not:
    a site's file (central server) not in `fleet_evidence`, a local file gone from under the pcap root."""
    store = request.app[STORE]
    site = await store.run(fleet_evidence_store.incident_site, incident.id)
    if site is not None:
        if kind in await store.run(fleet_evidence_store.site_pcap_kinds, incident.id):
            return None
        return site_capture_missing(request, incident, kind, site)
    return local_capture_missing(request, incident, kind, ref)


def site_capture_missing(request: web.Request, incident: Incident, kind: str, site: str) -> str:
    """Why a site's `kind` capture is not at the central server (`fleet_evidence`)."""
    return fleet_evidence_store.capture_missing(
        incident.id, kind, site=site, ended=incident.ended, now=time.time(),
        retention_days=request.app[SETTINGS].retention.fleet_evidence_retention_days)


def local_capture_missing(request: web.Request, incident: Incident, kind: str, ref: dict[str, Any]) -> str | None:
    """None when this box's own `kind` capture (`ref`, a `store.pcaps` entry) can be served, else why not."""
    root = request.app[OPTIONS]["pcap_root"]
    path = pathlib.Path(ref["path"]).resolve()
    # Confined always: the path comes from an event, which in central mode any appliance (or anyone
    # who can write the database) chose. No root: this server has no captures.
    if root is None or not path.is_relative_to(root):
        if root is not None:
            log.warning("securewatch.pcap_outside_root", incident=incident.id, path=str(path), root=str(root))
        return "capture file is not available"
    if not path.is_file():
        return fleet_evidence_store.capture_missing(incident.id, kind, site=None, ended=incident.ended,
                                                    now=time.time(), retention_days=None)
    return None


async def handled_incident(request: web.Request, incident_id: str, verb: str, *,
                           form: bool) -> tuple[Incident, Any]:
    """The incident the caller may `verb` (acknowledge, annotate) and, for a page (`form`), its
    posted form with the CSRF token checked: 404 when the caller may not read it, 403 when only read."""
    incident = await visible_incident(request, incident_id)
    posted = await check_csrf(request) if form else None
    if not principal_of(request).can_handle_incident(incident.tenant):
        raise ApiError(403, f"you may read this incident but not {verb} it")
    return incident, posted


async def acknowledge(request: web.Request, incident: Incident) -> None:
    await request.app[STORE].acknowledge(incident.id, principal_of(request).name)
    await audit(request, "incident.acknowledge", target=incident.id, tenant=incident.tenant)


async def add_note(request: web.Request, incident_id: str, tenant: str, text: str, *, internal: bool = False) -> None:
    """Store a note; an internal one (operator and NOC only) is never shown to the tenant."""
    if internal and not principal_of(request).sees_all:
        raise ApiError(403, "internal: only the operator and the NOC write internal notes",
                       ["internal: only the operator and the NOC write internal notes"])
    await request.app[STORE].annotate(incident_id, principal_of(request).name, text, internal=internal)
    await audit(request, "incident.annotate", target=incident_id, tenant=tenant,
                details={"chars": len(text), "internal": internal})
