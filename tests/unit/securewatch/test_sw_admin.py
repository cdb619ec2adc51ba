"""Issue 16, item 4 (administration in the UI), on a real loopback server with real SQLite: the
admin pages for tenants, users and API tokens, the audit log page with filters and field-level
diffs, one-click rollback, and the API routes they share (PATCH /users/{name}, POST
/tenants/{id}/rollback, audit filters). NOC and tenant principals cannot administer, and a
tenant sees no other tenant's users, tokens or audit entries."""

from __future__ import annotations

import re

import aiohttp
import pytest
from test_sw_helpers import PASSWORD, add_token, add_user, login, service

ADMIN_PAGES = ("/admin/tenants", "/admin/tenants/alpha", "/admin/users", "/admin/tokens", "/admin/templates")
ADMIN_POSTS = ("/admin/tenants", "/admin/tenants/alpha", "/admin/tenants/alpha/delete",
               "/admin/tenants/alpha/rollback", "/admin/users", "/admin/users/ops", "/admin/tokens",
               "/admin/tokens/1/revoke", "/admin/templates", "/admin/templates/gold",
               "/admin/templates/gold/delete",
               "/admin/tenants/alpha/template")


def notice(page: str) -> str:
    m = re.search(r'id="notice">([^<]*)<', page)
    return m.group(1) if m else ""


def problems(page: str) -> list[str]:
    box = page.split('id="problems"', 1)[1].split("</div>", 1)[0] if 'id="problems"' in page else ""
    return re.findall(r"<li>([^<]*)</li>", box)


# -- the API the pages share ----------------------------------------------------------------

async def test_item16_api_changes_a_users_role_with_a_diff_and_ends_its_sessions(tmp_path):
    async with service(tmp_path) as (url, store, _):
        await add_user(store, "ops", "admin")
        await add_user(store, "carol", "tenant", "alpha", "read")
        carol, _ = await login(url, "carol")
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with carol, aiohttp.ClientSession(headers=admin) as http:
            r = await http.patch(f"{url}/api/v1/users/carol", json={"access": "write"})
            assert r.status == 200 and (await r.json())["user"]["access"] == "write"
            async with carol.get(f"{url}/api/v1/me") as me:
                assert me.status == 401    # the session carried the old scope
            r = await http.patch(f"{url}/api/v1/users/carol", json={"role": "noc"})
            assert (await r.json())["user"] == {**(await r.json())["user"], "role": "noc", "tenant": None,
                                                "access": "write"}
            r = await http.patch(f"{url}/api/v1/users/carol", json={"role": "tenant", "tenant": "nosuch"})
            assert r.status == 422 and (await r.json())["problems"] == ["tenant: no tenant 'nosuch'"]
            r = await http.patch(f"{url}/api/v1/users/ops", json={"role": "noc"})
            assert r.status == 409 and "last enabled administrator" in (await r.json())["error"]
            r = await http.patch(f"{url}/api/v1/users/carol", json={"colour": "red"})
            assert r.status == 422
            entries = (await (await http.get(f"{url}/api/v1/audit", params={"action": "user.change"})).json())["entries"]
            assert [e["details"]["changed"] for e in entries] == [
                {"role": {"old": "tenant", "new": "noc"}, "tenant": {"old": "alpha", "new": None}},
                {"access": {"old": "read", "new": "write"}}]


