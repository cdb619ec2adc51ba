"""Issue 17, items 3 and 5, at the central server: a site's incident PCAP evidence goes in through the
real API (ingest for the incident, upload for its files), reads back, and is deleted by the central
retention pass once older than `fleet_evidence_retention_days`; a capture no longer kept is a 404
that says so, and a note on the incident. On SQLite here; tests/netns/test_fleet_evidence_postgres.py
runs the same tests on a real PostgreSQL (`database_url` overridden)."""

from __future__ import annotations

import hashlib
import struct
import time

import aiohttp
import pytest
from structlog.testing import capture_logs
from test_sw_fleet import enroll, post
from test_sw_helpers import add_token, service

from securewatch import fleet
from securewatch.series import SeriesRetention
from securewatch.settings import parse_settings

DAY = 86400.0
EVIDENCE = "/api/v1/fleet/site/evidence"


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path}/central.db"


def pcap_file(source_octet: int) -> bytes:
    """A classic PCAP file (global header, one record) of a UDP datagram from 198.18.0.N to 198.51.100.10."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, bytes([198, 18, 0, source_octet]),
                     bytes([198, 51, 100, 10]))
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + struct.pack("!HHHH", 40000, 53, 8, 0)
    return (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 256, 1)
            + struct.pack("<IIII", int(time.time()), 0, len(frame), len(frame)) + frame)


def incident_batch(seq: int, incident: str, ended: float) -> dict:
    """A site's batch carrying the start and end of `incident` (alpha), its events naming both captures."""
    pcap = {kind: {"path": f"/var/lib/seawall/policy/pcap/{incident}-{kind}.pcap", "packets": 1, "bytes": 82}
            for kind in ("dropped", "passed")}
    common = {"incident_id": incident, "tenant": "alpha", "vectors": ["udp_flood"], "destinations": ["198.51.100.10"],
              "pps": 50000.0}
    return {"seq": seq, "time": time.time(), "traffic": [], "destinations": [], "events": [
        {**common, "type": "ATTACK_START", "timestamp": ended - 60, "message": "udp flood",
         "details": {"started": ended - 60, "target": "198.51.100.10", "pcap": pcap}},
        {**common, "type": "ATTACK_END", "timestamp": ended, "message": "udp flood ended",
         "details": {"started": ended - 60, "ended": ended, "target": "198.51.100.10", "pcap": pcap}}]}


async def upload(url: str, token: str, incident: str, kind: str, data: bytes) -> tuple[int, dict]:
    params = {"site": "ams1", "incident": incident, "kind": kind, "sha256": hashlib.sha256(data).hexdigest()}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.post(f"{url}{EVIDENCE}", params=params, data=data,
                      headers={"Content-Type": "application/vnd.tcpdump.pcap"}) as r:
        return r.status, await r.json()


