"""Who may do what: principals, roles, password and token hashing, login rate limiting.

Roles:
  admin   everything (tenants CRUD, users, every tenant's data)
  noc     reads everything, acknowledges and annotates incidents
  tenant  its own tenant only; `read` sees it, `write` also edits its policy and annotates
          and acknowledges its incidents (never its prefixes: address space is the operator's)

Every handler asks a `Principal` for a scope; another tenant's id looks exactly like
one that does not exist (404), so ids cannot be probed.

Login throttling (`LoginLimiter`, `VerificationGate`), designed so that an attacker can
neither guess fast nor lock the rightful users out:
  - per (user name, source): the first LOGIN_FREE_FAILURES failures are free; then each
    further attempt waits an exponential backoff (LOGIN_BACKOFF_BASE_S doubling per failure,
    at most LOGIN_BACKOFF_MAX_S) after the last failure. The pair is forgotten once idle for
    LOGIN_BACKOFF_MAX_S. Wrong passwords for `admin` from one address therefore slow only
    `admin` from that address: other users behind it, and `admin` elsewhere, log in as usual.
  - per source, over all names: LOGIN_SOURCE_MAX_FAILURES failures per LOGIN_WINDOW_S stop an
    address that sprays many names. A source is an IPv4 address or an IPv6 /64 (one host
    usually owns a whole /64, so single v6 addresses would be free for the asking).
  - per user name, over all sources: LOGIN_USER_MAX_FAILURES failures per LOGIN_WINDOW_S slow a
    guessing campaign spread over many addresses; sources that logged in as that user before
    (within LOGIN_TRUST_S) are exempt, so such a campaign cannot lock the user out of the
    places they work from.
  - an attempt is counted as a failure before its password is checked (and the count is taken
    back on success), with no await between the check and the count, so concurrent requests
    cannot slip past the limit; throttled attempts are not counted (waiting does not extend).
  - argon2 runs on worker threads, at most LOGIN_MAX_VERIFICATIONS at a time, with at most
    LOGIN_MAX_WAITING queued; beyond that a login is answered 503 at once, so a flood of
    logins neither stalls the event loop nor queues without bound.
  - every table is bounded (LOGIN_MAX_KEYS entries, least recently used dropped first), user
    names longer than MAX_USERNAME_CHARS are refused before any of this, and throttled
    attempts are audited as one `login.throttled` row per key and window, with a count.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import hashlib
import ipaddress
import secrets
import time
from collections.abc import AsyncIterator, Callable

import argon2

from .store import ACCESS_LEVELS, ROLES

TOKEN_PREFIX = "swt_"             # recognisable in logs and secret scanners
TOKEN_BYTES = 32                  # bytes of randomness in an API token (256 bits)
SESSION_BYTES = 32                # bytes of randomness in a session id
SESSION_LIFETIME_S = 12 * 3600    # seconds a browser session lasts
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024         # longer is refused unchecked: no real password is, and hashing costs
MAX_USERNAME_CHARS = 128          # longer is refused before it reaches the limiter, store or audit log

LOGIN_FREE_FAILURES = 5           # failures per (user, source) before the backoff starts
LOGIN_BACKOFF_BASE_S = 30.0       # seconds of the first backoff; doubles with each further failure
LOGIN_BACKOFF_MAX_S = 900.0       # seconds: the longest backoff, and how long an idle pair is remembered
LOGIN_WINDOW_S = 300.0            # seconds over which a source's and a user's failures are counted
LOGIN_SOURCE_MAX_FAILURES = 30    # failures per window from one source over all names (a spray)
LOGIN_USER_MAX_FAILURES = 100     # failures per window for one name from all sources (a distributed guess)
LOGIN_TRUST_S = 30 * 24 * 3600.0  # seconds a source that logged in as a user stays exempt from that user's limit
LOGIN_MAX_KEYS = 10_000           # entries per limiter table (least recently used dropped): bounds memory
LOGIN_MAX_VERIFICATIONS = 2       # concurrent argon2 checks: each takes ~64 MiB and a core for ~50 ms
LOGIN_MAX_WAITING = 16            # logins queued for a check; beyond that 503 at once
IPV6_SOURCE_PREFIX = 64           # bits: one IPv6 source is a /64, what one host or site usually holds


@functools.lru_cache(maxsize=4)
def _dummy_hash(hasher: argon2.PasswordHasher) -> str:
    """A hash to verify against when the user does not exist, so timing does not reveal names: one of
    `hasher`'s own cost."""
    return hasher.hash(secrets.token_hex(16))


