"""The benchmark runs at a small scale and returns its figures (printed, never asserted on speed)."""

from __future__ import annotations

import pytest

from policy.bench import run_benchmark


def test_benchmark_returns_figures():
    figures = run_benchmark(destinations=3000, tenants=300, ticks=4, warmup_ticks=4, attacked=3,
                            samples_per_tick=200)
    print(figures)
    assert figures["destinations"] == 3000 and figures["ticks"] == 4
    assert figures["events"] >= 3                      # the attacked destinations were reported
    assert figures["tick_cpu_ms_median"] > 0 and figures["peak_rss_mib"] > 0
    assert {"read", "rates", "detect", "learn"} <= set(figures["stage_ms_median"])


def test_benchmark_rejects_bad_sizes():
    with pytest.raises(ValueError, match="destinations"):
        run_benchmark(destinations=0)
    with pytest.raises(ValueError, match="timed ticks"):
        run_benchmark(destinations=10, tenants=1, ticks=1)
