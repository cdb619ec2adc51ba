"""Prometheus exposition of the appliance: `/metrics`.

Rendered per scrape from the appliance's status (the same snapshot the REST API
serves), scoped to what the caller may read: a tenant's token sees its own
tenant's series only. Rates are per second over the policy engine's last tick (1 s by default).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .status_types import ApplianceStatus, TenantScopedStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _StatusCollector:
    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status

    def collect(self):
        s = self.status
        tenants = s.get("tenants") or {}
        pps = GaugeMetricFamily("seawall_tenant_packets_per_second", "Inbound packets per second by verdict",
                                labels=["tenant", "verdict"])
        bps = GaugeMetricFamily("seawall_tenant_bits_per_second", "Inbound bits per second by verdict",
                                labels=["tenant", "verdict"])
        packets = CounterMetricFamily("seawall_tenant_packets", "Packets since the counters were created "
                                      "(both directions) by verdict", labels=["tenant", "verdict"])
        reasons = CounterMetricFamily("seawall_tenant_dropped_packets_by_reason", "Dropped (or, in monitor mode, "
                                      "would-drop) packets by reason", labels=["tenant", "reason"])
        for tid, t in tenants.items():
            for verdict in ("passed", "dropped"):
                pps.add_metric([tid, verdict], float(t.get(f"{verdict}_pps", 0.0)))
                bps.add_metric([tid, verdict], float(t.get(f"{verdict}_bps", 0.0)))
                packets.add_metric([tid, verdict], float(t.get(f"{verdict}_packets", 0)))
            for reason, n in (t.get("drop_reasons") or {}).items():
                reasons.add_metric([tid, reason], float(n))
        yield from (pps, bps, packets, reasons)
        blocked = GaugeMetricFamily("seawall_tenant_blocked_sources", "Sources on the tenant's dynamic block list "
                                    "(application-layer floods)", labels=["tenant"])
        for tid, t in tenants.items():
            blocked.add_metric([tid], float(t.get("blocked_sources_total", 0)))
        yield blocked

        incidents = s.get("incidents")
        if incidents is not None:
            active = GaugeMetricFamily("seawall_incidents_active", "Open incidents", labels=["tenant"])
            per_tenant: dict[str, int] = {tid: 0 for tid in tenants}
            for inc in incidents:
                if inc.get("state") in ("active", "pending") and inc.get("tenant") in per_tenant:
                    per_tenant[inc["tenant"]] += 1
            for tid, n in per_tenant.items():
                active.add_metric([tid], n)
            yield active
            by_vector = GaugeMetricFamily("seawall_incidents_active_by_vector", "Open incidents by attack vector "
                                          "(an incident counts once for each of its vectors)",
                                          labels=["tenant", "vector"])
            counts: dict[tuple[str, str], int] = {}
            for inc in incidents:
                if inc.get("state") in ("active", "pending") and inc.get("tenant") in per_tenant:
                    for vector in inc.get("vectors") or {}:
                        counts[(inc["tenant"], vector)] = counts.get((inc["tenant"], vector), 0) + 1
            for (tid, vector), n in sorted(counts.items()):
                by_vector.add_metric([tid, vector], n)
            yield by_vector

        interfaces = s.get("interfaces")
        if interfaces is not None:
            attached = GaugeMetricFamily("seawall_dataplane_attached", "1 when the XDP program is attached",
                                         labels=["interface", "role", "mode"])
            for itf in interfaces:
                attached.add_metric([itf["name"], itf["role"], itf["mode"]], 1)
            yield attached
            up = GaugeMetricFamily("seawall_dataplane_up", "1 when both NICs carry the XDP bridge")
            up.add_metric([], 1 if len(interfaces) == 2 else 0)
            yield up

        policy = s.get("policy") or {}
        last = policy.get("last_tick") or {}
        if last:
            yield _one(GaugeMetricFamily, "seawall_policy_tick_cpu_seconds", "CPU time of the last policy tick",
                       float(last.get("cpu_ms", 0.0)) / 1000.0)
            if last.get("wall_ms") is not None:
                yield _one(GaugeMetricFamily, "seawall_policy_tick_seconds", "Wall-clock time of the last policy "
                           "tick, from its start to its results delivered (above tick_ms: it overran)",
                           float(last["wall_ms"]) / 1000.0)
            for family, name, key, help_text in _POLICY_FIGURES:
                yield _one(family, name, help_text, float(policy.get(key, 0)))
            flood = policy.get("appflood") or {}
            if flood:
                limits = GaugeMetricFamily("seawall_appflood_source_limits", "Per-source connection limits installed "
                                           "for attacked servers")
                limits.add_metric([], float(flood.get("limits", 0)))
                yield limits
                events = CounterMetricFamily("seawall_appflood_events", "Application-layer mitigation events: "
                                             "entries the caps evicted, known-good sources spared, sources blocked",
                                             labels=["event"])
                for name, n in sorted((flood.get("counters") or {}).items()):
                    events.add_metric([name], float(n))
                yield events

        synauth = s.get("synauth")
        if synauth:  # appliance-wide: absent from a tenant's scoped status
            events = CounterMetricFamily("seawall_synauth_events", "SYN authentication (cookies, splices) by "
                                         "event, appliance-wide", labels=["event"])
            for name, n in synauth.items():
                events.add_metric([name], float(n))
            yield events

        store = s.get("spill_store")
        if store:  # appliance-wide: absent from a tenant's scoped status
            for name, key, help_text in _SPILL_STORE_FIGURES:
                yield _one(GaugeMetricFamily, name, help_text, float(store.get(key, 0)))
            yield _one(CounterMetricFamily, "seawall_spill_store_slots_freed", "Spill store slots of idle "
                       "addresses freed since the control plane started", float(store.get("freed", 0)))

        gate = s.get("splice_gate")
        if gate:  # appliance-wide: absent from a tenant's scoped status
            yield _one(GaugeMetricFamily, "seawall_splice_gate_open", "1 while the splice gate is open: TCP packets "
                       "to tenant addresses ask whether their destination holds spliced connections",
                       1.0 if gate.get("open") else 0.0)
            yield _one(CounterMetricFamily, "seawall_splice_gate_closes", "Times the control plane closed the "
                       "splice gate (no destination splice active any more)", float(gate.get("closes", 0)))

        notifiers = s.get("notifiers")
        if notifiers:
            healthy = GaugeMetricFamily("seawall_notifier_healthy", "1 when the receiver's last delivery "
                                        "succeeded", labels=["receiver"])
            backlog = GaugeMetricFamily("seawall_notifier_backlog", "Events waiting for the receiver",
                                        labels=["receiver"])
            for name, r in notifiers.items():
                healthy.add_metric([name], 1 if r.get("healthy") else 0)
                backlog.add_metric([name], float(r.get("backlog", 0)))
            yield healthy
            yield backlog

        if s.get("bgp"):
            yield from _bgp_metrics(s["bgp"])
        if s.get("fleet"):
            yield from _fleet_metrics(s["fleet"])


# The policy status's single figures in /metrics: (family, metric name, status key, help).
_POLICY_FIGURES = (
    (CounterMetricFamily, "seawall_policy_ticks_overrun", "ticks_overrun",
     "Policy ticks that ended after the next one was due: the engine falls behind tick_ms and detection slows"),
    (CounterMetricFamily, "seawall_policy_events_dropped", "events_dropped",
     "Events lost to a full subscriber queue (SecureWatch, the notifiers, the fleet agent)"),
    (GaugeMetricFamily, "seawall_policy_rules_waiting_for_room", "rules_waiting_for_room",
     "Attacks that needed a rule in the last tick while the dataplane's rule table was full"),
    (CounterMetricFamily, "seawall_attacked_rows_left_out", "attacked_rows_left_out",
     "Attacked destinations' per-second rows not kept (past the recorder's cap a second; in the minute rollups)"),
    (GaugeMetricFamily, "seawall_policy_tracked_destinations", "tracked_destinations",
     "Destinations with baselines"),
    (GaugeMetricFamily, "seawall_policy_rules_installed", "rules_installed", "Dynamic rules in the dataplane"),
    (CounterMetricFamily, "seawall_policy_pcap_files_pruned", "pcap_files_pruned",
     "Incident PCAP files deleted: ended more than pcap_retention_days ago, or oldest past pcap_max_total_bytes"),
)


# The spill store's gauges in /metrics: (metric name, status key, help).
_SPILL_STORE_FIGURES = (
    ("seawall_spill_store_slots", "slots", "Slots of the spill store ([appliance] max_addresses): the customer "
     "addresses whose counters outlive their address cache slot"),
    ("seawall_spill_store_slots_in_use", "in_use", "Spill store slots held by an address (idle ones are freed "
     "from three quarters on)"),
    ("seawall_spill_overflow_entries", "overflow_entries", "Addresses in the overflow map: the spill store was "
     "full (raise [appliance] max_addresses)"),
    ("seawall_spill_overflow_capacity", "overflow_capacity", "Entries the overflow map holds before it drops "
     "addresses' counts"),
)


def _one(family: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str, help_text: str, value: float):
    """A metric family of one sample without labels."""
    metric = family(name, help_text)
    metric.add_metric([], value)
    return metric


def _fleet_metrics(fleet: dict[str, Any]):
    """The fleet agent's queue to the central server: its bound, what it holds, what it dropped."""
    queue = fleet.get("queue") or {}
    for name, key, help_text in (
            ("seawall_fleet_queue_batches", "batches", "Batches queued on disk for the central server"),
            ("seawall_fleet_queue_bytes", "bytes", "Bytes (compressed) queued on disk for the central server"),
            ("seawall_fleet_queue_max_bytes", "max_bytes", "The queue's bound in bytes; past it the oldest "
                                                             "batches are dropped"),
            ("seawall_fleet_queue_max_batches", "max_batches", "The queue's bound in batches"),
            ("seawall_fleet_queue_oldest_age_seconds", "oldest_age_s", "Age of the oldest queued batch")):
        gauge = GaugeMetricFamily(name, help_text)
        gauge.add_metric([], float(queue.get(key) or 0))
        yield gauge
    for name, value, help_text in (
            ("seawall_fleet_queue_dropped_batches", queue.get("dropped_batches"),
             "Batches dropped, oldest first, because the queue was full"),
            ("seawall_fleet_sent_batches", fleet.get("sent_batches"), "Batches the central server acknowledged"),
            ("seawall_fleet_rejected_batches", fleet.get("rejected_batches"),
             "Batches the central server refused as invalid (dropped)"),
            ("seawall_fleet_unstored_rows", fleet.get("unstored_rows"),
             "Rows the central server acknowledged but stored at no resolution (older than its minute "
             "rollups keep, or this site's clock too far ahead)"),
            ("seawall_fleet_folded_rows", fleet.get("folded_rows"),
             "Rows the central server folded straight into its minute rollups (older than its seconds keep)")):
        counter = CounterMetricFamily(name, help_text)
        counter.add_metric([], float(value or 0))
        yield counter
    version = GaugeMetricFamily("seawall_fleet_config_version", "The central configuration version in force "
                                "(-1: none taken yet)")
    running = fleet.get("running_version")
    version.add_metric([], float(running if running is not None else -1))
    yield version


