"""The policy tick against real kernel maps (root): `seawall bench policy --real`.

`appliance.bench.policy` times the tick on a synthetic dataplane that hands the reader's decoding
code the maps' contents laid out as the kernel keeps them, so its "read" stage leaves out
the kernel's share (walking the hash maps and copying them to user space). This benchmark
measures that too: a real `Dataplane` (compiled, unattached, unpinned) with the
benchmark's tenant set applied, whose address cache, spill store and tenant stats are
written each tick with the counters that `appliance.bench.policy.SyntheticDataplane` lays out
(every cache slot of every CPU, the rest of the addresses in the spill store, as the
program leaves them), then

- `read_destination_counters()` (with every counter row made: `CounterRows.whole()`) +
  `read_tenant_counter_arrays()` timed on their own (CPU and wall time: the batch reads'
  syscalls included), and
- whole `PolicyEngine.tick()`s on that dataplane (the same reads inside).

The maps are written between ticks by a child process standing in for the kernel (the
address cache and the spill store in their mapped memory, one map update per changed
tenant row and per address that enters or leaves the store's index), untimed: the kernel fills its maps as it counts, outside `seawall run`'s
CPU time and memory. So this process's resident memory is the engine's, the compiled
program's and the reads'. No traffic flows, so the ring buffer holds no samples and the
samples stage costs nothing here.

`--live` (`run_live`) runs the appliance's own tick loop (`PolicyEngine.run()`, in its worker thread)
on the same maps for a number of seconds, the child advancing the counters a second every second:
whether the engine keeps `tick_ms` at this size on this CPU, as the status's `ticks_overrun` counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import mmap
import multiprocessing
import os
import pathlib
import resource
import statistics
import struct
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from appliance.bench.policy import SyntheticDataplane, synthetic_tenant_spec
from dataplane import bpfsys
from dataplane.constants import ADDRESS_CACHE_BITS, MAX_ADDRESSES, MAX_TENANTS
from dataplane.keys import key_hash, unique_keys
from policy.config import PolicyConfig
from policy.events import EventBus

ADDRESS_BLOCK = 8            # addresses per tenant prefix in appliance.bench.dataplane.build_tenants (a /29)


class _MapWriter:
    """Writes a SyntheticDataplane's map contents into a real Dataplane's maps, changed entries only."""

    def __init__(self, dp: Any) -> None:
        self.dp = dp
        from dataplane import testing  # noqa: PLC0415 - the maps themselves: dataplane.testing hands them out

        cache = testing.table(dp, "sw_addr_cache")
        size = cache.max_entries * ctypes.sizeof(cache.Leaf)
        # The cache is a memory-mapped array: written in place, one region per CPU, as the program does.
        self._cache_mmap = mmap.mmap(cache.map_fd, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)
        self._cache_regions = np.frombuffer(self._cache_mmap, np.uint64, count=size // 8).reshape(
            dp.cache_regions, -1, ctypes.sizeof(cache.Leaf) // 8)
        # The spill store too, with its index and its count of slots handed out, as the program claims
        # them (dataplane/spill.py); a slot whose address left the synthetic maps is freed at once (the
        # reader's reclaim, brought forward) and claimed again first.
        maps = dp.program.store_maps()
        self._store_mmap = mmap.mmap(maps.store_fd, -(-maps.slots * maps.slot_bytes // mmap.PAGESIZE) * mmap.PAGESIZE)
        self._store = np.frombuffer(self._store_mmap, np.uint64, count=maps.slots * maps.slot_bytes // 8).reshape(
            maps.slots, maps.slot_bytes // 8)
        self._store_maps = maps
        self._slot_of: dict[bytes, int] = {}
        self._free_slots: list[int] = []
        self._handed_out = 0
        self._stats_fd = testing.table(dp, "sw_tenant_stats").map_fd
        self._stats: np.ndarray | None = None
        self.updates = 0

    def write(self, source: SyntheticDataplane) -> None:
        cache, spill_keys, spill, stats = source.map_contents()
        self._cache_regions[:cache.shape[1]] = cache.transpose(1, 0, 2)
        self.updates += cache.shape[0]
        self._write_array(self._stats_fd, stats, self._stats)
        self._stats = stats
        self._write_store(spill_keys, spill)

    def _write_store(self, spill_keys: np.ndarray, spill: np.ndarray) -> None:
        maps, store = self._store_maps, self._store
        words = spill.shape[2]
        keys = [spill_keys[i].tobytes() for i in range(len(spill_keys))]
        current = set(keys)
        for key in [k for k in self._slot_of if k not in current]:    # left since the last write: freed
            slot = self._slot_of.pop(key)
            store[slot] = 0
            bpfsys.map_delete(maps.index_fd, key)
            self._free_slots.append(slot)
            self.updates += 1
        slots = np.empty(len(keys), np.int64)
        for i, key in enumerate(keys):
            slot = self._slot_of.get(key)
            if slot is None:
                if self._free_slots:
                    slot = self._free_slots.pop()
                else:
                    slot, self._handed_out = self._handed_out, self._handed_out + 1
                self._slot_of[key] = slot
                bpfsys.map_update(maps.index_fd, key, struct.pack("=I", slot))
                self.updates += 1
            slots[i] = slot
        bpfsys.map_update(maps.next_fd, struct.pack("=I", 0), struct.pack("=Q", self._handed_out))
        store[slots, :words] = spill[:, 0, :]
        store[slots, self.dp.reader.address_layout.spilled_tenant_at] |= np.uint64(1 << 32)   # claimed
        store[slots, words:words + 2] = spill_keys
        self.updates += len(keys)

    def _write_array(self, fd: int, now: np.ndarray, before: np.ndarray | None) -> None:
        flat = now.reshape(len(now), -1)
        changed = np.arange(len(now)) if before is None else \
            np.flatnonzero((flat != before.reshape(len(before), -1)).any(axis=1))
        for i in changed.tolist():
            bpfsys.map_update(fd, struct.pack("=I", i), flat[i].tobytes())
        self.updates += len(changed)


class _TrafficProcess:
    """The kernel's stand-in: a child process that advances a `SyntheticDataplane` by a second
    and writes its counters into the real maps (the file descriptors and the mapped cache it
    inherits), while this process runs the engine. The counters' ground truth and the writer's
    copies are thus not in the engine's memory, as the kernel's counting is not in
    `seawall run`'s. Every `advance()` answers with the write's seconds, the addresses now in
    the maps (as `KeySet`: their count and digest) and how many of them are in the spill map."""

    def __init__(self, dp: Any, destinations: int, tenants: int, churn: float, seed: int, slot_bits: int,
                 prefixes: bool) -> None:
        self._conn, child = multiprocessing.Pipe()
        self.pid = os.fork()
        if self.pid == 0:   # the child: never returns
            self._conn.close()
            status = 1
            try:
                _serve_traffic(child, dp, destinations, tenants, churn, seed, slot_bits, prefixes)
                status = 0
            except BaseException:   # anything: tell the parent, then leave without running its cleanup
                with contextlib.suppress(Exception):
                    child.send(("error", traceback.format_exc()))
            finally:
                os._exit(status)
        child.close()
        self._answer()   # the first write is done

    def _answer(self) -> Any:
        try:
            kind, payload = self._conn.recv()
        except EOFError:
            raise RuntimeError("benchmark: the traffic process exited without an answer") from None
        if kind == "error":
            raise RuntimeError(f"benchmark: the traffic process failed:\n{payload}")
        return payload

    def advance(self) -> tuple[float, KeySet, int]:
        self._conn.send("advance")
        seconds, keys, spilled = self._answer()
        return seconds, keys, spilled

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._conn.close()
        os.waitpid(self.pid, 0)


def _serve_traffic(conn: Any, dp: Any, destinations: int, tenants: int, churn: float, seed: int,
                   slot_bits: int, prefixes: bool) -> None:
    source = SyntheticDataplane(destinations, tenants, churn, samples_per_tick=0, seed=seed, cpus=dp.ncpus,
                                slot_bits=slot_bits, prefixes=prefixes)
    writer = _MapWriter(dp)
    writer.write(source)
    conn.send(("ok", None))
    while conn.recv() == "advance":   # or "stop"
        source.advance(1.0)
        w0 = time.perf_counter()
        writer.write(source)
        seconds = time.perf_counter() - w0
        conn.send(("ok", (seconds, KeySet.of(_map_addresses(source)), len(source.map_contents()[1]))))


def _resident_mib() -> float:
    """This process's resident memory now (VmRSS), MiB."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _resident_parts_mib() -> dict[str, float]:
    """This process's resident memory by kind (/proc/self/smaps), MiB: the BPF maps it has mapped (the
    address cache and the spill store: the kernel's memory, which `memlock` already counts), files
    (the interpreter, numpy, bcc's LLVM) and the rest (the heap: the engine's arrays)."""
    parts = {"bpf_maps": 0.0, "files": 0.0, "heap_and_other": 0.0}
    kind = "heap_and_other"
    for line in pathlib.Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:      # a mapping's first line
            path = head[5] if len(head) > 5 else ""
            kind = "bpf_maps" if "bpf-map" in path else "files" if path.startswith("/") else "heap_and_other"
        elif head and head[0] == "Rss:":
            parts[kind] += int(head[1]) / 1024
    return {k: round(v, 1) for k, v in parts.items()}


