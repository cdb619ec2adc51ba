"""Issue 12 items 12 and 17 on a real, throwaway PostgreSQL 15 (the central server's database, where
several SecureWatch processes share one tenant set): the create race, lost updates, If-Match, and
the tenant set cache with its version counter, by the unit suites with `database_url` overridden."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

from tests.netns.test_securewatch_store import database_url, postgres_server  # noqa: F401 - fixtures

_UNIT = pathlib.Path(__file__).parents[1] / "unit" / "securewatch"
sys.path.insert(0, str(_UNIT))  # the suites import their helpers module

for _name in ("test_sw_concurrency", "test_sw_tenant_cache"):
    _spec = importlib.util.spec_from_file_location(f"pg_{_name}", _UNIT / f"{_name}.py")
    _suite = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_suite)
    # The same async tests, collected here; `database_url` above points them at PostgreSQL.
    globals().update({k: v for k, v in vars(_suite).items() if k.startswith("test_")})
