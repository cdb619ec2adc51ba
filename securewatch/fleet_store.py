"""The central server's fleet tables: enrolled sites, ingested batches, per-site series.

What is stored (schema migration 8, `store.MIGRATIONS`):

    fleet_sites                 one row per site: the SHA-256 of its token (the token itself is
                                shown once, by `seawall fleet enroll`), revocation, last contact,
                                the configuration version it runs, its queue backlog
    fleet_batches               one row per batch ingested, keyed (site, queue, seq): a retried
                                batch finds its row and is skipped, so it is stored once; holds the
                                appliance's own time and the central receipt time (clock skew)
    fleet_traffic_seconds       per site, per tenant, per second: passed/dropped pps and bps (written
                                with COPY alone: adding each site's second into the tenant's own
                                `traffic_seconds` row as well, an upsert per tenant per site-second,
                                cut PostgreSQL's ingest from 27 to 5 site-seconds/s at 10,000 tenants)
    fleet_destination_seconds   per site, per destination, per second: total and dropped pps, and
                                the row as the appliance sent it (class arrays, baseline, threshold)
    incidents.site              the site whose appliance saw the incident (NULL: this box's own)

An incident seen at two sites is two incidents, one per site, each with its site: each appliance
decides on its own (its own baselines, its own start and end), so one merged lifecycle would be
an invention of the central server. They share the tenant and overlap in time; the fleet page
links them by tenant.

The functions here take the store's backend and run on its database thread (`Store.run`, one
transaction per call). Ingest is batched: PostgreSQL gets `COPY`, SQLite `executemany`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

from tenants.model import SITE_PATTERN, TENANT_ID_RULE

MIGRATION = [
    """CREATE TABLE IF NOT EXISTS fleet_sites (
        site TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, enrolled_at {real} NOT NULL,
        enrolled_by TEXT NOT NULL, revoked_at {real}, last_contact {real}, last_appliance_time {real},
        running_version BIGINT, backlog BIGINT NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT '{{}}')""",
    """CREATE TABLE IF NOT EXISTS fleet_batches (
        site TEXT NOT NULL, queue TEXT NOT NULL, seq BIGINT NOT NULL, appliance_time {real} NOT NULL,
        received_at {real} NOT NULL, items BIGINT NOT NULL, PRIMARY KEY (site, queue, seq))""",
    "CREATE INDEX IF NOT EXISTS fleet_batches_received ON fleet_batches (received_at)",
    """CREATE TABLE IF NOT EXISTS fleet_traffic_seconds (
        site TEXT NOT NULL, tenant TEXT NOT NULL, t BIGINT NOT NULL, passed_pps {real} NOT NULL,
        dropped_pps {real} NOT NULL, passed_bps {real} NOT NULL, dropped_bps {real} NOT NULL,
        PRIMARY KEY (site, tenant, t))""",
    "CREATE INDEX IF NOT EXISTS fleet_traffic_seconds_t ON fleet_traffic_seconds (t)",
    """CREATE TABLE IF NOT EXISTS fleet_destination_seconds (
        site TEXT NOT NULL, tenant TEXT NOT NULL, address TEXT NOT NULL, t BIGINT NOT NULL,
        pps {real} NOT NULL, dropped_pps {real} NOT NULL, data TEXT NOT NULL,
        PRIMARY KEY (site, tenant, address, t))""",
    "CREATE INDEX IF NOT EXISTS fleet_destination_seconds_t ON fleet_destination_seconds (t)",
    lambda b: _add_incident_site(b),
    "CREATE INDEX IF NOT EXISTS incidents_site ON incidents (site)",
]


def _add_incident_site(b: Any) -> None:
    """incidents.site, unless a database rewound to an older schema by hand still has it."""
    if b.dialect == "postgresql":
        b.execute("ALTER TABLE incidents ADD COLUMN IF NOT EXISTS site TEXT")
    elif "site" not in [r[1] for r in b.execute("PRAGMA table_info(incidents)").fetchall()]:
        b.execute("ALTER TABLE incidents ADD COLUMN site TEXT")

TRAFFIC_COLUMNS = ("tenant", "t", "passed_pps", "dropped_pps", "passed_bps", "dropped_bps")
SITE_RULE = TENANT_ID_RULE
BATCHES_KEPT_S = 7 * 86400        # seconds a batch's dedup row is kept: longer than any queue outlives
STALE_AFTER_S = 15.0              # seconds without contact after which a site is shown as not reporting


def site_problem(site: object) -> str | None:
    """Why `site` is not a site name (None: it is one)."""
    if not isinstance(site, str) or not SITE_PATTERN.fullmatch(site):
        return f"{site!r} is not a site name ({SITE_RULE})"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Site:
    site: str
    enrolled_at: float
    enrolled_by: str
    revoked_at: float | None
    last_contact: float | None         # central receipt time of the last request, seconds since the epoch
    last_appliance_time: float | None  # the appliance's own clock in that request
    running_version: int | None        # the configuration version the appliance reports it runs
    backlog: int                       # batches queued on the appliance, as it last reported
    status: dict[str, Any]

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def health(self, now: float, version: int) -> dict[str, Any]:
        """The fleet page's and API's view of the site at central version `version`."""
        contact_age = None if self.last_contact is None else max(0.0, now - self.last_contact)
        reporting = contact_age is not None and contact_age <= STALE_AFTER_S
        # The site polls every few seconds: right after a change it lags until its next poll.
        lagging = not self.revoked and self.running_version != version
        state = "revoked" if self.revoked else "never seen" if self.last_contact is None else (
            "reporting" if reporting else "silent")
        skew = None
        if self.last_contact is not None and self.last_appliance_time is not None:
            skew = round(self.last_appliance_time - self.last_contact, 3)
        return {"site": self.site, "state": state, "enrolled_at": self.enrolled_at, "revoked_at": self.revoked_at,
                "last_contact": self.last_contact, "contact_age_s": None if contact_age is None else round(contact_age, 1),
                "clock_skew_s": skew, "running_version": self.running_version, "version": version,
                "lagging": bool(lagging), "backlog": self.backlog, "status": self.status}


_SITE_COLUMNS = ("site, enrolled_at, enrolled_by, revoked_at, last_contact, last_appliance_time, running_version, "
                 "backlog, status")


def _site(r: Sequence[Any]) -> Site:
    return Site(site=r[0], enrolled_at=r[1], enrolled_by=r[2], revoked_at=r[3], last_contact=r[4],
                last_appliance_time=r[5], running_version=None if r[6] is None else int(r[6]),
                backlog=int(r[7] or 0), status=json.loads(r[8] or "{}"))


# -- enrolment ------------------------------------------------------------------------------------

def enroll(b: Any, site: str, token_hash: str, actor: str, now: float) -> None:
    """Enroll `site` with the hash of its new token; a revoked site gets a new token and is back.
    ValueError when the name is bad or the site is enrolled and not revoked."""
    problem = site_problem(site)
    if problem is not None:
        raise ValueError(f"site: {problem}")
    row = b.execute("SELECT revoked_at FROM fleet_sites WHERE site = ?", (site,)).fetchone()
    if row is not None and row[0] is None:
        raise ValueError(f"site: {site!r} is enrolled already (revoke it first to issue a new token)")
    if row is None:
        b.execute("INSERT INTO fleet_sites (site, token_hash, enrolled_at, enrolled_by) VALUES (?, ?, ?, ?)",
                  (site, token_hash, now, actor))
    else:
        b.execute("UPDATE fleet_sites SET token_hash = ?, enrolled_at = ?, enrolled_by = ?, revoked_at = NULL "
                  "WHERE site = ?", (token_hash, now, actor, site))
    _audit(b, actor, "fleet.enroll", site, now)


def revoke(b: Any, site: str, actor: str, now: float) -> bool:
    """Revoke the site's token (refused from its next request on); False when it is not enrolled."""
    changed = b.execute("UPDATE fleet_sites SET revoked_at = ? WHERE site = ? AND revoked_at IS NULL",
                        (now, site)).rowcount
    if changed:
        _audit(b, actor, "fleet.revoke", site, now)
    return bool(changed)


