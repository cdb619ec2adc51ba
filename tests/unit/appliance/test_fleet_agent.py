"""The appliance's fleet agent (issue 17): [fleet] config, the durable bounded queue, and the agent
against a real central SecureWatch (aiohttp over TCP, SQLite): telemetry up in order and once,
backfill after the central server was down, the central tenant set applied and reported."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import pathlib
import sqlite3
import time
import zlib
from typing import Any

import aiohttp
import pytest
import structlog.testing
from aiohttp import web

from appliance import fleet_agent
from appliance.config import parse_config
from appliance.fleet_agent import FleetAgent, FleetQueue
from policy.events import Event, EventBus, EventType, Severity
from securewatch import auth, fleet_store
from securewatch.app import create_app
from securewatch.notify.config import parse_notify_config
from securewatch.settings import SecureWatchSettings
from securewatch.store import Store
from tenants import ConfigError, TenantSet

FLEET = """
[fleet]
central = "https://central.example.net:8443"
site = "ams1"
token_file = "/etc/seawall/fleet.token"
ca_file = "/etc/seawall/central-ca.pem"
"""


# -- [fleet] ---------------------------------------------------------------------------------------

def test_fleet_config_takes_exactly_the_four_keys():
    fleet = parse_config(FLEET).fleet
    assert (fleet.central, fleet.site, str(fleet.token_file), str(fleet.ca_file)) == (
        "https://central.example.net:8443", "ams1", "/etc/seawall/fleet.token", "/etc/seawall/central-ca.pem")
    assert parse_config("").fleet is None
    assert parse_config(FLEET.replace('ca_file = "/etc/seawall/central-ca.pem"\n', "")).fleet.ca_file is None


@pytest.mark.parametrize(("edit", "problem"), [
    (("site = \"ams1\"", "site = \"AMS-1\""), "[fleet] site: 'AMS-1' is not a site name"),
    (("site = \"ams1\"", "site = 7"), "[fleet] site: expected a string"),
    (("site = \"ams1\"\n", ""), "[fleet] site: required"),
    (("https://central.example.net:8443", "central.example.net"), "[fleet] central: 'central.example.net' is not"),
    (("/etc/seawall/fleet.token", "fleet.token"), "[fleet] token_file: 'fleet.token' is not an absolute path"),
    (("ca_file", "ca_fil"), "[fleet] ca_fil: unknown key"),
    (("ca_file = \"/etc/seawall/central-ca.pem\"", "ca_file = \"\""), "[fleet] ca_file: '' is not an absolute path"),
])
def test_fleet_config_problems_name_the_key(edit, problem):
    with pytest.raises(ConfigError) as caught:
        parse_config(FLEET.replace(*edit))
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("central", ["http://central.example.net:8443", "http://192.0.2.10:8443",
                                     "http://[2001:db8::1]:8443", "http://localhost.example.net",
                                     "http://128.0.0.1:8443"])
def test_fleet_config_refuses_http_central_off_this_host(central):
    """Issue 17 review, item 3: the token and the tenant set went in clear text to any host."""
    with pytest.raises(ConfigError) as caught:
        parse_config(FLEET.replace("https://central.example.net:8443", central))
    assert any(p.startswith("[fleet] central:") and "http://" in p for p in caught.value.problems), \
        caught.value.problems


@pytest.mark.parametrize("central", ["http://127.0.0.1:8443", "http://127.8.9.10", "http://[::1]:8443",
                                     "http://localhost:8443", "https://central.example.net:8443"])
def test_fleet_config_takes_http_central_on_loopback_only(central):
    assert parse_config(FLEET.replace("https://central.example.net:8443", central)).fleet.central == central


def test_fleet_token_file_unreadable_or_empty_names_the_key(tmp_path):
    fleet = parse_config(FLEET.replace("/etc/seawall/fleet.token", str(tmp_path / "missing"))).fleet
    with pytest.raises(ConfigError, match=r"\[fleet\] token_file: cannot read"):
        fleet.token()
    (tmp_path / "missing").write_text("\n")
    with pytest.raises(ConfigError, match=r"\[fleet\] token_file: .* is empty"):
        fleet.token()
    (tmp_path / "missing").write_text("swt_abc\n")
    assert fleet.token() == "swt_abc"


# -- the queue -------------------------------------------------------------------------------------

def test_fleet_queue_is_durable_ordered_and_drops_oldest_first_counted(tmp_path):
    path = tmp_path / "fleet" / "queue.db"
    queue = FleetQueue(path, max_batches=3)
    seqs = [queue.append({"time": float(i), "traffic": [["alpha", i, 1.0, 0.0, 8.0, 0.0]]}) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    stats = queue.stats()
    assert (stats["batches"], stats["dropped_batches"]) == (3, 2)
    assert [b["seq"] for b in queue.oldest(10, 1 << 20)] == [3, 4, 5]     # the oldest two went first
    queue_id = queue.id
    queue.close()
    reopened = FleetQueue(path, max_batches=3)                             # a restart: nothing lost
    assert reopened.id == queue_id and [b["time"] for b in reopened.oldest(10, 1 << 20)] == [2.0, 3.0, 4.0]
    assert reopened.ack(4) == 2 and [b["seq"] for b in reopened.oldest(10, 1 << 20)] == [5]
    assert reopened.append({"time": 9.0}) == 6                             # numbers are never reused
    assert reopened.stats()["dropped_batches"] == 2
    reopened.close()


def test_fleet_queue_keeps_its_batch_count_and_bytes_exact_through_appends_acks_trims_and_a_reopen(tmp_path):
    """The queue counted its batches and bytes by scanning the whole table after every append and
    every ack (1.1-1.5 s a batch at the bound, 604,800 batches, on a thread that batches every
    second). It keeps a running count and byte total in the file (its meta table), changed in the
    transaction of each append, ack and trim, and counts once when opened: a file from an agent
    before this, or whose counts are wrong, starts right."""
    path = tmp_path / "q.db"

    def in_file() -> tuple[tuple[int, int], tuple[int, int]]:
        """(the batches' count and bytes as the table has them, as the meta table keeps them)."""
        with contextlib.closing(sqlite3.connect(path)) as db:
            counted = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM batches").fetchone()
            kept = dict(db.execute("SELECT key, CAST(value AS INTEGER) FROM meta WHERE key IN ('batches', 'bytes')"))
        return counted, (kept.get("batches"), kept.get("bytes"))

    def exact(queue: FleetQueue) -> int:
        counted, kept = in_file()
        stats = queue.stats()
        assert (stats["batches"], stats["bytes"]) == counted == kept
        return counted[0]

    # A byte bound of about four of these batches (each a few hundred bytes compressed, sizes differing).
    def batch(i: int) -> dict:
        return {"time": float(i), "noise": [i * 7919 % 104729 + k for k in range(20 + 7 * (i % 5))]}

    queue = FleetQueue(path, max_batches=6, max_bytes=4 * len(zlib.compress(json.dumps(batch(2)).encode(), 6)))
    assert exact(queue) == 0
    for i in range(3):
        queue.append(batch(i))
        assert exact(queue) == i + 1
    assert queue.ack(2) == 2 and exact(queue) == 1
    for i in range(3, 20):   # past the bounds: the oldest trimmed
        queue.append(batch(i))
        exact(queue)
    assert queue.stats()["dropped_batches"] > 0
    assert queue.ack(10**6) > 0 and exact(queue) == 0
    queue.append(batch(20))
    queue.append(batch(21))
    queue.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:   # counts gone wrong in the file
        db.execute("UPDATE meta SET value = '999' WHERE key IN ('batches', 'bytes')")
    reopened = FleetQueue(path, max_batches=6)
    assert exact(reopened) == 2
    reopened.ack(reopened.oldest(1, 1 << 20)[0]["seq"])
    assert exact(reopened) == 1
    reopened.close()


def test_fleet_queue_byte_bound_keeps_the_newest(tmp_path):
    queue = FleetQueue(tmp_path / "q.db", max_bytes=2000)
    for i in range(50):
        queue.append({"time": float(i), "noise": [i * 7919 % 104729 for _ in range(1)] * 100 + [str(i) * 50]})
    stats = queue.stats()
    assert stats["bytes"] <= 2000 and stats["dropped_batches"] == 50 - stats["batches"] > 0
    assert queue.oldest(100, 1 << 20)[-1]["time"] == 49.0
    queue.close()


# -- the agent against a real central server -------------------------------------------------------

class LabAppliance:
    """A test double of the appliance process (FleetHooks): a tenant set, a per-second series, policy
    templates and NOC receivers (checked by the notifiers' own parser, as the appliance does)."""

    def __init__(self, notify: dict[str, Any] | None = None) -> None:
        self.tenants = TenantSet.from_dicts([{"id": "alpha", "prefixes": ["198.51.100.0/25"]}])
        self.rows: list[dict[str, Any]] = []
        self.applied: list[TenantSet] = []
        self.templates: tuple[dict[str, Any], dict[str, str]] = ({}, {})
        self.notify = copy.deepcopy(notify or {})

    def apply_policy_templates(self, templates: dict[str, Any], links: dict[str, str]) -> None:
        self.templates = (templates, links)

    def notify_config(self) -> dict[str, Any]:
        return copy.deepcopy(self.notify)

    async def reconfigure_notifiers(self, config: dict[str, Any], *, check_files: bool = True) -> None:
        parse_notify_config(config, check_files=check_files)   # ConfigError naming the key: the running receivers kept
        self.notify = copy.deepcopy(config)

    def tick(self, t: float) -> None:
        self.rows.append({"time": t, "passed_pps": 1000.0, "dropped_pps": 50.0, "passed_bps": 8e6,
                          "dropped_bps": 4e5})

    def current_tenants(self) -> TenantSet:
        return self.tenants

    def apply_tenants(self, tenant_set: TenantSet) -> None:
        self.tenants = TenantSet(tenant_set.tenants)
        self.applied.append(tenant_set)

    def traffic_series(self, tenant_id: str, seconds: int) -> list[dict[str, Any]]:
        return list(self.rows[-seconds:]) if tenant_id in self.tenants else []

    def destination_seconds(self, after: float) -> list[dict[str, Any]]:
        return []


@contextlib.asynccontextmanager
async def central(tmp_path: pathlib.Path, port: int = 0):
    """A central SecureWatch (no dataplane) on 127.0.0.1; yields (url, store)."""
    settings = SecureWatchSettings(listen=f"127.0.0.1:{port}", database=f"sqlite:///{tmp_path}/central.db",
                                   enabled=True)
    store = await Store.open(settings.database)
    runner = web.AppRunner(create_app(settings, store=store))
    try:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        host, bound = runner.addresses[0][:2]
        yield f"http://{host}:{bound}", store
    finally:
        await runner.cleanup()
        await store.close()


async def enrolled(store: Store, site: str = "ams1", *, seed: bool = True) -> str:
    """A site's token; with no central tenant set yet (and `seed`), the lab appliance's alpha
    (central stores a site's data of the tenants its set gives the site only)."""
    if seed and not (await store.tenant_state()).tenants:
        await store.save_tenant_set(LabAppliance().tenants, "test", "seed")
    token = auth.new_token()
    await store.run(fleet_store.enroll, site, auth.token_hash(token), "test", time.time())
    return token


def agent_for(url: str, token: str, appliance: LabAppliance, state_dir: pathlib.Path, bus=None, **kw) -> FleetAgent:
    settings = parse_config(f'[fleet]\ncentral = "{url}"\nsite = "ams1"\ntoken_file = "/nonexistent"\n').fleet
    return FleetAgent(settings, token, appliance, bus, state_dir, **kw)


async def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)   # polling interval, bounded by the deadline


