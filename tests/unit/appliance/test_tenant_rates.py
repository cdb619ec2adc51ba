"""Issue 13 items 4 and 7: one tenant-rate pipeline and a typed status.

The policy engine reads the tenant counters once per tick and publishes them with their rates;
the appliance's status, its per-second series (SecureWatch's traffic sampling) and
`seawall status` read that publication, never the counters. Driven with the policy tests'
fake dataplane and a real `Appliance` (not started: no NICs), engine ticks by hand.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from appliance.commands import status as status_command
from appliance.config import parse_config
from appliance.service import STATUS_FILE, Appliance, read_status
from dataplane.api import TenantCounterArrays
from dataplane.constants import MAX_TENANTS, Direction, DropReason, TrafficClass
from securewatch.status_types import (
    ApplianceStatus,
    TenantStatus,
    TrafficSecond,
    UnprotectedStatus,
    dump_status,
)
from tenants import TenantSet
from tenants.policy import TenantPolicy
from tests.unit.policy.fakes import FakeDataplane

IN, OUT = int(Direction.INBOUND), int(Direction.OUTBOUND)
UDP = int(TrafficClass.UDP)


class CountingDataplane(FakeDataplane):
    """The fake dataplane whose tenant counters a test sets, counting every read of them."""

    def __init__(self) -> None:
        super().__init__()
        self.tenant_reads = 0
        self.attachments: list = []     # attached to no NIC

    def read_synauth_stats(self) -> dict[str, int]:
        return {}                       # no SYN attack here

    def read_tenant_counter_arrays(self):
        self.tenant_reads += 1
        return TenantCounterArrays.from_mapping(FakeDataplane.read_tenant_counters(self), MAX_TENANTS + 1)

    def read_tenant_counters(self):
        self.tenant_reads += 1
        return super().read_tenant_counters()

    def set_tenant(self, idx: int, udp_in: int, dropped_in: int = 0, udp_out: int = 0, size: int = 100,
                   reason: DropReason = DropReason.RATE_LIMIT) -> None:
        """Cumulative counters of one row: inbound and outbound UDP packets of `size` bytes, the
        inbound ones partly dropped (for `reason`)."""
        class_packets = np.zeros((2, len(TrafficClass)), np.uint64)
        class_packets[IN, UDP], class_packets[OUT, UDP] = udp_in, udp_out
        dropped = np.array([dropped_in, 0], np.uint64)
        reasons = np.zeros((2, len(DropReason)), np.uint64)
        reasons[IN, reason] = dropped_in
        passed = class_packets.sum(axis=1) - dropped
        self.tenant[idx] = {"class_packets": class_packets, "class_bytes": class_packets * np.uint64(size),
                            "dropped_packets": dropped, "dropped_bytes": dropped * np.uint64(size),
                            "passed_packets": passed, "passed_bytes": passed * np.uint64(size),
                            "reason_packets": reasons}


@pytest.fixture
def appliance(tmp_path):
    config = parse_config(f'[appliance]\nstate_dir = "{tmp_path / "state"}"\nbpffs = "{tmp_path / "bpffs"}"\n')
    app = Appliance(config)
    app.tenants = TenantSet.from_dicts([{"id": "alpha", "prefixes": ["198.51.100.0/24"]},
                                        {"id": "beta", "prefixes": ["203.0.113.0/24"]}])
    app.indices = {"alpha": 0, "beta": 1}
    app.dataplane = CountingDataplane()
    app.engine = app.policy_engine(app.dataplane)
    return app


def test_status_and_series_take_the_engines_rates_and_a_reset_counter_counts_what_it_holds(appliance):
    dp, engine = appliance.dataplane, appliance.engine
    dp.set_tenant(0, udp_in=10_000, dropped_in=1_000, udp_out=4_000)
    dp.set_tenant(MAX_TENANTS, udp_in=50)                       # traffic to no tenant
    engine.tick(100.0)                                          # primes: no rates yet, no series row
    assert appliance.traffic_series("alpha") == [] and appliance.status()["tenants"]["alpha"]["passed_pps"] == 0.0
    dp.set_tenant(0, udp_in=12_000, dropped_in=1_500, udp_out=4_600)
    dp.set_tenant(MAX_TENANTS, udp_in=250)
    engine.tick(102.0)                                          # 2 s later
    alpha = appliance.status()["tenants"]["alpha"]
    assert (alpha["passed_pps"], alpha["dropped_pps"]) == (750.0, 250.0)             # (2,000 - 500) / 2 s, 500 / 2 s
    assert (alpha["passed_bps"], alpha["dropped_bps"]) == (8 * 75_000.0, 8 * 25_000.0)  # 100-byte packets
    assert (alpha["passed_packets"], alpha["dropped_packets"]) == (12_000 - 1_500 + 4_600, 1_500)  # both directions
    assert alpha["passed_bytes"] == 100 * (12_000 - 1_500 + 4_600) and alpha["drop_reasons"] == {"rate_limit": 1_500}
    assert appliance.status()["unprotected"] == {"passed_packets": 250, "passed_pps": 100.0}
    row = appliance.traffic_series("alpha")[-1]
    assert row == {"time": engine.tenant_traffic.wall, "passed_pps": 750.0, "dropped_pps": 250.0,
                   "passed_bps": 600_000.0, "dropped_bps": 200_000.0, "outbound_pps": 300.0}
    # One definition: the status's and the series' figures are the ones the engine published.
    published = engine.tenant_traffic.rates
    assert (published.passed_pps[0], published.dropped_pps[0], published.passed_bps[0]) == (750.0, 250.0, 600_000.0)

    # The counters were reset (the row re-created): what they hold now arrived since the last tick. The
    # old per-second monitor clamped the negative difference to 0 pps.
    dp.set_tenant(0, udp_in=300, dropped_in=100, udp_out=0)
    engine.tick(103.0)
    alpha = appliance.status()["tenants"]["alpha"]
    assert (alpha["passed_pps"], alpha["dropped_pps"]) == (200.0, 100.0)
    assert appliance.traffic_series("alpha")[-1]["passed_pps"] == 200.0
    assert len(appliance.traffic_series("alpha")) == 2 and appliance.traffic_series("alpha", seconds=1)[0]["time"] \
        == engine.tenant_traffic.wall
    # beta never had counters: zeros, no series; an unknown tenant has no series.
    assert appliance.status()["tenants"]["beta"]["passed_pps"] == 0.0 and appliance.traffic_series("beta") == []
    assert appliance.traffic_series("nobody") == []
    # Status, series and the status file read no counters: only the engine's three ticks did.
    appliance.status()
    (appliance.state_dir).mkdir(parents=True, exist_ok=True)
    (appliance.state_dir / STATUS_FILE).write_text(dump_status(appliance.status()))
    assert dp.tenant_reads == 3


def test_the_status_is_the_typed_structure_and_seawall_status_prints_its_keys(appliance, tmp_path, capsys):
    dp = appliance.dataplane
    dp.set_tenant(0, udp_in=1_000)
    appliance.engine.tick(10.0)
    dp.set_tenant(0, udp_in=3_000, dropped_in=10)
    appliance.engine.tick(11.0)
    status = appliance.status()
    assert set(status) == set(ApplianceStatus.__annotations__)
    assert all(set(t) == set(TenantStatus.__annotations__) for t in status["tenants"].values())
    assert set(status["unprotected"]) == set(UnprotectedStatus.__annotations__)
    assert set(appliance.traffic_series("alpha")[0]) == set(TrafficSecond.__annotations__)
    assert status["policy"]["last_tick"]["now"] == 11.0
    json.dumps(status)      # JSON values only: the serialiser's fallback to str() is for nothing here
    # The status file, written by its one serialiser, read back by `seawall status --json`: the same keys
    # and values (plus the command's own), the control plane running (this process wrote it just now).
    appliance.state_dir.mkdir(parents=True, exist_ok=True)
    (appliance.state_dir / STATUS_FILE).write_text(dump_status(status))
    assert read_status(appliance.state_dir) == json.loads(dump_status(status))
    config = tmp_path / "seawall.toml"
    config.write_text(f'[appliance]\nstate_dir = "{appliance.state_dir}"\nbpffs = "{tmp_path / "bpffs"}"\n')
    args = type("Args", (), {"config": str(config), "json": True})()
    assert status_command.status(args) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["control_plane"] == "running" and shown["pid"] == os.getpid()
    assert shown["tenants"]["alpha"] == json.loads(json.dumps(status["tenants"]["alpha"]))
    assert shown["tenants"]["alpha"]["passed_pps"] == 1_990.0
    text = status_command.render_human(status_command.summarize(read_status(appliance.state_dir), [], time.time()))
    assert any(line.split()[:4] == ["alpha", "mitigate", "1990", "10"] for line in text.splitlines()), text


def test_a_status_file_that_is_not_an_object_is_no_status(tmp_path):
    (tmp_path / STATUS_FILE).write_text("[1, 2]")
    assert read_status(tmp_path) is None
    (tmp_path / STATUS_FILE).write_text("{truncated")
    assert read_status(tmp_path) is None


def test_the_uplink_in_the_config_file_scales_the_engines_floors(tmp_path):
    """`[escalation] uplink_bps` reaches the policy engine: 1 Gbit/s gives the 300 pps floor."""
    config = parse_config(f'[appliance]\nstate_dir = "{tmp_path / "state"}"\nbpffs = "{tmp_path / "bpffs"}"\n'
                          '[escalation]\nuplink_bps = 1_000_000_000\n')
    app = Appliance(config)
    app.tenants = TenantSet.from_dicts([{"id": "alpha", "prefixes": ["198.51.100.0/24"]}])
    app.indices = {"alpha": 0}
    app.dataplane = CountingDataplane()
    engine = app.policy_engine(app.dataplane)
    assert engine.config.uplink_bps == 1_000_000_000
    (entry,) = engine.tenants.values()
    assert entry.policy.min_pps < TenantPolicy().min_pps
