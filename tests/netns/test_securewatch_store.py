"""The SecureWatch store suite (tests/unit/securewatch/test_sw_store.py) on a real, throwaway
PostgreSQL 15 server: initdb + pg_ctl as user postgres, Unix socket only, one database per test."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import tempfile
import uuid

import pytest

from tests.conftest import skip_or_fail

_SUITE = pathlib.Path(__file__).parents[1] / "unit" / "securewatch" / "test_sw_store.py"
_spec = importlib.util.spec_from_file_location("sw_store_suite", _SUITE)
_suite = importlib.util.module_from_spec(_spec)
import sys  # noqa: E402

sys.path.insert(0, str(_SUITE.parent))  # the suite imports its helpers module
_spec.loader.exec_module(_suite)

# The same tests, collected here; the `database_url` fixture below points them at PostgreSQL.
globals().update({name: obj for name, obj in vars(_suite).items() if name.startswith("test_")})
store = _suite.store

PG_PORT = 5433  # only names the socket file (listen_addresses is empty: no TCP)
# A throwaway cluster needs no crash safety: in memory (tmpfs) and without flushes to disk. A test's database
# is a copy of the template (~8 MB); on the disk (ext4 mounted with online discard) test_fleet's ~90 of them
# took 8-30 s to remove at the fixture's end, and each CREATE DATABASE waited for its flushes. What the tests
# assert (SQL, migrations, partitions, locks between connections) does not depend on either.
_SCRATCH = pathlib.Path("/dev/shm")
_THROWAWAY = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def _pg_bin(name: str) -> str:
    for candidate in (f"/usr/lib/postgresql/15/bin/{name}", shutil.which(name)):
        if candidate and os.path.exists(candidate):
            return candidate
    skip_or_fail(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")


@pytest.fixture(scope="module")
def postgres_server():
    if os.geteuid() != 0:
        skip_or_fail("starting a throwaway PostgreSQL needs root (to run it as user postgres)")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    directory = pathlib.Path(tempfile.mkdtemp(prefix="sw-pg-", dir=_SCRATCH if _SCRATCH.is_dir() else None))
    shutil.chown(directory, "postgres", "postgres")
    data = directory / "data"
    as_postgres = ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run([*as_postgres, initdb, "--no-sync", "-D", str(data), "-A", "trust", "-U", "seawall"],
                       check=True, capture_output=True)
        subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-l", str(directory / "log"), "-w", "-o",
                        f"-k {directory} -p {PG_PORT} -c listen_addresses='' {_THROWAWAY}", "start"], check=True,
                       capture_output=True)
        yield directory
    finally:
        subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def database_url(postgres_server):
    import psycopg  # noqa: PLC0415

    name = f"t_{uuid.uuid4().hex[:10]}"
    base = f"postgresql://seawall@/postgres?host={postgres_server}&port={PG_PORT}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://seawall@/{name}?host={postgres_server}&port={PG_PORT}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_api_on_postgresql(tmp_path, database_url):
    """The HTTP API end to end on PostgreSQL: create a tenant, read it back, record an incident."""
    import aiohttp  # noqa: PLC0415
    from test_sw_helpers import add_token, attack_events, service  # noqa: PLC0415

    async with service(tmp_path, database=database_url) as (url, st, _appliance):
        token = await add_token(st, "admin")
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(f"{url}/api/v1/tenants", json={"id": "gamma", "prefixes": ["192.0.2.0/26"]}) as r:
                assert r.status == 201, await r.text()
            for e in attack_events():
                await st.record_event(e.to_dict())
            async with http.get(f"{url}/api/v1/incidents/inc-alpha-1") as r:
                assert r.status == 200
                assert len((await r.json())["timeline"]) == 10
        assert "gamma" in await st.tenant_set()
