"""Policy templates: a named set of policy values that many tenants follow (issue 16).

    GET    /api/v1/templates                    templates (admin, noc: all; a tenant: the one it follows)
    GET    /api/v1/templates/{name}             one template and its followers
    PUT    /api/v1/templates/{name}             {"policy": {...}} create or replace (admin): every follower
                                                is rewritten, its overrides kept
    DELETE /api/v1/templates/{name}             (admin) refused while a tenant follows it
    GET    /api/v1/tenants/{id}/template        {"template", "overrides", "inherited"} of a tenant
    PUT    /api/v1/tenants/{id}/template        {"template": name | null, "overrides"?: {...}} (admin)

What a follower runs is still its own policy table in the tenant set, so the dataplane, the
config export, versions, rollback and the audit log see nothing new. The template decides the
keys the tenant leaves to it: an **override** is a key whose value differs from what the
template gives (the template's value, else the default). Editing a template therefore keeps
every override (a key set on the tenant's policy page becomes one by differing), and a key set
back to the template's value follows the template again. The same validation as a tenant's
`policy` table (tenants.policy.TenantPolicy) applies to a template's values.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from tenants import ConfigError, TenantSet
from tenants.templates import followed, name_problems, overrides_of, parse_values

from .changes import field_diff
from .context import STORE, ApiError, audit, not_found, principal_of, read_json, require_admin, visible_tenant
from .versioned import TenantsChanged, change_tenants, replace_tenant

log = structlog.get_logger(__name__)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/templates", api_templates)
    r.add_get("/api/v1/templates/{name}", api_template)
    r.add_put("/api/v1/templates/{name}", api_template_put)
    r.add_delete("/api/v1/templates/{name}", api_template_delete)
    r.add_get("/api/v1/tenants/{tenant_id}/template", api_tenant_template)
    r.add_put("/api/v1/tenants/{tenant_id}/template", api_tenant_template_put)


# -- the rules are tenants.templates' (shared with the config file) -------------------------

def rewrite_followers(tenant_set: TenantSet, followers: list[str], old: dict[str, Any] | None,
                      new: dict[str, Any]) -> TenantSet:
    """The set with each follower's policy moved from template `old` to `new`, overrides kept."""
    for tenant_id in followers:
        tenant = tenant_set.get(tenant_id)
        if tenant is None:
            continue
        keep = overrides_of(tenant.policy.to_dict(), old)
        tenant_set = replace_tenant(tenant_set, {**tenant.to_dict(), "policy": followed(new, keep)}, must_exist=True)
    return tenant_set


# -- the changes (shared by the API and the admin page) -------------------------------------

async def followers_of(request: web.Request, name: str) -> list[str]:
    present = set((await request.app[STORE].tenant_set()).ids)
    return [t for t, n in (await request.app[STORE].template_links()).items() if n == name and t in present]


async def save_template(request: web.Request, name: str, policy: Any, *,
                        must_exist: bool | None = None) -> tuple[int, TenantsChanged | None]:
    """Create or replace template `name` (admin) and rewrite its followers; (version, the tenant change).

    must_exist: True replaces only (404 when there is none: a template's own form, left open
    while another admin deleted it, does not bring it back); False creates only (409 when the
    name is taken: a new template never replaces one and rewrites its followers); None either
    (PUT /api/v1/templates/{name})."""
    require_admin(request)
    store = request.app[STORE]
    old = (await store.policy_templates()).get(name)
    if must_exist is not None and must_exist != (old is not None):
        raise _not_as_asked(name, must_exist)
    problems = name_problems(name)
    values: dict[str, Any] = {}
    try:
        values = parse_values(policy)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ApiError(422, "invalid template", problems)
    followers = await followers_of(request, name)
    done = None
    if followers and (old is None or old["policy"] != values):
        try:
            done = await change_tenants(request, lambda s: rewrite_followers(
                s, followers, old["policy"] if old else None, values), "template.apply", name)
        except ConfigError as exc:
            raise ApiError(422, "the template's followers would be invalid", exc.problems) from None
    version = await store.save_policy_template(name, values, principal_of(request).name, must_exist=must_exist)
    if version is None:   # another admin created or deleted it since the check above
        raise _not_as_asked(name, must_exist)
    diff = field_diff({"policy": old["policy"]} if old else None, {"policy": values})
    await audit(request, "template.update" if old else "template.create", target=name,
                details={"changed": diff, "version": version, "followers": followers})
    log.info("securewatch.template_saved", template=name, version=version, followers=len(followers))
    return version, done


def _not_as_asked(name: str, must_exist: bool | None) -> ApiError:
    if must_exist:
        return not_found(f"no template {name!r}")
    return ApiError(409, f"template {name!r} already exists",
                    [f"name: {name!r} is already used by a template (edit that template to change it)"])


async def delete_template(request: web.Request, name: str) -> None:
    require_admin(request)
    store = request.app[STORE]
    old = (await store.policy_templates()).get(name)
    if old is None:
        raise not_found(f"no template {name!r}")
    followers = await followers_of(request, name)
    if followers:
        raise ApiError(409, f"template {name!r} is followed by {', '.join(followers)}: make them leave it first",
                       [f"name: followed by {', '.join(followers)}"])
    await store.delete_policy_template(name)
    await audit(request, "template.delete", target=name,
                details={"changed": field_diff({"policy": old["policy"]}, None)})


