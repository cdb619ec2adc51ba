"""`seawall bench escalation`: time from a flood's first packet to its FlowSpec route in the peer's
table, and to the flood gone from the upstream link.

The lab in its upstream mode (`appliance.lab.upstream`): the flood comes from behind the upstream
router, whose link to the appliance is shaped to UPLINK_BPS; the router runs BIRD 2 and the lab's
edge-router agent, which enforces the FlowSpec routes it receives as nftables rules; `seawall run`
escalates to it. Each run floods another of alpha's servers (so no route of an earlier run is
mistaken for this one's), polls BIRD's FlowSpec table until the route for that server is there,
then the router's uplink counter until the flood handed to the link is below 5 % of its rate. The
onset is the generator's: its first per-second record arrives one second after its first frame.
Figures only, never pass/fail.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Callable

from appliance.lab import Lab, lab_config
from appliance.lab.attack import AttackSpec
from appliance.lab.saturation import GONE_SHARE
from appliance.lab.traffic import TrafficProfile, TrafficRun
from appliance.lab.upstream import RoutedAttack, Upstream
from appliance.runner import ApplianceProcess

UPLINK_BPS = 10_000_000        # bits/s: a lab uplink the flood (pps x ~470-byte NTP replies) fills
INTERNET_BPS = 100_000_000     # bits/s: the attacker's link, pacing the flood
SERVERS = ("s1", "s2", "s3")   # alpha's servers, one per run in turn
LEGIT = TrafficProfile(game_pps=200, http_rps=10, dns_qps=50)
ROUTE_TIMEOUT_S = 60.0         # seconds from the flood's start to give up on the route
POLL_S = 0.02                  # seconds between reads of BIRD's table
ONSET_TIMEOUT_S = 5.0          # seconds to wait for the generator's first per-second record
GONE_TIMEOUT_S = 20.0          # seconds from the route to give up on the flood leaving the uplink
GONE_WINDOW_S = 1.0            # seconds of uplink samples the flood's rate is taken over


def run(runs: int = 3, pps: int = 20_000, progress: Callable[[str], None] = lambda _m: None) -> dict:
    from dataplane.dataplane import purge  # noqa: PLC0415 - imports bcc

    tag = uuid.uuid4().hex[:6]
    lab, tmp = Lab(f"e{tag}"), tempfile.TemporaryDirectory(prefix="seawall-bench-escalation-")
    upstream = Upstream(lab, UPLINK_BPS, tmp.name, internet_bps=INTERNET_BPS)
    peer = upstream.peer
    proc = None
    config = lab_config(lab.name)
    try:
        progress(f"lab {lab.name}, its upstream router (BIRD peer, shaped uplink) up")
        lab.up()
        upstream.up()
        config["appliance"]["state_dir"] = f"{tmp.name}/state"
        config["securewatch"] = {"enabled": False}
        config["bgp"] = upstream.bgp_config()
        config["escalation"] = {"uplink_bps": UPLINK_BPS, "flowspec_at": 0.5, "hold_down_s": 30}
        proc = ApplianceProcess(config, f"{tmp.name}/seawall.toml", f"{tmp.name}/seawall.log").start()
        deadline = time.monotonic() + 30
        while not peer.established():
            if time.monotonic() > deadline:
                raise RuntimeError("the BGP session with the lab's BIRD did not come up in 30 s")
            time.sleep(0.1)  # poll interval while the session opens
        TrafficRun(lab, 4.0, LEGIT).start().wait(60)
        results = []
        for i in range(runs):
            server = lab.server(SERVERS[i % len(SERVERS)])
            progress(f"run {i + 1}/{runs}: ntp flood at {pps:,} pps on {server.ipv4}")
            results.append(_one(lab, upstream, server.ipv4, pps))
            progress(f"  FlowSpec route at the peer {results[-1]['route_s']} s, flood gone from the uplink "
                     f"{results[-1]['gone_s']} s after the first packet")
        return {"runs": results, "pps": pps, "uplink_bps": UPLINK_BPS,
                "route_s_median": round(statistics.median(r["route_s"] for r in results), 2),
                "gone_s_median": round(statistics.median(r["gone_s"] for r in results), 2)}
    finally:
        if proc is not None:
            proc.stop()
        purge(config["appliance"]["bpffs"])
        upstream.down()
        lab.down()
        tmp.cleanup()


def _one(lab: Lab, upstream: Upstream, target: str, pps: int) -> dict:
    peer = upstream.peer
    onset: list[float] = []
    attack = RoutedAttack(lab, AttackSpec("ntp", target, pps=pps, duration=ROUTE_TIMEOUT_S + GONE_TIMEOUT_S))
    attack.on_record = lambda record: onset.append(time.time() - 1.0) if record.get("type") == "second" else None
    wanted = f"flow4 {{ dst {target}/32;"
    attack.start()
    try:
        deadline = time.monotonic() + ROUTE_TIMEOUT_S
        while not any(route.startswith(wanted) for route in peer.flow4()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no FlowSpec route for {target} at the peer within {ROUTE_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)
        seen = time.time()
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while True:
            now = time.time()
            rate = upstream.flood_pps(now - GONE_WINDOW_S, now)
            if rate is not None and rate < GONE_SHARE * pps:
                # The last sample at that rate: the flood left the link no later than it.
                gone = upstream.samples[-1].time
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the flood at {target} still reached the uplink {GONE_TIMEOUT_S:.0f} s "
                                   f"after its FlowSpec route")
            time.sleep(POLL_S)
        # The route may come before the generator's first per-second record (1 s after its first frame).
        deadline = time.monotonic() + ONSET_TIMEOUT_S
        while not onset and time.monotonic() < deadline:
            time.sleep(POLL_S)
    finally:
        attack.kill()
    if not onset:
        raise RuntimeError("the generator reported no second: no onset to measure from")
    return {"target": target, "route_s": round(seen - onset[0], 2), "gone_s": round(gone - onset[0], 2)}