def central_version(b: Any) -> int:
    """The version of the central tenant set (the store's change counter: what sites run)."""
    return int(b.execute("SELECT version FROM tenant_set_version WHERE id = 1").fetchone()[0])


def sites(b: Any) -> list[Site]:
    return [_site(r) for r in b.execute(f"SELECT {_SITE_COLUMNS} FROM fleet_sites ORDER BY site").fetchall()]


def site_by_token(b: Any, token_hash: str) -> Site | None:
    """The enrolled, unrevoked site whose token hashes to `token_hash`."""
    r = b.execute(f"SELECT {_SITE_COLUMNS} FROM fleet_sites WHERE token_hash = ? AND revoked_at IS NULL",
                  (token_hash,)).fetchone()
    return None if r is None else _site(r)


def _audit(b: Any, actor: str, action: str, site: str, now: float) -> None:
    b.execute("INSERT INTO audit_log (at, actor, action, target, tenant, remote, details) VALUES (?, ?, ?, ?, ?, ?, ?)",
              (now, actor, action, site, None, None, json.dumps({"site": site})))


# -- contact and configuration --------------------------------------------------------------------

def record_contact(b: Any, site: str, now: float, appliance_time: float | None, running_version: int | None,
                   backlog: int | None, status: dict[str, Any] | None) -> None:
    """What a site said about itself (sync) or implied by sending (ingest: only the times)."""
    sets, params = ["last_contact = ?"], [now]
    if appliance_time is not None:
        sets.append("last_appliance_time = ?")
        params.append(appliance_time)
    if running_version is not None:
        sets.append("running_version = ?")
        params.append(running_version)
    if backlog is not None:
        sets.append("backlog = ?")
        params.append(backlog)
    if status is not None:
        sets.append("status = ?")
        params.append(json.dumps(status, separators=(",", ":")))
    b.execute(f"UPDATE fleet_sites SET {', '.join(sets)} WHERE site = ?", (*params, site))


