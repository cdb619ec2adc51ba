"""Issue 14, item 5: REST control of upstream escalation, its scoping, its audit trail, /metrics."""

from __future__ import annotations

import aiohttp
from test_sw_helpers import add_token, add_user, attack_events, login, service

from policy.events import Event, EventBus, EventType, Severity
from securewatch import metrics
from tenants import Tenant
from tests.support import await_until


async def _json(r: aiohttp.ClientResponse):
    return r.status, await r.json()


async def seeded(store):
    for incident, tenant, target in (("inc-alpha-1", "alpha", "198.51.100.10"), ("inc-beta-1", "beta", "203.0.113.5")):
        for e in attack_events(incident, tenant=tenant, target=target):
            await store.record_event(e.to_dict())


async def test_noc_announces_and_withdraws_flowspec_and_the_audit_log_says_who(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        await seeded(store)
        noc = {"Authorization": f"Bearer {await add_token(store, 'noc')}"}
        tenant = {"Authorization": f"Bearer {await add_token(store, 'tenant', 'alpha', 'write')}"}
        async with aiohttp.ClientSession(headers=noc) as http:
            status, body = await _json(await http.post(f"{url}/api/v1/incidents/inc-alpha-1/escalate",
                                                       json={"kind": "flowspec"}))
            assert status == 201, body
            [change] = body["changes"]
            assert change["action"] == "announce" and change["match"]["destination"] == "198.51.100.10/32"

            status, bgp = await _json(await http.get(f"{url}/api/v1/bgp"))
            assert status == 200 and bgp["peers"][0]["state"] == "established"
            [ann] = bgp["announcements"]
            assert {k: ann[k] for k in ("kind", "incident", "tenant", "reason")} == {
                "kind": "flowspec", "incident": "inc-alpha-1", "tenant": "alpha", "reason": "manual"}
            assert ann["since"] > 0 and ann["match"]["protocol"] == 17

            status, body = await _json(await http.post(f"{url}/api/v1/incidents/inc-alpha-1/escalate",
                                                       json={"kind": "rtbh"}))
            assert status == 409 and "escalate_rtbh" in body["error"]      # alpha never agreed to a blackhole
            status, body = await _json(await http.post(f"{url}/api/v1/incidents/inc-alpha-1/escalate",
                                                       json={"kind": "blackhole"}))
            assert status == 400 and body["problems"][0].startswith("kind:")
            status, body = await _json(await http.post(f"{url}/api/v1/incidents/inc-beta-1/escalate",
                                                       json={"kind": "flowspec"}))
            assert status == 409 and "monitor" in body["error"]

        async with aiohttp.ClientSession(headers=tenant) as http:
            status, own = await _json(await http.get(f"{url}/api/v1/bgp"))
            assert status == 200 and "peers" not in own and [a["tenant"] for a in own["announcements"]] == ["alpha"]
            r = await http.post(f"{url}/api/v1/incidents/inc-alpha-1/escalate", json={"kind": "flowspec"})
            assert r.status == 403
            assert (await http.delete(f"{url}/api/v1/incidents/inc-alpha-1/escalate")).status == 403

        async with aiohttp.ClientSession(headers=noc) as http:
            status, body = await _json(await http.delete(f"{url}/api/v1/incidents/inc-alpha-1/escalate"))
            assert status == 200 and [c["action"] for c in body["changes"]] == ["withdraw"]
            assert appliance.ladder.announcements == {}
            _, log = await _json(await http.get(f"{url}/api/v1/audit"))
            entries = [(e["action"], e["target"]) for e in log["entries"]]
            assert entries[:2] == [("incident.withdraw", "inc-alpha-1"), ("incident.escalate", "inc-alpha-1")]
            assert all(e["actor"].startswith("token:") for e in log["entries"][:2])


async def test_tenants_see_only_their_own_announcements(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        await seeded(store)
        # beta mitigates here (the shared tenants have it in monitor mode, which never escalates)
        appliance.tenants = appliance.tenants.replaced(
            Tenant.from_dict({"id": "beta", "name": "Beta Shop", "prefixes": ["203.0.113.0/24"]}))
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            for iid in ("inc-alpha-1", "inc-beta-1"):
                r = await http.post(f"{url}/api/v1/incidents/{iid}/escalate", json={"kind": "flowspec"})
                assert r.status == 201, await r.text()
        beta = {"Authorization": f"Bearer {await add_token(store, 'tenant', 'beta')}"}
        async with aiohttp.ClientSession(headers=beta) as http:
            _, body = await _json(await http.get(f"{url}/api/v1/bgp"))
            assert [a["incident"] for a in body["announcements"]] == ["inc-beta-1"]
            assert "198.51.100" not in str(body)


def test_metrics_export_session_state_announcements_and_speaker_restarts():
    status = {"tenants": {}, "bgp": {
        "peers": [{"address": "192.0.2.2", "peer_as": 64500, "state": "established", "uptime_s": 3.0},
                  {"address": "192.0.2.6", "peer_as": 64501, "state": "down", "uptime_s": 0.0}],
        "announcements": [{"kind": "flowspec"}, {"kind": "flowspec"}, {"kind": "rtbh"}],
        "speaker": {"running": True, "restarts": 2}, "refused": 1}}
    text = metrics.render(status).decode()
    assert 'seawall_bgp_session_up{peer="192.0.2.2",state="established"} 1.0' in text
    assert 'seawall_bgp_session_up{peer="192.0.2.6",state="down"} 0.0' in text
    assert 'seawall_bgp_announcements{kind="flowspec"} 2.0' in text
    assert 'seawall_bgp_announcements{kind="rtbh"} 1.0' in text
    assert "seawall_bgp_speaker_restarts_total 2.0" in text
    assert "seawall_bgp_announcements_refused_total 1.0" in text
    assert "seawall_bgp" not in metrics.render({"tenants": {}}).decode()


async def test_incident_page_shows_announcements_and_lets_the_noc_announce_and_withdraw(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        await seeded(store)
        await add_user(store, "nina", "noc")
        await add_user(store, "tina", "tenant", "alpha", "write")
        noc, csrf = await login(url, "nina")
        try:
            async with noc.get(f"{url}/incidents/inc-alpha-1") as r:
                page = await r.text()
            assert "Upstream (BGP)" in page and "Nothing announced upstream" in page
            # Item 1: the session state (and the speaker's) is on the page for the NOC.
            assert 'id="bgp-sessions"' in page and "192.0.2.2 (AS64500) established, up 5 s" in page
            async with noc.post(f"{url}/incidents/inc-alpha-1/escalate", data={"kind": "flowspec", "csrf_token": csrf},
                                allow_redirects=False) as r:
                assert r.status == 302
            async with noc.get(f"{url}/incidents/inc-alpha-1") as r:
                page = await r.text()
            assert "<code>198.51.100.10/32</code>" in page and "manual" in page and "Withdraw all" in page
        finally:
            await noc.close()

        tenant, tcsrf = await login(url, "tina")
        try:
            async with tenant.get(f"{url}/incidents/inc-alpha-1") as r:
                page = await r.text()
            assert "<code>198.51.100.10/32</code>" in page and "Announce FlowSpec" not in page
            assert "bgp-sessions" not in page and "192.0.2.2" not in page     # the provider's routers: NOC only
            async with tenant.post(f"{url}/incidents/inc-alpha-1/withdraw", data={"csrf_token": tcsrf},
                                   allow_redirects=False) as r:
                assert r.status == 403
        finally:
            await tenant.close()
        assert len(appliance.ladder.announcements) == 1

        noc, csrf = await login(url, "nina")
        try:
            async with noc.post(f"{url}/incidents/inc-alpha-1/withdraw", data={"csrf_token": csrf},
                                allow_redirects=False) as r:
                assert r.status == 302
            assert appliance.ladder.announcements == {}
        finally:
            await noc.close()


async def test_escalation_events_join_the_incidents_events_without_changing_it(tmp_path):
    bus = EventBus()
    async with service(tmp_path, bus=bus) as (url, store, _):
        await seeded(store)
        before = await store.incident("inc-alpha-1")
        bus.publish(Event(EventType.ESCALATION, "alpha", "announced FlowSpec rule for 198.51.100.10/32 by nina",
                          Severity.WARNING, incident_id="inc-alpha-1", destinations=("198.51.100.10/32",),
                          details={"action": "announce", "kind": "flowspec"}))

        async def stored():
            return [e for e in await store.incident_events("inc-alpha-1") if e["type"] == "ESCALATION"]

        [event] = await await_until(stored, what="the ESCALATION event stored")
        assert event["message"].startswith("announced FlowSpec") and event["escalation"]["kind"] == "flowspec"
        after = await store.incident("inc-alpha-1")
        assert (after.state, after.ended, after.vectors) == (before.state, before.ended, before.vectors)
