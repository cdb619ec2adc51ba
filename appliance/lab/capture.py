"""Receive-side evidence: a raw AF_PACKET capture inside a lab namespace.

`Capture(namespace, ifname, bpf_filter)` runs a thread that enters the namespace
(only that thread moves), opens a packet socket on the interface with an optional
tcpdump-syntax kernel filter, and keeps the first `keep` matching frames. The
kernel's own PACKET_STATISTICS give the exact number of matching frames, also
when Python could not read them all.
"""

from __future__ import annotations

import socket
import struct
import threading

from appliance.lab.nsenter import enter_netns

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
RECEIVE_BUFFER_BYTES = 64 << 20   # room for bursts while Python catches up
POLL_S = 0.05                     # seconds between checks of the stop flag


class Capture:
    def __init__(self, namespace: str, ifname: str = "eth0", bpf_filter: str | None = None, keep: int = 2000):
        self.namespace, self.ifname, self.bpf_filter, self.keep = namespace, ifname, bpf_filter, keep
        self.frames: list[bytes] = []
        self.matched = 0            # frames that passed the filter (kernel count, incl. socket drops)
        self.dropped = 0            # of those, frames the socket buffer could not hold
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture-{namespace}-{ifname}", daemon=True)

    def start(self, timeout: float = 10.0) -> Capture:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"capture in {self.namespace} not ready after {timeout}s")
        if self.error:
            raise self.error
        return self

    def _run(self) -> None:
        try:
            enter_netns(self.namespace)   # this thread only
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except BaseException as exc:  # handed to start()'s caller
            self.error = exc
            self._ready.set()
            return
        with sock:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)
                if self.bpf_filter:
                    from scapy.arch.linux import attach_filter  # noqa: PLC0415 - compiles with tcpdump
                    attach_filter(sock, self.bpf_filter, self.ifname)
                sock.bind((self.ifname, 0))
                # Frames queued before the filter and the bind (any interface, any protocol) go.
                sock.setblocking(False)
                while True:
                    try:
                        sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)   # reset: count from here on
                sock.settimeout(POLL_S)
            except BaseException as exc:
                self.error = exc
                self._ready.set()
                return
            self._ready.set()
            buffer = bytearray(65536)
            view = memoryview(buffer)
            outgoing = 0
            while not self._stop.is_set():
                try:
                    size, address = sock.recvfrom_into(buffer)
                except TimeoutError:
                    continue
                if address[2] == PACKET_OUTGOING:
                    outgoing += 1
                    continue
                if len(self.frames) < self.keep:
                    self.frames.append(bytes(view[:size]))
            # Drain what is queued, then read the kernel's totals.
            sock.setblocking(False)
            while True:
                try:
                    size, address = sock.recvfrom_into(buffer)
                except (BlockingIOError, InterruptedError):
                    break
                if address[2] == PACKET_OUTGOING:
                    outgoing += 1
                elif len(self.frames) < self.keep:
                    self.frames.append(bytes(view[:size]))
            packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            self.matched, self.dropped = packets - outgoing, drops

    def stop(self) -> Capture:
        self._stop.set()
        self._thread.join(timeout=10)
        return self

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()



