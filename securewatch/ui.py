"""The web UI: server-rendered jinja2 pages, one CSS file, a few lines of JS on the dashboard.

Forms post back to the same URL with a CSRF token from the session; pages never
show a tenant the principal may not read (the same scoping as the API).
"""

from __future__ import annotations

import http
import pathlib
import re
import secrets
import time
import urllib.parse
from typing import Any

import jinja2
import structlog
from aiohttp import web

from tenants import ConfigError
from tenants.model import PORT_MAX
from tenants.policy import RATE_PPS_MAX, REFLECTION_MODES, SYN_AUTH_MODES, TenantPolicy

from . import auth, bgp, formatting, talkers
from .charts import UPLOT
from .context import (
    APPLIANCE,
    LIMITER,
    LOGIN_GATE,
    PRINCIPAL,
    SESSION,
    SESSION_COOKIE,
    STORE,
    TEMPLATES,
    ApiError,
    audit,
    check_csrf,
    cookie_secure,
    parse_version_tags,
    principal_of,
    remote_of,
    tenant_versions_shown,
    visible_tenant,
    visible_tenant_version,
)
from .incidents import MAX_NOTE_CHARS, acknowledge, add_note, handled_incident, incident_detail, incident_list
from .store import Session
from .versioned import change_tenants, merged_policy_table, policy_update, replace_tenant

log = structlog.get_logger(__name__)

PACKAGE_DIR = pathlib.Path(__file__).parent

POLICY_INT_FIELDS = ("min_pps", "min_tenant_pps", "syn_rate_pps", "udp_rate_pps", "icmp_rate_pps",
                     "fragment_rate_pps")
POLICY_BOOL_FIELDS = ("auto_mitigation", "invalid_filters", "escalate_flowspec", "escalate_rtbh")
# Fields chosen from a list: the form offers exactly the values tenants.policy accepts.
POLICY_CHOICE_FIELDS = {"reflection_filter": REFLECTION_MODES, "syn_auth": SYN_AUTH_MODES}


def template_environment() -> jinja2.Environment:
    # Every page formats through securewatch.formatting (and static/format.js in the browser).
    env = formatting.template_environment(formatting.moment)
    env.globals["uplot"] = UPLOT
    return env


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/login", login_page)
    r.add_post("/login", login_submit)
    r.add_post("/logout", logout)
    r.add_get("/tenants", tenants_page)
    r.add_get("/tenants/{tenant_id}", policy_page)
    r.add_post("/tenants/{tenant_id}", policy_submit)
    r.add_get("/incidents", incidents_page)
    r.add_get("/incidents/{incident_id}", incident_page)
    r.add_post("/incidents/{incident_id}/acknowledge", incident_acknowledge)
    r.add_post("/incidents/{incident_id}/notes", incident_note)
    r.add_post("/incidents/{incident_id}/escalate", incident_escalate)
    r.add_post("/incidents/{incident_id}/withdraw", incident_withdraw)
    r.add_get("/static/{path:.+}", static_file, name="static")


STATIC_DIR = (PACKAGE_DIR / "static").resolve()


async def static_file(request: web.Request) -> web.StreamResponse:
    """A file under static/ (CSS, scripts, vendored libraries). A missing one is an ApiError, so
    that a person gets the styled 404 page (aiohttp's static route answers an empty 404)."""
    path = (STATIC_DIR / request.match_info["path"]).resolve()
    if not path.is_relative_to(STATIC_DIR) or not path.is_file():
        raise ApiError(404, "There is no file at this address.")
    return web.FileResponse(path)


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    session: Session | None = request.get(SESSION)
    text = request.app[TEMPLATES].get_template(template).render(
        principal=request.get(PRINCIPAL), csrf=session.csrf if session else "", path=request.path,
        central=request.app[APPLIANCE] is None, **context)
    return web.Response(text=text, status=status, content_type="text/html")


# What the heading of an error page says, by status; others get the reason phrase.
ERROR_TITLES = {400: "Bad request", 403: "Not allowed", 404: "Page not found", 405: "Not available this way",
                409: "Conflict", 413: "Too large", 422: "Not valid", 500: "Something went wrong",
                502: "The appliance did not answer", 503: "Not available here"}


def error_page(request: web.Request, status: int, message: str, problems: list[str]) -> web.Response:
    """Every error a person sees in the UI (a failed check, an unknown address, a crash): the site's
    layout, what went wrong and the way back, never aiohttp's bare text."""
    try:
        title = ERROR_TITLES.get(status) or http.HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return render(request, "error.html", status=status, status_code=status, title=title, message=message,
                  problems=problems)


