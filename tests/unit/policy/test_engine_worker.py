"""`PolicyEngine.run()` ticks in a worker thread: the event loop keeps serving during a tick, and
what a tick produces (events, tenant traffic) still reaches its readers on the loop's thread.

Issue 18: at 1,000,000 destinations a tick takes half a second of CPU; inside the loop it stalled
SecureWatch, the notifiers and BGP for as long. These tests hold a tick in the middle of its read
and show the loop running meanwhile (on the old code the loop is the thread that is held).
A tick that outlasts its interval (a million destinations on a slow CPU) is counted, shown and logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import threading
import time

import numpy as np
import structlog.testing

from dataplane.constants import TenantMode, TrafficClass
from policy.engine import PolicyEngine
from policy.events import DELIVERY_WAIT_S, EventBus, EventType
from tenants.policy import TenantPolicy
from tests.support import await_until, wait_until
from tests.unit.policy.fakes import FakeDataplane, Flow
from tests.unit.policy.scenarios import FAST, GAME, game_legit_frames, udp_flood_frames

HOLD_S = 5.0   # how long a held tick waits for the loop before it gives up (old code: the full wait)


class RealTimeDataplane(FakeDataplane):
    """Delivers the traffic of the real time elapsed since the last read, so that `run()`, which
    ticks on the monotonic clock, sees rates as the flows define them; can hold one read."""

    def __init__(self) -> None:
        super().__init__()
        self.last = time.monotonic()
        self.read_threads: set[int] = set()
        self.hold_next = threading.Event()      # set by the test: the next read waits for `released`
        self.holding = threading.Event()        # set by the read while it waits
        self.released = threading.Event()       # set by a coroutine on the loop
        self.released_in_time: bool | None = None

    def read_destination_counters(self, *args, **kwargs):
        self.read_threads.add(threading.get_ident())
        if self.hold_next.is_set():
            self.hold_next.clear()
            self.holding.set()
            self.released_in_time = self.released.wait(HOLD_S)
        now = time.monotonic()
        self.advance(self.last, now - self.last)
        self.last = now
        return super().read_destination_counters(*args, **kwargs)


class ThreadRecordingBus(EventBus):
    def __init__(self) -> None:
        super().__init__()
        self.publish_threads: set[int] = set()

    def publish(self, event) -> None:
        self.publish_threads.add(threading.get_ident())
        super().publish(event)

    async def deliver(self, events, wait_s: float = DELIVERY_WAIT_S) -> None:
        if events:
            self.publish_threads.add(threading.get_ident())
        await super().deliver(events, wait_s)


async def test_the_loop_runs_while_a_tick_is_under_way(tmp_path):
    dp = RealTimeDataplane()
    dp.add_flow(Flow("players", 1, game_legit_frames(), 800.0))
    engine = PolicyEngine(dp, {1: ("alpha", TenantMode.MITIGATE, TenantPolicy())}, EventBus(), tmp_path,
                          tick=0.02, config=FAST)
    task = asyncio.create_task(engine.run(), name="policy-engine-test")
    try:
        await await_until(lambda: engine.last_report is not None, timeout=5, what="a first tick")
        dp.hold_next.set()
        # This coroutine can only see the held read, and release it, if the loop is free meanwhile.
        await await_until(dp.holding.is_set, timeout=HOLD_S * 2, what="a tick holding in its read")
        dp.released.set()
        await await_until(lambda: dp.released_in_time is not None, timeout=HOLD_S * 2, what="the held read")
    finally:
        engine.stop()
        await asyncio.wait_for(task, 10)
    assert dp.released_in_time, "the tick held the event loop: nothing on the loop ran during it"
    assert threading.get_ident() not in dp.read_threads


async def test_events_and_tenant_traffic_are_delivered_on_the_loop_thread(tmp_path):
    """A real attack, detected by ticks in the worker: its ATTACK_START is published, and the
    tenant traffic handed on, on the loop's thread (the bus's queues and the readers are the loop's)."""
    dp = RealTimeDataplane()
    dp.add_flow(Flow("players", 1, game_legit_frames(), 800.0))
    bus = ThreadRecordingBus()
    queue = bus.subscribe("test")
    traffic_threads: set[int] = set()
    config = dataclasses.replace(FAST, warmup_s=0.5, confirm_s=0.1, signature_wait_s=0.1)
    engine = PolicyEngine(dp, {1: ("alpha", TenantMode.MITIGATE, TenantPolicy())}, bus, tmp_path, tick=0.05,
                          config=config, on_tenant_traffic=lambda _t: traffic_threads.add(threading.get_ident()))
    task = asyncio.create_task(engine.run(), name="policy-engine-test")
    try:
        game = ipaddress.ip_address(GAME)

        def warm() -> bool:
            slot = engine.rates.slots.slot_of(game)
            return slot is not None and bool(engine.dest_baseline.warm(np.array([slot]))[0, TrafficClass.UDP])

        await await_until(warm, timeout=10, what="the game server's learned baseline")
        dp.add_flow(Flow("udp-flood", 1, udp_flood_frames(GAME), 50_000.0, attack=True))
        start = await asyncio.wait_for(_next_of_type(queue, EventType.ATTACK_START), 20)
    finally:
        engine.stop()
        await asyncio.wait_for(task, 10)
    assert start.tenant == "alpha"
    loop_thread = threading.get_ident()
    assert bus.publish_threads == {loop_thread}
    assert traffic_threads == {loop_thread}
    assert loop_thread not in dp.read_threads


