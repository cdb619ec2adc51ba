"""`seawall bench fleet` (issue 17): what one central SecureWatch takes from a fleet. Figures only.

The real `seawall securewatch` (central mode, its own process) serves a fresh database (a temporary
SQLite file; `--postgres`: a throwaway PostgreSQL cluster the bench starts with Debian's defaults,
as root; or `--database postgresql://...`, which should be empty). Then, from this process:

1. **Ingest.** `sites` simulated sites, each holding `seconds` seconds of backlog for `tenants`
   tenants (one traffic row per tenant per second), send as the agent does (`/api/v1/fleet/site/ingest`,
   up to `fleet_agent.SEND_MAX_BYTES` per request, in order), all at once. Rate = site-seconds stored
   per second of wall time; at or above `sites` the central server keeps up with one report per
   second per site. The central process's CPU (user + system, in cores) and memory (peak and final
   RSS) over the window are read from /proc.
2. **Tick to central.** A real `FleetAgent` (site `live`, `tenants` tenants) batches each second's rows
   as an appliance does; a tick lands at a random phase of the agent's batching second, and the
   delay is from its time to its first appearance in the central API (`/api/v1/fleet/traffic`),
   polled every `POLL_S`; median and max over `live_s` ticks.
3. **Backfill.** A `FleetQueue` holding `outage_s` seconds (an hour by default) of
   `backfill_tenants` tenants, as the agent queued them during an outage, sent by the agent's own
   `send_once` until empty: site-seconds per second and rows per second.

The load generator shares the machine with the server: its own CPU is reported too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import random
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

from appliance.bench.securewatch import cpu_model, securewatch_process

POLL_S = 0.05                 # seconds between polls of the central API (tick-to-central delay)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")   # /proc/PID/stat's time unit, per second


def _cpu_s(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS     # utime + stime


def _database_cpu_s() -> float:
    """CPU seconds of the PostgreSQL server processes (user postgres) still running: the ingest
    connections live through the ingest phase, so the difference over it is the database's work."""
    import pwd  # noqa: PLC0415

    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        return 0.0
    total = 0.0
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                total += _cpu_s(int(entry.name))
        except (FileNotFoundError, ProcessLookupError):
            continue   # ended meanwhile
    return total


def _memory_mib(pid: int) -> dict[str, float]:
    out = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[{"VmRSS": "rss_mib", "VmHWM": "peak_rss_mib"}[key]] = round(int(value.split()[0]) / 1024, 1)
    return out


PG_BIN = "/usr/lib/postgresql/15/bin"   # Debian's PostgreSQL 15 server programs


