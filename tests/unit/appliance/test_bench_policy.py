"""The benchmark runs at a small scale and returns its figures (printed, never asserted on speed)."""

from __future__ import annotations

import ipaddress
import re

import numpy as np
import pytest

from appliance.bench.policy import (
    MAX_DESTINATIONS,
    V4_ADDRESSES,
    SyntheticDataplane,
    destination_addresses,
    render_sweep,
    run_benchmark,
    run_sweep,
    synthetic_tenant_spec,
)


def test_benchmark_returns_figures():
    figures = run_benchmark(destinations=3000, tenants=300, ticks=4, warmup_ticks=4, attacked=3,
                            samples_per_tick=200)
    print(figures)
    assert figures["destinations"] == 3000 and figures["ticks"] == 4
    assert figures["events"] >= 3                      # the attacked destinations were reported
    assert figures["tick_cpu_ms_median"] > 0 and figures["peak_rss_mib"] > 0
    assert {"read", "rates", "detect", "learn"} <= set(figures["stage_ms_median"])


def test_issue18_bench_tenants_with_a_v4_and_a_v6_prefix_own_their_addresses():
    # 131,072 v4 addresses, then one /64 each: 300 tenants get 256 v4 addresses and 8 /64s each.
    n, t = V4_ADDRESSES + 3000, 300
    dp = SyntheticDataplane(n, t, 0.0, 0, 1, prefixes=True)
    spec = synthetic_tenant_spec(n, t, prefixes=True)
    addresses, _ = destination_addresses(n)
    owned = 0
    for i, address in enumerate(addresses):
        tenant = int(dp.tenant_of[i])
        nets = spec[tenant][3]
        assert [net.version for net in nets] == [4, 6]
        inside = [net for net in nets if address in net]
        owned += bool(inside)
        for other in (tenant - 1, tenant + 1):      # prefixes never overlap a neighbour's addresses
            if 0 <= other < t:
                assert not any(address in net for net in spec[other][3])
    assert owned >= 0.5 * n         # power-of-two blocks: the remainder past the last block is round robin
    figures = run_benchmark(destinations=3000, tenants=300, ticks=2, warmup_ticks=3, attacked=0,
                            samples_per_tick=0, prefixes=True)
    assert figures["tenant_prefixes"] == 2 and figures["tick_cpu_ms_median"] > 0


def test_benchmark_rejects_bad_sizes():
    with pytest.raises(ValueError, match="destinations"):
        run_benchmark(destinations=0)
    with pytest.raises(ValueError, match="timed ticks"):
        run_benchmark(destinations=10, tenants=1, ticks=1)


def test_sweep_runs_each_size_in_its_own_process_and_renders_a_table():
    sizes = ((400, 40), (2500, 250))
    results = run_sweep(sizes, ticks=3, warmup_ticks=3, attacked=2, samples_per_tick=100)
    assert [(r["destinations"], r["tenants"]) for r in results] == list(sizes)
    for r in results:
        assert r["events"] >= 2                              # each size saw its attack
        assert 0 < r["tick_cpu_ms_median"] <= r["tick_cpu_ms_max"]
        assert r["stage_ms_median"]["read"] > 0
        assert r["peak_rss_mib"] > r["synthetic_counters_mib"] > 0
    # More destinations, more synthetic counter memory: each process measured its own size.
    assert results[1]["synthetic_counters_mib"] > results[0]["synthetic_counters_mib"]
    table = render_sweep(results)
    assert table.count("\n") == 1 + len(sizes) and "| 2,500 | 250 |" in table


def test_sweep_rejects_bad_sizes_before_running_anything():
    with pytest.raises(ValueError, match="out of range"):
        run_sweep(((1000, 100), (10, 20)))                   # more tenants than destinations
    with pytest.raises(ValueError, match="out of range"):
        run_sweep(((MAX_DESTINATIONS + 1, 10),))


def test_large_sets_use_ipv6_documentation_addresses_after_the_benchmarking_range():
    addrs, keys = destination_addresses(V4_ADDRESSES + 3)
    assert addrs[0] == ipaddress.ip_address("198.18.0.0") and addrs[V4_ADDRESSES - 1] == ipaddress.ip_address(
        "198.19.255.255")
    v6 = addrs[V4_ADDRESSES:]
    assert all(a in ipaddress.ip_network("2001:db8::/32") for a in v6) and len(set(v6)) == 3
    # Map keys: IPv4-mapped for IPv4, the address itself for IPv6 (as the dataplane stores them).
    assert keys[0].tobytes() == b"\0" * 10 + b"\xff\xff" + bytes([198, 18, 0, 0])
    assert keys[-1].tobytes() == addrs[-1].packed


def test_synthetic_counters_decode_to_the_ground_truth_through_cache_and_spill():
    dp = SyntheticDataplane(destinations=70_000, tenants=7, churn=0.0, samples_per_tick=0, seed=3)
    for _ in range(3):
        dp.advance(1.0)
    read = dp.read_destination_counters()
    assert len(read.addresses) == 70_000                     # more than the cache's slots: some spilled
    assert dp.spilled.any() and dp.resident.sum() < 70_000
    addrs, _ = destination_addresses(70_000)
    row = {a: i for i, a in enumerate(addrs)}
    order = np.array([row[a] for a in read.addresses])
    np.testing.assert_array_equal(read.packets, dp.packets[order])
    np.testing.assert_array_equal(read.tenant_idx, dp.tenant_of[order])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tick_ms": 50}, "tick_ms must be an integer between 100 and 10000"),
    ({"tick_ms": 1000.0}, "tick_ms must be an integer"),
    ({"tick_ms": 1000, "seconds": 2.0}, "seconds must be between 3 ticks (3) and 3600"),
])
def test_issue18_live_benchmark_refuses_a_tick_or_a_duration_it_cannot_run(kwargs, message):
    """`seawall bench policy --real --live` checks its interval as [appliance] tick_ms does, before
    anything needs root."""
    from appliance.bench import policy_real  # noqa: PLC0415

    with pytest.raises(ValueError, match=re.escape(message)):
        policy_real.run_live(destinations=2_000, tenants=200, **kwargs)


def test_issue18_live_needs_real(capsys):
    from appliance.cli import main  # noqa: PLC0415

    assert main(["bench", "policy", "--live"]) != 0
    assert "--live runs on real maps: add --real" in capsys.readouterr().err
