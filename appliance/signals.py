"""Signals that ask a long-running command to stop (Ctrl-C; SIGTERM from systemd, timeout(1) or a
CI runner): handlers that set a `threading.Event`, so that the command's `finally` removes what it
built (lab namespaces, the appliance child, bpffs pins) instead of the process ending where it stands.

Python runs a signal handler in the main thread between two bytecodes, wherever that thread is: also
inside `Event.wait()` or `Event.set()` with the event's lock held (a second signal arriving while the
first one's handler sets the event, say). `Event.set()` takes that lock, which is not reentrant, so a
handler that sets the event itself can hang the process for good: `make demo` ended by timeout(1),
whose SIGTERM reached the demo twice (timeout's own and make's), stayed in futex_wait with its lab up.
These handlers set nothing themselves: they hand `set()` to a new thread, which takes the lock once
the main thread lets it go.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_signals(stop: threading.Event, signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
                    ) -> dict[int, Callable | int | None]:
    """`signals` set `stop` (see the module docstring); returns the handlers they replaced, for
    `restore_signals`."""

    def handler(*_) -> None:
        if not stop.is_set():   # reads the flag without the lock
            threading.Thread(target=stop.set, name="stop-signal", daemon=True).start()

    return {sig: signal.signal(sig, handler) for sig in signals}


def restore_signals(previous: dict[int, Callable | int | None]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
