"""Detection time, Seawall against FastNetMon (Debian `fastnetmon`), on the network-namespace lab.

Both watch the same floods at the same time: for each lab vector (~50 kpps for 8 s, each on its own
server) and for the reference scenario's 5,000 pps UDP flood on the game port (alongside ~800 pps of
real game traffic), the figure is seconds from the flood's onset to Seawall's incident (`started` in the
appliance status) and to FastNetMon's `ban` callback; null when not detected within DETECT_TIMEOUT_S.

Where FastNetMon listens: the generator injects frames with XDP (live frames, bpf_redirect into the
appliance's external veth), and Seawall's XDP program redirects them to the internal veth, so no
AF_PACKET socket on `<p>-ext`, on the router's `ext` or on `<p>-int` ever sees them (XDP bypasses the
packet taps). The first interface where frames meet the stack is the customer switch's `uplink` in
`<p>-sw`, behind Seawall. So the appliance runs with every tenant in `monitor` mode (detect and report,
drop nothing): FastNetMon then mirrors exactly the traffic Seawall inspected, the whole flood, instead
of what Seawall's rules left over. Onset: the generator's first per-second record arrives one second
after its first frame (it compiles for about a second first), so onset = that arrival less 1 s.

FastNetMon settings (per host, its documented per-host counters, as for a hosting network):
threshold_pps 20,000 (the value its shipped configuration carries), TCP, UDP and ICMP pps 10,000 each
(half of that: one protocol alone at that rate towards one hosting server is an attack; it has no
SYN-specific counter in 1.2.4, so a SYN flood trips the TCP one), bandwidth 1,000 Mbit/s, flows off
(not counted in mirror mode), average_calculation_time 1 s (its fastest), ban_time 10 s. It sends
nothing anywhere: usage report, API and Prometheus off, no BGP, no database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator

import structlog

from appliance.bench.compare_lab import BenchError
from appliance.lab import TENANTS, Lab, lab_config
from appliance.lab.topology import GAME_PORT

log = structlog.get_logger()

FASTNETMON = pathlib.Path("/usr/sbin/fastnetmon")
DETECT_TIMEOUT_S = 15.0          # seconds after onset; later counts as not detected
VECTOR_PPS = 50_000              # packets/s per lab vector
VECTOR_S = 8.0                   # seconds per lab vector
REFERENCE_UDP_PPS = 5_000        # the reference scenario's UDP flood on the game port
REFERENCE_UDP_SIZE = 512         # bytes per IP datagram (the reference scenario's)
REFERENCE_GAME_PPS = 800         # legitimate game datagrams/s alongside it
REFERENCE_BASELINE_S = 6         # seconds of legitimate traffic the appliance sees before the flood
VECTOR_BASELINE_S = 3            # the same before each lab vector (as in tests/netns/test_policy_vectors.py)
ATTACK_COMPILE_S = 10.0          # seconds the legitimate clients run on for the generator's compile and end
LEGIT_START_TIMEOUT_S = 30.0     # seconds for the legitimate clients' baseline seconds to come in
ATTACK_EXIT_TIMEOUT_S = 60.0     # seconds for an attack process to compile, send and report
FASTNETMON_READY_TIMEOUT_S = 20.0
FASTNETMON_STOP_TIMEOUT_S = 5.0
POLL_S = 0.1                     # seconds between looks at the appliance status and the ban log

# Seawall meets each server's normal traffic first, as in production: to an address it has never seen
# traffic to, its warm-up floors (e.g. 60 kpps of UDP) apply, not the onset floors (2 kpps of UDP).
def _legit_profiles() -> tuple:
    """(the clients during each lab vector, the players and visitors of the reference scenario)"""
    from appliance.lab.traffic import TrafficProfile  # noqa: PLC0415
    return (TrafficProfile(game_pps=200, http_rps=10, dns_qps=50),
            TrafficProfile(game_pps=REFERENCE_GAME_PPS, http_rps=4, dns_qps=4))


# vector -> lab server it floods: one server each, so no incident or ban carries over
VECTOR_SERVERS = {"syn": "s3", "udp": "s2", "ntp": "s5", "dns": "s4", "icmp": "s7", "frag": "s8"}
REFERENCE_KEY = "reference_udp_5kpps"
REFERENCE_SERVER = "s1"          # the game server

# FastNetMon thresholds (see the module docstring for why these values)
FNM_THRESHOLD_PPS = 20_000
FNM_THRESHOLD_PROTO_PPS = 10_000
FNM_THRESHOLD_MBPS = 1_000
FNM_BAN_TIME_S = 10
FNM_AVERAGE_S = 1

NOTIFY_SCRIPT = """#!/bin/sh
# FastNetMon's callback: IP, direction, pps, action (ban / attack_details / unban); details on stdin.
{{ echo "@ $(date +%s.%N) $1 $2 $3 $4"; cat; }} >> {log}
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Ban:
    at: float                    # epoch seconds the callback ran
    ip: str
    direction: str
    pps: int
    action: str
    details: str                 # the report FastNetMon wrote on stdin (names the attack type)


