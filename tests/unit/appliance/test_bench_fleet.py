"""`seawall bench fleet` at a tiny size: every figure is there and the backlog all arrived."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_bench_fleet_prints_ingest_delay_and_backfill_figures():
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "bench", "fleet", "--sites", "2", "--tenants", "50",
                          "--seconds", "4", "--live-s", "2", "--outage-s", "20", "--backfill-tenants", "10", "--json"],
                         capture_output=True, text=True, timeout=120, env={**os.environ})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ingest"]["site_seconds"] == 8 and result["ingest"]["site_seconds_per_s"] > 0
    assert result["ingest"]["central_cpu_cores"] >= 0 and result["ingest"]["peak_rss_mib"] > 0
    assert result["tick_to_central"]["samples"] == 2 and result["tick_to_central"]["max_ms"] > 0
    assert result["backfill"]["outage_s"] == 20 and result["backfill"]["site_seconds_per_s"] > 0
    assert "site-seconds/s" in out.stdout


def test_bench_fleet_refuses_bad_sizes():
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "bench", "fleet", "--sites", "0"],
                         capture_output=True, text=True, timeout=60, env={**os.environ})
    assert out.returncode == 2 and "sites" in out.stderr
