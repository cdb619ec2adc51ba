"""The report tables (schema migration 9, `reports_config.MIGRATION`): the branding saved through
the API or UI, and one delivery row per tenant and month for the scheduled mail.

The functions take the store and run their SQL on its database thread (`Store.run`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .reports_config import Branding, logo_from_data_uri
from .store import Store

BRANDING_ROW = 1              # report_branding holds one row, this id
DELIVERY_STATES = ("pending", "sent", "failed", "cancelled")


async def saved_branding(store: Store, base: Branding) -> Branding:
    """The branding saved through the API or UI, each of its fields over `base` (the config file's)."""
    row = await store.run(lambda b: b.execute("SELECT data FROM report_branding WHERE id = ?",
                                              (BRANDING_ROW,)).fetchone())
    if row is None:
        return base
    data = json.loads(row[0])
    if data.get("logo"):
        data["logo"] = logo_from_data_uri(data["logo"])   # checked when saved; decoded again here
    return dataclasses.replace(base, **data)


async def save_branding(store: Store, branding: Branding, actor: str, now: float) -> None:
    data = json.dumps(branding.to_public_dict(), separators=(",", ":"))
    await store.run(lambda b: b.execute(
        "INSERT INTO report_branding (id, data, updated_at, updated_by) VALUES (?, ?, ?, ?) ON CONFLICT (id) "
        "DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        (BRANDING_ROW, data, now, actor)))


async def clear_branding(store: Store) -> bool:
    return await store.run(lambda b: b.execute("DELETE FROM report_branding WHERE id = ?",
                                               (BRANDING_ROW,)).rowcount > 0)


# -- deliveries -----------------------------------------------------------------------------------

_COLUMNS = "tenant, period, state, recipients, created_at, attempts, next_attempt, last_error, last_attempt, sent_at"


def _row(r: Any) -> dict[str, Any]:
    d = dict(zip(_COLUMNS.split(", "), r, strict=True))
    d["recipients"] = json.loads(d["recipients"])
    return d


async def schedule(store: Store, period: str, due: list[tuple[str, list[str]]], now: float) -> int:
    """A pending delivery of `period` for each (tenant, recipients) that has none yet; the primary
    key keeps a second one (another check, a restart, a second process) from being made. Returns
    how many were made."""
    def q(b: Any) -> int:
        made = 0
        for tenant, recipients in due:
            made += b.execute("INSERT INTO report_deliveries (tenant, period, state, recipients, created_at, "
                              "next_attempt) VALUES (?, ?, 'pending', ?, ?, ?) ON CONFLICT (tenant, period) DO NOTHING",
                              (tenant, period, json.dumps(recipients), now, now)).rowcount
        return made
    return await store.run(q)


async def due(store: Store, now: float, limit: int) -> list[dict[str, Any]]:
    return await store.run(lambda b: [_row(r) for r in b.execute(
        f"SELECT {_COLUMNS} FROM report_deliveries WHERE state = 'pending' AND next_attempt <= ? "
        f"ORDER BY next_attempt, tenant LIMIT ?", (now, limit)).fetchall()])


async def record(store: Store, tenant: str, period: str, *, state: str, now: float, recipients: list[str],
                 error: str | None = None, next_attempt: float | None = None) -> None:
    """The outcome of one attempt: sent, failed (for good), cancelled, or still pending until `next_attempt`."""
    assert state in DELIVERY_STATES
    await store.run(lambda b: b.execute(
        "UPDATE report_deliveries SET state = ?, attempts = attempts + 1, last_attempt = ?, last_error = ?, "
        "recipients = ?, next_attempt = COALESCE(?, next_attempt), sent_at = ? WHERE tenant = ? AND period = ?",
        (state, now, error, json.dumps(recipients), next_attempt, now if state == "sent" else None, tenant, period)))


async def retry_now(store: Store, tenant: str, period: str, now: float) -> bool:
    """A failed or cancelled delivery back to pending, due now (the operator fixed the cause)."""
    return await store.run(lambda b: b.execute(
        "UPDATE report_deliveries SET state = 'pending', next_attempt = ? WHERE tenant = ? AND period = ? "
        "AND state IN ('failed', 'cancelled')", (now, tenant, period)).rowcount > 0)


async def deliveries(store: Store, *, tenants: tuple[str, ...] | None, limit: int) -> list[dict[str, Any]]:
    """Newest first; `tenants`: only theirs (a tenant's users), None: all."""
    def q(b: Any) -> list[dict[str, Any]]:
        if tenants is not None and not tenants:
            return []
        where = f"WHERE tenant IN ({', '.join('?' * len(tenants))}) " if tenants is not None else ""
        return [_row(r) for r in b.execute(f"SELECT {_COLUMNS} FROM report_deliveries {where}"
                                           f"ORDER BY period DESC, tenant LIMIT ?", (*(tenants or ()), limit)).fetchall()]
    return await store.run(q)
