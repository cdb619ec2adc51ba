"""What every SecureWatch route module works with: the app's keys, errors, the caller and its scope.

Route modules (api, ui, notify_admin, access_admin) and the app factory import this module;
it imports none of them, so no route module needs `app.py` and the imports run one way.

    principal_of(request)       the authenticated caller (the auth middleware put it there)
    remote_of(request)          the client's address (X-Forwarded-For only from trusted proxies)
    audit(request, action, ...) one audit-log row, by the caller, from that address
    visible_tenant/_incident    the object if the caller may read it, else 404 like one that does not exist
    ApiError                    raised by handlers: a JSON error for the API, an error page for the UI
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import re
from typing import Any, Protocol, runtime_checkable

import jinja2
from aiohttp import web

from tenants import Tenant, TenantSet

from . import auth, credentials
from .auth import Principal
from .settings import SecureWatchSettings
from .status_types import ApplianceStatus, TenantScopedStatus, TrafficSecond
from .store import Incident, Session, Store, TenantVersion

SESSION_COOKIE = "sw_session"
CSRF_HEADER = "X-CSRF-Token"


@runtime_checkable
class ApplianceHooks(Protocol):
    """What the running appliance process offers SecureWatch."""

    def status(self) -> ApplianceStatus:
        """Interfaces, attach mode, per-tenant counters and rates ({"tenants": {id: {...}}, ...})."""

    def apply_tenants(self, tenant_set: TenantSet) -> None:
        """Apply to the dataplane (within a second); tenants.ConfigError on bad input, running set kept."""

    def current_tenants(self) -> TenantSet:
        """The tenant set the dataplane runs now."""

    def traffic_series(self, tenant_id: str, seconds: int) -> list[TrafficSecond]:
        """Per-second rows {"time", "passed_pps", "dropped_pps", "passed_bps", "dropped_bps"}, oldest first."""

    # Upstream escalation (issue 14); an appliance without these has no [bgp] (the API answers 404).
    def bgp_status(self) -> dict[str, Any] | None:
        """The status's `bgp` (peers, announcements, speaker), None without a [bgp] section."""

    def escalate(self, incident_id: str, kind: str, actor: str) -> list[dict[str, Any]]:
        """Announce `kind` (flowspec | rtbh) for an open incident: the changes made (announce, or refuse
        with `why`). LookupError: no such open incident; escalation.routes.Refused: cannot be made."""

    def withdraw_escalation(self, incident_id: str, actor: str) -> list[dict[str, Any]]:
        """Withdraw every route of the incident; escalation.routes.Refused when none is announced."""


STORE = web.AppKey("store", Store)
SETTINGS = web.AppKey("settings", SecureWatchSettings)
BUS = web.AppKey("bus", object)
APPLIANCE = web.AppKey("appliance", object)
LIMITER = web.AppKey("login_limiter", auth.LoginLimiter)
LOGIN_GATE = web.AppKey("login_gate", auth.VerificationGate)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
OPTIONS = web.AppKey("options", dict)
TENANT_LOCK = web.AppKey("tenant_lock", asyncio.Lock)   # held by a change of the tenant set (versioned.py)
NOTIFY_LOCK = web.AppKey("notify_lock", asyncio.Lock)   # held by a change of the [notify] table
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


def is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/") or request.path == "/metrics"


# -- the caller -------------------------------------------------------------------------

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


def require_admin(request: web.Request) -> None:
    if not principal_of(request).is_admin:
        raise ApiError(403, "only an administrator may do this")


async def check_csrf(request: web.Request) -> Any:
    """The posted form of a page, after checking its CSRF token against the session's."""
    form = await request.post()
    session: Session | None = request.get(SESSION)
    if session is None or form.get("csrf_token") != session.csrf:
        raise ApiError(403, "the form expired or did not come from this site; reload the page and try again")
    return form


def appliance_or_503(request: web.Request) -> ApplianceHooks:
    appliance = request.app[APPLIANCE]
    if appliance is None:
        raise ApiError(503, "no appliance here: SecureWatch runs as a central server without a dataplane")
    return appliance


# -- what the caller may see --------------------------------------------------------------

async def visible_tenant(request: web.Request, tenant_id: str) -> Tenant:
    """The tenant if the caller may read it; 404 otherwise (same as a tenant that does not exist)."""
    p = principal_of(request)
    if not p.can_read(tenant_id):
        raise not_found(f"no tenant {tenant_id!r}")
    tenant = (await request.app[STORE].tenant_set()).get(tenant_id)
    if tenant is None:
        raise not_found(f"no tenant {tenant_id!r}")
    return tenant


async def visible_tenant_version(request: web.Request, tenant_id: str) -> tuple[Tenant, int]:
    """visible_tenant with the tenant's version, both from one read of the set."""
    if not principal_of(request).can_read(tenant_id):
        raise not_found(f"no tenant {tenant_id!r}")
    state = await request.app[STORE].tenant_state()
    tenant = state.tenants.get(tenant_id)
    if tenant is None:
        raise not_found(f"no tenant {tenant_id!r}")
    return tenant, state.versions[tenant_id]


async def visible_incident(request: web.Request, incident_id: str) -> Incident:
    incident = await request.app[STORE].incident(incident_id)
    if incident is None or not principal_of(request).can_read(incident.tenant):
        raise not_found(f"no incident {incident_id!r}")
    return incident


async def shown_actors(request: web.Request, names: list[str | None]) -> dict[str | None, str | None]:
    """How each actor name appears to the caller (see `credentials.shown_actor`)."""
    p = principal_of(request)
    scopes = {} if p.sees_all else await request.app[STORE].actor_scopes(n for n in names if n)
    return {n: credentials.shown_actor(p, n, scopes) for n in names}


def scoped_status(status: ApplianceStatus, principal: Principal) -> ApplianceStatus | TenantScopedStatus:
    if principal.sees_all:
        return status
    own = {tid: t for tid, t in (status.get("tenants") or {}).items() if principal.can_read(tid)}
    return {"updated": status.get("updated"), "tenants": own}


# -- versions (If-Match) --------------------------------------------------------------------

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


# -- request bodies ---------------------------------------------------------------------------

# Levels of nesting an API body may have: the deepest real one (a notify table's severity_map,
# a tenant's ACL entry) has 4; anything far deeper is an attack on the decoder.
MAX_JSON_DEPTH = 32


async def read_json(request: web.Request, loads: Any = json.loads) -> Any:
    """The request's JSON body; 400 for anything that is not JSON an API handler can take."""
    try:
        body = await request.json(loads=loads)
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


async def tenant_versions_shown(request: web.Request, tenant_id: str) -> list[TenantVersion]:
    """A tenant's versions, who made each shown as the caller may see it (API and UI)."""
    versions = await request.app[STORE].tenant_versions(tenant_id)
    shown = await shown_actors(request, [v.created_by for v in versions])
    return [dataclasses.replace(v, created_by=shown[v.created_by]) for v in versions]


def query_int(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """A whole-number query parameter within [low, high] (`default` when absent or empty); 400 otherwise."""
    text = request.query.get(name, "")
    if text == "":
        return default
    # ASCII digits only ("²" is a digit to str.isdigit) and short enough for a 64-bit integer: int() of
    # thousands of digits is refused by Python itself.
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not low <= int(text) <= high:
        raise ApiError(400, f"{name}: expected a whole number from {low} to {high}",
                       [f"{name}: expected a whole number from {low} to {high}"])
    return int(text)