def fastnetmon_config(work: pathlib.Path, interface: str) -> str:
    proto = FNM_THRESHOLD_PROTO_PPS
    settings = {
        "logging_level": "info", "logging_local_syslog_logging": "off", "logging_remote_syslog_logging": "off",
        "disable_usage_report": "on", "enable_api": "off", "prometheus": "off",
        "enable_ban": "on", "enable_ban_ipv6": "on", "process_incoming_traffic": "on",
        "process_outgoing_traffic": "off", "ban_time": str(FNM_BAN_TIME_S), "unban_only_if_attack_finished": "off",
        "ban_details_records_count": "20", "networks_list_path": str(work / "networks_list"),
        "white_list_path": str(work / "networks_whitelist"), "check_period": "1",
        "enable_connection_tracking": "on", "ban_for_pps": "on", "ban_for_bandwidth": "on", "ban_for_flows": "off",
        "threshold_pps": str(FNM_THRESHOLD_PPS), "threshold_mbps": str(FNM_THRESHOLD_MBPS),
        "threshold_flows": "3500",
        "ban_for_tcp_pps": "on", "ban_for_udp_pps": "on", "ban_for_icmp_pps": "on",
        "threshold_tcp_pps": str(proto), "threshold_udp_pps": str(proto), "threshold_icmp_pps": str(proto),
        "ban_for_tcp_bandwidth": "off", "ban_for_udp_bandwidth": "off", "ban_for_icmp_bandwidth": "off",
        "threshold_tcp_mbps": "100000", "threshold_udp_mbps": "100000", "threshold_icmp_mbps": "100000",
        "mirror_afpacket": "on", "mirror_afxdp": "off", "mirror_netmap": "off", "pcap": "off", "netflow": "off",
        "sflow": "off", "mirror_af_packet_custom_sampling_rate": "1", "mirror_af_packet_fanout_mode": "cpu",
        "interfaces": interface, "average_calculation_time": str(FNM_AVERAGE_S), "speed_calculation_delay": "1",
        "notify_script_path": str(work / "notify.sh"), "collect_attack_pcap_dumps": "off",
        "redis_enabled": "off", "mongodb_enabled": "off", "exabgp": "off", "gobgp": "off", "influxdb": "off",
        "graphite": "off", "kafka_traffic_export": "off", "monitor_local_ip_addresses": "off",
        "pid_path": str(work / "fastnetmon.pid"), "cli_stats_file_path": str(work / "fastnetmon.dat"),
        "cli_stats_ipv6_file_path": str(work / "fastnetmon_ipv6.dat"),
        "sort_parameter": "packets", "max_ips_in_list": "7",
    }
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


