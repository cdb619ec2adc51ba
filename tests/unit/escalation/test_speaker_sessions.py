"""A BGP session that does not come up says why: in the status (since when, ExaBGP's last reason), in
one warning per outage, and in exabgp.log without ExaBGP's once-a-second retries flooding it.
The real ExaBGP runs here, told to connect from an address that is not on this host: its bind fails,
so nothing leaves the host. A session that comes up and is lost (a NOTIFICATION's reason) is in the
netns tier, against BIRD (tests/netns/test_bgp_escalation.py)."""

from __future__ import annotations

import io
import time

from structlog.testing import capture_logs

from escalation.config import BgpSettings, PeerSettings
from escalation.speaker import LOG_REPEAT_S, STATE_CONNECT, ExaBGPLog, Speaker
from tests.support import await_until

PEER = "127.0.0.2"
LOCAL = "192.0.2.1"             # TEST-NET-1: on no interface here, so ExaBGP cannot bind to it
BIND_ERROR = f"Could not bind to local ip {LOCAL} - [Errno 99] Cannot assign requested address"  # ExaBGP 4.2.25's words
EXABGP_RETRY_S = 1.0            # seconds: ExaBGP retries a failed bind at once and logs it once a second
                                # (reactor/network/outgoing.py, `time.time() - last > 1.0`)
REPEAT_S = 1.5                  # log_repeat_s: longer than one retry, shorter than two, so that the retry
                                # in between is left out of exabgp.log
WARN_S = 3.0                    # peer_down_warn_s: ExaBGP gives its reason within a second of starting


def warnings(logs: list[dict]) -> list[tuple[str, str, str | None]]:
    return [(e["event"], e["peer"], e["reason"]) for e in logs if e["log_level"] == "warning"]


async def test_a_peer_that_never_comes_up_shows_why_and_is_warned_about_once_per_outage(tmp_path):
    bgp = BgpSettings(64512, LOCAL, (PeerSettings(PEER, 64500),))
    spk = Speaker(bgp, tmp_path / "bgp", peer_down_warn_s=WARN_S, log_repeat_s=REPEAT_S)
    exabgp_log = tmp_path / "bgp" / "exabgp.log"

    def written(line: str) -> int:
        return exabgp_log.read_text().count(line)

    started = time.time()
    with capture_logs() as logs:
        await spk.start()
        try:
            [peer] = await await_until(lambda: [p for p in spk.peers() if p["last_reason"]], what="ExaBGP's reason")
            first = time.monotonic()        # the line that gave the reason was just written
            assert (peer["state"], peer["uptime_s"], peer["last_reason"]) == (STATE_CONNECT, 0.0, BIND_ERROR)
            assert started - 1 <= peer["down_since"] <= time.time()
            assert written(BIND_ERROR) == 1
            await await_until(lambda: written(BIND_ERROR) >= 2, REPEAT_S + 3 * EXABGP_RETRY_S,
                              what="ExaBGP's reason in exabgp.log again")
            # Written again at the first retry REPEAT_S after the first: the one retry before it is left out.
            assert REPEAT_S - 0.1 <= time.monotonic() - first < REPEAT_S + 2 * EXABGP_RETRY_S
            assert written(BIND_ERROR) == 2

            await await_until(lambda: warnings(logs), WARN_S + 3 * EXABGP_RETRY_S, what="the warning")
            [warning] = [e for e in logs if e["log_level"] == "warning"]
            assert (warning["event"], warning["peer"], warning["state"], warning["reason"]) == \
                ("bgp.peer_not_established", PEER, STATE_CONNECT, BIND_ERROR)
            assert warning["down_s"] >= WARN_S and warning["since"] == peer["down_since"]
            spk.warn_stuck_sessions(time.monotonic() + 10 * WARN_S)     # once per outage
        finally:
            await spk.stop()
    assert warnings(logs) == [("bgp.peer_not_established", PEER, BIND_ERROR)]
    text = exabgp_log.read_text()
    assert "Thank you for using ExaBGP" in text
    # The retries' other lines are thinned with the reason: as many copies of each.
    assert text.count(f"attempting connection to {PEER}:179") == text.count(f"connection to {PEER}:179 failed") \
        == text.count(BIND_ERROR) >= 2


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
    # The wire dumps exabgp.log.packets adds (each BGP message in hex: a full table would be hundreds of
    # MB) are not written, and do not take the place of a failed connection's reason.
    def logged(n: int, message: str) -> str:
        return f"03:55:{n:02d} | 6125   | outgoing-{n:<6d} | {message}"

    before = out.getvalue()
    for message in ("received complete TCP payload (  19) FFFFFFFFFFFFFFFF",
                    "received incomplete TCP payload (   3) FFFFFF", "sending TCP payload (  19) FFFFFFFFFFFFFFFF"):
        assert exabgp_log.line(logged(9, message), 3 + LOG_REPEAT_S) is None
    assert out.getvalue() == before
    assert exabgp_log.line(logged(10, f"connection to {PEER}:179 failed"), 4) is None
    exabgp_log.line(logged(10, "sending TCP payload (  19) FFFF"), 4)
    assert exabgp_log.line(logged(10, "the reason"), 4) == (PEER, "the reason")
