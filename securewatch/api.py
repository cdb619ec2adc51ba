"""The REST API under /api/v1 (and /metrics): JSON in, JSON out, scoped to the caller.

The routes are listed in `add_routes`; `openapi.py` describes them. Errors are `ApiError`s,
turned into JSON by the app's error middleware. Tenant changes go through the versioned
configuration service (`versioned.change_tenants`), as the UI's do; incidents through `incidents`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from tenants import ConfigError, Tenant, TenantSet

from . import fleet, fleet_evidence_store, fleet_store, metrics
from .bgp import bgp_of, escalate, escalation_target, scoped_bgp, withdraw
from .context import (
    APPLIANCE,
    STORE,
    ApiError,
    appliance_or_503,
    audit,
    etag,
    not_found,
    parse_version_tags,
    principal_of,
    query_int,
    read_json,
    require_admin,
    scoped_status,
    tenant_versions_shown,
    visible_incident,
    visible_tenant,
    visible_tenant_version,
)
from .incidents import (
    MAX_NOTE_CHARS,
    acknowledge,
    add_note,
    handled_incident,
    incident_detail,
    incident_list,
    local_capture_missing,
    scoped_incidents,
    site_capture_missing,
)
from .openapi import openapi_document
from .versioned import (
    POLICY_KEYS,
    TenantsChanged,
    change_tenants,
    policy_update,
    replace_tenant,
    rollback_tenant,
)

log = structlog.get_logger(__name__)

MAX_TRAFFIC_SPAN_S = 90 * 24 * 3600
AUDIT_PAGE_DEFAULT = 200           # audit entries per page when the caller names no limit
AUDIT_PAGE_MAX = 1000              # most audit entries one request returns
AUDIT_FILTERS = ("tenant", "actor", "action")   # query keys that narrow the audit log (action: a prefix)
AUDIT_FILTER_MAX_CHARS = 200       # characters of one filter value


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/openapi.json", api_openapi)
    r.add_get("/api/v1/me", api_me)
    r.add_get("/api/v1/status", api_status)
    r.add_post("/api/v1/apply", api_apply)
    r.add_get("/api/v1/tenants", api_tenants)
    r.add_post("/api/v1/tenants", api_tenant_create)
    r.add_get("/api/v1/tenants/{tenant_id}", api_tenant)
    r.add_put("/api/v1/tenants/{tenant_id}", api_tenant_replace)
    r.add_delete("/api/v1/tenants/{tenant_id}", api_tenant_delete)
    r.add_get("/api/v1/tenants/{tenant_id}/versions", api_tenant_versions)
    r.add_post("/api/v1/tenants/{tenant_id}/rollback", api_tenant_rollback)
    r.add_get("/api/v1/tenants/{tenant_id}/policy", api_policy)
    r.add_put("/api/v1/tenants/{tenant_id}/policy", api_policy_put)
    r.add_get("/api/v1/tenants/{tenant_id}/traffic", api_traffic)
    r.add_get("/api/v1/tenants/{tenant_id}/blocked-sources", api_blocked_sources)
    r.add_get("/api/v1/incidents", api_incidents)
    r.add_get("/api/v1/incidents/{incident_id}", api_incident)
    r.add_post("/api/v1/incidents/{incident_id}/acknowledge", api_acknowledge)
    r.add_post("/api/v1/incidents/{incident_id}/notes", api_annotate)
    r.add_get("/api/v1/incidents/{incident_id}/pcap/{kind}", api_pcap)
    r.add_post("/api/v1/incidents/{incident_id}/escalate", api_escalate)
    r.add_delete("/api/v1/incidents/{incident_id}/escalate", api_withdraw)
    r.add_get("/api/v1/bgp", api_bgp)
    r.add_get("/api/v1/audit", api_audit)
    r.add_get("/api/v1/notifiers", api_notifiers)
    r.add_get("/metrics", metrics_endpoint)


async def api_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def api_me(request: web.Request) -> web.Response:
    p = principal_of(request)
    return web.json_response({"name": p.name, "role": p.role, "tenant": p.tenant, "access": p.access, "via": p.via})


async def api_status(request: web.Request) -> web.Response:
    appliance = appliance_or_503(request)
    return web.json_response(scoped_status(appliance.status(), principal_of(request)), dumps=_dumps)


async def api_notifiers(request: web.Request) -> web.Response:
    """Each NOC receiver's health and backlog (admin and noc)."""
    if not principal_of(request).sees_all:
        raise ApiError(403, "the NOC receivers are visible to the admin and noc roles only")
    appliance = appliance_or_503(request)
    return web.json_response({"notifiers": appliance.status().get("notifiers") or {}}, dumps=_dumps)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text exposition, scoped to what the caller may read. A fleet's central server
    adds its ingest and maintenance counters for the admin and the NOC (without an appliance,
    those alone)."""
    principal = principal_of(request)
    central = request.app.get(fleet.FLEET_COUNTERS) if principal.sees_all else None
    if request.app[APPLIANCE] is None and central is not None:
        return web.Response(body=metrics.render(None, central), headers={"Content-Type": metrics.CONTENT_TYPE})
    appliance = appliance_or_503(request)
    body = metrics.render(scoped_status(appliance.status(), principal), central)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def api_apply(request: web.Request) -> web.Response:
    require_admin(request)
    appliance = appliance_or_503(request)
    tenant_set = await request.app[STORE].tenant_set()
    try:
        appliance.apply_tenants(tenant_set)
    except ConfigError as exc:
        raise ApiError(422, "the stored tenant set was refused", exc.problems) from None
    await audit(request, "tenants.apply", details={"tenants": len(tenant_set)})
    return web.json_response({"applied": len(tenant_set)})


async def api_tenants(request: web.Request) -> web.Response:
    p = principal_of(request)
    tenant_set = await request.app[STORE].tenant_set()
    return web.json_response({"tenants": [t.to_dict() for t in tenant_set if p.can_read(t.id)]})


async def api_tenant_create(request: web.Request) -> web.Response:
    require_admin(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object (one tenant)")
    tenant_id = str(body.get("id"))
    # The id is checked inside the change (under the lock): of concurrent creates one wins.
    done = await _tenant_change(request, lambda s: replace_tenant(s, body, must_exist=False),
                                "tenant.create", tenant_id)
    version = done.state.versions[tenant_id]
    return web.json_response({"tenant": done.state.tenants[tenant_id].to_dict(), "version": version,
                              "applied": done.applied}, status=201, headers=etag(version))


async def _tenant_change(request: web.Request, mutate: Callable[[TenantSet], TenantSet], action: str,
                         target: str) -> TenantsChanged:
    """change_tenants for the API: honours If-Match, answers 422 for an invalid set."""
    header = request.headers.get("If-Match")
    expected = parse_version_tags(header, "If-Match") if header is not None else None
    try:
        return await change_tenants(request, mutate, action, target, expected=expected)
    except ConfigError as exc:
        raise ApiError(422, "invalid tenant", exc.problems) from None


async def api_tenant(request: web.Request) -> web.Response:
    tenant, version = await visible_tenant_version(request, request.match_info["tenant_id"])
    return web.json_response({"tenant": tenant.to_dict(), "version": version}, headers=etag(version))


async def api_tenant_replace(request: web.Request) -> web.Response:
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    require_admin(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object (one tenant)")
    if body.setdefault("id", tenant.id) != tenant.id:
        raise ApiError(422, "id: cannot change a tenant's id", ["id: must match the URL"])
    done = await _tenant_change(request, lambda s: replace_tenant(s, body, must_exist=True),
                                "tenant.replace", tenant.id)
    version = done.state.versions[tenant.id]
    return web.json_response({"tenant": done.state.tenants[tenant.id].to_dict(), "version": version,
                              "applied": done.applied}, headers=etag(version))


async def api_tenant_delete(request: web.Request) -> web.Response:
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    require_admin(request)
    store = request.app[STORE]
    # Storing the set without the tenant revokes these (store._revoke_tenant_credentials): say so.
    tokens = [t.id for t in await store.tokens() if t.tenant == tenant.id and not t.revoked]
    users = [u.name for u in await store.users() if u.tenant == tenant.id and not u.disabled]
    applied = (await _tenant_change(request, lambda s: TenantSet([t for t in s if t.id != tenant.id]),
                                    "tenant.delete", tenant.id)).applied
    return web.json_response({"deleted": tenant.id, "applied": applied, "revoked_tokens": tokens,
                              "disabled_users": users})


async def api_tenant_versions(request: web.Request) -> web.Response:
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    versions = await tenant_versions_shown(request, tenant.id)
    return web.json_response({"versions": [
        {"version": v.version, "data": v.data, "created_at": v.created_at, "created_by": v.created_by,
         "action": v.action} for v in versions]})


async def api_tenant_rollback(request: web.Request) -> web.Response:
    """{"version": N}: the tenant as it was at version N, stored as a new version (admin)."""
    tenant_id = request.match_info["tenant_id"]
    if not principal_of(request).is_admin:
        await visible_tenant(request, tenant_id)   # another tenant's: 404, as if it did not exist
    require_admin(request)  # the administrator may bring back a deleted tenant, so no visible_tenant
    body = await read_json(request)
    version = body.get("version") if isinstance(body, dict) else None
    try:
        done = await rollback_tenant(request, tenant_id, version)
    except ConfigError as exc:
        raise ApiError(422, f"version {version} of tenant {tenant_id!r} is not valid today", exc.problems) from None
    tenant = done.state.tenants.get(tenant_id)
    return web.json_response({"tenant": tenant.to_dict() if tenant else None,
                              "version": done.state.versions.get(tenant_id), "applied": done.applied,
                              "changed": done.diff.get(tenant_id, {})})


async def api_policy(request: web.Request) -> web.Response:
    tenant, version = await visible_tenant_version(request, request.match_info["tenant_id"])
    return web.json_response({**policy_view(tenant), "version": version}, headers=etag(version))


async def api_policy_put(request: web.Request) -> web.Response:
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    p = principal_of(request)
    if not p.can_edit_policy(tenant.id):
        raise ApiError(403, "you may read this tenant's policy but not change it")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object with some of: " + ", ".join(POLICY_KEYS))
    done = await _tenant_change(request, policy_update(tenant.id, body, p), "policy.update", tenant.id)
    version = done.state.versions[tenant.id]
    return web.json_response({**policy_view(done.state.tenants[tenant.id]), "version": version,
                              "applied": done.applied}, headers=etag(version))


async def api_traffic(request: web.Request) -> web.Response:
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    try:
        seconds = int(request.query.get("seconds", 300))
    except ValueError:
        raise ApiError(400, "seconds: expected an integer") from None
    if not 1 <= seconds <= MAX_TRAFFIC_SPAN_S:
        raise ApiError(400, f"seconds: must be between 1 and {MAX_TRAFFIC_SPAN_S}")
    resolution = request.query.get("resolution") or ("second" if seconds <= 3600 else "minute")
    if resolution not in ("second", "minute"):
        raise ApiError(400, f"resolution: {resolution!r} is not 'second' or 'minute'")
    # A fleet's central server: the tenant's seconds summed over the sites, or one site's (?site=).
    site = request.query.get("site") or None
    if site is not None and fleet_store.site_problem(site) is not None:
        raise ApiError(400, f"site: {fleet_store.site_problem(site)}")
    now = time.time()
    rows = await request.app[STORE].traffic(tenant.id, now - seconds, now + 1, resolution, site=site)
    return web.json_response({"tenant": tenant.id, "resolution": resolution, "site": site, "series": rows})


async def api_blocked_sources(request: web.Request) -> web.Response:
    """The tenant's dynamic block list (issue 15) with the reason per source; 404 for another tenant's."""
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    entry = (appliance_or_503(request).status().get("tenants") or {}).get(tenant.id) or {}
    return web.json_response({"tenant": tenant.id, "blocked_sources": entry.get("blocked_sources", []),
                              "total": entry.get("blocked_sources_total", 0)})


async def api_incidents(request: web.Request) -> web.Response:
    incidents = await incident_list(request)
    return web.json_response({"incidents": await scoped_incidents(request, incidents)})


async def api_incident(request: web.Request) -> web.Response:
    return web.json_response(await incident_detail(request, request.match_info["incident_id"]))


async def api_acknowledge(request: web.Request) -> web.Response:
    incident, _ = await handled_incident(request, request.match_info["incident_id"], "acknowledge", form=False)
    await acknowledge(request, incident)
    return web.json_response({"acknowledged": incident.id, "by": principal_of(request).name})


async def api_annotate(request: web.Request) -> web.Response:
    incident, _ = await handled_incident(request, request.match_info["incident_id"], "annotate", form=False)
    body = await read_json(request)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "text: expected a non-empty string", ["text: expected a non-empty string"])
    if len(text) > MAX_NOTE_CHARS:
        raise ApiError(400, f"text: at most {MAX_NOTE_CHARS} characters", [f"text: at most {MAX_NOTE_CHARS} characters"])
    internal = body.get("internal", False)
    if not isinstance(internal, bool):
        raise ApiError(400, "internal: expected true or false", ["internal: expected true or false"])
    await add_note(request, incident.id, incident.tenant, text.strip(), internal=internal)
    return web.json_response({"incident": incident.id, "text": text.strip(), "internal": internal}, status=201)


async def api_pcap(request: web.Request) -> web.StreamResponse:
    incident = await visible_incident(request, request.match_info["incident_id"])
    kind = request.match_info["kind"]
    store = request.app[STORE]
    # A site's incident (central server): the file its agent uploaded (`fleet_evidence`), never a path its
    # events named; same access rules as a local one.
    site = await store.run(fleet_evidence_store.incident_site, incident.id)
    if site is not None:
        data = await store.run(fleet_evidence_store.site_pcap, incident.id, kind)
        if data is not None:
            await audit(request, "incident.pcap_download", target=incident.id, tenant=incident.tenant,
                        details={"kind": kind})
            return web.Response(body=data, headers={
                "Content-Type": "application/vnd.tcpdump.pcap",
                "Content-Disposition": f'attachment; filename="{incident.id.replace(":", "-")}-{kind}.pcap"'})
    ref = (await store.pcaps(incident.id)).get(kind)
    if ref is None:
        raise not_found(f"no {kind!r} capture for incident {incident.id!r}")
    # A file aged out (pcap_retention_days; a site's: fleet_evidence_retention_days) is a 404 that says so;
    # a local one is confined to the pcap root (see incidents.local_capture_missing).
    missing = (site_capture_missing(request, incident, kind, site) if site is not None
               else local_capture_missing(request, incident, kind, ref))
    if missing is not None:
        raise not_found(missing)
    path = pathlib.Path(ref["path"]).resolve()
    await audit(request, "incident.pcap_download", target=incident.id, tenant=incident.tenant, details={"kind": kind})
    return web.FileResponse(path, headers={
        "Content-Type": "application/vnd.tcpdump.pcap",
        "Content-Disposition": f'attachment; filename="{incident.id}-{kind}.pcap"'})


async def api_bgp(request: web.Request) -> web.Response:
    """Sessions and announcements upstream (admin, noc); a tenant's own announcements."""
    return web.json_response(scoped_bgp(bgp_of(request), principal_of(request)), dumps=_dumps)


