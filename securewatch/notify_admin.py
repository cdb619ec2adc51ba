"""NOC receivers edited by administrators: the `[notify]` table over the API and in the UI.

    GET /api/v1/notify    admin, noc: the table with every secret replaced by MASK
    PUT /api/v1/notify    admin: a full table; a secret given as MASK keeps the current value,
                          unless the change moves where that secret goes (host, port, TLS, URL)
    GET/POST /notify      the "NOC receivers" page (noc: read-only; tenants: 404)

A change goes through the versioned configuration service (`versioned.change_config`, as the
tenant set's do): validated by `parse_notify_config` (422 naming the key), applied to the running
notifiers through the appliance's `reconfigure_notifiers` (when there is an appliance), then
stored as a new version, written to the audit log (receiver names and which secrets changed,
never a secret's value) and published as POLICY_CHANGE. At start the stored table wins over
the config file's, as it does for tenants (`versioned.sync_at_start`): edits made here survive
a restart. `NotifyReceivers` is how the service does each step for this table.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from typing import Any, Protocol, runtime_checkable

import structlog
import tomli_w
from aiohttp import web

from policy.events import Event, EventType, Severity
from tenants.errors import ConfigError

from . import ui
from .changes import field_diff
from .context import (
    APPLIANCE,
    NOTIFY_LOCK,
    STORE,
    ApiError,
    check_csrf,
    not_found,
    principal_of,
    read_json,
    require_admin,
)
from .notify.config import KINDS, NotifyConfig, Secret, parse_notify_config
from .versioned import VersionedConfig, change_config

log = structlog.get_logger(__name__)

MASK = "********"
# The keys of each `[[notify.<kind>]]` entry that hold secrets (a unit test checks these against
# the parsed receivers' `Secret` fields). Webhook URLs are secrets: Slack's and Discord's carry a token.
SECRET_KEYS: dict[str, tuple[str, ...]] = {
    "syslog": (),
    "snmp": ("community", "auth_key", "priv_key"),
    "email": ("password",),
    "webhook": ("url", "secret", "routing_key"),
}
# What decides where each kind's secrets go, as parsed receiver fields. A secret kept as MASK
# while one of these changes would be sent somewhere its owner never typed it for (an SMTP
# password to another host, or in clear once STARTTLS is off): such a change must re-enter it.
DESTINATION_FIELDS: dict[str, tuple[str, ...]] = {
    "syslog": ("host", "port", "transport", "server_name", "ca_file"),
    "snmp": ("host", "port", "version"),
    "email": ("smtp_host", "smtp_port", "starttls", "use_tls", "ca_file"),
    "webhook": ("url", "ca_file"),
}
TOML_FIELD = "notify_toml"
EMPTY_TOML_HINT = """\
# No receivers yet. For example:
# [[notify.syslog]]
# name = "noc-syslog"
# host = "192.0.2.10"
# transport = "tcp"
"""


@runtime_checkable
class NotifyHooks(Protocol):
    """What an appliance offers to run NOC receivers edited here."""

    def notify_config(self) -> dict[str, Any]:
        """The raw `[notify]` table the notifiers run now."""

    async def reconfigure_notifiers(self, config: dict[str, Any]) -> None:
        """Run `config` live; ValueError naming the key when invalid, running notifiers kept."""


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/notify", api_notify)
    r.add_put("/api/v1/notify", api_notify_put)
    r.add_get("/notify", notify_page)
    r.add_post("/notify", notify_submit)


def hooks_of(app: web.Application) -> NotifyHooks | None:
    appliance = app[APPLIANCE]
    return appliance if isinstance(appliance, NotifyHooks) else None


# -- masking ----------------------------------------------------------------------------

def mask(table: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw table with every secret that is set replaced by MASK."""
    out = copy.deepcopy(table)
    for kind in KINDS:
        entries = out.get(kind)
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if isinstance(entry, dict):
                for key in SECRET_KEYS[kind]:
                    if entry.get(key) is not None:
                        entry[key] = MASK
    return out


def _effective_name(kind: str, index: int, entry: dict[str, Any]) -> Any:
    """The receiver's name as the parser gives it: its `name`, or `<kind>-<index>` when unnamed."""
    return entry.get("name") or f"{kind}-{index}"


