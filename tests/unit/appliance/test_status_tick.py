"""`seawall status` shows the policy tick's wall and CPU time against its interval, and how many ticks
overran it (issue 18: a tick at a million destinations outlasts the default second on a slow CPU)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.commands.status import render_human
from securewatch import metrics


def _summary(policy: dict) -> dict:
    return {"control_plane": "running", "status_age_s": 0.2, "dataplane_attached_to": [], "tenants": {},
            "policy": {"tick_s": 1.0, "open_incidents": 0, "rules_installed": 0, **policy}}


def _tick_line(out: str) -> str | None:
    return next((x for x in out.splitlines() if x.startswith("policy tick:")), None)


def test_status_shows_the_tick_and_its_overruns():
    overran = _summary({"ticks_overrun": 37, "last_tick": {"wall_ms": 1204.4, "cpu_ms": 981.2,
                                                           "destinations": 1_000_000}})
    line = _tick_line(render_human(overran))
    assert line == ("policy tick:   1,204 ms (981 ms CPU) of every 1,000 ms, 1,000,000 destinations; "
                    "37 ticks overran it (raise tick_ms: detection slows by as much)")
    calm = _tick_line(render_human(_summary({"ticks_overrun": 0, "last_tick": {"wall_ms": 95.0, "cpu_ms": 90.0,
                                                                                "destinations": 100_000}})))
    assert calm == "policy tick:   95 ms (90 ms CPU) of every 1,000 ms, 100,000 destinations"
    # A status file from before the wall time was kept: no tick line, nothing fails.
    assert _tick_line(render_human(_summary({"last_tick": {"cpu_ms": 90.0}}))) is None


def test_metrics_carry_the_tick_wall_time_and_the_overruns():
    text = metrics.render(_summary({"ticks_overrun": 37, "last_tick": {"wall_ms": 1204.4, "cpu_ms": 981.2}}))
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    assert families["seawall_policy_tick_seconds"].samples[0].value == pytest.approx(1.2044)
    assert families["seawall_policy_ticks_overrun"].samples[0].value == 37
    assert families["seawall_policy_tick_cpu_seconds"].samples[0].value == pytest.approx(0.9812)


def test_status_and_metrics_show_events_lost_to_a_full_subscriber_queue():
    tick = {"last_tick": {"wall_ms": 95.0, "cpu_ms": 90.0, "destinations": 100_000}}
    lost = render_human(_summary({**tick, "events_dropped": 9_636}))
    assert ("events dropped: 9,636 (a subscriber's queue stayed full: SecureWatch, the notifiers or the fleet "
            "agent missed them; see the log)") in lost.splitlines()
    assert not any(x.startswith("events dropped") for x in render_human(_summary({**tick, "events_dropped": 0})).splitlines())
    text = metrics.render(_summary({**tick, "events_dropped": 9_636}))
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    assert families["seawall_policy_events_dropped"].samples[0].value == 9_636


def test_status_and_metrics_show_the_attacked_destinations_rows_left_out():
    tick = {"last_tick": {"wall_ms": 95.0, "cpu_ms": 90.0, "destinations": 100_000}}
    out = render_human(_summary({**tick, "attacked_rows_left_out": 19_000})).splitlines()
    assert ("per-second rows left out: 19,000 (attacked destinations past the busiest 1,000 a second; their "
            "minute rollups are kept)") in out
    assert not any(x.startswith("per-second rows") for x in render_human(_summary(tick)).splitlines())
    text = metrics.render(_summary({**tick, "attacked_rows_left_out": 19_000}))
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    assert families["seawall_attacked_rows_left_out"].samples[0].value == 19_000


def test_status_names_the_policy_knobs_set_in_the_file():
    from policy.config import FILE_KEYS, PolicyConfig  # noqa: PLC0415

    knobs = {key: getattr(PolicyConfig(), key) for key in FILE_KEYS}
    tick = {"last_tick": {"wall_ms": 95.0, "cpu_ms": 90.0, "destinations": 100_000}}
    out = render_human(_summary({**tick, "knobs": {**knobs, "quiet_s": 12.0, "fast_confirm_confidence": None,
                                                   "carpet_min_destinations": 16, "forget_after_s": 2592000.0,
                                                   "k_sigma": 3.5}})).splitlines()
    assert ("policy knobs:  k_sigma 3.5, forget_after_s 2592000, carpet_min_destinations 16, "
            "fast_confirm_confidence false, quiet_s 12 "
            "([policy]; the others at their defaults)") in out
    assert not any(x.startswith("policy knobs") for x in render_human(_summary({**tick, "knobs": knobs})).splitlines())
