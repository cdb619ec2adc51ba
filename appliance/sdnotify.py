"""systemd's readiness protocol (sd_notify(3)) over a plain AF_UNIX datagram socket.

With `Type=notify`, systemd hands the service a socket address in $NOTIFY_SOCKET and
waits for a datagram of newline-separated assignments: READY=1 once the service does
its job (units ordered after it start then), STATUS=... for `systemctl status`,
STOPPING=1 when it shuts down. An address starting with '@' is in the abstract
namespace. Without $NOTIFY_SOCKET (not under systemd) nothing is sent.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("seawall.sdnotify")


def notify(environ: Mapping[str, str] | None = None, **fields: str) -> bool:
    """Send `fields` (READY="1", STATUS="...") to $NOTIFY_SOCKET; True when sent.

    A failure is logged, never raised: systemd's supervision is not worth stopping the bridge for.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("sdnotify.failed", socket=address.replace("\0", "@"), error=str(exc))
        return False
    return True