def _bgp_metrics(bgp: dict[str, Any]):
    """Upstream escalation: session state per peer, announcements by kind, the speaker's health."""
    up = GaugeMetricFamily("seawall_bgp_session_up", "1 when the BGP session with the peer is established",
                           labels=["peer", "state"])
    for peer in bgp.get("peers") or []:
        up.add_metric([peer["address"], peer["state"]], 1 if peer["state"] == "established" else 0)
    yield up
    announced = GaugeMetricFamily("seawall_bgp_announcements", "Routes announced upstream", labels=["kind"])
    kinds = [a["kind"] for a in bgp.get("announcements") or []]
    for kind in ("flowspec", "rtbh"):
        announced.add_metric([kind], kinds.count(kind))
    yield announced
    speaker = bgp.get("speaker") or {}
    running = GaugeMetricFamily("seawall_bgp_speaker_running", "1 while the BGP speaker process runs")
    running.add_metric([], 1 if speaker.get("running") else 0)
    yield running
    restarts = CounterMetricFamily("seawall_bgp_speaker_restarts", "Times the BGP speaker died and was "
                                   "started again")
    restarts.add_metric([], float(speaker.get("restarts", 0)))
    yield restarts
    refused = CounterMetricFamily("seawall_bgp_announcements_refused", "Announcements refused (the cap, "
                                  "outside the tenant's prefixes)")
    refused.add_metric([], float(bgp.get("refused", 0)))
    yield refused


