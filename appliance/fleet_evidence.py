"""An incident's evidence up to the central server (issue 17, item 3): its PCAP files.

Its BGP announcements and withdrawals (ESCALATION events) are queued the same way, after the
newest batch, and sent as JSON to `POST /api/v1/fleet/site/announcements` with the peers' state.

When an incident ends (ATTACK_END: its files are final) the agent queues each of its PCAP files
(`details.pcap`, `policy.pcap.IncidentPcap`) in the queue's `evidence` table next to the batch
that carried the event, so that a central outage or a restart loses nothing. A file goes up (`FleetAgent.send_evidence_once`) once
that batch was acknowledged (the central server knows the incident then), one file a turn of the
send loop, oldest first, as the raw file to `POST /api/v1/fleet/site/evidence`
(`securewatch.fleet_evidence`) with its SHA-256: a retry after a lost answer is taken once.

A file the appliance's PCAP retention deleted before it could go (`policy.pcap.prune`) is logged
and dropped. A file over EVIDENCE_MAX_BYTES (the appliance's own PCAP cap, `pcap_max_bytes`, 8 MiB by default)
is not sent, nor one the central server refuses as data (413, 422) or for an incident it does not
know (404: its batch was refused); each is logged and dropped. The link down, the server down, a
refused token: the file stays queued and is retried with the batches' backoff.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import structlog

from policy.events import Event

log = structlog.get_logger("seawall.fleet")

EVIDENCE_PATH = "/api/v1/fleet/site/evidence"
EVIDENCE_MAX_BYTES = 8 * 1024 * 1024   # bytes per PCAP file sent: the central server's limit too
DROPPED_AS_DATA = (404, 413, 422)      # refusals of this one file, not of the site or the link
ANNOUNCEMENTS_PATH = "/api/v1/fleet/site/announcements"
SEND_MAX_ANNOUNCEMENTS = 500           # announcements per request (central takes 1,000)


def pcap_files(events: list[dict[str, Any]]) -> Iterator[tuple[str, str, str]]:
    """(incident, kind, path) of each PCAP file of the ended incidents among `events`."""
    for event in events:
        if event.get("type") != "ATTACK_END" or not event.get("incident_id"):
            continue
        pcap = (event.get("details") or {}).get("pcap") or {}
        if not isinstance(pcap, dict):
            continue
        for kind, ref in pcap.items():
            if isinstance(ref, dict) and isinstance(ref.get("path"), str):
                yield str(event["incident_id"]), str(kind), ref["path"]


def read_file(path: str) -> bytes | None:
    """The file, or None when it is gone or over the cap (logged)."""
    try:
        size = pathlib.Path(path).stat().st_size
        if size > EVIDENCE_MAX_BYTES:
            log.error("fleet.evidence_too_large", path=path, bytes=size, max_bytes=EVIDENCE_MAX_BYTES)
            return None
        return pathlib.Path(path).read_bytes()[:EVIDENCE_MAX_BYTES + 1]
    except FileNotFoundError:
        # Aged out before it could go (`policy.pcap.prune`: pcap_retention_days, pcap_max_total_bytes).
        log.warning("fleet.evidence_gone", path=path, hint="deleted by the appliance's PCAP retention")
        return None
    except OSError as exc:
        log.error("fleet.evidence_unreadable", path=path, error=str(exc))
        return None


def announcement(event: Event, appliance: Any) -> dict[str, Any]:
    """An escalation event (`escalation.controller`'s ESCALATION) as central takes it
    (`securewatch.fleet_evidence`), with the state of the BGP peers at that moment."""
    details = event.details or {}
    status = appliance.bgp_status() if callable(getattr(appliance, "bgp_status", None)) else None
    peers = [{"address": str(p.get("address")), "state": str(p.get("state"))}
             for p in (status or {}).get("peers") or []]
    return {"incident_id": event.incident_id, "tenant": event.tenant, "at": event.timestamp,
            "action": details.get("action"), "kind": details.get("kind"), "match": details.get("match") or {},
            "reason": details.get("reason"), "actor": details.get("actor"), "why": event.message,
            "peers": peers}
