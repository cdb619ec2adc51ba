"""Issue 18, item 2: a tick's large arrays reuse the previous tick's memory (policy.heap).

At a million destinations a tick makes a dozen arrays of 48-100 MB; glibc mapped each afresh and
unmapped it on free, so every tick faulted ~700 MB of pages in again (rates and detection took
three to four times their arithmetic). With the engine built, an array of that size freed and
made again must come back without page faults.
"""

from __future__ import annotations

import os
import pathlib
import resource
import subprocess
import sys

import numpy as np

from policy.engine import PolicyEngine
from policy.events import EventBus
from tests.unit.policy.fakes import FakeDataplane

ROWS = 1_000_000               # destinations: one (N, 13) uint64 counter block of a tick at a million
WORDS = 13


def _faults_filling(rows: int) -> int:
    """Minor page faults of making and filling one (rows, WORDS) uint64 array (in this thread: the main one)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.empty((rows, WORDS), np.uint64)
    block.fill(1)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del block
    return faults


def test_after_the_engine_is_built_a_tick_sized_array_reuses_freed_memory(tmp_path):
    PolicyEngine(FakeDataplane(), {}, EventBus(), tmp_path)
    _faults_filling(ROWS)                       # the first one may grow the heap
    again = [_faults_filling(ROWS - 100 * i) for i in range(3)]   # the next ticks: about the same size
    # A fresh 104 MB mapping faults at least 52 times (2 MiB huge pages), ~25,000 with 4 KiB pages.
    assert max(again) < 16, again


WORKER_SCRIPT = """
import pathlib, resource, sys, tempfile
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from policy.engine import PolicyEngine
from policy.events import EventBus
from tests.unit.policy.fakes import FakeDataplane

def faults(rows):
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    block = np.empty((rows, 13), np.uint64)
    block.fill(1)
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before

PolicyEngine(FakeDataplane(), {}, EventBus(), pathlib.Path(tempfile.mkdtemp()))
with ThreadPoolExecutor(max_workers=1) as worker:     # as PolicyEngine.run ticks
    print(max(worker.submit(lambda: [faults(1_000_000 - 100 * i) for i in range(4)][1:]).result()))
"""


def test_the_engines_worker_thread_reuses_freed_memory_too(tmp_path):
    """In a fresh process, as `seawall run`: a thread's own malloc arena maps blocks over 64 MiB
    afresh whatever the thresholds, so the engine keeps the process to one arena."""
    root = pathlib.Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", WORKER_SCRIPT], capture_output=True, text=True, check=True,
                         cwd=root, env=env, timeout=120)
    assert int(out.stdout.strip().splitlines()[-1]) < 16, out.stdout
