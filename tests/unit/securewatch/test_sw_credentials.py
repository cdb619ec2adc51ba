"""Issue 12, operator trust: credentials that die with their tenant and can be managed (item 4),
a database only its owner reads (item 7), tenants that see roles instead of operator names and
never see internal notes (item 10), and the audit log page by page (item 18)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import pathlib
import stat
import subprocess
import sys
import time
import urllib.parse

import aiohttp
import pytest
import structlog
from test_sw_helpers import (
    PASSWORD,
    TENANTS,
    add_token,
    add_user,
    attack_events,
    login,
    login_form_token,
    service,
)

from securewatch import auth
from securewatch.app import TRAFFIC_POLL_S
from securewatch.store import Store
from tenants import TenantSet
from tests.support import await_until

REPO = pathlib.Path(__file__).resolve().parents[3]
BETA_TABLE = {"id": "beta", "name": "Beta Shop", "prefixes": ["203.0.113.0/24"]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _status(http: aiohttp.ClientSession, method: str, url: str, **kwargs) -> int:
    async with http.request(method, url, allow_redirects=False, **kwargs) as r:
        await r.read()
        return r.status


# -- item 4: credentials outlive their tenant -------------------------------------------------

BETA_REQUESTS = [("GET", "/api/v1/incidents"), ("GET", "/api/v1/incidents/inc-beta-1"),
                 ("GET", "/api/v1/incidents/inc-beta-1/pcap/dropped"),
                 ("POST", "/api/v1/incidents/inc-beta-1/acknowledge"), ("GET", "/api/v1/tenants/beta/policy")]


async def test_item4_deleted_tenant_token_gets_401_and_stays_dead_when_the_tenant_is_recreated(tmp_path):
    async with service(tmp_path, pcap_root=tmp_path) as (url, store, _appliance):
        for e in attack_events("inc-beta-1", tenant="beta", target="203.0.113.5", pcap_dir=tmp_path):
            await store.record_event(e.to_dict())
        admin = await add_token(store, "admin")
        beta = await add_token(store, "tenant", "beta", "write")
        await add_user(store, "bea", "tenant", "beta", "write")
        bea_http, _csrf = await login(url, "bea")
        async with aiohttp.ClientSession(headers=bearer(beta)) as http, \
                aiohttp.ClientSession(headers=bearer(admin)) as admin_http, bea_http:
            for method, path in BETA_REQUESTS:
                assert await _status(http, method, f"{url}{path}") == 200, (method, path)
            assert await _status(bea_http, "GET", f"{url}/api/v1/me") == 200

            async with admin_http.delete(f"{url}/api/v1/tenants/beta") as r:
                assert r.status == 200
                deleted = await r.json()
            assert (deleted["revoked_tokens"], deleted["disabled_users"]) == ([2], ["bea"])
            for method, path in BETA_REQUESTS:
                assert await _status(http, method, f"{url}{path}") == 401, (method, path)
            assert await _status(bea_http, "GET", f"{url}/api/v1/me") == 401   # session ended
            assert await _status(bea_http, "GET", f"{url}/incidents/inc-beta-1") == 302   # back to the login

            # The id goes to a new customer: the old credentials stay dead.
            assert await _status(admin_http, "POST", f"{url}/api/v1/tenants", json=BETA_TABLE) == 201
            for method, path in [*BETA_REQUESTS, ("PUT", "/api/v1/tenants/beta/policy")]:
                kwargs = {"json": {"mode": "monitor"}} if method == "PUT" else {}
                assert await _status(http, method, f"{url}{path}", **kwargs) == 401, (method, path)
            form_token = await login_form_token(bea_http, url)
            async with bea_http.post(f"{url}/login", data={"username": "bea", "password": PASSWORD, "next": "/",
                                                           "csrf_token": form_token}, allow_redirects=False) as r:
                assert r.status == 401   # disabled, not silently revived

            async with admin_http.get(f"{url}/api/v1/tokens") as r:
                states = {t["tenant"]: t["state"] for t in (await r.json())["tokens"]}
            assert states == {None: "active", "beta": "revoked"}
            async with admin_http.get(f"{url}/api/v1/users") as r:
                assert [(u["name"], u["state"]) for u in (await r.json())["users"]] == [("bea", "disabled")]
        actions = [e["action"] for e in await store.audit_log(tenant="beta")]
        assert "tenant.credentials_revoked" in actions and "tenant.delete" in actions


async def test_item4_a_config_reload_that_drops_a_tenant_revokes_its_token(tmp_path, monkeypatch):
    """The SIGHUP path: the appliance's running set changes behind SecureWatch's back and is stored
    by the traffic sampler (every TRAFFIC_POLL_S seconds, shortened here as in test_sw_api), with the
    same revocation."""
    monkeypatch.setattr("securewatch.app.TRAFFIC_POLL_S", 0.05)
    async with service(tmp_path) as (url, store, appliance):
        beta = await add_token(store, "tenant", "beta", "read")
        async with aiohttp.ClientSession(headers=bearer(beta)) as http:
            assert await _status(http, "GET", f"{url}/api/v1/tenants/beta") == 200
            appliance.tenants = TenantSet.from_dicts(TENANTS[:1])   # what a reload of an edited file does
            await await_until(lambda: _is_status(http, f"{url}/api/v1/me", 401), timeout=3 * TRAFFIC_POLL_S,
                              what="the dropped tenant's token to be refused")
        entry = (await store.audit_log(tenant="beta"))[0]
        assert (entry["action"], entry["actor"], entry["details"]["cause"]) == (
            "tenant.credentials_revoked", "appliance", "reload")


async def _is_status(http: aiohttp.ClientSession, url: str, status: int) -> bool:
    return await _status(http, "GET", url) == status


async def test_item4_expired_tokens_and_principals_of_a_missing_tenant_are_refused(tmp_path):
    async with service(tmp_path) as (url, store, _appliance):
        for expires_at, expected in ((time.time() - 1, 401), (time.time() + 3600, 200)):
            token = auth.new_token()
            await store.add_token(auth.token_hash(token), "timed", "noc", None, "write", expires_at)
            async with aiohttp.ClientSession(headers=bearer(token)) as http:
                assert await _status(http, "GET", f"{url}/api/v1/me") == expected
        # Bound to a tenant that is not (or no longer) in the store: nothing to authorize.
        ghost = await add_token(store, "tenant", "gamma", "read")
        async with aiohttp.ClientSession(headers=bearer(ghost)) as http:
            assert await _status(http, "GET", f"{url}/api/v1/me") == 401
        await add_user(store, "gus", "tenant", "gamma", "read")
        session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        async with session:
            form_token = await login_form_token(session, url)
            async with session.post(f"{url}/login", data={"username": "gus", "password": PASSWORD, "next": "/",
                                                          "csrf_token": form_token}, allow_redirects=False) as r:
                assert r.status == 401   # refused at the door, with the reason, instead of a session that loops
                assert "tenant does not exist" in await r.text()
            assert await _status(session, "GET", f"{url}/api/v1/me") == 401


async def _raw_request(url: str, method: str, path: str, header: bytes) -> tuple[int, dict]:
    """One request with `header` sent as raw bytes (HTTP clients encode what they are given):
    the status and the JSON body."""
    split = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(split.hostname, split.port)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: {split.netloc}\r\nContent-Length: 0\r\n"
                     f"Connection: close\r\n".encode() + header + b"\r\n\r\n")
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_item4_a_token_or_session_cookie_that_is_not_utf8_is_a_401_not_a_500(tmp_path):
    """A byte that is no UTF-8 in `Authorization: Bearer` or the session cookie reached the token's
    hash as a surrogate and failed it (UnicodeEncodeError): 500 on every route, the fleet's
    included. It is a token nobody was given: 401, with each route's usual message."""
    from securewatch import fleet_store  # noqa: PLC0415

    async with service(tmp_path) as (url, store, _appliance):
        await store.run(fleet_store.enroll, "ams1", auth.token_hash(auth.new_token()), "test", time.time())
        for method, path, header, message in (
                ("GET", "/api/v1/tenants", b"Authorization: Bearer \xe9", "authentication required"),
                ("GET", "/api/v1/tenants", b"Cookie: sw_session=\xe9", "authentication required"),
                ("GET", "/api/v1/tenants", b"Authorization: Bearer swt_\xff\xfe", "authentication required"),
                ("POST", "/api/v1/fleet/site/ingest", b"Authorization: Bearer \xe9", "unknown or revoked site token"),
                ("POST", "/api/v1/fleet/site/sync", b"Authorization: Bearer \xe9", "unknown or revoked site token")):
            status, body = await _raw_request(url, method, path, header)
            assert (status, body["error"].startswith(message)) == (401, True), (path, header, body)


