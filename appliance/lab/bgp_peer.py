"""The lab's upstream BGP router: BIRD 2 in its own namespace (lab scaffolding, not product).

    with BirdPeer("swbab12cd", tmp_path) as peer:   # namespace, veth to the root namespace, BIRD
        peer.flow4()                                # `birdc show route table flowtab4 all`, parsed
        peer.unicast4()                             # master4: the RTBH routes with their communities
    BirdPeer("swbab12cd", tmp_path, netns="sw-up")  # BIRD in a namespace that exists (the lab's router)

The appliance's end of the management link (`APPLIANCE` on link 0) is in the root namespace, where
`seawall run` and its ExaBGP live. Peers up at the same time take links of their own (`link=N`: the
N-th /30 and /64 below link 0), and `up()` refuses a link that is in use: link 0 is the lab's upstream
router (`appliance.lab.upstream`), the netns test modules that run beside others take 1 to 4.

BIRD keeps its config, socket and log in the test's temporary directory; it is started in the
foreground and stopped by its pid; the namespace (unless it was given: then only BIRD and the veth are
ours) and the veth go on every exit path. BIRD decodes what ExaBGP encodes: the check is made by
another implementation than the one that announced. Used by the netns tests and `seawall bench
escalation`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import pathlib
import signal
import subprocess
import time

from appliance.lab.edge_router import parse_routes

APPLIANCE = "192.0.2.249"          # the appliance's management address (/30 with the peer)
PEER = "192.0.2.250"
APPLIANCE6 = "2001:db8:ffff:fff0::1"   # the same link's IPv6 addresses (IPv6 RTBH next hop)
PEER6 = "2001:db8:ffff:fff0::2"
PREFIX_LEN = 30
LINK_STRIDE = 4                    # addresses per management link: link N is the N-th /30 below link 0
LOCAL_AS = 64512                   # the appliance's AS in the tests
PEER_AS = 64500
READY_TIMEOUT_S = 15.0             # seconds for BIRD to answer on its control socket

PR_SET_PDEATHSIG = 1               # prctl(2): the signal a child gets when its parent dies


def _die_with_parent() -> None:
    """In BIRD's process before exec: SIGTERM when whoever started it dies, however it dies (a
    demo or test killed outright leaves no BIRD behind, holding the lab's router namespace)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


class BirdPeer:
    def __init__(self, name: str, workdir: pathlib.Path, netns: str | None = None, *, link: int = 0,
                 peer_as: int = PEER_AS) -> None:
        self.ns = netns or name
        self.own_ns = netns is None
        self.link = link
        # link 0 is the module's addresses; link N the N-th /30 (and /64) below them: several peers at once.
        self.appliance = str(ipaddress.ip_address(APPLIANCE) - LINK_STRIDE * link)
        self.address = str(ipaddress.ip_address(PEER) - LINK_STRIDE * link)
        self.appliance6 = str(ipaddress.ip_address(APPLIANCE6) + (link << 64))
        self.address6 = str(ipaddress.ip_address(PEER6) + (link << 64))
        self.peer_as = peer_as
        self.veth_root, self.veth_peer = f"{name}a", f"{name}b"
        self.dir = pathlib.Path(workdir) / "bird"
        self.socket = self.dir / "bird.ctl"
        self.proc: subprocess.Popen | None = None

    def up(self) -> BirdPeer:
        # Two peers on one link would both route its /30 from the root namespace, and each session would
        # reach whichever veth the kernel picks: refuse, naming who holds it.
        holder = subprocess.run(["ip", "-o", "addr", "show", "to", f"{self.appliance}/32"], check=True,
                                capture_output=True, text=True).stdout.split()
        if holder:
            raise RuntimeError(f"management link {self.link} ({self.appliance}) is already on {holder[1]}: "
                               "each BGP peer that is up at the same time needs a link of its own")
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.own_ns:
            _ip("netns", "add", self.ns)
        _ip("link", "add", self.veth_root, "type", "veth", "peer", "name", self.veth_peer)
        _ip("link", "set", self.veth_peer, "netns", self.ns)
        _ip("addr", "add", f"{self.appliance}/{PREFIX_LEN}", "dev", self.veth_root)
        _ip("addr", "add", f"{self.appliance6}/64", "dev", self.veth_root, "nodad")
        _ip("link", "set", self.veth_root, "up")
        _ip("-n", self.ns, "addr", "add", f"{self.address}/{PREFIX_LEN}", "dev", self.veth_peer)
        _ip("-n", self.ns, "addr", "add", f"{self.address6}/64", "dev", self.veth_peer, "nodad")
        _ip("-n", self.ns, "link", "set", self.veth_peer, "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")
        conf = self.dir / "bird.conf"
        conf.write_text(f"""
router id {self.address};
log "{self.dir / 'bird.log'}" all;
flow4 table flowtab4;
flow6 table flowtab6;
protocol device {{}}
protocol bgp seawall {{
  local {self.address} as {self.peer_as};
  neighbor {self.appliance} as {LOCAL_AS};
  connect retry time 1;
  error wait time 1, 2;
  ipv4 {{ import all; export none; }};
  ipv6 {{ import all; export none; }};
  flow4 {{ table flowtab4; import all; export none; }};
  flow6 {{ table flowtab6; import all; export none; }};
}}
""")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, "bird", "-f", "-c", str(conf),
                                      "-s", str(self.socket)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "bird.stderr", "wb"),  # noqa: SIM115
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (self.socket.exists() and "ready" in self.birdc("show status")):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"BIRD did not answer on {self.socket}: "
                                   f"{(self.dir / 'bird.stderr').read_text()[-500:]}")
            time.sleep(0.05)  # poll interval while BIRD starts
        return self

    def down(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.veth_root)
        if self.own_ns:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", self.ns)

    def __enter__(self) -> BirdPeer:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc) -> None:
        self.down()

    def birdc(self, command: str) -> str:
        return subprocess.run(["birdc", "-s", str(self.socket), *command.split()], capture_output=True,
                              text=True, timeout=10).stdout

    def established(self) -> bool:
        return "Established" in self.birdc("show protocols seawall")

    def routes(self, table: str) -> dict[str, str]:
        """route (BIRD's rendering of the NLRI) -> its block of attributes."""
        return parse_routes(self.birdc(f"show route table {table} all"))

    def flow4(self) -> dict[str, str]:
        return self.routes("flowtab4")

    def flow6(self) -> dict[str, str]:
        return self.routes("flowtab6")

    def unicast4(self) -> dict[str, str]:
        return self.routes("master4")

    def unicast6(self) -> dict[str, str]:
        return self.routes("master6")
