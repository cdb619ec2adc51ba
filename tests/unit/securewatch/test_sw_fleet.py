"""The central server's fleet API (issue 17): site tokens, ingest with dedup, configuration down.

A real SecureWatch on SQLite served over TCP; the site's requests are plain HTTP clients. The
same tests run on a real PostgreSQL in tests/netns/test_fleet.py (the `database_url` fixture)."""

from __future__ import annotations

import contextlib
import json
import time

import aiohttp
import pytest
from test_sw_helpers import add_token, service

from securewatch import auth, fleet_store
from securewatch.store import Store
from tenants import TenantSet


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path}/central.db"


CENTRAL_TENANTS = [{"id": "alpha", "prefixes": ["198.51.100.0/25"]}, {"id": "beta", "prefixes": ["203.0.113.0/24"]}]


async def enroll(store: Store, site: str) -> str:
    """A site's token; with no central tenant set yet, one of alpha and beta (run at every site):
    a site may write the data of the tenants the central set gives it only."""
    if not (await store.tenant_state()).tenants:
        await store.save_tenant_set(TenantSet.from_dicts(CENTRAL_TENANTS), "test", "seed")
    token = auth.new_token()
    await store.run(fleet_store.enroll, site, auth.token_hash(token), "test", time.time())
    return token


def batch(seq: int, t: float, tenant: str = "alpha", incident: str | None = None) -> dict:
    events = []
    if incident is not None:
        events.append({"type": "ATTACK_START", "incident_id": incident, "tenant": tenant, "timestamp": t,
                       "message": "udp flood", "vectors": ["udp_flood"], "destinations": ["198.51.100.10"],
                       "details": {"started": t, "target": "198.51.100.10"}, "pps": 50000.0})
    # The time of a traffic row as the appliance sends it: its tick's read, a fraction of a second in.
    return {"seq": seq, "time": t, "traffic": [[tenant, t + 0.43, 1000.0, 20.0, 8e6, 1.6e5]],
            "destinations": [{"tenant": tenant, "address": "198.51.100.10", "time": int(t), "pps": [1, 2, 3, 4, 5, 6],
                              "dropped_pps": 2.0}], "events": events}


async def post(url: str, path: str, token: str | None, body: dict) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as http, http.post(f"{url}{path}", json=body) as r:
        return r.status, await r.json()


async def count(store: Store, sql: str, *params) -> int:
    return await store.run(lambda b: b.execute(sql, params).fetchone()[0])


async def test_fleet_ingest_stores_a_retried_batch_once_with_site_and_receipt_time(tmp_path, database_url):
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        token = await enroll(store, "ams1")
        skewed = time.time() - 120.0   # the appliance's clock is two minutes behind
        body = {"site": "ams1", "queue": "q1", "batches": [batch(1, skewed), batch(2, skewed + 1, incident="i-1")]}
        status, answer = await post(url, "/api/v1/fleet/site/ingest", token, body)
        assert status == 200, answer
        assert answer == {"acked": [1, 2], "duplicates": 0, "outside": 0, "folded": 0}
        # The answer was lost: the site sends the same two again, plus the next one.
        body["batches"].append(batch(3, skewed + 2))
        status, answer = await post(url, "/api/v1/fleet/site/ingest", token, body)
        assert answer == {"acked": [1, 2, 3], "duplicates": 2, "outside": 0, "folded": 0}
        assert await count(store, "SELECT COUNT(*) FROM fleet_batches WHERE site = ?", "ams1") == 3
        assert await count(store, "SELECT COUNT(*) FROM fleet_traffic_seconds WHERE site = ?", "ams1") == 3
        assert await count(store, "SELECT COUNT(*) FROM fleet_destination_seconds WHERE site = ?", "ams1") == 3
        assert await count(store, "SELECT COUNT(*) FROM incident_events WHERE incident_id = ?", "ams1:i-1") == 1
        received = await store.run(lambda b: b.execute(
            "SELECT MIN(received_at), MAX(appliance_time) FROM fleet_batches").fetchone())
        assert received[0] - received[1] > 100   # receipt time is central's own, the appliance's time is kept
        incident = await store.incident("ams1:i-1")
        assert incident is not None and incident.tenant == "alpha" and incident.details["site"] == "ams1"
        assert (await store.run(fleet_store.incidents, "ams1", 10))[0]["site"] == "ams1"


async def test_fleet_site_token_cannot_write_another_sites_data(tmp_path, database_url):
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        ams = await enroll(store, "ams1")
        await enroll(store, "fra1")
        body = {"site": "fra1", "queue": "q1", "batches": [batch(1, time.time())]}
        status, answer = await post(url, "/api/v1/fleet/site/ingest", ams, body)
        assert status == 403 and "ams1" in answer["error"] and "fra1" in answer["error"]
        status, _ = await post(url, "/api/v1/fleet/site/sync", ams, {"site": "fra1", "time": time.time()})
        assert status == 403
        assert await count(store, "SELECT COUNT(*) FROM fleet_batches") == 0
        # A user's API token (even an admin's) is no site token.
        admin = await add_token(store, "admin")
        status, _ = await post(url, "/api/v1/fleet/site/ingest", admin, {**body, "site": "ams1"})
        assert status == 401
        status, _ = await post(url, "/api/v1/fleet/site/ingest", None, {**body, "site": "ams1"})
        assert status == 401


async def test_fleet_revoked_site_is_refused_at_once(tmp_path, database_url):
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        token = await enroll(store, "ams1")
        sync = {"site": "ams1", "time": time.time(), "running_version": None}
        assert (await post(url, "/api/v1/fleet/site/sync", token, sync))[0] == 200
        assert await store.run(fleet_store.revoke, "ams1", "test", time.time())
        status, answer = await post(url, "/api/v1/fleet/site/sync", token, sync)
        assert status == 401 and "revoked" in answer["error"]
        body = {"site": "ams1", "queue": "q1", "batches": [batch(1, time.time())]}
        assert (await post(url, "/api/v1/fleet/site/ingest", token, body))[0] == 401
        # Enrolled again: a new token works, the old one stays refused.
        fresh = await enroll(store, "ams1")
        assert (await post(url, "/api/v1/fleet/site/ingest", fresh, body))[0] == 200
        assert (await post(url, "/api/v1/fleet/site/ingest", token, body))[0] == 401


async def test_fleet_enroll_refuses_bad_names_and_a_second_token(tmp_path, database_url):
    store = await Store.open(database_url)
    try:
        await enroll(store, "ams1")
        with pytest.raises(ValueError, match="enrolled already"):
            await enroll(store, "ams1")
        with pytest.raises(ValueError, match="site: 'AMS 1' is not a site name"):
            await enroll(store, "AMS 1")
        hashes = await store.run(lambda b: [r[0] for r in b.execute("SELECT token_hash FROM fleet_sites").fetchall()])
        assert len(hashes[0]) == 64   # the SHA-256, never the token
    finally:
        await store.close()


async def test_fleet_sync_sends_the_tenant_set_for_the_site_and_records_the_version(tmp_path, database_url):
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        tenants = TenantSet.from_dicts([
            {"id": "alpha", "prefixes": ["198.51.100.0/25"]},
            {"id": "beta", "prefixes": ["203.0.113.0/24"], "sites": ["fra1"]}])
        await store.save_tenant_set(tenants, "test", "seed2")
        version = (await store.tenant_state()).version
        token = await enroll(store, "ams1")
        status, answer = await post(url, "/api/v1/fleet/site/sync", token,
                                    {"site": "ams1", "time": time.time(), "running_version": None, "backlog": 7})
        assert status == 200 and answer["version"] == version
        assert [t["id"] for t in answer["tenants"]] == ["alpha"]    # beta runs at fra1 only
        sites = {s.site: s.health(time.time(), version) for s in await store.run(fleet_store.sites)}
        assert sites["ams1"]["lagging"] and sites["ams1"]["backlog"] == 7
        status, answer = await post(url, "/api/v1/fleet/site/sync", token,
                                    {"site": "ams1", "time": time.time(), "running_version": version})
        assert answer == {"version": version}    # up to date: no set sent
        sites = {s.site: s.health(time.time(), version) for s in await store.run(fleet_store.sites)}
        assert not sites["ams1"]["lagging"] and sites["ams1"]["running_version"] == version
        assert sites["ams1"]["state"] == "reporting"


async def test_fleet_clock_skew_is_the_appliances_clock_at_sync_not_a_backfilled_batchs_time(tmp_path, database_url):
    """clock_skew_s was the creation time of the newest batch of the last ingest less its receipt:
    during a backfill after an hour's outage, an hour off for a clock that is right. It is the
    sync's `time` (the appliance's clock as it sends) less that request's receipt, and ingests
    after it, received later, do not move it."""
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        token = await enroll(store, "ams1")
        status, _ = await post(url, "/api/v1/fleet/site/sync", token,
                               {"site": "ams1", "time": time.time() + 30.0, "running_version": None})
        assert status == 200   # the appliance's clock is 30 s ahead
        now = time.time()
        status, answer = await post(url, "/api/v1/fleet/site/ingest", token,
                                    {"site": "ams1", "queue": "q", "batches": [batch(1, now - 3600)]})
        assert status == 200, answer   # a batch it queued an hour ago, central being down
        # The next ingest, received 4 s after the sync (a batch a second, a sync every 5 s).
        await store.run(fleet_store.ingest, "ams1", "q", [batch(2, now - 3599)], now + 4, lambda b, e: None)
        noc = await add_token(store, "noc")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {noc}"}) as http, \
                http.get(f"{url}/api/v1/fleet/sites") as r:
            site = (await r.json())["sites"][0]
        assert site["clock_skew_s"] == pytest.approx(30.0, abs=1.0), site
        assert site["last_contact"] == pytest.approx(now + 4)


async def test_fleet_ingest_refuses_malformed_batches_naming_the_field(tmp_path, database_url):
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        token = await enroll(store, "ams1")
        bad = batch(1, time.time())
        bad["traffic"] = [["alpha", "yesterday", 1, 2, 3, 4]]
        status, answer = await post(url, "/api/v1/fleet/site/ingest", token,
                                    {"site": "ams1", "queue": "q1", "batches": [batch(2, time.time()), bad]})
        assert status == 422 and answer["problems"][0].startswith("batches[1].traffic[0]:")
        assert await count(store, "SELECT COUNT(*) FROM fleet_batches") == 0   # none of the request stored


async def test_fleet_page_and_api_show_sites_filterable_by_site(tmp_path, database_url):
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        ams, fra = await enroll(store, "ams1"), await enroll(store, "fra1")
        now = time.time()
        for token, site in ((ams, "ams1"), (fra, "fra1")):
            await post(url, "/api/v1/fleet/site/ingest", token, {"site": site, "queue": "q", "batches": [
                batch(1, now, incident=f"{site}-inc")]})
        admin = await add_token(store, "noc")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin}"}) as http:
            async with http.get(f"{url}/api/v1/fleet/sites") as r:
                sites = (await r.json())["sites"]
            assert [s["site"] for s in sites] == ["ams1", "fra1"]
            assert sites[0]["traffic"]["passed_pps"] == 1000.0 and sites[0]["state"] == "reporting"
            async with http.get(f"{url}/api/v1/fleet/sites", params={"site": "fra1"}) as r:
                assert [s["site"] for s in (await r.json())["sites"]] == ["fra1"]
            async with http.get(f"{url}/api/v1/fleet/incidents", params={"site": "fra1"}) as r:
                assert [i["id"] for i in (await r.json())["incidents"]] == ["fra1:fra1-inc"]
            async with http.get(f"{url}/api/v1/fleet/traffic", params={"site": "ams1"}) as r:
                assert {row["site"] for row in (await r.json())["rows"]} == {"ams1"}
            async with http.get(f"{url}/api/v1/fleet/sites", params={"site": "Bad Site"}) as r:
                assert r.status == 400 and "site:" in (await r.json())["error"]
            async with http.get(f"{url}/api/v1/incidents", params={"site": "ams1"}) as r:
                assert [i["id"] for i in (await r.json())["incidents"]] == ["ams1:ams1-inc"]
            async with http.get(f"{url}/incidents", params={"site": "fra1"}) as r:
                page = await r.text()
            assert "fra1:fra1-inc" in page and "ams1:ams1-inc" not in page
            async with http.get(f"{url}/api/v1/incidents", params={"site": "AMS"}) as r:
                assert r.status == 400
            async with http.get(f"{url}/fleet", params={"site": "ams1"}) as r:
                page = await r.text()
            assert r.status == 200 and 'data-site="ams1"' in page and 'data-site="fra1"' not in page
            assert "ams1:ams1-inc" in page and "fra1:fra1-inc" not in page