async def _next_of_type(queue: asyncio.Queue, etype: EventType):
    while True:
        event = await queue.get()
        if event.type == etype:
            return event


class SlowReadDataplane(RealTimeDataplane):
    """Every read lasts until `read_s` seconds of wall time have passed since it began (a tick longer
    than its interval), polled for with a timeout."""

    def __init__(self, read_s: float) -> None:
        super().__init__()
        self.read_s = read_s

    def read_destination_counters(self, *args, **kwargs):
        began = time.monotonic()
        wait_until(lambda: time.monotonic() - began >= self.read_s, timeout=HOLD_S, interval=0.005,
                   what=f"{self.read_s} s of a slow read")
        return super().read_destination_counters(*args, **kwargs)


async def _run_until(engine: PolicyEngine, done, what: str) -> None:
    task = asyncio.create_task(engine.run(), name="policy-engine-test")
    try:
        await await_until(done, timeout=10, what=what)
    finally:
        engine.stop()
        await asyncio.wait_for(task, 10)


async def test_issue18_ticks_longer_than_their_interval_are_counted_shown_and_logged_once_a_minute(tmp_path):
    """At a million destinations on a slow CPU a tick outlasts `tick_ms`: the engine falls behind, and the
    operator sees it in the status, the metrics (from the status) and one warning a minute, not one a tick."""
    dp = SlowReadDataplane(0.06)
    dp.add_flow(Flow("players", 1, game_legit_frames(), 800.0))
    engine = PolicyEngine(dp, {1: ("alpha", TenantMode.MITIGATE, TenantPolicy())}, EventBus(), tmp_path,
                          tick=0.02, config=FAST)
    with structlog.testing.capture_logs() as logs:
        await _run_until(engine, lambda: engine.ticks_overrun >= 4, "four overrun ticks")
    warnings = [e for e in logs if e["event"] == "policy.tick_overrun"]
    assert len(warnings) == 1, warnings
    assert warnings[0]["tick_ms"] == 20.0 and warnings[0]["wall_ms"] >= 60.0
    assert warnings[0]["overruns"] == 1 and warnings[0]["destinations"] == 1
    status = engine.status()
    assert status["ticks_overrun"] == engine.ticks_overrun >= 4
    assert status["last_tick"]["wall_ms"] >= 60.0


async def test_issue18_ticks_within_their_interval_are_not_overruns(tmp_path):
    dp = RealTimeDataplane()
    dp.add_flow(Flow("players", 1, game_legit_frames(), 800.0))
    engine = PolicyEngine(dp, {1: ("alpha", TenantMode.MITIGATE, TenantPolicy())}, EventBus(), tmp_path,
                          tick=0.5, config=FAST)
    seen: set[float] = set()

    def three_ticks() -> bool:
        if engine.last_report is not None:
            seen.add(engine.last_report.now)
        return len(seen) >= 3

    with structlog.testing.capture_logs() as logs:
        await _run_until(engine, three_ticks, "three ticks")
    assert engine.ticks_overrun == 0
    assert not [e for e in logs if e["event"] == "policy.tick_overrun"]
    assert 0.0 < engine.status()["last_tick"]["wall_ms"] < 500.0