async def rows_at_central(store: Store) -> list[tuple]:
    return await store.run(lambda b: b.execute(
        "SELECT site, tenant, t FROM fleet_traffic_seconds ORDER BY t").fetchall())


async def test_fleet_agent_sends_in_order_and_backfills_once_after_central_outage(tmp_path):
    appliance = LabAppliance()
    bus = EventBus()
    async with central(tmp_path) as (url, store):
        token = await enrolled(store)
        port = int(url.rsplit(":", 1)[1])
    agent = agent_for(url, token, appliance, tmp_path / "state", bus=bus)
    await agent.start()
    try:
        t0 = float(int(time.time()))
        # The central server is down: the appliance goes on; every second is queued on disk.
        for i in range(30):
            appliance.tick(t0 + i)
            if i == 10:
                bus.publish(Event(EventType.ATTACK_START, "alpha", "udp flood", Severity.CRITICAL,
                                  incident_id="inc-1", timestamp=t0 + i))
            await agent.collect()
        with pytest.raises(OSError):   # aiohttp's ClientConnectorError is an OSError
            await agent.send_once()
        assert agent.status()["queue"]["batches"] == 30
        async with central(tmp_path, port) as (_, store):
            # The loops send the backlog oldest first; poll until it is all there.
            rows = await wait_for(lambda: _all_rows(store, 30), what="the backlog at central")
            assert [r[2] for r in rows] == [int(t0) + i for i in range(30)]
            assert {r[0] for r in rows} == {"ams1"}
            assert (await store.incident("ams1:inc-1")).tenant == "alpha"
            await wait_for(lambda: _empty(agent), what="the queue drained")
            assert agent.sent_batches == 30
    finally:
        await agent.stop()


