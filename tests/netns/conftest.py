"""Fixtures of the netns tier: the namespace lab up for one test (`lab`); a module that keeps one
lab for all its tests uses `tests.support.started_lab` in a module-scoped fixture of its own,
and a module that needs another kind of lab (a Linux bridge, the comparison bench) defines its
own `lab`.

The tier runs in two parts (tox.ini). The modules in ALONE run one test at a time with the machine to
themselves, for one of two reasons: what they assert depends on the two vCPUs being theirs (flood and
legitimate packet rates, shares lost or let through, latency, benchmarks, a bench that needs both
vCPUs), or they speak BGP from the root namespace, where every lab's management veth takes the same
fixed addresses (`appliance.lab.bgp_peer`). Every other module runs beside another
(`-n 2 --dist loadfile`: a module's tests on one worker, in order, sharing its module-scoped lab):
each lab has names and namespaces of its own, so two labs do not meet.
"""

from __future__ import annotations

import pytest

from tests.support import started_lab

MEASURING = {"test_appflood", "test_efficacy", "test_policy_vectors", "test_policy_reference", "test_synauth",
             "test_botnet_lab", "test_escalation_saturation", "test_lab_attacks",
             "test_bench_compare", "test_bench_detection", "test_bench_mitigation"}
ROOT_NAMESPACE_BGP = {"test_bgp_escalation", "test_bgp_seawall_run", "test_escalation_reload",
                      "test_escalation_saturation"}
ALONE = frozenset(MEASURING | ROOT_NAMESPACE_BGP)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in ALONE:
            item.add_marker(pytest.mark.alone)


@pytest.fixture
def lab(request: pytest.FixtureRequest):
    return started_lab(request, "t")
