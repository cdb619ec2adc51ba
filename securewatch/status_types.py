"""The appliance's status, typed: what `Appliance.status()` returns, the status file holds and
SecureWatch serves (REST `/api/v1/status`, the dashboard, `/metrics`).

The appliance builds one `ApplianceStatus` a second; `dump_status` is its only serialisation
(the status file, and so `seawall status --json`), `parse_status` reads it back. The JSON keys
are the ones the README documents (`tenants.<id>.passed_pps`, `interfaces[].mode`,
`forwarding`, ...); these are TypedDicts, so the structure is a plain dict at run time and
SecureWatch's readers of it keep working on the parsed file and the live object alike.

Rates are the policy engine's (`policy.rates.RateTracker.update_tenants`, published each tick):
inbound packets and bits per second over the engine's last tick; a tenant with no counters
at that tick shows 0. Packet and byte totals count both directions since the tenant's
counters were created.

This module imports nothing of the appliance (SecureWatch never does), so both sides share it.
"""

from __future__ import annotations

import json
from typing import Any, NotRequired, TypedDict


class ClassBudget(TypedDict):
    pps: int          # per-destination budget of the class, packets/s
    source: str       # "policy", "baseline" or "none (warming up)"


class TenantStatus(TypedDict):
    name: str
    mode: str                                     # "mitigate" or "monitor"
    index: int                                    # the tenant's row in the dataplane
    prefixes: list[str]
    passed_packets: int                           # both directions, since the counters were created
    dropped_packets: int                          # (or, in monitor mode, would-drop)
    passed_bytes: int
    dropped_bytes: int
    drop_reasons: dict[str, int]                  # dropped packets by reason (lower-case DropReason name)
    passed_pps: float                             # inbound, packets/s over the engine's last tick
    dropped_pps: float
    passed_bps: float                             # inbound, bits/s
    dropped_bps: float
    class_budgets: dict[str, ClassBudget] | None  # by traffic class; None without a policy engine
    # The dynamic block list (issue 15): the newest entries (src, reason, expires: seconds since the
    # epoch), and how many there are in all.
    blocked_sources: list[dict[str, Any]]
    blocked_sources_total: int


class InterfaceStatus(TypedDict):
    name: str
    ifindex: int
    mode: str                # XDP attach mode: "native" or "generic"
    role: str                # "external" or "internal"
    pinned_link: str         # bpffs path, "" when not pinned


class UnprotectedStatus(TypedDict):
    """Traffic to addresses of no tenant (it passes unfiltered)."""

    passed_packets: int
    passed_pps: float        # inbound


class PolicyTick(TypedDict):
    now: float
    dt: float
    destinations: int
    anomalous_destinations: int
    carpet_tenants: int
    timings_ms: dict[str, float]
    cpu_ms: float
    wall_ms: float | None    # start to results delivered; above tick_s · 1000 the tick overran (None: not run())


class PolicyStatus(TypedDict):
    tick_s: float
    tracked_destinations: int
    open_incidents: int
    rules_installed: int
    pcap_files_pruned: int       # incident PCAP files deleted by retention or the total bound (policy.pcap.prune)
    ticks_overrun: int           # ticks that ended after the next one was due (PolicyEngine.run)
    events_dropped: int          # events lost to a subscriber's full queue (EventBus.dropped)
    rules_waiting_for_room: int  # incidents that needed a rule in the last tick while the rule table was full
    # Attacked destinations whose per-second rows were not kept (past SECOND_MAX_ATTACKED a second; the minute
    # rollups have them), in all: the appliance's recorder (appliance.destinations), not the engine.
    attacked_rows_left_out: NotRequired[int]
    # Application-layer floods (policy.appflood.AppFloodDetector.status): servers with flow baselines,
    # per-source limits and blocked sources now, counters (limits_evicted, blocks_evicted, ...).
    appflood: dict[str, Any]
    # The engine's box-wide knobs in force (policy.config.FILE_KEYS, from [policy] at start): seconds, factors.
    knobs: dict[str, float | int | None]
    last_tick: PolicyTick | None


class IncidentStatus(TypedDict):
    id: str
    tenant: str
    state: str                   # "pending", "active" or "ended" (rules in hold-down)
    destinations: list[str]
    vectors: dict[str, float]    # vector → confidence 0..1
    started: float | None        # seconds since the epoch
    peak_pps: int
    dropped_packets: int
    passed_packets: int
    efficacy: float | None
    rules: list[dict[str, Any]]  # `policy.incidents.RuleRecord.to_dict()` each


