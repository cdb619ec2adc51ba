"""`seawall status` and `/metrics` show the spill store's occupancy (issue 18), from the status's
`spill_store` (`Dataplane.spill_store_status()`), and say when it was full."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from appliance.commands.status import render_human
from securewatch import metrics
from tests.unit.appliance.test_status_synauth import _summary

STORE = {"slots": 262144, "in_use": 200000, "handed_out": 210000, "freed": 10000, "retiring": 0,
         "overflow_entries": 0, "overflow_capacity": 65536}


def test_status_prints_the_spill_store_and_says_when_it_was_full():
    line = next(x for x in render_human(_summary(spill_store=STORE)).splitlines() if x.startswith("spill store:"))
    assert "200,000 of 262,144 slots in use (76 %), 10,000 freed" in line and "overflow" not in line
    full = render_human(_summary(spill_store={**STORE, "in_use": 262144, "overflow_entries": 1234}))
    assert "1,234 addresses in the overflow map (of 65,536): the store was full, raise [appliance] max_addresses" in full
    assert "spill store" not in render_human(_summary()) and "spill store" not in render_human(_summary(spill_store=None))


def test_metrics_carry_the_spill_store():
    families = {f.name: f for f in text_string_to_metric_families(
        metrics.render(_summary(spill_store={**STORE, "overflow_entries": 7})).decode())}
    value = {name: families[name].samples[0].value for name in (
        "seawall_spill_store_slots", "seawall_spill_store_slots_in_use", "seawall_spill_overflow_entries",
        "seawall_spill_overflow_capacity", "seawall_spill_store_slots_freed")}
    assert value == {"seawall_spill_store_slots": 262144.0, "seawall_spill_store_slots_in_use": 200000.0,
                     "seawall_spill_overflow_entries": 7.0, "seawall_spill_overflow_capacity": 65536.0,
                     "seawall_spill_store_slots_freed": 10000.0}
    assert "seawall_spill_store_slots" not in {f.name for f in text_string_to_metric_families(
        metrics.render(_summary()).decode())}
