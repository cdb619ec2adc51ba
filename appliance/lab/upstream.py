"""The lab's upstream: a flood from behind the router, a shaped uplink, BGP at the router (issue 14, item 6).

Lab scaffolding, not product. The ordinary attack generator puts its frames straight onto the
router's link to the appliance (XDP live frames on `<p>-up`'s `ext`), past the router's qdiscs
and netfilter hooks, so nothing the router enforces could ever touch them. Here the flood comes
from the attacker's host (`<p>-att`, standing for the internet) and is routed by `<p>-up`, as an
upstream router forwards what the internet sends:

```
 <p>-att: generator ─► gen0 ⇄ gen1 ─(forwarding)─► eth0 ─tbf internet_bps─► [att] <p>-up (IP forwarding;
          nftables: FlowSpec rules, uplink counters) [ext] ─tbf uplink_bps─► <p>-ext  Seawall
 <p>-cli ──────────────────────────────────────────► [cli] <p>-up      BIRD 2 ◄─BGP─ root namespace: seawall run
```

- The generator sends live frames into a veth pair of its own inside `<p>-att`; the host forwards
  them out of `eth0`, whose tbf (`internet_bps`) paces them as a fast internet link delivers a
  flood: spread out, not in the generator's 5 ms batches (a batch arriving at once fills the
  uplink's queue and leaves it room between batches, where legitimate packets would slip through
  unharmed; measured: 1 % legitimate loss at 2.8x the uplink without it);
- `ext`'s egress (the router's side of the uplink) is shaped with tc tbf to `uplink_bps`: a flood
  larger than that fills the queue, and every tenant's legitimate traffic loses packets there;
- BIRD 2 runs in `<p>-up` (`BirdPeer(..., netns=<p>-up)`), with a management veth to the root
  namespace where `seawall run` speaks BGP; `EdgeRouterAgent` enforces what BIRD receives;
- `inet seawall_lab_uplink` counts, after the FlowSpec rules (forward hook, priority filter + 10),
  what the attacker's and the clients' links hand to the uplink: the flood and the legitimate
  load offered to the link (`Upstream.samples`), with tc's counters of the shaped queue.

`RoutedAttack` runs the live-frames generator that way (`python -m appliance.lab.upstream ARGS`,
the flags and JSON lines of `seawall attack`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import subprocess
import sys
import threading
import time

from appliance.lab import netlink
from appliance.lab.attack import MULTI_DEFAULT, AttackProcess, AttackSpec
from appliance.lab.bgp_peer import APPLIANCE, LOCAL_AS, PEER, PEER_AS, BirdPeer
from appliance.lab.edge_router import EdgeRouterAgent
from appliance.lab.topology import Lab, LabError
from appliance.signals import stop_on_signals

ATTACKER_LINK = "att"             # in <p>-up: the router's link to the attacker's host
GENERATOR_LINK, GENERATOR_PEER = "gen0", "gen1"   # in <p>-att: the generator's veth pair
DEFAULT_INTERNET_BPS = 200_000_000  # bits/s of the attacker's link: paces the flood
CLIENT_LINK = "cli"               # in <p>-up: the router's link to the legitimate clients
UPLINK_TABLE = "seawall_lab_uplink"
TBF_LATENCY_MS = 50               # ms of queue the shaper holds before it drops (a router's buffer)
TBF_MIN_BURST_BYTES = 15_000      # bytes: at least ten full frames, else tbf cannot reach its rate
PACING_BURST_BYTES = 3_000        # bytes: the pacer lets two full frames go at once, no more
SAMPLE_S = 0.25                   # seconds between samples of the uplink counters


def tbf_burst(uplink_bps: int) -> int:
    """Bucket depth in bytes: 10 ms at the rate (tbf needs rate / HZ at least), never under ten frames."""
    return max(TBF_MIN_BURST_BYTES, uplink_bps // 8 // 100)


def _run(argv: list[str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"{what}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


@dataclasses.dataclass(frozen=True, slots=True)
class UplinkSample:
    time: float                   # wall clock
    flood_packets: int            # from the attacker's link, handed to the uplink (after FlowSpec)
    flood_bytes: int
    legit_packets: int            # from the clients' link, handed to the uplink
    legit_bytes: int
    sent_bytes: int               # what the shaped queue sent onto the link
    dropped: int                  # packets the shaped queue dropped (the link was full)


class Upstream:
    """The lab's upstream mode for the lab `lab` (already up): shaping, routed floods, BIRD and the agent."""

    def __init__(self, lab: Lab, uplink_bps: int, workdir: str | pathlib.Path, *, bgp: bool = True,
                 flowspec_capacity: int | None = None, internet_bps: int = DEFAULT_INTERNET_BPS) -> None:
        self.lab, self.uplink_bps, self.internet_bps = lab, int(uplink_bps), int(internet_bps)
        self.router = lab.ns("up")
        self.peer = BirdPeer(f"{lab.name}g", pathlib.Path(workdir), netns=self.router) if bgp else None
        self.agent: EdgeRouterAgent | None = None
        self.flowspec_capacity = flowspec_capacity
        self.samples: list[UplinkSample] = []
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()

    # -- life cycle -------------------------------------------------------------
    def up(self) -> Upstream:
        try:
            self._attacker_path()
            self._shape()
            self._count()
            if self.peer is not None:
                self.peer.up()
                self.agent = EdgeRouterAgent(self.router, self.peer.birdc,
                                             flowspec_capacity=self.flowspec_capacity).start()
            self._sampler = threading.Thread(target=self._sample_loop, name=f"uplink-{self.lab.name}", daemon=True)
            self._sampler.start()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(5)
        if self.agent is not None:
            self.agent.stop()
        if self.peer is not None:
            self.peer.down()
        ns = ["ip", "netns", "exec", self.router]
        subprocess.run([*ns, "nft", "delete", "table", "inet", UPLINK_TABLE], capture_output=True)
        subprocess.run([*ns, "tc", "qdisc", "del", "dev", self.lab.UPSTREAM_IF, "root"], capture_output=True)
        att = ["ip", "netns", "exec", self.lab.ns("att")]
        subprocess.run([*att, "tc", "qdisc", "del", "dev", self.lab.HOST_IF, "root"], capture_output=True)
        subprocess.run([*att, "ip", "link", "del", GENERATOR_LINK], capture_output=True)

    def __enter__(self) -> Upstream:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def bgp_config(self) -> dict:
        """The appliance's `[bgp]` table for a session with this router's BIRD."""
        return {"local_as": LOCAL_AS, "router_id": APPLIANCE,
                "peers": [{"address": PEER, "peer_as": PEER_AS, "flowspec": True, "rtbh": True,
                           "rtbh_communities": ["65535:666"], "local_address": APPLIANCE}]}

    # -- building ----------------------------------------------------------------------
    def _attacker_path(self) -> None:
        # Spoofed sources arrive on gen1 and on the router's `att`: no reverse-path filter there.
        att = self.lab.ns("att")
        netlink.write_sysctls(self.router, {f"net.ipv4.conf.{ATTACKER_LINK}.rp_filter": 0})
        with netlink.iproute(att) as ipr:
            if GENERATOR_LINK not in netlink.link_names(ipr):
                netlink.add_veth(ipr, GENERATOR_LINK, GENERATOR_PEER)
            for ifname in (GENERATOR_LINK, GENERATOR_PEER):
                netlink.set_up(ipr, ifname)
        netlink.write_sysctls(att, {"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.rp_filter": 0,
                                    f"net.ipv4.conf.{GENERATOR_PEER}.rp_filter": 0})
        # Live frames reach gen1 only through its NAPI: GRO switched off and on once the link is up
        # (as topology._enable_xdp_receive does for the appliance's links).
        netlink.set_offloads(att, GENERATOR_PEER, gro=False)
        netlink.set_offloads(att, GENERATOR_PEER, gro=True)
        _run(["ip", "netns", "exec", att, "tc", "qdisc", "replace", "dev", self.lab.HOST_IF, "root", "tbf", "rate",
              f"{self.internet_bps}bit", "burst", str(PACING_BURST_BYTES), "latency", f"{TBF_LATENCY_MS}ms"],
             f"pace {att} {self.lab.HOST_IF}")

    def _shape(self) -> None:
        _run(["ip", "netns", "exec", self.router, "tc", "qdisc", "replace", "dev", self.lab.UPSTREAM_IF, "root",
              "tbf", "rate", f"{self.uplink_bps}bit", "burst", str(tbf_burst(self.uplink_bps)),
              "latency", f"{TBF_LATENCY_MS}ms"], f"shape {self.router} {self.lab.UPSTREAM_IF}")

    def _count(self) -> None:
        script = (f"add table inet {UPLINK_TABLE}\n"
                  f"add counter inet {UPLINK_TABLE} flood\n"
                  f"add counter inet {UPLINK_TABLE} legit\n"
                  f"add chain inet {UPLINK_TABLE} forward {{ type filter hook forward priority filter + 10; }}\n"
                  f"add rule inet {UPLINK_TABLE} forward iifname \"{ATTACKER_LINK}\" oifname "
                  f"\"{self.lab.UPSTREAM_IF}\" counter name flood\n"
                  f"add rule inet {UPLINK_TABLE} forward iifname \"{CLIENT_LINK}\" oifname "
                  f"\"{self.lab.UPSTREAM_IF}\" counter name legit\n")
        proc = subprocess.run(["ip", "netns", "exec", self.router, "nft", "-f", "-"], input=script,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise LabError(f"nft in {self.router}: {proc.stderr.strip()}")

    # -- reading ------------------------------------------------------------------------
    def sample(self) -> UplinkSample:
        ns = ["ip", "netns", "exec", self.router]
        counters = json.loads(_run([*ns, "nft", "-j", "list", "counters", "table", "inet", UPLINK_TABLE],
                                   "read the uplink counters"))
        found = {c["counter"]["name"]: c["counter"] for c in counters["nftables"] if "counter" in c}
        [qdisc] = [q for q in json.loads(_run([*ns, "tc", "-s", "-j", "qdisc", "show", "dev", self.lab.UPSTREAM_IF],
                                              "read the shaper")) if q.get("root")]
        return UplinkSample(time.time(), found["flood"]["packets"], found["flood"]["bytes"],
                            found["legit"]["packets"], found["legit"]["bytes"], qdisc["bytes"], qdisc["drops"])

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.sample())
            except (LabError, OSError, ValueError, KeyError):
                pass    # the router is going away; the figures use what was sampled
            self._stop.wait(SAMPLE_S)

    def flood_pps(self, start: float, end: float) -> float | None:
        """Flood packets/s handed to the uplink between two wall-clock times (None: too few samples)."""
        inside = [s for s in self.samples if start <= s.time <= end]
        if len(inside) < 2 or inside[-1].time <= inside[0].time:
            return None
        return (inside[-1].flood_packets - inside[0].flood_packets) / (inside[-1].time - inside[0].time)

    def rates(self) -> list[dict]:
        """Per sample interval: flood and legitimate bits/s offered to the uplink, bits/s sent, drops/s."""
        out = []
        for a, b in zip(self.samples, self.samples[1:], strict=False):
            dt = b.time - a.time
            if dt <= 0:
                continue
            out.append({"time": b.time, "flood_pps": (b.flood_packets - a.flood_packets) / dt,
                        "flood_bps": 8 * (b.flood_bytes - a.flood_bytes) / dt,
                        "legit_bps": 8 * (b.legit_bytes - a.legit_bytes) / dt,
                        "sent_bps": 8 * (b.sent_bytes - a.sent_bytes) / dt,
                        "dropped_pps": (b.dropped - a.dropped) / dt})
        return out


