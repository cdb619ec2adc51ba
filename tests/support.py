"""Helpers shared by every test tier: polling instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition") -> object:
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)  # poll interval, not a wait for an outcome


async def await_until(predicate: Callable[[], Awaitable[object] | object], timeout: float = 10.0,
                      interval: float = 0.02, what: str = "condition") -> object:
    """Async twin of wait_until; `predicate` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(interval)  # poll interval


def started_lab(request, tag: str):
    """A namespace lab with a unique name (`tag` and 6 hex digits), taken down when the
    requesting fixture scope ends, also when a test fails or the set-up fails halfway
    (netns tier; the lab is imported here so that the unit tier never loads it)."""
    import uuid  # noqa: PLC0415

    from appliance.lab import Lab  # noqa: PLC0415 - netns tier only

    lab = Lab(f"{tag}{uuid.uuid4().hex[:6]}")
    request.addfinalizer(lab.down)
    lab.up()
    return lab


def running_traffic(lab, duration_s: float, profile, request):
    """The lab's legitimate clients (`TrafficRun`) for `duration_s` seconds, started and reporting (their
    first second in), stopped and then killed when the requesting fixture scope ends (netns tier)."""
    from appliance.lab.traffic import TrafficRun  # noqa: PLC0415 - netns tier only

    run = TrafficRun(lab, duration_s, profile).start()
    request.addfinalizer(run.kill)
    request.addfinalizer(run.stop)
    wait_until(lambda: len(run.seconds) >= 1, timeout=30, what="the legitimate clients' first second")
    return run
