"""A restart within the hold-down: the previous process's routes are announced again only where the
current tenants still allow them; the others are logged and leave the saved state (ExaBGP's stand-in
records what it is told)."""

from __future__ import annotations

import ipaddress
import time

from structlog.testing import capture_logs

from dataplane.api import Range, Rule
from escalation import speaker
from escalation.config import BgpSettings, EscalationSettings, PeerSettings
from escalation.controller import Escalation
from escalation.ladder import IncidentView
from escalation.routes import FLOWSPEC, RTBH
from tenants import Tenant
from tests.support import await_until
from tests.unit.escalation import fake_exabgp

BGP = BgpSettings(64512, "192.0.2.1", (PeerSettings("192.0.2.2", 64500, flowspec=True, rtbh=True),))
SETTINGS = EscalationSettings(uplink_bps=10 ** 9, hold_down_s=600)
ALPHA = Tenant.from_dict({"id": "alpha", "name": "alpha", "prefixes": ["203.0.113.0/26"]})
BETA = Tenant.from_dict({"id": "beta", "name": "beta", "prefixes": ["203.0.113.64/26"],
                         "policy": {"escalate_rtbh": True}})


def incident(iid: str, tid: str, address: str) -> IncidentView:
    return IncidentView(iid, tid, True, (address,),
                        (Rule(0, ipaddress.ip_address(address), proto=17, sport=Range(53, 53)),))


async def test_a_restart_announces_again_only_routes_of_tenants_that_still_allow_them(tmp_path, monkeypatch):
    recorded = tmp_path / "commands.log"
    monkeypatch.setattr(speaker, "exabgp_command", lambda: fake_exabgp.executable(tmp_path))
    monkeypatch.setenv("FAKE_EXABGP_LOG", str(recorded))
    run_dir = tmp_path / "bgp"
    run_dir.mkdir()
    before = Escalation(BGP, SETTINGS, run_dir)          # the previous process (its speaker plays no part)
    before.escalate(incident("inc-a", "alpha", "203.0.113.5"), ALPHA, FLOWSPEC, "noc-alice")
    before.escalate(incident("inc-b", "beta", "203.0.113.70"), BETA, RTBH, "noc-alice")
    assert len(before.saved_announcements()) == 2

    after = Escalation(BGP, SETTINGS, run_dir)           # restarted after tenant beta was removed
    await after.start()
    try:
        with capture_logs() as logs:
            after.step(time.monotonic(), 0.0, [], {"alpha": ALPHA})
        await await_until(lambda: recorded.exists() and "announce flow route" in recorded.read_text(),
                          what="the restored FlowSpec route at ExaBGP")
        assert "203.0.113.70" not in recorded.read_text()
        assert [(a["kind"], a["tenant"]) for a in after.status()["announcements"]] == [(FLOWSPEC, "alpha")]
        [dropped] = [e for e in logs if e["event"] == "bgp.announcement_not_restored"]
        assert (dropped["log_level"], dropped["kind"], dropped["tenant"], dropped["incident"]) == \
            ("warning", RTBH, "beta", "inc-b")
        assert dropped["match"] == {"destination": "203.0.113.70/32"}
        assert dropped["why"] == "tenant 'beta' is not configured any more"
        assert [a["tenant"] for a in after.saved_announcements()] == ["alpha"]     # gone from the saved state
    finally:
        await after.stop()
