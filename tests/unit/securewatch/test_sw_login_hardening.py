"""Issue 12, items 1, 2, 3 and 5: the login form against an attacker, on a real aiohttp server.

1. concurrency cannot slip past the throttle, argon2 does not stall the server, checks are bounded;
2. nothing an unauthenticated client sends grows memory or the database without bound;
3. wrong passwords for one user from one address lock out neither other users nor other addresses;
5. `next` never sends the browser off the site.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import threading
import urllib.parse

import aiohttp
import pytest
from test_sw_helpers import PASSWORD, add_user, login_form_token, running_app, service
from test_sw_helpers import settings as make_settings
from yarl import URL

from securewatch import app as sw
from securewatch import auth
from securewatch.store import Store
from tests.support import await_until

HOLD_LIMIT_S = 10.0     # seconds a held check waits at most (only reached when checks block the event loop)


class HeldChecks:
    """The real verify_password, held until the test releases it: the test decides when the
    password checks finish, and counts them. Blocking like argon2 does (a thread waits)."""

    def __init__(self) -> None:
        self.real = auth.verify_password
        self.release = threading.Event()
        self.calls = 0
        self.blocked_the_loop = False
        self._lock = threading.Lock()

    def __call__(self, password_hash: str | None, password: str) -> bool:
        with self._lock:
            self.calls += 1
        if not self.release.wait(HOLD_LIMIT_S):
            # Only when the check runs on the event loop: the test cannot run to release it.
            self.blocked_the_loop = True
            self.release.set()
        return self.real(password_hash, password)


@pytest.fixture
def held(monkeypatch) -> HeldChecks:
    checks = HeldChecks()
    monkeypatch.setattr(auth, "verify_password", checks)
    yield checks
    checks.release.set()


def jar_session(**kwargs) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), **kwargs)


async def post_login(http: aiohttp.ClientSession, url: str, token: str, username: str, password: str,
                     *, headers: dict[str, str] | None = None, nxt: str = "/") -> aiohttp.ClientResponse:
    async with http.post(f"{url}/login", data={"username": username, "password": password, "next": nxt,
                                               "csrf_token": token},
                         headers=headers, allow_redirects=False) as r:
        await r.read()
        return r


async def audit_rows(store, action: str) -> list[dict]:
    return [e for e in await store.audit_log(limit=10_000) if e["action"] == action]


# -- item 1: concurrency, the event loop, bounded checks -------------------------------------

async def test_item1_concurrent_wrong_passwords_are_counted_before_checking_and_do_not_stall_the_server(
        tmp_path, held):
    async with service(tmp_path) as (url, store, _), jar_session() as http:
        await add_user(store, "ops", "admin")
        token = await login_form_token(http, url)
        posts = [asyncio.create_task(post_login(http, url, token, "ops", "wrong-password")) for _ in range(40)]
        # The throttle allows LOGIN_FREE_FAILURES checks; the rest are refused without one.
        await await_until(lambda: sum(p.done() for p in posts) >= 40 - auth.LOGIN_FREE_FAILURES,
                          what="the attempts over the limit answered")
        await await_until(lambda: held.calls >= auth.LOGIN_MAX_VERIFICATIONS, what="checks started")
        # Another page answers while the checks are still running (held).
        async with http.get(f"{url}/static/securewatch.css") as r:
            assert r.status == 200
        assert not held.release.is_set() and not held.blocked_the_loop, "a page waited for the password checks"
        assert held.calls == auth.LOGIN_MAX_VERIFICATIONS   # bounded: the others queue
        held.release.set()
        statuses = sorted(r.status for r in await asyncio.gather(*posts))
    assert statuses == [401] * auth.LOGIN_FREE_FAILURES + [429] * (40 - auth.LOGIN_FREE_FAILURES)
    assert held.calls == auth.LOGIN_FREE_FAILURES


async def test_item1_checks_beyond_the_queue_are_answered_503_at_once(tmp_path, held):
    gate = auth.VerificationGate(slots=1, max_waiting=2)
    async with service(tmp_path, login_gate=gate) as (url, store, _), jar_session() as http:
        token = await login_form_token(http, url)
        # Distinct names from one address: under every limit, so only the gate refuses.
        posts = [asyncio.create_task(post_login(http, url, token, f"user{i}", "wrong-password")) for i in range(10)]
        await await_until(lambda: sum(p.done() for p in posts) >= 7, what="the excess answered")
        await await_until(lambda: held.calls >= 1, what="the first check started")
        assert held.calls == 1 and not held.release.is_set()   # answered while the one check is held
        refused = [p.result() for p in posts if p.done()]
        assert [r.status for r in refused] == [503] * 7
        assert all(r.headers["Retry-After"] == "1" for r in refused)
        held.release.set()
        statuses = sorted(r.status for r in await asyncio.gather(*posts))
    assert statuses == [401] * 3 + [503] * 7
    # A refused attempt was never checked, so it is not held against the name.
    assert held.calls == 3


# -- item 2: bounded memory and disk ------------------------------------------------------

async def test_item2_huge_user_names_are_refused_without_a_trace(tmp_path):
    limiter = auth.LoginLimiter()
    async with service(tmp_path, login_limiter=limiter) as (url, store, _), jar_session() as http:
        token = await login_form_token(http, url)
        db = tmp_path / "sw.db"
        size_before = db.stat().st_size
        for i in range(20):
            r = await post_login(http, url, token, f"{i}" + "n" * (1024 * 1024), "wrong-password")
            assert r.status == 400
        r = await post_login(http, url, token, "n" * (auth.MAX_USERNAME_CHARS + 1), "wrong-password")
        assert r.status == 400 and "User name: at most" in await r.text()
        r = await post_login(http, url, token, "n" * auth.MAX_USERNAME_CHARS, "p" * (auth.MAX_PASSWORD_CHARS + 1))
        assert r.status == 400
        assert len(limiter) == 0
        assert await store.audit_log(limit=10_000) == []
        assert db.stat().st_size - size_before < 64 * 1024
        # A name at the bound is an ordinary (failed) attempt.
        r = await post_login(http, url, token, "n" * auth.MAX_USERNAME_CHARS, "wrong-password")
        assert r.status == 401 and len(limiter) == 3    # its pair, source and user entries


def test_item2_limiter_tables_stay_bounded_under_a_flood_of_names_and_sources():
    now = [1000.0]
    limiter = auth.LoginLimiter(max_keys=100, clock=lambda: now[0])
    for i in range(5000):
        limiter.attempt(f"name-{i}", f"198.18.{i // 256 % 256}.{i % 256}")
        if i % 7 == 0:
            limiter.succeeded(f"name-{i}", f"198.18.{i // 256 % 256}.{i % 256}")
    assert len(limiter) <= 4 * 100
    # Expired entries go even without pressure.
    now[0] += auth.LOGIN_TRUST_S + 1
    limiter.attempt("late", "192.0.2.1")
    assert len(limiter) == 3      # the new pair, source and user


async def test_item2_throttled_attempts_are_one_audit_row_per_key_and_window(tmp_path):
    async with service(tmp_path) as (url, store, _), jar_session() as http:
        await add_user(store, "ops", "admin")
        token = await login_form_token(http, url)
        statuses = [(await post_login(http, url, token, "ops", "wrong-password")).status for _ in range(25)]
        assert statuses == [401] * 5 + [429] * 20
        throttled = await audit_rows(store, "login.throttled")
        assert len(throttled) == 1, throttled
        assert throttled[0]["actor"] == "ops" and throttled[0]["details"] == {"count": 20}
        assert throttled[0]["target"] == "limit:pair" and throttled[0]["remote"] == "127.0.0.1"
        assert len(await audit_rows(store, "login.failed")) == 5
        # Another name from the same address is its own key.
        for _ in range(7):
            await post_login(http, url, token, "guest", "wrong-password")
        rows = {e["actor"]: e["details"]["count"] for e in await audit_rows(store, "login.throttled")}
        assert rows == {"ops": 20, "guest": 2}


# -- item 3: no lockout of others ---------------------------------------------------------------

async def test_item3_wrong_passwords_for_admin_from_one_address_lock_out_only_that_pair(tmp_path):
    async with service(tmp_path, login_limiter=auth.LoginLimiter()) as (url, store, _), jar_session() as http:
        await add_user(store, "admin", "admin")
        await add_user(store, "noc1", "noc")
        token = await login_form_token(http, url)
        statuses = [(await post_login(http, url, token, "admin", "wrong-password")).status for _ in range(6)]
        assert statuses == [401] * 5 + [429]
        # Same address, another user with the right password: in.
        assert (await post_login(http, url, token, "noc1", PASSWORD)).status == 302
        # The same pair stays throttled, even with the right password, until its backoff ends.
        token = await login_form_token(http, url)     # a login used up the form's token
        r = await post_login(http, url, token, "admin", PASSWORD)
        assert r.status == 429 and 0 < int(r.headers["Retry-After"]) <= auth.LOGIN_BACKOFF_BASE_S + 1


@contextlib.asynccontextmanager
async def behind_proxy(tmp_path):
    """The app with [securewatch] trusted_proxies = ["127.0.0.1"]: the test client plays the proxy."""
    store = await Store.open(f"sqlite:///{tmp_path}/sw.db")
    try:
        proxied = dataclasses.replace(make_settings(tmp_path), trusted_proxies=(ipaddress.ip_network("127.0.0.1"),))
        async with running_app(sw.create_app(proxied, store=store, appliance=None)) as url:
            yield url, store
    finally:
        await store.close()


async def test_item3_behind_a_trusted_proxy_the_right_password_from_elsewhere_is_not_locked_out(tmp_path):
    async with behind_proxy(tmp_path) as (url, store), jar_session() as http:
        await add_user(store, "admin", "admin")
        token = await login_form_token(http, url)
        attacker = {"X-Forwarded-For": "192.0.2.66"}
        statuses = [(await post_login(http, url, token, "admin", "wrong-password", headers=attacker)).status
                    for _ in range(6)]
        assert statuses == [401] * 5 + [429]
        assert (await post_login(http, url, token, "admin", PASSWORD, headers=attacker)).status == 429
        # The rightful admin, elsewhere (a forged first hop is ignored: the proxy's own entry counts).
        rightful = {"X-Forwarded-For": "192.0.2.66, 198.51.100.7"}
        assert (await post_login(http, url, token, "admin", PASSWORD, headers=rightful)).status == 302
        failed = await audit_rows(store, "login.failed")
        assert {e["remote"] for e in failed} == {"192.0.2.66"}


async def test_item3_an_address_spraying_names_is_stopped(tmp_path):
    async with service(tmp_path) as (url, store, _), jar_session() as http:
        await add_user(store, "ops", "admin")
        token = await login_form_token(http, url)
        statuses = [(await post_login(http, url, token, f"guess{i}", "wrong-password")).status
                    for i in range(auth.LOGIN_SOURCE_MAX_FAILURES + 1)]
        assert statuses == [401] * auth.LOGIN_SOURCE_MAX_FAILURES + [429]
        rows = await audit_rows(store, "login.throttled")
        assert [(e["actor"], e["target"]) for e in rows] == [("*", "limit:source")]


def test_item3_backoff_doubles_and_is_forgotten_when_idle():
    now = [0.0]
    limiter = auth.LoginLimiter(clock=lambda: now[0])
    for _ in range(auth.LOGIN_FREE_FAILURES):
        assert limiter.attempt("admin", "192.0.2.1") is None
    waits = []
    for _ in range(6):
        throttled = limiter.attempt("admin", "192.0.2.1")
        assert throttled is not None and throttled.limit == "pair"
        waits.append(throttled.retry_after_s)
        now[0] += throttled.retry_after_s
        assert limiter.attempt("admin", "192.0.2.1") is None     # one more try, counted
    assert waits == [30.0, 60.0, 120.0, 240.0, 480.0, 900.0]
    assert limiter.attempt("admin", "192.0.2.1").retry_after_s == auth.LOGIN_BACKOFF_MAX_S  # capped
    assert limiter.check("admin", "192.0.2.2") is None and limiter.check("noc", "192.0.2.1") is None
    now[0] += auth.LOGIN_BACKOFF_MAX_S + 1
    assert limiter.check("admin", "192.0.2.1") is None
    assert limiter.attempt("admin", "192.0.2.1") is None
    # Forgotten: the free failures start again.
    for _ in range(auth.LOGIN_FREE_FAILURES - 1):
        assert limiter.attempt("admin", "192.0.2.1") is None
    assert limiter.attempt("admin", "192.0.2.1").limit == "pair"


def test_item3_a_distributed_guess_slows_the_user_but_not_from_where_they_logged_in():
    now = [0.0]
    limiter = auth.LoginLimiter(clock=lambda: now[0])
    assert limiter.attempt("admin", "203.0.113.10") is None
    limiter.succeeded("admin", "203.0.113.10")          # the rightful admin's usual address
    for i in range(auth.LOGIN_USER_MAX_FAILURES):
        assert limiter.attempt("admin", f"198.18.{i // 200}.{i % 200 + 1}") is None
    throttled = limiter.check("admin", "198.18.9.9")
    assert throttled is not None and throttled.limit == "user"
    assert limiter.check("admin", "203.0.113.10") is None   # trusted source: still let in
    assert limiter.check("noc", "198.18.9.9") is None
    now[0] += auth.LOGIN_WINDOW_S
    assert limiter.check("admin", "198.18.9.9") is None


def test_item3_ipv6_sources_are_slash_64s():
    limiter = auth.LoginLimiter()
    for i in range(auth.LOGIN_FREE_FAILURES):
        assert limiter.attempt("admin", f"2001:db8:0:1::{i + 1:x}") is None
    assert limiter.check("admin", "2001:db8:0:1:ffff::1").limit == "pair"
    assert limiter.check("admin", "2001:db8:0:2::1") is None
    assert auth.source_key("::ffff:192.0.2.7") == "192.0.2.7"


# -- item 5: open redirect ------------------------------------------------------------------------

NASTY_NEXT = [
    "/%09/evil.example/phish", "/\t/evil.example/phish", "/\n/evil.example", "/\r\n/evil.example",
    "//evil.example", "///evil.example", "/\\evil.example", "\\\\evil.example", "/\\/evil.example",
    "/%5Cevil.example", "/%5C%5Cevil.example", "/%2F/evil.example", "/%2F%2Fevil.example",
    "/%252F%252Fevil.example", "%2F%2Fevil.example", "https://evil.example/", "http:evil.example",
    "javascript:alert(1)", " //evil.example", "/ /evil.example", "/\x00/evil.example", "/\x0b/evil.example",
    "/\u3000/evil.example", "/\uff0f\uff0fevil.example", "/%E3%80%80/evil.example", "//\t/evil.example",
    "/." + "/" * 3 + "evil.example", "/" + "a" * 5000,
]


def lands_on_site(location: str) -> bool:
    """Where a browser goes for this Location from https://sw.test/login: tabs and newlines are
    dropped, a backslash is a slash, leading blanks and control characters are stripped (WHATWG)."""
    cleaned = "".join(c for c in location if c not in "\t\n\r").replace("\\", "/").strip("\x00 \x0b\x0c")
    target = urllib.parse.urlsplit(urllib.parse.urljoin("https://sw.test/login", cleaned))
    return target.scheme == "https" and target.netloc == "sw.test"


@pytest.mark.parametrize("nxt", NASTY_NEXT, ids=[repr(v)[:40] for v in NASTY_NEXT])
async def test_item5_next_never_leaves_the_site(tmp_path, nxt):
    async with service(tmp_path) as (url, store, _), jar_session() as http:
        await add_user(store, "ops", "admin")
        token = await login_form_token(http, url)
        # As a link: the raw query string, decoded by the server, rendered into the form.
        query = "next=" + urllib.parse.quote(nxt, safe="/%:")
        async with http.get(URL(f"{url}/login?{query}", encoded=True)) as r:
            page = await r.text()
        rendered = page.split('name="next" value="', 1)[1].split('"', 1)[0]
        r = await post_login(http, url, token, "ops", PASSWORD, nxt=rendered)
        assert r.status == 302 and lands_on_site(r.headers["Location"]), r.headers["Location"]
        # Posted directly, the value unchanged.
        http.cookie_jar.clear_domain("127.0.0.1")
        token = await login_form_token(http, url)
        r = await post_login(http, url, token, "ops", PASSWORD, nxt=nxt)
        assert r.status == 302 and lands_on_site(r.headers["Location"]), r.headers["Location"]


@pytest.mark.parametrize("nxt", ["/incidents", "/tenants/alpha?tab=acl", "/incidents?state=active&tenant=beta",
                                 "/tenants/a%20b"])
async def test_item5_local_next_is_kept(tmp_path, nxt):
    async with service(tmp_path) as (url, store, _), jar_session() as http:
        await add_user(store, "ops", "admin")
        token = await login_form_token(http, url)
        r = await post_login(http, url, token, "ops", PASSWORD, nxt=nxt)
        assert r.status == 302 and r.headers["Location"] == nxt


async def test_item5_the_redirect_to_login_keeps_the_path_as_next(tmp_path):
    async with service(tmp_path) as (url, store, _), jar_session() as http:
        async with http.get(f"{url}/tenants/alpha", allow_redirects=False) as r:
            location = r.headers["Location"]
        parts = urllib.parse.urlsplit(location)
        assert parts.path == "/login" and urllib.parse.parse_qs(parts.query) == {"next": ["/tenants/alpha"]}


# -- item 9: the login form's CSRF token ---------------------------------------------------------------

async def test_item9_login_form_needs_its_csrf_token(tmp_path):
    async with service(tmp_path) as (url, store, _), jar_session() as http:
        await add_user(store, "ops", "admin")
        data = {"username": "ops", "password": PASSWORD, "next": "/"}
        async with http.post(f"{url}/login", data=data, allow_redirects=False) as r:
            assert r.status == 403          # no pre-session cookie, no field: a cross-site form
        token = await login_form_token(http, url)
        async with http.post(f"{url}/login", data=data, allow_redirects=False) as r:
            assert r.status == 403          # the cookie rides along, but the form lacks the field
        async with http.post(f"{url}/login", data={**data, "csrf_token": token[::-1]}, allow_redirects=False) as r:
            assert r.status == 403
        assert await store.audit_log() == []
        async with http.post(f"{url}/login", data={**data, "csrf_token": token}, allow_redirects=False) as r:
            assert r.status == 302
            assert "sw_session" in r.cookies
