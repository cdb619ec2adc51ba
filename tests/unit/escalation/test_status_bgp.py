"""Issue 14, item 5: `seawall status` shows the BGP sessions and what is announced upstream."""

from __future__ import annotations

from appliance.commands.status import render_human, summarize


def test_status_shows_sessions_announcements_and_speaker_restarts():
    report = {"pid": 1, "updated": 100.0, "tenants": {}, "interfaces": [], "bgp": {
        "peers": [{"address": "192.0.2.2", "peer_as": 64500, "state": "established", "uptime_s": 42.0}],
        "announcements": [{"kind": "flowspec"}, {"kind": "flowspec"}, {"kind": "rtbh"}],
        "speaker": {"running": True, "restarts": 1}}}
    summary = summarize(report, [], 100.5)
    assert summary["bgp"]["peers"][0]["state"] == "established"      # --json carries the status's bgp as is
    out = render_human(summary)
    assert "BGP peer:      192.0.2.2 AS64500 established for 42 s" in out
    assert "announced:     2 FlowSpec, 1 RTBH (speaker restarts: 1)" in out
    assert "BGP" not in render_human(summarize({**report, "bgp": None}, [], 100.5))