class FastNetMon:
    """FastNetMon mirroring one interface of one namespace, with its files in `work`; the ban callbacks
    land in `work/notify.log`. Started by its own binary path, stopped by its pid."""

    def __init__(self, work: pathlib.Path, namespace: str, interface: str, prefixes: list[str]) -> None:
        if not FASTNETMON.exists():
            raise BenchError(f"{FASTNETMON} not found: install the Debian package fastnetmon")
        self.work, self.namespace, self.interface = work, namespace, interface
        self.notify_log = work / "notify.log"
        self.log_path = work / "fastnetmon.log"
        (work / "networks_list").write_text("".join(f"{p}\n" for p in prefixes))
        (work / "networks_whitelist").write_text("")
        script = work / "notify.sh"
        script.write_text(NOTIFY_SCRIPT.format(log=self.notify_log))
        script.chmod(0o755)
        self.config_path = work / "fastnetmon.conf"
        self.config_path.write_text(fastnetmon_config(work, interface))
        self.proc: subprocess.Popen | None = None

    def start(self) -> FastNetMon:
        console = open(self.work / "console.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.namespace, str(FASTNETMON),
                                      "--configuration_file", str(self.config_path), "--log_file",
                                      str(self.log_path), "--disable_pid_logic"],
                                     stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
        console.close()
        deadline = time.monotonic() + FASTNETMON_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"fastnetmon exited with {self.proc.returncode}: {self.logs()[-2000:]}")
            if self.listening():
                log.info("fastnetmon.start", pid=self.proc.pid, netns=self.namespace, interface=self.interface)
                return self
            time.sleep(POLL_S)  # poll interval while it opens its AF_PACKET socket
        self.stop()
        raise BenchError(f"fastnetmon did not start AF_PACKET capture within {FASTNETMON_READY_TIMEOUT_S} s: "
                         f"{self.logs()[-2000:]}")

    def listening(self) -> bool:
        text = self.logs().lower()
        return "af_packet" in text and self.interface in text

    def logs(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.log_path, self.work / "console.log") if p.exists()]
        return "\n".join(parts)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def bans(self) -> list[Ban]:
        """Every `ban` callback so far, oldest first."""
        if not self.notify_log.exists():
            return []
        out: list[Ban] = []
        head: list[str] | None = None
        details: list[str] = []
        for line in [*self.notify_log.read_text(errors="replace").splitlines(), "@ end"]:
            if not line.startswith("@ "):
                details.append(line)
                continue
            if head is not None and len(head) >= 6 and head[5] == "ban":
                out.append(Ban(at=float(head[1]), ip=head[2], direction=head[3], pps=int(head[4] or 0),
                               action=head[5], details="\n".join(details)))
            head, details = line.split(" "), []
        return out

    def first_ban(self, ip: str, after: float) -> Ban | None:
        return next((b for b in self.bans() if b.ip == ip and b.at >= after), None)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(FASTNETMON_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        log.info("fastnetmon.stop", pid=self.proc.pid, returncode=self.proc.returncode)

    def __enter__(self) -> FastNetMon:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def monitoring_appliance(lab: Lab, work: pathlib.Path) -> Iterator:
    """`seawall run` on the lab with every tenant in monitor mode (detect, report, drop nothing)."""
    from appliance.runner import ApplianceProcess  # noqa: PLC0415
    from dataplane.dataplane import purge  # noqa: PLC0415

    config = lab_config(lab.name)
    for tenant in config["tenants"]:
        tenant["mode"] = "monitor"
    config["appliance"]["state_dir"] = str(work / "state")
    config["appliance"]["tick_ms"] = 1000
    config["securewatch"] = {"enabled": False}
    proc = ApplianceProcess(config, work / "seawall.toml", work / "seawall.log")
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()
        purge(config["appliance"]["bpffs"])


class _Onset:
    """Onset of an attack process: its first per-second record's arrival less one second."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, record: dict) -> None:
        if record.get("type") == "second" and self.at is None:
            self.at = time.time() - 1.0


def _first_incident(appliance, dst: str, after: float) -> float | None:
    for inc in appliance.status().get("incidents", []):
        started = inc.get("started")
        if started is not None and dst in inc.get("destinations", []) and started >= after:
            return float(started)
    return None


def measure_flood(lab: Lab, appliance, fnm: FastNetMon, spec, legit, baseline_s: float,
                  timeout_s: float = DETECT_TIMEOUT_S) -> dict:
    """Run the legitimate clients (`legit`, a TrafficProfile) for `baseline_s` seconds, then start `spec`'s
    generator and watch both detectors until both fired or `timeout_s` after onset."""
    from appliance.lab.attack import AttackProcess  # noqa: PLC0415
    from appliance.lab.traffic import TrafficRun  # noqa: PLC0415

    clients = TrafficRun(lab, baseline_s + timeout_s + ATTACK_COMPILE_S, legit).start()
    attack = AttackProcess(lab, spec)
    onset = _Onset()
    attack.on_record = onset
    seawall_at: float | None = None
    ban: Ban | None = None
    try:
        _poll(lambda: len(clients.seconds) >= baseline_s, LEGIT_START_TIMEOUT_S, "the legitimate clients' baseline")
        launched = time.time()
        attack.start()
        _poll(lambda: onset.at is not None or not attack.running, ATTACK_EXIT_TIMEOUT_S, f"{spec.vector} to send")
        if onset.at is None:
            attack.wait(5)   # raises with the generator's stderr
            raise BenchError(f"{spec.vector} generator sent no per-second record")
        # Detections count from the launch on: neither detector can fire before the first frame, and the
        # onset estimate has the resolution of the generator's first second.
        while time.time() < onset.at + timeout_s and (seawall_at is None or ban is None):
            seawall_at = seawall_at or _first_incident(appliance, spec.target, launched)
            ban = ban or fnm.first_ban(spec.target, launched)
            if not fnm.running:
                raise BenchError(f"fastnetmon exited during {spec.vector}: {fnm.logs()[-1500:]}")
            time.sleep(POLL_S)   # poll interval of both detectors' reports
        summary = attack.wait(ATTACK_EXIT_TIMEOUT_S)
    finally:
        attack.kill()
        clients.kill()

    def after_onset(at: float | None) -> float | None:
        return None if at is None or at > onset.at + timeout_s else round(max(0.0, at - onset.at), 2)

    return {"seawall_s": after_onset(seawall_at), "fastnetmon_s": after_onset(ban.at if ban else None),
            "target": spec.target, "pps": spec.pps, "achieved_pps": summary.get("achieved_pps"),
            "fastnetmon_report": _attack_type(ban.details) if ban else None}


def _poll(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_S)


def _attack_type(details: str) -> str | None:
    for line in details.splitlines():
        if "attack type" in line.lower() or "protocol" in line.lower():
            return line.strip()
    return None


def run_detection(progress: Callable[[str], None], vectors: tuple[str, ...] = tuple(VECTOR_SERVERS),
                  pps: int = VECTOR_PPS, duration_s: float = VECTOR_S, reference: bool = True,
                  lab_name: str | None = None, work_dir: pathlib.Path | None = None) -> dict:
    """Seconds from onset to detection for Seawall and FastNetMon, per vector (and the reference flood).

    Files (configs, logs, FastNetMon's callbacks) go to `work_dir`, kept, when given; else to a temporary
    directory removed at the end."""
    from appliance.lab.attack import AttackSpec  # noqa: PLC0415

    unknown = [v for v in vectors if v not in VECTOR_SERVERS]
    if unknown:
        raise ValueError(f"detection vectors: unknown {unknown} (known: {', '.join(VECTOR_SERVERS)})")
    vector_legit, reference_legit = _legit_profiles()
    lab = Lab(lab_name or f"d{uuid.uuid4().hex[:6]}")
    work = work_dir or pathlib.Path(tempfile.mkdtemp(prefix="seawall-detect-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict] = {}
    try:
        progress("detection: lab up")
        lab.up()
        prefixes = [p for t in TENANTS for p in (t.ipv4, t.ipv6)]
        fnm_dir = work / "fastnetmon"
        fnm_dir.mkdir()
        with monitoring_appliance(lab, work) as appliance, \
                FastNetMon(fnm_dir, lab.ns("sw"), "uplink", prefixes) as fnm:
            for vector in vectors:
                progress(f"detection: {vector} at {pps:,} pps for {duration_s:g} s")
                spec = AttackSpec(vector, lab.server(VECTOR_SERVERS[vector]).ipv4, pps=pps, duration=duration_s)
                out[vector] = measure_flood(lab, appliance, fnm, spec, vector_legit, VECTOR_BASELINE_S)
                log.info("detection.vector", vector=vector, seawall_s=out[vector]["seawall_s"],
                         fastnetmon_s=out[vector]["fastnetmon_s"])
            if reference:
                progress("detection: reference UDP flood on the game port, with players")
                spec = AttackSpec("udp", lab.server(REFERENCE_SERVER).ipv4, pps=REFERENCE_UDP_PPS,
                                  duration=DETECT_TIMEOUT_S + 1.0, dport=GAME_PORT, size=REFERENCE_UDP_SIZE)
                out[REFERENCE_KEY] = measure_flood(lab, appliance, fnm, spec, reference_legit, REFERENCE_BASELINE_S)
                log.info("detection.vector", vector=REFERENCE_KEY, seawall_s=out[REFERENCE_KEY]["seawall_s"],
                         fastnetmon_s=out[REFERENCE_KEY]["fastnetmon_s"])
    finally:
        lab.down()
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return {"vectors": out, "fastnetmon_version": _fastnetmon_version(),
            "settings": {"threshold_pps": FNM_THRESHOLD_PPS, "threshold_tcp_udp_icmp_pps": FNM_THRESHOLD_PROTO_PPS,
                         "threshold_mbps": FNM_THRESHOLD_MBPS, "average_calculation_time_s": FNM_AVERAGE_S,
                         "ban_time_s": FNM_BAN_TIME_S, "seawall_tick_ms": 1000, "seawall_mode": "monitor",
                         "fastnetmon_interface": "uplink in <lab>-sw (behind Seawall, which forwards everything)",
                         "detect_timeout_s": DETECT_TIMEOUT_S, "vector_pps": pps, "vector_s": duration_s}}


def _fastnetmon_version() -> str:
    """'1.2.4' from its 'Version: 1.2.4'."""
    proc = subprocess.run([str(FASTNETMON), "--version"], capture_output=True, text=True, timeout=10)
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[-1].removeprefix("Version:").strip() if lines else "unknown"
