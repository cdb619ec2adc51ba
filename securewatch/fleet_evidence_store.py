"""The central database's side of a site's incident evidence (`fleet_evidence`): no imports from
the web layer, so that the store's migrations can name it.

Kept `fleet_evidence_retention_days` (`[securewatch]`, `series.SeriesRetention`) after receipt:
`apply_retention` deletes older rows in the central server's retention pass (`fleet.partition_upkeep`).
A capture asked for after that is answered as no longer kept (`capture_missing`), not as an error."""

from __future__ import annotations

import json
import time
from typing import Any

from .series import SECONDS_PER_DAY

EVIDENCE_MAX_BYTES = 8 * 1024 * 1024   # bytes per PCAP file: the appliance's own cap (pcap_max_bytes)
EVIDENCE_KINDS = ("dropped", "passed")  # the two files `policy.pcap.IncidentPcap` writes

MIGRATION = [
    """CREATE TABLE IF NOT EXISTS fleet_evidence (
        incident_id TEXT NOT NULL, kind TEXT NOT NULL, site TEXT NOT NULL, sha256 TEXT NOT NULL,
        bytes BIGINT NOT NULL, received_at {real} NOT NULL, data {blob} NOT NULL,
        PRIMARY KEY (incident_id, kind))""",
    # A site's BGP announcements and withdrawals, each once: a retry sends the same (time, action, route).
    """CREATE TABLE IF NOT EXISTS fleet_announcements (
        incident_id TEXT NOT NULL, site TEXT NOT NULL, at {real} NOT NULL, action TEXT NOT NULL,
        kind TEXT NOT NULL, route TEXT NOT NULL, tenant TEXT NOT NULL, data TEXT NOT NULL,
        PRIMARY KEY (incident_id, at, action, kind, route))""",
]


def store_evidence(b: Any, incident_id: str, kind: str, site: str, sha256: str, data: bytes) -> str:
    """'unknown' (no such incident), 'duplicate' (this very file is stored) or 'stored'."""
    if b.execute("SELECT 1 FROM incidents WHERE id = ?", (incident_id,)).fetchone() is None:
        return "unknown"
    row = b.execute("SELECT sha256 FROM fleet_evidence WHERE incident_id = ? AND kind = ?",
                    (incident_id, kind)).fetchone()
    if row is not None and row[0] == sha256:
        return "duplicate"
    # A newer file of the same kind (the capture grew after a first upload) replaces the older one.
    b.execute("INSERT INTO fleet_evidence (incident_id, kind, site, sha256, bytes, received_at, data) "
              "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (incident_id, kind) DO UPDATE SET "
              "site = excluded.site, sha256 = excluded.sha256, bytes = excluded.bytes, "
              "received_at = excluded.received_at, data = excluded.data",
              (incident_id, kind, site, sha256, len(data), time.time(), data))
    return "stored"


def apply_retention(b: Any, now: float, retention_days: int) -> int:
    """Delete the files received more than `retention_days` before `now` (epoch seconds) of incidents that
    have ended (an incident still open, however long, keeps its evidence, as on the appliance); rows removed.
    received_at is the central server's own clock: a site's skew does not age its files."""
    return b.execute("DELETE FROM fleet_evidence WHERE received_at < ? AND incident_id IN "
                     "(SELECT id FROM incidents WHERE ended IS NOT NULL)",
                     (now - retention_days * SECONDS_PER_DAY,)).rowcount


def incident_site(b: Any, incident_id: str) -> str | None:
    """The site an incident came from (None: a local incident, or none such)."""
    row = b.execute("SELECT site FROM incidents WHERE id = ?", (incident_id,)).fetchone()
    return None if row is None else row[0]


def capture_missing(incident_id: str, kind: str, *, site: str | None, ended: float | None, now: float,
                    retention_days: int | None) -> str:
    """Why an incident's `kind` capture cannot be served, for the API's 404 and the incident page.
    site: the incident's site (central server) or None (this appliance's own capture);
    retention_days: how long this server keeps a site's files (central) or None."""
    what = f"the {kind} capture of incident {incident_id}"
    if site is None:
        return (f"{what} is no longer kept: this appliance deletes an incident's PCAP files "
                f"pcap_retention_days after it ended, and the oldest first past pcap_max_total_bytes")
    if retention_days is not None and ended is not None and ended < now - retention_days * SECONDS_PER_DAY:
        return (f"{what} is no longer kept: the central server deletes a site's PCAP files "
                f"{retention_days} days after receipt (fleet_evidence_retention_days)")
    return (f"{what} is not kept at the central server: site {site} has not sent it (yet), or it was "
            f"deleted after fleet_evidence_retention_days ({retention_days} days)")


def site_pcap(b: Any, incident_id: str, kind: str) -> bytes | None:
    row = b.execute("SELECT data FROM fleet_evidence WHERE incident_id = ? AND kind = ?",
                    (incident_id, kind)).fetchone()
    return None if row is None else bytes(row[0])


def site_pcap_kinds(b: Any, incident_id: str) -> dict[str, dict[str, Any]]:
    rows = b.execute("SELECT kind, bytes, sha256, received_at FROM fleet_evidence WHERE incident_id = ? "
                     "ORDER BY kind", (incident_id,)).fetchall()
    return {r[0]: {"bytes": int(r[1]), "sha256": r[2], "received_at": r[3]} for r in rows}


def site_pcap_files(b: Any, incident_id: str) -> dict[str, bytes]:
    """kind -> file of the captures uploaded for `incident_id` (none for a local incident)."""
    rows = b.execute("SELECT kind, data FROM fleet_evidence WHERE incident_id = ? ORDER BY kind",
                     (incident_id,)).fetchall()
    return {r[0]: bytes(r[1]) for r in rows}


def store_announcements(b: Any, site: str, items: list[dict[str, Any]]) -> tuple[int, int]:
    """Store `site`'s announcements (checked) under its incidents ("SITE:ID"); (stored, skipped):
    skipped are retries already stored and those of incidents central does not know."""
    stored = skipped = 0
    for a in items:
        incident_id = f"{site}:{a['incident_id']}"
        if b.execute("SELECT 1 FROM incidents WHERE id = ?", (incident_id,)).fetchone() is None:
            skipped += 1
            continue
        route = json.dumps(a["match"], sort_keys=True, separators=(",", ":"))
        cur = b.execute("INSERT INTO fleet_announcements (incident_id, site, at, action, kind, route, tenant, data) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (incident_id, site, float(a["at"]), a["action"], a["kind"], route, a["tenant"],
                         json.dumps(a, separators=(",", ":"))))
        if cur.rowcount > 0:
            stored += 1
        else:
            skipped += 1
    return stored, skipped


def site_announcements(b: Any, incident_id: str) -> list[dict[str, Any]]:
    """The announcements and withdrawals a site sent for one of its incidents, oldest first."""
    rows = b.execute("SELECT site, data FROM fleet_announcements WHERE incident_id = ? ORDER BY at, action",
                     (incident_id,)).fetchall()
    return [{**json.loads(r[1]), "site": r[0]} for r in rows]
