"""Issue 17, item 5 (retention): incident PCAP evidence is aged on the appliance. Files of incidents
that ended more than pcap_retention_days ago go, then the oldest incidents' past pcap_max_total_bytes;
an open incident's files stay; every deletion is counted (status, /metrics) and logged."""

from __future__ import annotations

import dataclasses
import os
import pathlib

import pytest
from structlog.testing import capture_logs

from policy.config import PolicyConfig
from policy.pcap import IncidentPcap, prune
from tests.unit.policy.scenarios import FAST, Lab, Tenant
from tests.unit.policy.test_engine import game_server, reference_attack

DAY = 86400.0
ALPHA = Tenant(1, "alpha")
WALL0 = 1.7e9 + 1000.0       # the Lab's wall clock at its first tick (1.7e9 + its start time)


def capture(directory: pathlib.Path, incident: str, ended: float, payload: int = 0) -> list[pathlib.Path]:
    """An incident's two files as the engine writes them, last written at `ended` (epoch seconds)."""
    IncidentPcap(directory, incident)
    paths = [directory / f"{incident}-{kind}.pcap" for kind in ("dropped", "passed")]
    for path in paths:
        with path.open("ab") as fh:
            fh.write(b"\0" * payload)
        os.utime(path, (ended, ended))
    return paths


def test_item5_pcaps_of_incidents_ended_past_retention_are_deleted_and_counted(tmp_path, monkeypatch):
    pcap_dir = tmp_path / "pcap"
    old = capture(pcap_dir, "inc-old", WALL0 - 91 * DAY)
    recent = capture(pcap_dir, "inc-recent", WALL0 - 89 * DAY)
    other = pcap_dir / "notes.txt"          # not a capture: never the engine's to delete
    other.write_text("kept")
    os.utime(other, (WALL0 - 400 * DAY,) * 2)
    with capture_logs() as logs:
        lab = Lab(tmp_path, [ALPHA], config=dataclasses.replace(FAST, pcap_retention_days=90))  # first tick prunes
    assert not any(p.exists() for p in old)
    assert all(p.exists() for p in recent) and other.exists()
    assert lab.engine.status()["pcap_files_pruned"] == 2
    pruned = [e for e in logs if e["event"] == "pcap.pruned"]
    assert pruned and pruned[0]["files"] == 2 and pruned[0]["expired"] == 2 and pruned[0]["retention_days"] == 90
    # The next pass is PCAP_PRUNE_EVERY_S later; it finds nothing more to delete and counts nothing.
    monkeypatch.setattr("policy.engine.PCAP_PRUNE_EVERY_S", 1.0)
    lab.run(2)
    assert lab.engine.status()["pcap_files_pruned"] == 2 and all(p.exists() for p in recent)


def test_item5_open_incidents_pcaps_are_kept_past_retention_and_total(tmp_path, monkeypatch):
    monkeypatch.setattr("policy.engine.PCAP_PRUNE_EVERY_S", 1.0)     # a pass every tick
    config = dataclasses.replace(FAST, pcap_max_bytes=4096, pcap_max_total_bytes=8192, pcap_retention_days=1)
    lab = Lab(tmp_path, [ALPHA], config=config)
    game_server(lab)
    lab.run(150)                                   # past the warm-up
    reference_attack(lab)
    lab.run(10)
    (incident,) = [i for i in lab.engine.incidents.open.values()]
    files = [tmp_path / "pcap" / f"{incident.id}-{kind}.pcap" for kind in ("dropped", "passed")]
    assert all(p.exists() for p in files), "the attack is captured"
    # Its files are full (4 KiB each, written no more) and look ended long ago; an ended incident's
    # files put the directory past its total bound.
    wall = 1.7e9 + lab.t
    for p in files:
        os.utime(p, (wall - 30 * DAY,) * 2)
    ended = capture(tmp_path / "pcap", "inc-ended", wall - 3600, payload=2000)
    lab.run(3)
    assert incident.id in {i.id for i in lab.engine.incidents.open.values()}
    assert all(p.exists() for p in files), "an open incident's capture is never deleted"
    assert not any(p.exists() for p in ended), "the ended incident's files went for the total bound"
    assert lab.engine.status()["pcap_files_pruned"] == 2


