"""The BGP speaker adapter: ExaBGP in a child process, driven through its text API. No policy here.

Why ExaBGP (README, "BGP escalation"): it is a pinned PyPI package like Seawall's other
dependencies, announces and withdraws single routes through a line-based API without a
reconfiguration, speaks FlowSpec for IPv4 and IPv6 (RFC 8955/8956) with every component
Seawall's signatures use, acknowledges each command ("done"/"error"), and reports session
state changes as JSON.

    speaker = Speaker(bgp, run_dir)
    await speaker.start()                   # writes exabgp.conf, listens on api.sock, spawns ExaBGP
    speaker.announce(route) / .withdraw(route)
    await speaker.stop()                    # withdraws everything, then stops ExaBGP (session closed)

ExaBGP runs `relay.py` as its API process, which joins ExaBGP's stdio to `api.sock`. Each time
the relay connects (ExaBGP started or restarted), every route Seawall wants announced is sent
again: ExaBGP keeps them in its Adj-RIB-Out and sends them when the session comes up, and again
after the session re-establishes. A speaker that dies is noticed (its process exits), logged,
counted (`restarts`) and started again after a back-off; its sessions show "down" meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import getpass
import json
import os
import pathlib
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog

from .config import BgpSettings, PeerSettings
from .routes import BlackholeRoute, Route

log = structlog.get_logger("seawall.bgp")

RELAY = pathlib.Path(__file__).with_name("relay.py")
RESTART_BACKOFF_S = (1.0, 30.0)     # seconds before restarting a dead speaker: first, most (doubling)
STOP_TIMEOUT_S = 10.0               # seconds ExaBGP gets to close its sessions on SIGTERM
SUMMARY_EVERY_S = 5.0               # seconds between `show neighbor summary` asks (state and uptime)
STATE_IDLE = "idle"                 # no speaker process
STATE_CONNECT = "connect"           # speaker up, no session yet
STATE_ESTABLISHED = "established"
STATE_DOWN = "down"
# ExaBGP's state words (JSON "state" messages and the summary's column) -> ours.
_STATES = {"up": STATE_ESTABLISHED, "established": STATE_ESTABLISHED, "connected": STATE_CONNECT,
           "down": STATE_DOWN, "idle": STATE_CONNECT, "active": STATE_CONNECT, "connect": STATE_CONNECT,
           "opensent": STATE_CONNECT, "openconfirm": STATE_CONNECT}
PR_SET_PDEATHSIG = 1                # prctl(2): the signal a child gets when its parent dies
# A row of `show neighbor summary`: peer, AS, up/down time, state, ...
_SUMMARY_ROW = re.compile(r"^(\S+)\s+(\d+)\s+(\S+)\s+([a-z]+)\b")


def exabgp_command() -> str:
    """The ExaBGP executable bootstrap installed: next to this interpreter, else on PATH."""
    beside = pathlib.Path(sys.executable).with_name("exabgp")
    if beside.exists():
        return str(beside)
    found = shutil.which("exabgp")
    if found is None:
        raise FileNotFoundError("exabgp is not installed (scripts/bootstrap.sh installs it from requirements.lock)")
    return found


def exabgp_config(bgp: BgpSettings, socket_path: pathlib.Path) -> str:
    """ExaBGP's configuration: the API process and one neighbor per peer (no static routes)."""
    lines = ["process seawall {",
             f"    run {sys.executable} {RELAY} {socket_path};",
             "    encoder json;",
             "}"]
    for peer in bgp.peers:
        lines += [f"neighbor {peer.address} {{",
                  f"    router-id {bgp.router_id};",
                  f"    local-address {local_address(bgp, peer)};",
                  f"    local-as {bgp.local_as};",
                  f"    peer-as {peer.peer_as};",
                  f"    family {{ {' '.join(_families(peer))} }}",
                  "    api { processes [ seawall ]; neighbor-changes; }",
                  "}"]
    return "\n".join(lines) + "\n"


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when Seawall dies, however it dies. ExaBGP then closes
    its sessions, and the peers withdraw what Seawall announced: no route outlives a crash."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def local_address(bgp: BgpSettings, peer: PeerSettings) -> str:
    return peer.local_address or bgp.router_id