class RoutedAttack(AttackProcess):
    """`AttackProcess` whose frames come from `<p>-att` through the router (this module as the child)."""

    def __init__(self, lab: Lab, spec: AttackSpec):
        super().__init__(lab, spec)
        # Same flags as `seawall attack`, another sender: replace "-m appliance.cli attack".
        self.argv = [sys.executable, "-m", "appliance.lab.upstream", *self.argv[4:]]
        self.name = f"routed-attack-{spec.vector}"


def run_routed(lab: Lab, spec: AttackSpec, on_second=None, stop_event: threading.Event | None = None):
    """Build the frames, addressed to the attacker host's gen1, enter `<p>-att`, send out of gen0
    (the host forwards them to the router)."""
    from appliance.lab.attack import TemplateBuilder  # noqa: PLC0415 - scapy
    from appliance.lab.generator import Generator  # noqa: PLC0415 - bcc
    from appliance.lab.nsenter import enter_netns  # noqa: PLC0415

    with netlink.iproute(lab.ns("att")) as ipr:
        names = netlink.link_names(ipr)
        if GENERATOR_PEER not in names:
            raise LabError(f"lab {lab.name!r} has no upstream path ({GENERATOR_PEER} in {lab.ns('att')}): "
                           f"Upstream(lab, ...).up() first")
        source = ipr.get_links(ifname=GENERATOR_LINK)[0].get("address")
        hop = ipr.get_links(ifname=GENERATOR_PEER)[0].get("address")
    hop_mac = bytes.fromhex(hop.replace(":", ""))
    streams = [dataclasses.replace(s, frames=tuple(hop_mac + f[6:] for f in s.frames))
               for s in TemplateBuilder(lab, spec, source_mac=source).streams()]
    enter_netns(lab.ns("att"))
    generator = Generator(streams, spec.pps, spec.duration, GENERATOR_LINK, pulse=spec.pulse, ramp=spec.ramp)
    if stop_event is not None:
        generator.stop_event = stop_event
    return generator.run(on_second)


