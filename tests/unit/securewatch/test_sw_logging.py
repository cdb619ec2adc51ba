"""Issue 12 item 18: `seawall securewatch` honours [appliance] log_format, and both servers
(`seawall securewatch` and the one `seawall run` hosts) write one access event per request."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import aiohttp
import structlog
from test_sw_helpers import TENANTS, InMemoryAppliance, add_token, settings

from securewatch import auth
from securewatch.server import start_server
from securewatch.store import Store
from tenants import TenantSet
from tests.support import await_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_item18_securewatch_log_format_json_writes_json_lines_and_access_events(tmp_path):
    port = _free_port()
    config = tmp_path / "seawall.toml"
    config.write_text(f'[appliance]\nstate_dir = "{tmp_path}"\nlog_format = "json"\n'
                      f'[securewatch]\nlisten = "127.0.0.1:{port}"\ndatabase = "sqlite:///{tmp_path}/sw.db"\n')
    token = auth.new_token()
    with Store.open_sync(f"sqlite:///{tmp_path}/sw.db") as store:
        store.add_token(auth.token_hash(token), "ops", "admin", None, "write")
    out = tmp_path / "stdout.log"
    with open(out, "w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "securewatch", "--config", str(config)],
                                stdout=stdout, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async def up():
                try:
                    async with http.get(f"{base}/api/v1/tenants") as r:
                        return r.status == 200
                except aiohttp.ClientConnectionError:
                    return False
            await await_until(up, timeout=30, what="seawall securewatch answering")
            async with http.get(f"{base}/api/v1/incidents?state=active&token=hunter2") as r:
                assert r.status == 200
        async with aiohttp.ClientSession() as anonymous, anonymous.get(f"{base}/api/v1/me") as r:
            assert r.status == 401

        def access_events():
            lines = [line for line in out.read_text().splitlines() if line.strip()]
            events = [json.loads(line) for line in lines]    # every line is JSON (no console rendering)
            return [e for e in events if e.get("event") == "http.access"]
        events = await await_until(lambda: len(access_events()) >= 3 and access_events(), what="access events")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    by_path = {e["path"]: e for e in events}
    listed = by_path["/api/v1/tenants"]
    assert (listed["method"], listed["status"], listed["remote"]) == ("GET", 200, "127.0.0.1")
    assert listed["user"] == "token:1:ops" and isinstance(listed["duration_ms"], float)
    assert listed["level"] == "info" and "timestamp" in listed
    assert by_path["/api/v1/incidents?state=active&token=********"]["status"] == 200
    assert "hunter2" not in out.read_text()                         # query secrets never logged
    refused = by_path["/api/v1/me"]
    assert refused["status"] == 401 and refused["user"] is None
    assert any(json.loads(line)["event"] == "securewatch.listening" for line in out.read_text().splitlines())


async def test_item18_the_appliance_hosted_server_logs_access_events(tmp_path):
    """`seawall run` hosts SecureWatch through start_server, with an appliance: the same access log."""
    appliance = InMemoryAppliance(TenantSet.from_dicts(TENANTS))
    with structlog.testing.capture_logs() as logs:
        async with start_server(settings(tmp_path), appliance=appliance, state_dir=tmp_path) as url:
            store = await Store.open(settings(tmp_path).database)
            try:
                token = await add_token(store, "noc")
            finally:
                await store.close()
            async with aiohttp.ClientSession() as http:
                r = await http.get(f"{url}/api/v1/status", headers={"Authorization": f"Bearer {token}"})
                assert r.status == 200
                r = await http.get(f"{url}/", allow_redirects=False)
                assert r.status == 302
    access = [e for e in logs if e["event"] == "http.access"]
    assert [(e["method"], e["path"], e["status"]) for e in access] == [("GET", "/api/v1/status", 200), ("GET", "/", 302)]
    assert access[0]["user"] == "token:1:test-noc" and access[1]["user"] is None
    assert all(e["remote"] == "127.0.0.1" and e["duration_ms"] >= 0 for e in access)
