"""`seawall demo`: Seawall at work on the built-in lab in a few minutes, no spare NICs needed.

It builds the lab, starts the appliance on the lab's two NICs with the lab's
three tenants, plays the reference scenario (legitimate traffic everywhere, a
SYN flood and a low-volume UDP flood at the game server) with a live view, and
ends with a summary: attack packets dropped, legitimate success rate, time to
mitigate. With SecureWatch available it prints its address and keeps running
until Ctrl-C (unless --duration bounds the run).

`--scenario NAME` plays appliance/scenarios/NAME.toml (or a path). A scenario with an
`[upstream]` table (saturation) runs on the lab's upstream mode: a shaped uplink, floods
from behind the upstream router, BIRD 2 and the lab's edge-router agent there, and the
appliance configured to escalate to it ([bgp], the scenario's [escalation]); the summary
then gives the escalation figures measured at the router (`appliance.lab.saturation`).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import pathlib
import secrets
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import tomli_w

from appliance.lab import Lab, lab_config, saturation
from appliance.lab.botnet import BotnetPlan
from appliance.lab.labserver import read_stats
from appliance.lab.scenario import REFERENCE, Scenario, ScenarioRun, load_scenario, play
from appliance.lab.traffic import split_by_windows
from appliance.lab.upstream import Upstream
from appliance.runner import ApplianceProcess
from appliance.signals import restore_signals, stop_on_signals
from dataplane.dataplane import purge

DEMO_STATE = pathlib.Path("/var/lib/seawall/demo")   # default of `seawall demo --state-dir`
DEMO_LISTEN = "127.0.0.1:8080"                        # default of `seawall demo --listen`
VIEW_INTERVAL_S = 1.0  # seconds between live-view refreshes
FLOODS = ("http-flood", "conn-flood", "slowloris", "tls-flood")   # botnet vectors that are attacks
SETTLE_S = 2.0         # seconds after the first limit or block before the mitigated figures count
MONITOR_RAMP_S = 4.0   # seconds after the switch to monitor mode before the unmitigated figures count
BROWSERS = ("browse", "browse-tls")   # the people browsing the shop
# [appflood] for a lab scenario with botnet floods: the detector learns as on a real box, only faster (a lab
# has a minute of peacetime, not an hour), and the floor of open connections lies below the shop's table
# (256 connections and 128 in its accept queue; the default 1,000 is for servers with real tables).
LAB_APPFLOOD = {"warmup_s": 15.0, "half_life_s": 300.0, "source_interval_s": 2.0, "source_min_weight": 40.0,
                "block_ttl_s": 120.0, "min_established": 200.0}


def bounded(scenario: Scenario, duration: float | None) -> Scenario:
    """The scenario cut to `duration` seconds: attacks keep their start, end by the end."""
    if duration is None or duration >= scenario.duration_s:
        return scenario
    attacks = []
    for attack in scenario.attacks:
        if attack.start_s < duration:
            attacks.append(dataclasses.replace(attack, duration_s=min(attack.duration_s, duration - attack.start_s)))
    return dataclasses.replace(scenario, duration_s=duration, attacks=tuple(attacks))


class LiveView:
    """Reads the appliance status once a second and keeps what the summary needs."""

    def __init__(self, appliance: ApplianceProcess, attack_onset: float, out=sys.stdout) -> None:
        self.appliance = appliance
        self.attack_onset = attack_onset
        self.out = out
        self.first_drop: float | None = None
        self.first_incident: float | None = None
        self.incidents: dict[str, dict] = {}
        self.last: dict[str, Any] = {}

    def refresh(self, now: float, legit: dict | None) -> None:
        status = self.appliance.status()
        if not status:
            return
        self.last = status
        tenants = status.get("tenants", {})
        if now >= self.attack_onset and self.first_drop is None and any(
                t["dropped_pps"] > 0 for t in tenants.values()):
            self.first_drop = now
        for inc in status.get("incidents", []):
            self.incidents[inc["id"]] = inc
            if self.first_incident is None:
                self.first_incident = now
        elapsed = now - (self.attack_onset - self._onset_offset)
        lines = [f"\x1b[2J\x1b[H  Seawall demo  t={elapsed:5.0f}s   (Ctrl-C to stop)", ""]
        lines.append(f"  {'tenant':<14}{'in pps':>10}{'passed pps':>12}{'dropped pps':>13}{'dropped total':>15}")
        for tid, t in tenants.items():
            pps_in = t["passed_pps"] + t["dropped_pps"]
            lines.append(f"  {tid:<14}{pps_in:>10.0f}{t['passed_pps']:>12.0f}{t['dropped_pps']:>13.0f}"
                         f"{t['dropped_packets']:>15,}")
        lines += ["", "  active incidents:"]
        active = [i for i in status.get("incidents", []) if i["state"] in ("active", "pending")]
        if not active:
            lines.append("    none")
        for inc in active[:6]:
            vectors = ", ".join(f"{v} ({c:.2f})" for v, c in inc["vectors"].items()) or "classifying"
            eff = "-" if inc["efficacy"] is None else f"{inc['efficacy']:.1%}"
            lines.append(f"    {inc['tenant']:<8} {','.join(inc['destinations'])[:40]:<40} {vectors}  "
                         f"peak {inc['peak_pps']:,} pps  dropped {inc['dropped_packets']:,}  efficacy {eff}")
        if self.upstream is not None and self.upstream.samples:
            rates = self.upstream.rates()[-4:]      # the last second of samples
            if rates:
                mean = {k: sum(r[k] for r in rates) / len(rates) for k in ("flood_bps", "sent_bps", "dropped_pps")}
                lines += ["", f"  uplink {self.upstream.uplink_bps / 1e6:.0f} Mbit/s: carrying {mean['sent_bps'] / 1e6:5.1f}"
                          f" Mbit/s, flood offered {mean['flood_bps'] / 1e6:5.1f} Mbit/s, queue dropping "
                          f"{mean['dropped_pps']:,.0f} pps"]
            bgp = status.get("bgp") or {}
            for ann in bgp.get("announcements", [])[:4]:
                lines.append(f"    announced {ann['kind']:<8} {ann['match'].get('destination')} ({ann['reason']}, "
                             f"incident {ann['incident']})")
            agent = self.upstream.agent
            if agent is not None:
                lines.append(f"    router enforces: {len(agent.installed())} FlowSpec rule(s), "
                             f"{len(agent.blackholes)} blackhole route(s), {len(agent.pending)} waiting for room")
        if legit:
            parts = []
            for service in ("http", "game", "dns", "new-tcp"):
                s = legit["services"].get(service)
                if s and s["sent"]:
                    parts.append(f"{service} {s['success_rate']:.1%}")
            lines += ["", "  legitimate clients, last second: " + "  ".join(parts)]
        if status.get("securewatch"):
            lines += ["", f"  SecureWatch: {status['securewatch']}   {self.credentials}"]
        print("\n".join(lines), file=self.out, flush=True)

    _onset_offset = 0.0
    credentials = ""
    upstream: Upstream | None = None


class MonitorHalves:
    """Botnet floods in a scenario (`seawall demo --scenario botnet`): each is mitigated in its first half
    and only monitored in its second (the target's tenant switched by SIGHUP, same run, same bots), so
    the summary can say what mitigation changes: the browsers' success with and without, how much of
    the bots' traffic still reaches the shop, and the time from onset to the first limit or block."""

    def __init__(self, scenario: Scenario, lab: Lab, appliance: ApplianceProcess, config: dict, t0: float) -> None:
        self.lab, self.appliance, self.config, self.t0 = lab, appliance, config, t0
        self.floods = [a for a in scenario.attacks if a.vector in FLOODS]
        self.mode: dict[str, str] = {}
        self.snapshots: dict[tuple[int, str], tuple[float, dict | None]] = {}

    def tenant_of(self, address: str) -> str | None:
        ip = ipaddress.ip_address(address)
        for t in self.config["tenants"]:
            if any(ip in ipaddress.ip_network(p) for p in t["prefixes"]):
                return t["id"]
        return None

    def target(self, attack) -> str:
        return attack.spec(self.lab).target

    def step(self, now: float) -> None:
        """Once a second: the mode each flood's tenant should have now, and the shop's counters at each
        phase's edges."""
        wanted: dict[str, str] = {}
        for i, a in enumerate(self.floods):
            start, half, end = (self.t0 + a.start_s, self.t0 + a.start_s + a.duration_s / 2,
                                self.t0 + a.start_s + a.duration_s)
            tenant = self.tenant_of(self.target(a))
            if tenant and start - 1.0 <= now < end:
                wanted[tenant] = "mitigate" if now < half else "monitor"
            for edge, at in (("m1", half), ("u0", half + MONITOR_RAMP_S), ("u1", end)):
                if now >= at and (i, edge) not in self.snapshots:
                    self.snapshots[(i, edge)] = (now, read_stats(self.lab.shop_stats))
            mitigated = first_mitigation(self.appliance.log_path, start - 1.0, self.target(a), end)
            if mitigated is not None and now >= mitigated + SETTLE_S and (i, "m0") not in self.snapshots:
                self.snapshots[(i, "m0")] = (now, read_stats(self.lab.shop_stats))
        for tenant in {t["id"] for t in self.config["tenants"]}:
            mode = wanted.get(tenant, "mitigate")
            if self.mode.get(tenant, "mitigate") != mode:
                self.set_mode(tenant, mode)

    def set_mode(self, tenant: str, mode: str) -> None:
        for t in self.config["tenants"]:
            if t["id"] == tenant:
                t["mode"] = mode
        self.appliance.config_path.write_text(tomli_w.dumps(self.config))
        self.appliance.reload()
        self.mode[tenant] = mode

    def figures(self, traffic: dict | None, traffic_seconds: list[dict]) -> list[dict]:
        """Per flood: legit success with and without mitigation, bot share through, time to mitigate."""
        out = []
        for i, a in enumerate(self.floods):
            onset = self.t0 + a.start_s
            target = self.target(a)
            mitigated = first_mitigation(self.appliance.log_path, onset - 1.0, target, onset + a.duration_s)
            edges = {k[1]: v for k, v in self.snapshots.items() if k[0] == i}
            row: dict[str, Any] = {"vector": a.vector, "time_to_mitigate_s": None if mitigated is None
                                   else round(mitigated - onset, 1)}
            windows = {"with": ("m0", "m1"), "without": ("u0", "u1")}
            prefix = ipaddress.ip_network(str(BotnetPlan(a.vector, target, sources=a.sources).routed_prefix))
            reach: dict[str, float | None] = {}
            for label, (lo, hi) in windows.items():
                row[f"legit_{label}"] = None
                reach[label] = None
                if lo not in edges or hi not in edges:
                    continue
                (t_lo, s_lo), (t_hi, s_hi) = edges[lo], edges[hi]
                if traffic and "started_at" in traffic:
                    split = split_by_windows(traffic_seconds, traffic["started_at"], [(t_lo, t_hi)])["during"]
                    sent = sum(split.get(s, {}).get("sent", 0) for s in BROWSERS)
                    ok = sum(split.get(s, {}).get("ok", 0) for s in BROWSERS)
                    row[f"legit_{label}"] = round(ok / sent, 4) if sent else None
                if s_lo and s_hi and t_hi > t_lo:
                    reach[label] = (_from(prefix, s_hi) - _from(prefix, s_lo)) / (t_hi - t_lo)
            row["bot_share_through"] = (round(reach["with"] / reach["without"], 4)
                                        if reach["with"] is not None and reach["without"] else None)
            out.append(row)
        return out


def _from(prefix: ipaddress.IPv4Network, stats: dict) -> int:
    """Connections and requests the shop counted from `prefix`."""
    return sum(row[0] + row[1] for source, row in stats["sources"].items() if ipaddress.ip_address(source) in prefix)


def first_mitigation(log_path: pathlib.Path, since: float, dst: str, until: float | None = None) -> float | None:
    """When the engine first put a per-source limit on `dst` or a source on a block list after `since` (and
    before `until`: a later flood's blocks are not this one's)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if '"appflood.limit"' not in line and '"appflood.block"' not in line:
            continue
        try:
            record = json.loads(line)
            when = datetime.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError):
            continue
        if until is not None and when > until:
            return None
        if when >= since and (record["event"] == "appflood.block" or record.get("dst") == dst):
            return when
    return None


def botnet_lines(rows: list[dict]) -> list[str]:
    """The summary's table of botnet floods (MonitorHalves.figures)."""
    if not rows:
        return []

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    lines = ["", "  botnet floods (first half mitigated, second half monitor mode):",
             f"  {'vector':<12}{'legit with':>12}{'legit without':>15}{'bots through':>14}{'time to mitigate':>18}"]
    for r in rows:
        ttm = "-" if r["time_to_mitigate_s"] is None else f"{r['time_to_mitigate_s']:.1f} s"
        lines.append(f"  {r['vector']:<12}{pct(r['legit_with']):>12}{pct(r['legit_without']):>15}"
                     f"{pct(r['bot_share_through']):>14}{ttm:>18}")
    lines.append("  (bots through: the bots' connections and requests reaching the shop per second, with "
                 "mitigation, as a share of without)")
    return lines


def demo_user(appliance: ApplianceProcess) -> str:
    """An admin account for the demo's SecureWatch, with a fresh password each run."""
    password = secrets.token_urlsafe(12)
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "user", "add", "admin", "--role", "admin",
                        "--config", str(appliance.config_path)], input=password + "\n", text=True,
                       capture_output=True)
    if r.returncode != 0:
        return f"(could not create the demo user: {(r.stderr or r.stdout).strip()[-200:]})"
    return f"login: admin / {password}"


