"""The administration pages (admin role) and the audit log page (admin and NOC).

    /admin/tenants               tenants: create; each: rename, contacts, prefixes, delete, history, rollback
    /admin/users                 users: add, change role/tenant/access, reset password, disable/enable, delete
    /admin/tokens                API tokens with last use: create (shown once), revoke
    /admin/templates             policy templates: create (a name in use is refused), edit each in its
                                 own form (followers follow), delete; a tenant's page chooses the
                                 template it follows
    /audit                       the audit log with filters, the field-level diff and one-click rollback

The pages change nothing themselves: every form becomes the body the REST API would get and goes
through the same functions (`access_admin` for users and tokens, `versioned` for tenants), so a
form meets the API's validation, its audit rows and its rules (the last administrator stays).
A refused change re-renders the page with the problems and the values typed.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from aiohttp import web

from tenants import ConfigError, TenantSet
from tenants.model import MODES
from tenants.templates import DEFAULTS

from . import access_admin, credentials, policy_templates
from .api import audit_page_of
from .context import STORE, ApiError, check_csrf, not_found, principal_of, require_admin
from .store import ACCESS_LEVELS, ROLES
from .ui import change_outcome, render
from .versioned import TenantsChanged, change_tenants, replace_tenant, rollback_tenant

log = structlog.get_logger(__name__)

# The fields of a tenant the administration form edits; mode and policy live on the policy page.
TENANT_FORM_FIELDS = ("name", "prefixes", "contacts")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/tenants", tenants_page)
    r.add_post("/admin/tenants", tenant_create)
    r.add_get("/admin/tenants/{tenant_id}", tenant_page)
    r.add_post("/admin/tenants/{tenant_id}", tenant_update)
    r.add_post("/admin/tenants/{tenant_id}/delete", tenant_delete)
    r.add_post("/admin/tenants/{tenant_id}/rollback", tenant_rollback)
    r.add_get("/admin/users", users_page)
    r.add_post("/admin/users", user_create)
    r.add_post("/admin/users/{name}", user_change)
    r.add_get("/admin/tokens", tokens_page)
    r.add_post("/admin/tokens", token_create)
    r.add_post("/admin/tokens/{token_id}/revoke", token_revoke)
    r.add_get("/admin/templates", templates_page)
    r.add_post("/admin/templates", template_create)
    r.add_post("/admin/templates/{name}", template_update)
    r.add_post("/admin/templates/{name}/delete", template_delete)
    r.add_post("/admin/tenants/{tenant_id}/template", tenant_follow)
    r.add_get("/audit", audit_log_page)


def _lines(text: Any) -> list[str]:
    return [line.strip() for line in str(text or "").splitlines() if line.strip()]


async def _admin_form(request: web.Request) -> Any:
    require_admin(request)
    return await check_csrf(request)


# -- tenants ------------------------------------------------------------------------------

async def tenants_page(request: web.Request, *, status: int = 200, form: dict[str, str] | None = None,
                       problems: list[str] | None = None, notice: str | None = None) -> web.Response:
    require_admin(request)
    state = await request.app[STORE].tenant_state()
    return render(request, "admin/tenants.html", status=status, tenants=list(state.tenants),
                  versions=state.versions, modes=MODES, problems=problems or [], notice=notice,
                  form=form or {"id": "", "name": "", "prefixes": "", "contacts": "", "mode": "mitigate"})


async def tenant_create(request: web.Request) -> web.Response:
    posted = await _admin_form(request)
    form = {k: str(posted.get(k, "")) for k in ("id", "name", "prefixes", "contacts", "mode")}
    table: dict[str, Any] = {"id": form["id"].strip(), "prefixes": _lines(form["prefixes"]),
                             "contacts": _lines(form["contacts"]), "mode": form["mode"]}
    if form["name"].strip():
        table["name"] = form["name"].strip()
    try:
        await change_tenants(request, lambda s: replace_tenant(s, table, must_exist=False), "tenant.create",
                             table["id"])
    except ConfigError as exc:
        return await tenants_page(request, status=422, form=form, problems=exc.problems)
    except ApiError as exc:
        return await tenants_page(request, status=exc.status, form=form, problems=exc.problems or [exc.message])
    raise web.HTTPFound(f"/admin/tenants/{table['id']}?created=1")


async def tenant_page(request: web.Request, *, status: int = 200, form: dict[str, str] | None = None,
                      problems: list[str] | None = None, notice: str | None = None) -> web.Response:
    require_admin(request)
    tenant_id = request.match_info["tenant_id"]
    state = await request.app[STORE].tenant_state()
    tenant = state.tenants.get(tenant_id)
    versions = await request.app[STORE].tenant_versions(tenant_id)
    if tenant is None and not versions:
        raise not_found(f"no tenant {tenant_id!r}")
    if form is None and tenant is not None:
        form = {"name": tenant.name, "prefixes": "\n".join(str(p) for p in tenant.prefixes),
                "contacts": "\n".join(tenant.contacts)}
    if notice is None and request.query.get("created"):
        notice = f"Created tenant {tenant_id} (version {state.versions.get(tenant_id)})."
    templates = await request.app[STORE].policy_templates()
    following = await policy_templates.tenant_template_view(request, tenant_id) if tenant is not None else None
    return render(request, "admin/tenant.html", status=status, tenant_id=tenant_id, tenant=tenant,
                  version=state.versions.get(tenant_id), form=form or {}, versions=versions,
                  problems=problems or [], notice=notice, templates=sorted(templates), following=following)


async def tenant_update(request: web.Request) -> web.Response:
    """Rename, contacts and prefixes: the tenant's table with these three replaced, validated as
    PUT /api/v1/tenants/{id} validates it (against the whole set: overlaps included)."""
    posted = await _admin_form(request)
    tenant_id = request.match_info["tenant_id"]
    form = {k: str(posted.get(k, "")) for k in TENANT_FORM_FIELDS}
    edits = {"name": form["name"].strip(), "prefixes": _lines(form["prefixes"]),
             "contacts": _lines(form["contacts"])}

    def mutate(tenant_set: TenantSet) -> TenantSet:
        current = tenant_set.get(tenant_id)
        if current is None:
            raise not_found(f"no tenant {tenant_id!r}")
        return replace_tenant(tenant_set, {**current.to_dict(), **edits}, must_exist=True)
    return await _tenant_change_page(request, tenant_id, form, lambda: change_tenants(
        request, mutate, "tenant.replace", tenant_id))


async def tenant_delete(request: web.Request) -> web.Response:
    posted = await _admin_form(request)
    tenant_id = request.match_info["tenant_id"]
    if str(posted.get("confirm", "")).strip() != tenant_id:
        return await tenant_page(request, status=422, problems=[
            f"confirm: type the tenant's id ({tenant_id}) to delete it"])

    def mutate(tenant_set: TenantSet) -> TenantSet:
        if tenant_id not in tenant_set:
            raise not_found(f"no tenant {tenant_id!r}")
        return TenantSet([t for t in tenant_set if t.id != tenant_id])
    return await _tenant_change_page(request, tenant_id, None, lambda: change_tenants(
        request, mutate, "tenant.delete", tenant_id))


async def tenant_rollback(request: web.Request) -> web.Response:
    posted = await _admin_form(request)
    tenant_id = request.match_info["tenant_id"]
    text = str(posted.get("version", ""))
    version: Any = int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else text
    return await _tenant_change_page(request, tenant_id, None, lambda: rollback_tenant(request, tenant_id, version),
                                     rolled_back=version)


async def _tenant_change_page(request: web.Request, tenant_id: str, form: dict[str, str] | None, change: Any,
                              rolled_back: Any = None) -> web.Response:
    try:
        done: TenantsChanged = await change()
    except ConfigError as exc:
        return await tenant_page(request, status=422, form=form, problems=exc.problems)
    except ApiError as exc:
        if exc.status in (403, 404) and not exc.problems:
            raise
        return await tenant_page(request, status=exc.status, form=form, problems=exc.problems or [exc.message])
    notice = change_outcome(done, tenant_id)
    if rolled_back is not None and done.changed:
        notice = f"Rolled back to version {rolled_back}. {notice}"
    return await tenant_page(request, notice=notice)


# -- users ---------------------------------------------------------------------------------

async def users_page(request: web.Request, *, status: int = 200, problems: list[str] | None = None,
                     notice: str | None = None, form: dict[str, str] | None = None) -> web.Response:
    require_admin(request)
    store = request.app[STORE]
    return render(request, "admin/users.html", status=status, users=[credentials.user_row(u) for u in await store.users()],
                  tenant_ids=(await store.tenant_set()).ids, roles=ROLES, access_levels=ACCESS_LEVELS,
                  problems=problems or [], notice=notice,
                  form=form or {"name": "", "role": "tenant", "tenant": "", "access": "read"})


def _scope_body(posted: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"role": str(posted.get("role", ""))}
    if body["role"] == "tenant":
        body["tenant"] = str(posted.get("tenant", "")) or None
        body["access"] = str(posted.get("access", "read"))
    else:
        body["tenant"] = None
    return body


async def user_create(request: web.Request) -> web.Response:
    posted = await _admin_form(request)
    body = {"name": str(posted.get("name", "")).strip(), "password": str(posted.get("password", "")),
            **_scope_body(posted)}
    form = {k: str(posted.get(k, "")) for k in ("name", "role", "tenant", "access")}
    try:
        row = await access_admin.create_user(request, body)
    except ApiError as exc:
        if exc.status == 403:
            raise
        return await users_page(request, status=exc.status, problems=exc.problems or [exc.message], form=form)
    return await users_page(request, notice=f"Added user {row['name']} ({row['role']}).")


# What each button of a user's row does, through access_admin (the API's functions).
USER_ACTIONS = ("scope", "password", "disable", "enable", "delete")


async def user_change(request: web.Request) -> web.Response:
    posted = await _admin_form(request)
    name = request.match_info["name"]
    action = str(posted.get("action", ""))
    try:
        if action == "scope":
            row = await access_admin.change_user(request, name, _scope_body(posted))
            notice = f"User {name} is now {row['role']}" + (f" of {row['tenant']} ({row['access']})"
                                                             if row["tenant"] else "") + "; its sessions ended."
        elif action == "password":
            await access_admin.reset_password(request, name, str(posted.get("password", "")))
            notice = f"Password of {name} reset; its sessions ended."
        elif action in ("disable", "enable"):
            await access_admin.set_user_enabled(request, name, action == "enable")
            notice = f"User {name} {action}d."
        elif action == "delete":
            await access_admin.remove_user(request, name)
            notice = f"User {name} deleted."
        else:
            raise ApiError(400, f"action: {action!r} is not one of {', '.join(USER_ACTIONS)}")
    except ApiError as exc:
        if exc.status == 403:
            raise
        return await users_page(request, status=exc.status, problems=exc.problems or [exc.message])
    return await users_page(request, notice=notice)


# -- tokens --------------------------------------------------------------------------------

async def tokens_page(request: web.Request, *, status: int = 200, problems: list[str] | None = None,
                      notice: str | None = None, created: dict[str, Any] | None = None,
                      form: dict[str, str] | None = None) -> web.Response:
    require_admin(request)
    store = request.app[STORE]
    now = time.time()
    tokens = sorted((credentials.token_row(t, now) for t in await store.tokens()), key=lambda t: -t["id"])
    return render(request, "admin/tokens.html", status=status, tokens=tokens, created=created,
                  tenant_ids=(await store.tenant_set()).ids, roles=ROLES, access_levels=ACCESS_LEVELS,
                  problems=problems or [], notice=notice,
                  form=form or {"label": "", "role": "tenant", "tenant": "", "access": "read", "expires": ""})


async def token_create(request: web.Request) -> web.Response:
    posted = await _admin_form(request)
    body = {**_scope_body(posted), "label": str(posted.get("label", "")).strip() or None,
            "expires": str(posted.get("expires", "")).strip() or None}
    form = {k: str(posted.get(k, "")) for k in ("label", "role", "tenant", "access", "expires")}
    try:
        created = await access_admin.create_token(request, body)
    except ApiError as exc:
        if exc.status == 403:
            raise
        return await tokens_page(request, status=exc.status, problems=exc.problems or [exc.message], form=form)
    return await tokens_page(request, created=created)


async def token_revoke(request: web.Request) -> web.Response:
    await _admin_form(request)
    token_id = await access_admin.revoke_token(request, request.match_info["token_id"])
    return await tokens_page(request, notice=f"Token {token_id} revoked.")


# -- the audit log -------------------------------------------------------------------------

async def audit_log_page(request: web.Request) -> web.Response:
    """The audit log as GET /api/v1/audit pages it (admin and NOC: it names every tenant)."""
    p = principal_of(request)
    if not p.sees_all:
        raise ApiError(403, "the audit log is for administrators and the NOC")
    page = await audit_page_of(request)
    tenant_ids = (await request.app[STORE].tenant_state()).tenants.ids
    # The NOC receivers' rows keep "changed" as names and carry their diff under "diff".
    entries = [{**e, "groups": diff_groups(e["details"].get("diff") or e["details"].get("changed"))}
               for e in page.entries]
    return render(request, "audit.html", entries=entries, next=page.next, filters=page.filters,
                  tenant_ids=tenant_ids, can_rollback=p.is_admin)


def _is_field_diff(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(d, dict) and set(d) == {"old", "new"} for d in value.values())


def diff_groups(changed: Any) -> list[tuple[str | None, dict[str, Any]]] | None:
    """An audit row's "changed" as (tenant id or None, {field: {old, new}}) groups: tenant-set
    changes hold one diff per tenant, user and template changes one diff; None for older rows
    (a list of names) and rows without a diff."""
    if _is_field_diff(changed) and changed:
        return [(None, changed)]
    if isinstance(changed, dict) and changed and all(_is_field_diff(v) for v in changed.values()):
        return [(key, fields) for key, fields in changed.items()]
    return None


# -- policy templates ----------------------------------------------------------------------

POLICY_FIELDS = tuple(DEFAULTS)   # every policy key, in the policy's order


def template_values_from_form(posted: Any) -> dict[str, Any]:
    """The keys a template form sets (an empty field leaves the key to the default), as the JSON
    body would carry them: numbers as numbers, flags as true/false; anything else is passed on
    as typed for the policy validation to name."""
    values: dict[str, Any] = {}
    for key in POLICY_FIELDS:
        text = str(posted.get(key, "")).strip()
        if not text:
            continue
        default = DEFAULTS[key]
        if isinstance(default, bool):
            values[key] = {"true": True, "false": False}.get(text, text)
        elif isinstance(default, int) and text.isascii() and text.isdigit() and len(text) <= 18:
            values[key] = int(text)
        elif isinstance(default, float):
            try:
                values[key] = float(text)
            except ValueError:
                values[key] = text
        else:
            values[key] = text
    return values


async def templates_page(request: web.Request, *, status: int = 200, problems: list[str] | None = None,
                         notice: str | None = None, form: dict[str, str] | None = None,
                         edited: dict[str, dict[str, str]] | None = None) -> web.Response:
    """form: the values typed into the "New template" form; edited: those typed into a template's
    own form, by template name (both shown again when refused)."""
    require_admin(request)
    templates = await policy_templates.visible_templates(request)
    return render(request, "admin/templates.html", status=status, templates=list(templates.values()),
                  fields=POLICY_FIELDS, defaults=DEFAULTS, problems=problems or [], notice=notice,
                  form=form or {"name": ""}, edited=edited or {})


def _typed_values(posted: Any) -> dict[str, str]:
    return {k: str(posted.get(k, "")) for k in POLICY_FIELDS}


async def template_create(request: web.Request) -> web.Response:
    """The "New template" form: a name in use is refused (409), never replaced."""
    posted = await _admin_form(request)
    name = str(posted.get("name", "")).strip()
    return await _template_save(request, name, posted, must_exist=False,
                                shown_again={"form": {"name": name, **_typed_values(posted)}})


async def template_update(request: web.Request) -> web.Response:
    """A template's own form: replaces that template (404 when it is gone)."""
    posted = await _admin_form(request)
    name = request.match_info["name"]
    return await _template_save(request, name, posted, must_exist=True,
                                shown_again={"edited": {name: _typed_values(posted)}})


