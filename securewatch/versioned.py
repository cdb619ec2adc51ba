"""One workflow for every versioned configuration SecureWatch edits: the tenant set and the NOC
receivers (`notify_admin`), from the API and from the UI alike.

    change_config(request, config, change, action=..., target=...)
        under the configuration's lock: read what is stored -> check If-Match -> validate the
        change (every problem at once, nothing touched yet) -> apply it to the appliance (when
        there is one) -> store it as a new version (compare-and-set where the store offers it:
        another process saving in between makes the change start again from its result)
        then, outside the lock: audit -> publish POLICY_CHANGE -> log
    sync_at_start(app, config)
        an empty store takes what the appliance runs; otherwise the store (edits made here) wins

A configuration says how to do each step by subclassing `VersionedConfig`; `TenantConfig` is the
tenant set's. A change applied but then not stored puts the stored configuration back, so the
appliance never runs what the store does not hold.
"""

from __future__ import annotations

import abc
import asyncio
import bisect
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from policy.events import Event, EventBus, EventType, Severity
from tenants import ConfigError, Tenant, TenantSet
from tenants.policy import merge_policy

from .auth import Principal
from .changes import tenant_set_diff
from .context import (
    ANY_VERSION,
    APPLIANCE,
    BUS,
    STORE,
    TENANT_LOCK,
    ApiError,
    ApplianceHooks,
    audit,
    not_found,
    principal_of,
    require_admin,
)
from .store import TenantSetChanged, TenantState

log = structlog.get_logger(__name__)

SAVE_ATTEMPTS = 3           # reads of the configuration per change when another process saves in between


class VersionedConfig(abc.ABC):
    """How one configuration goes through `change_config` and `sync_at_start`."""

    name: str                                   # in log events: securewatch.<name>_changed, ..._imported
    noun: str                                   # in messages: "the <noun> keeps changing"
    lock: web.AppKey[asyncio.Lock]              # serialises this configuration's changes in this process
    moved: tuple[type[Exception], ...] = ()     # raised by `save` when another writer saved first: redo
    refused: tuple[type[Exception], ...] = (ValueError,)   # the appliance refusing a configuration

    # -- a change -----------------------------------------------------------------------

    @abc.abstractmethod
    async def read(self, app: web.Application) -> Any:
        """What is stored now, with its versions: what a change starts from."""

    def check_expected(self, current: Any, target: str, expected: Any) -> None:
        """ApiError 409 when `target` is no longer at a version the caller saw (If-Match).
        A configuration saved whole, without per-target versions, takes no `expected`."""
        if expected is not None:
            raise TypeError(f"the {self.noun} has no versions to check If-Match against")

    @abc.abstractmethod
    async def validate(self, app: web.Application, current: Any, change: Any) -> Any:
        """The new configuration; ApiError or ConfigError naming every problem, nothing changed."""

    @abc.abstractmethod
    async def apply(self, app: web.Application, proposed: Any, action: str, target: str) -> bool:
        """Run it on the appliance; False when there is none here. ApiError when refused."""

    @abc.abstractmethod
    async def restore(self, app: web.Application, action: str, target: str) -> None:
        """Run the stored configuration again (a change was applied, then not stored)."""

    @abc.abstractmethod
    async def save(self, app: web.Application, proposed: Any, current: Any, actor: str, action: str,
                   applied: bool) -> Any:
        """Store it as a new version; returns the outcome the last steps describe and the caller gets."""

    @abc.abstractmethod
    def audit_entry(self, outcome: Any, target: str) -> tuple[str | None, dict[str, Any]]:
        """(tenant, details) of the audit-log row."""

    @abc.abstractmethod
    def event(self, outcome: Any, actor: str, action: str, target: str) -> Event | None:
        """What to publish on the bus (None: nothing changed)."""

    @abc.abstractmethod
    def log_fields(self, outcome: Any, action: str, target: str) -> dict[str, Any]:
        """Fields of the securewatch.<name>_changed event."""

    # -- at start ----------------------------------------------------------------------------

    @abc.abstractmethod
    def running(self, app: web.Application) -> Any | None:
        """What the appliance runs now; None when nothing here runs this configuration."""

    @abc.abstractmethod
    async def stored(self, app: web.Application) -> tuple[Any, int | None] | None:
        """(configuration, version) as stored; None when nothing is stored yet."""

    @abc.abstractmethod
    async def import_running(self, app: web.Application, running: Any) -> None:
        """Store what the appliance runs as the first version."""

    @abc.abstractmethod
    async def run_stored(self, app: web.Application, stored: Any) -> None:
        """Run the stored configuration on the appliance (raises one of `refused`)."""

    @abc.abstractmethod
    def sync_fields(self, value: Any, version: int | None, error: Exception | None) -> dict[str, Any]:
        """Fields of the securewatch.<name>_imported/_restored/_restore_refused events."""


