"""Tenant import and export: TOML files and JSON, round trips and located errors."""

from __future__ import annotations

import json
import pathlib
import tomllib

import pytest
from hypothesis import given, settings
from tenant_strategies import tenant_tables

from tenants import ConfigError, TenantSet, dumps_toml, from_json, load_toml, loads_toml, to_json

EXAMPLE = """\
# Two customers of the lab.
[[tenants]]
id = "alpha"
name = "Alpha Hosting"
prefixes = ["198.51.100.0/24", "2001:db8:a::/48"]
mode = "monitor"
contacts = ["noc@alpha.example"]

[[tenants.allow]]
src = "192.0.2.0/24"
proto = "tcp"
dport = "1024-65535"

[[tenants.deny]]
proto = 47

[tenants.policy]
sensitivity = 2.0
syn_rate_pps = 5000

[[tenants]]
id = "beta"
name = "Beta"
prefixes = ["203.0.113.0/25"]
"""


def test_load_toml_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(EXAMPLE)
    tenant_set = load_toml(path)
    assert tenant_set.ids == ("alpha", "beta")
    alpha = tenant_set["alpha"]
    assert alpha.mode == "monitor" and alpha.policy.sensitivity == 2.0 and alpha.policy.syn_rate_pps == 5000
    assert str(alpha.allow[0]) == "src=192.0.2.0/24 proto=tcp dport=1024-65535"
    assert alpha.deny[0].proto == 47
    assert tenant_set["beta"].mode == "mitigate"
    assert tenant_set.find("203.0.113.1").id == "beta"


def test_toml_export_reads_back_equal_and_keeps_the_tables() -> None:
    tenant_set = loads_toml(EXAMPLE)
    text = dumps_toml(tenant_set)
    assert loads_toml(text) == tenant_set
    assert tomllib.loads(text)["tenants"] == tenant_set.to_dicts()
    assert tomllib.loads(text)["tenants"][1] == {"id": "beta", "name": "Beta", "prefixes": ["203.0.113.0/25"],
                                                 "mode": "mitigate"}


def test_json_export_reads_back_equal() -> None:
    tenant_set = loads_toml(EXAMPLE)
    text = to_json(tenant_set)
    assert json.loads(text) == {"tenants": tenant_set.to_dicts()}
    assert from_json(text) == tenant_set
    assert from_json(json.dumps(tenant_set.to_dicts())) == tenant_set  # a bare array works too


@settings(max_examples=40, deadline=None)
@given(tenant_tables())
def test_round_trips(tables: list[dict[str, object]]) -> None:
    tenant_set = TenantSet.from_dicts(tables)
    assert loads_toml(dumps_toml(tenant_set)) == tenant_set
    assert from_json(to_json(tenant_set)) == tenant_set
    assert from_json(to_json(tenant_set, indent=None)).to_dicts() == tables


def test_toml_syntax_error_names_file_line_and_column(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text('[[tenants]]\nid = "alpha"\nprefixes = ["198.51.100.0/24",\n')
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    message = str(info.value)
    assert message == (f"{path}: line 3, at end of file: TOML syntax error: Invalid value "
                       f"(is a bracket or a quote left open?)")
    path.write_text('[[tenants]]\nid = alpha\n')
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    assert str(info.value) == f"{path}: line 2, column 6: TOML syntax error: Invalid value\n    id = alpha\n         ^"


def test_content_errors_name_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text('[[tenants]]\nid = "alpha"\nprefixes = ["198.51.100.1/24"]\n')
    with pytest.raises(ConfigError) as info:
        load_toml(path)
    assert info.value.source == str(path)
    assert str(info.value) == (f"{path}: tenant 'alpha': prefixes[0]: 198.51.100.1/24 has host bits set "
                               f"(did you mean 198.51.100.0/24?)")


def test_unreadable_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="missing.toml: file not found"):
        load_toml(tmp_path / "missing.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[[tenants]]")
    with pytest.raises(ConfigError, match="binary.toml: not UTF-8 text"):
        load_toml(binary)


def test_tenants_array_is_required_but_other_sections_are_ignored() -> None:
    with pytest.raises(ConfigError, match=r"^<string>: no \[\[tenants\]\] tables found$"):
        loads_toml('[appliance]\nexternal = "eth0"\n')
    assert loads_toml('tenants = []\n') == TenantSet()
    both = loads_toml('[appliance]\nexternal = "eth0"\n' + EXAMPLE)
    assert both.ids == ("alpha", "beta")
    with pytest.raises(ConfigError, match=r"tenants: expected an array of tables \(\[\[tenants\]\]\), got a string"):
        loads_toml('tenants = "alpha"\n')


def test_json_errors() -> None:
    with pytest.raises(ConfigError, match=r"^api: line 1, column 14: JSON syntax error: Expecting value$"):
        from_json('{"tenants": [', source="api")
    with pytest.raises(ConfigError, match=r"expected an object with a \"tenants\" array, got a string"):
        from_json('"alpha"')
    with pytest.raises(ConfigError, match=r"^<json>: tenant 'alpha': prefixes: empty"):
        from_json('{"tenants": [{"id": "alpha", "prefixes": []}]}')
