"""The live console's figures for `seawall bench securewatch` (issue 16): dashboard and per-server
render time and payload at scale, and the storage a tenant's series cost per day.

Seeded into the bench's database before the server starts, with the store's own schema:

- every tenant: 30 days of hour rollups (720 rows each: 7.2 million at 10,000 tenants) and its
  current second (the dashboard's "current traffic" in central mode);
- `charted` tenants: 24 hours of minute rollups and 5 minutes of seconds (the 24 h and 5 min charts);
- `servers` servers of the first tenant: 1 hour of per-second rows and 24 hours of minute rollups.

Then each page and API answer is fetched `repeat` times from the running `seawall securewatch`;
time is the client's, first byte to last, payload the body's bytes. Storage: a separate database
gets one day of per-second rows for a few tenants through `Store.add_traffic` (which writes the
minute and hour rollups), retention drops the seconds past an hour, and the bytes in use (pages
minus free pages) are divided by the tenants.

Live update latency, the engine's tick to the browser (`tick_to_browser`): what `seawall run` has
in one process, without the kernel: the real policy engine (`PolicyEngine.run`, ticking each second
in its worker thread) over the synthetic dataplane of `appliance.bench.policy` (counting as it is read), handing its tenant
traffic to the appliance's own `TrafficMonitor`, which SecureWatch's event stream reads. A client
holds `/api/v1/tenants/{id}/live` open; each second that reaches it is timed from the moment the
tick handed it over (the engine's `on_tenant_traffic`) to the moment the event carrying it arrived.
The stream sends once a second, so the delay spreads over up to a second by design. Figures only.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import sqlite3
import tempfile
import time
from typing import Any

HOUR_DAYS = 30                 # days of hour rollups seeded per tenant
CHARTED = 50                   # tenants with minute and second rows too
SERVERS = 20                   # servers of tenant t00000 with per-second and minute rows
STORAGE_TENANTS = 2            # tenants given one full day of seconds for the storage figure
CLASSES = 6                    # per-class values of a destination row (securewatch.series.CLASSES)
LIVE_WAIT_S = 15.0             # seconds a stored second may take to reach the stream before the bench gives up
TICK_TENANTS = 100             # tenants of the engine behind the tick-to-browser figure
TICK_DESTINATIONS = 10_000     # destinations its synthetic dataplane counts
TICK_SECONDS = 30.0            # seconds the event stream is watched
TICK_WARMUP = 3                # ticks before the stream opens (the first reads only prime the rates)


def _seed_rows(path: str, tenants: int, now: int) -> dict[str, int]:
    """Bulk rows straight into SQLite (the store's schema): far faster than the store's upserts."""
    db = sqlite3.connect(path)
    try:
        hour0 = now // 3600 * 3600
        counts = {"traffic_hours": 0, "traffic_minutes": 0, "traffic_seconds": 0, "destination_seconds": 0,
                  "destination_minutes": 0}
        for i in range(tenants):
            tid = f"t{i:05d}"
            base = 1000.0 + 37 * (i % 101)
            db.executemany("INSERT INTO traffic_hours VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(tid, hour0 - 3600 * h, base, base / 20, base * 8000, base * 400, base / 5, 3600)
                            for h in range(HOUR_DAYS * 24)])
            counts["traffic_hours"] += HOUR_DAYS * 24
            seconds = 300 if i < CHARTED else 1
            db.executemany("INSERT INTO traffic_seconds VALUES (?, ?, ?, ?, ?, ?)",
                           [(tid, now - s, base + s, (i % 7) * 10.0, (base + s) * 8000, (i % 7) * 8e4)
                            for s in range(seconds)])
            counts["traffic_seconds"] += seconds
            if i < CHARTED:
                db.executemany("INSERT INTO traffic_minutes VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               [(tid, now // 60 * 60 - 60 * m, base, base / 20, base * 8000, base * 400, base / 5, 60)
                                for m in range(1440)])
                counts["traffic_minutes"] += 1440
        values = json.dumps([5.0, 40.0, 900.0, 2.0, 0.0, 0.0])
        for s in range(SERVERS):
            address = f"2001:db8::{s + 1:x}"
            db.executemany("INSERT INTO destination_seconds VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [("t00000", address, now - k, values, 0.0, values, values, values) for k in range(3600)])
            db.executemany("INSERT INTO destination_minutes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [("t00000", address, now // 60 * 60 - 60 * m, values, 0.0, values, values, values, 950.0, 60)
                            for m in range(1440)])
            counts["destination_seconds"] += 3600
            counts["destination_minutes"] += 1440
        db.commit()
        return counts
    finally:
        db.close()


def seed(url: str, tenants: int, now: int | None = None) -> dict[str, int]:
    """Seed the series into the bench database at `url` (sqlite:///PATH, schema already created),
    ending at `now` (epoch seconds; default the current second)."""
    return _seed_rows(url.removeprefix("sqlite:///"), tenants, int(time.time()) if now is None else now)


async def measure(base: str, token: str, tenants: int, repeat: int = 5) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415

    busy = "t00001"
    address = "2001:db8::1"
    targets = {
        "dashboard page (/, 50 rows by traffic)": "/",
        "dashboard page, search by address": f"/?q=2001:db8:{tenants - 1:x}::5",
        "tenant table API, sorted by drops": "/api/v1/console/tenants?sort=drops&per_page=50",
        "series 5 min (seconds)": f"/api/v1/tenants/{busy}/series?range=5m",
        "series 24 h (minutes)": f"/api/v1/tenants/{busy}/series?range=24h",
        "series 30 d (hours)": f"/api/v1/tenants/{busy}/series?range=30d",
        "live event (one SSE tick)": f"/api/v1/tenants/{busy}/live?events=1&ids="
                                     + ",".join(f"t{i:05d}" for i in range(50)),
        "per-server page": f"/tenants/t00000/servers/{address}",
        "per-server API, 1 h (seconds)": f"/api/v1/tenants/t00000/servers/{address}?range=1h",
        "per-server API, 24 h (minutes)": f"/api/v1/tenants/t00000/servers/{address}?range=24h",
        "server list of a tenant": "/api/v1/tenants/t00000/servers",
    }
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        for name, path in targets.items():
            times, size, status = [], 0, 0
            for _ in range(repeat):
                started = time.perf_counter()
                async with http.get(base + path) as r:
                    body = await r.read()
                    status = r.status
                times.append(time.perf_counter() - started)
                size = len(body)
            times.sort()
            out[name] = {"status": status, "median_ms": round(1000 * times[len(times) // 2], 1),
                         "max_ms": round(1000 * times[-1], 1), "bytes": size}
    return out


async def live_latency(base: str, token: str, database: str, samples: int = 5) -> dict[str, Any]:
    """Seconds from a tenant second being stored to its arrival in an open event stream (central mode:
    the stream reads the store each second; on an appliance it reads the engine's series the same way)."""
    import aiohttp  # noqa: PLC0415

    path = database.removeprefix("sqlite:///")
    tenant = "t00002"
    delays = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.get(f"{base}/api/v1/tenants/{tenant}/live?after={int(time.time()) - 1}") as stream:
        if stream.status != 200:
            raise RuntimeError(f"live stream of {tenant}: HTTP {stream.status}")
        buffer = b""
        for _ in range(samples):
            t = int(time.time()) + 1
            await asyncio.sleep(max(0.0, t - time.time()))   # the next whole second, the engine's cadence
            db = sqlite3.connect(path, timeout=5)
            try:
                db.execute("INSERT OR REPLACE INTO traffic_seconds VALUES (?, ?, 1, 2, 3, 4)", (tenant, t))
                db.commit()
            finally:
                db.close()
            stored = time.perf_counter()
            while True:
                if time.perf_counter() - stored > LIVE_WAIT_S:
                    raise RuntimeError(f"second {t} never reached the live stream")
                chunk = await asyncio.wait_for(stream.content.readany(), LIVE_WAIT_S)
                if not chunk:
                    raise RuntimeError("live stream ended")
                buffer += chunk
                if f'"time":{t}.0'.encode() in buffer or f'"time":{t},'.encode() in buffer:
                    delays.append(time.perf_counter() - stored)
                    buffer = b""
                    break
    delays.sort()
    return {"samples": len(delays), "median_ms": round(1000 * delays[len(delays) // 2]),
            "max_ms": round(1000 * delays[-1])}


class _EngineHooks:
    """What `seawall run` offers SecureWatch (`context.ApplianceHooks`) for the tenants t00000...: their
    per-second series from the appliance's TrafficMonitor, fed by the engine after each tick."""

    def __init__(self, tenant_set: Any, monitor: Any) -> None:
        self.tenants = tenant_set
        self.monitor = monitor

    def status(self) -> dict[str, Any]:
        return {"tenants": {}}

    def apply_tenants(self, tenant_set: Any) -> None:
        raise RuntimeError("the benchmark's tenants are fixed")

    def current_tenants(self) -> Any:
        return self.tenants

    def traffic_series(self, tenant_id: str, seconds: int) -> list[dict[str, Any]]:
        return self.monitor.series_of(int(tenant_id[1:]), seconds)


async def _tick_to_browser(seconds: float) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415
    from aiohttp import web  # noqa: PLC0415

    from appliance.bench.policy import SyntheticDataplane  # noqa: PLC0415
    from appliance.service import TrafficMonitor  # noqa: PLC0415
    from dataplane.constants import TenantMode  # noqa: PLC0415
    from policy.config import PolicyConfig  # noqa: PLC0415
    from policy.engine import PolicyEngine  # noqa: PLC0415
    from policy.events import EventBus  # noqa: PLC0415
    from securewatch import auth  # noqa: PLC0415
    from securewatch.app import create_app  # noqa: PLC0415
    from securewatch.settings import SecureWatchSettings  # noqa: PLC0415
    from securewatch.store import Store  # noqa: PLC0415
    from tenants import TenantSet  # noqa: PLC0415
    from tenants.policy import TenantPolicy  # noqa: PLC0415

    monitor = TrafficMonitor()
    handed: dict[float, float] = {}      # a tick's wall time -> when its tenant traffic was handed over

    def after_tick(traffic: Any) -> None:
        monitor.record(traffic)
        handed[traffic.wall] = time.time()

    # Counters that grow by one tick's worth as each tick reads them, as the kernel's would meanwhile.
    class Counting(SyntheticDataplane):
        def read_destination_counters(self, *args: Any, **kwargs: Any) -> Any:
            self.advance(1.0)
            return super().read_destination_counters(*args, **kwargs)

    dp = Counting(TICK_DESTINATIONS, TICK_TENANTS, churn=0.002, samples_per_tick=200, seed=1)
    spec = {t: (f"t{t:05d}", TenantMode.MITIGATE, TenantPolicy()) for t in range(TICK_TENANTS)}
    tenant_set = TenantSet.from_dicts([{"id": f"t{t:05d}", "prefixes": [f"2001:db8:{t:x}::/48"]}
                                       for t in range(TICK_TENANTS)])
    bus = EventBus()
    delays: list[float] = []
    with tempfile.TemporaryDirectory(prefix="seawall-bench-tick-") as tmp:
        engine = PolicyEngine(dp, spec, bus, pathlib.Path(tmp) / "engine", tick=1.0, on_tenant_traffic=after_tick,
                              config=PolicyConfig(warmup_s=1.0))
        database = f"sqlite:///{tmp}/sw.db"
        store = await Store.open(database)
        await store.save_tenant_set(tenant_set, "bench", "seed")
        token = auth.new_token()
        await store.add_token(auth.token_hash(token), "bench", "admin", None, "read")
        settings = SecureWatchSettings(listen="127.0.0.1:0", database=database, enabled=True)
        runner = web.AppRunner(create_app(settings, store=store, bus=bus, appliance=_EngineHooks(tenant_set, monitor)),
                               access_log=None)
        ticking = asyncio.create_task(engine.run(), name="bench-engine")
        try:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            while len(handed) < TICK_WARMUP:
                await asyncio.sleep(0.1)   # poll interval while the engine primes its rates
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
                    http.get(f"http://{host}:{port}/api/v1/tenants/t00001/live?after={time.time()}") as stream:
                if stream.status != 200:
                    raise RuntimeError(f"live stream: HTTP {stream.status}")
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    line = await asyncio.wait_for(stream.content.readline(), LIVE_WAIT_S)
                    arrived = time.time()
                    if not line:
                        raise RuntimeError("live stream ended")
                    if line.startswith(b"data: "):
                        for point in json.loads(line[6:])["points"]:
                            if point["time"] in handed:
                                delays.append(arrived - handed[point["time"]])
        finally:
            engine.stop()
            await asyncio.gather(ticking, return_exceptions=True)
            await runner.cleanup()
            await store.close()
    if not delays:
        raise RuntimeError("no tick reached the live stream")
    ms = sorted(1000.0 * d for d in delays)

    def percentile(fraction: float) -> float:   # nearest rank, as appliance.bench.securewatch (which imports this)
        return ms[min(len(ms) - 1, max(0, int(fraction * len(ms) + 0.999999) - 1))]

    return {"samples": len(ms), "p50_ms": round(percentile(0.50)), "p99_ms": round(percentile(0.99)),
            "max_ms": round(max(ms)), "tenants": TICK_TENANTS, "destinations": TICK_DESTINATIONS}


def tick_to_browser(seconds: float = TICK_SECONDS) -> dict[str, Any]:
    """The live update latency from the engine's tick to the event stream's client (see the docstring)."""
    import logging  # noqa: PLC0415

    import structlog  # noqa: PLC0415

    # The synthetic counters make the engine see (and log) attacks; the figures are the point here.
    config = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    try:
        return asyncio.run(_tick_to_browser(seconds))
    finally:
        structlog.configure(**config)


async def _storage() -> dict[str, Any]:
    from securewatch.store import Store  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="seawall-bench-storage-") as tmp:
        path = pathlib.Path(tmp) / "s.db"
        store = await Store.open(f"sqlite:///{path}")
        try:
            day0 = 1_800_000_000 // 86400 * 86400
            for i in range(STORAGE_TENANTS):
                for hour in range(24):    # the sampler's batches, an hour at a time here
                    rows = [{"time": day0 + 3600 * hour + s, "passed_pps": 1000.0 + s, "dropped_pps": 3.0,
                             "passed_bps": 8e6, "dropped_bps": 2.4e4} for s in range(3600)]
                    await store.add_traffic(f"s{i}", rows)
            await store.apply_retention(now=day0 + 86400)
        finally:
            await store.close()
        db = sqlite3.connect(path)
        try:
            page = db.execute("PRAGMA page_size").fetchone()[0]
            used = (db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0])
            per_table = {}
            for table in ("traffic_seconds", "traffic_minutes", "traffic_hours"):
                per_table[table] = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] // STORAGE_TENANTS
        finally:
            db.close()
    return {"bytes_in_use_per_tenant_day": used * page // STORAGE_TENANTS, "rows_per_tenant_day": per_table,
            "note": "includes the hour of seconds kept and the empty schema, shared by the tenants"}


def storage() -> dict[str, Any]:
    return asyncio.run(_storage())


def render(result: dict[str, Any]) -> list[str]:
    seeded = result["seeded"]
    out = [f"Live console ({seeded['traffic_hours']:,} hour rows = {HOUR_DAYS} days for every tenant; "
           f"minutes and seconds for {CHARTED} charted tenants; {SERVERS} servers with 1 h of seconds and "
           f"24 h of minutes), median of {result['repeat']}:"]
    for name, r in result["requests"].items():
        out.append(f"  {name:<42} {r['median_ms']:>8.1f} ms (max {r['max_ms']:.1f})  {r['bytes']:>9,} bytes"
                   + (f"  HTTP {r['status']}" if r["status"] != 200 else ""))
    if "live" in result:
        live = result["live"]
        out.append(f"  live update, stored second to the browser's event stream: median {live['median_ms']:,} ms, "
                   f"max {live['max_ms']:,} ms ({live['samples']} samples; the stream ticks each second)")
    if "tick" in result:
        tick = result["tick"]
        out.append(f"  live update, engine tick to the browser's event stream: p50 {tick['p50_ms']:,} ms, "
                   f"p99 {tick['p99_ms']:,} ms, max {tick['max_ms']:,} ms ({tick['samples']} seconds; engine of "
                   f"{tick['tenants']} tenants, {tick['destinations']:,} destinations; the stream sends each second)")
    s = result["storage"]
    rows = ", ".join(f"{k} {v:,}" for k, v in s["rows_per_tenant_day"].items())
    out.append(f"  storage per tenant per day: {s['bytes_in_use_per_tenant_day']:,} bytes in use after retention "
               f"({rows} rows; {s['note']})")
    return out
