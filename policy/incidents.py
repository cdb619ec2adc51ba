"""Incident lifecycle: confirm, start, update, end, hold-down and re-attack.

An incident belongs to one target: a destination address of a tenant, or the
whole tenant (target None) for carpet bombing. The engine feeds one
`Observation` per tick for every target that is anomalous with at least one
attack vector, and `account()` traffic figures for every open incident; the
manager answers with events.

- Confirm: a target must be anomalous for `confirm_s` seconds in a row before
  ATTACK_START (one noisy second is not an attack), unless one of its vectors is
  classified with at least `fast_confirm_confidence` in that tick: such a vector
  (far above its threshold, new traffic, the shape of a flood, from senders the
  target does not talk to) starts the attack, and its mitigation, at once.
- Update: ATTACK_UPDATE at most every `update_interval_s` (never more than once a
  second) while the incident is active.
- Hysteresis: ATTACK_END only after `quiet_s` seconds without anomaly.
- Hold-down: rules stay installed `hold_down_s` seconds after the end; a new
  anomaly of the same target and vector within the hold-down reopens the same
  incident (same id, ATTACK_START with details.reopened).
- Re-attack: after the hold-down, the same target and vector within
  `reattack_window_s` of the end starts a new incident linked to the previous one
  (details.linked_incident).

Efficacy accounting: attack packets are the excess over the baseline mean in the
incident's classes; dropped packets come from the dataplane's drop counters of the
target; what is left got through (`packets_passed`). Efficacy = dropped / attack.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import itertools
import secrets
from typing import Any

from dataplane.api import IPAddress, Rule
from dataplane.constants import TenantMode, TrafficClass
from policy.classify import Vector, VectorScore
from policy.config import PolicyConfig
from policy.events import Event, EventType, Severity


class State(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    ENDED = "ended"        # rules in hold-down
    CLOSED = "closed"      # hold-down over, rules removed


@dataclasses.dataclass(slots=True)
class Observation:
    """One tick of an anomalous target with its classified vectors."""

    tenant_idx: int
    tenant_id: str
    mode: TenantMode
    target: IPAddress | None
    destinations: tuple[str, ...]
    scores: list[VectorScore]
    classes: set[TrafficClass]


@dataclasses.dataclass(slots=True)
class RuleRecord:
    rule_id: int
    rule: Rule
    vector: str
    traffic_class: str
    kind: str          # drop | rate_limit
    reason: str
    needs_samples: bool = False   # a rate-limit fallback to replace once enough samples arrived
    needs_evidence: bool = False  # ... once enough legitimate samples show where real clients sit
    evidence_seen: int = 0        # the engine's count of legitimate samples when it was last derived
    matched_packets: int = 0
    dropped_packets: int = 0

    def to_dict(self) -> dict[str, Any]:
        r = self.rule
        return {
            "rule_id": self.rule_id, "vector": self.vector, "class": self.traffic_class, "kind": self.kind,
            "reason": self.reason, "action": r.action.name.lower(), "dst": str(r.dst) if r.dst else None,
            "proto": r.proto, "sport": _range(r.sport), "dport": _range(r.dport), "length": _range(r.length),
            "ttl": _range(r.ttl), "tcp_flags": list(r.tcp_flags) if r.tcp_flags else None,
            "payload": r.payload.hex() if r.payload else None,
            "payload_mask": r.payload_mask.hex() if r.payload_mask else None,
            "fragments": r.fragments, "rate_pps": r.rate_pps,
            "matched_packets": self.matched_packets, "dropped_packets": self.dropped_packets,
        }


def _range(r: Any) -> list[int] | None:
    return [r.lo, r.hi] if r is not None else None


_incident_seq = itertools.count(1)


def new_incident_id() -> str:
    return f"inc-{secrets.token_hex(4)}-{next(_incident_seq)}"


@dataclasses.dataclass(slots=True)
class Incident:
    id: str
    tenant_idx: int
    tenant_id: str
    mode: TenantMode
    target: IPAddress | None
    state: State
    first_seen: float                       # monotonic seconds
    last_anomalous: float
    anomalous_s: float = 0.0                # consecutive anomalous seconds while pending
    started: float | None = None
    started_wall: float | None = None
    ended: float | None = None
    ended_wall: float | None = None
    destinations: set[str] = dataclasses.field(default_factory=set)
    vectors: dict[str, float] = dataclasses.field(default_factory=dict)   # vector -> best confidence
    classes: set[TrafficClass] = dataclasses.field(default_factory=set)
    class_vectors: dict[TrafficClass, str] = dataclasses.field(default_factory=dict)   # class -> vector to mitigate
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)
    peak_pps: float = 0.0
    peak_bps: float = 0.0
    interval_peak_pps: float = 0.0
    interval_peak_bps: float = 0.0
    attack_packets: float = 0.0
    dropped_packets: float = 0.0
    passed_packets: float = 0.0
    series: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=3600))
    unsent_points: int = 0
    last_event: float = 0.0
    rules: dict[int, RuleRecord] = dataclasses.field(default_factory=dict)
    rule_classes: set[TrafficClass] = dataclasses.field(default_factory=set)   # classes with a rule (or given up)
    reopened: int = 0
    linked_incident: str | None = None
    changed: bool = False                   # vectors or rules changed since the last event
    # Application-layer vectors (issue 15): a sentence per vector saying what was seen, and the sources
    # that carried the most of the best-scored one.
    explanations: dict[str, str] = dataclasses.field(default_factory=dict)
    top_sources: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def target_key(self) -> tuple[int, IPAddress | None]:
        return self.tenant_idx, self.target

    @property
    def efficacy(self) -> float | None:
        total = self.dropped_packets + self.passed_packets
        return round(self.dropped_packets / total, 4) if total > 0 else None

    def confidence(self) -> float:
        return max(self.vectors.values(), default=0.0)

    def absorb(self, obs: Observation) -> None:
        for score in obs.scores:
            name = str(score.vector)
            if name not in self.vectors:
                self.changed = True
            self.vectors[name] = max(self.vectors.get(name, 0.0), score.confidence)
            self.evidence[name] = score.evidence
            if "explanation" in score.evidence:
                self.explanations[name] = score.evidence["explanation"]
                if score.confidence >= max(self.vectors.values()) and score.evidence.get("top_sources"):
                    self.top_sources = score.evidence["top_sources"]
            if score.vector not in (Vector.MULTI_VECTOR, Vector.CARPET_BOMBING):
                for tc in score.classes:
                    self.class_vectors.setdefault(tc, name)
        self.classes |= obs.classes
        new_dsts = set(obs.destinations) - self.destinations
        if new_dsts:
            self.destinations |= new_dsts
            self.changed = True


class IncidentManager:
    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.open: dict[tuple[int, IPAddress | None], Incident] = {}     # pending, active or ended (hold-down)
        self.history: collections.deque[Incident] = collections.deque(maxlen=1024)   # closed, for re-attack links
        self._released: list[Incident] = []    # closed since the last tick(); their rules must be removed

    # -- queries ---------------------------------------------------------------------------
    def active(self) -> list[Incident]:
        return [i for i in self.open.values() if i.state == State.ACTIVE]

    def get(self, tenant_idx: int, target: IPAddress | None) -> Incident | None:
        return self.open.get((tenant_idx, target))

    # -- transitions ------------------------------------------------------------------------
    def observe(self, now: float, wall: float, dt: float, obs: Observation) -> list[Event]:
        """An anomalous target with vectors this tick; returns ATTACK_START when it starts or reopens."""
        key = (obs.tenant_idx, obs.target)
        inc = self.open.get(key)
        vectors = {str(s.vector) for s in obs.scores}
        if inc is not None and inc.state == State.ENDED:
            if vectors & set(inc.vectors):
                inc.state = State.ACTIVE
                inc.reopened += 1
                inc.ended = inc.ended_wall = None
                inc.last_anomalous = now
                inc.absorb(obs)
                return [self._event(inc, EventType.ATTACK_START, now, wall)]
            # A different vector on the same target during hold-down: a new incident;
            # the old one's rules keep their hold-down under the old id in history.
            self._close(inc)
            inc = None
        if inc is None:
            inc = Incident(id=new_incident_id(), tenant_idx=obs.tenant_idx, tenant_id=obs.tenant_id, mode=obs.mode,
                           target=obs.target, state=State.PENDING, first_seen=now, last_anomalous=now)
            inc.series = collections.deque(maxlen=self.config.series_max_points)
            self.open[key] = inc
        inc.last_anomalous = now
        inc.absorb(obs)
        inc.mode = obs.mode
        if inc.state == State.PENDING:
            inc.anomalous_s += dt
            fast = self.config.fast_confirm_confidence
            certain = fast is not None and any(
                s.confidence >= fast for s in obs.scores if s.vector != Vector.MULTI_VECTOR)
            if certain or inc.anomalous_s >= self.config.confirm_s:
                inc.state = State.ACTIVE
                inc.started, inc.started_wall = now, wall
                inc.linked_incident = self._previous(inc, vectors)
                return [self._event(inc, EventType.ATTACK_START, now, wall)]
        return []

    def _previous(self, inc: Incident, vectors: set[str]) -> str | None:
        for old in reversed(self.history):
            if (old.target_key == inc.target_key and old.ended is not None and vectors & set(old.vectors)
                    and inc.first_seen - old.ended <= self.config.reattack_window_s):
                return old.id
        return None

    def account(self, inc: Incident, now: float, wall: float, dt: float, *, pps: float, bps: float,
                attack_pps: float, dropped_pps: float) -> None:
        """Traffic figures of the incident's target for this tick (rates, packets/s and bits/s)."""
        if inc.state not in (State.ACTIVE, State.PENDING) or dt <= 0:
            return
        dropped = min(dropped_pps, attack_pps) if attack_pps > 0 else 0.0
        passed = max(attack_pps - dropped, 0.0)
        inc.attack_packets += attack_pps * dt
        inc.dropped_packets += dropped * dt
        inc.passed_packets += passed * dt
        inc.peak_pps = max(inc.peak_pps, pps)
        inc.peak_bps = max(inc.peak_bps, bps)
        inc.interval_peak_pps = max(inc.interval_peak_pps, pps)
        inc.interval_peak_bps = max(inc.interval_peak_bps, bps)
        inc.series.append({"t": round(wall, 3), "pps": round(pps, 1), "bps": round(bps, 1),
                           "attack_pps": round(attack_pps, 1), "dropped_pps": round(dropped, 1),
                           "passed_pps": round(passed, 1)})
        inc.unsent_points += 1

    def tick(self, now: float, wall: float) -> tuple[list[Event], list[Incident]]:
        """Pending expiry, periodic updates, ends; returns events and incidents whose hold-down ended."""
        events: list[Event] = []
        released, self._released = self._released, []
        for key, inc in list(self.open.items()):
            if inc.state == State.PENDING and inc.last_anomalous < now:
                del self.open[key]          # not anomalous long enough in a row
            elif inc.state == State.ACTIVE:
                if now - inc.last_anomalous >= self.config.quiet_s:
                    inc.state = State.ENDED
                    inc.ended, inc.ended_wall = now, wall
                    events.append(self._event(inc, EventType.ATTACK_END, now, wall))
                elif now - inc.last_event >= self.config.update_interval_s:
                    events.append(self._event(inc, EventType.ATTACK_UPDATE, now, wall))
            elif inc.state == State.ENDED and now - inc.ended >= self.config.hold_down_s:
                self._close(inc)
        released += self._released
        self._released = []
        return events, released

    def _close(self, inc: Incident) -> None:
        inc.state = State.CLOSED
        self.open.pop(inc.target_key, None)
        self.history.append(inc)
        self._released.append(inc)

    def close_tenant(self, tenant_idx: int) -> list[Incident]:
        """A tenant was removed: close its incidents at once (their rules must go)."""
        gone = [i for i in self.open.values() if i.tenant_idx == tenant_idx]
        for inc in gone:
            self._close(inc)
        gone_ids = {id(i) for i in gone}
        self._released = [i for i in self._released if id(i) not in gone_ids]
        return gone

    # -- events --------------------------------------------------------------------------------
    def _event(self, inc: Incident, etype: EventType, now: float, wall: float) -> Event:
        full_series = etype == EventType.ATTACK_END
        points = list(inc.series) if full_series else list(inc.series)[-inc.unsent_points:] if inc.unsent_points else []
        target = str(inc.target) if inc.target is not None else f"tenant {inc.tenant_id}"
        vectors = tuple(sorted(inc.vectors, key=lambda v: -inc.vectors[v]))
        # What was seen, for the feeds that carry only the message (syslog, traps, chat): the best-scored
        # vector's explanation, where it has one.
        said = next((inc.explanations[v] for v in vectors if v in inc.explanations), None)
        if etype == EventType.ATTACK_START:
            verb = "reopened" if inc.reopened else "started"
            message = f"attack {verb} on {target}: {', '.join(vectors)}"
            severity = Severity.CRITICAL
        elif etype == EventType.ATTACK_UPDATE:
            message = f"attack on {target} continues: {', '.join(vectors)}"
            severity = Severity.WARNING
        else:
            message = f"attack on {target} ended: {', '.join(vectors)}"
            severity = Severity.NOTICE
        if said is not None:
            message += f" ({said})"
        peak_interval = inc.peak_pps if full_series else inc.interval_peak_pps
        peak_interval_bps = inc.peak_bps if full_series else inc.interval_peak_bps
        details = {
            "tenant_idx": inc.tenant_idx,
            "target": str(inc.target) if inc.target is not None else None,
            "monitor": inc.mode == TenantMode.MONITOR,
            "vector_confidence": dict(inc.vectors),
            "evidence": inc.evidence,
            "classes": sorted(c.name.lower() for c in inc.classes),
            "peak_pps": round(inc.peak_pps, 1),
            "peak_bps": round(inc.peak_bps, 1),
            "attack_packets": int(inc.attack_packets),
            "packets_passed": int(inc.passed_packets),
            "efficacy": inc.efficacy,
            "rules": [r.to_dict() for r in inc.rules.values()],
            "series": points,
            "started": inc.started_wall,
            "ended": inc.ended_wall,
            "duration_s": round((inc.ended if inc.ended is not None else now) - (inc.started or now), 1),
            "reopened": inc.reopened,
            "linked_incident": inc.linked_incident,
            "explanations": dict(inc.explanations),
            "top_sources": list(inc.top_sources),
        }
        inc.unsent_points = 0
        inc.interval_peak_pps = inc.interval_peak_bps = 0.0
        inc.last_event = now
        inc.changed = False
        return Event(type=etype, tenant=inc.tenant_id, message=message, severity=severity, incident_id=inc.id,
                     destinations=tuple(sorted(inc.destinations)), vectors=vectors,
                     confidence=round(inc.confidence(), 3), pps=round(peak_interval, 1),
                     bps=round(peak_interval_bps, 1), packets_dropped=int(inc.dropped_packets),
                     details=details, timestamp=wall)
