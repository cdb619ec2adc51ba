"""Every `seawall demo` starts from a fresh appliance: the state an earlier demo left (the policy
engine's baselines above all) is gone before the appliance starts."""

from __future__ import annotations

from appliance.demo import fresh_appliance_state
from appliance.service import ENGINE_DIR
from policy.engine import STATE_FILE


def test_an_earlier_demos_baselines_captures_and_users_are_gone(tmp_path):
    state = tmp_path / "sw"
    (state / ENGINE_DIR / "pcap").mkdir(parents=True)
    for name in (f"{ENGINE_DIR}/{STATE_FILE}", f"{ENGINE_DIR}/pcap/flood.pcap", "securewatch.db",
                 "securewatch.db-wal"):
        (state / name).write_bytes(b"from the last demo")
    fresh_appliance_state(state)
    assert not state.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_first_demo_has_nothing_to_remove(tmp_path):
    fresh_appliance_state(tmp_path / "sw")
    assert list(tmp_path.iterdir()) == []