async def test_item4_users_and_tokens_managed_through_the_api_with_audit_rows(tmp_path):
    async with service(tmp_path) as (url, store, _appliance):
        await add_user(store, "ann", "admin")
        admin = await add_token(store, "admin")
        async with aiohttp.ClientSession(headers=bearer(admin)) as http:
            async with http.post(f"{url}/api/v1/users", json={"name": "bad name", "password": "short",
                                                              "role": "tenant", "access": "all"}) as r:
                assert r.status == 422
                problems = (await r.json())["problems"]
            assert [p.split(":")[0] for p in problems] == ["name", "access", "tenant", "password"], problems
            async with http.post(f"{url}/api/v1/users", json={"name": "tina", "password": "long enough",
                                                              "role": "tenant", "tenant": "zeta"}) as r:
                assert r.status == 422 and (await r.json())["problems"] == ["tenant: no tenant 'zeta'"]
            user = {"name": "tina", "password": "long enough", "role": "tenant", "tenant": "alpha", "access": "write"}
            async with http.post(f"{url}/api/v1/users", json=user) as r:
                assert r.status == 201
                assert (await r.json())["user"]["state"] == "active"
            assert await _status(http, "POST", f"{url}/api/v1/users", json=user) == 409
            async with http.get(f"{url}/api/v1/users") as r:
                text = await r.text()
            assert "argon2" not in text and [u["name"] for u in json.loads(text)["users"]] == ["ann", "tina"]

            tina, _csrf = await login(url, "tina", "long enough")
            async with tina:
                assert await _status(http, "POST", f"{url}/api/v1/users/tina/disable") == 200
                assert await _status(tina, "GET", f"{url}/api/v1/me") == 401
                assert await _status(http, "POST", f"{url}/api/v1/users/tina/enable") == 200
                assert await _status(tina, "GET", f"{url}/api/v1/me") == 401   # disabling ended the session
            tina, _csrf = await login(url, "tina", "long enough")
            async with tina:
                assert await _status(http, "PUT", f"{url}/api/v1/users/tina/password",
                                     json={"password": "short"}) == 422
                assert await _status(http, "PUT", f"{url}/api/v1/users/tina/password",
                                     json={"password": "a new long one"}) == 200
                assert await _status(tina, "GET", f"{url}/api/v1/me") == 401
            tina, _csrf = await login(url, "tina", "a new long one")
            async with tina:
                assert await _status(http, "DELETE", f"{url}/api/v1/users/tina") == 200
                assert await _status(tina, "GET", f"{url}/api/v1/me") == 401
            assert await _status(http, "DELETE", f"{url}/api/v1/users/tina") == 404
            # The last enabled administrator stays (the CLI on the machine can still remove it).
            assert await _status(http, "POST", f"{url}/api/v1/users/ann/disable") == 409
            assert await _status(http, "DELETE", f"{url}/api/v1/users/ann") == 409

            async with http.post(f"{url}/api/v1/tokens", json={"label": "x\r\ny", "expires": "soon"}) as r:
                assert r.status == 422
                assert [p.split(":")[0] for p in (await r.json())["problems"]] == ["role", "label", "expires"]
            async with http.post(f"{url}/api/v1/tokens", json={"role": "noc", "expires": "2020-01-01"}) as r:
                assert r.status == 422 and (await r.json())["problems"] == ["expires: '2020-01-01' is in the past"]
            async with http.post(f"{url}/api/v1/tokens", json={"role": "tenant", "tenant": "alpha",
                                                               "label": "alpha-ci", "expires": 30}) as r:
                assert r.status == 201
                created = await r.json()
            assert created["expires_at"] == pytest.approx(time.time() + 30 * 86400, abs=60)
            async with aiohttp.ClientSession(headers=bearer(created["token"])) as alpha:
                assert await _status(alpha, "GET", f"{url}/api/v1/tenants/alpha") == 200
                assert await _status(http, "DELETE", f"{url}/api/v1/tokens/{created['id']}") == 200
                assert await _status(alpha, "GET", f"{url}/api/v1/tenants/alpha") == 401
            assert await _status(http, "DELETE", f"{url}/api/v1/tokens/999") == 404
            assert await _status(http, "DELETE", f"{url}/api/v1/tokens/%C2%B2") == 404
            async with http.get(f"{url}/api/v1/tokens") as r:
                listed = {t["id"]: t for t in (await r.json())["tokens"]}
            assert listed[created["id"]]["state"] == "revoked" and "token" not in listed[created["id"]]
        actions = [e["action"] for e in await store.audit_log()]
        for action in ("user.add", "user.disable", "user.enable", "user.password", "user.delete",
                       "token.create", "token.revoke"):
            assert action in actions, action


