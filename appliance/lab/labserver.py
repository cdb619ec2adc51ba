"""The shop: a lab web server with real limits, so that application-layer floods really hurt it.

Runs inside the shop server's namespace (in `appliance.lab.services`, started by `Lab.up()`),
HTTP on TCP 80 and HTTPS on TCP 443 with a certificate made at lab start (`make_certificate`).

Why a Python server and not Debian's nginx: nginx serves a static page at tens of thousands
of requests/s per core, far beyond what a botnet of Python coroutines on a shared 2-vCPU VM
can send, so an HTTP flood would not hurt it without a slow application behind it; the limits
that floods exhaust are those of the application tier. This server has them, each one a flag,
and it counts what reached it per source (the "what got through" half of the efficacy figure):

- a connection table of `max_connections` (nginx's worker_connections): when it is full the
  server stops accepting, the kernel's accept queue (`backlog`) fills and new SYNs are dropped
  (a connection flood or slowloris locks clients out here);
- idle timeouts per read (`header_timeout_s` for a request's headers, `keepalive_s` between
  requests on a connection kept alive at the client's `Connection: keep-alive`), reset by every
  line received, as in servers that slowloris defeats;
- a worker pool of `workers`, each request holding a worker for `service_ms` (the time an
  application spends on its database: capacity = workers / service time, independent of how
  busy the VM is), with `queue` requests waiting at most; beyond that the answer is 503 (an
  HTTP flood takes the workers);
- TLS handshakes (RSA-2048 certificate, TLS 1.3) on the event loop's thread, as in an nginx
  worker: a handshake flood takes the CPU every other connection needs.

Every `STATS_INTERVAL_S` the counters go to a JSON file (`stats_file`): totals, the connection
table and queue, and per source address connections, requests, TLS handshakes and request or
header lines received (what of a slowloris still reaches the server: its lines, not new
connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import os
import pathlib
import socket
import ssl
import subprocess
import time
from collections import defaultdict

import structlog

log = structlog.get_logger(__name__)

STATS_INTERVAL_S = 0.25         # seconds between writes of the stats file (when something changed)
MAX_SOURCES = 65_536            # sources counted one by one; the rest go to "other" (bounded memory)
MAX_HEADER_LINES = 100          # header lines per request (Apache's LimitRequestFields)
MAX_LINE_BYTES = 8192           # bytes per request or header line
TLS_HANDSHAKE_TIMEOUT_S = 10.0  # seconds for a client to finish its TLS handshake
CERT_DAYS = 7                   # days the lab certificate is valid (a lab lives for minutes)
CERT_KEY = "rsa:2048"           # the common web server key: the server signs, the client only verifies
OFFERS = "<p>Today's offers.</p>" * 40   # the page's body: with its head about 1 KB, a small page


def page(greeting: str) -> bytes:
    return (f"<!doctype html><html><head><title>{greeting}</title></head><body><h1>{greeting}</h1>"
            f"{OFFERS}</body></html>\n").encode()


@dataclasses.dataclass(frozen=True, slots=True)
class ShopLimits:
    workers: int = 16               # requests served at once
    service_ms: float = 20.0        # milliseconds a request holds its worker (16 / 20 ms = 800 requests/s)
    queue: int = 64                 # requests waiting for a worker; beyond that, 503
    max_connections: int = 256      # connections open at once (TLS handshakes included)
    backlog: int = 128              # the kernel's accept queue per listening socket
    header_timeout_s: float = 10.0  # seconds of silence allowed while a request's headers arrive
    keepalive_s: float = 5.0        # seconds an idle keep-alive connection stays open

    def validate(self) -> None:
        for name in ("workers", "queue", "max_connections", "backlog"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("service_ms", "header_timeout_s", "keepalive_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def make_certificate(directory: pathlib.Path, name: str, addresses: list[str]) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed certificate and its key for `name` and `addresses` (subjectAltName), made with
    the openssl CLI (Debian's openssl, scripts/bootstrap.sh) in `directory`; returns (cert, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    san = ",".join([f"DNS:{name}", *(f"IP:{a}" for a in addresses)])
    proc = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", CERT_KEY, "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", str(CERT_DAYS), "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}"],
        capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl req for {name}: {proc.stderr.strip()[-500:]}")
    key.chmod(0o600)
    return cert, key


class _Stats:
    """What reached the server, in total and per source (bounded)."""

    def __init__(self):
        self.totals: dict[str, int] = defaultdict(int)
        self.sources: dict[str, list[int]] = {}   # address -> [connections, requests, tls handshakes, lines]
        self.other = [0, 0, 0, 0]
        self.changed = True

    def count(self, key: str, source: str | None = None, column: int | None = None) -> None:
        self.totals[key] += 1
        self.changed = True
        if source is not None and column is not None:
            row = self.sources.get(source)
            if row is None:
                row = self.sources[source] = [0, 0, 0, 0] if len(self.sources) < MAX_SOURCES else self.other
            row[column] += 1


class Shop:
    """The server: `await start()`, then `close()`; `gauges` say how full each limit is."""

    def __init__(self, addresses: list[str], limits: ShopLimits, *, http_port: int, https_port: int,
                 cert: pathlib.Path | None = None, key: pathlib.Path | None = None,
                 stats_file: pathlib.Path | None = None, greeting: str = "Gamma Shop"):
        limits.validate()
        self.addresses, self.limits = addresses, limits
        self.page = page(greeting)
        self.stats_file = stats_file
        self.ports = [(http_port, None)]
        if cert is not None and key is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(cert, key)
            self.ports.append((https_port, context))
        self.stats = _Stats()
        self.active = 0          # connections in the table
        self.waiting = 0         # requests queued for a worker
        self.busy = 0            # workers serving a request
        self._table: asyncio.Semaphore | None = None
        self._workers: asyncio.Semaphore | None = None
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task] = set()
        self._written_gauges: dict | None = None   # the gauges the stats file last showed
        self._started = time.time()

    @property
    def bound(self) -> list[tuple[str, int]]:
        """(address, port) of every listening socket (port 0 asked for a free one)."""
        return [listener.getsockname()[:2] for listener in self._listeners]

    @property
    def gauges(self) -> dict:
        return {"active_connections": self.active, "waiting_requests": self.waiting, "busy_workers": self.busy}

    async def start(self) -> None:
        self._table = asyncio.Semaphore(self.limits.max_connections)
        self._workers = asyncio.Semaphore(self.limits.workers)
        for address in self.addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            for port, context in self.ports:
                listener = socket.socket(family, socket.SOCK_STREAM)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((address, port))
                listener.listen(self.limits.backlog)
                listener.setblocking(False)
                self._listeners.append(listener)
                self._spawn(self._accept(listener, context), f"shop-accept-{address}-{port}")
        if self.stats_file is not None:
            self._spawn(self._write_stats(), "shop-stats")
        log.info("shop.start", addresses=self.addresses, ports=[p for p, _ in self.ports],
                 **dataclasses.asdict(self.limits))

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for listener in self._listeners:
            listener.close()
        self._write_stats_now()

    async def _accept(self, listener: socket.socket, context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # A full table stops accepting: connections wait in the kernel's accept queue, then SYNs drop.
            await self._table.acquire()
            try:
                conn, peer = await loop.sock_accept(listener)
            except BaseException:
                self._table.release()
                raise
            self.active += 1
            source = ipaddress.ip_address(peer[0]).compressed
            self.stats.count("connections", source, 0)
            self._spawn(self._connection(conn, source, context), "shop-conn")

    async def _connection(self, conn: socket.socket, source: str, context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        writer = None
        try:
            reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
            protocol = asyncio.StreamReaderProtocol(reader)
            try:
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, sock=conn, ssl=context,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if context else None)
            except (OSError, ssl.SSLError, TimeoutError):
                self.stats.count("tls_failed" if context else "connect_failed")
                return
            if context is not None:
                self.stats.count("tls_handshakes", source, 2)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            timeout = self.limits.header_timeout_s
            while True:
                request = await self._read_request(reader, timeout, source)
                if request is None:
                    return
                keep = await self._answer(writer, source, *request)
                if not keep:
                    return
                timeout = self.limits.keepalive_s
        except ConnectionResetError:
            self.stats.count("resets")   # the client's RST (or the bridge's for a blocked one) freed the slot
        except (OSError, ssl.SSLError):
            pass
        finally:
            if writer is not None:
                writer.close()
            else:
                conn.close()
            self.active -= 1
            self._table.release()

    async def _read_request(self, reader: asyncio.StreamReader, timeout: float, source: str
                            ) -> tuple[str, bool] | None:
        """(method, keep-alive) of the next request, or None when the client went or stalled.

        Every line read resets the timeout: a client that sends a header line now and then
        (slowloris) holds its connection for as long as it keeps doing so."""
        lines = []
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), timeout)
            except TimeoutError:
                self.stats.count("idle_timeouts")
                return None
            except (asyncio.LimitOverrunError, ValueError):
                self.stats.count("bad_requests")
                return None
            if not line.endswith(b"\n"):
                return None   # the client closed
            if line in (b"\r\n", b"\n"):
                if not lines:
                    continue  # a stray empty line before a request is tolerated (RFC 9112 2.2)
                break
            lines.append(line)
            self.stats.count("lines", source, 3)
            timeout = self.limits.header_timeout_s
            if len(lines) > MAX_HEADER_LINES:
                self.stats.count("bad_requests")
                return None
        parts = lines[0].decode("latin-1").split()
        method = parts[0] if parts else ""
        # Keep-alive only when the client asks for it (as browsers do): the lab's plain clients
        # (appliance/lab/traffic.py) read a response until the server closes.
        connection = b" ".join(h.split(b":", 1)[1].strip().lower() for h in lines[1:]
                               if h.lower().startswith(b"connection:"))
        keep = b"keep-alive" in connection and b"close" not in connection
        return method, keep

    async def _answer(self, writer: asyncio.StreamWriter, source: str, method: str, keep: bool) -> bool:
        self.stats.count("requests", source, 1)
        if method not in ("GET", "HEAD"):
            status, body = "405 Method Not Allowed", b""
        elif self.waiting >= self.limits.queue:
            self.stats.count("rejected_busy")
            status, body, keep = "503 Service Unavailable", b"busy\n", False
        else:
            self.waiting += 1
            queued = True
            try:
                async with self._workers:
                    self.waiting -= 1
                    queued = False
                    self.busy += 1
                    try:
                        await asyncio.sleep(self.limits.service_ms / 1000)   # the application's time
                    finally:
                        self.busy -= 1
            finally:
                if queued:   # cancelled while waiting for a worker
                    self.waiting -= 1
            self.stats.count("served")
            status, body = "200 OK", self.page
        head = (f"HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {len(body)}\r\n"
                f"Server: seawall-lab-shop\r\nConnection: {'keep-alive' if keep else 'close'}\r\n\r\n")
        writer.write(head.encode() + (body if method != "HEAD" else b""))
        await writer.drain()
        return keep

    async def _write_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            # A gauge moves without a counter too (a client's FIN closes its connection uncounted):
            # a file written on counters only would show that connection open for ever.
            if self.stats.changed or self.gauges != self._written_gauges:
                self._write_stats_now()

    def _write_stats_now(self) -> None:
        if self.stats_file is None:
            return
        self.stats.changed = False
        self._written_gauges = self.gauges
        data = {"started_at": round(self._started, 3), "written_at": round(time.time(), 3),
                "limits": dataclasses.asdict(self.limits), **self._written_gauges,
                "totals": dict(self.stats.totals),
                "sources": self.stats.sources, "other_sources": self.stats.other}
        temporary = self.stats_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, self.stats_file)


def counts_from(stats: dict, prefix: str) -> dict[str, int]:
    """Connections, requests, TLS handshakes and request or header lines the shop counted from the
    sources in `prefix` (the bots', say: what of a botnet still reached the server), and how many such
    sources it saw."""
    network = ipaddress.ip_network(prefix)
    rows = [row for source, row in stats["sources"].items() if ipaddress.ip_address(source) in network]
    return {"sources": len(rows), **{key: sum(row[column] for row in rows)
                                      for column, key in enumerate(("connections", "requests", "tls_handshakes",
                                                                    "lines"))}}


def read_stats(path: pathlib.Path) -> dict | None:
    """The shop's last stats file, or None before the first write."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        return json.loads(path.read_text())
    return None
