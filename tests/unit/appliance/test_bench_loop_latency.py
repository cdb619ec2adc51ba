"""`seawall bench policy --loop-latency`: it measures both ways of ticking, with a real SecureWatch
answering a client in another process and a bus subscriber receiving events (figures only)."""

from __future__ import annotations

from appliance.bench import loop_latency
from appliance.cli import main


def test_both_modes_tick_and_report_api_and_notifier_figures():
    result = loop_latency.run(sizes=(2_000,), tenants=100, seconds=1.0, interval_ms=20.0, warmup_ticks=3)
    (size,) = result["sizes"]
    for mode in loop_latency.MODES:
        r = size[mode]
        assert r["ticked"], mode
        assert r["api"]["count"] > 0 and r["api"]["errors"] == 0, (mode, r)
        assert r["notifier_delay"]["count"] > 0, (mode, r)
        assert r["api"]["p99_ms"] >= r["api"]["p50_ms"] > 0
    text = loop_latency.render(result)
    assert "in-loop" in text and "worker" in text and "2,000" in text


def test_bad_sizes_are_refused(capsys):
    assert main(["bench", "policy", "--loop-latency", "--sizes", "100k"]) == 2
    assert "--loop-latency" in capsys.readouterr().err


def test_requests_past_the_client_timeout_are_counted_as_timeouts_not_a_crash_issue18():
    """Issue 18 item 1: at 1,000,000 destinations the in-loop mode stalls the loop past the client's
    timeout; the run crashed on the uncaught TimeoutError. A timed-out request is a figure: counted
    as a timeout, its wait (a lower bound) among the latencies. A microsecond's timeout makes every
    request time out, whichever way the engine ticks."""
    result = loop_latency.run(sizes=(2_000,), tenants=100, seconds=0.5, interval_ms=20.0, warmup_ticks=3,
                              client_timeout_s=1e-6)
    (size,) = result["sizes"]
    for mode in loop_latency.MODES:
        api = size[mode]["api"]
        assert api["errors"] == 0, (mode, api)
        assert api["timeouts"] == api["count"] > 0, (mode, api)
    assert "timeouts" in loop_latency.render(result)