@pytest.mark.parametrize("row", [
    ["alpha", 1.0, 1.0, 1.0, 1.0], ["alpha", 1.0, 1.0, 1.0, 1.0, True], [7, 1.0, 1.0, 1.0, 1.0, 1.0],
    ["alpha", 1.0, float("nan"), 1.0, 1.0, 1.0], ["alpha", 1.0, float("inf"), 1.0, float("-inf"), 1.0],
    ["alpha", "1", 1.0, 1.0, 1.0, 1.0], {"tenant": "alpha"},
])
def test_fleet_traffic_row_check_refuses_what_is_not_six_finite_fields(row):
    from securewatch.context import ApiError  # noqa: PLC0415
    from securewatch.fleet import check_batches  # noqa: PLC0415

    good = ["alpha", 1.0, 2, 3.0, 4.0, 5.0]
    assert check_batches({"queue": "q", "batches": [{"seq": 1, "time": 1.0, "traffic": [good]}]})[0] == "q"
    with pytest.raises(ApiError) as caught:
        check_batches({"queue": "q", "batches": [{"seq": 1, "time": 1.0, "traffic": [good, row]}]})
    assert caught.value.status == 422 and caught.value.problems[0].startswith("batches[0].traffic[1]:")


def columns_of(rows: list[list]) -> dict[str, list]:
    """Traffic rows as a batch's "traffic_columns" (what the agent sends since the columnar form)."""
    fields = ("tenant", "time", "passed_pps", "dropped_pps", "passed_bps", "dropped_bps")
    return {field: [row[i] for row in rows] for i, field in enumerate(fields)}


async def test_fleet_ingest_takes_traffic_columns_and_the_older_rows_alike(tmp_path, database_url):
    """Gap 1 of issue 17 (ingest rate): the columnar batch is stored as its rows would be, the row
    form of batches queued before the upgrade still is, and a retried columnar batch is stored once."""
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        token = await enroll(store, "ams1")
        t = float(int(time.time()) - 10)
        columnar = {"seq": 2, "time": t + 1, "traffic_columns": columns_of(
            [["alpha", t + 1.43, 1000.0, 20.0, 8e6, 1.6e5], ["beta", t + 1.43, 7, 0, 56, 0]])}
        body = {"site": "ams1", "queue": "q1", "batches": [batch(1, t), columnar]}
        status, answer = await post(url, "/api/v1/fleet/site/ingest", token, body)
        assert status == 200 and answer == {"acked": [1, 2], "duplicates": 0, "outside": 0, "folded": 0}, answer
        status, answer = await post(url, "/api/v1/fleet/site/ingest", token, body)
        assert answer == {"acked": [1, 2], "duplicates": 2, "outside": 0, "folded": 0}
        rows = await store.run(lambda b: fleet_store.traffic(b, t - 1, site="ams1"))
        assert [(r["tenant"], r["time"], r["passed_pps"], r["dropped_bps"]) for r in rows] == [
            ("alpha", int(t), 1000.0, 1.6e5), ("alpha", int(t) + 1, 1000.0, 1.6e5), ("beta", int(t) + 1, 7.0, 0.0)]
        items = await store.run(lambda b: b.execute("SELECT items FROM fleet_batches WHERE seq = 2").fetchone()[0])
        assert items == 2


@pytest.mark.parametrize(("change", "problem"), [
    (lambda c: c.pop("dropped_bps"), "batches[0].traffic_columns: expected an object of the arrays"),
    (lambda c: c.update(extra=[]), "batches[0].traffic_columns: expected an object of the arrays"),
    (lambda c: c.update(time=1.0), "batches[0].traffic_columns.time: expected an array"),
    (lambda c: c["passed_bps"].pop(), "batches[0].traffic_columns.passed_bps: 1 values where tenant has 2"),
    (lambda c: c["tenant"].__setitem__(1, 7), "batches[0].traffic_columns.tenant[1]: expected a string"),
    (lambda c: c["time"].__setitem__(1, "1"), "batches[0].traffic_columns.time[1]: expected a finite number"),
    (lambda c: c["passed_pps"].__setitem__(0, True), "batches[0].traffic_columns.passed_pps[0]: expected a finite"),
    (lambda c: c["dropped_pps"].__setitem__(1, float("nan")), "batches[0].traffic_columns.dropped_pps[1]: expected"),
    (lambda c: c["dropped_bps"].__setitem__(0, float("-inf")), "batches[0].traffic_columns.dropped_bps[0]: expected"),
])
def test_fleet_traffic_columns_check_names_the_bad_column_and_value(change, problem):
    from securewatch.context import ApiError  # noqa: PLC0415
    from securewatch.fleet import check_batches  # noqa: PLC0415

    def body(columns):
        return {"queue": "q", "batches": [{"seq": 1, "time": 1.0, "traffic_columns": columns}]}

    good = [["alpha", 1.0, 2, 3.0, 4.0, 5.0], ["beta", 1.0, 2, 3.0, 4.0, 5.0]]
    assert check_batches(body(columns_of(good)))[0] == "q"
    # Finite numbers whose sum overflows are past VALUE_MAX: refused (test_review2_item1_* below).
    assert check_batches(body(columns_of([["a", 1.0, 1e15, 1e15, 1.0, 1.0], ["b", 1.0, 1e15, 1e15, 1.0, 1.0]])))
    columns = columns_of(good)
    change(columns)
    with pytest.raises(ApiError) as caught:
        check_batches(body(columns))
    assert caught.value.status == 422 and caught.value.problems[0].startswith(problem), caught.value.problems


async def test_fleet_ingest_keeps_the_first_of_a_second_sent_again_in_a_later_batch(tmp_path, database_url):
    """An appliance whose two ticks fell in one second sends that second in two batches: the
    second batch is stored (its other rows too) and the first row of the second is kept. On
    PostgreSQL, COPY refused it, and the site's queue stuck on that batch with HTTP 500."""
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        token = await enroll(store, "ams1")
        t = float(int(time.time()) - 10)
        first = {"seq": 1, "time": t, "traffic_columns": columns_of([["alpha", t + 0.2, 1.0, 0.0, 8.0, 0.0]])}
        again = {"seq": 2, "time": t + 1, "traffic_columns": columns_of(
            [["alpha", t + 0.9, 2.0, 0.0, 16.0, 0.0], ["beta", t + 0.9, 3.0, 0.0, 24.0, 0.0]])}
        for body in (first, again):
            status, answer = await post(url, "/api/v1/fleet/site/ingest", token,
                                        {"site": "ams1", "queue": "q1", "batches": [body]})
            assert status == 200, answer
        rows = await store.run(lambda b: fleet_store.traffic(b, t - 1, site="ams1"))
        assert [(r["tenant"], r["time"], r["passed_pps"]) for r in rows] == [("alpha", int(t), 1.0),
                                                                             ("beta", int(t), 3.0)]


async def test_fleet_ingest_skips_tenants_the_central_set_does_not_give_the_site(tmp_path, database_url):
    """Issue 17 review, item 1: a site's token wrote traffic and incidents of any tenant, also one
    that runs at another site only or that central does not know at all."""
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        await store.save_tenant_set(TenantSet.from_dicts([
            {"id": "alpha", "prefixes": ["198.51.100.0/25"]},
            {"id": "beta", "prefixes": ["203.0.113.0/24"], "sites": ["fra1"]}]), "test", "seed")
        token = await enroll(store, "ams1")
        t = float(int(time.time()) - 10)
        body = {"site": "ams1", "queue": "q1", "batches": [
            batch(1, t, incident="i-1"), batch(2, t + 1, tenant="beta", incident="i-2"),
            batch(3, t + 2, tenant="nobody", incident="i-3"),
            {"seq": 4, "time": t + 3, "traffic_columns": columns_of(
                [["alpha", t + 3.1, 1.0, 0.0, 8.0, 0.0], ["beta", t + 3.1, 2.0, 0.0, 16.0, 0.0]])}]}
        status, answer = await post(url, "/api/v1/fleet/site/ingest", token, body)
        assert status == 200 and answer == {"acked": [1, 2, 3, 4], "duplicates": 0, "outside": 0, "folded": 0}, answer
        rows = await store.run(lambda b: fleet_store.traffic(b, t - 1, site="ams1"))
        assert {r["tenant"] for r in rows} == {"alpha"} and len(rows) == 2
        assert await count(store, "SELECT COUNT(*) FROM fleet_destination_seconds WHERE tenant <> 'alpha'") == 0
        assert await count(store, "SELECT COUNT(*) FROM incidents") == 1
        assert await store.incident("ams1:i-2") is None and await store.incident("ams1:i-3") is None


@pytest.mark.parametrize(("change", "problem"), [
    (lambda e: e.update(vectors="udp_flood"), "batches[0].events[0].vectors: expected an array of strings"),
    (lambda e: e.update(vectors=[7]), "batches[0].events[0].vectors: expected an array of strings"),
    (lambda e: e.update(destinations=[{}]), "batches[0].events[0].destinations: expected an array of strings"),
    (lambda e: e.update(details=[]), "batches[0].events[0].details: expected an object"),
    (lambda e: e["details"].update(explanations=["x"]), "batches[0].events[0].details.explanations: expected"),
    (lambda e: e["details"].update(explanations={"udp_flood": 7}), "batches[0].events[0].details.explanations:"),
    (lambda e: e["details"].update(started="now"), "batches[0].events[0].details.started: expected a finite"),
    (lambda e: e["details"].update(series=[{"t": "x"}]), "batches[0].events[0].details.series: expected"),
    (lambda e: e["details"].update(pcap=[]), "batches[0].events[0].details.pcap: expected an object"),
    (lambda e: e["details"].update(target=7), "batches[0].events[0].details.target: expected a string"),
    (lambda e: e.update(pps="many"), "batches[0].events[0].pps: expected a finite number"),
    (lambda e: e.update(message=7), "batches[0].events[0].message: expected a string"),
])
def test_fleet_event_check_names_the_bad_field(change, problem):
    """Issue 17 review, item 1: an event of the wrong shape (vectors a string, explanations a list)
    was stored, and broke the reports' explanation and the incident page of that tenant."""
    from securewatch.context import ApiError  # noqa: PLC0415
    from securewatch.fleet import check_batches  # noqa: PLC0415

    good = batch(1, 1000.0, incident="i-1")
    good["events"][0]["details"]["explanations"] = {"udp_flood": "what was seen"}
    good["events"][0]["details"]["series"] = [{"t": 1000.0, "pps": 5.0}]
    assert check_batches({"queue": "q", "batches": [good]})[0] == "q"
    change(good["events"][0])
    with pytest.raises(ApiError) as caught:
        check_batches({"queue": "q", "batches": [good]})
    assert caught.value.status == 422 and caught.value.problems[0].startswith(problem), caught.value.problems


async def post_text(url: str, path: str, token: str, text: str) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as http, http.post(f"{url}{path}", data=text) as r:
        return r.status, await r.json()


def _set(path: tuple, value):
    def change(b):
        target = b
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


@pytest.mark.parametrize(("change", "field"), [
    (_set(("seq",), 2**63), "batches[0].seq"),
    (_set(("time",), 1e300), "batches[0].time"),
    (_set(("traffic", 0, 1), 1e300), "batches[0].traffic[0]"),
    (_set(("destinations", 0, "time"), 2**64), "batches[0].destinations[0]"),
    (_set(("destinations", 0, "pps"), [1, "x"]), "batches[0].destinations[0]"),
    (_set(("destinations", 0, "dropped_pps"), "x"), "batches[0].destinations[0]"),
    (_set(("events", 0, "sequence"), 2**64), "batches[0].events[0].sequence"),
    (_set(("events", 0, "packets_dropped"), 2**63), "batches[0].events[0].packets_dropped"),
    (_set(("events", 0, "timestamp"), 1e300), "batches[0].events[0].timestamp"),
    (_set(("events", 0, "details", "started"), -1e300), "batches[0].events[0].details.started"),
])
async def test_fleet_ingest_refuses_numbers_the_database_cannot_hold_with_422(tmp_path, database_url, change, field):
    """Issue 17 review, item 2: such a number made the store fail (500), and the site sent the
    batch again forever (it drops a batch on 413/422 only)."""
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        token = await enroll(store, "ams1")
        bad = batch(1, time.time(), incident="i-1")
        change(bad)
        status, answer = await post(url, "/api/v1/fleet/site/ingest", token,
                                    {"site": "ams1", "queue": "q1", "batches": [bad]})
        assert status == 422 and answer["problems"][0].startswith(field), answer
        assert await count(store, "SELECT COUNT(*) FROM fleet_batches") == 0


async def test_fleet_sync_and_ingest_refuse_nan_infinity_and_huge_counts_with_422(tmp_path, database_url):
    """Issue 17 review, item 2: NaN/Infinity (which Python's json reads) and integers past BIGINT."""
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        token = await enroll(store, "ams1")
        for field, value in (("backlog", 2**64), ("running_version", 2**63), ("time", 1e300)):
            status, answer = await post(url, "/api/v1/fleet/site/sync", token,
                                        {"site": "ams1", "time": time.time(), field: value})
            assert status == 422 and answer["problems"][0].startswith(f"{field}:"), answer
        status, answer = await post_text(url, "/api/v1/fleet/site/sync", token,
                                         '{"site": "ams1", "time": 1.0, "status": {"load": NaN}}')
        assert status == 422 and "NaN" in answer["error"], answer
        text = json.dumps({"site": "ams1", "queue": "q1", "batches": [batch(1, time.time())]})
        status, answer = await post_text(url, "/api/v1/fleet/site/ingest", token,
                                         text.replace("1000.0", "Infinity"))
        assert status == 422 and "Infinity" in answer["error"], answer
        assert await count(store, "SELECT COUNT(*) FROM fleet_batches") == 0


