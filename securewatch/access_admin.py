"""Users and API tokens over the REST API (administrators only), as `seawall user|token` does it.

    GET    /api/v1/users                    the users (never a password hash)
    POST   /api/v1/users                    {"name", "password", "role", "tenant"?, "access"?}
    PATCH  /api/v1/users/{name}             {"role"?, "tenant"?, "access"?}: change its scope, end its sessions
    POST   /api/v1/users/{name}/disable     disable and end its sessions
    POST   /api/v1/users/{name}/enable      enable again (its tenant must exist)
    DELETE /api/v1/users/{name}             delete and end its sessions
    PUT    /api/v1/users/{name}/password    {"password"}: set it and end its sessions
    GET    /api/v1/tokens                   the tokens, with their state (active, revoked, expired, no tenant)
    POST   /api/v1/tokens                   {"role", "tenant"?, "access"?, "label"?, "expires"?}: the token, once
    DELETE /api/v1/tokens/{token_id}        revoke

The changes themselves (`create_user`, `change_user`, ... `revoke_token`) are shared with the
admin pages (`admin_ui`), so a form and a JSON body meet one validation. Every change is written
to the audit log, with the field-level diff where there is one. The last enabled administrator cannot be disabled
or deleted here (the CLI, on the machine, can still do it).
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from aiohttp import web

from . import auth, credentials
from .changes import field_diff
from .context import STORE, ApiError, audit, not_found, read_json, require_admin
from .store import User

log = structlog.get_logger(__name__)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/users", api_users)
    r.add_post("/api/v1/users", api_user_create)
    r.add_patch("/api/v1/users/{name}", api_user_change)
    r.add_post("/api/v1/users/{name}/disable", api_user_disable)
    r.add_post("/api/v1/users/{name}/enable", api_user_enable)
    r.add_delete("/api/v1/users/{name}", api_user_delete)
    r.add_put("/api/v1/users/{name}/password", api_user_password)
    r.add_get("/api/v1/tokens", api_tokens)
    r.add_post("/api/v1/tokens", api_token_create)
    r.add_delete("/api/v1/tokens/{token_id}", api_token_revoke)


async def _hash_password(password: Any) -> str:
    """A password from a JSON body, hashed off the event loop (argon2 takes tens of milliseconds)."""
    if not isinstance(password, str):
        raise ValueError("password: expected a string")
    return await auth.hash_password_off_loop(password)


async def _tenant_problems(request: web.Request, role: Any, tenant: Any) -> list[str]:
    if role == "tenant" and isinstance(tenant, str) and tenant \
            and tenant not in await request.app[STORE].tenant_set():
        return [f"tenant: no tenant {tenant!r}"]
    return []


def _role_fields(body: dict[str, Any]) -> tuple[Any, Any, Any, list[str]]:
    """role, tenant, access from a request body, with every problem found."""
    role, tenant, access = body.get("role"), body.get("tenant") or None, body.get("access", "read")
    problems = [f"{key}: expected a string" for key, value in (("role", role), ("tenant", tenant), ("access", access))
                if value is not None and not isinstance(value, str)]
    if role is None:
        problems.append("role: required: admin, noc or tenant")
    if problems:
        return role, tenant, access, problems
    access = credentials.effective_access(role, access)
    return role, tenant, access, auth.validate_role(role, tenant, access)


async def _body(request: web.Request, known: tuple[str, ...]) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object with some of: " + ", ".join(known))
    unknown = [k for k in body if k not in known]
    if unknown:
        raise ApiError(422, "unknown keys", [f"{k}: unknown key (known: {', '.join(known)})" for k in unknown])
    return body


async def _refuse_last_admin(request: web.Request, user: User, what: str) -> None:
    if user.role != "admin" or user.disabled:
        return
    others = [u for u in await request.app[STORE].users()
              if u.role == "admin" and not u.disabled and u.name != user.name]
    if not others:
        raise ApiError(409, f"{user.name!r} is the last enabled administrator: {what} it with the CLI "
                               f"(`seawall user ...`) if you mean it")


# -- the changes, shared by the API (JSON bodies) and the admin pages (forms) -------------

async def create_user(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    """Add a user from {"name", "password", "role", "tenant"?, "access"?}; its row. ApiError 422
    naming every problem, 409 when the name is taken."""
    require_admin(request)
    name = body.get("name")
    problems = credentials.user_name_problems(name)
    role, tenant, access, role_problems = _role_fields(body)
    problems += role_problems + await _tenant_problems(request, role, tenant)
    password_hash = None
    try:
        password_hash = await _hash_password(body.get("password"))
    except ValueError as exc:
        problems.append(str(exc))
    if problems or password_hash is None:
        raise ApiError(422, "invalid user", problems)
    store = request.app[STORE]
    try:
        await store.add_user(User(name, password_hash, role, tenant, access, time.time()))
    except ValueError as exc:
        raise ApiError(409, str(exc), [f"name: {exc}"]) from None
    row = credentials.user_row(await store.user(name))
    await audit(request, "user.add", target=name, tenant=tenant, details={
        "role": role, "access": access, "changed": field_diff(None, row)})
    return row


async def change_user(request: web.Request, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """A user's role, tenant and access from {"role"?, "tenant"?, "access"?} (keys not sent keep
    their value); ends its sessions. The audit row holds the field-level diff."""
    require_admin(request)
    user = await _user_named(request, name)
    merged = {"role": user.role, "tenant": user.tenant, "access": user.access, **body}
    if merged["role"] != "tenant" and "tenant" not in body:
        merged["tenant"] = None   # made an admin or NOC: the tenant it had no longer applies
    role, tenant, access, problems = _role_fields(merged)
    problems += await _tenant_problems(request, role, tenant)
    if problems:
        raise ApiError(422, "invalid user", problems)
    if role != "admin":
        await _refuse_last_admin(request, user, "demote")
    store = request.app[STORE]
    before = credentials.user_row(user)
    await store.set_user_scope(user.name, role, tenant, access)
    after = credentials.user_row(await store.user(user.name))
    diff = field_diff(before, after)
    if diff:
        await audit(request, "user.change", target=user.name, tenant=tenant or user.tenant,
                    details={"changed": diff})
    return after


async def set_user_enabled(request: web.Request, name: str, enabled: bool) -> None:
    require_admin(request)
    user = await _user_named(request, name)
    store = request.app[STORE]
    if enabled:
        if user.tenant is not None and user.tenant not in await store.tenant_set():
            raise ApiError(409, f"tenant: no tenant {user.tenant!r}: re-create it before enabling its users",
                           [f"tenant: no tenant {user.tenant!r}"])
    else:
        await _refuse_last_admin(request, user, "disable")
    await store.set_user_disabled(user.name, not enabled)
    await audit(request, "user.enable" if enabled else "user.disable", target=user.name, tenant=user.tenant,
                details={"changed": {"disabled": {"old": user.disabled, "new": not enabled}}})


async def remove_user(request: web.Request, name: str) -> None:
    require_admin(request)
    user = await _user_named(request, name)
    await _refuse_last_admin(request, user, "delete")
    await request.app[STORE].delete_user(user.name)
    await audit(request, "user.delete", target=user.name, tenant=user.tenant,
                details={"changed": field_diff(credentials.user_row(user), None)})


async def reset_password(request: web.Request, name: str, password: Any) -> None:
    """Set a user's password (ends its sessions); the audit row says so, never what it is."""
    require_admin(request)
    user = await _user_named(request, name)
    try:
        password_hash = await _hash_password(password)
    except ValueError as exc:
        raise ApiError(422, "invalid password", [str(exc)]) from None
    await request.app[STORE].change_password(user.name, password_hash)
    await audit(request, "user.password", target=user.name, tenant=user.tenant,
                details={"changed": {"password": {"old": "********", "new": "********"}}})


