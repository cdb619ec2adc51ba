"""The appliance's side of the fleet (issue 17): telemetry up, configuration down, never in the way.

    agent = FleetAgent(config.fleet, token, appliance, bus, state_dir)
    async with agent: ...          # three named tasks: collect, send, sync

- **collect** (every `batch_every_s`, 1 s): the tenants' per-second rows newer than the last sent,
  the per-destination rows (attacked and top-N destinations), and the incident events from the
  bus, tagged with the site and the appliance's own time, appended as one batch to the queue.
- **send**: the oldest queued batches, in order, over HTTPS to the central server
  (`securewatch.fleet`); a batch leaves the queue only when the central server acknowledged it
  (stored in the same transaction as its dedup row), so a retry after a lost answer is stored once.
  When the link or the server is down it retries with a backoff of 1 s doubling to 30 s; when it is
  back the backlog goes up oldest first (a backfill), `SEND_MAX_BATCHES` per request.
- **sync** (every `sync_every_s`): reports the version it runs of each configuration document
  (`securewatch.fleet_config`: the tenant set, the policy templates, the NOC receivers), why it
  refused one, and its backlog, and takes the newest of each document for this site when there is
  one: validated whole and applied at once (a bad one keeps the running one and is reported), then
  saved under the state directory so that a restart runs it from its first packet, without the
  central server. Central wins: a set changed locally (SIGHUP, the local SecureWatch) is put back
  to the central one at the next sync.
  The central receivers run next to this site's own (its config file's `[notify]`), which are
  never sent up nor replaced: a central receiver with the name of a local one is refused, whole;
  receivers changed here (the local SecureWatch) become the site's own, the central ones put back.

The queue (`FleetQueue`) is a SQLite file, `STATE_DIR/fleet/queue.db`, bounded by
`QUEUE_MAX_BYTES` of compressed batches and `QUEUE_MAX_BATCHES` batches; when either would be
passed the oldest batches are dropped first (the newest data is the most useful after a long
outage) and counted (`seawall_fleet_queue_dropped_batches` in /metrics). Nothing here is awaited
by the policy engine or the dataplane: mitigation runs whatever happens to the central server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import math
import os
import pathlib
import sqlite3
import ssl
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import aiohttp
import structlog

from appliance import fleet_evidence
from appliance.config import FleetSettings
from policy.events import Event, EventBus, EventType
from tenants import ConfigError, TenantSet
from tenants.templates import name_problems, parse_values

log = structlog.get_logger("seawall.fleet")

QUEUE_FILE = "queue.db"
CONFIG_FILE = "central-config.json"      # the last tenant set taken from the central server
# The other documents taken from the central server, each with its version (securewatch.fleet_config).
DOCUMENT_FILES = {"templates": "central-templates.json", "notify": "central-notify.json"}
QUEUE_MAX_BYTES = 1 << 30                # bytes of compressed batches kept (about 2 h at 10,000 tenants)
QUEUE_MAX_BATCHES = 7 * 86400            # batches kept: a week at one a second (small fleets)
BATCH_EVERY_S = 1.0                      # seconds between batches (the engine's tick at the default tick_ms)
SYNC_EVERY_S = 5.0                       # seconds between configuration checks with the central server
SEND_MAX_BATCHES = 120                   # batches per request: two minutes of backlog
TRAFFIC_FIELDS = ("tenant", "time", "passed_pps", "dropped_pps", "passed_bps", "dropped_bps")   # a batch's columns
SEND_MAX_BYTES = 3 << 20                 # bytes of JSON per request (the server takes 4 MiB)
REFUSED_AS_DATA = (413, 422)             # statuses that refuse the batches sent, not the site or the link
RETRY_FIRST_S = 1.0                      # seconds before the first retry after a failed send
RETRY_MAX_S = 30.0                       # seconds between retries at most
REQUEST_TIMEOUT_S = 30.0                 # seconds one request may take
SERIES_WINDOW_S = 120                    # seconds of each tenant's in-memory series read per batch
ATTACK_EVENTS = (EventType.ATTACK_START, EventType.ATTACK_UPDATE, EventType.ATTACK_END)
BUS_SUBSCRIBER = "fleet"


class FleetHooks(Protocol):
    """What the agent needs of the appliance (`appliance.service.Appliance` offers it)."""

    def current_tenants(self) -> TenantSet: ...
    def apply_tenants(self, tenant_set: TenantSet) -> None: ...
    def traffic_series(self, tenant_id: str, seconds: int) -> list[Any]: ...
    def destination_seconds(self, after: float) -> list[dict[str, Any]]: ...

    # For the documents besides the tenant set (an appliance without them refuses those, reported):
    #   apply_policy_templates(templates: {name: values}, links: {tenant: name}) -> None
    #   notify_config() -> the raw [notify] table running;  async reconfigure_notifiers(table, check_files) -> None


# -- the durable queue ----------------------------------------------------------------------------

class FleetQueue:
    """Batches waiting for the central server, oldest first, in a SQLite file; synchronous (the
    agent calls it on a worker thread of its own)."""

    def __init__(self, path: pathlib.Path, *, max_bytes: int = QUEUE_MAX_BYTES,
                 max_batches: int = QUEUE_MAX_BATCHES) -> None:
        self.max_bytes, self.max_batches = max_bytes, max_batches
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        # NORMAL under WAL: a committed batch survives the process dying; a power cut may lose the last.
        self._db.execute("PRAGMA synchronous = NORMAL")
        with self._transaction():
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            # AUTOINCREMENT: a sequence number is never reused, even after the newest batch was sent.
            self._db.execute("CREATE TABLE IF NOT EXISTS batches (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "created REAL NOT NULL, size INTEGER NOT NULL, body BLOB NOT NULL)")
            # The queue's id: with the sequence numbers, the central server's dedup key. A new queue
            # file (lost, deleted) gets a new id, so its numbers starting again are not taken for retries.
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('id', ?)", (uuid.uuid4().hex,))
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', '0')")
            # An ended incident's PCAP files (`appliance.fleet_evidence`), sent once the batch that
            # carried the incident (after_seq) was acknowledged.
            self._db.execute("CREATE TABLE IF NOT EXISTS evidence (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "after_seq INTEGER NOT NULL, incident TEXT NOT NULL, kind TEXT NOT NULL, "
                             "path TEXT NOT NULL, UNIQUE (incident, kind))")
            # The BGP announcements and withdrawals of this site's incidents, after the batch queued
            # before them (after_seq), so that central knows the incident when they arrive.
            self._db.execute("CREATE TABLE IF NOT EXISTS announcements (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "after_seq INTEGER NOT NULL, body TEXT NOT NULL)")
            # The queue's batches and bytes, kept in meta by each append, ack and trim in its own
            # transaction (`_set_size`): counting the table was a scan of all of it, up to
            # QUEUE_MAX_BATCHES rows (1.1-1.5 s at the bound), after every batch. Counted once
            # here, so that a file from an older agent, or one edited by hand, starts right.
            counted = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM batches").fetchone()
            self._set_size(*counted)
        self.id = self._db.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()[0]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction: the connection is in autocommit mode (isolation_level None), where
        `with self._db` alone leaves each statement its own."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            yield

    def _size(self) -> tuple[int, int]:
        """(batches, bytes) queued, as meta keeps them."""
        kept = dict(self._db.execute("SELECT key, value FROM meta WHERE key IN ('batches', 'bytes')"))
        return int(kept["batches"]), int(kept["bytes"])

    def _set_size(self, batches: int, size: int) -> None:
        """Keep (batches, bytes) in meta, in the caller's transaction."""
        self._db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             (("batches", str(batches)), ("bytes", str(size))))

    def append(self, batch: dict[str, Any]) -> int:
        """Queue one batch; returns its sequence number. Drops the oldest batches past the bounds."""
        # default=str: an event's details may hold values JSON has no type for (numpy scalars, paths).
        # allow_nan=False: NaN and Infinity are no JSON; central refuses them. Such a value becomes
        # null, which central refuses by name where it needs a number, and stores elsewhere.
        try:
            text = json.dumps(batch, separators=(",", ":"), default=str, allow_nan=False)
        except ValueError:
            log.warning("fleet.non_finite_number_nulled")
            text = json.dumps(_finite_only(batch), separators=(",", ":"), default=str, allow_nan=False)
        body = zlib.compress(text.encode(), 6)
        with self._transaction():
            seq = self._db.execute("INSERT INTO batches (created, size, body) VALUES (?, ?, ?)",
                                   (time.time(), len(body), body)).lastrowid
            count, size = self._size()
            count, size, dropped = count + 1, size + len(body), 0
            while count > self.max_batches or size > self.max_bytes:
                oldest = self._db.execute("SELECT seq, size FROM batches ORDER BY seq LIMIT 1").fetchone()
                if oldest is None or oldest[0] == seq:
                    break   # never drop the batch just added: one batch over the bound is kept
                self._db.execute("DELETE FROM batches WHERE seq = ?", (oldest[0],))
                count, size, dropped = count - 1, size - oldest[1], dropped + 1
            self._set_size(count, size)
            if dropped:
                self._db.execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + ? AS TEXT) "
                                 "WHERE key = 'dropped'", (dropped,))
                log.warning("fleet.queue_dropped", batches=dropped, kept=count, bytes=size)
        return int(seq)

    def oldest(self, max_batches: int, max_bytes: int) -> list[dict[str, Any]]:
        """The oldest queued batches (each with its "seq"), at most `max_batches` and `max_bytes` of
        JSON as sent (uncompressed: what the server's request limit counts), but always the oldest one."""
        out, total = [], 0
        for seq, body in self._db.execute("SELECT seq, body FROM batches ORDER BY seq LIMIT ?", (max_batches,)):
            raw = zlib.decompress(body)
            if out and total + len(raw) > max_bytes:
                break
            total += len(raw)
            out.append({"seq": seq, **json.loads(raw)})
        return out

    def ack(self, up_to: int) -> int:
        """Forget the batches up to sequence `up_to` (the central server stored them); how many."""
        with self._transaction():
            # A range of the primary key: the batches acknowledged (SEND_MAX_BATCHES), not the queue.
            acked, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM batches WHERE seq <= ?", (up_to,)).fetchone()
            if acked:
                self._db.execute("DELETE FROM batches WHERE seq <= ?", (up_to,))
                count, total = self._size()
                self._set_size(count - acked, total - size)
        return int(acked)

    def add_evidence(self, after_seq: int, incident: str, kind: str, path: str) -> None:
        """Queue a PCAP file to send after batch `after_seq`; a second for the same (incident,
        kind) replaces the first (the newer file is what there is)."""
        with self._db:
            self._db.execute("INSERT INTO evidence (after_seq, incident, kind, path) VALUES (?, ?, ?, ?) "
                             "ON CONFLICT (incident, kind) DO UPDATE SET after_seq = excluded.after_seq, "
                             "path = excluded.path", (after_seq, incident, kind, path))

    def next_evidence(self) -> tuple[int, str, str, str] | None:
        """The oldest queued file whose incident's batch was acknowledged (no batch at or before
        its after_seq is queued): (id, incident, kind, path)."""
        row = self._db.execute(
            "SELECT id, incident, kind, path FROM evidence WHERE after_seq < "
            "COALESCE((SELECT MIN(seq) FROM batches), 9223372036854775807) ORDER BY id LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), row[1], row[2], row[3])

    def evidence_done(self, evidence_id: int) -> None:
        with self._db:
            self._db.execute("DELETE FROM evidence WHERE id = ?", (evidence_id,))

    def add_announcements(self, items: list[dict[str, Any]]) -> None:
        """Queue announcements to send after the newest batch queued so far (the incident's)."""
        with self._db:
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'batches'").fetchone()
            self._db.executemany("INSERT INTO announcements (after_seq, body) VALUES (?, ?)",
                                 [(row[0] if row else 0, json.dumps(a, default=str)) for a in items])

    def due_announcements(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """The oldest queued announcements whose batch was acknowledged: (id, announcement)."""
        rows = self._db.execute(
            "SELECT id, body FROM announcements WHERE after_seq < "
            "COALESCE((SELECT MIN(seq) FROM batches), 9223372036854775807) ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(int(r[0]), json.loads(r[1])) for r in rows]

    def announcements_done(self, up_to: int) -> None:
        with self._db:
            self._db.execute("DELETE FROM announcements WHERE id <= ?", (up_to,))

    def evidence_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM evidence").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        """What is queued; a few primary-key lookups, whatever the backlog (the agent asks after
        every batch)."""
        count, size = self._size()
        # The first batch by seq (not the table's MIN(created), a scan): the oldest queued.
        oldest = self._db.execute("SELECT created FROM batches ORDER BY seq LIMIT 1").fetchone()
        dropped = int(self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0])
        return {"batches": count, "bytes": size, "dropped_batches": dropped,
                "oldest_age_s": round(time.time() - oldest[0], 1) if oldest else 0.0,
                "max_bytes": self.max_bytes, "max_batches": self.max_batches}

    def close(self) -> None:
        self._db.close()


# -- the saved configuration ----------------------------------------------------------------------

def saved_config(state_dir: pathlib.Path) -> tuple[int, TenantSet] | None:
    """(version, tenant set) last taken from the central server, or None (none yet, or unreadable:
    then the config file's tenants run until the central server is reached)."""
    path = pathlib.Path(state_dir) / "fleet" / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
        return int(data["version"]), TenantSet.from_dicts(data["tenants"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        log.error("fleet.saved_config_unusable", path=str(path), error=str(exc))
        return None


def _save_config(state_dir: pathlib.Path, version: int, tenants: list[dict[str, Any]]) -> None:
    path = pathlib.Path(state_dir) / "fleet" / CONFIG_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": version, "tenants": tenants}))
    os.replace(tmp, path)


def saved_document(state_dir: pathlib.Path, kind: str) -> tuple[int, Any] | None:
    """(version, document) of `kind` ("templates", "notify") last taken from the central server."""
    path = pathlib.Path(state_dir) / "fleet" / DOCUMENT_FILES[kind]
    try:
        data = json.loads(path.read_text())
        return int(data["version"]), data["document"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("fleet.saved_document_unusable", path=str(path), error=str(exc))
        return None


def _save_document(state_dir: pathlib.Path, kind: str, version: int, document: Any) -> None:
    """Written atomically, readable by this user only: the receivers' document holds their secrets."""
    path = pathlib.Path(state_dir) / "fleet" / DOCUMENT_FILES[kind]
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"version": version, "document": document}, f)
    os.replace(tmp, path)


def checked_templates(document: Any) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(templates, links) of a templates document; ConfigError naming every problem."""
    if not (isinstance(document, dict) and isinstance(document.get("templates"), dict)
            and isinstance(document.get("links"), dict)):
        raise ConfigError(["templates: expected {\"templates\": {name: policy}, \"links\": {tenant: name}}"])
    problems: list[str] = []
    templates: dict[str, dict[str, Any]] = {}
    for name, values in document["templates"].items():
        problems += name_problems(name, f"templates.{name}")
        try:
            templates[name] = parse_values(values, f"templates.{name}")
        except ConfigError as exc:
            problems += exc.problems
    for tenant, name in document["links"].items():
        if name not in document["templates"]:
            problems.append(f"links.{tenant}: no template {name!r}")
    if problems:
        raise ConfigError(problems)
    return templates, dict(document["links"])


def merged_notify(local: dict[str, Any], central: dict[str, Any]) -> dict[str, Any]:
    """This site's own receivers with the central ones after them, kind by kind. Where queues live
    (`state_dir`) stays the site's. A name used by both is refused by the parser, whole."""
    merged = dict(local)
    for kind, entries in central.items():
        if kind == "state_dir":
            continue
        mine = local.get(kind, [])
        merged[kind] = [*mine, *entries] if isinstance(mine, list) and isinstance(entries, list) else entries
    return merged


# -- the agent ------------------------------------------------------------------------------------

def _finite_only(value: Any) -> Any:
    """`value` with every NaN and infinity (no JSON numbers) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_only(v) for v in value]
    return value


class CentralRefused(Exception):
    """The central server answered with an error status (refused the token, the data)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def fleet_problems(settings: FleetSettings) -> list[str]:
    """What `seawall run` refuses before it starts: a token file it cannot read, a ca_file that
    holds no certificate. Each problem names its key."""
    problems = []
    try:
        settings.token()
    except ConfigError as exc:
        problems.extend(exc.problems)
    if settings.ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(settings.ca_file))
        except ssl.SSLError as exc:   # an OSError too: caught first
            problems.append(f"[fleet] ca_file: {str(settings.ca_file)!r} holds no PEM certificate ({exc.reason or exc})")
        except OSError as exc:
            problems.append(f"[fleet] ca_file: cannot read {str(settings.ca_file)!r}: {exc.strerror}")
    return problems


def client_ssl_context(settings: FleetSettings) -> ssl.SSLContext | bool:
    """TLS for the central server: its certificate checked against ca_file, else the system's CAs."""
    if not settings.central.startswith("https://"):
        return False
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class FleetAgent:
    """Collects, queues and sends telemetry; takes configuration. Start and stop with `async with`."""

    def __init__(self, settings: FleetSettings, token: str, appliance: FleetHooks, bus: EventBus | None,
                 state_dir: pathlib.Path, *, batch_every_s: float = BATCH_EVERY_S, sync_every_s: float = SYNC_EVERY_S,
                 queue_max_bytes: int = QUEUE_MAX_BYTES, queue_max_batches: int = QUEUE_MAX_BATCHES,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.site = settings.site
        self._token = token
        self.appliance = appliance
        self.bus = bus
        self.state_dir = pathlib.Path(state_dir)
        self.batch_every_s, self.sync_every_s = batch_every_s, sync_every_s
        self.clock = clock
        # One thread owns the queue's SQLite connection: the loop never waits on the disk.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-queue")
        self.queue = FleetQueue(self.state_dir / "fleet" / QUEUE_FILE, max_bytes=queue_max_bytes,
                                max_batches=queue_max_batches)
        saved = saved_config(self.state_dir)
        self.version: int | None = saved[0] if saved else None     # the central version this appliance runs
        self.applied: TenantSet | None = saved[1] if saved else None
        self.central_version: int | None = None
        # The templates and the receivers from the central server: version and document of each.
        self.versions: dict[str, int | None] = {}
        self.documents: dict[str, Any] = {}
        for kind in DOCUMENT_FILES:
            found = saved_document(self.state_dir, kind)
            self.versions[kind], self.documents[kind] = found if found else (None, None)
        self.central_versions: dict[str, int] = {}
        self.config_errors: dict[str, str] = {}   # document -> why the newest one was refused
        # This site's own receivers (its config file's [notify]), before any central one joins them.
        notify_config = getattr(appliance, "notify_config", None)
        self._local_notify: dict[str, Any] = notify_config() if callable(notify_config) else {}
        self.sent_batches = 0
        self.rejected_batches = 0
        # Rows the central server acknowledged but stored at no resolution (older than its minute
        # rollups keep, or this site's clock more than its partitions ahead), and rows it folded
        # straight into its minutes (older than its seconds keep): counted, logged, in /metrics.
        self.unstored_rows = 0
        self.folded_rows = 0
        self.last_sent: float | None = None      # when the central server last acknowledged a batch
        self.last_error: str | None = None
        self._last_seen: dict[str, float] = {}   # tenant -> time of the newest row queued
        self._last_destination = 0.0
        self._announcements: list[dict[str, Any]] = []   # BGP changes taken off the bus, not yet queued
        self._inbox: asyncio.Queue[Event] | None = None
        self._queued = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._stats: dict[str, Any] = self.queue.stats()

    async def __aenter__(self) -> FleetAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        # What was last taken from the central server runs from now on, without waiting for it.
        for kind, document in self.documents.items():
            if document is not None:
                try:
                    await self._run_document(kind, document)
                except (ConfigError, ValueError, RuntimeError) as exc:
                    log.error("fleet.saved_document_refused", document=kind, version=self.versions[kind],
                              error=str(exc)[:300])
        if self.bus is not None:
            self._inbox = self.bus.subscribe(BUS_SUBSCRIBER)
        for name, coro in (("collect", self._collect_loop()), ("send", self._send_loop()),
                           ("sync", self._sync_loop())):
            task = asyncio.get_running_loop().create_task(coro, name=f"fleet:{name}")
            task.add_done_callback(self._done)
            self._tasks.append(task)
        log.info("fleet.started", central=self.settings.central, site=self.site, queue=self.queue.id,
                 running_version=self.version, backlog=self._stats["batches"])

    @staticmethod
    def _done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("fleet.task_failed", task=task.get_name(), error=repr(task.exception()),
                      exc_info=task.exception())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self.collect()   # what arrived since the last batch: queued, sent after the restart
        if self.bus is not None and self._inbox is not None:
            self.bus.unsubscribe(BUS_SUBSCRIBER)
        if self._session is not None:
            await self._session.close()
        await self.in_queue(self.queue.close)
        self._executor.shutdown(wait=True)
        log.info("fleet.stopped", backlog=self._stats["batches"])

    async def in_queue(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the queue's own thread (its SQLite connection lives there)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def status(self) -> dict[str, Any]:
        """The status's `fleet` (and the /metrics of the queue)."""
        return {"central": self.settings.central, "site": self.site, "queue": dict(self._stats),
                "sent_batches": self.sent_batches, "rejected_batches": self.rejected_batches,
                "unstored_rows": self.unstored_rows, "folded_rows": self.folded_rows,
                "running_version": self.version, "central_version": self.central_version,
                "running_versions": {"tenants": self.version, **self.versions},
                "central_versions": dict(self.central_versions), "config_errors": dict(self.config_errors),
                "last_sent": self.last_sent, "last_error": self.last_error}

    # -- collect ----------------------------------------------------------------------------

    def _batch(self) -> dict[str, Any] | None:
        # Columns, not rows (`securewatch.fleet`'s "traffic_columns"): a third of the decoding on
        # the central server, which takes every site's seconds.
        columns: dict[str, list[Any]] = {field: [] for field in TRAFFIC_FIELDS}
        tenant_ids, times = columns["tenant"], columns["time"]
        passed_pps, dropped_pps = columns["passed_pps"], columns["dropped_pps"]
        passed_bps, dropped_bps = columns["passed_bps"], columns["dropped_bps"]
        now = self.clock()
        for tenant in self.appliance.current_tenants():
            after = self._last_seen.get(tenant.id)
            # Only the seconds since the last batch (and one of slack): a second each, usually.
            window = SERIES_WINDOW_S if after is None else max(2, min(SERIES_WINDOW_S, int(now - after) + 2))
            after = 0.0 if after is None else after
            rows = [r for r in self.appliance.traffic_series(tenant.id, window) if float(r["time"]) > after]
            for r in rows:
                tenant_ids.append(tenant.id)
                times.append(float(r["time"]))
                passed_pps.append(float(r["passed_pps"]))
                dropped_pps.append(float(r["dropped_pps"]))
                passed_bps.append(float(r["passed_bps"]))
                dropped_bps.append(float(r["dropped_bps"]))
            if rows:
                self._last_seen[tenant.id] = float(rows[-1]["time"])
        destinations = self.appliance.destination_seconds(self._last_destination)
        if destinations:
            self._last_destination = max(float(d["time"]) for d in destinations)
        events = []
        while self._inbox is not None and not self._inbox.empty():
            event = self._inbox.get_nowait()
            if event.type in ATTACK_EVENTS and event.incident_id and event.tenant:
                events.append(event.to_dict())
            elif event.type == EventType.ESCALATION and event.incident_id and event.tenant:
                self._announcements.append(fleet_evidence.announcement(event, self.appliance))
        if not (tenant_ids or destinations or events):
            return None
        return {"site": self.site, "time": now, "traffic_columns": columns, "destinations": destinations,
                "events": events}

    async def collect(self) -> int | None:
        """Queue one batch of what is new; its sequence number (None: nothing new)."""
        batch = self._batch()
        if batch is None:
            await self._queue_announcements()
            return None
        seq = await self.in_queue(self.queue.append, batch)
        await self._queue_announcements()
        for incident, kind, path in fleet_evidence.pcap_files(batch["events"]):
            await self.in_queue(self.queue.add_evidence, seq, incident, kind, path)
        self._stats = await self.in_queue(self.queue.stats)
        self._queued.set()
        return seq

    async def _queue_announcements(self) -> None:
        if self._announcements:
            items, self._announcements = self._announcements, []
            await self.in_queue(self.queue.add_announcements, items)
            self._queued.set()

    async def _collect_loop(self) -> None:
        while True:
            try:
                await self.collect()
            except Exception:
                log.exception("fleet.collect_failed")
            await asyncio.sleep(self.batch_every_s)   # the batching period, not a wait for an outcome

    # -- send --------------------------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                                                  headers={"Authorization": f"Bearer {self._token}"})
        return self._session

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        self.session()
        # Compact JSON: the queue's budget per request (SEND_MAX_BYTES) is counted the same way.
        try:
            data = json.dumps(body, separators=(",", ":"), default=str, allow_nan=False)
        except ValueError as exc:
            # A batch queued before allow_nan=False held a NaN: refused as central would (422),
            # so that send_once drops that one batch rather than the loop failing on it forever.
            raise CentralRefused(422, f"not JSON: {exc}") from None
        async with self._session.post(self.settings.central + path, data=data,
                                      headers={"Content-Type": "application/json"},
                                      ssl=client_ssl_context(self.settings)) as response:
            if response.status != 200:
                text = await response.text()
                with contextlib.suppress(ValueError):
                    text = json.loads(text).get("error", text)
                raise CentralRefused(response.status, str(text)[:300])
            return await response.json()

    async def send_once(self, max_batches: int = SEND_MAX_BATCHES) -> int:
        """Send the oldest queued batches once; the number acknowledged (0: the queue is empty).
        Raises aiohttp.ClientError, TimeoutError or CentralRefused when not delivered."""
        batches = await self.in_queue(self.queue.oldest, max_batches, SEND_MAX_BYTES)
        if not batches:
            return 0
        try:
            answer = await self._post("/api/v1/fleet/site/ingest",
                                      {"site": self.site, "queue": self.queue.id, "batches": batches})
        except CentralRefused as exc:
            if exc.status not in REFUSED_AS_DATA or len(batches) > 1:
                raise
            # One batch the server will never take (malformed, or too large for one request: a bug
            # on one side): drop it, or it blocks the rest.
            await self.in_queue(self.queue.ack, batches[0]["seq"])
            self.rejected_batches += 1
            log.error("fleet.batch_rejected", seq=batches[0]["seq"], error=str(exc))
            return 0
        acked = [int(s) for s in answer.get("acked", [])]
        sent = [b["seq"] for b in batches]
        if acked != sent:
            raise CentralRefused(502, f"acknowledged {acked[:5]}... for {sent[:5]}...")
        await self.in_queue(self.queue.ack, sent[-1])
        self._stats = await self.in_queue(self.queue.stats)
        self.sent_batches += len(sent)
        self.last_sent = self.clock()
        if answer.get("duplicates"):
            log.info("fleet.retry_deduplicated", batches=answer["duplicates"])
        unstored, folded = int(answer.get("outside") or 0), int(answer.get("folded") or 0)
        self.unstored_rows += unstored
        self.folded_rows += folded
        if unstored:
            log.warning("fleet.rows_stored_nowhere", rows=unstored, first_seq=sent[0], last_seq=sent[-1],
                        hint="queued longer than the central minute retention, or this clock is ahead")
        if folded:
            log.info("fleet.rows_folded_into_minutes", rows=folded)
        return len(sent)

    async def send_announcements_once(self) -> bool:
        """Send the oldest announcements due; True when some left the queue (stored, or dropped as
        refused data), False when none is due. Raises as send_once when not delivered."""
        due = await self.in_queue(self.queue.due_announcements, fleet_evidence.SEND_MAX_ANNOUNCEMENTS)
        if not due:
            return False
        try:
            await self._post(fleet_evidence.ANNOUNCEMENTS_PATH,
                             {"site": self.site, "announcements": [a for _, a in due]})
        except CentralRefused as exc:
            if exc.status not in REFUSED_AS_DATA:
                raise
            log.error("fleet.announcements_rejected", count=len(due), error=str(exc))
        await self.in_queue(self.queue.announcements_done, due[-1][0])
        return True

    async def send_evidence_once(self) -> bool:
        """Send the oldest PCAP file due (`appliance.fleet_evidence`); True when one left the queue
        (sent, or dropped as refused data), False when none is due. Raises aiohttp.ClientError,
        TimeoutError or CentralRefused when not delivered (it stays queued)."""
        due = await self.in_queue(self.queue.next_evidence)
        if due is None:
            return False
        evidence_id, incident, kind, path = due
        data = await self.in_queue(fleet_evidence.read_file, path)
        if data is not None:
            params = {"site": self.site, "incident": incident, "kind": kind,
                      "sha256": hashlib.sha256(data).hexdigest()}
            async with self.session().post(self.settings.central + fleet_evidence.EVIDENCE_PATH, params=params,
                                           data=data, headers={"Content-Type": "application/vnd.tcpdump.pcap"},
                                           ssl=client_ssl_context(self.settings)) as response:
                text = await response.text()
                if response.status in fleet_evidence.DROPPED_AS_DATA:
                    log.error("fleet.evidence_rejected", incident=incident, kind=kind, status=response.status,
                              error=text[:300])
                elif response.status != 200:
                    raise CentralRefused(response.status, text[:300])
                else:
                    log.info("fleet.evidence_sent", incident=incident, kind=kind, bytes=len(data))
        await self.in_queue(self.queue.evidence_done, evidence_id)
        return True

    async def _send_loop(self) -> None:
        delay = RETRY_FIRST_S
        max_batches = SEND_MAX_BATCHES
        while True:
            try:
                sent = await self.send_once(max_batches)
                if sent:
                    if self.last_error is not None:
                        log.info("fleet.link_restored", backlog=self._stats["batches"])
                    self.last_error, delay, max_batches = None, RETRY_FIRST_S, SEND_MAX_BATCHES
                    continue   # more backlog, or nothing: the empty check is cheap
                if await self.send_announcements_once():
                    continue
                if await self.send_evidence_once():
                    continue   # one file a turn: batches queued meanwhile go first
                self._queued.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._queued.wait(), self.batch_every_s)
                continue
            except CentralRefused as exc:
                if exc.status in REFUSED_AS_DATA:
                    max_batches = 1   # find the one batch it refuses
                self._failed(exc)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self._failed(exc)
            await asyncio.sleep(delay)   # the retry backoff
            delay = min(delay * 2, RETRY_MAX_S)

    def _failed(self, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"[:300]
        if error != self.last_error:
            log.warning("fleet.send_failed", error=error, backlog=self._stats["batches"])
        self.last_error = error

    # -- sync --------------------------------------------------------------------------------

    async def sync_once(self) -> bool:
        """Report the versions run and take newer documents; True when one was applied."""
        answer = await self._post("/api/v1/fleet/site/sync", {
            "site": self.site, "time": self.clock(), "running_version": self.version,
            "running_versions": dict(self.versions), "config_errors": dict(self.config_errors),
            "backlog": self._stats["batches"],
            "status": {"queue": self._stats, "tenants": len(self.appliance.current_tenants()),
                       "local_receivers": sum(len(v) for v in self._local_notify.values()
                                              if isinstance(v, list)),
                       "sent_batches": self.sent_batches}})
        version = int(answer["version"])
        self.central_version = version
        self.central_versions = {k: int(v) for k, v in answer.get("versions", {"tenants": version}).items()}
        applied = False
        if "tenants" in answer and version > 0:   # version 0: the central server holds no tenant set yet
            applied = await self._take_tenants(version, answer["tenants"])
        elif self.applied is not None and self.appliance.current_tenants() != self.applied:
            self.appliance.apply_tenants(self.applied)   # changed here behind the fleet's back: central wins
            log.info("fleet.config_restored", version=self.version, tenants=len(self.applied))
            applied = True
        for kind in DOCUMENT_FILES:
            if kind in answer and self.central_versions.get(kind, 0) > 0:
                applied = await self._take_document(kind, self.central_versions[kind], answer[kind]) or applied
        if "notify" not in answer:
            applied = await self._notify_restored() or applied
        return applied

    async def _notify_restored(self) -> bool:
        """The central receivers back next to the site's own after the site's receivers were changed
        here (the local SecureWatch's NOC receivers page runs its table alone): what runs now, less
        the central receivers, is the site's own from now on. True when they were put back."""
        central = self.documents.get("notify")
        notify_config = getattr(self.appliance, "notify_config", None)
        reconfigure = getattr(self.appliance, "reconfigure_notifiers", None)
        if not isinstance(central, dict) or not callable(notify_config) or reconfigure is None:
            return False
        running = notify_config()
        if running == merged_notify(self._local_notify, central):
            return False
        theirs = {(kind, e.get("name")) for kind, entries in central.items() if isinstance(entries, list)
                  for e in entries if isinstance(e, dict)}
        local = {kind: [e for e in entries if not (isinstance(e, dict) and (kind, e.get("name")) in theirs)]
                 if isinstance(entries, list) else entries for kind, entries in running.items()}
        try:
            await reconfigure(merged_notify(local, central), check_files=False)
        except (ConfigError, ValueError, RuntimeError) as exc:
            log.error("fleet.notify_restore_refused", version=self.versions["notify"], error=str(exc)[:300])
            return False
        self._local_notify = local
        log.info("fleet.notify_restored", version=self.versions["notify"])
        return True

    async def _take_tenants(self, version: int, tables: Any) -> bool:
        try:
            tenant_set = await asyncio.to_thread(TenantSet.from_dicts, tables)
            self.appliance.apply_tenants(tenant_set)
        except ConfigError as exc:
            log.error("fleet.config_refused", version=version, problems=exc.problems[:10])
            self.config_errors["tenants"] = f"version {version}: " + "; ".join(exc.problems[:5])
            return False
        await asyncio.to_thread(_save_config, self.state_dir, version, tables)
        self.version, self.applied = version, tenant_set
        self.config_errors.pop("tenants", None)
        log.info("fleet.config_applied", version=version, tenants=len(tenant_set))
        return True

    async def _run_document(self, kind: str, document: Any) -> None:
        """Run one document on the appliance, whole or not at all; ConfigError/ValueError when refused."""
        if kind == "templates":
            templates, links = checked_templates(document)
            apply = getattr(self.appliance, "apply_policy_templates", None)
            if apply is None:
                raise ConfigError(["templates: this appliance cannot run policy templates from the centre"])
            apply(templates, links)
            return
        if not isinstance(document, dict):
            raise ConfigError(["notify: expected the [notify] table"])
        reconfigure = getattr(self.appliance, "reconfigure_notifiers", None)
        if reconfigure is None:
            raise ConfigError(["notify: this appliance cannot run NOC receivers from the centre"])
        await reconfigure(merged_notify(self._local_notify, document), check_files=False)

    async def _take_document(self, kind: str, version: int, document: Any) -> bool:
        try:
            await self._run_document(kind, document)
        except (ConfigError, ValueError, RuntimeError) as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            log.error("fleet.document_refused", document=kind, version=version, problems=problems[:10])
            self.config_errors[kind] = f"version {version}: " + "; ".join(problems[:5])
            return False
        await asyncio.to_thread(_save_document, self.state_dir, kind, version, document)
        self.versions[kind], self.documents[kind] = version, document
        self.config_errors.pop(kind, None)
        log.info("fleet.document_applied", document=kind, version=version)
        return True

    async def _sync_loop(self) -> None:
        while True:
            try:
                if await self.sync_once():
                    await self.sync_once()   # report the version now in force at once
            except (CentralRefused, aiohttp.ClientError, TimeoutError, OSError, KeyError, ValueError) as exc:
                self._failed(exc)
            await asyncio.sleep(self.sync_every_s)   # the polling period
