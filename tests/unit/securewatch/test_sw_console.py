"""Issue 16, the live console: the vendored chart library, tenant series and their rollups,
per-destination series, retention settings, and who may read which series."""

from __future__ import annotations

import asyncio
import hashlib
import json
import pathlib
import re
import time

import aiohttp
import pytest
from test_sw_helpers import TENANTS, InMemoryAppliance, add_token, attack_events, service

from securewatch import series
from securewatch.series import RANGES, SeriesRetention
from securewatch.settings import parse_settings
from securewatch.store import Store
from tenants import TenantSet
from tests.support import await_until

STATIC = pathlib.Path(__file__).resolve().parents[3] / "securewatch" / "static"
UPLOT = STATIC / "vendor" / "uplot"
HOUR = 3600


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(f"sqlite:///{tmp_path}/console.db")
    try:
        yield s
    finally:
        await s.close()


# -- item 1: the charting library, vendored at a pinned version -----------------------------------

def test_item1_uplot_vendored_pinned_with_licence_and_hashes():
    readme = (UPLOT / "README.md").read_text()
    version = re.search(r"# uPlot (\d+\.\d+\.\d+)", readme).group(1)
    js, css = UPLOT / f"uPlot-{version}.iife.min.js", UPLOT / f"uPlot-{version}.min.css"
    assert js.read_text().startswith(f"/*! https://github.com/leeoniya/uPlot (v{version}) */")
    for f in (js, css):   # the files are the ones the README names, unchanged
        assert hashlib.sha256(f.read_bytes()).hexdigest() in readme
    assert "MIT License" in (UPLOT / "LICENSE").read_text()
    assert "Leon Sorokin" in (UPLOT / "LICENSE").read_text()


def test_item1_pages_load_charts_from_this_origin_only():
    """No page names a script or stylesheet of another origin: nothing is fetched at run time."""
    templates = STATIC.parent / "templates"
    for page in templates.glob("*.html"):
        text = page.read_text()
        assert not re.search(r"""(src|href)=["']\s*(https?:)?//""", text), page.name


# -- tenant series: rollups and ranges -------------------------------------------------------------

def _second(t: float, passed: float, dropped: float) -> dict[str, float]:
    return {"time": t, "passed_pps": passed, "dropped_pps": dropped, "passed_bps": passed * 8000,
            "dropped_bps": dropped * 8000}


async def test_item2_hour_rollup_weighted_by_the_seconds_behind_each_minute(store):
    t0 = 1_800_000_000 // HOUR * HOUR
    # 60 s at 100 pps in one minute, 30 s at 400 pps in the next: the hour's mean is over 90 s.
    rows = [_second(t0 + i, 100, 0) for i in range(60)] + [_second(t0 + 60 + i, 400, 10) for i in range(30)]
    await store.add_traffic("alpha", rows)
    hours = await store.run(series.tenant_series, "alpha", RANGES["30d"], t0 + 120)
    assert hours["time"] == [t0]
    assert hours["passed_pps"] == [200.0]        # (60*100 + 30*400) / 90
    assert hours["dropped_pps"] == [round(300 / 90, 1)]
    minutes = await store.run(series.tenant_series, "alpha", RANGES["24h"], t0 + 120)
    assert minutes["passed_pps"] == [100.0, 400.0]
    seconds = await store.run(series.tenant_series, "alpha", RANGES["5m"], t0 + 89)
    assert len(seconds["time"]) == 90 and seconds["passed_bps"][-1] == 3_200_000.0


async def test_item2_series_of_one_tenant_never_carry_anothers_rows(store):
    t0 = 1_800_000_000
    await store.add_traffic("alpha", [_second(t0, 1, 0)])
    await store.add_traffic("beta", [_second(t0, 2, 0)])
    for rng in RANGES.values():
        got = await store.run(series.tenant_series, "beta", rng, t0 + 1)
        assert got["passed_pps"] == [2.0], rng.name


# -- retention -----------------------------------------------------------------------------------

