"""NotifierManager: subscribes to the EventBus, routes each event to the receivers
that may see it, stores it at once in each one's durable queue, and runs one named
asyncio task per receiver that delivers in order, with capped exponential backoff
and jitter while the receiver is down."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web

from policy.events import Event, EventBus

from .base import Notifier, NotifierError
from .config import EmailReceiver, NotifyConfig, Receiver, SnmpReceiver, SyslogReceiver, WebhookReceiver
from .queue import DurableQueue

log = structlog.get_logger(__name__)

BUS_SUBSCRIBER = "notify"
STOP_GRACE_S = 5.0  # seconds a worker may finish the delivery in progress when stopping


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delay before retry n (1-based): min(max_s, initial_s * multiplier**(n-1)),
    jittered uniformly into its upper half so receivers coming back are not stampeded
    by every appliance at once, while the delay still grows."""

    initial_s: float = 1.0    # seconds before the first retry
    max_s: float = 300.0      # seconds: the cap, so a receiver back after hours is tried soon
    multiplier: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.max_s, self.initial_s * self.multiplier ** max(attempt - 1, 0))
        return rng.uniform(ceiling / 2, ceiling)


@dataclasses.dataclass(frozen=True, slots=True)
class ReceiverStatus:
    name: str
    kind: str
    tenants: tuple[str, ...] | None
    healthy: bool                  # running, the last attempt (if any) succeeded, refused_recipients empty
    running: bool
    last_success: float | None     # seconds since the epoch
    last_error: str | None
    last_error_at: float | None
    consecutive_failures: int
    backlog: int                   # events waiting in the durable queue
    delivered: int                 # events delivered over the queue's life
    dead_letters: int              # events the receiver refused for good
    # Recipients that refused the last delivered event while others took it (email: address ->
    # the server's reply, e.g. "550 5.1.1 user unknown"); empty when every recipient has it.
    refused_recipients: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_public_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tenants"] = list(self.tenants) if self.tenants is not None else None
        return d


def make_notifier(receiver: Receiver) -> Notifier:
    # Imported here so a config with only webhooks never loads pysnmp, and so on.
    if isinstance(receiver, SyslogReceiver):
        from .syslog import SyslogNotifier  # noqa: PLC0415
        return SyslogNotifier(receiver)
    if isinstance(receiver, SnmpReceiver):
        from .snmp import SnmpNotifier  # noqa: PLC0415
        return SnmpNotifier(receiver)
    if isinstance(receiver, EmailReceiver):
        from .mail import EmailNotifier  # noqa: PLC0415
        return EmailNotifier(receiver)
    if isinstance(receiver, WebhookReceiver):
        from .webhook import WebhookNotifier  # noqa: PLC0415
        return WebhookNotifier(receiver)
    raise TypeError(f"no notifier for {type(receiver).__name__}")


def _owner(receiver: Receiver) -> str:
    """Whose events a queue holds: the receiver's kind and routing. A queue changes owner only
    when a name is reused with other routing, and then its backlog is set aside."""
    return f"{receiver.kind} for " + (",".join(sorted(receiver.tenants)) if receiver.tenants else "NOC")