@contextlib.contextmanager
def throwaway_postgresql() -> Iterator[str]:
    """A PostgreSQL cluster of its own in a new directory owned by user postgres (initdb and pg_ctl
    as that user, Debian's defaults, a Unix socket only), its URL; stopped and removed on leaving.
    Needs root."""
    if os.geteuid() != 0:
        raise RuntimeError("--postgres starts a PostgreSQL cluster as user postgres: run as root")
    binaries = [os.path.join(PG_BIN, n) if os.path.exists(os.path.join(PG_BIN, n)) else shutil.which(n)
                for n in ("initdb", "pg_ctl")]
    if not all(binaries):
        raise RuntimeError("--postgres needs PostgreSQL's initdb and pg_ctl (apt-get install postgresql)")
    initdb, pg_ctl = binaries
    home = pathlib.Path(tempfile.mkdtemp(prefix="seawall-bench-pg-"))   # 0700: its owner must be postgres
    shutil.chown(home, "postgres", "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    data = home / "data"
    try:
        for command in ([initdb, "-D", str(data), "-A", "trust", "-U", "seawall"],
                        [pg_ctl, "-D", str(data), "-l", str(home / "log"), "-w", "-o",
                         f"-k {home} -c listen_addresses=''", "start"]):
            done = subprocess.run([*as_postgres, *command], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{os.path.basename(command[0])} failed: {(done.stderr or done.stdout).strip()[:300]}")
        yield f"postgresql://seawall@/postgres?host={home}"
    finally:
        subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def _rows(tenants: int, t: int) -> list[list[Any]]:
    return [[f"t{i:05d}", t, 1000.0 + i % 97, float(i % 7), 8e6 + i, 5600.0 * (i % 7)] for i in range(tenants)]


def _columns(tenants: int, t: int) -> dict[str, list[Any]]:
    """The same rows as the agent sends them: a batch's "traffic_columns"."""
    from appliance.fleet_agent import TRAFFIC_FIELDS  # noqa: PLC0415

    return dict(zip(TRAFFIC_FIELDS, (list(c) for c in zip(*_rows(tenants, t), strict=True)), strict=True))


class _Bodies:
    """The ingest requests' bodies, as JSON text made from the parts that do not change: a batch
    differs from the next in its seq and time only. The load generator shares the two vCPUs with
    the server; encoding 10,000-row batches with json.dumps in the timed window took it 0.7 of a
    core (measured), which the server then did not get."""

    def __init__(self, tenants: int, t: int) -> None:
        from appliance.fleet_agent import TRAFFIC_FIELDS  # noqa: PLC0415

        columns = _columns(tenants, t)
        self.tenants = tenants
        self.fixed = ",".join(f'"{field}":{json.dumps(columns[field], separators=(",", ":"))}'
                              for field in TRAFFIC_FIELDS if field != "time")

    def batch(self, seq: int, t: int) -> str:
        times = ",".join([f"{t}.43"] * self.tenants)   # the tick's read, a fraction of a second in
        return f'{{"seq":{seq},"time":{t}.0,"traffic_columns":{{"time":[{times}],{self.fixed}}}}}'

    def body(self, site: str, batches: list[str]) -> bytes:
        return f'{{"site":"{site}","queue":"bench","batches":[{",".join(batches)}]}}'.encode()


async def _ingest(base: str, tokens: dict[str, str], tenants: int, seconds: int) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415

    from appliance import fleet_agent  # noqa: PLC0415

    t0 = int(time.time()) - seconds
    bodies = _Bodies(tenants, t0)
    per_request = max(1, fleet_agent.SEND_MAX_BYTES // max(1, len(bodies.batch(1, t0))))
    errors: list[str] = []

    async def site(name: str, token: str, http: aiohttp.ClientSession) -> None:
        seq = 0
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        while seq < seconds:
            batches = []
            for _ in range(min(per_request, seconds - seq)):
                seq += 1
                batches.append(bodies.batch(seq, t0 + seq))
            async with http.post(f"{base}/api/v1/fleet/site/ingest", headers=headers,
                                 data=bodies.body(name, batches)) as r:
                if r.status != 200:
                    errors.append(f"{name}: HTTP {r.status} {(await r.text())[:200]}")
                    return

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        started = time.perf_counter()
        await asyncio.gather(*(site(name, token, http) for name, token in tokens.items()))
        elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError("; ".join(errors[:3]))
    site_seconds = len(tokens) * seconds
    return {"elapsed_s": round(elapsed, 2), "site_seconds": site_seconds, "batches_per_request": per_request,
            "site_seconds_per_s": round(site_seconds / elapsed, 1),
            "rows_per_s": round(site_seconds * tenants / elapsed)}


class _Hooks:
    """A simulated appliance for the agent: `tenants` tenants, one row each per second."""

    def __init__(self, tenants: int) -> None:
        self.tenants = [types.SimpleNamespace(id=f"t{i:05d}") for i in range(tenants)]
        self.rows: list[dict[str, float]] = []

    def tick(self, t: float) -> None:
        self.rows.append({"time": t, "passed_pps": 1000.0, "dropped_pps": 1.0, "passed_bps": 8e6, "dropped_bps": 8e3})
        del self.rows[:-5]

    def current_tenants(self):
        return self.tenants

    def apply_tenants(self, tenant_set) -> None:   # the central set is the bench's own tenants
        pass

    def traffic_series(self, tenant_id: str, seconds: int) -> list[dict[str, float]]:
        return self.rows[-seconds:]

    def destination_seconds(self, after: float) -> list[dict[str, Any]]:
        return []


def _settings(base: str, site: str, token_file: pathlib.Path):
    from appliance.config import parse_config  # noqa: PLC0415

    return parse_config(f'[fleet]\ncentral = "{base}"\nsite = "{site}"\ntoken_file = "{token_file}"\n').fleet


async def _live(base: str, admin: str, token: str, tenants: int, live_s: int, state: pathlib.Path) -> dict:
    import aiohttp  # noqa: PLC0415

    from appliance.fleet_agent import FleetAgent  # noqa: PLC0415

    hooks = _Hooks(tenants)
    agent = FleetAgent(_settings(base, "live", state / "t"), token, hooks, None, state / "live", sync_every_s=3600)
    delays: list[float] = []
    rng = random.Random(1)
    await agent.start()
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin}"}) as http:
            for _ in range(live_s):
                # An engine tick falls anywhere in the agent's batching second: a random phase.
                await asyncio.sleep(rng.random())
                tick = time.time()
                hooks.tick(tick)
                while True:
                    async with http.get(f"{base}/api/v1/fleet/traffic",
                                        params={"site": "live", "tenant": "t00000", "seconds": "10"}) as r:
                        rows = (await r.json())["rows"]
                    if any(row["time"] == int(tick) for row in rows):
                        delays.append(time.time() - tick)
                        break
                    if time.time() - tick > 30:
                        raise RuntimeError("a second did not reach the central server within 30 s")
                    await asyncio.sleep(POLL_S)   # poll interval of the central API
    finally:
        await agent.stop()
    return {"samples": len(delays), "median_ms": round(statistics.median(delays) * 1000),
            "max_ms": round(max(delays) * 1000), "batch_every_s": agent.batch_every_s}


async def _backfill(base: str, token: str, tenants: int, outage_s: int, state: pathlib.Path,
                    progress: Callable[[str], None]) -> dict:
    from appliance.fleet_agent import FleetAgent  # noqa: PLC0415

    agent = FleetAgent(_settings(base, "backfill", state / "t"), token, _Hooks(0), None, state / "backfill")
    t0 = int(time.time()) - outage_s
    progress(f"queueing {outage_s:,} s of {tenants:,} tenants on disk (the outage)")
    for s in range(outage_s):
        agent.queue.append({"site": "backfill", "time": float(t0 + s), "traffic_columns": _columns(tenants, t0 + s),
                            "destinations": [], "events": []})
    queued = agent.queue.stats()
    progress(f"backfilling {queued['batches']:,} batches ({queued['bytes'] / 2**20:.1f} MiB compressed)")
    started = time.perf_counter()
    try:
        while await agent.send_once():
            pass
        elapsed = time.perf_counter() - started
    finally:
        await agent.stop()
    return {"outage_s": outage_s, "tenants": tenants, "queued_mib": round(queued["bytes"] / 2**20, 1),
            "elapsed_s": round(elapsed, 2), "site_seconds_per_s": round(outage_s / elapsed, 1),
            "rows_per_s": round(outage_s * tenants / elapsed)}


def run(sites: int = 20, tenants: int = 10_000, seconds: int = 30, live_s: int = 10, outage_s: int = 3600,
        backfill_tenants: int = 1_000, database: str | None = None, postgres: bool = False,
        progress: Callable[[str], None] = lambda _m: None) -> dict:
    if min(sites, tenants, seconds, live_s, outage_s, backfill_tenants) < 1:
        raise ValueError("sites, tenants, seconds, live-s, outage-s and backfill-tenants must be >= 1")

    from securewatch import auth, fleet_store  # noqa: PLC0415
    from securewatch.store import Store  # noqa: PLC0415
    from tenants import TenantSet  # noqa: PLC0415

    if postgres and database:
        raise ValueError("--postgres starts its own database: leave out --database")
    with tempfile.TemporaryDirectory(prefix="seawall-bench-fleet-") as tmp, contextlib.ExitStack() as stack:
        directory = pathlib.Path(tmp)
        if postgres:
            progress("starting a throwaway PostgreSQL cluster")
            database = stack.enter_context(throwaway_postgresql())
        database = database or f"sqlite:///{directory}/central.db"
        names = [f"s{i:02d}" for i in range(sites)] + ["live", "backfill"]
        tokens = {name: auth.new_token() for name in names}
        admin = auth.new_token()
        # Central stores a site's rows of the tenants its set gives the site only: the bench's tenants.
        tenant_set = TenantSet.from_dicts([{"id": f"t{i:05d}", "prefixes": [f"2001:db8:{i:x}::/48"]}
                                           for i in range(max(tenants, backfill_tenants))])
        with Store.open_sync(database) as store:
            store.save_tenant_set(tenant_set, "bench", "seed")
            for name, token in tokens.items():
                store.run(fleet_store.enroll, name, auth.token_hash(token), "bench", time.time())
            store.add_token(auth.token_hash(admin), "bench", "admin", None, "write", None)
        with securewatch_process(directory, database, "central") as (server, base):
            progress(f"ingest: {sites} sites x {seconds} s x {tenants:,} tenants into {database.split(':')[0]}")
            cpu0, self0 = _cpu_s(server.pid), resource.getrusage(resource.RUSAGE_SELF)
            db0 = _database_cpu_s() if database.startswith("postgres") else 0.0
            ingest = asyncio.run(_ingest(base, {n: tokens[n] for n in names[:sites]}, tenants, seconds))
            cpu1, self1 = _cpu_s(server.pid), resource.getrusage(resource.RUSAGE_SELF)
            ingest["central_cpu_cores"] = round((cpu1 - cpu0) / ingest["elapsed_s"], 2)
            if database.startswith("postgres"):
                ingest["database_cpu_cores"] = round((_database_cpu_s() - db0) / ingest["elapsed_s"], 2)
            ingest["generator_cpu_cores"] = round((self1.ru_utime + self1.ru_stime - self0.ru_utime
                                                   - self0.ru_stime) / ingest["elapsed_s"], 2)
            ingest.update(_memory_mib(server.pid))
            progress(f"tick to central: {live_s} s of a live site with {tenants:,} tenants")
            live = asyncio.run(_live(base, admin, tokens["live"], tenants, live_s, directory))
            backfill = asyncio.run(_backfill(base, tokens["backfill"], backfill_tenants, outage_s, directory,
                                             progress))
            memory = _memory_mib(server.pid)
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "database": database.split(":")[0], "sites": sites,
            "tenants": tenants, "ingest": ingest, "tick_to_central": live, "backfill": backfill,
            "central_memory_end": memory}


def render(r: dict) -> str:
    i, live, b = r["ingest"], r["tick_to_central"], r["backfill"]
    return "\n".join([
        f"central SecureWatch on {r['database']}, {r['cpus']} CPUs ({r['cpu']})",
        f"ingest: {r['sites']} sites x {r['tenants']:,} tenants: {i['site_seconds_per_s']} site-seconds/s "
        f"({i['rows_per_s']:,} rows/s; {i['site_seconds']:,} site-seconds in {i['elapsed_s']} s, "
        f"{i['batches_per_request']} batches per request)",
        f"  real time needs {r['sites']} site-seconds/s: {'kept up' if i['site_seconds_per_s'] >= r['sites'] else 'fell behind'}",
        f"  central CPU {i['central_cpu_cores']} cores, RSS {i.get('rss_mib')} MiB (peak {i.get('peak_rss_mib')} MiB); "
        + (f"PostgreSQL {i['database_cpu_cores']} cores; " if "database_cpu_cores" in i else "")
        + f"load generator {i['generator_cpu_cores']} cores on the same machine",
        f"tick to central API: median {live['median_ms']} ms, max {live['max_ms']} ms over {live['samples']} s "
        f"(batches every {live['batch_every_s']} s)",
        f"backfill after {b['outage_s']:,} s of outage ({b['tenants']:,} tenants, {b['queued_mib']} MiB queued): "
        f"{b['site_seconds_per_s']} site-seconds/s ({b['rows_per_s']:,} rows/s, {b['elapsed_s']} s)",
    ])
