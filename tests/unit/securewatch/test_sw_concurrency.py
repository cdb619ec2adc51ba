"""Issue 12 item 12: no lost updates and no create race on the tenant set, and optimistic concurrency
(a tenant's `version`, its `ETag`, `If-Match` answered 409 when the version moved) in the API and the UI.
tests/netns/test_sw_concurrency_postgres.py runs them on PostgreSQL through the `database_url` fixture."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from test_sw_helpers import add_token, add_user, login, service


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path}/sw.db"


async def _json(r):
    return r.status, await r.json()


async def test_item12_ten_concurrent_creates_of_one_id_give_one_201_and_nine_409(tmp_path, database_url):
    async with service(tmp_path, database=database_url) as (url, store, appliance):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            async def create(n: int):
                async with http.post(f"{url}/api/v1/tenants", json={
                        "id": "gamma", "name": f"Gamma {n}", "prefixes": ["192.0.2.0/26"]}) as r:
                    return r.status, await r.json()

            results = await asyncio.gather(*(create(n) for n in range(10)))
        statuses = sorted(status for status, _ in results)
        assert statuses == [201] + [409] * 9, results
        winner = next(body for status, body in results if status == 201)
        assert all("already exists" in body["error"] for status, body in results if status == 409)
        # The one that was told 201 is the one stored and applied: no later create overwrote it.
        assert (await store.tenant_set())["gamma"].name == winner["tenant"]["name"]
        assert appliance.tenants["gamma"].name == winner["tenant"]["name"]
        assert [v.action for v in await store.tenant_versions("gamma")] == ["tenant.create"]


async def test_item12_concurrent_policy_puts_with_different_keys_both_kept(tmp_path, database_url):
    async with service(tmp_path, database=database_url) as (url, store, appliance):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            for trial in range(5):
                mode = ("monitor", "mitigate")[trial % 2]
                deny = [{"src": f"198.18.{trial}.0/24"}]
                first, second = await asyncio.gather(
                    http.put(f"{url}/api/v1/tenants/alpha/policy", json={"mode": mode}),
                    http.put(f"{url}/api/v1/tenants/alpha/policy", json={"deny": deny}))
                assert (first.status, second.status) == (200, 200), (await first.text(), await second.text())
                stored = (await store.tenant_set())["alpha"]
                assert (stored.mode, [str(d) for d in stored.deny]) == (mode, [f"src=198.18.{trial}.0/24"]), trial
                applied = appliance.tenants["alpha"]
                assert (applied.mode, [str(d) for d in applied.deny]) == (mode, [f"src=198.18.{trial}.0/24"])


async def test_item12_get_returns_version_and_etag_and_stale_if_match_is_refused(tmp_path, database_url):
    async with service(tmp_path, database=database_url) as (url, store, appliance):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            r = await http.get(f"{url}/api/v1/tenants/alpha")
            body = await r.json()
            version = body["version"]
            assert isinstance(version, int) and r.headers["ETag"] == f'"{version}"'
            r = await http.get(f"{url}/api/v1/tenants/alpha/policy")
            assert (await r.json())["version"] == version and r.headers["ETag"] == f'"{version}"'

            # The current version is accepted, and the answer carries the new one.
            r = await http.put(f"{url}/api/v1/tenants/alpha/policy", json={"mode": "monitor"},
                               headers={"If-Match": f'"{version}"'})
            status, body = await _json(r)
            assert status == 200 and body["version"] == version + 1, body
            assert r.headers["ETag"] == f'"{version + 1}"'

            # A client still holding the old version is told, and nothing changes.
            for method, path, payload in (
                    ("PUT", "/api/v1/tenants/alpha/policy", {"mode": "mitigate"}),
                    ("PUT", "/api/v1/tenants/alpha", {"prefixes": ["198.51.100.0/26"]}),
                    ("DELETE", "/api/v1/tenants/alpha", None)):
                status, body = await _json(await http.request(method, f"{url}{path}", json=payload,
                                                              headers={"If-Match": f'"{version}"'}))
                assert status == 409, (method, path, body)
                assert body["version"] == version + 1 and "changed since" in body["error"], body
            alpha = (await store.tenant_set())["alpha"]
            assert alpha.mode == "monitor" and [str(p) for p in alpha.prefixes] == ["198.51.100.0/25"]
            assert appliance.tenants["alpha"].mode == "monitor"

            # A create with If-Match names a version of a tenant that does not exist yet.
            status, body = await _json(await http.post(f"{url}/api/v1/tenants", headers={"If-Match": '"1"'},
                                                       json={"id": "gamma", "prefixes": ["192.0.2.0/26"]}))
            assert status == 409 and "gamma" not in await store.tenant_set(), body

            # `*` (any version) and a weak tag are accepted; a malformed header is a 400 naming it.
            r = await http.put(f"{url}/api/v1/tenants/alpha/policy", json={"mode": "mitigate"},
                               headers={"If-Match": "*"})
            assert r.status == 200
            r = await http.put(f"{url}/api/v1/tenants/alpha/policy", json={"mode": "monitor"},
                               headers={"If-Match": f'W/"{version + 2}"'})
            assert r.status == 200, await r.text()
            status, body = await _json(await http.put(f"{url}/api/v1/tenants/alpha/policy", json={"mode": "monitor"},
                                                      headers={"If-Match": "yesterday"}))
            assert status == 400 and "If-Match" in body["error"], body


async def test_item12_policy_form_carries_the_version_and_shows_a_conflict(tmp_path, database_url):
    async with service(tmp_path, database=database_url) as (url, store, appliance):
        await add_user(store, "carol", "tenant", "alpha", "write")
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        http, csrf = await login(url, "carol")
        async with http, aiohttp.ClientSession(headers=admin) as api:
            page = await (await http.get(f"{url}/tenants/alpha")).text()
            version = (await (await api.get(f"{url}/api/v1/tenants/alpha")).json())["version"]
            assert f'name="version" value="{version}"' in page
            form = {"csrf_token": csrf, "version": str(version), "prefixes": "", "mode": "monitor",
                    "sensitivity": "1", "min_pps": "1000", "min_tenant_pps": "20000", "syn_rate_pps": "0",
                    "udp_rate_pps": "0", "icmp_rate_pps": "0", "fragment_rate_pps": "0",
                    "reflection_filter": "auto", "syn_auth": "splice", "auto_mitigation": "on", "allow": "", "deny": ""}

            # Someone else saves while carol has the form open.
            r = await api.put(f"{url}/api/v1/tenants/alpha/policy", json={"deny": [{"src": "198.18.0.0/15"}]})
            assert r.status == 200

            r = await http.post(f"{url}/tenants/alpha", data=form)
            page = await r.text()
            assert r.status == 409
            assert "changed by someone else" in page and "Your changes were not saved" in page
            assert 'name="mode"' in page and f'name="version" value="{version + 1}"' in page
            stored = (await store.tenant_set())["alpha"]
            assert stored.mode == "mitigate" and [str(d) for d in stored.deny] == ["src=198.18.0.0/15"]

            form["version"] = str(version + 1)
            form["deny"] = "src=198.18.0.0/15"
            r = await http.post(f"{url}/tenants/alpha", data=form)
            page = await r.text()
            assert r.status == 200 and "and applied to the dataplane." in page
            assert f'name="version" value="{version + 2}"' in page
            assert appliance.tenants["alpha"].mode == "monitor"


async def test_ten_concurrent_new_template_forms_of_one_name_save_one_and_refuse_nine(tmp_path, database_url):
    """The "New template" form creates only: its existence check and its save are one transaction in
    the store, so two admins creating one name cannot both be told it was saved."""
    async with service(tmp_path, database=database_url) as (url, store, _):
        await add_user(store, "ops", "admin")
        http, csrf = await login(url, "ops")
        async with http:
            async def create(n: int):
                async with http.post(f"{url}/admin/templates", data={
                        "csrf_token": csrf, "name": "hosting", "min_pps": str(1000 + n)}) as r:
                    return r.status, await r.text(), n

            results = await asyncio.gather(*(create(n) for n in range(10)))
        assert sorted(status for status, _, _ in results) == [200] + [409] * 9, [r[:2] for r in results]
        [winner] = [n for status, _, n in results if status == 200]
        assert all("is already used by a template" in text for status, text, _ in results if status == 409)
        stored = (await store.policy_templates())["hosting"]
        assert (stored["policy"], stored["version"]) == ({"min_pps": 1000 + winner}, 1)
        assert await store.save_policy_template("hosting", {}, "ops", must_exist=False) is None
        assert await store.save_policy_template("absent", {}, "ops", must_exist=True) is None
        assert "absent" not in await store.policy_templates()

