"""A botnet of real sources in the lab: every bot completes its TCP handshakes with the target.

`seawall attack http-flood|conn-flood|slowloris|tls-flood|flash-crowd --target IP` runs here.
The bots are N addresses (default 2,000) taken in order from a prefix of 198.18.0.0/15. They
live in `<p>-att` without N `ip addr add`: an "AnyIP" route (`local PREFIX dev lo`) there makes
the whole prefix local, so a socket binds to any address of it, and a route in the router
(`<p>-up`: PREFIX via the attacker's address, more specific than its blackhole for spoofed
sources) brings the server's replies back. Both routes exist while a botnet of the lab runs
(`routed`, counted per prefix across processes) and go with the last one, so the SYN-ACKs of
later spoofed floods are blackholed again instead of being answered with RSTs.

One asyncio loop drives every bot with non-blocking sockets (bounded: a bot has one action in
flight at most, so at most N tasks and about N sockets). A pacer hands out `rate` actions per
second to idle bots; when none is idle the action is skipped and counted. The modes:

- http-flood: keep-alive connections, `GET /` as fast as the rate says (a unit: a request);
- conn-flood: connections held open without a byte until the server closes them, or TCP keep-alive
  finds them gone, then opened again (a connection);
- slowloris: connections that send an incomplete request, then one header line every
  SLOWLORIS_INTERVAL_S, never the blank line that ends it, and open another as soon as the server
  closes one (a connection);
- tls-flood: a TLS ClientHello (made once by Python's ssl, a pool reused) on each new
  connection, read the server's first flight (it has signed by then), close: the server pays
  for every handshake, the bot for none (a handshake answered);
- flash-crowd: not an attack. New clients arrive at `rate` per second, each from an address
  never used before in the run (the prefix 198.19.0.0/16 by default), and each browses as
  people do: CROWD_PAGES pages of 1 + CROWD_ASSETS requests on one connection, with a think
  time between pages (a unit: a client).

One JSON-able record per second and a summary, as the frame generator's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import random
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable

import structlog

from appliance.lab import netlink
from appliance.lab.topology import ATTACKER_V4, HTTP_PORT, HTTPS_PORT, TENANTS, Lab, LabError

log = structlog.get_logger(__name__)

BOTNET_VECTORS = ("http-flood", "conn-flood", "slowloris", "tls-flood", "flash-crowd")
LAB_SOURCES = ipaddress.ip_network("198.18.0.0/15")   # the benchmarking range: the lab's only other sources
DEFAULT_SOURCES = {"flash-crowd": "198.19.0.0/16"}     # a crowd never shares an address with the bots
BOT_SOURCES = "198.18.0.0/16"
DEFAULT_BOTS = 2000
MAX_BOTS = 65_536               # sockets and tasks at most (bounded memory; RLIMIT_NOFILE allowing)
# Actions per second when --rate is not given: each floods the lab shop's limit (see labserver.py:
# 800 requests/s, 256 connections, about 1,000 TLS handshakes/s on the 2-vCPU VM) over; the crowd
# stays well inside them.
DEFAULT_RATES = {"http-flood": 3000.0, "conn-flood": 1000.0, "slowloris": 500.0, "tls-flood": 2000.0,
                 "flash-crowd": 30.0}
UNITS = {"http-flood": "requests", "conn-flood": "connected", "slowloris": "connected",
         "tls-flood": "tls_answered", "flash-crowd": "clients"}
TICK_S = 0.01                   # seconds between pacing decisions
MAX_BACKLOG_S = 0.1             # seconds of actions a late pacer may catch up; the rest is skipped
CONNECT_TIMEOUT_S = 3.0         # seconds for a handshake (two SYN retransmissions)
RESPONSE_TIMEOUT_S = 5.0        # seconds for a response or the server's TLS flight
SLOWLORIS_INTERVAL_S = 5.0      # seconds between header lines (below the server's idle timeout)
# A connection-flood bot's TCP keep-alive: a probe after this many seconds of silence, then every
# CONN_PROBE_INTERVAL_S; after CONN_PROBES unanswered the kernel gives the connection up and the bot
# opens another. A connection the server dropped without telling the bot (a reset sent to the server
# only, as the bridge's at a block) is found dead within 3 + 2 x 2 = 7 s, as a tool that keeps its hold does.
CONN_IDLE_PROBE_S = 3
CONN_PROBE_INTERVAL_S = 2
CONN_PROBES = 2
TLS_HELLOS = 64                 # distinct ClientHellos (random, key share) a tls-flood rotates through
TLS_FLIGHT_BYTES = 600          # bytes: ServerHello + certificate and more; the server has signed
CROWD_PAGES = 2                 # pages each new client of a flash crowd looks at
CROWD_ASSETS = 2                # requests for a page's assets after its HTML, on the same connection
CROWD_THINK_S = (1.0, 3.0)      # seconds a person reads a page before the next one (uniform)
CROWD_TIMEOUT_S = 2.0           # seconds within which a page's request must be answered
RECV_BYTES = 65536
USER_AGENTS = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
               "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
               "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 Version/17.2 Safari/605.1.15")
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)   # linux/in.h


@dataclasses.dataclass(frozen=True, slots=True)
class BotnetPlan:
    """What a botnet run does; `validate()` names the option at fault."""

    mode: str
    target: str                     # the server's IPv4 address
    duration: float = 10.0          # seconds
    bots: int = DEFAULT_BOTS        # sources (for a flash crowd: distinct clients at most)
    rate: float | None = None       # actions per second in total; None = the mode's default
    port: int | None = None         # None = 443 for tls-flood, else 80
    sources: str | None = None      # CIDR the bots' addresses come from; None = the mode's default

    def validate(self) -> None:
        if self.mode not in BOTNET_VECTORS:
            raise ValueError(f"unknown botnet mode {self.mode!r} (known: {', '.join(BOTNET_VECTORS)})")
        try:
            address = ipaddress.ip_address(self.target)
        except ValueError:
            raise ValueError(f"--target {self.target!r}: a botnet attacks one IPv4 address") from None
        if address.version != 4:
            raise ValueError(f"--target {self.target}: the lab's bots are IPv4")
        if not any(address in ipaddress.ip_network(t.ipv4) for t in TENANTS):
            prefixes = ", ".join(t.ipv4 for t in TENANTS)
            raise ValueError(f"--target {self.target} is not inside a lab tenant prefix ({prefixes})")
        if self.duration <= 0:
            raise ValueError(f"--duration must be > 0, got {self.duration}")
        if not 1 <= self.bots <= MAX_BOTS:
            raise ValueError(f"--bots must be 1..{MAX_BOTS:,}, got {self.bots}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"--rate must be > 0 per second, got {self.rate}")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"--dport must be 1..65535, got {self.port}")
        try:
            sources = ipaddress.ip_network(self.source_prefix)
        except ValueError as exc:
            raise ValueError(f"--sources {self.source_prefix!r}: not a prefix ({exc})") from None
        if sources.version != 4 or not sources.subnet_of(LAB_SOURCES):
            raise ValueError(f"--sources {self.source_prefix} must lie inside {LAB_SOURCES} (the lab's sources)")
        if self.bots + 2 > sources.num_addresses:
            raise ValueError(f"--bots {self.bots:,} do not fit into --sources {self.source_prefix} "
                             f"({sources.num_addresses - 2:,} addresses)")

    @property
    def source_prefix(self) -> str:
        return self.sources or DEFAULT_SOURCES.get(self.mode, BOT_SOURCES)

    @property
    def actions_per_s(self) -> float:
        return self.rate if self.rate is not None else DEFAULT_RATES[self.mode]

    @property
    def dport(self) -> int:
        return self.port or (HTTPS_PORT if self.mode == "tls-flood" else HTTP_PORT)

    @property
    def routed_prefix(self) -> ipaddress.IPv4Network:
        """The smallest prefix at the start of --sources that holds the bots (and its own network
        and broadcast addresses, never used): the prefix routed to the bots' namespace."""
        sources = ipaddress.ip_network(self.source_prefix)
        length = 32
        while (1 << (32 - length)) < self.bots + 2:
            length -= 1
        return ipaddress.ip_network(f"{sources.network_address}/{max(length, sources.prefixlen)}")

    def addresses(self) -> list[str]:
        network = self.routed_prefix
        first = int(network.network_address) + 1
        return [str(ipaddress.IPv4Address(first + i)) for i in range(self.bots)]


