"""SecureWatch under load: tenant reads and policy writes against a large tenant set.

A temporary SQLite database gets `tenants` tenants and an admin token; the real
`seawall securewatch` command (central mode, its own process) serves it; this
process drives `clients` concurrent HTTP clients through `requests` requests,
mostly `GET /api/v1/tenants/{id}` of random tenants, every `put_every`-th a
`PUT /api/v1/tenants/{id}/policy`. Figures only: latency percentiles per kind
and throughput, never a pass or fail. Then the live console's figures (`console.py`): dashboard
and per-server render time and payload with 30 days of rollups, storage per tenant per day.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from appliance.bench import console

REQUEST_TIMEOUT_S = 60.0          # seconds one request may take before it counts as an error
STARTUP_TIMEOUT_S = 60.0          # seconds the server may take to answer its first request
POLL_S = 0.1                      # seconds between startup probes
CONSOLE_REPEAT = 5                # fetches of each console page or series (the median is shown)


async def serving(base: str, server: subprocess.Popen, log_path: pathlib.Path) -> None:
    """Returns once the `seawall securewatch` process `server` answers on `base`; RuntimeError with the
    tail of its log when it exits first or takes longer than STARTUP_TIMEOUT_S."""
    import aiohttp  # noqa: PLC0415

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{base}/api/v1/openapi.json") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"securewatch did not start: {log_path.read_text()[-2000:]}")
            await asyncio.sleep(POLL_S)  # poll interval of the startup probe


@contextlib.contextmanager
def securewatch_process(directory: pathlib.Path, database: str, name: str = "seawall") -> Iterator[
        tuple[subprocess.Popen, str]]:
    """A `seawall securewatch` process on `database` and a free loopback port, its config and log
    (`NAME.toml`, `NAME.log`) in `directory`: yields (the process, its base URL) once it answers,
    and stops it on leaving."""
    port = _free_port()
    config = directory / f"{name}.toml"
    config.write_text(f'[appliance]\nstate_dir = "{directory}"\nlog_format = "json"\n'
                      f'[securewatch]\nlisten = "127.0.0.1:{port}"\ndatabase = "{database}"\n')
    base = f"http://127.0.0.1:{port}"
    with open(directory / f"{name}.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "appliance.cli", "securewatch", "--config", str(config)],
                                  stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        asyncio.run(serving(base, server, directory / f"{name}.log"))
        yield server, base
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def tenant_tables(count: int) -> list[dict[str, Any]]:
    """`count` tenants, each owning one /48 of the IPv6 documentation prefix (up to 65,536)."""
    if not 1 <= count <= 65_536:
        raise ValueError("tenants: between 1 and 65,536 (one /48 of 2001:db8::/32 each)")
    return [{"id": f"t{i:05d}", "name": f"Tenant {i}", "prefixes": [f"2001:db8:{i:x}::/48"]} for i in range(count)]


async def _seed(url: str, count: int) -> str:
    from securewatch import auth  # noqa: PLC0415
    from securewatch.store import Store  # noqa: PLC0415
    from tenants import TenantSet  # noqa: PLC0415

    store = await Store.open(url)
    try:
        await store.save_tenant_set(TenantSet.from_dicts(tenant_tables(count)), "bench", "seed")
        token = auth.new_token()
        await store.add_token(auth.token_hash(token), "bench", "admin", None, "write")
        return token
    finally:
        await store.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (fraction 0..1) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(fraction * len(ordered) + 0.999999) - 1))]


def _summary(latencies_s: list[float]) -> dict[str, Any]:
    ms = [1000 * v for v in latencies_s]

    def rounded(v: float | None) -> float | None:
        return None if v is None else round(v, 2)
    return {"count": len(ms), "p50_ms": rounded(percentile(ms, 0.50)), "p99_ms": rounded(percentile(ms, 0.99)),
            "max_ms": rounded(max(ms) if ms else None)}


async def _drive(base: str, token: str, tenants: int, clients: int, requests: int, put_every: int,
                 time_limit_s: float, seed: int) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415

    rng = random.Random(seed)
    ops = [("PUT" if put_every and (n + 1) % put_every == 0 else "GET", f"t{rng.randrange(tenants):05d}")
           for n in range(requests)]
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for op in ops:
        queue.put_nowait(op)
    latencies: dict[str, list[float]] = {"GET": [], "PUT": []}
    errors: dict[str, int] = {}
    deadline = time.monotonic() + time_limit_s
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
        async def client() -> None:
            while time.monotonic() < deadline:
                try:
                    method, tenant = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                path = f"{base}/api/v1/tenants/{tenant}" + ("/policy" if method == "PUT" else "")
                body = {"mode": rng.choice(("monitor", "mitigate"))} if method == "PUT" else None
                started = time.perf_counter()
                try:
                    async with http.request(method, path, json=body) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                if status == 200:
                    latencies[method].append(time.perf_counter() - started)
                else:
                    errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    done = len(latencies["GET"]) + len(latencies["PUT"])
    return {"elapsed_s": round(elapsed, 2), "completed": done, "not_started": queue.qsize(), "errors": errors,
            "throughput_rps": round(done / elapsed, 1) if elapsed > 0 else None,
            "reads": _summary(latencies["GET"]), "writes": _summary(latencies["PUT"])}


def run(tenants: int = 10_000, clients: int = 20, requests: int = 2_000, put_every: int = 20,
        time_limit_s: float = 300.0, seed: int = 1, progress: Callable[[str], None] = lambda _m: None) -> dict:
    if clients < 1 or requests < 1 or put_every < 0 or time_limit_s <= 0:
        raise ValueError("clients and requests >= 1, put_every >= 0 (0: reads only), time_limit > 0")

    with tempfile.TemporaryDirectory(prefix="seawall-bench-sw-") as tmp:
        directory = pathlib.Path(tmp)
        database = f"sqlite:///{directory}/sw.db"
        progress(f"seeding {tenants:,} tenants into {database}")
        token = asyncio.run(_seed(database, tenants))
        progress(f"seeding {console.HOUR_DAYS} days of hour rollups for {tenants:,} tenants and the charted series")
        seeded = console.seed(database, tenants)
        with securewatch_process(directory, database) as (server, base):
            progress(f"serving with `seawall securewatch` (pid {server.pid}) on {base}")
            load = os.getloadavg()[0]
            progress(f"{clients} clients, {requests:,} requests (every {put_every}th a policy PUT)")
            result = asyncio.run(_drive(base, token, tenants, clients, requests, put_every, time_limit_s, seed))
            progress("console pages and series")
            pages = asyncio.run(console.measure(base, token, tenants, CONSOLE_REPEAT))
            live = asyncio.run(console.live_latency(base, token, database))
    progress("live update latency from the engine's tick")
    tick = console.tick_to_browser()
    progress("storage per tenant per day")
    return {"tenants": tenants, "clients": clients, "requests": requests, "put_every": put_every,
            "cpu": cpu_model(), "cpus": os.cpu_count(), "load_1min_before": round(load, 2), **result,
            "console": {"seeded": seeded, "repeat": CONSOLE_REPEAT, "requests": pages, "live": live,
                        "tick": tick, "storage": console.storage()}}


def render(result: dict) -> str:
    def line(kind: str, s: dict) -> str:
        if not s["count"]:
            return f"  {kind:<7} none completed"
        return f"  {kind:<7} {s['count']:>6,}  p50 {s['p50_ms']:>9.2f} ms  p99 {s['p99_ms']:>9.2f} ms  max {s['max_ms']:>9.2f} ms"
    out = [f"SecureWatch, {result['tenants']:,} tenants, {result['clients']} clients, {result['requests']:,} requests "
           f"(every {result['put_every']}th a policy PUT)",
           f"CPU: {result['cpu']} x{result['cpus']} (1-min load before: {result['load_1min_before']})",
           line("reads", result["reads"]), line("writes", result["writes"]),
           f"  completed {result['completed']:,} in {result['elapsed_s']} s: {result['throughput_rps']} requests/s"
           + (f"; not started (time limit): {result['not_started']:,}" if result["not_started"] else "")
           + (f"; errors: {result['errors']}" if result["errors"] else "")]
    if "console" in result:
        out += console.render(result["console"])
    return "\n".join(out)