async def test_item2_retention_settings_apply_per_series(store):
    now = 1_800_000_000
    await store.add_traffic("alpha", [_second(now - 2 * 86400 - 60, 5, 0), _second(now - 100, 5, 0)])
    dest = {"tenant": "alpha", "address": "198.51.100.10", "pps": [1] * 6, "mean": [1] * 6, "sigma": [0] * 6,
            "threshold": [10] * 6, "dropped_pps": 0}
    await store.run(series.add_destination_seconds, [{**dest, "time": now - 700}, {**dest, "time": now - 10}])
    await store.run(series.add_destination_minutes, [{**dest, "time": now - 3 * 86400}, {**dest, "time": now - 60}])
    short = SeriesRetention(traffic_second_retention_s=600, traffic_minute_retention_days=2,
                            destination_second_retention_s=600, destination_minute_retention_days=2)
    removed = await store.apply_retention(now=now, retention=short)
    assert removed["seconds"] == 1 and removed["minutes"] == 1 and removed["hours"] == 0
    assert removed["destination_seconds"] == 1 and removed["destination_minutes"] == 1
    kept = await store.run(series.destination_series, "alpha", "198.51.100.10", series.DESTINATION_RANGES["1h"], now)
    assert kept["time"] == [now - 10]


def test_item2_retention_keys_documented_defaults_and_named_errors(tmp_path):
    problems: list[str] = []
    s = parse_settings({}, tmp_path, problems)
    assert not problems and s.retention == SeriesRetention()
    assert (s.retention.traffic_second_retention_s, s.retention.traffic_hour_retention_days) == (3600, 400)
    doc = (STATIC.parent / "settings.py").read_text()
    for key in series.SERIES_KEYS:   # every key documented in the [securewatch] example with its default
        assert re.search(rf"^\s+{key} = {getattr(SeriesRetention(), key)}\b", doc, re.M), key
    s = parse_settings({"traffic_hour_retention_days": 31, "destination_second_retention_s": 900}, tmp_path, problems)
    assert not problems and s.retention.destination_second_retention_s == 900
    parse_settings({"traffic_minute_retention_days": 1, "destination_minute_retention_days": "7"}, tmp_path, problems)
    assert problems == ["[securewatch] traffic_minute_retention_days: must be between 2 and 3650, got 1",
                        "[securewatch] destination_minute_retention_days: expected a whole number, got a string '7'"]
    # Seconds kept longer than the minutes they are rolled up into would never be rolled up.
    problems.clear()
    parse_settings({"fleet_second_retention_s": 3 * 86400, "fleet_minute_retention_days": 2,
                    "traffic_second_retention_s": 86400, "traffic_minute_retention_days": 2}, tmp_path, problems)
    assert problems == [
        "[securewatch] fleet_second_retention_s: must be at most 172800 (fleet_minute_retention_days = 2: the "
        "minutes the seconds are rolled up into are kept no longer), got 259200"]
    parse_settings({"fleet_second_retention_s": 2 * 86400, "fleet_destination_minute_retention_days": 1}, tmp_path,
                   problems)
    assert problems[1:] == [
        "[securewatch] fleet_second_retention_s: must be at most 86400 (fleet_destination_minute_retention_days = 1: "
        "the minutes the seconds are rolled up into are kept no longer), got 172800"]


# -- per-destination series ------------------------------------------------------------------------

async def test_item3_destination_series_seconds_then_minutes_fallback(store):
    now = 1_800_000_000
    row = {"tenant": "alpha", "pps": [10, 0, 900, 0, 0, 0], "mean": [8, 0, 100, 0, 0, 0],
           "sigma": [1, 0, 20, 0, 0, 0], "threshold": [50, 50, 600, 50, 50, 50], "dropped_pps": 300}
    await store.run(series.add_destination_seconds, [{**row, "address": "198.51.100.10", "time": now - i}
                                                     for i in range(3)])
    await store.run(series.add_destination_minutes, [{**row, "address": "198.51.100.20", "time": now - 60,
                                                      "samples": 60, "max_pps": 950}])
    hot = await store.run(series.destination_series, "alpha", "198.51.100.10", series.DESTINATION_RANGES["5m"], now)
    assert hot["resolution"] == "second" and hot["time"] == [now - 2, now - 1, now]
    assert hot["pps"]["udp"] == [900, 900, 900] and hot["threshold"]["udp"][0] == 600
    quiet = await store.run(series.destination_series, "alpha", "198.51.100.20", series.DESTINATION_RANGES["5m"], now)
    assert quiet["resolution"] == "minute" and quiet["mean"]["udp"] == [100]
    other = await store.run(series.destination_series, "beta", "198.51.100.10", series.DESTINATION_RANGES["5m"], now)
    assert other["time"] == []
    listed = await store.run(series.tenant_destinations, "alpha", now - 600, 10)
    assert [d["address"] for d in listed] == ["198.51.100.10", "198.51.100.20"]
    assert listed[0]["load"] == 1.5    # udp 900 pps against a 600 pps threshold


