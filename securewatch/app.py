"""The SecureWatch aiohttp application: REST API under /api/v1, the web UI, background work.

    app = create_app(settings, store=store, bus=bus, appliance=appliance)

`appliance` is whatever the running appliance process offers (`ApplianceHooks`);
None is central-server mode: no dataplane, so status and apply answer 503.
Background work (event ingestion, traffic sampling, retention, monthly report
mail) starts and stops with the app through `cleanup_ctx`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import pathlib
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol, runtime_checkable

import jinja2
import structlog
from aiohttp import web

from appliance.config import SecureWatchSettings
from policy.events import Event, EventBus, EventType, Severity
from tenants import ConfigError, Tenant, TenantSet

from . import access_admin, auth, credentials, metrics, notify_admin, ui
from .auth import Principal
from .openapi import openapi_document
from .reports import build_report, parse_period
from .store import (
    INCIDENT_STATES,
    IncidentFilter,
    Session,
    Store,
    TenantSetChanged,
    TenantState,
    TenantVersion,
)

log = structlog.get_logger(__name__)

PACKAGE_DIR = pathlib.Path(__file__).parent
SESSION_COOKIE = "sw_session"
CSRF_HEADER = "X-CSRF-Token"
BUS_SUBSCRIBER = "securewatch"
TRAFFIC_POLL_S = 5.0               # seconds between reads of the appliance's per-second series
TRAFFIC_FETCH_S = 120              # seconds of series fetched per poll (covers a missed poll or two)
RETENTION_EVERY_S = 60.0           # seconds between retention passes
REPORT_CHECK_EVERY_S = 3600.0      # seconds between checks for monthly reports to mail
MAX_TRAFFIC_SPAN_S = 90 * 24 * 3600
MAX_NOTE_CHARS = 4000
AUDIT_PAGE_DEFAULT = 200           # audit entries per page when the caller names no limit
AUDIT_PAGE_MAX = 1000              # most audit entries one request returns
ATTACK_EVENTS = (EventType.ATTACK_START, EventType.ATTACK_UPDATE, EventType.ATTACK_END)
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
TENANT_SAVE_ATTEMPTS = 3           # reads of the set per change when another process saves in between


@runtime_checkable
class ApplianceHooks(Protocol):
    """What the running appliance process offers SecureWatch."""

    def status(self) -> dict[str, Any]:
        """Interfaces, attach mode, per-tenant counters and rates ({"tenants": {id: {...}}, ...})."""

    def apply_tenants(self, tenant_set: TenantSet) -> None:
        """Apply to the dataplane (within a second); tenants.ConfigError on bad input, running set kept."""

    def current_tenants(self) -> TenantSet:
        """The tenant set the dataplane runs now."""

    def traffic_series(self, tenant_id: str, seconds: int) -> list[dict[str, Any]]:
        """Per-second rows {"time", "passed_pps", "dropped_pps", "passed_bps", "dropped_bps"}, oldest first."""


STORE = web.AppKey("store", Store)
SETTINGS = web.AppKey("settings", SecureWatchSettings)
BUS = web.AppKey("bus", object)
APPLIANCE = web.AppKey("appliance", object)
LIMITER = web.AppKey("login_limiter", auth.LoginLimiter)
LOGIN_GATE = web.AppKey("login_gate", auth.VerificationGate)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
TENANT_LOCK = web.AppKey("tenant_lock", asyncio.Lock)
OPTIONS = web.AppKey("options", dict)
PRINCIPAL = web.RequestKey("principal", object)   # Principal | None
SESSION = web.RequestKey("session", object)       # Session | None


# -- errors ---------------------------------------------------------------------------

def api_error(status: int, message: str, problems: list[str] | None = None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if problems:
        body["problems"] = problems
    body.update(extra)
    return web.json_response(body, status=status)


class ApiError(Exception):
    """Raised by handlers; becomes a JSON error (API) or an error page (UI)."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems or []
        self.extra = extra          # more keys of the JSON error body (e.g. the current version)


def not_found(what: str = "not found") -> ApiError:
    return ApiError(404, what)


# -- the app --------------------------------------------------------------------------

