"""The network-namespace lab: one L2 segment crossing the appliance.

```
 <p>-cli ─┐                                  root namespace (the appliance box)
 <p>-att ─┤ <p>-up (router) ── ext ⇄ <p>-ext [appliance] <p>-int ⇄ uplink ── <p>-sw (bridge) ── <p>-s1..s8
```

`<p>-ext` and `<p>-int` live in the root namespace (bpffs pinning needs the root
mount namespace); everything else lives in namespaces named `<p>-<role>`. The
router owns the tenants' gateway addresses on the segment and routes the
clients' and attacker's links onto it. Without the appliance nothing crosses
`<p>-ext` ⇄ `<p>-int`; `up(linux_bridge=True)` joins them with `<p>-br`.

Everything the lab creates is found again by name (`down()` also cleans up after
a crash); the only processes it kills are those whose pids it recorded in
`/run/seawall-lab/<p>/`.

Namespaces, links, addresses, routes, sysctls and offloads go through pyroute2
(`appliance/lab/netlink.py`). What still runs as a command, and why:
- `ip netns exec <ns> python -m appliance.lab.services` (here) and `... appliance.lab.traffic`
  (traffic.py): processes that must live inside a namespace; `ip netns exec` also mounts
  the namespace's own /sys and execs, so the recorded pid is the service itself.
- `Lab.exec()`: any command a caller wants to run inside a lab namespace.
- The benchmarks (appliance/bench/compare*.py): `nft` (rulesets for the nftables
  baselines), `xdp-filter` and `fastnetmon` (the tools compared against, run inside the
  DUT's namespace), the echo client/server (processes inside a namespace) and
  `sh -c 'echo N > /sys/class/net/<dev>/threaded'` (threaded NAPI is a sysfs attribute
  with no netlink call in pyroute2; /sys must be the namespace's own, as `ip netns exec` mounts it).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import structlog
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from appliance.lab import netlink

log = structlog.get_logger(__name__)

STATE_ROOT = pathlib.Path("/run/seawall-lab")
LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")  # "<name>-ext" must fit IFNAMSIZ (15 chars)
SERVICE_READY_TIMEOUT_S = 30.0      # seconds for all server processes to bind their sockets
PROCESS_EXIT_TIMEOUT_S = 3.0        # seconds between SIGTERM and SIGKILL on down()
CMDLINE_SETTLE_S = 1.0              # seconds a live process may read an empty command line (it is exec-ing)
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# Services every server runs (see appliance/lab/services.py).
HTTP_PORT = 80
HTTPS_PORT = 443   # the shop's TLS endpoint (appliance/lab/labserver.py)
GAME_PORT = 28960
DNS_PORT = 53

# Addresses: documentation ranges only; 198.18.0.0/15 is reserved for spoofed sources.
SPOOF_V4 = "198.18.0.0/15"
SPOOF_V6 = "2001:db8:5f00::/40"
CLIENT_V4, CLIENT_GW_V4 = "192.0.2.10/25", "192.0.2.1/25"
CLIENT_V6, CLIENT_GW_V6 = "2001:db8:ffff::10/64", "2001:db8:ffff::1/64"
ATTACKER_V4, ATTACKER_GW_V4 = "192.0.2.130/25", "192.0.2.129/25"
ATTACKER_V6, ATTACKER_GW_V6 = "2001:db8:fffe::10/64", "2001:db8:fffe::1/64"

# The shop: the web server whose HTTP and HTTPS are served with real limits (workers, connection
# table, a TLS certificate made at lab start) for the application-layer floods of the botnet.
SHOP_SERVER = "s7"
SHOP_NAME = "shop.gamma.example"

# Roles of the namespaces a lab creates ("<p>-<role>"); servers are "s<N>".
FIXED_ROLES = ("up", "sw", "cli", "att")
ROLE_RE = r"(?:up|sw|cli|att|s\d+)"


class LabError(RuntimeError):
    """A lab operation failed; the message names the command and what it said."""


@dataclasses.dataclass(frozen=True, slots=True)
class TenantSpec:
    id: str
    name: str
    ipv4: str           # tenant prefix (CIDR)
    ipv6: str
    gateway4: str       # router address on the segment (the servers' default gateway)
    gateway6: str


TENANTS: tuple[TenantSpec, ...] = (
    TenantSpec("alpha", "Alpha Gaming", "198.51.100.0/25", "2001:db8:a::/48", "198.51.100.1", "2001:db8:a::1"),
    TenantSpec("beta", "Beta Hosting", "198.51.100.128/25", "2001:db8:b::/48", "198.51.100.129",
               "2001:db8:b::1"),
    TenantSpec("gamma", "Gamma Shop", "203.0.113.0/24", "2001:db8:c::/48", "203.0.113.1", "2001:db8:c::1"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Server:
    name: str           # short name, "s1"
    tenant: str         # tenant id
    role: str           # "game" (the game server) or "web"
    ipv4: str
    ipv6: str
    mac: str            # deterministic: the generator addresses frames to it without ARP
    namespace: str

    @property
    def tenant_spec(self) -> TenantSpec:
        return next(t for t in TENANTS if t.id == self.tenant)


# (short name, tenant, role, host part v4, host part v6)
_SERVER_PLAN = (
    ("s1", "alpha", "game", 10, 0x10), ("s2", "alpha", "web", 11, 0x11), ("s3", "alpha", "web", 12, 0x12),
    ("s4", "beta", "web", 10, 0x10), ("s5", "beta", "web", 11, 0x11), ("s6", "beta", "web", 12, 0x12),
    ("s7", "gamma", "web", 10, 0x10), ("s8", "gamma", "web", 11, 0x11),
)


def _plan_servers(prefix: str) -> tuple[Server, ...]:
    servers = []
    for index, (short, tenant_id, role, host4, host6) in enumerate(_SERVER_PLAN, start=1):
        tenant = next(t for t in TENANTS if t.id == tenant_id)
        net4 = ipaddress.ip_network(tenant.ipv4)
        net6 = ipaddress.ip_network(tenant.ipv6)
        servers.append(Server(
            name=short, tenant=tenant_id, role=role,
            ipv4=str(net4.network_address + host4), ipv6=str(net6.network_address + host6),
            mac=f"02:53:57:00:00:{index:02x}",  # locally administered, "SW"
            namespace=f"{prefix}-{short}"))
    return tuple(servers)


def validate_lab_name(name: str) -> str:
    if not LAB_NAME_RE.match(name):
        raise ValueError(f"lab name {name!r}: use 1-10 lower-case letters and digits, starting with a letter")
    return name


def lab_config(name: str = "sw") -> dict:
    """The appliance config (the shape of appliance/examples/lab.toml) for the lab called `name`."""
    validate_lab_name(name)
    tenants = []
    for tenant in TENANTS:
        table: dict = {"id": tenant.id, "name": tenant.name, "prefixes": [tenant.ipv4, tenant.ipv6],
                       "mode": "mitigate"}
        if tenant.id == "gamma":
            # Examples of static lists: the monitoring host may always reach the shop's web
            # servers; a known-bad reflector range is always dropped.
            table["allow"] = [{"src": "192.0.2.10/32", "proto": "tcp", "dport": HTTP_PORT}]
            table["deny"] = [{"src": "198.19.255.0/24", "proto": "udp", "sport": 123}]
        tenants.append(table)
    return {
        "appliance": {"external": f"{name}-ext", "internal": f"{name}-int",
                      "state_dir": f"/var/lib/seawall/{name}", "bpffs": f"/sys/fs/bpf/seawall-{name}"},
        "tenants": tenants,
    }


@dataclasses.dataclass(slots=True)
class LabStatus:
    name: str
    namespaces: list[str]
    links: list[str]                 # root-namespace links the lab owns
    bridge: bool                     # `<p>-br` joins ext and int
    xdp: dict[str, bool]             # external/internal interface -> an XDP program is attached
    processes: dict[str, int | None]  # server -> pid while alive, None when dead or missing

    @property
    def exists(self) -> bool:
        return bool(self.namespaces or self.links or any(self.processes.values()))

    def complete(self, expected_namespaces: list[str]) -> bool:
        return (sorted(self.namespaces) == sorted(expected_namespaces)
                and len(self.links) >= 2 and all(self.processes.values()) and bool(self.processes))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _doing(what: str):
    """Kernel refusals while doing `what` become a LabError naming it."""
    return netlink.explained(LabError, what)


class Lab:
    """The lab called `name`: namespaces `<name>-*`, root links `<name>-ext|int|br`."""

    def __init__(self, name: str = "sw"):
        self.name = validate_lab_name(name)
        self.servers: tuple[Server, ...] = _plan_servers(name)
        self.state_dir = STATE_ROOT / name

    # -- names ------------------------------------------------------------------
    @property
    def external_if(self) -> str:
        return f"{self.name}-ext"

    @property
    def internal_if(self) -> str:
        return f"{self.name}-int"

    @property
    def bridge_if(self) -> str:
        return f"{self.name}-br"

    def ns(self, role: str) -> str:
        """Namespace name for a role: "up", "sw", "cli", "att" or a server's short name."""
        if role not in FIXED_ROLES and not any(s.name == role for s in self.servers):
            raise ValueError(f"unknown lab role {role!r}")
        return f"{self.name}-{role}"

    @property
    def namespaces(self) -> list[str]:
        return [self.ns(r) for r in FIXED_ROLES] + [s.namespace for s in self.servers]

    # Interfaces inside the namespaces (their names only matter inside each namespace).
    UPSTREAM_IF = "ext"      # in <p>-up, the peer of <p>-ext: the generator sends here
    SWITCH_UPLINK_IF = "uplink"
    HOST_IF = "eth0"         # in cli, att and every server namespace

    def server(self, key: str) -> Server:
        """A server by short name ("s1"), role ("game"), address, or "shop" (the server with real limits)."""
        if key == "shop":
            key = SHOP_SERVER
        for s in self.servers:
            if key in (s.name, s.ipv4, s.ipv6, s.namespace):
                return s
        games = [s for s in self.servers if s.role == key]
        if games:
            return games[0]
        raise ValueError(f"no lab server {key!r} (servers: {', '.join(s.name for s in self.servers)})")

    @property
    def game_server(self) -> Server:
        return self.server("game")

    @property
    def shop_server(self) -> Server:
        return self.server(SHOP_SERVER)

    @property
    def shop_cert(self) -> pathlib.Path:
        """The shop's certificate (PEM), made at lab start; clients verify the shop against it."""
        return self.state_dir / f"{SHOP_NAME}.crt"

    @property
    def shop_stats(self) -> pathlib.Path:
        """What reached the shop (JSON, appliance/lab/labserver.py), rewritten while it runs."""
        return self.state_dir / f"{SHOP_SERVER}.shop.json"

    def exec(self, role: str, *argv: str, check: bool = True, timeout: float | None = None
             ) -> subprocess.CompletedProcess:
        """Run a command inside the namespace of `role`."""
        proc = subprocess.run(["ip", "netns", "exec", self.ns(role), *argv], capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise LabError(f"[{self.ns(role)}] {' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    # -- lifecycle --------------------------------------------------------------
    def up(self, linux_bridge: bool = False) -> LabStatus:
        """Build the lab (idempotent: a complete lab is kept, a partial one is rebuilt)."""
        current = self.status()
        if not current.complete(self.namespaces):
            if current.exists:
                log.info("lab.rebuild", lab=self.name, reason="partial lab found")
                self.down()
            self._build()
        self._set_linux_bridge(linux_bridge)
        self._enable_xdp_receive()
        status = self.status()
        log.info("lab.up", lab=self.name, linux_bridge=linux_bridge, servers=len(self.servers))
        return status

    def down(self) -> None:
        """Remove everything the lab created, also after a crash."""
        self._kill_recorded_processes()
        # "Already gone" is fine (netlink helpers); any other refusal is reported once the rest
        # is removed, so one stuck link never leaves the namespaces behind.
        failures: list[str] = []
        with netlink.iproute() as ipr:
            for link in self._root_links():
                try:
                    with _doing(f"delete link {link}"):
                        netlink.delete_link(ipr, link)
                except LabError as exc:
                    failures.append(str(exc))
        for ns in self._existing_namespaces():
            try:
                with _doing(f"delete namespace {ns}"):
                    netlink.remove_namespace(ns)
            except LabError as exc:
                failures.append(str(exc))
        if self.state_dir.exists():
            for path in self.state_dir.iterdir():
                path.unlink()
            self.state_dir.rmdir()
        if failures:
            raise LabError("; ".join(failures))
        log.info("lab.down", lab=self.name)

    def status(self) -> LabStatus:
        found = self._root_link_messages()
        links = sorted(found)
        xdp = {ifname: netlink.xdp_attached(found[ifname])
               for ifname in (self.external_if, self.internal_if) if ifname in found}
        processes = {s.name: self._live_pid(s.name) for s in self.servers} if self.state_dir.exists() else {}
        return LabStatus(name=self.name, namespaces=self._existing_namespaces(), links=links,
                         bridge=self.bridge_if in links, xdp=xdp, processes=processes)

    # -- discovery by name --------------------------------------------------------
    def _existing_namespaces(self) -> list[str]:
        pattern = re.compile(rf"^{re.escape(self.name)}-{ROLE_RE}$")
        return [n for n in netlink.namespaces() if pattern.match(n)]

    def _root_link_messages(self) -> dict:
        """The root-namespace links the lab owns: name -> pyroute2 ifinfmsg."""
        wanted = {self.external_if, self.internal_if, self.bridge_if}
        with _doing("list links"), netlink.iproute() as ipr:
            return {link.get("ifname"): link for link in ipr.get_links() if link.get("ifname") in wanted}

    def _root_links(self) -> list[str]:
        return sorted(self._root_link_messages())

    # -- processes --------------------------------------------------------------
    def _pid_file(self, server: str) -> pathlib.Path:
        return self.state_dir / f"{server}.pid"

    def _live_pid(self, server: str) -> int | None:
        """The recorded pid of a server's process if that process is still ours and alive."""
        try:
            pid = int(self._pid_file(server).read_text())
            cmdline = _cmdline(pid)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        # A recycled pid is not ours: the command line names our module and this lab's namespace.
        if b"appliance.lab.services" in cmdline and f"{self.name}-{server}".encode() in cmdline:
            return pid
        return None

    def _kill_recorded_processes(self) -> None:
        if not self.state_dir.exists():
            return
        pids = [pid for s in self.servers if (pid := self._live_pid(s.name))]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + PROCESS_EXIT_TIMEOUT_S
        for pid in pids:
            while pathlib.Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                self._reap(pid)
                time.sleep(0.02)  # poll interval while the process exits
            if pathlib.Path(f"/proc/{pid}").exists():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._reap(pid)

    @staticmethod
    def _reap(pid: int) -> None:
        """Collect a child we started ourselves (no zombie left behind); others are reaped by init."""
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

    # -- building ---------------------------------------------------------------
    def _build(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            for ns in self.namespaces:
                with _doing(f"create namespace {ns}"):
                    netlink.create_namespace(ns)
            self._build_links()
            self._configure_router()
            self._configure_hosts()
            self._start_services()
        except BaseException:
            self.down()
            raise

    def _build_links(self) -> None:
        up, sw = self.ns("up"), self.ns("sw")
        with _doing("build the appliance's links"), netlink.iproute() as ipr:
            # The appliance's two NICs, with their peers in the router and the customer switch.
            netlink.add_veth(ipr, self.external_if, self.UPSTREAM_IF, up)
            netlink.add_veth(ipr, self.internal_if, self.SWITCH_UPLINK_IF, sw)
            for ifname in (self.external_if, self.internal_if):
                # The appliance is a bump in the wire: no addresses, no IPv6 chatter of its own.
                netlink.write_sysctls(None, {f"net.ipv6.conf.{ifname}.disable_ipv6": 1})
                self._offloads(None, ifname)
                netlink.set_up(ipr, ifname)
        # Router links to the clients and the attacker.
        with _doing(f"build the links of {up}"), netlink.iproute(up) as ipr:
            for role in ("cli", "att"):
                netlink.add_veth(ipr, role, self.HOST_IF, self.ns(role))
        # Customer switch: a Linux bridge with the uplink and one port per server.
        with _doing(f"build the switch {sw}"), netlink.iproute(sw) as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            netlink.write_sysctls(sw, {"net.ipv6.conf.all.disable_ipv6": 1})
            bridge = netlink.index(ipr, "br0")
            ipr.link("set", index=netlink.index(ipr, self.SWITCH_UPLINK_IF), master=bridge)
            for s in self.servers:
                netlink.add_veth(ipr, s.name, self.HOST_IF, s.namespace)
                ipr.link("set", index=netlink.index(ipr, s.name), master=bridge)
                with netlink.iproute(s.namespace) as host:
                    host.link("set", index=netlink.index(host, self.HOST_IF), address=s.mac)
            for ifname in ["br0", self.SWITCH_UPLINK_IF, *(s.name for s in self.servers)]:
                if ifname != "br0":
                    self._offloads(sw, ifname)
                netlink.set_up(ipr, ifname)

    def _enable_xdp_receive(self) -> None:
        """Make the veths that receive redirected XDP frames take them.

        A veth accepts XDP frames only with its NAPI enabled, which happens when GRO is switched
        on while the link is up (or an XDP program is attached). Set at creation, GRO shows "on"
        but the NAPI may be missing, and every redirect to it is dropped; so switch it off and on
        again once everything is up: the appliance's peers and the appliance's own NICs."""
        for ns, ifname in ((self.ns("up"), self.UPSTREAM_IF), (self.ns("sw"), self.SWITCH_UPLINK_IF),
                           (None, self.external_if), (None, self.internal_if)):
            with _doing(f"switch GRO off and on again on {ifname} ({ns or 'root namespace'})"):
                netlink.set_offloads(ns, ifname, gro=False)
                netlink.set_offloads(ns, ifname, gro=True)

    @staticmethod
    def _offloads(ns: str | None, ifname: str) -> None:
        """TX checksum offload off (checksums survive XDP_REDIRECT) and GRO on (the veth then
        takes redirected XDP frames, and live frames from the generator, instead of dropping them)."""
        netlink.set_offloads(ns, ifname, tx_checksum=False, gro=True)

    def _configure_router(self) -> None:
        up = self.ns("up")
        with _doing(f"configure the router {up}"), netlink.iproute(up) as ipr:
            netlink.write_sysctls(up, {
                "net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1, "net.ipv4.conf.all.rp_filter": 0,
                "net.ipv6.conf.default.accept_dad": 0, "net.ipv6.conf.all.accept_dad": 0,
                # No duplicate address detection: link-local addresses are usable at once, so
                # neighbour discovery works from the first packet (names are unique per namespace).
                **{f"net.ipv6.conf.{ifname}.accept_dad": 0 for ifname in (self.UPSTREAM_IF, "cli", "att")}})
            upstream = netlink.index(ipr, self.UPSTREAM_IF)
            for tenant in TENANTS:
                plen4 = ipaddress.ip_network(tenant.ipv4).prefixlen
                plen6 = ipaddress.ip_network(tenant.ipv6).prefixlen
                ipr.addr("add", index=upstream, address=tenant.gateway4, prefixlen=plen4)
                ipr.addr("add", index=upstream, address=tenant.gateway6, prefixlen=plen6, flags=IFA_F_NODAD)
            for role, gw4, gw6 in (("cli", CLIENT_GW_V4, CLIENT_GW_V6), ("att", ATTACKER_GW_V4, ATTACKER_GW_V6)):
                link = netlink.index(ipr, role)
                _add_address(ipr, link, gw4)
                _add_address(ipr, link, gw6, flags=IFA_F_NODAD)
            for ifname in (self.UPSTREAM_IF, "cli", "att"):
                self._offloads(up, ifname)
                netlink.set_up(ipr, ifname)
            # The bridge answers SYNs itself (XDP_TX out of <p>-ext, dataplane/bpf/synauth.h); a veth
            # delivers XDP_TX frames to its peer at once only when the peer has an XDP program
            # (GRO is not enough: measured 0.2-3.5 s late), as a real NIC would not need.
            netlink.attach_xdp_pass(ipr, self.UPSTREAM_IF)
            netlink.set_up(ipr, "lo")
            # Replies to spoofed sources (SYN-ACKs, ICMP errors) end here instead of bouncing around.
            ipr.route("add", dst=SPOOF_V4, type="blackhole")
            ipr.route("add", dst=SPOOF_V6, type="blackhole")

    def _configure_hosts(self) -> None:
        hosts = [("cli", CLIENT_V4, CLIENT_V6, CLIENT_GW_V4, CLIENT_GW_V6),
                 ("att", ATTACKER_V4, ATTACKER_V6, ATTACKER_GW_V4, ATTACKER_GW_V6)]
        for s in self.servers:
            t = s.tenant_spec
            hosts.append((s.name, f"{s.ipv4}/{ipaddress.ip_network(t.ipv4).prefixlen}",
                          f"{s.ipv6}/{ipaddress.ip_network(t.ipv6).prefixlen}", t.gateway4, t.gateway6))
        for role, addr4, addr6, gw4, gw6 in hosts:
            ns = self.ns(role)
            with _doing(f"configure the host {ns}"), netlink.iproute(ns) as ipr:
                netlink.write_sysctls(ns, {"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0,
                                           f"net.ipv6.conf.{self.HOST_IF}.accept_dad": 0})
                link = netlink.index(ipr, self.HOST_IF)
                _add_address(ipr, link, addr4)
                _add_address(ipr, link, addr6, flags=IFA_F_NODAD)
                self._offloads(ns, self.HOST_IF)
                netlink.set_up(ipr, "lo")
                netlink.set_up(ipr, self.HOST_IF)
                ipr.route("add", dst="default", gateway=gw4.split("/")[0], family=socket.AF_INET)
                ipr.route("add", dst="default", gateway=gw6.split("/")[0], family=socket.AF_INET6)

    def _start_services(self) -> None:
        from appliance.lab.labserver import make_certificate  # noqa: PLC0415

        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        shop = self.shop_server
        cert, key = make_certificate(self.state_dir, SHOP_NAME, [shop.ipv4, shop.ipv6])
        started: dict[str, subprocess.Popen] = {}
        for s in self.servers:
            extra = (["--shop-cert", str(cert), "--shop-key", str(key), "--shop-stats", str(self.shop_stats)]
                     if s is shop else [])
            logfile = open(self.state_dir / f"{s.name}.log", "ab")  # noqa: SIM115 - handed to the child
            with logfile:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", s.namespace, sys.executable, "-m", "appliance.lab.services",
                     "--lab-namespace", s.namespace, "--name", s.name, "--tenant", s.tenant,
                     "--ipv4", s.ipv4, "--ipv6", s.ipv6, "--ready-file", str(self.state_dir / f"{s.name}.ready"),
                     *extra],
                    stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True)
            # `ip netns exec` execs the command, so this pid is the service process itself.
            self._pid_file(s.name).write_text(str(proc.pid))
            started[s.name] = proc
        deadline = time.monotonic() + SERVICE_READY_TIMEOUT_S
        for s in self.servers:
            ready = self.state_dir / f"{s.name}.ready"
            while not ready.exists():
                # Our own child: asked directly, not through /proc/PID/cmdline (`_live_pid`), which reads
                # empty while `ip netns exec` execs Python (seen on a busy machine: a live server taken
                # for one that had exited).
                code = started[s.name].poll()
                if code is not None:
                    tail = (self.state_dir / f"{s.name}.log").read_text(errors="replace")[-2000:]
                    raise LabError(f"services of {s.name} exited during start (exit code {code}):\n{tail}")
                if time.monotonic() > deadline:
                    raise LabError(f"services of {s.name} not ready after {SERVICE_READY_TIMEOUT_S:.0f}s")
                time.sleep(0.02)  # poll interval for the ready file

    def _set_linux_bridge(self, enabled: bool) -> None:
        exists = self.bridge_if in self._root_links()
        if enabled == exists:
            return
        with _doing(f"{'add' if enabled else 'delete'} the bridge {self.bridge_if}"), netlink.iproute() as ipr:
            if enabled:
                ipr.link("add", ifname=self.bridge_if, kind="bridge")
                netlink.write_sysctls(None, {f"net.ipv6.conf.{self.bridge_if}.disable_ipv6": 1})
                bridge = netlink.index(ipr, self.bridge_if)
                for ifname in (self.external_if, self.internal_if):
                    ipr.link("set", index=netlink.index(ipr, ifname), master=bridge)
                netlink.set_up(ipr, self.bridge_if)
            else:
                netlink.delete_link(ipr, self.bridge_if)


def _cmdline(pid: int) -> list[bytes]:
    """/proc/PID/cmdline, split. It reads empty while the process execs (a server's `ip netns exec`
    becoming Python) and once it is a zombie: a live process is read again until it has its new one."""
    deadline = time.monotonic() + CMDLINE_SETTLE_S
    while True:
        raw = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        if raw or time.monotonic() > deadline:
            return raw.split(b"\0")
        if pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return []
        time.sleep(0.005)  # poll interval while the process execs


def _add_address(ipr, index: int, cidr: str, flags: int = 0) -> None:
    """`ip addr add <cidr> dev <index> [nodad]`."""
    address, _, prefixlen = cidr.partition("/")
    ipr.addr("add", index=index, address=address, prefixlen=int(prefixlen), **({"flags": flags} if flags else {}))
