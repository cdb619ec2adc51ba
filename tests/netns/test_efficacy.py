"""Efficacy on attacks the engine was not tuned for (issue 20): for each generator mode, what
reaches the servers from 8 s after onset, and what the legitimate clients lose meanwhile.

One lab and one appliance (default policy, fresh state) serve every row; each row hits its own
server or prefix, carpets last on their tenant so no rule of theirs helps another row. As in the
issue, the reflection and random-port rows hit servers with no legitimate traffic of the flood's
kind (the game server sees no TCP, web servers no UDP: the clients send no DNS here), so the
engine has no legitimate samples to check a header signature against. Every row
runs at ATTACK_PPS, the steady floods for STEADY_S and the pulse and the ramp for ATTACK_S (both
shortened from the issue's 22 s to bound the tier's runtime); the
table is printed row by row (`-s`). Targets: <= 1 % through after 8 s, legitimate TCP 100 %,
legitimate UDP >= 99.9 %. The legitimate clients run for the whole module (from the appliance
fixture on); a row's account is their seconds from 2 s before its onset to 2 s after its end."""

from __future__ import annotations

import dataclasses
import time

import pytest

from appliance.lab import Lab
from appliance.lab.attack import AttackSpec
from appliance.lab.topology import SPOOF_V4, SPOOF_V6
from appliance.lab.traffic import TrafficProfile, TrafficRun, reported_until, seconds_within
from tests.netns.test_policy_reference import (
    ATTACK_TIMEOUT_S,
    TimedAttack,
    TimedCapture,
    rule_adds,
    start_appliance,
)
from tests.support import running_traffic, started_lab, wait_until

ATTACK_PPS = 20_000          # packets/s, the rate
ATTACK_S = 14.0              # seconds per row: 8 s to mitigate, 6 s measured (the pulse re-floods at 12 s,
                             # the ramp is at full rate from 10 s)
STEADY_S = 11.0              # seconds per row of a constant flood: 8 s to mitigate, 3 s (~60k frames) measured
MEASURE_FROM_S = 8.0         # seconds after onset from which the flood should be gone
MAX_THROUGH = 0.01           # share of the flood that may reach the servers after MEASURE_FROM_S
RAMP_S = 10.0                # seconds from 0 to ATTACK_PPS (the generator's 60 s ramp, shortened)
PULSE = (2.0, 2.0)           # seconds on, seconds off
LEGIT = TrafficProfile(game_pps=200, http_rps=10, dns_qps=0)   # game UDP to s1, HTTP to every web server
LEGIT_RUN_S = 600.0          # seconds: the module's legitimate clients, stopped after the last row
LEGIT_MARGIN_S = 2.0         # seconds of legitimate traffic accounted before the onset and after the end


@dataclasses.dataclass(frozen=True)
class Row:
    spec: AttackSpec
    servers: tuple[str, ...]          # the servers the flood's frames are addressed to


def _rows(lab: Lab) -> dict[str, Row]:
    def server(name: str) -> str:
        return lab.server(name).ipv4

    alpha = ("s1", "s2", "s3")
    beta = ("s4", "s5", "s6")
    return {
        "synack": Row(AttackSpec("synack", server("s1"), pps=ATTACK_PPS, duration=STEADY_S), ("s1",)),
        "udp-random": Row(AttackSpec("udp-random", server("s8"), pps=ATTACK_PPS, duration=STEADY_S), ("s8",)),
        "pulse": Row(AttackSpec("udp", server("s2"), pps=ATTACK_PPS, duration=ATTACK_S, pulse=PULSE), ("s2",)),
        # Tenant beta's clients send few packets (10 HTTP requests/s over three servers): its rows once
        # kept the ~1,000 pps rate-limit fallback (~5 % through) when the ramp's head had been kept as
        # legitimate UDP or too few legitimate samples placed the TTL band (issue 20).
        "ramp": Row(AttackSpec("udp", server("s5"), pps=ATTACK_PPS, duration=ATTACK_S, ramp=RAMP_S), ("s5",)),
        # The first row: ~320 pps to each address of a /26, 20 kpps for the tenant.
        "carpet": Row(AttackSpec("carpet", "198.51.100.0/26", pps=ATTACK_PPS, duration=STEADY_S), alpha),
        "carpet-v6": Row(AttackSpec("carpet", "2001:db8:b::/64", pps=ATTACK_PPS, duration=STEADY_S), beta),
    }


ROW_NAMES = ("synack", "udp-random", "pulse", "ramp", "carpet", "carpet-v6")


@pytest.fixture(scope="module")
def lab(request):
    return started_lab(request, "e")