def create_app(settings: SecureWatchSettings, *, store: Store, bus: EventBus | None = None,
               appliance: ApplianceHooks | None = None, mailer: Any | None = None,
               pcap_root: pathlib.Path | None = None, secure_cookies: bool = False,
               login_limiter: auth.LoginLimiter | None = None,
               login_gate: auth.VerificationGate | None = None) -> web.Application:
    """The SecureWatch application. The caller owns `store` (opens and closes it).

    mailer: a `securewatch.mailer.ReportMailer` to mail monthly reports to tenants' contacts.
    pcap_root: PCAP downloads are served only from files under it; None (central mode, which
        captures nothing itself): no PCAP is served, whatever path an incident names.
    secure_cookies: mark cookies Secure even over plain HTTP (or set [securewatch] secure_cookies);
        over HTTPS, direct or from a trusted proxy, they are Secure anyway.
    login_limiter, login_gate: the login throttle and the bound on concurrent password checks
        (defaults from securewatch.auth).
    """
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=4 * 1024 * 1024)
    app.on_response_prepare.append(_security_headers)
    app[STORE] = store
    app[SETTINGS] = settings
    app[BUS] = bus
    app[APPLIANCE] = appliance
    app[LIMITER] = login_limiter if login_limiter is not None else auth.LoginLimiter()
    app[LOGIN_GATE] = login_gate if login_gate is not None else auth.VerificationGate()
    app[TEMPLATES] = ui.template_environment()
    app[TENANT_LOCK] = asyncio.Lock()
    app[OPTIONS] = {"mailer": mailer, "pcap_root": pcap_root.resolve() if pcap_root else None,
                    "secure_cookies": secure_cookies or settings.secure_cookies,
                    "trusted_proxies": settings.trusted_proxies}
    app.cleanup_ctx.append(_background)

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
    r.add_get("/api/v1/tenants/{tenant_id}/policy", api_policy)
    r.add_put("/api/v1/tenants/{tenant_id}/policy", api_policy_put)
    r.add_get("/api/v1/tenants/{tenant_id}/traffic", api_traffic)
    r.add_get("/api/v1/tenants/{tenant_id}/reports/{period}", api_report)
    r.add_get("/api/v1/incidents", api_incidents)
    r.add_get("/api/v1/incidents/{incident_id}", api_incident)
    r.add_post("/api/v1/incidents/{incident_id}/acknowledge", api_acknowledge)
    r.add_post("/api/v1/incidents/{incident_id}/notes", api_annotate)
    r.add_get("/api/v1/incidents/{incident_id}/pcap/{kind}", api_pcap)
    r.add_get("/api/v1/audit", api_audit)
    r.add_get("/api/v1/notifiers", api_notifiers)
    r.add_get("/metrics", metrics_endpoint)
    ui.add_routes(app)
    notify_admin.add_routes(app)
    access_admin.add_routes(app)
    return app


# -- middlewares ----------------------------------------------------------------------

# Every response, pages, API, static files and errors alike. The pages carry no inline script
# or style (CSS and JS are files under /static), so the policy allows only this origin;
# frame-ancestors and X-Frame-Options both refuse framing (clickjacking), for old and new browsers.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/") or request.path == "/metrics"


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        if is_api(request):
            return api_error(exc.status, exc.message, exc.problems, **exc.extra)
        return ui.error_page(request, exc.status, exc.message, exc.problems)
    except web.HTTPException as exc:
        if is_api(request) and exc.status >= 400:
            return api_error(exc.status, exc.reason)
        raise


PUBLIC_PATHS = ("/login", "/api/v1/openapi.json")


@web.middleware
async def auth_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
    principal, session = await _authenticate(request)
    request[PRINCIPAL] = principal
    request[SESSION] = session
    if request.path in PUBLIC_PATHS or request.path.startswith("/static/"):
        return await handler(request)
    if principal is None:
        if is_api(request):
            raise ApiError(401, "authentication required: a bearer token or a session cookie")
        raise web.HTTPFound("/login?" + urllib.parse.urlencode({"next": request.rel_url.path}))
    # Cookies ride along with cross-site requests; a bearer token does not. Only the
    # cookie path needs a CSRF token (a header for the API, a form field for the UI).
    if (session is not None and request.method in UNSAFE_METHODS and is_api(request)
            and request.headers.get(CSRF_HEADER) != session.csrf):
        raise ApiError(403, f"missing or wrong {CSRF_HEADER} header (required with a session cookie)")
    structlog.contextvars.bind_contextvars(user=principal.name)
    try:
        return await handler(request)
    finally:
        structlog.contextvars.unbind_contextvars("user")


