"""`seawall run` refuses before it attaches anything, and says when it forwards (issue 12).

- item 15: a bad `[[notify.webhook]]` is refused with exit 2 and every problem, nothing attached;
- item 19: a veth whose peer has neither GRO nor an XDP program is refused with the command to
  run; with GRO on the peer the appliance runs;
- item 20: `seawall status` says `forwarding`, and systemd's READY=1 arrives only once the
  bridge forwards: a TCP connection right after it succeeds on the first try.

The appliance's NICs here are veths in the root namespace whose peers live in namespaces the
test creates (`<tag>-up`, `<tag>-sw`); the lab (appliance.lab) carries item 20's traffic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
import uuid

import pytest
import tomli_w

from appliance.lab import lab_config
from appliance.lab.nsenter import run_in_netns
from appliance.nics import link_state
from appliance.runner import ApplianceProcess
from dataplane.dataplane import purge
from tests.netns.test_lab_topology import _http_get
from tests.support import wait_until

PEER = "peer0"             # each NIC's peer, inside its own namespace
RUN_TIMEOUT_S = 90.0       # seconds for `seawall run` to refuse or to forward (bcc compiles first)
TENANTS = [{"id": "alpha", "name": "Alpha", "prefixes": ["198.51.100.0/24"], "mode": "mitigate"}]


def ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"ip {' '.join(argv)}: {result.stderr.strip()}")
    return result


@dataclasses.dataclass
class Wire:
    """The appliance's two NICs, each a veth whose peer sits in a namespace of its own."""

    tag: str
    tmp: pathlib.Path

    @property
    def nics(self) -> dict[str, tuple[str, str]]:
        """role -> (NIC in the root namespace, the peer's namespace)."""
        return {"external": (f"{self.tag}e", f"{self.tag}-up"), "internal": (f"{self.tag}i", f"{self.tag}-sw")}

    @property
    def bpffs(self) -> str:
        return f"/sys/fs/bpf/seawall-{self.tag}"

    def up(self, peer_gro: bool) -> None:
        for nic, ns in self.nics.values():
            ip("netns", "add", ns)
            ip("link", "add", nic, "type", "veth", "peer", "name", PEER, "netns", ns)
            ip("link", "set", nic, "up")
            ip("-n", ns, "link", "set", PEER, "up")
            self.set_gro(ns, peer_gro)

    @staticmethod
    def set_gro(ns: str, on: bool) -> None:
        subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", PEER, "gro", "on" if on else "off"],
                       check=True, capture_output=True, timeout=30)

    def down(self) -> None:
        purge(self.bpffs)
        for nic, ns in self.nics.values():
            ip("link", "del", nic, check=False)   # gone already when its namespace went first
            ip("netns", "del", ns, check=False)

    def document(self, **sections) -> dict:
        (external, _), (internal, _) = self.nics["external"], self.nics["internal"]
        return {"appliance": {"external": external, "internal": internal, "state_dir": str(self.tmp / "state"),
                              "bpffs": self.bpffs},
                "securewatch": {"enabled": False}, "tenants": TENANTS, **sections}

    def config(self, **sections) -> pathlib.Path:
        path = self.tmp / "seawall.toml"
        path.write_text(tomli_w.dumps(self.document(**sections)))
        return path

    def xdp_programs(self) -> dict[str, int]:
        return {nic: link_state(nic).xdp_prog_id for nic, _ in self.nics.values()}


@pytest.fixture
def wire(tmp_path, request):
    wire = Wire(f"pf{uuid.uuid4().hex[:6]}", tmp_path)
    request.addfinalizer(wire.down)
    return wire


def seawall_run(config: pathlib.Path, log: pathlib.Path) -> subprocess.CompletedProcess:
    """`seawall run` expected to refuse: its exit status and output. A run that attaches and keeps
    running instead is stopped (by its pid) and reported as the failure it is."""
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate(timeout=10)
        raise AssertionError(f"seawall run did not refuse: still running after {RUN_TIMEOUT_S} s\n"
                             f"{stderr[-2000:]}") from None
    log.write_text(stdout + stderr)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_run_refuses_a_bad_notify_webhook_before_attaching_anything(wire):
    """Item 15: the notifiers are validated with the rest of the file; exit 2, every problem, no traceback,
    and neither NIC has an XDP program afterwards."""
    wire.up(peer_gro=True)
    config = wire.config(notify={"webhook": [{"name": "noc", "url": "ftp://hooks.example/seawall"}]})
    result = seawall_run(config, wire.tmp / "run.log")
    assert result.returncode == 2, result.stderr
    assert "notify.webhook[0].url" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert wire.xdp_programs() == dict.fromkeys(wire.xdp_programs(), 0)
    assert not pathlib.Path(wire.bpffs).exists()


def test_run_lists_every_problem_of_the_file_and_the_notifiers_at_once(wire):
    wire.up(peer_gro=True)
    config = wire.config(notify={"webhook": [{"name": "noc", "url": "ftp://hooks.example/seawall"}]})
    text = config.read_text().replace('internal = "', 'internal = "nosuch')
    config.write_text(text)
    result = seawall_run(config, wire.tmp / "run.log")
    assert result.returncode == 2
    # The webhook's two problems (scheme, missing secret) and the missing NIC, in one answer.
    assert "3 problems" in result.stderr and "does not exist" in result.stderr, result.stderr
    assert "notify.webhook[0].url" in result.stderr and "notify.webhook[0].secret" in result.stderr
    assert wire.xdp_programs()[wire.nics["external"][0]] == 0


