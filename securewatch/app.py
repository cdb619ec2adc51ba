"""The SecureWatch aiohttp application: the app factory and its background work.

    app = create_app(settings, store=store, bus=bus, appliance=appliance)

`appliance` is whatever the running appliance process offers (`context.ApplianceHooks`);
None is central-server mode: no dataplane, so status and apply answer 503.
Background work (event ingestion, traffic sampling, retention, monthly report
mail) starts and stops with the app through `cleanup_ctx`.

The routes live in their modules: `api` (REST API under /api/v1), `ui` (the web pages),
`notify_admin` (NOC receivers), `access_admin` (users and tokens), `admin_ui` (the
administration and audit pages). They import `context`
(app keys, errors, the caller) and never this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import structlog
from aiohttp import web

from policy.events import Event, EventBus, EventType
from tenants import TenantSet

from . import (
    access_admin,
    admin_ui,
    api,
    auth,
    fleet,
    fleet_evidence,
    live,
    notify_admin,
    policy_templates,
    reports_web,
    servers,
    talkers,
    ui,
)
from .auth import Principal
from .changes import tenant_set_diff
from .context import (
    APPLIANCE,
    BUS,
    CSRF_HEADER,
    LIMITER,
    LOGIN_GATE,
    NOTIFY_LOCK,
    OPTIONS,
    PRINCIPAL,
    SESSION,
    SESSION_COOKIE,
    SETTINGS,
    STORE,
    TEMPLATES,
    TENANT_LOCK,
    ApiError,
    ApplianceHooks,
    api_error,
    is_api,
)
from .series import SeriesRetention
from .settings import SecureWatchSettings
from .store import Session, Store
from .versioned import TenantConfig, VersionedConfig, sync_at_start

log = structlog.get_logger(__name__)

BUS_SUBSCRIBER = "securewatch"
TRAFFIC_POLL_S = 5.0               # seconds between reads of the appliance's per-second series
TRAFFIC_FETCH_S = 120              # seconds of series fetched per poll (covers a missed poll or two)
RETENTION_EVERY_S = 60.0           # seconds between retention passes
REPORT_CHECK_EVERY_S = 60.0        # seconds between checks for report mail due (a new month, retries)
ATTACK_EVENTS = (EventType.ATTACK_START, EventType.ATTACK_UPDATE, EventType.ATTACK_END)
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
# The versioned configurations, synced with the appliance at start in this order.
VERSIONED_CONFIGS = web.AppKey("versioned_configs", tuple)


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
    app[NOTIFY_LOCK] = asyncio.Lock()
    app[VERSIONED_CONFIGS] = (TenantConfig(), notify_admin.NotifyReceivers())
    app[OPTIONS] = {"mailer": mailer, "pcap_root": pcap_root.resolve() if pcap_root else None,
                    "secure_cookies": secure_cookies or settings.secure_cookies,
                    "trusted_proxies": settings.trusted_proxies}
    app.cleanup_ctx.append(_background)

    api.add_routes(app)
    ui.add_routes(app)
    live.add_routes(app)
    servers.add_routes(app)
    talkers.add_routes(app)
    notify_admin.add_routes(app)
    access_admin.add_routes(app)
    admin_ui.add_routes(app)
    policy_templates.add_routes(app)
    fleet.add_routes(app)
    fleet_evidence.add_routes(app)
    reports_web.add_routes(app)
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
        if exc.status < 400:
            raise
        if is_api(request):
            return api_error(exc.status, exc.reason)
        response = ui.error_page(request, exc.status, _ERROR_MESSAGES.get(exc.status, exc.reason), [])
        response.headers.update({k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")})
        return response
    except Exception:
        # A bug, not bad input: logged with its traceback; the caller learns only that it failed.
        log.exception("securewatch.request_failed", method=request.method, path=request.path)
        if is_api(request):
            return api_error(500, "internal error; the server log has the details")
        return ui.error_page(request, 500, "The server failed to answer this request; the log has the details.", [])


# Error pages for what aiohttp raises itself (an unknown address, a method a route does not take).
_ERROR_MESSAGES = {404: "There is no page at this address.", 405: "This page does not take that kind of request."}


PUBLIC_PATHS = ("/login", "/api/v1/openapi.json")


@web.middleware
async def auth_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
    principal, session = await _authenticate(request)
    request[PRINCIPAL] = principal
    request[SESSION] = session
    # A fleet site's requests carry its own token, checked by `fleet` (not a user's or an API token).
    if request.path in PUBLIC_PATHS or request.path.startswith(("/static/", fleet.SITE_PREFIX)):
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
    configs: tuple[VersionedConfig, ...] = app[VERSIONED_CONFIGS]
    for config in configs:
        await sync_at_start(app, config)
    inbox = bus.subscribe(BUS_SUBSCRIBER) if bus is not None else None
    if inbox is not None:
        background.spawn("securewatch:ingest", _ingest(store, inbox))
    if appliance is not None:
        background.spawn("securewatch:traffic", _sample_traffic(app, store, appliance))
        if isinstance(appliance, servers.DestinationHooks):
            background.spawn("securewatch:destinations", servers.sample_destinations(store, appliance))
    background.spawn("securewatch:retention", _retention(store, app[SETTINGS].retention))
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


async def ingest_event(store: Store, event: Event) -> None:
    if event.type in ATTACK_EVENTS and event.incident_id and event.tenant:
        await store.record_event(event.to_dict())
    elif event.type is EventType.ESCALATION and event.incident_id:
        await store.record_escalation(event.to_dict())


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
                    stored = await store.tenant_set()
                    if running != stored:
                        changed = await store.save_tenant_set(running, "appliance", "reload")
                        await store.audit("appliance", "tenants.reload",
                                          details={"changed": tenant_set_diff(stored, running, changed)})
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


async def _retention(store: Store, retention: SeriesRetention) -> None:
    while True:
        try:
            removed = await store.apply_retention(retention=retention)
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