async def _authenticate(request: web.Request) -> tuple[Principal | None, Session | None]:
    """The caller, or None: unknown, revoked or expired tokens, disabled users and principals bound
    to a tenant that no longer exists are all refused (a re-created tenant id is a new customer)."""
    store = request.app[STORE]
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        token = await store.token_by_hash(auth.token_hash(header[7:].strip()))
        if token is None:
            return None, None
        refusal = token.refusal(time.time())
        if refusal is not None:
            log.info("securewatch.auth_refused", principal=token.principal_name, reason=refusal)
            return None, None
        return Principal(token.principal_name, token.role, token.tenant, token.access, "token"), None
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None, None
    found = await store.session_principal(auth.token_hash(cookie))
    if found is None:
        return None, None
    session, user, tenant_present = found
    refusal = "disabled" if user.disabled else None if tenant_present else "no tenant"
    if refusal is not None:
        log.info("securewatch.auth_refused", principal=user.name, reason=refusal)
        return None, None
    return Principal(user.name, user.role, user.tenant, user.access, "session"), session


def principal_of(request: web.Request) -> Principal:
    p = request[PRINCIPAL]
    assert p is not None
    return p


def _trusted_peer(request: web.Request) -> bool:
    """Whether the TCP peer is a configured reverse proxy (only then are X-Forwarded-* believed)."""
    proxies = request.app[OPTIONS]["trusted_proxies"]
    if not proxies or not request.remote:
        return False
    try:
        peer = ipaddress.ip_address(request.remote)
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return any(peer in net for net in proxies)


def _trusted(address: str, proxies: Any) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def remote_of(request: web.Request) -> str:
    """The client's address: the TCP peer, or behind trusted proxies the last address in
    X-Forwarded-For that is not one of them (earlier entries are whatever the client wrote)."""
    peer = request.remote or "unknown"
    if not _trusted_peer(request):
        return peer
    proxies = request.app[OPTIONS]["trusted_proxies"]
    hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", ()) for h in v.split(",")]
    for hop in reversed(hops):
        try:
            address = str(ipaddress.ip_address(hop))
        except ValueError:
            return peer   # garbage in the chain: the proxy did not write it; trust nothing past it
        if not _trusted(address, proxies):
            return address
    return peer


def is_https(request: web.Request) -> bool:
    """Whether the browser reached us over HTTPS: TLS here, or X-Forwarded-Proto from a trusted proxy."""
    if request.secure:
        return True
    if not _trusted_peer(request):
        return False
    protos = [p.strip().lower() for v in request.headers.getall("X-Forwarded-Proto", ()) for p in v.split(",")]
    return bool(protos) and protos[-1] == "https"


def cookie_secure(request: web.Request) -> bool:
    return bool(request.app[OPTIONS]["secure_cookies"]) or is_https(request)


async def audit(request: web.Request, action: str, *, target: str | None = None, tenant: str | None = None,
                details: dict[str, Any] | None = None) -> None:
    await request.app[STORE].audit(principal_of(request).name, action, target=target, tenant=tenant,
                                   remote=remote_of(request), details=details)


# -- shared operations (API and UI) ------------------------------------------------------

async def visible_tenant(request: web.Request, tenant_id: str) -> Tenant:
    """The tenant if the caller may read it; 404 otherwise (same as a tenant that does not exist)."""
    p = principal_of(request)
    if not p.can_read(tenant_id):
        raise not_found(f"no tenant {tenant_id!r}")
    tenant = (await request.app[STORE].tenant_set()).get(tenant_id)
    if tenant is None:
        raise not_found(f"no tenant {tenant_id!r}")
    return tenant


async def visible_incident(request: web.Request, incident_id: str):
    incident = await request.app[STORE].incident(incident_id)
    if incident is None or not principal_of(request).can_read(incident.tenant):
        raise not_found(f"no incident {incident_id!r}")
    return incident


@dataclasses.dataclass(frozen=True, slots=True)
class TenantsChanged:
    applied: bool                      # the dataplane took the new set (False: central mode)
    state: TenantState                 # the stored set after the change, with versions