def fresh_appliance_state(path: pathlib.Path) -> None:
    """Empty the demo appliance's state directory: every demo starts from a fresh appliance, as its
    summary assumes (no baselines, incidents, captures or SecureWatch users of an earlier run, and a
    fresh admin password). The baselines an earlier demo saved had learned its game server idle for
    the minutes the demo kept running after its scenario; loaded again, they put the players above
    the server's normal band, none of their datagrams counted as legitimate, and the UDP flood's
    rule, checked against nothing, dropped up to 85 % of them (the three runs on 2026-12-06 that
    followed another)."""
    if path.is_dir():
        shutil.rmtree(path)


def run_demo(lab_name: str = "sw", duration: float | None = None, keep_running: bool = True,
             scenario_path: str | None = None, state_dir: pathlib.Path = DEMO_STATE, listen: str = DEMO_LISTEN) -> int:
    """The scenario on the lab `lab_name`, with a live view; the appliance's configuration, log and
    state under `state_dir`, its SecureWatch on `listen`."""
    scenario = bounded(load_scenario(scenario_path or REFERENCE), duration)
    lab = Lab(lab_name)
    print(f"building the lab '{lab_name}' ...", flush=True)
    lab.up()
    state_dir.mkdir(parents=True, exist_ok=True)
    config = lab_config(lab_name)
    config["appliance"]["state_dir"] = str(state_dir / lab_name)
    config["securewatch"] = {"listen": listen}
    if any(a.vector in FLOODS for a in scenario.attacks):
        config["appflood"] = dict(LAB_APPFLOOD)
    bpffs = config["appliance"]["bpffs"]
    upstream = None
    if scenario.upstream is not None:
        spec = scenario.upstream
        print(f"upstream router: uplink shaped to {spec.uplink_bps / 1e6:g} Mbit/s, BIRD 2 and the lab's "
              f"edge-router agent ...", flush=True)
        try:
            upstream = Upstream(lab, spec.uplink_bps, state_dir / f"{lab_name}-upstream", internet_bps=spec.internet_bps,
                                flowspec_capacity=spec.flowspec_capacity).up()
        except BaseException:
            lab.down()
            raise
        upstream_config(config, scenario, upstream)
    fresh_appliance_state(state_dir / lab_name)
    appliance = ApplianceProcess(config, state_dir / f"{lab_name}.toml", state_dir / f"{lab_name}.log")
    print(f"starting the appliance on {lab.external_if} <-> {lab.internal_if} "
          f"(log: {appliance.log_path}) ...", flush=True)
    stop = threading.Event()
    previous = stop_on_signals(stop)
    try:
        appliance.start()
        credentials = demo_user(appliance)
        t0 = time.time()
        onset = min((a.start_s for a in scenario.attacks), default=scenario.duration_s)
        view = LiveView(appliance, t0 + onset)
        view.credentials = credentials
        view._onset_offset = onset
        view.upstream = upstream
        halves = MonitorHalves(scenario, lab, appliance, config, t0)
        run = play(scenario, lab)
        try:
            while not stop.is_set() and time.time() - t0 < scenario.duration_s + 2:
                seconds = run.traffic.seconds if hasattr(run.traffic, "seconds") else []
                view.refresh(time.time(), seconds[-1] if seconds else None)
                if halves.floods:
                    halves.step(time.time())
                stop.wait(VIEW_INTERVAL_S)
        finally:
            run.stop()
        results = run.wait(30) if not stop.is_set() else None
        botnet = halves.figures(results["traffic"] if results else None, run.traffic.seconds) if halves.floods else []
        print(summary(scenario, view, results, t0 + onset, botnet), flush=True)
        if upstream is not None:
            figs = upstream_figures(scenario, run, upstream, results)
            print("\n".join(saturation.lines(figs, (scenario.escalation or {}).get("hold_down_s"))), flush=True)
        if view.last.get("securewatch"):
            print(f"\nSecureWatch: {view.last['securewatch']}   {credentials}", flush=True)
        if keep_running and duration is None and view.last.get("securewatch") and not stop.is_set():
            print("SecureWatch keeps running (Ctrl-C to stop).", flush=True)
            stop.wait()
    finally:
        restore_signals(previous)
        appliance.stop()
        purge(bpffs)
        if upstream is not None:
            upstream.down()
        lab.down()
        print("lab removed.", flush=True)
    return 0


