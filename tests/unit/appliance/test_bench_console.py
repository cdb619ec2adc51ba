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
            seeded = console.seed(url, 3)
            now = time.time()
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
