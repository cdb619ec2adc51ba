"""Benchmark of the policy engine's tick at appliance scale (synthetic counters, no kernel).

`run_benchmark()` builds `destinations` addresses spread over `tenants` tenants,
feeds the real `PolicyEngine` cumulative counters that grow by noisy per-class
rates each tick (with LRU churn: a share of addresses disappears and new ones
appear every tick) plus a stream of samples, and measures each tick's process
CPU time and the process's peak resident memory. The counter source is a
`DataplaneLike` generator that lives here because only the benchmark needs it.
"""

from __future__ import annotations

import ipaddress
import pathlib
import resource
import statistics
import struct
import tempfile
import time
from typing import Any

import numpy as np

from dataplane.api import DestinationCounters, Rule, RuleCounters, Sample, TenantCounters
from dataplane.constants import Direction, DropReason, TenantMode, TrafficClass
from policy.config import PolicyConfig
from policy.engine import PolicyEngine
from policy.events import EventBus
from tenants.policy import TenantPolicy

N_CLASSES = len(TrafficClass)
BASE_ADDRESS = int(ipaddress.IPv4Address("198.18.0.0"))   # the benchmarking range holds 131,072 addresses


def _udp_frame() -> bytes:
    """One inbound UDP frame (203.0.113.1:12345 → 198.18.0.1:28960, 26 payload bytes)."""
    payload = b"\x00" * 26
    udp = struct.pack("!HHHH", 12345, 28960, 8 + len(payload), 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp) + len(payload), 0, 0, 63, 17, 0,
                     ipaddress.IPv4Address("203.0.113.1").packed, ipaddress.IPv4Address("198.18.0.1").packed)
    eth = bytes.fromhex("020000000002" "020000000001") + struct.pack("!H", 0x0800)
    return eth + ip + udp + payload


_UDP_FRAME = _udp_frame()


class SyntheticDataplane:
    """Cumulative counters for N destinations and T tenants, grown by random rates per tick."""

    def __init__(self, destinations: int, tenants: int, churn: float, samples_per_tick: int, seed: int) -> None:
        if not 1 <= destinations <= 131_072:
            raise ValueError(f"benchmark: destinations must be within 1..131072, got {destinations}")
        if not 1 <= tenants <= destinations:
            raise ValueError(f"benchmark: tenants must be within 1..destinations, got {tenants}")
        self.rng = np.random.default_rng(seed)
        self.n, self.t = destinations, tenants
        self.churn = churn
        self.samples_per_tick = samples_per_tick
        self.all_addresses = [ipaddress.IPv4Address(BASE_ADDRESS + i) for i in range(destinations)]
        self.tenant_of = (np.arange(destinations) % tenants).astype(np.uint32)
        # Packets/s per class: mostly small, a few busy servers; below the warm-up floors, as
        # legitimate traffic of a new address is (the floors are for floods).
        self.mean_pps = np.minimum(self.rng.lognormal(3.0, 1.5, (destinations, N_CLASSES)), 5000.0)
        self.packets = np.zeros((destinations, N_CLASSES), np.uint64)
        self.bytes = np.zeros((destinations, N_CLASSES), np.uint64)
        self.present = np.ones(destinations, bool)
        self.t_packets = np.zeros((tenants, 2, N_CLASSES), np.uint64)
        self.rules: dict[int, Rule] = {}
        self._next_rule = 1

    def advance(self, dt: float) -> None:
        add = self.rng.poisson(self.mean_pps * dt).astype(np.uint64)
        self.packets += add
        self.bytes += add * np.uint64(400)
        flip = self.rng.random(self.n) < self.churn
        self.present ^= flip
        # Rows outside the LRU have no counters; a row that comes back starts from zero.
        self.packets[~self.present] = 0
        self.bytes[~self.present] = 0
        per_tenant = np.zeros((self.t, N_CLASSES), np.uint64)
        np.add.at(per_tenant, self.tenant_of, add)
        self.t_packets[:, 0, :] += per_tenant

    def read_destination_counters(self) -> DestinationCounters:
        rows = np.flatnonzero(self.present)
        return DestinationCounters(addresses=[self.all_addresses[i] for i in rows], tenant_idx=self.tenant_of[rows],
                                   packets=self.packets[rows], bytes=self.bytes[rows],
                                   dropped_packets=np.zeros(len(rows), np.uint64))

    def read_tenant_counters(self) -> dict[int, TenantCounters]:
        zeros2 = np.zeros(2, np.uint64)
        reasons = np.zeros((2, len(DropReason)), np.uint64)
        cp = self.t_packets.copy()
        cb = cp * np.uint64(400)
        passed = cp.sum(axis=2)
        passed_b = passed * np.uint64(400)
        return {t: TenantCounters(passed_packets=passed[t], passed_bytes=passed_b[t], dropped_packets=zeros2,
                                  dropped_bytes=zeros2, class_packets=cp[t], class_bytes=cb[t],
                                  reason_packets=reasons)
                for t in range(self.t)}

    def attack(self, rows: np.ndarray, syn_pps: float) -> None:
        """From now on, `rows` also receive a SYN flood of `syn_pps` packets/s each."""
        self.mean_pps[rows, int(TrafficClass.TCP_SYN)] += syn_pps

    def add_rule(self, rule: Rule) -> int:
        self.rules[self._next_rule] = rule
        self._next_rule += 1
        return self._next_rule - 1

    def remove_rule(self, rule_id: int) -> None:
        del self.rules[rule_id]

    def read_rule_counters(self) -> dict[int, RuleCounters]:
        return {rid: RuleCounters(0, 0, 0) for rid in self.rules}

    def drain_samples(self, limit: int = 4096) -> list[Sample]:
        n = min(limit, self.samples_per_tick)
        return [Sample(timestamp_ns=time.monotonic_ns(), tenant_idx=int(i % self.t), direction=Direction.INBOUND,
                       dropped=False, reason=DropReason.NONE, wire_length=len(_UDP_FRAME) + 4, data=_UDP_FRAME)
                for i in range(n)]


