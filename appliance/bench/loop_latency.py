"""What a policy tick costs the event loop: `seawall bench policy --loop-latency`.

In `seawall run` one asyncio loop serves SecureWatch, the notifiers and the BGP speaker's
control while the policy engine ticks once a second. This benchmark puts the same pieces in one
process: the real SecureWatch application (SQLite store, an admin token) on a local port, the
policy engine over the synthetic dataplane of `appliance.bench.policy` holding D destinations
of 10,000 tenants, and a bus subscriber standing in for a notifier. Then, for each size and
each way of ticking, interleaved:

- `in-loop`: the engine's tick called on the loop, as `run()` did before issue 18;
- `worker`: `PolicyEngine.run()`, which ticks in a worker thread;

it measures, for `seconds` of ticking,
- API latency: a separate process (its own interpreter and GIL) sends `GET
  /api/v1/tenants/{id}` one after another every `interval_ms`, and reports each latency; a
  request the stalled loop leaves unanswered for `client_timeout_s` counts as a timeout, and its
  time waited (a lower bound) joins the latencies: a stall is a figure, not a failure;
- notifier delivery delay: an event due every `interval_ms` is published on the loop by a
  timer and received by a bus subscriber; the delay is receipt minus due time (what a
  notifier's queue, an SMTP conversation or a BGP keepalive waits meanwhile).

The synthetic counters grow inside each tick's read (in the tick's thread), standing in for the
kernel, which counts outside the engine's process. Figures only, never a pass or fail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import structlog

from appliance.bench.policy import SyntheticDataplane
from appliance.bench.securewatch import cpu_model, percentile
from dataplane.constants import TenantMode
from policy.config import PolicyConfig
from policy.engine import PolicyEngine
from policy.events import Event, EventBus, EventType, Severity
from tenants.policy import TenantPolicy

MODES = ("in-loop", "worker")
API_TENANTS = 100            # tenants SecureWatch serves (the engine's tenant count is separate)
CLIENT_TIMEOUT_S = 30.0      # seconds one request may take before the client gives up on it (a timeout)
STARTUP_TIMEOUT_S = 30.0     # seconds the in-process server may take to answer, before any tick runs
READY = "ready"              # the client's first line: the server answered, the measuring starts


class _CountingDataplane(SyntheticDataplane):
    """Grows its counters by one tick's worth on each read, in the reading thread."""

    def read_destination_counters(self, *args, **kwargs):
        self.advance(1.0)
        return super().read_destination_counters(*args, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summary(values_ms: list[float]) -> dict[str, Any]:
    def rounded(v: float | None) -> float | None:
        return None if v is None else round(v, 2)
    return {"count": len(values_ms), "p50_ms": rounded(percentile(values_ms, 0.50)),
            "p99_ms": rounded(percentile(values_ms, 0.99)), "max_ms": rounded(max(values_ms, default=None))}


async def _serve(directory: pathlib.Path) -> tuple[Any, Any, str, str]:
    """The real SecureWatch app on 127.0.0.1; returns (runner, store, base URL, admin token)."""
    from aiohttp import web  # noqa: PLC0415

    from securewatch import auth  # noqa: PLC0415
    from securewatch.app import create_app  # noqa: PLC0415
    from securewatch.settings import SecureWatchSettings  # noqa: PLC0415
    from securewatch.store import Store  # noqa: PLC0415
    from tenants import TenantSet  # noqa: PLC0415

    database = f"sqlite:///{directory}/sw.db"
    store = await Store.open(database)
    tables = [{"id": f"t{i:05d}", "name": f"Tenant {i}", "prefixes": [f"2001:db8:{i:x}::/48"]}
              for i in range(API_TENANTS)]
    await store.save_tenant_set(TenantSet.from_dicts(tables), "bench", "seed")
    token = auth.new_token()
    await store.add_token(auth.token_hash(token), "bench", "admin", None, "read")
    port = _free_port()
    settings = SecureWatchSettings(listen=f"127.0.0.1:{port}", database=database, enabled=True)
    runner = web.AppRunner(create_app(settings, store=store), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, store, f"http://127.0.0.1:{port}", token


async def _in_loop_ticks(engine: PolicyEngine, stop: asyncio.Event) -> None:
    """The engine's loop before issue 18: each tick runs on the event loop itself."""
    next_at = time.monotonic()
    while not stop.is_set():
        engine.tick()
        next_at += engine.tick_s
        delay = max(0.0, next_at - time.monotonic())
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass


async def _measure(engine: PolicyEngine, bus: EventBus, mode: str, base: str, token: str, seconds: float,
                   interval_s: float, client_timeout_s: float = CLIENT_TIMEOUT_S) -> dict[str, Any]:
    inbox = bus.subscribe("bench-notifier")
    delays_ms: list[float] = []
    stop = asyncio.Event()

    async def notifier() -> None:
        while True:
            event = await inbox.get()
            if "due" in event.details:   # the timer's, not one of the engine's own events
                delays_ms.append(1000.0 * (time.monotonic() - event.details["due"]))

    async def publisher() -> None:
        due = time.monotonic()
        while not stop.is_set():
            due += interval_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))   # the timer whose lateness is measured
            bus.publish(Event(type=EventType.SYSTEM, tenant=None, message="bench", severity=Severity.INFO,
                              details={"due": due}))

    # The client first waits until the server answers, on a loop no tick stalls yet; the ticking
    # starts when it says it is measuring.
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appliance.bench.loop_latency", "--client", base, token, str(seconds),
        str(interval_s), str(client_timeout_s), stdout=subprocess.PIPE, env=os.environ.copy())
    assert client.stdout is not None
    first = (await client.stdout.readline()).decode().strip()
    if first != READY:
        await client.wait()
        raise RuntimeError(f"benchmark: the API client did not start (exit status {client.returncode}): {first!r}")
    ticks_before = engine.last_report.now if engine.last_report else None
    if mode == "worker":
        ticking = asyncio.create_task(engine.run(), name="bench-engine-worker")
    else:
        ticking = asyncio.create_task(_in_loop_ticks(engine, stop), name="bench-engine-in-loop")
    tasks = [asyncio.create_task(notifier()), asyncio.create_task(publisher())]
    out, _ = await client.communicate()
    stop.set()
    engine.stop()
    await ticking
    for task in tasks:
        if task.done() and task.exception() is not None:
            raise task.exception()
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    bus.unsubscribe("bench-notifier")
    lines = out.decode().strip().splitlines()
    if client.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark: the API client failed (exit status {client.returncode})")
    api = json.loads(lines[-1])
    return {"api": _summary(api["latencies_ms"]) | {"errors": api["errors"], "timeouts": api["timeouts"]},
            "notifier_delay": _summary(delays_ms),
            "ticked": ticks_before != (engine.last_report.now if engine.last_report else None)}


