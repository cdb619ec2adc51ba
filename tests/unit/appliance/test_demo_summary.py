"""Issue 19: the demo's summary counts the new TCP clients like the other legitimate services."""

from __future__ import annotations

from appliance.demo import LiveView, summary
from appliance.lab import lab_config
from appliance.lab.scenario import load_scenario
from appliance.runner import ApplianceProcess


def _stats(sent: int, ok: int, p99_ms: float) -> dict:
    return {"sent": sent, "ok": ok, "success_rate": round(ok / sent, 4), "p50_ms": 1.0, "p99_ms": p99_ms}


def test_issue19_demo_summary_reports_new_tcp_clients_during_and_outside_the_attacks(tmp_path):
    config = lab_config("ut")
    config["appliance"]["state_dir"] = str(tmp_path / "state")
    appliance = ApplianceProcess(config, tmp_path / "seawall.toml", tmp_path / "seawall.log")   # not started
    view = LiveView(appliance, attack_onset=0.0)
    results = {
        "traffic": {"services": {"http": _stats(10, 10, 5.0), "new-tcp": _stats(60, 59, 4.4)}},
        "attacks": [{"transmitted": 100}],
        "legit_split": {"during": {"new-tcp": {"sent": 38, "ok": 37, "success_rate": 0.9737}},
                        "outside": {"new-tcp": {"sent": 22, "ok": 22, "success_rate": 1.0}}},
    }
    lines = summary(load_scenario(), view, results, onset=0.0).splitlines()
    # Values in one column with the other summary lines ("attack packets sent:").
    assert "  legitimate new-tcp success:   98.33% (59/60, p99 4.4 ms)" in lines
    assert "  legitimate http success:      100.00% (10/10, p99 5.0 ms)" in lines
    assert "    new-tcp during attacks:     97.37% (37/38)" in lines
    assert "    new-tcp outside attacks:    100.00% (22/22)" in lines


def test_issue15_demo_summary_has_a_row_per_botnet_flood_with_and_without_mitigation(tmp_path):
    from appliance.demo import botnet_lines, first_mitigation  # noqa: PLC0415

    config = lab_config("ut")
    config["appliance"]["state_dir"] = str(tmp_path / "state")
    appliance = ApplianceProcess(config, tmp_path / "seawall.toml", tmp_path / "seawall.log")   # not started
    appliance.log_path.write_text(
        '{"event": "appflood.limit", "dst": "203.0.113.99", "timestamp": "2026-12-05T10:00:01Z"}\n'
        '{"event": "appflood.limit", "dst": "203.0.113.10", "timestamp": "2026-12-05T10:00:03.5Z"}\n'
        '{"event": "appflood.block", "first": "198.18.0.1", "timestamp": "2026-12-05T10:00:04Z"}\n')
    onset = 1_796_464_800.0     # 2026-12-05T10:00:00Z
    assert first_mitigation(appliance.log_path, onset, "203.0.113.10") == onset + 3.5
    assert first_mitigation(appliance.log_path, onset + 5, "203.0.113.10") is None
    assert first_mitigation(appliance.log_path, onset, "203.0.113.10", until=onset + 3) is None   # a later flood's
    rows = [{"vector": "http-flood", "time_to_mitigate_s": 3.5, "legit_with": 1.0, "legit_without": 0.4123,
             "bot_share_through": 0.012},
            {"vector": "slowloris", "time_to_mitigate_s": None, "legit_with": None, "legit_without": 0.5,
             "bot_share_through": None}]
    view = LiveView(appliance, attack_onset=0.0)
    lines = summary(load_scenario(), view, None, onset=0.0, botnet=rows).splitlines()
    assert "  vector        legit with  legit without  bots through  time to mitigate" in lines
    assert "  http-flood        100.0%          41.2%          1.2%             3.5 s" in lines
    assert "  slowloris              -          50.0%             -                 -" in lines
    assert botnet_lines([]) == []
