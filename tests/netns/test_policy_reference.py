"""The policy engine on the lab, the reference scenario shortened: a fresh appliance (no warm-up
wait, default policy) catches both the SYN flood and the 5 kpps UDP flood at the game server,
drops the UDP flood surgically while the players on the same port keep playing, and leaves the
other tenants alone."""

from __future__ import annotations

import datetime
import json
import pathlib
import time

from appliance.lab import Lab, lab_config
from appliance.lab.attack import AttackProcess, AttackSpec
from appliance.lab.capture import Capture
from appliance.lab.topology import GAME_PORT, SPOOF_V4
from appliance.lab.traffic import TrafficProfile, TrafficRun, split_by_windows
from appliance.runner import ApplianceProcess
from dataplane.dataplane import purge
from tests.support import wait_until

ATTACK_TIMEOUT_S = 60.0   # seconds for an attack process (bcc compiles first)

LEGIT_S = 20.0            # seconds of legitimate traffic, the whole run
ONSET_S = 6.0             # seconds of legitimate traffic the fresh appliance sees before the attacks
ATTACK_S = 12.0           # seconds of attack
SYN_PPS = 50_000          # lower than the demo's 200 kpps: this VM has 2 vCPUs for everything
UDP_PPS = 5_000
UDP_SIZE = 512            # bytes per IP datagram (the reference scenario's)
NEW_CLIENTS_PER_S = 2     # connections/s from never-seen addresses to the game server's web port (reference)
MIN_NEW_CLIENT_SUCCESS = 0.95   # issue 19: new clients connect during the SYN flood (within 3 s)


def test_reference_scenario_both_vectors_caught_in_a_fresh_appliance(lab, tmp_path, request):
    appliance = start_appliance(lab, tmp_path, request)
    game = lab.game_server
    legit = TrafficRun(lab, LEGIT_S, TrafficProfile(game_pps=800, http_rps=4, dns_qps=4,
                                                    new_clients_per_s=NEW_CLIENTS_PER_S)).start()
    request.addfinalizer(legit.kill)
    syn = TimedAttack(lab, AttackSpec("syn", game.ipv4, pps=SYN_PPS, duration=ATTACK_S, dport=80))
    udp = TimedAttack(lab, AttackSpec("udp", game.ipv4, pps=UDP_PPS, duration=ATTACK_S, dport=GAME_PORT,
                                      size=UDP_SIZE))
    for attack in (syn, udp):
        request.addfinalizer(attack.process.kill)
    # The generators compile first; they start sending ONSET_S into the legitimate traffic.
    wait_until(lambda: legit.seconds, timeout=30, what="the legitimate clients to run")
    wait_until(lambda: len(legit.seconds) >= ONSET_S - 1, timeout=30, what="the legitimate traffic's first seconds")
    syn.start()
    udp.start()

    incident = wait_for_incident(appliance, game.ipv4, {"syn_flood", "udp_flood"}, timeout=40)
    assert incident["tenant"] == "alpha"
    assert incident["vectors"]["syn_flood"] >= 0.8 and incident["vectors"]["udp_flood"] >= 0.8
    udp_rule = wait_until(lambda: rule_adds(appliance, "udp_flood"), timeout=10, what="the UDP rule")[0]
    # Surgical: a drop rule on the game port and the flood's length, not the whole port.
    assert udp_rule["kind"] == "drop" and udp_rule["action"] == "drop", udp_rule
    assert "proto=17" in udp_rule["rule"] and f"dport={GAME_PORT}-{GAME_PORT}" in udp_rule["rule"]
    assert f"length={UDP_SIZE}-{UDP_SIZE}" in udp_rule["rule"] or "payload=" in udp_rule["rule"]

    # From the rule on, count the UDP flood datagrams that still reach the game server.
    after = TimedCapture(game.namespace, lab.HOST_IF, f"udp and dst port {GAME_PORT} and src net {SPOOF_V4}",
                    keep=0).start()
    try:
        udp_summary = udp.wait(ATTACK_TIMEOUT_S)
    finally:
        after.stop()
    syn_summary = syn.wait(ATTACK_TIMEOUT_S)
    window_s = after_window(after, udp)
    sent_after = udp_summary["achieved_pps"] * window_s
    assert sent_after > UDP_PPS, (window_s, udp_summary)    # the rule came early enough to matter
    assert after.matched <= 0.01 * sent_after, (after.matched, sent_after)

    summary = legit.wait(60)
    game_stats = summary["services"]["game"]
    assert game_stats["success_rate"] >= 0.99, game_stats
    # Issue 19: first visits from new addresses to the flooded web port still connect while it floods.
    new_tcp = summary["services"]["new-tcp"]
    assert new_tcp["sent"] >= NEW_CLIENTS_PER_S * (LEGIT_S - 1), new_tcp
    during = split_by_windows(legit.seconds, summary["started_at"], [(syn.onset, syn.ended)])["during"]["new-tcp"]
    assert during["sent"] >= NEW_CLIENTS_PER_S * (ATTACK_S - 3), during
    assert during["success_rate"] >= MIN_NEW_CLIENT_SUCCESS, (during, new_tcp)
    # At 50 kpps the game server's own kernel copes too: this passes with syn_auth "off" as well
    # (seen 40/40); test_synauth.py is the test that tells the splice from its absence.
    status = appliance.status()
    for other in ("beta", "gamma"):
        assert status["tenants"][other]["dropped_packets"] == 0, status["tenants"][other]
    assert status["tenants"]["alpha"]["drop_reasons"].get("rule", 0) > 0.9 * UDP_PPS * (ATTACK_S - 2)

    onset_to_rule = {v: rule_adds(appliance, v)[0]["at"] - a.onset for v, a in (("syn_flood", syn),
                                                                               ("udp_flood", udp))}
    print(f"\nreference: onset to first rule (first drop) {', '.join(f'{v} {s:.2f} s' for v, s in onset_to_rule.items())};"
          f" UDP flood passed after the rule {after.matched}/{sent_after:.0f};"
          f" syn sent {syn_summary['transmitted']} udp sent {udp_summary['transmitted']};"
          f" game {game_stats['ok']}/{game_stats['sent']};"
          f" new-tcp during the SYN flood {during['ok']}/{during['sent']}, whole run {new_tcp['ok']}/{new_tcp['sent']}"
          f" p99 {new_tcp['p99_ms']} ms")
    # The mitigation comes within the first ticks of the engine (1 s each), not after seconds of confirmation.
    assert all(s <= 3.0 for s in onset_to_rule.values()), onset_to_rule


