"""Fixtures of the netns tier: the namespace lab up for one test (`lab`); a module that keeps one
lab for all its tests uses `tests.support.started_lab` in a module-scoped fixture of its own,
and a module that needs another kind of lab (a Linux bridge, the comparison bench) defines its
own `lab`."""

from __future__ import annotations

import pytest

from tests.support import started_lab


@pytest.fixture
def lab(request: pytest.FixtureRequest):
    return started_lab(request, "t")
