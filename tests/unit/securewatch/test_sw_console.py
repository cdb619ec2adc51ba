"""Issue 16, the live console: the vendored chart library, tenant series and their rollups,
per-destination series, retention settings, and who may read which series."""

from __future__ import annotations

import hashlib
import pathlib
import re

import pytest

from securewatch import series
from securewatch.series import RANGES, SeriesRetention
from securewatch.settings import parse_settings
from securewatch.store import Store

STATIC = pathlib.Path(__file__).resolve().parents[3] / "securewatch" / "static"
UPLOT = STATIC / "vendor" / "uplot"
HOUR = 3600


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(f"sqlite:///{tmp_path}/console.db")
    try:
        yield s
    finally:
        await s.close()


# -- item 1: the charting library, vendored at a pinned version -----------------------------------

def test_item1_uplot_vendored_pinned_with_licence_and_hashes():
    readme = (UPLOT / "README.md").read_text()
    version = re.search(r"# uPlot (\d+\.\d+\.\d+)", readme).group(1)
    js, css = UPLOT / f"uPlot-{version}.iife.min.js", UPLOT / f"uPlot-{version}.min.css"
    assert js.read_text().startswith(f"/*! https://github.com/leeoniya/uPlot (v{version}) */")
    for f in (js, css):   # the files are the ones the README names, unchanged
        assert hashlib.sha256(f.read_bytes()).hexdigest() in readme
    assert "MIT License" in (UPLOT / "LICENSE").read_text()
    assert "Leon Sorokin" in (UPLOT / "LICENSE").read_text()


def test_item1_pages_load_charts_from_this_origin_only():
    """No page names a script or stylesheet of another origin: nothing is fetched at run time."""
    templates = STATIC.parent / "templates"
    for page in templates.glob("*.html"):
        text = page.read_text()
        assert not re.search(r"""(src|href)=["']\s*(https?:)?//""", text), page.name


# -- tenant series: rollups and ranges -------------------------------------------------------------

def _second(t: float, passed: float, dropped: float) -> dict[str, float]:
    return {"time": t, "passed_pps": passed, "dropped_pps": dropped, "passed_bps": passed * 8000,
            "dropped_bps": dropped * 8000}


async def test_item2_hour_rollup_weighted_by_the_seconds_behind_each_minute(store):
    t0 = 1_800_000_000 // HOUR * HOUR
    # 60 s at 100 pps in one minute, 30 s at 400 pps in the next: the hour's mean is over 90 s.
    rows = [_second(t0 + i, 100, 0) for i in range(60)] + [_second(t0 + 60 + i, 400, 10) for i in range(30)]
    await store.add_traffic("alpha", rows)
    hours = await store.run(series.tenant_series, "alpha", RANGES["30d"], t0 + 120)
    assert hours["time"] == [t0]
    assert hours["passed_pps"] == [200.0]        # (60*100 + 30*400) / 90
    assert hours["dropped_pps"] == [round(300 / 90, 1)]
    minutes = await store.run(series.tenant_series, "alpha", RANGES["24h"], t0 + 120)
    assert minutes["passed_pps"] == [100.0, 400.0]
    seconds = await store.run(series.tenant_series, "alpha", RANGES["5m"], t0 + 89)
    assert len(seconds["time"]) == 90 and seconds["passed_bps"][-1] == 3_200_000.0


async def test_item2_series_of_one_tenant_never_carry_anothers_rows(store):
    t0 = 1_800_000_000
    await store.add_traffic("alpha", [_second(t0, 1, 0)])
    await store.add_traffic("beta", [_second(t0, 2, 0)])
    for rng in RANGES.values():
        got = await store.run(series.tenant_series, "beta", rng, t0 + 1)
        assert got["passed_pps"] == [2.0], rng.name


# -- retention -----------------------------------------------------------------------------------

