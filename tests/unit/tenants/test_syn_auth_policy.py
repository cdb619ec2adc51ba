"""The `syn_auth` policy key (issue 19): "splice" (default), "reset" or "off", with the old boolean
`syn_protection` as its alias; bad values are refused naming the key, in the config file (here)
and the API (tests/unit/securewatch/test_sw_syn_auth.py) alike."""

from __future__ import annotations

import pytest

from tenants import TenantSet, assign_indices, compile_tenant_set
from tenants.errors import ConfigError
from tenants.policy import TenantPolicy


def test_syn_auth_defaults_to_splice():
    assert TenantPolicy().syn_auth == "splice"
    assert TenantPolicy.from_dict({}).syn_auth == "splice"


@pytest.mark.parametrize("mode", ["splice", "reset", "off"])
def test_syn_auth_accepts_its_modes_and_round_trips(mode):
    policy = TenantPolicy.from_dict({"syn_auth": mode})
    assert policy.syn_auth == mode
    assert TenantPolicy.from_dict(policy.to_dict()) == policy
    assert policy.syn_protection == (mode != "off")


@pytest.mark.parametrize(("alias", "mode"), [(True, "splice"), (False, "off")])
def test_syn_protection_is_an_alias_of_syn_auth(alias, mode):
    assert TenantPolicy.from_dict({"syn_protection": alias}).syn_auth == mode
    assert "syn_protection" not in TenantPolicy.from_dict({"syn_protection": alias}).to_dict()


@pytest.mark.parametrize("bad", ["sometimes", "Splice", "", 1, True, None, ["splice"]])
def test_a_bad_syn_auth_is_refused_naming_the_key(bad):
    with pytest.raises(ConfigError) as exc:
        TenantPolicy.from_dict({"syn_auth": bad})
    assert exc.value.problems[0].startswith("policy.syn_auth: must be one of splice, reset, off")


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_a_bad_syn_protection_is_refused_naming_the_key(bad):
    with pytest.raises(ConfigError) as exc:
        TenantPolicy.from_dict({"syn_protection": bad})
    assert exc.value.problems == [f"policy.syn_protection: expected true or false, got {bad!r}"]


def test_syn_protection_contradicting_syn_auth_is_refused_naming_both():
    with pytest.raises(ConfigError) as exc:
        TenantPolicy.from_dict({"syn_auth": "reset", "syn_protection": False})
    assert exc.value.problems[0].startswith("policy.syn_protection: false contradicts policy.syn_auth = 'reset'")
    # Agreeing, both are fine: true with either completion.
    assert TenantPolicy.from_dict({"syn_auth": "reset", "syn_protection": True}).syn_auth == "reset"


def test_a_config_file_tenant_names_the_bad_key():
    with pytest.raises(ConfigError) as exc:
        TenantSet.from_dicts([{"id": "alpha", "prefixes": ["198.51.100.0/24"], "policy": {"syn_auth": "maybe"}}])
    assert any("policy.syn_auth" in p and "'maybe'" in p for p in exc.value.problems), exc.value.problems


@pytest.mark.parametrize(("mode", "protection", "reset"), [("splice", True, False), ("reset", True, True),
                                                             ("off", False, False)])
def test_syn_auth_compiles_into_the_dataplane_switches(mode, protection, reset):
    tenant_set = TenantSet.from_dicts([{"id": "alpha", "prefixes": ["198.51.100.0/24"], "policy": {"syn_auth": mode}}])
    compiled = compile_tenant_set(tenant_set, assign_indices(tenant_set.ids, {}))
    (pol,) = compiled.policies.values()
    assert (pol.syn_protection, pol.syn_reset) == (protection, reset)
