"""Events the policy engine publishes, and the in-process bus that carries them.

SecureWatch (store, UI) and the notifiers (syslog, SNMP, email, webhooks) are
consumers; the engine and the appliance are producers. An event is an immutable
record with a JSON form (`to_dict`) that every consumer renders from.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import itertools
import time
from typing import Any

import structlog

log = structlog.get_logger("events")


class EventType(enum.StrEnum):
    ATTACK_START = "ATTACK_START"
    ATTACK_UPDATE = "ATTACK_UPDATE"
    ATTACK_END = "ATTACK_END"
    POLICY_CHANGE = "POLICY_CHANGE"
    SYSTEM = "SYSTEM"
    ESCALATION = "ESCALATION"     # a FlowSpec or RTBH route announced, withdrawn or refused (escalation/)


class Severity(enum.StrEnum):
    INFO = "info"
    NOTICE = "notice"
    WARNING = "warning"
    CRITICAL = "critical"


_sequence = itertools.count(1)


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One thing the NOC and the tenant should hear about.

    `incident_id` ties ATTACK_* events of one incident together (and is the
    dedup key for coalescing and for PagerDuty). `tenant` is None for events
    about the appliance itself (SYSTEM) or the whole fleet.
    """

    type: EventType
    tenant: str | None
    message: str
    severity: Severity = Severity.INFO
    incident_id: str | None = None
    destinations: tuple[str, ...] = ()
    vectors: tuple[str, ...] = ()
    confidence: float | None = None      # 0..1
    pps: float | None = None             # packets per second, peak of the last interval
    bps: float | None = None             # bits per second, peak of the last interval
    packets_dropped: int | None = None   # cumulative for the incident
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    timestamp: float = dataclasses.field(default_factory=time.time)  # seconds since the epoch
    sequence: int = dataclasses.field(default_factory=lambda: next(_sequence))

    @property
    def explanation(self) -> str | None:
        """What was seen, in words, for the best-scored vector that has it (the application-layer
        vectors of issue 15), else None."""
        said = self.details.get("explanations") or {}
        return next((said[v] for v in self.vectors if v in said), None)

    @property
    def top_sources(self) -> list[str]:
        """Addresses of the sources that carried the most of an application-layer flood."""
        return [str(s.get("src")) for s in self.details.get("top_sources") or [] if isinstance(s, dict)]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["type"] = str(self.type)
        d["severity"] = str(self.severity)
        d["destinations"] = list(self.destinations)
        d["vectors"] = list(self.vectors)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        kw["type"] = EventType(kw["type"])
        kw["severity"] = Severity(kw.get("severity", "info"))
        kw["destinations"] = tuple(kw.get("destinations", ()))
        kw["vectors"] = tuple(kw.get("vectors", ()))
        return cls(**kw)


# Seconds a delivery (`EventBus.deliver`) waits in all for room in one subscriber's full queue before it
# drops that subscriber's oldest events instead: a burst larger than the queue (a tick in which 20,000
# attacks start) reaches a subscriber that keeps reading, and one that stopped costs a delivery this
# much at most.
DELIVERY_WAIT_S = 10.0


class EventBus:
    """Fan-out of events to subscribers, each with its own bounded queue.

    A slow subscriber never blocks the engine: when its queue is full the oldest
    event is dropped for that subscriber only and counted in `overflows`.
    Subscribers that must lose nothing (notifiers) persist what they receive at
    once into their own durable queue. The engine's loop delivers a tick's events with
    `deliver`, which first waits (up to DELIVERY_WAIT_S per subscriber) for a full queue
    to have room: a tick's burst larger than the queue is handed on, not dropped.
    """

    def __init__(self, queue_size: int = 10000) -> None:
        self._queue_size = queue_size
        self._subscribers: dict[str, asyncio.Queue[Event]] = {}
        self.overflows: dict[str, int] = {}

    def subscribe(self, name: str) -> asyncio.Queue[Event]:
        if name in self._subscribers:
            raise ValueError(f"subscriber {name!r} already exists")
        q: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._subscribers[name] = q
        self.overflows[name] = 0
        return q

    def unsubscribe(self, name: str) -> None:
        self._subscribers.pop(name, None)

    def publish(self, event: Event) -> None:
        for name, q in self._subscribers.items():
            if q.full():
                q.get_nowait()
                self.overflows[name] += 1
            q.put_nowait(event)

    async def deliver(self, events: list[Event], wait_s: float = DELIVERY_WAIT_S) -> None:
        """Publish `events` in order; a subscriber whose queue is full is waited for while it makes room,
        `wait_s` seconds in all for this delivery, then it loses its oldest events as with `publish`."""
        budget = {name: wait_s for name in self._subscribers}
        before = dict(self.overflows)
        loop = asyncio.get_running_loop()
        for event in events:
            for name, q in list(self._subscribers.items()):
                if q.full() and budget.get(name, 0.0) > 0:
                    started = loop.time()
                    try:
                        await asyncio.wait_for(q.put(event), budget[name])
                        budget[name] -= loop.time() - started
                        continue
                    except TimeoutError:
                        budget[name] = 0.0          # it stopped reading: no more waiting this delivery
                if q.full():
                    q.get_nowait()
                    self.overflows[name] = self.overflows.get(name, 0) + 1
                q.put_nowait(event)
        lost = {name: n - before.get(name, 0) for name, n in self.overflows.items() if n > before.get(name, 0)}
        if lost:
            log.warning("events.dropped", subscribers=lost, waited_s=wait_s,
                        reason="the subscriber's queue stayed full: it stopped reading or reads too slowly")

    @property
    def dropped(self) -> int:
        """Events dropped for full subscriber queues, over every subscriber, since the start."""
        return sum(self.overflows.values())