# -- login ------------------------------------------------------------------------------

LOGIN_CSRF_COOKIE = "sw_login_csrf"   # the login form's CSRF token, before there is a session
MAX_NEXT_CHARS = 2048                 # characters of a `next` path; longer goes to the dashboard
_URLSAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _safe_next(value: str | None) -> str:
    """A path on this site to go to after login; anything else becomes "/".

    Only local paths: an open redirect would let a phishing link bounce through us. Browsers
    drop tabs and newlines from a Location and read a backslash as a slash, so `/<TAB>/host`
    and `/\\host` are other hosts to them: only printable ASCII without a backslash passes,
    and the value must stay a plain path however many times it is percent-decoded.
    """
    if not value or len(value) > MAX_NEXT_CHARS or not value.startswith("/"):
        return "/"
    if any(not 0x21 <= ord(c) <= 0x7E or c == "\\" for c in value):
        return "/"
    text = value
    for _ in range(3):   # and as a proxy or a server behind us might read it, decoded
        parts = urllib.parse.urlsplit(text)
        if (text.startswith("//") or "\\" in text or parts.scheme or parts.netloc
                or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)):
            return "/"
        decoded = urllib.parse.unquote(text)
        if decoded == text:
            break
        text = decoded
    return value


def _login_csrf_token(request: web.Request) -> tuple[str, bool]:
    """The browser's login-form token (from its cookie) and whether it is new."""
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if 16 <= len(cookie) <= 64 and set(cookie) <= _URLSAFE:
        return cookie, False
    return auth.new_csrf_token(), True


def _login_page(request: web.Request, status: int = 200, *, username: str = "", nxt: str = "/",
                error: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    token, fresh = _login_csrf_token(request)
    response = render(request, "login.html", status=status, error=error, username=username, next=nxt,
                      login_csrf=token, max_username=auth.MAX_USERNAME_CHARS)
    response.headers.update(headers or {})
    if fresh:
        # Double submit: a cross-site form can send this cookie but cannot read it to fill the field.
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="Strict", path="/login",
                            secure=cookie_secure(request))
    return response


async def login_page(request: web.Request) -> web.Response:
    return _login_page(request, nxt=_safe_next(request.query.get("next")))


async def login_submit(request: web.Request) -> web.Response:
    form = await request.post()
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    nxt = _safe_next(str(form.get("next", "/")))
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not secrets.compare_digest(str(form.get("csrf_token", "")).encode(), cookie.encode()):
        return _login_page(request, 403, nxt=nxt, error="The login form expired or did not come from this site; "
                                                        "try again.")
    # Refused before the limiter, the store or the audit log: nothing an attacker sends grows them.
    if len(username) > auth.MAX_USERNAME_CHARS or len(password) > auth.MAX_PASSWORD_CHARS:
        return _login_page(request, 400, nxt=nxt, error=f"User name: at most {auth.MAX_USERNAME_CHARS} characters; "
                                                        f"password: at most {auth.MAX_PASSWORD_CHARS}.")
    remote = remote_of(request)
    store = request.app[STORE]
    limiter = request.app[LIMITER]
    gate = request.app[LOGIN_GATE]
    # Counted as a failure now, before any await, so concurrent attempts see each other.
    throttled = limiter.attempt(username, remote)
    if throttled is not None:
        await _audit_throttled(store, username, remote, throttled)
        wait = int(throttled.retry_after_s) + 1
        return _login_page(request, 429, username=username, nxt=nxt, headers={"Retry-After": str(wait)},
                           error=f"Too many failed attempts. Try again in {wait} seconds.")
    if gate.full:
        limiter.refund(username, remote)
        return _login_page(request, 503, username=username, nxt=nxt, headers={"Retry-After": "1"},
                           error="Too many logins at once. Try again in a moment.")
    async with gate.slot():
        user = await store.user(username) if username else None
        ok = await auth.verify_password_off_loop(user.password_hash if user else None, password)
        ok = ok and user is not None and not user.disabled
        if ok and auth.needs_rehash(user.password_hash):
            await store.set_password_hash(user.name, await auth.hash_password_off_loop(password))
    if not ok:
        await store.audit(username or "?", "login.failed", remote=remote)
        return _login_page(request, 401, username=username, nxt=nxt, error="Wrong user name or password.")
    if user.tenant is not None and (await store.tenant_set()).get(user.tenant) is None:
        # The right password, but every request of this session would be refused (its tenant is
        # gone or not yet in SecureWatch): say so instead of looping back to this page.
        limiter.succeeded(username, remote)
        await store.audit(user.name, "login.refused", tenant=user.tenant, remote=remote,
                          details={"reason": "no tenant"})
        return _login_page(request, 401, username=username, nxt=nxt,
                           error="This account's tenant does not exist in SecureWatch; ask the operator.")
    limiter.succeeded(username, remote)
    session_id = auth.new_session_id()
    now = time.time()
    await store.create_session(Session(auth.token_hash(session_id), user.name, auth.new_csrf_token(), now,
                                       now + auth.SESSION_LIFETIME_S), remote)
    await store.audit(user.name, "login", remote=remote)
    response = web.HTTPFound(nxt)
    response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="Strict", path="/",
                        max_age=auth.SESSION_LIFETIME_S, secure=cookie_secure(request))
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/login")
    raise response


