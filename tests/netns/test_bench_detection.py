"""`seawall bench compare --parts detection` machinery on one short flood: a real lab, the real appliance,
the real FastNetMon (Debian `fastnetmon`), a real generator. Checks that both detectors ran and saw the
flood, the JSON's shape and that nothing is left behind; never how fast either one was."""

from __future__ import annotations

import json
import pathlib
import subprocess
import uuid

import pytest

from appliance.bench import compare
from appliance.bench.compare_detection import FASTNETMON, run_detection
from tests.conftest import skip_or_fail


@pytest.fixture(autouse=True)
def fastnetmon_installed():
    if not FASTNETMON.exists():
        skip_or_fail(f"{FASTNETMON} missing (Debian package fastnetmon)")

FLOOD_S = 3.0         # seconds: enough for one FastNetMon average (1 s) and two policy ticks


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue   # the process ended while we looked
    return pids


def test_one_flood_seen_by_both_detectors_and_everything_cleaned_up(tmp_path):
    lab_name = f"t{uuid.uuid4().hex[:6]}"
    work = tmp_path / "work"
    steps: list[str] = []
    result = run_detection(steps.append, vectors=("udp",), duration_s=FLOOD_S, reference=False,
                           lab_name=lab_name, work_dir=work)

    assert steps, "no progress reported"
    assert set(result["vectors"]) == {"udp"}
    cell = result["vectors"]["udp"]
    assert set(cell) >= {"seawall_s", "fastnetmon_s", "target", "achieved_pps"}
    # Both saw the flood (null would mean a detector never did, within 15 s of onset).
    assert isinstance(cell["seawall_s"], float), cell
    assert isinstance(cell["fastnetmon_s"], float), cell
    assert "udp" in (cell["fastnetmon_report"] or ""), cell
    assert cell["achieved_pps"] > 0
    assert result["settings"]["seawall_mode"] == "monitor"
    assert result["fastnetmon_version"][:1].isdigit(), result["fastnetmon_version"]
    json.dumps(result)   # the compare JSON takes it as it is

    bans = (work / "fastnetmon" / "notify.log").read_text()
    assert f"{cell['target']} incoming" in bans and " ban" in bans
    assert "incidents" in (work / "state" / "status.json").read_text()

    # Cleanup: no FastNetMon or appliance left running, the lab's namespaces and BPF pins are gone.
    assert processes_mentioning(str(work)) == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert lab_name not in netns
    assert not pathlib.Path(f"/sys/fs/bpf/seawall-{lab_name}").exists()


def test_a_detection_only_run_keeps_the_other_parts_figures(tmp_path):
    previous = {"started": "earlier", "host": {"source": "abc123"}, "sizes": {"runs": 5},
                "scale": [{"prefixes": 10}], "drop": {"1": {}}, "detection": {"syn": {"seawall_s": None}},
                "detection_reason": "not measured"}
    (tmp_path / "compare.json").write_text(json.dumps(previous))
    result = {"detection": {"udp": {"seawall_s": 0.5, "fastnetmon_s": 0.6}}}
    compare.carry_over(result, tmp_path, ("detection",))
    assert result["scale"] == previous["scale"] and result["drop"] == previous["drop"]
    assert result["detection"] == {"udp": {"seawall_s": 0.5, "fastnetmon_s": 0.6}}
    assert set(result["carried_over"]) == {"drop", "scale"}
    assert result["carried_over"]["scale"]["source"] == "abc123"

    (tmp_path / "compare.json").write_text("{not json")
    with pytest.raises(compare.BenchError, match="not JSON"):
        compare.carry_over({}, tmp_path, ("detection",))