async def get(url: str, token: str, path: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.get(f"{url}{path}") as r:
        return r.status, await r.read()


async def stored(store) -> list[tuple]:
    return [tuple(r) for r in await store.run(lambda b: b.execute(
        "SELECT incident_id, kind, bytes FROM fleet_evidence ORDER BY incident_id, kind").fetchall())]


async def site_with_incidents(url: str, store, incidents: dict[str, float]) -> str:
    """Site ams1 enrolled, its `incidents` (id: end time) ingested, and their two files uploaded."""
    token = await enroll(store, "ams1")
    status, answer = await post(url, "/api/v1/fleet/site/ingest", token, {
        "site": "ams1", "queue": "q1",
        "batches": [incident_batch(i + 1, inc, ended) for i, (inc, ended) in enumerate(incidents.items())]})
    assert status == 200, answer
    return token


async def test_item3_site_pcap_uploaded_through_the_api_reads_back_and_a_retry_is_stored_once(tmp_path,
                                                                                               database_url):
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        token = await site_with_incidents(url, store, {"inc-1": time.time() - 60})
        dropped, passed = pcap_file(7), pcap_file(9)
        assert await upload(url, token, "inc-1", "dropped", dropped) == (200, {"stored": True, "duplicate": False})
        assert await upload(url, token, "inc-1", "passed", passed) == (200, {"stored": True, "duplicate": False})
        assert await upload(url, token, "inc-1", "dropped", dropped) == (200, {"stored": False, "duplicate": True})
        assert await stored(store) == [("ams1:inc-1", "dropped", len(dropped)), ("ams1:inc-1", "passed", len(passed))]
        noc = await add_token(store, "noc")
        assert await get(url, noc, "/api/v1/incidents/ams1:inc-1/pcap/dropped") == (200, dropped)
        assert await get(url, noc, "/api/v1/incidents/ams1:inc-1/pcap/passed") == (200, passed)
        status, body = await get(url, noc, "/api/v1/incidents/ams1:inc-1/talkers")
        assert status == 200 and b"198.18.0.7" in body and b"198.18.0.9" in body


async def test_item5_central_retention_deletes_site_evidence_past_the_key_and_404s_it_as_no_longer_kept(
        tmp_path, database_url):
    now = time.time()
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        token = await site_with_incidents(url, store, {"inc-old": now - 100 * DAY, "inc-new": now - 3600})
        files = {(inc, kind): pcap_file(n) for n, (inc, kind) in enumerate(
            (i, k) for i in ("inc-old", "inc-new") for k in ("dropped", "passed"))}
        for (inc, kind), data in files.items():
            assert (await upload(url, token, inc, kind, data))[0] == 200
        # inc-old's files arrived 91 days ago (received_at: the central server's own clock).
        await store.run(lambda b: b.execute("UPDATE fleet_evidence SET received_at = ? WHERE incident_id = ?",
                                            (now - 91 * DAY, "ams1:inc-old")))
        noc = await add_token(store, "noc")
        assert await get(url, noc, "/api/v1/incidents/ams1:inc-old/pcap/dropped") == (200, files["inc-old", "dropped"])

        counters = {"maintenance_failures": 0}
        with capture_logs() as logs:
            assert await fleet.partition_upkeep(store, SeriesRetention(), counters)   # the default: 90 days
        assert counters["maintenance_failures"] == 0
        assert [(e["rows"], e["retention_days"]) for e in logs if e["event"] == "fleet.evidence_pruned"] == [(2, 90)]
        assert [r[:2] for r in await stored(store)] == [("ams1:inc-new", "dropped"), ("ams1:inc-new", "passed")]
        assert await get(url, noc, "/api/v1/incidents/ams1:inc-new/pcap/passed") == (200, files["inc-new", "passed"])

        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {noc}"}) as http:
            async with http.get(f"{url}/api/v1/incidents/ams1:inc-old/pcap/dropped") as r:
                assert r.status == 404
                error = (await r.json())["error"]
            assert "no longer kept" in error and "fleet_evidence_retention_days" in error, error
            async with http.get(f"{url}/api/v1/incidents/ams1:inc-old") as r:
                shown = (await r.json())["pcaps"]
            assert {k: v["kept"] for k, v in shown.items()} == {"dropped": False, "passed": False}
            assert "no longer kept" in shown["dropped"]["note"]
            async with http.get(f"{url}/incidents/ams1:inc-old") as r:
                assert r.status == 200 and "no longer kept" in await r.text()
            async with http.get(f"{url}/api/v1/incidents/ams1:inc-new") as r:
                assert all(v["kept"] for v in (await r.json())["pcaps"].values())

        # A shorter key: what is newer than it stays, what is older goes at the next pass.
        assert await fleet.partition_upkeep(store, SeriesRetention(fleet_evidence_retention_days=1), counters)
        assert len(await stored(store)) == 2
        await store.run(lambda b: b.execute("UPDATE fleet_evidence SET received_at = ?", (now - 2 * DAY,)))
        # An incident still open keeps its evidence however old (as on the appliance); once ended, it ages.
        ended = await store.run(lambda b: b.execute("SELECT ended FROM incidents WHERE id = 'ams1:inc-new'").fetchone()[0])
        await store.run(lambda b: b.execute("UPDATE incidents SET ended = NULL WHERE id = 'ams1:inc-new'"))
        assert await fleet.partition_upkeep(store, SeriesRetention(fleet_evidence_retention_days=1), counters)
        assert len(await stored(store)) == 2
        await store.run(lambda b: b.execute("UPDATE incidents SET ended = ? WHERE id = 'ams1:inc-new'", (ended,)))
        assert await fleet.partition_upkeep(store, SeriesRetention(fleet_evidence_retention_days=1), counters)
        assert await stored(store) == []


async def test_item5_site_pcap_not_yet_received_is_404_saying_so(tmp_path, database_url):
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        await site_with_incidents(url, store, {"inc-1": time.time() - 60})
        status, body = await get(url, await add_token(store, "noc"), "/api/v1/incidents/ams1:inc-1/pcap/dropped")
        assert status == 404 and b"has not sent it" in body and b"ams1" in body


def test_item5_fleet_evidence_retention_days_is_a_validated_securewatch_key(tmp_path):
    problems: list[str] = []
    assert parse_settings({}, tmp_path, problems).retention.fleet_evidence_retention_days == 90
    assert parse_settings({"fleet_evidence_retention_days": 7}, tmp_path,
                          problems).retention.fleet_evidence_retention_days == 7
    assert problems == []
    for bad in (0, 3651, "90", True, 1.5):
        problems = []
        parse_settings({"fleet_evidence_retention_days": bad}, tmp_path, problems)
        assert len(problems) == 1 and problems[0].startswith("[securewatch] fleet_evidence_retention_days:"), problems
