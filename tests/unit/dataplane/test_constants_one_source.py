"""Every number, flag and enumeration shared by C and Python has one source: dataplane/constants.py.

The C sources get them as -D macros (constants.cflags()) and define none of them; Python reads
them from constants. These checks read the sources as text: they fail when a value is written
down a second time, on either side, before the two copies can drift apart.
"""

from __future__ import annotations

import ast
import pathlib
import re

from dataplane import constants
from dataplane.constants import (
    BUDGET_CLASSES,
    BUDGET_FIELDS,
    EtherType,
    IpProto,
    PolicyFlag,
    RuleMatch,
    TcpFlag,
    TrafficClass,
)

ROOT = pathlib.Path(__file__).resolve().parents[3]
C_SOURCES = sorted((ROOT / "dataplane" / "bpf").glob("*.[ch]"))
PACKAGES = ("dataplane", "policy", "tenants", "appliance", "securewatch")
# Macro families that are shared with Python: they must come from cflags(), never from a #define.
SHARED_PREFIXES = ("SW_POLICY_", "SW_MATCH_", "SW_SCOPE_", "SW_PORT_", "SW_BUDGET_", "SW_TRAFFIC_CLASS_",
                   "SW_DROP_REASON_", "SW_DIRECTION_", "SW_RULE_ACTION_", "SW_TENANT_MODE_", "SW_ACL_KIND_",
                   "SW_ETH_P_", "SW_IPPROTO_", "SW_TCP_")


def _cflag_names() -> dict[str, str]:
    out = {}
    for flag in constants.cflags():
        name, _, value = flag[2:].partition("=")
        out[name] = value
    return out


def _c_defines() -> dict[str, str]:
    defines = {}
    for path in C_SOURCES:
        for match in re.finditer(r"^\s*#\s*define\s+(SW_\w+)", path.read_text(), re.M):
            defines[match.group(1)] = path.name
    return defines


def _python_sources():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(), filename=str(path))


def test_the_c_sources_define_no_macro_that_cflags_gives_them():
    both = set(_cflag_names()) & set(_c_defines())
    assert not both, f"defined in C and emitted by constants.cflags(): {sorted(both)}"


def test_the_c_sources_define_no_shared_macro():
    shared = {name: where for name, where in _c_defines().items() if name.startswith(SHARED_PREFIXES)}
    assert not shared, f"shared with Python, so they belong in dataplane/constants.py: {shared}"


def test_every_flag_reaches_c_with_its_value():
    names = _cflag_names()
    for member in PolicyFlag:
        assert names[f"SW_POLICY_{member.name}"] == f"{int(member)}U"
    for member in RuleMatch:
        assert names[f"SW_MATCH_{member.name}"] == f"{int(member)}U"
    assert "SW_NO_RULE_SET" not in names and "SW_NO_RULE_SET" not in _c_defines()   # dead on both sides


def test_the_budget_slot_table_maps_each_class_to_its_slot():
    table = int(_cflag_names()["SW_BUDGET_SLOT_OF_CLASS"].rstrip("U"), 16)
    for cls in TrafficClass:
        slot = (table >> (4 * int(cls))) & 0xF
        assert slot == (BUDGET_CLASSES.index(cls) if cls in BUDGET_CLASSES else 0xF), cls.name
    assert _cflag_names()["SW_BUDGET_CLASSES"] == f"{len(BUDGET_CLASSES)}U"


def test_the_c_sources_loop_over_the_classes_instead_of_naming_them():
    text = "\n".join(p.read_text() for p in C_SOURCES)
    assert not re.search(r"packets\[\d\]", text), "per-class counters indexed by hand: loop over SW_CLASSES"
    assert "case SW_TRAFFIC_CLASS_" not in text, "a switch over classes: index by SW_BUDGET_SLOT_OF_CLASS"


def test_the_class_to_budget_field_mapping_is_written_only_in_constants():
    """A dict whose values name two or more budget fields is a copy of constants.BUDGET_FIELDS."""
    fields = set(BUDGET_FIELDS.values())
    found = []
    for path, tree in _python_sources():
        if path == ROOT / "dataplane" / "constants.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                named = [v.value for v in node.values if isinstance(v, ast.Constant) and v.value in fields]
                if len(named) >= 2:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {named}")
    assert not found, "the class -> budget field mapping is written again:\n" + "\n".join(found)


def test_no_python_module_but_constants_binds_a_number_of_the_program():
    """Names of the program's flags, keys and header numbers (POLICY_*, MATCH_*, SCOPE_*, PORT_*,
    NO_RULE_SET; TCP_*, PROTO_*, ETH_P_* of the sample parser) bound to a number literal."""
    names_of_c = {f"POLICY_{m.name}" for m in PolicyFlag} | {f"MATCH_{m.name}" for m in RuleMatch} | {
        "SCOPE_ADDRESS", "SCOPE_TENANT", "PORT_EXTERNAL", "PORT_INTERNAL", "NO_RULE_SET"} | {
        f"TCP_{m.name}" for m in TcpFlag} | {f"PROTO_{m.name}" for m in IpProto} | {
        f"ETH_P_{m.name}" for m in EtherType} | {"ETH_P_IPV4", "VLAN_ETHERTYPES", "IPV6_EXT_HEADERS",
                                                 "IPV6_FRAGMENT_HEADER", "IPPROTO"}
    found = []
    for path, tree in _python_sources():
        if path == ROOT / "dataplane" / "constants.py":
            continue
        for node in ast.walk(tree):
            literal = isinstance(node, ast.Assign) and any(
                isinstance(v, ast.Constant) and type(v.value) is int for v in ast.walk(node.value))
            if literal:
                names = [t for target in node.targets for t in ast.walk(target) if isinstance(t, ast.Name)]
                for name in names:
                    if name.id.lstrip("_") in names_of_c:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name.id}")
    assert not found, "flags of the program defined outside dataplane/constants.py:\n" + "\n".join(found)