async def _all_rows(store: Store, n: int):
    rows = await rows_at_central(store)
    return rows if len(rows) >= n else None


async def _empty(agent: FleetAgent) -> bool:
    return agent.status()["queue"]["batches"] == 0


async def test_fleet_agent_retry_after_a_lost_answer_is_stored_once(tmp_path):
    appliance = LabAppliance()
    async with central(tmp_path) as (url, store):
        token = await enrolled(store)
        agent = agent_for(url, token, appliance, tmp_path / "state")
        try:
            appliance.tick(time.time())
            await agent.collect()
            batches = agent.queue.oldest(10, 1 << 20)
            # Delivered, but the answer never came back: the batch is still queued and sent again.
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
                    http.post(f"{url}/api/v1/fleet/site/ingest",
                              json={"site": "ams1", "queue": agent.queue.id, "batches": batches}) as r:
                assert r.status == 200
            assert await agent.send_once() == 1
            assert len(await rows_at_central(store)) == 1
            assert (await store.run(fleet_store.batch_counts)) == {"ams1": 1}
        finally:
            await agent.stop()


async def test_fleet_agent_counts_and_logs_rows_the_central_server_stored_nowhere(tmp_path):
    """Seconds the central server acknowledges but keeps at no resolution (queued past its minute
    retention, or a site clock hours ahead) were dropped without a word at the site; they are counted
    in the agent's status and /metrics and logged as a warning; folded ones are counted too."""
    from securewatch import metrics  # noqa: PLC0415

    appliance = LabAppliance()
    async with central(tmp_path) as (url, store):
        token = await enrolled(store)
        agent = agent_for(url, token, appliance, tmp_path / "state")
        try:
            now = float(int(time.time()))
            for t in (now - 40 * 86400, now - 2 * 3600, now + 4 * 3600, now):
                appliance.tick(t)
                await agent.collect()
            with structlog.testing.capture_logs() as logs:
                while await agent.send_once():
                    pass
            status = agent.status()
            assert (status["unstored_rows"], status["folded_rows"]) == (2, 1), status
            warned = [e for e in logs if e["event"] == "fleet.rows_stored_nowhere"]
            assert sum(e["rows"] for e in warned) == 2 and all(e["log_level"] == "warning" for e in warned)
            text = metrics.render({"tenants": {}, "fleet": status}).decode()
            assert "seawall_fleet_unstored_rows_total 2.0" in text.splitlines()
            assert "seawall_fleet_folded_rows_total 1.0" in text.splitlines()
        finally:
            await agent.stop()