async def follow(request: web.Request, tenant_id: str, name: Any, overrides: Any = None) -> TenantsChanged | None:
    """Tenant `tenant_id` follows template `name` (its policy becomes the template's values with
    `overrides` on top), or, with name None, follows none (its policy stays as it is)."""
    require_admin(request)
    tenant = await visible_tenant(request, tenant_id)
    store = request.app[STORE]
    previous = (await store.template_links()).get(tenant.id)
    if name is None:
        await store.set_template_link(tenant.id, None)
        if previous is not None:
            await audit(request, "tenant.template", target=tenant.id, tenant=tenant.id,
                        details={"changed": {"template": {"old": previous, "new": None}}})
        return None
    templates = await store.policy_templates()
    problems = [] if isinstance(name, str) and name in templates else [f"template: no template {name!r}"]
    values: dict[str, Any] = {}
    try:
        values = parse_values(overrides or {})
    except ConfigError as exc:
        problems += [p.replace("policy.", "overrides.", 1) for p in exc.problems]
    if problems:
        raise ApiError(422, "invalid template choice", problems)
    policy = followed(templates[name]["policy"], values)

    def mutate(tenant_set: TenantSet) -> TenantSet:
        current = tenant_set.get(tenant.id)
        if current is None:
            raise not_found(f"no tenant {tenant.id!r}")
        return replace_tenant(tenant_set, {**current.to_dict(), "policy": policy}, must_exist=True)
    done = await change_tenants(request, mutate, "tenant.template", tenant.id)
    await store.set_template_link(tenant.id, name)
    if previous != name:
        await audit(request, "tenant.template", target=tenant.id, tenant=tenant.id,
                    details={"changed": {"template": {"old": previous, "new": name}}})
    return done


async def tenant_template_view(request: web.Request, tenant_id: str) -> dict[str, Any]:
    tenant = await visible_tenant(request, tenant_id)
    store = request.app[STORE]
    name = (await store.template_links()).get(tenant.id)
    template = (await store.policy_templates()).get(name) if name else None
    policy = tenant.policy.to_dict()
    overrides = overrides_of(policy, template["policy"]) if template else {}
    return {"tenant": tenant.id, "template": name if template else None, "overrides": overrides,
            "inherited": sorted(k for k in policy if k not in overrides) if template else []}


async def visible_templates(request: web.Request) -> dict[str, dict[str, Any]]:
    """Templates the caller may read, each with its followers the caller may see."""
    p = principal_of(request)
    store = request.app[STORE]
    present = set((await store.tenant_set()).ids)
    links = {t: n for t, n in (await store.template_links()).items() if t in present and p.can_read(t)}
    out = {}
    for name, template in (await store.policy_templates()).items():
        followers = sorted(t for t, n in links.items() if n == name)
        if p.sees_all or followers:   # a tenant sees only the template its tenant follows
            out[name] = {**template, "name": name, "followers": followers}
    return out


# -- the API -----------------------------------------------------------------------------

async def api_templates(request: web.Request) -> web.Response:
    return web.json_response({"templates": list((await visible_templates(request)).values())})


async def api_template(request: web.Request) -> web.Response:
    template = (await visible_templates(request)).get(request.match_info["name"])
    if template is None:
        raise not_found(f"no template {request.match_info['name']!r}")
    return web.json_response({"template": template})


async def _object(request: web.Request, known: tuple[str, ...]) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object with some of: " + ", ".join(known))
    unknown = [k for k in body if k not in known]
    if unknown:
        raise ApiError(422, "unknown keys", [f"{k}: unknown key (known: {', '.join(known)})" for k in unknown])
    return body


async def api_template_put(request: web.Request) -> web.Response:
    require_admin(request)
    body = await _object(request, ("policy",))
    name = request.match_info["name"]
    version, done = await save_template(request, name, body.get("policy"))
    return web.json_response({"template": name, "version": version,
                              "followers_changed": {} if done is None else done.diff,
                              "applied": None if done is None else done.applied})


async def api_template_delete(request: web.Request) -> web.Response:
    await delete_template(request, request.match_info["name"])
    return web.json_response({"deleted": request.match_info["name"]})


async def api_tenant_template(request: web.Request) -> web.Response:
    return web.json_response(await tenant_template_view(request, request.match_info["tenant_id"]))


async def api_tenant_template_put(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant_id"]
    if not principal_of(request).is_admin:
        await visible_tenant(request, tenant_id)   # another tenant's: 404, as if it did not exist
    require_admin(request)
    body = await _object(request, ("template", "overrides"))
    if "template" not in body:
        raise ApiError(422, "template: required (a template's name, or null to follow none)",
                       ["template: required (a template's name, or null to follow none)"])
    try:
        await follow(request, tenant_id, body["template"], body.get("overrides"))
    except ConfigError as exc:
        raise ApiError(422, "invalid tenant", exc.problems) from None
    return web.json_response(await tenant_template_view(request, tenant_id))
