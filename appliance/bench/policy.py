"""Benchmark of the policy engine's tick at appliance scale (synthetic counters, no kernel).

`run_benchmark()` builds `destinations` addresses spread over `tenants` tenants,
feeds the real `PolicyEngine` cumulative counters that grow by noisy per-class
rates each tick (with LRU churn: a share of addresses disappears and new ones
appear every tick) plus a stream of samples, and measures each tick's process
CPU time and the process's peak resident memory. `run_sweep()` runs it for
several sizes, each in a fresh process so that each peak memory is its own.

The counter source is a `SyntheticDataplane` that hands the engine what
`dataplane.Dataplane` reads from the kernel, laid out as the maps are (struct
sw_addr_entry, sw_addr_spilled, sw_tenant_stats in dataplane/bpf/seawall.h, two
CPUs, at the offsets of the reader's `ADDRESS_LAYOUT` and `TENANT_LAYOUT`), and
decodes them with the real reader's own code: it copies the address cache out of
its memory as the real reader copies the mapped array, then runs
`dataplane.reader.decode_destination_counters`; its tenant read decodes the stats
map's sum with `decode_tenant_counters`, as `CounterReader.read_tenant_counter_arrays`
does. The map contents are laid out when the synthetic traffic advances, outside
the tick, as the kernel fills its maps while it counts; so a tick's "read" stage
costs what the real one costs in user space, and the kernel's share of the batch
reads of the spill and stats maps (walking them and copying them out) is not in it
(`seawall bench policy --real` measures that). Addresses: 198.18.0.0/15 (131,072), then
2001:db8::/32 for larger sets (documentation addresses: nothing is sent).
"""

from __future__ import annotations

import ipaddress
import json
import pathlib
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from dataplane.api import (
    BlockedSource,
    DestinationCounters,
    FlowCounters,
    IPAddress,
    Rule,
    RuleCounters,
    Sample,
    SourceLimit,
    TenantCounterArrays,
    TenantCounters,
)
from dataplane.constants import (
    ADDRESS_CACHE_BITS,
    MAX_TENANTS,
    Direction,
    DropReason,
    TenantMode,
    TrafficClass,
)
from dataplane.reader import (
    ADDRESS_LAYOUT,
    CACHE_SLOTS,
    TENANT_LAYOUT,
    AddressMemo,
    cache_copy_layout,
    copy_cache,
    decode_destination_counters,
    decode_tenant_counters,
    sum_over_cpus,
)
from dataplane.sizing import FlowSizes
from policy.config import PolicyConfig
from policy.engine import PolicyEngine
from policy.events import EventBus
from tenants.policy import TenantPolicy

N_CLASSES = len(TrafficClass)
N_REASONS = len(DropReason)
N_CPUS = 2                                                  # the appliance's CPUs (these VMs have two)
V4_BASE = int(ipaddress.IPv4Address("198.18.0.0"))
V4_ADDRESSES = 131_072                                      # the benchmarking range 198.18.0.0/15
V6_BASE = int(ipaddress.IPv6Address("2001:db8::"))         # one /64 per further destination
MAX_DESTINATIONS = 2_000_000                                # well within 2001:db8::/32's /64s; memory is the limit
BYTES_PER_PACKET = 400                                      # synthetic mean packet size, bytes
DEFAULT_SWEEP = ((1_000, 1_000), (10_000, 10_000), (100_000, 10_000), (1_000_000, 10_000))


# Connection accounting (issue 15): every destination is a TCP server with new connections, requests and
# bytes at these mean rates, and this many clients of each are in the (destination, source) map (as many
# as its default size holds), so that a tick reads and judges what the real maps would give it.
FLOW_NEW_PER_S = 5.0          # handshakes/s per destination
FLOW_REQUESTS_PER_CONN = 3.0  # HTTP requests per connection
FLOW_BYTES_PER_REQUEST = (400, 4000)   # client -> server, server -> client, bytes
SOURCES_PER_DESTINATION = 2
LAYOUT = ADDRESS_LAYOUT   # the per-address maps' layout (the reader's; pinned to the program's in tests/bpf)


