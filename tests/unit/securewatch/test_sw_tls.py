"""Issue 12, item 9: HTTPS ([securewatch] tls_cert/tls_key), Secure cookies, the reverse-proxy mode
([securewatch] trusted_proxies), checked in the config file and with real HTTPS requests."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import pathlib
import ssl
import subprocess
import sys

import aiohttp
import pytest
from test_sw_helpers import PASSWORD, add_user, login_form_token, running_app, settings

from appliance.config import parse_config
from securewatch import app as sw
from securewatch.server import start_server
from securewatch.store import Store
from tenants import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[3]
CLI_START_TIMEOUT_S = 60.0     # seconds for `seawall securewatch` to print its URL


def openssl(directory: pathlib.Path, *args: str) -> None:
    # scripts/bootstrap.sh installs Debian's openssl: no skip, a missing command fails the test.
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory, timeout=60)


def self_signed(directory: pathlib.Path, name: str = "server") -> tuple[pathlib.Path, pathlib.Path]:
    """A throwaway self-signed certificate for 127.0.0.1 and its key, made by openssl."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key.name, "-out", cert.name, "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    return cert, key


def client_context(cert: pathlib.Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.problems


# -- the config keys ---------------------------------------------------------------------------

def test_tls_and_proxy_keys_parse(tmp_path):
    cert, key = self_signed(tmp_path)
    config = parse_config(f'[securewatch]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
                          f'trusted_proxies = ["127.0.0.1", "10.0.0.0/24", "::1"]\nsecure_cookies = true\n')
    sw_settings = config.securewatch
    assert (sw_settings.tls_cert, sw_settings.tls_key, sw_settings.tls) == (cert, key, True)
    assert sw_settings.trusted_proxies == tuple(ipaddress.ip_network(n) for n in ("127.0.0.1", "10.0.0.0/24", "::1"))
    assert sw_settings.secure_cookies is True
    assert isinstance(sw_settings.ssl_context(), ssl.SSLContext)
    default = parse_config("").securewatch
    assert (default.tls, default.trusted_proxies, default.secure_cookies, default.ssl_context()) == (
        False, (), False, None)


def test_tls_key_problems_are_reported_at_config_time_naming_the_key(tmp_path):
    cert, key = self_signed(tmp_path)
    other_cert, other_key = self_signed(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    openssl(tmp_path, "pkey", "-in", key.name, "-out", encrypted.name, "-aes256", "-passout", "pass:secret")
    cases = {
        f'tls_cert = "{cert}"': ["[securewatch] tls_key: required with tls_cert"],
        f'tls_key = "{key}"': ["[securewatch] tls_cert: required with tls_key"],
        f'tls_cert = "{tmp_path}/missing.pem"\ntls_key = "{key}"': [
            f"[securewatch] tls_cert: cannot read '{tmp_path}/missing.pem': No such file or directory"],
        f'tls_cert = "cert.pem"\ntls_key = "{key}"': ["[securewatch] tls_cert: 'cert.pem' is not an absolute path"],
        f'tls_cert = "{garbage}"\ntls_key = "{key}"': [f"[securewatch] tls_cert: '{garbage}' holds no PEM certificate"],
        f'tls_cert = "{key}"\ntls_key = "{key}"': [f"[securewatch] tls_cert: '{key}' holds no PEM certificate"],
        f'tls_cert = "{cert}"\ntls_key = "{other_key}"': [
            f"[securewatch] tls_key: '{other_key}' does not load as the unencrypted PEM private key of '{cert}'"],
        f'tls_cert = "{cert}"\ntls_key = "{encrypted}"': [
            f"[securewatch] tls_key: '{encrypted}' does not load as the unencrypted PEM private key of '{cert}'"],
        f'tls_cert = "{cert}"\ntls_key = "{tmp_path}"': [f"[securewatch] tls_key: cannot read '{tmp_path}'"],
        'trusted_proxies = "127.0.0.1"': ["[securewatch] trusted_proxies: expected a list"],
        'trusted_proxies = ["127.0.0.1", "proxy.example", 7]': [
            "[securewatch] trusted_proxies[1]: 'proxy.example' is not an IP address or network",
            "[securewatch] trusted_proxies[2]: 7 is not an IP address or network"],
        'secure_cookies = "yes"': ["[securewatch] secure_cookies: expected true or false"],
    }
    assert other_cert.exists()
    for body, expected in cases.items():
        problems = problems_of(f"[securewatch]\n{body}\n")
        assert len(problems) == len(expected), (body, problems)
        for problem, start in zip(problems, expected, strict=True):
            assert problem.startswith(start), (body, problem)


# -- HTTPS ---------------------------------------------------------------------------------------

async def test_https_served_with_secure_cookies_and_refused_in_plain_http(tmp_path):
    cert, key = self_signed(tmp_path)
    tls_settings = dataclasses.replace(settings(tmp_path), tls_cert=cert, tls_key=key)
    store = await Store.open(tls_settings.database)
    await add_user(store, "ops", "admin")
    await store.close()
    async with start_server(tls_settings) as url:
        assert url.startswith("https://127.0.0.1:")
        connector = aiohttp.TCPConnector(ssl=client_context(cert))
        async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(f"{url}/login") as r:
                assert r.status == 200
                assert "Secure" in r.headers["Set-Cookie"] and "sw_login_csrf=" in r.headers["Set-Cookie"]
            token = await login_form_token(http, url)
            async with http.post(f"{url}/login", data={"username": "ops", "password": PASSWORD, "csrf_token": token},
                                 allow_redirects=False) as r:
                assert r.status == 302
                session_cookie = next(c for c in r.headers.getall("Set-Cookie") if c.startswith("sw_session="))
                assert "; Secure" in session_cookie
            async with http.get(f"{url}/api/v1/me") as r:
                assert r.status == 200 and (await r.json())["name"] == "ops"
        plain = url.replace("https://", "http://")
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"{plain}/login") as r:
                    await r.read()


async def test_seawall_securewatch_serves_https(tmp_path):
    cert, key = self_signed(tmp_path)
    config = tmp_path / "seawall.toml"
    config.write_text(f'[appliance]\nstate_dir = "{tmp_path}"\n[securewatch]\nlisten = "127.0.0.1:0"\n'
                      f'database = "sqlite:///{tmp_path}/sw.db"\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "securewatch", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        url = await _listening_url(proc)
        assert url.startswith("https://127.0.0.1:")
        connector = aiohttp.TCPConnector(ssl=client_context(cert))
        async with aiohttp.ClientSession(connector=connector) as http, http.get(f"{url}/login") as r:
            assert r.status == 200 and "Log in" in await r.text()
            assert r.headers["X-Frame-Options"] == "DENY"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=30)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


async def _listening_url(proc: subprocess.Popen) -> str:
    import asyncio

    def first_url() -> str:
        seen = []
        for line in proc.stderr:   # the banner goes to stderr (stdout is the log), once serving
            if "SecureWatch listening on " in line:
                return line.split("listening on ", 1)[1].split()[0]
            seen.append(line)
        raise AssertionError(f"exited {proc.poll()} without a URL: {seen} {proc.stdout.read()}")

    return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, first_url), CLI_START_TIMEOUT_S)


