"""Issue 15, items 4 and 5 (the lab's side): every botnet vector completes real TCP handshakes with
the shop and, with nothing filtering (a Linux bridge instead of the appliance), really takes the
shop from the people browsing it; the flash crowd is served in full and hurts no one.

The legitimate success measured here during each flood is the "without mitigation" figure of the
issue (recorded as the test's `legit_success_without_mitigation` property and printed).
"""

from __future__ import annotations

import ipaddress
import uuid

import pytest

from appliance.lab import Lab
from appliance.lab.attack import AttackProcess, AttackSpec
from appliance.lab.botnet import BotnetPlan
from appliance.lab.labserver import ShopLimits, counts_from, read_stats
from appliance.lab.traffic import TrafficProfile, TrafficRun
from tests.support import wait_until

LEGIT_S = 2.0            # seconds of browsing measured while the attack runs
ATTACK_S = 60.0          # seconds of attack at most: it is stopped (SIGINT) once the browsers are done, so
                         # however slowly they start on a busy VM, all they measure happens during the attack
BROWSE = TrafficProfile(game_pps=0, http_rps=0, dns_qps=0, browse_rps=40)   # pages/s, half HTTPS
PROCESS_TIMEOUT_S = 30.0
DEGRADED_BELOW = 0.8     # the browsers' success during a flood on the unprotected shop stays below this
LIMITS = ShopLimits()    # the shop's limits (the lab starts it with the defaults)


@pytest.fixture(scope="module")
def lab(request):
    lab = Lab(f"b{uuid.uuid4().hex[:6]}")
    request.addfinalizer(lab.down)
    lab.up(linux_bridge=True)
    return lab


def _legit_success(summary: dict, services: tuple[str, ...] = ("browse", "browse-tls")) -> float:
    cells = [summary["services"][s] for s in services]
    sent = sum(c["sent"] for c in cells)
    assert sent >= BROWSE.browse_rps * LEGIT_S * 0.8 * len(services) / 2, cells   # the browsers really browsed
    return sum(c["ok"] for c in cells) / sent


def _idle_shop(lab: Lab) -> dict:
    """The shop's stats once the last run's connections are gone (each test starts from a quiet shop)."""
    return wait_until(lambda: (s := read_stats(lab.shop_stats)) and s["active_connections"] == 0 and s,
                      timeout=20, what="the shop without open connections")


def _under_attack(lab: Lab, vector: str, **options) -> tuple[dict, dict, dict, dict]:
    """(bots' summary, browsers' summary, shop stats before, after): the browsers start once the
    botnet has run for a second, so everything they measure happens during the attack."""
    before = _idle_shop(lab)
    spec = AttackSpec(vector, lab.shop_server.ipv4, duration=ATTACK_S, **options)
    with AttackProcess(lab, spec) as attack:
        wait_until(lambda: attack.seconds or not attack.running, timeout=PROCESS_TIMEOUT_S,
                   what=f"the {vector} bots' first second")
        with TrafficRun(lab, LEGIT_S, BROWSE) as browsers:
            legit = browsers.wait(PROCESS_TIMEOUT_S)
        assert attack.running, f"the {vector} bots ended before the browsers did"
        bots = attack.stop()
    assert bots is not None, f"the {vector} bots printed no summary: {attack.failure}"
    return bots, legit, before, _idle_shop(lab)


@pytest.mark.parametrize("vector", ["http-flood", "conn-flood", "slowloris", "tls-flood"])
def test_issue15_botnet_vector_completes_handshakes_and_degrades_the_unprotected_shop(lab, vector,
                                                                                     record_property):
    bots, legit, before, after = _under_attack(lab, vector)
    # A TLS handshake flood hits the TLS endpoint: its clients are the ones it locks out (HTTP on the
    # same server keeps a turn of the event loop between two handshakes, unless the VM is busy).
    success = _legit_success(legit, ("browse-tls",) if vector == "tls-flood" else ("browse", "browse-tls"))
    record_property("legit_success_without_mitigation", round(success, 4))
    print(f"\n{vector}: legitimate success without mitigation {success:.1%} "
          f"({bots['achieved_rate']:,.0f} {bots['unit']}/s from {bots['bots']:,} bots)")
    prefix = BotnetPlan(vector, lab.shop_server.ipv4).routed_prefix
    # Real handshakes: the bots' connects completed, and the shop accepted connections from their addresses.
    assert bots["connected"] > 0 and bots["sources"] == str(prefix)
    was, now = counts_from(before, str(prefix)), counts_from(after, str(prefix))
    assert now["connections"] > was["connections"]
    assert now["sources"] > 100   # many real sources
    if vector == "http-flood":
        assert bots["responses_ok"] > 0 and now["requests"] - was["requests"] > 1000
        assert after["totals"].get("rejected_busy", 0) > before["totals"].get("rejected_busy", 0)   # 503s
    elif vector in ("conn-flood", "slowloris"):
        assert bots["connected"] >= LIMITS.max_connections    # the whole table, held
    else:
        # The shop did the expensive half of each handshake the bots then dropped.
        assert bots["tls_answered"] > 100
        assert after["totals"]["tls_failed"] - before["totals"].get("tls_failed", 0) >= bots["tls_answered"] * 0.9
    assert success < DEGRADED_BELOW, f"{vector} did not hurt the shop: browsers {success:.1%}"
    # The bots' prefix is routed only while they run: spoofed floods' replies are blackholed again.
    routes = lab.exec("up", "ip", "-4", "route", "show", str(prefix)).stdout
    assert routes.strip() == "", routes


def test_issue15_flash_crowd_is_served_in_full_and_hurts_no_one(lab, record_property):
    bots, legit, before, after = _under_attack(lab, "flash-crowd")
    success = _legit_success(legit)
    record_property("legit_success_during_flash_crowd", round(success, 4))
    assert bots["clients"] >= 0.8 * bots["elapsed_s"] * 30 and bots["clients_ok"] > 0   # 30 new clients/s asked
    assert bots.get("request_failed", 0) == 0 and bots["success_rate"] == 1.0
    prefix = BotnetPlan("flash-crowd", lab.shop_server.ipv4).routed_prefix
    crowd = [s for s, row in after["sources"].items() if ipaddress.ip_address(s) in prefix and row[1]]
    assert len(crowd) >= bots["clients"] * 0.9    # each client a new address...
    assert max(after["sources"][s][1] for s in crowd) <= 6   # ...with a few requests each (2 pages of 3)
    assert success >= 0.99, f"browsers lost requests during a flash crowd: {success:.1%}"