def run_benchmark(destinations: int = 100_000, tenants: int = 10_000, ticks: int = 20, churn: float = 0.002,
                  samples_per_tick: int = 2000, attacked: int = 20, warmup_ticks: int = 10,
                  seed: int = 1) -> dict[str, Any]:
    """Time `ticks` engine ticks after `warmup_ticks` untimed ones.

    Halfway through the timed ticks, `attacked` destinations start receiving a SYN
    flood, so the figures include detection, classification and incidents.
    Returns CPU milliseconds per tick (median, max; they include reading the
    synthetic counters, as a real tick includes reading the maps), the engine's
    own CPU milliseconds without that read, per-stage CPU milliseconds, and the
    process's peak resident memory.
    """
    if not 1 <= destinations <= 131_072:
        raise ValueError(f"benchmark: destinations must be within 1..131072, got {destinations}")
    if ticks < 2:
        raise ValueError("benchmark: at least 2 timed ticks")
    if not 0 <= attacked <= destinations:
        raise ValueError(f"benchmark: attacked must be within 0..{destinations}")
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    build0 = time.process_time()
    dp = SyntheticDataplane(destinations, tenants, churn, samples_per_tick, seed)
    spec = {t: (f"tenant-{t}", TenantMode.MITIGATE, TenantPolicy()) for t in range(tenants)}
    cpu_ms: list[float] = []
    engine_ms: list[float] = []
    stages: dict[str, list[float]] = {}
    events = 0
    with tempfile.TemporaryDirectory() as tmp:
        # A short warm-up so that baselines exist after the untimed ticks.
        config = PolicyConfig(warmup_s=float(max(warmup_ticks - 2, 1)))
        engine = PolicyEngine(dp, spec, EventBus(), pathlib.Path(tmp), tick=1.0, config=config)
        build_s = time.process_time() - build0
        now = 0.0
        for i in range(warmup_ticks + ticks):
            if i == warmup_ticks + ticks // 2 and attacked:
                dp.attack(dp.rng.choice(destinations, attacked, replace=False), syn_pps=50_000.0)
            dp.advance(1.0)
            now += 1.0
            report = engine.tick(now)
            if i < warmup_ticks:
                continue
            events += len(report.events)
            cpu_ms.append(report.cpu_ms)
            engine_ms.append(sum(ms for name, ms in report.timings_ms.items() if name != "read"))
            for name, ms in report.timings_ms.items():
                stages.setdefault(name, []).append(ms)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # Linux: KiB
    return {
        "destinations": destinations,
        "tenants": tenants,
        "ticks": ticks,
        "samples_per_tick": samples_per_tick,
        "attacked_destinations": attacked,
        "events": events,
        "tick_cpu_ms_median": round(statistics.median(cpu_ms), 2),
        "tick_cpu_ms_max": round(max(cpu_ms), 2),
        # CPU time of the engine's own stages, without reading the (synthetic) counters.
        "engine_ms_median": round(statistics.median(engine_ms), 2),
        "stage_ms_median": {k: round(statistics.median(v), 2) for k, v in stages.items()},
        "setup_cpu_s": round(build_s, 2),
        "peak_rss_mib": round(rss_kib / 1024, 1),
        "peak_rss_growth_mib": round((rss_kib - rss_before_kib) / 1024, 1),
    }