async def _template_save(request: web.Request, name: str, posted: Any, *, must_exist: bool,
                         shown_again: dict[str, Any]) -> web.Response:
    """shown_again: templates_page's arguments that show the typed values again when refused."""
    try:
        version, done = await policy_templates.save_template(request, name, template_values_from_form(posted),
                                                             must_exist=must_exist)
    except ApiError as exc:
        if exc.status in (403, 404):
            raise
        return await templates_page(request, status=exc.status, problems=exc.problems or [exc.message],
                                    **shown_again)
    followers = sorted(done.changed) if done is not None else []
    applied = "" if done is None else " and applied" if done.applied else " (not applied: no dataplane here)"
    return await templates_page(request, notice=f"Saved template {name} as version {version}" + (
        f"; updated {', '.join(followers)}{applied}." if followers else "; no follower changed."))


async def template_delete(request: web.Request) -> web.Response:
    await _admin_form(request)
    name = request.match_info["name"]
    try:
        await policy_templates.delete_template(request, name)
    except ApiError as exc:
        if exc.status in (403, 404):
            raise
        return await templates_page(request, status=exc.status, problems=exc.problems or [exc.message])
    return await templates_page(request, notice=f"Deleted template {name}.")


async def tenant_follow(request: web.Request) -> web.Response:
    posted = await _admin_form(request)
    tenant_id = request.match_info["tenant_id"]
    name = str(posted.get("template", "")).strip() or None
    try:
        done = await policy_templates.follow(request, tenant_id, name)
    except ConfigError as exc:
        return await tenant_page(request, status=422, problems=exc.problems)
    except ApiError as exc:
        if exc.status in (403, 404) and not exc.problems:
            raise
        return await tenant_page(request, status=exc.status, problems=exc.problems or [exc.message])
    if name is None:
        return await tenant_page(request, notice="Follows no template now; its policy values stay as they are.")
    return await tenant_page(request, notice=f"Follows template {name}. " + change_outcome(done, tenant_id))
