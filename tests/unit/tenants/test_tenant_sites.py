"""A tenant's `sites` (issue 17): which fleet sites run it, validated like every other tenant key."""

from __future__ import annotations

import pytest

from tenants import ConfigError, TenantSet

BASE = {"id": "alpha", "prefixes": ["198.51.100.0/25"]}


def test_tenant_sites_default_to_every_site_and_round_trip():
    everywhere, restricted = TenantSet.from_dicts([BASE, {"id": "beta", "prefixes": ["203.0.113.0/24"],
                                                          "sites": ["ams1", "fra1"]}])
    assert everywhere.sites == () and everywhere.runs_at("ams1") and "sites" not in everywhere.to_dict()
    assert restricted.runs_at("fra1") and not restricted.runs_at("lon1")
    assert TenantSet.from_dicts([restricted.to_dict()])["beta"].sites == ("ams1", "fra1")


@pytest.mark.parametrize(("sites", "problem"), [
    ("ams1", "tenant 'alpha': sites: expected an array of site names"),
    (["ams1", "AMS1"], "tenant 'alpha': sites[1]: 'AMS1' is not a site name"),
    (["ams1", "ams1"], "tenant 'alpha': sites[1]: 'ams1' is listed twice"),
    ([7], "tenant 'alpha': sites[0]: 7 is not a site name"),
    (["s"] * 300, "tenant 'alpha': sites: 300 sites, at most 256"),
])
def test_tenant_sites_problems_name_the_field(sites, problem):
    with pytest.raises(ConfigError) as caught:
        TenantSet.from_dicts([{**BASE, "sites": sites}])
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems
