"""Issue 18: a tick's burst of events larger than a subscriber's queue.

Thousands of attacks starting in one tick publish more events than a subscriber's queue holds
(10,000): `publish` dropped the oldest for every subscriber, so SecureWatch never stored those
incidents and the notifiers never sent them, and nothing showed it. The engine's loop now hands a
tick's events on with `EventBus.deliver`, which waits for a subscriber that keeps reading, and
drops (counted, in the status and `/metrics`) only for one that stopped.
"""

from __future__ import annotations

import asyncio
import pathlib
import time

from appliance.bench.policy import SyntheticDataplane, synthetic_tenant_spec
from policy.config import PolicyConfig
from policy.engine import PolicyEngine
from policy.events import Event, EventBus, EventType
from tests.support import await_until


def _events(n: int) -> list[Event]:
    return [Event(type=EventType.SYSTEM, tenant=None, message=f"event {i}") for i in range(n)]


async def _read(inbox: asyncio.Queue[Event], got: list[Event], n: int) -> None:
    """A subscriber that keeps reading: what is queued each time the loop lets it run."""
    while len(got) < n:
        got.append(await inbox.get())


class _RealTimeCounters(SyntheticDataplane):
    """Synthetic counters that advance by the wall time since the last read, when the engine reads them."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.read_at = time.monotonic()

    def read_destination_counters(self):
        now = time.monotonic()
        self.advance(now - self.read_at)
        self.read_at = now
        return super().read_destination_counters()


async def test_a_burst_larger_than_the_queue_reaches_a_subscriber_that_keeps_reading():
    bus = EventBus(queue_size=16)
    inbox = bus.subscribe("store")
    events = _events(500)
    got: list[Event] = []
    reader = asyncio.create_task(_read(inbox, got, len(events)))
    await bus.deliver(events)
    await asyncio.wait_for(reader, 10)
    assert [e.message for e in got] == [e.message for e in events]
    assert bus.overflows == {"store": 0} and bus.dropped == 0


async def test_a_subscriber_that_stopped_reading_loses_its_oldest_and_holds_up_no_one_else():
    bus = EventBus(queue_size=16)
    stuck = bus.subscribe("stuck")
    inbox = bus.subscribe("notifiers")
    events = _events(200)
    got: list[Event] = []
    reader = asyncio.create_task(_read(inbox, got, len(events)))
    await bus.deliver(events, wait_s=0.2)
    await asyncio.wait_for(reader, 10)
    assert [e.message for e in got] == [e.message for e in events]     # the reading one lost nothing
    assert bus.overflows["stuck"] == 200 - 16 and bus.dropped == 200 - 16
    kept = [stuck.get_nowait().message for _ in range(stuck.qsize())]
    assert kept == [e.message for e in events[-16:]]                     # the newest, as publish keeps them


async def test_the_engine_loop_hands_every_attack_start_of_a_wide_attack_to_a_small_queue(tmp_path: pathlib.Path):
    """`PolicyEngine.run()` with a bus queue of 32 and 300 attacks starting together: every ATTACK_START
    reaches the subscriber, and the status counts no dropped event."""
    dp = _RealTimeCounters(3000, 300, 0.0, 300, 4)
    bus = EventBus(queue_size=32)
    inbox = bus.subscribe("store")
    engine = PolicyEngine(dp, synthetic_tenant_spec(3000, 300, False), bus, tmp_path, tick=0.05,
                          config=PolicyConfig(warmup_s=4.0))
    start = time.monotonic() - 8.0
    for i in range(6):                       # warm-up, off the loop, a second a tick on the clock run() goes on with
        dp.advance(1.0)
        engine.tick(start + i + 1.0)
    while not inbox.empty():
        inbox.get_nowait()
    attacked = dp.rng.choice(3000, 300, replace=False)
    dp.attack(attacked, syn_pps=50_000.0)
    dp.read_at = time.monotonic()
    starts: set[str] = set()

    async def read() -> None:
        while True:
            event = await inbox.get()
            if event.type == EventType.ATTACK_START:
                starts.add(event.destinations[0])

    reader = asyncio.create_task(read())
    runner = asyncio.create_task(engine.run())
    try:
        await await_until(lambda: len(starts) >= len(attacked), timeout=20, what="every attack's ATTACK_START")
    finally:
        engine.stop()
        await asyncio.wait_for(runner, 30)
        reader.cancel()
    assert len(starts) == len(attacked)
    assert engine.status()["events_dropped"] == 0
