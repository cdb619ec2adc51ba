"""A stand-in for ExaBGP in the unit tier (no BGP, no sockets but Seawall's own API socket).

    python fake_exabgp.py EXABGP_CONF       # what `escalation.speaker` runs instead of exabgp

It runs the configuration's API process (Seawall's relay.py) as ExaBGP does, answers each
command "done", and writes each command to $FAKE_EXABGP_LOG when that is set. Its neighbors
come up at once, unless $FAKE_EXABGP_UNBINDABLE is set: then each connection attempt fails as
ExaBGP 4.2.25 reports a local-address that is not on the host, in its words and its log format
(stdout, not a terminal, `exabgp.log.level=DEBUG` with `exabgp.log.packets`), once per
RETRY_S instead of once a second. SIGUSR1 brings every neighbor up; SIGUSR2 takes them down
with DOWN_REASON, as ExaBGP's JSON encoder sends it (brackets turned into parentheses).
Standard library only.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

RETRY_S = 0.05                  # seconds between failed connection attempts (ExaBGP: 1 s)
BIND_ERROR = "Could not bind to local ip {local} - [Errno 99] Cannot assign requested address"
DOWN_REASON = "peer reset, message (notification received (6,2)) error(Administrative Shutdown)"


def executable(directory: pathlib.Path) -> str:
    """An executable in `directory` that runs this stand-in with the tests' interpreter: what
    `escalation.speaker.exabgp_command` is made to return."""
    path = directory / "exabgp"
    path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(__file__)} \"$@\"\n")
    path.chmod(0o700)
    return str(path)


def main() -> None:
    conf = pathlib.Path(sys.argv[1]).read_text()
    run = re.search(r"run (.+);", conf).group(1)
    neighbors = re.findall(r"neighbor (\S+) \{.*?local-address (\S+);", conf, re.S)
    record = os.environ.get("FAKE_EXABGP_LOG")
    recorder = open(record, "a", buffering=1) if record else None  # noqa: SIM115 - open for the stand-in's life
    # Signals are taken by sigwait below, in this thread only; the threads started after inherit the mask.
    handled = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    api = subprocess.Popen(shlex.split(run), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    lock = threading.Lock()
    up = threading.Event()

    def tell(state: str, peer: str, **extra: str) -> None:
        message = {"type": "state", "neighbor": {"address": {"peer": peer}, "state": state, **extra}}
        with lock:
            api.stdin.write((json.dumps(message) + "\n").encode())
            api.stdin.flush()

    def log(source: str, message: str) -> None:
        with lock:
            print(f"{time.strftime('%H:%M:%S')} | {os.getpid():<6d} | {source:<15} | {message}", flush=True)

    def commands() -> None:
        for line in api.stdout:
            command = line.decode().strip()
            if recorder:
                recorder.write(command + "\n")
            with lock:
                api.stdin.write(b"done\n")
                api.stdin.flush()

    def failing() -> None:
        while not up.is_set():
            for n, (peer, local) in enumerate(neighbors, 1):
                log(f"outgoing-{n}", f"attempting connection to {peer}:179")
                log(f"outgoing-{n}", f"connection to {peer}:179 failed")
                log(f"outgoing-{n}", BIND_ERROR.format(local=local))
            if recorder:
                recorder.write("attempt\n")
            up.wait(RETRY_S)

    log("welcome", "Thank you for using ExaBGP")
    threading.Thread(target=commands, daemon=True).start()
    if os.environ.get("FAKE_EXABGP_UNBINDABLE"):
        threading.Thread(target=failing, daemon=True).start()
    else:
        signal.raise_signal(signal.SIGUSR1)
    while (received := signal.sigwait(handled)) != signal.SIGTERM:
        up.set()
        for peer, _ in neighbors:
            if received == signal.SIGUSR1:
                tell("up", peer)
            else:
                tell("down", peer, reason=DOWN_REASON)
    api.kill()


if __name__ == "__main__":
    main()