# -- routes ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(path):
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _set_routes(lab: Lab, prefix: str, present: bool) -> None:
    action = "replace" if present else "del"
    with netlink.explained(LabError, f"{'add' if present else 'remove'} the bots' routes for {prefix}"):
        with netlink.iproute(lab.ns("up")) as ipr:
            try:
                ipr.route(action, dst=prefix, gateway=ATTACKER_V4.split("/")[0])
            except netlink.NetlinkError as exc:
                if present or exc.code != 3:   # ESRCH: already gone
                    raise
        with netlink.iproute(lab.ns("att")) as ipr:
            try:
                ipr.route(action, dst=prefix, type="local", table=255, scope=254, oif=netlink.index(ipr, "lo"))
            except netlink.NetlinkError as exc:
                if present or exc.code != 3:
                    raise


@contextlib.contextmanager
def routed(lab: Lab, prefix: str):
    """`prefix` routed to `<p>-att` and local there while the block runs; shared between processes:
    the routes go when the last live process that asked for them is done."""
    registry = lab.state_dir / "botnet-routes.json"
    lock = lab.state_dir / "botnet-routes.lock"

    def update(change: Callable[[list[int]], list[int]]) -> None:
        with _locked(lock):
            try:
                users = json.loads(registry.read_text())
            except (FileNotFoundError, ValueError):
                users = {}
            before = [pid for pid in users.get(prefix, []) if _alive(pid)]
            after = change(before)
            if bool(before) != bool(after):
                _set_routes(lab, prefix, bool(after))
            users[prefix] = after
            registry.write_text(json.dumps({k: v for k, v in users.items() if v}))

    pid = os.getpid()
    update(lambda pids: [*pids, pid] if pid not in pids else pids)
    try:
        yield
    finally:
        update(lambda pids: [p for p in pids if p != pid])


