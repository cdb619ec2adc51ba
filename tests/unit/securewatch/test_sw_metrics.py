"""/metrics: Prometheus text that prometheus_client's own parser reads, scoped per caller."""

from __future__ import annotations

import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from test_sw_helpers import InMemoryAppliance, add_token, service


class ApplianceWithIncidents(InMemoryAppliance):
    """The status shape `appliance.service.Appliance.status()` produces, with an open incident."""

    def status(self):
        tenants = {}
        for i, t in enumerate(self.tenants):
            tenants[t.id] = {"name": t.name, "mode": t.mode, "passed_pps": 1000.0 + i, "dropped_pps": 50.0 * i,
                             "passed_bps": 8e6, "dropped_bps": 4e5 * i, "passed_packets": 10_000 + i,
                             "dropped_packets": 500 * i, "drop_reasons": {"rule": 500 * i} if i else {}}
        first = next(iter(tenants))
        return {"updated": time.time(), "tenants": tenants,
                "interfaces": [{"name": "eth0", "role": "external", "mode": "native"},
                               {"name": "eth1", "role": "internal", "mode": "native"}],
                "incidents": [{"id": "inc-1", "tenant": first, "state": "active"},
                              {"id": "inc-0", "tenant": first, "state": "ended"}],
                "policy": {"tracked_destinations": 42, "rules_installed": 3, "ticks_overrun": 4,
                           "last_tick": {"cpu_ms": 12.5, "wall_ms": 1500.0}},
                "notifiers": {"noc-syslog": {"healthy": True, "backlog": 0},
                              "pager": {"healthy": False, "backlog": 7}}}


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def scrape(url: str, token: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics", headers=headers) as r:
        return r.status, await r.text()


async def test_metrics_parse_and_carry_the_appliance_figures(tmp_path):
    async with service(tmp_path, appliance="default") as (url, store, appliance):
        appliance.__class__ = ApplianceWithIncidents
        status, text = await scrape(url, await add_token(store, "noc"))
        assert status == 200
        got = families(text)
        tenant_ids = [t.id for t in appliance.tenants]
        pps = {(s.labels["tenant"], s.labels["verdict"]): s.value
               for s in got["seawall_tenant_packets_per_second"].samples}
        assert pps[(tenant_ids[1], "dropped")] == 50.0 and pps[(tenant_ids[0], "passed")] == 1000.0
        active = {s.labels["tenant"]: s.value for s in got["seawall_incidents_active"].samples}
        assert active[tenant_ids[0]] == 1 and active[tenant_ids[1]] == 0   # the ended incident does not count
        assert got["seawall_dataplane_up"].samples[0].value == 1
        assert got["seawall_policy_tick_cpu_seconds"].samples[0].value == 0.0125
        assert got["seawall_policy_tick_seconds"].samples[0].value == 1.5       # the tick's wall time: it overran
        assert got["seawall_policy_ticks_overrun"].samples[0].value == 4
        backlog = {s.labels["receiver"]: s.value for s in got["seawall_notifier_backlog"].samples}
        assert backlog == {"noc-syslog": 0, "pager": 7}


async def test_metrics_are_scoped_to_the_callers_tenant_and_need_a_token(tmp_path):
    async with service(tmp_path, appliance="default") as (url, store, appliance):
        appliance.__class__ = ApplianceWithIncidents
        own = appliance.tenants.tenants[1].id
        status, text = await scrape(url, await add_token(store, "tenant", tenant=own))
        assert status == 200
        seen = {s.labels.get("tenant") for f in families(text).values() for s in f.samples} - {None}
        assert seen == {own}
        assert "seawall_notifier_backlog" not in text      # the NOC's receivers are not a tenant's business
        assert (await scrape(url, None))[0] == 401