async def test_item3_destination_rows_must_carry_every_class(store):
    with pytest.raises(ValueError, match="expected 6 per-class values"):
        await store.run(series.add_destination_seconds, [{"tenant": "a", "address": "192.0.2.1", "time": 1,
                                                          "pps": [1, 2], "mean": [0] * 6, "sigma": [0] * 6,
                                                          "threshold": [0] * 6}])


# -- item 2: the live dashboard's endpoints ------------------------------------------------------------

async def _get(http, url, token):
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


async def _first_events(http, url, token, n):
    """The first `n` events of a live stream, parsed (the stream itself runs until closed)."""
    got = []
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        buffer = ""
        while len(got) < n:
            buffer += (await asyncio.wait_for(r.content.readany(), 10)).decode()
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                lines = dict(line.split(": ", 1) for line in block.splitlines())
                assert lines["event"] == "tick"
                got.append(json.loads(lines["data"]))
    return got


async def test_item2_console_tenants_search_sort_paging_on_the_server(tmp_path):
    many = [{"id": f"t{i:04d}", "name": f"Customer {i}", "prefixes": [f"10.{i // 256}.{i % 256}.0/24"]}
            for i in range(600)]
    appliance = InMemoryAppliance(TenantSet.from_dicts(TENANTS + many))
    # Traffic grows with the number, drops shrink with it; alpha and beta are idle.
    appliance.rates = {f"t{i:04d}": (float(i), (600 - i) / 100) for i in range(600)}
    appliance.rates.update(alpha=(0.0, 0.0), beta=(0.0, 0.0))
    async with service(tmp_path, appliance=appliance) as (url, store, _):
        await store.save_tenant_set(appliance.tenants, "test", "seed")
        admin = await add_token(store, "admin")
        async with aiohttp.ClientSession() as http:
            status, body = await _get(http, f"{url}/api/v1/console/tenants?sort=traffic&per_page=10&page=2", admin)
            assert status == 200 and body["total"] == 602 and body["pages"] == 61
            assert [r["id"] for r in body["rows"]][:2] == ["t0589", "t0588"]   # busiest first, second page
            status, body = await _get(http, f"{url}/api/v1/console/tenants?sort=drops&per_page=3", admin)
            assert [r["id"] for r in body["rows"]] == ["t0000", "t0001", "t0002"]
            status, body = await _get(http, f"{url}/api/v1/console/tenants?q=10.2.7.9", admin)  # by address
            assert [r["id"] for r in body["rows"]] == ["t0519"]
            status, body = await _get(http, f"{url}/api/v1/console/tenants?q=customer 42&sort=name", admin)
            assert [r["id"] for r in body["rows"]][:2] == ["t0042", "t0420"]
            status, body = await _get(http, f"{url}/api/v1/console/tenants?sort=size", admin)
            assert status == 400 and "sort" in body["error"]
            status, body = await _get(http, f"{url}/api/v1/console/tenants?per_page=0", admin)
            assert status == 400 and "per_page" in body["error"]
            # More digits than Python's int() takes: still the caller's error, not the server's.
            status, body = await _get(http, f"{url}/api/v1/console/tenants?page={'9' * 5000}", admin)
            assert status == 400 and "page" in body["error"]


