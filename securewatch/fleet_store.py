"""The central server's fleet tables: enrolled sites, ingested batches, per-site series.

What is stored (schema migration 8, `store.MIGRATIONS`; the series re-laid by migration 10, the
destination minute rollups added by migration 13):

    fleet_sites                 one row per site: the SHA-256 of its token (the token itself is
                                shown once, by `seawall fleet enroll`), revocation, last contact,
                                the appliance's clock at its last sync and that sync's receipt time
                                (clock skew), the configuration version it runs, its queue backlog
    fleet_batches               one row per batch ingested, keyed (site, queue, seq): a retried
                                batch finds its row and is skipped, so it is stored once; holds the
                                appliance's time when it made the batch and the central receipt time
    fleet_traffic_seconds       per site, per tenant, per second: passed/dropped pps and bps
    fleet_destination_seconds   per site, per destination, per second: total and dropped pps, and
                                the row as the appliance sent it (class arrays, baseline, threshold)
    fleet_traffic_minutes       per site, per tenant, per minute / per hour: the SUMS of the
    fleet_traffic_hours         seconds' pps and bps (divide by `samples`, the seconds behind the
                                row, for the mean), their maxima, and `samples`; a minute also
                                `seconds_mask`, which of its seconds it holds (migration 14)
    fleet_destination_minutes   per site, per destination, per minute: the SUMS of the seconds'
                                total and dropped pps, their maxima, `samples` and `seconds_mask`
                                (the 24-hour and 7-day destination charts, reports: the seconds
                                are kept an hour)
    fleet_rollup_pending        (level, site, t): a minute or hour that got new seconds and is to
                                be rolled up (again); a backfilled second re-marks its minute.
                                Levels: "minute" and "hour" (traffic), "destination_minute"
    incidents.site              the site whose appliance saw the incident (NULL: this box's own)

How the per-second traffic is laid out differs by database (migration 10):

* **PostgreSQL**: one row per site-second, `fleet_site_seconds (site, t, tenants[], passed_pps[],
  dropped_pps[], passed_bps[], dropped_bps[], the four totals, tenant count)`, and
  `fleet_traffic_seconds` is a view that unnests it into the per-tenant rows above. A row per
  tenant-second was 200,000 rows/s at 20 sites x 10,000 tenants, and PostgreSQL's per-row work
  (tuple, primary key entry, WAL record) took 0.78 of the 2-vCPU VM's cores at 20.8 site-seconds/s;
  one row per site-second is 20 rows/s: 0.11 cores at 49.5 site-seconds/s (README, "Fleet
  ingest"). The per-second tables
  (`fleet_site_seconds`, `fleet_destination_seconds`) are range-partitioned by `t`, an hour a
  partition, the rollups a day (minutes, of traffic and of destinations) and 30 days (hours) a
  partition; partitions are made ahead (`maintain_partitions`) and dropped whole once past
  retention, not deleted row by row; the pending keys whose source rows (a minute's seconds, an
  hour's minutes) are in a partition about to be dropped are rolled up first. A second older
  than the seconds' partitions (a long backfill) goes straight into its minute rollups, unless
  the row holds that second already (`_fold`; `Ingested.folded`; a destination second into its
  destination minute); one older than the minute rollups keep, or from a site clock more than
  PARTITIONS_AHEAD_S ahead, is stored nowhere and counted (`Ingested.outside`, returned to the
  site and in /metrics).
* **SQLite** (a small central server, and the tests): plain per-tenant tables with DELETE-based
  retention; the same rollups. The rollups' sources go a whole key at a time (seconds by the
  minute, minutes by the hour: `_sources_kept_from`), so a minute (hour) has all its seconds
  (minutes) or none: a late second of one that has none is added to it, as on PostgreSQL, and
  one is never recomputed from part of its rows. A pending key is rolled up before retention
  deletes its sources and before ingest adds a late second to it.

Reading a tenant's seconds from the PostgreSQL layout unnests each site-second, so the views read
seconds for short spans only and the rollups for longer ones (`series`).

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
import math
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import structlog

from tenants.model import SITE_PATTERN, TENANT_ID_RULE

from .series import SeriesRetention

log = structlog.get_logger(__name__)

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

# -- migration 10: time-partitioned series, rollups -------------------------------------------

# Partition spans (seconds): a partition is dropped whole when all of it is past retention, so the
# span is the granularity of retention too.
SECOND_PARTITION_S = 3600            # per-second tables: an hour (720 million tenant-seconds at 20 x 10,000)
MINUTE_PARTITION_S = 86400           # minute rollups: a day
HOUR_PARTITION_S = 30 * 86400        # hour rollups: 30 days
PARTITIONS_AHEAD_S = 3 * 3600        # made this far ahead of now: a site clock ahead by less is stored
MINUTE_S = 60
HOUR_S = 3600
ROLLUP_GRACE_S = 5                   # seconds after a minute ends before it is rolled up (the agent's batching)
CLAIM_CHUNK = 200                    # batches' dedup rows per INSERT (6 parameters each)
MINUTES_PER_READ = 500               # minutes per read of the seconds their rollups hold (a parameter each)
ROLLUPS_PER_PASS = 60                # keys rolled up per call: about 20 s of the database at 10,000 tenants (0.34 s each)
# SQLite deletes what is gone this many seconds behind its `now`: an ingest stamped before a
# retention pass may reach the database after it (its request waited; the agent gives up after
# 30 s), and must still find gone (to fold into its rollup) what that pass deleted.
SQLITE_RETENTION_LAG_S = 120

_SUMS = ("sum_passed_pps", "sum_dropped_pps", "sum_passed_bps", "sum_dropped_bps")
_ROLLUP_COLUMNS = f"{', '.join(_SUMS)}, max_passed_pps, max_dropped_pps, samples"
# A minute rollup row's seconds_mask from its seconds (their `t`; the minute's start the parameter):
# each second's bit, summed, which is their OR (a key's second is one row of the seconds). The 1
# is a BIGINT: PostgreSQL shifts an INTEGER modulo 32 bits.
_SECONDS_MASK_SQL = "SUM(CAST(1 AS BIGINT) << CAST(t - ? AS INTEGER))"


def _rollup_table(name: str) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {name} (site TEXT NOT NULL, tenant TEXT NOT NULL, t BIGINT NOT NULL, "
            f"{', '.join(f'{c} {{real}} NOT NULL' for c in _SUMS)}, max_passed_pps {{real}} NOT NULL, "
            f"max_dropped_pps {{real}} NOT NULL, samples BIGINT NOT NULL, PRIMARY KEY (site, tenant, t))")


def _partitioned(b: Any) -> None:
    """PostgreSQL: the per-second tables become range-partitioned by t, the traffic one a row per
    site-second (see the module text), and their rows move over; the rollups are partitioned too.
    SQLite keeps its plain tables and gets plain rollups."""
    if b.dialect != "postgresql":
        for table in ("fleet_traffic_minutes", "fleet_traffic_hours"):
            b.execute(_rollup_table(table).format(real="REAL"))
            b.execute(f"CREATE INDEX IF NOT EXISTS {table}_t ON {table} (t)")
        return
    real = "DOUBLE PRECISION"
    b.execute("ALTER TABLE fleet_traffic_seconds RENAME TO fleet_traffic_seconds_v8")
    b.execute("ALTER TABLE fleet_destination_seconds RENAME TO fleet_destination_seconds_v8")
    b.execute(f"""CREATE TABLE fleet_site_seconds (site TEXT NOT NULL, t BIGINT NOT NULL, tenants TEXT[] NOT NULL,
        passed_pps {real}[] NOT NULL, dropped_pps {real}[] NOT NULL, passed_bps {real}[] NOT NULL,
        dropped_bps {real}[] NOT NULL, total_passed_pps {real} NOT NULL, total_dropped_pps {real} NOT NULL,
        total_passed_bps {real} NOT NULL, total_dropped_bps {real} NOT NULL, tenant_count INTEGER NOT NULL,
        PRIMARY KEY (site, t)) PARTITION BY RANGE (t)""")
    _lz4(b, "fleet_site_seconds", ("tenants", "passed_pps", "dropped_pps", "passed_bps", "dropped_bps"))
    b.execute("""CREATE VIEW fleet_traffic_seconds AS
        SELECT s.site, u.tenant, s.t, u.passed_pps, u.dropped_pps, u.passed_bps, u.dropped_bps
        FROM fleet_site_seconds s CROSS JOIN LATERAL
             unnest(s.tenants, s.passed_pps, s.dropped_pps, s.passed_bps, s.dropped_bps)
             AS u(tenant, passed_pps, dropped_pps, passed_bps, dropped_bps)""")
    b.execute(f"""CREATE TABLE fleet_destination_seconds (
        site TEXT NOT NULL, tenant TEXT NOT NULL, address TEXT NOT NULL, t BIGINT NOT NULL,
        pps {real} NOT NULL, dropped_pps {real} NOT NULL, data TEXT NOT NULL,
        PRIMARY KEY (site, tenant, address, t)) PARTITION BY RANGE (t)""")
    for table in ("fleet_traffic_minutes", "fleet_traffic_hours"):
        b.execute(_rollup_table(table).format(real=real) + " PARTITION BY RANGE (t)")
    maintain_partitions(b, time.time(), SeriesRetention())
    low, high = low_seconds, high_seconds = partition_window(b, "fleet_site_seconds")
    b.execute(f"""INSERT INTO fleet_site_seconds SELECT site, t, array_agg(tenant ORDER BY tenant),
        array_agg(passed_pps ORDER BY tenant), array_agg(dropped_pps ORDER BY tenant),
        array_agg(passed_bps ORDER BY tenant), array_agg(dropped_bps ORDER BY tenant), SUM(passed_pps),
        SUM(dropped_pps), SUM(passed_bps), SUM(dropped_bps), COUNT(*)
        FROM fleet_traffic_seconds_v8 WHERE t >= {low} AND t < {high} GROUP BY site, t""")
    low, high = partition_window(b, "fleet_destination_seconds")
    b.execute(f"INSERT INTO fleet_destination_seconds SELECT * FROM fleet_destination_seconds_v8 "
              f"WHERE t >= {low} AND t < {high}")
    b.execute("INSERT INTO fleet_rollup_pending (level, site, t) SELECT DISTINCT 'minute', site, t - MOD(t, 60) "
              "FROM fleet_traffic_seconds")
    # The seconds older than the seconds' partitions (made from the default retention here: the
    # migration does not know the configured one; the first upkeep makes the rest) go into their
    # minute rollups, and their hours are rolled up from those (issue 17 review 2, item 6): they
    # were dropped unrolled. Older than the minutes' partitions, or ahead of the seconds', they
    # are dropped, and counted in the log.
    minutes_low, minutes_high = partition_window(b, "fleet_traffic_minutes")
    folded = b.execute(f"""INSERT INTO fleet_traffic_minutes (site, tenant, t, {_ROLLUP_COLUMNS})
        SELECT site, tenant, t - MOD(t, 60), SUM(passed_pps), SUM(dropped_pps), SUM(passed_bps), SUM(dropped_bps),
               MAX(passed_pps), MAX(dropped_pps), COUNT(*)
        FROM fleet_traffic_seconds_v8 WHERE t < {low_seconds} AND t >= {minutes_low} AND t < {minutes_high}
        GROUP BY site, tenant, t - MOD(t, 60)""").rowcount
    b.execute("INSERT INTO fleet_rollup_pending (level, site, t) SELECT DISTINCT 'hour', site, t - MOD(t, 3600) "
              "FROM fleet_traffic_minutes ON CONFLICT (level, site, t) DO NOTHING")
    counts = b.execute(f"""SELECT COUNT(*) FILTER (WHERE t >= {low_seconds} AND t < {high_seconds}),
        COUNT(*) FILTER (WHERE t < {low_seconds} AND t >= {minutes_low} AND t < {minutes_high}), COUNT(*)
        FROM fleet_traffic_seconds_v8""").fetchone()
    destinations = b.execute(f"SELECT COUNT(*) FILTER (WHERE t >= {low} AND t < {high}), COUNT(*) "
                             f"FROM fleet_destination_seconds_v8").fetchone()
    log.info("fleet.migration_series_moved", seconds_moved=counts[0], seconds_into_minutes=counts[1],
             minute_rows=folded, seconds_dropped=counts[2] - counts[0] - counts[1],
             destination_seconds_moved=destinations[0], destination_seconds_dropped=destinations[1] - destinations[0])
    b.execute("DROP TABLE fleet_traffic_seconds_v8")
    b.execute("DROP TABLE fleet_destination_seconds_v8")


def _lz4(b: Any, table: str, columns: Sequence[str]) -> None:
    """Compress the arrays with lz4 where the server has it (Debian's does): PostgreSQL's own pglz
    took most of the database's time per site-second (measured). Without it, pglz stays."""
    import psycopg  # noqa: PLC0415 - only a PostgreSQL store gets here

    try:
        with b.connection.transaction():   # a savepoint: a server built without lz4 refuses it
            for column in columns:
                b.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION lz4")
    except psycopg.errors.FeatureNotSupported:
        pass


MIGRATION_10 = [
    """CREATE TABLE IF NOT EXISTS fleet_rollup_pending (level TEXT NOT NULL, site TEXT NOT NULL, t BIGINT NOT NULL,
        PRIMARY KEY (level, site, t))""",
    lambda b: _partitioned(b),
]

# -- migration 13: per-destination minute rollups ------------------------------------------------

_DESTINATION_ROLLUP_COLUMNS = "sum_pps, sum_dropped_pps, max_pps, max_dropped_pps, samples"


def _destination_minutes(b: Any) -> None:
    """fleet_destination_minutes, laid out as fleet_traffic_minutes (partitioned by day on
    PostgreSQL, plain on SQLite), and the minutes of the destination seconds already stored marked
    for the rollup pass (the seconds older than their partitions were dropped by migration 10 or
    retention: nothing is left to roll up of those)."""
    real = "DOUBLE PRECISION" if b.dialect == "postgresql" else "REAL"
    table = (f"CREATE TABLE IF NOT EXISTS fleet_destination_minutes (site TEXT NOT NULL, tenant TEXT NOT NULL, "
             f"address TEXT NOT NULL, t BIGINT NOT NULL, sum_pps {real} NOT NULL, sum_dropped_pps {real} NOT NULL, "
             f"max_pps {real} NOT NULL, max_dropped_pps {real} NOT NULL, samples BIGINT NOT NULL, "
             f"PRIMARY KEY (site, tenant, address, t))")
    if b.dialect == "postgresql":
        b.execute(table + " PARTITION BY RANGE (t)")
        maintain_partitions(b, time.time(), SeriesRetention(), ("fleet_destination_minutes",))
    else:
        b.execute(table)
        b.execute("CREATE INDEX IF NOT EXISTS fleet_destination_minutes_t ON fleet_destination_minutes (t)")
    # The rollup reads a site's minute of destination seconds (site, t range): without this index each
    # read scans all the site's seconds of the hour's partition (the primary key leads with site, tenant).
    b.execute("CREATE INDEX IF NOT EXISTS fleet_destination_seconds_site_t ON fleet_destination_seconds (site, t)")
    # t / 60 * 60: integer division in both databases (no '%': psycopg takes it for a placeholder).
    # WHERE true: SQLite reads an ON CONFLICT right after a SELECT's FROM as a join's ON.
    b.execute("INSERT INTO fleet_rollup_pending (level, site, t) SELECT DISTINCT 'destination_minute', site, "
              "t / 60 * 60 FROM fleet_destination_seconds WHERE true ON CONFLICT (level, site, t) DO NOTHING")


MIGRATION_13 = [lambda b: _destination_minutes(b)]

# -- migration 14: the seconds a minute rollup holds; when a site's clock was read ---------------

MIGRATION_14 = [
    # Bit i set: the row holds its minute's second i (`_SECONDS_MASK_SQL`, `_fold`), so a copy of
    # a second folded in later counts once. Rows rolled up before hold 0: a copy of one of their
    # seconds is added, as it was (their seconds are gone, nothing tells which they had).
    "ALTER TABLE fleet_traffic_minutes ADD COLUMN seconds_mask BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE fleet_destination_minutes ADD COLUMN seconds_mask BIGINT NOT NULL DEFAULT 0",
    # The receipt time of the request that carried last_appliance_time (`Site.health`'s skew);
    # until now that request was the last one (a sync or an ingest), received at last_contact.
    "ALTER TABLE fleet_sites ADD COLUMN clock_read_at {real}",
    "UPDATE fleet_sites SET clock_read_at = last_contact WHERE last_appliance_time IS NOT NULL",
]

# (partitioned table, partition span in seconds, how long it is kept: from the retention settings)
PARTITIONED: tuple[tuple[str, int, Callable[[SeriesRetention], int]], ...] = (
    ("fleet_site_seconds", SECOND_PARTITION_S, lambda r: r.fleet_second_retention_s),
    ("fleet_destination_seconds", SECOND_PARTITION_S, lambda r: r.fleet_second_retention_s),
    ("fleet_traffic_minutes", MINUTE_PARTITION_S, lambda r: r.fleet_minute_retention_days * 86400),
    ("fleet_traffic_hours", HOUR_PARTITION_S, lambda r: r.fleet_hour_retention_days * 86400),
    ("fleet_destination_minutes", MINUTE_PARTITION_S, lambda r: r.fleet_destination_minute_retention_days * 86400),
)


def partitions(b: Any, table: str) -> list[int]:
    """The start times of `table`'s partitions (named TABLE_pSTART by `maintain_partitions`), oldest first."""
    rows = b.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                     "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = ?", (table,)).fetchall()
    prefix = f"{table}_p"
    return sorted(int(r[0][len(prefix):]) for r in rows if r[0].startswith(prefix))