async def test_fleet_agent_applies_the_central_tenant_set_and_keeps_it_across_restarts(tmp_path):
    appliance = LabAppliance()
    state = tmp_path / "state"
    async with central(tmp_path) as (url, store):
        token = await enrolled(store, seed=False)
        agent = agent_for(url, token, appliance, state)
        try:
            assert not await agent.sync_once()      # version 0: nothing stored centrally, the file's set runs
            assert appliance.applied == []
            await store.save_tenant_set(TenantSet.from_dicts([
                {"id": "alpha", "prefixes": ["198.51.100.0/25"]},
                {"id": "gamma", "prefixes": ["192.0.2.0/24"], "sites": ["ams1"]},
                {"id": "delta", "prefixes": ["203.0.113.0/24"], "sites": ["fra1"]}]), "noc", "create")
            version = (await store.tenant_state()).version
            assert await agent.sync_once()
            assert appliance.tenants.ids == ("alpha", "gamma") and agent.version == version
            await agent.sync_once()                 # reports what it runs
            site = (await store.run(fleet_store.sites))[0]
            assert site.running_version == version and not site.health(time.time(), version)["lagging"]
            # Changed locally behind the fleet's back: central wins at the next sync.
            appliance.apply_tenants(TenantSet.from_dicts([{"id": "local", "prefixes": ["192.0.2.0/25"]}]))
            assert await agent.sync_once() and appliance.tenants.ids == ("alpha", "gamma")
        finally:
            await agent.stop()
    # Restarted without the central server: the last central set is there to filter with.
    saved = fleet_agent.saved_config(state)
    assert saved is not None and saved[0] == version and saved[1].ids == ("alpha", "gamma")


