"""The appliance config file: defaults, types, located errors with suggestions, tenants, notify.

(Named test_appliance_config.py, not test_config.py: test dirs have no __init__.py, so
basenames must be unique across tests/unit, and policy/ has a config module too.)
"""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from appliance.config import (
    ApplianceConfig,
    ApplianceSettings,
    SecureWatchSettings,
    load_config,
    parse_config,
)
from dataplane.sizing import FlowSizes
from tenants import ConfigError, TenantSet

FULL = """\
[appliance]
external = "sw-ext0"
internal = "sw-int0"
state_dir = "/srv/seawall"
log_format = "json"
tick_ms = 250
bpffs = "/sys/fs/bpf/seawall-lab"

[securewatch]
listen = "[::1]:9090"
enabled = false

[[tenants]]
id = "alpha"
prefixes = ["198.51.100.0/24"]

[[tenants]]
id = "beta"
prefixes = ["203.0.113.0/24", "2001:db8:b::/48"]
mode = "monitor"

[[notify.syslog]]
host = "127.0.0.1"
port = 5514
facility = "local4"

[[notify.webhook]]
url = "http://127.0.0.1:8081/hook"
secret = "hmac-key"
tenants = ["beta"]
"""


def write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "seawall.toml"
    path.write_text(text)
    return path


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="seawall.toml")
    assert info.value.source == "seawall.toml"
    return info.value.problems