async def change_config(request: web.Request, config: VersionedConfig, change: Any, *, action: str,
                        target: str, expected: Any = None) -> Any:
    """Validate, apply, store, audit and publish one change of `config` (see the module's docstring).

    expected: versions of `target` the caller last saw (If-Match), checked against each read.
    An error from any step before the save leaves everything as it was.
    """
    app = request.app
    actor = principal_of(request).name
    async with app[config.lock]:
        applied_unsaved = False
        try:
            for attempt in range(1, SAVE_ATTEMPTS + 1):
                current = await config.read(app)
                config.check_expected(current, target, expected)
                proposed = await config.validate(app, current, change)
                applied = applied_unsaved = await config.apply(app, proposed, action, target)
                try:
                    outcome = await config.save(app, proposed, current, actor, action, applied)
                    applied_unsaved = False
                    break
                except config.moved:
                    log.info(f"securewatch.{config.name}_moved", action=action, target=target, attempt=attempt)
            else:
                raise ApiError(503, f"the {config.noun} keeps changing under another writer; try again")
        except BaseException:
            if applied_unsaved:  # the appliance runs what was not stored: back to what is
                with contextlib.suppress(Exception):
                    await config.restore(app, action, target)
            raise
    tenant, details = config.audit_entry(outcome, target)
    await audit(request, action, target=target, tenant=tenant, details=details)
    bus: EventBus | None = app[BUS]
    event = config.event(outcome, actor, action, target)
    if bus is not None and event is not None:
        bus.publish(event)
    log.info(f"securewatch.{config.name}_changed", **config.log_fields(outcome, action, target))
    return outcome


async def sync_at_start(app: web.Application, config: VersionedConfig) -> None:
    """An empty store takes the appliance's configuration; otherwise the store (edits made here) wins."""
    running = config.running(app)
    if running is None:
        return
    stored = await config.stored(app)
    if stored is None:
        if running:
            await config.import_running(app, running)
            log.info(f"securewatch.{config.name}_imported", **config.sync_fields(running, None, None))
        return
    value, version = stored
    if value != running:
        try:
            await config.run_stored(app, value)
            log.info(f"securewatch.{config.name}_restored", **config.sync_fields(value, version, None))
        except config.refused as exc:
            log.error(f"securewatch.{config.name}_restore_refused", **config.sync_fields(value, version, exc))


# -- the tenant set -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class TenantsChanged:
    applied: bool                      # the dataplane took the new set (False: central mode)
    state: TenantState                 # the stored set after the change, with versions
    changed: tuple[str, ...] = ()      # ids of the tenants that got a new version
    diff: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)   # changes.tenant_set_diff


class TenantConfig(VersionedConfig):
    """The tenant set: a compare-and-set save on the set's version, If-Match per tenant."""

    name = "tenants"
    noun = "tenant set"
    lock = TENANT_LOCK
    moved = (TenantSetChanged,)
    refused = (ConfigError,)

    async def read(self, app: web.Application) -> TenantState:
        return await app[STORE].tenant_state()

    def check_expected(self, current: TenantState, target: str, expected: tuple[int, ...] | str | None) -> None:
        if expected is None:
            return
        now_at = current.versions.get(target)
        if now_at is not None and (expected == ANY_VERSION or now_at in expected):
            return
        seen = "any version" if expected == ANY_VERSION else "version " + ", ".join(str(v) for v in expected)
        now = f"it is at version {now_at}" if now_at is not None else "it does not exist"
        raise ApiError(409, f"tenant {target!r} changed since {seen}: {now}; read it again and retry",
                       [f"If-Match: {seen} of tenant {target!r}, but {now}"], version=now_at)

    async def validate(self, app: web.Application, current: TenantState,
                       change: Callable[[TenantSet], TenantSet]) -> TenantSet:
        # Off the event loop: validating a set of 10,000 tenants takes tens of milliseconds.
        return await asyncio.to_thread(change, current.tenants)

    async def apply(self, app: web.Application, proposed: TenantSet, action: str, target: str) -> bool:
        appliance: ApplianceHooks | None = app[APPLIANCE]
        if appliance is None:
            return False
        try:
            appliance.apply_tenants(proposed)
        except ConfigError:
            raise
        except Exception as exc:
            log.error("securewatch.apply_failed", error=str(exc), action=action, target=target)
            raise ApiError(502, f"the appliance could not apply the change: {exc}") from exc
        return True

    async def restore(self, app: web.Application, action: str, target: str) -> None:
        await self.apply(app, await app[STORE].tenant_set(), action, target)

    async def save(self, app: web.Application, proposed: TenantSet, current: TenantState, actor: str,
                   action: str, applied: bool) -> TenantsChanged:
        store = app[STORE]
        changed, state = await store.update_tenant_set(proposed, actor, action, base=current)
        return TenantsChanged(applied, state or await store.tenant_state(), tuple(changed),
                              tenant_set_diff(current.tenants, proposed, changed))

    def audit_entry(self, outcome: TenantsChanged, target: str) -> tuple[str | None, dict[str, Any]]:
        # Per tenant, every field that changed with its old and new value, and the version it is at
        # now (the audit page offers a rollback to the one before).
        versions = {tid: outcome.state.versions[tid] for tid in outcome.changed if tid in outcome.state.versions}
        return target, {"changed": outcome.diff, "applied": outcome.applied, "versions": versions}

    def event(self, outcome: TenantsChanged, actor: str, action: str, target: str) -> Event | None:
        if not outcome.changed:
            return None
        return Event(EventType.POLICY_CHANGE, target, f"{action} {target} by {actor}", Severity.NOTICE,
                     details={"changed": list(outcome.changed), "actor": actor})

    def log_fields(self, outcome: TenantsChanged, action: str, target: str) -> dict[str, Any]:
        return {"action": action, "target": target, "changed": list(outcome.changed), "applied": outcome.applied}

    def running(self, app: web.Application) -> TenantSet | None:
        appliance: ApplianceHooks | None = app[APPLIANCE]
        return appliance.current_tenants() if appliance is not None else None

    async def stored(self, app: web.Application) -> tuple[TenantSet, int | None] | None:
        stored = await app[STORE].tenant_set()
        return (stored, None) if len(stored) else None

    async def import_running(self, app: web.Application, running: TenantSet) -> None:
        store = app[STORE]
        await store.save_tenant_set(running, "appliance", "import")
        # The config file's policy templates and their followers come along (an appliance that
        # offers them: appliance.service.Appliance.policy_templates); followers already run the
        # resolved policy, so only the templates and the links are stored.
        offered = getattr(app[APPLIANCE], "policy_templates", None)
        if callable(offered) and not await store.policy_templates():
            templates, links = offered()
            for name, values in sorted(templates.items()):
                await store.save_policy_template(name, values, "appliance")
            for tenant_id, name in sorted(links.items()):
                if tenant_id in running and name in templates:
                    await store.set_template_link(tenant_id, name)

    async def run_stored(self, app: web.Application, stored: TenantSet) -> None:
        app[APPLIANCE].apply_tenants(stored)

    def sync_fields(self, value: TenantSet, version: int | None, error: Exception | None) -> dict[str, Any]:
        if error is not None:
            return {"problems": getattr(error, "problems", [str(error)])}
        return {"tenants": len(value)}