def upstream_config(config: dict, scenario: Scenario, upstream: Upstream) -> None:
    """The appliance's [bgp] (a session with the router's BIRD), [escalation] and the tenants' consent to RTBH."""
    assert scenario.upstream is not None
    config["bgp"] = upstream.bgp_config()
    config["escalation"] = dict(scenario.escalation or {"uplink_bps": scenario.upstream.uplink_bps})
    for tenant in config["tenants"]:
        if tenant["id"] in scenario.upstream.rtbh_tenants:
            tenant.setdefault("policy", {})["escalate_rtbh"] = True


def upstream_figures(scenario: Scenario, run: ScenarioRun, upstream: Upstream,
                     results: dict | None) -> list[saturation.AttackFigures]:
    """The escalation figures of each attack that sent (`appliance.lab.saturation`)."""
    traffic = (results or {}).get("traffic") or {}
    events = list(upstream.agent.events) if upstream.agent is not None else []
    server_of = {s.ipv4: s.name for s in run.lab.servers}
    figs = []
    for index, attack in enumerate(scenario.attacks):
        window = run.attack_windows.get(index)
        if window is None:
            continue
        figs.append(saturation.figures(run.specs[index].target, attack.vector, (window[0], window[1]), events=events,
                                       rates=upstream.rates(), uplink_bps=upstream.uplink_bps,
                                       legit_seconds=run.traffic.seconds, legit_started_at=traffic.get("started_at"),
                                       server_of=server_of))
    return figs


