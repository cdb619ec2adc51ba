"""Access-control matrix: every role × every API endpoint, including guessed ids of other tenants.

A tenant principal must get 404 for another tenant's objects, exactly as for ids that do not exist.
"""

from __future__ import annotations

import time

import aiohttp
import pytest
from test_sw_helpers import add_token, attack_events, service

from securewatch.openapi import openapi_document
from securewatch.store import User

ROLES = {  # principal name: (role, tenant, access)
    "admin": ("admin", None, "write"),
    "noc": ("noc", None, "read"),
    "alpha_ro": ("tenant", "alpha", "read"),
    "alpha_rw": ("tenant", "alpha", "write"),
}
OK, DENIED, HIDDEN, CREATED, CONFLICT, UNAUTHENTICATED = 200, 403, 404, 201, 409, 401
POLICY = {"mode": "monitor"}
NOTE = {"text": "seen"}
NOTIFY = {"syslog": [{"name": "noc-syslog", "host": "192.0.2.10", "transport": "tcp"}]}

# (method, path, body, expected status per principal: admin, noc, alpha_ro, alpha_rw)
MATRIX = [
    ("GET", "/api/v1/me", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/status", None, (OK, OK, OK, OK)),
    ("POST", "/api/v1/apply", None, (OK, DENIED, DENIED, DENIED)),
    ("GET", "/api/v1/tenants", None, (OK, OK, OK, OK)),
    ("POST", "/api/v1/tenants", {"id": "delta", "prefixes": ["192.0.2.128/26"]}, (CREATED, DENIED, DENIED, DENIED)),
    ("GET", "/api/v1/tenants/alpha", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/tenants/beta", None, (OK, OK, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/tenants/nonexistent", None, (HIDDEN, HIDDEN, HIDDEN, HIDDEN)),
    ("PUT", "/api/v1/tenants/alpha", {"prefixes": ["198.51.100.0/25"]}, (OK, DENIED, DENIED, DENIED)),
    ("PUT", "/api/v1/tenants/beta", {"prefixes": ["203.0.113.0/24"]}, (OK, DENIED, HIDDEN, HIDDEN)),
    ("DELETE", "/api/v1/tenants/beta", None, (OK, DENIED, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/tenants/alpha/versions", None, (OK, OK, OK, OK)),
    ("POST", "/api/v1/tenants/alpha/rollback", {"version": 1}, (OK, DENIED, DENIED, DENIED)),
    ("POST", "/api/v1/tenants/beta/rollback", {"version": 1}, (OK, DENIED, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/tenants/beta/versions", None, (OK, OK, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/tenants/alpha/policy", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/tenants/beta/policy", None, (OK, OK, HIDDEN, HIDDEN)),
    ("PUT", "/api/v1/tenants/alpha/policy", POLICY, (OK, DENIED, DENIED, OK)),
    ("PUT", "/api/v1/tenants/alpha/policy", {"prefixes": ["192.0.2.0/24"]}, (OK, DENIED, DENIED, DENIED)),
    ("PUT", "/api/v1/tenants/beta/policy", POLICY, (OK, DENIED, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/tenants/alpha/traffic", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/tenants/beta/traffic", None, (OK, OK, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/tenants/alpha/blocked-sources", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/tenants/beta/blocked-sources", None, (OK, OK, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/tenants/alpha/reports/2025-01", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/tenants/beta/reports/2025-01", None, (OK, OK, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/reports/branding", None, (OK, OK, DENIED, DENIED)),
    ("PUT", "/api/v1/reports/branding", {"operator_name": "Example Networks"}, (OK, DENIED, DENIED, DENIED)),
    ("DELETE", "/api/v1/reports/branding", None, (OK, DENIED, DENIED, DENIED)),
    ("GET", "/api/v1/reports/mailings", None, (OK, OK, OK, OK)),
    ("POST", "/api/v1/reports/mailings/alpha/2025-01/retry", None, (CONFLICT, DENIED, DENIED, DENIED)),
    ("POST", "/api/v1/reports/mailings/beta/2025-01/retry", None, (CONFLICT, DENIED, DENIED, DENIED)),
    ("GET", "/api/v1/incidents", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/incidents/inc-alpha-1", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/incidents/inc-beta-1", None, (OK, OK, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/incidents/inc-guessed-9", None, (HIDDEN, HIDDEN, HIDDEN, HIDDEN)),
    ("POST", "/api/v1/incidents/inc-alpha-1/acknowledge", None, (OK, OK, DENIED, OK)),
    ("POST", "/api/v1/incidents/inc-beta-1/acknowledge", None, (OK, OK, HIDDEN, HIDDEN)),
    ("POST", "/api/v1/incidents/inc-alpha-1/notes", NOTE, (CREATED, CREATED, DENIED, CREATED)),
    ("POST", "/api/v1/incidents/inc-beta-1/notes", NOTE, (CREATED, CREATED, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/incidents/inc-alpha-1/pcap/dropped", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/incidents/inc-beta-1/pcap/dropped", None, (OK, OK, HIDDEN, HIDDEN)),
    ("POST", "/api/v1/incidents/inc-alpha-1/escalate", {"kind": "flowspec"}, (CREATED, CREATED, DENIED, DENIED)),
    ("POST", "/api/v1/incidents/inc-beta-1/escalate", {"kind": "flowspec"}, (CONFLICT, CONFLICT, HIDDEN, HIDDEN)),
    ("DELETE", "/api/v1/incidents/inc-alpha-1/escalate", None, (CONFLICT, CONFLICT, DENIED, DENIED)),
    ("DELETE", "/api/v1/incidents/inc-beta-1/escalate", None, (CONFLICT, CONFLICT, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/bgp", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/audit", None, (OK, OK, DENIED, DENIED)),
    ("GET", "/api/v1/notifiers", None, (OK, OK, DENIED, DENIED)),
    ("GET", "/api/v1/notify", None, (OK, OK, DENIED, DENIED)),
    ("PUT", "/api/v1/notify", NOTIFY, (OK, DENIED, DENIED, DENIED)),
    ("GET", "/api/v1/users", None, (OK, DENIED, DENIED, DENIED)),
    ("POST", "/api/v1/users", {"name": "gina", "password": "long enough", "role": "noc"},
     (CREATED, DENIED, DENIED, DENIED)),
    ("POST", "/api/v1/users/frank/disable", None, (OK, DENIED, DENIED, DENIED)),
    ("POST", "/api/v1/users/frank/enable", None, (OK, DENIED, DENIED, DENIED)),
    ("PUT", "/api/v1/users/frank/password", {"password": "another long one"}, (OK, DENIED, DENIED, DENIED)),
    ("PATCH", "/api/v1/users/frank", {"access": "write"}, (OK, DENIED, DENIED, DENIED)),
    ("DELETE", "/api/v1/users/frank", None, (OK, DENIED, DENIED, DENIED)),
    ("GET", "/api/v1/tokens", None, (OK, DENIED, DENIED, DENIED)),
    ("POST", "/api/v1/tokens", {"role": "tenant", "tenant": "alpha", "expires": 30},
     (CREATED, DENIED, DENIED, DENIED)),
    ("DELETE", "/api/v1/tokens/5", None, (OK, DENIED, DENIED, DENIED)),
    ("GET", "/api/v1/templates", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/templates/strict", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/templates/lenient", None, (OK, OK, HIDDEN, HIDDEN)),
    ("PUT", "/api/v1/templates/strict", {"policy": {"sensitivity": 5}}, (OK, DENIED, DENIED, DENIED)),
    ("DELETE", "/api/v1/templates/lenient", None, (OK, DENIED, DENIED, DENIED)),
    ("GET", "/api/v1/tenants/alpha/template", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/tenants/beta/template", None, (OK, OK, HIDDEN, HIDDEN)),
    ("PUT", "/api/v1/tenants/alpha/template", {"template": None}, (OK, DENIED, DENIED, DENIED)),
    ("PUT", "/api/v1/tenants/beta/template", {"template": "strict"}, (OK, DENIED, HIDDEN, HIDDEN)),
    ("GET", "/metrics", None, (OK, OK, OK, OK)),
    # The live console (issue 16): a tenant never reads another tenant's series or stream.
    ("GET", "/api/v1/console/tenants", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/tenants/alpha/series", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/tenants/beta/series?range=30d", None, (OK, OK, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/tenants/alpha/live?events=1", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/tenants/beta/live?events=1", None, (OK, OK, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/incidents/inc-alpha-1/talkers", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/incidents/inc-beta-1/talkers", None, (OK, OK, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/tenants/alpha/talkers", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/tenants/beta/talkers", None, (OK, OK, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/tenants/alpha/servers", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/tenants/beta/servers", None, (OK, OK, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/tenants/alpha/servers/198.51.100.10", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/tenants/beta/servers/203.0.113.5", None, (OK, OK, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/openapi.json", None, (OK, OK, OK, OK)),
    # The fleet (issue 17): the NOC's views; the site paths take a site's token and no user's.
    ("GET", "/api/v1/fleet/sites", None, (OK, OK, DENIED, DENIED)),
    ("GET", "/api/v1/fleet/traffic", None, (OK, OK, DENIED, DENIED)),
    ("GET", "/api/v1/fleet/incidents", None, (OK, OK, DENIED, DENIED)),
    # A tenant across the sites (issue 17, item 3): its own tenant's, as its other views.
    ("GET", "/api/v1/fleet/tenants/alpha/traffic", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/fleet/tenants/beta/traffic", None, (OK, OK, HIDDEN, HIDDEN)),
    ("GET", "/api/v1/fleet/tenants/alpha/destinations", None, (OK, OK, OK, OK)),
    ("GET", "/api/v1/fleet/tenants/beta/destinations", None, (OK, OK, HIDDEN, HIDDEN)),
    ("POST", "/api/v1/fleet/site/sync", {"site": "ams1"}, (UNAUTHENTICATED,) * 4),
    ("POST", "/api/v1/fleet/site/ingest", {"site": "ams1"}, (UNAUTHENTICATED,) * 4),
    ("POST", "/api/v1/fleet/site/evidence?site=ams1&incident=inc-1&kind=dropped", None, (UNAUTHENTICATED,) * 4),
    ("POST", "/api/v1/fleet/site/announcements", {"site": "ams1"}, (UNAUTHENTICATED,) * 4),
]
CASES = [(who, method, path, body, expected[i]) for method, path, body, expected in MATRIX
         for i, who in enumerate(ROLES)]


def test_matrix_covers_every_documented_operation():
    covered = {(m.lower(), p.split("?")[0].replace("/users/frank", "/users/{name}").replace("/tokens/5", "/tokens/{token_id}")
                .replace("inc-alpha-1", "{incident_id}").replace("inc-beta-1", "{incident_id}")
                .replace("inc-guessed-9", "{incident_id}").replace("/dropped", "/{kind}")
                .replace("alpha", "{tenant_id}").replace("beta", "{tenant_id}")
                .replace("nonexistent", "{tenant_id}").replace("2025-01", "{period}")
                .replace("198.51.100.10", "{address}").replace("203.0.113.5", "{address}")
                .replace("/templates/strict", "/templates/{name}").replace("/templates/lenient", "/templates/{name}"))
               for m, p, _, _ in MATRIX}
    documented = {(method, path) for path, ops in openapi_document()["paths"].items() for method in ops}
    assert documented <= covered, documented - covered


@pytest.fixture
async def deployment(tmp_path):
    async with service(tmp_path, pcap_root=tmp_path) as (url, store, appliance):
        for incident, tenant, target in (("inc-alpha-1", "alpha", "198.51.100.10"),
                                         ("inc-beta-1", "beta", "203.0.113.5")):
            for e in attack_events(incident, tenant=tenant, target=target, pcap_dir=tmp_path):
                await store.record_event(e.to_dict())
        tokens = {who: await add_token(store, role, tenant, access) for who, (role, tenant, access) in ROLES.items()}
        await add_token(store, "noc")  # id 5, revoked by the matrix
        # A user to disable, enable, delete; no password hash needed (argon2 per case is slow).
        await store.add_user(User("frank", "$argon2id$not-a-real-hash", "tenant", "alpha", "read", time.time()))
        # Templates: alpha follows "strict"; "lenient" is followed by no one (beta follows none).
        await store.save_policy_template("strict", {"sensitivity": 3.0}, "test")
        await store.save_policy_template("lenient", {"sensitivity": 0.5}, "test")
        await store.set_template_link("alpha", "strict")
        yield url, tokens


@pytest.mark.parametrize(("who", "method", "path", "body", "expected"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
async def test_access(deployment, who, method, path, body, expected):
    url, tokens = deployment
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tokens[who]}"}) as http, \
            http.request(method, f"{url}{path}", json=body) as r:
        raw = await r.read()
        text = raw.decode(errors="replace")
        assert r.status == expected, f"{who} {method} {path}: {r.status} {text[:300]}"
        if expected == HIDDEN:
            # Indistinguishable from a nonexistent id: no hint that the object exists.
            error = (await r.json())["error"]
            name = path.split("/")[5 if path.startswith("/api/v1/fleet/") else 4]   # the object's id
            assert error in (f"no tenant {name!r}", f"no incident {name!r}", f"no template {name!r}"), error
            assert "Beta Shop" not in text and "203.0.113" not in text
        if r.status == OK and method == "GET" and path == "/api/v1/incidents" and who.startswith("alpha"):
            assert {i["tenant"] for i in (await r.json())["incidents"]} == {"alpha"}
        if r.status == OK and path == "/api/v1/tenants" and who.startswith("alpha"):
            assert [t["id"] for t in (await r.json())["tenants"]] == ["alpha"]
        if r.status == OK and path == "/api/v1/incidents" and method == "GET" and who in ("admin", "noc"):
            assert {i["tenant"] for i in (await r.json())["incidents"]} == {"alpha", "beta"}


async def test_tenant_filter_cannot_widen_scope(deployment):
    url, tokens = deployment
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tokens['alpha_ro']}"}) as http:
        async with http.get(f"{url}/api/v1/incidents", params={"tenant": "beta"}) as r:
            assert r.status == 200 and (await r.json())["incidents"] == []
        for path in ("/incidents/inc-beta-1", "/tenants/beta"):  # UI pages scope the same way
            async with http.get(f"{url}{path}") as r:
                assert r.status == 404
