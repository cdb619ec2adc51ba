"""SYN authentication with real traffic (issue 19): a spoofed SYN flood at a lab web server at
40 kpps, once replaying a small set of frames (the same tuples every ~50 ms, which passed the old
retransmission challenge by construction) and once with fresh random tuples, while new clients
(each from a new address) and returning clients connect through the XDP bridge.

The bridge is the real program (in this process, attached natively to the lab's two NICs) with
the destination marked under SYN attack as the engine would mark it, so the test measures the
mechanism and not the detection delay. Completion is the splice (syn_auth = "splice", the default;
synauth.h): a new client's handshake is answered by the bridge, its cookie ACK becomes its SYN to
the server, and the connection runs on with translated sequence numbers. So the clients here are
plain: one connect() and one HTTP GET with a 3 s timeout, no retry after a reset (as curl without
retry options behaves); the time reported is to the first HTTP response."""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import ipaddress
import random
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from appliance.lab import Lab, lab_config, netlink
from appliance.lab.attack import AttackSpec, Stream, TemplateBuilder
from appliance.lab.capture import Capture
from appliance.lab.generator import Generator
from appliance.lab.livegen import FrameEdits
from appliance.lab.nsenter import enter_netns, run_in_netns
from dataplane.constants import DropReason, SynAuthStat, TrafficClass
from tests.support import wait_until

FLOOD_PPS = 40_000            # packets/s, the reference flood
FLOOD_S = 4.0                 # seconds of flood per scenario: the clients finish while it runs (checked)
REPLAY_TUPLES = 64            # spoofed tuples of the replaying flood: each recurs about every 50 ms
NEW_CLIENTS = 40              # connections from never-seen addresses per scenario
RETURNING_CLIENTS = 10        # connections from addresses validated before the flood
CONNECT_DEADLINE_S = 3.0      # a new client must get its first HTTP response within this
MAX_FLOOD_AT_SERVER = 0.001   # fraction of the flood allowed to reach the server
# On the router's upstream veth (the peer of the bridge's external NIC), in place of the lab's XDP_PASS
# program (any XDP program there makes the bridge's XDP_TX frames arrive at once). It also drops the SYN-ACKs addressed to the spoofed ranges, as the internet would
# never deliver them: routed to the lab's blackhole instead, 20,000 a second cost the router
# namespace the CPU time the real clients' packets need on this shared 2-core machine.
UPSTREAM_XDP_SOURCE = r"""
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
int xdp_upstream(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return XDP_PASS;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) <= end && (bpf_ntohl(ip->daddr) >> 17) == (0xC6120000 >> 17)) /* 198.18.0.0/15 */
            return XDP_DROP;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) <= end && bpf_ntohl(ip6->daddr.s6_addr32[0]) == 0x20010db8 &&
            (bpf_ntohl(ip6->daddr.s6_addr32[1]) >> 24) == 0x5f)                        /* 2001:db8:5f00::/40 */
            return XDP_DROP;
    }
    return XDP_PASS;
}
"""

CLIENT_HOSTS = range(20, 127)  # host parts of 192.0.2.0/25 and 2001:db8:ffff::/64 for extra clients


@dataclasses.dataclass
class Attempt:
    ok: bool
    seconds: float
    tries: int
    stage: str = ""         # where the last try ended: "connect", "recv" (for a report of failures)
    ports: tuple = ()       # the source port of each try


@pytest.fixture(scope="module")
def lab(request):
    """One lab for the module; the bridge (a new program and maps) is per test, and so are the client
    addresses (`client_hosts`): every test starts with a bridge that has seen none of its clients."""
    lab = Lab(f"y{uuid.uuid4().hex[:6]}")
    request.addfinalizer(lab.down)
    lab.up()
    return lab


@pytest.fixture(scope="module")
def client_hosts(lab) -> dict[bool, Iterator[int]]:
    """Host parts (of CLIENT_HOSTS) not yet used in the module's lab, per family (v6: True)."""
    return {False: iter(CLIENT_HOSTS), True: iter(CLIENT_HOSTS)}


