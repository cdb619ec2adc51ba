"""Issue 16, the trial's findings (item 6, quality bar), on a real loopback server with real SQLite:
numbers with thousands separators and units, times that the browser shows in the viewer's zone
(UTC on hover), styled error pages, no operator banner for tenant users, save messages that say
what really happened, and audit rows that carry the field-level diff of a tenant change."""

from __future__ import annotations

import re

import aiohttp
from test_sw_helpers import add_token, add_user, attack_events, login, service

from securewatch import formatting
from securewatch.ui import POLICY_BOOL_FIELDS, POLICY_INT_FIELDS
from tenants.policy import TenantPolicy


def policy_form(csrf: str, **overrides: str) -> dict[str, str]:
    """The policy page's form as a browser posts it, filled with the default policy."""
    defaults = TenantPolicy()
    form = {"csrf_token": csrf, "prefixes": "198.51.100.0/25", "mode": "mitigate", "allow": "", "deny": "",
            "sensitivity": str(defaults.sensitivity), "reflection_filter": defaults.reflection_filter, "syn_auth": defaults.syn_auth,
            **{k: str(getattr(defaults, k)) for k in POLICY_INT_FIELDS},
            **{k: "on" for k in POLICY_BOOL_FIELDS if getattr(defaults, k)}}
    form.update(overrides)
    return form


def test_item16_one_formatter_groups_thousands_and_names_units():
    assert formatting.number(18900000) == "18,900,000"
    assert formatting.number(1234.5) == "1,234.5"
    assert formatting.rate(950) == "950 pps"
    assert formatting.rate(12500) == "12.5 kpps"
    assert formatting.rate(18.9e6) == "18.9 Mpps"
    assert formatting.rate(2.4e9, "bps") == "2.4 Gbps"
    assert formatting.rate(1.2e12, "bps") == "1,200.0 Gbps"
    assert formatting.rate(None) == formatting.number(None) == "–"


async def test_item16_pages_show_counts_with_separators(tmp_path):
    async with service(tmp_path) as (url, store, _):
        for e in attack_events():
            await store.record_event(e.to_dict())
        await add_user(store, "ops", "admin")
        http, _ = await login(url, "ops")
        async with http:
            for path in ("/incidents", "/incidents/inc-alpha-1"):
                async with http.get(url + path) as r:
                    page = await r.text()
                assert "400,000" in page and "400000" not in page, path
            async with http.get(f"{url}/incidents/inc-alpha-1") as r:
                page = await r.text()
            assert "59.0 kpps" in page


async def test_item16_times_are_time_elements_in_utc_for_the_browser_to_localise(tmp_path):
    async with service(tmp_path) as (url, store, _):
        events = attack_events(t0=1_700_000_000.0)
        for e in events:
            await store.record_event(e.to_dict())
        await add_user(store, "ops", "admin")
        http, _ = await login(url, "ops")
        async with http:
            async with http.get(f"{url}/incidents") as r:
                page = await r.text()
            assert ('<time datetime="2023-11-14T22:13:20Z" title="2023-11-14 22:13:20 UTC">'
                    '2023-11-14 22:13:20 UTC</time>') in page
            assert '<script src="/static/format.js" defer></script>' in page
            async with http.get(f"{url}/static/format.js") as r:
                script = await r.text()
            assert r.status == 200 and "time[datetime]" in script and "timeZoneName" in script


async def test_item16_unknown_address_gets_a_styled_404_not_bare_text(tmp_path):
    async with service(tmp_path) as (url, store, _):
        await add_user(store, "ops", "admin")
        http, _ = await login(url, "ops")
        async with http:
            for path in ("/no-such-page", "/static/no-such.css", "/tenants/alpha/nothing-here"):
                async with http.get(url + path) as r:
                    page = await r.text()
                assert r.status == 404 and r.content_type == "text/html", path
                assert page.strip() != "404: Not Found" and '<header class="top">' in page, path
                assert "Page not found" in page and 'href="/static/securewatch.css"' in page, path
            async with http.delete(f"{url}/tenants") as r:
                page = await r.text()
            assert r.status == 405 and "Not available this way" in page and "GET" in r.headers["Allow"]
            async with http.get(f"{url}/api/v1/no-such") as r:   # the API still answers JSON
                assert r.status == 404 and (await r.json())["error"] == "Not Found"


async def test_item16_tenant_users_do_not_see_the_operator_banner(tmp_path):
    async with service(tmp_path, appliance=None) as (url, store, _):
        await add_user(store, "ops", "admin")
        await add_user(store, "carol", "tenant", "alpha", "write")
        for name, shown in (("ops", True), ("carol", False)):
            http, _ = await login(url, name)
            async with http:
                for path in ("/", "/tenants", "/incidents"):
                    async with http.get(url + path) as r:
                        page = await r.text()
                    assert ("Central server mode" in page) is shown, (name, path)


async def test_item16_save_message_says_what_really_happened(tmp_path):
    async with service(tmp_path, appliance=None) as (url, store, _):
        await add_user(store, "ops", "admin")
        http, csrf = await login(url, "ops")
        async with http:
            r = await http.post(f"{url}/tenants/alpha", data=policy_form(csrf, sensitivity="3"))
            page = await r.text()
            assert r.status == 200
            saved = re.search(r'id="saved">([^<]*)<', page).group(1)
            assert saved.startswith("Saved as version 2. Not applied: this server has no dataplane"), saved
            assert "applied to the dataplane" not in page and "Saved and applied" not in page
            r = await http.post(f"{url}/tenants/alpha", data=policy_form(csrf, sensitivity="3"))
            saved = re.search(r'id="saved">([^<]*)<', await r.text()).group(1)
            assert saved == "Nothing to save: this is what version 2 already holds."


async def test_item16_audit_log_records_the_field_level_diff(tmp_path):
    async with service(tmp_path) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            r = await http.put(f"{url}/api/v1/tenants/alpha/policy",
                               json={"mode": "monitor", "policy": {"sensitivity": 3}})
            assert r.status == 200, await r.text()
            r = await http.put(f"{url}/api/v1/tenants/alpha/policy", json={"policy": {"sensitivity": 1.0}})
            assert r.status == 200, await r.text()
            entries = (await (await http.get(f"{url}/api/v1/audit")).json())["entries"]
            assert entries[0]["details"]["changed"] == {
                "alpha": {"policy.sensitivity": {"old": 3.0, "new": 1.0}}}
            assert entries[1]["details"]["changed"] == {
                "alpha": {"mode": {"old": "mitigate", "new": "monitor"},
                          "policy.sensitivity": {"old": 1.0, "new": 3.0}}}
            r = await http.delete(f"{url}/api/v1/tenants/beta")
            entries = (await (await http.get(f"{url}/api/v1/audit")).json())["entries"]
            deleted = next(e for e in entries if e["action"] == "tenant.delete")["details"]["changed"]["beta"]
            assert deleted["name"] == {"old": "Beta Shop", "new": None}
            assert deleted["prefixes"] == {"old": ["203.0.113.0/24"], "new": None}