async def test_fleet_agent_refused_token_keeps_the_data_queued(tmp_path):
    appliance = LabAppliance()
    async with central(tmp_path) as (url, store):
        token = await enrolled(store)
        await store.run(fleet_store.revoke, "ams1", "test", time.time())
        agent = agent_for(url, token, appliance, tmp_path / "state")
        try:
            appliance.tick(time.time())
            await agent.collect()
            with pytest.raises(fleet_agent.CentralRefused) as caught:
                await agent.send_once()
            assert caught.value.status == 401
            assert agent.status()["queue"]["batches"] == 1 and await rows_at_central(store) == []
        finally:
            await agent.stop()


def test_fleet_queue_bound_and_drops_are_in_metrics(tmp_path):
    from securewatch import metrics  # noqa: PLC0415

    queue = FleetQueue(tmp_path / "q.db", max_batches=2)
    for i in range(5):
        queue.append({"time": float(i)})
    text = metrics.render({"tenants": {}, "fleet": {"queue": queue.stats(), "sent_batches": 4,
                                                    "rejected_batches": 0, "running_version": 7}}).decode()
    queue.close()
    assert "seawall_fleet_queue_dropped_batches_total 3.0" in text
    assert "seawall_fleet_queue_batches 2.0" in text and "seawall_fleet_queue_max_batches 2.0" in text
    assert "seawall_fleet_sent_batches_total 4.0" in text and "seawall_fleet_config_version 7.0" in text


def test_seawall_run_refuses_an_unreadable_token_file_and_a_bad_ca_file_naming_the_keys(tmp_path):
    from appliance.service import validate_for_run  # noqa: PLC0415

    (tmp_path / "ca.pem").write_text("not a certificate\n")
    config = parse_config(FLEET.replace("/etc/seawall/fleet.token", str(tmp_path / "none"))
                          .replace("/etc/seawall/central-ca.pem", str(tmp_path / "ca.pem")))
    with pytest.raises(ConfigError) as caught:
        validate_for_run(config)
    problems = caught.value.problems
    assert any(p.startswith("[fleet] token_file: cannot read") for p in problems), problems
    assert any(p.startswith("[fleet] ca_file:") and "no PEM certificate" in p for p in problems), problems


