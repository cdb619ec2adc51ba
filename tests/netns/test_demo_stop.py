"""`seawall demo` ended by SIGTERM (systemd, timeout(1), a CI runner) removes what it built, as Ctrl-C
does: the lab's namespaces and links, the `seawall run` child, the bpffs pins."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading

from appliance.lab.netlink import namespaces
from appliance.lab.topology import Lab
from dataplane.dataplane import purge
from tests.support import wait_until

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAB = "swq"                 # a lab name of its own: a demo on the default "sw" lab may be running
PINS = pathlib.Path(f"/sys/fs/bpf/seawall-{LAB}")   # the lab configuration's bpffs directory


def _links() -> list[str]:
    return [p.name for p in pathlib.Path("/sys/class/net").iterdir()]


def _children(pid: int) -> list[int]:
    return [int(c) for c in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_demo_ended_by_sigterm_removes_the_lab_and_the_appliance(tmp_path):
    """Ctrl-C (SIGINT) takes the same way out (appliance.signals.stop_on_signals, a unit test)."""
    lab = Lab(LAB)
    lines: list[str] = []
    children: list[int] = []
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "demo", "--lab", LAB, "--duration", "300",
                             "--state-dir", str(tmp_path), "--listen", "127.0.0.1:0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        # Past the appliance's start: the live view shows, the child forwards, its pins are in place.
        wait_until(lambda: any("Seawall demo  t=" in line for line in lines) or proc.poll() is not None,
                   timeout=120, interval=0.2, what="the demo's live view")
        assert proc.poll() is None, "".join(lines)
        assert set(lab.namespaces) <= set(namespaces())
        assert PINS.exists()
        children += _children(proc.pid)
        assert children, "the demo runs `seawall run` as its child"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, "".join(lines)
        reader.join(timeout=10)
        assert "lab removed." in "".join(lines), "".join(lines)
        assert not set(lab.namespaces) & set(namespaces())
        assert not [name for name in _links() if name.startswith(f"{LAB}-")]
        assert not PINS.exists()
        assert not [pid for pid in children if _alive(pid)]
        assert (tmp_path / f"{LAB}.log").stat().st_size > 0     # the appliance's log went where it was told
    finally:
        # What a failed run left behind: the demo, its `seawall run` child, the lab, the pins.
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
                wait_until(lambda pid=pid: not _alive(pid), timeout=30, what=f"pid {pid} to end")
        lab.down()
        purge(str(PINS))
