"""Who may do what: principals, roles, password and token hashing, login rate limiting.

Roles:
  admin   everything (tenants CRUD, users, every tenant's data)
  noc     reads everything, acknowledges and annotates incidents
  tenant  its own tenant only; `read` sees it, `write` also edits its policy and annotates
          and acknowledges its incidents (never its prefixes: address space is the operator's)

Every handler asks a `Principal` for a scope; another tenant's id looks exactly like
one that does not exist (404), so ids cannot be probed.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import secrets
import time

import argon2

from .store import ACCESS_LEVELS, ROLES

TOKEN_PREFIX = "swt_"             # recognisable in logs and secret scanners
TOKEN_BYTES = 32                  # bytes of randomness in an API token (256 bits)
SESSION_BYTES = 32                # bytes of randomness in a session id
SESSION_LIFETIME_S = 12 * 3600    # seconds a browser session lasts
LOGIN_WINDOW_S = 300.0            # seconds over which failed logins are counted
LOGIN_MAX_FAILURES = 5            # failed logins per window, per client address and per user name
MIN_PASSWORD_CHARS = 8

_hasher = argon2.PasswordHasher()
# A hash to verify against when the user does not exist, so timing does not reveal names.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    name: str                     # user name, or "token:<id>:<label>"
    role: str                     # one of ROLES
    tenant: str | None = None     # for role "tenant"
    access: str = "read"          # for role "tenant": read | write
    via: str = "session"          # session | token

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def sees_all(self) -> bool:
        return self.role in ("admin", "noc")

    def can_read(self, tenant_id: str) -> bool:
        return self.sees_all or (self.role == "tenant" and self.tenant == tenant_id)

    def can_edit_policy(self, tenant_id: str) -> bool:
        return self.is_admin or (self.role == "tenant" and self.tenant == tenant_id and self.access == "write")

    def can_handle_incident(self, tenant_id: str) -> bool:
        """Acknowledge and annotate."""
        return self.role in ("admin", "noc") or (
            self.role == "tenant" and self.tenant == tenant_id and self.access == "write")

    def visible_tenants(self, all_ids: tuple[str, ...] | list[str]) -> tuple[str, ...] | None:
        """None: every tenant; else exactly these."""
        if self.sees_all:
            return None
        return (self.tenant,) if self.tenant else ()


def validate_role(role: str, tenant: str | None, access: str) -> list[str]:
    """Problems with a role/tenant/access combination (empty: fine)."""
    problems = []
    if role not in ROLES:
        problems.append(f"role: {role!r} is not one of {', '.join(ROLES)}")
    if access not in ACCESS_LEVELS:
        problems.append(f"access: {access!r} is not one of {', '.join(ACCESS_LEVELS)}")
    if role == "tenant" and not tenant:
        problems.append("tenant: required for role 'tenant'")
    if role != "tenant" and tenant:
        problems.append(f"tenant: only role 'tenant' is bound to a tenant (role is {role!r})")
    return problems


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"password: at least {MIN_PASSWORD_CHARS} characters")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """SHA-256 is enough for a 256-bit random token (no dictionary to attack), and lets us look it up."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_session_id() -> str:
    return secrets.token_urlsafe(SESSION_BYTES)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


class LoginLimiter:
    """Failed logins per client address and per user name in a sliding window.

    Both keys count: one address guessing many names and many addresses guessing
    one name are both stopped. Success clears the name's count.
    """

    def __init__(self, max_failures: int = LOGIN_MAX_FAILURES, window_s: float = LOGIN_WINDOW_S,
                 clock=time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, collections.deque[float]] = {}

    def _recent(self, key: str) -> collections.deque[float]:
        q = self._failures.setdefault(key, collections.deque())
        horizon = self.clock() - self.window_s
        while q and q[0] < horizon:
            q.popleft()
        return q

    def retry_after(self, remote: str, username: str) -> float | None:
        """Seconds until another attempt is allowed, or None when allowed now."""
        waits = []
        for key in (f"addr:{remote}", f"user:{username}"):
            q = self._recent(key)
            if len(q) >= self.max_failures:
                waits.append(q[0] + self.window_s - self.clock())
        return max(waits) if waits else None

    def failed(self, remote: str, username: str) -> None:
        now = self.clock()
        for key in (f"addr:{remote}", f"user:{username}"):
            self._recent(key).append(now)

    def succeeded(self, username: str) -> None:
        self._failures.pop(f"user:{username}", None)