async def test_fleet_backlog_is_sent_within_the_servers_request_limit(tmp_path):
    """Queued batches compress well: a request is bounded by their JSON as sent (what the
    server's 4 MiB limit counts), or a backfill of big batches is refused (413) forever."""
    async with central(tmp_path) as (url, store):
        # 40 tenants x 375 seconds a batch: 15,000 rows of distinct (tenant, second), all of
        # tenants the central set gives the site, within the hour of per-second retention.
        await store.save_tenant_set(TenantSet.from_dicts(
            [{"id": f"t{i:05d}", "prefixes": [f"2001:db8:{i:x}::/48"]} for i in range(40)]), "test", "seed")
        token = await enrolled(store)
        agent = agent_for(url, token, LabAppliance(), tmp_path / "state")
        try:
            t0 = int(time.time()) - 3100
            for s in range(8):   # ~1 MiB of JSON each, a few KiB compressed
                agent.queue.append({"site": "ams1", "time": float(t0 + s), "destinations": [], "events": [],
                                    "traffic": [[f"t{i:05d}", t0 + s * 375 + k, 1000.0, 0.0, 8e6, 0.0]
                                                for k in range(375) for i in range(40)]})
            sent = 0
            while batches := await agent.send_once():
                sent += batches
            assert sent == 8 and agent.status()["queue"]["batches"] == 0
            assert len(await rows_at_central(store)) == 8 * 15000
        finally:
            await agent.stop()


async def test_fleet_agent_sends_no_nan_and_drops_a_queued_nan_batch(tmp_path):
    """Issue 17 review, item 2: the agent wrote NaN/Infinity into its JSON, which central refuses;
    a value JSON cannot carry becomes null, and a batch queued with one before is dropped alone."""
    async with central(tmp_path) as (url, store):
        token = await enrolled(store)
        agent = agent_for(url, token, LabAppliance(), tmp_path / "state")
        try:
            t = float(int(time.time()) - 5)
            event = {"type": "ATTACK_START", "incident_id": "inc-nan", "tenant": "alpha", "timestamp": t,
                     "details": {"score": float("nan"), "started": t}}
            agent.queue.append({"site": "ams1", "time": t, "destinations": [], "events": [event],
                                "traffic": [["alpha", t, 1.0, 0.0, 8.0, 0.0]]})
            assert await agent.send_once() == 1
            incident = await store.incident("ams1:inc-nan")
            assert incident is not None and incident.details["score"] is None
            # A batch queued by an agent before the fix: NaN in its stored JSON.
            raw = zlib.compress(json.dumps({"site": "ams1", "time": t + 1, "destinations": [], "events": [],
                                            "traffic": [["alpha", t + 1, float("inf"), 0.0, 8.0, 0.0]]}).encode())
            # Written through a connection of the test's own to the queue file (WAL: the agent sees it).
            with contextlib.closing(sqlite3.connect(tmp_path / "state" / "fleet" / "queue.db")) as db, db:
                db.execute("INSERT INTO batches (created, size, body) VALUES (?, ?, ?)", (time.time(), len(raw), raw))
            agent.queue.append({"site": "ams1", "time": t + 2, "destinations": [], "events": [],
                                "traffic": [["alpha", t + 2, 1.0, 0.0, 8.0, 0.0]]})
            with pytest.raises(fleet_agent.CentralRefused):
                await agent.send_once()
            assert await agent.send_once(1) == 0 and agent.rejected_batches == 1   # the NaN one dropped alone
            assert await agent.send_once() == 1
            assert [r[2] for r in await rows_at_central(store)] == [int(t), int(t) + 2]
        finally:
            await agent.stop()


# -- issue 17 item 2: templates and NOC receivers from the central server -------------------------