async def test_fleet_store_refusing_a_value_is_a_422_not_a_500(tmp_path, database_url):
    """Issue 17 review, item 2, the last guard: what the checks let through and the database
    cannot hold (here SQLite and an integer past 64 bits) answers 422, so the site drops it."""
    from securewatch.context import ApiError  # noqa: PLC0415
    from securewatch.fleet import refused_by_store  # noqa: PLC0415

    store = await Store.open(database_url)
    try:
        await enroll(store, "ams1")
        with pytest.raises(ApiError) as caught, refused_by_store("ams1"):
            await store.run(fleet_store.record_contact, "ams1", time.time(), None, None, 2**64, None)
        assert caught.value.status == 422
    finally:
        await store.close()


# -- issue 17 item 2: the templates and the NOC receivers flow down, versioned ---------------------

CENTRAL_NOTIFY = {"webhook": [{"name": "noc-hook", "url": "https://hooks.example.net/seawall", "kind": "generic",
                               "secret": "hmac-SECRET"}]}


async def test_fleet_sync_sends_templates_and_receivers_versioned_to_a_site_behind(tmp_path, database_url):
    """The site gets each document it does not run yet, at its version: the templates with the
    links of its own tenants only, the central receivers with their secrets (the site sends the
    alerts); the templates' version moves once per change, whoever made it."""
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        await store.save_tenant_set(TenantSet.from_dicts([
            {"id": "alpha", "prefixes": ["198.51.100.0/25"]},
            {"id": "beta", "prefixes": ["203.0.113.0/24"], "sites": ["fra1"]}]), "test", "seed")
        version = (await store.tenant_state()).version
        token = await enroll(store, "ams1")

        async def sync(running: dict | None) -> dict:
            body = {"site": "ams1", "time": time.time(), "running_version": version}
            status, answer = await post(url, "/api/v1/fleet/site/sync", token,
                                        body if running is None else {**body, "running_versions": running})
            assert status == 200, answer
            return answer

        answer = await sync({})
        assert answer == {"version": version, "versions": {"tenants": version, "templates": 0, "notify": 0}}
        await store.save_policy_template("strict", {"udp_rate_pps": 5000}, "noc")
        await store.set_template_link("alpha", "strict")
        await store.set_template_link("beta", "strict")
        await store.save_notify_config(CENTRAL_NOTIFY, "noc", "notify.update")
        answer = await sync({"templates": None, "notify": None})
        assert answer["versions"] == {"tenants": version, "templates": 1, "notify": 1}
        assert answer["templates"] == {"templates": {"strict": {"udp_rate_pps": 5000}}, "links": {"alpha": "strict"}}
        assert answer["notify"] == CENTRAL_NOTIFY
        # Up to date: nothing sent, and reading does not count a change.
        answer = await sync({"templates": 1, "notify": 1})
        assert "templates" not in answer and "notify" not in answer and answer["versions"]["templates"] == 1
        await store.save_policy_template("strict", {"udp_rate_pps": 6000}, "noc")
        answer = await sync({"templates": 1, "notify": 1})
        assert answer["versions"]["templates"] == 2 and "notify" not in answer
        assert answer["templates"]["templates"] == {"strict": {"udp_rate_pps": 6000}}
        # An agent of the first fleet version (no running_versions): the tenant set alone, as before.
        assert await sync(None) == {"version": version}


async def test_fleet_sync_sends_a_tenants_receivers_only_to_the_sites_that_carry_it(tmp_path, database_url):
    """Issue 17 review, item 1: a receiver routed to tenants (their webhook secret, their Slack
    URL) reaches only the sites that carry one of them, with its `tenants` narrowed to those; the
    NOC's receivers reach every site."""
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        await store.save_tenant_set(TenantSet.from_dicts([
            {"id": "alpha", "prefixes": ["198.51.100.0/25"]},
            {"id": "beta", "prefixes": ["203.0.113.0/24"], "sites": ["fra1"]}]), "test", "seed")
        version = (await store.tenant_state()).version
        tokens = {"ams1": await enroll(store, "ams1"), "fra1": await enroll(store, "fra1")}
        noc_hook = CENTRAL_NOTIFY["webhook"][0]
        beta_hook = {"name": "beta-hook", "url": "https://hooks.example.net/beta", "kind": "generic",
                     "secret": "beta-SECRET", "tenants": ["beta"]}
        both_hook = {"name": "both-hook", "url": "https://hooks.example.net/both", "kind": "generic",
                     "tenants": ["alpha", "beta"]}
        beta_slack = {"name": "beta-slack", "url": "https://hooks.slack.example.net/beta-SLACK", "kind": "slack",
                      "tenants": "beta"}
        await store.save_notify_config({"webhook": [noc_hook, beta_hook, both_hook, beta_slack]}, "noc",
                                       "notify.update")

        async def sync(site: str) -> dict:
            status, answer = await post(url, "/api/v1/fleet/site/sync", tokens[site], {
                "site": site, "time": time.time(), "running_version": version, "running_versions": {"notify": None}})
            assert status == 200, answer
            return answer

        ams, fra = await sync("ams1"), await sync("fra1")
        assert ams["versions"]["notify"] == fra["versions"]["notify"] == 1
        assert ams["notify"] == {"webhook": [noc_hook, {**both_hook, "tenants": ["alpha"]}]}
        assert "beta-SECRET" not in json.dumps(ams) and "beta-SLACK" not in json.dumps(ams)
        assert fra["notify"] == {"webhook": [noc_hook, beta_hook, both_hook, {**beta_slack, "tenants": ["beta"]}]}


async def test_fleet_page_shows_each_documents_version_per_site_and_flags_the_lagging_one(tmp_path, database_url):
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        ams, fra = await enroll(store, "ams1"), await enroll(store, "fra1")
        version = (await store.tenant_state()).version
        await store.save_policy_template("strict", {"udp_rate_pps": 5000}, "noc")
        await store.save_notify_config(CENTRAL_NOTIFY, "noc", "notify.update")
        refusal = "version 1: notify.webhook[0].name: 'noc-hook' is already used by webhook"
        for token, site, notify, errors in ((ams, "ams1", 1, {}), (fra, "fra1", None, {"notify": refusal})):
            status, answer = await post(url, "/api/v1/fleet/site/sync", token, {
                "site": site, "time": time.time(), "running_version": version,
                "running_versions": {"templates": 1, "notify": notify}, "config_errors": errors})
            assert status == 200, answer
        noc = await add_token(store, "noc")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {noc}"}) as http:
            async with http.get(f"{url}/api/v1/fleet/sites") as r:
                sites = {s["site"]: s for s in (await r.json())["sites"]}
            async with http.get(f"{url}/fleet") as r:
                page = await r.text()
        assert not sites["ams1"]["lagging"]
        assert sites["ams1"]["versions"] == {
            "tenants": {"running": version, "central": version, "lagging": False, "error": None},
            "templates": {"running": 1, "central": 1, "lagging": False, "error": None},
            "notify": {"running": 1, "central": 1, "lagging": False, "error": None}}
        assert sites["fra1"]["lagging"] and sites["fra1"]["versions"]["notify"] == {
            "running": None, "central": 1, "lagging": True, "error": refusal}
        assert not sites["fra1"]["versions"]["templates"]["lagging"]
        fra_row = page.split('data-site="fra1"', 1)[1].split("</tr>", 1)[0]
        notify_cell = fra_row.split('data-kind="notify"', 1)[1].split("</td>", 1)[0]
        assert "lagging" in notify_cell and "refused:" in notify_cell
        ams_row = page.split('data-site="ams1"', 1)[1].split("</tr>", 1)[0]
        assert "lagging" not in ams_row
        assert "templates 1" in page and "NOC receivers 1" in page


@pytest.mark.parametrize(("field", "value"), [
    ("running_versions", {"policy": 1}), ("running_versions", {"notify": -1}), ("running_versions", [1]),
    ("config_errors", {"notify": 7}), ("config_errors", {"bgp": "x"}),
])
async def test_fleet_sync_refuses_bad_document_versions_naming_the_field(tmp_path, database_url, field, value):
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        token = await enroll(store, "ams1")
        status, answer = await post(url, "/api/v1/fleet/site/sync", token,
                                    {"site": "ams1", "time": time.time(), field: value})
        assert status == 422 and answer["problems"][0].startswith(f"{field}:"), answer


# -- issue 17 item 3: a tenant across sites, one view and one report; incidents linked -------------

async def get(url: str, path: str, token: str, **params) -> tuple[int, dict]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.get(f"{url}{path}", params=params) as r:
        return r.status, await r.json()


def _at(seq: int, t: float, passed_pps: float, pps: list[float], incident: str | None = None) -> dict:
    """A batch of alpha's second `t`: `passed_pps`, and 198.51.100.10 at `pps` (summed per second)."""
    b = batch(seq, t, incident=incident)
    b["traffic"] = [["alpha", t + 0.43, passed_pps, 20.0, passed_pps * 8000, 1.6e5]]
    b["destinations"][0]["pps"] = pps
    return b