async def _audit_throttled(store: Any, username: str, remote: str, throttled: auth.Throttled) -> None:
    """One `login.throttled` row per limit key and window, counting the attempts refused."""
    source = auth.source_key(remote)
    actor, where = {"pair": (username or "?", source), "source": ("*", source),
                    "user": (username or "?", "*")}[throttled.limit]
    count = await store.audit_count(actor, "login.throttled", target=f"limit:{throttled.limit}", remote=where,
                                    since=time.time() - auth.LOGIN_WINDOW_S)
    if count == 1:   # once per key and window, like the audit row: a flood must not flood the log
        log.warning("securewatch.login_throttled", limit=throttled.limit, user=actor, source=where,
                    retry_after_s=round(throttled.retry_after_s))


async def logout(request: web.Request) -> web.Response:
    await check_csrf(request)
    session: Session | None = request.get(SESSION)
    if session is not None:
        await request.app[STORE].delete_session(session.id_hash)
        await audit(request, "logout")
    response = web.HTTPFound("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


# -- pages ------------------------------------------------------------------------------

async def _visible_tenants(request: web.Request) -> list[Any]:
    p = principal_of(request)
    return [t for t in await request.app[STORE].tenant_set() if p.can_read(t.id)]


async def tenants_page(request: web.Request) -> web.Response:
    return render(request, "tenants.html", tenants=await _visible_tenants(request))


def _acl_lines(entries: Any) -> str:
    return "\n".join(str(e) for e in entries)


def _form_from_tenant(tenant: Any) -> dict[str, Any]:
    pol = tenant.policy
    return {"prefixes": "\n".join(str(p) for p in tenant.prefixes), "mode": tenant.mode,
            "allow": _acl_lines(tenant.allow), "deny": _acl_lines(tenant.deny),
            **{k: getattr(pol, k) for k in ("sensitivity", *POLICY_CHOICE_FIELDS, *POLICY_INT_FIELDS,
                                            *POLICY_BOOL_FIELDS)}}


async def policy_page(request: web.Request) -> web.Response:
    tenant, version = await visible_tenant_version(request, request.match_info["tenant_id"])
    versions = await tenant_versions_shown(request, tenant.id)
    following = (await request.app[STORE].template_links()).get(tenant.id)
    return _policy_render(request, tenant, {**_form_from_tenant(tenant), "version": version}, {}, [],
                          versions[:10], saved=None, following=following)


def _policy_render(request: web.Request, tenant: Any, form: dict[str, Any], errors: dict[str, list[str]],
                   general: list[str], versions: list[Any], saved: str | None, status: int = 200,
                   conflict: str | None = None, following: str | None = None) -> web.Response:
    """form["version"]: the version the form was filled from, sent back to detect a concurrent save.
    following: the policy template the tenant follows (securewatch.policy_templates), if any."""
    p = principal_of(request)
    appliance = request.app[APPLIANCE]
    # The dynamic block list (issue 15) of a tenant this appliance protects (none on a central server).
    blocked = ((appliance.status().get("tenants") or {}).get(tenant.id) or {}) if appliance is not None else {}
    return render(request, "policy.html", status=status, tenant=tenant, form=form, errors=errors, general=general,
                  blocked=blocked.get("blocked_sources", []), blocked_total=blocked.get("blocked_sources_total", 0),
                  versions=versions, saved=saved, editable=p.can_edit_policy(tenant.id), admin=p.is_admin,
                  reflection_modes=REFLECTION_MODES, syn_auth_modes=SYN_AUTH_MODES, int_fields=POLICY_INT_FIELDS, bool_fields=POLICY_BOOL_FIELDS,
                  defaults=TenantPolicy(), conflict=conflict, following=following)


_ACL_TOKEN = re.compile(r"(\w+)=(\S+)")


def parse_acl_lines(text: str, list_name: str, errors: dict[str, list[str]]) -> list[dict[str, Any]]:
    """'src=198.51.100.0/24 proto=tcp dport=443', one entry per line, into ACL tables."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line == "any":
            out.append({})
            continue
        tokens = line.split()
        entry: dict[str, Any] = {}
        for token in tokens:
            m = _ACL_TOKEN.fullmatch(token)
            if not m:
                errors.setdefault(list_name, []).append(
                    f"line {number}: {token!r} is not key=value (keys: src, proto, sport, dport)")
                continue
            key, value = m.groups()
            if key in entry:   # an entry holds one value per key; keeping the last would drop the others unseen
                errors.setdefault(list_name, []).append(
                    f"line {number}: {key} given twice ({entry[key]} and {value}); write one entry per line")
                continue
            # ASCII digits only ('²'.isdigit() is true, but int() refuses it); a long number stays a
            # string for the tenants package to refuse by name, as int() refuses thousands of digits.
            entry[key] = (int(value) if key in ("sport", "dport") and value.isascii() and value.isdigit()
                          and len(value) <= len(str(PORT_MAX)) else value)
        out.append(entry)
    return out


def _field_of(problem: str) -> str:
    """Which form field a tenants-package problem message is about."""
    m = re.search(r"policy\.(\w+)", problem)
    if m:
        return m.group(1)
    for key in ("prefixes", "allow", "deny", "mode", "contacts"):
        if re.search(rf"(^|: ){key}(\[\d+\])?:", problem):
            return key
    return "_general"


def _sort_problems(problems: list[str], errors: dict[str, list[str]], general: list[str]) -> None:
    """Tenants-package problems onto the form's fields (or the general list when about no field)."""
    for problem in problems:
        field = _field_of(problem)
        short = problem.split(": ", 1)[1] if problem.startswith("tenant ") and ": " in problem else problem
        if field == "_general":
            general.append(problem)
        elif short not in errors.get(field, []):
            errors.setdefault(field, []).append(short)


# Digits a whole-number field may have: more cannot be a valid rate (RATE_PPS_MAX has 10), and
# int() of thousands of digits is refused by Python itself.
_INT_FIELD_MAX_DIGITS = len(str(RATE_PPS_MAX))


def parse_policy_form(values: dict[str, Any], errors: dict[str, list[str]]) -> dict[str, Any]:
    """The policy fields of the form as a `policy` table; a field that is not a number gets an
    error and is left out, so that the rest is still validated and every problem shown at once."""
    policy: dict[str, Any] = {k: values[k] for k in POLICY_CHOICE_FIELDS}
    try:
        policy["sensitivity"] = float(values["sensitivity"])
    except ValueError:
        errors.setdefault("sensitivity", []).append("expected a number between 0.1 and 10")
    for k in POLICY_INT_FIELDS:
        text = values[k].strip()
        # isdigit() alone accepts '²' and other digits int() refuses: ASCII digits only.
        if not (text.isascii() and text.isdigit()):
            errors.setdefault(k, []).append("expected a whole number, 0 or more")
        elif len(text.lstrip("0")) > _INT_FIELD_MAX_DIGITS:
            errors.setdefault(k, []).append(f"must be at most {RATE_PPS_MAX}")
        else:
            policy[k] = int(text)
    for k in POLICY_BOOL_FIELDS:
        policy[k] = values[k]
    return policy


async def policy_submit(request: web.Request) -> web.Response:
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    form = await check_csrf(request)
    p = principal_of(request)
    if not p.can_edit_policy(tenant.id):
        raise ApiError(403, "you may read this tenant's policy but not change it")
    errors: dict[str, list[str]] = {}
    values: dict[str, Any] = {k: str(form.get(k, "")) for k in ("prefixes", "mode", "allow", "deny",
                                                                 "sensitivity", *POLICY_CHOICE_FIELDS,
                                                                 *POLICY_INT_FIELDS)}
    for k in POLICY_BOOL_FIELDS:
        values[k] = form.get(k) == "on"
    values["version"] = str(form.get("version", "")).strip()
    expected = parse_version_tags(values["version"], "version") if values["version"] else None
    policy = parse_policy_form(values, errors)
    body: dict[str, Any] = {"mode": values["mode"], "policy": policy,
                            "allow": parse_acl_lines(values["allow"], "allow", errors),
                            "deny": parse_acl_lines(values["deny"], "deny", errors)}
    if p.is_admin:
        body["prefixes"] = [line.strip() for line in values["prefixes"].splitlines() if line.strip()]
    else:
        values["prefixes"] = "\n".join(str(x) for x in tenant.prefixes)
    versions = await tenant_versions_shown(request, tenant.id)
    general: list[str] = []
    if errors:
        # The fields that parsed are still checked, against the whole set (overlaps, capacity),
        # so that one submission shows every problem.
        table = merged_policy_table(tenant, body, p)
        try:
            replace_tenant(await request.app[STORE].tenant_set(), table, must_exist=True)
        except ConfigError as exc:
            _sort_problems(exc.problems, errors, general)
        return _policy_render(request, tenant, values, errors, general, versions[:10], saved=None, status=422)
    try:
        done = await change_tenants(request, policy_update(tenant.id, body, p), "policy.update", tenant.id,
                                       expected=expected)
    except ApiError as exc:
        if exc.status != 409:
            raise
        now = exc.extra.get("version")
        conflict = exc.message if now is None else (
            f"This tenant was changed by someone else (version {values['version']} is now version {now}) while "
            f"you edited it. Your changes were not saved. The form shows what you entered: reload the page to "
            f"see the saved values, or save again to replace them with yours.")
        return _policy_render(request, tenant, {**values, "version": now if now is not None else ""}, {}, [],
                              versions[:10], saved=None, status=409, conflict=conflict)
    except ConfigError as exc:
        _sort_problems(exc.problems, errors, general)
        return _policy_render(request, tenant, values, errors, general, versions[:10], saved=None, status=422)
    updated = done.state.tenants[tenant.id]
    versions = await tenant_versions_shown(request, tenant.id)
    following = (await request.app[STORE].template_links()).get(tenant.id)
    return _policy_render(request, updated, {**_form_from_tenant(updated), "version": done.state.versions[tenant.id]},
                          {}, [], versions[:10], saved=change_outcome(done, tenant.id), following=following)


def change_outcome(done: Any, tenant_id: str) -> str:
    """What a save of the tenant set really did, in words: stored or not, applied or not."""
    version = done.state.versions.get(tenant_id)
    if not done.changed:
        return f"Nothing to save: this is what version {version} already holds."
    if tenant_id not in done.state.versions:
        saved = f"Deleted tenant {tenant_id}"
    else:
        saved = f"Saved as version {version}"
    if done.applied:
        return f"{saved} and applied to the dataplane."
    return (f"{saved}. Not applied: this server has no dataplane (central server mode); "
            f"the change is stored here only.")


async def incidents_page(request: web.Request) -> web.Response:
    incidents = await incident_list(request)
    tenants = await _visible_tenants(request)
    return render(request, "incidents.html", incidents=incidents, tenants=tenants, query=request.query)


async def incident_page(request: web.Request) -> web.Response:
    detail = await incident_detail(request, request.match_info["incident_id"])
    can_handle = principal_of(request).can_handle_incident(detail["tenant"])
    rules = [{**r, "text": talkers.rule_text(r), "action_text": talkers.action_text(r)}
             for r in detail["details"].get("rules", [])]
    anatomy = await talkers.anatomy_of(request, detail["id"])
    return render(request, "incident.html", inc=detail, rules=rules, anatomy=anatomy, can_handle=can_handle,
                  announcements=bgp.incident_announcements(request, detail["id"]), sessions=bgp.bgp_sessions(request))


async def incident_escalate(request: web.Request) -> web.Response:
    """The incident page's announce buttons (admin, noc): FlowSpec or RTBH upstream."""
    incident, form = await bgp.escalation_target(request, form=True)
    await bgp.escalate(request, incident, form.get("kind"))
    raise web.HTTPFound(f"/incidents/{incident.id}")


async def incident_withdraw(request: web.Request) -> web.Response:
    incident, _ = await bgp.escalation_target(request, form=True)
    await bgp.withdraw(request, incident)
    raise web.HTTPFound(f"/incidents/{incident.id}")


async def incident_acknowledge(request: web.Request) -> web.Response:
    incident, _ = await handled_incident(request, request.match_info["incident_id"], "acknowledge", form=True)
    await acknowledge(request, incident)
    raise web.HTTPFound(f"/incidents/{incident.id}")


async def incident_note(request: web.Request) -> web.Response:
    incident, form = await handled_incident(request, request.match_info["incident_id"], "annotate", form=True)
    text = str(form.get("text", "")).strip()
    if not text or len(text) > MAX_NOTE_CHARS:
        raise ApiError(400, f"a note needs 1 to {MAX_NOTE_CHARS} characters")
    await add_note(request, incident.id, incident.tenant, text, internal=form.get("internal") == "on")
    raise web.HTTPFound(f"/incidents/{incident.id}")