async def api_escalate(request: web.Request) -> web.Response:
    """Announce FlowSpec ({"kind": "flowspec"}) or RTBH ({"kind": "rtbh"}) for an open incident."""
    incident, _ = await escalation_target(request, form=False)
    body = await read_json(request)
    kind = body.get("kind") if isinstance(body, dict) else None
    changes = await escalate(request, incident, kind)
    announced = any(c["action"] == "announce" for c in changes)
    return web.json_response({"incident": incident.id, "kind": kind, "changes": changes},
                             status=201 if announced else 200, dumps=_dumps)


async def api_withdraw(request: web.Request) -> web.Response:
    """Withdraw every route announced for the incident (the ladder leaves it alone after)."""
    incident, _ = await escalation_target(request, form=False)
    return web.json_response({"incident": incident.id, "changes": await withdraw(request, incident)}, dumps=_dumps)


async def api_audit(request: web.Request) -> web.Response:
    if not principal_of(request).sees_all:
        raise ApiError(403, "the audit log is for administrators and the NOC")
    page = await audit_page_of(request)
    return web.json_response({"entries": page.entries, "next_before": page.next_before, "next": page.next})


@dataclasses.dataclass(frozen=True, slots=True)
class AuditPage:
    entries: list[dict[str, Any]]
    next_before: int | None             # the cursor of the next page (None: this is the last)
    next: str | None                    # the URL of the next page
    filters: dict[str, str]


