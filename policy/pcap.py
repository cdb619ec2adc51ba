"""Evidence: sampled packets of an incident, written as classic PCAP files.

Two files per incident under `directory`: `<incident>-dropped.pcap` and
`<incident>-passed.pcap` (what the filter let through is the evidence customers
ask about). The format is the standard libpcap one (magic 0xa1b2c3d4,
microsecond timestamps, LINKTYPE_ETHERNET), written with struct, little-endian.
Each file stops growing at `max_bytes`; packets beyond are counted, not written.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import struct
import time

from dataplane.api import Sample
from dataplane.constants import SAMPLE_BYTES

PCAP_MAGIC = 0xA1B2C3D4
PCAP_VERSION = (2, 4)
LINKTYPE_ETHERNET = 1
GLOBAL_HEADER = struct.Struct("<IHHiIII")
RECORD_HEADER = struct.Struct("<IIII")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclasses.dataclass(slots=True)
class _File:
    path: pathlib.Path
    size: int = 0
    written: int = 0
    skipped: int = 0


class IncidentPcap:
    """Appends an incident's samples to its two PCAP files, within a size bound."""

    def __init__(self, directory: pathlib.Path, incident_id: str, max_bytes: int = 8 * 1024 * 1024,
                 monotonic_to_wall: float | None = None) -> None:
        if not _SAFE_NAME.match(incident_id):
            raise ValueError(f"pcap: incident id {incident_id!r} is not a safe file name")
        if max_bytes < GLOBAL_HEADER.size:
            raise ValueError(f"pcap: max_bytes {max_bytes} is smaller than the file header")
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        # Sample timestamps are CLOCK_MONOTONIC; PCAP wants the epoch.
        self._offset = monotonic_to_wall if monotonic_to_wall is not None else time.time() - time.monotonic()
        self.files = {dropped: _File(self.directory / f"{incident_id}-{'dropped' if dropped else 'passed'}.pcap")
                      for dropped in (True, False)}
        for f in self.files.values():
            with f.path.open("wb") as fh:
                fh.write(GLOBAL_HEADER.pack(PCAP_MAGIC, *PCAP_VERSION, 0, 0, SAMPLE_BYTES, LINKTYPE_ETHERNET))
            f.size = GLOBAL_HEADER.size

    def write(self, samples: list[Sample]) -> None:
        chunks: dict[bool, list[bytes]] = {True: [], False: []}
        for s in samples:
            f = self.files[bool(s.dropped)]
            record = RECORD_HEADER.size + len(s.data)
            if f.size + record > self.max_bytes:
                f.skipped += 1
                continue
            ts = s.timestamp_ns / 1e9 + self._offset
            sec = int(ts)
            usec = min(int((ts - sec) * 1e6), 999_999)
            chunks[bool(s.dropped)].append(RECORD_HEADER.pack(sec, usec, len(s.data), max(s.wire_length, len(s.data)))
                                           + s.data)
            f.size += record
            f.written += 1
        for dropped, parts in chunks.items():
            if parts:
                with self.files[dropped].path.open("ab") as fh:
                    fh.write(b"".join(parts))

    def summary(self) -> dict[str, dict[str, int | str]]:
        return {("dropped" if d else "passed"): {"path": str(f.path), "packets": f.written, "bytes": f.size,
                                                  "skipped": f.skipped}
                for d, f in self.files.items()}
