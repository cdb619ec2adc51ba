"""The REST API on a real loopback server: tenants CRUD with validation, policies applied to the
(in-memory) appliance, incidents, traffic, reports, OpenAPI coverage, central mode, CSRF, login limits."""

from __future__ import annotations

import csv
import io
import time

import aiohttp
from test_sw_helpers import add_token, add_user, attack_events, login, login_form_token, service

from policy.events import EventBus
from securewatch.app import create_app
from securewatch.openapi import openapi_document
from securewatch.store import Store
from tests.support import await_until


async def _json(r):
    return r.status, await r.json()


async def test_tenant_crud_validation_and_apply(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            status, body = await _json(await http.get(f"{url}/api/v1/tenants"))
            assert status == 200 and [t["id"] for t in body["tenants"]] == ["alpha", "beta"]  # imported at start

            status, body = await _json(await http.post(f"{url}/api/v1/tenants", json={
                "id": "gamma", "prefixes": ["198.51.100.0/24"], "policy": {"sensitivity": 50}}))
            assert status == 422
            assert any("prefixes[0]" in p and "overlaps" in p for p in body["problems"]), body
            assert any("policy.sensitivity" in p for p in body["problems"]), body
            assert "gamma" not in appliance.tenants  # nothing applied

            status, body = await _json(await http.post(f"{url}/api/v1/tenants", json={"id": "alpha", "prefixes": []}))
            assert status == 409 and "already exists" in body["error"]
            r = await http.post(f"{url}/api/v1/tenants", data=b"{not json", headers={"Content-Type": "application/json"})
            assert r.status == 400 and "not JSON" in (await r.json())["error"]

            status, body = await _json(await http.post(f"{url}/api/v1/tenants", json={
                "id": "gamma", "name": "Gamma", "prefixes": ["192.0.2.0/26"]}))
            assert status == 201 and body["applied"] is True
            assert "gamma" in appliance.tenants

            status, body = await _json(await http.put(f"{url}/api/v1/tenants/gamma/policy", json={
                "mode": "monitor", "policy": {"min_pps": 5000}, "deny": [{"src": "198.18.0.0/15"}]}))
            assert status == 200, body
            applied = appliance.tenants["gamma"]
            assert applied.mode == "monitor" and applied.policy.min_pps == 5000 and str(applied.deny[0]) == "src=198.18.0.0/15"

            status, body = await _json(await http.put(f"{url}/api/v1/tenants/gamma/policy", json={
                "policy": {"reflection_filter": "sometimes"}}))
            assert status == 422 and "policy.reflection_filter" in body["problems"][0]
            status, body = await _json(await http.put(f"{url}/api/v1/tenants/gamma/policy", json={"colour": "red"}))
            assert status == 422 and body["problems"] == ["colour: unknown key (known: mode, policy, allow, deny, prefixes, contacts)"]

            status, body = await _json(await http.get(f"{url}/api/v1/tenants/gamma/versions"))
            assert [v["action"] for v in body["versions"]] == ["policy.update", "tenant.create"]

            status, body = await _json(await http.delete(f"{url}/api/v1/tenants/gamma"))
            assert status == 200 and "gamma" not in appliance.tenants
            assert (await http.get(f"{url}/api/v1/tenants/gamma")).status == 404

            status, body = await _json(await http.get(f"{url}/api/v1/audit"))
            actions = [e["action"] for e in body["entries"]]
            assert actions[:3] == ["tenant.delete", "policy.update", "tenant.create"]
            assert all(e["actor"].startswith("token:") and e["remote"] == "127.0.0.1" for e in body["entries"][:3])


async def test_incidents_ingested_from_bus_filters_detail_ack_notes_pcap(tmp_path):
    bus = EventBus()
    async with service(tmp_path, bus=bus, pcap_root=tmp_path) as (url, store, _):
        for e in attack_events(pcap_dir=tmp_path):
            bus.publish(e)
        bus.publish(attack_events("inc-beta-1", tenant="beta", target="203.0.113.5")[0])
        await await_until(lambda: store.incident("inc-beta-1"), what="events stored")
        noc = {"Authorization": f"Bearer {await add_token(store, 'noc')}"}
        async with aiohttp.ClientSession(headers=noc) as http:
            _, body = await _json(await http.get(f"{url}/api/v1/incidents", params={"state": "active"}))
            assert [i["id"] for i in body["incidents"]] == ["inc-beta-1"]
            _, body = await _json(await http.get(f"{url}/api/v1/incidents", params={"tenant": "alpha", "vector": "syn_flood"}))
            assert [i["id"] for i in body["incidents"]] == ["inc-alpha-1"]
            _, body = await _json(await http.get(f"{url}/api/v1/incidents", params={"since": "2999-01-01T00:00:00"}))
            assert body["incidents"] == []
            r = await http.get(f"{url}/api/v1/incidents", params={"state": "sleeping"})
            assert r.status == 400

            _, detail = await _json(await http.get(f"{url}/api/v1/incidents/inc-alpha-1"))
            assert detail["state"] == "ended" and len(detail["timeline"]) == 10 and detail["efficacy"] == 0.97
            assert detail["details"]["rules"][0]["id"] == 7
            r = await http.get(f"{url}{detail['pcaps']['dropped']['url']}")
            assert r.status == 200 and (await r.read()).startswith(b"\xd4\xc3\xb2\xa1")
            assert (await http.get(f"{url}/api/v1/incidents/inc-alpha-1/pcap/passed")).status == 404

            assert (await http.post(f"{url}/api/v1/incidents/inc-alpha-1/acknowledge")).status == 200
            r = await http.post(f"{url}/api/v1/incidents/inc-alpha-1/notes", json={"text": "  "})
            assert r.status == 400
            r = await http.post(f"{url}/api/v1/incidents/inc-alpha-1/notes", json={"text": "called upstream"})
            assert r.status == 201
            _, detail = await _json(await http.get(f"{url}/api/v1/incidents/inc-alpha-1"))
            assert detail["acknowledged_by"].startswith("token:") and detail["notes"][0]["text"] == "called upstream"


async def test_pcap_outside_root_is_not_served(tmp_path):
    root = tmp_path / "pcap"
    root.mkdir()
    async with service(tmp_path, pcap_root=root) as (url, store, _):
        for e in attack_events(pcap_dir=tmp_path):  # written outside the pcap root
            await store.record_event(e.to_dict())
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            assert (await http.get(f"{url}/api/v1/incidents/inc-alpha-1/pcap/dropped")).status == 404


async def test_traffic_sampled_from_appliance_and_reports(tmp_path, monkeypatch):
    monkeypatch.setattr("securewatch.app.TRAFFIC_POLL_S", 0.05)
    now = int(time.time())
    async with service(tmp_path) as (url, store, appliance):
        appliance.series["alpha"] = [{"time": now - 30 + i, "passed_pps": 1000.0, "dropped_pps": 50.0 * (i % 3),
                                      "passed_bps": 8e6, "dropped_bps": 4e5} for i in range(30)]
        await await_until(lambda: store.last_traffic_time("alpha"), what="traffic sampled")
        for e in attack_events(t0=now - 100):
            await store.record_event(e.to_dict())
        token = {"Authorization": f"Bearer {await add_token(store, 'tenant', 'alpha')}"}
        async with aiohttp.ClientSession(headers=token) as http:
            _, body = await _json(await http.get(f"{url}/api/v1/tenants/alpha/traffic", params={"seconds": "60"}))
            assert body["resolution"] == "second" and len(body["series"]) == 30
            assert (await http.get(f"{url}/api/v1/tenants/alpha/traffic", params={"seconds": "x"})).status == 400

            month = time.strftime("%Y-%m", time.gmtime(now - 100))
            _, report = await _json(await http.get(f"{url}/api/v1/tenants/alpha/reports/{month}"))
            assert report["summary"]["attacks"] == 1 and report["summary"]["packets_dropped"] == 400000
            assert report["vectors"] == {"syn_flood": 1}
            assert report["targets"][0]["address"] == "198.51.100.10"
            r = await http.get(f"{url}/api/v1/tenants/alpha/reports/{month}", params={"format": "csv"})
            rows = list(csv.reader(io.StringIO(await r.text())))
            assert r.headers["Content-Disposition"].endswith(f'{month}.csv"')
            attack_rows = [row for row in rows if row[:1] == ["attack"]]
            assert [row[1] for row in attack_rows] == ["incident", "inc-alpha-1"]
            r = await http.get(f"{url}/api/v1/tenants/alpha/reports/{month}", params={"format": "html"})
            assert "Most attacked" in await r.text()
            assert (await http.get(f"{url}/api/v1/tenants/alpha/reports/2025-13")).status == 400
            _, status = await _json(await http.get(f"{url}/api/v1/status"))
            assert list(status["tenants"]) == ["alpha"] and "notifiers" not in status  # scoped


async def test_openapi_documents_exactly_the_routes(tmp_path):
    store = await Store.open(f"sqlite:///{tmp_path}/o.db")
    try:
        from test_sw_helpers import settings  # noqa: PLC0415
        app = create_app(settings(tmp_path), store=store)
        routes = {(res.canonical, route.method.lower()) for res in app.router.resources()
                  if res.canonical.startswith("/api/") or res.canonical == "/metrics"
                  for route in res if route.method != "HEAD"}
        documented = {(path, method) for path, ops in openapi_document()["paths"].items() for method in ops}
        assert routes == documented
    finally:
        await store.close()


async def test_central_mode_answers_503_for_status_and_apply(tmp_path):
    async with service(tmp_path, appliance=None) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            status, body = await _json(await http.get(f"{url}/api/v1/status"))
            assert status == 503 and "central server" in body["error"]
            assert (await http.post(f"{url}/api/v1/apply")).status == 503
            status, body = await _json(await http.put(f"{url}/api/v1/tenants/beta/policy", json={"mode": "mitigate"}))
            assert status == 200 and body["applied"] is False and body["mode"] == "mitigate"


async def test_session_api_needs_csrf_header_and_unauthenticated_is_401(tmp_path):
    async with service(tmp_path) as (url, store, _):
        await add_user(store, "ops", "admin")
        async with aiohttp.ClientSession() as anon:
            r = await anon.get(f"{url}/api/v1/tenants")
            assert r.status == 401 and "authentication required" in (await r.json())["error"]
            r = await anon.get(f"{url}/api/v1/tenants", headers={"Authorization": "Bearer swt_bogus"})
            assert r.status == 401
            r = await anon.get(f"{url}/incidents", allow_redirects=False)
            assert r.status == 302 and r.headers["Location"].startswith("/login")
        http, csrf = await login(url, "ops")
        async with http:
            assert (await http.get(f"{url}/api/v1/me")).status == 200
            r = await http.put(f"{url}/api/v1/tenants/beta/policy", json={"mode": "mitigate"})
            assert r.status == 403 and "X-CSRF-Token" in (await r.json())["error"]
            r = await http.put(f"{url}/api/v1/tenants/beta/policy", json={"mode": "mitigate"},
                               headers={"X-CSRF-Token": csrf})
            assert r.status == 200
            r = await http.post(f"{url}/tenants/beta", data={"mode": "monitor"})  # form without its token
            assert r.status == 403


async def test_login_rate_limited(tmp_path):
    async with service(tmp_path) as (url, store, _):
        await add_user(store, "ops", "admin")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            token = await login_form_token(http, url)
            statuses = []
            for _ in range(6):
                r = await http.post(f"{url}/login", data={"username": "ops", "password": "wrong-password",
                                                          "csrf_token": token}, allow_redirects=False)
                statuses.append(r.status)
            assert statuses == [401] * 5 + [429]
            r = await http.post(f"{url}/login", data={"username": "ops", "password": "correct horse battery",
                                                      "csrf_token": token}, allow_redirects=False)
            assert r.status == 429  # even the right password waits out the window
        _, body = await _json_entries(store)
        assert body.count("login.failed") == 5 and "login.throttled" in body


async def _json_entries(store):
    entries = await store.audit_log()
    return None, [e["action"] for e in entries]


async def test_store_edits_win_over_appliance_at_start(tmp_path):
    from test_sw_helpers import TENANTS, InMemoryAppliance, running_app, settings  # noqa: PLC0415

    from tenants import TenantSet  # noqa: PLC0415

    store = await Store.open(f"sqlite:///{tmp_path}/w.db")
    try:
        edited = TenantSet.from_dicts([dict(TENANTS[0], mode="monitor"), TENANTS[1]])
        await store.save_tenant_set(edited, "alice", "policy.update")
        appliance = InMemoryAppliance(TenantSet.from_dicts(TENANTS))
        async with running_app(create_app(settings(tmp_path), store=store, appliance=appliance)):
            assert appliance.tenants == edited
    finally:
        await store.close()