# -- ingest ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class Ingested:
    acked: list[int]          # sequence numbers now stored (fresh or already before)
    duplicates: int           # batches that were stored already (a retry)
    traffic_rows: int
    destination_rows: int
    events: int
    foreign: int = 0          # rows and events skipped: of tenants the central set does not give the site


def ingest(b: Any, site: str, queue: str, batches: Sequence[dict[str, Any]], now: float,
           record_event: Callable[[Any, dict[str, Any]], None], tenants: frozenset[str] | None = None) -> Ingested:
    """Store `batches` (already checked by `fleet.check_batches`) of `site`'s queue `queue`, in one
    transaction. A batch whose (site, queue, seq) is stored already is skipped: a retry after a
    lost answer, or a backfill overlapping what arrived, is stored once.

    tenants: the tenants the central set assigns to `site`; rows and events of any other tenant are
    skipped and counted (`Ingested.foreign`): a site's token must not write another's customers' data.
    None: no restriction (callers that checked already)."""
    acked: list[int] = []
    duplicates = 0
    traffic: list[tuple[Any, ...]] = []
    destinations: list[tuple[Any, ...]] = []
    events = 0
    foreign = 0
    last_time = None
    for batch in batches:
        seq = int(batch["seq"])
        columns = batch.get("traffic_columns")
        column_rows = len(columns["tenant"]) if columns else 0
        items = (len(batch.get("traffic") or ()) + column_rows + len(batch.get("destinations") or ())
                 + len(batch.get("events") or ()))
        fresh = b.execute("INSERT INTO fleet_batches (site, queue, seq, appliance_time, received_at, items) "
                          "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (site, queue, seq) DO NOTHING",
                          (site, queue, seq, float(batch["time"]), now, items)).rowcount
        acked.append(seq)
        if not fresh:
            duplicates += 1
            continue
        last_time = float(batch["time"])
        # Whole seconds: the appliance's rows carry its tick's read time, a fraction of a second in.
        rows = [(site, row[0], int(row[1]), *row[2:]) for row in batch.get("traffic") or ()]
        if column_rows:
            rows.extend(zip(itertools.repeat(site, column_rows), columns["tenant"], map(int, columns["time"]),
                            columns["passed_pps"], columns["dropped_pps"], columns["passed_bps"],
                            columns["dropped_bps"], strict=False))
        if tenants is not None:
            kept = [row for row in rows if row[1] in tenants]
            foreign += len(rows) - len(kept)
            rows = kept
        traffic.extend(rows)
        for d in batch.get("destinations") or ():
            if tenants is not None and d["tenant"] not in tenants:
                foreign += 1
                continue
            destinations.append((site, d["tenant"], d["address"], int(d["time"]), float(sum(d.get("pps") or ())),
                                 float(d.get("dropped_pps") or 0.0), json.dumps(d, separators=(",", ":"))))
        for event in batch.get("events") or ():
            if tenants is not None and event["tenant"] not in tenants:
                foreign += 1
                continue
            _record_site_event(b, site, event, record_event)
            events += 1
    _write_rows(b, "fleet_traffic_seconds", ("site", *TRAFFIC_COLUMNS), traffic)
    _write_rows(b, "fleet_destination_seconds",
                ("site", "tenant", "address", "t", "pps", "dropped_pps", "data"), destinations)
    record_contact(b, site, now, last_time, None, None, None)
    return Ingested(acked, duplicates, len(traffic), len(destinations), events, foreign)


def _record_site_event(b: Any, site: str, event: dict[str, Any], record_event: Callable[[Any, dict[str, Any]], None]
                       ) -> None:
    """An incident event of `site`: stored under "SITE:ID" (incident ids are unique per appliance
    only) with the site on the incident."""
    event = dict(event)
    incident_id = f"{site}:{event['incident_id']}"
    event["incident_id"] = incident_id
    event["details"] = {**(event.get("details") or {}), "site": site}
    record_event(b, event)
    b.execute("UPDATE incidents SET site = ? WHERE id = ?", (site, incident_id))


