"""Issue 15, item 6: the application-layer vectors reach every feed with their explanation and top
sources, and the block list is visible (API scoped per tenant, tenant page, status, /metrics).

The events come from the real policy engine: an HTTP flood against a web server whose clients it
learned (tests/unit/policy/test_appflood.py's lab), so what the feeds render is what the engine says.
"""

from __future__ import annotations

import email
import email.policy
import json
import time

import aiohttp
import pytest
from pysnmp.smi.builder import MibBuilder
from pysnmp.smi.view import MibViewController

from appliance.commands.status import render_human
from policy.events import Event, EventType
from securewatch import metrics
from securewatch.notify import parse_notify_config
from securewatch.notify.mail import render_email
from securewatch.notify.snmp import VARBIND_OIDS, varbinds
from securewatch.notify.syslog import SD_ID, format_rfc5424
from securewatch.notify.webhook import WebhookNotifier
from tenants import TenantSet
from tests.unit.policy.fakes import ConnTraffic, tcp_frame
from tests.unit.policy.scenarios import WEB
from tests.unit.policy.test_appflood import bots, warm_lab
from tests.unit.securewatch.test_notify_formats import parse_rfc5424, syslog_receiver
from tests.unit.securewatch.test_sw_helpers import (
    TENANTS,
    InMemoryAppliance,
    add_token,
    add_user,
    login,
    service,
)


@pytest.fixture(scope="module")
def flood(tmp_path_factory):
    """(the ATTACK_START event of an HTTP flood, the lab after it) from the engine."""
    lab = warm_lab(tmp_path_factory.mktemp("engine"))
    lab.dp.add_conns(ConnTraffic("bots", 1, WEB, bots(1000), new_per_s=1.0, established=4.0, http_per_s=40.0,
                                 client_bytes_per_s=12_000.0))
    lab.dp.add_conns(ConnTraffic("heavy", 1, WEB, bots(20, start=2000), new_per_s=2.0, established=4.0,
                                 http_per_s=300.0, client_bytes_per_s=90_000.0))
    lab.flow("bot-requests", 1, [tcp_frame(b, WEB, 40000, 80, "PA", payload=b"GET / HTTP/1.1\r\n")
                                 for b in bots(50)], 2000, attack=True)
    events = lab.run(5)
    start = next(e for e in events if e.type == EventType.ATTACK_START)
    assert "http_flood" in start.vectors and start.explanation
    return start, lab


def _said(event: Event) -> str:
    return event.details["explanations"]["http_flood"]


def test_the_event_carries_the_explanation_and_top_sources(flood):
    event, _ = flood
    assert event.explanation == _said(event) and "requests" in _said(event)
    assert _said(event) in event.message and "http_flood" in event.message
    assert len(event.top_sources) == 10 and set(event.top_sources) <= set(bots(20, start=2000)) | set(bots(1000))
    # The JSON form every consumer (store, generic webhook) reads keeps both.
    again = Event.from_dict(json.loads(json.dumps(event.to_dict())))
    assert again.explanation == _said(event) and again.top_sources == event.top_sources


def test_syslog_has_the_vector_and_the_explanation(flood):
    event, _ = flood
    parsed = parse_rfc5424(format_rfc5424(event, syslog_receiver()))
    assert parsed["sd"][SD_ID]["vector"].split(",")[0] == "http_flood"
    assert parsed["sd"][SD_ID]["explanation"] == _said(event)
    assert _said(event) in parsed["msg"]


def test_snmp_trap_has_the_vector_and_the_explanation(flood):
    event, _ = flood
    view = MibViewController(MibBuilder())
    values = {}
    for vb in varbinds(event):
        vb.resolve_with_mib(view)
        values[tuple(vb[0].get_oid())] = vb[1]
    assert bytes(values[VARBIND_OIDS["seawallVectors"]]).decode().split(",")[0] == "http_flood"
    assert _said(event) in bytes(values[VARBIND_OIDS["seawallMessage"]]).decode()


def test_email_has_the_vector_explanation_and_top_sources(flood):
    event, _ = flood
    receiver = parse_notify_config({"email": [{"smtp_host": "h", "from": "seawall@example.net",
                                               "to": ["noc@example.net"]}]}).email[0]
    msg = email.message_from_bytes(render_email(event, receiver, "q1-1").as_bytes(), policy=email.policy.default)
    plain = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "http_flood" in plain and f"Explanation:  {_said(event)}" in plain
    assert f"Top sources:  {event.top_sources[0]}" in plain
    assert "http_flood" in html and "Explanation" in html and event.top_sources[0] in html
    assert _said(event).replace("`", "`") in html.replace("&#39;", "'")


@pytest.mark.parametrize("kind", ["slack", "discord", "generic", "pagerduty"])
def test_webhooks_have_the_vector_and_the_explanation(flood, kind):
    event, _ = flood
    extra = {"pagerduty": {"routing_key": "R"}, "generic": {"secret": "k3y"}}.get(kind, {})
    notifier = WebhookNotifier(parse_notify_config({"webhook": [{"url": "http://127.0.0.1:9/h", "kind": kind,
                                                                 **extra}]}).webhook[0])
    body = notifier.request(event, "d1")[0].decode()
    assert "http_flood" in body
    assert json.dumps(_said(event))[1:-1] in body
    if kind in ("slack", "discord"):
        assert "Top sources" in body and event.top_sources[0] in body