# An entity tag as SecureWatch writes it ("7"), weak (W/"7"), or the bare number of the UI's form.
_VERSION_TAG = re.compile(r'\s*(?:W/)?"(\d{1,18})"\s*|\s*(\d{1,18})\s*')
ANY_VERSION = "*"


def parse_version_tags(text: str, field: str) -> tuple[int, ...] | str:
    """An If-Match value (or the UI's version field): `*` (any version) or versions, comma-separated."""
    if text.strip() == ANY_VERSION:
        return ANY_VERSION
    versions = []
    for part in text.split(","):
        m = _VERSION_TAG.fullmatch(part)
        if m is None:
            raise ApiError(400, f'{field}: {part.strip()[:40]!r} is not a version tag (like "7", or *)',
                           [f'{field}: expected a version tag from an ETag (like "7") or *'])
        versions.append(int(m.group(1) or m.group(2)))
    return tuple(versions)


def etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


async def change_tenants(request: web.Request, mutate: Callable[[TenantSet], TenantSet], action: str,
                         target: str, *, expected: tuple[int, ...] | str | None = None) -> TenantsChanged:
    """Read the set, mutate, validate, apply to the dataplane (when there is one), store a new
    version and audit it: the read, the change and the save as one step under the tenant lock,
    so no concurrent change is lost, and stored with a compare-and-set on the set's version,
    so a change saved meanwhile by another process is read and the mutation redone.

    expected: versions of `target` the caller last saw (If-Match): 409 when it is at another.
    ConfigError (422) and ApiError from `mutate` leave everything as it was.
    """
    app = request.app
    store = app[STORE]
    actor = principal_of(request).name
    async with app[TENANT_LOCK]:
        applied_unsaved = False
        try:
            for attempt in range(1, TENANT_SAVE_ATTEMPTS + 1):
                current = await store.tenant_state()
                _check_expected(current, target, expected)
                # Off the event loop: validating a set of 10,000 tenants takes tens of milliseconds.
                new_set = await asyncio.to_thread(mutate, current.tenants)
                applied = applied_unsaved = _apply(app, new_set, action, target)
                try:
                    changed, state = await store.update_tenant_set(new_set, actor, action, base=current)
                    applied_unsaved = False
                    break
                except TenantSetChanged:
                    log.info("securewatch.tenants_moved", action=action, target=target, attempt=attempt)
            else:
                raise ApiError(503, "the tenant set keeps changing under another writer; try again")
        except BaseException:
            if applied_unsaved:  # the dataplane runs a set that was not stored: back to the stored one
                with contextlib.suppress(Exception):
                    _apply(app, await store.tenant_set(), action, target)
            raise
    state = state or await store.tenant_state()
    await audit(request, action, target=target, tenant=target, details={"changed": changed, "applied": applied})
    bus: EventBus | None = app[BUS]
    if bus is not None and changed:
        bus.publish(Event(EventType.POLICY_CHANGE, target, f"{action} {target} by {actor}",
                          Severity.NOTICE, details={"changed": changed, "actor": actor}))
    log.info("securewatch.tenants_changed", action=action, target=target, changed=changed, applied=applied)
    return TenantsChanged(applied, state)


def _check_expected(state: TenantState, target: str, expected: tuple[int, ...] | str | None) -> None:
    if expected is None:
        return
    current = state.versions.get(target)
    if current is not None and (expected == ANY_VERSION or current in expected):
        return
    seen = "any version" if expected == ANY_VERSION else "version " + ", ".join(str(v) for v in expected)
    now = f"it is at version {current}" if current is not None else "it does not exist"
    raise ApiError(409, f"tenant {target!r} changed since {seen}: {now}; read it again and retry",
                   [f"If-Match: {seen} of tenant {target!r}, but {now}"], version=current)


def _apply(app: web.Application, new_set: TenantSet, action: str, target: str) -> bool:
    appliance: ApplianceHooks | None = app[APPLIANCE]
    if appliance is None:
        return False
    try:
        appliance.apply_tenants(new_set)
    except ConfigError:
        raise
    except Exception as exc:
        log.error("securewatch.apply_failed", error=str(exc), action=action, target=target)
        raise ApiError(502, f"the appliance could not apply the change: {exc}") from exc
    return True