@pytest.fixture(scope="module")
def appliance(lab, tmp_path_factory, request):
    proc = start_appliance(lab, tmp_path_factory.mktemp("efficacy"), request)
    TrafficRun(lab, 3.0, LEGIT).start().wait(60)   # first contacts happen here, not in a row's account
    return proc


@pytest.fixture(scope="module")
def legit(lab, appliance, request):
    """The legitimate clients, running from before the first row to after the last."""
    return running_traffic(lab, LEGIT_RUN_S, LEGIT, request)


def sent_between(per_second: list[int], start: float, end: float) -> float:
    """Frames sent from `start` to `end` seconds after onset; record k counts second [k-1, k)."""
    total = 0.0
    for k, frames in enumerate(per_second, start=1):
        overlap = max(0.0, min(end, k) - max(start, k - 1))
        total += frames * overlap
    return total


@pytest.mark.parametrize("name", ROW_NAMES)
def test_efficacy_row(lab, appliance, legit, name, request):
    row = _rows(lab)[name]
    attack = TimedAttack(lab, row.spec)
    request.addfinalizer(attack.process.kill)
    attack.start()
    wait_until(lambda: attack.onset is not None, timeout=ATTACK_TIMEOUT_S, what=f"{name}: the attack's onset")
    spoof = SPOOF_V6 if ":" in row.spec.target else SPOOF_V4
    wait_until(lambda: time.time() >= attack.onset + MEASURE_FROM_S, timeout=MEASURE_FROM_S + 2,
               interval=0.05, what="the measurement window")
    captures = [TimedCapture(lab.server(s).namespace, lab.HOST_IF, f"src net {spoof}", keep=0).start()
                for s in row.servers]
    try:
        summary = attack.wait(ATTACK_TIMEOUT_S)
    finally:
        for capture in captures:
            capture.stop()
    start = min(c.started for c in captures) - attack.onset
    sent_after = sent_between(summary["per_second"], start, summary["elapsed_s"])
    reached = sum(c.matched for c in captures)
    # The legitimate clients' seconds from before the onset to after the end, once all are reported.
    window = (attack.onset - LEGIT_MARGIN_S, attack.ended + LEGIT_MARGIN_S)
    wait_until(lambda: reported_until(legit.seconds) >= window[1] or not legit.running, timeout=30,
               what="the legitimate clients' seconds after the flood")
    seconds = seconds_within(legit.seconds, *window)
    assert len(seconds) >= row.spec.duration + 2 * LEGIT_MARGIN_S - 1, (window, len(seconds))   # the run covered it
    # Legitimate traffic to every server: a rule too wide for one row would show elsewhere too.
    tcp_sent = tcp_ok = udp_sent = udp_ok = 0
    for record in seconds:
        for stats_of in record["servers"].values():
            for service, stats in stats_of.items():
                if service == "http":
                    tcp_sent, tcp_ok = tcp_sent + stats["sent"], tcp_ok + stats["ok"]
                else:
                    udp_sent, udp_ok = udp_sent + stats["sent"], udp_ok + stats["ok"]
    per_second = [(r["second"], r["services"]) for r in seconds]
    through = reached / sent_after if sent_after else 0.0
    # The first rule for this row's target (the tenant, dst None, for a carpet) after the onset.
    scope = None if "/" in row.spec.target else row.spec.target
    rules = [r for r in rule_adds_all(appliance) if r["at"] >= attack.onset - 1.0 and r.get("dst") == scope]
    first = f"{rules[0]['at'] - attack.onset:.2f} s ({rules[0]['kind']}: {rules[0]['rule']})" if rules else "none"
    print(f"\n| {name} | {row.spec.vector} -> {row.spec.target} | {100 * through:.1f} % ({reached}/{sent_after:.0f})"
          f" | TCP {tcp_ok}/{tcp_sent} | UDP {udp_ok}/{udp_sent} | first rule {first}"
          f" | then {[r['kind'] for r in rules[1:]]} |")
    assert sent_after > 0.2 * ATTACK_PPS, (summary, start)
    assert through <= MAX_THROUGH, (f"{name}: {reached}/{sent_after:.0f} reached the servers after "
                                    f"{MEASURE_FROM_S} s; rules {[(r['kind'], r['reason']) for r in rules]}")
    assert tcp_sent > 0 and tcp_ok == tcp_sent, per_second
    assert udp_ok >= 0.999 * udp_sent, per_second


def rule_adds_all(appliance) -> list[dict]:
    """Every `rule.add` record of the appliance, oldest first (`rule_adds` filters by vector)."""
    records: list[dict] = []
    for vector in ("udp_flood", "tcp_synack_reflection", "tcp_ack_flood", "carpet_bombing"):
        records += rule_adds(appliance, vector)
    return sorted(records, key=lambda r: r["at"])