def test_run_refuses_a_veth_whose_peer_has_neither_gro_nor_xdp_and_says_what_to_run(wire):
    """Item 19: the kernel would drop every frame redirected to such a veth; the refusal names the
    peer, its namespace and the exact command, and nothing is attached."""
    wire.up(peer_gro=False)
    wire.set_gro(wire.nics["external"][1], True)   # only the internal NIC's peer is wrong
    result = seawall_run(wire.config(), wire.tmp / "run.log")
    internal, ns = wire.nics["internal"]
    assert result.returncode == 1, result.stderr
    assert f"ip netns exec {ns} ethtool -K {PEER} gro on" in result.stderr, result.stderr
    assert f"{internal}:" in result.stderr and f"{wire.nics['external'][0]}:" not in result.stderr
    assert wire.xdp_programs() == dict.fromkeys(wire.xdp_programs(), 0)


def test_run_with_gro_on_both_peers_forwards_and_status_follows_the_links(wire):
    """Item 19's other side, and item 20's state: with GRO on the peers `seawall run` runs and
    reports `forwarding`; a NIC losing its carrier, or a peer losing GRO, turns it off, and back on."""
    wire.up(peer_gro=True)
    proc = ApplianceProcess(wire.document(), wire.tmp / "seawall.toml", wire.tmp / "run.log")
    with proc:   # start() returns once the status says forwarding
        assert all(wire.xdp_programs().values())
        status = json.loads(subprocess.run(
            [sys.executable, "-m", "appliance.cli", "status", "--config", str(proc.config_path), "--json"],
            capture_output=True, text=True, timeout=60, check=True).stdout)
        assert status["forwarding"] is True and status["forwarding_state"] == "forwarding"
        external, ns = wire.nics["external"]
        ip("-n", ns, "link", "set", PEER, "down")   # the upstream side goes away: no carrier on `external`
        down = wait_until(lambda: (s := proc.status()).get("forwarding") is False and s, timeout=10,
                          what="forwarding false after the carrier loss")
        assert external in down["forwarding_state"], down["forwarding_state"]
        ip("-n", ns, "link", "set", PEER, "up")
        wait_until(lambda: proc.status().get("forwarding"), timeout=10, what="forwarding again")
        internal, internal_ns = wire.nics["internal"]
        wire.set_gro(internal_ns, False)   # now the kernel would drop what is bridged to `internal`
        off = wait_until(lambda: (s := proc.status()).get("forwarding") is False and s, timeout=20,
                         what="forwarding false once the peer lost GRO")
        assert f"ip netns exec {internal_ns} ethtool -K {PEER} gro on" in off["forwarding_state"]
        wire.set_gro(internal_ns, True)
        wait_until(lambda: proc.status().get("forwarding"), timeout=10, what="forwarding with GRO back")


def test_systemd_ready_comes_once_forwarding_and_the_first_tcp_connection_succeeds(lab, tmp_path, request):
    """Item 20: `seawall run` under `Type=notify` semantics. The test plays systemd: it binds the
    $NOTIFY_SOCKET datagram socket, waits for READY=1, then opens one TCP connection through the
    bridge, which must succeed on its first try; the status says forwarding at that moment."""
    config = lab_config(lab.name)
    config["appliance"]["state_dir"] = str(tmp_path / "state")
    config["securewatch"] = {"enabled": False}
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    request.addfinalizer(listener.close)
    listener.bind(str(notify_path))
    listener.settimeout(0.2)  # seconds per receive while polling for READY=1
    proc = ApplianceProcess(config, tmp_path / "seawall.toml", tmp_path / "seawall.log",
                            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)})

    def teardown():
        proc.stop()
        purge(config["appliance"]["bpffs"])

    request.addfinalizer(teardown)
    proc.launch()
    messages: list[str] = []

    def ready() -> bool:
        assert proc.proc.poll() is None, (tmp_path / "seawall.log").read_text()[-2000:]
        try:
            messages.append(listener.recv(4096).decode())
        except TimeoutError:
            pass
        return any("READY=1" in m.split("\n") for m in messages)

    wait_until(ready, timeout=RUN_TIMEOUT_S, interval=0, what="READY=1 on $NOTIFY_SOCKET")
    web = next(s for s in lab.servers if s.role == "web")
    page = run_in_netns(lab.ns("cli"), _http_get, socket.AF_INET, web.ipv4)   # one try, no retry
    assert page.startswith(b"HTTP/1.1 200 OK")
    status = proc.status()
    assert status["forwarding"] is True and status["pid"] == proc.proc.pid
    assert proc.stop() == 0
    listener.setblocking(False)
    with contextlib.suppress(BlockingIOError):   # what it sent before exiting is queued on our socket
        while True:
            messages.append(listener.recv(4096).decode())
    assert any("STOPPING=1" in m.split("\n") for m in messages), messages