def _families(peer: PeerSettings) -> list[str]:
    families = []
    if peer.rtbh or not peer.flowspec:
        families += ["ipv4 unicast;", "ipv6 unicast;"]
    if peer.flowspec:
        families += ["ipv4 flow;", "ipv6 flow;"]
    return families


class Speaker:
    def __init__(self, bgp: BgpSettings, run_dir: pathlib.Path, *,
                 on_state: Callable[[str, str], None] | None = None) -> None:
        self.bgp = bgp
        self.run_dir = pathlib.Path(run_dir)
        self.socket_path = self.run_dir / "api.sock"
        self.on_state = on_state                      # (peer address, new state)
        self.routes: dict[str, Route] = {}            # what should be announced, by key
        self.restarts = 0                             # times a dead speaker was started again
        self.errors = 0                               # commands ExaBGP answered "error"
        self.last_exit: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.AbstractServer | None = None
        self._supervisor: asyncio.Task | None = None
        self._stopping = False
        self._peer_state = {p.address: STATE_IDLE for p in bgp.peers}
        self._established_at: dict[str, float] = {}   # monotonic seconds
        self._log_file: Any = None

    # -- life cycle -------------------------------------------------------------

    async def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        (self.run_dir / "exabgp.conf").write_text(exabgp_config(self.bgp, self.socket_path))
        await self._spawn()
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name="bgp-speaker")

    async def stop(self) -> None:
        """Withdraw every route, then stop ExaBGP: its SIGTERM closes the sessions with a
        NOTIFICATION, and a peer drops every route it learnt over a closed session."""
        self._stopping = True
        for route in list(self.routes.values()):
            self.withdraw(route)
        if self._writer is not None:
            with contextlib.suppress(ConnectionError, OSError):
                await asyncio.wait_for(self._writer.drain(), 2.0)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._terminate()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        for address in self._peer_state:
            self._set_state(address, STATE_IDLE)
        if self._log_file is not None:
            self._log_file.close()
        log.info("bgp.speaker_stopped", withdrawn=len(self.routes))

    async def reconfigure(self, bgp: BgpSettings) -> bool:
        """New [bgp] settings (a reload): ExaBGP restarted with the new configuration, without a
        withdraw first. Sessions drop for a moment (the peers drop Seawall's routes meanwhile, as
        after a crash); when the new ExaBGP connects, every route is announced again to each peer
        of the new configuration that takes its kind. Unchanged settings: nothing happens (False)."""
        if bgp == self.bgp:
            return False
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._terminate()
        old = set(self._peer_state)
        self.bgp = bgp
        for address in old - {p.address for p in bgp.peers}:
            self._set_state(address, STATE_IDLE)
            del self._peer_state[address]
        for peer in bgp.peers:
            self._peer_state.setdefault(peer.address, STATE_IDLE)
        (self.run_dir / "exabgp.conf").write_text(exabgp_config(bgp, self.socket_path))
        log.info("bgp.speaker_reconfigured", peers=[p.address for p in bgp.peers], routes=len(self.routes))
        await self._spawn()
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name="bgp-speaker")
        return True

    async def _spawn(self) -> None:
        env = {**os.environ,
               "exabgp.daemon.daemonize": "false", "exabgp.daemon.user": getpass.getuser(),
               "exabgp.daemon.drop": "false", "exabgp.api.ack": "true", "exabgp.cli.enable": "false",
               "exabgp.log.destination": "stdout"}
        if self._log_file is None:
            self._log_file = open(self.run_dir / "exabgp.log", "ab")  # noqa: SIM115 - lives with the speaker
        self.proc = await asyncio.create_subprocess_exec(
            exabgp_command(), str(self.run_dir / "exabgp.conf"), env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_file, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent)
        for address in self._peer_state:
            self._set_state(address, STATE_CONNECT)
        log.info("bgp.speaker_started", pid=self.proc.pid, peers=list(self._peer_state))

    async def _terminate(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def _supervise(self) -> None:
        backoff = RESTART_BACKOFF_S[0]
        next_summary = time.monotonic() + SUMMARY_EVERY_S
        while True:
            proc = self.proc
            assert proc is not None
            wait = asyncio.ensure_future(proc.wait())
            while not wait.done():
                await asyncio.wait({wait}, timeout=1.0)
                if time.monotonic() >= next_summary:
                    self._send("show neighbor summary")
                    next_summary = time.monotonic() + SUMMARY_EVERY_S
            self.last_exit = proc.returncode
            for address in self._peer_state:
                self._set_state(address, STATE_DOWN)
            log.error("bgp.speaker_died", pid=proc.pid, exit=proc.returncode, restart_in_s=backoff,
                      announced=len(self.routes))
            # Its sessions are gone, so the peers dropped every route; they come back at the restart.
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_S[1])
            try:
                await self._spawn()
            except OSError as exc:
                log.error("bgp.speaker_restart_failed", error=str(exc))
                continue
            self.restarts += 1

    # -- the API connection ---------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = writer
        log.info("bgp.api_connected", replay=len(self.routes))
        for route in list(self.routes.values()):
            self._command("announce", route)
        try:
            while line := await reader.readline():
                self._receive(line.decode(errors="replace").strip())
        except (ConnectionError, OSError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()

    def _receive(self, line: str) -> None:
        if not line:
            return
        if line == "done":
            return
        if line == "error":
            self.errors += 1
            log.error("bgp.command_refused", errors=self.errors)
            return
        if line.startswith("{"):
            try:
                message = json.loads(line)
            except ValueError:
                return
            if message.get("type") == "state":
                neighbor = message.get("neighbor") or {}
                address = (neighbor.get("address") or {}).get("peer")
                state = _STATES.get(str(neighbor.get("state")), STATE_CONNECT)
                if address in self._peer_state:
                    self._set_state(address, state)
            return
        row = _SUMMARY_ROW.match(line)
        if row and row.group(1) in self._peer_state:
            self._set_state(row.group(1), _STATES.get(row.group(4), STATE_CONNECT))

    def _set_state(self, address: str, state: str) -> None:
        was = self._peer_state.get(address)
        if was == state:
            return
        self._peer_state[address] = state
        if state == STATE_ESTABLISHED:
            self._established_at[address] = time.monotonic()
        else:
            self._established_at.pop(address, None)
        log.info("bgp.session_state", peer=address, state=state, was=was)
        if self.on_state is not None:
            self.on_state(address, state)

    def _send(self, text: str) -> None:
        if self._writer is None or self._writer.is_closing():
            return
        self._writer.write(text.encode() + b"\n")

    def _command(self, verb: str, route: Route) -> None:
        for peer in self.bgp.peers:
            if not peer.takes(route.kind):
                continue
            if isinstance(route, BlackholeRoute):
                nlri = route.exabgp_nlri(peer.rtbh_communities, self.bgp.router_id, peer.rtbh_next_hop6)
            else:
                nlri = route.exabgp_nlri()
            self._send(f"neighbor {peer.address} {verb} {nlri}")

    # -- what Seawall asks -------------------------------------------------------------

    def announce(self, route: Route) -> None:
        """Announce now when the speaker is connected; in any case again at each (re)connect."""
        self.routes[route.key] = route
        self._command("announce", route)

    def withdraw(self, route: Route) -> None:
        self.routes.pop(route.key, None)
        self._command("withdraw", route)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def peers(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [{"address": p.address, "peer_as": p.peer_as, "state": self._peer_state[p.address],
                 "uptime_s": round(now - self._established_at[p.address], 1)
                 if p.address in self._established_at else 0.0}
                for p in self.bgp.peers]

    def status(self) -> dict[str, Any]:
        return {"running": self.running, "pid": self.proc.pid if self.running and self.proc else None,
                "restarts": self.restarts, "last_exit": self.last_exit, "command_errors": self.errors}
