"""Syslog notifier: RFC 5424 messages over UDP (RFC 5426), TCP with octet
counting (RFC 6587) or TLS (RFC 5425, which frames the same way)."""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import ssl

import structlog

from policy.events import Event

from .base import NotifierError
from .config import SyslogReceiver
from .tls import client_context

log = structlog.get_logger(__name__)

APP_NAME = "seawall"
# Our SD-ID: name@PEN (RFC 5424 section 7.2.2). 32473 is the IANA example PEN (RFC 5612).
SD_ID = "seawall@32473"
_BOM = b"\xef\xbb\xbf"  # RFC 5424 MSG-UTF8 starts with a byte order mark
MAX_UDP_MESSAGE = 65507  # bytes: the largest UDP payload over IPv4


def _sd_escape(value: str) -> str:
    """RFC 5424 section 6.3.3: '"', '\\' and ']' in PARAM-VALUE are escaped with '\\'."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_token(value: str, limit: int) -> str:
    """A header field is PRINTUSASCII without spaces; NILVALUE when nothing is left."""
    cleaned = "".join(c for c in value if "!" <= c <= "~")[:limit]
    return cleaned or "-"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def structured_data(event: Event, delivery_id: str | None = None) -> str:
    params: list[tuple[str, str]] = []
    if event.tenant is not None:
        params.append(("tenant", event.tenant))
    if event.incident_id is not None:
        params.append(("incident", event.incident_id))
    params.append(("severity", str(event.severity)))
    if event.destinations:
        params.append(("dst", ",".join(event.destinations)))
    if event.vectors:
        params.append(("vector", ",".join(event.vectors)))
    if event.explanation:
        params.append(("explanation", event.explanation))
    if event.confidence is not None:
        params.append(("confidence", f"{event.confidence:.2f}"))
    if event.pps is not None:
        params.append(("pps", _number(event.pps)))
    if event.bps is not None:
        params.append(("bps", _number(event.bps)))
    if event.packets_dropped is not None:
        params.append(("dropped", str(event.packets_dropped)))
    if delivery_id is not None:
        params.append(("delivery", delivery_id))  # unique per message: lets a receiver drop duplicates
    body = " ".join(f'{name}="{_sd_escape(value)}"' for name, value in params)
    return f"[{SD_ID} {body}]"


def format_rfc5424(event: Event, receiver: SyslogReceiver, *, hostname: str | None = None,
                   procid: int | None = None, delivery_id: str | None = None) -> bytes:
    """One RFC 5424 message, without transport framing."""
    pri = receiver.facility * 8 + receiver.severity_map[event.severity]
    ts = datetime.datetime.fromtimestamp(event.timestamp, tz=datetime.UTC).astimezone()
    header = " ".join((
        f"<{pri}>1",
        ts.isoformat(timespec="microseconds"),
        _header_token(hostname or receiver.hostname or socket.gethostname(), 255),
        APP_NAME,
        _header_token(str(procid if procid is not None else os.getpid()), 128),
        _header_token(str(event.type), 32),
    ))
    return f"{header} {structured_data(event, delivery_id)} ".encode() + _BOM + event.message.encode()


def frame_octet_counting(message: bytes) -> bytes:
    """RFC 6587 section 3.4.1 (and RFC 5425 section 4.3): 'LEN SP MSG'."""
    return b"%d %s" % (len(message), message)


class SyslogNotifier:
    """Sends to one syslog receiver; keeps a TCP/TLS connection open between events."""

    def __init__(self, receiver: SyslogReceiver) -> None:
        self.receiver = receiver
        self.name = receiver.name
        self._hostname = receiver.hostname or socket.gethostname()
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._udp: asyncio.DatagramTransport | None = None

    def _where(self) -> str:
        return f"syslog {self.receiver.transport}://{self.receiver.host}:{self.receiver.port}"

    async def _connect(self) -> asyncio.StreamWriter:
        r = self.receiver
        tls = client_context(self._where(), r.ca_file, r.cert_file, r.key_file) if r.transport == "tls" else None
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(r.host, r.port, ssl=tls,
                                    server_hostname=(r.server_name or r.host) if tls else None),
            r.timeout_s)
        log.info("notify.syslog.connected", receiver=self.name, host=r.host, port=r.port,
                 transport=r.transport)
        return self._writer

    def _stream_usable(self) -> bool:
        # A receiver that went away has closed its side; seeing that before writing
        # avoids handing a message to a socket whose peer is gone (it would be lost
        # without an error). A peer that vanishes mid-write is the rare remaining case.
        return (self._writer is not None and not self._writer.is_closing()
                and self._reader is not None and not self._reader.at_eof())

    async def send(self, event: Event, delivery_id: str) -> None:
        message = format_rfc5424(event, self.receiver, hostname=self._hostname, delivery_id=delivery_id)
        try:
            if self.receiver.transport == "udp":
                await self._send_udp(message)
                return
            if not self._stream_usable():
                await self._drop_stream()
                await self._connect()
            assert self._writer is not None
            self._writer.write(frame_octet_counting(message))
            await asyncio.wait_for(self._writer.drain(), self.receiver.timeout_s)
        except (OSError, ssl.SSLError, TimeoutError, EOFError) as exc:
            await self._drop_stream()
            raise NotifierError(f"{self._where()}: {type(exc).__name__}: {exc}") from exc

    async def _send_udp(self, message: bytes) -> None:
        if len(message) > MAX_UDP_MESSAGE:
            message = message[:MAX_UDP_MESSAGE]  # RFC 5426 section 3.2: truncate, never split
        if self._udp is None or self._udp.is_closing():
            loop = asyncio.get_running_loop()
            self._udp, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=(self.receiver.host, self.receiver.port))
        self._udp.sendto(message)

    async def _drop_stream(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (OSError, ssl.SSLError, TimeoutError):
                pass  # closing a broken connection: nothing more to learn from it

    async def close(self) -> None:
        await self._drop_stream()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
