"""The `syn_auth` policy key through the REST API (issue 19): the same validation as the config
file (tenants.policy), the key named; the old `syn_protection` alias still sets it."""

from __future__ import annotations

import aiohttp
from test_sw_helpers import add_token, service


async def test_api_validates_syn_auth_and_keeps_the_syn_protection_alias(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            policy_url = f"{url}/api/v1/tenants/alpha/policy"
            r = await http.get(policy_url)
            assert (await r.json())["policy"]["syn_auth"] == "splice"

            r = await http.put(policy_url, json={"policy": {"syn_auth": "sometimes"}})
            body = await r.json()
            assert r.status == 422 and "policy.syn_auth: must be one of" in body["problems"][0]
            r = await http.put(policy_url, json={"policy": {"syn_protection": "yes"}})
            body = await r.json()
            assert r.status == 422 and "policy.syn_protection: expected true or false" in body["problems"][0]
            assert appliance.tenants["alpha"].policy.syn_auth == "splice"     # nothing applied

            r = await http.put(policy_url, json={"policy": {"syn_auth": "reset"}})
            assert r.status == 200, await r.json()
            assert appliance.tenants["alpha"].policy.syn_auth == "reset"
            # The old boolean alone replaces the current mode (as the UI's checkbox sends it).
            r = await http.put(policy_url, json={"policy": {"syn_protection": False}})
            assert r.status == 200, await r.json()
            assert appliance.tenants["alpha"].policy.syn_auth == "off"
            r = await http.put(policy_url, json={"policy": {"syn_protection": True}})
            assert r.status == 200, await r.json()
            assert appliance.tenants["alpha"].policy.syn_auth == "splice"
