"""`seawall demo` (and `demo --fleet`) end on Ctrl-C and on SIGTERM the same way: the signal sets the
demo's stop event, and its `finally` removes the lab (tests/netns/test_demo_stop.py runs SIGTERM
through a whole demo)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from appliance.runner import restore_signals, stop_on_signals


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
