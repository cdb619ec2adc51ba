"""Escalation in the running appliance: the ladder's decisions carried out by the speaker, told to everyone.

`Escalation` owns a `Ladder` (the decisions) and a `Speaker` (ExaBGP). Once a second the
appliance calls `step` with the external link's inbound bits/s and the engine's open
incidents; operators call `escalate` and `withdraw` (SecureWatch's API and UI, through the
appliance's hooks). Every announce, withdraw and refusal is logged and published on the event
bus as an ESCALATION event, so syslog, SNMP, email and webhooks carry it like ATTACK_START.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from policy.events import Event, EventBus, EventType, Severity
from tenants import Tenant

from .config import BgpSettings, EscalationSettings
from .ladder import ANNOUNCE, REFUSE, WITHDRAW, Change, IncidentView, Ladder
from .routes import RTBH, Refused
from .speaker import STATE_ESTABLISHED, Speaker

log = structlog.get_logger("seawall.bgp")

_SEVERITY = {ANNOUNCE: Severity.WARNING, WITHDRAW: Severity.NOTICE, REFUSE: Severity.WARNING}
SAVED = "announcements.json"    # under the run directory: what is announced, for the next process


class Escalation:
    def __init__(self, bgp: BgpSettings, settings: EscalationSettings, run_dir: pathlib.Path,
                 bus: EventBus | None = None) -> None:
        self.bgp = bgp
        self.settings = settings
        self.bus = bus
        self.ladder = Ladder(bgp, settings)
        self.speaker = Speaker(bgp, run_dir, on_state=self._session_changed)
        self.saved_path = pathlib.Path(run_dir) / SAVED
        self.inbound_bps: float | None = None
        self._unchecked: list[dict[str, Any]] = []    # a previous process's announcements, until the first step

    async def start(self) -> None:
        """Start the speaker. The routes a previous process announced, if it stopped (or died) less
        than `hold_down_s` ago, are announced again at the first `step`, which brings the current
        tenants: each is checked against them first (`Ladder.restore`). An attack still going on
        keeps its routes through a restart; a tenant removed or changed meanwhile does not."""
        self._unchecked = self.saved_announcements()
        await self.speaker.start()

    def saved_announcements(self) -> list[dict[str, Any]]:
        try:
            saved = json.loads(self.saved_path.read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(saved, dict) or time.time() - float(saved.get("saved_at", 0)) > self.settings.hold_down_s:
            return []
        return list(saved.get("announcements") or [])

    def save(self) -> None:
        """Written each step while anything is announced (and when it changes), so a restart after a
        crash finds it fresh; a clean stop keeps the last table for the next start."""
        tmp = self.saved_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"saved_at": time.time(), "announcements": [
            a.to_dict() for a in self.ladder.announcements.values()]}))
        os.replace(tmp, self.saved_path)

    async def stop(self) -> None:
        """Withdraw everything (events included), then stop the speaker: nothing stays announced."""
        if self.ladder.announcements:
            self.save()
        self._carry_out(self.ladder.withdraw_all("Seawall is stopping"))
        await self.speaker.stop()

    async def reconfigure(self, bgp: BgpSettings, settings: EscalationSettings) -> list[Change]:
        """A reload's new [bgp] and [escalation] (validated by the caller): announcements are kept,
        except those no peer takes any more or beyond a lowered cap (withdrawn, with events); a
        changed [bgp] restarts the speaker, which announces what is kept again to the new peers."""
        changes = self._carry_out(self.ladder.reconfigure(bgp, settings))
        self.bgp, self.settings = bgp, settings
        restarted = await self.speaker.reconfigure(bgp)
        log.info("bgp.reconfigured", withdrawn=len(changes), speaker_restarted=restarted,
                 kept=len(self.ladder.announcements))
        self.save()
        return changes

    def step(self, now: float, inbound_bps: float | None, incidents: Sequence[IncidentView],
             tenants: Mapping[str, Tenant]) -> list[Change]:
        self.inbound_bps = inbound_bps
        if self._unchecked:
            self._restore(now, tenants)
        changes = self._carry_out(self.ladder.tick(now, inbound_bps, incidents, tenants))
        if self.ladder.announcements or changes:
            self.save()
        return changes

    def escalate(self, incident: IncidentView, tenant: Tenant, kind: str, actor: str) -> list[Change]:
        """Refused (its message says why) when it cannot be made; a refusal of some routes
        (the cap) comes back among the changes."""
        changes = self._carry_out(self.ladder.escalate(incident, tenant, kind, actor, time.monotonic()))
        self.save()
        return changes

    def withdraw(self, incident_id: str, actor: str) -> list[Change]:
        changes = self.ladder.withdraw(incident_id, actor)
        if not changes:
            raise Refused(f"incident {incident_id!r} has nothing announced")
        changes = self._carry_out(changes)
        self.save()
        return changes

    def _restore(self, now: float, tenants: Mapping[str, Tenant]) -> None:
        restored = self.ladder.restore(self._unchecked, now, tenants)
        self._unchecked = []
        for ann in restored.taken:
            self.speaker.announce(ann.route)
            log.info("bgp.announcement_restored", kind=ann.kind, match=ann.route.to_dict(), incident=ann.incident,
                     tenant=ann.tenant)
        for ann, why in restored.dropped:
            log.warning("bgp.announcement_not_restored", kind=ann.kind, match=ann.route.to_dict(),
                        incident=ann.incident, tenant=ann.tenant, why=why)
        self.save()        # without the dropped ones: a later restart must not find them either

    def _carry_out(self, changes: list[Change]) -> list[Change]:
        for change in changes:
            ann = change.announcement
            if change.action == ANNOUNCE:
                self.speaker.announce(ann.route)
            elif change.action == WITHDRAW:
                self.speaker.withdraw(ann.route)
            fields = {"kind": ann.kind, "match": ann.route.to_dict(), "incident": ann.incident,
                      "tenant": ann.tenant, "reason": ann.reason, "why": change.why, "actor": change.actor}
            if change.action == REFUSE:
                log.warning("bgp.announcement_refused", **fields)
            else:
                log.info(f"bgp.{change.action}", **fields)
            self._publish(change)
        return changes

    def _publish(self, change: Change) -> None:
        if self.bus is None:
            return
        ann = change.announcement
        destination = ann.route.to_dict().get("destination")
        verb = {ANNOUNCE: "announced", WITHDRAW: "withdrew", REFUSE: "refused to announce"}[change.action]
        by = f" by {change.actor}" if change.actor else ""
        what = "RTBH blackhole" if ann.kind == RTBH else "FlowSpec rule"
        self.bus.publish(Event(
            EventType.ESCALATION, ann.tenant, f"{verb} {what} for {destination}{by}: {change.why}",
            _SEVERITY[change.action], incident_id=ann.incident,
            destinations=(destination,) if destination else (),
            details={"action": change.action, "kind": ann.kind, "match": ann.route.to_dict(),
                     "reason": ann.reason, "actor": change.actor, "peers": self.ladder.peers_for(ann.kind)}))

    def _session_changed(self, address: str, state: str) -> None:
        if self.bus is None:
            return
        severity = Severity.NOTICE if state == STATE_ESTABLISHED else Severity.WARNING
        self.bus.publish(Event(EventType.SYSTEM, None, f"BGP session with {address}: {state}", severity,
                               details={"bgp_peer": address, "state": state}))

    def status(self) -> dict[str, Any]:
        """The `bgp` part of the appliance status."""
        return {"peers": self.speaker.peers(),
                "announcements": [a.to_dict() for a in self.ladder.announcements.values()],
                "speaker": self.speaker.status(),
                "refused": self.ladder.refused,
                "inbound_bps": self.inbound_bps,
                "uplink_bps": self.settings.uplink_bps, "flowspec_at": self.settings.flowspec_at,
                "max_announcements": self.settings.max_announcements}
