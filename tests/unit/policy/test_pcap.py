"""PCAP evidence: standard format that scapy reads back, dropped and passed apart, bounded size."""

from __future__ import annotations

import pytest
from scapy.layers.inet import UDP
from scapy.utils import rdpcap

from dataplane.api import Sample
from dataplane.constants import Direction, DropReason
from policy.pcap import GLOBAL_HEADER, RECORD_HEADER, IncidentPcap
from tests.unit.policy.fakes import udp_frame


def sample(i: int, dropped: bool) -> Sample:
    frame = udp_frame("198.18.0.1", "198.51.100.10", 1000 + i, 28960, b"A" * 300)
    return Sample(timestamp_ns=5_000_000_000 + i * 1000, tenant_idx=1, direction=Direction.INBOUND, dropped=dropped,
                  reason=DropReason.RULE if dropped else DropReason.NONE, wire_length=len(frame) + 4,
                  data=frame[:128])


def test_dropped_and_passed_files_read_back_with_scapy(tmp_path):
    pcap = IncidentPcap(tmp_path, "inc-1", monotonic_to_wall=1_700_000_000.0)
    pcap.write([sample(i, dropped=i % 3 == 0) for i in range(30)])
    pcap.write([sample(99, dropped=False)])
    dropped = rdpcap(str(tmp_path / "inc-1-dropped.pcap"))
    passed = rdpcap(str(tmp_path / "inc-1-passed.pcap"))
    assert len(dropped) == 10 and len(passed) == 21
    assert dropped[1][UDP].sport == 1003
    assert float(dropped[0].time) == pytest.approx(1_700_000_005.0, abs=1e-5)
    assert dropped[0].wirelen == 14 + 20 + 8 + 300 + 4 and len(bytes(dropped[0])) == 128   # snapped at 128 bytes
    summary = pcap.summary()
    assert summary["dropped"]["packets"] == 10 and summary["passed"]["skipped"] == 0


def test_files_stop_growing_at_the_bound(tmp_path):
    limit = GLOBAL_HEADER.size + 5 * (RECORD_HEADER.size + 128)
    pcap = IncidentPcap(tmp_path, "inc-2", max_bytes=limit)
    pcap.write([sample(i, dropped=True) for i in range(50)])
    path = tmp_path / "inc-2-dropped.pcap"
    assert path.stat().st_size == limit
    assert len(rdpcap(str(path))) == 5
    assert pcap.summary()["dropped"]["skipped"] == 45


def test_unsafe_incident_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="safe file name"):
        IncidentPcap(tmp_path, "../etc/passwd")
