"""`seawall bench escalation`: time from a flood's first packet to its FlowSpec route in the peer's table.

The lab, `seawall run` with a `[bgp]` section whose uplink the flood fills, and BIRD 2 as the
upstream router in its own namespace (`appliance.lab.bgp_peer`). Each run floods another of
alpha's servers (so no route of an earlier run is mistaken for this one's) and polls BIRD's
FlowSpec table until the route for that server is there. The onset is the generator's: its first
per-second record arrives one second after its first frame. Figures only, never pass/fail.

What it does not measure (issue 14, item 8, second figure): the flood gone from the upstream link
needs a lab router that enforces the FlowSpec routes it receives. The lab's attack generator
transmits its frames with XDP (live frames, `appliance.lab.livegen`) straight onto the router's
link to the appliance, past the router's qdiscs and netfilter hooks, so neither tc shaping nor an
nftables translation of the received routes on the router sees the flood; that needs the
generator to send through the router's forward path, or an XDP enforcer on that link.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Callable

from appliance.lab import Lab, lab_config
from appliance.lab.attack import AttackProcess, AttackSpec
from appliance.lab.bgp_peer import APPLIANCE, LOCAL_AS, PEER, PEER_AS, BirdPeer
from appliance.lab.traffic import TrafficProfile, TrafficRun
from appliance.runner import ApplianceProcess

UPLINK_BPS = 10_000_000        # bits/s: a lab uplink the flood (pps x ~470-byte NTP replies) fills
SERVERS = ("s1", "s2", "s3")   # alpha's servers, one per run in turn
LEGIT = TrafficProfile(game_pps=200, http_rps=10, dns_qps=50)
ROUTE_TIMEOUT_S = 60.0         # seconds from the flood's start to give up on the route
POLL_S = 0.02                  # seconds between reads of BIRD's table
ONSET_TIMEOUT_S = 5.0          # seconds to wait for the generator's first per-second record


def run(runs: int = 3, pps: int = 20_000, progress: Callable[[str], None] = lambda _m: None) -> dict:
    from dataplane.dataplane import purge  # noqa: PLC0415 - imports bcc

    tag = uuid.uuid4().hex[:6]
    lab, tmp = Lab(f"e{tag}"), tempfile.TemporaryDirectory(prefix="seawall-bench-escalation-")
    peer = BirdPeer(f"swb{tag}", tmp.name)
    proc = None
    config = lab_config(lab.name)
    try:
        progress(f"lab {lab.name} and BIRD peer up")
        lab.up()
        peer.up()
        config["appliance"]["state_dir"] = f"{tmp.name}/state"
        config["securewatch"] = {"enabled": False}
        config["bgp"] = {"local_as": LOCAL_AS, "router_id": APPLIANCE, "peers": [
            {"address": PEER, "peer_as": PEER_AS, "flowspec": True, "local_address": APPLIANCE}]}
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
            results.append(_one(lab, peer, server.ipv4, pps))
            progress(f"  FlowSpec route at the peer {results[-1]['route_s']} s after the first packet")
        return {"runs": results, "pps": pps, "uplink_bps": UPLINK_BPS,
                "route_s_median": round(statistics.median(r["route_s"] for r in results), 2)}
    finally:
        if proc is not None:
            proc.stop()
        purge(config["appliance"]["bpffs"])
        peer.down()
        lab.down()
        tmp.cleanup()


def _one(lab: Lab, peer: BirdPeer, target: str, pps: int) -> dict:
    onset: list[float] = []
    attack = AttackProcess(lab, AttackSpec("ntp", target, pps=pps, duration=ROUTE_TIMEOUT_S))
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
        # The route may come before the generator's first per-second record (1 s after its first frame).
        deadline = time.monotonic() + ONSET_TIMEOUT_S
        while not onset and time.monotonic() < deadline:
            time.sleep(POLL_S)
    finally:
        attack.kill()
    if not onset:
        raise RuntimeError("the generator reported no second: no onset to measure from")
    return {"target": target, "route_s": round(seen - onset[0], 2)}