def _map_addresses(source: SyntheticDataplane) -> np.ndarray:
    """(K, 2) keys of every address the maps report: live cache slots (with a tenant) and spilled ones."""
    cache, spill_keys, _, _ = source.map_contents()
    head = cache[:, :, 2]
    live = ((head >> np.uint64(32)) != 0) & ((head & np.uint64(0xFFFFFFFF)) != np.uint64(0xFFFFFFFF))
    keys = np.concatenate([cache[:, :, :2][live], spill_keys.reshape(-1, 2)])
    first, _ = unique_keys(keys)
    return keys[np.sort(first)]


_DIGEST_BLOCK_ROWS = 65_536                # rows hashed at a time: 1 MiB temporaries


@dataclasses.dataclass(frozen=True, slots=True)
class KeySet:
    """A multiset of (N, 2) uint64 keys as its size and two sums of a 64-bit hash of each key (and of its
    square), modulo 2**64: two key arrays with equal KeySets hold the same keys, each as many times,
    but with a chance of ~2**-64. Made in blocks: checking what the engine saw costs this process no
    memory beside the tick's (sorting two million keys to compare them held ~200 MiB of heap that the
    resident figure then counted)."""

    count: int
    sum: int
    sum_of_squares: int

    @classmethod
    def of(cls, keys: np.ndarray) -> KeySet:
        total = squares = np.uint64(0)
        with np.errstate(over="ignore"):
            for lo in range(0, len(keys), _DIGEST_BLOCK_ROWS):
                block = keys[lo:lo + _DIGEST_BLOCK_ROWS]
                h = key_hash(block[:, 0], block[:, 1])
                total += np.add.reduce(h, dtype=np.uint64)
                squares += np.add.reduce(h * h, dtype=np.uint64)
        return cls(len(keys), int(total), int(squares))