def _exists(b: Any, table: str) -> bool:
    return b.execute("SELECT to_regclass(?) IS NOT NULL", (table,)).fetchone()[0]


def partition_window(b: Any, table: str) -> tuple[int, int]:
    """[low, high): the times `table`'s partitions take (they are contiguous); (0, 0) when none."""
    span = next(s for name, s, _ in PARTITIONED if name == table)
    starts = partitions(b, table)
    return (starts[0], starts[-1] + span) if starts else (0, 0)


def maintain_partitions(b: Any, now: float, retention: SeriesRetention,
                        tables: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """PostgreSQL: make the partitions from retention's start to PARTITIONS_AHEAD_S ahead of `now`
    and drop those wholly past retention (a DROP, not row deletions). {table: {created, dropped,
    rolled_up_first}}: the last, for a table the rollups are made from, the pending keys of its
    expired partitions rolled up before the drop (`_roll_up_expired`)."""
    # An ingest holds its partitioned tables' locks for its transaction; a DROP waiting behind it
    # would queue every later ingest behind itself. Better to give up and try again next pass.
    b.execute("SET LOCAL lock_timeout = '2s'")
    plans: list[tuple[str, int, int, int, set[int]]] = []   # (table, span, oldest kept, newest, existing)
    for table, span, keep in PARTITIONED:
        if tables is not None and table not in tables:
            continue
        oldest = int(now - keep(retention)) // span * span   # the partition holding the oldest second kept
        newest = int(now + PARTITIONS_AHEAD_S) // span * span
        existing = set(partitions(b, table))
        if not existing and not _exists(b, table):
            continue   # made by a later migration than the one running (migration 10 makes the first ones)
        plans.append((table, span, oldest, newest, existing))
    expired = {table: sorted(s for s in existing if s < oldest) for table, _, oldest, _, existing in plans}
    rolled_up = dict.fromkeys(expired, 0)
    # The rollup tables' partitions as they are before this pass: PARTITIONED lists each rollup
    # table after its source table, so none of them is made or dropped before its source's drops.
    windows = ({name: partition_window(b, name) for name, *_ in PARTITIONED}
               if any(expired.get(table) for table in _SOURCE_LEVEL) else {})
    # The bulk of the rollups before this pass locks any table: a partition made or dropped takes
    # its parent's ACCESS EXCLUSIVE lock until this transaction ends, stopping every ingest
    # meanwhile. (An ingest adding a second to a minute rolled up here waits for this pass, the
    # pending key deleted; should it hold the table's lock already, the lock below deadlocks with
    # it and PostgreSQL aborts one of the two: retried, by this pass's caller or the site.)
    for table, span, *_ in plans:   # PARTITIONED's order: the minutes first, they mark their hours
        for start in expired[table] if table in _SOURCE_LEVEL else ():
            rolled_up[table] += _roll_up_expired(b, table, start, span, windows, now, retention)
    done: dict[str, dict[str, int]] = {}
    for table, span, oldest, newest, existing in plans:
        created = dropped = 0
        for start in range(oldest, newest + span, span):
            if start not in existing:
                b.execute(f"CREATE TABLE IF NOT EXISTS {table}_p{start} PARTITION OF {table} "
                          f"FOR VALUES FROM ({start}) TO ({start + span})")
                created += 1
        if expired[table] and table in _SOURCE_LEVEL:
            # Once no ingest can write to the table (the lock the DROP takes anyway, parent
            # first as the DROP and an ingest take theirs), the keys an ingest marked in the
            # expired partitions since the rollups above; nearly always none.
            b.execute(f"LOCK TABLE ONLY {table} IN ACCESS EXCLUSIVE MODE")
            for start in expired[table]:
                rolled_up[table] += _roll_up_expired(b, table, start, span, windows, now, retention)
        for start in expired[table]:
            b.execute(f"DROP TABLE {table}_p{start}")
            dropped += 1
        done[table] = {"created": created, "dropped": dropped, "rolled_up_first": rolled_up[table]}
    return done


# The partitioned tables the rollups are made from (PostgreSQL; `fleet_traffic_seconds`, the
# minutes' source, is a view of `fleet_site_seconds`) and the level of `fleet_rollup_pending` each
# is the source of, in `_LEVELS`' order: the minutes before the hours they mark.
_SOURCE_LEVEL = {"fleet_site_seconds": "minute", "fleet_destination_seconds": "destination_minute",
                 "fleet_traffic_minutes": "hour"}
_SOURCE_TABLE = {level: table for table, level in _SOURCE_LEVEL.items()}


def _roll_up_expired(b: Any, table: str, start: int, span: int, windows: dict[str, tuple[int, int]], now: float,
                     retention: SeriesRetention) -> int:
    """Roll up the pending keys of the level `table` is the source of (`_SOURCE_LEVEL`) whose source
    rows are in its partition [start, start + span), about to be dropped: `rollup` leaves out a key
    whose source partition is gone, so a minute (hour) pending at the drop would keep part of its
    seconds (minutes), or have no row, for good. A key whose rollup table has no partition for it
    (`windows`) is left out, as `rollup` does. The rollups done."""
    level = _SOURCE_LEVEL[table]
    keys = b.execute("SELECT site, t FROM fleet_rollup_pending WHERE level = ? AND t >= ? AND t < ? ORDER BY t",
                     (level, start, start + span)).fetchall()
    return _roll_up_pending_now(b, level, keys, now, retention, windows) if keys else 0


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
    last_appliance_time: float | None  # the appliance's own clock as it sent its last sync
    clock_read_at: float | None        # central receipt time of that sync: the skew is the difference
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
        if self.clock_read_at is not None and self.last_appliance_time is not None:
            skew = round(self.last_appliance_time - self.clock_read_at, 3)
        return {"site": self.site, "state": state, "enrolled_at": self.enrolled_at, "revoked_at": self.revoked_at,
                "last_contact": self.last_contact, "contact_age_s": None if contact_age is None else round(contact_age, 1),
                "clock_skew_s": skew, "running_version": self.running_version, "version": version,
                "lagging": bool(lagging), "backlog": self.backlog, "status": self.status}


_SITE_COLUMNS = ("site, enrolled_at, enrolled_by, revoked_at, last_contact, last_appliance_time, running_version, "
                 "backlog, status, clock_read_at")


def _site(r: Sequence[Any]) -> Site:
    return Site(site=r[0], enrolled_at=r[1], enrolled_by=r[2], revoked_at=r[3], last_contact=r[4],
                last_appliance_time=r[5], running_version=None if r[6] is None else int(r[6]),
                backlog=int(r[7] or 0), status=json.loads(r[8] or "{}"), clock_read_at=r[9])


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
    """What a site said about itself (sync) or implied by sending (ingest: only the contact).
    `appliance_time`: the appliance's clock as it sent this request, received at `now`, kept as
    a pair: later contacts without it (ingests) do not make it look older."""
    sets, params = ["last_contact = ?"], [now]
    if appliance_time is not None:
        sets.append("last_appliance_time = ?, clock_read_at = ?")
        params.extend((appliance_time, now))
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
    outside: int = 0          # rows stored at no resolution: older than the minute rollups keep, a site clock
                              # more than PARTITIONS_AHEAD_S ahead (`ahead` for traffic rows)
    ahead: int = 0            # of `outside`: traffic rows of seconds more than PARTITIONS_AHEAD_S ahead
    folded: int = 0           # traffic and destination rows older than the seconds keep, taken for their
                              # minute rollups instead (a second a rollup holds already is not added again)


# One site-second of traffic: (t, tenants, passed_pps, dropped_pps, passed_bps, dropped_bps), columns.
_Second = tuple[int, list[str], list[float], list[float], list[float], list[float]]


def _seconds_of(batch: dict[str, Any]) -> list[_Second]:
    """A batch's traffic as one column set per whole second (the appliance's rows carry its tick's
    read time, a fraction of a second in). A batch is nearly always one second: then the columns
    are taken as they came, without a pass over the rows."""
    columns = batch.get("traffic_columns")
    rows = batch.get("traffic") or ()
    if columns and not rows:
        times = columns["time"]
        if not times:
            return []
        tenants, values = columns["tenant"], [columns[k] for k in TRAFFIC_COLUMNS[2:]]
        if int(min(times)) == int(max(times)):
            return [(int(times[0]), tenants, *values)]  # type: ignore[list-item]
        rows = list(zip(tenants, times, *values, strict=True))
    elif columns:
        rows = [*rows, *zip(columns["tenant"], columns["time"],
                            *(columns[k] for k in TRAFFIC_COLUMNS[2:]), strict=True)]
    by_second: dict[int, list[Any]] = {}
    for row in rows:
        by_second.setdefault(int(row[1]), []).append(row)
    return [(t, *(list(c) for c in zip(*((r[0], *r[2:6]) for r in group), strict=True)))  # type: ignore[misc]
            for t, group in by_second.items()]


def _keep(second: _Second, keep: list[int]) -> _Second:
    return (second[0], *([column[i] for i in keep] for column in second[1:]))  # type: ignore[return-value]


def _claim(b: Any, site: str, queue: str, batches: Sequence[dict[str, Any]], now: float) -> set[int]:
    """Insert the batches' dedup rows; the sequence numbers that were not there yet (to store)."""
    fresh: set[int] = set()
    for chunk in _chunks(batches, CLAIM_CHUNK):
        values, params = [], []
        for batch in chunk:
            columns = batch.get("traffic_columns")
            items = (len(batch.get("traffic") or ()) + (len(columns["tenant"]) if columns else 0)
                     + len(batch.get("destinations") or ()) + len(batch.get("events") or ()))
            values.append("(?, ?, ?, ?, ?, ?)")
            params.extend((site, queue, int(batch["seq"]), float(batch["time"]), now, items))
        rows = b.execute(f"INSERT INTO fleet_batches (site, queue, seq, appliance_time, received_at, items) "
                         f"VALUES {', '.join(values)} ON CONFLICT (site, queue, seq) DO NOTHING RETURNING seq",
                         params).fetchall()
        fresh.update(int(r[0]) for r in rows)
    return fresh


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def ingest(b: Any, site: str, queue: str, batches: Sequence[dict[str, Any]], now: float,
           record_event: Callable[[Any, dict[str, Any]], None], tenants: frozenset[str] | None = None,
           retention: SeriesRetention | None = None) -> Ingested:
    """Store `batches` (already checked by `fleet.check_batches`) of `site`'s queue `queue`, in one
    transaction. A batch whose (site, queue, seq) is stored already is skipped: a retry after a
    lost answer, or a backfill overlapping what arrived, is stored once.

    tenants: the tenants the central set assigns to `site`; rows and events of any other tenant are
    skipped and counted (`Ingested.foreign`): a site's token must not write another's customers' data.
    None: no restriction (callers that checked already).

    A second whose minute's seconds are gone already (older than `retention`'s seconds: a long
    backfill) is added to its minute rollups instead (`_fold_into_minutes`; a destination's second
    to its destination minute, `_fold_destinations`), counted in `folded`;
    one older than the minute rollups keep, or more than PARTITIONS_AHEAD_S ahead of `now`, is
    stored nowhere and counted in `outside` (issue 17 review 2, item 3)."""
    retention = retention or SeriesRetention()
    postgres = b.dialect == "postgresql"
    windows = {name: partition_window(b, name) for name, *_ in PARTITIONED} if postgres else {}
    # SQLite: what is gone is decided at the time this transaction runs, not when the request came
    # in (`now`): a retention pass that ran while the request waited for the database deleted by
    # its own clock (SQLITE_RETENTION_LAG_S behind it), so a minute it deleted is gone here too,
    # and a late second of it is folded into its rollup, however long the wait.
    gone_at = now if postgres else max(now, time.time())
    acked = [int(batch["seq"]) for batch in batches]
    fresh = _claim(b, site, queue, batches, now)
    seconds_window = windows.get("fleet_site_seconds")
    destination_ahead_from = windows["fleet_destination_seconds"][1] if postgres else now + PARTITIONS_AHEAD_S
    stored: set[int] = set()
    duplicates = traffic_rows = events = foreign = outside = ahead = folded = 0
    site_seconds: list[_Second] = []
    old_seconds: list[_Second] = []
    ahead_from = seconds_window[1] if seconds_window else now + PARTITIONS_AHEAD_S
    destinations: list[tuple[Any, ...]] = []
    old_destinations: list[tuple[Any, ...]] = []
    minutes: set[int] = set()
    destination_minutes: set[int] = set()
    for batch in batches:
        seq = int(batch["seq"])
        if seq not in fresh or seq in stored:   # stored before, or twice in this request
            duplicates += 1
            continue
        stored.add(seq)
        for second in _seconds_of(batch):
            names = second[1]
            if tenants is not None and not tenants.issuperset(names):
                keep = [i for i, name in enumerate(names) if name in tenants]
                foreign += len(names) - len(keep)
                second = _keep(second, keep)
            if len(set(second[1])) != len(second[1]):   # a tenant twice in a second: the first counts
                first: dict[str, int] = {}
                for i, name in enumerate(second[1]):
                    first.setdefault(name, i)
                second = _keep(second, sorted(first.values()))
            if not second[1]:
                continue
            minute = second[0] // MINUTE_S * MINUTE_S
            if second[0] >= ahead_from:
                outside += len(second[1])
                ahead += len(second[1])
                continue
            if not _source_kept(windows, "minute", minute, gone_at, retention):
                if _kept(windows, "fleet_traffic_minutes", minute, gone_at, retention):
                    old_seconds.append(second)
                    folded += len(second[1])
                else:
                    outside += len(second[1])
                continue
            site_seconds.append(second)
            traffic_rows += len(second[1])
            minutes.add(second[0] // MINUTE_S * MINUTE_S)
        for d in batch.get("destinations") or ():
            if tenants is not None and d["tenant"] not in tenants:
                foreign += 1
                continue
            t = int(d["time"])
            row = (site, d["tenant"], d["address"], t, float(sum(d.get("pps") or ())),
                   float(d.get("dropped_pps") or 0.0))
            minute = t // MINUTE_S * MINUTE_S
            if t >= destination_ahead_from:
                outside += 1
            elif _source_kept(windows, "destination_minute", minute, gone_at, retention):
                destinations.append((*row, json.dumps(d, separators=(",", ":"))))
                destination_minutes.add(minute)
            elif _kept(windows, "fleet_destination_minutes", minute, gone_at, retention):
                old_destinations.append(row)
                folded += 1
            else:
                outside += 1
        for event in batch.get("events") or ():
            if tenants is not None and event["tenant"] not in tenants:
                foreign += 1
                continue
            record_site_event(b, site, event, record_event)
            events += 1
    if postgres:
        _write_site_seconds(b, site, site_seconds)
    else:
        _write_rows(b, "fleet_traffic_seconds", ("site", *TRAFFIC_COLUMNS), [
            row for t, *columns in site_seconds for row in zip(itertools.repeat(site), columns[0],
                                                                 itertools.repeat(t), *columns[1:])])
    _write_rows(b, "fleet_destination_seconds",
                ("site", "tenant", "address", "t", "pps", "dropped_pps", "data"), destinations)
    if minutes:
        mark_pending(b, "minute", site, minutes)
    if not postgres:
        # SQLite: a minute gone at this `now` may still have its seconds, and be pending (stored
        # before it went, not rolled up yet): rolled up from them first, or its rollup, done later,
        # would either miss them (skipped) or the folded row (recomputed).
        folded_minutes = {second[0] // MINUTE_S * MINUTE_S for second in old_seconds}
        _roll_up_pending_now(b, "minute", [(site, m) for m in folded_minutes], gone_at, retention)
        folded_destination_minutes = {row[3] // MINUTE_S * MINUTE_S for row in old_destinations}
        _roll_up_pending_now(b, "destination_minute", [(site, m) for m in folded_destination_minutes], gone_at,
                             retention)
    if old_seconds:
        mark_pending(b, "hour", site, _fold_into_minutes(b, site, old_seconds))
    if destination_minutes:
        mark_pending(b, "destination_minute", site, destination_minutes)
    if old_destinations:
        _fold_destinations(b, site, old_destinations)
    # Not the batches' times: they were made when queued, up to days before a backfill sends them;
    # the appliance's clock is read from its syncs (`record_contact`).
    record_contact(b, site, now, None, None, None, None)
    return Ingested(acked, duplicates, traffic_rows, len(destinations), events, foreign, outside, ahead, folded)


def _fold_into_minutes(b: Any, site: str, seconds: list[_Second]) -> set[int]:
    """Add traffic `seconds` whose minutes' seconds are gone (never rolled up again from them) to
    their minute rollups (`_fold`). The hours they changed (to be rolled up again) are returned."""
    minutes = _fold(b, "fleet_traffic_minutes", ("tenant",), _SUMS, ("max_passed_pps", "max_dropped_pps"),
                    site, [(t, names, values) for t, names, *values in seconds])
    return {minute // HOUR_S * HOUR_S for minute in minutes}


def _fold_destinations(b: Any, site: str, rows: list[tuple[Any, ...]]) -> None:
    """Add destination seconds `rows` (site, tenant, address, t, pps, dropped_pps) whose minutes'
    seconds are gone to their destination minutes (`_fold`). A destination twice in a second (two
    batches of it) is taken as the seconds table takes it: the first copy."""
    by_second: dict[int, dict[tuple[str, str], tuple[float, float]]] = {}
    for _site, tenant, address, t, pps, dropped in rows:
        by_second.setdefault(t, {}).setdefault((tenant, address), (pps, dropped))
    _fold(b, "fleet_destination_minutes", ("tenant", "address"), ("sum_pps", "sum_dropped_pps"),
          ("max_pps", "max_dropped_pps"), site,
          [(t, list(second), list(zip(*second.values(), strict=True))) for t, second in by_second.items()])


def _fold(b: Any, table: str, keys: tuple[str, ...], sums: tuple[str, ...], maxima: tuple[str, ...],
          site: str, seconds: Sequence[tuple[int, list[Any], Any]]) -> set[int]:
    """Add `site`'s `seconds`, each (t, the keys of its rows, their values: one sequence per column
    of `sums`, the first len(`maxima`) of them with maxima), to their rows of the minute rollup
    `table`: sums and samples added, maxima the larger. A key's second goes in once: a row records
    the seconds it holds (`seconds_mask`, bit t - minute), and a second it holds already is left
    out. That is what makes adding right: the batch dedup stores a batch once, but a second can
    come in two batches (two ticks of the appliance in it), in one request or in two, and the
    first of them may have been rolled up on time from the seconds (which keep the first copy, as
    the mask keeps the first copy here). The mask lives as long as its row, which is exactly as
    long as a second can be folded into it. The minutes whose rows changed are returned."""
    held = _seconds_held(b, table, keys, site, {t // MINUTE_S * MINUTE_S for t, _, _ in seconds})
    folds: dict[int, _MinuteFold] = {}
    for t, names, values in seconds:
        minute = t // MINUTE_S * MINUTE_S
        fold = folds.get(minute)
        if fold is None:
            fold = folds[minute] = _MinuteFold(minute, len(sums), len(maxima), held)
        fold.add(t, names, values)
    rows = [row for _, fold in sorted(folds.items()) for row in fold.rows(site)]
    _add_to_minutes(b, table, ("site", *keys, "t"), sums, maxima, rows)
    return {row[1 + len(keys)] for row in rows}


def _seconds_held(b: Any, table: str, keys: tuple[str, ...], site: str,
                  minutes: set[int]) -> dict[tuple[Any, int], int]:
    """{(key, minute): seconds_mask} of `site`'s rows of the minute rollup `table` at `minutes`; a
    key is the value of the one column of `keys`, else a tuple of them. PostgreSQL keeps them locked
    (FOR UPDATE) to the end of the transaction: the read of `_fold`'s read-modify-write."""
    lock = " FOR UPDATE" if b.dialect == "postgresql" else ""
    held: dict[tuple[Any, int], int] = {}
    for chunk in _chunks(sorted(minutes), MINUTES_PER_READ):
        rows = b.execute(f"SELECT {', '.join(keys)}, t, seconds_mask FROM {table} WHERE site = ? "
                         f"AND t IN ({', '.join('?' * len(chunk))}){lock}", (site, *chunk)).fetchall()
        for r in rows:
            held[(r[0] if len(keys) == 1 else tuple(r[:len(keys)]), int(r[-2]))] = int(r[-1])
    return held


class _MinuteFold:
    """A minute's rollup rows as `_fold` adds seconds to them: per key (a tenant; a tenant and an
    address) the sums, maxima and count of the seconds added, and the mask of the seconds the row
    holds (what the stored row held, and those added)."""

    def __init__(self, minute: int, sums: int, maxima: int, held: dict[tuple[Any, int], int]) -> None:
        self.minute, self.held = minute, held
        self.keys: list[Any] = []
        self.index: dict[Any, int] = {}
        self.sums = np.zeros((sums, 0))
        self.maxima = np.zeros((maxima, 0))
        self.samples = np.zeros(0, dtype=np.int64)
        self.masks = np.zeros(0, dtype=np.int64)

    def add(self, t: int, keys: list[Any], values: Any) -> None:
        """Second `t` of each of `keys` (distinct), unless its row holds it already."""
        # Nearly always the keys of the minute's first second, in its order: a site sends its tenants so.
        at: Any = slice(None) if keys == self.keys else self._positions(keys)
        values = np.asarray(values, dtype=np.float64)
        bit = np.int64(1) << np.int64(t - self.minute)
        new = (self.masks[at] & bit) == 0
        if not new.all():
            at, values = np.arange(len(self.keys))[at][new], values[:, new]
        self.sums[:, at] += values
        self.maxima[:, at] = np.maximum(self.maxima[:, at], values[:len(self.maxima)])
        self.samples[at] += 1
        self.masks[at] |= bit

    def _positions(self, keys: list[Any]) -> Any:
        """Where each of `keys` is; a key new to the minute is appended, holding what its stored
        row holds."""
        known = len(self.keys)
        at = np.array([self.index.setdefault(key, len(self.index)) for key in keys], dtype=np.intp)
        new = list(self.index)[known:]
        if new:
            self.keys.extend(new)
            self.sums = np.hstack((self.sums, np.zeros((len(self.sums), len(new)))))
            self.maxima = np.hstack((self.maxima, np.full((len(self.maxima), len(new)), -np.inf)))
            self.samples = np.concatenate((self.samples, np.zeros(len(new), dtype=np.int64)))
            held = [self.held.get((key, self.minute), 0) for key in new]
            self.masks = np.concatenate((self.masks, np.array(held, dtype=np.int64)))
        return at

    def rows(self, site: str) -> list[tuple[Any, ...]]:
        """`_add_to_minutes`' rows of the keys that got a second: (site, the key's columns, minute,
        sums, maxima, samples, seconds_mask)."""
        got = np.flatnonzero(self.samples)
        return [(site, *(key if isinstance(key, tuple) else (key,)), self.minute, *sums, *maxima, n, mask)
                for key, sums, maxima, n, mask in zip(
                    [self.keys[i] for i in got], self.sums[:, got].T.tolist(), self.maxima[:, got].T.tolist(),
                    self.samples[got].tolist(), self.masks[got].tolist(), strict=True)]


def _add_to_minutes(b: Any, table: str, keys: tuple[str, ...], sums: tuple[str, ...], maxima: tuple[str, ...],
                    rows: list[tuple[Any, ...]]) -> None:
    """Add `rows` (the `keys`, then the `sums`, the `maxima`, `samples` and `seconds_mask`) to the
    minute rollup `table`: a new key is inserted; one already there gets its sums and samples added,
    its maxima the larger and the seconds of both in its mask."""
    larger = "GREATEST" if b.dialect == "postgresql" else "MAX"
    columns = (*keys, *sums, *maxima, "samples", "seconds_mask")
    update = [*(f"{c} = {table}.{c} + excluded.{c}" for c in (*sums, "samples")),
              *(f"{c} = {larger}({table}.{c}, excluded.{c})" for c in maxima),
              f"seconds_mask = {table}.seconds_mask | excluded.seconds_mask"]
    b.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
                  f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(update)}", rows)


def mark_pending(b: Any, level: str, site: str, starts: set[int]) -> None:
    """The minutes (or hours) starting at `starts` got new data: to be rolled up (again)."""
    # DO UPDATE, not DO NOTHING (issue 17 review 2, item 2): it row-locks a key that is there
    # already until this transaction ends, so a rollup deleting the key waits for this ingest to
    # commit and then sees its seconds. With DO NOTHING the rollup took the key, summed the minute
    # without this ingest's (uncommitted) second, and nothing marked the minute again.
    b.executemany("INSERT INTO fleet_rollup_pending (level, site, t) VALUES (?, ?, ?) "
                  "ON CONFLICT (level, site, t) DO UPDATE SET t = excluded.t",
                  [(level, site, t) for t in sorted(starts)])


_SITE_SECOND_COLUMNS = ("site", "t", "tenants", "passed_pps", "dropped_pps", "passed_bps", "dropped_bps",
                        "total_passed_pps", "total_dropped_pps", "total_passed_bps", "total_dropped_bps",
                        "tenant_count")


def _site_second_row(site: str, second: _Second) -> tuple[Any, ...]:
    t, names, *values = second
    return (site, t, names, *values, *(float(sum(v)) for v in values), len(names))


# PostgreSQL's binary COPY format (the server's "COPY ... FORMAT BINARY" documentation): a header,
# per row a field count and length-prefixed fields, a trailer. Arrays: dimensions, element type,
# then length-prefixed elements. Written here because psycopg builds arrays element by element in
# Python: 100 ms per site-second of 10,000 tenants (profiled), the whole ingest budget at 20 sites.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_FLOAT8_OID, _TEXT_OID = 701, 25
_FLOAT_ELEMENT = np.dtype([("length", ">i4"), ("value", ">f8")])


def _field(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def _float_array(values: Sequence[float]) -> bytes:
    elements = np.empty(len(values), dtype=_FLOAT_ELEMENT)
    elements["length"] = 8
    elements["value"] = values
    return _field(struct.pack(">iiiii", 1, 0, _FLOAT8_OID, len(values), 1) + elements.tobytes())


def _text_array(values: Sequence[str]) -> bytes:
    encoded = [v.encode() for v in values]
    pack = struct.Struct(">i").pack
    return _field(struct.pack(">iiiii", 1, 0, _TEXT_OID, len(values), 1)
                  + b"".join(pack(len(e)) + e for e in encoded))


def _binary_site_second(site: str, second: _Second) -> bytes:
    t, names, *values = second
    totals = [float(sum(v)) for v in values]
    return b"".join((struct.pack(">h", len(_SITE_SECOND_COLUMNS)), _field(site.encode()), _field(struct.pack(">q", t)),
                     _text_array(names), *(_float_array(v) for v in values),
                     *(_field(struct.pack(">d", total)) for total in totals), _field(struct.pack(">i", len(names)))))


def _write_site_seconds(b: Any, site: str, seconds: list[_Second]) -> None:
    """PostgreSQL: each site-second as one row, all in one binary COPY. A second stored already (an
    appliance whose two ticks fell in one second sends it in two batches) fails the COPY, which
    has no ON CONFLICT: then the seconds go one by one, merged into what is there (its tenants
    keep their first values, tenants new to the second are added)."""
    if not seconds:
        return
    import psycopg  # noqa: PLC0415 - only a PostgreSQL store gets here

    try:
        # transaction(): a savepoint, so that the failed COPY alone is undone.
        with (b.connection.transaction(),
              b.connection.cursor().copy(f"COPY fleet_site_seconds ({', '.join(_SITE_SECOND_COLUMNS)}) "
                                         f"FROM STDIN (FORMAT BINARY)") as copy):
            copy.write(_COPY_HEADER)
            for second in seconds:
                copy.write(_binary_site_second(site, second))
            copy.write(_COPY_TRAILER)
        return
    except psycopg.errors.UniqueViolation:
        pass
    for second in seconds:
        row = b.execute("SELECT tenants, passed_pps, dropped_pps, passed_bps, dropped_bps FROM fleet_site_seconds "
                        "WHERE site = ? AND t = ? FOR UPDATE", (site, second[0])).fetchone()
        if row is None:
            b.execute(f"INSERT INTO fleet_site_seconds ({', '.join(_SITE_SECOND_COLUMNS)}) "
                      f"VALUES ({', '.join('?' * len(_SITE_SECOND_COLUMNS))})", _site_second_row(site, second))
            continue
        have = set(row[0])
        new = [i for i, name in enumerate(second[1]) if name not in have]
        if not new:
            continue
        merged = (second[0], *(list(old) + [column[i] for i in new]
                               for old, column in zip(row, second[1:], strict=True)))
        b.execute("UPDATE fleet_site_seconds SET tenants = ?, passed_pps = ?, dropped_pps = ?, passed_bps = ?, "
                  "dropped_bps = ?, total_passed_pps = ?, total_dropped_pps = ?, total_passed_bps = ?, "
                  "total_dropped_bps = ?, tenant_count = ? WHERE site = ? AND t = ?",
                  (*_site_second_row(site, merged)[2:], site, second[0]))


def record_site_event(b: Any, site: str, event: dict[str, Any], record_event: Callable[[Any, dict[str, Any]], None]
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
    if b.dialect == "postgresql":   # the site-second row carries its sums
        sql = (f"SELECT site, t, total_passed_pps, total_dropped_pps, total_passed_bps, total_dropped_bps, "
               f"tenant_count FROM fleet_site_seconds {where}")
    else:
        sql = (f"SELECT site, t, SUM(passed_pps), SUM(dropped_pps), SUM(passed_bps), SUM(dropped_bps), "
               f"COUNT(*) FROM fleet_traffic_seconds {where} GROUP BY site, t")
    newest: dict[str, dict[str, float]] = {}
    for r in b.execute(sql, params).fetchall():
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
    if site is not None:
        where.append("site = ?")
        params.append(site)
    if tenant is not None and b.dialect == "postgresql":
        # One tenant: its place in each site-second's array, then its four values, instead of
        # unnesting all 10,000 (the view): 57 against 191 ms for a site-minute (measured).
        rows = b.execute(f"SELECT site, ?, t, passed_pps[i], dropped_pps[i], passed_bps[i], dropped_bps[i] FROM ("
                         f"SELECT site, t, array_position(tenants, ?::text) AS i, passed_pps, dropped_pps, "
                         f"passed_bps, dropped_bps FROM fleet_site_seconds WHERE {' AND '.join(where)}) s "
                         f"WHERE i IS NOT NULL ORDER BY t, site", (tenant, tenant, *params)).fetchall()
    else:
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
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


# -- rollups --------------------------------------------------------------------------------------

RESOLUTIONS = {"minute": ("fleet_traffic_minutes", MINUTE_S), "hour": ("fleet_traffic_hours", HOUR_S)}


def series(b: Any, resolution: str, since: float, until: float | None = None, *, site: str | None = None,
           tenant: str | None = None) -> list[dict[str, Any]]:
    """Minute or hour rows from the rollups, oldest first: the mean pps and bps over the seconds
    behind each row (`samples`), the maxima, optionally of one site and/or tenant. For spans
    longer than a few minutes: the seconds of a tenant cost a pass over each site-second."""
    table, step = RESOLUTIONS[resolution]
    where, params = ["t >= ?"], [int(since) // step * step]
    if until is not None:
        where.append("t < ?")
        params.append(int(until))
    for column, value in (("site", site), ("tenant", tenant)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    rows = b.execute(f"SELECT site, tenant, t, {_ROLLUP_COLUMNS} FROM {table} WHERE {' AND '.join(where)} "
                     f"ORDER BY t, site, tenant", params).fetchall()
    return [{"site": r[0], "tenant": r[1], "time": r[2], "passed_pps": r[3] / r[9], "dropped_pps": r[4] / r[9],
             "passed_bps": r[5] / r[9], "dropped_bps": r[6] / r[9], "max_passed_pps": r[7],
             "max_dropped_pps": r[8], "samples": r[9]} for r in rows]


def rollup(b: Any, now: float, retention: SeriesRetention, limit: int = ROLLUPS_PER_PASS) -> dict[str, int]:
    """Roll up the pending minutes that have ended (ROLLUP_GRACE_S ago) from the seconds, then the
    pending hours that have ended from the minutes. Each is recomputed whole (delete, insert the
    sums), so a minute that got a backfilled second after its first rollup ends up equal to the
    sums of all its seconds. On PostgreSQL a minute (an hour) whose seconds' (minutes') partition
    is gone is left as it is (a backfill that old was folded into it at ingest:
    `_fold_into_minutes`; were it pending at the drop, `maintain_partitions` rolled it up before
    dropping its seconds), and one whose partition is there is recomputed, whatever `now` says
    (`_source_kept`); on SQLite a pending key still has all its source rows (see
    `_roll_up_pending_now`), whatever `now` says.

    Each key is rolled up in a savepoint of its own (issue 17 review 2, item 1): one the database
    refuses (a sum out of range) is logged, dropped from the pending set and counted in "failed",
    instead of failing the pass and coming back first on every pass after.

    The destination minutes ("destination_minute") are rolled up the same way from the destination
    seconds, a site-minute at a time (all its destinations); they have no hour rollups."""
    done = {"minute": 0, "hour": 0, "destination_minute": 0, "failed": 0}
    windows = {name: partition_window(b, name) for name, *_ in PARTITIONED} if b.dialect == "postgresql" else {}
    for level, _source, table, step in _LEVELS:
        pending = b.execute("SELECT site, t FROM fleet_rollup_pending WHERE level = ? AND t <= ? ORDER BY t LIMIT ?",
                            (level, int(now) - step - ROLLUP_GRACE_S, limit)).fetchall()
        hours: dict[str, set[int]] = {}
        for site, start in pending:
            b.execute("DELETE FROM fleet_rollup_pending WHERE level = ? AND site = ? AND t = ?", (level, site, start))
            # SQLite: a pending key's source rows are all there even once `now` calls them gone
            # (retention rolls the pending keys up before it deletes their sources, ingest before
            # it folds into them), so it is recomputed; PostgreSQL's partition may be dropped.
            if (windows and not _source_kept(windows, level, start, now, retention)) or not _kept(
                    windows, table, start, now, retention):
                continue   # its source rows are gone, or there is no partition for it: keep what is there
            if not _rollup_key(b, level, site, start):
                done["failed"] += 1
                continue
            done[level] += 1
            if level == "minute":
                hours.setdefault(site, set()).add(start // HOUR_S * HOUR_S)
        for site, starts in hours.items():
            mark_pending(b, "hour", site, starts)
    return done


def _rollup_key(b: Any, level: str, site: str, start: int) -> bool:
    """Recompute one key of `level` (a site's minute or hour) whole from its source rows, in a
    savepoint of its own; False (logged) when the database refuses it."""
    _, source, table, step = _LEVEL[level]
    if level == "minute":
        keys, columns = "tenant", f"{_ROLLUP_COLUMNS}, seconds_mask"
        select = (f"SUM(passed_pps), SUM(dropped_pps), SUM(passed_bps), SUM(dropped_bps), MAX(passed_pps), "
                  f"MAX(dropped_pps), COUNT(*), {_SECONDS_MASK_SQL}")
    elif level == "hour":
        keys, columns = "tenant", _ROLLUP_COLUMNS
        select = (f"{', '.join(f'SUM({c})' for c in _SUMS)}, MAX(max_passed_pps), MAX(max_dropped_pps), "
                  f"SUM(samples)")
    else:
        keys, columns = "tenant, address", f"{_DESTINATION_ROLLUP_COLUMNS}, seconds_mask"
        select = f"SUM(pps), SUM(dropped_pps), MAX(pps), MAX(dropped_pps), COUNT(*), {_SECONDS_MASK_SQL}"
    b.execute("SAVEPOINT fleet_rollup_key")
    try:
        b.execute(f"DELETE FROM {table} WHERE site = ? AND t = ?", (site, start))
        b.execute(f"INSERT INTO {table} (site, {keys}, t, {columns}) SELECT site, {keys}, ?, {select} "
                  f"FROM {source} WHERE site = ? AND t >= ? AND t < ? GROUP BY site, {keys}",
                  (start, *(() if level == "hour" else (start,)), site, start, start + step))
    except Exception as exc:   # the database's own error class differs by driver
        b.execute("ROLLBACK TO SAVEPOINT fleet_rollup_key")
        b.execute("RELEASE SAVEPOINT fleet_rollup_key")
        log.error("fleet.rollup_key_failed", level=level, site=site, t=start, error=str(exc)[:300])
        return False
    b.execute("RELEASE SAVEPOINT fleet_rollup_key")
    return True


def _roll_up_pending_now(b: Any, level: str, keys: Sequence[tuple[str, int]], now: float,
                         retention: SeriesRetention, windows: dict[str, tuple[int, int]] | None = None) -> int:
    """Roll up those of `keys` (site, start) of `level` that are pending, now, whatever the grace:
    their source rows are about to go (retention; on PostgreSQL, their partition's drop) or their
    rollup row is about to be added to (a fold at ingest, SQLite), and a later recompute would
    then miss them. `windows`: PostgreSQL's partitions, for whether a rollup row can be stored
    (`_kept`). The rollups done."""
    done = 0
    hours: dict[str, set[int]] = {}
    table = _LEVEL[level][2]
    for site, start in keys:
        if not b.execute("DELETE FROM fleet_rollup_pending WHERE level = ? AND site = ? AND t = ?",
                         (level, site, start)).rowcount:
            continue   # not pending: its rollup row has all its source rows already
        if _kept(windows or {}, table, start, now, retention) and _rollup_key(b, level, site, start):
            done += 1
            if level == "minute":
                hours.setdefault(site, set()).add(start // HOUR_S * HOUR_S)
    for site, starts in hours.items():
        mark_pending(b, "hour", site, starts)
    return done


# (level of fleet_rollup_pending, the table rolled up from, the rollup table, its step in seconds),
# in the order a pass takes them: the hours after the minutes they are rolled up from.
_LEVELS = (("minute", "fleet_traffic_seconds", "fleet_traffic_minutes", MINUTE_S),
           ("destination_minute", "fleet_destination_seconds", "fleet_destination_minutes", MINUTE_S),
           ("hour", "fleet_traffic_minutes", "fleet_traffic_hours", HOUR_S))
_STEP = {table: step for _, _, table, step in _LEVELS}
_LEVEL = {level[0]: level for level in _LEVELS}


def _source_kept(windows: dict[str, tuple[int, int]], level: str, start: int, now: float,
                 retention: SeriesRetention) -> bool:
    """Whether the rows a `level` key is rolled up from are still there. PostgreSQL (`windows`, the
    partitions): the source table's partition (`_SOURCE_TABLE`: the seconds' for a minute, the
    minutes' for an hour, which lies within one day partition), dropped whole and never made again
    once past retention, not `now`: a day of minutes is dropped only once all of it is past
    retention, and until then ingest folds a late second into any of its minutes (`_kept`) and
    marks that minute's hour, which must then be rolled up. SQLite: retention at `now`, a whole
    key at a time (`_sources_kept_from`). The same test decides at ingest whether a second is
    stored or folded into its minute (`_fold_into_minutes`)."""
    if windows:
        low, high = windows[_SOURCE_TABLE[level]]
        return low <= start < high
    return start >= _sources_kept_from(level, now, retention)


def _sources_kept_from(level: str, now: float, retention: SeriesRetention) -> int:
    """The start of the oldest `level` key whose source rows retention at `now` keeps, by time:
    SQLite's retention (PostgreSQL goes by its partitions, see `_source_kept`). Whole keys:
    the cutoff is aligned down to the key's step, so that a minute (an hour) has all its seconds
    (minutes) or none, and a late row of one that has none is added to its rollup
    (`_fold_into_minutes`) instead of it being recomputed from part of its rows."""
    seconds = level in ("minute", "destination_minute")
    keep = retention.fleet_second_retention_s if seconds else retention.fleet_minute_retention_days * 86400
    step = MINUTE_S if seconds else HOUR_S
    return math.floor(now - keep) // step * step


def _kept(windows: dict[str, tuple[int, int]], table: str, start: int, now: float, retention: SeriesRetention) -> bool:
    """Whether a rollup row of `table` at `start` can be stored: its partition is there
    (PostgreSQL), it is within retention (SQLite; a minute while its hour's minutes are kept)."""
    if windows:
        low, high = windows[table]
        return low <= start < high
    if table == "fleet_traffic_minutes":   # the source of the hours: kept and deleted by the hour
        return start >= _sources_kept_from("hour", now, retention)
    keep = next(k for name, _, k in PARTITIONED if name == table)(retention)
    return start >= now - keep - _STEP[table]


# -- retention ------------------------------------------------------------------------------------

def apply_retention(b: Any, now: float, retention: SeriesRetention) -> dict[str, int]:
    """Expired series and dedup rows. PostgreSQL drops whole partitions (`maintain_partitions`,
    which also makes the ones ahead, and first rolls up the pending keys whose source rows are in
    the partitions it drops): what is counted there is partitions. SQLite deletes rows,
    the sources of the rollups (seconds, and minutes as the source of hours) a whole minute (hour)
    at a time, what `_source_kept` calls gone at `now - SQLITE_RETENTION_LAG_S`, after rolling
    up the pending keys among them (their rows would be missing from them for good). Both count
    the keys rolled up so in LEVEL_rolled_up_first."""
    removed: dict[str, int] = {}
    if b.dialect == "postgresql":
        for table, changes in maintain_partitions(b, now, retention).items():
            removed[f"{table}_partitions"] = changes["dropped"]
            if table in _SOURCE_LEVEL:   # named as SQLite's below: both report alike
                removed[f"{_SOURCE_LEVEL[table]}_rolled_up_first"] = changes["rolled_up_first"]
    else:
        day = 86400
        cutoff: dict[str, int] = {}
        for level, source, _table, _step in _LEVELS:   # the minutes first: they mark their hours
            cutoff[source] = _sources_kept_from(level, now - SQLITE_RETENTION_LAG_S, retention)
            pending = b.execute("SELECT site, t FROM fleet_rollup_pending WHERE level = ? AND t < ? ORDER BY t",
                                (level, cutoff[source])).fetchall()
            removed[f"{level}_rolled_up_first"] = _roll_up_pending_now(b, level, pending, now, retention)
        for table, keep in (("fleet_traffic_hours", retention.fleet_hour_retention_days * day),
                            ("fleet_destination_minutes", retention.fleet_destination_minute_retention_days * day)):
            cutoff[table] = int(now - keep)   # rolled up from nothing: row by row
        for table, before in cutoff.items():
            removed[table] = b.execute(f"DELETE FROM {table} WHERE t < ?", (before,)).rowcount
    removed["fleet_batches"] = b.execute("DELETE FROM fleet_batches WHERE received_at < ?",
                                         (now - BATCHES_KEPT_S,)).rowcount
    return removed
