"""Issue 16, item 4 (policy templates), on a real loopback server with real SQLite: a named set
of policy values that many tenants follow; editing it updates them all (applied to the dataplane
and versioned like any tenant change) while each tenant keeps the keys it overrides; the same
validation as a tenant's policy; a tenant sees only the template it follows; store migration 6."""

from __future__ import annotations

import aiohttp
from test_sw_admin import notice, problems
from test_sw_helpers import TENANTS, InMemoryAppliance, add_token, add_user, login, service

from securewatch.store import SCHEMA_VERSION, Store, create_schema
from tenants import TenantSet


async def _put(http, url, path, body):
    r = await http.put(url + path, json=body)
    return r.status, await r.json()


async def test_item16_editing_a_template_updates_every_follower_and_keeps_overrides(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            status, body = await _put(http, url, "/api/v1/templates/hosting",
                                      {"policy": {"sensitivity": 2.0, "min_pps": 5000}})
            assert status == 200 and body["version"] == 1 and body["followers_changed"] == {}
            for tenant, overrides in (("alpha", {}), ("beta", {"min_pps": 800})):
                status, body = await _put(http, url, f"/api/v1/tenants/{tenant}/template",
                                          {"template": "hosting", "overrides": overrides})
                assert status == 200 and body["template"] == "hosting" and body["overrides"] == overrides, body
            assert appliance.tenants["alpha"].policy.min_pps == 5000 and appliance.tenants["beta"].policy.min_pps == 800
            # A key set on the tenant's own policy becomes an override by differing from the template.
            await http.put(f"{url}/api/v1/tenants/alpha/policy", json={"policy": {"syn_protection": False}})

            status, body = await _put(http, url, "/api/v1/templates/hosting",
                                      {"policy": {"sensitivity": 4.0, "min_pps": 6000, "udp_rate_pps": 90000}})
            assert status == 200 and body["version"] == 2 and body["applied"] is True
            assert body["followers_changed"]["beta"] == {
                "policy.sensitivity": {"old": 2.0, "new": 4.0},
                "policy.udp_rate_pps": {"old": 0, "new": 90000}}
            alpha, beta = appliance.tenants["alpha"].policy, appliance.tenants["beta"].policy
            assert (alpha.sensitivity, alpha.min_pps, alpha.udp_rate_pps, alpha.syn_protection) == (4.0, 6000, 90000, False)
            assert (beta.sensitivity, beta.min_pps, beta.udp_rate_pps) == (4.0, 800, 90000)
            view = await (await http.get(f"{url}/api/v1/tenants/alpha/template")).json()
            assert view["overrides"] == {"syn_auth": "off"} and "sensitivity" in view["inherited"]

            # Set back to the template's value, a key follows the template again.
            await http.put(f"{url}/api/v1/tenants/beta/policy", json={"policy": {"min_pps": 6000}})
            await _put(http, url, "/api/v1/templates/hosting", {"policy": {"sensitivity": 4.0, "min_pps": 7000}})
            assert appliance.tenants["beta"].policy.min_pps == 7000
            assert appliance.tenants["beta"].policy.udp_rate_pps == 0   # dropped from the template: the default

            audit = (await (await http.get(f"{url}/api/v1/audit", params={"action": "template."})).json())["entries"]
            assert [e["action"] for e in audit[:2]] == ["template.update", "template.apply"]
            assert audit[0]["details"]["changed"] == {"policy.min_pps": {"old": 6000, "new": 7000},
                                                      "policy.udp_rate_pps": {"old": 90000, "new": None}}
            versions = (await (await http.get(f"{url}/api/v1/tenants/beta/versions")).json())["versions"]
            assert versions[0]["action"] == "template.apply"


async def test_item16_template_values_meet_the_policy_validation(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            status, body = await _put(http, url, "/api/v1/templates/Bad Name",
                                      {"policy": {"sensitivity": 50, "colour": "red"}})
            assert status == 422
            assert body["problems"][0].startswith("name: 'Bad Name' is not a template name")
            assert any(p.startswith("policy.sensitivity: must be between 0.1 and 10") for p in body["problems"])
            assert any(p.startswith("policy.colour: unknown key") for p in body["problems"])
            await _put(http, url, "/api/v1/templates/t1", {"policy": {"sensitivity": 2.0}})
            status, body = await _put(http, url, "/api/v1/tenants/alpha/template",
                                      {"template": "t1", "overrides": {"min_pps": -1}})
            assert status == 422 and body["problems"][0].startswith("overrides.min_pps: expected a non-negative")
            status, body = await _put(http, url, "/api/v1/tenants/alpha/template", {"template": "nope"})
            assert status == 422 and body["problems"] == ["template: no template 'nope'"]
            assert appliance.tenants["alpha"].policy.sensitivity == 1.0       # nothing applied

            await _put(http, url, "/api/v1/tenants/alpha/template", {"template": "t1"})
            r = await http.delete(f"{url}/api/v1/templates/t1")
            assert r.status == 409 and "followed by alpha" in (await r.json())["error"]
            status, body = await _put(http, url, "/api/v1/tenants/alpha/template", {"template": None})
            assert status == 200 and body["template"] is None
            assert appliance.tenants["alpha"].policy.sensitivity == 2.0       # leaving keeps the values
            assert (await http.delete(f"{url}/api/v1/templates/t1")).status == 200


async def test_item16_a_tenant_sees_only_the_template_it_follows(tmp_path):
    async with service(tmp_path) as (url, store, _):
        await store.save_policy_template("gold", {"sensitivity": 3.0}, "test")
        await store.save_policy_template("silver", {"sensitivity": 2.0}, "test")
        await store.set_template_link("alpha", "gold")
        await store.set_template_link("beta", "gold")
        tenant = {"Authorization": f"Bearer {await add_token(store, 'tenant', 'alpha')}"}
        async with aiohttp.ClientSession(headers=tenant) as http:
            body = await (await http.get(f"{url}/api/v1/templates")).json()
            assert [(t["name"], t["followers"]) for t in body["templates"]] == [("gold", ["alpha"])]
            assert (await http.get(f"{url}/api/v1/templates/silver")).status == 404


async def test_item16_store_migration_6_adds_templates_to_an_existing_database(tmp_path):
    url = f"sqlite:///{tmp_path}/old.db"
    create_schema(url, 5)
    store = await Store.open(url)
    try:
        assert await store.schema_version() == SCHEMA_VERSION and SCHEMA_VERSION >= 6   # 7: the console (issue 16)
        assert await store.policy_templates() == {} and await store.template_links() == {}
        assert await store.save_policy_template("gold", {"sensitivity": 3.0}, "test") == 1
        assert (await store.policy_templates())["gold"]["policy"] == {"sensitivity": 3.0}
    finally:
        await store.close()


async def test_item16_admin_manages_templates_in_the_ui(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        await add_user(store, "ops", "admin")
        http, csrf = await login(url, "ops")
        async with http:
            r = await http.post(f"{url}/admin/templates", data={"csrf_token": csrf, "name": "hosting",
                                                                 "sensitivity": "50", "min_pps": "lots"})
            page = await r.text()
            assert r.status == 422 and 'value="lots"' in page
            assert any(p.startswith("policy.sensitivity: must be between") for p in problems(page))
            assert any(p.startswith("policy.min_pps: expected a non-negative integer") for p in problems(page))
            r = await http.post(f"{url}/admin/templates", data={"csrf_token": csrf, "name": "hosting",
                                                                 "sensitivity": "2", "syn_auth": "off"})
            assert notice(await r.text()) == "Saved template hosting as version 1; no follower changed."

            r = await http.post(f"{url}/admin/tenants/beta/template", data={"csrf_token": csrf, "template": "hosting"})
            page = await r.text()
            assert notice(page) == "Follows template hosting. Saved as version 2 and applied to the dataplane."
            assert "Follows <b>hosting</b>" in page
            assert (appliance.tenants["beta"].policy.sensitivity, appliance.tenants["beta"].policy.syn_auth) == (
                2.0, "off")
            r = await http.post(f"{url}/admin/templates/hosting", data={"csrf_token": csrf,
                                                                         "sensitivity": "6", "syn_auth": "off"})
            assert notice(await r.text()) == "Saved template hosting as version 2; updated beta and applied."
            assert appliance.tenants["beta"].policy.sensitivity == 6.0
            async with http.get(f"{url}/audit", params={"action": "template."}) as r:   # both shapes of diff
                page = await r.text()
            assert r.status == 200 and "<b>beta</b>" in page and "Roll back to version 2" in page
            assert '<th scope="row">policy.sensitivity</th><td class="old"><code>2.0</code></td>' in page
            r = await http.post(f"{url}/admin/templates/hosting/delete", data={"csrf_token": csrf})
            assert r.status == 409 and "followed by beta" in problems(await r.text())[0]
            r = await http.post(f"{url}/admin/tenants/beta/template", data={"csrf_token": csrf, "template": ""})
            assert notice(await r.text()).startswith("Follows no template now")
            r = await http.post(f"{url}/admin/templates/hosting/delete", data={"csrf_token": csrf})
            assert notice(await r.text()) == "Deleted template hosting."


async def test_the_new_template_form_refuses_a_name_in_use_and_the_templates_own_form_replaces_it(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        await add_user(store, "ops", "admin")
        http, csrf = await login(url, "ops")
        async with http:
            r = await http.post(f"{url}/admin/templates", data={"csrf_token": csrf, "name": "hosting",
                                                                 "sensitivity": "2", "min_pps": "5000"})
            assert notice(await r.text()) == "Saved template hosting as version 1; no follower changed."
            await http.post(f"{url}/admin/tenants/beta/template", data={"csrf_token": csrf, "template": "hosting"})

            r = await http.post(f"{url}/admin/templates", data={"csrf_token": csrf, "name": "hosting",
                                                                 "udp_rate_pps": "100"})
            page = await r.text()
            assert r.status == 409 and problems(page) == [
                "name: &#39;hosting&#39; is already used by a template (edit that template to change it)"]
            create = page.split('id="template-create"', 1)[1]
            assert 'value="hosting"' in create and 'value="100"' in create   # what was typed stays
            assert (await store.policy_templates())["hosting"]["policy"] == {"sensitivity": 2.0, "min_pps": 5000}
            assert (appliance.tenants["beta"].policy.min_pps, appliance.tenants["beta"].policy.udp_rate_pps) == (5000, 0)

            # The template's own form replaces it; a bad value comes back in that form.
            card = page.split('data-template="hosting"', 1)[1].split("</form>", 1)[0]
            assert 'action="/admin/templates/hosting"' in page.split('data-template="hosting"', 1)[0][-80:]
            assert 'value="5000"' in card
            r = await http.post(f"{url}/admin/templates/hosting", data={"csrf_token": csrf, "min_pps": "lots"})
            page = await r.text()
            card = page.split('data-template="hosting"', 1)[1].split("</form>", 1)[0]
            assert r.status == 422 and 'value="lots"' in card and 'value="lots"' not in page.split('id="template-create"')[1]
            r = await http.post(f"{url}/admin/templates/hosting", data={"csrf_token": csrf, "udp_rate_pps": "100"})
            assert notice(await r.text()) == "Saved template hosting as version 2; updated beta and applied."
            assert (await store.policy_templates())["hosting"]["policy"] == {"udp_rate_pps": 100}
            # A template deleted meanwhile is not created again by its stale form.
            r = await http.post(f"{url}/admin/templates/gone", data={"csrf_token": csrf, "min_pps": "1"})
            assert r.status == 404 and "gone" not in await store.policy_templates()


async def test_item16_the_policy_page_says_which_template_a_tenant_follows(tmp_path):
    async with service(tmp_path) as (url, store, _):
        await store.save_policy_template("hosting", {"sensitivity": 2.0}, "test")
        await store.set_template_link("alpha", "hosting")
        await add_user(store, "carol", "tenant", "alpha", "write")
        await add_user(store, "bob", "tenant", "beta", "write")
        for who, tenant, shown in (("carol", "alpha", True), ("bob", "beta", False)):
            http, _ = await login(url, who)
            async with http, http.get(f"{url}/tenants/{tenant}") as r:
                page = await r.text()
            assert ('follows the policy template <b>hosting</b>' in page) is shown, who


class ApplianceWithTemplates(InMemoryAppliance):
    """The appliance side as appliance.service offers it: the config file's templates and links."""

    def policy_templates(self):
        return {"hosting": {"sensitivity": 2.0}}, {"alpha": "hosting", "gone": "hosting"}


async def test_item16_the_config_files_templates_are_imported_with_the_tenants(tmp_path):
    appliance = ApplianceWithTemplates(TenantSet.from_dicts(TENANTS))
    async with service(tmp_path, appliance=appliance) as (url, store, _):
        assert (await store.policy_templates())["hosting"]["policy"] == {"sensitivity": 2.0}
        assert await store.template_links() == {"alpha": "hosting"}   # only tenants that exist
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            body = await (await http.get(f"{url}/api/v1/templates")).json()
            assert [(t["name"], t["followers"]) for t in body["templates"]] == [("hosting", ["alpha"])]