# -- item 4: the CLI, run for real against a temporary SQLite database ---------------------------------

def _config(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "seawall.toml"
    path.write_text(f'[appliance]\nstate_dir = "{tmp_path}"\n[securewatch]\nlisten = "127.0.0.1:0"\n'
                    f'database = "sqlite:///{tmp_path}/sw.db"\n'
                    '[[tenants]]\nid = "alpha"\nprefixes = ["198.51.100.0/25"]\n')
    return path


def seawall(*args: str, stdin: str = "", umask: int = -1) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process (umask -1: inherit ours)."""
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, cwd=REPO, umask=umask)


async def test_item4_cli_token_list_revoke_and_user_list_disable_delete_passwd(tmp_path):
    config = str(_config(tmp_path))
    r = seawall("token", "create", "--role", "tenant", "--tenant", "alpha", "--expires", "30",
                "--label", "alpha-ci", "--config", config)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip().splitlines()[-1]
    r = seawall("token", "create", "--role", "noc", "--expires", "2020-01-01", "--config", config)
    assert r.returncode == 2 and "expires: '2020-01-01' is in the past" in r.stderr
    r = seawall("token", "create", "--role", "noc", "--expires", "2030-06-30", "--config", config)
    assert r.returncode == 0, r.stderr
    r = seawall("token", "list", "--json", "--config", config)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    # alpha is in the config file but not yet in the store (SecureWatch imports it when it starts):
    # until then no principal of alpha's can authenticate, and the list says so.
    assert [(t["id"], t["label"], t["tenant"], t["state"]) for t in listed] == [
        (1, "alpha-ci", "alpha", "no tenant"), (2, "noc", None, "active")]
    assert listed[0]["expires_at"] == pytest.approx(time.time() + 30 * 86400, abs=60)
    assert listed[1]["expires_at"] == datetime.datetime(2030, 6, 30, tzinfo=datetime.UTC).timestamp()
    assert "token_hash" not in r.stdout

    for name, role in (("carol", ["--role", "tenant", "--tenant", "alpha", "--access", "write"]),
                       ("nina", ["--role", "noc"])):
        r = seawall("user", "add", name, *role, "--config", config, stdin="s3cret-passw0rd\n")
        assert r.returncode == 0, r.stderr
    r = seawall("user", "add", "bad name", "--role", "noc", "--config", config, stdin="s3cret-passw0rd\n")
    assert r.returncode == 2 and "name: 'bad name'" in r.stderr

    async with service(tmp_path, database=f"sqlite:///{tmp_path}/sw.db") as (url, _store, _appliance):
        async with aiohttp.ClientSession(headers=bearer(token)) as http:
            assert await _status(http, "GET", f"{url}/api/v1/tenants/alpha") == 200
            r = seawall("token", "revoke", "1", "--config", config)
            assert r.returncode == 0 and "token 1 (alpha-ci) revoked" in r.stdout, r.stderr
            assert await _status(http, "GET", f"{url}/api/v1/tenants/alpha") == 401
        r = seawall("token", "revoke", "99", "--config", config)
        assert r.returncode == 2 and "no token 99" in r.stderr
        r = seawall("token", "list", "--config", config)
        header, first, second = r.stdout.strip().splitlines()
        assert header.split() == ["ID", "LABEL", "ROLE", "TENANT", "ACCESS", "STATE", "CREATED_AT", "LAST_USED",
                                  "EXPIRES_AT"]
        assert first.split()[:6] == ["1", "alpha-ci", "tenant", "alpha", "read", "revoked"]
        assert second.split()[:6] == ["2", "noc", "noc", "-", "write", "active"]

        carol, _csrf = await login(url, "carol", "s3cret-passw0rd")
        async with carol:
            r = seawall("user", "disable", "carol", "--config", config)
            assert r.returncode == 0, r.stderr
            assert await _status(carol, "GET", f"{url}/api/v1/me") == 401
        r = seawall("user", "list", "--json", "--config", config)
        assert [(u["name"], u["state"]) for u in json.loads(r.stdout)] == [("carol", "disabled"), ("nina", "active")]
        assert "argon2" not in r.stdout
        r = seawall("user", "enable", "carol", "--config", config)
        assert r.returncode == 0, r.stderr
        r = seawall("user", "passwd", "carol", "--config", config, stdin="another-passw0rd\n")
        assert r.returncode == 0, r.stderr
        carol, _csrf = await login(url, "carol", "another-passw0rd")
        async with carol:
            r = seawall("user", "list", "--config", config)
            assert r.stdout.splitlines()[0].split() == ["NAME", "ROLE", "TENANT", "ACCESS", "STATE", "CREATED_AT"]
            assert r.stdout.splitlines()[1].split()[:5] == ["carol", "tenant", "alpha", "write", "active"]
            r = seawall("user", "delete", "carol", "--config", config)
            assert r.returncode == 0, r.stderr
            assert await _status(carol, "GET", f"{url}/api/v1/me") == 401
        r = seawall("user", "delete", "carol", "--config", config)
        assert r.returncode == 2 and "no user 'carol'" in r.stderr
        r = seawall("user", "passwd", "nina", "--config", config, stdin="short\n")
        assert r.returncode == 2 and "at least 8 characters" in r.stderr
        actors = {(e["actor"], e["action"]) for e in await _store_audit(tmp_path)}
        for action in ("token.create", "token.revoke", "user.add", "user.disable", "user.enable",
                       "user.password", "user.delete"):
            assert ("cli", action) in actors, action


async def _store_audit(tmp_path: pathlib.Path) -> list[dict]:
    store = await Store.open(f"sqlite:///{tmp_path}/sw.db")
    try:
        return await store.audit_log(limit=1000)
    finally:
        await store.close()


# -- item 7: the database is readable by its owner only ----------------------------------------------------

def _mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_item7_cli_creates_the_database_0600_in_a_0700_directory_whatever_the_umask(tmp_path):
    config = tmp_path / "seawall.toml"
    config.write_text(f'[securewatch]\ndatabase = "sqlite:///{tmp_path}/state/securewatch/sw.db"\n')
    r = seawall("user", "list", "--config", str(config), umask=0o022)
    assert r.returncode == 0, r.stderr
    assert _mode(tmp_path / "state" / "securewatch" / "sw.db") == 0o600
    assert _mode(tmp_path / "state" / "securewatch") == 0o700


async def test_item7_wal_and_shm_are_0600_and_a_readable_file_is_tightened_with_a_warning(tmp_path):
    directory_mode = _mode(tmp_path)
    store = await Store.open(f"sqlite:///{tmp_path}/fresh.db")
    try:
        await store.audit("test", "write")   # the WAL and its index exist while the database is open
        for suffix in ("", "-wal", "-shm"):
            assert _mode(tmp_path / f"fresh.db{suffix}") == 0o600, suffix
    finally:
        await store.close()
    assert _mode(tmp_path) == directory_mode   # an existing directory is not Seawall's to change

    old = tmp_path / "old.db"
    store = await Store.open(f"sqlite:///{old}")
    await store.close()
    old.chmod(0o644)
    with structlog.testing.capture_logs() as logs:
        store = await Store.open(f"sqlite:///{old}")
        await store.close()
    assert _mode(old) == 0o600
    assert {"event": "store.permissions_tightened", "path": str(old), "was": "0o644", "now": "0o600",
            "log_level": "warning"} in logs


@pytest.mark.parametrize("kind", ["directory", "fifo", "wal directory"])
def test_item7_cli_refuses_a_database_that_is_not_a_regular_file_and_changes_nothing(tmp_path, kind):
    """A [securewatch] database naming an existing directory (a FIFO, a device...) was chmodded
    0600 before SQLite failed on it: a shared 1777 directory lost its sticky bit and everyone's
    access. Refused, naming the path, and its mode left as it was; the same for a -wal or -shm."""
    target = tmp_path / "sw.db"
    if kind == "directory":
        target.mkdir()
        target.chmod(0o1777)
    elif kind == "fifo":
        os.mkfifo(target)
        target.chmod(0o644)
    else:
        target.touch(mode=0o600)
        target = tmp_path / "sw.db-wal"
        target.mkdir()
        target.chmod(0o755)
    before = target.stat().st_mode
    config = tmp_path / "seawall.toml"
    config.write_text(f'[securewatch]\ndatabase = "sqlite:///{tmp_path}/sw.db"\n')
    r = seawall("token", "list", "--config", str(config))
    assert r.returncode == 2 and f"{target} is not a regular file" in r.stderr, r.stderr
    assert target.stat().st_mode == before


def test_item7_systemd_unit_keeps_state_private():
    unit = (REPO / "appliance" / "systemd" / "seawall.service").read_text().splitlines()
    assert "UMask=0077" in unit and "StateDirectoryMode=0700" in unit


# -- item 10: a tenant sees roles, not operator names, and no internal notes ---------------------------------

async def test_item10_tenant_sees_roles_not_names_and_never_internal_notes(tmp_path):
    async with service(tmp_path) as (url, store, _appliance):
        for e in attack_events("inc-alpha-1", tenant="alpha"):
            await store.record_event(e.to_dict())
        await add_user(store, "zoe-admin", "admin")
        await add_user(store, "carol", "tenant", "alpha", "write")
        noc = await add_token(store, "noc")
        alpha_ro = await add_token(store, "tenant", "alpha", "read")
        zoe, zoe_csrf = await login(url, "zoe-admin")
        carol, carol_csrf = await login(url, "carol")
        incident = f"{url}/api/v1/incidents/inc-alpha-1"
        async with zoe, carol, aiohttp.ClientSession(headers=bearer(noc)) as noc_http, \
                aiohttp.ClientSession(headers=bearer(alpha_ro)) as alpha:
            zh = {"X-CSRF-Token": zoe_csrf}
            assert await _status(zoe, "POST", f"{incident}/acknowledge", headers=zh) == 200
            assert await _status(zoe, "POST", f"{incident}/notes", headers=zh, json={"text": "filter active"}) == 201
            assert await _status(zoe, "POST", f"{incident}/notes", headers=zh,
                                 json={"text": "SECRET upstream is Acme", "internal": True}) == 201
            assert await _status(zoe, "POST", f"{incident}/notes", headers=zh,
                                 json={"text": "x", "internal": "yes"}) == 400
            assert await _status(zoe, "PUT", f"{url}/api/v1/tenants/alpha/policy", headers=zh,
                                 json={"mode": "monitor"}) == 200
            assert await _status(noc_http, "POST", f"{incident}/notes", json={"text": "NOC watching"}) == 201
            ch = {"X-CSRF-Token": carol_csrf}
            assert await _status(carol, "POST", f"{incident}/notes", headers=ch, json={"text": "thanks"}) == 201
            assert await _status(carol, "POST", f"{incident}/notes", headers=ch,
                                 json={"text": "hidden?", "internal": True}) == 403

            async with alpha.get(incident) as r:
                text = await r.text()
            seen = json.loads(text)
            assert seen["acknowledged_by"] == "operator"
            assert [(n["author"], n["text"]) for n in seen["notes"]] == [
                ("operator", "filter active"), ("NOC", "NOC watching"), ("carol", "thanks")]
            assert "zoe" not in text and "test-noc" not in text and "SECRET" not in text
            async with alpha.get(f"{url}/api/v1/incidents") as r:
                assert [i["acknowledged_by"] for i in (await r.json())["incidents"]] == ["operator"]
            async with alpha.get(f"{url}/api/v1/tenants/alpha/versions") as r:
                text = await r.text()
            assert "zoe" not in text and {v["created_by"] for v in json.loads(text)["versions"]} == {"operator"}

            async with noc_http.get(incident) as r:   # the NOC sees every name and the internal note
                full = await r.json()
            assert full["acknowledged_by"] == "zoe-admin"
            assert [(n["author"], n["internal"]) for n in full["notes"]][:2] == [
                ("zoe-admin", False), ("zoe-admin", True)]

            # The rendered pages: the tenant's has no names, no internal note, no "internal" box.
            async with carol.get(f"{url}/incidents/inc-alpha-1") as r:
                page = await r.text()
            assert "zoe" not in page and "SECRET" not in page and 'name="internal"' not in page
            assert "operator" in page and "NOC watching" in page and "carol" in page
            async with carol.get(f"{url}/tenants/alpha") as r:
                assert "zoe" not in await r.text()
            async with zoe.get(f"{url}/incidents/inc-alpha-1") as r:
                page = await r.text()
            assert 'name="internal"' in page and "SECRET upstream is Acme" in page and "zoe-admin" in page
            async with zoe.post(f"{url}/incidents/inc-alpha-1/notes", allow_redirects=False,
                                data={"csrf_token": zoe_csrf, "text": "UI-INTERNAL ticket 42", "internal": "on"}) as r:
                assert r.status == 302
            async with carol.get(f"{url}/incidents/inc-alpha-1") as r:
                assert "UI-INTERNAL" not in await r.text()
            notes = await store.incident_notes("inc-alpha-1")
            assert (notes[-1]["text"], notes[-1]["internal"]) == ("UI-INTERNAL ticket 42", True)


# -- item 18 (part): the audit log, page by page ------------------------------------------------------------

async def test_item18_audit_api_paginates_with_a_next_link(tmp_path):
    async with service(tmp_path) as (url, store, _appliance):
        for i in range(450):
            await store.audit("test", f"step.{i}", tenant="alpha" if i % 3 == 0 else None)
        expected = [e["id"] for e in await store.audit_log(limit=10_000)]
        noc = await add_token(store, "noc")
        async with aiohttp.ClientSession(headers=bearer(noc)) as http:
            seen: list[int] = []
            pages = []
            nxt: str | None = "/api/v1/audit"
            while nxt is not None:
                async with http.get(f"{url}{nxt}") as r:
                    assert r.status == 200
                    body = await r.json()
                pages.append(len(body["entries"]))
                seen += [e["id"] for e in body["entries"]]
                nxt = body["next"]
            assert pages == [200, 200, len(expected) - 400] and seen == expected

            async with http.get(f"{url}/api/v1/audit", params={"tenant": "alpha", "limit": "100"}) as r:
                body = await r.json()
            assert len(body["entries"]) == 100 and {e["tenant"] for e in body["entries"]} == {"alpha"}
            async with http.get(f"{url}{body['next']}") as r:
                rest = await r.json()
            assert len(rest["entries"]) == 50 and rest["next"] is None
            assert {e["tenant"] for e in rest["entries"]} == {"alpha"}
            for bad in ({"limit": "5000"}, {"limit": "0"}, {"limit": "x"}, {"before": "²"}):
                async with http.get(f"{url}/api/v1/audit", params=bad) as r:
                    assert r.status == 400, bad
                    assert (await r.json())["error"].startswith(next(iter(bad)))