def unmask(new: dict[str, Any], current: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`new` with each MASK secret replaced by the current value of the same receiver (same kind
    and name; an unnamed receiver is `<kind>-<index>`, so it matches by position). Returns the
    merged table and the problems: a MASK with no current value to keep."""
    merged = copy.deepcopy(new)
    problems: list[str] = []
    for kind in KINDS:
        entries = merged.get(kind)
        if not isinstance(entries, list):
            continue  # the parser names the problem
        olds = [o for o in current.get(kind) or [] if isinstance(o, dict)]
        by_name = {_effective_name(kind, j, o): o for j, o in enumerate(olds)}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            old = by_name.get(_effective_name(kind, i, entry), {})
            for key in SECRET_KEYS[kind]:
                if entry.get(key) != MASK:
                    continue
                if isinstance(old.get(key), str):
                    entry[key] = old[key]
                else:
                    problems.append(f"notify.{kind}[{i}].{key}: is {MASK}, but this receiver has no current "
                                    f"value to keep (matched by name); enter the value")
    return merged, problems


def retargeted(new: dict[str, Any], current: dict[str, Any], parsed: NotifyConfig) -> list[str]:
    """Problems for each secret kept as MASK in `new` (the table as sent) whose receiver's
    destination differs from the current receiver's it was kept from. `parsed` is the merged table."""
    problems: list[str] = []
    for kind in KINDS:
        entries = new.get(kind)
        if not isinstance(entries, list):
            continue
        olds = [o for o in current.get(kind) or [] if isinstance(o, dict)]
        by_name = {_effective_name(kind, j, o): o for j, o in enumerate(olds)}
        for i, entry in enumerate(entries):
            kept = [key for key in SECRET_KEYS[kind] if isinstance(entry, dict) and entry.get(key) == MASK]
            old = by_name.get(_effective_name(kind, i, entry)) if kept else None
            if old is None:
                continue  # nothing kept (or nothing to keep: unmask reported it)
            receiver = getattr(parsed, kind)[i]
            try:
                before = getattr(parse_notify_config({kind: [old]}, check_files=False), kind)[0]
                changed = [f for f in DESTINATION_FIELDS[kind] if getattr(before, f) != getattr(receiver, f)]
            except ValueError:  # a stored entry that no longer parses: nothing proves it is the same place
                changed = list(DESTINATION_FIELDS[kind])
            if not changed:
                continue
            for key in kept:
                problems.append(f"notify.{kind}[{i}].{key}: is {MASK}, but this change moves where it goes "
                                f"({', '.join(changed)} changed); enter the {key} again to send it there")
    return problems


def _without_none(value: Any) -> Any:
    """TOML has no null: drop None values (the parser treats a missing key the same)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value


def _toml_key(key: str) -> str:
    return tomli_w.dumps({key: 0}).rsplit(" = ", 1)[0]


def _toml_value(value: Any) -> str:
    """One value on one line, as operators write it: lists and tables inline."""
    if isinstance(value, dict):  # e.g. severity_map
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).split(" = ", 1)[1].strip()


def _toml_line(key: str, value: Any) -> str:
    return f"{_toml_key(key)} = {_toml_value(value)}"


def masked_toml(table: dict[str, Any]) -> str:
    """The table as the `[notify]` section of an appliance config file, secrets masked: one
    `[[notify.<kind>]]` block per receiver, the way the configuration guide writes it."""
    clean = _without_none(mask(table))
    if not clean:
        return EMPTY_TOML_HINT
    blocks = []
    plain = {k: v for k, v in clean.items() if k not in KINDS or not isinstance(v, list)}
    if plain:
        blocks.append("[notify]\n" + "".join(_toml_line(k, v) + "\n" for k, v in plain.items()))
    for kind in KINDS:
        for entry in clean.get(kind) if isinstance(clean.get(kind), list) else ():
            if isinstance(entry, dict):
                blocks.append(f"[[notify.{kind}]]\n" + "".join(_toml_line(k, v) + "\n" for k, v in entry.items()))
    return "\n".join(blocks)


def _receivers_by_name(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each receiver's table, secrets masked, under "<kind>.<name>"."""
    out = {}
    for kind in KINDS:
        entries = mask(table).get(kind)
        for index, entry in enumerate(entries if isinstance(entries, list) else ()):
            if isinstance(entry, dict):
                out[f"{kind}.{_effective_name(kind, index, entry)}"] = entry
    return out


def _summary(old_table: dict[str, Any], new: NotifyConfig, new_table: dict[str, Any]) -> dict[str, Any]:
    """What changed, for the audit log: receiver names and secret key names, never values, and
    `diff`, the field-level diff per receiver with secrets masked (a changed secret is named in
    `secrets_changed`, its value never written)."""
    before, after = _receivers_by_name(old_table), _receivers_by_name(new_table)
    diff = {name: fields for name in sorted(before.keys() | after.keys())
            if (fields := field_diff(before.get(name), after.get(name)))}
    try:
        old = {r.name: r for r in parse_notify_config(old_table, check_files=False).receivers}
    except ValueError:
        old = {}
    now = {r.name: r for r in new.receivers}
    secrets_changed = []
    for name, receiver in now.items():
        before = old.get(name)
        for key in SECRET_KEYS[receiver.kind]:
            value = getattr(receiver, key)
            if isinstance(value, Secret) and (before is None or getattr(before, key, None) != value):
                secrets_changed.append(f"{name}.{key}")
    return {"receivers": list(now), "added": [n for n in now if n not in old],
            "removed": [n for n in old if n not in now],
            "changed": [n for n in now if n in old and old[n] != now[n]], "secrets_changed": secrets_changed,
            "diff": diff}


# -- the shared operation ------------------------------------------------------------------

async def current_table(app: web.Application) -> tuple[dict[str, Any], int | None]:
    """The table in force (secrets included) and its stored version (None: not stored yet)."""
    stored = await app[STORE].notify_config()
    if stored is not None:
        return stored[1], stored[0]
    hooks = hooks_of(app)
    return (hooks.notify_config() if hooks is not None else {}), None


def require_noc_or_admin(request: web.Request, *, hide: bool) -> None:
    if not principal_of(request).sees_all:
        if hide:  # pages: a tenant sees no sign that the page exists
            raise not_found()
        raise ApiError(403, "the NOC receivers are for the admin and noc roles only")


@dataclasses.dataclass(frozen=True, slots=True)
class _Proposed:
    table: dict[str, Any]              # as it will be stored and run: secrets kept from the current one
    parsed: NotifyConfig


@dataclasses.dataclass(frozen=True, slots=True)
class NotifyChanged:
    table: dict[str, Any]              # stored (secrets included: never send it as is)
    version: int
    applied: bool                      # the running notifiers took it (False: no appliance here)
    receivers: int
    summary: dict[str, Any]            # what changed, without secret values (see _summary)

    def to_dict(self) -> dict[str, Any]:
        return {"notify": mask(self.table), "version": self.version, "applied": self.applied}


class NotifyReceivers(VersionedConfig):
    """The `[notify]` table for the versioned configuration service: no If-Match (one table, saved
    whole), secrets sent as MASK keep their current value."""

    name = "notify"
    noun = "[notify] table"
    lock = NOTIFY_LOCK

    async def read(self, app: web.Application) -> dict[str, Any]:
        return (await current_table(app))[0]

    async def validate(self, app: web.Application, current: dict[str, Any], change: Any) -> _Proposed:
        if not isinstance(change, dict):
            raise ApiError(400, "expected a JSON object: the [notify] table",
                           ["notify: must be a table such as {\"syslog\": [{...}]}"])
        merged, problems = unmask(change, current)
        tenant_ids = (await app[STORE].tenant_set()).ids
        parsed = None
        try:
            # Files are checked where the receivers run here; a central server's run on the sites.
            parsed = parse_notify_config(merged, tenant_ids, check_files=hooks_of(app) is not None)
        except ConfigError as exc:
            # A key already reported as a MASK without a value is not reported again for holding MASK.
            unkept = {problem.split(": ", 1)[0] for problem in problems}
            problems.extend(p for p in exc.problems if p.split(": ", 1)[0] not in unkept)
        else:
            problems.extend(retargeted(change, current, parsed))
        if problems or parsed is None:  # every problem at once: missing secrets, bad keys, moved secrets
            raise ApiError(422, "invalid notify configuration", problems)
        return _Proposed(merged, parsed)

    async def apply(self, app: web.Application, proposed: _Proposed, action: str, target: str) -> bool:
        return await self._run(app, proposed.table)

    async def restore(self, app: web.Application, action: str, target: str) -> None:
        await self._run(app, (await current_table(app))[0])

    @staticmethod
    async def _run(app: web.Application, table: dict[str, Any]) -> bool:
        hooks = hooks_of(app)
        if hooks is None:
            return False
        try:
            await hooks.reconfigure_notifiers(table)
        except ValueError as exc:
            raise ApiError(422, "invalid notify configuration",
                           exc.problems if isinstance(exc, ConfigError) else [str(exc)]) from None
        except Exception as exc:
            log.error("securewatch.notify_apply_failed", error=f"{type(exc).__name__}: {exc}")
            raise ApiError(502, f"the appliance could not apply the receivers: {type(exc).__name__}: {exc}"
                           ) from exc
        return True

    async def save(self, app: web.Application, proposed: _Proposed, current: dict[str, Any], actor: str,
                   action: str, applied: bool) -> NotifyChanged:
        version = await app[STORE].save_notify_config(proposed.table, actor, action)
        return NotifyChanged(proposed.table, version, applied, len(proposed.parsed.receivers),
                             _summary(current, proposed.parsed, proposed.table))

    def audit_entry(self, outcome: NotifyChanged, target: str) -> tuple[str | None, dict[str, Any]]:
        return None, {"version": outcome.version, "applied": outcome.applied, **outcome.summary}

    def event(self, outcome: NotifyChanged, actor: str, action: str, target: str) -> Event | None:
        return Event(EventType.POLICY_CHANGE, None, f"NOC receivers changed by {actor}", Severity.NOTICE,
                     details={"version": outcome.version, "actor": actor, "receivers": outcome.summary["receivers"]})

    def log_fields(self, outcome: NotifyChanged, action: str, target: str) -> dict[str, Any]:
        return {"version": outcome.version, "applied": outcome.applied, "receivers": outcome.receivers,
                "secrets_changed": len(outcome.summary["secrets_changed"])}

    def running(self, app: web.Application) -> dict[str, Any] | None:
        hooks = hooks_of(app)
        return hooks.notify_config() if hooks is not None else None

    async def stored(self, app: web.Application) -> tuple[dict[str, Any], int | None] | None:
        stored = await app[STORE].notify_config()
        return (stored[1], stored[0]) if stored is not None else None

    async def import_running(self, app: web.Application, running: dict[str, Any]) -> None:
        await app[STORE].save_notify_config(running, "appliance", "import")

    async def run_stored(self, app: web.Application, stored: dict[str, Any]) -> None:
        hooks = hooks_of(app)
        assert hooks is not None  # running() found them
        await hooks.reconfigure_notifiers(stored)

    def sync_fields(self, value: dict[str, Any], version: int | None, error: Exception | None) -> dict[str, Any]:
        fields: dict[str, Any] = {"version": version} if version is not None else {}
        return fields | ({"problem": str(error)} if error is not None else {})


async def change_notify(request: web.Request, table: Any) -> dict[str, Any]:
    """Validate, apply (when there is an appliance), store, audit and publish a new `[notify]` table.

    ApiError 422 with `problems` naming the key leaves everything as it was.
    """
    outcome = await change_config(request, NotifyReceivers(), table, action="notify.update", target="notify")
    return outcome.to_dict()


# -- API ---------------------------------------------------------------------------------

async def api_notify(request: web.Request) -> web.Response:
    require_noc_or_admin(request, hide=False)
    table, version = await current_table(request.app)
    return web.json_response({"notify": mask(table), "version": version, "live": hooks_of(request.app) is not None})


async def api_notify_put(request: web.Request) -> web.Response:
    require_admin(request)
    return web.json_response(await change_notify(request, await read_json(request)))


# -- the page ------------------------------------------------------------------------------

def _receivers(app: web.Application) -> list[dict[str, Any]] | None:
    """Health and backlog of each running receiver; None without an appliance."""
    appliance = app[APPLIANCE]
    if appliance is None:
        return None
    rows = []
    for name, r in (appliance.status().get("notifiers") or {}).items():
        tenants = r.get("tenants")
        rows.append({"name": name, "kind": r.get("kind", ""), "healthy": r.get("healthy"),
                     "running": r.get("running"), "backlog": r.get("backlog", 0),
                     "delivered": r.get("delivered", 0), "dead_letters": r.get("dead_letters", 0),
                     "tenants": ", ".join(tenants) if tenants else "NOC (every event)",
                     "refused": r.get("refused_recipients") or {},
                     "last_error": r.get("last_error") or ""})
    return rows


async def _render(request: web.Request, *, text: str | None = None, errors: list[str] | None = None,
                  saved: dict[str, Any] | None = None, status: int = 200) -> web.Response:
    table, version = await current_table(request.app)
    return ui.render(request, "notify.html", status=status, toml_text=masked_toml(table) if text is None else text,
                     field=TOML_FIELD, errors=errors or [], saved=saved, version=version,
                     editable=principal_of(request).is_admin, receivers=_receivers(request.app),
                     versions=await request.app[STORE].notify_config_versions(10))


async def notify_page(request: web.Request) -> web.Response:
    require_noc_or_admin(request, hide=True)
    return await _render(request)


def parse_toml_field(text: str) -> dict[str, Any]:
    """The textarea: `[notify]` tables in TOML. ValueError with the line and column when not."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"TOML syntax: {exc}") from None
    except RecursionError:
        raise ValueError("TOML nested too deeply") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise ValueError(f"TOML value out of range: {exc}") from None
    other = sorted(k for k in document if k != "notify")
    if other:
        raise ValueError(f"{other[0]}: only the [notify] table belongs here (e.g. [[notify.syslog]])")
    return document.get("notify", {})


async def notify_submit(request: web.Request) -> web.Response:
    require_noc_or_admin(request, hide=True)
    form = await check_csrf(request)
    require_admin(request)
    text = str(form.get(TOML_FIELD, ""))
    try:
        table = parse_toml_field(text)
        result = await change_notify(request, table)
    except ValueError as exc:
        return await _render(request, text=text, errors=[str(exc)], status=422)
    except ApiError as exc:
        if exc.status not in (400, 422):
            raise
        return await _render(request, text=text, errors=exc.problems or [exc.message], status=exc.status)
    return await _render(request, saved=result)
