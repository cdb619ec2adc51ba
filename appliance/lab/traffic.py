"""Steady legitimate clients from `<p>-cli`: HTTP, game UDP, DNS and new TCP clients, with success rate and latency.

`TrafficRun(lab, duration, profile).start()` runs the clients in a child process
inside `<p>-cli` (`python -m appliance.lab.traffic`), which prints one JSON line
per second (per service and per server: sent, ok, success rate, p50/p99 latency,
and the run's `started_at`, so a record can be placed in wall-clock time while the run
goes on) and a summary line at the end. A request counts in the second it was sent; it
succeeds when its answer arrives within `timeout_s`.

The "new-tcp" service is the first visit of a client never seen before: each
connection to the game server's web port comes from a source address added to
`<p>-cli` for it alone (removed afterwards), one plain connect and GET within
NEW_CLIENT_DEADLINE_S, no retry. Returning clients (the "http" service) come from
the client's fixed address; a SYN flood's mitigation must let both through.

The "browse" and "browse-tls" services are people browsing the shop (the web server with
real limits, appliance/lab/labserver.py) while a botnet attacks it: BROWSERS addresses of
`<p>-cli` (added for the run) take turns, each page a new connection over HTTP or, every
other one, HTTPS verified against the certificate the lab made at its start.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import math
import pathlib
import signal
import ssl
import struct
import sys
import time
from collections import defaultdict

from appliance.lab.jsonlines import JsonLinesProcess
from appliance.lab.topology import (
    CLIENT_V4,
    CLIENT_V6,
    DNS_PORT,
    GAME_PORT,
    HTTP_PORT,
    HTTPS_PORT,
    SHOP_SERVER,
    Lab,
    Server,
)

TICK_S = 0.01                 # seconds between game sends (the rate is held on average)
GAME_PAYLOAD_BYTES = 64       # bytes of a game datagram (sequence, timestamp, padding)
SERVICES = ("http", "game", "dns", "new-tcp", "browse", "browse-tls")
NEW_CLIENT_DEADLINE_S = 3.0   # seconds for a new client's connect + first response (the bound)
MAX_NEW_CLIENTS_PER_S = 50.0  # connections/s; each adds and removes an address in <p>-cli
# Host parts for new clients: IPv4 from the client's /25 above its own .10 (a pool of 116),
# IPv6 from the client's /64 starting at ::1:0 (beyond any test's hand-picked hosts).
NEW_CLIENT_V4_HOSTS = range(11, 127)
NEW_CLIENT_V6_FIRST = 0x10000
# The shop's browsers: the host parts below the client's own .10 (the gateway is .1).
BROWSER_V4_HOSTS = range(2, 10)
MAX_BROWSE_RPS = 200.0        # pages/s in total: people browsing, not a load test


@dataclasses.dataclass(frozen=True, slots=True)
class TrafficProfile:
    game_pps: float = 800.0   # datagrams/s to the game server (answered one by one)
    http_rps: float = 4.0     # GET requests/s to each web server (alternating IPv4 and IPv6)
    dns_qps: float = 4.0      # A queries/s to each server
    timeout_s: float = 1.0    # seconds after which an unanswered request has failed
    new_clients_per_s: float = 0.0   # connections/s to the game server's web port, each from a new address
    browse_rps: float = 0.0   # pages/s in total to the shop from its browsers (every other one HTTPS)

    def validate(self) -> None:
        for name in ("game_pps", "http_rps", "dns_qps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.new_clients_per_s <= MAX_NEW_CLIENTS_PER_S:
            raise ValueError(f"new_clients_per_s must be 0..{MAX_NEW_CLIENTS_PER_S:g} connections/s, "
                             f"got {self.new_clients_per_s}")
        if not 0 <= self.browse_rps <= MAX_BROWSE_RPS:
            raise ValueError(f"browse_rps must be 0..{MAX_BROWSE_RPS:g} pages/s, got {self.browse_rps}")
        if not 0.05 <= self.timeout_s <= 30:
            raise ValueError(f"timeout_s must be 0.05..30 seconds, got {self.timeout_s}")


def _stats(sent: int, latencies_ms: list[float]) -> dict:
    ordered = sorted(latencies_ms)

    def pct(q: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else None

    return {"sent": sent, "ok": len(ordered), "success_rate": round(len(ordered) / sent, 4) if sent else None,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


class _Recorder:
    """Outcomes bucketed by the second a request was sent."""

    def __init__(self):
        self.start = time.monotonic()
        self.started_at = time.time()   # wall clock of second 0, to place seconds against attacks
        # second -> (service, server) -> [sent, latencies]
        self.buckets: dict[int, dict[tuple[str, str], list]] = defaultdict(
            lambda: defaultdict(lambda: [0, []]))
        self.totals: dict[tuple[str, str], list] = defaultdict(lambda: [0, []])

    def sent(self, service: str, server: str) -> tuple[int, float]:
        now = time.monotonic()
        second = int(now - self.start)
        self.buckets[second][(service, server)][0] += 1
        self.totals[(service, server)][0] += 1
        return second, now

    def ok(self, service: str, server: str, second: int, sent_at: float) -> None:
        latency_ms = (time.monotonic() - sent_at) * 1000
        self.buckets[second][(service, server)][1].append(latency_ms)
        self.totals[(service, server)][1].append(latency_ms)

    @staticmethod
    def report(cells: dict[tuple[str, str], list]) -> dict:
        by_service: dict[str, list] = defaultdict(lambda: [0, []])
        servers: dict[str, dict] = defaultdict(dict)
        for (service, server), (sent, latencies) in sorted(cells.items()):
            by_service[service][0] += sent
            by_service[service][1].extend(latencies)
            servers[server][service] = _stats(sent, latencies)
        return {"services": {s: _stats(*v) for s, v in sorted(by_service.items())}, "servers": dict(servers)}


class _GameClient(asyncio.DatagramProtocol):
    def __init__(self, recorder: _Recorder, server: str, timeout_s: float):
        self.recorder, self.server, self.timeout_s = recorder, server, timeout_s
        self.pending: dict[int, tuple[int, float]] = {}

    def datagram_received(self, data, addr):
        if not data.startswith(b"ACK GAME") or len(data) < 16:
            return
        (seq,) = struct.unpack("!Q", data[8:16])
        sent = self.pending.pop(seq, None)
        if sent and time.monotonic() - sent[1] <= self.timeout_s:
            self.recorder.ok("game", self.server, *sent)


class _DnsClient(asyncio.DatagramProtocol):
    def __init__(self, recorder: _Recorder, server: str, timeout_s: float):
        self.recorder, self.server, self.timeout_s = recorder, server, timeout_s
        self.pending: dict[int, tuple[int, float]] = {}

    def datagram_received(self, data, addr):
        if len(data) < 12:
            return
        ident, flags, _, ancount = struct.unpack("!HHHH", data[:8])
        sent = self.pending.pop(ident, None)
        if sent and flags & 0x8000 and flags & 0x000F == 0 and ancount >= 1 \
                and time.monotonic() - sent[1] <= self.timeout_s:
            self.recorder.ok("dns", self.server, *sent)


def dns_query(ident: int, name: str) -> bytes:
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


async def _paced(rate: float, duration: float, action, stop: asyncio.Event) -> None:
    """Call `action()` `rate` times per second on average until `duration` s or stop."""
    if rate <= 0:
        return
    start = time.monotonic()
    done = 0
    while not stop.is_set():
        elapsed = time.monotonic() - start
        if elapsed >= duration:
            return
        for _ in range(int(rate * elapsed) + 1 - done):
            action()
            done += 1
        await asyncio.sleep(min(TICK_S, 1.0 / rate))


async def run_clients(servers: list[Server], duration: float, profile: TrafficProfile, emit,
                      shop_cert: pathlib.Path | None = None) -> dict:
    """Run every client for `duration` s; `emit(record)` gets each per-second record; returns the summary.
    `shop_cert`: the certificate the "browse-tls" clients verify the shop against."""
    profile.validate()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    recorder = _Recorder()
    tasks: set[asyncio.Task] = set()
    transports = []

    def spawn(coro, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    clients = []
    game = next((s for s in servers if s.role == "game"), None)
    if game is not None and profile.game_pps > 0:
        game_transport, game_proto = await loop.create_datagram_endpoint(
            lambda: _GameClient(recorder, game.name, profile.timeout_s), remote_addr=(game.ipv4, GAME_PORT))
        transports.append(game_transport)
        seq = iter(range(1 << 62))
        padding = b"\x00" * (GAME_PAYLOAD_BYTES - 12)

        def send_game() -> None:
            n = next(seq)
            game_proto.pending[n] = recorder.sent("game", game.name)
            game_transport.sendto(b"GAME" + struct.pack("!Q", n) + padding)
        clients.append(_paced(profile.game_pps, duration, send_game, stop))

    addresses = NewClientAddresses()
    if game is not None and profile.new_clients_per_s > 0:
        def send_new() -> None:
            spawn(_new_client(recorder, addresses, game), "new-tcp")
        clients.append(_paced(profile.new_clients_per_s, duration, send_new, stop))
    browsers = BrowserAddresses()
    shop = next((s for s in servers if s.name == SHOP_SERVER), None)
    if shop is not None and profile.browse_rps > 0:
        context = ssl.create_default_context(cafile=shop_cert) if shop_cert else None
        await browsers.add()
        pages = iter(range(1 << 62))

        def send_browse() -> None:
            page = next(pages)
            tls = context is not None and page % 2 == 1
            spawn(_browse(recorder, browsers.hosts[page % len(browsers.hosts)], shop, context if tls else None,
                          profile.timeout_s), "browse")
        clients.append(_paced(profile.browse_rps, duration, send_browse, stop))
    # Requests are answered (or failed) within this many seconds of being sent.
    answer_s = max(profile.timeout_s, NEW_CLIENT_DEADLINE_S if profile.new_clients_per_s > 0 else 0.0)

    for server in servers:
        transport, dns = await loop.create_datagram_endpoint(
            lambda s=server: _DnsClient(recorder, s.name, profile.timeout_s), remote_addr=(server.ipv4, DNS_PORT))
        transports.append(transport)
        ids = iter(range(1, 1 << 30))

        def send_dns(server=server, dns=dns, transport=transport, ids=ids) -> None:
            ident = next(ids) & 0xFFFF
            dns.pending[ident] = recorder.sent("dns", server.name)
            transport.sendto(dns_query(ident, f"www.{server.tenant}.example.com"))
        clients.append(_paced(profile.dns_qps, duration, send_dns, stop))

        if server.role == "web":
            families = iter(range(1 << 30))

            def send_http(server=server, families=families) -> None:
                address = server.ipv4 if next(families) % 2 == 0 else server.ipv6
                spawn(_http_get(recorder, server.name, address, profile.timeout_s), f"http-{server.name}")
            clients.append(_paced(profile.http_rps, duration, send_http, stop))

    emitted = 0

    def flush(upto: int) -> None:
        nonlocal emitted
        while emitted < upto:
            emit({"type": "second", "second": emitted + 1, "started_at": round(recorder.started_at, 3),
                  **recorder.report(recorder.buckets.get(emitted, {}))})
            emitted += 1

    async def reporter() -> None:
        while not stop.is_set():
            # A second is complete once its last request has had `timeout_s` to be answered.
            complete = int(time.monotonic() - recorder.start - answer_s)
            flush(min(complete, int(duration)))
            await asyncio.sleep(0.1)

    report_task = asyncio.create_task(reporter(), name="traffic-reporter")
    await asyncio.gather(*clients)
    sending_s = min(time.monotonic() - recorder.start, duration)   # shorter when interrupted
    if not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), answer_s)   # late answers still count
        except TimeoutError:
            pass
    stop.set()
    await report_task
    flush(math.ceil(sending_s))
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for transport in transports:
        transport.close()
    await addresses.remove_all()
    await browsers.remove()
    return {"type": "summary", "duration_s": round(time.monotonic() - recorder.start, 3),
            "started_at": round(recorder.started_at, 3),
            **recorder.report(recorder.totals)}


async def _http_get(recorder: _Recorder, server: str, address: str, timeout_s: float) -> None:
    second, sent_at = recorder.sent("http", server)
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(address, HTTP_PORT)
            writer.write(f"GET / HTTP/1.1\r\nHost: {address}\r\nUser-Agent: seawall-lab\r\n\r\n".encode())
            await writer.drain()
            response = await reader.read()
            writer.close()
        if response.startswith(b"HTTP/1.1 200 "):
            recorder.ok("http", server, second, sent_at)
    except (TimeoutError, OSError):
        pass   # counted as sent, not ok


async def _browse(recorder: _Recorder, source: str, server: Server, context: ssl.SSLContext | None,
                  timeout_s: float) -> None:
    """One page of the shop on a new connection from `source`: a 200 and the whole page in time."""
    service = "browse-tls" if context else "browse"
    second, sent_at = recorder.sent(service, server.name)
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                server.ipv4, HTTPS_PORT if context else HTTP_PORT, local_addr=(source, 0), ssl=context,
                server_hostname=server.ipv4 if context else None)
            writer.write(f"GET / HTTP/1.1\r\nHost: {server.ipv4}\r\nUser-Agent: seawall-lab-browser\r\n"
                         f"Connection: close\r\n\r\n".encode())
            await writer.drain()
            response = await reader.read()
        if response.startswith(b"HTTP/1.1 200 "):
            recorder.ok(service, server.name, second, sent_at)
    except (TimeoutError, OSError):
        pass   # counted as sent, not ok (ssl.SSLError is an OSError)
    finally:
        if writer is not None:
            writer.close()


class BrowserAddresses:
    """The browsers' addresses in `<p>-cli` (BROWSER_V4_HOSTS of the client's /25), for one run."""

    def __init__(self):
        network = ipaddress.ip_interface(CLIENT_V4).network
        self.hosts = [str(network[h]) for h in BROWSER_V4_HOSTS]
        self.added: list[str] = []

    async def add(self) -> None:
        for host in self.hosts:
            await _ip(["ip", "addr", "replace", f"{host}/{ipaddress.ip_interface(CLIENT_V4).network.prefixlen}",
                       "dev", Lab.HOST_IF])
            self.added.append(host)

    async def remove(self) -> None:
        prefixlen = ipaddress.ip_interface(CLIENT_V4).network.prefixlen
        for host in self.added:
            try:
                await _ip(["ip", "addr", "del", f"{host}/{prefixlen}", "dev", Lab.HOST_IF])
            except OSError:
                pass   # gone already; nothing left to clean
        self.added.clear()


class NewClientAddresses:
    """Source addresses never used before in this run, added to `<p>-cli`'s interface one by one.

    With `ip` in a subprocess: pyroute2's IPRoute runs its own asyncio loop and cannot be used
    from inside this one."""

    def __init__(self):
        self.v4 = iter(NEW_CLIENT_V4_HOSTS)
        self.count = 0
        self.added: set[str] = set()

    def next_address(self) -> str:
        # Alternate families like the HTTP clients; IPv6 alone once the /25 is used up.
        self.count += 1
        host = next(self.v4, None) if self.count % 2 else None
        if host is not None:
            return f"{ipaddress.ip_interface(CLIENT_V4).network[host]}/25"
        return f"{ipaddress.ip_interface(CLIENT_V6).network[NEW_CLIENT_V6_FIRST + self.count]}/64"

    async def take(self) -> str:
        """A new address, usable at once (no duplicate address detection); returns it without length."""
        interface = self.next_address()
        argv = ["ip", "addr", "add", interface, "dev", Lab.HOST_IF] + (["nodad"] if ":" in interface else [])
        await _ip(argv)
        self.added.add(interface)
        return interface.split("/")[0]

    async def remove(self, address: str) -> None:
        for interface in [i for i in self.added if i.split("/")[0] == address]:
            self.added.discard(interface)
            try:
                await _ip(["ip", "addr", "del", interface, "dev", Lab.HOST_IF])
            except OSError:
                pass   # gone already; nothing left to clean

    async def remove_all(self) -> None:
        for interface in list(self.added):
            await self.remove(interface.split("/")[0])


async def _ip(argv: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise OSError(f"{' '.join(argv)}: {err.decode().strip()}")


async def _new_client(recorder: _Recorder, addresses: NewClientAddresses, server: Server) -> None:
    """One first visit: connect from a new address, GET, a 200 within NEW_CLIENT_DEADLINE_S; no retry."""
    source = await addresses.take()
    target = server.ipv6 if ":" in source else server.ipv4
    second, sent_at = recorder.sent("new-tcp", server.name)
    writer = None
    try:
        async with asyncio.timeout(NEW_CLIENT_DEADLINE_S):
            reader, writer = await asyncio.open_connection(target, HTTP_PORT, local_addr=(source, 0))
            writer.write(f"GET / HTTP/1.1\r\nHost: {target}\r\nUser-Agent: seawall-lab-new\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readline()
        if status.startswith(b"HTTP/1.1 200 "):
            recorder.ok("new-tcp", server.name, second, sent_at)
    except (TimeoutError, OSError):
        pass   # counted as sent, not ok
    finally:
        if writer is not None:
            writer.close()
        await addresses.remove(source)


def second_middle(record: dict, started_at: float) -> float:
    """Wall clock of the middle of a per-second record of a run that started at `started_at`."""
    return started_at + record["second"] - 0.5


def split_by_windows(seconds: list[dict], started_at: float, windows: list[tuple[float, float]]) -> dict:
    """Per service, sent/ok/success_rate of the per-second records whose middle lies in one of `windows`
    (wall-clock start, end) ("during") or in none ("outside"); p50/p99 only exist for the whole run."""
    out: dict[str, dict[str, list[int]]] = {"during": defaultdict(lambda: [0, 0]),
                                            "outside": defaultdict(lambda: [0, 0])}
    for record in seconds:
        middle = second_middle(record, started_at)
        where = "during" if any(start <= middle < end for start, end in windows) else "outside"
        for service, stats in record["services"].items():
            out[where][service][0] += stats["sent"]
            out[where][service][1] += stats["ok"]
    return {where: {service: {"sent": sent, "ok": ok, "success_rate": round(ok / sent, 4) if sent else None}
                    for service, (sent, ok) in sorted(cells.items())}
            for where, cells in out.items()}


def seconds_within(seconds: list[dict], start: float, end: float) -> list[dict]:
    """The per-second records whose middle lies in [start, end) (wall clock; each record carries its run's
    `started_at`), for a run that is still going on."""
    return [r for r in seconds if start <= second_middle(r, r["started_at"]) < end]


def reported_until(seconds: list[dict]) -> float:
    """Wall clock up to which a running run's seconds are all reported (its start before the first)."""
    return seconds[-1]["started_at"] + seconds[-1]["second"] if seconds else 0.0