def run(destinations: int = 100_000, tenants: int = 10_000, ticks: int = 10, warmup_ticks: int = 10,
        churn: float = 0.002, seed: int = 1, slot_bits: int = ADDRESS_CACHE_BITS, prefixes: bool = False,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time the counter reads and the engine's tick on real maps; see the module docstring.

    `slot_bits` below the cache's own makes addresses share fewer slots (tests: a small run
    with a busy spill map). `prefixes`: the engine's tenants each own a v4 and a v6 prefix holding
    their addresses (`SyntheticDataplane.tenant_prefixes`), so the tick includes the per-prefix
    aggregates of policy.prefixes.

    Needs root (BPF maps). Returns CPU and wall milliseconds of the two reads (median, max),
    the tick's CPU milliseconds (median, max) and stage medians, the medians of the parts of the
    tick's destination read (`CounterReader.last_read_cpu_ms`), peak RSS, and whether the engine
    saw every address in the maps at every timed tick.
    """
    if ticks < 2 or warmup_ticks < 1:
        raise ValueError("benchmark: at least 2 timed ticks and 1 warm-up tick")
    _check(destinations, tenants)
    from policy.engine import PolicyEngine  # noqa: PLC0415 - after the root check, as the kernel adapter

    say = progress or (lambda _message: None)
    with _real_maps(destinations, tenants, churn, seed, slot_bits, prefixes, say) as (dp, traffic, spec):
        read_cpu: list[float] = []
        read_wall: list[float] = []
        tick_cpu: list[float] = []
        stages: dict[str, list[float]] = {}
        read_parts: dict[str, list[float]] = {}
        seen_all: list[bool] = []
        seen_counts: list[int] = []
        write_s: list[float] = []
        with tempfile.TemporaryDirectory() as tmp:
            engine = PolicyEngine(dp, spec, EventBus(), pathlib.Path(tmp), tick=1.0,
                                  config=PolicyConfig(warmup_s=float(max(warmup_ticks - 2, 1))))
            now = 0.0
            for i in range(warmup_ticks + ticks):
                if i == warmup_ticks:
                    say(f"{ticks} timed ticks")
                seconds, expected, spilled = traffic.advance()
                write_s.append(seconds)
                now += 1.0
                report = engine.tick(now)
                if i < warmup_ticks:
                    continue
                # The parts of the tick's own destination read.
                for name, ms in dp.reader.last_read_cpu_ms.items():
                    read_parts.setdefault(name, []).append(ms)
                tick_cpu.append(report.cpu_ms)
                for name, ms in report.timings_ms.items():
                    stages.setdefault(name, []).append(ms)
                seen = engine.rates.last_destination_rates.keys
                seen_counts.append(len(seen))
                seen_all.append(KeySet.of(seen) == expected)
                # Not held through the next tick (the engine lets its last rates go before it reads: the
                # benchmark's own reference to their keys would keep ~15 MiB more at a million).
                del seen
            rss_mib = _resident_mib()
            rss_parts = _resident_parts_mib()
            peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            # The reads on their own, as many, each on counters a second on, after the memory figures: a
            # read while the engine still holds its tick's results is never the appliance's (a tick lets
            # the previous results go before it reads), and the heap would keep its high-water mark.
            say(f"{ticks} reads on their own")
            for _ in range(ticks):
                traffic.advance()
                c0, t0 = time.process_time(), time.perf_counter()
                # With its counter rows made (the tick's rate tracker makes them a block at a time).
                dp.read_destination_counters().rows.whole()
                dp.read_tenant_counter_arrays()
                read_cpu.append((time.process_time() - c0) * 1000.0)
                read_wall.append((time.perf_counter() - t0) * 1000.0)
        return {
            "destinations": destinations,
            "tenants": tenants,
            "tenant_prefixes": 2 if prefixes else 0,
            "ticks": ticks,
            "cpus": dp.ncpus,
            "addresses_in_maps": expected.count,
            "addresses_in_spill_map": spilled,
            "addresses_seen_min": min(seen_counts),
            "engine_saw_every_address": all(seen_all),
            "read_cpu_ms_median": round(statistics.median(read_cpu), 2),
            "read_cpu_ms_max": round(max(read_cpu), 2),
            "read_wall_ms_median": round(statistics.median(read_wall), 2),
            "read_wall_ms_max": round(max(read_wall), 2),
            "tick_cpu_ms_median": round(statistics.median(tick_cpu), 2),
            "tick_cpu_ms_max": round(max(tick_cpu), 2),
            "stage_ms_median": {k: round(statistics.median(v), 2) for k, v in stages.items()},
            # The destination read within the read stage: "spill_map", the spill store's claimed slots in
            # place and the overflow map's batch read (the kernel's walk of a hash map, ~300 ns an entry:
            # empty here, the store holds every spilled address); the copy of the mapped address cache;
            # the decode.
            "destination_read_ms_median": {k: round(statistics.median(v), 2) for k, v in read_parts.items()},
            "rss_mib": round(rss_mib, 1),
            "rss_parts_mib": rss_parts,
            # Rows of the engine's per-address state (baselines, slot table): grown as addresses come.
            "destination_slots": engine.rates.slots.capacity,
            "peak_rss_mib": round(peak_kib / 1024, 1),
            "map_write_s_median": round(statistics.median(write_s), 2),   # untimed, in the traffic process
        }


def _check(destinations: int, tenants: int) -> None:
    if os.geteuid() != 0:
        raise PermissionError("the real-map policy benchmark needs root (it loads the XDP program and "
                              "writes its maps): run `sudo seawall bench policy --real`")
    if not 1 <= tenants <= min(MAX_TENANTS, destinations):
        raise ValueError(f"benchmark: tenants must be within 1..min(destinations, {MAX_TENANTS}), got {tenants}")


@contextlib.contextmanager
def _real_maps(destinations: int, tenants: int, churn: float, seed: int, slot_bits: int, prefixes: bool,
               say: Callable[[str], None]) -> Iterator[tuple[Any, _TrafficProcess, dict]]:
    """A real Dataplane with the benchmark's tenants applied and the traffic process writing its maps:
    (dataplane, traffic, the engine's tenant spec); both stopped and closed on the way out."""
    # Only root gets this far (`_check`): bcc and the kernel adapter are imported here, not at module load.
    from appliance.bench.dataplane import build_tenants  # noqa: PLC0415
    from dataplane.dataplane import Dataplane  # noqa: PLC0415
    from tenants.compile import assign_indices, compile_tenant_set  # noqa: PLC0415

    say("compiling and loading the XDP program")
    # The spill store sized for the run ([appliance] max_addresses), a quarter above the destinations, as
    # before the store (the LRU map started evicting a little before it was full): slots for every address
    # the synthetic dataplane spills, and its churn.
    dp = Dataplane(max_addresses=min(max(MAX_ADDRESSES, destinations + destinations // 4), 16 * 1024 * 1024))
    traffic: _TrafficProcess | None = None
    try:
        say(f"applying {tenants:,} tenants")
        tenant_set = build_tenants(tenants)
        indices = assign_indices([t.id for t in tenant_set], {})
        if any(indices[f"t{j}"] != j for j in range(tenants)):
            raise RuntimeError("benchmark: tenant indices are not 0..tenants-1 in order")
        dp.apply_tenants(compile_tenant_set(tenant_set, indices))
        say(f"writing {destinations:,} addresses into the maps")
        traffic = _TrafficProcess(dp, destinations, tenants, churn, seed, slot_bits, prefixes)
        yield dp, traffic, synthetic_tenant_spec(destinations, tenants, prefixes)   # as the traffic lays them out
    finally:
        if traffic is not None:
            traffic.stop()
        dp.close()


def run_live(destinations: int = 100_000, tenants: int = 10_000, seconds: float = 30.0, tick_ms: int = 1000,
             churn: float = 0.002, seed: int = 1, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`PolicyEngine.run()`, the appliance's own tick loop, for `seconds` on real maps, the traffic process
    advancing the counters a second every second meanwhile: whether the engine keeps its `tick_ms` at this
    size on this CPU. Returns the ticks, those that overran (`ticks_overrun`, as the status counts them),
    the spacing of tick starts (ms: `tick_ms` while the engine keeps up, longer when it falls behind)
    and the ticks' CPU milliseconds (medians and maxima), and the `policy.tick_overrun` warnings logged."""
    from appliance.config import TICK_MS_RANGE  # noqa: PLC0415 - the same bounds as [appliance] tick_ms

    low, high = TICK_MS_RANGE
    if isinstance(tick_ms, bool) or not isinstance(tick_ms, int) or not low <= tick_ms <= high:
        raise ValueError(f"benchmark: tick_ms must be an integer between {low} and {high}, got {tick_ms!r}")
    if not 3 * tick_ms / 1000.0 <= seconds <= 3600:
        raise ValueError(f"benchmark: seconds must be between 3 ticks ({3 * tick_ms / 1000.0:g}) and 3600, "
                         f"got {seconds!r}")
    _check(destinations, tenants)
    import structlog.testing  # noqa: PLC0415 - the engine's warnings, collected as they are logged

    from policy.engine import PolicyEngine  # noqa: PLC0415

    say = progress or (lambda _message: None)
    with _real_maps(destinations, tenants, churn, seed, ADDRESS_CACHE_BITS, False, say) as (dp, traffic, spec), \
            tempfile.TemporaryDirectory() as tmp:
        starts: list[float] = []
        cpu: list[float] = []

        def delivered(_traffic: Any) -> None:    # on the loop's thread, once a tick's results are out
            report = engine.last_report
            if report is not None:
                starts.append(report.now)
                cpu.append(report.cpu_ms)

        engine = PolicyEngine(dp, spec, EventBus(), pathlib.Path(tmp), tick=tick_ms / 1000.0,
                              config=PolicyConfig(warmup_s=3.0), on_tenant_traffic=delivered)
        stop = threading.Event()

        def advance() -> None:     # the kernel's counting: a second of traffic every second
            while not stop.wait(1.0):
                traffic.advance()

        async def ticking() -> None:
            task = asyncio.create_task(engine.run(), name="policy-engine-bench")
            await asyncio.sleep(seconds)
            engine.stop()
            await task

        say(f"the engine's own loop for {seconds:g} s, a tick every {tick_ms} ms")
        writer = threading.Thread(target=advance, name="bench-traffic")
        writer.start()
        try:
            with structlog.testing.capture_logs() as logs:
                asyncio.run(ticking())
        finally:
            stop.set()
            writer.join()
        spacing = [1000.0 * (b - a) for a, b in zip(starts, starts[1:], strict=False)]
        return {
            "destinations": destinations,
            "tenants": tenants,
            "tick_ms": tick_ms,
            "seconds": seconds,
            "cpus": dp.ncpus,
            "ticks": len(starts),
            "ticks_overrun": engine.ticks_overrun,        # what the status's policy.ticks_overrun shows
            "tick_spacing_ms_median": round(statistics.median(spacing), 1) if spacing else None,
            "tick_spacing_ms_max": round(max(spacing), 1) if spacing else None,
            "tick_cpu_ms_median": round(statistics.median(cpu), 1) if cpu else None,
            "tick_cpu_ms_max": round(max(cpu), 1) if cpu else None,
            "destinations_last_tick": None if engine.last_report is None else engine.last_report.destinations,
            "overrun_warnings": sum(1 for e in logs if e["event"] == "policy.tick_overrun"),
        }
