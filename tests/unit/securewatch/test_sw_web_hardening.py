"""Issue 12, items 6 and 9: PCAP downloads confined in every mode; security headers on every
response, and pages that need no inline script or style (so the CSP can forbid them)."""

from __future__ import annotations

import html.parser
import pathlib

import aiohttp
import pytest
from test_sw_helpers import (
    TENANTS,
    InMemoryAppliance,
    add_token,
    add_user,
    attack_events,
    login,
    service,
    settings,
)

from securewatch.server import start_server
from securewatch.store import Store
from tenants import TenantSet

# -- item 6: PCAP downloads -------------------------------------------------------------------------


async def _record_incident(database: str, pcap_path: str | None, pcap_dir: pathlib.Path) -> str:
    """An incident in the store whose dropped-packet capture is `pcap_path`; returns an admin token."""
    store = await Store.open(database)
    try:
        for event in attack_events(pcap_dir=pcap_dir):
            record = event.to_dict()
            if pcap_path is not None and record["details"].get("pcap"):
                record["details"]["pcap"]["dropped"]["path"] = pcap_path
            await store.record_event(record)
        return await add_token(store, "admin")
    finally:
        await store.close()


async def _get_pcap(url: str, token: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.get(f"{url}/api/v1/incidents/inc-alpha-1/pcap/dropped") as r:
        return r.status, await r.read()


@pytest.mark.parametrize("stored_path", ["/etc/passwd", "capture-in-the-working-dir"])
async def test_item6_central_mode_serves_no_pcap_whatever_path_an_incident_names(tmp_path, stored_path):
    sw_settings = settings(tmp_path)
    token = await _record_incident(sw_settings.database, stored_path if stored_path.startswith("/") else None,
                                   tmp_path)
    async with start_server(sw_settings) as url:       # how serve_central runs it: no state directory
        status, body = await _get_pcap(url, token)
    assert status == 404 and b"root:" not in body and b"\xd4\xc3\xb2\xa1" not in body


async def test_item6_appliance_mode_serves_captures_under_its_state_dir_only(tmp_path):
    sw_settings = settings(tmp_path)
    pcap_dir = tmp_path / "state" / "pcap"
    pcap_dir.mkdir(parents=True)
    appliance = InMemoryAppliance(TenantSet.from_dicts(TENANTS))
    token = await _record_incident(sw_settings.database, None, pcap_dir)
    async with start_server(sw_settings, appliance=appliance, state_dir=tmp_path / "state") as url:
        status, body = await _get_pcap(url, token)
        assert status == 200 and body.startswith(b"\xd4\xc3\xb2\xa1")
    await _record_incident(sw_settings.database, "/etc/passwd", pcap_dir)   # the same incident, moved
    async with start_server(sw_settings, appliance=appliance, state_dir=tmp_path / "state") as url:
        status, body = await _get_pcap(url, token)
        assert status == 404 and b"root:" not in body


# -- item 9: headers on every response, no inline script or style -----------------------------------------

EXPECTED_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def check_headers(path: str, headers) -> None:
    for name, value in EXPECTED_HEADERS.items():
        assert headers.get(name) == value, (path, name, headers.get(name))
    csp = headers.get("Content-Security-Policy", "")
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives.get("frame-ancestors") == ["'none'"], (path, csp)
    assert directives.get("script-src") == ["'self'"] and directives.get("style-src") == ["'self'"], (path, csp)
    assert directives.get("object-src") == ["'none'"] and "'unsafe-inline'" not in csp, (path, csp)


class InlineFinder(html.parser.HTMLParser):
    """What a CSP without 'unsafe-inline' would block: inline scripts, styles, handlers, javascript: URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        names = dict(attrs)
        if tag == "script" and not names.get("src"):
            self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style> element")
        for name, value in attrs:
            if name.startswith("on"):
                self.found.append(f"{tag} {name}= handler")
            if name == "style":
                self.found.append(f"{tag} style= attribute")
            if name in ("href", "src", "action", "formaction") and (value or "").strip().lower().startswith(
                    "javascript:"):
                self.found.append(f"{tag} {name}=javascript:")


PAGES = ["/", "/tenants", "/tenants/alpha", "/incidents", "/incidents/inc-alpha-1", "/reports", "/notify",
         "/api/v1/tenants/alpha/reports/2025-01?format=html", "/no/such/page", "/incidents/inc-none"]


async def test_item9_every_response_carries_the_security_headers_and_pages_have_no_inline_code(tmp_path):
    async with service(tmp_path, pcap_root=tmp_path) as (url, store, _):
        await add_user(store, "ops", "admin")
        for event in attack_events(pcap_dir=tmp_path):
            await store.record_event(event.to_dict())
        async with aiohttp.ClientSession() as anon:
            for path, status in (("/login", 200), ("/static/securewatch.css", 200), ("/static/dashboard.js", 200),
                                 ("/static/nosuch.css", 404), ("/incidents", 302), ("/api/v1/tenants", 401),
                                 ("/api/v1/openapi.json", 200), ("/metrics", 401)):
                async with anon.get(f"{url}{path}", allow_redirects=False) as r:
                    assert r.status == status, (path, r.status)
                    check_headers(path, r.headers)
            async with anon.post(f"{url}/login", data={}, allow_redirects=False) as r:
                assert r.status == 403
                check_headers("POST /login", r.headers)
        http, _csrf = await login(url, "ops")
        async with http:
            for path in PAGES:
                async with http.get(f"{url}{path}", allow_redirects=False) as r:
                    text = await r.text()
                    assert r.status in (200, 404), (path, r.status)
                    check_headers(path, r.headers)
                    finder = InlineFinder()
                    finder.feed(text)
                    assert finder.found == [], (path, finder.found)
            async with http.get(f"{url}/api/v1/incidents/inc-alpha-1/pcap/dropped") as r:
                assert r.status == 200
                check_headers("pcap", r.headers)
            async with http.delete(f"{url}/login") as r:
                assert r.status == 405
                check_headers("DELETE /login", r.headers)