def destination_addresses(n: int) -> tuple[list[ipaddress.IPv4Address | ipaddress.IPv6Address], np.ndarray]:
    """`n` addresses and their 16-byte map keys ((n, 2) uint64, IPv4 stored IPv4-mapped)."""
    n4 = min(n, V4_ADDRESSES)
    addrs: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ipaddress.IPv4Address(V4_BASE + i)
                                                                  for i in range(n4)]
    addrs += [ipaddress.IPv6Address(V6_BASE + ((i + 1) << 64) + 1) for i in range(n - n4)]
    raw = b"".join((b"\0" * 10 + b"\xff\xff" + a.packed) if a.version == 4 else a.packed for a in addrs)
    return addrs, np.frombuffer(raw, np.uint64).reshape(n, 2).copy()


def prefix_blocks(destinations: int, tenants: int) -> tuple[int, int]:
    """Addresses per tenant prefix, v4 and v6 (v6: /64s), when tenants own prefixes: the largest powers of
    two that give every tenant a block of each family's addresses (`destination_addresses`)."""
    n4 = min(destinations, V4_ADDRESSES)
    n6 = destinations - n4
    return 1 << max((n4 // tenants).bit_length() - 1, 0), 1 << max(((n6 + 1) // tenants).bit_length() - 1, 0)


def tenant_prefixes(j: int, blocks: tuple[int, int]) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]:
    """Tenant j's v4 and v6 prefix: the j-th aligned block of each family."""
    block4, block6 = blocks
    return (ipaddress.IPv4Network((V4_BASE + j * block4, 32 - (block4.bit_length() - 1))),
            ipaddress.IPv6Network((V6_BASE + ((j * block6) << 64), 64 - (block6.bit_length() - 1))))


def synthetic_tenant_spec(destinations: int, tenants: int, prefixes: bool) -> dict[int, tuple]:
    """The engine's tenant spec for the synthetic tenants: each mitigating with the default policy, and with
    `prefixes` its v4 and v6 prefix (the addresses `SyntheticDataplane(prefixes=True)` gives it)."""
    if not prefixes:
        return {t: (f"tenant-{t}", TenantMode.MITIGATE, TenantPolicy()) for t in range(tenants)}
    blocks = prefix_blocks(destinations, tenants)
    return {t: (f"tenant-{t}", TenantMode.MITIGATE, TenantPolicy(), tenant_prefixes(t, blocks))
            for t in range(tenants)}


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
    """Cumulative counters for N destinations and T tenants, grown by random rates per tick.

    The dataplane keeps an address's counters in a cache slot of its CPU (hashed by
    address) until another address takes the slot, which moves them to the spill map:
    where more addresses share a slot than one, one of them (drawn each tick) holds
    the slot and the others' counters wait in the spill map, as in the kernel.
    """

    def __init__(self, destinations: int, tenants: int, churn: float, samples_per_tick: int, seed: int,
                 cpus: int = N_CPUS, slot_bits: int = ADDRESS_CACHE_BITS, prefixes: bool = False) -> None:
        """`slot_bits`: addresses use only the first 2**slot_bits cache slots (fewer than the cache
        has: more addresses share a slot and more counters are in the spill map, at a small size).
        `prefixes`: every tenant owns a v4 and a v6 prefix (`tenant_prefixes`) holding its addresses,
        so that the engine keeps per-prefix aggregates for each (policy.prefixes); otherwise tenants
        take addresses round robin and have no prefixes."""
        if not 1 <= destinations <= MAX_DESTINATIONS:
            raise ValueError(f"benchmark: destinations must be within 1..{MAX_DESTINATIONS}, got {destinations}")
        if not 1 <= tenants <= min(destinations, MAX_TENANTS):
            raise ValueError(f"benchmark: tenants must be within 1..min(destinations, {MAX_TENANTS}), got {tenants}")
        if cpus < 1:
            raise ValueError(f"benchmark: cpus must be at least 1, got {cpus}")
        if not 1 <= slot_bits <= ADDRESS_CACHE_BITS:
            raise ValueError(f"benchmark: slot_bits must be within 1..{ADDRESS_CACHE_BITS}, got {slot_bits}")
        self.rng = np.random.default_rng(seed)
        self.cpus = cpus
        self.n, self.t = destinations, tenants
        self.churn = churn
        self.samples_per_tick = samples_per_tick
        _, self.keys = destination_addresses(destinations)
        self.memo = AddressMemo(4 * destinations)
        self._cache_copy: np.ndarray | None = None    # the reader's copy of the address cache's counted words
        self._cache_copy_layout = cache_copy_layout(LAYOUT)
        self.class_budgets: dict[int, dict[TrafficClass, int]] = {}
        # Any well-mixed hash spreads addresses over slots as the kernel's does.
        mixed = (self.keys[:, 0] ^ self.keys[:, 1]) * np.uint64(0x9E3779B97F4A7C15)
        self.cache_slot = (mixed >> np.uint64(64 - slot_bits)).astype(np.int64)
        self.tenant_of = (np.arange(destinations) % tenants).astype(np.uint32)
        self.prefixes = prefixes
        if prefixes:
            self._own_prefixes()
        # Packets/s per class: mostly small, a few busy servers; below the warm-up floors, as
        # legitimate traffic of a new address is (the floors are for floods).
        self.mean_pps = np.minimum(self.rng.lognormal(3.0, 1.5, (destinations, N_CLASSES)), 5000.0)
        self.packets = np.zeros((destinations, N_CLASSES), np.uint64)
        self.spilled = np.zeros((destinations, N_CLASSES), np.uint64)   # the part of `packets` in the spill map
        self.present = np.ones(destinations, bool)
        self.resident = np.zeros(destinations, bool)
        self.t_packets = np.zeros((tenants, 2, N_CLASSES), np.uint64)
        self.rules: dict[int, Rule] = {}
        self._next_rule = 1
        self._fill_maps()
        self._init_flows(seed)

    def _own_prefixes(self) -> None:
        """Tenant j's addresses: the j-th block of each family (`prefix_blocks`); addresses past the
        blocks stay round robin, outside every prefix."""
        n4 = min(self.n, V4_ADDRESSES)
        block4, block6 = prefix_blocks(self.n, self.t)
        i4 = np.arange(n4)
        owned4 = i4 < block4 * self.t
        self.tenant_of[:n4][owned4] = (i4[owned4] // block4).astype(np.uint32)
        net6 = np.arange(self.n - n4) + 1           # v6 address i is in /64 number i + 1
        owned6 = net6 < block6 * self.t
        self.tenant_of[n4:][owned6] = (net6[owned6] // block6).astype(np.uint32)

    @property
    def nbytes(self) -> int:
        """Memory of the synthetic counters and of their map layout (what the batch reads would copy out;
        not the engine's)."""
        return sum(a.nbytes for a in (self.keys, self.cache_slot, self.tenant_of, self.mean_pps, self.packets,
                                      self.spilled, self.present, self.resident, self.t_packets, *self._maps))

    def advance(self, dt: float) -> None:
        add = self.rng.poisson(self.mean_pps * dt).astype(np.uint64)
        self.packets += add
        flip = self.rng.random(self.n) < self.churn
        self.present ^= flip
        # Rows outside the LRU have no counters; a row that comes back starts from zero.
        self.packets[~self.present] = 0
        self.spilled[~self.present] = 0
        # Which present address holds each cache slot this tick: a random one of those sharing it.
        rows = np.flatnonzero(self.present)
        order = rows[np.lexsort((self.rng.random(len(rows)), self.cache_slot[rows]))]
        slots = self.cache_slot[order]
        last = np.ones(len(order), bool)
        last[:-1] = slots[1:] != slots[:-1]
        self.resident[:] = False
        self.resident[order[last]] = True
        # An address without its slot has all its counters in the spill map; one that holds it
        # keeps what was spilled before and counts the rest in the slot.
        self.spilled[~self.resident] = self.packets[~self.resident]
        per_tenant = np.zeros((self.t, N_CLASSES), np.uint64)
        np.add.at(per_tenant, self.tenant_of, add)
        self.t_packets[:, 0, :] += per_tenant
        self._fill_maps()
        self._advance_flows(dt)

    def _fill_maps(self) -> None:
        """Lay the counters out as the kernel's maps hold them (what a batch read copies out)."""
        lay = LAYOUT
        # One region of slots per CPU, as the kernel's array holds them, seen as (slots, CPUs, words).
        cache = np.zeros((self.cpus, CACHE_SLOTS, lay.entry_words), np.uint64).transpose(1, 0, 2)
        held = np.flatnonzero(self.resident)
        slots = self.cache_slot[held]
        cached = self.packets[held] - self.spilled[held]
        c0 = lay.counters_at
        for cpu, share in _cpu_shares(cached, self.cpus):
            cache[slots, cpu, lay.addr_at:lay.addr_at + 2] = self.keys[held]
            cache[slots, cpu, lay.head_at] = (self.tenant_of[held].astype(np.uint64) << np.uint64(lay.tenant_shift)) \
                | np.uint64(1 << lay.generation_shift)   # generation 1
            cache[slots, cpu, c0 + lay.packets_at:c0 + lay.packets_at + N_CLASSES] = share
            cache[slots, cpu, c0 + lay.bytes_at:c0 + lay.bytes_at + N_CLASSES] = share * np.uint64(BYTES_PER_PACKET)
        out = np.flatnonzero(self.present & self.spilled.any(axis=1))
        spill = np.zeros((len(out), 1, lay.spilled_words), np.uint64)   # one copy, shared by the CPUs
        moved = self.spilled[out]
        spill[:, 0, lay.packets_at:lay.packets_at + N_CLASSES] = moved
        spill[:, 0, lay.bytes_at:lay.bytes_at + N_CLASSES] = moved * np.uint64(BYTES_PER_PACKET)
        spill[:, 0, lay.spilled_tenant_at] = self.tenant_of[out]
        t_lay = TENANT_LAYOUT
        tenant_stats = np.zeros((MAX_TENANTS + 1, self.cpus, 2, t_lay.dir_words), np.uint64)
        cp = self.t_packets
        tenant_stats[:self.t, 0, :, t_lay.class_packets_at:t_lay.class_packets_at + N_CLASSES] = cp
        tenant_stats[:self.t, 0, :, t_lay.class_bytes_at:t_lay.class_bytes_at + N_CLASSES] = \
            cp * np.uint64(BYTES_PER_PACKET)
        self._maps = (cache, self.keys[out], spill, tenant_stats)

    def map_contents(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What the maps hold now, as the reader sees them: the address cache (slots, CPUs, entry
        words; a view of CPU-major memory, like the kernel's array), the spill map's keys (S, 2) and
        values (S, 1, words), and the tenant stats (rows, CPUs, 2, direction words); uint64. For
        writing into real maps (appliance/bench/policy_real.py)."""
        return self._maps

    def read_destination_counters(self) -> DestinationCounters:
        """`Dataplane.read_destination_counters` after its reads: its decoding code."""
        cache, spill_keys, spill, _ = self._maps
        # CPU-major, as the kernel's array.
        self._cache_copy = copy_cache(cache.transpose(1, 0, 2), LAYOUT, self._cache_copy)
        return decode_destination_counters(self._cache_copy.transpose(1, 0, 2), spill_keys, spill,
                                           self._cache_copy_layout, self.memo)

    def read_tenant_counter_arrays(self) -> TenantCounterArrays:
        """`Dataplane.read_tenant_counter_arrays` after its batch read: the sum over CPUs, decoded by its code."""
        return decode_tenant_counters(sum_over_cpus(self._maps[3]), TENANT_LAYOUT)

    def read_tenant_counters(self) -> dict[int, TenantCounters]:
        """As `Dataplane.read_tenant_counters`: one object per tenant that has counters."""
        arrays = self.read_tenant_counter_arrays()
        return {int(i): arrays.tenant(int(i)) for i in np.flatnonzero(arrays.present)}

    # -- connection accounting (issue 15): the engine's application-layer detector runs on these -----
    def _init_flows(self, seed: int) -> None:
        # Its own random stream: the counters' draws stay what they were without connection accounting.
        self.flow_rng = np.random.default_rng(seed + 1)
        self.flow_sizes = FlowSizes()
        self.flow_new = np.zeros(self.n, np.uint64)
        pairs = min(self.n * SOURCES_PER_DESTINATION, self.flow_sizes.flow_source_entries)
        self.pair_dst = np.arange(pairs) % self.n
        # Client addresses of 2001:db8:ffff::/48 (documentation addresses, never sent to).
        self.pair_src = np.zeros((pairs, 2), np.uint64)
        self.pair_src[:, 0] = np.uint64(0x20010DB8FFFF0000).byteswap()
        self.pair_src[:, 1] = (np.arange(pairs, dtype=np.uint64) + np.uint64(1)).byteswap()
        self.pair_new = np.zeros(pairs, np.uint64)
        self.source_limits: list[SourceLimit] = []
        self.blocked: dict[tuple[int, IPAddress], BlockedSource] = {}

    def _advance_flows(self, dt: float) -> None:
        add = self.flow_rng.poisson(FLOW_NEW_PER_S * dt, self.n).astype(np.uint64)
        add[~self.present] = 0
        self.flow_new[~self.present] = 0
        self.flow_new += add
        self.pair_new += self.flow_rng.poisson(FLOW_NEW_PER_S * dt / SOURCES_PER_DESTINATION,
                                          len(self.pair_new)).astype(np.uint64)

    def _flow_counters(self, new: np.ndarray, keys: np.ndarray, tenants: np.ndarray,
                       sources: np.ndarray | None) -> FlowCounters:
        requests = (new.astype(np.float64) * FLOW_REQUESTS_PER_CONN).astype(np.uint64)
        up, down = FLOW_BYTES_PER_REQUEST
        return FlowCounters(keys=keys, sources=sources, tenant_idx=tenants, new_connections=new,
                            established=np.minimum(new, 3).astype(np.int64), http_requests=requests,
                            tls_hellos=np.zeros(len(new), np.uint64), bytes_to_server=requests * np.uint64(up),
                            bytes_to_client=requests * np.uint64(down))

    def read_flow_counters(self, per_source: bool = False) -> FlowCounters:
        """As `Dataplane.read_flow_counters`: cumulative rows per present destination, or per (destination,
        client) pair."""
        if per_source:
            d = self.pair_dst
            return self._flow_counters(self.pair_new.copy(), self.keys[d], self.tenant_of[d], self.pair_src)
        rows = np.flatnonzero(self.present)
        return self._flow_counters(self.flow_new[rows], self.keys[rows], self.tenant_of[rows], None)

    def set_source_limits(self, limits) -> None:
        """Kept, not enforced (the synthetic traffic does not react to limits)."""
        self.source_limits = list(limits)

    def block_sources(self, entries) -> int:
        self.blocked.update({(e.tenant_idx, e.src): e for e in entries})
        return len(self.blocked)

    def unblock_source(self, tenant_idx: int, src: IPAddress) -> None:
        self.blocked.pop((tenant_idx, src), None)

    def read_blocked_sources(self) -> list[BlockedSource]:
        return list(self.blocked.values())

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

    def set_class_budgets(self, tenant_idx: int, budgets: dict[TrafficClass, int]) -> dict[TrafficClass, int]:
        """Kept, not enforced: the synthetic traffic does not react to budgets."""
        self.class_budgets.setdefault(tenant_idx, {}).update(budgets)
        return dict(self.class_budgets[tenant_idx])

    def drain_samples(self, limit: int = 4096) -> list[Sample]:
        n = min(limit, self.samples_per_tick)
        return [Sample(timestamp_ns=time.monotonic_ns(), tenant_idx=int(i % self.t), direction=Direction.INBOUND,
                       dropped=False, reason=DropReason.NONE, wire_length=len(_UDP_FRAME) + 4, data=_UDP_FRAME)
                for i in range(n)]


def _cpu_shares(counts: np.ndarray, cpus: int) -> list[tuple[int, np.ndarray]]:
    """`counts` split over `cpus` CPUs (the last one takes the remainder), as (cpu, share) pairs."""
    part = counts // np.uint64(cpus)
    return [(cpu, part if cpu < cpus - 1 else counts - part * np.uint64(cpus - 1)) for cpu in range(cpus)]


def run_benchmark(destinations: int = 100_000, tenants: int = 10_000, ticks: int = 20, churn: float = 0.002,
                  samples_per_tick: int = 2000, attacked: int = 20, warmup_ticks: int = 10,
                  seed: int = 1, prefixes: bool = False) -> dict[str, Any]:
    """Time `ticks` engine ticks after `warmup_ticks` untimed ones.

    Halfway through the timed ticks, `attacked` destinations start receiving a SYN
    flood, so the figures include detection, classification and incidents.
    Returns CPU milliseconds per tick (median, max; they include reading the
    synthetic counters, as a real tick includes reading the maps), the engine's
    own CPU milliseconds without that read, per-stage CPU milliseconds, and the
    process's peak resident memory.
    """
    if not 1 <= destinations <= MAX_DESTINATIONS:
        raise ValueError(f"benchmark: destinations must be within 1..{MAX_DESTINATIONS}, got {destinations}")
    if ticks < 2:
        raise ValueError("benchmark: at least 2 timed ticks")
    if not 0 <= attacked <= destinations:
        raise ValueError(f"benchmark: attacked must be within 0..{destinations}")
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    build0 = time.process_time()
    dp = SyntheticDataplane(destinations, tenants, churn, samples_per_tick, seed, prefixes=prefixes)
    spec = synthetic_tenant_spec(destinations, tenants, prefixes)
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
        "tenant_prefixes": 2 if prefixes else 0,
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
        # Part of the peak that is the synthetic dataplane's own counters, not the engine's.
        "synthetic_counters_mib": round(dp.nbytes / 2**20, 1),
        # The application-layer detector ran in every tick (None), or why it switched itself off.
        "appflood_disabled": engine.appflood.disabled,
        "appflood_servers": len(engine.appflood.servers),
    }


def run_sweep(sizes: tuple[tuple[int, int], ...] = DEFAULT_SWEEP, ticks: int = 10,
              progress: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
    """`run_benchmark` for each (destinations, tenants), each in its own Python process so
    that each peak resident memory belongs to that size alone."""
    for destinations, tenants in sizes:
        if not 1 <= destinations <= MAX_DESTINATIONS or not 1 <= tenants <= min(destinations, MAX_TENANTS):
            raise ValueError(f"benchmark: size {destinations} destinations × {tenants} tenants is out of range "
                             f"(destinations 1..{MAX_DESTINATIONS}, tenants 1..min(destinations, {MAX_TENANTS}))")
    results = []
    for destinations, tenants in sizes:
        if progress is not None:
            progress(f"{destinations:,} destinations, {tenants:,} tenants, {ticks} ticks")
        args = json.dumps({"destinations": destinations, "tenants": tenants, "ticks": ticks, **kwargs})
        proc = subprocess.run([sys.executable, "-m", "appliance.bench.policy", args], capture_output=True, text=True,
                              check=False, cwd=pathlib.Path(__file__).resolve().parent.parent)
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark at {destinations} destinations failed: {proc.stderr.strip()[-2000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def render_sweep(results: list[dict[str, Any]]) -> str:
    """A Markdown table of `run_sweep` results."""
    lines = ["| destinations | tenants | tick CPU ms (median) | max | read ms | engine ms | peak RSS MiB "
             "| of which synthetic counters |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['destinations']:,} | {r['tenants']:,} | {r['tick_cpu_ms_median']} | {r['tick_cpu_ms_max']} "
                     f"| {r['stage_ms_median'].get('read', 0.0)} | {r['engine_ms_median']} | {r['peak_rss_mib']} "
                     f"| {r['synthetic_counters_mib']} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`python -m appliance.bench.policy '{"destinations": ..., ...}'`: one run, its figures as JSON on the last line."""
    print(json.dumps(run_benchmark(**json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