def test_empty_file_gives_every_default(tmp_path: pathlib.Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config == ApplianceConfig(
        appliance=ApplianceSettings(external=None, internal=None, state_dir=pathlib.Path("/var/lib/seawall"),
                                    log_format="auto", tick_ms=1000, bpffs=pathlib.Path("/sys/fs/bpf/seawall")),
        securewatch=SecureWatchSettings(listen="127.0.0.1:8080",
                                        database="sqlite:////var/lib/seawall/securewatch.db", enabled=True),
        tenants=TenantSet(), notify={}, source=str(tmp_path / "seawall.toml"))
    assert config.securewatch.sqlite_path == pathlib.Path("/var/lib/seawall/securewatch.db")
    assert (config.securewatch.listen_host, config.securewatch.listen_port) == ("127.0.0.1", 8080)


def test_issue18_address_maps_sized_by_configuration(tmp_path: pathlib.Path) -> None:
    config = load_config(write(tmp_path, "[appliance]\naddress_cache_mib = 400\nmax_addresses = 1048576\n"))
    assert (config.appliance.address_cache_mib, config.appliance.max_addresses) == (400, 1048576)
    assert config.appliance.address_cache_bits(regions=2) == 19       # 2 x 2**19 slots x 384 bytes = 384 MiB
    assert config.appliance.address_cache_bits(regions=64) == 14
    defaults = load_config(write(tmp_path, "")).appliance
    assert (defaults.address_cache_mib, defaults.max_addresses) == (64, 262144)
    assert defaults.address_cache_bits(regions=64) == 11             # 64 x 2**11 x 384 bytes = 48 MiB, not 1.5 GiB


@pytest.mark.parametrize(("text", "problem"), [
    ("[appliance]\naddress_cache_mib = 0", "[appliance] address_cache_mib: must be between 1 and 65536, got 0"),
    ("[appliance]\naddress_cache_mib = 1.5", "[appliance] address_cache_mib: expected an integer, got a float 1.5"),
    ("[appliance]\nmax_addresses = 100", "[appliance] max_addresses: must be between 1024 and 16777216, got 100"),
    ("[appliance]\nmax_addresses = true", "[appliance] max_addresses: expected an integer, got a boolean True"),
])
def test_issue18_address_map_sizes_rejected_by_name(text: str, problem: str) -> None:
    assert problems_of(text) == [problem]


def test_full_file(tmp_path: pathlib.Path) -> None:
    config = load_config(write(tmp_path, FULL))
    assert config.appliance == ApplianceSettings(
        external="sw-ext0", internal="sw-int0", state_dir=pathlib.Path("/srv/seawall"), log_format="json",
        tick_ms=250, bpffs=pathlib.Path("/sys/fs/bpf/seawall-lab"))
    assert config.interfaces() == ("sw-ext0", "sw-int0")
    # The database follows state_dir unless given.
    assert config.securewatch == SecureWatchSettings(
        listen="[::1]:9090", database="sqlite:////srv/seawall/securewatch.db", enabled=False)
    assert (config.securewatch.listen_host, config.securewatch.listen_port) == ("::1", 9090)
    assert config.tenants.ids == ("alpha", "beta")
    assert config.tenants.find("2001:db8:b::1").mode == "monitor"
    assert config.notify == {"syslog": [{"host": "127.0.0.1", "port": 5514, "facility": "local4"}],
                             "webhook": [{"url": "http://127.0.0.1:8081/hook", "secret": "hmac-key",
                                          "tenants": ["beta"]}]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.appliance.tick_ms = 5  # type: ignore[misc]


def test_each_load_is_independent(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, FULL)
    first, second = load_config(path), load_config(path)
    first.notify["syslog"][0]["facility"] = "local7"
    assert second.notify["syslog"][0]["facility"] == "local4"
    assert load_config(path).notify["syslog"][0]["facility"] == "local4"


def test_other_databases() -> None:
    config = parse_config('[securewatch]\ndatabase = "postgresql://seawall@/seawall?host=/run/pg"\n')
    assert config.securewatch.database == "postgresql://seawall@/seawall?host=/run/pg"
    assert config.securewatch.sqlite_path is None
    assert parse_config('[securewatch]\ndatabase = "sqlite:///:memory:"\n').securewatch.sqlite_path == ":memory:"


def test_interfaces_are_required_to_run() -> None:
    config = parse_config('[appliance]\nexternal = "eth0"\n', source="lab.toml")
    with pytest.raises(ConfigError) as info:
        config.interfaces()
    assert str(info.value) == ("lab.toml: [appliance] internal: required to run the bridge "
                               "(the internal interface name)")


def test_unknown_keys_suggest_the_closest_known_key() -> None:
    assert problems_of('verbose = true\n[appliance]\nextrenal = "eth0"\ntick = 100\n[securewatch]\n'
                       'listen_port = 1\n[securwatch]\n[[tenant]]\nid = "a"\n') == [
        "verbose: unknown top-level key (known: appflood, appliance, bgp, escalation, fleet, notify, policy, securewatch, "
            "templates, tenants)",
        "securwatch: unknown top-level section (did you mean 'securewatch'?)",
        "tenant: unknown top-level section (did you mean 'tenants'?)",
        "[appliance] extrenal: unknown key (did you mean 'external'?)",
        "[appliance] tick: unknown key (did you mean 'tick_ms'?)",
        "[securewatch] listen_port: unknown key (did you mean 'listen'?)",
    ]


def test_wrong_types_and_values_are_all_reported() -> None:
    assert problems_of("""
[appliance]
external = 1
internal = "sw int"
state_dir = "var/lib/seawall"
log_format = "xml"
tick_ms = 50.5
bpffs = ""
[securewatch]
listen = "localhost"
database = "mysql://db"
enabled = "yes"
[notify]
""") == [
        "[appliance] external: expected a string, got an integer 1",
        "[appliance] internal: 'sw int' is not a valid interface name (1-15 bytes, no '/', ':' or spaces)",
        "[appliance] log_format: 'xml' is not one of 'auto', 'json', 'console'",
        "[appliance] tick_ms: expected an integer number of milliseconds, got a float 50.5",
        "[appliance] state_dir: 'var/lib/seawall' is not an absolute path",
        "[appliance] bpffs: expected a path, got an empty string",
        "[securewatch] listen: 'localhost' is not host:port (for example '127.0.0.1:8080' or '[::1]:8080')",
        "[securewatch] database: 'mysql://db' is not supported (use sqlite:////ABSOLUTE/PATH or postgresql://...)",
        "[securewatch] enabled: expected true or false, got a string 'yes'",
    ]


@pytest.mark.parametrize(("text", "problem"), [
    ("[appliance]\ntick_ms = 99", "[appliance] tick_ms: must be between 100 and 10000 milliseconds, got 99"),
    ("[appliance]\ntick_ms = 10001", "[appliance] tick_ms: must be between 100 and 10000 milliseconds, got 10001"),
    ("[appliance]\ntick_ms = true", "[appliance] tick_ms: expected an integer number of milliseconds, "
                                    "got a boolean True"),
    ('[appliance]\nexternal = "eth0"\ninternal = "eth0"',
     "[appliance] internal: 'eth0' is also the external interface; the bridge needs two different NICs"),
    ('[appliance]\nexternal = "a-very-long-name0"',
     "[appliance] external: 'a-very-long-name0' is not a valid interface name (1-15 bytes, no '/', ':' or spaces)"),
    ('[securewatch]\nlisten = "::1:8080"',
     "[securewatch] listen: '::1:8080': write an IPv6 address in brackets, like '[::1]:8080'"),
    ('[securewatch]\nlisten = "127.0.0.1:65536"',
     "[securewatch] listen: '127.0.0.1:65536': port '65536' is not a number between 0 and 65535"),
    ('[securewatch]\nlisten = "[192.0.2.1]:80"',
     "[securewatch] listen: '[192.0.2.1]:80': '192.0.2.1' is not an IPv6 address"),
    ('[securewatch]\ndatabase = "sqlite:///seawall.db"',
     "[securewatch] database: 'sqlite:///seawall.db' does not name an absolute path; write sqlite:/// then "
     "the path, e.g. 'sqlite:////var/lib/seawall/securewatch.db'"),
    ("appliance = 3", "[appliance]: expected a table, got an integer"),
    ("notify = []", "[notify]: expected a table, got an array"),
])
def test_single_problems(text: str, problem: str) -> None:
    assert problems_of(text) == [problem]


def test_listen_port_zero_picks_a_free_port() -> None:
    assert parse_config('[securewatch]\nlisten = "127.0.0.1:0"').securewatch.listen_port == 0


def test_tenant_problems_come_with_the_others_and_nothing_is_returned(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, '[appliance]\ntick_ms = 5\n[[tenants]]\nid = "alpha"\nprefixes = ["198.51.100.1/24"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: 2 problems:\n"
        "  - [appliance] tick_ms: must be between 100 and 10000 milliseconds, got 5\n"
        "  - tenant 'alpha': prefixes[0]: 198.51.100.1/24 has host bits set (did you mean 198.51.100.0/24?)")


def test_syntax_errors_name_file_and_line(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, '[appliance]\ntick_ms = 1000\nexternal = eth0\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: line 3, column 12: TOML syntax error: Invalid value\n"
                               f"    external = eth0\n               ^")
    path = write(tmp_path, '[appliance]\n[appliance]\n')
    with pytest.raises(ConfigError, match=r"line 2, column 11: TOML syntax error: Cannot declare \('appliance',\) twice"):
        load_config(path)


def test_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="nowhere.toml: file not found"):
        load_config(tmp_path / "nowhere.toml")


def test_the_shipped_example_is_valid() -> None:
    """The file in the module docstring is what operators copy: it must load."""
    import appliance.config as module

    docstring = module.__doc__ or ""
    example = "\n".join(line[4:] for line in docstring.splitlines() if line.startswith("    "))
    example = example.replace("[[tenants]]", "[[tenants]]\nid = \"alpha\"\nprefixes = [\"198.51.100.0/24\"]")
    config = parse_config(example)
    assert config.interfaces() == ("eth0", "eth1")
    assert config.securewatch.database == "sqlite:////var/lib/seawall/securewatch.db"


def test_issue15_flow_accounting_maps_sized_by_configuration(tmp_path: pathlib.Path) -> None:
    config = load_config(write(tmp_path, "[appliance]\nflow_table_entries = 4096\nflow_destination_entries = 512\n"
                                         "flow_source_entries = 8192\nblocked_sources_max = 100\nsource_limits_max = 8\n"))
    assert config.appliance.flow_sizes == FlowSizes(flow_table_entries=4096, flow_destination_entries=512,
                                                    flow_source_entries=8192, blocked_sources_max=100,
                                                    source_limits_max=8)
    assert "-DSW_BLOCKED_SOURCES_MAX=100U" in config.appliance.flow_sizes.cflags()
    defaults = load_config(write(tmp_path, "")).appliance.flow_sizes
    assert (defaults.flow_table_entries, defaults.flow_destination_entries, defaults.flow_source_entries,
            defaults.blocked_sources_max, defaults.source_limits_max) == (131072, 65536, 131072, 65536, 1024)


@pytest.mark.parametrize(("text", "problem"), [
    ("[appliance]\nflow_table_entries = 10", "[appliance] flow_table_entries: must be between 1024 and 16777216, got 10"),
    ("[appliance]\nflow_source_entries = 1.5",
     "[appliance] flow_source_entries: expected an integer, got a float 1.5"),
    ("[appliance]\nblocked_sources_max = true", "[appliance] blocked_sources_max: expected an integer, got a boolean True"),
    ("[appliance]\nsource_limits_max = 0", "[appliance] source_limits_max: must be between 1 and 65536, got 0"),
    ("[appliance]\nflow_destination_entries = 99999999",
     "[appliance] flow_destination_entries: must be between 256 and 4194304, got 99999999"),
])
def test_issue15_flow_accounting_sizes_rejected_by_name(text: str, problem: str) -> None:
    assert problems_of(text) == [problem]
