"""NOC receivers edited in SecureWatch: live reconfiguration of a real NotifierManager against a
real aiohttp webhook receiver on loopback, the /api/v1/notify round trip with secrets masked and
kept, validation errors naming the key, the audit log without secrets, and the admin page."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from test_notify_delivery import FAST_RETRY, HMAC_SECRET, WebhookSink, attack, free_port

from appliance.config import parse_config
from appliance.service import Appliance
from policy.events import Event, EventBus, EventType
from securewatch import notify_admin
from securewatch.notify import NotifierManager, parse_notify_config
from tests.support import await_until

MASK = notify_admin.MASK


@pytest.fixture
async def sink():
    s = WebhookSink(free_port())
    yield s
    await s.down()


def _hook(port: int, name: str, path: str, **extra) -> dict:
    return {"name": name, "url": f"http://127.0.0.1:{port}{path}", "secret": HMAC_SECRET, **extra}


# --- NotifierManager.reconfigure ----------------------------------------------------------

async def test_reconfigure_swaps_receivers_live_and_keeps_queued_events(tmp_path, sink):
    """While the receiver is down, events wait in each queue. A new config changes the NOC
    hook's URL (same name, same routing: its queue is kept and delivered to the new URL), keeps
    one receiver identical (its task is not even restarted), removes one and adds one."""
    port = sink.port
    before = parse_notify_config({"webhook": [
        _hook(port, "noc-hook", "/generic"),
        _hook(port, "old-hook", "/old"),
        _hook(port, "steady", "/steady", tenants=["alpha"]),
        _hook(port, "moved", "/moved", tenants=["alpha"]),
    ]})
    bus = EventBus()
    async with NotifierManager(before, bus, tmp_path, retry=FAST_RETRY) as mgr:
        bus.publish(attack("A", "alpha", EventType.ATTACK_START, "queued before"))
        await await_until(lambda: all(s.backlog == 1 and s.consecutive_failures >= 1
                                      for s in mgr.status().values()), what="every queue to hold the event")
        steady_task = next(t for t in asyncio.all_tasks() if t.get_name() == "notify:steady")

        after = parse_notify_config({"webhook": [
            _hook(port, "noc-hook", "/generic?edited=1", timeout=5.0),
            _hook(port, "steady", "/steady", tenants=["alpha"]),
            _hook(port, "moved", "/moved", tenants=["beta"]),  # same name, other tenant's now
            _hook(port, "new-hook", "/new", tenants=["alpha"]),
        ]})
        outcome = await mgr.reconfigure(after)
        assert outcome == {"kept": ["steady"], "restarted": ["noc-hook", "moved"], "added": ["new-hook"],
                           "removed": ["old-hook"]}
        assert list(mgr.status()) == ["noc-hook", "steady", "moved", "new-hook"]
        assert mgr.status()["noc-hook"].backlog == 1  # survived the swap
        assert mgr.status()["moved"].backlog == 0 and mgr.status()["moved"].dead_letters == 1  # alpha's, set aside
        assert next(t for t in asyncio.all_tasks() if t.get_name() == "notify:steady") is steady_task
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "notify:old-hook"]

        await sink.up()
        bus.publish(attack("B", "alpha", EventType.ATTACK_START, "after the edit"))
        await await_until(lambda: mgr.status()["noc-hook"].delivered == 2 and mgr.status()["new-hook"].delivered == 1
                          and mgr.status()["steady"].delivered == 2, timeout=15, what="deliveries")
    assert [e.message for e in sink.events("/generic")] == ["queued before", "after the edit"]
    assert [e.message for e in sink.events("/new")] == ["after the edit"]
    assert [e.message for e in sink.events("/steady")] == ["queued before", "after the edit"]
    assert sink.events("/old") == [] and sink.events("/moved") == []  # removed; beta's gets no alpha event
    assert sink.bad_signatures == 0


async def test_appliance_without_notify_starts_notifiers_when_configured(tmp_path, sink):
    """The appliance started with no [notify]: the first configuration from SecureWatch creates
    and starts the manager, which stops with the appliance."""
    await sink.up()
    appliance = Appliance(parse_config(f'[appliance]\nstate_dir = "{tmp_path}"\n'))
    async with contextlib.AsyncExitStack() as lifetime:
        await appliance._start_notifiers(lifetime)  # the appliance's own start-up step
        assert appliance.notifiers is None and appliance.notify_config() == {}
        with pytest.raises(ValueError, match=r"notify\.webhook\[0\]\.url"):
            await appliance.reconfigure_notifiers({"webhook": [{"name": "x", "url": "ftp://h/", "secret": "s"}]})
        assert appliance.notifiers is None
        table = {"webhook": [_hook(sink.port, "noc-hook", "/generic")]}
        await appliance.reconfigure_notifiers(table)
        assert appliance.notifiers.running and appliance.notify_config() == table
        appliance.bus.publish(Event(EventType.SYSTEM, None, "hello NOC"))
        await await_until(lambda: appliance.notifiers.status()["noc-hook"].delivered == 1, what="delivery")
        manager = appliance.notifiers
    assert not manager.running
    assert [e.message for e in sink.events("/generic")] == ["hello NOC"]
