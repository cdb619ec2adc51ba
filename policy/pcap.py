"""Evidence: sampled packets of an incident, written as classic PCAP files.

Two files per incident under `directory`: `<incident>-dropped.pcap` and
`<incident>-passed.pcap` (what the filter let through is the evidence customers
ask about). The format is the standard libpcap one (magic 0xa1b2c3d4,
microsecond timestamps, LINKTYPE_ETHERNET), written with struct, little-endian.
Each file stops growing at `max_bytes`; packets beyond are counted, not written.

Nothing else bounds them: `prune` (run by the engine every few minutes) deletes the files of
incidents that ended more than `retention_s` ago, then, while the directory holds more than
`max_total_bytes`, the files of the incidents that ended first. An incident's end is its files'
newest mtime (a file is written only while its incident captures); the files of an incident
still open are never deleted, whatever their age or the total.
"""

from __future__ import annotations

import dataclasses
import os
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
_FILE_NAME = re.compile(r"^(?P<incident>[A-Za-z0-9._-]+)-(?:dropped|passed)\.pcap$")


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


@dataclasses.dataclass(slots=True)
class Pruned:
    """What one `prune` pass deleted: files and bytes, by reason, and what the directory holds after."""

    expired_files: int = 0       # files of incidents that ended more than the retention ago
    over_total_files: int = 0    # files of the incidents that ended first, past the total bound
    bytes: int = 0               # bytes deleted
    kept_bytes: int = 0          # bytes of the PCAP files left in the directory
    failed: int = 0              # files that could not be deleted (left, counted in kept_bytes)

    @property
    def files(self) -> int:
        return self.expired_files + self.over_total_files


def prune(directory: pathlib.Path, now: float, retention_s: float, max_total_bytes: int,
          open_incidents: set[str] | frozenset[str]) -> Pruned:
    """Delete the PCAP files in `directory` of incidents that ended before `now - retention_s`
    (`now`: epoch seconds, compared with mtimes), then those of the oldest incidents while the files
    left exceed `max_total_bytes`. Incidents in `open_incidents` are never touched. One listing of
    the directory (an OSError there propagates); a file that vanished meanwhile is skipped, one that
    cannot be deleted is left and counted in `failed`."""
    result = Pruned()
    # incident -> [(path, size)], and its end: the newest mtime of its files
    files: dict[str, list[tuple[str, int]]] = {}
    ended: dict[str, float] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:        # no incident captured anything yet
        return result
    for entry in entries:
        m = _FILE_NAME.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        incident = m["incident"]
        files.setdefault(incident, []).append((entry.path, st.st_size))
        ended[incident] = max(ended.get(incident, 0.0), st.st_mtime)
    total = sum(size for group in files.values() for _, size in group)

    def delete(incident: str) -> int:
        n = 0
        nonlocal total
        for path, size in files.pop(incident):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:          # permissions, a read-only disk: left, and the pass goes on
                result.failed += 1
                continue
            else:
                n += 1
                result.bytes += size
            total -= size
        return n

    candidates = sorted((t, inc) for inc, t in ended.items() if inc not in open_incidents)
    cutoff = now - retention_s
    for t, incident in candidates:
        if t < cutoff:
            result.expired_files += delete(incident)
    for _, incident in candidates:
        if total <= max_total_bytes:
            break
        if incident in files:
            result.over_total_files += delete(incident)
    result.kept_bytes = total
    return result
