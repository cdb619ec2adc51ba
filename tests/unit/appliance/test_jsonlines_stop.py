"""`JsonLinesProcess.stop()`: a child that answers SIGINT with its summary gives it back; one that
fails gives None and says why (its exit code and stderr), which the tests then print."""

from __future__ import annotations

import sys

from appliance.lab.jsonlines import JsonLinesProcess
from tests.support import wait_until

# Prints a second, then waits; on SIGINT prints its summary and exits 0.
ANSWERS = """
import json, signal, sys, threading
stop = threading.Event()
signal.signal(signal.SIGINT, lambda *_: stop.set())
print(json.dumps({"type": "second", "n": 1}), flush=True)
stop.wait(60)
print(json.dumps({"type": "summary", "transmitted": 7}), flush=True)
"""
# Prints a second, then fails on its own with a message on stderr.
FAILS = """
import json, sys
print(json.dumps({"type": "second", "n": 1}), flush=True)
sys.exit("generator: the device went away")
"""


def _started(source: str) -> JsonLinesProcess:
    child = JsonLinesProcess([sys.executable, "-c", source], name="child").start()
    wait_until(lambda: child.seconds, timeout=30, what="the child's first second")
    return child


def test_stop_returns_the_summary_printed_after_sigint():
    child = _started(ANSWERS)
    assert child.stop() == {"type": "summary", "transmitted": 7}
    assert child.failure is None


def test_stop_of_a_failed_child_returns_none_and_keeps_why():
    child = _started(FAILS)
    wait_until(lambda: not child.running, timeout=30, what="the child's exit")
    assert child.stop() is None
    assert "exited 1" in child.failure and "the device went away" in child.failure