async def test_fleet_tenant_seen_at_two_sites_gets_one_view_and_one_report_summing_both(tmp_path, database_url):
    """The tenant's traffic (its own API, the fleet API), per-destination series and report on the
    central server sum both sites by second; ?site= narrows each to one site."""
    import datetime  # noqa: PLC0415

    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        ams, fra = await enroll(store, "ams1"), await enroll(store, "fra1")
        t = float(int(time.time()) // 60 * 60 - 120)   # a whole minute, two minutes ago
        await post(url, "/api/v1/fleet/site/ingest", ams, {"site": "ams1", "queue": "q", "batches": [
            _at(1, t, 1000.0, [10.0, 11.0]), _at(2, t + 1, 1000.0, [10.0])]})
        await post(url, "/api/v1/fleet/site/ingest", fra, {"site": "fra1", "queue": "q", "batches": [
            _at(1, t, 500.0, [20.0])]})
        noc = await add_token(store, "noc")
        status, view = await get(url, "/api/v1/tenants/alpha/traffic", noc, seconds="600")
        assert status == 200, view
        # fra1 has not sent t + 1 yet: the sum ends at t rather than dipping to ams1's share (review item 2).
        assert [(r["time"], r["passed_pps"], r["sites"]) for r in view["series"]] == [(t, 1500.0, 2)]
        status, view = await get(url, "/api/v1/tenants/alpha/traffic", noc, seconds="600", site="fra1")
        assert [(r["time"], r["passed_pps"]) for r in view["series"]] == [(t, 500.0)] and view["site"] == "fra1"
        status, view = await get(url, "/api/v1/fleet/tenants/alpha/traffic", noc, seconds="600")
        assert status == 200 and sorted(view["sites"]) == ["ams1", "fra1"]
        assert [r["passed_pps"] for r in view["series"]] == [1500.0]
        assert [r["time"] for r in view["sites"]["ams1"]] == [t, t + 1]   # each site's own: all it sent
        # The live console's charts: seconds (5 min) and minutes (1 h) summed alike.
        status, chart = await get(url, "/api/v1/tenants/alpha/series", noc, range="5m")
        assert status == 200 and (chart["time"], chart["passed_pps"]) == ([int(t)], [1500.0])
        status, chart = await get(url, "/api/v1/tenants/alpha/series", noc, range="1h")
        assert (chart["time"], chart["passed_pps"]) == ([int(t)], [1500.0])
        status, view = await get(url, "/api/v1/fleet/tenants/alpha/destinations", noc, seconds="600")
        assert [(d["address"], d["time"], d["pps"], d["sites"]) for d in view["destinations"]] == [
            ("198.51.100.10", int(t), 41.0, ["ams1", "fra1"]), ("198.51.100.10", int(t) + 1, 10.0, ["ams1"])]
        day = datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d")
        status, report = await get(url, f"/api/v1/tenants/alpha/reports/{day}..{day}", noc)
        assert status == 200, report
        # One minute: each site's mean over the seconds every site has sent (t), summed.
        assert report["traffic"]["minutes_with_data"] == 1 and report["traffic"]["mean_passed_pps"] == 1500.0
        assert report["servers"] == [{"address": "198.51.100.10", "peak_pps": 41.0, "peak_dropped_pps": 4.0,
                                      "attacks": 0}]
        status, report = await get(url, f"/api/v1/tenants/alpha/reports/{day}..{day}", noc, site="fra1")
        assert report["site"] == "fra1" and report["traffic"]["mean_passed_pps"] == 500.0
        assert report["servers"][0]["peak_pps"] == 20.0
        # The tenant's own user sees its aggregated view; another tenant's is not there for it.
        alpha = await add_token(store, "tenant", "alpha")
        status, view = await get(url, "/api/v1/fleet/tenants/alpha/traffic", alpha, seconds="600")
        assert status == 200 and len(view["series"]) == 1
        assert (await get(url, "/api/v1/fleet/tenants/beta/traffic", alpha))[0] == 404
        assert (await get(url, "/api/v1/tenants/alpha/traffic", noc, site="AMS 1"))[0] == 400


async def test_fleet_tenant_sum_never_dips_for_a_site_that_lags_or_sent_part_of_a_minute(tmp_path, database_url):
    """Issue 17 review, item 2: ams1 sends a whole minute at 1000 pps and two seconds more, fra1
    half of that minute at 500 pps (from second 30 on) and one second more. A minute is the sum of
    each site's own mean (1000 + 500, not the mean of per-second sums, 1250); the seconds end at
    the newest second both have sent (t + 60), not at ams1's alone; a site silent for longer than
    fleet_tenant.EDGE_WAIT_S does not hold the edge back."""
    from securewatch import fleet_tenant  # noqa: PLC0415

    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        ams, fra = await enroll(store, "ams1"), await enroll(store, "fra1")
        t = float(int(time.time()) // 60 * 60 - 180)   # a whole minute, three minutes ago
        await post(url, "/api/v1/fleet/site/ingest", ams, {"site": "ams1", "queue": "q", "batches": [
            _at(i + 1, t + i, 1000.0, [10.0]) for i in range(62)]})
        await post(url, "/api/v1/fleet/site/ingest", fra, {"site": "fra1", "queue": "q", "batches": [
            _at(i + 1, t + 30 + i, 500.0, [10.0]) for i in range(31)]})
        noc = await add_token(store, "noc")
        status, view = await get(url, "/api/v1/fleet/tenants/alpha/traffic", noc, seconds="600")
        assert status == 200, view
        assert [(r["time"], r["passed_pps"]) for r in view["series"][-2:]] == [(t + 59, 1500.0), (t + 60, 1500.0)]
        status, view = await get(url, "/api/v1/tenants/alpha/traffic", noc, seconds="600")
        assert view["series"][-1]["time"] == t + 60 and view["series"][-1]["passed_pps"] == 1500.0
        status, chart = await get(url, "/api/v1/tenants/alpha/series", noc, range="5m")
        assert chart["time"][-1] == int(t) + 60 and chart["passed_pps"][-1] == 1500.0
        status, chart = await get(url, "/api/v1/tenants/alpha/series", noc, range="1h")
        assert (chart["time"], chart["passed_pps"]) == ([int(t), int(t) + 60], [1500.0, 1500.0])
        minutes = await store.traffic("alpha", t - 60, t + 600, "minute")
        assert [(m["time"], m["passed_pps"]) for m in minutes] == [(t, 1500.0), (t + 60, 1500.0)]
        # fra1 goes silent: once ams1 is more than EDGE_WAIT_S ahead, the sum shows ams1 alone.
        late = int(fleet_tenant.EDGE_WAIT_S) + 2
        await post(url, "/api/v1/fleet/site/ingest", ams, {"site": "ams1", "queue": "q", "batches": [
            _at(63 + i, t + 62 + i, 1000.0, [10.0]) for i in range(late)]})
        status, view = await get(url, "/api/v1/fleet/tenants/alpha/traffic", noc, seconds="600")
        assert [(r["time"], r["passed_pps"], r["sites"]) for r in view["series"][-1:]] == [(t + 61 + late, 1000.0, 1)]


async def test_fleet_attack_seen_at_two_sites_is_two_incidents_linked(tmp_path, database_url):
    """Same tenant, overlapping in time, the same destination: linked both ways, in the API and on
    the incident page; an incident at another time, or of another destination, is not linked."""
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        ams, fra = await enroll(store, "ams1"), await enroll(store, "fra1")
        t = time.time() - 600
        await post(url, "/api/v1/fleet/site/ingest", ams, {"site": "ams1", "queue": "q", "batches": [
            batch(1, t, incident="i-1")]})
        other = batch(2, t + 5, incident="i-other")
        other["events"][0]["destinations"] = ["198.51.100.99"]
        late = batch(3, t + 3600, incident="i-late")
        await post(url, "/api/v1/fleet/site/ingest", fra, {"site": "fra1", "queue": "q", "batches": [
            batch(1, t + 20, incident="i-9"), other, late]})
        noc = await add_token(store, "noc")
        status, incident = await get(url, "/api/v1/incidents/ams1:i-1", noc)
        assert status == 200, incident
        assert [(i["id"], i["site"], i["destinations"]) for i in incident["linked"]] == [
            ("fra1:i-9", "fra1", ["198.51.100.10"])]
        status, incident = await get(url, "/api/v1/incidents/fra1:i-9", noc)
        assert [i["id"] for i in incident["linked"]] == ["ams1:i-1"]
        assert (await get(url, "/api/v1/incidents/fra1:i-late", noc))[1]["linked"] == []
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {noc}"}) as http, \
                http.get(f"{url}/incidents/ams1:i-1") as r:
            page = await r.text()
        linked = page.split('id="linked-incidents"', 1)[1].split("</dd>", 1)[0]
        assert 'href="/incidents/fra1:i-9"' in linked and "fra1:i-other" not in linked
# -- item 5 (scale): rollups, retention, partitions ----------------------------------------------

def _ingest_seconds(store: Store, site: str, queue: str, seqs_and_times: list[tuple[int, int]], tenants=("alpha",),
                    passed=lambda t, i: float(t % 97 + i), now: float | None = None, retention=None) -> object:
    """Batches of one second each straight into the store (what site_ingest does after its checks)."""
    batches = [{"seq": seq, "time": float(t), "traffic_columns": columns_of(
        [[name, t + 0.25, passed(t, i), 1.0, 8 * passed(t, i), 8.0] for i, name in enumerate(tenants)])}
        for seq, t in seqs_and_times]
    return store.run(fleet_store.ingest, site, queue, batches, time.time() if now is None else now,
                     lambda b, e: None, None, retention)


async def _sums(store: Store, site: str, start: int, end: int) -> dict[str, tuple]:
    rows = await store.run(lambda b: b.execute(
        "SELECT tenant, SUM(passed_pps), SUM(dropped_pps), SUM(passed_bps), MAX(passed_pps), COUNT(*) "
        "FROM fleet_traffic_seconds WHERE site = ? AND t >= ? AND t < ? GROUP BY tenant", (site, start, end)).fetchall())
    return {r[0]: tuple(round(float(v), 6) for v in r[1:]) for r in rows}


def _rollup_sums(rows: list[dict]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for r in rows:
        n = r["samples"]
        old = out.get(r["tenant"], (0.0, 0.0, 0.0, 0.0, 0))
        out[r["tenant"]] = (old[0] + r["passed_pps"] * n, old[1] + r["dropped_pps"] * n, old[2] + r["passed_bps"] * n,
                            max(old[3], r["max_passed_pps"]), old[4] + n)
    return {tenant: tuple(round(float(v), 6) for v in sums) for tenant, sums in out.items()}


async def test_item5_fleet_minute_and_hour_rollups_equal_the_sums_of_the_seconds(tmp_path, database_url):
    """Issue 17 item 5: the per-site minute and hour rollups hold the sums (and maxima, and the
    number of seconds) of the seconds behind them; a second backfilled after its minute was rolled
    up makes the minute and its hour be rolled up again, and they still equal the seconds."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    async with service(tmp_path, database=database_url, appliance=None) as (_url, store, _):
        await enroll(store, "ams1")
        now = int(time.time())
        hour = now // 3600 * 3600 - 3600      # the last full hour: its minutes span two partitions' worth
        seconds = [t for t in range(hour + 3540, hour + 3660) if t % 7]   # across the hour's end, with gaps
        await _ingest_seconds(store, "ams1", "q", list(enumerate(seconds, 1)), tenants=("alpha", "beta"))
        rolled = await store.run(fleet_store.rollup, now + 7200, SeriesRetention(fleet_second_retention_s=3 * 3600))
        assert rolled == {"minute": 2, "hour": 2, "destination_minute": 0, "failed": 0}   # the two minutes, then the two hours they fall in
        rolled = await store.run(fleet_store.rollup, now + 7200, SeriesRetention(fleet_second_retention_s=3 * 3600))
        assert rolled == {"minute": 0, "hour": 0, "destination_minute": 0, "failed": 0}   # nothing new
        for start in (hour + 3540, hour + 3600):
            minute = await store.run(lambda b, s=start: fleet_store.series(b, "minute", s, s + 60, site="ams1"))
            assert _rollup_sums(minute) == await _sums(store, "ams1", start, start + 60)
        hours = await store.run(lambda b: fleet_store.series(b, "hour", hour, hour + 7200, site="ams1"))
        assert [r["time"] for r in hours] == [hour, hour, hour + 3600, hour + 3600]
        assert _rollup_sums([r for r in hours if r["time"] == hour]) == await _sums(store, "ams1", hour, hour + 3600)
        # A backfilled second (t % 7 == 0 was missing) of the first minute arrives late.
        late = next(t for t in range(hour + 3540, hour + 3600) if t % 7 == 0)
        await _ingest_seconds(store, "ams1", "q", [(10_000, late)], tenants=("alpha", "beta"),
                              passed=lambda t, i: 5000.0)
        for _ in range(2):
            await store.run(fleet_store.rollup, now + 7200, SeriesRetention(fleet_second_retention_s=3 * 3600))
        minute = await store.run(lambda b: fleet_store.series(b, "minute", hour + 3540, hour + 3600, site="ams1"))
        expected = await _sums(store, "ams1", hour + 3540, hour + 3600)
        assert _rollup_sums(minute) == expected and expected["alpha"][3] == 5000.0
        hours = await store.run(lambda b: fleet_store.series(b, "hour", hour, hour + 3600, site="ams1"))
        assert _rollup_sums(hours) == await _sums(store, "ams1", hour, hour + 3600)


async def test_item5_fleet_traffic_api_reads_the_rollups_for_long_spans(tmp_path, database_url):
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        await enroll(store, "ams1")
        start = int(time.time()) // 60 * 60 - 600
        await _ingest_seconds(store, "ams1", "q", [(i + 1, start + i) for i in range(120)])
        await store.run(fleet_store.rollup, time.time(), SeriesRetention())
        admin = await add_token(store, "noc")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin}"}) as http:
            async with http.get(f"{url}/api/v1/fleet/traffic", params={
                    "site": "ams1", "tenant": "alpha", "seconds": "86400", "resolution": "minute"}) as r:
                rows = (await r.json())["rows"]
            assert [(row["time"], row["samples"]) for row in rows] == [(start, 60), (start + 60, 60)]
            async with http.get(f"{url}/api/v1/fleet/traffic", params={"resolution": "week"}) as r:
                assert r.status == 400 and "resolution:" in (await r.json())["error"]
            async with http.get(f"{url}/api/v1/fleet/traffic", params={"seconds": "86400"}) as r:
                assert r.status == 400   # seconds are for short spans only


async def test_item5_fleet_retention_removes_expired_seconds_and_rollups(tmp_path, database_url):
    """Expired per-second rows and rollups go (PostgreSQL: their partitions are dropped whole;
    SQLite: rows are deleted); what is within retention stays, and a retried batch is still
    recognised after the rows it brought are gone (the dedup rows are kept longer)."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    async with service(tmp_path, database=database_url, appliance=None) as (_url, store, _):
        await enroll(store, "ams1")
        # Both seconds in one hour that has ended by the rollup at now + 600, whatever the minute the
        # test runs in: "now" is minute 55 of the current hour (at most 55 minutes ahead, well inside
        # the partitions made 3 hours ahead).
        now = int(time.time()) // 3600 * 3600 + 3300
        await _ingest_seconds(store, "ams1", "q", [(1, now - 1800), (2, now - 10)])
        retention = SeriesRetention(fleet_second_retention_s=3600)
        await store.run(fleet_store.rollup, now + 600, retention)
        assert len(await store.run(lambda b: fleet_store.series(b, "minute", now - 7200, site="ams1"))) == 2
        # The hours once they have ended (the second one may be the current hour: it had not, above).
        await store.run(fleet_store.rollup, now + 3600 + 600, retention)
        hours = len({(now - 1800) // 3600, (now - 10) // 3600})
        await store.run(fleet_store.apply_retention, now + 2 * 3600 + 1, retention)
        assert await count(store, "SELECT COUNT(*) FROM fleet_traffic_seconds") == 0
        assert len(await store.run(lambda b: fleet_store.series(b, "minute", now - 7200, site="ams1"))) == 2
        again = await _ingest_seconds(store, "ams1", "q", [(1, now - 1800)])
        assert again.duplicates == 1
        await store.run(fleet_store.apply_retention, now + 31 * 86400 + 1, retention)
        assert await store.run(lambda b: fleet_store.series(b, "minute", 0, site="ams1")) == []
        assert len(await store.run(lambda b: fleet_store.series(b, "hour", 0, site="ams1"))) == hours


def test_item5_fleet_retention_keys_have_documented_defaults_and_named_errors(tmp_path):
    from securewatch.series import SeriesRetention  # noqa: PLC0415
    from securewatch.settings import parse_settings  # noqa: PLC0415

    problems: list[str] = []
    s = parse_settings({}, tmp_path, problems)
    assert not problems and (s.retention.fleet_second_retention_s, s.retention.fleet_minute_retention_days,
                             s.retention.fleet_hour_retention_days) == (3600, 30, 400) == (
        SeriesRetention().fleet_second_retention_s, 30, 400)
    s = parse_settings({"fleet_second_retention_s": 7200, "fleet_hour_retention_days": 31}, tmp_path, problems)
    assert not problems and s.retention.fleet_second_retention_s == 7200
    parse_settings({"fleet_second_retention_s": 60, "fleet_minute_retention_days": "7"}, tmp_path, problems)
    assert problems == ["[securewatch] fleet_second_retention_s: must be between 600 and 604800, got 60",
                        "[securewatch] fleet_minute_retention_days: expected a whole number, got a string '7'"]


async def test_fleet_report_counts_an_attack_seen_at_two_sites_once_with_its_site_legs(tmp_path, database_url):
    """Issue 17 review, item 3: the two linked incidents of one attack (ams1 and fra1, the same
    destination, overlapping) are one attack of the report with a leg per site, in JSON, CSV and
    HTML, and count once in the summary, the vectors and the attacked targets; an incident of
    another destination stays an attack of its own."""
    import csv  # noqa: PLC0415
    import datetime  # noqa: PLC0415
    import io  # noqa: PLC0415

    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        ams, fra = await enroll(store, "ams1"), await enroll(store, "fra1")
        t = float(int(time.time()) - 600)

        def leg(seq: int, at: float, incident: str, dropping_from: float) -> dict:
            # 40,000 pps at the site for 5 s, dropped from `dropping_from` on.
            b = batch(seq, at, incident=incident)
            b["events"][0]["details"]["series"] = [
                {"t": at + i, "pps": 40000.0, "bps": 3e8, "attack_pps": 39000.0, "passed_pps": 1000.0,
                 "dropped_pps": 30000.0 if at + i >= dropping_from else 0.0} for i in range(5)]
            return b

        await post(url, "/api/v1/fleet/site/ingest", ams, {"site": "ams1", "queue": "q", "batches": [
            leg(1, t, "i-1", t + 3)]})
        other = batch(2, t + 5, incident="i-other")
        other["events"][0]["destinations"] = ["198.51.100.99"]
        other["events"][0]["details"]["target"] = "198.51.100.99"
        await post(url, "/api/v1/fleet/site/ingest", fra, {"site": "fra1", "queue": "q", "batches": [
            leg(1, t + 2, "i-9", t + 2), other]})
        noc = await add_token(store, "noc")
        days = [datetime.datetime.fromtimestamp(x, datetime.UTC).strftime("%Y-%m-%d") for x in (t - 86400, t + 60)]
        path = f"/api/v1/tenants/alpha/reports/{days[0]}..{days[1]}"
        status, report = await get(url, path, noc)
        assert status == 200, report
        assert report["summary"]["attacks"] == 2 and report["vectors"] == {"udp_flood": 2}
        linked, alone = report["attacks"]
        assert (linked["id"], linked["sites"]) == ("ams1:i-1", ["ams1", "fra1"])
        assert [(leg["id"], leg["site"]) for leg in linked["legs"]] == [("ams1:i-1", "ams1"), ("fra1:i-9", "fra1")]
        assert linked["packets_dropped"] == sum(leg["packets_dropped"] for leg in linked["legs"])
        # Seconds t+2..t+4 carry both sites' 40,000 pps; fra1 dropped from its first second (t+2).
        assert linked["peak_pps"] == 80000.0 > max(leg["peak_pps"] for leg in linked["legs"])
        assert (linked["mitigation_s"], [leg["mitigation_s"] for leg in linked["legs"]]) == (2.0, [3.0, 0.0])
        assert max(linked["chart"]["attack_pps"]) == 78000.0
        assert (alone["id"], alone["sites"], alone["legs"]) == ("fra1:i-other", ["fra1"], [])
        assert {x["address"]: x["attacks"] for x in report["targets"]} == {"198.51.100.10": 1, "198.51.100.99": 1}
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {noc}"}) as http:
            async with http.get(f"{url}{path}", params={"format": "csv"}) as r:
                assert r.status == 200
                rows = list(csv.reader(io.StringIO(await r.text())))
            async with http.get(f"{url}{path}", params={"format": "html"}) as r:
                assert r.status == 200
                html = await r.text()
        assert [(row[1], row[-1]) for row in rows if row and row[0] == "attack" and row[1] != "incident"] == [
            ("ams1:i-1", "ams1 fra1"), ("fra1:i-other", "fra1")]
        assert [row[1:4] for row in rows if row and row[0] == "attack_leg" and row[1] != "attack"] == [
            ["ams1:i-1", "ams1:i-1", "ams1"], ["ams1:i-1", "fra1:i-9", "fra1"]]
        assert "seen at ams1, fra1" in html and "incident fra1:i-9" in html
        # Narrowed to one site, each site's incidents are its attacks again.
        status, report = await get(url, path, noc, site="fra1")
        assert [a["id"] for a in report["attacks"]] == ["fra1:i-9", "fra1:i-other"]


# -- issue 17, second review: rollups and upkeep that one value cannot stop, old backfill kept ---

@pytest.mark.parametrize(("change", "field"), [
    (lambda b: b.update(traffic_columns=columns_of([["alpha", b["time"], 1e308, 1.0, 8.0, 8.0]])),
     "batches[0].traffic_columns.passed_pps[0]: expected a number within ±1e+15"),
    (lambda b: b.update(traffic_columns=columns_of([["alpha", b["time"], 1.0, 1.0, 8.0, -2e15]])),
     "batches[0].traffic_columns.dropped_bps[0]: expected a number within ±1e+15"),
    (lambda b: b["traffic"][0].__setitem__(2, 1e308), "batches[0].traffic[0]:"),
    (lambda b: b["destinations"][0].__setitem__("pps", [1e308, 1e308]), "batches[0].destinations[0]:"),
])
async def test_review2_item1_fleet_ingest_refuses_pps_or_bps_past_1e15_naming_the_field(tmp_path, database_url,
                                                                                         change, field):
    """Finite values near the float limit (1e308 in two seconds) overflowed the minute rollup's SUM
    and stopped every rollup and the partition upkeep: refused at the door with a 422 naming the field."""
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        token = await enroll(store, "ams1")
        bad = batch(1, time.time())
        change(bad)
        status, answer = await post(url, "/api/v1/fleet/site/ingest", token, {"site": "ams1", "queue": "q",
                                                                               "batches": [bad]})
        assert status == 422 and answer["problems"][0].startswith(field), answer
        assert await count(store, "SELECT COUNT(*) FROM fleet_batches") == 0


async def test_review2_item1_fleet_rollup_key_the_database_refuses_is_dropped_and_the_rest_rolled_up(
        tmp_path, database_url):
    """A minute whose sums the database refuses (PostgreSQL: 1e308 + 1e308 is out of range for
    double precision; SQLite keeps an infinity, so a trigger refuses it the same way) is logged,
    dropped from the pending set and counted; the other site's minute is rolled up in the same
    pass, and the next pass is not stuck on it."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    async with service(tmp_path, database=database_url, appliance=None) as (_url, store, _):
        await enroll(store, "ams1")
        await enroll(store, "fra1")
        if store.dialect == "sqlite":
            await store.run(lambda b: b.execute(
                "CREATE TRIGGER refuse_infinite BEFORE INSERT ON fleet_traffic_minutes WHEN NEW.sum_passed_pps > 1e308 "
                "BEGIN SELECT RAISE(ABORT, 'value out of range: overflow'); END"))
        minute = int(time.time()) // 60 * 60 - 300
        # Straight into the store, past the checks (a database written before them, say).
        await _ingest_seconds(store, "ams1", "q", [(1, minute), (2, minute + 1)], passed=lambda t, i: 1e308)
        await _ingest_seconds(store, "fra1", "q", [(1, minute + 5)])
        retention = SeriesRetention()
        done = await store.run(fleet_store.rollup, minute + 120, retention)
        assert (done["minute"], done["failed"]) == (1, 1)
        assert [r["site"] for r in await store.run(lambda b: fleet_store.series(b, "minute", minute, site=None))] == [
            "fra1"]
        assert await count(store, "SELECT COUNT(*) FROM fleet_rollup_pending WHERE level = 'minute'") == 0
        assert (await store.run(fleet_store.rollup, minute + 120, retention))["failed"] == 0


async def test_review2_item3_fleet_backfill_older_than_the_seconds_goes_into_the_minutes(tmp_path, database_url):
    """Seconds older than fleet_second_retention_s (a queue backfilled after a long outage) were
    acknowledged and then lost at every resolution. They go straight into their minute rollups
    (and the hours from those); older than the minutes keep, or more than 3 h ahead, they are
    counted, returned to the site as `outside` and shown in /metrics."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        token = await enroll(store, "ams1")
        now = int(time.time())
        old = now // 60 * 60 - 2 * 3600      # a minute two hours back: past the default hour of seconds

        def at(seq, t, pps):
            return {"seq": seq, "time": float(t), "traffic_columns": columns_of([["alpha", t + 0.5, pps, 1.0, 8.0, 8.0],
                                                                                  ["beta", t + 0.5, 1.0, 0.0, 8.0, 0.0]])}

        body = {"site": "ams1", "queue": "q", "batches": [at(1, old, 100.0), at(2, old + 1, 300.0)]}
        status, answer = await post(url, "/api/v1/fleet/site/ingest", token, body)
        assert status == 200 and (answer["folded"], answer["outside"]) == (4, 0), answer
        # Sent again in another request: stored once (the batch dedup is what makes adding right).
        status, answer = await post(url, "/api/v1/fleet/site/ingest", token, body)
        assert answer["duplicates"] == 2 and answer["folded"] == 0
        status, answer = await post(url, "/api/v1/fleet/site/ingest", token, {"site": "ams1", "queue": "q", "batches": [
            at(3, old + 2, 200.0), at(4, now - 40 * 86400, 1.0), at(5, now + 4 * 3600, 1.0)]})
        assert (answer["folded"], answer["outside"]) == (2, 4), answer
        assert await count(store, "SELECT COUNT(*) FROM fleet_traffic_seconds") == 0
        minutes = await store.run(lambda b: fleet_store.series(b, "minute", old, old + 60, site="ams1", tenant="alpha"))
        assert [(r["time"], r["samples"], r["passed_pps"], r["max_passed_pps"]) for r in minutes] == [
            (old, 3, 200.0, 300.0)]
        await store.run(fleet_store.rollup, time.time(), SeriesRetention())
        hour = old // 3600 * 3600
        hours = await store.run(lambda b: fleet_store.series(b, "hour", hour, hour + 3600, site="ams1", tenant="alpha"))
        assert [(r["time"], r["samples"], r["passed_pps"]) for r in hours] == [(hour, 3, 200.0)]
        admin = await add_token(store, "admin")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin}"}) as http, \
                http.get(f"{url}/metrics") as r:
            text = await r.text()
        assert r.status == 200, text
        for line in ("seawall_fleet_central_outside_rows_total 4.0", "seawall_fleet_central_ahead_rows_total 2.0",
                     "seawall_fleet_central_folded_rows_total 6.0"):
            assert line in text.splitlines(), text


async def test_fleet_a_second_sent_twice_counts_once_in_its_minute_on_time_or_backfilled(tmp_path, database_url):
    """A second in two batches (two ticks of the appliance fell in it) is stored once on time: the
    seconds table keeps the first copy. Backfilled past the seconds kept, each copy was added to
    its minute rollup, in one request and across two: the minute counted the second twice. The
    minute (traffic and destination) is the same whichever way the second comes: the first copy."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        tokens = {site: await enroll(store, site) for site in ("ams1", "fra1", "lon1")}
        now = int(time.time())
        # ams1 on time, fra1 and lon1 two hours back (past the default hour of seconds): folded.
        minutes = {"ams1": now // 60 * 60 - 300, "fra1": now // 60 * 60 - 2 * 3600, "lon1": now // 60 * 60 - 2 * 3600}

        def at(seq: int, t: float, pps: float) -> dict:
            return {"seq": seq, "time": t, "traffic_columns": columns_of([["alpha", t, pps, 1.0, 8 * pps, 8.0]]),
                    "destinations": [{"tenant": "alpha", "address": "198.51.100.10", "time": int(t),
                                      "pps": [pps, 0, 0, 0, 0, 0], "dropped_pps": pps / 10}]}

        for site, minute in minutes.items():
            # Second 10 at 100 pps, its copy at 300 (the tick 0.6 s later), then second 11 at 200.
            first, again, after = at(1, minute + 10.2, 100.0), at(2, minute + 10.8, 300.0), at(3, minute + 11.2, 200.0)
            for batches in ([[first], [again, after]] if site == "lon1" else [[first, again, after]]):
                status, answer = await post(url, "/api/v1/fleet/site/ingest", tokens[site],
                                            {"site": site, "queue": "q", "batches": batches})
                assert status == 200, answer
        await store.run(fleet_store.rollup, now + 120, SeriesRetention())
        for site, minute in minutes.items():
            assert await _minute_of(store, site, minute) == (300.0, 200.0, 2), site
            assert await _destination_sums(store, _DESTINATION_MINUTES, site) == {
                ("198.51.100.10", minute): (300.0, 30.0, 200.0, 20.0, 2)}, site


async def test_review2_item4_fleet_traffic_rollups_need_a_tenant(tmp_path, database_url):
    """?resolution=minute|hour without a tenant was every tenant of every site for up to a week of
    minutes (billions of rows built in Python): 400 naming the field."""
    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        noc = await add_token(store, "noc")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {noc}"}) as http:
            for resolution in ("minute", "hour"):
                async with http.get(f"{url}/api/v1/fleet/traffic", params={"resolution": resolution,
                                                                           "seconds": "86400"}) as r:
                    assert r.status == 400 and (await r.json())["error"].startswith("tenant:")
            async with http.get(f"{url}/api/v1/fleet/traffic", params={"resolution": "minute", "tenant": "alpha",
                                                                       "seconds": "86400"}) as r:
                assert r.status == 200


async def test_review2_item5_fleet_tenant_minutes_beyond_the_seconds_come_from_the_rollups(tmp_path, database_url):
    """A tenant's summed minutes (the 24-hour chart, the reports) read the sites' seconds only,
    kept an hour: anything older was empty. Spans longer than SECONDS_SPAN_S read the sites'
    minute rollups, and the seconds after each site's newest rolled-up minute."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    async with service(tmp_path, database=database_url, appliance=None) as (_url, store, _):
        await enroll(store, "ams1")
        await enroll(store, "fra1")
        now = int(time.time())
        old = now // 60 * 60 - 2 * 3600       # past the hour of seconds kept: a backfill
        rolled = now // 60 * 60 - 1200        # within it, rolled up as usual
        recent = now - 5                      # its minute not rolled up yet
        for site, pps in (("ams1", 100.0), ("fra1", 50.0)):
            await _ingest_seconds(store, site, "q", [(1, old), (2, old + 1), (3, rolled), (4, recent)],
                                  passed=lambda t, i, pps=pps: pps)
        await store.run(fleet_store.rollup, time.time(), SeriesRetention())
        await store.run(fleet_store.apply_retention, time.time(), SeriesRetention())
        rows = await store.traffic("alpha", now - 3 * 3600, now + 1, "minute")
        by_minute = {int(r["time"]): r["passed_pps"] for r in rows}
        assert by_minute == {old: 150.0, rolled: 150.0, recent // 60 * 60: 150.0}, rows
        one_site = await store.traffic("alpha", now - 3 * 3600, now + 1, "minute", site="fra1")
        assert {int(r["time"]): r["passed_pps"] for r in one_site} == {old: 50.0, rolled: 50.0,
                                                                        recent // 60 * 60: 50.0}


# -- item 5: per-destination minute rollups (issue 17 items 3 and 5) --------------------------------

def _destination_batches(seqs_and_times: list[tuple[int, int]], addresses=("198.51.100.10", "198.51.100.20"),
                         pps=lambda t, i: float(t % 89 + 10 * i)) -> list[dict]:
    """Batches of one second each with only destination rows: address i at `pps(t, i)` in total
    (spread over the six classes), dropping a tenth of it."""
    return [{"seq": seq, "time": float(t), "destinations": [
        {"tenant": "alpha", "address": address, "time": t, "pps": [pps(t, i) / 2, pps(t, i) / 2, 0, 0, 0, 0],
         "dropped_pps": pps(t, i) / 10} for i, address in enumerate(addresses)]} for seq, t in seqs_and_times]


def _ingest_destinations(store: Store, site: str, batches: list[dict], now: float | None = None,
                         retention=None) -> object:
    return store.run(fleet_store.ingest, site, "q", batches, time.time() if now is None else now,
                     lambda b, e: None, None, retention)


async def _destination_sums(store: Store, table_sql: str, *params) -> dict[tuple, tuple]:
    rows = await store.run(lambda b: b.execute(table_sql, params).fetchall())
    return {(r[0], int(r[1])): tuple(round(float(v), 6) for v in r[2:]) for r in rows}


_SECONDS_BY_MINUTE = ("SELECT address, t / 60 * 60, SUM(pps), SUM(dropped_pps), MAX(pps), MAX(dropped_pps), COUNT(*) "
                      "FROM fleet_destination_seconds WHERE site = ? GROUP BY address, t / 60 * 60")
_DESTINATION_MINUTES = ("SELECT address, t, sum_pps, sum_dropped_pps, max_pps, max_dropped_pps, samples "
                        "FROM fleet_destination_minutes WHERE site = ?")


async def test_item5_fleet_destination_seconds_roll_up_into_minutes_and_a_backfilled_second_re_rolls(
        tmp_path, database_url):
    """Issue 17 items 3 and 5: a site's per-destination seconds were kept an hour and never rolled
    up. The rollup pass makes per-site, per-destination minutes holding the sums of the seconds'
    total and dropped pps, their maxima and the number of seconds; a second backfilled after its
    minute was rolled up marks the minute again, and it still equals its seconds."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    async with service(tmp_path, database=database_url, appliance=None) as (_url, store, _):
        await enroll(store, "ams1")
        await enroll(store, "fra1")
        now = int(time.time())
        start = now // 60 * 60 - 600          # two whole minutes, ten minutes back: within the seconds kept
        seconds = [t for t in range(start, start + 120) if t % 7]
        result = await _ingest_destinations(store, "ams1", _destination_batches(list(enumerate(seconds, 1))))
        assert (result.destination_rows, result.folded, result.outside) == (2 * len(seconds), 0, 0)
        await _ingest_destinations(store, "fra1", _destination_batches([(1, start)], pps=lambda t, i: 1e6))
        retention = SeriesRetention()
        done = await store.run(fleet_store.rollup, now, retention)
        assert done == {"minute": 0, "hour": 0, "destination_minute": 3, "failed": 0}   # ams1's two, fra1's one
        minutes = await _destination_sums(store, _DESTINATION_MINUTES, "ams1")
        assert minutes == await _destination_sums(store, _SECONDS_BY_MINUTE, "ams1")
        assert sorted(minutes) == [(a, m) for a in ("198.51.100.10", "198.51.100.20") for m in (start, start + 60)]
        first = [t for t in seconds if t < start + 60]
        assert minutes[("198.51.100.10", start)] == (
            sum(float(t % 89) for t in first), round(sum(t % 89 / 10 for t in first), 6), max(float(t % 89) for t in first),
            round(max(t % 89 / 10 for t in first), 6), len(first))
        assert (await _destination_sums(store, _DESTINATION_MINUTES, "fra1"))[("198.51.100.10", start)][2] == 1e6
        assert (await store.run(fleet_store.rollup, now, retention))["destination_minute"] == 0   # nothing new
        # A second of the first minute that was missing (t % 7 == 0) arrives late, the busiest of all.
        late = next(t for t in range(start, start + 60) if t % 7 == 0)
        await _ingest_destinations(store, "ams1", _destination_batches([(10_000, late)], pps=lambda t, i: 5000.0))
        assert (await store.run(fleet_store.rollup, now, retention))["destination_minute"] == 1
        minutes = await _destination_sums(store, _DESTINATION_MINUTES, "ams1")
        assert minutes == await _destination_sums(store, _SECONDS_BY_MINUTE, "ams1")
        assert minutes[("198.51.100.10", start)][2:] == (5000.0, 500.0, len(first) + 1)


async def test_item5_fleet_destination_24h_range_reads_the_minute_rollups(tmp_path, database_url):
    """The central server's per-destination API read the seconds only (an hour kept, the API's
    span capped at that): a day's or a week's view of a site's destination was empty past the
    hour. ?range=24h|7d (and ?seconds= past an hour) read the destination minute rollups, with
    each site's seconds after its newest rolled-up minute; 5m|1h read seconds, as a box's own
    DESTINATION_RANGES do. A backfilled second older than the seconds kept goes straight into its
    minute (once, however often it is sent); one older than the minutes keep is stored nowhere."""
    from securewatch import fleet_tenant  # noqa: PLC0415
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    async with service(tmp_path, database=database_url, appliance=None) as (url, store, _):
        await enroll(store, "ams1")
        await enroll(store, "fra1")
        now = int(time.time())
        old = now // 60 * 60 - 2 * 3600       # past the hour of seconds kept: folded at ingest
        rolled = now // 60 * 60 - 1200        # within it, rolled up as usual
        recent = now - 5                      # its minute not rolled up yet
        one = ("198.51.100.10",)
        for site, pps in (("ams1", 100.0), ("fra1", 50.0)):
            batches = _destination_batches([(1, old), (2, old + 1), (3, rolled), (4, recent)], one,
                                           pps=lambda t, i, pps=pps: pps + (t == old) * 100)
            result = await _ingest_destinations(store, site, batches, now)
            assert (result.destination_rows, result.folded, result.outside) == (2, 2, 0)
        again = await _ingest_destinations(store, "ams1", _destination_batches([(1, old)], one), now)
        assert again.duplicates == 1 and again.folded == 0
        gone = await _ingest_destinations(store, "ams1", _destination_batches([(5, now - 40 * 86400)], one), now)
        assert (gone.folded, gone.outside) == (0, 1)
        await store.run(fleet_store.rollup, time.time(), SeriesRetention())
        await store.run(fleet_store.apply_retention, time.time(), SeriesRetention())
        noc = await add_token(store, "noc")
        for query in ({"range": "24h"}, {"range": "7d"}, {"seconds": str(3 * 3600)}):
            status, view = await get(url, "/api/v1/fleet/tenants/alpha/destinations", noc, **query)
            assert status == 200 and view["resolution"] == "minute", view
            assert [(d["time"], d["pps"], d["max_pps"], d["samples"], d["sites"]) for d in view["destinations"]] == [
                (old, 250.0, 350.0, 4, ["ams1", "fra1"]), (rolled, 150.0, 150.0, 2, ["ams1", "fra1"]),
                (recent // 60 * 60, 150.0, 150.0, 2, ["ams1", "fra1"])], query
        status, view = await get(url, "/api/v1/fleet/tenants/alpha/destinations", noc, range="24h", site="fra1")
        assert [(d["time"], d["pps"]) for d in view["destinations"]] == [
            (old, 100.0), (rolled, 50.0), (recent // 60 * 60, 50.0)]
        status, view = await get(url, "/api/v1/fleet/tenants/alpha/destinations", noc, range="1h")
        assert view["resolution"] == "second"
        assert [(d["time"], d["pps"]) for d in view["destinations"]] == [(rolled, 150.0), (recent, 150.0)]
        status, view = await get(url, "/api/v1/fleet/tenants/alpha/destinations", noc, range="week")
        assert status == 400 and view["error"].startswith("range:")
        # The report's servers over a day: the sites' peak seconds of the minutes, 200 + 150 at `old`.
        busiest = await store.run(fleet_tenant.busiest_destinations, "alpha", now - 86400, now + 1, 5)
        assert busiest == [{"address": "198.51.100.10", "peak_pps": 350.0, "peak_dropped_pps": 35.0}]


async def test_item5_fleet_retention_drops_expired_destination_minutes(tmp_path, database_url):
    """fleet_destination_minute_retention_days: destination minutes older go (PostgreSQL: their
    day partitions are dropped whole; SQLite: rows deleted), younger ones stay."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    async with service(tmp_path, database=database_url, appliance=None) as (_url, store, _):
        await enroll(store, "ams1")
        now = int(time.time())
        await _ingest_destinations(store, "ams1", _destination_batches([(1, now - 600)]))
        retention = SeriesRetention(fleet_destination_minute_retention_days=2)
        await store.run(fleet_store.rollup, now, retention)
        minutes = "SELECT COUNT(*) FROM fleet_destination_minutes"
        assert await count(store, minutes) == 2
        await store.run(fleet_store.apply_retention, now + 2 * 3600, retention)
        assert await count(store, "SELECT COUNT(*) FROM fleet_destination_seconds") == 0
        assert await count(store, minutes) == 2          # past the seconds kept, within the minutes kept
        await store.run(fleet_store.apply_retention, now + 86400, retention)
        assert await count(store, minutes) == 2
        await store.run(fleet_store.apply_retention, now + 3 * 86400 + 1, retention)
        assert await count(store, minutes) == 0


def test_item5_fleet_destination_minute_retention_key_default_and_named_errors(tmp_path):
    """The new [securewatch] key is validated like the other series keys, in the config file too."""
    from appliance.config import parse_config  # noqa: PLC0415
    from securewatch.series import SeriesRetention  # noqa: PLC0415
    from securewatch.settings import parse_settings  # noqa: PLC0415
    from tenants import ConfigError  # noqa: PLC0415

    problems: list[str] = []
    s = parse_settings({}, tmp_path, problems)
    assert not problems and s.retention.fleet_destination_minute_retention_days == 30
    s = parse_settings({"fleet_destination_minute_retention_days": 7}, tmp_path, problems)
    assert not problems and s.retention == SeriesRetention(fleet_destination_minute_retention_days=7)
    parse_settings({"fleet_destination_minute_retention_days": 0}, tmp_path, problems)
    parse_settings({"fleet_destination_minute_retention_days": 3651}, tmp_path, problems)
    parse_settings({"fleet_destination_minute_retention_days": "7"}, tmp_path, problems)
    assert problems == [
        "[securewatch] fleet_destination_minute_retention_days: must be between 1 and 3650, got 0",
        "[securewatch] fleet_destination_minute_retention_days: must be between 1 and 3650, got 3651",
        "[securewatch] fleet_destination_minute_retention_days: expected a whole number, got a string '7'"]
    with pytest.raises(ConfigError) as caught:
        parse_config("[securewatch]\nfleet_destination_minute_retention_days = 1.5\n")
    assert any(p.startswith("[securewatch] fleet_destination_minute_retention_days: expected a whole number")
               for p in caught.value.problems), caught.value.problems


async def test_item5_fleet_upgrade_rolls_up_the_destination_seconds_stored_before(tmp_path, database_url):
    """A central database at schema 12 (destination seconds, no destination minutes) upgrades with
    the minutes of the seconds it holds marked, so the next rollup pass makes them."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415
    from securewatch.store import create_schema, open_backend  # noqa: PLC0415

    create_schema(database_url, 12)
    t = int(time.time()) // 60 * 60 - 300
    backend = open_backend(database_url)
    try:
        backend.executemany("INSERT INTO fleet_destination_seconds (site, tenant, address, t, pps, dropped_pps, data) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [("ams1", "alpha", "198.51.100.10", t + s, 10.0 * s, 1.0, "{}") for s in (1, 2)])
        backend.commit()
    finally:
        backend.close()
    async with service(tmp_path, database=database_url, appliance=None) as (_url, store, _):
        await store.run(fleet_store.rollup, time.time(), SeriesRetention())
        assert await _destination_sums(store, _DESTINATION_MINUTES, "ams1") == {
            ("198.51.100.10", t): (30.0, 2.0, 20.0, 1.0, 2)}


# -- retention rolls up the pending keys whose sources it is about to remove -----------------------

@contextlib.asynccontextmanager
async def _store_alone(database_url: str):
    """The store without the service: no rollup or retention pass of its own (on the real clock)
    takes the keys these tests leave pending."""
    store = await Store.open(database_url)
    try:
        yield store
    finally:
        await store.close()


async def _pending(store: Store, level: str) -> list[int]:
    return [r[0] for r in await store.run(lambda b: b.execute(
        "SELECT t FROM fleet_rollup_pending WHERE level = ? ORDER BY t", (level,)).fetchall())]


async def test_fleet_retention_rolls_up_a_pending_minute_before_its_seconds_go_and_its_hour_before_its_minutes(
        database_url):
    """A minute (and a destination minute) still pending when retention removes its seconds: on
    PostgreSQL the seconds' partition was dropped and the rollup then left the minute out (its
    source gone), so it had no row for good. Retention rolls it up first, on both databases, and
    marks its hour, which it rolls up in turn before the hour's minutes go."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    retention = SeriesRetention(fleet_second_retention_s=3600, fleet_minute_retention_days=1)
    async with _store_alone(database_url) as store:
        await enroll(store, "ams1")
        minute = int(time.time()) // 60 * 60 - 600
        hour = minute // 3600 * 3600
        seconds = [t for t in range(minute, minute + 60) if t % 7]
        await _ingest_seconds(store, "ams1", "q", list(enumerate(seconds, 1)), now=minute + 70, retention=retention)
        await _ingest_destinations(store, "ams1", _destination_batches(list(enumerate(seconds, 1001))), minute + 70,
                                   retention)
        destinations = await _destination_sums(store, _SECONDS_BY_MINUTE, "ams1")
        assert len(destinations) == 2 and await _pending(store, "minute") == [minute]   # no rollup pass ran
        # Two hours on, the seconds' hour is past retention (on PostgreSQL, its partitions are dropped).
        removed = await store.run(fleet_store.apply_retention, minute + 7200, retention)
        assert await count(store, "SELECT COUNT(*) FROM fleet_traffic_seconds WHERE t < ?", minute + 60) == 0
        assert await _minute_of(store, "ams1", minute) == _of_seconds(seconds)
        assert await _destination_sums(store, _DESTINATION_MINUTES, "ams1") == destinations
        assert (removed["minute_rolled_up_first"], removed["destination_minute_rolled_up_first"],
                removed["hour_rolled_up_first"]) == (1, 1, 0)
        assert (await _pending(store, "minute"), await _pending(store, "destination_minute"),
                await _pending(store, "hour")) == ([], [], [hour])
        # Two days on, the hour's minutes are past retention (a day): the pending hour is rolled up first.
        removed = await store.run(fleet_store.apply_retention, minute + 2 * 86400 + 3600, retention)
        assert await _minute_of(store, "ams1", minute) is None
        assert await _minute_of(store, "ams1", hour, "fleet_traffic_hours") == _of_seconds(seconds)
        assert removed["hour_rolled_up_first"] == 1 and await _pending(store, "hour") == []


async def test_fleet_retention_drops_a_pending_minute_whose_minute_rollups_are_gone_without_an_error(
        database_url):
    """Seconds kept longer than the minute rollups (a configuration file that asks for it is refused,
    `parse_settings`; the store copes all the same): a minute still pending when its seconds go has
    no minute row to be rolled up into (on PostgreSQL, no partition). Retention leaves it out
    (not pending any more, nothing counted, no error) and drops the seconds as ever."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    retention = SeriesRetention(fleet_second_retention_s=3 * 86400, fleet_minute_retention_days=1)
    async with _store_alone(database_url) as store:
        await enroll(store, "ams1")
        minute = int(time.time()) // 60 * 60 - 600
        seconds = [t for t in range(minute, minute + 60) if t % 7]
        await _ingest_seconds(store, "ams1", "q", list(enumerate(seconds, 1)), now=minute + 70, retention=retention)
        await store.run(fleet_store.apply_retention, minute + 2 * 86400 + 3600, retention)   # the minutes' day goes
        assert await _pending(store, "minute") == [minute]
        removed = await store.run(fleet_store.apply_retention, minute + 4 * 86400, retention)   # then the seconds
        assert await count(store, "SELECT COUNT(*) FROM fleet_traffic_seconds") == 0
        assert removed["minute_rolled_up_first"] == 0 and await _pending(store, "minute") == []
        assert await _minute_of(store, "ams1", minute) is None and await _pending(store, "hour") == []
        assert await store.run(fleet_store.rollup, minute + 4 * 86400, retention) == {
            "minute": 0, "hour": 0, "destination_minute": 0, "failed": 0}


async def test_fleet_a_late_second_folded_into_a_minute_past_retention_whose_minutes_are_stored_reaches_its_hour(
        database_url):
    """A late second of a minute past the minutes' retention (fleet_minute_retention_days) by
    time whose hour's minutes are all still stored: on PostgreSQL a day's partition of minutes is
    dropped only once the whole day is past retention, so ingest folded the second into its minute
    and marked the hour, and the rollup then left the hour out (its minutes "gone" by time): the
    hour missed the second for good. The rollup decides by the minutes' partition, as ingest does.
    SQLite deletes the minutes an hour at a time by time: the second is stored nowhere (`outside`)
    and the hour is as it was. Either way the hour is the sum of the minutes stored for it."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    retention = SeriesRetention(fleet_second_retention_s=3600, fleet_minute_retention_days=1)
    async with _store_alone(database_url) as store:
        await enroll(store, "ams1")
        day = (int(time.time()) // 86400 + 1) * 86400   # tomorrow: a day partition of minutes of its own
        hour = day + 3 * 3600
        minute = hour + 600
        late = minute + 45
        seconds = [t for t in range(minute, minute + 60) if t != late]
        await store.run(fleet_store.apply_retention, minute, retention)   # PostgreSQL: that time's partitions
        await _ingest_seconds(store, "ams1", "q", list(enumerate(seconds, 1)), now=minute + 70, retention=retention)
        assert await store.run(fleet_store.rollup, hour + 3610, retention) == {
            "minute": 1, "hour": 1, "destination_minute": 0, "failed": 0}
        assert await _minute_of(store, "ams1", hour, "fleet_traffic_hours") == _of_seconds(seconds)
        # The next day at noon: the hour is a day and 9 hours old, past the minutes' retention (a
        # day) by time; on PostgreSQL its day's partition (the oldest kept) is still there.
        later = day + 86400 + 12 * 3600
        await store.run(fleet_store.apply_retention, later, retention)
        postgres = store.dialect == "postgresql"
        if postgres:
            assert (await store.run(fleet_store.partition_window, "fleet_traffic_minutes"))[0] == day
        arrived = await _ingest_seconds(store, "ams1", "q", [(100, late)], now=later, retention=retention)
        assert (arrived.folded, arrived.outside) == ((1, 0) if postgres else (0, 1))
        assert await _pending(store, "hour") == ([hour] if postgres else [])
        await store.run(fleet_store.rollup, later, retention)
        every = [*seconds, late] if postgres else seconds
        assert await _minute_of(store, "ams1", minute) == (_of_seconds(every) if postgres else None)
        assert await _minute_of(store, "ams1", hour, "fleet_traffic_hours") == _of_seconds(every)
        assert await _pending(store, "hour") == []


# -- SQLite retention deletes whole minutes (hours) of the rollups' sources --------------------------
# (test_sqlite_*: SQLite only; PostgreSQL drops whole partitions, so no minute keeps part of its seconds.)

def _future_hour() -> int:
    """An hour a month ahead of the clock: the service's own rollup and retention passes (real time)
    leave the rows of these tests alone, which drive `now` themselves."""
    return int(time.time()) // 3600 * 3600 + 30 * 86400


async def _minute_of(store: Store, site: str, t: int, table: str = "fleet_traffic_minutes") -> tuple:
    """alpha's (sum, max of passed pps, samples) in the rollup row of `table` at `t`."""
    row = await store.run(lambda b: b.execute(
        f"SELECT sum_passed_pps, max_passed_pps, samples FROM {table} WHERE site = ? AND tenant = 'alpha' AND t = ?",
        (site, t)).fetchone())
    return None if row is None else (round(float(row[0]), 6), float(row[1]), int(row[2]))


def _of_seconds(seconds: list[int]) -> tuple:
    """What a rollup of alpha's `seconds` holds (`_ingest_seconds`' default pps: t % 97)."""
    return (round(sum(float(t % 97) for t in seconds), 6), max(float(t % 97) for t in seconds), len(seconds))


@contextlib.asynccontextmanager
async def _a_minute_but_one_second(tmp_path, database_url: str, stored_at: int, minute: int | None = None):
    """A SQLite central server with site ams1 and alpha's seconds of one minute (an hour a month ahead,
    or `minute`) stored at `now` = minute + `stored_at`, all but its 46th (`late`), under a 600 s
    seconds' retention: yields (store, retention, minute, late, the seconds stored)."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    assert database_url.startswith("sqlite")   # not collected on PostgreSQL (tests/netns/test_fleet.py)
    retention = SeriesRetention(fleet_second_retention_s=600)
    async with service(tmp_path, database=database_url, appliance=None) as (_url, store, _):
        await enroll(store, "ams1")
        minute = _future_hour() + 1200 if minute is None else minute
        late = minute + 45
        seconds = [t for t in range(minute, minute + 60) if t != late]
        await _ingest_seconds(store, "ams1", "q", list(enumerate(seconds, 1)), now=minute + stored_at,
                              retention=retention)
        yield store, retention, minute, late, seconds


async def test_sqlite_retention_keeps_a_minute_whole_so_a_late_second_re_rolls_it_from_all_its_seconds(
        tmp_path, database_url):
    """SQLite retention deleted seconds row by row: a minute straddling the cutoff kept part of its
    seconds, a late second of it was stored (the minute still had seconds) and the rollup
    recomputed the minute from that part: the deleted seconds' counts vanished from it. Retention
    deletes whole minutes; once a minute's seconds are gone, a late one is added to the minute."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    assert database_url.startswith("sqlite")   # not collected on PostgreSQL (tests/netns/test_fleet.py)
    retention = SeriesRetention(fleet_second_retention_s=600)
    async with service(tmp_path, database=database_url, appliance=None) as (_url, store, _):
        await enroll(store, "ams1")
        minute = _future_hour() + 1200
        late, later = minute + 45, minute + 50
        seconds = [t for t in range(minute, minute + 60) if t not in (late, later)]
        await _ingest_seconds(store, "ams1", "q", list(enumerate(seconds, 1)), now=minute + 70, retention=retention)
        await store.run(fleet_store.rollup, minute + 70, retention)
        assert await _minute_of(store, "ams1", minute) == _of_seconds(seconds)
        # A retention pass whose cutoff (now - 600 s) falls in the middle of the minute, then a late
        # second of it.
        await store.run(fleet_store.apply_retention, minute + 630, retention)
        stored = await _ingest_seconds(store, "ams1", "q", [(100, late)], now=minute + 630, retention=retention)
        assert (stored.traffic_rows, stored.folded) == (1, 0)
        await store.run(fleet_store.rollup, minute + 630, retention)
        assert await _minute_of(store, "ams1", minute) == _of_seconds([*seconds, late])
        # Its seconds gone (all of them), a later one is added to the minute.
        await store.run(fleet_store.apply_retention, minute + 2000, retention)
        assert await count(store, "SELECT COUNT(*) FROM fleet_traffic_seconds WHERE t < ?", minute + 60) == 0
        folded = await _ingest_seconds(store, "ams1", "q", [(101, later)], now=minute + 2000, retention=retention)
        assert folded.folded == 1
        await store.run(fleet_store.rollup, minute + 2000, retention)
        assert await _minute_of(store, "ams1", minute) == _of_seconds([*seconds, late, later])


async def test_sqlite_retention_race_a_pending_minute_gone_before_its_rollup_gets_its_seconds_and_a_late_one(
        tmp_path, database_url):
    """A minute stored and not rolled up yet (pending) that becomes gone before its rollup: a late
    second of it is then folded into its minute row, and the rollup skipped the minute (its seconds
    "gone"): the row held the late second only. A retention pass at an earlier `now` than that
    ingest must not have deleted part of it either. The pending minute is rolled up from its
    seconds before the late one is added."""
    async with _a_minute_but_one_second(tmp_path, database_url, 61) as (
            store, retention, minute, late, seconds):
        await store.run(fleet_store.apply_retention, minute + 630, retention)   # the ingest below is stamped later
        folded = await _ingest_seconds(store, "ams1", "q", [(100, late)], now=minute + 680, retention=retention)
        assert folded.folded == 1
        await store.run(fleet_store.rollup, minute + 680, retention)
        assert await _minute_of(store, "ams1", minute) == _of_seconds([*seconds, late])
        await store.run(fleet_store.apply_retention, minute + 2000, retention)
        await store.run(fleet_store.rollup, minute + 2000, retention)
        assert await _minute_of(store, "ams1", minute) == _of_seconds([*seconds, late])


async def test_sqlite_retention_a_pending_minute_gone_before_its_rollup_is_rolled_up_from_its_seconds(
        tmp_path, database_url):
    """Two minutes stored and still pending once their seconds are past retention (a rollup pass
    behind): the rollup skipped them as gone, and retention then deleted their seconds, so they
    had no minute rows at all. The rollup recomputes such a minute (its seconds are all there),
    and retention rolls a pending one up before it deletes its seconds."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    assert database_url.startswith("sqlite")   # not collected on PostgreSQL (tests/netns/test_fleet.py)
    retention = SeriesRetention(fleet_second_retention_s=600)
    async with service(tmp_path, database=database_url, appliance=None) as (_url, store, _):
        await enroll(store, "ams1")
        first = _future_hour() + 1200
        second = first + 60
        seconds = [t for t in range(first, first + 120) if t % 7]
        await _ingest_seconds(store, "ams1", "q", list(enumerate(seconds, 1)), now=second + 61, retention=retention)
        done = await store.run(fleet_store.rollup, second + 700, retention, 1)   # one key a pass: the first minute
        assert done["minute"] == 1
        await store.run(fleet_store.apply_retention, second + 2000, retention)
        assert await count(store, "SELECT COUNT(*) FROM fleet_traffic_seconds") == 0
        for start in (first, second):
            assert await _minute_of(store, "ams1", start) == _of_seconds([t for t in seconds if start <= t < start + 60])


async def test_sqlite_retention_keeps_an_hour_of_minutes_whole_so_a_late_second_re_rolls_the_hour_from_all(
        tmp_path, database_url):
    """The same one level up: minutes (the hours' source) were deleted row by row, an hour
    straddling the cutoff kept part of its minutes, and a late second folded into one of the
    others made the hour be recomputed from that part. Minutes go a whole hour at a time."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    assert database_url.startswith("sqlite")   # not collected on PostgreSQL (tests/netns/test_fleet.py)
    retention = SeriesRetention(fleet_second_retention_s=7200, fleet_minute_retention_days=1)
    async with service(tmp_path, database=database_url, appliance=None) as (_url, store, _):
        await enroll(store, "ams1")
        hour = _future_hour()
        late = hour + 2700 + 5                                   # the only second of minute 45
        seconds = [t for t in range(hour + 5, hour + 3600, 60) if t != late]   # one a minute
        await _ingest_seconds(store, "ams1", "q", list(enumerate(seconds, 1)), now=hour + 3610, retention=retention)
        for _ in range(2):   # the minutes, then the hour they mark
            await store.run(fleet_store.rollup, hour + 3610, retention)
        assert await _minute_of(store, "ams1", hour, "fleet_traffic_hours") == _of_seconds(seconds)
        # A retention pass whose minutes' cutoff (now - 1 day) falls in the middle of the hour.
        now = hour + 86400 + 1800
        await store.run(fleet_store.apply_retention, now, retention)
        folded = await _ingest_seconds(store, "ams1", "q", [(100, late)], now=now, retention=retention)
        assert folded.folded == 1
        await store.run(fleet_store.rollup, now, retention)
        assert await _minute_of(store, "ams1", hour, "fleet_traffic_hours") == _of_seconds([*seconds, late])
        await store.run(fleet_store.apply_retention, hour + 86400 + 3600 + 200, retention)
        assert await count(store, "SELECT COUNT(*) FROM fleet_traffic_minutes WHERE t < ?", hour + 3600) == 0
        assert await _minute_of(store, "ams1", hour, "fleet_traffic_hours") == _of_seconds([*seconds, late])


async def test_sqlite_retention_keeps_a_destination_minute_whole_so_a_late_second_re_rolls_it_from_all(
        tmp_path, database_url):
    """Destination seconds were deleted row by row too, with the same result for a destination
    minute straddling the cutoff and a late second of it."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    assert database_url.startswith("sqlite")   # not collected on PostgreSQL (tests/netns/test_fleet.py)
    retention = SeriesRetention(fleet_second_retention_s=600)
    one = ("198.51.100.10",)
    async with service(tmp_path, database=database_url, appliance=None) as (_url, store, _):
        await enroll(store, "ams1")
        minute = _future_hour() + 1200
        late = minute + 45
        seconds = [t for t in range(minute, minute + 60) if t != late]
        await _ingest_destinations(store, "ams1", _destination_batches(list(enumerate(seconds, 1)), one),
                                   minute + 70, retention)
        await store.run(fleet_store.rollup, minute + 70, retention)
        await store.run(fleet_store.apply_retention, minute + 630, retention)
        stored = await _ingest_destinations(store, "ams1", _destination_batches([(100, late)], one), minute + 630,
                                            retention)
        assert (stored.destination_rows, stored.folded) == (1, 0)
        await store.run(fleet_store.rollup, minute + 630, retention)
        every = [*seconds, late]
        assert await _destination_sums(store, _DESTINATION_MINUTES, "ams1") == {("198.51.100.10", minute): (
            round(sum(float(t % 89) for t in every), 6), round(sum(t % 89 / 10 for t in every), 6),
            max(float(t % 89) for t in every), round(max(t % 89 / 10 for t in every), 6), 60)}


async def test_sqlite_retention_lags_so_an_ingest_stamped_before_a_pass_still_finds_the_minute_whole(
        tmp_path, database_url):
    """An ingest stamped before a retention pass (its request waited for the database) may reach
    the database after it: the minute it still calls kept must not have lost its seconds to that
    pass, or its late second makes the minute be recomputed from that second alone. SQLite
    deletes SQLITE_RETENTION_LAG_S behind its `now`."""
    async with _a_minute_but_one_second(tmp_path, database_url, 70) as (
            store, retention, minute, late, seconds):
        await store.run(fleet_store.rollup, minute + 70, retention)
        await store.run(fleet_store.apply_retention, minute + 670, retention)   # the minute is gone at 660
        stored = await _ingest_seconds(store, "ams1", "q", [(100, late)], now=minute + 650, retention=retention)
        assert (stored.traffic_rows, stored.folded) == (1, 0)
        await store.run(fleet_store.rollup, minute + 670, retention)
        assert await _minute_of(store, "ams1", minute) == _of_seconds([*seconds, late])


async def test_sqlite_an_ingest_that_waited_longer_than_the_lag_folds_into_a_minute_retention_deleted(
        tmp_path, database_url):
    """An ingest stamped long before a retention pass (its request waited for the database longer
    than SQLITE_RETENTION_LAG_S) reaches the database after the pass deleted a minute's seconds: it
    decides what is gone by the clock when it runs, so its late second is added to the minute
    instead of being stored as a second and the minute recomputed from that one second."""
    # A minute the clock calls gone (its seconds older than retention and the lag), on real time.
    minute = (int(time.time()) - 600 - fleet_store.SQLITE_RETENTION_LAG_S - 300) // 60 * 60
    async with _a_minute_but_one_second(tmp_path, database_url, 70, minute) as (
            store, retention, minute, late, seconds):
        await store.run(fleet_store.rollup, minute + 70, retention)
        await store.run(fleet_store.apply_retention, time.time(), retention)
        assert await count(store, "SELECT COUNT(*) FROM fleet_traffic_seconds WHERE t >= ? AND t < ?",
                           minute, minute + 60) == 0
        # Stamped when the minute still had its seconds (`now` = minute + 100), run after the pass.
        stored = await _ingest_seconds(store, "ams1", "q", [(100, late)], now=minute + 100, retention=retention)
        assert (stored.traffic_rows, stored.folded) == (0, 1)
        await store.run(fleet_store.rollup, time.time(), retention)
        assert await _minute_of(store, "ams1", minute) == _of_seconds([*seconds, late])


async def test_sqlite_retention_a_late_second_of_a_minute_whose_hour_is_kept_goes_into_minute_and_hour(
        tmp_path, database_url):
    """Minutes are kept (and deleted) a whole hour at a time: a late second of a minute older than
    the minutes' retention whose hour's minutes are all still there is added to its minute and its
    hour, not dropped as `outside`."""
    from securewatch.series import SeriesRetention  # noqa: PLC0415

    assert database_url.startswith("sqlite")   # not collected on PostgreSQL (tests/netns/test_fleet.py)
    retention = SeriesRetention(fleet_second_retention_s=7200, fleet_minute_retention_days=1)
    async with service(tmp_path, database=database_url, appliance=None) as (_url, store, _):
        await enroll(store, "ams1")
        hour = _future_hour()
        late = hour + 600 + 5
        seconds = [t for t in range(hour + 5, hour + 3600, 60) if t != late]
        await _ingest_seconds(store, "ams1", "q", list(enumerate(seconds, 1)), now=hour + 3610, retention=retention)
        for _ in range(2):
            await store.run(fleet_store.rollup, hour + 3610, retention)
        now = hour + 86400 + 1800                     # minute 10 is past the minutes' day, the hour is not
        await store.run(fleet_store.apply_retention, now, retention)
        folded = await _ingest_seconds(store, "ams1", "q", [(100, late)], now=now, retention=retention)
        assert (folded.folded, folded.outside) == (1, 0)
        await store.run(fleet_store.rollup, now, retention)
        assert await _minute_of(store, "ams1", hour + 600) == _of_seconds([late])
        assert await _minute_of(store, "ams1", hour, "fleet_traffic_hours") == _of_seconds([*seconds, late])


async def test_sqlite_a_copy_of_a_second_rolled_up_on_time_is_not_added_again_once_its_seconds_are_gone(
        tmp_path, database_url):
    """A second stored and rolled up on time whose copy (another batch of the same second) arrives
    after retention deleted the minute's seconds was added to the minute again; so was one whose
    minute was still pending, rolled up from its seconds just before the fold. The minute holds
    each of its seconds once; a second it lacks is still added."""
    async with _a_minute_but_one_second(tmp_path, database_url, 61) as (store, retention, minute, late, seconds):
        # Pending still, its seconds there but gone by the clock: rolled up first, then the copy.
        again = await _ingest_seconds(store, "ams1", "q", [(100, seconds[3])], passed=lambda t, i: 5000.0,
                                      now=minute + 680, retention=retention)
        assert again.folded == 1
        assert await _minute_of(store, "ams1", minute) == _of_seconds(seconds)
        await store.run(fleet_store.apply_retention, minute + 2000, retention)
        assert await count(store, "SELECT COUNT(*) FROM fleet_traffic_seconds") == 0
        again = await _ingest_seconds(store, "ams1", "q", [(101, seconds[4]), (102, late)],
                                      passed=lambda t, i: 5000.0 if t != late else float(t % 97),
                                      now=minute + 2000, retention=retention)
        assert again.folded == 2
        await store.run(fleet_store.rollup, minute + 2000, retention)
        assert await _minute_of(store, "ams1", minute) == _of_seconds([*seconds, late])
