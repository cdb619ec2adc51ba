"""The arithmetic of the latency part of `seawall bench compare` (no namespaces: the netns tier runs it for real)."""

from __future__ import annotations

import pytest

from appliance.bench import compare, echo
from appliance.bench.compare_lab import BenchError
from appliance.bench.compare_report import render_markdown


def rounds(*p50s: float) -> list[dict]:
    """Rounds of 100 echoes whose median is the given value and whose two slowest are 10x it."""
    return [{"rtts_us": [p] * 98 + [10 * p] * 2, "lost": 1} for p in p50s]


def test_added_is_through_minus_direct_within_each_round():
    # A slow round (background load) raises both paths alike; per-round differences ignore it.
    figures = compare.latency_figures({"direct": rounds(20, 40, 21), "through_seawall": rounds(24, 45, 26)})
    assert figures["direct"]["p50_us"] == 21 and figures["direct"]["p50_min_max_us"] == [20, 40]
    assert figures["direct"]["p99_us"] == 210 and figures["direct"]["samples"] == 300
    assert figures["direct"]["lost"] == 3
    assert figures["added_p50_us"] == 5 and figures["added_p50_min_max_us"] == [4, 5]
    assert figures["added_p99_us"] == 50 and figures["rounds"] == 3


def test_a_round_that_lost_every_echo_is_an_error():
    with pytest.raises(BenchError, match="through_seawall"):
        compare.latency_figures({"direct": rounds(20), "through_seawall": [{"rtts_us": [], "lost": 100}]})


def test_report_states_the_method_and_the_spread():
    figures = compare.latency_figures({"direct": rounds(20, 21), "through_seawall": rounds(24, 26)})
    text = render_markdown({"sizes": {"runs": 2, "packets": 1}, "started": "now",
                            "host": {"kernel": "k", "cpus": 2, "note": "test"}, "latency": {"light": figures},
                            "latency_method": compare.latency_method(compare.QUICK)})
    assert "NAPI runs in softirq" in text
    assert "| light | **added** | **4.5 [4, 5]** |" in text


def test_echo_usage_error():
    assert echo.main(["ping", "7007"]) == 2
    with pytest.raises(ValueError, match="count and rounds"):
        echo.ping(7007, 0, 0, 1, {"direct": "192.0.2.18"})