async def test_item2_access_tenant_user_sees_only_its_own_series_rows_and_stream(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        now = time.time()
        for tid, pps in (("alpha", 100.0), ("beta", 999.0)):
            await store.add_traffic(tid, [_second(now - 5 + i, pps, 1) for i in range(3)])
            appliance.series[tid] = [_second(now - 2 + i, pps, 1) for i in range(3)]
        await add_incident(store, "inc-beta-1", "beta")
        mine = await add_token(store, "tenant", "alpha")
        async with aiohttp.ClientSession() as http:
            status, body = await _get(http, f"{url}/api/v1/console/tenants", mine)
            assert [r["id"] for r in body["rows"]] == ["alpha"] and body["total"] == 1
            status, body = await _get(http, f"{url}/api/v1/tenants/alpha/series?range=5m", mine)
            assert status == 200 and set(body["passed_pps"]) == {100.0}
            for rng in ("5m", "1h", "24h", "30d"):
                status, body = await _get(http, f"{url}/api/v1/tenants/beta/series?range={rng}", mine)
                assert status == 404, rng
            status, _ = await _get(http, f"{url}/api/v1/tenants/beta/live?events=1", mine)
            assert status == 404
            (event,) = await _first_events(http, f"{url}/api/v1/tenants/alpha/live?ids=alpha,beta", mine, 1)
            assert set(event["rows"]) == {"alpha"} and event["active"] == []
            assert {p["passed_pps"] for p in event["points"]} == {100.0}
            status, page = await _get(http, f"{url}/", mine)
            assert status == 200 and "beta" not in page.replace("Beta", "")


async def test_item2_live_stream_sends_new_seconds_once_and_the_active_incidents(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        now = time.time()
        appliance.series["alpha"] = [_second(now - 3 + i, 10.0 * i, 0) for i in range(3)]
        await add_incident(store, "inc-alpha-9", "alpha")
        noc = await add_token(store, "noc")
        async with aiohttp.ClientSession() as http, http.get(
                f"{url}/api/v1/tenants/alpha/live?ids=alpha,beta", headers={"Authorization": f"Bearer {noc}"}) as r:
            first = await _read_event(r)
            assert [p["passed_pps"] for p in first["points"]] == [0.0, 10.0, 20.0]
            assert set(first["rows"]) == {"alpha", "beta"} and first["rows"]["beta"]["passed_pps"] == 1200.0
            assert [i["id"] for i in first["active"]] == ["inc-alpha-9"]
            appliance.series["alpha"].append(_second(now + 1, 30.0, 5))   # the engine's next tick
            second = await _read_event(r)
            assert [p["passed_pps"] for p in second["points"]] == [30.0]   # only what is new


async def _read_event(response):
    block = b""
    while b"\n\n" not in block:
        block += await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
    lines = dict(line.split(": ", 1) for line in block.decode().strip().splitlines())
    return json.loads(lines["data"])


async def add_incident(store, incident_id, tenant):
    start = attack_events(incident_id=incident_id, tenant=tenant, t0=time.time() - 30)[0]
    await store.record_event(start.to_dict())


# -- item 3: the per-server view ---------------------------------------------------------------------

def _server_row(tenant, address, t, udp, threshold=600.0, **extra):
    return {"tenant": tenant, "address": address, "time": t, "pps": [5, 20, udp, 0, 0, 0], "dropped_pps": 0.0,
            "mean": [5, 20, 300, 0, 0, 0], "sigma": [2, 5, 90, 0, 0, 0],
            "threshold": [50, 100, threshold, 50, 50, 50], **extra}


async def test_item3_server_view_baseline_band_threshold_load_and_incidents(tmp_path, monkeypatch):
    # SecureWatch copies the appliance's destination rows every securewatch.servers.POLL_S (5 s); its first copy
    # may come before the rows below are set, so a shorter period (same path, as test_sw_api does for the
    # traffic poll) spares the wait for the second.
    monkeypatch.setattr("securewatch.servers.POLL_S", 0.05)
    async with service(tmp_path) as (url, store, appliance):
        now = int(time.time())
        appliance.destination_rows = (
            [_server_row("alpha", "198.51.100.10", now - 3 + i, 300.0 + 100 * i) for i in range(3)]
            + [_server_row("alpha", "198.51.100.20", now // 60 * 60 - 60, 40.0, samples=60, max_pps=70.0)]
            + [_server_row("beta", "203.0.113.5", now - 1, 900.0)])
        await store.record_event(attack_events(t0=now - 30, target="198.51.100.10")[0].to_dict())
        noc = await add_token(store, "noc")
        async with aiohttp.ClientSession() as http:
            # Stored by the background copy from the appliance (polled every few seconds).
            async def both_stored():
                return len((await _get(http, f"{url}/api/v1/tenants/alpha/servers", noc))[1]["servers"]) == 2
            await await_until(both_stored, what="the appliance's server rows stored")
            status, body = await _get(http, f"{url}/api/v1/tenants/alpha/servers/198.51.100.10?range=5m", noc)
            assert status == 200 and body["resolution"] == "second" and body["pps"]["udp"] == [300, 400, 500]
            now_udp = next(c for c in body["current"]["classes"] if c["class"] == "udp")
            assert (now_udp["band_low"], now_udp["band_high"], now_udp["threshold"]) == (210, 390, 600)
            assert now_udp["headroom_pps"] == 100 and body["current"]["load"] == round(500 / 600, 3)
            assert body["current"]["closest_class"] == "udp"
            assert [i["id"] for i in body["incidents"]] == ["inc-alpha-1"]
            status, body = await _get(http, f"{url}/api/v1/tenants/alpha/servers/198.51.100.20?range=5m", noc)
            assert body["resolution"] == "minute" and body["pps"]["udp"] == [40] and body["incidents"] == []
            status, page = await _get(http, f"{url}/tenants/alpha/servers/198.51.100.10", noc)
            assert status == 200 and "83%" in page and 'id="server-chart"' in page and "inc-alpha-1" in page


async def test_item3_access_server_view_only_for_the_tenants_own_addresses(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        now = int(time.time())
        await store.run(series.add_destination_seconds, [_server_row("beta", "203.0.113.5", now, 900.0)])
        mine = await add_token(store, "tenant", "alpha")
        admin = await add_token(store, "admin")
        async with aiohttp.ClientSession() as http:
            for path in ("/api/v1/tenants/beta/servers/203.0.113.5", "/tenants/beta/servers/203.0.113.5",
                         "/api/v1/tenants/beta/servers", "/tenants/beta/servers",
                         # beta's address under alpha's name: not alpha's, so no series at all
                         "/api/v1/tenants/alpha/servers/203.0.113.5", "/api/v1/tenants/alpha/servers/not-an-ip"):
                status, body = await _get(http, f"{url}{path}", mine)
                assert status == 404, path
                assert "900" not in str(body), path
            status, body = await _get(http, f"{url}/api/v1/tenants/alpha/servers/203.0.113.5", admin)
            assert status == 404    # an admin too: the address is not alpha's
            status, body = await _get(http, f"{url}/api/v1/tenants/beta/servers/203.0.113.5?range=1y", admin)
            assert status == 400 and "range" in body["error"]


# -- item 4: the incident page: rules in operator language, attack anatomy, the chart ------------------

def test_item4_rules_in_operator_language():
    from securewatch.talkers import action_text, rule_text  # noqa: PLC0415

    udp = {"proto": 17, "sport": None, "dport": [28960, 28960], "length": [512, 512], "ttl": [55, 59],
           "tcp_flags": None, "payload": "00000000ffffffff2a", "payload_mask": None, "action": "drop"}
    assert rule_text(udp) == "UDP dst port 28960, length 512, TTL 55–59, payload 00000000ffffffff…"
    syn = {"proto": 6, "dst": "198.51.100.10", "dport": [443, 443], "tcp_flags": [0x12, 0x02],
           "action": "rate_limit", "rate_pps": 1500}
    assert rule_text(syn) == "TCP to 198.51.100.10, dst port 443, flags SYN no ACK"
    assert action_text(syn) == "rate-limit to 1,500 pps"
    assert rule_text({"proto": "tcp", "tcp_flags": ["SYN"], "sport": [1024, 65535]}) == \
        "TCP src ports 1024–65535, flags SYN"
    assert rule_text({"fragments": True}) == "fragments only"
    assert rule_text({"proto": 1, "dst": "192.0.2.1"}) == "ICMP to 192.0.2.1"


async def test_item4_incident_anatomy_from_sampled_packets_and_chart(tmp_path):
    from scapy.layers.l2 import Ether  # noqa: PLC0415
    from scapy.utils import wrpcap  # noqa: PLC0415

    from tests.unit.policy.fakes import syn_frame, udp_frame  # noqa: PLC0415

    frames = ([Ether(syn_frame(f"198.18.0.{i % 2}", "198.51.100.10", 1024 + i, 443)) for i in range(30)]
              + [Ether(udp_frame("198.18.7.7", "198.51.100.10", 53, 28960, b"\0" * 500)) for _ in range(10)])
    capture = tmp_path / "inc-alpha-1-dropped.pcap"
    wrpcap(str(capture), frames)   # the engine's capture format: libpcap, Ethernet
    async with service(tmp_path, pcap_root=tmp_path) as (url, store, _):
        for event in attack_events(t0=time.time() - 60)[:2]:   # started, updated: still active
            event.details["rules"] = [{"rule_id": 3, "vector": "udp_flood", "proto": 17, "dport": [28960, 28960],
                                       "length": [528, 528], "ttl": [55, 59], "sport": None, "tcp_flags": None,
                                       "payload": None, "action": "drop", "dropped_packets": 123456}]
            event.details["pcap"] = {"dropped": {"path": str(capture), "packets": 40, "bytes": 1}}
            await store.record_event(event.to_dict())
        noc = await add_token(store, "noc")
        async with aiohttp.ClientSession() as http:
            status, body = await _get(http, f"{url}/api/v1/incidents/inc-alpha-1/talkers", noc)
            dropped = body["dropped"]
            assert status == 200 and dropped["samples"] == 40
            assert dropped["sources"][:2] == [{"key": "198.18.0.0", "samples": 15, "share": 0.375},
                                              {"key": "198.18.0.1", "samples": 15, "share": 0.375}]
            assert dropped["networks"][:2] == [{"key": "198.18.0.0/24", "samples": 30, "share": 0.75},
                                               {"key": "198.18.7.0/24", "samples": 10, "share": 0.25}]
            assert {e["key"]: e["samples"] for e in dropped["destination_ports"]} == {"TCP 443": 30, "UDP 28960": 10}
            assert {e["key"]: e["samples"] for e in dropped["protocols"]} == {"TCP": 30, "UDP": 10}
            assert dropped["tcp_flags"] == [{"key": "SYN", "samples": 30, "share": 0.75}]
            sizes = {e["key"]: e["samples"] for e in dropped["sizes"]}
            syn_size = len(bytes(frames[0]))
            assert sizes == {f"≤ {64 if syn_size <= 64 else 128}": 30, "≤ 1024": 10}   # 542-byte UDP frames
            status, page = await _get(http, f"{url}/incidents/inc-alpha-1", noc)
            assert "UDP dst port 28960, length 528, TTL 55–59" in page and "123,456" in page
            assert "None" not in page and "[28960, 28960]" not in page     # no Python reprs
            assert 'id="incident-chart"' in page and "<svg" not in page and "uPlot-1.6.32" in page
            assert 'data-list="networks"' in page and "198.18.0.0/24" in page
            # Per tenant: the same captures summed over the tenant's recent incidents; none for beta.
            status, body = await _get(http, f"{url}/api/v1/tenants/alpha/talkers?days=7", noc)
            assert body["incidents"] == ["inc-alpha-1"] and body["dropped"]["samples"] == 40
            status, body = await _get(http, f"{url}/api/v1/tenants/beta/talkers", noc)
            assert status == 200 and body["incidents"] == [] and "dropped" not in body
            status, body = await _get(http, f"{url}/api/v1/tenants/alpha/talkers?days=0", noc)
            assert status == 400 and "days" in body["error"]
