"""Issue 12 item 17: the parsed tenant set is cached per stored version, invalidated by every save in
this process and, through the version counter, by a save from another Store on the same database;
a change computed from a set that another writer moved meanwhile is redone, never saved over it.
tests/netns/test_sw_concurrency_postgres.py runs them on PostgreSQL through the `database_url` fixture."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from test_sw_helpers import TENANTS, InMemoryAppliance, add_token, running_app, settings

from securewatch import app as sw
from securewatch import versioned
from securewatch.store import SCHEMA_VERSION, Store, TenantSetChanged
from tenants import ConfigError, TenantSet


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path}/sw.db"


def _edited(tenant_set: TenantSet, tenant_id: str, **changes) -> TenantSet:
    tables = tenant_set.to_dicts()
    for table in tables:
        if table["id"] == tenant_id:
            table.update(changes)
    return TenantSet.from_dicts(tables)


async def test_item17_tenant_set_parsed_once_per_stored_version(tmp_path, database_url):
    store = await Store.open(database_url)
    try:
        await store.save_tenant_set(TenantSet.from_dicts(TENANTS), "test", "seed")
        first = await store.tenant_set()
        assert await store.tenant_set() is first          # no re-read, no re-validation
        state = await store.tenant_state()
        assert state.tenants is first and dict(state.versions) == {"alpha": 1, "beta": 1}

        # A save here replaces the cache with the saved set (in id order) and its versions.
        edited = versioned.replace_tenant(first, {**first["beta"].to_dict(), "mode": "mitigate"}, must_exist=True)
        assert await store.save_tenant_set(edited, "test", "edit", base=state) == ["beta"]
        after = await store.tenant_state()
        assert after.version == state.version + 1 and after.tenants == edited
        assert after.tenants["alpha"] is first["alpha"] and after.versions["beta"] == 2
        assert await store.tenant_set() is after.tenants
    finally:
        await store.close()


async def test_item17_cache_invalidated_by_a_write_from_another_store_on_the_same_database(tmp_path, database_url):
    url = database_url
    here, other = await Store.open(url), await Store.open(url)
    try:
        await here.save_tenant_set(TenantSet.from_dicts(TENANTS), "test", "seed")
        cached = await here.tenant_state()
        assert await here.tenant_set() is cached.tenants

        # Another process (another Store, its own connection) changes alpha.
        await other.save_tenant_set(_edited(await other.tenant_set(), "alpha", mode="monitor"), "cli", "edit")
        seen = await here.tenant_state()
        assert seen.tenants["alpha"].mode == "monitor" and seen.versions["alpha"] == 2
        assert seen.version > cached.version
        assert await here.tenant_version("alpha") == 2

        # The CLI's synchronous store reads the same.
        with Store.open_sync(url) as cli:
            assert cli.tenant_set()["alpha"].mode == "monitor"

        # A change computed from the old state is refused, not saved over the other change.
        with pytest.raises(TenantSetChanged):
            await here.save_tenant_set(_edited(cached.tenants, "beta", name="Beta"), "ui", "edit", base=cached)
        stored = await other.tenant_set()
        assert stored["alpha"].mode == "monitor" and stored["beta"].name == "Beta Shop"
        assert await here.schema_version() == SCHEMA_VERSION
    finally:
        await here.close()
        await other.close()


async def test_item17_change_redone_when_another_process_saves_between_read_and_save(tmp_path, database_url):
    """A real app and server; the other writer saves (through its own Store) while the change is
    being computed, the moment no in-process lock can cover."""
    url = database_url
    store, other = await Store.open(url), await Store.open(url)
    try:
        await store.save_tenant_set(TenantSet.from_dicts(TENANTS), "test", "seed")
        app = sw.create_app(settings(tmp_path, database_url), store=store, appliance=None)
        loop = asyncio.get_running_loop()
        calls = []

        def mutate(tenant_set: TenantSet) -> TenantSet:
            calls.append(tenant_set["alpha"].mode)
            if len(calls) == 1:  # the other writer commits now (this runs on a worker thread)
                edited = _edited(tenant_set, "alpha", mode="monitor")
                asyncio.run_coroutine_threadsafe(other.save_tenant_set(edited, "cli", "edit"), loop).result(10)
            return _edited(tenant_set, "beta", name="Beta")

        async def change(request: web.Request) -> web.Response:
            done = await versioned.change_tenants(request, mutate, "tenant.replace", "beta")
            return web.json_response({"version": done.state.versions["beta"]})

        app.router.add_post("/api/v1/test/change", change)
        token = await add_token(store, "admin")
        async with running_app(app) as base, aiohttp.ClientSession() as http:
            r = await http.post(f"{base}/api/v1/test/change", headers={"Authorization": f"Bearer {token}"})
            assert r.status == 200, await r.text()
        assert calls == ["mitigate", "monitor"]          # read again after the other save, and redone
        stored = await other.tenant_set()
        assert stored["alpha"].mode == "monitor" and stored["beta"].name == "Beta"   # both kept
    finally:
        await store.close()
        await other.close()


def test_item17_replaced_skips_set_checks_only_when_the_prefixes_stay():
    tenant_set = TenantSet.from_dicts(TENANTS)
    alpha, beta = tenant_set["alpha"], tenant_set["beta"]
    edited = TenantSet.from_dicts([{**alpha.to_dict(), "mode": "monitor"}]).tenants[0]
    after = tenant_set.replaced(edited)
    assert after.ids == tenant_set.ids and after["alpha"] is edited and after["beta"] is beta
    assert after.find("198.51.100.7") is edited          # lookups by address see the new tenant
    moved = TenantSet.from_dicts([{**alpha.to_dict(), "prefixes": ["203.0.113.0/25"]}]).tenants[0]
    with pytest.raises(ConfigError, match="overlaps"):   # new prefixes: the set is checked again
        tenant_set.replaced(moved)
    with pytest.raises(KeyError):
        tenant_set.replaced(TenantSet.from_dicts([{"id": "gamma", "prefixes": ["192.0.2.0/26"]}]).tenants[0])


async def test_item17_change_refused_on_its_retry_leaves_the_dataplane_on_the_stored_set(tmp_path, database_url):
    """The first attempt was applied to the dataplane, another process then saved the same tenant,
    and the retry finds the If-Match version gone: 409, and the dataplane runs what is stored."""
    store, other = await Store.open(database_url), await Store.open(database_url)
    try:
        appliance = InMemoryAppliance(TenantSet.from_dicts(TENANTS))
        await store.save_tenant_set(appliance.tenants, "test", "seed")
        version = await store.tenant_version("beta")
        app = sw.create_app(settings(tmp_path, database_url), store=store, appliance=appliance)
        loop = asyncio.get_running_loop()

        def mutate(tenant_set: TenantSet) -> TenantSet:
            edited = _edited(tenant_set, "beta", name="Beta by the CLI")
            asyncio.run_coroutine_threadsafe(other.save_tenant_set(edited, "cli", "edit"), loop).result(10)
            return _edited(tenant_set, "beta", name="Beta by the UI")

        async def change(request: web.Request) -> web.Response:
            await versioned.change_tenants(request, mutate, "tenant.replace", "beta", expected=(version,))
            return web.json_response({})

        app.router.add_post("/api/v1/test/change", change)
        token = await add_token(store, "admin")
        async with running_app(app) as base, aiohttp.ClientSession() as http:
            r = await http.post(f"{base}/api/v1/test/change", headers={"Authorization": f"Bearer {token}"})
            assert r.status == 409 and (await r.json())["version"] == version + 1
        assert len(appliance.applied) == 2               # the first attempt, then the stored set again
        assert appliance.tenants["beta"].name == "Beta by the CLI" == (await store.tenant_set())["beta"].name
    finally:
        await store.close()
        await other.close()
