"""Issue 17, item 5 (retention), the appliance's SecureWatch: an incident capture the engine aged
out (`policy.pcap.prune`) is answered as no longer kept (404 with the reason, a note on the incident
page), not a crash or a bare error; the engine's deletions are a /metrics counter."""

from __future__ import annotations

import os
import time

import aiohttp
from test_sw_helpers import add_token, attack_events, service

from policy.pcap import prune
from securewatch.metrics import render

DAY = 86400.0


async def test_item5_local_pcap_pruned_by_retention_is_404_no_longer_kept_and_noted_on_the_page(tmp_path):
    root = tmp_path / "pcap"
    root.mkdir()
    t0 = time.time() - 100 * DAY
    async with service(tmp_path, pcap_root=root) as (url, store, _):
        for e in attack_events(t0=t0, pcap_dir=root):
            await store.record_event(e.to_dict())
        noc = {"Authorization": f"Bearer {await add_token(store, 'noc')}"}
        async with aiohttp.ClientSession(headers=noc) as http:
            async with http.get(f"{url}/api/v1/incidents/inc-alpha-1/pcap/dropped") as r:
                assert r.status == 200, "kept while within retention"
            # The engine's retention pass: the capture was last written 100 days ago.
            capture = root / "inc-alpha-1-dropped.pcap"
            os.utime(capture, (t0 + 10, t0 + 10))
            assert prune(root, time.time(), 90 * DAY, 1 << 30, set()).files == 1
            assert not capture.exists()
            async with http.get(f"{url}/api/v1/incidents/inc-alpha-1/pcap/dropped") as r:
                assert r.status == 404
                error = (await r.json())["error"]
            assert "no longer kept" in error and "pcap_retention_days" in error and "inc-alpha-1" in error
            async with http.get(f"{url}/api/v1/incidents/inc-alpha-1") as r:
                assert r.status == 200
                shown = (await r.json())["pcaps"]["dropped"]
            assert shown["kept"] is False and "no longer kept" in shown["note"] and shown["packets"] == 12
            async with http.get(f"{url}/incidents/inc-alpha-1") as r:
                assert r.status == 200
                page = await r.text()
            assert "no longer kept" in page and 'href="/api/v1/incidents/inc-alpha-1/pcap/dropped"' not in page
            # A kind the incident never had stays a plain 404.
            async with http.get(f"{url}/api/v1/incidents/inc-alpha-1/pcap/passed") as r:
                assert r.status == 404 and "no longer kept" not in (await r.json())["error"]


async def test_item5_a_kept_local_pcap_is_linked_on_the_page(tmp_path):
    root = tmp_path / "pcap"
    root.mkdir()
    async with service(tmp_path, pcap_root=root) as (url, store, _):
        for e in attack_events(pcap_dir=root):
            await store.record_event(e.to_dict())
        noc = {"Authorization": f"Bearer {await add_token(store, 'noc')}"}
        async with aiohttp.ClientSession(headers=noc) as http:
            async with http.get(f"{url}/api/v1/incidents/inc-alpha-1") as r:
                shown = (await r.json())["pcaps"]["dropped"]
            assert shown["kept"] is True and shown["note"] is None
            async with http.get(f"{url}/incidents/inc-alpha-1") as r:
                page = await r.text()
            assert 'href="/api/v1/incidents/inc-alpha-1/pcap/dropped"' in page and "no longer kept" not in page


def test_item5_pcap_files_pruned_is_a_metrics_counter():
    status = {"policy": {"tracked_destinations": 1, "rules_installed": 0, "pcap_files_pruned": 7,
                         "last_tick": {"cpu_ms": 1.0}}}
    text = render(status).decode()
    assert "seawall_policy_pcap_files_pruned_total 7.0" in text
