"""The running appliance: one process wiring dataplane, policy engine, notifiers and SecureWatch.

`Appliance` owns the lifecycle. It first validates the whole configuration
(`validate_for_run`: every section, notifiers included) and checks that the NICs
can carry redirected frames (`appliance.nics`), so a bad file or a veth that would
drop everything is refused before anything is attached. Then it loads the XDP program with pinned maps,
attaches it to the two NICs (replacing a previous instance's program in place,
so a restart drops nothing), applies the tenant set atomically, runs the policy
engine, the traffic monitor and the notifiers, and hosts SecureWatch when it is
enabled. Once the kernel shows both NICs up with the program attached it reports
`forwarding` in its status and tells systemd READY=1 (`Type=notify`). On SIGTERM it stops the control plane and leaves the bridge forwarding
with the last tenants and rules (a dead control plane must not cut customers
off); `seawall detach` removes the dataplane.

Tenant traffic comes from the policy engine, which reads the counters once per tick and
publishes the counters with their rates (`policy.rates.TenantTraffic`); `TrafficMonitor`
keeps what it publishes for the status (`securewatch.status_types.ApplianceStatus`, written
to the status file once a second) and the per-second series SecureWatch samples.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import itertools
import json
import os
import pathlib
import signal
import time
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import structlog

from appliance import fleet_agent, nics, sdnotify
from appliance.config import ApplianceConfig, load_config
from appliance.destinations import DestinationRecorder
from dataplane import DataplaneError
from dataplane.constants import DropReason, TenantMode
from dataplane.reader import UNPROTECTED
from policy.events import Event, EventBus, EventType, Severity
from policy.heuristics import HeuristicsSwitch
from policy.rates import TenantTraffic
from securewatch.status_types import (
    ApplianceStatus,
    IncidentStatus,
    PolicyStatus,
    SpillStoreStatus,
    SpliceGateStatus,
    TenantStatus,
    TrafficSecond,
    UnprotectedStatus,
    dump_status,
    parse_status,
)
from tenants import ConfigError, TenantSet
from tenants.compile import assign_indices, compile_tenant_set

if TYPE_CHECKING:
    from appliance.fleet_agent import FleetAgent
    from dataplane.api import DataplaneLike
    from escalation.controller import Escalation
    from policy.engine import PolicyEngine

log = structlog.get_logger("seawall.appliance")

STATUS_FILE = "status.json"            # written every second for `seawall status`
ENGINE_DIR = "policy"                  # the policy engine's state_dir under ours: baselines, pcap/ (its captures)
INDEX_FILE = "tenant-index.json"       # stable tenant index assignment
SERIES_SECONDS = 3600                  # rows of per-tick traffic kept in memory (an hour at 1 s ticks)
STALE_RULE_GRACE_S = 60.0              # rules inherited from a previous process live this long, seconds
STATE_STARTING = "starting: validating, compiling and attaching"   # forwarding_state before the first check
PEER_RECHECK_S = 5.0                   # seconds between checks of the veth peers (~10 ms of CPU each, per NIC)


SERIES_KEYS = ("passed_pps", "dropped_pps", "passed_bps", "dropped_bps", "outbound_pps")   # of TrafficSecond
_TOTALS = ("passed_packets", "dropped_packets", "passed_bytes", "dropped_bytes")
_RATES = ("passed_pps", "dropped_pps", "passed_bps", "dropped_bps")


@dataclasses.dataclass
class TenantSeries:
    """Per-tick rates of one tenant (the `TrafficSecond` keys but time), newest last."""

    times: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=SERIES_SECONDS))
    rows: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=SERIES_SECONDS))


class TrafficMonitor:
    """The tenant traffic the policy engine publishes: the last tick's, and an hour of rates per tenant.

    It reads no counters: `record` is the engine's `on_tenant_traffic`, called once per tick
    (1 s at the default `tick_ms`, so the series is per second). Rates are the engine's
    (`policy.rates`: a reset counter or a row new in the map counts what it holds now).
    """

    def __init__(self) -> None:
        self.latest: TenantTraffic | None = None
        self.series: dict[int, TenantSeries] = collections.defaultdict(TenantSeries)

    def record(self, traffic: TenantTraffic) -> None:
        self.latest = traffic
        r = traffic.rates
        rows = np.flatnonzero(r.valid)       # tenants with counters at this read; none at the priming read
        columns = (r.passed_pps, r.dropped_pps, r.passed_bps, r.dropped_bps, r.out_passed_pps)
        for idx, *values in zip(rows.tolist(), *(c[rows].tolist() for c in columns), strict=True):
            series = self.series[idx]
            series.times.append(traffic.wall)
            series.rows.append(dict(zip(SERIES_KEYS, values, strict=True)))

    def series_of(self, idx: int, seconds: int) -> list[TrafficSecond]:
        series = self.series.get(idx)
        if series is None or seconds <= 0:
            return []
        # From the newest end: the fleet agent asks each tenant's last second or two every second,
        # and copying an hour of rows per tenant for that cost ~10,000x more.
        n = min(seconds, len(series.times))
        pairs = list(zip(itertools.islice(reversed(series.times), n), itertools.islice(reversed(series.rows), n),
                         strict=True))[::-1]
        return [{"time": t, **row} for t, row in pairs]  # type: ignore[typeddict-item]

    def tenant_traffic(self, indices: dict[str, int]) -> dict[str, dict[str, Any]]:
        """The traffic part of each tenant's `TenantStatus` (totals and rounded rates), by tenant id."""
        traffic = self.latest
        rows = sorted({i for i in indices.values() if traffic is not None and 0 <= i < len(traffic.rates.present)})
        if not rows:
            return {tid: _no_traffic() for tid in indices}
        c, r, at = traffic.counters, traffic.rates, np.array(rows, np.int64)
        dropped = (c.dropped_packets[at], c.dropped_bytes[at])                      # (rows, directions)
        # Passed = every packet minus the dropped ones, per direction (as TenantCounterArrays.passed_*),
        # for the tenants' rows only.
        passed = [np.where(total >= d, total - d, 0) for total, d in
                  ((c.class_packets[at].sum(axis=2, dtype=np.uint64), dropped[0]),
                   (c.class_bytes[at].sum(axis=2, dtype=np.uint64), dropped[1]))]
        totals = (passed[0], dropped[0], passed[1], dropped[1])                     # in _TOTALS' order
        per_row = [dict(zip(_TOTALS + _RATES, values, strict=True)) for values in zip(
            *(t.sum(axis=1).tolist() for t in totals),
            *(np.round(getattr(r, name)[at], 1).tolist() for name in _RATES), strict=True)]
        reasons = c.reason_packets[at].sum(axis=1)        # (rows, reasons), both directions
        for i, figures in enumerate(per_row):
            figures["drop_reasons"] = {reason.name.lower(): int(reasons[i, reason]) for reason in DropReason
                                       if reason and reasons[i, reason]}
        by_idx = dict(zip(rows, per_row, strict=True))
        return {tid: by_idx.get(idx) or _no_traffic() for tid, idx in indices.items()}

    def unprotected(self) -> UnprotectedStatus:
        traffic = self.latest
        if traffic is None or len(traffic.counters) <= UNPROTECTED:
            return {"passed_packets": 0, "passed_pps": 0.0}
        row = traffic.counters.tenant(UNPROTECTED)      # that row alone
        return {"passed_packets": int(row.passed_packets.sum()),
                "passed_pps": round(traffic.rates.unprotected_passed_pps, 1)}


