"""`seawall bench securewatch`'s console figures (issue 16): the storage a tenant's series cost per day
is measured through the store's own writes and retention, and the seeded rollups are the store's schema."""

from __future__ import annotations

import asyncio
import time

from appliance.bench import console
from securewatch import series
from securewatch.store import Store


def test_storage_per_tenant_day_counts_what_retention_keeps():
    got = console.storage()
    assert got["rows_per_tenant_day"] == {"traffic_seconds": 3600, "traffic_minutes": 1440, "traffic_hours": 24}
    assert 100_000 < got["bytes_in_use_per_tenant_day"] < 10_000_000


def test_seeded_rollups_are_read_by_the_console(tmp_path):
    url = f"sqlite:///{tmp_path}/b.db"

    async def read() -> tuple[int, int, int]:
        store = await Store.open(url)
        try:
            # One clock for the seed and the reads: on a loaded machine the seed takes seconds,
            # and the read windows would slide past its oldest rows.
            now = int(time.time())
            seeded = console.seed(url, 3, now)
            hours = await store.run(series.tenant_series, "t00002", series.RANGES["30d"], now)
            minutes = await store.run(series.tenant_series, "t00001", series.RANGES["24h"], now)
            server = await store.run(series.destination_series, "t00000", "2001:db8::1",
                                     series.DESTINATION_RANGES["1h"], now)
            assert seeded["traffic_hours"] == 3 * 720
            return len(hours["time"]), len(minutes["time"]), len(server["time"])
        finally:
            await store.close()

    hours, minutes, seconds = asyncio.run(read())
    assert hours >= 719 and minutes >= 1439 and seconds >= 3599


async def test_live_latency_and_pages_against_a_running_securewatch(tmp_path):
    """The bench's own measurements, against SecureWatch in central mode over a seeded database."""
    import sys  # noqa: PLC0415

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "securewatch"))
    from test_sw_helpers import add_token, service  # noqa: PLC0415

    from appliance.bench.securewatch import tenant_tables  # noqa: PLC0415
    from tenants import TenantSet  # noqa: PLC0415

    database = f"sqlite:///{tmp_path}/sw.db"
    async with service(tmp_path, database=database, appliance=None) as (url, store, _):
        await store.save_tenant_set(TenantSet.from_dicts(tenant_tables(3)), "bench", "seed")
        await asyncio.to_thread(console.seed, database, 3)
        token = await add_token(store, "admin")
        live = await console.live_latency(url, token, database, samples=2)
        assert live["samples"] == 2 and 0 <= live["median_ms"] <= 3000
        pages = await console.measure(url, token, 3, repeat=1)
    assert pages["series 30 d (hours)"]["status"] == 200 and pages["series 30 d (hours)"]["bytes"] > 10_000
    assert pages["per-server page"]["status"] == 200
    assert {r["status"] for r in pages.values()} == {200}
