"""Issue 14, item 6: `seawall demo --scenario NAME` finds appliance/scenarios/NAME.toml; paths keep working."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from appliance.lab.scenario import SCENARIO_DIR, known_scenarios, load_scenario, parse_scenario, scenario_path


def test_a_bare_name_is_a_file_of_the_scenarios_directory():
    assert scenario_path("saturation") == SCENARIO_DIR / "saturation.toml"
    assert {"reference", "saturation"} <= set(known_scenarios())


def test_a_path_is_a_path(tmp_path):
    copy = tmp_path / "mine.toml"
    copy.write_text((SCENARIO_DIR / "reference.toml").read_text())
    assert load_scenario(str(copy)).name == "reference"
    assert load_scenario(SCENARIO_DIR / "reference.toml").name == "reference"


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as exc:
        load_scenario("saturaton")
    message = str(exc.value)
    assert "did you mean 'saturation'" in message
    assert all(name in message for name in known_scenarios())


def test_the_saturation_scenario_floods_beyond_its_uplink_and_escalates():
    scenario = load_scenario("saturation")
    assert scenario.upstream is not None and scenario.escalation is not None
    assert scenario.escalation["uplink_bps"] == scenario.upstream.uplink_bps
    ntp_bytes = 468                     # bytes of one NTP monlist reply (IP datagram)
    for attack in scenario.attacks:
        assert attack.pps * ntp_bytes * 8 > 2 * scenario.upstream.uplink_bps
    assert scenario.upstream.rtbh_tenants == ("gamma",)


@pytest.mark.parametrize(("table", "message"), [
    ({"upstream": {"uplink_bps": 10, "uplink": 3}}, "upstream.uplink: unknown key"),
    ({"upstream": {"uplink_bps": 10, "rtbh_tenants": ["delta"]}}, "unknown tenant 'delta'"),
    ({"upstream": {"uplink_bps": 10}, "escalation": {"flowspec_at": 2}}, "[escalation] flowspec_at"),
    ({"escalation": {"flowspec_at": 0.5}}, "escalation: needs an [upstream] table"),
])
def test_bad_upstream_tables_are_refused_with_the_key(table, message):
    data = {"scenario": {"name": "x", "duration_s": 10}, **table}
    with pytest.raises(ValueError) as exc:
        parse_scenario(data)
    assert message in str(exc.value)


def test_seawall_demo_refuses_an_unknown_scenario_before_building_anything():
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "demo", "--scenario", "saturaton", "--lab", "zz"],
                       capture_output=True, text=True, timeout=60, env={**os.environ})
    assert r.returncode == 2
    assert "did you mean 'saturation'" in r.stderr and "reference, saturation" in r.stderr
