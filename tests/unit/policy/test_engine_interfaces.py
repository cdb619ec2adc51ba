"""The engine's view of the dataplane is `dataplane.api.DataplaneLike`, and nothing more.

Every method the engine calls on the dataplane is in the protocol (no `getattr` probing for
optional ones), and the engine calls no private method of another object (`RateTracker`'s
included). Checked two ways: on the engine's source, and by running an attack through an
engine whose dataplane answers the protocol's methods only.
"""

from __future__ import annotations

import ast
import pathlib

from dataplane.api import DataplaneLike
from policy.engine import PolicyEngine
from policy.events import EventType
from tests.unit.policy.scenarios import (
    GAME,
    Lab,
    Tenant,
    game_legit_frames,
    syn_flood_frames,
    udp_flood_frames,
)

ENGINE = pathlib.Path(__file__).resolve().parents[3] / "policy" / "engine.py"
PROTOCOL = {name for name in vars(DataplaneLike) if not name.startswith("_")}


def _engine_tree() -> ast.Module:
    return ast.parse(ENGINE.read_text())


def test_every_dataplane_method_the_engine_calls_is_in_the_protocol():
    called, probed = set(), []
    for node in ast.walk(_engine_tree()):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "dataplane" and isinstance(node.value.value, ast.Name):
            called.add(node.attr)                                       # self.dataplane.<method>
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in ("dataplane", "dp"):
            called.add(node.attr)                                       # dataplane.<method>, dp.<method>
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") \
                and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in ("dataplane", "dp"):
            probed.append(ast.unparse(node))
    assert not probed, f"the engine probes the dataplane: {probed}"
    assert called and called <= PROTOCOL, f"not in DataplaneLike: {sorted(called - PROTOCOL)}"


def test_the_engine_calls_no_private_method_of_another_object():
    private = [ast.unparse(node) for node in ast.walk(_engine_tree())
               if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr.startswith("_") and not node.func.attr.startswith("__")
               and not (isinstance(node.func.value, ast.Name) and node.func.value.id in ("self", "cls"))]
    assert not private, f"private methods of other objects: {private}"


class ProtocolOnly:
    """A dataplane that answers DataplaneLike's methods and nothing else."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        if name not in PROTOCOL:
            raise AttributeError(f"the engine asked the dataplane for {name!r}, which DataplaneLike does not declare")
        return getattr(self.inner, name)


def test_an_attack_runs_through_the_protocol_alone(tmp_path):
    lab = Lab(tmp_path, [Tenant(1, "alpha")])
    lab.engine = PolicyEngine(ProtocolOnly(lab.dp), {1: ("alpha", lab.engine.tenants[1].mode, lab.engine.tenants[1].policy)},
                              lab.bus, tmp_path / "engine", tick=1.0, config=lab.engine.config,
                              wall_clock=lambda: 1.7e9 + lab.t)
    lab.engine.tick(lab.t)
    lab.flow("players", 1, game_legit_frames(), 800)
    lab.run(150)                                 # warm: budgets derived and pushed through the protocol
    lab.flow("syn-flood", 1, syn_flood_frames(GAME), 200_000, attack=True)
    lab.flow("udp-flood", 1, udp_flood_frames(GAME), 5_000, attack=True)
    lab.run(20)
    assert lab.of_type(EventType.ATTACK_START) and lab.dp.rules      # rules installed, counters read
    assert lab.dp.class_budgets                                       # budgets pushed
