"""Issue 12 item 20 without root: systemd's readiness datagram over a real AF_UNIX socket, and what
`seawall status` says of `forwarding` from the running appliance's report (or without one)."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

import pytest

from appliance.commands import status as status_command
from appliance.sdnotify import notify


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(5.0)  # seconds: the datagram is queued before notify() returns
    yield sock, str(tmp_path / "notify.sock")
    sock.close()


def test_notify_sends_ready_and_status_in_one_datagram(notify_socket):
    sock, path = notify_socket
    assert notify({"NOTIFY_SOCKET": path}, READY="1", STATUS="forwarding")
    assert sock.recv(4096).decode().split("\n") == ["READY=1", "STATUS=forwarding"]


def test_notify_reaches_an_abstract_socket():
    name = f"seawall-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5.0)
        assert notify({"NOTIFY_SOCKET": "@" + name}, READY="1")
        assert sock.recv(4096) == b"READY=1"


def test_notify_without_systemd_or_with_a_dead_socket_sends_nothing_and_never_raises(tmp_path):
    assert notify({}, READY="1") is False
    assert notify({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")}, READY="1") is False


def _status(tmp_path, capsys, report: dict | None) -> dict:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    if report is not None:
        (state / "status.json").write_text(json.dumps(report))
    config = tmp_path / "seawall.toml"
    config.write_text(f'[appliance]\nstate_dir = "{state}"\nbpffs = "{tmp_path / "bpffs"}"\n')
    args = type("Args", (), {"config": str(config), "json": True})()
    status_command.status(args)
    return json.loads(capsys.readouterr().out)


def test_status_reports_forwarding_from_the_running_appliance(tmp_path, capsys):
    running = {"pid": os.getpid(), "updated": time.time(), "forwarding": True, "forwarding_state": "forwarding"}
    shown = _status(tmp_path, capsys, running)
    assert (shown["control_plane"], shown["forwarding"], shown["forwarding_state"]) == ("running", True, "forwarding")
    waiting = {**running, "forwarding": False, "forwarding_state": "not forwarding: sw-int is down or has no carrier"}
    assert _status(tmp_path, capsys, waiting)["forwarding"] is False


def test_status_without_a_live_control_plane_never_claims_forwarding(tmp_path, capsys):
    stale = {"pid": os.getpid(), "updated": time.time() - 60, "forwarding": True, "forwarding_state": "forwarding"}
    shown = _status(tmp_path, capsys, stale)
    assert shown["control_plane"] == "down" and shown["forwarding"] is False
    assert shown["forwarding_state"].startswith("unknown")
    (tmp_path / "never-ran").mkdir()
    assert _status(tmp_path / "never-ran", capsys, None)["forwarding"] is False


def test_human_status_says_why_it_is_not_forwarding():
    shown = status_command.render_human({
        "control_plane": "running", "status_age_s": 0.2, "dataplane_attached_to": [], "interfaces": [], "tenants": {},
        "forwarding": False, "forwarding_state": "starting: validating, compiling and attaching"})
    assert "forwarding:    no (starting: validating, compiling and attaching)" in shown.splitlines()
