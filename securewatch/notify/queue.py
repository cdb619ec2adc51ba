"""A durable outbound queue per receiver: one SQLite file in WAL mode.

Events are written here the moment the manager receives them, and leave only
when the receiver has taken them (or refused them for good), so a restart or a
receiver that is down loses nothing. While events wait, several ATTACK_UPDATE
events of one incident are merged into the latest one: a NOC that was
unreachable for ten minutes wants the current state, not 600 stale updates.
START and END are never merged, and nothing is reordered within an incident.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sqlite3
import time
import uuid

from policy.events import Event, EventType

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids are never reused
    incident_id TEXT,
    type        TEXT NOT NULL,
    payload     TEXT NOT NULL,                      -- Event.to_dict() as JSON
    enqueued_at REAL NOT NULL,                      -- seconds since the epoch
    merged      INTEGER NOT NULL DEFAULT 0          -- updates folded into this row
);
CREATE INDEX IF NOT EXISTS outbox_incident ON outbox (incident_id, id);
CREATE TABLE IF NOT EXISTS dead_letter (
    id        INTEGER PRIMARY KEY,
    payload   TEXT NOT NULL,
    error     TEXT NOT NULL,
    failed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Queued:
    """One event waiting for delivery. `delivery_id` is unique for the life of the
    queue file, across restarts, so a receiver can drop a duplicate."""

    row_id: int
    delivery_id: str
    event: Event
    merged: int


class DurableQueue:
    """FIFO of events on disk for one receiver. Not thread-safe: one event loop owns it."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)  # autocommit; explicit transactions
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: each commit reaches the disk, so an acknowledged enqueue survives a power cut.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")  # milliseconds
        self._db.executescript(_SCHEMA)
        self._uid = self._meta("uid") or self._set_meta("uid", uuid.uuid4().hex[:12])
        self._inflight: int | None = None

    def close(self) -> None:
        self._db.close()

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> str:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))
        return value

    def claim(self, owner: str) -> int:
        """Bind the queue to the receiver `owner` (its kind and tenants). If the file was
        another receiver's (a config edit reused the name), its waiting events are set
        aside, never sent: they may belong to another tenant. Returns how many."""
        self._db.execute("BEGIN IMMEDIATE")
        previous = self._meta("owner")
        moved = 0
        if previous is not None and previous != owner:
            moved = self._db.execute(
                "INSERT INTO dead_letter (id, payload, error, failed_at) SELECT id, payload, ?, ? FROM outbox",
                (f"queued for {previous}, receiver is now {owner}", time.time())).rowcount
            self._db.execute("DELETE FROM outbox")
        self._set_meta("owner", owner)
        self._db.execute("COMMIT")
        return moved

    def put(self, event: Event) -> int:
        """Store `event`; returns its row id (the merged row's id when coalesced)."""
        payload = json.dumps(event.to_dict(), separators=(",", ":"), default=str)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if event.type is EventType.ATTACK_UPDATE and event.incident_id is not None:
                last = self._db.execute(
                    "SELECT id, type FROM outbox WHERE incident_id = ? ORDER BY id DESC LIMIT 1",
                    (event.incident_id,)).fetchone()
                # Merge only into an update that is the incident's latest queued event and
                # is not being sent right now: then no START/END is overtaken and nothing
                # half-delivered changes under the sender.
                if last and last[1] == EventType.ATTACK_UPDATE and last[0] != self._inflight:
                    self._db.execute("UPDATE outbox SET payload = ?, merged = merged + 1 WHERE id = ?",
                                     (payload, last[0]))
                    self._db.execute("COMMIT")
                    return last[0]
            cur = self._db.execute(
                "INSERT INTO outbox (incident_id, type, payload, enqueued_at) VALUES (?, ?, ?, ?)",
                (event.incident_id, str(event.type), payload, time.time()))
            self._db.execute("COMMIT")
            return cur.lastrowid
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def head(self) -> Queued | None:
        """The oldest event, marked in flight (no longer a merge target) until ack/release."""
        row = self._db.execute("SELECT id, payload, merged FROM outbox ORDER BY id LIMIT 1").fetchone()
        if row is None:
            self._inflight = None
            return None
        self._inflight = row[0]
        return Queued(row_id=row[0], delivery_id=f"{self._uid}-{row[0]}",
                      event=Event.from_dict(json.loads(row[1])), merged=row[2])

    def ack(self, row_id: int) -> None:
        """The receiver took the event: remove it and count it."""
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
        self._set_meta("delivered", str(self.delivered + 1))
        self._set_meta("last_success", repr(time.time()))
        self._db.execute("COMMIT")
        self._inflight = None

    def release(self) -> None:
        """Delivery failed; the head stays where it is, and may take merges again."""
        self._inflight = None

    def bury(self, row_id: int, error: str) -> None:
        """The receiver refused the event for good (e.g. HTTP 400): keep it aside, move on."""
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("INSERT INTO dead_letter (id, payload, error, failed_at) "
                         "SELECT id, payload, ?, ? FROM outbox WHERE id = ?", (error, time.time(), row_id))
        self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
        self._db.execute("COMMIT")
        self._inflight = None

    @property
    def journal_mode(self) -> str:
        return self._db.execute("PRAGMA journal_mode").fetchone()[0]

    @property
    def backlog(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    @property
    def dead_letters(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]

    @property
    def delivered(self) -> int:
        return int(self._meta("delivered") or 0)

    @property
    def last_success(self) -> float | None:
        value = self._meta("last_success")
        return float(value) if value else None

    def pending(self) -> list[Event]:
        """Every waiting event, oldest first (for status pages and tests)."""
        return [Event.from_dict(json.loads(p))
                for (p,) in self._db.execute("SELECT payload FROM outbox ORDER BY id")]
