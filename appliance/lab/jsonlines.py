"""A child process that reports in JSON lines: `{"type": "second", ...}` while it runs, then a summary.

Used to run the attack generator (which enters `<p>-up`) and the legitimate
clients (inside `<p>-cli`) from Python without moving the caller's namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable

from appliance.lab.topology import REPO_ROOT

STOP_TIMEOUT_S = 15.0   # seconds a stopped child may take to print its summary


class JsonLinesProcess:
    """Runs `argv`; `seconds` fills as per-second records arrive, `wait()` returns the summary."""

    def __init__(self, argv: list[str], name: str):
        self.argv, self.name = argv, name
        self.on_record: Callable[[dict], None] | None = None   # called from the reader thread
        self.seconds: list[dict] = []
        self.summary: dict | None = None
        self.failure: str | None = None     # why stop() returned None: the exit code and stderr's tail
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self):
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-reader", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue   # human-readable lines are not part of the protocol
            with self._lock:
                if record.get("type") == "second":
                    self.seconds.append(record)
                elif record.get("type") == "summary":
                    self.summary = record
            if self.on_record is not None:
                self.on_record(record)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float | None = None) -> dict:
        if self._proc is None:
            raise RuntimeError(f"{self.name} not started")
        rc = self._proc.wait(timeout)
        self._reader.join(timeout=5)
        stderr = self._proc.stderr.read().decode(errors="replace")
        if rc != 0 or self.summary is None:
            raise RuntimeError(f"{self.name} exited {rc} without a summary: {stderr[-2000:]}")
        return self.summary

    def stop(self) -> dict | None:
        """End early (SIGINT: the child still prints its summary); None if it printed none, and then
        `failure` says why."""
        if self.running:
            self._proc.send_signal(signal.SIGINT)
        try:
            return self.wait(timeout=STOP_TIMEOUT_S)
        except RuntimeError as exc:
            self.failure = str(exc)
        except subprocess.TimeoutExpired:
            self.failure = f"{self.name} printed no summary within {STOP_TIMEOUT_S:.0f} s of SIGINT"
        self.kill()
        return None

    def kill(self) -> None:
        if self.running:
            self._proc.kill()
        if self._proc is not None:
            self._proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
