"""Notifiers against real receiver processes on loopback: Debian's rsyslog (UDP, TCP
with octet counting, TLS) and net-snmp's snmptrapd (v2c and v3 traps and informs,
decoded by name with SEAWALL-MIB), plus net-snmp's MIB compiler on SEAWALL-MIB."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator

import pytest

from policy.events import Event, EventBus, EventType, Severity
from securewatch.notify import NotifierManager, RetryPolicy, parse_notify_config
from securewatch.notify.syslog import SD_ID
from tests.support import await_until, wait_until
from tests.unit.securewatch.test_notify_delivery import make_certs
from tests.unit.securewatch.test_notify_formats import parse_rfc5424

MIBS = pathlib.Path(__file__).resolve().parents[2] / "securewatch" / "mibs"
MIB_PATH = f"{MIBS / 'base'}:{MIBS}"
FAST_RETRY = RetryPolicy(initial_s=0.05, max_s=0.3)  # seconds
V3_ENGINE_ID = "80007ed9050102030405060708"  # our engine id for v3 traps (the receiver keys users by it)


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(proto: str, port: int) -> bool:
    out = subprocess.run(["ss", "-Hln", f"-{proto}", f"sport = :{port}"], capture_output=True, text=True)
    return bool(out.stdout.strip())


@contextlib.contextmanager
def process(argv: list[str], log: pathlib.Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Run a receiver; always stop it by its pid, on failure too."""
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# --- rsyslog ------------------------------------------------------------------------


class Rsyslog:
    """A private rsyslogd: one listener per transport, each writing the raw messages
    it receives to its own file, plus rsyslog's own parse of the RFC 5424 fields."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.dir = workdir
        certs = make_certs(workdir)
        self.ca = certs["ca.pem"]
        self.ports = {"udp": free_port(socket.SOCK_DGRAM), "tcp": free_port(socket.SOCK_STREAM),
                      "tls": free_port(socket.SOCK_STREAM)}
        tls = (f'streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon" '
               f'streamDriver.CAFile="{certs["ca.pem"]}" streamDriver.CertFile="{certs["server.pem"]}" '
               f'streamDriver.KeyFile="{certs["server.key"]}"')
        rules = "\n".join(
            f'ruleset(name="{t}") {{\n'
            f'  action(type="omfile" file="{workdir}/{t}.log" template="raw")\n'
            f'  action(type="omfile" file="{workdir}/{t}.parsed" template="parsed")\n}}'
            for t in self.ports)
        self.conf = workdir / "rsyslog.conf"
        self.conf.write_text(f"""