def first_rules(log_path: pathlib.Path, since: float) -> dict[str, float]:
    """When the engine installed its first rule per vector after `since` (the log's `rule.add` events)."""
    first: dict[str, float] = {}
    try:
        lines = log_path.read_text().splitlines()
    except OSError:
        return first
    for line in lines:
        if '"rule.add"' not in line:
            continue
        try:
            record = json.loads(line)
            when = datetime.datetime.fromisoformat(record["timestamp"]).timestamp()
        except (ValueError, KeyError):
            continue
        if when >= since:
            first.setdefault(record.get("vector", "?"), when)
    return first


def summary(scenario: Scenario, view: LiveView, results: dict | None, onset: float,
            botnet: list[dict] | None = None) -> str:
    lines = ["", "=" * 72, f"  Summary of scenario '{scenario.name}'", "=" * 72]
    tenants = view.last.get("tenants", {})
    dropped = sum(t["dropped_packets"] for t in tenants.values())
    lines.append(f"  packets dropped (all reasons): {dropped:,}")
    if results:
        sent = sum((a or {}).get("transmitted", 0) for a in results["attacks"])
        requested = sum(a.pps * a.duration_s for a in scenario.attacks)
        if sent or requested:   # frame vectors only (a botnet's summary follows the legitimate lines)
            lines.append(f"  attack packets sent:          {sent:,} (requested {requested:,.0f}; "
                         f"the generator reports what it achieved)")
        attack_dropped = sum(i["dropped_packets"] for i in view.incidents.values())
        if sent:
            lines.append(f"  dropped at attacked servers:  {attack_dropped:,} (the incidents' accounting; "
                         f"{attack_dropped / sent:.2%} of what the generator sent)")
        legit = results["traffic"]["services"]
        for service, s in legit.items():
            if s["sent"]:
                label = f"legitimate {service} success:"
                lines.append(f"  {label:<{max(30, len(label) + 1)}}{s['success_rate']:.2%} "
                             f"({s['ok']:,}/{s['sent']:,}, p99 {s.get('p99_ms') or 0:.1f} ms)")
        for attack in results["attacks"]:   # the botnet's vectors: connections, not frames
            if attack and "unit" in attack:
                lines.append(f"  {attack['vector'] + ':':<30}{attack['achieved_rate']:,.1f} {attack['unit']}/s "
                             f"from {attack['bots']:,} bots ({attack.get('connected', 0):,} handshakes completed)")
        split = results.get("legit_split") or {}
        for service in ("new-tcp", "browse", "browse-tls"):
            for where, label in (("during", "during attacks"), ("outside", "outside attacks")):
                s = split.get(where, {}).get(service)
                if s and s["sent"]:
                    lines.append(f"  {f'  {service} {label}:':<30}{s['success_rate']:.2%} "
                                 f"({s['ok']:,}/{s['sent']:,})")
    lines += botnet_lines(botnet or [])
    for vector, installed in first_rules(view.appliance.log_path, onset).items():
        lines.append(f"  {vector + ' rule installed:':<30}{installed - onset:.2f} s after onset "
                     f"(drops start as the rule lands in the map)")
    if view.first_drop is None:
        lines.append("  time to first drop:           no drop seen")
    for inc in view.incidents.values():
        vectors = ", ".join(f"{v} {c:.2f}" for v, c in inc["vectors"].items())
        eff = "-" if inc["efficacy"] is None else f"{inc['efficacy']:.2%}"
        lines.append(f"  incident {inc['id']}: {inc['tenant']} {','.join(inc['destinations'])} "
                     f"[{vectors}] peak {inc['peak_pps']:,} pps, efficacy {eff}")
    return "\n".join(lines)