class _CentralCollector:
    """A fleet's central server: what its ingest and maintenance counted (`fleet.FLEET_COUNTERS`)."""

    HELP = {"outside_rows": "Traffic and destination rows acknowledged but stored at no resolution (older than "
                            "the minute rollups keep, or a site clock more than 3 h ahead)",
            "ahead_rows": "Traffic rows not stored because their site's clock was more than 3 h ahead",
            "folded_rows": "Backfilled traffic rows older than the seconds keep, taken for the minute rollups "
                           "(a second a rollup holds already is not added again)",
            "rollup_failures": "Rollup keys the database refused (logged and dropped)",
            "maintenance_failures": "Fleet partition upkeep or rollup passes that failed (tried again)"}

    def __init__(self, counters: dict[str, int]) -> None:
        self.counters = counters

    def collect(self):
        for key, help_text in self.HELP.items():
            counter = CounterMetricFamily(f"seawall_fleet_central_{key}", help_text)
            counter.add_metric([], float(self.counters.get(key, 0)))
            yield counter


def render(status: ApplianceStatus | TenantScopedStatus | None, central: dict[str, int] | None = None) -> bytes:
    """The appliance's status (None: a central server without one) and the central fleet counters
    (None: not shown)."""
    registry = CollectorRegistry(auto_describe=False)
    if status is not None:
        registry.register(_StatusCollector(status))
    if central is not None:
        registry.register(_CentralCollector(central))
    return generate_latest(registry)