LOCAL_NOTIFY = {"syslog": [{"name": "pop-syslog", "host": "192.0.2.10", "transport": "udp"}]}
# Its CA file is the sites' (on no host here): neither the central server nor the site refuses the table
# for it; a site without the file reports it at the receiver's deliveries.
CENTRAL_NOTIFY = {"webhook": [{"name": "noc-hook", "url": "https://hooks.example.net/seawall", "kind": "generic",
                               "secret": "hmac-SECRET", "ca_file": "/etc/seawall/sites-noc-ca.pem"}]}


async def sites_view(url: str, token: str) -> dict[str, dict[str, Any]]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.get(f"{url}/api/v1/fleet/sites") as r:
        assert r.status == 200
        return {s["site"]: s for s in (await r.json())["sites"]}


async def noc_token(store: Store) -> str:
    token = auth.new_token()
    await store.add_token(auth.token_hash(token), "test-noc", "noc", None, "write")
    return token


async def test_fleet_agent_runs_central_templates_and_receivers_next_to_its_own_and_keeps_them(tmp_path):
    """The agent's loop takes the central templates (with its own tenants' links) and receivers,
    runs the receivers next to the site's own, reports the versions (the fleet view: none lags),
    takes a template change, and after a restart runs them without the central server."""
    appliance = LabAppliance(LOCAL_NOTIFY)
    state = tmp_path / "state"
    async with central(tmp_path) as (url, store):
        await store.save_tenant_set(TenantSet.from_dicts([
            {"id": "alpha", "prefixes": ["198.51.100.0/25"]},
            {"id": "gamma", "prefixes": ["192.0.2.0/24"], "sites": ["fra1"]}]), "noc", "create")
        await store.save_policy_template("strict", {"udp_rate_pps": 5000}, "noc")
        await store.set_template_link("alpha", "strict")
        await store.set_template_link("gamma", "strict")
        await store.save_notify_config(CENTRAL_NOTIFY, "noc", "notify.update")
        token, noc = await enrolled(store), await noc_token(store)
        port = int(url.rsplit(":", 1)[1])
        agent = agent_for(url, token, appliance, state, sync_every_s=0.05)
        await agent.start()
        try:
            await wait_for(lambda: _async(appliance.templates[0] != {}), what="the central templates applied")
            assert appliance.templates == ({"strict": {"udp_rate_pps": 5000}}, {"alpha": "strict"})   # gamma: fra1's
            await wait_for(lambda: _async("webhook" in appliance.notify), what="the central receivers running")
            assert appliance.notify == {**LOCAL_NOTIFY, **CENTRAL_NOTIFY}   # the site's own kept
            saved = state / "fleet" / fleet_agent.DOCUMENT_FILES["notify"]
            assert saved.stat().st_mode & 0o777 == 0o600   # it holds the receivers' secrets
            site = await wait_for(lambda: _not_lagging(url, noc), what="the versions reported")
            assert {k: v["running"] for k, v in site["versions"].items()} == {
                "tenants": (await store.tenant_state()).version, "templates": 1, "notify": 1}
            await store.save_policy_template("strict", {"udp_rate_pps": 6000}, "noc")   # changed centrally
            await wait_for(lambda: _async(appliance.templates[0] == {"strict": {"udp_rate_pps": 6000}}),
                           what="the template change at the site")
            site = await wait_for(lambda: _not_lagging(url, noc), what="the new templates version reported")
            assert site["versions"]["templates"]["running"] == 2 == agent.status()["running_versions"]["templates"]
            # The site's receivers changed here (its local NOC receivers page runs its table alone):
            # the edit is kept as the site's own and the central receivers come back next to it.
            edited = {"syslog": [{"name": "pop-syslog", "host": "192.0.2.11", "transport": "udp"}]}
            await appliance.reconfigure_notifiers(edited)
            await wait_for(lambda: _async(appliance.notify == {**edited, **CENTRAL_NOTIFY}),
                           what="the central receivers back next to the edited local one")
        finally:
            await agent.stop()
    # Restarted while the central server is down: the last central documents run from the start.
    restarted = LabAppliance(LOCAL_NOTIFY)
    agent = agent_for(f"http://127.0.0.1:{port}", token, restarted, state, sync_every_s=3600)
    await agent.start()
    try:
        assert restarted.templates == ({"strict": {"udp_rate_pps": 6000}}, {"alpha": "strict"})
        assert restarted.notify == {**LOCAL_NOTIFY, **CENTRAL_NOTIFY}
    finally:
        await agent.stop()