global(workDirectory="{workdir}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\\n")
template(name="parsed" type="string" string="%msgid%|%app-name%|%procid%|%syslogfacility%|%syslogseverity%|%structured-data%\\n")
{rules}
input(type="imudp" address="127.0.0.1" port="{self.ports['udp']}" ruleset="udp")
input(type="imtcp" address="127.0.0.1" port="{self.ports['tcp']}" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="{self.ports['tls']}" ruleset="tls" {tls})
""")
        self.proc: subprocess.Popen | None = None
        self._cm: contextlib.AbstractContextManager | None = None

    def start(self) -> None:
        self._cm = process(["rsyslogd", "-n", "-f", str(self.conf), "-i", str(self.dir / "rsyslogd.pid")],
                           self.dir / "rsyslogd.out")
        self.proc = self._cm.__enter__()
        wait_until(lambda: self.proc.poll() is not None or (
            listening("u", self.ports["udp"]) and listening("t", self.ports["tcp"])
            and listening("t", self.ports["tls"])), timeout=20, what="rsyslogd listening")
        assert self.proc.poll() is None, (self.dir / "rsyslogd.out").read_text()

    def stop(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None

    def lines(self, transport: str, suffix: str = "log") -> list[bytes]:
        path = self.dir / f"{transport}.{suffix}"
        return path.read_bytes().splitlines() if path.exists() else []


@pytest.fixture
def rsyslog(tmp_path) -> Iterator[Rsyslog]:
    if not shutil.which("rsyslogd"):
        pytest.fail("rsyslogd is missing: apt-get install rsyslog rsyslog-openssl (scripts/bootstrap.sh)")
    server = Rsyslog(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _attack(incident: str, tenant: str, event_type: EventType, label: str, **kw) -> Event:
    return Event(event_type, tenant, label, Severity.CRITICAL, incident, ("198.51.100.10", "2001:db8::10"),
                 ("syn_flood",), 0.91, kw.pop("pps", 250000.0), None, kw.pop("dropped", 1234), **kw)


async def test_rsyslog_receives_strict_rfc5424_over_udp_tcp_and_tls(tmp_path, rsyslog):
    cfg = parse_notify_config({"syslog": [
        {"name": "udp", "host": "127.0.0.1", "port": rsyslog.ports["udp"], "transport": "udp", "facility": "local5"},
        {"name": "tcp", "host": "127.0.0.1", "port": rsyslog.ports["tcp"], "transport": "tcp", "facility": "local5",
         "severity_map": {"critical": "alert"}},
        {"name": "tls", "host": "127.0.0.1", "port": rsyslog.ports["tls"], "transport": "tls", "facility": "local5",
         "ca_file": rsyslog.ca},
        # Same listener, but trusting only the system store: the receiver cannot be verified.
        {"name": "tls-untrusted", "host": "127.0.0.1", "port": rsyslog.ports["tls"], "transport": "tls"},
    ]})
    events = [_attack("inc-7", 'ten"ant]\\x', EventType.ATTACK_START, "SYN flood — mitigation on"),
              Event(EventType.POLICY_CHANGE, "alpha", "threshold raised", Severity.NOTICE),
              _attack("inc-7", 'ten"ant]\\x', EventType.ATTACK_END, "attack over")]
    bus = EventBus()
    async with NotifierManager(cfg, bus, tmp_path / "state", retry=FAST_RETRY) as mgr:
        for e in events:
            bus.publish(e)
        await await_until(lambda: all(len(rsyslog.lines(t)) == 3 for t in ("udp", "tcp", "tls"))
                          and all(mgr.status()[n].delivered == 3 for n in ("udp", "tcp", "tls"))
                          and mgr.status()["tls-untrusted"].last_error,
                          timeout=15, what="three messages at each listener, acknowledged")
        status = mgr.status()
    assert all(status[n].healthy and status[n].backlog == 0 for n in ("udp", "tcp", "tls"))
    untrusted = status["tls-untrusted"]
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.last_error
    assert (untrusted.delivered, untrusted.backlog, untrusted.healthy) == (0, 3, False)
    for transport in ("udp", "tcp", "tls"):
        parsed = [parse_rfc5424(line) for line in rsyslog.lines(transport)]
        assert [p["msgid"] for p in parsed] == ["ATTACK_START", "POLICY_CHANGE", "ATTACK_END"]
        assert [p["msg"] for p in parsed] == [e.message for e in events]
        start = parsed[0]
        assert start["app"] == "seawall" and start["procid"] == str(os.getpid())
        assert start["pri"] == 21 * 8 + (1 if transport == "tcp" else 2)
        assert start["sd"][SD_ID]["tenant"] == 'ten"ant]\\x'
        assert start["sd"][SD_ID]["dst"] == "198.51.100.10,2001:db8::10"
        assert (start["sd"][SD_ID]["pps"], start["sd"][SD_ID]["dropped"]) == ("250000", "1234")
        # rsyslog's own RFC 5424 parser agrees on the fields.
        rs_msgid, rs_app, _, rs_facility, _, rs_sd = rsyslog.lines(transport, "parsed")[0].decode().split("|", 5)
        assert (rs_msgid, rs_app, rs_facility) == ("ATTACK_START", "seawall", "21")
        assert rs_sd.startswith(f"[{SD_ID} tenant=")


async def test_rsyslog_down_and_manager_restart_lose_and_duplicate_nothing(tmp_path, rsyslog):
    cfg = parse_notify_config({"syslog": [
        {"name": "noc-tcp", "host": "127.0.0.1", "port": rsyslog.ports["tcp"], "transport": "tcp"}]})
    state = tmp_path / "state"
    bus = EventBus()
    async with NotifierManager(cfg, bus, state, retry=FAST_RETRY) as mgr:
        bus.publish(_attack("A", "alpha", EventType.ATTACK_START, "A start"))
        bus.publish(_attack("A", "alpha", EventType.ATTACK_UPDATE, "A update 0"))
        await await_until(lambda: len(rsyslog.lines("tcp")) == 2, what="first two messages")
        rsyslog.stop()  # the receiver goes away in the middle of the attack
        for i in range(1, 4):
            bus.publish(_attack("A", "alpha", EventType.ATTACK_UPDATE, f"A update {i}", pps=1000.0 * i))
        bus.publish(_attack("B", "beta", EventType.ATTACK_START, "B start"))
        bus.publish(_attack("A", "alpha", EventType.ATTACK_END, "A end"))
        await await_until(lambda: mgr.status()["noc-tcp"].consecutive_failures >= 2, what="failed retries")
        assert mgr.status()["noc-tcp"].backlog == 3  # A update 3 (merged), B start, A end
    async with NotifierManager(cfg, bus, state, retry=FAST_RETRY) as mgr:  # the appliance restarts
        bus.publish(_attack("B", "beta", EventType.ATTACK_UPDATE, "B update"))
        bus.publish(_attack("B", "beta", EventType.ATTACK_END, "B end"))
        await await_until(lambda: mgr.status()["noc-tcp"].backlog == 5, what="all queued")
        rsyslog.start()  # the receiver is back
        await await_until(lambda: mgr.status()["noc-tcp"].backlog == 0, timeout=20, what="backlog drained")
        status = mgr.status()["noc-tcp"]
    wait_until(lambda: len(rsyslog.lines("tcp")) >= 7, what="seven messages on disk")
    parsed = [parse_rfc5424(line) for line in rsyslog.lines("tcp")]
    assert [p["msg"] for p in parsed] == ["A start", "A update 0", "A update 3", "B start", "A end",
                                          "B update", "B end"]
    assert parsed[2]["sd"][SD_ID]["pps"] == "3000"  # the merged update carries the latest values
    deliveries = [p["sd"][SD_ID]["delivery"] for p in parsed]
    assert len(set(deliveries)) == len(deliveries)
    assert status.healthy and status.delivered == 7 and status.last_error and "127.0.0.1" in status.last_error


# --- net-snmp ---------------------------------------------------------------------------


def net_snmp_env(tmp_path: pathlib.Path) -> dict[str, str]:
    """The environment of a net-snmp tool that reads and writes nothing of the machine's.

    net-snmp keeps state in its persistent directory (/var/lib/snmp: engine boots, USM
    users, certificate indexes) and reads snmp.conf from /etc/snmp and ~/.snmp; a test
    that shares them depends on what ran before it. SNMP_PERSISTENT_DIR moves the state
    into a fresh directory of the test's own, SNMPCONFPATH the configuration search path
    (to an empty one: the tools read only what their command line names)."""
    persistent, conf = tmp_path / "snmp-persistent", tmp_path / "snmp-conf"
    conf.mkdir(exist_ok=True)
    return {**os.environ, "SNMP_PERSISTENT_DIR": str(persistent), "SNMPCONFPATH": str(conf)}


def net_snmp_problems(stderr: str, tmp_path: pathlib.Path) -> list[str]:
    """What a net-snmp tool said on stderr, except the notice of creating its fresh persistent
    directory under `tmp_path` (its first run on any machine prints it)."""
    return [line for line in stderr.splitlines() if line.strip()
            and not line.startswith(f"Created directory: {tmp_path}/")]


def test_seawall_mib_compiles_with_net_snmp(tmp_path):
    result = subprocess.run(["snmptranslate", "-M", MIB_PATH, "-m", "SEAWALL-MIB", "-On",
                             "SEAWALL-MIB::seawallAttackStart", "SEAWALL-MIB::seawallSystem",
                             "SEAWALL-MIB::seawallPacketsDropped"], capture_output=True, text=True, timeout=30,
                            env=net_snmp_env(tmp_path))
    assert result.returncode == 0 and not net_snmp_problems(result.stderr, tmp_path), result.stderr
    assert result.stdout.split() == [".1.3.6.1.4.1.32473.0.1", ".1.3.6.1.4.1.32473.0.5", ".1.3.6.1.4.1.32473.1.9"]


@pytest.fixture
def snmptrapd(tmp_path) -> Iterator[tuple[int, pathlib.Path]]:
    port = free_port(socket.SOCK_DGRAM)
    conf = tmp_path / "snmptrapd.conf"
    # Traps come from our engine (-e its id); informs are checked against snmptrapd's own.
    conf.write_text(
        "authCommunity log s3cret-community\n"
        f"createUser -e 0x{V3_ENGINE_ID} nocuser SHA auth-pass-123 AES priv-pass-123\n"
        "createUser nocuser SHA auth-pass-123 AES priv-pass-123\n"
        "authUser log nocuser priv\n")
    log = tmp_path / "traps.log"
    argv = ["snmptrapd", "-f", "-n", "-C", "-c", str(conf), "-Lf", str(log), "-M", MIB_PATH, "-m", "SEAWALL-MIB",
            "-p", str(tmp_path / "snmptrapd.pid"), f"udp:127.0.0.1:{port}"]
    with process(argv, tmp_path / "snmptrapd.out", env=net_snmp_env(tmp_path)) as proc:
        wait_until(lambda: proc.poll() is not None or listening("u", port), what="snmptrapd listening")
        assert proc.poll() is None, (tmp_path / "snmptrapd.out").read_text()
        yield port, log


def decoded_notifications(log: pathlib.Path) -> list[dict[str, str]]:
    """Each notification snmptrapd logged, as {varbind name: value} for SEAWALL-MIB names."""
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        if "SEAWALL-MIB::" not in line:
            continue
        fields = {}
        for varbind in line.split("\t"):
            name, _, value = varbind.partition(" = ")
            if "OID: SEAWALL-MIB::" in value:
                fields["notification"] = value.split("SEAWALL-MIB::")[1]
            elif name.startswith("SEAWALL-MIB::"):
                fields[name.removeprefix("SEAWALL-MIB::")] = value.removeprefix("STRING: ")
        out.append(fields)
    return out


async def test_snmptrapd_decodes_v2c_and_v3_traps_and_informs_by_name(tmp_path, snmptrapd):
    port, log = snmptrapd
    common = {"host": "127.0.0.1", "port": port, "timeout": 2.0, "retries": 1}
    v3 = {"version": "3", "user": "nocuser", "auth_key": "auth-pass-123", "priv_key": "priv-pass-123",
          "auth_protocol": "SHA", "priv_protocol": "AES"}
    cfg = parse_notify_config({"snmp": [
        {**common, "name": "v2c-trap", "community": "s3cret-community", "tenants": ["t1"]},
        {**common, "name": "v2c-inform", "community": "s3cret-community", "inform": True, "tenants": ["t2"]},
        {**common, **v3, "name": "v3-trap", "engine_id": V3_ENGINE_ID, "tenants": ["t3"]},
        {**common, **v3, "name": "v3-inform", "inform": True, "tenants": ["t4"]},
        {**common, **v3, "name": "v3-wrong-key", "inform": True, "tenants": ["t4"], "auth_key": "not-the-key"},
    ]})
    bus = EventBus()
    kinds = [EventType.ATTACK_START, EventType.ATTACK_UPDATE, EventType.ATTACK_END, EventType.POLICY_CHANGE]
    async with NotifierManager(cfg, bus, tmp_path / "state", retry=RetryPolicy(initial_s=5.0, max_s=5.0)) as mgr:
        for i, kind in enumerate(kinds, start=1):
            bus.publish(Event(kind, f"t{i}", f"event for t{i}", Severity.WARNING, f"inc-{i}", ("203.0.113.5",),
                              ("udp_flood", "dns_amp"), 0.876, 3_000_000_000.0, None, 2**40))
        await await_until(lambda: len(decoded_notifications(log)) == 4 and all(
            mgr.status()[n].delivered == 1 for n in ("v2c-trap", "v2c-inform", "v3-trap", "v3-inform")),
            timeout=20, what="four notifications logged and acknowledged")
        await await_until(lambda: mgr.status()["v3-wrong-key"].last_error, timeout=20, what="inform refused")
        status = mgr.status()
    assert status["v3-wrong-key"].delivered == 0 and status["v3-wrong-key"].backlog == 1
    by_tenant = {n["seawallTenant"]: n for n in decoded_notifications(log)}
    expected = {"t1": "seawallAttackStart", "t2": "seawallAttackUpdate", "t3": "seawallAttackEnd",
                "t4": "seawallPolicyChange"}
    assert {t: n["notification"] for t, n in by_tenant.items()} == expected
    t1 = by_tenant["t1"]
    assert t1 == {
        "notification": "seawallAttackStart", "seawallEventType": "ATTACK_START", "seawallSeverity": "warning",
        "seawallTenant": "t1", "seawallIncidentId": "inc-1", "seawallDestinations": "203.0.113.5",
        "seawallVectors": "udp_flood,dns_amp", "seawallConfidence": "Gauge32: 88 percent",
        "seawallPacketsPerSecond": "Counter64: 3000000000 packets per second",
        "seawallPacketsDropped": f"Counter64: {2**40} packets", "seawallMessage": "event for t1"}