def test_seawall_securewatch_refuses_a_half_tls_config_naming_the_key(tmp_path):
    cert, _ = self_signed(tmp_path)
    config = tmp_path / "seawall.toml"
    config.write_text(f'[securewatch]\nlisten = "127.0.0.1:0"\ndatabase = "sqlite:///{tmp_path}/sw.db"\n'
                      f'tls_cert = "{cert}"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "appliance.cli", "securewatch", "--config", str(config)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "[securewatch] tls_key: required with tls_cert" in done.stderr
    assert "Traceback" not in done.stderr


# -- behind a reverse proxy ------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def app_with(tmp_path, **changes):
    store = await Store.open(f"sqlite:///{tmp_path}/sw.db")
    try:
        await add_user(store, "ops", "admin")
        app = sw.create_app(dataclasses.replace(settings(tmp_path), **changes), store=store, appliance=None)
        async with running_app(app) as url:
            yield url, store
    finally:
        await store.close()


async def _login_cookie(url: str, headers: dict[str, str]) -> tuple[str, str]:
    """Log in over plain HTTP with these headers; (the session's Set-Cookie, the audited remote)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        token = await login_form_token(http, url)
        async with http.post(f"{url}/login", data={"username": "ops", "password": PASSWORD, "csrf_token": token},
                             headers=headers, allow_redirects=False) as r:
            assert r.status == 302
            return next(c for c in r.headers.getall("Set-Cookie") if c.startswith("sw_session="))


FORWARDED = {"X-Forwarded-For": "203.0.113.77", "X-Forwarded-Proto": "https"}


async def test_forwarded_headers_are_believed_only_from_trusted_proxies(tmp_path):
    async with app_with(tmp_path) as (url, store):
        cookie = await _login_cookie(url, FORWARDED)
        assert "Secure" not in cookie          # anyone could have written those headers
        assert (await store.audit_log())[0]["remote"] == "127.0.0.1"
    async with app_with(tmp_path / "proxied", trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),)) \
            as (url, store):
        cookie = await _login_cookie(url, FORWARDED)
        assert "; Secure" in cookie
        assert (await store.audit_log())[0]["remote"] == "203.0.113.77"
        cookie = await _login_cookie(url, {"X-Forwarded-For": "203.0.113.78", "X-Forwarded-Proto": "http"})
        assert "Secure" not in cookie
        assert (await store.audit_log())[0]["remote"] == "203.0.113.78"
        await _login_cookie(url, {"X-Forwarded-For": "not-an-address"})
        assert (await store.audit_log())[0]["remote"] == "127.0.0.1"


async def test_secure_cookies_setting_marks_cookies_secure_over_plain_http(tmp_path):
    """For a TLS proxy that does not say so: the browser speaks HTTPS, we see plain HTTP."""
    async with app_with(tmp_path, secure_cookies=True) as (url, _), \
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get(f"{url}/login") as r:
            login_cookie = r.headers["Set-Cookie"]
            page = await r.text()
        assert login_cookie.startswith("sw_login_csrf=") and "; Secure" in login_cookie
        token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        async with http.post(f"{url}/login", data={"username": "ops", "password": PASSWORD, "csrf_token": token},
                             headers={"Cookie": f"sw_login_csrf={token}"}, allow_redirects=False) as r:
            assert r.status == 302
            assert "; Secure" in next(c for c in r.headers.getall("Set-Cookie") if c.startswith("sw_session="))