class _Worker:
    """Delivery for one receiver: its queue, its notifier, its health."""

    def __init__(self, receiver: Receiver, queue: DurableQueue, notifier: Notifier,
                 retry: RetryPolicy, stopping: asyncio.Event) -> None:
        self.receiver = receiver
        self.queue = queue
        self.notifier = notifier
        self.retry = retry
        self.stopping = stopping
        self.wake = asyncio.Event()
        self.rng = random.Random()
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.refused_recipients: dict[str, str] = {}

    async def _pause(self, seconds: float | None) -> None:
        """Sleep until woken (new event), stopping, or `seconds` pass (None: no limit)."""
        waiters = [asyncio.ensure_future(self.stopping.wait())]
        if seconds is None:
            waiters.append(asyncio.ensure_future(self.wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(receiver=self.receiver.name, kind=self.receiver.kind)
        while not self.stopping.is_set():
            try:
                await self._step()
            except (sqlite3.Error, OSError) as exc:
                # The queue file itself failed (disk full, I/O error): keep the task alive
                # and try again later; what is on disk stays there.
                self._failed(f"queue: {type(exc).__name__}: {exc}")
                log.error("notify.queue_error", error=str(exc), path=str(self.queue.path))
                await self._pause(self.retry.delay(self.consecutive_failures, self.rng))

    async def _step(self) -> None:
        """Deliver the head of the queue once, or wait for work."""
        item = self.queue.head()
        if item is None:
            # No await between head() and clear(): an enqueue cannot slip in between.
            self.wake.clear()
            await self._pause(None)
            return
        try:
            refused = await self.notifier.send(item.event, item.delivery_id)
        except NotifierError as exc:
            self._failed(str(exc))
            if exc.permanent:
                self.queue.bury(item.row_id, str(exc))
                log.error("notify.refused", error=str(exc), delivery=item.delivery_id,
                          event_type=str(item.event.type), tenant=item.event.tenant)
                return
            self.queue.release()
            delay = self.retry.delay(self.consecutive_failures, self.rng)
            log.warning("notify.retry", error=str(exc), attempt=self.consecutive_failures,
                        delay_s=round(delay, 3), backlog=self.queue.backlog)
            await self._pause(delay)
            return
        except Exception as exc:
            # A bug of ours for this event (e.g. rendering): retrying the same input
            # fails the same way and would block the queue, so set it aside.
            self._failed(f"{type(exc).__name__}: {exc}")
            self.queue.bury(item.row_id, f"{type(exc).__name__}: {exc}")
            log.exception("notify.send_crashed", delivery=item.delivery_id)
            return
        self.queue.ack(item.row_id)
        self.refused_recipients = dict(refused or {})
        if self.consecutive_failures:
            log.info("notify.recovered", after_failures=self.consecutive_failures)
        self.consecutive_failures = 0
        log.debug("notify.delivered", delivery=item.delivery_id, event_type=str(item.event.type),
                  tenant=item.event.tenant, merged=item.merged)

    def _failed(self, error: str) -> None:
        self.consecutive_failures += 1
        self.last_error = error
        self.last_error_at = time.time()


class NotifierManager:
    """Owns every receiver's durable queue and delivery task.

    Use as `async with NotifierManager(...)`, or in aiohttp as
    `app.cleanup_ctx.append(manager.cleanup_ctx)`.
    """

    def __init__(self, config: NotifyConfig, bus: EventBus, state_dir: pathlib.Path | str | None = None,
                 *, retry: RetryPolicy | None = None) -> None:
        directory = state_dir if state_dir is not None else config.state_dir
        if directory is None:
            raise ValueError("notify: a state directory is required (notify.state_dir or state_dir=)")
        self.config = config
        self.bus = bus
        self.state_dir = pathlib.Path(directory)
        self.retry = retry or RetryPolicy()
        self._workers: dict[str, _Worker] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}  # strong references: tasks must not vanish
        self._dispatcher: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[Event] | None = None
        # Held while receivers are swapped: the dispatcher waits, events wait on the bus.
        self._routing = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self._dispatcher is not None

    async def start(self) -> None:
        if self.running:
            raise RuntimeError("notifier manager already started")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for receiver in self.config.receivers:
            queue = DurableQueue(self._queue_path(receiver))
            self._start_worker(receiver, queue, make_notifier(receiver))
        self._inbox = self.bus.subscribe(BUS_SUBSCRIBER)
        self._dispatcher = self._spawn("notify:dispatch", self._dispatch())
        log.info("notify.started", receivers=len(self._workers), state_dir=str(self.state_dir))

    def _queue_path(self, receiver: Receiver) -> pathlib.Path:
        return self.state_dir / f"{receiver.name}.sqlite"

    def _start_worker(self, receiver: Receiver, queue: DurableQueue, notifier: Notifier) -> None:
        owner = _owner(receiver)
        set_aside = queue.claim(owner)
        if set_aside:
            log.warning("notify.queue_reassigned", receiver=receiver.name, owner=owner, set_aside=set_aside)
        worker = _Worker(receiver, queue, notifier, self.retry, asyncio.Event())
        self._workers[receiver.name] = worker
        self._spawn(f"notify:{receiver.name}", worker.run())
        if queue.backlog:
            log.info("notify.resume", receiver=receiver.name, backlog=queue.backlog)

    async def _stop_workers(self, workers: list[_Worker]) -> None:
        """Let each worker finish the delivery in progress (STOP_GRACE_S), then cancel it."""
        for worker in workers:
            worker.stopping.set()
        tasks = [self._tasks.pop(f"notify:{w.receiver.name}") for w in workers
                 if f"notify:{w.receiver.name}" in self._tasks]
        _, late = await asyncio.wait(tasks, timeout=STOP_GRACE_S) if tasks else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for worker in workers:
            try:
                await worker.notifier.close()
            except Exception:
                log.exception("notify.close_failed", receiver=worker.receiver.name)

    async def reconfigure(self, config: NotifyConfig) -> dict[str, list[str]]:
        """Swap the receivers for those of `config` while running, losing no queued event.

        A receiver whose name and routing (kind and tenants) stay keeps its durable queue,
        so what waits for it is delivered with its new settings; an identical receiver
        keeps running untouched. A reused name with other routing sets its backlog aside
        (it may be another tenant's). A removed receiver's queue file stays on disk and
        resumes if the receiver comes back. Notifiers are built before anything stops, so
        a config they refuse leaves the running receivers as they were.
        Returns the receiver names by outcome: kept, restarted, added, removed.
        """
        if not self.running:
            self.config = config
            return {"kept": [], "restarted": [], "added": [r.name for r in config.receivers], "removed": []}
        async with self._routing:
            old = dict(self._workers)
            wanted = {r.name: r for r in config.receivers}
            kept = [n for n, r in wanted.items() if n in old and old[n].receiver == r]
            restarted = [n for n in wanted if n in old and n not in kept]
            added = [n for n in wanted if n not in old]
            removed = [n for n in old if n not in wanted]
            notifiers: dict[str, Notifier] = {}
            queues: dict[str, DurableQueue] = {}
            try:
                for name in (*restarted, *added):
                    notifiers[name] = make_notifier(wanted[name])
                for name in added:
                    queues[name] = DurableQueue(self._queue_path(wanted[name]))
            except BaseException:
                for queue in queues.values():
                    queue.close()
                raise
            await self._stop_workers([old[n] for n in (*restarted, *removed)])
            for name in removed:
                old[name].queue.close()
                del self._workers[name]
            for name in restarted:
                queues[name] = old[name].queue  # same name and file: what waits is delivered
            for name in (*restarted, *added):
                self._start_worker(wanted[name], queues[name], notifiers[name])
            # Keep the configured order (status pages list receivers as configured).
            self._workers = {name: self._workers[name] for name in wanted}
            self.config = config
        outcome = {"kept": kept, "restarted": restarted, "added": added, "removed": removed}
        log.info("notify.reconfigured", **{k: len(v) for k, v in outcome.items()})
        return outcome

    def _spawn(self, name: str, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks[name] = task
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("notify.task_failed", task=task.get_name(), error=f"{type(exc).__name__}: {exc}",
                      exc_info=exc)

    async def _dispatch(self) -> None:
        assert self._inbox is not None
        while True:
            event = await self._inbox.get()
            async with self._routing:
                self.submit(event)

    def submit(self, event: Event) -> None:
        """Route `event` and store it durably in each receiving queue, now."""
        for worker in self._workers.values():
            if not worker.receiver.wants(event):
                continue
            try:
                worker.queue.put(event)
            except Exception:
                # A full disk or broken file for one receiver must not starve the others.
                log.exception("notify.enqueue_failed", receiver=worker.receiver.name,
                              event_type=str(event.type), tenant=event.tenant)
                continue
            worker.wake.set()

    async def stop(self) -> None:
        if not self.running:
            return
        assert self._dispatcher is not None and self._inbox is not None
        self._dispatcher.cancel()
        await asyncio.gather(self._dispatcher, return_exceptions=True)
        self.bus.unsubscribe(BUS_SUBSCRIBER)
        while not self._inbox.empty():  # events published but not yet routed: keep them
            self.submit(self._inbox.get_nowait())
        await self._stop_workers(list(self._workers.values()))
        for worker in self._workers.values():
            worker.queue.close()
        self._workers.clear()
        self._tasks.clear()
        self._dispatcher = self._inbox = None
        log.info("notify.stopped")

    async def __aenter__(self) -> NotifierManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp: `app.cleanup_ctx.append(manager.cleanup_ctx)` starts and stops with the app."""
        await self.start()
        app[NOTIFIER_MANAGER] = self
        yield
        await self.stop()

    def status(self) -> dict[str, ReceiverStatus]:
        """Each receiver's health; never a secret (receivers are shown by name and kind)."""
        out = {}
        for name, w in self._workers.items():
            task = self._tasks.get(f"notify:{name}")
            running = task is not None and not task.done()
            out[name] = ReceiverStatus(
                name=name, kind=w.receiver.kind, tenants=w.receiver.tenants,
                healthy=running and w.consecutive_failures == 0 and not w.refused_recipients, running=running,
                last_success=w.queue.last_success, last_error=w.last_error, last_error_at=w.last_error_at,
                consecutive_failures=w.consecutive_failures, backlog=w.queue.backlog,
                delivered=w.queue.delivered, dead_letters=w.queue.dead_letters,
                refused_recipients=dict(w.refused_recipients))
        return out

    def pending(self, name: str) -> list[Event]:
        return self._workers[name].queue.pending()


NOTIFIER_MANAGER = web.AppKey("notifier_manager", NotifierManager)