class BgpPeerStatus(TypedDict):
    address: str
    peer_as: int
    state: str                   # idle (no speaker) | connect | established | down (speaker died)
    uptime_s: float              # seconds the session has been established, 0 otherwise
    down_since: NotRequired[float | None]   # seconds since the epoch from which it has not been established
    last_reason: NotRequired[str | None]    # the last reason ExaBGP gave for that


class BgpAnnouncementStatus(TypedDict):
    kind: str                    # flowspec | rtbh
    match: dict[str, Any]        # destination, and for FlowSpec protocol, ports, length, flags, action
    incident: str
    tenant: str
    since: float                 # seconds since the epoch
    reason: str                  # auto | manual


class BgpStatus(TypedDict):
    """Upstream escalation (escalation/), present with a [bgp] section."""

    peers: list[BgpPeerStatus]
    announcements: list[BgpAnnouncementStatus]
    speaker: dict[str, Any]      # running, pid, restarts (times it died and was started again), last_exit
    refused: int                 # announcements refused (cap, outside the tenant's prefixes), total
    inbound_bps: float | None    # the external link's inbound bits/s at the last step
    uplink_bps: int | None
    flowspec_at: float
    max_announcements: int


class SpillStoreStatus(TypedDict):
    """Where the dataplane keeps the counters of addresses evicted from its address cache
    (`Dataplane.spill_store_status()`, dataplane/spill.py)."""

    slots: int                   # [appliance] max_addresses
    in_use: int                  # claimed by an address at the last read
    handed_out: int              # ever used (the rest were never needed)
    freed: int                   # slots of idle addresses freed since the control plane started
    retiring: int                # being freed (out of the index, read once more)
    overflow_entries: int        # addresses in the LRU overflow map: the store was full
    overflow_capacity: int       # its size (a quarter of the slots); past it addresses lose their counts


class SpliceGateStatus(TypedDict):
    """SYN authentication's splice gate (`Dataplane.splice_gate_status()`, dataplane/splices.py): while
    open, every TCP packet to a tenant address asks whether its destination has spliced connections."""

    open: bool
    closes: int                  # times the control plane closed it (no destination splice active)
    active_destinations: int     # splice-active destinations at its last look


class ApplianceStatus(TypedDict):
    pid: int
    updated: float               # seconds since the epoch
    started: float
    forwarding: bool             # both NICs up with the program attached, as last checked with the kernel
    forwarding_state: str        # "forwarding", or why not
    interfaces: list[InterfaceStatus]
    bpffs: str
    tenants: dict[str, TenantStatus]
    unprotected: UnprotectedStatus
    policy: PolicyStatus | None
    incidents: list[IncidentStatus]                 # open ones, newest first
    notifiers: dict[str, dict[str, Any]]            # `ReceiverStatus.to_public_dict()` by receiver name
    securewatch: str | None                         # SecureWatch's URL when it runs
    bgp: NotRequired[BgpStatus | None]              # None without [bgp]
    synauth: NotRequired[dict[str, int]]            # `Dataplane.read_synauth_stats()` (absent in older files)
    fleet: NotRequired[dict[str, Any] | None]       # `appliance.fleet_agent.FleetAgent.status()`; None without [fleet]
    spill_store: NotRequired[SpillStoreStatus | None]   # None without a dataplane (absent in older files)
    splice_gate: NotRequired[SpliceGateStatus | None]   # None without a dataplane (absent in older files)


class TenantScopedStatus(TypedDict):
    """What a tenant's principal sees of the status (`securewatch.app.scoped_status`)."""

    updated: float | None
    tenants: dict[str, TenantStatus]


class TrafficSecond(TypedDict):
    """One row of a tenant's per-second series (`ApplianceHooks.traffic_series`)."""

    time: float              # seconds since the epoch, the engine's read
    passed_pps: float        # inbound, as in TenantStatus
    dropped_pps: float
    passed_bps: float
    dropped_bps: float
    outbound_pps: NotRequired[float]   # outbound packets/s passed


def dump_status(status: ApplianceStatus) -> str:
    """The status as one JSON object: the status file's text."""
    return json.dumps(status, default=str)


def parse_status(text: str) -> ApplianceStatus:
    """A status file's text back as a status; ValueError when it is not a JSON object."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"status: expected a JSON object, got {type(value).__name__}")
    return value  # type: ignore[return-value]  # written by dump_status; readers use .get for old files


__all__ = ["ApplianceStatus", "BgpAnnouncementStatus", "BgpPeerStatus", "BgpStatus", "ClassBudget", "IncidentStatus", "InterfaceStatus", "PolicyStatus", "PolicyTick",
           "TenantScopedStatus", "TenantStatus", "TrafficSecond", "UnprotectedStatus", "dump_status",
           "parse_status"]
