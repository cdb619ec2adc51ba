"""ExaBGP's API process: joins ExaBGP's stdin/stdout to Seawall's Unix socket, line for line.

    python relay.py SOCKET      # run by ExaBGP (`process seawall { run ... }`), never by hand

ExaBGP writes its messages (JSON: session state; "done"/"error": command acks) to this
process's stdin, and reads API commands from its stdout. Seawall listens on SOCKET
(`escalation.speaker`). When either side closes, the relay exits: ExaBGP dying closes its
stdin, Seawall stopping closes the socket. Standard library only: ExaBGP starts it with its
own interpreter and environment, outside Seawall's packages.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

CONNECT_TIMEOUT_S = 10.0     # seconds to reach Seawall's socket before giving up


def main() -> None:
    path = sys.argv[1]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    sock.connect(path)
    sock.settimeout(None)

    def exabgp_to_seawall() -> None:
        # Bytes as they come: ExaBGP's lines go out whole, without waiting for a buffer to fill.
        stdin = sys.stdin.buffer.raw
        while chunk := stdin.read(65536):
            sock.sendall(chunk)
        os._exit(0)

    threading.Thread(target=exabgp_to_seawall, daemon=True).start()
    out = sys.stdout.buffer
    while chunk := sock.recv(65536):
        out.write(chunk)
        out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