def test_item5_total_bound_removes_the_oldest_incidents_first(tmp_path):
    now = 1.8e9
    first = capture(tmp_path, "inc-1", now - 3 * DAY, payload=1000)
    second = capture(tmp_path, "inc-2", now - 2 * DAY, payload=1000)
    third = capture(tmp_path, "inc-3", now - 1 * DAY, payload=1000)
    size = sum(p.stat().st_size for p in third)           # one incident's two files
    result = prune(tmp_path, now, retention_s=90 * DAY, max_total_bytes=2 * size, open_incidents=set())
    assert not any(p.exists() for p in first)
    assert all(p.exists() for p in second + third)
    assert (result.files, result.over_total_files, result.expired_files) == (2, 2, 0)
    assert result.bytes == size and result.kept_bytes == 2 * size
    # The oldest is open: it stays, and the next oldest goes instead.
    result = prune(tmp_path, now, retention_s=90 * DAY, max_total_bytes=size, open_incidents={"inc-2"})
    assert all(p.exists() for p in second) and not any(p.exists() for p in third)
    assert result.over_total_files == 2 and result.kept_bytes == size


def test_item5_retention_deletes_by_the_newest_file_of_an_incident(tmp_path):
    now = 1.8e9
    dropped, passed = capture(tmp_path, "inc-1", now - 100 * DAY)
    os.utime(passed, (now - 10 * DAY,) * 2)      # its passed file was written later: the incident ended then
    result = prune(tmp_path, now, retention_s=90 * DAY, max_total_bytes=1 << 30, open_incidents=set())
    assert dropped.exists() and passed.exists() and result.files == 0
    assert prune(tmp_path / "none", now, 1.0, 1, set()).files == 0     # no directory yet: nothing to do


@pytest.mark.parametrize(("key", "value"), [
    ("pcap_retention_days", 0), ("pcap_retention_days", 3651), ("pcap_retention_days", True),
    ("pcap_retention_days", 1.5), ("pcap_retention_days", "90"),
    ("pcap_max_total_bytes", 8 * 1024 * 1024), ("pcap_max_total_bytes", 2 * 1024 ** 4),
    ("pcap_max_total_bytes", -1), ("pcap_max_bytes", 100), ("pcap_max_bytes", 2 * 1024 ** 3)])
def test_item5_bad_pcap_keys_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"policy config {key}: must be an integer"):
        PolicyConfig(**{key: value})


def test_item5_pcap_key_defaults():
    config = PolicyConfig()
    assert (config.pcap_retention_days, config.pcap_max_total_bytes) == (90, 2 * 1024 ** 3)
    assert PolicyConfig(pcap_retention_days=3650, pcap_max_total_bytes=2 * config.pcap_max_bytes)




def test_item5_pcap_keys_are_appliance_config_keys_that_reach_the_engine(tmp_path):
    """An operator sets the PCAP caps and retention in the config file ([appliance]); `seawall run` gives them to
    the policy engine, and a bad value is refused with the engine's own bounds, naming the key."""
    from appliance.bench.policy import SyntheticDataplane
    from appliance.config import parse_config
    from appliance.service import Appliance
    from tenants import ConfigError

    base = f'[appliance]\nstate_dir = "{tmp_path / "state"}"\nbpffs = "{tmp_path / "bpffs"}"\n'
    config = parse_config(base + "pcap_max_bytes = 1048576\npcap_retention_days = 7\npcap_max_total_bytes = 104857600\n")
    app = Appliance(config)
    app.dataplane = SyntheticDataplane(100, 10, 0.0, 0, 1)
    engine = app.policy_engine(app.dataplane)
    assert (engine.config.pcap_max_bytes, engine.config.pcap_retention_days,
            engine.config.pcap_max_total_bytes) == (1048576, 7, 104857600)
    defaults = Appliance(parse_config(base)).policy_engine(SyntheticDataplane(100, 10, 0.0, 0, 1)).config
    assert (defaults.pcap_retention_days, defaults.pcap_max_total_bytes) == (90, 2 * 1024**3)
    for text, message in (("pcap_retention_days = 0\n", "[appliance] pcap_retention_days: must be an integer 1..3650"),
                          ("pcap_max_bytes = \"big\"\n", "[appliance] pcap_max_bytes: must be an integer"),
                          ("pcap_max_bytes = 1979-05-27\n", "[appliance] pcap_max_bytes: must be an integer"),
                          ("pcap_max_bytes = 1048576\npcap_max_total_bytes = 1048576\n",
                           "[appliance] pcap_max_total_bytes: must be an integer 2097152..")):
        with pytest.raises(ConfigError) as err:
            parse_config(base + text)
        assert any(message in p for p in err.value.problems), err.value.problems
