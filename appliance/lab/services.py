"""A lab server's real services in one asyncio process (run inside the server's namespace).

- HTTP on TCP 80: answers every GET with a small page naming the server.
- Game on UDP 28960: answers each datagram with "ACK " + the datagram (the client matches sequence numbers).
- DNS on UDP 53: answers A and AAAA queries for any name with the server's own address.
- The shop (one web server, `--shop-cert`): HTTP on 80 and HTTPS on 443 by the bounded server
  of `appliance.lab.labserver` instead of the plain HTTP above.

Started by `Lab.up()` as `python -m appliance.lab.services ...`; it writes the ready
file once every socket is bound and exits cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import pathlib
import signal
import socket
import struct

from appliance.lab.topology import DNS_PORT, GAME_PORT, HTTP_PORT, HTTPS_PORT

DNS_TTL_S = 60                  # seconds, the TTL of every answer
HTTP_READ_TIMEOUT_S = 5.0       # seconds a client may take to send its request headers
MAX_HTTP_HEADER_BYTES = 16384
QTYPE_A, QTYPE_AAAA, QCLASS_IN = 1, 28, 1


def dns_answer(query: bytes, ipv4: str, ipv6: str) -> bytes | None:
    """The response to a DNS query (A/AAAA for any name), or None for something that is no query."""
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:   # a response, or not exactly one question
        return None
    pos = 12
    while True:                          # walk the QNAME labels
        if pos >= len(query):
            return None
        length = query[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0:                # no compression inside a question
            return None
        pos += 1 + length
    if pos + 4 > len(query):
        return None
    qtype, qclass = struct.unpack("!HH", query[pos:pos + 4])
    question = query[12:pos + 4]
    answers = b""
    if qclass == QCLASS_IN and qtype == QTYPE_A:
        answers = struct.pack("!HHHIH", 0xC00C, QTYPE_A, QCLASS_IN, DNS_TTL_S, 4) + socket.inet_aton(ipv4)
    elif qclass == QCLASS_IN and qtype == QTYPE_AAAA:
        answers = (struct.pack("!HHHIH", 0xC00C, QTYPE_AAAA, QCLASS_IN, DNS_TTL_S, 16)
                   + ipaddress.IPv6Address(ipv6).packed)
    response_flags = 0x8000 | 0x0400 | (flags & 0x0100)  # QR, AA, copy RD; rcode 0 (NOERROR, maybe no data)
    header = struct.pack("!HHHHHH", ident, response_flags, 1, 1 if answers else 0, 0, 0)
    return header + question + answers


class _Game(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(b"ACK " + data, addr)


class _Dns(asyncio.DatagramProtocol):
    def __init__(self, ipv4: str, ipv6: str):
        self.ipv4, self.ipv6 = ipv4, ipv6

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        answer = dns_answer(data, self.ipv4, self.ipv6)
        if answer is not None:
            self.transport.sendto(answer, addr)


def _http_handler(server_name: str, tenant: str):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HTTP_READ_TIMEOUT_S)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method = request_line.split(" ", 1)[0]
            status = "200 OK" if method in ("GET", "HEAD") else "405 Method Not Allowed"
            body = f"{server_name} ({tenant}) says hello\n".encode()
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                         f"Server: seawall-lab\r\nConnection: close\r\n\r\n".encode()
                         + (body if method == "GET" else b""))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
    return handle


async def serve(name: str, tenant: str, ipv4: str, ipv6: str, ready_file: pathlib.Path | None,
                shop: dict | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    handler = _http_handler(name, tenant)
    servers = []
    web = None
    if shop is not None:
        from appliance.lab.labserver import Shop, ShopLimits  # noqa: PLC0415 - the shop server only
        web = Shop([ipv4, ipv6], ShopLimits(), http_port=HTTP_PORT, https_port=HTTPS_PORT,
                   greeting=f"{name} ({tenant}) says hello", **shop)
        await web.start()
    else:
        servers = [await asyncio.start_server(handler, host, HTTP_PORT, limit=MAX_HTTP_HEADER_BYTES, backlog=1024)
                   for host in (ipv4, ipv6)]
    transports = []
    for host in (ipv4, ipv6):
        transport, _ = await loop.create_datagram_endpoint(_Game, local_addr=(host, GAME_PORT))
        transports.append(transport)
        transport, _ = await loop.create_datagram_endpoint(lambda: _Dns(ipv4, ipv6), local_addr=(host, DNS_PORT))
        transports.append(transport)
    if ready_file:
        ready_file.write_text("ready\n")
    await stop.wait()
    for server in servers:
        server.close()
    if web is not None:
        await web.close()
    for transport in transports:
        transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lab-namespace", required=True, help="the namespace this runs in (for ps and down)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--ipv4", required=True)
    parser.add_argument("--ipv6", required=True)
    parser.add_argument("--ready-file", type=pathlib.Path)
    parser.add_argument("--shop-cert", type=pathlib.Path, help="serve the shop (HTTP and HTTPS) with this certificate")
    parser.add_argument("--shop-key", type=pathlib.Path)
    parser.add_argument("--shop-stats", type=pathlib.Path, help="the shop's stats file (JSON)")
    args = parser.parse_args(argv)
    shop = ({"cert": args.shop_cert, "key": args.shop_key, "stats_file": args.shop_stats}
            if args.shop_cert else None)
    asyncio.run(serve(args.name, args.tenant, args.ipv4, args.ipv6, args.ready_file, shop))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
