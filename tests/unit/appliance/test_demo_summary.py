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
