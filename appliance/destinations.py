"""Per-destination (per-server) series for SecureWatch, recorded from the policy engine each tick.

After every tick (the engine's `on_tenant_traffic` callback, see `Appliance.policy_engine`) the
recorder reads what the engine already computed, without touching the dataplane again:

    engine.rates.last_destination_rates   per-destination packets/s by class, dropped packets/s
    engine.last_detection.threshold       the threshold in force per destination and class
    engine.dest_baseline                  the learned baseline: mean and variance per class, and k

and keeps, in memory, bounded:

- each second, a row for every attacked destination (anomalous this tick, or a destination of an
  open incident; the busiest `second_max_attacked` of them under a wider attack, the count of the
  others in `attacked_left_out`) and for the `top_n` busiest destinations: rates, mean, k·σ (as "sigma": the half-
  width of the baseline band mean ± k·σ, k the engine's k_sigma), threshold, dropped;
- each minute, a rollup row (average rates and thresholds, peak total) for every destination whose
  average was at least `minute_floor_pps`, the busiest `minute_max` of them.

SecureWatch reads them through `destination_seconds(after)` and `destination_minutes(after)` on
the appliance (its `ApplianceHooks`) and stores them (`securewatch.series`). The cost per tick is
a few numpy passes over the destinations (sum, argpartition, accumulate by slot).
"""

from __future__ import annotations

import collections
import ipaddress
from typing import Any

import numpy as np

from dataplane.constants import TrafficClass

N_CLASSES = len(TrafficClass)
TOP_N = 100                    # busiest destinations with per-second rows, appliance-wide, each tick
KEEP_SECONDS = 120             # ticks of per-second rows kept for SecureWatch's next read (it reads every 5 s)
KEEP_MINUTES = 10              # minute rollups kept for SecureWatch's next read
MINUTE_FLOOR_PPS = 1.0         # packets/s: a quieter destination gets no minute row
MINUTE_MAX = 20_000            # destinations with a minute row, busiest first
SECOND_MAX_ATTACKED = 1_000    # attacked destinations with per-second rows each tick, busiest first
MEMO_ADDRESSES = 100_000       # parsed incident addresses kept between ticks


def _round(values: np.ndarray) -> list:
    """`values` to the cent (numpy's rounding) as Python floats (lists of lists for rows of classes)."""
    return np.round(np.asarray(values, np.float64), 2).tolist()