async def change_tenants(request: web.Request, mutate: Callable[[TenantSet], TenantSet], action: str,
                         target: str, *, expected: tuple[int, ...] | str | None = None) -> TenantsChanged:
    """Read the set, mutate, validate, apply to the dataplane (when there is one), store a new
    version and audit it: the read, the change and the save as one step under the tenant lock,
    so no concurrent change is lost, and stored with a compare-and-set on the set's version,
    so a change saved meanwhile by another process is read and the mutation redone.

    expected: versions of `target` the caller last saw (If-Match): 409 when it is at another.
    ConfigError (422) and ApiError from `mutate` leave everything as it was.
    """
    return await change_config(request, TenantConfig(), mutate, action=action, target=target, expected=expected)


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
            table[key] = merge_policy(table.get(key, {}), body[key])
        else:
            table[key] = body[key]
    if problems:
        try:
            Tenant.from_dict(table)
        except ConfigError as exc:
            problems.extend(exc.problems)
        raise ApiError(422, "invalid policy update", problems)
    return table


def policy_update(tenant_id: str, body: dict[str, Any], principal: Principal) -> Callable[[TenantSet], TenantSet]:
    """The mutation of a policy change (API and UI): `body` merged into the tenant as it is when
    the change runs, under the lock, so a change saved meanwhile is kept, not overwritten."""
    def mutate(tenant_set: TenantSet) -> TenantSet:
        current = tenant_set.get(tenant_id)
        if current is None:
            raise not_found(f"no tenant {tenant_id!r}")
        return replace_tenant(tenant_set, merged_policy_table(current, body, principal), must_exist=True)
    return mutate


async def rollback_tenant(request: web.Request, tenant_id: str, version: Any) -> TenantsChanged:
    """Put tenant `tenant_id` back as it was at `version` (admin), as a new version: the API's
    POST /api/v1/tenants/{id}/rollback and the admin pages' buttons. A deleted tenant comes back;
    a version that is a deletion removes it. The old table is validated against today's set
    (an overlap with a tenant created since is a ConfigError)."""
    require_admin(request)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ApiError(422, "version: expected a whole number from 1", ["version: expected a whole number from 1"])
    versions = await request.app[STORE].tenant_versions(tenant_id)
    found = next((v for v in versions if v.version == version), None)
    if found is None:
        raise not_found(f"tenant {tenant_id!r} has no version {version}")
    table = found.data

    def mutate(tenant_set: TenantSet) -> TenantSet:
        if table is None:
            return TenantSet([t for t in tenant_set if t.id != tenant_id])
        return replace_tenant(tenant_set, table, must_exist=tenant_id in tenant_set)
    return await change_tenants(request, mutate, "tenant.rollback", tenant_id)
