"""`seawall bench compare` machinery on a tiny run: real namespaces, real generator, real DUTs.

Checks that the numbers are sane (the DUT handled the packets, the filter dropped what it must and
the bridges delivered what they must, costs lie in a physically possible range), never that they
are fast. Everything the run made is gone afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess

import pytest

from appliance.bench import compare, compare_lab
from appliance.bench.compare_lab import CompareLab
from tests.conftest import skip_or_fail

TINY = dataclasses.replace(compare.QUICK, packets=20_000, runs=2, prefixes=(1, 100), latency_samples=50,
                           flood_pps=20_000)
SANE_NS = (20, 200_000)   # ns per packet: below a cache miss or above 0.2 ms means the arithmetic is wrong


def sane(cell: dict) -> None:
    assert cell["packets"] > 0
    assert SANE_NS[0] < cell["min_ns"] <= cell["ns_per_packet"] <= cell["max_ns"] < SANE_NS[1]
    assert cell["mpps_per_cpu"] == pytest.approx(1e3 / cell["ns_per_packet"], rel=0.01)


@pytest.fixture
def lab(request):
    lab = CompareLab()
    request.addfinalizer(lab.down)
    return lab.up()


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_drop_and_forward_figures_are_sane(lab):
    steps: list[str] = []
    drop = compare.run_drop(lab, TINY, steps.append)
    forward = compare.run_forward(lab, TINY, steps.append)
    assert steps, "no progress reported"
    for count in ("1", "100"):
        row = drop[count]
        assert set(row) >= {"seawall", "nftables_ingress", "nftables_bridge", "xdp_filter"}
        for system, cells in row.items():
            for vector, cell in cells.items():
                if cell is None:
                    assert (system, vector) == ("xdp_filter", "syn_flood")
                    continue
                sane(cell)
        # The deny rule drops every reflected NTP packet: nothing crosses the bridges.
        assert row["seawall"]["ntp_reflection"]["delivered"] <= 4   # the sink's own stray frames
        assert row["nftables_bridge"]["ntp_reflection"]["delivered"] <= 4   # the sink's own stray frames
        # The SYN rate limit lets some through (1,000/s), never the flood.
        syn = row["seawall"]["syn_flood"]
        assert syn["delivered"] < syn["packets"] / 2
    for system, cell in forward.items():
        sane(cell)
        assert cell["delivered"] >= 0.95 * cell["packets"], f"{system} lost legitimate packets"


def test_latency_and_report(lab, tmp_path):
    dut_kthread = lab.dut_kthread
    latency = compare.run_latency(lab, TINY, lambda _m: None)
    for load in ("light", "flood"):
        assert latency[load]["rounds"] == TINY.runs
        for path in ("direct", "through_seawall"):
            figures = latency[load][path]
            assert figures["samples"] >= 0.9 * TINY.latency_samples
            assert 0 < figures["p50_us"] <= figures["p99_us"] < 1e6
            assert figures["p50_min_max_us"][0] <= figures["p50_us"] <= figures["p50_min_max_us"][1]
    assert latency["flood"]["flood_pps_received"] > 0
    # Latency ran with NAPI in softirq; the drop and forward parts get their threaded, pinned kthreads back.
    assert lab.napi_threaded(lab.dut_ns, lab.dut_in) and lab.napi_threaded(lab.sink_ns, lab.sink_if)
    assert lab.dut_kthread not in (0, dut_kthread), "the kernel starts a new kthread when threading comes back"
    assert os.sched_getaffinity(lab.dut_kthread) == {compare_lab.DUT_CPU}
    assert lab.kthread_cpu_ns() > 0
    result = {"sizes": dataclasses.asdict(TINY), "started": "now", "latency": latency,
              "latency_method": compare.latency_method(TINY),
              "host": {"kernel": "k", "cpus": 2, "note": "test"}, "detection": None, "detection_reason": "n/a"}
    result["headline"] = compare.headline(result)
    from appliance.bench import compare_report

    files = compare_report.write(result, tmp_path)
    assert json.loads((tmp_path / "compare.json").read_text())["headline"]["latency_added_us_p50"].keys() == {
        "light", "flood"}
    assert "NAPI runs in softirq" in (tmp_path / "compare.md").read_text()
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(pathlib.Path(f).stat().st_size > 0 for f in files)


def test_cli_json_last_line_and_cleanup(tmp_path, capsys):
    from appliance.cli import main

    before = namespaces()
    rc = main(["bench", "compare", "--quick", "--packets", "20000", "--runs", "1", "--parts", "scale",
               "--out", str(tmp_path), "--json"])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    headline = json.loads(out[-1])
    for key in ("drop_vs_nftables", "drop_vs_xdp_filter", "forward_vs_linux_bridge", "latency_added_us_p50",
                "latency_added_us_p99", "detection"):
        assert key in headline
    assert headline["detection"]["syn_flood"] == {"seawall_s": None, "fastnetmon_s": None}
    scale = json.loads((tmp_path / "compare.json").read_text())["scale"]
    assert [p["prefixes"] for p in scale] == list(compare.QUICK.scale_points)
    for point in scale:
        assert point["verdicts"]["drop"] == "DROP" and point["verdicts"]["pass"] in ("REDIRECT", "PASS")
        assert 0 < point["minimal_ns"] <= point["drop_ns"] and point["minimal_ns"] <= point["pass_ns"]
    assert (tmp_path / "scale.png").exists()
    assert namespaces() == before, "the run left namespaces behind"


def test_bad_parts_is_a_clear_error(capsys):
    from appliance.cli import main

    assert main(["bench", "compare", "--parts", "drop,bogus"]) == 2
    assert "--parts must name some of" in capsys.readouterr().err


def test_down_removes_everything_after_a_failure():
    lab = CompareLab()
    try:
        lab.up()
        with pytest.raises(ValueError):
            compare.tenant_prefixes(0)
    finally:
        lab.down()
    assert lab.gen_ns not in namespaces() and lab.dut_ns not in namespaces()


def test_multiqueue_spreads_the_receive_work_over_both_vcpus():
    """Issue 18 item 4: with two queues and a generator per vCPU, the program runs on both vCPUs
    (its per-CPU counters both move), with one generator on one only; the figures are sane."""
    if (os.cpu_count() or 1) < 2:
        skip_or_fail("the multi-queue part needs two vCPUs")
    before = namespaces()
    result = compare.run_multiqueue(TINY, lambda _m: None)
    one, both = result["one_core"]["cores"], result["all_cores"]["cores"]
    assert len(one) == 1, f"one sender, one queue: the work ran on {sorted(one)}"
    assert set(both) == {"0", "1"}, f"two senders, two queues: the work ran on {sorted(both)}"
    handled = sum(c["packets"] for c in both.values())
    # How the packets split depends on how the shared VM schedules each sender against the other queue's
    # NAPI thread (CI saw 18 % on one vCPU); a queue that carried none of the work would see only strays.
    for cpu, cell in both.items():
        assert cell["packets"] >= 0.05 * handled, f"vCPU {cpu} handled {cell['packets']} of {handled}"
    for cell in (*one.values(), *both.values()):
        assert SANE_NS[0] < cell["ns_per_packet"] < SANE_NS[1]
        assert cell["mpps_per_core"] == pytest.approx(1e3 / cell["ns_per_packet"], rel=0.01)
    assert result["scaling"] == pytest.approx(result["all_cores"]["total_mpps"] / result["one_core"]["total_mpps"],
                                              rel=0.01)
    assert namespaces() == before