def run(sizes: tuple[int, ...] = (100_000, 1_000_000), tenants: int = 10_000, seconds: float = 15.0,
        interval_ms: float = 20.0, warmup_ticks: int = 5, client_timeout_s: float = CLIENT_TIMEOUT_S,
        progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """`client_timeout_s`: seconds the API client waits for one answer before counting a timeout."""
    if seconds <= 0 or interval_ms <= 0 or client_timeout_s <= 0:
        raise ValueError("seconds, interval_ms and client_timeout_s must be positive")
    # The synthetic counters make the engine see (and log) attacks; the figures are the point here.
    logging_config = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    results = []
    try:
        for destinations in sizes:
            progress(f"{destinations:,} destinations, {tenants:,} tenants: building the synthetic dataplane")
            results.append(asyncio.run(_size(destinations, tenants, seconds, interval_ms / 1000.0, warmup_ticks,
                                             client_timeout_s, progress)))
    finally:
        structlog.configure(**logging_config)
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "seconds": seconds, "interval_ms": interval_ms,
            "client_timeout_s": client_timeout_s, "sizes": results}


async def _size(destinations: int, tenants: int, seconds: float, interval_s: float, warmup_ticks: int,
                client_timeout_s: float, progress: Callable[[str], None]) -> dict[str, Any]:
    dp = _CountingDataplane(destinations, tenants, churn=0.002, samples_per_tick=2000, seed=1)
    bus = EventBus()
    spec = {t: (f"tenant-{t}", TenantMode.MITIGATE, TenantPolicy()) for t in range(tenants)}
    with tempfile.TemporaryDirectory(prefix="seawall-bench-loop-") as tmp:
        directory = pathlib.Path(tmp)
        engine = PolicyEngine(dp, spec, bus, directory / "engine", tick=1.0,
                              config=PolicyConfig(warmup_s=float(max(warmup_ticks - 2, 1))))
        for _ in range(warmup_ticks):
            engine.tick()
        runner, store, base, token = await _serve(directory)
        try:
            out: dict[str, Any] = {"destinations": destinations, "tenants": tenants}
            for mode in MODES:
                progress(f"{destinations:,} destinations: {mode}, {seconds:g} s")
                out[mode] = await _measure(engine, bus, mode, base, token, seconds, interval_s, client_timeout_s)
            cpu = [r.cpu_ms for r in [engine.last_report] if r is not None]
            out["tick_cpu_ms_last"] = cpu[0] if cpu else None
            return out
        finally:
            await runner.cleanup()
            await store.close()


