"""Issue 17, item 5 (retention), on the lab with `seawall run` and its SecureWatch: the engine's PCAP
evidence of a real flood is served by the appliance's own API (its pcap root is where the engine
writes), and a capture left over from an incident that ended long ago is deleted at the engine's first
tick and counted in /metrics."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from appliance.lab.attack import AttackProcess, AttackSpec
from appliance.runner import ApplianceProcess
from dataplane.dataplane import purge
from tests.netns.test_appliance_bridge import appliance_config, start_with_noc_token, traffic
from tests.support import wait_until

ATTACK_PPS = 20_000
ATTACK_S = 60.0              # seconds at most; killed once the test has what it needs
DAY = 86400.0


def _get(url: str, bearer: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {bearer}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_item5_running_appliance_serves_its_flood_pcap_and_ages_out_an_old_one(lab, tmp_path, request):
    config = appliance_config(lab, tmp_path)
    config["securewatch"] = {"listen": "127.0.0.1:0"}
    # A capture an earlier run left of an incident that ended 100 days ago, where the engine writes
    # (`seawall run`: STATE_DIR/policy is the engine's, its captures in pcap/ there).
    pcap_dir = tmp_path / "state" / "policy" / "pcap"
    pcap_dir.mkdir(parents=True)
    old = [pcap_dir / f"inc-old-{kind}.pcap" for kind in ("dropped", "passed")]
    for path in old:
        path.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\0" * 20)
        os.utime(path, (time.time() - 100 * DAY,) * 2)
    proc = ApplianceProcess(config, tmp_path / "seawall.toml", tmp_path / "seawall.log")
    attack: AttackProcess | None = None

    def teardown():
        if attack is not None:
            attack.kill()
        proc.stop()
        purge(config["appliance"]["bpffs"])

    request.addfinalizer(teardown)
    url, bearer = start_with_noc_token(proc)

    def pruned_metric():
        status, body = _get(f"{url}/metrics", bearer)
        families = {f.name: f for f in text_string_to_metric_families(body.decode())} if status == 200 else {}
        family = families.get("seawall_policy_pcap_files_pruned")
        return family.samples[0].value if family and family.samples else None

    assert wait_until(pruned_metric, timeout=20, what="the pruning counter in /metrics") == 2
    assert not any(p.exists() for p in old)

    traffic(lab, 4.0)
    attack = AttackProcess(lab, AttackSpec("ntp", lab.server("s1").ipv4, pps=ATTACK_PPS, duration=ATTACK_S))
    attack.start()

    def captured():
        status, body = _get(f"{url}/api/v1/incidents?tenant=alpha", bearer)
        for incident in json.loads(body)["incidents"] if status == 200 else []:
            status, detail = _get(f"{url}/api/v1/incidents/{incident['id']}", bearer)
            pcaps = json.loads(detail).get("pcaps") or {} if status == 200 else {}
            if "dropped" in pcaps:
                return incident["id"], pcaps["dropped"]
        return None

    _, dropped = wait_until(captured, timeout=60, interval=0.5, what="the flood's incident with its capture")
    assert dropped["kept"] is True, dropped
    status, body = _get(f"{url}{dropped['url']}", bearer)
    assert status == 200 and body[:4] == b"\xd4\xc3\xb2\xa1", (status, body[:200])
    attack.kill()