def _no_traffic() -> dict[str, Any]:
    return {**dict.fromkeys(_TOTALS, 0), **dict.fromkeys(_RATES, 0.0), "drop_reasons": {}}


class Appliance:
    """The appliance process. Also the `ApplianceHooks` SecureWatch calls into."""

    def __init__(self, config: ApplianceConfig, *, config_path: str | None = None, attach_mode: str = "auto",
                 detach_on_exit: bool = False, sample_every: int = 64) -> None:
        self.config = config
        self.config_path = config_path
        self.attach_mode = attach_mode
        self.detach_on_exit = detach_on_exit
        self.sample_every = sample_every
        self.state_dir = pathlib.Path(config.appliance.state_dir)
        self.bus = EventBus()
        self.monitor = TrafficMonitor()
        self.destinations = DestinationRecorder()   # per-server series for SecureWatch (issue 16)
        self.tenants: TenantSet = TenantSet()
        self.indices: dict[str, int] = {}
        self.dataplane = None
        self.engine = None
        self.notifiers = None
        self.escalation: Escalation | None = None   # with [bgp]: the ladder and the BGP speaker
        self.fleet: FleetAgent | None = None        # with [fleet]: telemetry up, tenant sets down
        self._lifetime: contextlib.AsyncExitStack | None = None  # what stops with the process
        self.securewatch_url: str | None = None
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._reload_requested = False
        self._tasks: set[asyncio.Task] = set()
        self._stale_rules: dict[int, float] = {}
        self._notify_parsed = None           # the [notify] table, parsed once by validate_for_run
        self.forwarding = False              # see _check_forwarding
        self.forwarding_state = STATE_STARTING
        self._ready_sent = False
        self._peer_problems: list[str] = []
        self._peers_checked_at = -PEER_RECHECK_S

    # -- lifecycle ----------------------------------------------------------

    async def run(self) -> int:
        from dataplane import Dataplane  # noqa: PLC0415 - imports bcc

        # Everything that can be refused is refused here, before anything is compiled, pinned or attached.
        self._notify_parsed = validate_for_run(self.config)
        fleet_token = self.config.fleet.token() if self.config.fleet is not None else None   # ConfigError: refused
        external, internal = self.config.interfaces()
        # Generic (skb) mode hands redirected frames to the veth's ordinary transmit path, which needs no
        # NAPI on the peer; native mode (what "auto" gets on a veth) needs it.
        problems, warnings = [], []
        if self.attach_mode != "generic":
            try:
                problems, warnings = await asyncio.to_thread(nics.redirect_problems, (external, internal))
            except OSError as exc:   # a check that cannot run must not keep the bridge down
                warnings = [f"cannot check the NICs' veth peers: {exc}"]
        for warning in warnings:
            log.warning("appliance.veth_peer_unchecked", problem=warning)
        if problems:
            raise DataplaneError("\n".join(["the bridge would drop what it forwards (nothing attached; fix, "
                                             "then start again):", *problems]))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log.info("appliance.start", external=external, internal=internal, config=self.config_path)
        settings = self.config.appliance
        # The per-address maps sized by the configuration and this box's CPU ids (dataplane.sizing).
        self.dataplane = Dataplane(str(settings.bpffs), sample_every=self.sample_every,
                                   max_addresses=settings.max_addresses,
                                   address_cache_bits=settings.address_cache_bits(),
                                   flow_sizes=settings.flow_sizes)
        # Tenants first, then attach: the program never filters with an empty set after a restart.
        # In a fleet, the last set taken from the central server (it may be unreachable now).
        saved = fleet_agent.saved_config(self.state_dir) if self.config.fleet is not None else None
        self._apply(saved[1] if saved is not None else self.config.tenants)
        self.dataplane.attach(external, internal, self.attach_mode)
        now = time.monotonic()
        self._stale_rules = {rid: now + STALE_RULE_GRACE_S for rid in self.dataplane.installed_rules()}
        self.engine = self.policy_engine(self.dataplane)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        self._spawn(self.engine.run(), "policy-engine")
        self._spawn(self._heuristics_loop(), "dataplane-heuristics")
        self._spawn(self._monitor_loop(), "traffic-monitor")
        async with contextlib.AsyncExitStack() as stack:
            await self.start_notifiers(stack)
            await self._start_escalation(stack)
            await self._start_securewatch(stack)
            if self.config.fleet is not None:
                self.fleet = await stack.enter_async_context(
                    fleet_agent.FleetAgent(self.config.fleet, fleet_token, self, self.bus, self.state_dir))
            self.bus.publish(Event(EventType.SYSTEM, None, "appliance started", Severity.NOTICE,
                                   details={"external": external, "internal": internal}))
            await self._stop.wait()
            log.info("appliance.stopping")
            sdnotify.notify(STOPPING="1", STATUS="stopping; the pinned bridge keeps forwarding")
            self.engine.stop()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.detach_on_exit:
            self.dataplane.detach()
            log.info("appliance.detached")
        else:
            log.info("appliance.stopped", bridge="left forwarding with the last tenants and rules")
        self.dataplane.close()
        return 0

    def stop(self) -> None:
        self._stop.set()

    def policy_engine(self, dataplane: DataplaneLike) -> PolicyEngine:
        """The policy engine over `dataplane` for the tenants applied, publishing its tenant traffic
        to `monitor` (the status's and the series' only source of tenant rates)."""
        from policy.appflood import AppFloodConfig  # noqa: PLC0415
        from policy.engine import PolicyConfig, PolicyEngine  # noqa: PLC0415

        # `[escalation] uplink_bps` scales the default detection floors (None: the fixed defaults).
        # [appliance] pcap_* keys: the incident PCAP files' caps and retention; [policy]: the engine's
        # box-wide knobs (baselines, confirmation, the quiet time before an incident ends, hold-down).
        policy = PolicyConfig(uplink_bps=self.config.escalation.uplink_bps, **self.config.appliance.pcap,
                              **self.config.policy)
        # Application-layer floods (issue 15): the volumetric baselines' pace unless [appflood] says
        # otherwise, caps at the dataplane's map sizes ([appliance] source_limits_max, blocked_sources_max).
        appflood = AppFloodConfig.for_dataplane(self.config.appliance.flow_sizes, **{
            "half_life_s": policy.half_life_s, "warmup_s": policy.warmup_s, "k_sigma": policy.k_sigma,
            "margin": policy.margin, "min_confidence": policy.min_confidence, **self.config.appflood})
        return PolicyEngine(dataplane, self._engine_tenants(), self.bus, self.state_dir / ENGINE_DIR,
                            tick=self.config.appliance.tick_ms / 1000.0, on_tenant_traffic=self._after_tick,
                            config=policy, appflood_config=appflood)

    def _after_tick(self, traffic: TenantTraffic) -> None:
        """The engine's tick callback (on the loop, after the tick): tenant rates, then the per-server
        rows, read from the engine under its lock (no tick may replace them meanwhile)."""
        self.monitor.record(traffic)
        if self.engine is not None:
            with self._engine_lock():
                self.destinations.record(self.engine, traffic.wall)

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("appliance.task_failed", task=name, error=repr(t.exception()))
                self._stop.set()  # a dead component must not go unnoticed: stop, systemd restarts us

        task.add_done_callback(done)

    async def start_notifiers(self, stack: contextlib.AsyncExitStack) -> None:
        self._lifetime = stack  # notifiers configured later (from SecureWatch) stop with it too
        if not self.config.notify:
            return
        from securewatch.notify.manager import NotifierManager  # noqa: PLC0415

        notify = self._notify_parsed or parse_notify(self.config.notify)
        self.notifiers = NotifierManager(notify, self.bus, self.state_dir / "notify")
        await stack.enter_async_context(self.notifiers)

    async def _start_escalation(self, stack: contextlib.AsyncExitStack) -> None:
        """With [bgp]: start the BGP speaker; at exit (before the notifiers stop, so the events of
        the last withdraws reach them) withdraw everything and stop it."""
        if self.config.bgp is None:
            return
        from escalation.controller import Escalation  # noqa: PLC0415 - only with [bgp]

        self.escalation = Escalation(self.config.bgp, self.config.escalation, self.state_dir / "bgp", self.bus)
        await self.escalation.start()
        stack.push_async_callback(self._stop_escalation)   # whichever is running then (reloads change it)

    async def _stop_escalation(self) -> None:
        if self.escalation is not None:
            await self.escalation.stop()

    async def _start_securewatch(self, stack: contextlib.AsyncExitStack) -> None:
        settings = self.config.securewatch
        if not settings.enabled:
            return
        try:
            from securewatch.server import start_server  # noqa: PLC0415
        except ImportError:
            log.warning("appliance.securewatch_unavailable", reason="securewatch.server not installed")
            return
        from securewatch.mailer import report_mailer  # noqa: PLC0415

        # Monthly customer reports through the first [[notify.email]] receiver (none: no report mail).
        # The engine's captures are under its own state_dir (ENGINE_DIR/pcap): SecureWatch serves them from there.
        engine_dir = self.state_dir / ENGINE_DIR
        mailer = report_mailer(self._notify_parsed, settings.reports, pcap_root=(engine_dir / "pcap").resolve())
        self.securewatch_url = await stack.enter_async_context(
            start_server(settings, bus=self.bus, appliance=self, state_dir=engine_dir, mailer=mailer))
        log.info("appliance.securewatch", url=self.securewatch_url)

    # -- tenants --------------------------------------------------------------

    def _index_file(self) -> pathlib.Path:
        return self.state_dir / INDEX_FILE

    def _apply(self, tenant_set: TenantSet) -> None:
        """Compile and load a tenant set; raises ConfigError/DataplaneError with the running set kept."""
        previous = {}
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads(self._index_file().read_text())
        indices = assign_indices([t.id for t in tenant_set], previous)
        tables = compile_tenant_set(tenant_set, indices)
        fresh = [idx for tid, idx in indices.items() if previous.get(tid) != idx]
        with self._engine_lock():
            self.dataplane.apply_tenants(tables, reset_stats=fresh)
        tmp = self._index_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(indices, indent=1, sort_keys=True))
        os.replace(tmp, self._index_file())
        self.tenants, self.indices = tenant_set, indices
        if self.engine is not None:
            self.engine.set_tenants(self._engine_tenants())
        log.info("appliance.tenants_applied", tenants=len(tenant_set))

    def _engine_lock(self) -> contextlib.AbstractContextManager:
        """The engine's tick lock (see policy.engine): held around changes to the dataplane made
        from the event loop, so that none lands in the middle of a tick's reads and rule changes."""
        return self.engine.lock if self.engine is not None else contextlib.nullcontext()

    def _engine_tenants(self) -> dict[int, tuple[str, TenantMode, Any]]:
        return {self.indices[t.id]: (t.id, TenantMode.MONITOR if t.mode == "monitor" else TenantMode.MITIGATE,
                                     t.policy, t.prefixes) for t in self.tenants}

    def _request_reload(self) -> None:
        self._reload_requested = True

    async def reload(self) -> bool:
        """SIGHUP: re-read the config file; apply its tenants, then its [bgp] and [escalation]. A bad
        file (every section is validated first, each problem naming its key) changes nothing."""
        if not self.config_path:
            log.warning("appliance.reload_skipped", reason="no config file")
            return False
        try:
            config = load_config(self.config_path)
            if config.bgp is not None:
                from escalation.speaker import exabgp_command  # noqa: PLC0415

                exabgp_command()      # FileNotFoundError (refused, nothing applied) when ExaBGP is missing
            self._apply(config.tenants)
        except (ConfigError, OSError, RuntimeError) as exc:
            log.error("appliance.reload_rejected", error=str(exc), kept_tenants=len(self.tenants))
            self.bus.publish(Event(EventType.SYSTEM, None, f"reload rejected: {exc}", Severity.WARNING))
            return False
        if config.policy != self.config.policy:
            # The engine holds its baselines and incidents under the knobs it started with.
            log.warning("appliance.reload_partial", key="[policy]", applied="nothing",
                        pending="the engine's knobs (at the next start)")
        self.config = dataclasses.replace(self.config, tenants=config.tenants)
        self.bus.publish(Event(EventType.POLICY_CHANGE, None, "tenant set reloaded from the config file",
                               Severity.NOTICE, details={"tenants": len(config.tenants)}))
        try:
            await self._reload_escalation(config.bgp, config.escalation)
        except (OSError, RuntimeError) as exc:   # the speaker could not be (re)started: said, not fatal
            log.error("appliance.reload_escalation_failed", error=str(exc))
            self.bus.publish(Event(EventType.SYSTEM, None, f"[bgp] reload failed: {exc}", Severity.WARNING))
        return True

    async def _reload_escalation(self, bgp: Any, settings: Any) -> None:
        """[bgp] and [escalation] from a reloaded (valid) file: the speaker started, stopped or
        reconfigured; announcements kept where a peer still takes them (escalation.controller).
        `[escalation] uplink_bps` also scaled the engine's detection floors at start: that part
        waits for the next start (logged)."""
        if bgp == self.config.bgp and settings == self.config.escalation:
            return
        if settings.uplink_bps != self.config.escalation.uplink_bps:
            log.warning("appliance.reload_partial", key="[escalation] uplink_bps",
                        applied="escalation decisions", pending="detection floors (at the next start)")
        if bgp is None:
            await self._stop_escalation()
            if self.escalation is not None:
                # Removed on purpose: no later start may take its routes back up (controller.SAVED).
                self.escalation.saved_path.unlink(missing_ok=True)
            self.escalation = None
        elif self.escalation is None:
            from escalation.controller import Escalation  # noqa: PLC0415 - only with [bgp]

            self.escalation = Escalation(bgp, settings, self.state_dir / "bgp", self.bus)
            await self.escalation.start()
        else:
            await self.escalation.reconfigure(bgp, settings)
        self.config = dataclasses.replace(self.config, bgp=bgp, escalation=settings)
        log.info("appliance.escalation_reloaded", bgp=bgp is not None,
                 peers=[p.address for p in bgp.peers] if bgp is not None else [])
        self.bus.publish(Event(EventType.POLICY_CHANGE, None, "[bgp] and [escalation] reloaded from the config file",
                               Severity.NOTICE, details={"peers": [p.address for p in bgp.peers] if bgp else []}))

    # -- ApplianceHooks (SecureWatch) -----------------------------------------

    def current_tenants(self) -> TenantSet:
        return self.tenants

    def apply_tenants(self, tenant_set: TenantSet) -> None:
        self._apply(tenant_set)

    def policy_templates(self) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """The config file's [templates.NAME] and which tenant follows which (SecureWatch imports
        them with the tenants into an empty store)."""
        return dict(self.config.templates), dict(self.config.template_links)

    def apply_policy_templates(self, templates: dict[str, dict[str, Any]], links: dict[str, str]) -> None:
        """A fleet's central templates and which of this site's tenants follows which (the agent
        checked them): what `policy_templates` offers from now on. The followers' policies come
        resolved in the tenant set, so the dataplane has nothing to change here."""
        self.config = dataclasses.replace(self.config, templates=dict(templates), template_links=dict(links))

    def notify_config(self) -> dict[str, Any]:
        """The raw `[notify]` table the notifiers run now (a copy; secrets included)."""
        return copy.deepcopy(dict(self.config.notify or {}))

    async def reconfigure_notifiers(self, config: dict[str, Any], *, check_files: bool = True) -> None:
        """Run the notifiers of the raw `[notify]` table `config`, live. ValueError (naming the key)
        when it is invalid: then the running notifiers are kept as they were. `check_files=False`
        (the fleet's central table): a receiver whose ca_file is missing here runs, and says so at
        its deliveries, rather than the whole table being refused."""
        from securewatch.notify.config import parse_notify_config  # noqa: PLC0415
        from securewatch.notify.manager import NotifierManager  # noqa: PLC0415

        parsed = parse_notify_config(config, check_files=check_files)
        if self.notifiers is not None:
            await self.notifiers.reconfigure(parsed)
        else:
            if self._lifetime is None:
                raise RuntimeError("the appliance is not running: notifiers start with it")
            manager = NotifierManager(parsed, self.bus, self.state_dir / "notify")
            await self._lifetime.enter_async_context(manager)
            self.notifiers = manager
        self.config = dataclasses.replace(self.config, notify=copy.deepcopy(dict(config)))
        log.info("appliance.notifiers_reconfigured", receivers=len(parsed.receivers))

    def traffic_series(self, tenant_id: str, seconds: int = 300) -> list[TrafficSecond]:
        idx = self.indices.get(tenant_id)
        return [] if idx is None else self.monitor.series_of(idx, seconds)

    def destination_seconds(self, after: float) -> list[dict[str, Any]]:
        """Per-second rows of attacked and top-N destinations newer than `after` (appliance.destinations)."""
        return self.destinations.seconds_after(after)

    def destination_minutes(self, after: float) -> list[dict[str, Any]]:
        """Minute rollups of every destination with traffic, of minutes after `after`."""
        return self.destinations.minutes_after(after)

    def status(self) -> ApplianceStatus:
        attachments = self.dataplane.attachments if self.dataplane else []
        traffic = self.monitor.tenant_traffic({t.id: self.indices[t.id] for t in self.tenants})
        tenants: dict[str, TenantStatus] = {}
        for t in self.tenants:
            idx = self.indices[t.id]
            tenants[t.id] = cast(TenantStatus, {
                "name": t.name, "mode": t.mode, "index": idx, "prefixes": [str(p) for p in t.prefixes],
                **traffic[t.id],
                # Per-destination class budgets in force: the policy's, or derived from the baselines.
                "class_budgets": self.engine.budgets.effective(idx, t.policy) if self.engine else None,
                **self._blocked_sources(idx)})
        return {
            "pid": os.getpid(),
            "updated": time.time(),
            "started": self.started_at,
            "forwarding": self.forwarding,
            "forwarding_state": self.forwarding_state,
            "interfaces": [{"name": a.interface, "ifindex": a.ifindex, "mode": a.mode,
                            "role": "external" if i == 0 else "internal", "pinned_link": a.pinned_link}
                           for i, a in enumerate(attachments)],
            "bpffs": str(self.config.appliance.bpffs),
            "tenants": tenants,
            "unprotected": self.monitor.unprotected(),
            "policy": cast(PolicyStatus, {**self.engine.status(),
                                          "attacked_rows_left_out": self.destinations.attacked_left_out})
            if self.engine else None,
            "incidents": self._incidents(),
            "notifiers": {name: s.to_public_dict() for name, s in self.notifiers.status().items()}
            if self.notifiers else {},
            "securewatch": self.securewatch_url,
            "bgp": self.bgp_status(),
            # SYN authentication's counters (cookie SYN-ACKs, validations, splices), appliance-wide.
            "synauth": self.dataplane.read_synauth_stats() if self.dataplane else {},
            # Where evicted addresses' counters are kept: an operator sizes [appliance] max_addresses by it.
            "spill_store": cast(SpillStoreStatus, self.dataplane.spill_store_status()) if self.dataplane else None,
            # Open: TCP to tenant addresses takes the full path (a destination may hold spliced connections).
            "splice_gate": cast(SpliceGateStatus, self.dataplane.splice_gate_status()) if self.dataplane else None,
            "fleet": self.fleet.status() if self.fleet is not None else None,
        }

    def _blocked_sources(self, idx: int) -> dict[str, Any]:
        """A tenant's dynamic block list (issue 15) as the policy engine keeps it, reasons included."""
        if self.engine is None:
            return {"blocked_sources": [], "blocked_sources_total": 0}
        flood = self.engine.appflood
        return {"blocked_sources": flood.blocked_sources(idx, time.monotonic(), time.time()),
                "blocked_sources_total": flood.blocked_count(idx)}

    def _incidents(self) -> list[IncidentStatus]:
        """Open incidents, newest first, in the shape the status file and the demo show."""
        if self.engine is None:
            return []
        out: list[IncidentStatus] = []
        # The engine ticks in a worker thread: copy each container with one C-level call (atomic under
        # the GIL) before iterating it, rather than wait for the tick's lock on the event loop.
        for inc in list(self.engine.incidents.open.values()):
            out.append({"id": inc.id, "tenant": inc.tenant_id, "state": str(getattr(inc.state, "value", inc.state)),
                        "destinations": sorted(inc.destinations),
                        "vectors": {v: round(c, 2) for v, c in dict(inc.vectors).items()},
                        "started": inc.started_wall, "peak_pps": round(inc.peak_pps),
                        "dropped_packets": int(inc.dropped_packets), "passed_packets": int(inc.passed_packets),
                        "efficacy": None if inc.efficacy is None else round(inc.efficacy, 4),
                        "rules": [r.to_dict() for r in list(inc.rules.values())]})
        return sorted(out, key=lambda i: i["started"] or 0, reverse=True)

    # -- escalation (issue 14) ------------------------------------------------------

    def inbound_bps(self) -> float | None:
        """Bits/s arriving on the external link at the engine's last tick (every tenant's inbound)."""
        traffic = self.monitor.latest
        if traffic is None:
            return None
        r = traffic.rates
        return float(r.byte_rate[r.valid].sum()) * 8.0

    def _incident_views(self) -> list[Any]:
        from escalation.ladder import IncidentView  # noqa: PLC0415 - only with [bgp]
        from policy.incidents import State  # noqa: PLC0415

        if self.engine is None:
            return []
        # RTBH is a host route: only an incident with one attacked address (not a carpet) has one.
        # The dicts are copied (list() of a dict is atomic under the GIL) before they are walked:
        # an engine ticking in another thread may change them meanwhile.
        return [IncidentView(inc.id, inc.tenant_id, inc.state == State.ACTIVE,
                             (str(inc.target),) if inc.target is not None else (),
                             tuple(r.rule for r in list(inc.rules.values())))
                for inc in list(self.engine.incidents.open.values())]

    def _escalate(self) -> None:
        if self.escalation is None:
            return
        self.escalation.step(time.monotonic(), self.inbound_bps(), self._incident_views(),
                             {t.id: t for t in self.tenants})

    def bgp_status(self) -> dict[str, Any] | None:
        """The `bgp` part of the status (None without [bgp])."""
        return self.escalation.status() if self.escalation is not None else None

    def escalate(self, incident_id: str, kind: str, actor: str) -> list[dict[str, Any]]:
        """An operator's announcement for an open incident. LookupError: no such open incident;
        escalation.routes.Refused (a ValueError) with the reason when it cannot be made."""
        from escalation.routes import Refused  # noqa: PLC0415

        if self.escalation is None:
            raise Refused("no [bgp] section in the configuration: nothing can be announced")
        view = next((v for v in self._incident_views() if v.id == incident_id), None)
        tenant = self.tenants.get(view.tenant) if view is not None else None
        if view is None or tenant is None:
            raise LookupError(f"no open incident {incident_id!r}")
        return [_change_dict(c) for c in self.escalation.escalate(view, tenant, kind, actor)]

    def withdraw_escalation(self, incident_id: str, actor: str) -> list[dict[str, Any]]:
        from escalation.routes import Refused  # noqa: PLC0415

        if self.escalation is None:
            raise Refused("no [bgp] section in the configuration: nothing is announced")
        return [_change_dict(c) for c in self.escalation.withdraw(incident_id, actor)]

    # -- periodic work --------------------------------------------------------

    async def _check_forwarding(self) -> None:
        """Is the bridge forwarding? Asked of the kernel each second, not of what this process did.

        Forwarding means: both NICs are up with carrier, each has an XDP program attached,
        the devmap names both ports, and where a native program redirects to a veth, that
        veth's peer takes the frames (GRO on or an XDP program: see appliance.nics).
        `Dataplane.attach` fills the devmap before it creates the links, so a program on a
        NIC implies the ports it redirects to. Counting redirected frames instead would need
        traffic: an idle link would never become ready. Re-checked every second, so a NIC
        losing its carrier shows within a second, a peer losing GRO within PEER_RECHECK_S.
        """
        attachments = self.dataplane.attachments if self.dataplane else []
        if len(attachments) != 2:
            self.forwarding, self.forwarding_state = False, STATE_STARTING
            return
        external, internal = attachments
        # A native program hands redirected frames to the other NIC's peer through that peer's NAPI;
        # a generic one goes through the ordinary transmit path, which needs nothing of the peer.
        targets = [to.interface for source, to in ((external, internal), (internal, external))
                   if source.mode == "native"]

        now = time.monotonic()
        recheck_peers = not self.forwarding or now - self._peers_checked_at >= PEER_RECHECK_S

        def check() -> list[str]:
            states = [nics.link_state(a.interface) for a in attachments]
            if recheck_peers:
                self._peer_problems, self._peers_checked_at = nics.redirect_problems(targets)[0], now
            return [p for p in (s.problem() for s in states) if p] + self._peer_problems

        try:
            problems = await asyncio.to_thread(check)
        except OSError as exc:  # a NIC vanished
            problems = [str(exc)]
        was = self.forwarding
        self.forwarding = not problems
        self.forwarding_state = "forwarding" if not problems else "not forwarding: " + "; ".join(problems)
        if was != self.forwarding:
            log.info("appliance.forwarding_state", forwarding=self.forwarding, state=self.forwarding_state)
            sdnotify.notify(STATUS=self.forwarding_state)

    async def _heuristics_loop(self) -> None:
        """Feeds the engine's incidents to the dataplane's heuristics (see HeuristicsSwitch)."""
        events = self.bus.subscribe("dataplane-heuristics")
        switch = HeuristicsSwitch(self.dataplane, self.indices)
        try:
            while not self._stop.is_set():
                getter = asyncio.ensure_future(events.get())
                stopper = asyncio.ensure_future(self._stop.wait())
                done, pending = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                if getter in done:
                    switch.indices = self.indices  # follows reloads
                    with self._engine_lock():
                        switch.on_event(getter.result())
        finally:
            self.bus.unsubscribe("dataplane-heuristics")

    async def _monitor_loop(self) -> None:
        """Once a second: status file (from the engine's last tick), SIGHUP reloads, stale rule expiry."""
        status_file = self.state_dir / STATUS_FILE
        while not self._stop.is_set():
            if self._reload_requested:
                self._reload_requested = False
                await self.reload()
            now = time.monotonic()
            for rid, deadline in list(self._stale_rules.items()):
                if now >= deadline:
                    with contextlib.suppress(KeyError), self._engine_lock():
                        self.dataplane.remove_rule(rid)
                    del self._stale_rules[rid]
                    log.info("appliance.inherited_rule_expired", rule=rid)
            await self._check_forwarding()
            self._escalate()
            tmp = status_file.with_suffix(".tmp")
            tmp.write_text(dump_status(self.status()))
            os.replace(tmp, status_file)
            if self.forwarding and not self._ready_sent:
                # After the status file says so: whoever systemd starts next finds it forwarding.
                self._ready_sent = sdnotify.notify(READY="1", STATUS="forwarding")
                log.info("appliance.forwarding", ready_sent=self._ready_sent)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)