_hasher = argon2.PasswordHasher()      # argon2id at argon2-cffi's default cost (3 passes, 64 MiB, 4 lanes)
_DUMMY_HASH = _dummy_hash(_hasher)


def password_hasher() -> argon2.PasswordHasher:
    """The argon2 hasher that passwords are hashed and checked with."""
    return _hasher


def set_password_hasher(hasher: argon2.PasswordHasher) -> None:
    """Hash and check passwords with `hasher` from now on (the test tiers use the smallest cost). Hashes
    made before still verify, since an argon2 hash carries its own parameters, and a login with one of
    other parameters rehashes it (`needs_rehash`)."""
    global _hasher, _DUMMY_HASH
    _hasher, _DUMMY_HASH = hasher, _dummy_hash(hasher)


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
    """SHA-256 is enough for a 256-bit random token (no dictionary to attack), and lets us look it up.
    `token` is whatever a client sent (a bearer token, a session cookie): aiohttp hands a byte that
    is no UTF-8 over as a lone surrogate, which plain UTF-8 cannot encode; "surrogatepass" encodes
    any string, so such a token hashes to what no issued (ASCII) token does and is refused as
    unknown, like any other."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_session_id() -> str:
    return secrets.token_urlsafe(SESSION_BYTES)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)




def source_key(remote: str) -> str:
    """The throttling source of a client address: the IPv4 address, or the IPv6 /64 around it."""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote[:64]   # not an IP address (a unix socket): one source, bounded
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_SOURCE_PREFIX), strict=False))
    return str(address)


@dataclasses.dataclass(frozen=True, slots=True)
class Throttled:
    """Why an attempt is refused: the limit that holds (pair | source | user) and for how long."""

    limit: str
    retry_after_s: float


class _Lru(collections.OrderedDict):
    """An OrderedDict used as an LRU table: `touch` moves a key to the young end, `trim` bounds it."""

    def touch(self, key, default_factory):
        value = self.get(key)
        if value is None:
            value = self[key] = default_factory()
        self.move_to_end(key)
        return value

    def trim(self, max_keys: int, expired: Callable[[object], bool]) -> None:
        # The oldest entries first: drop them while expired, then while over the bound.
        while self:
            key, value = next(iter(self.items()))
            if not (expired(value) or len(self) > max_keys):
                break
            del self[key]


class LoginLimiter:
    """Failed logins per (user, source) with backoff, per source and per user in windows.

    See the module docstring for the scheme. Use: `attempt()` before checking the password
    (it counts a failure, or says why the attempt is refused); then `succeeded()` or, when
    the password was never checked, `refund()`.
    """

    def __init__(self, *, free_failures: int = LOGIN_FREE_FAILURES, backoff_base_s: float = LOGIN_BACKOFF_BASE_S,
                 backoff_max_s: float = LOGIN_BACKOFF_MAX_S, window_s: float = LOGIN_WINDOW_S,
                 source_max_failures: int = LOGIN_SOURCE_MAX_FAILURES,
                 user_max_failures: int = LOGIN_USER_MAX_FAILURES, trust_s: float = LOGIN_TRUST_S,
                 max_keys: int = LOGIN_MAX_KEYS, clock: Callable[[], float] = time.monotonic) -> None:
        self.free_failures = free_failures
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.window_s = window_s
        self.source_max_failures = source_max_failures
        self.user_max_failures = user_max_failures
        self.trust_s = trust_s
        self.max_keys = max_keys
        self.clock = clock
        self._pairs: _Lru = _Lru()      # (user, source) -> [failures, time of the last]
        self._sources: _Lru = _Lru()    # source -> [failures, window start]
        self._users: _Lru = _Lru()      # user -> [failures, window start]
        self._trusted: _Lru = _Lru()    # (user, source) -> time of the last success

    def __len__(self) -> int:
        """Entries held over all tables (what bounds the limiter's memory)."""
        return len(self._pairs) + len(self._sources) + len(self._users) + len(self._trusted)

    def _backoff(self, failures: int) -> float:
        extra = failures - self.free_failures
        return min(self.backoff_base_s * 2.0 ** min(extra, 32), self.backoff_max_s)

    def _window(self, table: _Lru, key: str, now: float) -> list[float]:
        entry = table.touch(key, lambda: [0, now])
        if now - entry[1] >= self.window_s:
            entry[0], entry[1] = 0, now
        return entry

    def _trim(self, now: float) -> None:
        self._pairs.trim(self.max_keys, lambda e: now - e[1] > self.backoff_max_s)
        self._sources.trim(self.max_keys, lambda e: now - e[1] >= self.window_s)
        self._users.trim(self.max_keys, lambda e: now - e[1] >= self.window_s)
        self._trusted.trim(self.max_keys, lambda t: now - t > self.trust_s)

    def check(self, user: str, remote: str) -> Throttled | None:
        """Why an attempt now would be refused, or None; changes no count."""
        now = self.clock()
        source = source_key(remote)
        pair = self._pairs.get((user, source))
        if pair is not None and pair[0] >= self.free_failures:
            wait = pair[1] + self._backoff(pair[0]) - now
            if wait > 0:
                return Throttled("pair", wait)
        entry = self._sources.get(source)
        if entry is not None and entry[0] >= self.source_max_failures and now - entry[1] < self.window_s:
            return Throttled("source", entry[1] + self.window_s - now)
        entry = self._users.get(user)
        if (entry is not None and entry[0] >= self.user_max_failures and now - entry[1] < self.window_s
                and not self._is_trusted(user, source, now)):
            return Throttled("user", entry[1] + self.window_s - now)
        return None

    def _is_trusted(self, user: str, source: str, now: float) -> bool:
        last = self._trusted.get((user, source))
        return last is not None and now - last <= self.trust_s

    def attempt(self, user: str, remote: str) -> Throttled | None:
        """Check, and when allowed count the attempt as a failure at once (no await in between)."""
        throttled = self.check(user, remote)
        if throttled is not None:
            return throttled
        now = self.clock()
        source = source_key(remote)
        pair = self._pairs.touch((user, source), lambda: [0, now])
        if now - pair[1] > self.backoff_max_s:
            pair[0] = 0
        pair[0] += 1
        pair[1] = now
        self._window(self._sources, source, now)[0] += 1
        self._window(self._users, user, now)[0] += 1
        self._trim(now)
        return None

    def refund(self, user: str, remote: str) -> None:
        """Take back the failure `attempt` counted, for an attempt whose password was never checked."""
        source = source_key(remote)
        for table, key in ((self._pairs, (user, source)), (self._sources, source), (self._users, user)):
            entry = table.get(key)
            if entry is not None and entry[0] > 0:
                entry[0] -= 1

    def succeeded(self, user: str, remote: str) -> None:
        """The password was right: forget the pair's failures, take back the counted one, trust the source."""
        now = self.clock()
        source = source_key(remote)
        self.refund(user, remote)
        self._pairs.pop((user, source), None)
        self._trusted[(user, source)] = now
        self._trusted.move_to_end((user, source))
        self._trim(now)


class VerificationGate:
    """Bounds concurrent password checks and the queue for them.

        if gate.full: answer 503          # no await between this test and entering the slot
        async with gate.slot(): check the password
    """

    def __init__(self, slots: int = LOGIN_MAX_VERIFICATIONS, max_waiting: int = LOGIN_MAX_WAITING) -> None:
        self.slots = slots
        self.max_waiting = max_waiting
        self._semaphore = asyncio.Semaphore(slots)
        self._admitted = 0     # checking or waiting to check

    @property
    def full(self) -> bool:
        return self._admitted >= self.slots + self.max_waiting

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self._admitted += 1
        try:
            async with self._semaphore:
                yield
        finally:
            self._admitted -= 1


async def verify_password_off_loop(password_hash: str | None, password: str) -> bool:
    """verify_password on a worker thread: argon2 takes tens of milliseconds of CPU (and releases the GIL)."""
    return await asyncio.get_running_loop().run_in_executor(None, verify_password, password_hash, password)


async def hash_password_off_loop(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(None, hash_password, password)
