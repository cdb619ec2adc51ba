"""Issue 16, the per-server view's data: what the appliance records of each destination after the
policy engine's tick (a real engine over the policy tests' in-memory dataplane): per-second rows for
attacked and the busiest destinations with the learned baseline and the threshold in force, and
minute rollups for every destination with traffic."""

from __future__ import annotations

import pytest

from appliance.destinations import DestinationRecorder
from tests.unit.policy.fakes import udp_frame
from tests.unit.policy.scenarios import GAME, Lab, Tenant, game_legit_frames, syn_flood_frames

ALPHA = Tenant(1, "alpha")
QUIET = ("198.51.100.20", "198.51.100.21")      # two small servers of the tenant
WALL0 = 1.7e9                                   # the Lab's wall clock is WALL0 + its monotonic time


def run(lab: Lab, recorder: DestinationRecorder, seconds: int) -> None:
    for _ in range(seconds):
        lab.run(1)
        recorder.record(lab.engine, WALL0 + lab.t)


@pytest.fixture
def recorded(tmp_path):
    lab = Lab(tmp_path, [ALPHA])
    lab.flow("players", 1, game_legit_frames(), 800.0)
    for i, addr in enumerate(QUIET):
        lab.flow(f"quiet-{i}", 1, [udp_frame("203.0.113.7", addr, 40000 + i, 53)], 5.0 * (i + 1))
    recorder = DestinationRecorder(top_n=1)
    run(lab, recorder, 150)              # past the 120 s warm-up: baselines learned
    return lab, recorder


def test_item2_busiest_destination_has_second_rows_with_baseline_and_threshold(recorded):
    lab, recorder = recorded
    rows = recorder.seconds_after(WALL0 + lab.t - 10)
    assert {r["address"] for r in rows} == {GAME}       # top_n=1: only the busiest each second
    last = rows[-1]
    assert last["tenant"] == "alpha" and last["time"] == int(WALL0 + lab.t)
    udp = 2                                             # TrafficClass.UDP
    assert 700 <= last["pps"][udp] <= 900
    assert 600 <= last["mean"][udp] <= 1000 and last["sigma"][udp] >= 0
    assert last["threshold"][udp] > last["mean"][udp]   # the threshold in force sits above the mean
    assert recorder.seconds_after(WALL0 + lab.t) == []  # nothing newer than the last tick


def test_item2_minute_rollups_cover_the_quiet_destinations(recorded):
    lab, recorder = recorded
    minutes = recorder.minutes_after(0)
    assert {r["address"] for r in minutes} == {GAME, *QUIET}
    full = [r for r in minutes if r["address"] == QUIET[1] and r["samples"] == 60]
    assert full and abs(sum(full[-1]["pps"]) - 10.0) < 1.5 and full[-1]["time"] % 60 == 0


def test_item2_attacked_destination_recorded_each_second_whatever_its_rank(recorded):
    lab, recorder = recorded
    recorder.top_n = 0                                  # no busiest list: only attacked destinations
    lab.flow("syn-flood", 1, syn_flood_frames(GAME), 50_000, attack=True)
    run(lab, recorder, 10)
    rows = recorder.seconds_after(WALL0 + lab.t - 5)
    assert {r["address"] for r in rows} == {GAME} and len(rows) == 5
    syn = 0                                             # TrafficClass.TCP_SYN
    assert all(r["pps"][syn] > r["threshold"][syn] for r in rows)


def test_item2_the_appliance_records_destinations_after_each_engine_tick(tmp_path):
    """The wiring: Appliance.policy_engine's tick callback feeds its recorder, read by SecureWatch
    through destination_seconds/destination_minutes (a reference attack on the game server)."""
    from appliance.config import parse_config  # noqa: PLC0415
    from appliance.service import Appliance  # noqa: PLC0415
    from tenants import TenantSet  # noqa: PLC0415
    from tests.unit.policy.fakes import FakeDataplane, Flow  # noqa: PLC0415

    config = parse_config(f'[appliance]\nstate_dir = "{tmp_path / "state"}"\nbpffs = "{tmp_path / "bpffs"}"\n')
    app = Appliance(config)
    app.tenants = TenantSet.from_dicts([{"id": "alpha", "prefixes": ["198.51.100.0/24"]}])
    app.indices = {"alpha": 1}
    app.dataplane = FakeDataplane()
    app.engine = app.policy_engine(app.dataplane)
    app.dataplane.add_flow(Flow("players", 1, game_legit_frames(), 800.0))
    for t in range(1000, 1004):
        app.dataplane.advance(float(t), 1.0)
        app.engine.tick(float(t + 1))
    rows = app.destination_seconds(0)
    assert rows and {r["address"] for r in rows} == {GAME} and rows[-1]["tenant"] == "alpha"
    # The recorder's count of attacked rows left out reaches the status beside the engine's figures.
    app.dataplane.attachments = []                      # attached to no NIC, no SYN authentication figures
    app.dataplane.read_synauth_stats = dict
    assert app.status()["policy"]["attacked_rows_left_out"] == 0
    app.destinations.attacked_left_out = 7
    status = app.status()["policy"]
    assert status["attacked_rows_left_out"] == 7 and status["events_dropped"] == 0

