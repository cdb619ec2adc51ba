"""The real-map policy benchmark at a small size, and the numpy batch reader it relies on.

`appliance.bench.policy_real.run` loads its own Dataplane (a second compile: a few
seconds), writes 2,000 destinations into its maps and runs engine ticks on it. Speed is
printed by the benchmark, never asserted; this checks the shape of what it returns and
that the engine saw exactly the addresses in the maps.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from appliance.bench import policy_real
from dataplane import bpfsys, testing

BPF_MAP_TYPE_HASH = 1        # enum bpf_map_type (a plain hash: many keys per call, a cursor between calls)
EXPECTED_KEYS = {
    "destinations", "tenants", "tenant_prefixes", "ticks", "cpus", "addresses_in_maps", "addresses_in_spill_map",
    "addresses_seen_min",
    "engine_saw_every_address", "read_cpu_ms_median", "read_cpu_ms_max", "read_wall_ms_median", "read_wall_ms_max",
    "tick_cpu_ms_median", "tick_cpu_ms_max", "stage_ms_median", "destination_read_ms_median", "rss_mib",
    "rss_parts_mib", "destination_slots", "peak_rss_mib", "map_write_s_median",
}


def test_real_policy_benchmark_small_run_sees_every_address():
    # 2,000 addresses over 1,024 cache slots: about half of them wait in the spill map.
    result = policy_real.run(destinations=2_000, tenants=200, ticks=2, warmup_ticks=2, slot_bits=10)
    assert set(result) == EXPECTED_KEYS
    assert (result["destinations"], result["tenants"], result["ticks"]) == (2_000, 200, 2)
    # With churn a few addresses are out of the LRU at any time, but most are in the maps.
    assert 1_900 <= result["addresses_in_maps"] <= 2_000
    assert result["addresses_in_spill_map"] >= 500
    assert result["engine_saw_every_address"] is True
    assert result["addresses_seen_min"] == result["addresses_in_maps"]
    assert {"read", "rates", "detect", "learn"} <= set(result["stage_ms_median"])
    # The destination read's parts, each timed (the spill map and the cache copy take measurable CPU).
    parts = result["destination_read_ms_median"]
    assert set(parts) == {"spill_map", "cache_copy", "decode"}
    assert all(ms >= 0 for ms in parts.values())
    assert parts["spill_map"] > 0 and parts["cache_copy"] > 0
    for key in ("read_cpu_ms_median", "read_wall_ms_median", "tick_cpu_ms_median", "rss_mib", "peak_rss_mib"):
        assert result[key] > 0, key
    assert result["read_cpu_ms_max"] >= result["read_cpu_ms_median"]
    assert result["tick_cpu_ms_max"] >= result["tick_cpu_ms_median"]
    # Resident memory by kind adds up to the whole (smaps and status are read a moment apart); the
    # spill store and the address cache are mapped in.
    parts = result["rss_parts_mib"]
    assert set(parts) == {"bpf_maps", "files", "heap_and_other"} and parts["bpf_maps"] > 0
    assert abs(sum(parts.values()) - result["rss_mib"]) < 0.05 * result["rss_mib"]
    assert result["destination_slots"] >= result["addresses_in_maps"]


def test_batch_reader_reads_a_hash_map_across_chunks(dp):
    """A hash map read in several chunks (and a cursor carried between them) comes out whole."""
    fd = bpfsys.map_create(BPF_MAP_TYPE_HASH, 16, 24, 4096, name="sw_test_batch")
    try:
        rng = np.random.default_rng(3)
        keys = rng.integers(0, 2**63, (3_000, 2), dtype=np.uint64)
        values = rng.integers(0, 2**63, (3_000, 3), dtype=np.uint64)
        for k, v in zip(keys, values, strict=True):
            bpfsys.map_update(fd, k.tobytes(), v.tobytes())
        got_keys, got_values, count = bpfsys.map_lookup_batch(fd, 16, 24, 4096, chunk=256)
        assert count == 3_000
        by_key = dict(zip(map(bytes, got_keys), map(bytes, got_values), strict=True))
        assert by_key == {k.tobytes(): v.tobytes() for k, v in zip(keys, values, strict=True)}
        # One element per call, and buffers sized to exactly the elements there are: every bucket of two
        # or more answers ENOSPC and the chunk doubles; a large bucket near the end makes the buffers grow.
        tiny_keys, tiny_values, tiny_count = bpfsys.map_lookup_batch(fd, 16, 24, 3_000, chunk=1)
        assert tiny_count == 3_000
        assert dict(zip(map(bytes, tiny_keys), map(bytes, tiny_values), strict=True)) == by_key
    finally:
        os.close(fd)


def test_batch_reader_reads_a_full_array_map(dp):
    table = testing.table(dp, "sw_tenant_stats")
    keys, values, count = bpfsys.map_lookup_batch(table.map_fd, 4, ctypes.sizeof(table.Leaf), table.max_entries)
    assert count == table.max_entries
    assert keys.view(np.uint32).reshape(-1).tolist() == list(range(count))
    assert values.shape == (count, ctypes.sizeof(table.Leaf))


def test_array_range_reader_reads_exactly_the_rows_asked(dp):
    table = testing.table(dp, "sw_tenant_stats")
    row = ctypes.sizeof(table.Leaf)
    last = table.max_entries - 1
    marked = [*range(8), *range(last - 11, last + 1)]
    for index in marked:        # every word of a row holds the row's index + 1
        value = np.full(row // 8, index + 1, np.uint64).tobytes()
        bpfsys.map_update(table.map_fd, index.to_bytes(4, "little"), value)
    try:
        for start, count in ((0, 3), (5, 2), (last, 1), (last - 10, 10), (last - 1, 10)):
            got = bpfsys.array_lookup_range(table.map_fd, row, start, count)
            end = min(start + count, last + 1)
            assert len(got) == end - start
            assert got.view(np.uint64)[:, 0].tolist() == [i + 1 for i in range(start, end)]
    finally:                    # the dataplane is shared with other tests: their counters start clean
        for index in marked:
            bpfsys.map_update(table.map_fd, index.to_bytes(4, "little"), bytes(row))


LIVE_KEYS = {"destinations", "tenants", "tick_ms", "seconds", "cpus", "ticks", "ticks_overrun",
             "tick_spacing_ms_median", "tick_spacing_ms_max", "tick_cpu_ms_median", "tick_cpu_ms_max",
             "destinations_last_tick", "overrun_warnings"}


def test_issue18_live_run_ticks_on_schedule_on_real_maps():
    """`seawall bench policy --real --live`: the engine's own loop on real maps, the counters advancing
    every second. At 2,000 destinations a tick takes milliseconds, so the loop keeps its 200 ms; the
    overrun count and its warnings (once a minute at most) are the status's and the log's own."""
    result = policy_real.run_live(destinations=2_000, tenants=200, seconds=3.0, tick_ms=200)
    assert set(result) == LIVE_KEYS
    assert (result["destinations"], result["tick_ms"], result["seconds"]) == (2_000, 200, 3.0)
    assert 8 <= result["ticks"] <= 16              # ~3 s of 200 ms ticks, and the one under way at the stop
    # Ticks start a tick_ms apart, or later after one that overran: never sooner.
    assert result["tick_spacing_ms_median"] >= 0.9 * 200
    assert result["tick_spacing_ms_max"] >= result["tick_spacing_ms_median"]
    assert 0 < result["tick_cpu_ms_median"] <= result["tick_cpu_ms_max"]
    assert 1_900 <= result["destinations_last_tick"] <= 2_000
    assert result["overrun_warnings"] == (1 if result["ticks_overrun"] else 0)
