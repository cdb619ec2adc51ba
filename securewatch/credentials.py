"""Users and API tokens as the CLI and the REST API manage them: one set of rules for both.

Pure functions (no I/O): validating names, labels and expiry dates, the rows that
`seawall user list` / `seawall token list` and GET /api/v1/users|tokens show, and how
an actor's name is shown to a tenant (a role, never an operator's name).
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .auth import Principal
from .store import ApiToken, User

MAX_USER_NAME_CHARS = 64          # characters in a user name (it is a log field and a path segment)
MAX_LABEL_CHARS = 100             # characters in a token's label (shown in the audit log)
MAX_EXPIRY_DAYS = 3650            # days a token may be made to last (ten years)
SECONDS_PER_DAY = 86400
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")

# What a tenant sees instead of the name of someone outside its tenant.
ROLE_SHOWN = {"admin": "operator", "noc": "NOC"}
UNKNOWN_ACTOR_SHOWN = "operator"  # the appliance, the CLI, a user since deleted


def user_name_problems(name: Any) -> list[str]:
    if not isinstance(name, str) or not name:
        return ["name: required"]
    if len(name) > MAX_USER_NAME_CHARS:
        return [f"name: at most {MAX_USER_NAME_CHARS} characters"]
    if not _USER_NAME.fullmatch(name):
        return [f"name: {name!r} may hold letters, digits and . _ @ - only, starting with a letter or digit"]
    return []


def effective_access(role: str, access: str) -> str:
    """Only a tenant's access is limited: every other role writes what it may see."""
    return access if role == "tenant" else "write"


def default_label(role: str, tenant: str | None) -> str:
    return f"{role}:{tenant}" if tenant else role


def parse_token_id(text: str) -> int | None:
    """A token id as typed in a URL or on the command line; None when it cannot be one (ids are
    64-bit integers in the database: digits only, and short)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def label_problems(label: Any) -> list[str]:
    if not isinstance(label, str):
        return ["label: expected a string"]
    if len(label) > MAX_LABEL_CHARS:
        return [f"label: at most {MAX_LABEL_CHARS} characters"]
    if any(not ch.isprintable() for ch in label):
        return ["label: control characters are not allowed"]
    return []


def parse_expires(value: Any, now: float) -> float | None:
    """A token's expiry from DAYS (a number, from now) or an ISO 8601 date or time (UTC when it
    names no zone); None or "" for never. ValueError names the field."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("expires: expected a number of days or an ISO 8601 date")
    days: float | None = None
    if isinstance(value, int | float):
        days = float(value)
    elif isinstance(value, str):
        try:
            days = float(value)
        except ValueError:
            days = None
    else:
        raise ValueError("expires: expected a number of days or an ISO 8601 date")
    if days is not None:
        if not 0 < days <= MAX_EXPIRY_DAYS:
            raise ValueError(f"expires: days must be more than 0 and at most {MAX_EXPIRY_DAYS}")
        return now + days * SECONDS_PER_DAY
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"expires: {value!r} is neither a number of days nor an ISO 8601 date "
                         f"(e.g. 30 or 2027-01-31)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    at = when.timestamp()
    if at <= now:
        raise ValueError(f"expires: {value!r} is in the past")
    if at > now + MAX_EXPIRY_DAYS * SECONDS_PER_DAY:
        raise ValueError(f"expires: at most {MAX_EXPIRY_DAYS} days from now")
    return at


def token_state(token: ApiToken, now: float | None = None) -> str:
    """active | revoked | expired | no tenant (deleted, or not yet in the store)"""
    return token.refusal(time.time() if now is None else now) or "active"


def token_row(token: ApiToken, now: float | None = None) -> dict[str, Any]:
    return {**token.to_dict(), "state": token_state(token, now)}


def user_row(user: User) -> dict[str, Any]:
    """Everything about a user but the password hash."""
    return {"name": user.name, "role": user.role, "tenant": user.tenant, "access": user.access,
            "created_at": user.created_at, "disabled": user.disabled,
            "state": "disabled" if user.disabled else "active"}


def shown_actor(viewer: Principal, actor: str | None, scopes: Mapping[str, tuple[str, str | None]]) -> str | None:
    """The name of whoever did something, as `viewer` may see it: the operator and the NOC see
    every name; a tenant sees names from its own tenant and a role ("operator", "NOC") for the rest."""
    if actor is None or viewer.sees_all:
        return actor
    role, tenant = scopes.get(actor, ("", None))
    if role == "tenant" and tenant is not None and tenant == viewer.tenant:
        return actor
    return ROLE_SHOWN.get(role, UNKNOWN_ACTOR_SHOWN)


def when_text(ts: float | None) -> str:
    """Seconds since the epoch as 'YYYY-MM-DD HH:MM' UTC ('-' for none)."""
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M")


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], times: Sequence[str] = ()) -> str:
    """Rows as an aligned text table (times in UTC, empty values as '-')."""
    cells = [[(when_text(r.get(c)) if c in times else ("-" if r.get(c) in (None, "") else str(r.get(c))))
              for c in columns] for r in rows]
    widths = [max([len(c.upper())] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


TOKEN_COLUMNS = ("id", "label", "role", "tenant", "access", "state", "created_at", "last_used", "expires_at")
TOKEN_TIMES = ("created_at", "last_used", "expires_at")
USER_COLUMNS = ("name", "role", "tenant", "access", "state", "created_at")
USER_TIMES = ("created_at",)
