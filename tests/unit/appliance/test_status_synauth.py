"""`seawall status` and `/metrics` show SYN authentication's counters (issue 19), from the status's
`synauth` (`Dataplane.read_synauth_stats()`)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from appliance.commands.status import render_human
from securewatch import metrics

SYNAUTH = {"synack_sent": 161935, "synack_budget": 0, "cookie_valid": 40, "splice_syn": 40, "splice_open": 40}


def _summary(**extra) -> dict:
    return {"control_plane": "running", "status_age_s": 0.2, "dataplane_attached_to": [], "tenants": {}, **extra}


def test_status_prints_the_nonzero_synauth_counters():
    out = render_human(_summary(synauth=SYNAUTH))
    line = next(x for x in out.splitlines() if x.startswith("SYN authentication:"))
    assert "synack_sent 161935" in line and "splice_open 40" in line and "synack_budget" not in line
    assert "SYN authentication" not in render_human(_summary())          # an older status file: nothing


def test_metrics_carry_the_synauth_counters():
    families = {f.name: f for f in text_string_to_metric_families(metrics.render(_summary(synauth=SYNAUTH)).decode())}
    samples = {s.labels["event"]: s.value for s in families["seawall_synauth_events"].samples
               if s.name.endswith("_total")}
    assert samples == {name: float(n) for name, n in SYNAUTH.items()}
    assert "seawall_synauth_events" not in {f.name for f in text_string_to_metric_families(
        metrics.render(_summary()).decode())}


def test_status_and_metrics_carry_the_splice_gate():
    """Open, the gate costs TCP packets a lookup: `seawall status` says so, and how often it was closed."""
    gate = {"open": True, "closes": 2, "active_destinations": 3}
    line = next(x for x in render_human(_summary(splice_gate=gate)).splitlines() if x.startswith("splice gate:"))
    assert line == ("splice gate:   open, 3 destinations splice active at the last look; closed 2 times since the "
                    "control plane started")
    closed = render_human(_summary(splice_gate={**gate, "open": False}))
    assert "splice gate:   closed; closed 2 times" in closed
    never = {"open": False, "closes": 0, "active_destinations": 0}
    assert "splice gate" not in render_human(_summary(splice_gate=never))       # the usual appliance: nothing
    assert "splice gate" not in render_human(_summary())
    families = {f.name: f for f in text_string_to_metric_families(metrics.render(_summary(splice_gate=gate)).decode())}
    assert families["seawall_splice_gate_open"].samples[0].value == 1.0
    assert families["seawall_splice_gate_closes"].samples[0].value == 2.0
    families = {f.name: f for f in text_string_to_metric_families(metrics.render(_summary(splice_gate=never)).decode())}
    assert families["seawall_splice_gate_open"].samples[0].value == 0.0
