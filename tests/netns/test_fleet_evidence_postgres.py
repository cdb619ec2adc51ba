"""Issue 17, items 3 and 5, on a real, throwaway PostgreSQL 15 (the central server's database): a
site's PCAP evidence uploaded through the API (bytea), read back, and deleted by the central
retention pass past `fleet_evidence_retention_days`, by the unit suite with `database_url` overridden."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

from tests.netns.test_securewatch_store import database_url, postgres_server  # noqa: F401 - fixtures

_UNIT = pathlib.Path(__file__).parents[1] / "unit" / "securewatch"
sys.path.insert(0, str(_UNIT))  # the suite imports its helpers modules

_spec = importlib.util.spec_from_file_location("pg_test_sw_fleet_evidence", _UNIT / "test_sw_fleet_evidence.py")
_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_suite)
# The same async tests that take `database_url`, collected here; the fixture above points them at PostgreSQL.
globals().update({k: v for k, v in vars(_suite).items()
                  if k.startswith("test_") and "database_url" in v.__code__.co_varnames})