def replace_tenant(tenant_set: TenantSet, table: dict[str, Any], *, must_exist: bool) -> TenantSet:
    """`tenant_set` with the tenant `table` describes in place of the one with its id
    (must_exist: 404 when there is none) or added in id order (not must_exist: a create,
    409 when the id is taken)."""
    tenant_id = table.get("id")
    exists = isinstance(tenant_id, str) and tenant_id in tenant_set
    if must_exist and not exists:
        raise not_found(f"no tenant {tenant_id!r}")
    if not must_exist and exists:
        raise ApiError(409, f"tenant {tenant_id!r} already exists", [f"id: {tenant_id!r} is already used"])
    try:
        # Parse the one table, then check only the set-wide rules against the others.
        new = TenantSet.from_dicts([table]).tenants[0]
    except ConfigError:
        # Report every problem at once, overlaps with the other tenants included: the slow path,
        # taken only for bad input.
        tables = tenant_set.to_dicts()
        if exists:
            tables[tenant_set.ids.index(tenant_id)] = table
        else:
            tables.append(table)
        TenantSet.from_dicts(tables)
        raise
    if exists:
        return tenant_set.replaced(new)
    tenants = list(tenant_set)
    tenants.insert(bisect.bisect(tenant_set.ids, new.id), new)
    return TenantSet(tenants)


POLICY_KEYS = ("mode", "policy", "allow", "deny", "prefixes", "contacts")


