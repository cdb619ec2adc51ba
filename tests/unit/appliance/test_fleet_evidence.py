"""Issue 17, item 3: an incident's PCAP evidence flows up from the site's agent to the central
server, once, after an outage too; a site writes its own incidents' evidence only; a file over the
cap is refused by name; the central download keeps the tenant's access rules.

A real central SecureWatch (aiohttp over TCP, SQLite) and a real agent, as in test_fleet_agent."""

from __future__ import annotations

import hashlib
import ipaddress
import pathlib
import struct
import time

import aiohttp
from test_fleet_agent import LabAppliance, agent_for, central, enrolled, wait_for

from appliance import fleet_evidence
from policy.events import Event, EventBus, EventType, Severity
from securewatch import auth, fleet_evidence_store, fleet_store
from securewatch.store import Store, record_event_in
from tenants import TenantSet

EVIDENCE = "/api/v1/fleet/site/evidence"


def udp_frame(source: str) -> bytes:
    """An Ethernet frame of a UDP datagram from `source` (198.18.0.0/15) to 198.51.100.10 port 53."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, ipaddress.IPv4Address(source).packed,
                     ipaddress.IPv4Address("198.51.100.10").packed)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + struct.pack("!HHHH", 40000, 53, 8, 0)


def lab_pcap(path: pathlib.Path, payload: bytes) -> bytes:
    """A classic PCAP file: the global header and one record of `payload`."""
    data = (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 256, 1)
            + struct.pack("<IIII", int(time.time()), 0, len(payload), len(payload)) + payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


async def user_token(store: Store, role: str, tenant: str | None = None) -> str:
    token = auth.new_token()
    await store.add_token(auth.token_hash(token), f"test-{role}-{tenant}", role, tenant, "read")
    return token


async def stored_evidence(store: Store) -> list[tuple]:
    return await store.run(lambda b: b.execute(
        "SELECT incident_id, kind, site, bytes FROM fleet_evidence ORDER BY kind").fetchall())


async def download(url: str, token: str, incident: str, kind: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.get(f"{url}/api/v1/incidents/{incident}/pcap/{kind}") as r:
        return r.status, await r.read()


async def upload(url: str, token: str, data: bytes, **params: str) -> tuple[int, dict]:
    query = {"kind": "dropped", "sha256": hashlib.sha256(data).hexdigest(), **params}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.post(f"{url}{EVIDENCE}", params=query, data=data) as r:
        return r.status, await r.json()


async def test_item3_incident_pcap_and_samples_arrive_once_after_central_outage_and_keep_tenant_access(tmp_path):
    appliance = LabAppliance()
    bus = EventBus()
    state = tmp_path / "state"
    dropped = lab_pcap(state / "pcap" / "inc-1-dropped.pcap", udp_frame("198.18.0.7"))
    passed = lab_pcap(state / "pcap" / "inc-1-passed.pcap", udp_frame("198.18.0.9"))
    pcap = {"dropped": {"path": str(state / "pcap" / "inc-1-dropped.pcap"), "packets": 1, "bytes": len(dropped)},
            "passed": {"path": str(state / "pcap" / "inc-1-passed.pcap"), "packets": 1, "bytes": len(passed)}}
    async with central(tmp_path) as (url, store):
        # beta: a tenant of the central set that is not the incident's.
        token = await seeded_and_enrolled(store)
        port = int(url.rsplit(":", 1)[1])
    agent = agent_for(url, token, appliance, state, bus=bus)
    await agent.start()
    try:
        t0 = time.time()
        # The central server is down while the incident starts and ends: the files are queued.
        bus.publish(Event(EventType.ATTACK_START, "alpha", "udp flood", Severity.CRITICAL,
                          incident_id="inc-1", timestamp=t0, details={"pcap": pcap}))
        bus.publish(Event(EventType.ATTACK_END, "alpha", "udp flood ended", Severity.INFO,
                          incident_id="inc-1", timestamp=t0 + 5, details={"pcap": pcap}))
        await agent.collect()
        assert await agent.in_queue(agent.queue.evidence_count) == 2
        async with central(tmp_path, port) as (_, store):
            rows = await wait_for(lambda: _rows(store, 2), what="the evidence at central")
            assert rows == [("ams1:inc-1", "dropped", "ams1", len(dropped)),
                            ("ams1:inc-1", "passed", "ams1", len(passed))]
            await wait_for(lambda: _no_evidence(agent), what="the evidence queue drained")
            # A retry of the same file (its answer lost) is taken and not stored again.
            status, answer = await upload(url, token, dropped, site="ams1", incident="inc-1")
            assert (status, answer) == (200, {"stored": False, "duplicate": True})
            assert len(await stored_evidence(store)) == 2

            noc = await user_token(store, "noc")
            assert await download(url, noc, "ams1:inc-1", "dropped") == (200, dropped)
            assert await download(url, await user_token(store, "tenant", "alpha"), "ams1:inc-1", "passed") == (
                200, passed)
            status, _ = await download(url, await user_token(store, "tenant", "beta"), "ams1:inc-1", "dropped")
            assert status == 404

            # Item 2: the samples in those files are the central incident's anatomy, as a local one's.
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {noc}"}) as http:
                async with http.get(f"{url}/api/v1/incidents/ams1:inc-1/talkers") as r:
                    assert r.status == 200
                    anatomy = await r.json()
                async with http.get(f"{url}/incidents/ams1:inc-1") as r:
                    assert r.status == 200
                    page = await r.text()
            assert anatomy["dropped"]["sources"][0]["key"] == "198.18.0.7"
            assert anatomy["passed"]["sources"][0]["key"] == "198.18.0.9"
            assert "198.18.0.7" in page and "UDP 53" in page
    finally:
        await agent.stop()


async def seeded_and_enrolled(store) -> str:
    """The central set (alpha, the incident's tenant; beta, another) and site ams1's token."""
    await store.save_tenant_set(TenantSet.from_dicts([{"id": "alpha", "prefixes": ["198.51.100.0/25"]},
                                                      {"id": "beta", "prefixes": ["203.0.113.0/24"]}]),
                                "test", "seed")
    return await enrolled(store)


async def _rows(store: Store, n: int) -> list[tuple] | None:
    rows = await stored_evidence(store)
    return rows if len(rows) >= n else None


async def _no_evidence(agent) -> bool:
    return await agent.in_queue(agent.queue.evidence_count) == 0


async def _incident_of(store: Store, site: str, incident: str) -> None:
    event = {"type": "ATTACK_START", "incident_id": incident, "tenant": "alpha", "timestamp": time.time(),
             "message": "udp flood", "details": {}}
    await store.run(lambda b: fleet_store.record_site_event(b, site, event, record_event_in))


async def test_item3_a_site_cannot_write_evidence_for_another_sites_incident(tmp_path):
    async with central(tmp_path) as (url, store):
        ams1 = await enrolled(store, "ams1")
        fra1 = await enrolled(store, "fra1")
        await _incident_of(store, "ams1", "inc-1")
        data = lab_pcap(tmp_path / "x.pcap", b"\x00" * 60)
        status, answer = await upload(url, fra1, data, site="ams1", incident="inc-1")
        assert status == 403 and "fra1" in answer["error"], answer
        # Its own name gets its own incident only, which does not exist: nothing of ams1's is written.
        status, answer = await upload(url, fra1, data, site="fra1", incident="inc-1")
        assert status == 404 and "fra1:inc-1" in answer["error"], answer
        assert await stored_evidence(store) == []
        status, _ = await upload(url, ams1, data, site="ams1", incident="inc-1")
        assert status == 200 and len(await stored_evidence(store)) == 1


async def test_item3_oversize_evidence_is_refused_naming_the_limit(tmp_path):
    async with central(tmp_path) as (url, store):
        token = await enrolled(store)
        await _incident_of(store, "ams1", "inc-1")
        data = b"\x00" * (fleet_evidence_store.EVIDENCE_MAX_BYTES + 1)
        status, answer = await upload(url, token, data, site="ams1", incident="inc-1")
        assert status == 413, answer
        assert str(fleet_evidence_store.EVIDENCE_MAX_BYTES) in answer["error"] and "evidence" in answer["error"]
        assert await stored_evidence(store) == []
        status, answer = await upload(url, token, b"abc", site="ams1", incident="inc-1", kind="other")
        assert status == 422 and answer["error"].startswith("kind:"), answer


def test_item3_agent_and_central_share_one_per_file_cap():
    assert fleet_evidence.EVIDENCE_MAX_BYTES == fleet_evidence_store.EVIDENCE_MAX_BYTES


class EscalatingAppliance(LabAppliance):
    """The lab appliance with a [bgp] section: one upstream session, established."""

    def bgp_status(self) -> dict:
        return {"peers": [{"address": "192.0.2.1", "peer_as": 64500, "state": "established", "uptime_s": 12.0}],
                "announcements": [], "speaker": {"running": True}}


def escalation(action: str, at: float) -> Event:
    """An `escalation.controller` change as it is published on the bus."""
    match = {"destination": "198.51.100.10/32", "protocol": 17, "protocol_name": "UDP", "source_port": None,
             "destination_port": [[53, 53]], "packet_length": None, "fragment": None, "tcp_flags": None,
             "action": "discard", "rate_bytes": 0, "omitted": []}
    return Event(EventType.ESCALATION, "alpha", f"{action} FlowSpec rule for 198.51.100.10/32: over the uplink",
                 Severity.WARNING, incident_id="inc-1", destinations=("198.51.100.10/32",), timestamp=at,
                 details={"action": action, "kind": "flowspec", "match": match, "reason": "uplink",
                          "actor": None, "peers": ["192.0.2.1"]})


async def test_item3_bgp_announcements_go_up_tagged_with_the_site_once_after_an_outage(tmp_path):
    appliance = EscalatingAppliance()
    bus = EventBus()
    async with central(tmp_path) as (url, store):
        token = await seeded_and_enrolled(store)
        port = int(url.rsplit(":", 1)[1])
    agent = agent_for(url, token, appliance, tmp_path / "state", bus=bus)
    await agent.start()
    try:
        t0 = time.time()
        bus.publish(Event(EventType.ATTACK_START, "alpha", "udp flood", Severity.CRITICAL,
                          incident_id="inc-1", timestamp=t0))
        bus.publish(escalation("announce", t0 + 1))
        bus.publish(escalation("withdraw", t0 + 9))
        await agent.collect()
        async with central(tmp_path, port) as (_, store):
            noc = await user_token(store, "noc")
            detail = await wait_for(lambda: _announced(url, noc, 2), what="the announcements at central")
            shown = [(a["site"], a["action"], a["kind"], a["match"]["destination"], a["at"], a["peers"])
                     for a in detail["site_announcements"]]
            peers = [{"address": "192.0.2.1", "state": "established"}]
            assert shown == [("ams1", "announce", "flowspec", "198.51.100.10/32", t0 + 1, peers),
                             ("ams1", "withdraw", "flowspec", "198.51.100.10/32", t0 + 9, peers)]
            # Sent again (its answer lost): stored once.
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
                    http.post(f"{url}/api/v1/fleet/site/announcements",
                              json={"site": "ams1", "announcements": [
                                  {k: v for k, v in a.items() if k != "site"}
                                  for a in detail["site_announcements"]]}) as r:
                assert r.status == 200 and (await r.json()) == {"stored": 0, "skipped": 2}
            assert len((await _detail(url, noc))["site_announcements"]) == 2
            # The tenant sees its announcements, not the provider's routers; another tenant nothing.
            own = await _detail(url, await user_token(store, "tenant", "alpha"))
            assert [a["action"] for a in own["site_announcements"]] == ["announce", "withdraw"]
            assert all("peers" not in a for a in own["site_announcements"])
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {noc}"}) as http, \
                    http.get(f"{url}/incidents/ams1:inc-1") as r:
                page = await r.text()
            assert 'id="site-upstream"' in page and "192.0.2.1 established" in page
            beta = await user_token(store, "tenant", "beta")
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {beta}"}) as http, \
                    http.get(f"{url}/api/v1/incidents/ams1:inc-1") as r:
                assert r.status == 404
    finally:
        await agent.stop()


async def _detail(url: str, token: str) -> dict:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.get(f"{url}/api/v1/incidents/ams1:inc-1") as r:
        return await r.json() if r.status == 200 else {}


async def _announced(url: str, token: str, n: int) -> dict | None:
    detail = await _detail(url, token)
    return detail if len(detail.get("site_announcements") or []) >= n else None


async def test_item3_a_site_cannot_write_announcements_for_another_site(tmp_path):
    async with central(tmp_path) as (url, store):
        await enrolled(store, "ams1")
        fra1 = await enrolled(store, "fra1")
        await _incident_of(store, "ams1", "inc-1")
        item = {"incident_id": "inc-1", "tenant": "alpha", "at": time.time(), "action": "announce",
                "kind": "rtbh", "match": {"destination": "198.51.100.10/32"}, "peers": []}
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {fra1}"}) as http:
            async with http.post(f"{url}/api/v1/fleet/site/announcements",
                                 json={"site": "ams1", "announcements": [item]}) as r:
                assert r.status == 403
            async with http.post(f"{url}/api/v1/fleet/site/announcements",
                                 json={"site": "fra1", "announcements": [{**item, "kind": "blackhole"}]}) as r:
                assert r.status == 422 and (await r.json())["error"].startswith("announcements[0].kind:")
            async with http.post(f"{url}/api/v1/fleet/site/announcements",
                                 json={"site": "fra1", "announcements": [item]}) as r:
                assert (r.status, await r.json()) == (200, {"stored": 0, "skipped": 1})
        assert await store.run(lambda b: b.execute("SELECT COUNT(*) FROM fleet_announcements").fetchone()[0]) == 0


async def test_item3_agent_drops_a_file_over_the_cap_not_retrying_it_and_sends_the_rest(tmp_path):
    appliance = LabAppliance()
    bus = EventBus()
    state = tmp_path / "state"
    big = state / "pcap" / "inc-2-dropped.pcap"
    lab_pcap(big, udp_frame("198.18.0.7"))
    with big.open("ab") as f:
        f.truncate(fleet_evidence.EVIDENCE_MAX_BYTES + 1)
    passed = lab_pcap(state / "pcap" / "inc-2-passed.pcap", udp_frame("198.18.0.9"))
    pcap = {"dropped": {"path": str(big)}, "passed": {"path": str(state / "pcap" / "inc-2-passed.pcap")}}
    async with central(tmp_path) as (url, store):
        token = await enrolled(store)
        async with agent_for(url, token, appliance, state, bus=bus) as agent:
            bus.publish(Event(EventType.ATTACK_START, "alpha", "udp flood", Severity.CRITICAL, incident_id="inc-2"))
            bus.publish(Event(EventType.ATTACK_END, "alpha", "ended", Severity.INFO, incident_id="inc-2",
                              details={"pcap": pcap}))
            await agent.collect()
            await wait_for(lambda: _no_evidence(agent), what="the evidence queue drained")
            assert await stored_evidence(store) == [("ams1:inc-2", "passed", "ams1", len(passed))]


async def test_item5_agent_drops_a_file_the_appliance_pruned_before_it_went_and_sends_the_rest(tmp_path):
    import os  # noqa: PLC0415

    from structlog.testing import capture_logs  # noqa: PLC0415

    from policy.pcap import prune  # noqa: PLC0415

    appliance = LabAppliance()
    bus = EventBus()
    state = tmp_path / "state"
    old = state / "pcap" / "inc-3-dropped.pcap"
    lab_pcap(old, udp_frame("198.18.0.7"))
    passed = lab_pcap(state / "pcap" / "inc-4-passed.pcap", udp_frame("198.18.0.9"))
    async with central(tmp_path) as (url, store):
        token = await enrolled(store)
        async with agent_for(url, token, appliance, state, bus=bus) as agent:
            for incident, path in (("inc-3", old), ("inc-4", state / "pcap" / "inc-4-passed.pcap")):
                bus.publish(Event(EventType.ATTACK_START, "alpha", "udp flood", Severity.CRITICAL,
                                  incident_id=incident))
                bus.publish(Event(EventType.ATTACK_END, "alpha", "ended", Severity.INFO, incident_id=incident,
                                  details={"pcap": {pcap_kind(path): {"path": str(path)}}}))
            # inc-3's capture ended 100 days ago: the engine's retention deletes it before it is sent.
            os.utime(old, (time.time() - 100 * 86400,) * 2)
            assert prune(state / "pcap", time.time(), 90 * 86400, 1 << 30, set()).files == 1
            with capture_logs() as logs:
                await agent.collect()
                await wait_for(lambda: _no_evidence(agent), what="the evidence queue drained")
            assert await stored_evidence(store) == [("ams1:inc-4", "passed", "ams1", len(passed))]
            assert [e["path"] for e in logs if e["event"] == "fleet.evidence_gone"] == [str(old)]


def pcap_kind(path: pathlib.Path) -> str:
    return path.stem.rsplit("-", 1)[1]