@pytest.fixture
def bridge(lab, request):
    """The program attached to the lab's NICs with the lab's tenants; the upstream peer gets an
    XDP program (UPSTREAM_XDP_SOURCE), without which XDP_TX frames sit in its ring until other
    traffic wakes it."""
    from bcc import BPF  # noqa: PLC0415 - the netns tier imports bcc only when it runs

    from dataplane import Dataplane  # noqa: PLC0415
    from tenants import TenantSet, assign_indices, compile_tenant_set  # noqa: PLC0415

    dp = Dataplane()
    request.addfinalizer(dp.close)
    tenant_set = TenantSet.from_dicts(lab_config(lab.name)["tenants"])
    indices = assign_indices(tenant_set.ids, {})
    dp.apply_tenants(compile_tenant_set(tenant_set, indices))
    dp.attach(lab.external_if, lab.internal_if, mode="native")
    request.addfinalizer(dp.detach)
    wake = BPF(text=UPSTREAM_XDP_SOURCE)
    request.addfinalizer(wake.cleanup)
    fn = wake.load_func(b"xdp_upstream", BPF.XDP)
    with netlink.iproute(lab.ns("up")) as ipr:   # replaces the lab's own XDP_PASS program there
        ipr.link("set", index=netlink.index(ipr, lab.UPSTREAM_IF), xdp_fd=fn.fd)
    return dp, indices


def add_client_address(lab: Lab, v6: bool, host: int) -> str:
    address = f"2001:db8:ffff::{host:x}" if v6 else f"192.0.2.{host}"
    with netlink.iproute(lab.ns("cli")) as ipr:
        from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD  # noqa: PLC0415

        ipr.addr("add", index=netlink.index(ipr, lab.HOST_IF), address=address, prefixlen=64 if v6 else 25,
                 flags=IFA_F_NODAD if v6 else 0)
    return address