def _change_dict(change: Any) -> dict[str, Any]:
    return {"action": change.action, "why": change.why, **change.announcement.to_dict()}


def validate_for_run(config: ApplianceConfig):
    """Check everything `seawall run` takes from the file before anything is attached: the two
    NICs (configured, existing) and the notifiers. Returns the parsed notifier config (None
    without [notify]); ConfigError lists every problem found."""
    problems: list[str] = []
    try:
        external, internal = config.interfaces()
    except ConfigError as exc:
        problems.extend(exc.problems)
    else:
        problems.extend(f"[appliance] {role}: interface {name!r} does not exist"
                        for role, name in (("external", external), ("internal", internal))
                        if not _interface_exists(name))
    if config.bgp is not None:
        from escalation.speaker import exabgp_command  # noqa: PLC0415

        try:
            exabgp_command()
        except FileNotFoundError as exc:
            problems.append(f"[bgp]: {exc}")
    if config.fleet is not None:
        problems.extend(fleet_agent.fleet_problems(config.fleet))
    notify = None
    if config.notify:
        try:
            notify = parse_notify(config.notify)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems, source=config.source)
    return notify


def parse_notify(raw: dict[str, Any]):
    """The [notify] table parsed by the notifiers' own parser; ConfigError with its problems."""
    from securewatch.notify.config import parse_notify_config  # noqa: PLC0415

    try:
        return parse_notify_config(raw)
    except ValueError as exc:
        raise ConfigError(list(getattr(exc, "problems", None) or [str(exc)])) from exc


