"""`seawall demo` (and `demo --fleet`, `seawall attack`) end on Ctrl-C and on SIGTERM the same way: the
signal sets the command's stop event, and its `finally` removes the lab (tests/netns/test_demo_stop.py
runs SIGTERM through a whole demo)."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading

import pytest

from appliance.signals import restore_signals, stop_on_signals

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_stop_signal_sets_the_event_and_the_handlers_are_restored(sig):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop = threading.Event()
    previous = stop_on_signals(stop)
    try:
        os.kill(os.getpid(), sig)          # the handler runs in the main thread before kill returns here
        assert stop.wait(5.0), f"{sig.name} did not set the stop event"
    finally:
        restore_signals(previous)
    assert {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} == before


# Two SIGTERMs while the main thread holds the event's lock, as it does inside Event.wait() and
# Event.set() (timeout(1) and make each sent one to `make demo`): a handler that took the lock itself
# waited for its own thread for ever.
HELD_LOCK_CHILD = """
import os, signal, threading
from appliance.signals import stop_on_signals
stop = threading.Event()
stop_on_signals(stop)
with stop._cond:
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
print("set" if stop.wait(5.0) else "not set", flush=True)
"""


def test_signals_while_the_main_thread_holds_the_events_lock_set_it_without_hanging():
    out = subprocess.run([sys.executable, "-c", HELD_LOCK_CHILD], capture_output=True, text=True, timeout=30,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (out.returncode, out.stdout.strip()) == (0, "set"), out.stderr
