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

A session that is not established says why: ExaBGP's output (its log) comes through Seawall on
its way to `exabgp.log`, where the reason a connection failed is picked up (ExaBGP gives it only
in its debug log), as is the reason in its JSON "down" messages; `peers()` shows since when and
the last reason, and a peer not established for PEER_DOWN_WARN_S is warned about once per outage.
ExaBGP repeats itself (a failed connection once a second, keepalives, Seawall's own summary asks):
`ExaBGPLog` writes a repeated line at most once per LOG_REPEAT_S. Both are the defaults of the
Speaker's `peer_down_warn_s` and `log_repeat_s` (tests pass seconds instead of minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
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
from typing import Any, BinaryIO

import structlog

from .config import BgpSettings, PeerSettings
from .routes import BlackholeRoute, Route

log = structlog.get_logger("seawall.bgp")

RELAY = pathlib.Path(__file__).with_name("relay.py")
RESTART_BACKOFF_S = (1.0, 30.0)     # seconds before restarting a dead speaker: first, most (doubling)
STOP_TIMEOUT_S = 10.0               # seconds ExaBGP gets to close its sessions on SIGTERM
SUMMARY_EVERY_S = 5.0               # seconds between `show neighbor summary` asks (state and uptime)
PEER_DOWN_WARN_S = 30.0             # seconds a peer may stay not established before a warning: ExaBGP
                                    # retries each second (a local address it cannot bind: at once, and
                                    # logged once a second, its outgoing.py), and a healthy session is
                                    # up within a few
LOG_REPEAT_S = 300.0                # seconds: a line ExaBGP repeats reaches exabgp.log once per this
LOG_REPEAT_KEYS = 4096              # distinct lines remembered for that (an UPDATE's bytes are unique)
OUTPUT_LINE_MAX = 1 << 20           # bytes: ExaBGP's longest log line (a 64 KiB BGP message in hex)
OUTPUT_DRAIN_S = 2.0                # seconds to read the rest of ExaBGP's output after it exited
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
# ExaBGP's log line on a stdout that is not a terminal: time | pid | source (padded to 15) | message.
_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d \| *\d+ *\| (.{15,}?) \| (.*)$")
# A failed outgoing connection (ExaBGP's `outgoing-N` source); its next line gives the reason.
# N counts ExaBGP's connections: each retry has its own, so the same line repeats with another N.
_SESSION = re.compile(r"\b(outgoing|incoming)-\d+\b")
_CONNECT_FAILED = re.compile(r"^connection to (\S+):\d+ failed$")
# Logged once per start and reload, with lines that repeat from one neighbor to the next.
_NOT_THINNED = {"configuration"}
# The wire dumps that exabgp.log.packets turns on with the reasons (every BGP message in hex, each
# line unique: a full table would be hundreds of MB): read for nothing, written nowhere.
_PAYLOAD = re.compile(r"^(received (in)?complete|sending) TCP payload\b")


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


_NOTIFICATION = "notification received"   # in ExaBGP's reason when the peer closed with a NOTIFICATION


@dataclasses.dataclass(slots=True)
class _Outage:
    """A configured peer not established while the speaker runs."""

    since: float                        # monotonic seconds
    since_wall: float                   # seconds since the epoch
    reason: str | None = None           # the last reason ExaBGP gave
    warned: bool = False


class ExaBGPLog:
    """ExaBGP's output on its way to exabgp.log: a line it repeats (same source, same message) is
    written at most once per `repeat_s` seconds, and the reason each failed connection gives is picked up."""

    def __init__(self, out: BinaryIO, repeat_s: float = LOG_REPEAT_S) -> None:
        self.out = out
        self.repeat_s = repeat_s
        self._written: dict[tuple[str, str], float] = {}   # (source, message) -> monotonic s, oldest first
        self._failed: dict[str, str] = {}                  # ExaBGP source -> peer its connection just failed to
        self._write_failed = False

    def line(self, text: str, now: float) -> tuple[str, str] | None:
        """One line of ExaBGP's output at `now` (monotonic seconds): (peer, reason) when it is the
        reason a connection to that peer failed, else None."""
        parsed = _LOG_LINE.match(text)
        if parsed is None:                 # not ExaBGP's logger (a traceback, the API process): as is
            self._write(text)
            return None
        source, message = parsed.group(1).rstrip(), parsed.group(2)
        if _PAYLOAD.match(message):
            return None
        key = (_SESSION.sub(r"\1", source), _SESSION.sub(r"\1", message))
        last = self._written.pop(key, None)
        if source in _NOT_THINNED or last is None or now - last >= self.repeat_s:
            self._write(text)
            last = now
        self._written[key] = last
        if len(self._written) > LOG_REPEAT_KEYS:
            del self._written[next(iter(self._written))]
        peer = self._failed.pop(source, None)
        failed = _CONNECT_FAILED.match(message)
        if failed is not None:
            self._failed[source] = failed.group(1)
            return None
        return None if peer is None else (peer, message)

    def _write(self, text: str) -> None:
        # A line that cannot be written is dropped: ExaBGP must never wait on Seawall's disk.
        try:
            self.out.write(text.encode() + b"\n")
            self.out.flush()
        except OSError as exc:
            if not self._write_failed:
                log.error("bgp.exabgp_log_failed", error=str(exc))
            self._write_failed = True
            return
        self._write_failed = False


class Speaker:
    def __init__(self, bgp: BgpSettings, run_dir: pathlib.Path, *,
                 on_state: Callable[[str, str], None] | None = None,
                 peer_down_warn_s: float = PEER_DOWN_WARN_S, log_repeat_s: float = LOG_REPEAT_S) -> None:
        self.bgp = bgp
        self.peer_down_warn_s = peer_down_warn_s      # seconds not established before the warning
        self.log_repeat_s = log_repeat_s              # seconds between two copies of a line ExaBGP repeats
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
        self._outages: dict[str, _Outage] = {}        # peers not established while the speaker runs
        self._log_file: Any = None
        self._exabgp_log: ExaBGPLog | None = None
        self._output: asyncio.Task | None = None      # reads ExaBGP's output into exabgp.log

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
            self._log_file = self._exabgp_log = None
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
               "exabgp.log.destination": "stdout",
               # Why a connection failed, ExaBGP says only at DEBUG and under `packets`, the category
               # of its connections' log; ExaBGPLog thins out what that repeats.
               "exabgp.log.level": "DEBUG", "exabgp.log.packets": "true"}
        if self._log_file is None:
            self._log_file = open(self.run_dir / "exabgp.log", "ab")  # noqa: SIM115 - lives with the speaker
            self._exabgp_log = ExaBGPLog(self._log_file, self.log_repeat_s)
        self.proc = await asyncio.create_subprocess_exec(
            exabgp_command(), str(self.run_dir / "exabgp.conf"), env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, limit=OUTPUT_LINE_MAX,
            start_new_session=True, preexec_fn=_die_with_parent)
        assert self.proc.stdout is not None
        self._output = asyncio.get_running_loop().create_task(self._read_output(self.proc.stdout),
                                                              name="bgp-exabgp-output")
        self._output.add_done_callback(_log_failure)
        for address in self._peer_state:
            self._set_state(address, STATE_CONNECT)
        log.info("bgp.speaker_started", pid=self.proc.pid, peers=list(self._peer_state))

    async def _terminate(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        await self._collect_output()

    async def _read_output(self, stream: asyncio.StreamReader) -> None:
        assert self._exabgp_log is not None
        while True:
            try:
                line = await stream.readline()
            except ValueError:             # longer than OUTPUT_LINE_MAX: left out
                continue
            if not line:
                return
            found = self._exabgp_log.line(line.decode(errors="replace").rstrip("\r\n"), time.monotonic())
            if found is not None:
                self._note_reason(*found)

    async def _collect_output(self) -> None:
        """ExaBGP exited: its last lines are read, then the reading ends (its API process, which
        holds the pipe too, exits right after it)."""
        task, self._output = self._output, None
        if task is not None:
            await asyncio.wait({task}, timeout=OUTPUT_DRAIN_S)
            task.cancel()

    async def _supervise(self) -> None:
        backoff = RESTART_BACKOFF_S[0]
        next_summary = time.monotonic() + SUMMARY_EVERY_S
        while True:
            proc = self.proc
            assert proc is not None
            wait = asyncio.ensure_future(proc.wait())
            while not wait.done():
                await asyncio.wait({wait}, timeout=1.0)
                self.warn_stuck_sessions(time.monotonic())
                if time.monotonic() >= next_summary:
                    self._send("show neighbor summary")
                    next_summary = time.monotonic() + SUMMARY_EVERY_S
            await self._collect_output()
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
                    if neighbor.get("reason"):     # "down" says why
                        self._note_reason(address, str(neighbor["reason"]))
            return
        row = _SUMMARY_ROW.match(line)
        if row and row.group(1) in self._peer_state:
            self._set_state(row.group(1), _STATES.get(row.group(4), STATE_CONNECT))

    def _set_state(self, address: str, state: str) -> None:
        was = self._peer_state.get(address)
        if was == state:
            return
        self._peer_state[address] = state
        now = time.monotonic()
        if state == STATE_ESTABLISHED:
            self._established_at[address] = now
        else:
            self._established_at.pop(address, None)
        if state in (STATE_ESTABLISHED, STATE_IDLE):      # up, or not tried (no speaker)
            self._outages.pop(address, None)
        else:
            self._outages.setdefault(address, _Outage(now, time.time()))
        log.info("bgp.session_state", peer=address, state=state, was=was)
        if self.on_state is not None:
            self.on_state(address, state)

    def _note_reason(self, address: str, reason: str) -> None:
        outage = self._outages.get(address)
        if outage is None:
            return
        # The peer's own word (a NOTIFICATION: "Administrative Shutdown", "Hold Timer Expired") says
        # why the outage began; the retries after it fail on the closed socket ("Broken TCP
        # connection") and would hide it.
        if outage.reason is not None and _NOTIFICATION in outage.reason and _NOTIFICATION not in reason:
            return
        outage.reason = reason

    def warn_stuck_sessions(self, now: float) -> None:
        """Warn about each peer not established for `peer_down_warn_s`, once per outage (`now`:
        monotonic seconds; the supervisor asks each second)."""
        for address, outage in self._outages.items():
            if not outage.warned and now - outage.since >= self.peer_down_warn_s:
                outage.warned = True
                log.warning("bgp.peer_not_established", peer=address, state=self._peer_state[address],
                            down_s=round(now - outage.since), since=outage.since_wall, reason=outage.reason)

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
        peers = []
        for p in self.bgp.peers:
            outage = self._outages.get(p.address)
            peers.append({"address": p.address, "peer_as": p.peer_as, "state": self._peer_state[p.address],
                          "uptime_s": round(now - self._established_at[p.address], 1)
                          if p.address in self._established_at else 0.0,
                          "down_since": outage.since_wall if outage else None,
                          "last_reason": outage.reason if outage else None})
        return peers

    def status(self) -> dict[str, Any]:
        return {"running": self.running, "pid": self.proc.pid if self.running and self.proc else None,
                "restarts": self.restarts, "last_exit": self.last_exit, "command_errors": self.errors}


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("bgp.task_failed", task=task.get_name(), error=repr(task.exception()))
