"""The application-layer detector survives a failing step: only a dataplane without flow accounting
switches it off (a bug inside a tick must not leave its limits and blocks in the kernel for good)."""

from __future__ import annotations

import structlog

from tests.unit.policy.test_appflood import warm_lab


def test_an_attribute_error_inside_a_tick_does_not_switch_the_detector_off(tmp_path, monkeypatch):
    lab = warm_lab(tmp_path, seconds=30)

    def broken(per_source: bool = False):
        raise AttributeError("a bug inside the flow read")

    monkeypatch.setattr(lab.dp, "read_flow_counters", broken)
    with structlog.testing.capture_logs() as logs:
        lab.run(2)
    assert lab.engine.appflood.disabled is None
    assert any(e["event"] == "appflood.observe_failed" for e in logs)
    monkeypatch.undo()
    lab.run(2)
    assert lab.engine.appflood.disabled is None and lab.engine.appflood.servers