class DestinationRecorder:
    """See the module docstring. `record(engine, wall)` after each tick; the readers any time."""

    def __init__(self, *, top_n: int = TOP_N, keep_seconds: int = KEEP_SECONDS,
                 minute_floor_pps: float = MINUTE_FLOOR_PPS, minute_max: int = MINUTE_MAX,
                 second_max_attacked: int = SECOND_MAX_ATTACKED) -> None:
        self.top_n = top_n
        self.second_max_attacked = second_max_attacked
        self.attacked_left_out = 0      # attacked destinations' per-second rows not kept (over the cap), in all
        self._addresses: dict[str, Any] = {}
        self.minute_floor_pps = minute_floor_pps
        self.minute_max = minute_max
        self._seconds: collections.deque[list[dict[str, Any]]] = collections.deque(maxlen=keep_seconds)
        self._minutes: collections.deque[list[dict[str, Any]]] = collections.deque(maxlen=KEEP_MINUTES)
        self._minute: int | None = None        # start (wall seconds) of the minute being accumulated
        self._alloc(0)

    def _alloc(self, capacity: int) -> None:
        self._pps = np.zeros((capacity, N_CLASSES))         # sums over the minute's ticks, by slot
        self._threshold = np.zeros((capacity, N_CLASSES))
        self._dropped = np.zeros(capacity)
        self._peak = np.zeros(capacity)
        self._ticks = np.zeros(capacity, np.int64)
        self._tenant = np.full(capacity, -1, np.int64)

    def _grow(self, capacity: int) -> None:
        if capacity <= len(self._ticks):
            return
        old = (self._pps, self._threshold, self._dropped, self._peak, self._ticks, self._tenant)
        self._alloc(capacity)
        for new, was in zip((self._pps, self._threshold, self._dropped, self._peak, self._ticks, self._tenant), old,
                            strict=True):
            new[:len(was)] = was

    # -- recording -----------------------------------------------------------------------------

    def record(self, engine: Any, wall: float) -> None:
        dest = engine.rates.last_destination_rates
        det = engine.last_detection
        if dest is None or det is None or len(dest) == 0 or len(det.threshold) != len(dest):
            return
        names = {idx: entry.tenant_id for idx, entry in engine.tenants.items()}
        known = dest.valid & np.isin(dest.tenant_idx, np.fromiter(names, np.int64, len(names)))
        minute = int(wall) // 60 * 60
        if self._minute is not None and minute != self._minute:
            self._emit_minute(engine, names)
        self._minute = minute
        rows = np.flatnonzero(known)
        if not len(rows):
            return
        pps = dest.pps[rows]
        total = pps.sum(axis=1)
        dropped = dest.dropped_pps[rows]
        slots = dest.slots[rows]
        self._accumulate(engine, slots, dest.tenant_idx[rows], pps, det.threshold[rows], dropped, total)
        chosen = self._chosen(engine, dest, det, rows, total)
        if len(chosen):
            self._seconds.append(self._rows(engine, names, int(wall), dest.slots[rows[chosen]],
                                            dest.tenant_idx[rows[chosen]], pps[chosen],
                                            det.threshold[rows[chosen]], dropped[chosen]))

    def _chosen(self, engine: Any, dest: Any, det: Any, rows: np.ndarray, total: np.ndarray) -> np.ndarray:
        """Positions (in `rows`) of the attacked (the busiest `second_max_attacked` of them) and the busiest
        destinations."""
        attacked = np.zeros(len(rows), bool)
        position = np.full(len(dest), -1, np.int64)
        position[rows] = np.arange(len(rows))
        anomalous = position[det.anomalous_rows]
        attacked[anomalous[anomalous >= 0]] = True
        targets = [a for inc in engine.incidents.open.values() for a in inc.destinations]
        if targets:
            # Every attacked address's slot in one lookup, then one pass over the rows: a lookup and a pass
            # per address stalled the event loop for seconds a tick under thousands of incidents.
            slots = engine.rates.slots.slots_of([self._address(a) for a in targets])
            slots = slots[slots >= 0]
            row_slots = dest.slots[rows]
            if len(slots) and len(row_slots):
                marked = np.zeros(max(int(slots.max()), int(row_slots.max())) + 1, bool)
                marked[slots] = True
                attacked |= marked[row_slots]
        attacked_at = np.flatnonzero(attacked & (total > 0))
        if len(attacked_at) > self.second_max_attacked:
            # A wide attack: the busiest attacked destinations get their per-second rows, the others are in
            # the minute rollups (a row is 2-3 KB: 20,000 a second over KEEP_SECONDS would be several GB).
            self.attacked_left_out += len(attacked_at) - self.second_max_attacked
            attacked_at = attacked_at[np.argpartition(-total[attacked_at], self.second_max_attacked - 1)
                                      [:self.second_max_attacked]] if self.second_max_attacked else attacked_at[:0]
        picked = np.zeros(len(rows), bool)
        picked[attacked_at] = True
        if self.top_n and len(rows):
            n = min(self.top_n, len(rows))
            picked[np.argpartition(-total, n - 1)[:n]] = True
        return np.flatnonzero(picked & (total > 0))

    def _address(self, text: str | Any) -> Any:
        """An incident's destination as an address object; its text parsed once (incidents list the same
        addresses tick after tick), the memo dropped when it grows past MEMO_ADDRESSES."""
        if not isinstance(text, str):
            return text
        addr = self._addresses.get(text)
        if addr is None:
            if len(self._addresses) >= MEMO_ADDRESSES:
                self._addresses.clear()
            addr = self._addresses[text] = ipaddress.ip_address(text)
        return addr

    def _accumulate(self, engine: Any, slots: np.ndarray, tenants: np.ndarray, pps: np.ndarray,
                    threshold: np.ndarray, dropped: np.ndarray, total: np.ndarray) -> None:
        self._grow(engine.rates.slots.capacity)
        self._pps[slots] += pps
        self._threshold[slots] += threshold
        self._dropped[slots] += dropped
        np.maximum.at(self._peak, slots, total)
        self._ticks[slots] += 1
        self._tenant[slots] = tenants

    def _emit_minute(self, engine: Any, names: dict[int, str]) -> None:
        seen = np.flatnonzero(self._ticks)
        ticks = self._ticks[seen].astype(float)
        mean_total = self._pps[seen].sum(axis=1) / ticks
        keep = seen[mean_total >= self.minute_floor_pps]
        if len(keep) > self.minute_max:
            busiest = np.argpartition(-(self._pps[keep].sum(axis=1) / self._ticks[keep]), self.minute_max - 1)
            keep = keep[busiest[:self.minute_max]]
        n = self._ticks[keep].astype(float)[:, None]
        rows = self._rows(engine, names, int(self._minute or 0), keep, self._tenant[keep], self._pps[keep] / n,
                          self._threshold[keep] / n, self._dropped[keep] / n[:, 0])
        for row, slot, ticks_of in zip(rows, keep, self._ticks[keep], strict=True):
            row["max_pps"] = round(float(self._peak[slot]), 2)
            row["samples"] = int(ticks_of)
        if rows:
            self._minutes.append(rows)
        self._alloc(len(self._ticks))

    def _rows(self, engine: Any, names: dict[int, str], t: int, slots: np.ndarray, tenants: np.ndarray,
              pps: np.ndarray, threshold: np.ndarray, dropped: np.ndarray) -> list[dict[str, Any]]:
        state = engine.dest_baseline.gather(slots)
        band = np.sqrt(state.var) * engine.dest_baseline.k_sigma     # k·σ, the band's half-width
        addresses = engine.rates.slots.address_of
        # Every field rounded to the cent for all rows at once (a Python round per number was most of a
        # second's recording under a wide attack; numpy's rounding may differ from it in the last digit
        # of a rare half-way value).
        columns = zip(tenants.tolist(), slots.tolist(), *(_round(a) for a in (pps, dropped, state.mean, band, threshold)),
                      strict=True)
        out = []
        for tenant_idx, slot, row_pps, row_dropped, row_mean, row_band, row_threshold in columns:
            tenant = names.get(tenant_idx)
            if tenant is None:
                continue
            out.append({"tenant": tenant, "address": str(addresses[slot]), "time": t, "pps": row_pps,
                        "dropped_pps": row_dropped, "mean": row_mean, "sigma": row_band, "threshold": row_threshold})
        return out

    # -- reading (SecureWatch) -------------------------------------------------------------------

    # The engine may tick in a worker thread while SecureWatch reads on the event loop: each reader
    # copies the deque with one C-level call (atomic under the GIL) before iterating it; the lists
    # in it are never changed once appended.
    def seconds_after(self, after: float) -> list[dict[str, Any]]:
        return [r for tick in list(self._seconds) if tick and tick[0]["time"] > after for r in tick]

    def minutes_after(self, after: float) -> list[dict[str, Any]]:
        return [r for minute in list(self._minutes) if minute and minute[0]["time"] > after for r in minute]
