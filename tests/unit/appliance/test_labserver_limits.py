"""Issue 15, item 4: the shop's limits are real: a full worker pool answers 503, a full connection
table stops accepting, a client that keeps sending header lines keeps its connection while a silent
one is closed, and its TLS endpoint has a real certificate. A real server on the loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl

import pytest

from appliance.lab.labserver import Shop, ShopLimits, counts_from, make_certificate, read_stats
from tests.support import await_until

LOOPBACK = "127.0.0.1"


async def _get(port: int, context: ssl.SSLContext | None = None) -> bytes:
    reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=context,
                                                   server_hostname="shop.test" if context else None)
    writer.write(b"GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n")
    await writer.drain()
    try:
        return await reader.read()
    finally:
        writer.close()


@pytest.fixture
async def shop(request):
    servers = []

    async def start(limits: ShopLimits, **kwargs) -> Shop:
        server = Shop([LOOPBACK], limits, http_port=0, https_port=0, **kwargs)
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.close()


async def test_issue15_full_worker_pool_queues_then_answers_503(shop):
    server = await shop(ShopLimits(workers=1, service_ms=300, queue=1))
    port = server.bound[0][1]
    first = asyncio.create_task(_get(port))
    await await_until(lambda: server.busy == 1, timeout=5, what="the only worker busy")
    second = asyncio.create_task(_get(port))
    await await_until(lambda: server.waiting == 1, timeout=5, what="one request queued")
    third = await _get(port)
    assert third.startswith(b"HTTP/1.1 503 ")
    assert (await first).startswith(b"HTTP/1.1 200 ") and (await second).startswith(b"HTTP/1.1 200 ")
    assert server.stats.totals["rejected_busy"] == 1 and server.stats.totals["served"] == 2


async def test_issue15_full_connection_table_stops_accepting_until_a_slot_frees(shop):
    server = await shop(ShopLimits(max_connections=2, backlog=4, header_timeout_s=30))
    port = server.bound[0][1]
    idle = [await asyncio.open_connection(LOOPBACK, port) for _ in range(2)]
    await await_until(lambda: server.active == 2, timeout=5, what="two connections in the table")
    waiting = asyncio.create_task(_get(port))   # the kernel completes its handshake; the server does not accept
    done, _ = await asyncio.wait([waiting], timeout=0.5)
    assert not done and server.active == 2 and server.stats.totals["connections"] == 2
    idle[0][1].close()
    assert (await asyncio.wait_for(waiting, 5)).startswith(b"HTTP/1.1 200 ")
    idle[1][1].close()


async def test_issue15_header_lines_now_and_then_hold_a_connection_that_silence_loses(shop):
    server = await shop(ShopLimits(header_timeout_s=0.3))
    port = server.bound[0][1]
    _, slow = await asyncio.open_connection(LOOPBACK, port)
    silent_reader, _ = await asyncio.open_connection(LOOPBACK, port)
    slow.write(b"GET / HTTP/1.1\r\nHost: shop\r\n")
    closed = None
    # A header line at most every 0.1 s (the wait for the silent connection's close is the pace), until
    # the server closes the silent one: the slow one is never silent for the 0.3 s timeout. 5 s at most.
    for n in range(50):
        with contextlib.suppress(TimeoutError):
            closed = await asyncio.wait_for(silent_reader.read(), 0.1)
        if closed is not None:
            break
        slow.write(f"X-a{n}: b\r\n".encode())
        await slow.drain()
    assert closed == b""   # closed by the server
    assert server.active == 1 and server.stats.totals["idle_timeouts"] == 1
    # Each line that reached the server counts for its source (a slowloris' leak is its lines).
    assert server.stats.sources[LOOPBACK][3] >= 2 + n - 1 and server.stats.sources[LOOPBACK][1] == 0
    slow.close()


async def test_issue15_tls_endpoint_has_a_real_certificate_and_counts_per_source(shop, tmp_path):
    cert, key = make_certificate(tmp_path, "shop.test", [LOOPBACK])
    stats = tmp_path / "shop.json"
    server = await shop(ShopLimits(), cert=cert, key=key, stats_file=stats)
    (_, http_port), (_, https_port) = server.bound
    verified = ssl.create_default_context(cafile=cert)
    assert (await _get(https_port, verified)).startswith(b"HTTP/1.1 200 ")
    assert (await _get(http_port)).startswith(b"HTTP/1.1 200 ")
    with pytest.raises(ssl.SSLCertVerificationError):   # a client that trusts nothing refuses it
        await _get(https_port, ssl.create_default_context())
    await await_until(lambda: (read_stats(stats) or {}).get("totals", {}).get("requests") == 2, timeout=5,
                      what="the stats file")
    data = json.loads(stats.read_text())
    assert data["sources"][LOOPBACK] == [3, 2, 1, 6]   # connections, requests, TLS handshakes, lines (3 a GET)
    assert data["totals"]["tls_failed"] == 1
    assert counts_from(data, "127.0.0.0/8") == {"sources": 1, "connections": 3, "requests": 2, "tls_handshakes": 1,
                                                "lines": 6}
    assert counts_from(data, "198.18.0.0/15") == {"sources": 0, "connections": 0, "requests": 0, "tls_handshakes": 0,
                                                  "lines": 0}


async def test_issue15_shop_keeps_a_connection_alive_only_when_asked_so_plain_clients_see_the_end(shop):
    server = await shop(ShopLimits(keepalive_s=30))
    port = server.bound[0][1]
    # A plain client (the lab's "http" service) reads until the server closes.
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200 ")
    writer.close()
    # A browser that asks for keep-alive sends its next request on the same connection.
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    for _ in range(2):
        writer.write(b"GET / HTTP/1.1\r\nHost: shop\r\nConnection: keep-alive\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: keep-alive" in head
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.startswith(b"Content-Length")))
        await reader.readexactly(length)
    assert server.stats.totals["connections"] == 2 and server.stats.totals["requests"] == 3
    writer.close()


async def test_issue15_stats_file_shows_a_connection_gone_when_its_client_closed_without_a_word(shop, tmp_path):
    # A connection-flood bot's connection ends with its FIN: no counter moves, only the table's gauge.
    # The tests wait for the file's active_connections to reach 0 before each run (tests/netns/test_botnet_lab.py).
    stats = tmp_path / "shop.json"
    server = await shop(ShopLimits(header_timeout_s=30), stats_file=stats)
    port = server.bound[0][1]
    _, writer = await asyncio.open_connection(LOOPBACK, port)
    await await_until(lambda: (read_stats(stats) or {}).get("active_connections") == 1, timeout=5,
                      what="the open connection in the stats file")
    writer.close()
    await await_until(lambda: server.active == 0, timeout=5, what="the server's table empty")
    await await_until(lambda: (read_stats(stats) or {}).get("active_connections") == 0, timeout=5,
                      what="the closed connection gone from the stats file")
    assert server.stats.totals["connections"] == 1 and server.stats.totals.get("idle_timeouts", 0) == 0