def after_window(capture: TimedCapture, attack: TimedAttack) -> float:
    """Seconds during which the capture ran while the attack was still sending."""
    return max(0.0, attack.ended - capture.started)


# -- helpers, shared with test_policy_vectors.py ----------------------------------------------------

def start_appliance(lab: Lab, tmp: pathlib.Path, request) -> ApplianceProcess:
    """`seawall run` on the lab with the default policy and a fresh state directory (no baselines)."""
    config = lab_config(lab.name)
    config["appliance"]["state_dir"] = str(tmp / "state")
    config["appliance"]["tick_ms"] = 1000
    config["securewatch"] = {"enabled": False}
    proc = ApplianceProcess(config, tmp / "seawall.toml", tmp / "seawall.log")

    def teardown():
        proc.stop()
        purge(config["appliance"]["bpffs"])

    request.addfinalizer(teardown)
    return proc.start()


class TimedAttack:
    """An attack process that knows when its frames started and stopped (wall clock).

    The generator compiles before it sends; its first per-second record arrives one second
    after its first frame, so that record's arrival time less 1 s is the onset."""

    def __init__(self, lab: Lab, spec: AttackSpec):
        self.spec = spec
        self.process = AttackProcess(lab, spec)
        self.process.on_record = self._record
        self.onset: float | None = None
        self.ended: float | None = None

    def _record(self, record: dict) -> None:
        if record.get("type") == "second" and self.onset is None:
            self.onset = time.time() - 1.0

    def start(self) -> TimedAttack:
        self.process.start()
        return self

    def wait(self, timeout: float) -> dict:
        summary = self.process.wait(timeout)
        assert self.onset is not None, f"{self.spec.vector}: no per-second record ({summary})"
        self.ended = self.onset + summary["elapsed_s"]
        return summary


class TimedCapture(Capture):
    def start(self, timeout: float = 10.0) -> TimedCapture:
        super().start(timeout)
        self.started = time.time()
        return self


def rule_adds(appliance: ApplianceProcess, vector: str, dst: str | None = None) -> list[dict]:
    """The appliance's `rule.add` log records for `vector` (and `dst`), each with `at` (epoch seconds)."""
    out = []
    for line in appliance.log_path.read_text(errors="replace").splitlines():
        if '"rule.add"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("vector") == vector and (dst is None or record.get("dst") == dst):
            record["at"] = datetime.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
            out.append(record)
    return out


def wait_for_incident(appliance: ApplianceProcess, dst: str, vectors: set[str], timeout: float,
                      confidence: float = 0.8) -> dict:
    """The open incident of `dst` once every one of `vectors` reached `confidence`."""
    def found():
        for inc in appliance.status().get("incidents", []):
            if dst in inc["destinations"] and all(inc["vectors"].get(v, 0) >= confidence for v in vectors):
                return inc
        return None

    def describe() -> str:
        return json.dumps(appliance.status().get("incidents", []))[:2000]

    try:
        return wait_until(found, timeout=timeout, interval=0.1, what=f"{sorted(vectors)} at {dst}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; incidents: {describe()}") from None