def merged_policy_table(tenant: Tenant, body: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """The tenant's table with `body` applied: top-level keys sent replace the current ones, and a
    `policy` object is merged key by key into the current policy (keys not sent keep their value;
    send a key with its default value to reset it). Unknown keys are reported together with every
    other problem of the result (ApiError 422)."""
    problems = [f"{k}: unknown key (known: {', '.join(POLICY_KEYS)})" for k in body if k not in POLICY_KEYS]
    table = tenant.to_dict()
    if not principal.is_admin:
        for key in ("prefixes", "contacts"):
            if key in body and body[key] != table.get(key, []):
                raise ApiError(403, f"{key}: only an administrator changes a tenant's {key}", [
                    f"{key}: only an administrator changes a tenant's {key}"])
    for key in POLICY_KEYS:
        if key not in body:
            continue
        if key == "policy" and isinstance(body[key], dict):
            table[key] = {**table.get(key, {}), **body[key]}
        else:
            table[key] = body[key]
    if problems:
        try:
            Tenant.from_dict(table)
        except ConfigError as exc:
            problems.extend(exc.problems)
        raise ApiError(422, "invalid policy update", problems)
    return table


def policy_view(tenant: Tenant) -> dict[str, Any]:
    return {"tenant": tenant.id, "mode": tenant.mode, "prefixes": [str(p) for p in tenant.prefixes],
            "policy": tenant.policy.to_dict(), "allow": [a.to_dict() for a in tenant.allow],
            "deny": [d.to_dict() for d in tenant.deny], "contacts": list(tenant.contacts)}


def scoped_status(status: dict[str, Any], principal: Principal) -> dict[str, Any]:
    if principal.sees_all:
        return status
    own = {tid: t for tid, t in (status.get("tenants") or {}).items() if principal.can_read(tid)}
    return {"updated": status.get("updated"), "tenants": own}


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
        limit = int(query.get("limit", 200))
    except ValueError:
        raise ApiError(400, "limit: expected an integer") from None
    if not 1 <= limit <= 10000:
        raise ApiError(400, "limit: must be between 1 and 10000")
    visible = p.visible_tenants(())
    return IncidentFilter(tenant=tenant, tenants=visible, state=state, vector=query.get("vector") or None,
                          since=parse_since(query.get("since")), limit=limit)


async def shown_actors(request: web.Request, names: list[str | None]) -> dict[str | None, str | None]:
    """How each actor name appears to the caller (see `credentials.shown_actor`)."""
    p = principal_of(request)
    scopes = {} if p.sees_all else await request.app[STORE].actor_scopes(n for n in names if n)
    return {n: credentials.shown_actor(p, n, scopes) for n in names}


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
    out["pcaps"] = {kind: {"packets": ref["packets"], "bytes": ref["bytes"],
                           "url": f"/api/v1/incidents/{incident_id}/pcap/{kind}"}
                    for kind, ref in (await store.pcaps(incident_id)).items()}
    return out


# Levels of nesting an API body may have: the deepest real one (a notify table's severity_map,
# a tenant's ACL entry) has 4; anything far deeper is an attack on the decoder.
MAX_JSON_DEPTH = 32


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; 400 for anything that is not JSON an API handler can take."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not JSON: {exc}") from None
    except RecursionError:  # the decoder recurses once per level of nesting
        raise ApiError(400, f"request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise ApiError(400, f"request body is not usable JSON: {exc}") from None
    if json_depth(body) > MAX_JSON_DEPTH:
        raise ApiError(400, f"request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
    return body


def json_depth(value: Any) -> int:
    """Levels of nesting of a decoded JSON value (a scalar is 0), walked without recursion."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in item if isinstance(child, dict | list))
    return deepest


def require_admin(request: web.Request) -> None:
    if not principal_of(request).is_admin:
        raise ApiError(403, "only an administrator may do this")


def appliance_or_503(request: web.Request) -> ApplianceHooks:
    appliance = request.app[APPLIANCE]
    if appliance is None:
        raise ApiError(503, "no appliance here: SecureWatch runs as a central server without a dataplane")
    return appliance


# -- API handlers -------------------------------------------------------------------------

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
    """Prometheus text exposition, scoped to what the caller may read."""
    appliance = appliance_or_503(request)
    body = metrics.render(scoped_status(appliance.status(), principal_of(request)))
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


async def visible_tenant_version(request: web.Request, tenant_id: str) -> tuple[Tenant, int]:
    """visible_tenant with the tenant's version, both from one read of the set."""
    if not principal_of(request).can_read(tenant_id):
        raise not_found(f"no tenant {tenant_id!r}")
    state = await request.app[STORE].tenant_state()
    tenant = state.tenants.get(tenant_id)
    if tenant is None:
        raise not_found(f"no tenant {tenant_id!r}")
    return tenant, state.versions[tenant_id]


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


async def tenant_versions_shown(request: web.Request, tenant_id: str) -> list[TenantVersion]:
    """A tenant's versions, who made each shown as the caller may see it (API and UI)."""
    versions = await request.app[STORE].tenant_versions(tenant_id)
    shown = await shown_actors(request, [v.created_by for v in versions])
    return [dataclasses.replace(v, created_by=shown[v.created_by]) for v in versions]


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


def policy_update(tenant_id: str, body: dict[str, Any], principal: Principal) -> Callable[[TenantSet], TenantSet]:
    """The mutation of a policy change (API and UI): `body` merged into the tenant as it is when
    the change runs, under the lock, so a change saved meanwhile is kept, not overwritten."""
    def mutate(tenant_set: TenantSet) -> TenantSet:
        current = tenant_set.get(tenant_id)
        if current is None:
            raise not_found(f"no tenant {tenant_id!r}")
        return replace_tenant(tenant_set, merged_policy_table(current, body, principal), must_exist=True)
    return mutate


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
    now = time.time()
    rows = await request.app[STORE].traffic(tenant.id, now - seconds, now + 1, resolution)
    return web.json_response({"tenant": tenant.id, "resolution": resolution, "series": rows})


async def api_report(request: web.Request) -> web.StreamResponse:
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    try:
        period = parse_period(request.match_info["period"])
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv", "html"):
        raise ApiError(400, f"format: {fmt!r} is not json, csv or html")
    report = await build_report(request.app[STORE], tenant.id, tenant.name, period, time.time())
    filename = f"seawall-report-{tenant.id}-{period.label}.{fmt}"
    disposition = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if fmt == "csv":
        return web.Response(text=report.to_csv(), content_type="text/csv", headers=disposition)
    if fmt == "html":
        html = ui.render_report_html(request.app, report)
        return web.Response(text=html, content_type="text/html")
    return web.json_response(report.to_dict(), headers=disposition if "download" in request.query else None)


async def api_incidents(request: web.Request) -> web.Response:
    flt = await incident_filter(request, request.query)
    incidents = await request.app[STORE].incidents(flt)
    return web.json_response({"incidents": await scoped_incidents(request, incidents)})


async def api_incident(request: web.Request) -> web.Response:
    return web.json_response(await incident_detail(request, request.match_info["incident_id"]))


async def api_acknowledge(request: web.Request) -> web.Response:
    incident = await visible_incident(request, request.match_info["incident_id"])
    if not principal_of(request).can_handle_incident(incident.tenant):
        raise ApiError(403, "you may read this incident but not acknowledge it")
    await request.app[STORE].acknowledge(incident.id, principal_of(request).name)
    await audit(request, "incident.acknowledge", target=incident.id, tenant=incident.tenant)
    return web.json_response({"acknowledged": incident.id, "by": principal_of(request).name})


async def api_annotate(request: web.Request) -> web.Response:
    incident = await visible_incident(request, request.match_info["incident_id"])
    if not principal_of(request).can_handle_incident(incident.tenant):
        raise ApiError(403, "you may read this incident but not annotate it")
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


async def add_note(request: web.Request, incident_id: str, tenant: str, text: str, *, internal: bool = False) -> None:
    """Store a note; an internal one (operator and NOC only) is never shown to the tenant."""
    if internal and not principal_of(request).sees_all:
        raise ApiError(403, "internal: only the operator and the NOC write internal notes",
                       ["internal: only the operator and the NOC write internal notes"])
    await request.app[STORE].annotate(incident_id, principal_of(request).name, text, internal=internal)
    await audit(request, "incident.annotate", target=incident_id, tenant=tenant,
                details={"chars": len(text), "internal": internal})


async def api_pcap(request: web.Request) -> web.StreamResponse:
    incident = await visible_incident(request, request.match_info["incident_id"])
    kind = request.match_info["kind"]
    ref = (await request.app[STORE].pcaps(incident.id)).get(kind)
    if ref is None:
        raise not_found(f"no {kind!r} capture for incident {incident.id!r}")
    path = pathlib.Path(ref["path"]).resolve()
    root = request.app[OPTIONS]["pcap_root"]
    # Confined always: the path comes from an event, which in central mode any appliance
    # (or anyone who can write the database) chose. No root: this server has no captures.
    if root is None or not path.is_relative_to(root):
        log.warning("securewatch.pcap_outside_root", incident=incident.id, path=str(path),
                    root=str(root) if root else None)
        raise not_found("capture file is not available")
    if not path.is_file():
        raise ApiError(410, f"capture file {path.name} is no longer on disk")
    await audit(request, "incident.pcap_download", target=incident.id, tenant=incident.tenant, details={"kind": kind})
    return web.FileResponse(path, headers={
        "Content-Type": "application/vnd.tcpdump.pcap",
        "Content-Disposition": f'attachment; filename="{incident.id}-{kind}.pcap"'})


async def api_audit(request: web.Request) -> web.Response:
    if not principal_of(request).sees_all:
        raise ApiError(403, "the audit log is for administrators and the NOC")
    tenant = request.query.get("tenant") or None
    limit = _query_int(request, "limit", AUDIT_PAGE_DEFAULT, 1, AUDIT_PAGE_MAX)
    before = _query_int(request, "before", None, 1, 2**63 - 1)
    # One more than asked for tells whether another page follows.
    entries = await request.app[STORE].audit_log(tenant=tenant, limit=limit + 1, before=before)
    more = len(entries) > limit
    entries = entries[:limit]
    cursor = entries[-1]["id"] if more else None
    nxt = None
    if cursor is not None:
        query = {"limit": str(limit), "before": str(cursor)} | ({"tenant": tenant} if tenant else {})
        nxt = str(request.rel_url.with_query(query))
    return web.json_response({"entries": entries, "next_before": cursor, "next": nxt})


def _query_int(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    text = request.query.get(name, "")
    if text == "":
        return default
    # ASCII digits only ("²" is a digit to str.isdigit) and short enough for a 64-bit integer.
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not low <= int(text) <= high:
        raise ApiError(400, f"{name}: expected a whole number from {low} to {high}",
                       [f"{name}: expected a whole number from {low} to {high}"])
    return int(text)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


# -- background work ----------------------------------------------------------------------

class Background:
    """Named tasks with strong references; a task that fails is logged, the others go on."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks[name] = task
        task.add_done_callback(self._done)

    @staticmethod
    def _done(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("securewatch.task_failed", task=task.get_name(), error=f"{type(exc).__name__}: {exc}",
                      exc_info=exc)

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()


BACKGROUND = web.AppKey("background", Background)


async def _background(app: web.Application) -> AsyncIterator[None]:
    background = Background()
    app[BACKGROUND] = background
    store, bus, appliance = app[STORE], app[BUS], app[APPLIANCE]
    if appliance is not None:
        await sync_tenants_at_start(store, appliance)
    inbox = bus.subscribe(BUS_SUBSCRIBER) if bus is not None else None
    if inbox is not None:
        background.spawn("securewatch:ingest", _ingest(store, inbox))
    if appliance is not None:
        background.spawn("securewatch:traffic", _sample_traffic(app, store, appliance))
    background.spawn("securewatch:retention", _retention(store))
    mailer = app[OPTIONS]["mailer"]
    if mailer is not None:
        background.spawn("securewatch:monthly-reports", _monthly_reports(store, mailer))
    log.info("securewatch.started", tasks=sorted(background.tasks), central=appliance is None)
    try:
        yield
    finally:
        await background.stop()
        if bus is not None:
            bus.unsubscribe(BUS_SUBSCRIBER)
        if inbox is not None:  # events published but not yet stored: keep them
            while not inbox.empty():
                with contextlib.suppress(Exception):
                    await ingest_event(store, inbox.get_nowait())
        log.info("securewatch.stopped")


async def sync_tenants_at_start(store: Store, appliance: ApplianceHooks) -> None:
    """An empty store takes the appliance's tenants; otherwise the store (edits made in the UI) wins."""
    stored = await store.tenant_set()
    running = appliance.current_tenants()
    if not len(stored):
        if len(running):
            await store.save_tenant_set(running, "appliance", "import")
            log.info("securewatch.tenants_imported", tenants=len(running))
        return
    if stored != running:
        try:
            appliance.apply_tenants(stored)
            log.info("securewatch.tenants_restored", tenants=len(stored))
        except ConfigError as exc:
            log.error("securewatch.tenants_restore_refused", problems=exc.problems)


async def ingest_event(store: Store, event: Event) -> None:
    if event.type in ATTACK_EVENTS and event.incident_id and event.tenant:
        await store.record_event(event.to_dict())


async def _ingest(store: Store, inbox: asyncio.Queue[Event]) -> None:
    while True:
        event = await inbox.get()
        try:
            await ingest_event(store, event)
        except Exception:
            # One bad event (or a database hiccup) must not stop the stream.
            log.exception("securewatch.ingest_failed", incident=event.incident_id, event_type=str(event.type))


async def _sample_traffic(app: web.Application, store: Store, appliance: ApplianceHooks) -> None:
    last_seen: dict[str, float] = {}
    last_running: TenantSet | None = None
    while True:
        try:
            running = appliance.current_tenants()
            if last_running is not None and running != last_running:
                # Changed behind our back (SIGHUP reload of the config file): record it.
                async with app[TENANT_LOCK]:
                    if running != await store.tenant_set():
                        changed = await store.save_tenant_set(running, "appliance", "reload")
                        await store.audit("appliance", "tenants.reload", details={"changed": changed})
            last_running = running
            for tenant in running:
                rows = appliance.traffic_series(tenant.id, TRAFFIC_FETCH_S)
                if tenant.id not in last_seen:
                    last_seen[tenant.id] = await store.last_traffic_time(tenant.id) or 0.0
                fresh = [r for r in rows if float(r.get("time", 0)) > last_seen[tenant.id]]
                if fresh:
                    await store.add_traffic(tenant.id, fresh)
                    last_seen[tenant.id] = max(float(r["time"]) for r in fresh)
        except Exception:
            log.exception("securewatch.traffic_sample_failed")
        await asyncio.sleep(TRAFFIC_POLL_S)  # the sampling period, not a wait for an outcome


async def _retention(store: Store) -> None:
    while True:
        try:
            removed = await store.apply_retention()
            if any(removed.values()):
                log.debug("securewatch.retention", **removed)
        except Exception:
            log.exception("securewatch.retention_failed")
        await asyncio.sleep(RETENTION_EVERY_S)


async def _monthly_reports(store: Store, mailer: Any) -> None:
    while True:
        try:
            await mailer.send_due_reports(store, time.time())
        except Exception:
            log.exception("securewatch.monthly_reports_failed")
        await asyncio.sleep(REPORT_CHECK_EVERY_S)