async def test_fleet_agent_refuses_a_central_document_whole_and_reports_why(tmp_path):
    """A central receiver named as one of the site's own: the document is refused whole (the site's
    receivers run as they were), the reason reaches the fleet view, and the site shows as lagging."""
    appliance = LabAppliance(LOCAL_NOTIFY)
    async with central(tmp_path) as (url, store):
        clash = {"syslog": [{"name": "pop-syslog", "host": "192.0.2.99", "transport": "udp"}], **CENTRAL_NOTIFY}
        await store.save_notify_config(clash, "noc", "notify.update")
        token, noc = await enrolled(store), await noc_token(store)
        agent = agent_for(url, token, appliance, tmp_path / "state")
        try:
            await agent.sync_once()   # takes the tenant set, refuses the receivers
            assert appliance.notify == LOCAL_NOTIFY and agent.versions["notify"] is None
            assert "already used" in agent.status()["config_errors"]["notify"]
            await agent.sync_once()   # reports the refusal
            notify = (await sites_view(url, noc))["ams1"]["versions"]["notify"]
            assert notify["lagging"] and notify["central"] == 1 and "already used" in notify["error"]
            # Fixed centrally: taken at the next sync, the refusal forgotten.
            await store.save_notify_config(CENTRAL_NOTIFY, "noc", "notify.update")
            assert await agent.sync_once() and appliance.notify == {**LOCAL_NOTIFY, **CENTRAL_NOTIFY}
            await agent.sync_once()
            notify = (await sites_view(url, noc))["ams1"]["versions"]["notify"]
            assert notify == {"running": 2, "central": 2, "lagging": False, "error": None}
        finally:
            await agent.stop()


async def _async(value: Any) -> Any:
    return value


async def _not_lagging(url: str, noc: str) -> dict[str, Any] | None:
    site = (await sites_view(url, noc))["ams1"]
    return site if not site["lagging"] else None


async def test_seawall_fleet_list_shows_each_documents_version_and_the_lagging_site(tmp_path):
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from securewatch import fleet_config  # noqa: PLC0415

    database = f"sqlite:///{tmp_path}/central.db"
    config = tmp_path / "central.toml"
    config.write_text(f'[appliance]\nstate_dir = "{tmp_path}/state"\n[securewatch]\ndatabase = "{database}"\n')
    store = await Store.open(database)
    try:
        await enrolled(store, "ams1")
        await enrolled(store, "fra1")
        await store.save_policy_template("strict", {"udp_rate_pps": 5000}, "noc")
        await store.save_notify_config(CENTRAL_NOTIFY, "noc", "notify.update")
        templates = (await store.run(fleet_config.central_versions))["templates"]
        version = (await store.tenant_state()).version
        for site, notify in (("ams1", 1), ("fra1", None)):
            await store.run(fleet_store.record_contact, site, time.time(), time.time(), version, 0, {})
            await store.run(fleet_config.record_site_versions, site, {"templates": templates, "notify": notify}, {})
    finally:
        await store.close()
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "fleet", "list", "--json", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {r["site"]: r for r in json.loads(out.stdout)}
    assert (rows["ams1"]["templates_version"], rows["ams1"]["notify_version"], rows["ams1"]["lagging"]) == (
        templates, 1, False)
    assert rows["fra1"]["notify_version"] is None and rows["fra1"]["lagging"]
    assert rows["fra1"]["versions"]["notify"] == {"running": None, "central": 1, "lagging": True, "error": None}