async def audit_page_of(request: web.Request) -> AuditPage:
    """One page of the audit log as the query asks (tenant, actor, action prefix, limit, before):
    the API's GET /api/v1/audit and the audit page read it the same way."""
    filters = {k: request.query.get(k, "").strip() for k in AUDIT_FILTERS}
    for key, value in filters.items():
        if len(value) > AUDIT_FILTER_MAX_CHARS:
            raise ApiError(400, f"{key}: at most {AUDIT_FILTER_MAX_CHARS} characters",
                           [f"{key}: at most {AUDIT_FILTER_MAX_CHARS} characters"])
    limit = query_int(request, "limit", AUDIT_PAGE_DEFAULT, 1, AUDIT_PAGE_MAX)
    before = query_int(request, "before", None, 1, 2**63 - 1)
    # One more than asked for tells whether another page follows.
    entries = await request.app[STORE].audit_log(tenant=filters["tenant"] or None, limit=limit + 1, before=before,
                                                 actor=filters["actor"] or None, action=filters["action"] or None)
    more = len(entries) > limit
    entries = entries[:limit]
    cursor = entries[-1]["id"] if more else None
    nxt = None
    if cursor is not None:
        query = {"limit": str(limit), "before": str(cursor)} | {k: v for k, v in filters.items() if v}
        nxt = str(request.rel_url.with_query(query))
    return AuditPage(entries, cursor, nxt, filters)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def policy_view(tenant: Tenant) -> dict[str, Any]:
    return {"tenant": tenant.id, "mode": tenant.mode, "prefixes": [str(p) for p in tenant.prefixes],
            "policy": tenant.policy.to_dict(), "allow": [a.to_dict() for a in tenant.allow],
            "deny": [d.to_dict() for d in tenant.deny], "contacts": list(tenant.contacts)}