async def test_item16_api_rolls_a_tenant_back_and_brings_a_deleted_one_back(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            await http.put(f"{url}/api/v1/tenants/alpha/policy", json={"policy": {"sensitivity": 4}})
            r = await http.post(f"{url}/api/v1/tenants/alpha/rollback", json={"version": 1})
            body = await r.json()
            assert r.status == 200 and body["version"] == 3 and body["applied"] is True
            assert body["changed"] == {"policy.sensitivity": {"old": 4.0, "new": 1.0}}
            assert appliance.tenants["alpha"].policy.sensitivity == 1.0
            assert (await http.delete(f"{url}/api/v1/tenants/beta")).status == 200
            r = await http.post(f"{url}/api/v1/tenants/beta/rollback", json={"version": 1})
            assert r.status == 200 and (await r.json())["tenant"]["name"] == "Beta Shop"
            assert "beta" in appliance.tenants
            r = await http.post(f"{url}/api/v1/tenants/beta/rollback", json={"version": 2})   # the deletion
            assert r.status == 200 and (await r.json())["tenant"] is None and "beta" not in appliance.tenants
            r = await http.post(f"{url}/api/v1/tenants/alpha/rollback", json={"version": 99})
            assert r.status == 404 and (await r.json())["error"] == "tenant 'alpha' has no version 99"
            r = await http.post(f"{url}/api/v1/tenants/alpha/rollback", json={"version": "1"})
            assert r.status == 422 and (await r.json())["problems"] == ["version: expected a whole number from 1"]
            page = await (await http.get(f"{url}/api/v1/audit", params={"action": "tenant.rollback",
                                                                        "tenant": "alpha"})).json()
            assert [(e["action"], e["details"]["versions"]) for e in page["entries"]] == [
                ("tenant.rollback", {"alpha": 3})]


async def test_item16_user_and_token_changes_are_audited_with_their_diff(tmp_path):
    async with service(tmp_path) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            await http.post(f"{url}/api/v1/users", json={"name": "gina", "password": "long enough", "role": "noc"})
            r = await http.post(f"{url}/api/v1/tokens", json={"role": "tenant", "tenant": "alpha", "label": "graf"})
            token_id = (await r.json())["id"]
            await http.delete(f"{url}/api/v1/tokens/{token_id}")
            await http.post(f"{url}/api/v1/users/gina/disable")
            entries = (await (await http.get(f"{url}/api/v1/audit")).json())["entries"]
            changed = {e["action"]: e["details"]["changed"] for e in entries[:4]}
            assert changed["user.add"]["role"] == {"old": None, "new": "noc"}
            assert changed["token.create"]["label"] == {"old": None, "new": "graf"}
            assert changed["token.revoke"] == {"revoked": {"old": False, "new": True}}
            assert changed["user.disable"] == {"disabled": {"old": False, "new": True}}
            assert "password_hash" not in str(entries) and "swt_" not in str(entries)


async def test_item16_api_audit_filters_by_actor_and_action_prefix(tmp_path):
    async with service(tmp_path) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            await http.put(f"{url}/api/v1/tenants/alpha/policy", json={"mode": "monitor"})
            await http.post(f"{url}/api/v1/users", json={"name": "gina", "password": "long enough", "role": "noc"})
            await store.audit("someone", "tenant.replace", target="beta", tenant="beta")
            page = await (await http.get(f"{url}/api/v1/audit", params={"action": "policy."})).json()
            assert [e["action"] for e in page["entries"]] == ["policy.update"]
            page = await (await http.get(f"{url}/api/v1/audit", params={"actor": "someone"})).json()
            assert [(e["actor"], e["target"]) for e in page["entries"]] == [("someone", "beta")]
            page = await (await http.get(f"{url}/api/v1/audit", params={"action": "user.", "limit": "1"})).json()
            assert page["next"] is None and page["entries"][0]["target"] == "gina"
            assert (await http.get(f"{url}/api/v1/audit", params={"action": "x" * 201})).status == 400


# -- the pages ----------------------------------------------------------------------------

async def test_item16_admin_creates_renames_edits_deletes_and_restores_a_tenant_in_the_ui(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        await add_user(store, "ops", "admin")
        http, csrf = await login(url, "ops")
        async with http:
            bad = {"csrf_token": csrf, "id": "gamma", "name": "Gamma", "mode": "mitigate",
                   "prefixes": "198.51.100.0/24", "contacts": "not-an-address"}
            r = await http.post(f"{url}/admin/tenants", data=bad)
            page = await r.text()
            assert r.status == 422 and "gamma" not in appliance.tenants
            found = problems(page)
            assert any("prefixes[0]" in p and "overlaps" in p for p in found), found
            assert any("contacts[0]" in p for p in found), found
            assert 'value="gamma"' in page    # what was typed stays in the form
            good = {**bad, "prefixes": "192.0.2.0/26", "contacts": "noc@gamma.example"}
            r = await http.post(f"{url}/admin/tenants", data=good)
            assert r.status == 200 and str(r.url).endswith("/admin/tenants/gamma?created=1")
            assert notice(await r.text()) == "Created tenant gamma (version 1)."
            assert appliance.tenants["gamma"].contacts == ("noc@gamma.example",)

            edit = {"csrf_token": csrf, "name": "Gamma Networks", "prefixes": "192.0.2.0/26\n192.0.2.64/26",
                    "contacts": "noc@gamma.example\nops@gamma.example"}
            r = await http.post(f"{url}/admin/tenants/gamma", data=edit)
            assert notice(await r.text()) == "Saved as version 2 and applied to the dataplane."
            gamma = appliance.tenants["gamma"]
            assert (gamma.name, len(gamma.prefixes), len(gamma.contacts)) == ("Gamma Networks", 2, 2)
            r = await http.post(f"{url}/admin/tenants/gamma", data={**edit, "prefixes": "192.0.2.0/33"})
            assert r.status == 422 and any("prefixes[0]" in p for p in problems(await r.text()))

            r = await http.post(f"{url}/admin/tenants/gamma/delete", data={"csrf_token": csrf, "confirm": "gam"})
            assert r.status == 422 and "gamma" in appliance.tenants
            r = await http.post(f"{url}/admin/tenants/gamma/delete", data={"csrf_token": csrf, "confirm": "gamma"})
            assert notice(await r.text()) == "Deleted tenant gamma and applied to the dataplane."
            assert "gamma" not in appliance.tenants
            async with http.get(f"{url}/admin/tenants/gamma") as r:   # its history stays, with rollback
                page = await r.text()
            assert r.status == 200 and "Deleted tenant" in page and "Roll back to version 2" in page
            r = await http.post(f"{url}/admin/tenants/gamma/rollback", data={"csrf_token": csrf, "version": "2"})
            assert notice(await r.text()) == "Rolled back to version 2. Saved as version 4 and applied to the dataplane."
            assert appliance.tenants["gamma"].name == "Gamma Networks"


async def test_item16_admin_manages_users_in_the_ui_with_the_apis_rules(tmp_path):
    async with service(tmp_path) as (url, store, _):
        await add_user(store, "ops", "admin")
        http, csrf = await login(url, "ops")
        async with http:
            r = await http.post(f"{url}/admin/users", data={"csrf_token": csrf, "name": "bad name!",
                                                             "password": "x", "role": "tenant", "tenant": "",
                                                             "access": "read"})
            found = problems(await r.text())
            assert r.status == 422 and any(p.startswith("name: ") for p in found), found
            assert any(p.startswith("tenant: ") for p in found), found
            r = await http.post(f"{url}/admin/users", data={"csrf_token": csrf, "name": "carol", "password": PASSWORD,
                                                             "role": "tenant", "tenant": "alpha", "access": "read"})
            assert notice(await r.text()) == "Added user carol (tenant)."
            r = await http.post(f"{url}/admin/users/carol", data={"csrf_token": csrf, "action": "scope",
                                                                   "role": "tenant", "tenant": "beta",
                                                                   "access": "write"})
            assert notice(await r.text()) == "User carol is now tenant of beta (write); its sessions ended."
            assert (await store.user("carol")).tenant == "beta"
            r = await http.post(f"{url}/admin/users/carol", data={"csrf_token": csrf, "action": "password",
                                                                   "password": "a brand new one"})
            assert notice(await r.text()) == "Password of carol reset; its sessions ended."
            carol, _ = await login(url, "carol", "a brand new one")
            await carol.close()
            r = await http.post(f"{url}/admin/users/carol", data={"csrf_token": csrf, "action": "disable"})
            assert notice(await r.text()) == "User carol disabled." and (await store.user("carol")).disabled
            r = await http.post(f"{url}/admin/users/ops", data={"csrf_token": csrf, "action": "delete"})
            assert r.status == 409 and "last enabled administrator" in problems(await r.text())[0]
            r = await http.post(f"{url}/admin/users/carol", data={"csrf_token": csrf, "action": "delete"})
            assert notice(await r.text()) == "User carol deleted." and await store.user("carol") is None


async def test_item16_admin_creates_lists_and_revokes_tokens_in_the_ui(tmp_path):
    async with service(tmp_path) as (url, store, _):
        await add_user(store, "ops", "admin")
        http, csrf = await login(url, "ops")
        async with http:
            r = await http.post(f"{url}/admin/tokens", data={"csrf_token": csrf, "label": "grafana", "role": "tenant",
                                                              "tenant": "alpha", "access": "read", "expires": "-3"})
            assert r.status == 422 and problems(await r.text()) == [
                "expires: days must be more than 0 and at most 3650"]
            r = await http.post(f"{url}/admin/tokens", data={"csrf_token": csrf, "label": "grafana", "role": "tenant",
                                                              "tenant": "alpha", "access": "read", "expires": "30"})
            page = await r.text()
            token = re.search(r'id="new-token">([^<]+)<', page).group(1)
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as api:
                assert (await api.get(f"{url}/api/v1/tenants/alpha")).status == 200
                async with http.get(f"{url}/admin/tokens") as r:
                    page = await r.text()
                row = page.split('data-token="1"', 1)[1].split("</tr>", 1)[0]
                assert "grafana" in row and "<time" in row.split("</td>", 6)[5]   # last used: a time, not never
                r = await http.post(f"{url}/admin/tokens/1/revoke", data={"csrf_token": csrf})
                assert notice(await r.text()) == "Token 1 revoked."
                assert (await api.get(f"{url}/api/v1/tenants/alpha")).status == 401


async def test_item16_audit_page_shows_the_diff_filters_and_rolls_back(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        await add_user(store, "ops", "admin")
        await add_user(store, "nina", "noc")
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as api:
            await api.put(f"{url}/api/v1/tenants/alpha/policy", json={"policy": {"sensitivity": 5}})
            await api.put(f"{url}/api/v1/tenants/beta/policy", json={"mode": "mitigate"})
        http, csrf = await login(url, "ops")
        async with http:
            async with http.get(f"{url}/audit", params={"tenant": "alpha", "action": "policy."}) as r:
                page = await r.text()
            assert r.status == 200 and page.count("<tr data-entry=") == 1
            assert ('<th scope="row">policy.sensitivity</th><td class="old"><code>1.0</code></td>'
                    '<td aria-hidden="true">→</td><td class="new"><code>5.0</code></td>') in page
            assert "Roll back to version 1" in page and "mode" not in page.split('id="audit"')[1].split("</table>")[0]
            r = await http.post(f"{url}/admin/tenants/alpha/rollback", data={"csrf_token": csrf, "version": "1"})
            assert r.status == 200 and appliance.tenants["alpha"].policy.sensitivity == 1.0
        noc, _ = await login(url, "nina")
        async with noc, noc.get(f"{url}/audit") as r:
            page = await r.text()
            assert r.status == 200 and "policy.sensitivity" in page and "Roll back" not in page


@pytest.mark.parametrize("who", ["nina", "carol"])
async def test_item16_noc_and_tenants_cannot_administer(tmp_path, who):
    async with service(tmp_path) as (url, store, appliance):
        await add_user(store, "ops", "admin")
        await add_user(store, "nina", "noc")
        await add_user(store, "carol", "tenant", "alpha", "write")
        await add_token(store, "tenant", "beta")
        await store.save_policy_template("gold", {"sensitivity": 3.0}, "test")   # followed by beta only
        await store.set_template_link("beta", "gold")
        http, csrf = await login(url, who)
        async with http:
            async with http.get(f"{url}/") as r:
                assert "/admin/tenants" not in await r.text()
            for path in ADMIN_PAGES:
                async with http.get(url + path) as r:
                    page = await r.text()
                    assert r.status == 403 and "only an administrator" in page, path
                    assert "beta" not in page.split("<main>", 1)[1], path   # nothing of another tenant
            for path in ADMIN_POSTS:
                async with http.post(url + path, data={"csrf_token": csrf, "id": "x", "name": "x", "version": "1",
                                                       "action": "delete", "confirm": "alpha", "role": "admin"}) as r:
                    assert r.status == 403, path
            async with http.get(f"{url}/audit") as r:
                assert r.status == (200 if who == "nina" else 403)
                if who == "carol":
                    assert "tenant.create" not in await r.text()
        assert set(appliance.tenants.ids) == {"alpha", "beta"} and await store.user("ops") is not None
        assert [t.revoked for t in await store.tokens()] == [False]
        assert list(await store.policy_templates()) == ["gold"] and await store.template_links() == {"beta": "gold"}


async def test_item16_admin_pages_need_a_login(tmp_path):
    async with service(tmp_path) as (url, _, _), aiohttp.ClientSession() as http:
        for path in (*ADMIN_PAGES, "/audit"):
            async with http.get(url + path, allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"].startswith("/login?next="), path


async def test_item16_audit_page_offers_rollback_only_for_tenant_set_changes(tmp_path):
    async with service(tmp_path) as (url, store, _):
        await add_user(store, "ops", "admin")
        await store.audit("ops", "notify.update", details={
            "changed": ["noc-syslog"], "diff": {"syslog.noc-syslog": {"port": {"old": 1514, "new": 2514}}}})
        await store.audit("appliance", "tenants.reload", tenant=None, details={
            "changed": {"alpha": {"mode": {"old": "mitigate", "new": "monitor"}}}})
        http, _ = await login(url, "ops")
        async with http, http.get(f"{url}/audit") as r:
            page = await r.text()
        assert r.status == 200 and "<b>syslog.noc-syslog</b>" in page and "<code>2514</code>" in page
        assert "/admin/tenants/syslog" not in page and "/admin/tenants/alpha/rollback" not in page