def _write_rows(b: Any, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    """Many rows in one statement: COPY on PostgreSQL, executemany on SQLite. A second copy of a
    row (the same key) keeps the first: the batch dedup makes that a bug in the sender, not data."""
    if not rows:
        return
    if b.dialect == "postgresql":
        import psycopg  # noqa: PLC0415 - only a PostgreSQL store gets here

        # COPY has no ON CONFLICT: a second already stored (an appliance whose two ticks fell in
        # one second sends it in two batches) fails it, and the batch would be refused on every
        # retry. Then the request's rows go again as inserts that skip what is there.
        try:
            # transaction(): a savepoint, so that the failed COPY alone is undone.
            with (b.connection.transaction(),
                  b.connection.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy):
                for row in rows:
                    copy.write_row(row)
            return
        except psycopg.errors.UniqueViolation:
            pass
    b.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
                  f"ON CONFLICT DO NOTHING", rows)


# -- reading --------------------------------------------------------------------------------------

def current_traffic(b: Any, since: float, site: str | None = None) -> dict[str, dict[str, float]]:
    """Per site: the sum over its tenants of the newest second at or after `since` it sent."""
    where, params = "WHERE t >= ?", [int(since)]
    if site is not None:
        where += " AND site = ?"
        params.append(site)
    rows = b.execute(f"SELECT site, t, SUM(passed_pps), SUM(dropped_pps), SUM(passed_bps), SUM(dropped_bps), "
                     f"COUNT(*) FROM fleet_traffic_seconds {where} GROUP BY site, t", params).fetchall()
    newest: dict[str, dict[str, float]] = {}
    for r in rows:
        if r[0] not in newest or r[1] > newest[r[0]]["time"]:
            newest[r[0]] = {"time": r[1], "passed_pps": r[2], "dropped_pps": r[3], "passed_bps": r[4],
                            "dropped_bps": r[5], "tenants": r[6]}
    return newest


def traffic(b: Any, since: float, until: float | None = None, *, site: str | None = None,
            tenant: str | None = None) -> list[dict[str, Any]]:
    """Per-second rows, oldest first, optionally of one site and/or tenant. until None: no bound
    (a site whose clock runs ahead sends seconds that are still to come here)."""
    where, params = ["t >= ?"], [int(since)]
    if until is not None:
        where.append("t < ?")
        params.append(int(until))
    for column, value in (("site", site), ("tenant", tenant)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    rows = b.execute(f"SELECT site, tenant, t, passed_pps, dropped_pps, passed_bps, dropped_bps "
                     f"FROM fleet_traffic_seconds WHERE {' AND '.join(where)} ORDER BY t, site, tenant",
                     params).fetchall()
    return [{"site": r[0], "tenant": r[1], "time": r[2], "passed_pps": r[3], "dropped_pps": r[4],
             "passed_bps": r[5], "dropped_bps": r[6]} for r in rows]


def incidents(b: Any, site: str | None, limit: int) -> list[dict[str, Any]]:
    """Incidents that came from sites (newest first), optionally of one site."""
    where, params = "WHERE site IS NOT NULL", []
    if site is not None:
        where = "WHERE site = ?"
        params.append(site)
    rows = b.execute(f"SELECT id, site, tenant, state, started, ended, vectors, peak_pps FROM incidents {where} "
                     f"ORDER BY started DESC LIMIT ?", (*params, limit)).fetchall()
    return [{"id": r[0], "site": r[1], "tenant": r[2], "state": r[3], "started": r[4], "ended": r[5],
             "vectors": json.loads(r[6]), "peak_pps": r[7]} for r in rows]


def batch_counts(b: Any) -> dict[str, int]:
    """Batches stored per site (the fleet page; tests check that a retry is stored once)."""
    return {r[0]: int(r[1]) for r in b.execute("SELECT site, COUNT(*) FROM fleet_batches GROUP BY site").fetchall()}


def apply_retention(b: Any, now: float, second_retention_s: int) -> dict[str, int]:
    cutoff = int(now - second_retention_s)
    return {
        "fleet_traffic_seconds": b.execute("DELETE FROM fleet_traffic_seconds WHERE t < ?", (cutoff,)).rowcount,
        "fleet_destination_seconds": b.execute("DELETE FROM fleet_destination_seconds WHERE t < ?",
                                               (cutoff,)).rowcount,
        "fleet_batches": b.execute("DELETE FROM fleet_batches WHERE received_at < ?",
                                   (now - BATCHES_KEPT_S,)).rowcount,
    }