def fetch(lab: Lab, source: str, server: str, deadline_s: float = CONNECT_DEADLINE_S, retry: bool = False) -> Attempt:
    """An HTTP GET from `source` within `deadline_s`: one connection (a plain client), or with `retry`
    retried at once after a reset (what reset-and-retry needs)."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    start = time.monotonic()
    tries = 0
    stage = "connect"
    ports: list[int] = []
    while (left := deadline_s - (time.monotonic() - start)) > 0:
        tries += 1
        stage = "connect"
        sock = run_in_netns(lab.ns("cli"), socket.socket, family, socket.SOCK_STREAM)
        try:
            sock.settimeout(left)
            sock.bind((source, 0))
            ports.append(sock.getsockname()[1])
            sock.connect((server, 80))
            stage = f"recv (port {sock.getsockname()[1]})"
            sock.sendall(f"GET / HTTP/1.0\r\nHost: {server}\r\n\r\n".encode())
            if sock.recv(16).startswith(b"HTTP/"):
                return Attempt(True, time.monotonic() - start, tries, "", tuple(ports))
        except TimeoutError:
            break
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ECONNREFUSED):
                raise
            if not retry:
                stage = f"{stage}: {errno.errorcode[exc.errno]}"
                break
            continue  # the bridge reset the handshake it validated: the next SYN passes
        finally:
            sock.close()
    return Attempt(False, time.monotonic() - start, tries, stage, tuple(ports))


def replay_streams(lab: Lab, server, v6: bool, source_mac: str) -> list[Stream]:
    from scapy.layers.inet import IP, TCP  # noqa: PLC0415
    from scapy.layers.inet6 import IPv6  # noqa: PLC0415
    from scapy.layers.l2 import Ether  # noqa: PLC0415

    rng = random.Random(19)
    frames = []
    for _ in range(REPLAY_TUPLES):
        if v6:
            src = str(ipaddress.ip_network("2001:db8:5f00::/40")[rng.randrange(1, 1 << 30)])
            l3 = IPv6(src=src, dst=server.ipv6)
        else:
            l3 = IP(src=str(ipaddress.ip_network("198.18.0.0/15")[rng.randrange(1, 1 << 17)]), dst=server.ipv4)
        tcp = TCP(sport=rng.randrange(1024, 65535), dport=80, flags="S", seq=rng.randrange(1 << 32),
                  window=64240, options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)])
        frames.append(bytes(Ether(src=source_mac, dst=server.mac) / l3 / tcp))
    return [Stream("syn", tuple(frames), FrameEdits())]


class Flood(threading.Thread):
    def __init__(self, lab: Lab, streams: list[Stream]):
        super().__init__(name="synflood", daemon=True)
        self.lab = lab
        self.generator = Generator(streams, FLOOD_PPS, FLOOD_S, lab.UPSTREAM_IF)
        self.result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            enter_netns(self.lab.ns("up"))
            self.result = self.generator.run()
        except BaseException as exc:  # reported by the test
            self.error = exc


def synauth_stats(dp) -> dict[str, int]:
    from dataplane import testing  # noqa: PLC0415

    table = testing.table(dp, "sw_synauth_stats")
    return {s.name.lower(): int(sum(table[ctypes.c_int(int(s))])) for s in SynAuthStat}


def synacks_sent(dp) -> int:
    return synauth_stats(dp)["synack_sent"]


def syn_recv(lab: Lab, server) -> int:
    out = lab.exec(server.name, "ss", "-Htn", "state", "syn-recv").stdout
    return len([line for line in out.splitlines() if line.strip()])


@pytest.mark.parametrize(("flood_kind", "v6"), [("replay", False), ("random", False), ("replay", True), ("random", True)],
                         ids=["replaying-flood-ipv4", "random-flood-ipv4", "replaying-flood-ipv6", "random-flood-ipv6"])
def test_new_and_returning_clients_connect_during_a_spoofed_syn_flood(lab, bridge, client_hosts, flood_kind, v6,
                                                                      capsys):
    dp, indices = bridge
    server = lab.server("s2")
    target = server.ipv6 if v6 else server.ipv4
    dp.set_under_attack(indices["alpha"], ipaddress.ip_address(target), [TrafficClass.TCP_SYN])
    hosts = client_hosts[v6]     # addresses no earlier test of the module used: new to this test's bridge
    returning = [add_client_address(lab, v6, next(hosts)) for _ in range(RETURNING_CLIENTS)]
    new = [add_client_address(lab, v6, next(hosts)) for _ in range(NEW_CLIENTS)]
    # Before the flood: the returning clients connect once (spliced, and validated by their cookie).
    quiet = [fetch(lab, source, target) for source in returning]
    assert all(a.ok for a in quiet), quiet
    quiet_returning = [fetch(lab, source, target) for source in returning]
    assert all(a.ok and a.tries == 1 for a in quiet_returning), quiet_returning
    with netlink.iproute(lab.ns("up")) as ipr:
        source_mac = ipr.get_links(ifname=lab.UPSTREAM_IF)[0].get("address")
    if flood_kind == "replay":
        streams = replay_streams(lab, server, v6, source_mac)
    else:
        spec = AttackSpec("syn", target=target, pps=FLOOD_PPS, duration=FLOOD_S, dport=80)
        streams = TemplateBuilder(lab, spec, source_mac=source_mac).streams()
    spoofed = "src net 2001:db8:5f00::/40" if v6 else "src net 198.18.0.0/15"
    capture = Capture(server.namespace, lab.HOST_IF, f"tcp and {spoofed}", keep=0).start()
    # Where a real client's packets get lost, if they do: its SYNs at the server, and the server's
    # SYN-ACKs at the client (the bridge's cookie SYN-ACKs of a splice announce a zero window; Linux does not).
    clients = "2001:db8:ffff::/64" if v6 else "192.0.2.0/25"
    syn_at_server = Capture(server.namespace, lab.HOST_IF,
                            f"tcp and src net {clients} and tcp[13] & 0x12 == 0x02" if not v6
                            else f"tcp and src net {clients} and ip6[40+13] & 0x12 == 0x02", keep=0).start()
    syn_at_switch = Capture(lab.ns("sw"), lab.SWITCH_UPLINK_IF,
                            f"tcp and src net {clients} and tcp[13] & 0x12 == 0x02" if not v6
                            else f"tcp and src net {clients} and ip6[40+13] & 0x12 == 0x02", keep=0).start()
    synack_at_client = Capture(lab.ns("cli"), lab.HOST_IF,
                               "tcp and tcp[13] & 0x12 == 0x12 and tcp[14:2] != 0" if not v6
                               else "tcp and ip6[40+13] & 0x12 == 0x12 and ip6[40+14:2] != 0", keep=0).start()
    # The server's own MAC never comes in from the appliance's side: a frame that carries it makes
    # the customer switch learn the server on its uplink and drop what the appliance passes to it
    # (the generator once sent the bridge's SYN-ACKs again from recycled pages: appliance/lab/livegen.h).
    server_mac_at_switch = Capture(lab.ns("sw"), lab.SWITCH_UPLINK_IF, f"ether src {server.mac}", keep=0).start()
    stats_before = synauth_stats(dp)
    tenant_before = dp.read_tenant_counters([indices["alpha"]])[indices["alpha"]]
    answered = synacks_sent(dp)
    flood = Flood(lab, streams)
    flood.start()
    # Clients meet a running flood: the bridge is answering it (the generator compiles first).
    wait_until(lambda: synacks_sent(dp) > answered + FLOOD_PPS // 10 or not flood.is_alive(), timeout=60,
               what="the flood reaching the bridge")
    during_new = [fetch(lab, source, target) for source in new]
    during_returning = [fetch(lab, source, target, deadline_s=CONNECT_DEADLINE_S) for source in returning]
    pending_syn_recv = syn_recv(lab, server)
    flooding_throughout = flood.is_alive()   # every client above connected while the flood ran
    flood.join(FLOOD_S + 30)
    capture.stop()
    syn_at_server.stop()
    syn_at_switch.stop()
    synack_at_client.stop()
    server_mac_at_switch.stop()
    stats_after = synauth_stats(dp)
    tenant_after = dp.read_tenant_counters([indices["alpha"]])[indices["alpha"]]
    reasons = {DropReason(r).name: int(tenant_after.reason_packets[0, r] - tenant_before.reason_packets[0, r])
               for r in range(len(DropReason))
               if tenant_after.reason_packets[0, r] != tenant_before.reason_packets[0, r]}
    assert flood.error is None, flood.error
    sent = flood.result.transmitted
    new_ok = [a for a in during_new if a.ok]
    report = {
        "flood": flood_kind, "family": "ipv6" if v6 else "ipv4", "flood_sent": sent,
        "flood_pps": round(flood.result.achieved_pps), "flood_at_server": capture.matched,
        "new_ok": f"{len(new_ok)}/{len(during_new)}",
        "new_median_ms": round(statistics.median(a.seconds for a in new_ok) * 1000, 2) if new_ok else None,
        "new_tries": sorted({a.tries for a in during_new}),
        "returning_ok": f"{sum(a.ok for a in during_returning)}/{len(during_returning)}",
        "returning_median_ms": round(statistics.median(a.seconds for a in during_returning) * 1000, 2),
        "quiet_new_median_ms": round(statistics.median(a.seconds for a in quiet) * 1000, 2),
        "quiet_new_tries": sorted({a.tries for a in quiet}),
        "quiet_returning_median_ms": round(statistics.median(a.seconds for a in quiet_returning) * 1000, 2),
        "server_syn_recv": pending_syn_recv, "flooding_throughout": flooding_throughout,
        "failed": [dataclasses.astuple(a) for a in during_new if not a.ok],
        "ok_port_reused": sum(1 for a in during_new if a.ok and len(set(a.ports)) < len(a.ports)),
        "bridge": {k: stats_after[k] - stats_before[k] for k in stats_after if stats_after[k] != stats_before[k]},
        "inbound_reasons": reasons,
        "client_syns_at_switch": syn_at_switch.matched, "client_syns_at_server": syn_at_server.matched, "server_synacks_at_client": synack_at_client.matched,
        "server_mac_at_switch_uplink": server_mac_at_switch.matched,
        "inbound_packets": int(tenant_after.class_packets[0].sum() - tenant_before.class_packets[0].sum()),
        "bridge_ext_errors": {k: v for k, v in netlink.statistics(lab.external_if).items()
                              if v and ("drop" in k or "err" in k)},
    }
    with capsys.disabled():
        print("\nsynauth", report)
    assert sent >= FLOOD_PPS * FLOOD_S * 0.5, report          # the flood really ran
    assert flooding_throughout, f"the clients finished after the flood: {report}"
    assert server_mac_at_switch.matched == 0, report
    assert len(new_ok) >= 0.95 * len(during_new), report
    assert all(a.ok for a in during_returning), report
    assert capture.matched <= MAX_FLOOD_AT_SERVER * sent, report
    assert pending_syn_recv <= 5, report