class TrafficRun(JsonLinesProcess):
    """Legitimate clients in `<p>-cli` as a child process; `seconds` and `summary` are their JSON records."""

    def __init__(self, lab: Lab, duration: float = 10.0, profile: TrafficProfile | None = None):
        profile = profile or TrafficProfile()
        profile.validate()
        if duration <= 0:
            raise ValueError(f"duration must be > 0, got {duration}")
        self.lab, self.duration, self.profile = lab, duration, profile
        argv = ["ip", "netns", "exec", lab.ns("cli"), sys.executable, "-m", "appliance.lab.traffic",
                "--lab", lab.name, "--duration", str(duration), "--game-pps", str(profile.game_pps),
                "--http-rps", str(profile.http_rps), "--dns-qps", str(profile.dns_qps),
                "--timeout", str(profile.timeout_s), "--new-clients-per-s", str(profile.new_clients_per_s),
                "--browse-rps", str(profile.browse_rps), "--json"]
        super().__init__(argv, name="traffic")


def format_second(record: dict) -> str:
    parts = []
    for service in SERVICES:
        stats = record["services"].get(service)
        if stats and stats["sent"]:
            p50 = f"{stats['p50_ms']:.1f}" if stats["p50_ms"] is not None else "-"
            p99 = f"{stats['p99_ms']:.1f}" if stats["p99_ms"] is not None else "-"
            parts.append(f"{service} {stats['ok']}/{stats['sent']} ({stats['success_rate']:.1%}) "
                         f"p50 {p50} ms p99 {p99} ms")
    label = f"[{record['second']:4d}s]" if record["type"] == "second" else "[total]"
    return f"{label} " + " | ".join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrafficProfile()
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--game-pps", type=float, default=defaults.game_pps, help="game datagrams/s")
    parser.add_argument("--http-rps", type=float, default=defaults.http_rps, help="HTTP GETs/s per web server")
    parser.add_argument("--dns-qps", type=float, default=defaults.dns_qps, help="DNS queries/s per server")
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s, help="seconds per request")
    parser.add_argument("--new-clients-per-s", type=float, default=defaults.new_clients_per_s,
                        help="TCP connections/s to the game server's web port, each from a new source address")
    parser.add_argument("--browse-rps", type=float, default=defaults.browse_rps,
                        help="pages/s in total to the shop (s7) from its browsers, every other one HTTPS")
    parser.add_argument("--json", action="store_true", help="JSON lines; the last line is the summary")


def main(argv: list[str] | None = None) -> int:
    """Entry point inside `<p>-cli` (started by TrafficRun or `seawall lab traffic`)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lab", default="sw")
    add_arguments(parser)
    args = parser.parse_args(argv)
    profile = TrafficProfile(args.game_pps, args.http_rps, args.dns_qps, args.timeout, args.new_clients_per_s,
                             args.browse_rps)

    def emit(record: dict) -> None:
        print(json.dumps(record) if args.json else format_second(record), flush=True)

    try:
        lab = Lab(args.lab)
        cert = lab.shop_cert if lab.shop_cert.exists() else None
        summary = asyncio.run(run_clients(list(lab.servers), args.duration, profile, emit, cert))
    except ValueError as exc:
        print(f"traffic: {exc}", file=sys.stderr)
        return 2
    emit(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