async def test_item2_retention_settings_apply_per_series(store):
    now = 1_800_000_000
    await store.add_traffic("alpha", [_second(now - 2 * 86400 - 60, 5, 0), _second(now - 100, 5, 0)])
    dest = {"tenant": "alpha", "address": "198.51.100.10", "pps": [1] * 6, "mean": [1] * 6, "sigma": [0] * 6,
            "threshold": [10] * 6, "dropped_pps": 0}
    await store.run(series.add_destination_seconds, [{**dest, "time": now - 700}, {**dest, "time": now - 10}])
    await store.run(series.add_destination_minutes, [{**dest, "time": now - 3 * 86400}, {**dest, "time": now - 60}])
    short = SeriesRetention(traffic_second_retention_s=600, traffic_minute_retention_days=2,
                            destination_second_retention_s=600, destination_minute_retention_days=2)
    removed = await store.apply_retention(now=now, retention=short)
    assert removed["seconds"] == 1 and removed["minutes"] == 1 and removed["hours"] == 0
    assert removed["destination_seconds"] == 1 and removed["destination_minutes"] == 1
    kept = await store.run(series.destination_series, "alpha", "198.51.100.10", series.DESTINATION_RANGES["1h"], now)
    assert kept["time"] == [now - 10]


def test_item2_retention_keys_documented_defaults_and_named_errors(tmp_path):
    problems: list[str] = []
    s = parse_settings({}, tmp_path, problems)
    assert not problems and s.retention == SeriesRetention()
    assert (s.retention.traffic_second_retention_s, s.retention.traffic_hour_retention_days) == (3600, 400)
    doc = (STATIC.parent / "settings.py").read_text()
    for key in series.SERIES_KEYS:   # every key documented in the [securewatch] example with its default
        assert re.search(rf"^\s+{key} = {getattr(SeriesRetention(), key)}\b", doc, re.M), key
    s = parse_settings({"traffic_hour_retention_days": 31, "destination_second_retention_s": 900}, tmp_path, problems)
    assert not problems and s.retention.destination_second_retention_s == 900
    parse_settings({"traffic_minute_retention_days": 1, "destination_minute_retention_days": "7"}, tmp_path, problems)
    assert problems == ["[securewatch] traffic_minute_retention_days: must be between 2 and 3650, got 1",
                        "[securewatch] destination_minute_retention_days: expected a whole number, got a string '7'"]


# -- per-destination series ------------------------------------------------------------------------

async def test_item3_destination_series_seconds_then_minutes_fallback(store):
    now = 1_800_000_000
    row = {"tenant": "alpha", "pps": [10, 0, 900, 0, 0, 0], "mean": [8, 0, 100, 0, 0, 0],
           "sigma": [1, 0, 20, 0, 0, 0], "threshold": [50, 50, 600, 50, 50, 50], "dropped_pps": 300}
    await store.run(series.add_destination_seconds, [{**row, "address": "198.51.100.10", "time": now - i}
                                                     for i in range(3)])
    await store.run(series.add_destination_minutes, [{**row, "address": "198.51.100.20", "time": now - 60,
                                                      "samples": 60, "max_pps": 950}])
    hot = await store.run(series.destination_series, "alpha", "198.51.100.10", series.DESTINATION_RANGES["5m"], now)
    assert hot["resolution"] == "second" and hot["time"] == [now - 2, now - 1, now]
    assert hot["pps"]["udp"] == [900, 900, 900] and hot["threshold"]["udp"][0] == 600
    quiet = await store.run(series.destination_series, "alpha", "198.51.100.20", series.DESTINATION_RANGES["5m"], now)
    assert quiet["resolution"] == "minute" and quiet["mean"]["udp"] == [100]
    other = await store.run(series.destination_series, "beta", "198.51.100.10", series.DESTINATION_RANGES["5m"], now)
    assert other["time"] == []
    listed = await store.run(series.tenant_destinations, "alpha", now - 600, 10)
    assert [d["address"] for d in listed] == ["198.51.100.10", "198.51.100.20"]
    assert listed[0]["load"] == 1.5    # udp 900 pps against a 600 pps threshold


async def test_item3_destination_rows_must_carry_every_class(store):
    with pytest.raises(ValueError, match="expected 6 per-class values"):
        await store.run(series.add_destination_seconds, [{"tenant": "a", "address": "192.0.2.1", "time": 1,
                                                          "pps": [1, 2], "mean": [0] * 6, "sigma": [0] * 6,
                                                          "threshold": [0] * 6}])
