"""The policy engine: one tick turns dataplane counters and samples into incidents and rules.

Per tick (1 s by default): read destination and tenant counters → rates →
detect against baselines → classify anomalous targets from samples → incidents
(start/update/end) → derive signatures and install rules for new attack
classes → remove rules whose hold-down ended → learn baselines from the seconds
that were not attacks → write PCAP evidence → publish events.

`tick(now)` is synchronous and returns a `TickReport`, so tests drive the engine
second by second with a fake dataplane. `run()` ticks on a fixed cadence in a worker
thread of its own, so that a tick (about 90 ms of CPU at 100,000 destinations and
10,000 tenants on real maps, over 500 ms at a million) never stalls the event loop that
serves SecureWatch, the notifiers and BGP: the batch reads and numpy release the GIL,
and the interpreter hands the loop the GIL every switch interval (5 ms) meanwhile.
The tick's results are delivered on the loop afterwards (events to the bus, tenant
traffic to `on_tenant_traffic`), exactly as `tick()` delivers them. `lock` is held by a
tick; whoever changes the engine's or the dataplane's state from the loop (tenant sets,
attack marks, rule expiry) holds it too, and waits for at most one tick. Per-destination work is numpy over whole arrays keyed by the
maps' 16-byte keys; ipaddress objects exist only for reported destinations.
The engine talks to the dataplane only through `dataplane.api.DataplaneLike`.

Baselines are saved to `state_dir/baselines.npz` every 5 minutes and when `run()`
ends, and loaded at start, so a restart does not begin a new warm-up. PCAP
evidence goes to `state_dir/pcap/`; every PCAP_PRUNE_EVERY_S a tick deletes there the files of
incidents ended more than `pcap_retention_days` ago and, oldest first, those past
`pcap_max_total_bytes` (`policy.pcap.prune`; never an open incident's), counted in
`status()["pcap_files_pruned"]`.

Each tick publishes its tenants' traffic (`policy.rates.TenantTraffic`: the read and its
rates) as `tenant_traffic` and to the `on_tenant_traffic` callback: the appliance's status,
per-second series and SecureWatch read tenant rates from there, never from the counters.

Rules carry the incident id and vector in their comment; in monitor mode they
are installed with action COUNT. With `auto_mitigation` off no rule is installed.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import ipaddress
import math
import pathlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import structlog

from dataplane.api import DataplaneLike, IPAddress, Rule, Sample
from dataplane.constants import (
    BUDGET_FIELDS,
    MAX_RULES,
    MAX_TENANTS,
    RULES_PER_TARGET,
    Direction,
    RuleAction,
    TenantMode,
    TrafficClass,
)
from policy.appflood import AppFloodConfig, AppFloodDetector
from policy.baseline import EwmaBaseline
from policy.budgets import BudgetConfig, BudgetDeriver
from policy.classify import ClassEvidence, Vector, VectorScore, classify_carpet, classify_destination
from policy.config import FILE_KEYS, PolicyConfig, floors_for_link
from policy.detect import (
    ELEVATED_FLOOR_PPS,
    Detection,
    PolicyTable,
    TenantEntry,
    detect,
    rows_with_any,
    tenant_rows,
)
from policy.events import Event, EventBus, EventType
from policy.heap import keep_freed_arrays
from policy.incidents import Incident, IncidentManager, Observation, RuleRecord, State
from policy.onset import onset_rate
from policy.packets import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    TCP_RST,
    TCP_SYN,
    PacketFeatures,
    parse_samples,
)
from policy.pcap import IncidentPcap
from policy.pcap import prune as prune_pcaps
from policy.prefixes import PrefixAggregates, PrefixDetection
from policy.rates import DestinationRates, RateTracker, TenantRates, TenantTraffic
from policy.signature import MIN_TTL_EVIDENCE_SAMPLES, derive_signature
from tenants.policy import TenantPolicy

log = structlog.get_logger("policy")

# (tenant id, mode, policy[, prefixes]): a tenant with several prefixes gets per-prefix aggregates too
TenantSpec = (tuple[str, TenantMode, TenantPolicy]
              | tuple[str, TenantMode, TenantPolicy, Sequence[str | ipaddress.IPv4Network | ipaddress.IPv6Network]])
RECENT_TICKS = 10            # ticks of samples kept for classification and signatures
CARPET_PEER_ROWS = 64        # elevated addresses of a carpet whose peers speak for a flash crowd (issue 20)
PEER_TICKS = 60              # ticks of outbound samples that make a sender a known peer
SAMPLE_DRAIN_LIMIT = 4096    # samples read per tick
ANSWERED_MIN_SAMPLES = 20   # inbound samples since an onset before its answered share is judged
RECLASSIFY_S = 5.0           # seconds an ongoing attack's classification is reused
WINDOW_SAMPLES = 512         # most recent samples of a target and class used for classification and signatures
N_CLASSES = len(TrafficClass)
CARPET_DESTINATIONS_LISTED = 256   # addresses named in a carpet incident
LEGIT_PROBATION_TICKS = 3    # ticks a target must stay calm before its samples count as legitimate
                             # (a ramp crosses from its normal band to the threshold within a few)
STATE_FILE = "baselines.npz"
PCAP_PRUNE_EVERY_S = 300.0   # seconds between passes over the PCAP directory (one listing each)
OVERRUN_LOG_EVERY_S = 60.0   # seconds between two `policy.tick_overrun` warnings (each counts the ticks since)
RULES_FULL_LOG_EVERY_S = 60.0   # seconds between two `rule.table_full` warnings


@dataclasses.dataclass(slots=True)
class TickReport:
    """What one tick saw and did."""

    now: float
    dt: float
    destinations: int
    anomalous_destinations: int
    carpet_tenants: int
    events: list[Event]
    rules_added: list[int]
    rules_removed: list[int]
    timings_ms: dict[str, float]     # CPU milliseconds per stage, of the thread that ran the tick
    cpu_ms: float                    # CPU milliseconds for the whole tick, of the thread that ran it


def _validate_tenants(tenants: Mapping[int, TenantSpec]) -> dict[int, TenantEntry]:
    out: dict[int, TenantEntry] = {}
    for idx, spec in tenants.items():
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < MAX_TENANTS:
            raise ValueError(f"tenants: index {idx!r} is not an integer within 0..{MAX_TENANTS - 1}")
        try:
            tenant_id, mode, policy, *rest = spec
        except (TypeError, ValueError):
            raise ValueError(f"tenants[{idx}]: expected (tenant id, mode, TenantPolicy[, prefixes]), "
                             f"got {spec!r}") from None
        if len(rest) > 1:
            raise ValueError(f"tenants[{idx}]: expected (tenant id, mode, TenantPolicy[, prefixes]), got {spec!r}")
        try:
            prefixes = tuple(ipaddress.ip_network(p) for p in (rest[0] if rest else ()))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tenants[{idx}]: prefixes: {exc}") from None
        if not isinstance(tenant_id, str) or not tenant_id:
            raise ValueError(f"tenants[{idx}]: tenant id must be a non-empty string, got {tenant_id!r}")
        try:
            mode = TenantMode(mode)
        except ValueError:
            raise ValueError(f"tenant {tenant_id}: mode {mode!r} is not a TenantMode") from None
        if not isinstance(policy, TenantPolicy):
            raise ValueError(f"tenant {tenant_id}: policy must be a TenantPolicy, got {type(policy).__name__}")
        out[idx] = TenantEntry(tenant_id, mode, policy, prefixes)
    return out


def _groups(keys: np.ndarray) -> list[tuple[int, list[int]]]:
    """(first row, ascending rows) of each distinct value of `keys` (N,)."""
    if not len(keys):
        return []
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    bounds = [0, *(np.flatnonzero(ordered[1:] != ordered[:-1]) + 1).tolist(), len(keys)]
    rows = order.tolist()
    return [(rows[a], rows[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class _SampleWindow:
    """Parsed inbound samples of the last RECENT_TICKS ticks, indexed by destination and tenant."""

    def __init__(self) -> None:
        self.ticks: collections.deque[tuple[float, PacketFeatures, dict[IPAddress, list[int]],
                                            dict[int, list[int]]]] = collections.deque(maxlen=RECENT_TICKS)

    def add(self, now: float, inbound: PacketFeatures) -> tuple[dict[IPAddress, list[int]], dict[int, list[int]]]:
        by_dst: dict[IPAddress, list[int]] = collections.defaultdict(list)
        by_tenant: dict[int, list[int]] = collections.defaultdict(list)
        # Grouped with numpy by object identity first (the parser hands out one object per address
        # and tick), so an address is hashed once per group, not once per sample.
        identity = np.fromiter(map(id, inbound.dst), np.uint64, len(inbound))
        merged = False
        for first, rows in _groups(identity):
            d = inbound.dst[first]
            if d is not None:
                merged |= d in by_dst
                by_dst[d].extend(rows)
        if merged:                            # equal addresses held by distinct objects: rows in order again
            for rows in by_dst.values():
                rows.sort()
        for first, rows in _groups(inbound.tenant_idx):
            by_tenant[int(inbound.tenant_idx[first])] = rows
        self.ticks.append((now, inbound, by_dst, by_tenant))
        return by_dst, by_tenant

    def _collect(self, key: Any, since: float, which: int) -> PacketFeatures:
        """Up to WINDOW_SAMPLES newest samples *per traffic class* of `key`, oldest first.

        Per class, so that a 200 kpps SYN flood does not crowd the 5 kpps UDP flood next to
        it out of the window: each class's signature needs its own samples.
        """
        parts: list[PacketFeatures] = []
        left = np.full(N_CLASSES, WINDOW_SAMPLES, np.int64)
        for entry in reversed(self.ticks):           # newest first
            t, f, index = entry[0], entry[1], entry[which]
            if t < since or not left.any():
                break
            rows = index.get(key)
            if not rows:
                continue
            rows_arr = np.asarray(rows, np.int64)
            classes = f.traffic_class[rows_arr]
            keep = np.zeros(len(rows_arr), bool)
            for c in np.unique(classes):
                in_class = np.flatnonzero(classes == c)
                take = int(min(left[c], len(in_class)))
                if take:
                    keep[in_class[-take:]] = True
                    left[c] -= take
            if keep.any():
                parts.append(f.subset(rows_arr[keep]))
        return PacketFeatures.concat(parts[::-1])

    def for_destination(self, dst: IPAddress, since: float) -> PacketFeatures:
        """Recent samples to `dst` of the ticks at or after `since` (the attack's first anomalous tick)."""
        return self._collect(dst, since, 2)

    def for_tenant(self, tenant_idx: int, since: float) -> PacketFeatures:
        return self._collect(tenant_idx, since, 3)


class PolicyEngine:
    def __init__(self, dataplane: DataplaneLike, tenants: Mapping[int, TenantSpec], bus: EventBus,
                 state_dir: pathlib.Path, tick: float = 1.0, config: PolicyConfig | None = None,
                 wall_clock: Callable[[], float] = time.time, budget_config: BudgetConfig | None = None,
                 on_tenant_traffic: Callable[[TenantTraffic], None] | None = None,
                 appflood_config: AppFloodConfig | None = None) -> None:
        if tick <= 0:
            raise ValueError(f"policy engine: tick must be positive seconds, got {tick}")
        # Before run() starts the worker thread: the tick's large arrays reuse the last tick's memory
        # instead of fresh mappings (policy.heap; the figures at a million destinations are there).
        keep_freed_arrays()
        # Held by a tick, and by changes of the engine's or the dataplane's state made from
        # outside it (see the module docstring); reentrant: set_tenants is also called within.
        self.lock = threading.RLock()
        self.dataplane = dataplane
        self.bus = bus
        self.state_dir = pathlib.Path(state_dir)
        self.tick_s = float(tick)
        self.config = config or PolicyConfig()
        self._wall = wall_clock
        cfg = self.config
        baseline_kw = dict(half_life_s=cfg.half_life_s, warmup_s=cfg.warmup_s, k_sigma=cfg.k_sigma,
                           margin=cfg.margin, warmup_floor_pps=cfg.warmup_floor_pps,
                           onset_floor_pps=cfg.onset_floor_pps)
        self.rates = RateTracker(forget_after_s=cfg.forget_after_s)
        self.dest_baseline = EwmaBaseline(self.rates.slots.capacity, **baseline_kw)
        # A tenant sums many addresses: its warm-up floors are a multiple of an address's (and it has
        # no lower onset floors), so a busy tenant is not mistaken for a carpet bombing before its
        # baseline exists.
        tenant_floors = tuple(f * cfg.tenant_warmup_floor_factor for f in cfg.warmup_floor_pps)
        # Onset floors as the destinations have them (issue 20): a tenant whose normal traffic the engine
        # has seen is judged against that, not against the floor for tenants it has just met.
        tenant_onset = tuple(f * cfg.tenant_warmup_floor_factor for f in cfg.onset_floor_pps)
        self.tenant_baseline = EwmaBaseline(MAX_TENANTS, **{**baseline_kw, "warmup_floor_pps": tenant_floors,
                                                            "onset_floor_pps": tenant_onset})
        # Tenants with several prefixes: each prefix's aggregate against its own baseline (issue 20).
        self.prefixes = PrefixAggregates({**baseline_kw, "warmup_floor_pps": tenant_floors,
                                          "onset_floor_pps": tenant_onset})
        self.incidents = IncidentManager(cfg)
        # Application-layer and connection floods (issue 15): per-server flow baselines and per-source limits,
        # learning at the pace of the volumetric baselines unless given their own configuration.
        self.appflood = AppFloodDetector(appflood_config or AppFloodConfig(
            half_life_s=cfg.half_life_s, warmup_s=cfg.warmup_s, k_sigma=cfg.k_sigma, margin=cfg.margin,
            min_confidence=cfg.min_confidence))
        self.tenants: dict[int, TenantEntry] = {}
        self.policy_table = PolicyTable({})
        # Per-destination class budgets derived from the baselines (policy *_rate_pps = 0), pushed
        # into the dataplane.
        self.budgets = BudgetDeriver(dataplane.set_class_budgets, budget_config)
        self.set_tenants(tenants)
        self._window = _SampleWindow()
        self._peers: collections.deque[dict[IPAddress, set[IPAddress]]] = collections.deque(maxlen=PEER_TICKS)
        # Per tick: (time, talk samples by local address, inbound samples by destination), see _answered.
        self._answers: collections.deque[tuple[float, collections.Counter, dict[IPAddress, int]]] = \
            collections.deque(maxlen=PEER_TICKS)
        self._legit: collections.OrderedDict[IPAddress, collections.deque[Sample]] = collections.OrderedDict()
        self._legit_tenant: collections.OrderedDict[int, collections.deque[Sample]] = collections.OrderedDict()
        # Inbound samples from the servers' peers (remotes they sent data to) while their target is under
        # attack: real clients, the only legitimate samples a tenant under a carpet still gets. TTL
        # evidence for rules only (see _ensure_rules).
        self._peer_legit: collections.OrderedDict[int, collections.deque[Sample]] = collections.OrderedDict()
        # Legitimate samples kept per tenant so far (its own, its destinations' and its peers'): a
        # fallback for want of them is derived again only when this moved.
        self._evidence_added: collections.Counter[int] = collections.Counter()
        # Samples of the last ticks waiting to be counted as legitimate (see _keep_samples).
        self._legit_probation: collections.deque[tuple[dict, dict]] = collections.deque(maxlen=LEGIT_PROBATION_TICKS)
        self._pcaps: dict[str, IncidentPcap] = {}
        self._last_pcap_prune = -math.inf     # the first tick prunes: a restart may find old files
        self.pcap_files_pruned = 0            # PCAP files deleted by retention or the total bound
        self._rule_owner: dict[int, Incident] = {}
        # Last classification per target: (time, anomalous classes, scores).
        self._scores: dict[tuple[int, IPAddress], tuple[float, frozenset[TrafficClass], list[VectorScore]]] = {}
        self._stop = asyncio.Event()
        self._last_save = 0.0
        self.last_report: TickReport | None = None
        # Ticks of `run()` that ended after the next one was due (the tick's work, with its wait for the
        # worker thread, took longer than `tick` seconds): the engine falls behind, rates stretch over
        # longer ticks and detection slows by as much. Counted, shown in the status and the metrics,
        # and logged (`policy.tick_overrun`, at most every OVERRUN_LOG_EVERY_S seconds).
        self.ticks_overrun = 0
        self.last_tick_wall_ms: float | None = None   # the last tick of `run()`, start to results delivered
        self._overrun_logged_at = -math.inf            # monotonic seconds
        self._overruns_logged = 0                      # ticks_overrun when last logged
        # Incidents that needed a rule in the last tick while the engine's rules filled the dataplane's
        # table (MAX_RULES): they wait for room (a rule of an ended incident released) without deriving
        # a signature or asking the dataplane each tick; warned of at most every RULES_FULL_LOG_EVERY_S.
        self.rules_waiting_for_room = 0
        self._rules_full_logged_at = -math.inf          # monotonic seconds
        self.last_detection: Detection | None = None
        self.tenant_traffic: TenantTraffic | None = None     # the last tick's (see the module docstring)
        self._on_tenant_traffic = on_tenant_traffic
        self.load_state()

    # -- tenants ---------------------------------------------------------------------------------
    def set_tenants(self, tenants: Mapping[int, TenantSpec]) -> None:
        """Replace the tenant table (validated first; on error nothing changes)."""
        # Floors left at their defaults follow the link (issue 20); the rest of the engine reads them here.
        entries = {idx: dataclasses.replace(e, policy=floors_for_link(e.policy, self.config.uplink_bps))
                   for idx, e in _validate_tenants(tenants).items()}
        with self.lock:
            self._set_validated_tenants(entries)

    def _set_validated_tenants(self, entries) -> None:
        table = PolicyTable(entries)
        old = self.tenants
        self.tenants, self.policy_table = entries, table
        self.prefixes.configure(entries)
        for idx in set(old) - set(entries):
            for inc in self.incidents.close_tenant(idx):
                self._remove_rules(inc)
                self._pcaps.pop(inc.id, None)   # its files age out as those of any ended incident
        for idx, entry in entries.items():
            before = old.get(idx)
            if before is not None and (before.mode != entry.mode
                                       or before.policy.auto_mitigation != entry.policy.auto_mitigation):
                # Rules carry the mode in their action: re-derive them under the new mode.
                for inc in list(self.incidents.open.values()):
                    if inc.tenant_idx == idx:
                        self._remove_rules(inc)
                        inc.rule_classes.clear()
                        inc.mode = entry.mode
        # A tenant-set apply wrote every policy leaf anew: the derived budgets go back in.
        self._policies = {idx: entry.policy for idx, entry in entries.items()}
        self._min_pps_floor = min((p.min_pps for p in self._policies.values()), default=0)
        self.budgets.reapply(self._policies)
        if old:
            log.info("policy.tenants", tenants=len(entries))

    # -- status ----------------------------------------------------------------------------------
    @property
    def last_rates(self) -> tuple[DestinationRates | None, TenantRates | None]:
        return self.rates.last_destination_rates, self.rates.last_tenant_rates

    def status(self) -> dict[str, Any]:
        report = self.last_report
        return {
            "tick_s": self.tick_s,
            "tracked_destinations": len(self.rates.slots.index),
            # list(): one C-level copy, safe while a tick in the worker thread changes the dict
            "open_incidents": sum(1 for i in list(self.incidents.open.values()) if i.state == State.ACTIVE),
            "rules_installed": len(self._rule_owner),
            "pcap_files_pruned": self.pcap_files_pruned,
            "ticks_overrun": self.ticks_overrun,
            "rules_waiting_for_room": self.rules_waiting_for_room,
            # Events a subscriber (SecureWatch, the notifiers, the fleet agent) lost to its full queue.
            "events_dropped": self.bus.dropped,
            "appflood": self.appflood.status(),
            # The box-wide knobs this engine runs with ([policy]; a SIGHUP leaves them to the next start).
            "knobs": {key: getattr(self.config, key) for key in FILE_KEYS},
            "last_tick": None if report is None else {
                "now": report.now, "dt": report.dt, "destinations": report.destinations,
                "anomalous_destinations": report.anomalous_destinations, "carpet_tenants": report.carpet_tenants,
                "timings_ms": report.timings_ms, "cpu_ms": report.cpu_ms, "wall_ms": self.last_tick_wall_ms},
        }

    # -- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Tick every `tick` seconds until `stop()`; a failing tick is logged and the loop goes on."""
        self._stop.clear()
        loop = asyncio.get_running_loop()
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-tick")
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                report = None
                try:
                    report = await loop.run_in_executor(worker, self._compute_tick, None)
                except Exception:
                    log.exception("policy.tick_failed")
                else:
                    # A burst of events (thousands of attacks starting in one tick) waits for the
                    # subscribers to take it rather than overflowing their queues (EventBus.deliver).
                    await self.bus.deliver(report.events)
                    self._hand_on_traffic()
                ended = time.monotonic()
                self.last_tick_wall_ms = round((ended - started) * 1000.0, 3)
                next_at += self.tick_s
                delay = next_at - ended
                if delay < 0:          # overran: start the next tick now, do not try to catch up
                    self._overran(report, ended)
                    next_at, delay = ended, 0.0
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except TimeoutError:
                    pass
        finally:
            worker.shutdown(wait=True)   # a tick under way finishes first: a thread cannot be cancelled
            self.save_state()

    def _overran(self, report: TickReport | None, now: float) -> None:
        """Count a tick that ended after the next one was due; log it, at most every OVERRUN_LOG_EVERY_S."""
        self.ticks_overrun += 1
        if now - self._overrun_logged_at < OVERRUN_LOG_EVERY_S:
            return
        log.warning("policy.tick_overrun", tick_ms=round(self.tick_s * 1000.0, 3), wall_ms=self.last_tick_wall_ms,
                    cpu_ms=None if report is None else report.cpu_ms,
                    destinations=None if report is None else report.destinations,
                    overruns=self.ticks_overrun, overruns_since_last_log=self.ticks_overrun - self._overruns_logged,
                    hint="the tick takes longer than [appliance] tick_ms: detection slows by as much; "
                         "raise tick_ms or give the appliance a faster CPU (README: scale of one box)")
        self._overrun_logged_at = now
        self._overruns_logged = self.ticks_overrun

    def stop(self) -> None:
        self._stop.set()

    # -- one tick --------------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> TickReport:
        """One tick, its results delivered (events published, tenant traffic handed on) before it returns."""
        report = self._compute_tick(now)
        self._deliver(report)
        return report

    def _deliver(self, report: TickReport) -> None:
        """`tick()`'s delivery: the events published, the tenant traffic handed on."""
        for event in report.events:
            self.bus.publish(event)
        self._hand_on_traffic()

    def _hand_on_traffic(self) -> None:
        """On the event loop's thread when `run()` ticks: the traffic readers are the loop's."""
        if self._on_tenant_traffic is not None and self.tenant_traffic is not None:
            # After the tick's own timing: what a reader does with the figures is not the tick's cost.
            try:
                self._on_tenant_traffic(self.tenant_traffic)
            except Exception:
                log.exception("policy.tenant_traffic_reader_failed")

    def _compute_tick(self, now: float | None) -> TickReport:
        with self.lock:
            return self._tick_locked(now)

    def _tick_locked(self, now: float | None) -> TickReport:
        now = time.monotonic() if now is None else float(now)
        wall = self._wall()
        # The tick's thread's CPU time: the tick runs in a worker thread (`run`) while the event
        # loop serves the API and the notifiers, whose CPU the process's clock would count in.
        cpu0 = stage = time.thread_time()
        timings: dict[str, float] = {}

        def lap(name: str) -> None:
            nonlocal stage
            t = time.thread_time()
            timings[name] = round((t - stage) * 1000.0, 3)
            stage = t

        # The previous tick's per-destination results (its rates, their byte and drop deltas, and its
        # detection: ~340 MiB at a million destinations) go before this tick's read, whose rows they
        # no longer match: so the read, the rates and detection never hold two ticks' worth.
        self.last_detection = None
        self.rates.last_destination_rates = None
        dp = self.dataplane
        dest_counters = dp.read_destination_counters()
        tenant_counters = dp.read_tenant_counter_arrays()
        raw_samples = dp.drain_samples(SAMPLE_DRAIN_LIMIT)
        lap("read")
        dest, freed = self.rates.update_destinations(now, dest_counters)
        # Its counter rows are made (into the tracker's state): what the reader made them from can go
        # (where each row comes from, the cache's share: ~30 MiB at a million destinations).
        dest_counters.rows.release()
        self.dest_baseline.resize(self.rates.slots.capacity)
        if len(freed):
            self.dest_baseline.reset(freed)
            self.prefixes.forget(freed)
        tenants = self.rates.update_tenants(now, tenant_counters)
        self.tenant_traffic = TenantTraffic(wall=wall, counters=tenant_counters, rates=tenants)
        lap("rates")
        features = parse_samples(raw_samples)
        inbound = features.subset(features.direction == int(Direction.INBOUND))
        outbound = features.subset(features.direction == int(Direction.OUTBOUND))
        by_dst, by_tenant = self._window.add(now, inbound)
        peers: dict[IPAddress, set[IPAddress]] = collections.defaultdict(set)
        # A SYN-ACK, a reset or an ICMP error goes to whoever sent something, spoofed or not:
        # only other outbound packets (data, ACKs, datagrams) make the remote a peer.
        talk = ~(((outbound.proto == PROTO_TCP) & ((outbound.tcp_flags & (TCP_SYN | TCP_RST)) != 0))
                 | (outbound.proto == PROTO_ICMP) | (outbound.proto == PROTO_ICMPV6))
        for i in np.flatnonzero(talk):
            local, remote = outbound.src[i], outbound.dst[i]
            if local is not None and remote is not None:
                peers[local].add(remote)
        self._peers.append(peers)
        # Sample counts per address: what each server sends that is not a handshake or refusal, and what
        # it receives; the growth of the one against the other says whether new traffic is answered.
        talk_n = collections.Counter(outbound.src[i] for i in np.flatnonzero(talk))
        self._answers.append((now, talk_n, {d: len(rows) for d, rows in by_dst.items()}))
        lap("samples")
        det = detect(dest, tenants, self.dest_baseline, self.tenant_baseline, self.policy_table,
                     carpet_min_destinations=self.config.carpet_min_destinations)
        self.last_detection = det
        prefix_found = self._detect_prefixes(dest, det)
        lap("detect")
        # The destination counters are the tick's first read: their snapshot is `now`, and samples
        # drained after it (later in the read stage) belong to the next tick's counters.
        onset_pps = self._onset_rates(now, dest, det, inbound, by_dst)
        lap("onset")
        observations, attack_mask = self._classify(now, dest, tenants, det, onset_pps)
        lap("classify")
        observations = self._app_observations(now, inbound, by_dst, observations)
        lap("appflood")
        events: list[Event] = []
        for obs in observations:
            events += self.incidents.observe(now, wall, dest.dt, obs)
            inc = self.incidents.get(obs.tenant_idx, obs.target)
            if inc is not None and inc.state == State.PENDING:
                # Not certain enough to start at once: it must stay anomalous for confirm_s.
                log.info("attack.suspect", tenant=inc.tenant_id, incident=inc.id,
                         dst=",".join(obs.destinations[:8]), pending_s=round(inc.anomalous_s, 3),
                         vectors={str(sc.vector): sc.confidence for sc in obs.scores})
        row_of_slot = self.rates.rows_by_slot()
        if len(row_of_slot) != self.rates.slots.capacity:     # slots assigned since the read
            row_of_slot = np.full(self.rates.slots.capacity, -1, np.int64)
            row_of_slot[dest.slots] = np.arange(len(dest))
        # The targets' slots in one lookup (one per incident: a second of every tick under thousands).
        targets = [inc.target for inc in self.incidents.open.values() if inc.target is not None]
        slot_of = dict(zip(targets, self.rates.slots.slots_of(targets).tolist(), strict=True)) if targets else {}
        self._account(now, wall, dest, tenants, det, row_of_slot, slot_of)
        added: list[int] = []
        removed: list[int] = []
        self.rules_waiting_for_room = 0
        for inc in self.incidents.active():
            a, r = self._ensure_rules(inc, now, dest, tenants, row_of_slot, slot_of)
            added += a
            removed += r
        if self.rules_waiting_for_room and time.monotonic() - self._rules_full_logged_at >= RULES_FULL_LOG_EVERY_S:
            self._rules_full_logged_at = time.monotonic()
            log.warning("rule.table_full", incidents_waiting=self.rules_waiting_for_room, rules=len(self._rule_owner),
                        limit=MAX_RULES, hint="the attacks past the table wait for room; upstream escalation "
                                              "([escalation], BGP FlowSpec) takes them off the link")
        tick_events, released = self.incidents.tick(now, wall)
        events += tick_events
        for inc in released:
            removed += self._remove_rules(inc)
            self._pcaps.pop(inc.id, None)
        self._app_mitigate(now)
        if len(self._scores) > 4 * max(len(self.incidents.open), 256):
            self._scores = {k: v for k, v in self._scores.items() if now - v[0] < RECLASSIFY_S}
        self._read_rule_counters()
        lap("incidents")
        self._derive_budgets(now, dest, det)    # before learning: warm masks as detection saw them
        lap("budgets")
        # Which sampled targets are above their normal band, before learning moves the bands (detection's
        # caps are worked out from the baselines as detection read them: `policy.detect.RowValues`).
        pending = {d for pending_dst, _ in self._legit_probation for d in pending_dst}
        elevated = self._elevated(dest, tenants, det, row_of_slot, set(by_dst) | pending)
        self._learn(dest, tenants, det, attack_mask, row_of_slot, prefix_found)
        lap("learn")
        self._keep_samples(inbound, by_dst, by_tenant, attack_mask, dest, elevated)
        lap("keep_samples")
        self._write_pcaps(by_dst, by_tenant, inbound)
        if now - self._last_pcap_prune >= PCAP_PRUNE_EVERY_S:
            self._last_pcap_prune = now
            self._prune_pcaps(wall)
        # Started incidents by id, once a tick (a scan of the open ones per start was quadratic: 20,000
        # attacks starting in one tick took 7 s).
        started = {i.id: i for i in self.incidents.open.values()} \
            if any(e.type == EventType.ATTACK_START for e in events) else {}
        events = [self._describe(event, started) for event in events]
        if self.last_report is not None and now - self._last_save >= 300.0:   # seconds between snapshots
            self._last_save = now
            self.save_state()
        lap("publish")
        report = TickReport(now=now, dt=dest.dt, destinations=len(dest),
                            anomalous_destinations=len(det.anomalous_rows), carpet_tenants=len(det.carpets),
                            events=events, rules_added=added, rules_removed=removed, timings_ms=timings,
                            cpu_ms=round((time.thread_time() - cpu0) * 1000.0, 3))
        self.last_report = report
        return report

    def _app_observations(self, now: float, inbound: PacketFeatures, by_dst: dict[IPAddress, list[int]],
                          observations: list[Observation]) -> list[Observation]:
        """`observations` with the application-layer vectors of `policy.appflood` joined in (a target's
        volumetric and application-layer vectors are one incident). A dataplane without flow accounting
        switches the detector off once; any other failure costs this tick's findings, never the tick."""
        if self.appflood.disabled is not None:
            return observations
        attacked = [(i.tenant_idx, i.target) for i in self.incidents.open.values()
                    if i.target is not None and i.state in (State.PENDING, State.ACTIVE)]
        try:
            findings = self.appflood.observe(now, self.dataplane, self.tenants, inbound, by_dst, attacked)
        except AttributeError as exc:
            if hasattr(self.dataplane, "read_flow_counters"):
                # The dataplane has flow accounting: a failure, not a missing feature. Switching off here
                # would leave the installed limits and blocks in the kernel for good.
                log.exception("appflood.observe_failed")
                return observations
            self.appflood.disabled = str(exc)
            log.warning("appflood.disabled", reason=str(exc))
            return observations
        except Exception:
            log.exception("appflood.observe_failed")
            return observations
        by_target = {(o.tenant_idx, o.target): o for o in observations}
        for f in findings:
            entry = self.tenants.get(f.tenant_idx)
            obs = by_target.get((f.tenant_idx, f.dst))
            if obs is not None:
                obs.scores = [*obs.scores, *f.scores]      # a new list: the volumetric one may be cached
            elif entry is not None:
                observations.append(Observation(f.tenant_idx, entry.tenant_id, entry.mode, f.dst, (str(f.dst),),
                                                f.scores, set()))
        return observations

    def _app_mitigate(self, now: float) -> None:
        if self.appflood.disabled is not None:
            return
        try:
            self.appflood.mitigate(now, self.dataplane, list(self.incidents.open.values()), self.tenants)
        except Exception:
            log.exception("appflood.mitigate_failed")

    def _detect_prefixes(self, dest: DestinationRates, det: Detection) -> PrefixDetection | None:
        """Per-prefix aggregates of tenants with several prefixes; their carpets join `det.carpets` (a
        tenant already a carpet as a whole keeps one candidate, named after the prefix when one shows it)."""
        if not self.prefixes.networks or not len(dest):
            return None
        table = self.policy_table
        found = self.prefixes.detect(dest, self.prefixes.rows_of(dest), det.baseline_cap, det.warm, det.anomalous,
                                     det.excess, table.min_tenant_pps, table.sensitivity,
                                     self.config.carpet_min_destinations)
        if found is None or not found.carpets:
            return found
        whole = {c.tenant_idx: i for i, c in enumerate(det.carpets)}
        for cand in found.carpets:
            at = whole.get(cand.tenant_idx)
            if at is None:
                det.carpets.append(cand)
                whole[cand.tenant_idx] = len(det.carpets) - 1
            elif det.carpets[at].prefix is None:
                det.carpets[at].prefix = cand.prefix
        return found

    # -- classification ----------------------------------------------------------------------------
    def _peers_of(self, addr: IPAddress) -> set[IPAddress]:
        out: set[IPAddress] = set()
        for tick in self._peers:
            out |= tick.get(addr, set())
        return out

    def _answered(self, dst: IPAddress, since: float) -> float:
        """Share of the new inbound traffic of `dst` (since `since`, against the ticks before) that its
        answers grew with, from sample counts (the dataplane samples both directions alike).

        A flash crowd is answered: the server sends data to every new client, while its peers are
        learned one sampled packet at a time, too slowly for the crowd's first seconds. A spoofed
        flood is not: its packets draw at most handshake replies and resets, which are not counted."""
        before_in = before_out = now_in = now_out = 0
        n_before = n_now = 0
        for t, talk_n, in_n in self._answers:
            if t >= since:
                now_in, now_out, n_now = now_in + in_n.get(dst, 0), now_out + talk_n.get(dst, 0), n_now + 1
            else:
                before_in, before_out = before_in + in_n.get(dst, 0), before_out + talk_n.get(dst, 0)
                n_before += 1
        if not n_now or now_in < ANSWERED_MIN_SAMPLES:
            return 0.0
        grown_in = now_in / n_now - (before_in / n_before if n_before else 0.0)
        grown_out = now_out / n_now - (before_out / n_before if n_before else 0.0)
        return float(np.clip(grown_out / grown_in, 0.0, 1.0)) if grown_in > 0 else 0.0

    def _since(self, tenant_idx: int, target: IPAddress | None, now: float) -> float:
        """Start of the current anomaly of a target: samples before it are its normal traffic."""
        inc = self.incidents.get(tenant_idx, target)
        if inc is not None and inc.state in (State.PENDING, State.ACTIVE):
            return inc.first_seen
        return now

    def _onset_rates(self, now: float, dest: DestinationRates, det: Detection, inbound: PacketFeatures,
                     by_dst: dict[IPAddress, list[int]]) -> dict[tuple[int, int], float]:
        """Rates since a flood's onset at targets with no incident yet (see `policy.onset`), by (row, class).

        A (row, class) below its threshold whose rate since the onset is above it is made
        anomalous here: the flood began late in the tick. Classification then judges these
        rates, so the tick where a flood begins can start its incident and its rule.
        """
        out: dict[tuple[int, int], float] = {}
        if not len(dest):
            return out
        first = [(int(r), int(c)) for r in det.anomalous_rows for c in np.flatnonzero(det.anomalous[r])]
        rows, classes = det.onset_candidates
        added = False
        for row, c in first + list(zip(rows.tolist(), classes.tolist(), strict=True)):
            tidx = int(dest.tenant_idx[row])
            dst = dest.addresses[row]
            idx = by_dst.get(dst)
            if not idx or tidx not in self.tenants or self.incidents.get(tidx, dst) is not None:
                continue
            idx_arr = np.asarray(idx, np.int64)
            ts = inbound.timestamp_ns[idx_arr[inbound.traffic_class[idx_arr] == c]]
            pps = float(dest.pps[row, c])
            rate, active = onset_rate(now, dest.dt, pps, pps - float(det.excess[row, c]), ts)
            if rate <= pps:
                continue
            out[(row, c)] = rate
            if not det.anomalous[row, c] and rate > det.threshold[row, c]:
                det.anomalous[row, c] = added = True
                log.info("attack.onset", tenant=self.tenants[tidx].tenant_id, dst=str(dst),
                         traffic_class=TrafficClass(c).name.lower(), tick_pps=round(pps), onset_pps=round(rate),
                         active_s=round(active, 3), threshold_pps=round(float(det.threshold[row, c])))
        if added:
            det.anomalous_rows = np.flatnonzero(det.anomalous.any(axis=1))
        return out

    def _classify(self, now: float, dest: DestinationRates, tenants: TenantRates,
                  det: Detection, onset_pps: dict[tuple[int, int], float]) -> tuple[list[Observation], np.ndarray]:
        """Observations of attacked targets, and the (N, C) mask of classes judged attack traffic."""
        cfg = self.config
        attack_mask = np.zeros_like(det.anomalous)
        observations: list[Observation] = []
        for row in det.anomalous_rows:
            tidx = int(dest.tenant_idx[row])
            entry = self.tenants.get(tidx)
            if entry is None:
                continue
            dst = dest.addresses[row]
            slot = dest.slots[row]
            anomalous_classes = frozenset(TrafficClass(int(c)) for c in np.flatnonzero(det.anomalous[row]))
            cached = self._scores.get((tidx, dst))
            inc = self.incidents.get(tidx, dst)
            if (cached is not None and inc is not None and inc.state == State.ACTIVE
                    and now - cached[0] < RECLASSIFY_S and anomalous_classes <= cached[1]):
                # An ongoing attack with nothing new: keep its verdict instead of re-reading samples.
                scores = cached[2]
            else:
                classes = [ClassEvidence(c, onset_pps.get((row, int(c)), float(dest.pps[row, c])),
                                         float(det.threshold[row, c]),
                                         float(self.dest_baseline.mean[slot, c])) for c in sorted(anomalous_classes)]
                since = self._since(tidx, dst, now)
                scores = classify_destination(classes, self._window.for_destination(dst, since),
                                              self._peers_of(dst), cfg.min_confidence,
                                              answered=self._answered(dst, since))
                self._scores[(tidx, dst)] = (now, anomalous_classes, scores)
            attack_classes = {c for s in scores for c in s.classes}
            for c in attack_classes:
                attack_mask[row, int(c)] = True
            if scores:
                observations.append(Observation(tidx, entry.tenant_id, entry.mode, dst, (str(dst),), scores,
                                                attack_classes))
        for cand in det.carpets:
            entry = self.tenants.get(cand.tenant_idx)
            if entry is None:
                continue
            t = cand.tenant_idx
            mean = self.tenant_baseline.mean[t] if cand.mean is None else cand.mean
            classes = [ClassEvidence(c, float(cand.tenant_pps[c]), float(cand.tenant_threshold[c]), float(mean[c]))
                       for c in cand.classes]
            peers = set().union(*(self._peers_of(dest.addresses[r]) for r in cand.elevated_rows[:CARPET_PEER_ROWS]))
            samples = self._window.for_tenant(t, self._since(t, None, now))
            if cand.prefix is not None:
                # The prefix's own samples: its evidence names the part of that prefix the carpet covers.
                net = ipaddress.ip_network(cand.prefix)
                samples = samples.subset(np.fromiter((d is not None and d.version == net.version and d in net
                                                      for d in samples.dst), bool, len(samples)))
            scores = classify_carpet(classes, samples, len(cand.elevated_rows), cand.top_share,
                                     cfg.carpet_min_destinations, cfg.min_confidence, peers=peers)
            if not scores:
                continue
            if cand.prefix is not None:
                for score in scores:
                    if score.vector == Vector.CARPET_BOMBING:
                        score.evidence["tenant_prefix"] = cand.prefix
            top = cand.elevated_rows[np.argsort(-dest.pps[cand.elevated_rows].sum(axis=1))]
            names = tuple(str(dest.addresses[r]) for r in top[:CARPET_DESTINATIONS_LISTED])
            observations.append(Observation(t, entry.tenant_id, entry.mode, None, names, scores, set(cand.classes)))
        return observations, attack_mask

    # -- incidents: accounting and rules -------------------------------------------------------------
    def _account(self, now: float, wall: float, dest: DestinationRates, tenants: TenantRates, det: Detection,
                 row_of_slot: np.ndarray, slot_of: Mapping[IPAddress, int]) -> None:
        """Each open incident's rates this tick. `slot_of`: the slot of every open incident's target (-1: none)."""
        for inc in list(self.incidents.open.values()):
            cls = [int(c) for c in inc.classes]
            if inc.target is None:
                t = inc.tenant_idx
                pps = float(tenants.pps[t].sum())
                bps = float(tenants.byte_rate[t].sum() * 8)
                attack = float(det.tenant_excess[t, cls].sum()) if cls else 0.0
                dropped = float(tenants.dropped_pps[t])
            else:
                slot = slot_of[inc.target]
                row = row_of_slot[slot] if slot >= 0 else -1
                if row < 0:       # evicted from the dataplane's LRU: no traffic this tick
                    pps = bps = attack = dropped = 0.0
                else:
                    pps = float(dest.pps[row].sum())
                    bps = float(dest.byte_rate_of(row).sum() * 8)
                    attack = float(det.excess[row, cls].sum()) if cls else 0.0
                    dropped = dest.dropped_pps_of(row)
            self.incidents.account(inc, now, wall, dest.dt, pps=pps, bps=bps, attack_pps=attack, dropped_pps=dropped)

    def _ensure_rules(self, inc: Incident, now: float, dest: DestinationRates, tenants: TenantRates,
                      row_of_slot: np.ndarray, slot_of: Mapping[IPAddress, int]) -> tuple[list[int], list[int]]:
        """Derive and install rules for attacked classes without one; returns (added, removed) rule ids.
        `slot_of`: the slot of every open incident's target (-1: none)."""
        entry = self.tenants.get(inc.tenant_idx)
        if entry is None or not entry.policy.auto_mitigation:
            return [], []
        cfg = self.config
        upgradable = {TrafficClass[r.traffic_class.upper()]: rid for rid, r in inc.rules.items()
                      if r.needs_samples or r.needs_evidence}
        evidence_n = self._evidence_added[inc.tenant_idx]
        # A fallback for want of legitimate samples is derived again once new ones arrived (issue 20:
        # a tenant with few clients kept its rate limit for the whole attack), not every tick.
        stale = {tc for tc, rid in upgradable.items()
                 if not inc.rules[rid].needs_samples and inc.rules[rid].evidence_seen == evidence_n}
        todo = sorted(((inc.classes - inc.rule_classes) | set(upgradable)) - stale)
        if not todo:
            return [], []
        since = self._since(inc.tenant_idx, inc.target, now)
        attack = self._window.for_tenant(inc.tenant_idx, since) if inc.target is None \
            else self._window.for_destination(inc.target, since)
        waited = now - (inc.started if inc.started is not None else now)

        def waits(tc: TrafficClass) -> bool:   # more samples may arrive; a fallback rule after signature_wait_s
            return int(np.count_nonzero(attack.traffic_class == int(tc))) < cfg.min_signature_samples \
                and (waited < cfg.signature_wait_s or tc in upgradable)

        todo = [tc for tc in todo if not waits(tc)]
        if not todo:     # before the legitimate samples are parsed: thousands of incidents wait each tick
            return [], []
        if len(self._rule_owner) >= MAX_RULES:
            # No room in the dataplane's table (an upgrade adds its rule before it removes the old one):
            # asking would fail, and a failure for each of thousands of incidents each tick flooded the log.
            self.rules_waiting_for_room += 1
            return [], []
        if inc.target is None:
            legit = parse_samples(list(self._legit_tenant.get(inc.tenant_idx, ())))
            pps_row, mean_row = tenants.pps[inc.tenant_idx], self.tenant_baseline.mean[inc.tenant_idx]
            base_thr = self.tenant_baseline.baseline_threshold(np.array([inc.tenant_idx]))[0]
        else:
            legit = parse_samples(list(self._legit.get(inc.target, ())))
            slot = slot_of[inc.target]
            row = row_of_slot[slot] if slot >= 0 else -1
            if row < 0:
                return [], []
            pps_row, mean_row = dest.pps[row], self.dest_baseline.mean[slot]
            base_thr = self.dest_baseline.baseline_threshold(np.array([slot]))[0]
        # The tenant's clients and the peers its servers answer: TTL evidence when the target has too
        # few legitimate samples of its own (issue 20, item 3); only then does the signature read them.
        tenant_legit = None
        if len(legit) < MIN_TTL_EVIDENCE_SAMPLES:
            tenant_legit = parse_samples([*self._legit_tenant.get(inc.tenant_idx, ()),
                                          *self._peer_legit.get(inc.tenant_idx, ())])
        added: list[int] = []
        removed: list[int] = []
        for tc in todo:
            c = int(tc)
            per_class_rate = getattr(entry.policy, BUDGET_FIELDS[tc], 0) if tc in BUDGET_FIELDS else 0
            rate_limit = per_class_rate or max(cfg.rate_limit_floor_pps, float(base_thr[c]))
            attack_share = (pps_row[c] - mean_row[c]) / pps_row[c] if pps_row[c] > 0 else 1.0
            vector = inc.class_vectors.get(tc, str(Vector.CARPET_BOMBING if inc.target is None else "unknown"))
            sig = derive_signature(tenant_idx=inc.tenant_idx, dst=inc.target, traffic_class=tc, attack=attack,
                                   legit=legit, attack_share=float(attack_share), rate_limit_pps=rate_limit,
                                   min_samples=cfg.min_signature_samples, legit_tolerance=cfg.legit_tolerance,
                                   comment=f"{inc.id} {vector}", ttl_evidence=tenant_legit)
            rule = sig.rule
            if entry.mode == TenantMode.MONITOR:
                rule = dataclasses.replace(rule, action=RuleAction.COUNT)
            inc.rule_classes.add(tc)
            replaces = upgradable.get(tc)
            if replaces is not None and sig.kind != "drop":
                record = inc.rules[replaces]                            # still no header signature
                record.needs_samples, record.needs_evidence = sig.needs_samples, sig.needs_evidence
                record.evidence_seen = evidence_n
                continue
            if len(inc.rules) >= RULES_PER_TARGET + (replaces is not None):
                log.warning("rule.limit", tenant=inc.tenant_id, incident=inc.id, limit=RULES_PER_TARGET)
                continue
            try:
                rule_id = self.dataplane.add_rule(rule)
            except Exception as exc:   # the dataplane's own error type; the incident goes on without it
                log.error("rule.add_failed", tenant=inc.tenant_id, incident=inc.id, vector=vector, error=str(exc))
                continue
            inc.rules[rule_id] = RuleRecord(rule_id, rule, vector, tc.name.lower(), sig.kind, sig.reason,
                                            sig.needs_samples, sig.needs_evidence, evidence_n)
            if replaces is not None:
                # Enough samples now: the header signature takes over from the rate-limit fallback
                # (added first, so the attack never meets an empty rule set in between).
                self._remove_rule(inc, replaces)
                removed.append(replaces)
            inc.changed = True
            self._rule_owner[rule_id] = inc
            added.append(rule_id)
            log.info("rule.add", tenant=inc.tenant_id, incident=inc.id, dst=str(inc.target) if inc.target else None,
                     vector=vector, kind=sig.kind, action=rule.action.name.lower(), rule=_rule_text(rule),
                     reason=sig.reason, coverage=None if math.isnan(sig.attack_coverage) else
                     round(sig.attack_coverage, 3))
        return added, removed

    def _remove_rules(self, inc: Incident) -> list[int]:
        removed = list(inc.rules)
        for rule_id in removed:
            self._remove_rule(inc, rule_id)
        return removed

    def _remove_rule(self, inc: Incident, rule_id: int) -> None:
        try:
            self.dataplane.remove_rule(rule_id)
        except Exception as exc:   # already gone (dataplane restarted): forget it all the same
            log.warning("rule.remove_failed", tenant=inc.tenant_id, incident=inc.id, rule_id=rule_id,
                        error=str(exc))
        else:
            log.info("rule.remove", tenant=inc.tenant_id, incident=inc.id, rule_id=rule_id)
        inc.rules.pop(rule_id, None)
        inc.changed = True
        self._rule_owner.pop(rule_id, None)

    def _read_rule_counters(self) -> None:
        if not self._rule_owner:
            return
        try:
            counters = self.dataplane.read_rule_counters()
        except Exception as exc:   # the dataplane's own error type: the figures wait for the next tick
            log.error("rule.counters_failed", error=str(exc))
            return
        for rule_id, inc in self._rule_owner.items():
            c = counters.get(rule_id)
            record = inc.rules.get(rule_id)
            if c is not None and record is not None:
                record.matched_packets, record.dropped_packets = c.matched_packets, c.dropped_packets

    def _derive_budgets(self, now: float, dest: DestinationRates, det: Detection) -> None:
        self.budgets.observe(
            now, tenant_idx=dest.tenant_idx, pps=dest.pps, valid=dest.valid, anomalous=det.anomalous,
            threshold=det.threshold, baseline_cap=det.baseline_cap,
            warm=lambda rows: det.warm[rows],     # detection's mask: the baselines before learning
            tenant_warm=lambda: self.tenant_baseline.learned_s >= self.tenant_baseline.warmup_s,
            policies=self._policies, min_pps_floor=self._min_pps_floor)

    # -- learning and samples ------------------------------------------------------------------------
    def _learn(self, dest: DestinationRates, tenants: TenantRates, det: Detection, attack_mask: np.ndarray,
               row_of_slot: np.ndarray, prefix_found: PrefixDetection | None = None) -> None:
        learn = self._learn_mask(dest, det, attack_mask)
        t_learn = tenants.valid[:, None] & ~det.tenant_anomalous
        targets = []
        for inc in self.incidents.open.values():
            if inc.state not in (State.ACTIVE, State.PENDING):
                continue
            if inc.target is None:
                t_learn[inc.tenant_idx] = False
                cls = [int(c) for c in inc.classes]
                learn[np.ix_(np.flatnonzero(dest.tenant_idx == inc.tenant_idx), cls)] = False
            else:
                targets.append(inc.target)
                # An attack on one address is no part of its tenant's norm either (issue 20: a pulse
                # wave's edges would otherwise lift the tenant's threshold above a later carpet).
                t_learn[inc.tenant_idx, [int(c) for c in inc.classes]] = False
        if targets:
            slots = self.rates.slots.slots_of(targets)
            target_rows = row_of_slot[slots[slots >= 0]]
            learn[target_rows[target_rows >= 0]] = False
        # The caps as detection's: worked out again from the same state, where detection found the rate over it.
        self.dest_baseline.update(dest.slots, dest.pps, dest.dt, learn, over_cap=det.over_cap)
        rows = tenant_rows(self.policy_table.tenant_rows)
        t_cap = det.tenant_cap if det.tenant_cap is not None and det.tenant_cap.shape == t_learn[rows].shape else None
        self.tenant_baseline.update(rows, tenants.pps[rows], tenants.dt, t_learn[rows], cap=t_cap)
        if prefix_found is not None:
            self.prefixes.learn(prefix_found, tenants.dt, np.vstack([t_learn, np.zeros((1, N_CLASSES), bool)]))

    @staticmethod
    def _learn_mask(dest: DestinationRates, det: Detection, attack_mask: np.ndarray) -> np.ndarray:
        """(N, C) elements learned this tick: valid rows, except anomalous classes that are attacks or
        belong to rows nobody classified (no tenant entry); anomalies judged benign are learned.

        Built from the few anomalous elements by index: whole-array mask arithmetic over 100k rows
        costs milliseconds.
        """
        n, n_cls = det.anomalous.shape
        if dest.valid.all():
            learn = np.ones((n, n_cls), bool)
        else:
            learn = np.repeat(dest.valid[:, None], n_cls, axis=1)
        flagged = np.flatnonzero(det.anomalous)
        if len(flagged):
            classified = np.zeros(n, bool)
            classified[det.anomalous_rows] = True
            not_benign = attack_mask.reshape(-1)[flagged] | ~classified[flagged // n_cls]
            learn.reshape(-1)[flagged[not_benign]] = False
        return learn

    def _keep_samples(self, inbound: PacketFeatures, by_dst: dict[IPAddress, list[int]],
                      by_tenant: dict[int, list[int]], attack_mask: np.ndarray, dest: DestinationRates,
                      elevated_pairs: tuple[set[tuple[IPAddress, int]], set[tuple[int, int]]]) -> None:
        """Remember samples of targets that are not under attack as their legitimate traffic.

        A tick's samples wait LEGIT_PROBATION_TICKS ticks before they count as legitimate:
        the tick in which a flood began often carries only part of a second of it, too little
        to cross a threshold, and those samples must not teach the signature check that the
        flood is the server's normal traffic. A target that turns anomalous meanwhile loses them.
        Samples of a class that a target (or its tenant) receives above its normal band
        (`elevated_pairs`: `_elevated` of the tick's sampled and pending targets, before learning)
        never count: a slow ramp spends many seconds there before it crosses the threshold, and its
        head taught the signature check that the flood was legitimate (issue 20: the 60 s ramp kept a
        rate-limit fallback).
        """
        hot_dsts = {inc.target for inc in self.incidents.open.values() if inc.target is not None}
        hot_tenants = {inc.tenant_idx for inc in self.incidents.open.values() if inc.target is None}
        # Attacked rows from the flat mask (`.any(axis=1)` over 100k rows walks the class axis slowly).
        anomalous_dsts = {dest.addresses[r] for r in rows_with_any(attack_mask)}
        blocked = hot_dsts | anomalous_dsts
        elevated, t_elevated = elevated_pairs
        tenant_of = inbound.tenant_idx
        for pending_dst, pending_tenant in self._legit_probation:
            for dst in [d for d in pending_dst if d in blocked]:
                del pending_dst[dst]
            for t in [t for t in pending_tenant if t in hot_tenants]:
                del pending_tenant[t]
            if elevated:
                for dst, pairs in pending_dst.items():
                    pending_dst[dst] = [(smp, c) for smp, c in pairs if (dst, c) not in elevated]
            if blocked or elevated or t_elevated:   # else nothing to take out (hashing addresses is not free)
                for t, triples in pending_tenant.items():
                    pending_tenant[t] = [(smp, d, c) for smp, d, c in triples
                                         if d not in blocked and (d, c) not in elevated and (t, c) not in t_elevated]
        classes = inbound.traffic_class
        now_dst = {dst: [(inbound.samples[i], int(classes[i])) for i in idx
                         if (dst, int(classes[i])) not in elevated and (int(tenant_of[i]), int(classes[i])) not in t_elevated]
                   for dst, idx in by_dst.items() if dst not in hot_dsts and dst not in anomalous_dsts}
        now_tenant = {t: [(inbound.samples[i], inbound.dst[i], int(classes[i])) for i in idx
                          if (t, int(classes[i])) not in t_elevated
                          and (not anomalous_dsts or inbound.dst[i] not in anomalous_dsts)
                          and (not elevated or (inbound.dst[i], int(classes[i])) not in elevated)]
                      for t, idx in by_tenant.items() if t not in hot_tenants and t in self.tenants}
        self._keep_peer_samples(inbound, by_tenant, blocked, hot_tenants)
        # A destination of a tenant under a carpet is attacked too, though not on its own.
        now_dst = {d: v for d, v in now_dst.items() if v and int(tenant_of[by_dst[d][0]]) not in hot_tenants}
        if len(self._legit_probation) == self._legit_probation.maxlen:
            self._commit_legit(*self._legit_probation.popleft())
        self._legit_probation.append((now_dst, now_tenant))

    def _keep_peer_samples(self, inbound: PacketFeatures, by_tenant: dict[int, list[int]],
                           blocked: set[IPAddress], hot_tenants: set[int]) -> None:
        """Keep the attacked targets' samples from their servers' peers, for tenants with a rule that waits
        for legitimate samples: a spoofed flood does not come from the remotes a server talks to."""
        waiting = {inc.tenant_idx for inc in self.incidents.open.values()
                   if any(r.needs_evidence for r in inc.rules.values())}
        for t in waiting:
            peers_of: dict[IPAddress, set[IPAddress]] = {}
            kept = []
            for i in by_tenant.get(t, ()):
                d, src = inbound.dst[i], inbound.src[i]
                if d is None or src is None or not (t in hot_tenants or d in blocked):
                    continue                      # not attacked: it joins the legitimate samples anyway
                peers = peers_of.get(d)
                if peers is None:
                    peers = peers_of[d] = self._peers_of(d)
                if src in peers:
                    kept.append(inbound.samples[i])
            if not kept:
                continue
            store = self._peer_legit.get(t)
            if store is None:
                store = self._peer_legit[t] = collections.deque(maxlen=self.config.legit_samples_per_destination * 2)
                if len(self._peer_legit) > self.config.legit_sample_tenants:
                    self._peer_legit.popitem(last=False)
            store.extend(kept)
            self._evidence_added[t] += len(kept)

    def _elevated(self, dest: DestinationRates, tenants: TenantRates, det: Detection, row_of_slot: np.ndarray,
                  addresses: set[IPAddress]) -> tuple[set[tuple[IPAddress, int]], set[tuple[int, int]]]:
        """(address, class) of `addresses` and (tenant, class) pairs whose rate this tick is above their
        normal band: the baseline's (mean + k·sigma)·margin, and at least ELEVATED_FLOOR_PPS. Looked up
        for the sampled addresses only (a whole-array pass over 100k rows costs a millisecond)."""
        out: set[tuple[IPAddress, int]] = set()
        if addresses and len(dest):
            listed = list(addresses)
            slots = self.rates.slots.slots_of(listed)
            ok = slots >= 0
            rows = np.full(len(listed), -1, np.int64)
            rows[ok] = row_of_slot[slots[ok]]
            have = np.flatnonzero(rows >= 0)
            if len(have):
                r = rows[have]
                hot = dest.pps[r] > np.maximum(det.baseline_cap[r], ELEVATED_FLOOR_PPS)
                for i, c in zip(*np.nonzero(hot), strict=True):
                    out.add((listed[have[i]], int(c)))
        t_out: set[tuple[int, int]] = set()
        if det.tenant_cap is not None:
            t_rows = self.policy_table.tenant_rows
            if det.tenant_cap.shape == (len(t_rows), N_CLASSES):
                hot = (tenants.pps[t_rows] > np.maximum(det.tenant_cap, ELEVATED_FLOOR_PPS)) & tenants.valid[t_rows, None]
                for i, c in zip(*np.nonzero(hot), strict=True):
                    t_out.add((int(t_rows[i]), int(c)))
        return out, t_out

    def _commit_legit(self, by_dst: dict[IPAddress, list[tuple[Sample, int]]],
                      by_tenant: dict[int, list[tuple[Sample, IPAddress | None, int]]]) -> None:
        cfg = self.config
        for dst, samples in by_dst.items():
            store = self._legit.get(dst)
            if store is None:
                store = collections.deque(maxlen=cfg.legit_samples_per_destination)
                self._legit[dst] = store
                if len(self._legit) > cfg.legit_sample_destinations:
                    self._legit.popitem(last=False)
            else:
                self._legit.move_to_end(dst)
            store.extend(smp for smp, _ in samples)
        for t, pairs in by_tenant.items():
            if t not in self.tenants:
                continue
            store = self._legit_tenant.get(t)
            if store is None:
                store = collections.deque(maxlen=cfg.legit_samples_per_destination * 2)
                self._legit_tenant[t] = store
                if len(self._legit_tenant) > cfg.legit_sample_tenants:
                    self._legit_tenant.popitem(last=False)
            else:
                self._legit_tenant.move_to_end(t)
            store.extend(smp for smp, _, _ in pairs)
            self._evidence_added[t] += len(pairs)

    def _write_pcaps(self, by_dst: dict[IPAddress, list[int]], by_tenant: dict[int, list[int]],
                     inbound: PacketFeatures) -> None:
        for inc in self.incidents.open.values():
            if inc.state != State.ACTIVE:
                continue
            idx = by_tenant.get(inc.tenant_idx, []) if inc.target is None else by_dst.get(inc.target, [])
            if not idx:
                continue
            pcap = self._pcaps.get(inc.id)
            if pcap is None:
                try:
                    pcap = IncidentPcap(self.state_dir / "pcap", inc.id, self.config.pcap_max_bytes)
                except OSError as exc:
                    log.error("pcap.open_failed", incident=inc.id, error=str(exc))
                    continue
                self._pcaps[inc.id] = pcap
            try:
                pcap.write([inbound.samples[i] for i in idx])
            except OSError as exc:
                log.error("pcap.write_failed", incident=inc.id, error=str(exc))

    def _prune_pcaps(self, wall: float) -> None:
        """Age the evidence (`policy.pcap.prune`): one directory listing, a few unlinks. The files of
        open incidents (capturing, or in hold-down with their writer kept) stay."""
        cfg = self.config
        keep = set(self._pcaps) | {inc.id for inc in self.incidents.open.values()}
        try:
            pruned = prune_pcaps(self.state_dir / "pcap", wall, cfg.pcap_retention_days * 86400.0,
                                 cfg.pcap_max_total_bytes, keep)
        except OSError as exc:
            log.error("pcap.prune_failed", path=str(self.state_dir / "pcap"), error=str(exc))
            return
        if pruned.failed:
            log.error("pcap.prune_failed", path=str(self.state_dir / "pcap"), files=pruned.failed,
                      error="files could not be deleted")
        if pruned.files:
            self.pcap_files_pruned += pruned.files
            log.info("pcap.pruned", files=pruned.files, expired=pruned.expired_files,
                     over_total=pruned.over_total_files, bytes=pruned.bytes, kept_bytes=pruned.kept_bytes,
                     retention_days=cfg.pcap_retention_days, max_total_bytes=cfg.pcap_max_total_bytes)

    # -- events ----------------------------------------------------------------------------------
    def _describe(self, event: Event, open_by_id: Mapping[str, Incident]) -> Event:
        """The event with the incident's evidence and rules added, logged; `_deliver` publishes it.
        `open_by_id`: the open incidents by id (those of the ATTACK_START events at least)."""
        inc_pcap = self._pcaps.get(event.incident_id or "")
        if inc_pcap is not None:
            event.details["pcap"] = inc_pcap.summary()
        if event.type == EventType.ATTACK_START:
            # Rules are derived after the incident starts, in the same tick: report them with the start.
            inc = open_by_id.get(event.incident_id or "")
            if inc is not None:
                event.details["rules"] = [r.to_dict() for r in inc.rules.values()]
                # An attack may start at its first anomalous tick, before that tick was accounted:
                # report the rates accounted since.
                event = dataclasses.replace(event, pps=round(max(event.pps or 0.0, inc.peak_pps), 1),
                                            bps=round(max(event.bps or 0.0, inc.peak_bps), 1))
                event.details["peak_pps"] = round(inc.peak_pps, 1)
                event.details["peak_bps"] = round(inc.peak_bps, 1)
        name = {EventType.ATTACK_START: "attack.start", EventType.ATTACK_UPDATE: "attack.update",
                EventType.ATTACK_END: "attack.end"}.get(event.type, "policy.event")
        logger = log.warning if event.type == EventType.ATTACK_START else log.info
        logger(name, tenant=event.tenant, incident=event.incident_id, dst=",".join(event.destinations[:8]),
               vector=",".join(event.vectors), confidence=event.confidence,
               vectors=event.details.get("vector_confidence"), pps=event.pps, bps=event.bps,
               dropped=event.packets_dropped, efficacy=event.details.get("efficacy"))
        return event

    # -- persistence -----------------------------------------------------------------------------
    def save_state(self) -> None:
        """Write baselines to state_dir so a restart does not begin a new warm-up."""
        with self.lock:
            self._save_state_locked()

    def _save_state_locked(self) -> None:
        slots = self.rates.slots
        used = np.flatnonzero(slots.in_use)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.state_dir / (STATE_FILE + ".tmp")
            with tmp.open("wb") as fh:
                np.savez_compressed(
                    fh, addresses=np.array([str(slots.address_of[s]) for s in used], dtype=object).astype(str),
                    mean=self.dest_baseline.mean[used], var=self.dest_baseline.var[used],
                    learned=self.dest_baseline.learned_s[used], t_mean=self.tenant_baseline.mean,
                    t_var=self.tenant_baseline.var, t_learned=self.tenant_baseline.learned_s,
                    **self.prefixes.state())
            tmp.replace(self.state_dir / STATE_FILE)
        except OSError as exc:
            log.error("policy.state_save_failed", path=str(self.state_dir), error=str(exc))

    def load_state(self) -> None:
        path = self.state_dir / STATE_FILE
        if not path.exists():
            return
        try:
            with np.load(path, allow_pickle=False) as data:
                addresses = [ipaddress.ip_address(a) for a in data["addresses"].tolist()]
                mean, var, learned = data["mean"], data["var"], data["learned"]
                t_mean, t_var, t_learned = data["t_mean"], data["t_var"], data["t_learned"]
                n_cls = len(TrafficClass)
                if mean.shape != (len(addresses), n_cls) or t_mean.shape != (MAX_TENANTS, n_cls):
                    raise ValueError("array shapes do not match this version")
                # Prefix baselines (issue 20) are absent from files written before them.
                prefix_state = (data["p_keys"].tolist(), data["p_mean"], data["p_var"], data["p_learned"]) \
                    if "p_keys" in data.files else None
        except (OSError, ValueError, KeyError) as exc:
            log.error("policy.state_load_failed", path=str(path), error=str(exc))
            return
        slots = self.rates.assign_slots(addresses)
        self.dest_baseline.resize(self.rates.slots.capacity)
        self.dest_baseline.mean[slots], self.dest_baseline.var[slots] = mean, var
        self.dest_baseline.learned_s[slots] = learned
        self.tenant_baseline.mean[:], self.tenant_baseline.var[:] = t_mean, t_var
        self.tenant_baseline.learned_s[:] = t_learned
        prefixes = 0
        if prefix_state is not None:
            try:
                prefixes = self.prefixes.restore(*prefix_state)
            except ValueError as exc:
                log.error("policy.state_load_failed", path=str(path), error=str(exc))
        log.info("policy.state_loaded", destinations=len(addresses), prefixes=prefixes)


def _rule_text(rule: Rule) -> str:
    parts = [f"dst={rule.dst}" if rule.dst else "dst=*"]
    for name in ("proto", "sport", "dport", "length", "ttl"):
        v = getattr(rule, name)
        if v is not None:
            parts.append(f"{name}={v.lo}-{v.hi}" if hasattr(v, "lo") else f"{name}={v}")
    if rule.tcp_flags:
        parts.append(f"flags={rule.tcp_flags[1]:#04x}/{rule.tcp_flags[0]:#04x}")
    if rule.payload:
        parts.append(f"payload={rule.payload.hex()}/{(rule.payload_mask or b'').hex()}")
    if rule.fragments is not None:
        parts.append(f"fragments={rule.fragments}")
    if rule.action == RuleAction.RATE_LIMIT:
        parts.append(f"rate={rule.rate_pps}pps")
    return " ".join(parts)


__all__ = ["PolicyEngine", "TickReport", "TenantSpec", "PolicyConfig", "VectorScore"]
