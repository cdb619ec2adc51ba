"""Issue 14, item 6: the saturation figures read from the router's events, its uplink counters and the clients."""

from __future__ import annotations

from appliance.lab import saturation

T0 = 1000.0                      # wall clock of the flood's first frame
ROUTE = "flow4 { dst 203.0.113.10/32; proto 17; sport 123; }"


def rates(gone_at: float) -> list[dict]:
    """Uplink samples each 0.5 s from T0 - 2 to T0 + 20: a 20 kpps flood until `gone_at`."""
    out = []
    for i in range(45):
        t = T0 - 2 + 0.5 * i
        flood = 20_000.0 if T0 <= t < gone_at else 0.0
        out.append({"time": t, "flood_pps": flood, "flood_bps": flood * 468 * 8, "legit_bps": 4e5,
                    "sent_bps": 2e7 if flood else 4e5, "dropped_pps": 15_000.0 if flood else 0.0})
    return out


def seconds(started_at: float, bad_from: float, bad_to: float) -> list[dict]:
    """Legitimate records: s7 (the attacked server) and s4, 10 requests each per second; half fail while bad."""
    out = []
    for n in range(1, 31):
        middle = started_at + n - 0.5
        ok = 5 if bad_from <= middle < bad_to else 10
        out.append({"second": n, "servers": {"s7": {"dns": {"sent": 10, "ok": ok if middle < T0 + 8 else 0}},
                                             "s4": {"dns": {"sent": 10, "ok": ok}}}})
    return out


def test_flowspec_figures_from_the_router():
    events = [{"time": T0 + 2.0, "action": "received", "kind": "flowspec", "route": ROUTE},
              {"time": T0 + 2.1, "action": "install", "kind": "flowspec", "route": ROUTE},
              {"time": T0 + 60.0, "action": "remove", "kind": "flowspec", "route": ROUTE}]
    figs = saturation.figures("203.0.113.10", "ntp", (T0, T0 + 30), events=events, rates=rates(T0 + 2.5),
                              uplink_bps=20_000_000, legit_seconds=seconds(T0 - 10, T0, T0 + 2.5),
                              legit_started_at=T0 - 10, server_of={"203.0.113.10": "s7"})
    assert (figs.flowspec_s, figs.enforced_s, figs.rtbh_s) == (2.0, 2.1, None)
    assert figs.flood_gone_s == 2.5                       # the first sample after the rule below 5 % of the peak
    assert figs.withdrawn_s == 30.0                       # after the attack's end
    assert figs.legit_before == 1.0 and figs.legit_saturated == 0.5
    assert figs.peak_flood_bps == 20_000 * 468 * 8 and figs.peak_drops_pps == 15_000
    text = "\n".join(saturation.lines([figs], 20))
    assert "FlowSpec route at the router (BIRD):" in text and "2.00 s after onset" in text
    assert "withdrawn:" in text and "30.00 s after the attack's end" in text


def test_rtbh_figures_keep_the_blackholed_server_apart():
    events = [{"time": T0 + 2.0, "action": "received", "kind": "flowspec", "route": ROUTE},
              {"time": T0 + 7.0, "action": "install", "kind": "rtbh", "route": "203.0.113.10/32"}]
    figs = saturation.figures("203.0.113.10", "ntp", (T0, T0 + 20), events=events, rates=rates(T0 + 7.5),
                              uplink_bps=20_000_000, legit_seconds=seconds(T0 - 10, T0, T0 + 7.5),
                              legit_started_at=T0 - 10, server_of={"203.0.113.10": "s7"})
    assert (figs.enforced_s, figs.rtbh_s, figs.flood_gone_s) == (None, 7.0, 7.5)
    assert figs.withdrawn_s is None                       # still announced at the end of the run
    assert figs.legit_after == 1.0                        # s4: recovered
    assert figs.blackholed_server_after == 0.0            # s7: blackholed with its attack
    text = "\n".join(saturation.lines([figs], 20))
    assert "not enforced (no room at the router)" in text and "RTBH blackhole at the router:" in text
