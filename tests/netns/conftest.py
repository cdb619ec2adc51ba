"""Fixtures of the netns tier: the namespace lab up for one test (`lab`); a module that keeps one
lab for all its tests uses `tests.support.started_lab` in a module-scoped fixture of its own,
and a module that needs another kind of lab (a Linux bridge, the comparison bench) defines its
own `lab`.

The tier runs in two parts (tox.ini). The modules in ALONE run one test at a time with the machine to
themselves: what they assert depends on the two vCPUs being theirs (flood and legitimate packet rates,
shares lost or let through, latency, benchmarks, a bench that needs both vCPUs); so do the single tests
marked `alone` in other modules. Every other module runs
beside another (`-n 2 --dist loadfile`: a module's tests on one worker, in order, sharing its
module-scoped lab): each lab has names and namespaces of its own, so two labs do not meet. The modules
that speak BGP from the root namespace each take management links of their own for their BIRD peers
(`appliance.lab.bgp_peer`, which refuses a link in use): test_bgp_escalation 1, test_bgp_seawall_run 2,
test_escalation_reload 3 and 4; link 0 is the lab's upstream router (test_escalation_saturation, here).
"""

from __future__ import annotations

import pytest

from tests.support import started_lab

MEASURING = {"test_appflood", "test_efficacy", "test_policy_vectors", "test_policy_reference", "test_synauth",
             "test_botnet_lab", "test_escalation_saturation",
             "test_bench_compare", "test_bench_detection", "test_bench_mitigation"}
ALONE = frozenset(MEASURING)
# Modules that run beside another except for a few tests, marked `@pytest.mark.alone` in the module
# itself: the lab's own checks of a generator's achieved rate and of every request answered within its
# timeout (each failed once beside another module, 2026-12-07, ci49 and ci50), in test_lab_livegen,
# test_lab_topology and test_lab_attacks, and test_fleet's two-site test, whose other site must answer
# every legitimate packet during a flood (ci53). `-m alone` selects those tests, `-m "not alone"` leaves
# them out.


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in ALONE:
            item.add_marker(pytest.mark.alone)


@pytest.fixture
def lab(request: pytest.FixtureRequest):
    return started_lab(request, "t")