def _status(lab, tenant_id: str = "alpha") -> dict:
    """The appliance's status parts these feeds read, from the engine as appliance.service builds them."""
    engine = lab.engine
    incidents = [{"id": i.id, "tenant": i.tenant_id, "state": str(i.state), "vectors": dict(i.vectors)}
                 for i in engine.incidents.open.values()]
    flood = engine.appflood
    return {"tenants": {tenant_id: {"passed_pps": 0.0, "dropped_pps": 0.0, "mode": "mitigate",
                                    "blocked_sources": flood.blocked_sources(1, lab.t, time.time()),
                                    "blocked_sources_total": flood.blocked_count(1)}},
            "incidents": incidents, "policy": engine.status()}


def test_metrics_have_the_vector_and_the_block_list(flood):
    _, lab = flood
    text = metrics.render(_status(lab)).decode()
    assert 'seawall_incidents_active_by_vector{tenant="alpha",vector="http_flood"} 1.0' in text
    # The whole botnet: 1,000 bots at 40 requests/s and 20 at 300/s, all above the limit (block_factor 1).
    assert 'seawall_tenant_blocked_sources{tenant="alpha"} 1020.0' in text
    assert "seawall_appflood_source_limits 1.0" in text
    assert 'seawall_appflood_events_total{event="blocks_added"} 1020.0' in text


def test_status_command_prints_the_block_list_with_reasons(flood):
    _, lab = flood
    status = _status(lab)
    status["tenants"]["alpha"].update(passed_packets=0, dropped_packets=0)
    text = render_human({"control_plane": "running", "status_age_s": 0.5, "dataplane_attached_to": ["ext0"],
                         "forwarding": True, "interfaces": [], **status})
    assert "blocked sources (application-layer floods)" in text
    first = status["tenants"]["alpha"]["blocked_sources"][0]
    assert f"{first['src']:<39} {first['reason']}" in text and first["reason"].startswith("http_flood: requests")


class BlockingAppliance(InMemoryAppliance):
    """The in-memory appliance of the SecureWatch tests, with alpha's block list as the engine keeps it."""

    def __init__(self, blocked: dict) -> None:
        super().__init__(TenantSet.from_dicts(TENANTS))
        self.blocked = blocked

    def status(self):
        s = super().status()
        s["tenants"]["alpha"].update(self.blocked)
        return s


async def test_api_block_list_is_scoped_to_the_tenant_and_the_pages_show_it(flood, tmp_path):
    event, lab = flood
    blocked = {k: v for k, v in _status(lab)["tenants"]["alpha"].items() if k.startswith("blocked")}
    async with service(tmp_path, appliance=BlockingAppliance(blocked)) as (url, store, _):
        alpha = {"Authorization": f"Bearer {await add_token(store, 'tenant', 'alpha')}"}
        beta = {"Authorization": f"Bearer {await add_token(store, 'tenant', 'beta')}"}
        async with aiohttp.ClientSession(headers=alpha) as http:
            async with http.get(f"{url}/api/v1/tenants/alpha/blocked-sources") as r:
                assert r.status == 200
                body = await r.json()
            # The total, and the first page (256 entries) of the list, the heaviest sources among them.
            listed = {b["src"] for b in body["blocked_sources"]}
            assert body["total"] == 1020 and len(listed) == 256
            assert set(bots(20, start=2000)) <= listed <= set(bots(20, start=2000)) | set(bots(1000))
            assert all(b["reason"].startswith("http_flood: ") and b["expires"] > time.time()
                       for b in body["blocked_sources"])
            async with http.get(f"{url}/api/v1/tenants/alpha") as r:
                assert r.status == 200
        async with aiohttp.ClientSession(headers=beta) as http:
            async with http.get(f"{url}/api/v1/tenants/alpha/blocked-sources") as r:
                assert r.status == 404                        # another tenant's: as if it did not exist
            async with http.get(f"{url}/api/v1/tenants/beta/blocked-sources") as r:
                assert (await r.json())["blocked_sources"] == []
        # The incident as the store keeps it: the incident page and the report show the explanation.
        await store.record_event(event.to_dict())
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            async with http.get(f"{url}/api/v1/incidents/{event.incident_id}") as r:
                detail = await r.json()
            assert detail["vectors"][0] == "http_flood"
            month = time.strftime("%Y-%m", time.gmtime(event.timestamp))
            async with http.get(f"{url}/api/v1/tenants/alpha/reports/{month}") as r:
                report = await r.json()
            assert report["vectors"].get("http_flood") == 1
            assert report["attacks"][0]["explanation"] == _said(event)
            async with http.get(f"{url}/api/v1/tenants/alpha/reports/{month}", params={"format": "html"}) as r:
                page = await r.text()
            assert "http_flood" in page and "requests" in page and "vs baseline" in page
        await add_user(store, "ops", "admin")
        session, _ = await login(url, "ops")
        async with session:
            async with session.get(f"{url}/tenants/alpha") as r:
                page = await r.text()
            table = page.split('id="blocked-sources"', 1)[1].split("</section>", 1)[0]
            first = blocked["blocked_sources"][0]
            assert first["src"] in table and "http_flood: requests" in table
            async with session.get(f"{url}/incidents/{event.incident_id}") as r:
                page = await r.text()
            assert 'id="explanations"' in page and "vs baseline" in page
            assert 'id="top-sources"' in page and event.top_sources[0] in page
