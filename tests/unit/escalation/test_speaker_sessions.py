"""A BGP session that does not come up says why: in the status (since when, ExaBGP's last reason), in
one warning per outage, and in exabgp.log without ExaBGP's once-a-second retries flooding it.
ExaBGP's stand-in speaks its words: a local address that is not on this host, then a NOTIFICATION."""

from __future__ import annotations

import io
import os
import signal
import time

from structlog.testing import capture_logs

from escalation import speaker
from escalation.config import BgpSettings, PeerSettings
from escalation.speaker import (
    LOG_REPEAT_S,
    PEER_DOWN_WARN_S,
    STATE_DOWN,
    STATE_ESTABLISHED,
    ExaBGPLog,
    Speaker,
)
from tests.support import await_until
from tests.unit.escalation import fake_exabgp

PEER = "127.0.0.2"
BIND_ERROR = fake_exabgp.BIND_ERROR.format(local="192.0.2.1")
RETRIES = 5                     # failed attempts the stand-in makes before exabgp.log is looked at


def warnings(logs: list[dict]) -> list[tuple[str, str, str | None]]:
    return [(e["event"], e["peer"], e["reason"]) for e in logs if e["log_level"] == "warning"]


async def test_a_peer_that_never_comes_up_shows_why_and_is_warned_about_once_per_outage(tmp_path, monkeypatch):
    recorded = tmp_path / "commands.log"
    monkeypatch.setattr(speaker, "exabgp_command", lambda: fake_exabgp.executable(tmp_path))
    monkeypatch.setenv("FAKE_EXABGP_LOG", str(recorded))
    monkeypatch.setenv("FAKE_EXABGP_UNBINDABLE", "1")
    bgp = BgpSettings(64512, "192.0.2.1", (PeerSettings(PEER, 64500),))      # 192.0.2.1: not on this host
    spk = Speaker(bgp, tmp_path / "bgp")
    started = time.time()
    await spk.start()
    try:
        [peer] = await await_until(lambda: [p for p in spk.peers() if p["last_reason"]], what="ExaBGP's reason")
        assert (peer["state"], peer["uptime_s"], peer["last_reason"]) == ("connect", 0.0, BIND_ERROR)
        assert started - 1 <= peer["down_since"] <= time.time()
        await await_until(lambda: recorded.read_text().count("attempt") >= RETRIES, what="retries")
        with capture_logs() as logs:
            spk.warn_stuck_sessions(time.monotonic())                            # too early
            spk.warn_stuck_sessions(time.monotonic() + PEER_DOWN_WARN_S)
            spk.warn_stuck_sessions(time.monotonic() + 2 * PEER_DOWN_WARN_S)    # once per outage
        assert warnings(logs) == [("bgp.peer_not_established", PEER, BIND_ERROR)]

        os.kill(spk.proc.pid, signal.SIGUSR1)                                    # the session comes up
        await await_until(lambda: spk.peers()[0]["state"] == STATE_ESTABLISHED, what="established")
        up = time.time()
        assert (spk.peers()[0]["down_since"], spk.peers()[0]["last_reason"]) == (None, None)
        with capture_logs() as logs:
            spk.warn_stuck_sessions(time.monotonic() + PEER_DOWN_WARN_S)
        assert warnings(logs) == []

        os.kill(spk.proc.pid, signal.SIGUSR2)                                    # ... and is lost
        await await_until(lambda: spk.peers()[0]["state"] == STATE_DOWN, what="down")
        [peer] = spk.peers()
        assert peer["last_reason"] == fake_exabgp.DOWN_REASON and up <= peer["down_since"] <= time.time()
        with capture_logs() as logs:
            spk.warn_stuck_sessions(time.monotonic() + PEER_DOWN_WARN_S)
        assert warnings(logs) == [("bgp.peer_not_established", PEER, fake_exabgp.DOWN_REASON)]
    finally:
        await spk.stop()
    exabgp_log = (tmp_path / "bgp" / "exabgp.log").read_text()
    assert "Thank you for using ExaBGP" in exabgp_log
    assert exabgp_log.count(BIND_ERROR) == 1                                     # retried, written once
    assert exabgp_log.count(f"attempting connection to {PEER}:179") == 1


def test_what_exabgp_repeats_for_each_retry_reaches_its_log_once_per_log_repeat_s():
    out = io.BytesIO()
    exabgp_log = ExaBGPLog(out)

    def retry(n: int, now: float) -> None:
        # ExaBGP 4.2.25's lines for a peer that closes each connection: each retry is a new connection number.
        for message in (f"attempting connection to {PEER}:179", f"outgoing-{n} 127.0.0.1-{PEER}, closing connection",
                        "peer reset, message [closing connection] error[Broken TCP connection]"):
            assert exabgp_log.line(f"03:55:{n:02d} | 6125   | outgoing-{n:<6d} | {message}", now) is None

    for n in range(1, 4):
        retry(n, now=n)
    assert out.getvalue().decode().count(f"{PEER}:179") == 1
    assert out.getvalue().decode().count("closing connection\n") == 1
    retry(4, now=3 + LOG_REPEAT_S)
    assert out.getvalue().decode().count(f"{PEER}:179") == 2
    for _ in range(2):      # the configuration's dump repeats lines from one neighbor to the next: all kept
        exabgp_log.line("03:55:01 | 6125   | configuration   | . local-as         | '64512'", 3 + LOG_REPEAT_S)
    assert out.getvalue().decode().count("'64512'") == 2