# -- measuring -------------------------------------------------------------------------------------

class Latencies:
    """Latencies in 1 ms buckets up to CAP_MS: percentiles in bounded memory."""

    CAP_MS = 30_000   # milliseconds; a slower answer counts here

    def __init__(self):
        self.buckets = [0] * (self.CAP_MS + 1)
        self.count = 0

    def add(self, ms: float) -> None:
        self.buckets[min(self.CAP_MS, int(ms))] += 1
        self.count += 1

    def percentile(self, q: float) -> float | None:
        if not self.count:
            return None
        rank, seen = q * (self.count - 1), 0
        for ms, n in enumerate(self.buckets):
            seen += n
            if seen > rank:
                return float(ms)
        return float(self.CAP_MS)


def client_hellos(count: int) -> list[bytes]:
    """`count` real TLS ClientHellos (TLS 1.3 and 1.2 offered, fresh random and key share each)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    hellos = []
    for _ in range(count):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing)
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        hellos.append(outgoing.read())
    return hellos


def parse_response_head(head: bytes) -> tuple[int, int, bool]:
    """(status, content length, keep-alive) of an HTTP/1.1 response head (without the blank line)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    length, keep = 0, parts[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            keep = value != b"close"
    return int(parts[1]), length, keep


class Botnet:
    """The bots of `plan`; `await run(emit, stop)` returns the summary (run it in `<p>-att`)."""

    def __init__(self, plan: BotnetPlan):
        plan.validate()
        self.plan = plan
        self.addresses = plan.addresses()
        self.idle: collections.deque[int] = collections.deque(range(len(self.addresses)))
        self.keepalive: dict[int, socket.socket] = {}   # http-flood: a bot's open connection
        self.totals: collections.Counter = collections.Counter()
        self.second: collections.Counter = collections.Counter()
        self.latency_total = Latencies()
        self.latency_second: list[float] = []
        self.open = 0
        self.hellos = client_hellos(TLS_HELLOS) if plan.mode == "tls-flood" else []
        self.random = random.Random(0x5eed)
        self.tasks: set[asyncio.Task] = set()
        self.crowd_next = 0

    # counting
    def count(self, key: str, n: int = 1) -> None:
        self.totals[key] += n
        self.second[key] += n

    def latency(self, ms: float) -> None:
        self.latency_total.add(ms)
        self.latency_second.append(ms)

    def _record(self, second: int) -> dict:
        ordered = sorted(self.latency_second)
        record = {"type": "second", "second": second, "vector": self.plan.mode, **dict(self.second),
                  "open": self.open}
        if ordered:
            record["p50_ms"] = round(ordered[len(ordered) // 2], 1)
            record["p99_ms"] = round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1)
        self.second = collections.Counter()
        self.latency_second = []
        return record

    # sockets
    async def _connect(self, bot: int) -> socket.socket | None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            # The port is picked at connect(), per (source, destination): 2,000 sources, 2,000 port ranges.
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((self.addresses[bot], 0))
            self.count("attempted")
            await asyncio.wait_for(loop.sock_connect(sock, (self.plan.target, self.plan.dport)), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            sock.close()
            self.count("connect_failed")
            return None
        except BaseException:
            sock.close()
            raise
        self.count("connected")
        self.open += 1
        return sock

    def _close(self, sock: socket.socket) -> None:
        if sock.fileno() >= 0:
            sock.close()
            self.open -= 1

    async def _response(self, sock: socket.socket) -> tuple[int, bool]:
        """Read one response; (status, keep-alive)."""
        loop = asyncio.get_running_loop()
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await loop.sock_recv(sock, RECV_BYTES)
            if not chunk:
                raise ConnectionResetError("closed before a response")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status, length, keep = parse_response_head(head)
        while len(body) < length:
            chunk = await loop.sock_recv(sock, RECV_BYTES)
            if not chunk:
                raise ConnectionResetError("closed inside a response")
            body += chunk
        return status, keep

    def _request(self, bot: int, path: str = "/", close: bool = False) -> bytes:
        return (f"GET {path} HTTP/1.1\r\nHost: {self.plan.target}\r\n"
                f"User-Agent: {USER_AGENTS[bot % len(USER_AGENTS)]}\r\nAccept: text/html,*/*;q=0.8\r\n"
                + f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n").encode()

    # the modes: one action of one bot each
    async def http_flood(self, bot: int) -> None:
        loop = asyncio.get_running_loop()
        sock = self.keepalive.pop(bot, None) or await self._connect(bot)
        if sock is None:
            return
        try:
            await loop.sock_sendall(sock, self._request(bot))
            self.count("requests")
            status, keep = await asyncio.wait_for(self._response(sock), RESPONSE_TIMEOUT_S)
        except (OSError, ValueError, TimeoutError):
            self.count("request_failed")
            self._close(sock)
            return
        except BaseException:
            self._close(sock)
            raise
        self.count("responses_ok" if 200 <= status < 300 else "responses_error")
        if keep:
            self.keepalive[bot] = sock
        else:
            self._close(sock)

    async def conn_flood(self, bot: int) -> None:
        sock = await self._connect(bot)
        if sock is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, CONN_IDLE_PROBE_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, CONN_PROBE_INTERVAL_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, CONN_PROBES)
            while await asyncio.get_running_loop().sock_recv(sock, RECV_BYTES):
                pass
            self.count("closed_by_server")
        except OSError:
            self.count("closed_by_server")
        finally:
            self._close(sock)

    async def slowloris(self, bot: int) -> None:
        loop = asyncio.get_running_loop()
        sock = await self._connect(bot)
        if sock is None:
            return
        try:
            await loop.sock_sendall(sock, (f"GET /?{self.random.getrandbits(32):x} HTTP/1.1\r\n"
                                           f"Host: {self.plan.target}\r\n"
                                           f"User-Agent: {USER_AGENTS[bot % len(USER_AGENTS)]}\r\n").encode())
            self.count("requests")
            while True:
                # Between lines the bot listens: the moment the server lets the connection go (its
                # timeout, a reset) the bot opens another, as slowloris tools do to keep their hold.
                try:
                    closed = not await asyncio.wait_for(loop.sock_recv(sock, RECV_BYTES),
                                                        SLOWLORIS_INTERVAL_S * self.random.uniform(0.8, 1.0))
                except TimeoutError:
                    closed = False
                if closed:
                    self.count("closed_by_server")
                    break
                await loop.sock_sendall(sock, f"X-a{self.random.getrandbits(16)}: b\r\n".encode())
                self.count("slow_lines")
        except OSError:
            self.count("closed_by_server")
        finally:
            self._close(sock)

    async def tls_flood(self, bot: int) -> None:
        loop = asyncio.get_running_loop()
        sock = await self._connect(bot)
        if sock is None:
            return
        try:
            await loop.sock_sendall(sock, self.hellos[bot % len(self.hellos)])
            self.count("tls_hellos")
            received = 0
            async with asyncio.timeout(RESPONSE_TIMEOUT_S):
                while received < TLS_FLIGHT_BYTES:
                    chunk = await loop.sock_recv(sock, RECV_BYTES)
                    if not chunk:
                        break
                    received += len(chunk)
            self.count("tls_answered" if received >= TLS_FLIGHT_BYTES else "tls_failed")
        except (OSError, TimeoutError):
            self.count("tls_failed")
        finally:
            self._close(sock)

    async def flash_crowd(self, client: int) -> None:
        """One new visitor: CROWD_PAGES pages, each its HTML then its assets on one connection."""
        self.count("clients")
        failed = False
        for page in range(CROWD_PAGES):
            if page:
                await asyncio.sleep(self.random.uniform(*CROWD_THINK_S))
            sock = await self._connect(client)
            if sock is None:
                self.count("requests")
                self.count("request_failed")
                failed = True
                break
            try:
                for index, path in enumerate(["/", *(f"/static/{n}.css" for n in range(CROWD_ASSETS))]):
                    started = time.monotonic()
                    self.count("requests")
                    close = index == CROWD_ASSETS
                    await asyncio.get_running_loop().sock_sendall(sock, self._request(client, path, close))
                    status, _ = await asyncio.wait_for(self._response(sock), CROWD_TIMEOUT_S)
                    if not 200 <= status < 300:
                        raise ValueError(f"status {status}")
                    self.count("responses_ok")
                    self.latency((time.monotonic() - started) * 1000)
            except (OSError, ValueError, TimeoutError):
                self.count("request_failed")
                failed = True
                break
            finally:
                self._close(sock)
        if not failed:
            self.count("clients_ok")

    # pacing
    def _dispatch(self, action) -> None:
        if self.plan.mode == "flash-crowd":
            # Each client a new address; once every address has come, they come again (counted).
            client = self.crowd_next % len(self.addresses)
            if self.crowd_next >= len(self.addresses):
                self.count("clients_returning")
            self.crowd_next += 1
            self._spawn(action(client))
            return
        if not self.idle:
            self.count("skipped")
            return
        bot = self.idle.popleft()
        self._spawn(action(bot), bot)

    def _spawn(self, coro, bot: int | None = None) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)

        def done(task: asyncio.Task) -> None:
            self.tasks.discard(task)
            if bot is not None:
                self.idle.append(bot)
            if not task.cancelled() and task.exception() is not None:
                log.warning("botnet.action_failed", mode=self.plan.mode, error=repr(task.exception()))
        task.add_done_callback(done)

    async def run(self, emit: Callable[[dict], None], stop: threading.Event) -> dict:
        action = getattr(self, self.plan.mode.replace("-", "_"))
        rate = self.plan.actions_per_s
        log.info("botnet.start", mode=self.plan.mode, target=self.plan.target, port=self.plan.dport,
                 bots=len(self.addresses), rate=rate, sources=str(self.plan.routed_prefix))
        start = time.monotonic()
        done = emitted = 0
        per_second: list[int] = []
        while not stop.is_set():
            elapsed = time.monotonic() - start
            if elapsed >= self.plan.duration:
                break
            due = int(rate * elapsed) + 1 - done
            cap = max(1, int(rate * MAX_BACKLOG_S))
            if due > cap:
                self.count("skipped", due - cap)
                done += due - cap
                due = cap
            for _ in range(max(0, due)):
                self._dispatch(action)
                done += 1
            while emitted < int(elapsed):
                emitted += 1
                per_second.append(self.second[UNITS[self.plan.mode]])
                emit(self._record(emitted))
            await asyncio.sleep(TICK_S)
        elapsed = min(time.monotonic() - start, self.plan.duration)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for sock in self.keepalive.values():
            self._close(sock)
        self.keepalive.clear()
        if emitted < elapsed:
            per_second.append(self.second[UNITS[self.plan.mode]])
            emit(self._record(emitted + 1))
        unit = UNITS[self.plan.mode]
        summary = {"type": "summary", "vector": self.plan.mode, "target": self.plan.target,
                   "port": self.plan.dport, "bots": len(self.addresses), "sources": str(self.plan.routed_prefix),
                   "requested_rate": rate, "elapsed_s": round(elapsed, 3), "unit": unit,
                   "achieved_rate": round(self.totals[unit] / elapsed, 1) if elapsed else 0.0,
                   **dict(self.totals), "per_second": per_second}
        if self.latency_total.count:
            summary["p50_ms"] = self.latency_total.percentile(0.50)
            summary["p99_ms"] = self.latency_total.percentile(0.99)
        if self.plan.mode == "flash-crowd":
            # Requests still in flight when the run ended count neither way.
            answered = self.totals["responses_ok"] + self.totals["request_failed"]
            summary["success_rate"] = round(self.totals["responses_ok"] / answered, 4) if answered else None
        log.info("botnet.end", mode=self.plan.mode, **{k: v for k, v in summary.items()
                                                       if isinstance(v, int | float) and k != "second"})
        return summary


def _raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


def run_in_lab(lab_name: str, plan: BotnetPlan, emit: Callable[[dict], None],
               stop: threading.Event | None = None) -> dict:
    """Route the bots' prefix, enter `<lab>-att` (this thread stays there) and run the bots."""
    from appliance.lab.nsenter import enter_netns  # noqa: PLC0415

    plan.validate()
    lab = Lab(lab_name)
    if lab.ns("att") not in netlink.namespaces() or not lab.state_dir.exists():
        raise LabError(f"lab {lab_name!r} is not up (no {lab.ns('att')}); run `seawall lab up --name {lab_name}` first")
    _raise_open_files(plan.bots + 256)   # a socket per bot, and a margin for the rest
    botnet = Botnet(plan)
    with routed(lab, str(plan.routed_prefix)):
        enter_netns(lab.ns("att"))
        return asyncio.run(botnet.run(emit, stop or threading.Event()))