def _interface_exists(name: str) -> bool:
    import socket  # noqa: PLC0415

    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def appliance_paths(config_path: str) -> tuple[pathlib.Path, pathlib.Path]:
    """(state_dir, bpffs) of a config file, even one whose tenants do not validate: an operator must
    be able to see the status of, and detach, a dataplane whatever state the file is in."""
    import tomllib  # noqa: PLC0415

    from appliance.config import DEFAULT_BPFFS, DEFAULT_STATE_DIR  # noqa: PLC0415

    try:
        config = load_config(config_path)
        return pathlib.Path(config.appliance.state_dir), pathlib.Path(config.appliance.bpffs)
    except ConfigError:
        try:
            with open(config_path, "rb") as f:
                table = tomllib.load(f).get("appliance", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(str(exc), source=config_path) from exc
        return (pathlib.Path(table.get("state_dir", DEFAULT_STATE_DIR)),
                pathlib.Path(table.get("bpffs", DEFAULT_BPFFS)))


def pinned_links(bpffs: pathlib.Path) -> list[pathlib.Path]:
    """The XDP links pinned under `bpffs` (one per NIC the bridge is attached to)."""
    return sorted(bpffs.glob("link_*")) if bpffs.exists() else []


def read_status(state_dir: pathlib.Path) -> ApplianceStatus | None:
    """The status file the running (or last) appliance wrote; None when there is none or it is unreadable."""
    try:
        return parse_status((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