def render(result: dict[str, Any]) -> str:
    lines = [f"Event loop under policy ticks, {result['seconds']:g} s per mode, a request and an event every "
             f"{result['interval_ms']:g} ms; CPU: {result['cpu']} x{result['cpus']}",
             f"{'destinations':>12} {'mode':<8} {'API p50':>9} {'API p99':>9} {'API max':>9} "
             f"{'notify p99':>11} {'notify max':>11}  (ms)"]
    for size in result["sizes"]:
        for mode in MODES:
            r = size[mode]
            api, note = r["api"], r["notifier_delay"]
            lines.append(f"{size['destinations']:>12,} {mode:<8} {api['p50_ms']:>9} {api['p99_ms']:>9} "
                         f"{api['max_ms']:>9} {note['p99_ms']:>11} {note['max_ms']:>11}"
                         + (f"  timeouts {api['timeouts']} (>= {result['client_timeout_s']:g} s each)"
                            if api["timeouts"] else "")
                         + (f"  errors {api['errors']}" if api["errors"] else ""))
        lines.append(f"{'':>12} last tick: {size['tick_cpu_ms_last']} ms CPU")
    return "\n".join(lines)


async def _client(base: str, token: str, seconds: float, interval_s: float,
                  timeout_s: float = CLIENT_TIMEOUT_S) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415

    latencies: list[float] = []
    errors = timeouts = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        probe = aiohttp.ClientTimeout(total=STARTUP_TIMEOUT_S)
        while True:   # the server is up before the measuring (and the parent's ticking) starts
            try:
                async with http.get(f"{base}/api/v1/tenants/t00000", timeout=probe) as r:
                    if r.status == 200:
                        break
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("SecureWatch did not answer")
            await asyncio.sleep(interval_s)   # startup probe interval
        print(READY, flush=True)
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            started = time.perf_counter()
            try:
                async with http.get(f"{base}/api/v1/tenants/t{n % API_TENANTS:05d}", timeout=timeout) as r:
                    await r.read()
                    ok = r.status == 200
            except TimeoutError:     # the loop stalled past the timeout: a measured wait, not an error
                timeouts += 1
                ok = True
            except aiohttp.ClientError:
                ok = False
            elapsed = time.perf_counter() - started
            if ok:
                latencies.append(1000.0 * elapsed)
            else:
                errors += 1
            n += 1
            await asyncio.sleep(max(0.0, interval_s - elapsed))   # the request pace
    return {"latencies_ms": latencies, "errors": errors, "timeouts": timeouts}


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "--client":
    print(json.dumps(asyncio.run(_client(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]),
                                         float(sys.argv[6])))))