def main(argv: list[str] | None = None) -> int:
    """The child of `RoutedAttack`: `seawall attack`'s flags and JSON lines, sent through the router."""
    from appliance.lab import logs_to_stderr  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m appliance.lab.upstream")
    p.add_argument("vector")
    p.add_argument("--target", required=True)
    p.add_argument("--pps", type=int, default=10_000)
    p.add_argument("--duration", type=float, default=10.0)
    for flag in ("--dport", "--sport", "--size"):
        p.add_argument(flag, type=int)
    p.add_argument("--spoof")
    p.add_argument("--vectors", default=",".join(MULTI_DEFAULT))
    p.add_argument("--pulse")
    p.add_argument("--ramp", type=float)
    p.add_argument("--lab", default="sw")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    logs_to_stderr()
    spec = AttackSpec(vector=args.vector, target=args.target, pps=args.pps, duration=args.duration,
                      dport=args.dport, sport=args.sport, size=args.size, spoof=args.spoof,
                      vectors=tuple(v for v in args.vectors.split(",") if v),
                      pulse=tuple(float(v) for v in args.pulse.split(",")) if args.pulse else None,  # type: ignore[arg-type]
                      ramp=args.ramp)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        result = run_routed(Lab(args.lab), spec, lambda r: print(json.dumps(r.to_dict()), flush=True), stop)
    except (ValueError, LabError, OSError) as exc:
        print(f"routed attack: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
