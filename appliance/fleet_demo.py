"""`seawall demo --fleet`: two sites and one central SecureWatch on the built-in lab.

It builds two labs (sites `ams1` and `fra1`, each with its own pair of NICs), starts a central
SecureWatch (`seawall securewatch`, central mode, SQLite under the demo's state directory; a real
fleet uses PostgreSQL, see the README), enrolls both sites, starts `seawall run` on each with
`[fleet]`, creates the lab's tenants centrally (beta for ams1 only) and shows them reach both
dataplanes, then plays the reference scenario at ams1 and legitimate traffic at fra1 while a live
view prints the fleet as the central server sees it (state, version, lagging, queued, traffic).
Midway the central server is stopped for a while: both sites keep filtering and queue, and the
backlog arrives when it is back. It ends with the central server's address and an admin login,
and keeps it running until Ctrl-C (unless --duration bounds the run).
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from appliance.demo import DEMO_STATE, bounded
from appliance.lab import Lab, lab_config
from appliance.lab.scenario import load_scenario, play
from appliance.lab.traffic import TrafficProfile, TrafficRun
from appliance.runner import ApplianceProcess
from appliance.signals import restore_signals, stop_on_signals
from dataplane.dataplane import purge

SITES = ("ams1", "fra1")
VIEW_INTERVAL_S = 1.0          # seconds between refreshes of the fleet view
CENTRAL_START_S = 30.0         # seconds for the central server to listen
OUTAGE_AT_S, OUTAGE_S = 20.0, 10.0   # the central server is down from 20 s into the scenario, for 10 s
FRA1_TRAFFIC = TrafficProfile(game_pps=100, http_rps=5, dns_qps=20)


def _cli(*args: str, stdin: str | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "appliance.cli", *args], input=stdin, capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"seawall {' '.join(args[:2])}: {(out.stderr or out.stdout).strip()[-300:]}")
    return out.stdout


class CentralProcess:
    def __init__(self, config_path, log_path) -> None:
        self.config_path, self.log_path = config_path, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        before = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "securewatch", "--config",
                                          str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + CENTRAL_START_S
        while "central server mode" not in self.log_path.read_bytes()[before:].decode(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the central server did not start: {self.log_path.read_text()[-1000:]}")
            time.sleep(0.1)   # poll interval while it opens its database

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _request(url: str, token: str, method: str = "GET", body: object = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (urllib.error.URLError, OSError):
        return 0, {}


def _view(base: str, token: str, appliances: dict[str, ApplianceProcess], central_up: bool, t: float) -> None:
    sites = {s["site"]: s for s in _request(f"{base}/api/v1/fleet/sites", token)[1].get("sites", [])}
    parts = [f"t={t:5.0f}s central {'up  ' if central_up else 'DOWN'}"]
    for site, proc in appliances.items():
        status = proc.status()
        fleet = status.get("fleet") or {}
        dropped = sum(t.get("dropped_pps", 0) for t in (status.get("tenants") or {}).values())
        seen = sites.get(site, {})
        traffic = seen.get("traffic") or {}
        parts.append(f"| {site}: local drop {dropped:8.0f} pps, queued {fleet.get('queue', {}).get('batches', 0):3d}, "
                     f"v{fleet.get('running_version')}{' LAGGING' if seen.get('lagging') else ''}; central sees "
                     f"{traffic.get('dropped_pps', 0):8.0f} pps dropped")
    print(" ".join(parts), flush=True)


def run_fleet_demo(duration: float | None = None, keep_running: bool = True, scenario_path: str | None = None,
                   state_dir: pathlib.Path = DEMO_STATE) -> int:
    scenario = bounded(load_scenario(scenario_path) if scenario_path else load_scenario(), duration)
    state = state_dir / "fleet"
    state.mkdir(parents=True, exist_ok=True)
    for stale in state.glob("central.db*"):
        stale.unlink()   # a fresh central server (and admin password) each run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    central_config = state / "central.toml"
    central_config.write_text(f'[appliance]\nstate_dir = "{state}/central"\nlog_format = "json"\n'
                              f'[securewatch]\nlisten = "127.0.0.1:{port}"\n'
                              f'database = "sqlite:///{state}/central.db"\n')
    base = f"http://127.0.0.1:{port}"
    central = CentralProcess(central_config, state / "central.log")
    labs = {site: Lab(f"sw{site[:1]}") for site in SITES}
    appliances: dict[str, ApplianceProcess] = {}
    stop = threading.Event()
    previous = stop_on_signals(stop)
    try:
        print("starting the central SecureWatch ...", flush=True)
        central.start()
        password = secrets.token_urlsafe(12)
        _cli("user", "add", "admin", "--role", "admin", "--config", str(central_config), stdin=password + "\n")
        admin = _cli("token", "create", "--role", "admin", "--label", "demo", "--config",
                     str(central_config)).strip().splitlines()[-1]
        for site, lab in labs.items():
            print(f"building the lab of site {site} ('{lab.name}') and enrolling it ...", flush=True)
            lab.up()
            token = _cli("fleet", "enroll", site, "--config", str(central_config)).strip().splitlines()[-1]
            token_file = state / f"{site}.token"
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
            config = lab_config(lab.name)
            config["appliance"]["state_dir"] = str(state / site)
            config["securewatch"] = {"enabled": False}
            config["tenants"] = [t for t in config["tenants"] if t["id"] == "alpha"]
            config["fleet"] = {"central": base, "site": site, "token_file": str(token_file)}
            for stale in (state / site / "fleet").glob("*"):
                stale.unlink()
            appliances[site] = ApplianceProcess(config, state / f"{site}.toml", state / f"{site}.log")
        for site, proc in appliances.items():
            print(f"starting seawall run at {site} (log: {proc.log_path}) ...", flush=True)
            proc.start()
        print("creating the tenants centrally (beta only at ams1) ...", flush=True)
        for table in lab_config("sw")["tenants"]:
            if table["id"] == "beta":
                table = {**table, "sites": ["ams1"]}
            _request(f"{base}/api/v1/tenants", admin, "POST", table)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
                "gamma" in (p.status().get("tenants") or {}) for p in appliances.values()):
            time.sleep(0.2)   # poll interval while the sites take the new version
        for site, proc in appliances.items():
            print(f"  {site} runs: {', '.join(sorted(proc.status().get('tenants') or {}))}", flush=True)

        print("playing the reference scenario at ams1, ordinary traffic at fra1 ...", flush=True)
        run = play(scenario, labs["ams1"])
        fra1 = TrafficRun(labs["fra1"], scenario.duration_s, FRA1_TRAFFIC).start()
        t0, central_up = time.time(), True
        try:
            while not stop.is_set() and time.time() - t0 < scenario.duration_s + 2:
                t = time.time() - t0
                if central_up and OUTAGE_AT_S <= t < OUTAGE_AT_S + OUTAGE_S:
                    print("-- stopping the central server: the sites keep filtering and queue --", flush=True)
                    central.stop()
                    central_up = False
                elif not central_up and t >= OUTAGE_AT_S + OUTAGE_S:
                    print("-- the central server is back: the sites backfill --", flush=True)
                    central.start()
                    central_up = True
                _view(base, admin, appliances, central_up, t)
                stop.wait(VIEW_INTERVAL_S)
        finally:
            run.stop()
            fra1.stop()
        if not central_up:
            central.start()
        print(f"\ncentral SecureWatch: {base}/fleet   login: admin / {password}", flush=True)
        if keep_running and duration is None and not stop.is_set():
            print("It keeps running (Ctrl-C to stop).", flush=True)
            stop.wait()
    finally:
        restore_signals(previous)
        for proc in appliances.values():
            proc.stop()
            purge(proc.config.appliance.bpffs)
        central.stop()
        for lab in labs.values():
            lab.down()
        print("labs removed.", flush=True)
    return 0