async def create_token(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    """A new token from {"role", "tenant"?, "access"?, "label"?, "expires"?}: its row and, once,
    the token itself ("token")."""
    require_admin(request)
    role, tenant, access, problems = _role_fields(body)
    problems += await _tenant_problems(request, role, tenant)
    label = body.get("label") or credentials.default_label(role, tenant)
    problems += credentials.label_problems(label)
    now = time.time()
    expires_at = None
    try:
        expires_at = credentials.parse_expires(body.get("expires"), now)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise ApiError(422, "invalid token", problems)
    token = auth.new_token()
    store = request.app[STORE]
    token_id = await store.add_token(auth.token_hash(token), label, role, tenant, access, expires_at)
    row = credentials.token_row(await store.token(token_id), now)
    await audit(request, "token.create", target=str(token_id), tenant=tenant,
                details={"role": role, "access": access, "label": label, "expires_at": expires_at,
                         "changed": field_diff(None, row)})
    return {**row, "token": token}


async def revoke_token(request: web.Request, text: str) -> int:
    require_admin(request)
    token_id = credentials.parse_token_id(text)
    if token_id is None or not await request.app[STORE].revoke_token(token_id):
        raise not_found(f"no token {text!r}")
    token = await request.app[STORE].token(token_id)
    await audit(request, "token.revoke", target=text, tenant=token.tenant,
                details={"label": token.label, "changed": {"revoked": {"old": False, "new": True}}})
    return token_id


async def _user_named(request: web.Request, name: str) -> User:
    user = await request.app[STORE].user(name)
    if user is None:
        raise not_found(f"no user {name!r}")
    return user


# -- users ------------------------------------------------------------------------------

async def api_users(request: web.Request) -> web.Response:
    require_admin(request)
    return web.json_response({"users": [credentials.user_row(u) for u in await request.app[STORE].users()]})


async def api_user_create(request: web.Request) -> web.Response:
    require_admin(request)
    body = await _body(request, ("name", "password", "role", "tenant", "access"))
    return web.json_response({"user": await create_user(request, body)}, status=201)


async def api_user_change(request: web.Request) -> web.Response:
    require_admin(request)
    body = await _body(request, ("role", "tenant", "access"))
    return web.json_response({"user": await change_user(request, request.match_info["name"], body)})


async def api_user_disable(request: web.Request) -> web.Response:
    await set_user_enabled(request, request.match_info["name"], False)
    return web.json_response({"user": request.match_info["name"], "disabled": True})


async def api_user_enable(request: web.Request) -> web.Response:
    await set_user_enabled(request, request.match_info["name"], True)
    return web.json_response({"user": request.match_info["name"], "disabled": False})


async def api_user_delete(request: web.Request) -> web.Response:
    await remove_user(request, request.match_info["name"])
    return web.json_response({"deleted": request.match_info["name"]})


async def api_user_password(request: web.Request) -> web.Response:
    require_admin(request)
    await _user_named(request, request.match_info["name"])
    body = await _body(request, ("password",))
    await reset_password(request, request.match_info["name"], body.get("password"))
    return web.json_response({"user": request.match_info["name"], "password_changed": True})


# -- tokens -----------------------------------------------------------------------------

async def api_tokens(request: web.Request) -> web.Response:
    require_admin(request)
    now = time.time()
    return web.json_response({"tokens": [credentials.token_row(t, now)
                                         for t in await request.app[STORE].tokens()]})


async def api_token_create(request: web.Request) -> web.Response:
    require_admin(request)
    body = await _body(request, ("role", "tenant", "access", "label", "expires"))
    return web.json_response(await create_token(request, body), status=201)


async def api_token_revoke(request: web.Request) -> web.Response:
    return web.json_response({"revoked": await revoke_token(request, request.match_info["token_id"])})
