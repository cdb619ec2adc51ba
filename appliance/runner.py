"""Run `seawall run` as a child process and wait for it properly (demo, tests, benchmarks)."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import tomli_w

from appliance.config import load_config
from appliance.service import read_status


class ApplianceProcess:
    """`seawall run --config FILE` in a child process, with its log in a file.

    `start()` returns once the child reports, with its own pid, that the bridge
    is forwarding (the tenants applied, the program attached to both NICs, both
    up); `stop()` sends SIGTERM and waits. Use as a context manager so the child
    never outlives its owner. `env`: the child's environment (default: ours).
    """

    def __init__(self, config: dict, config_path: pathlib.Path, log_path: pathlib.Path,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.config_path = pathlib.Path(config_path)
        self.config_path.write_text(tomli_w.dumps(config))
        self.config = load_config(self.config_path)
        self.state_dir = pathlib.Path(self.config.appliance.state_dir)
        self.log_path = pathlib.Path(log_path)
        self.extra_args = extra_args
        self.env = env
        self.proc: subprocess.Popen | None = None

    def launch(self) -> ApplianceProcess:
        """Start the child and return at once (`start` also waits until it forwards)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--config",
                                      str(self.config_path), *self.extra_args],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
        log.close()
        return self

    def start(self, timeout: float = 60.0) -> ApplianceProcess:
        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"seawall run exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            report = read_status(self.state_dir)
            if report and report.get("pid") == self.proc.pid and report.get("forwarding"):
                return self
            time.sleep(0.1)  # poll interval while the program compiles and attaches
        self.stop()
        raise TimeoutError(f"seawall run did not report forwarding within {timeout} s: "
                           f"{(read_status(self.state_dir) or {}).get('forwarding_state')}")

    def status(self) -> dict:
        return read_status(self.state_dir) or {}

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def __enter__(self) -> ApplianceProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
