"""The store suite. tests/netns/test_securewatch_store.py runs these same tests on PostgreSQL
by overriding the `database_url` fixture."""

from __future__ import annotations

import time

import pytest
from test_sw_helpers import TENANTS, attack_events

from securewatch.store import (
    MINUTE_RETENTION_S,
    SCHEMA_VERSION,
    SECOND_RETENTION_S,
    IncidentFilter,
    Store,
    StoreError,
    User,
    create_schema,
)
from tenants import TenantSet


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture
async def store(database_url):
    s = await Store.open(database_url)
    yield s
    await s.close()


async def test_migrations_recorded_and_reopen_is_idempotent(store, database_url):
    assert await store.schema_version() == SCHEMA_VERSION
    again = await Store.open(database_url)
    try:
        assert await again.schema_version() == SCHEMA_VERSION
    finally:
        await again.close()


async def test_tenant_versions_track_create_change_delete(store):
    first = TenantSet.from_dicts(TENANTS)
    assert sorted(await store.save_tenant_set(first, "alice", "seed")) == ["alpha", "beta"]
    assert await store.tenant_set() == first
    assert await store.save_tenant_set(first, "alice", "noop") == []  # unchanged: no new versions

    changed = [dict(TENANTS[0], mode="monitor"), TENANTS[1]]
    assert await store.save_tenant_set(TenantSet.from_dicts(changed), "bob", "policy.update") == ["alpha"]
    assert await store.save_tenant_set(TenantSet.from_dicts(changed[:1]), "bob", "tenant.delete") == ["beta"]
    assert (await store.tenant_set()).ids == ("alpha",)

    alpha = await store.tenant_versions("alpha")
    assert [(v.version, v.created_by, v.data["mode"]) for v in alpha] == [(2, "bob", "monitor"), (1, "alice", "mitigate")]
    beta = await store.tenant_versions("beta")
    assert [(v.version, v.data is None, v.action) for v in beta] == [(2, True, "tenant.delete"), (1, False, "seed")]
    assert await store.tenant_version("alpha") == 2


async def test_users_tokens_sessions_audit(store):
    await store.add_user(User("alice", "$argon2id$x", "admin", None, "write", time.time()))
    with pytest.raises(ValueError, match="already exists"):
        await store.add_user(User("alice", "$argon2id$y", "noc", None, "read", time.time()))
    assert (await store.user("alice")).role == "admin"
    assert await store.user("nobody") is None

    token_id = await store.add_token("ab" * 32, "ci", "tenant", "alpha", "read")
    found = await store.token_by_hash("ab" * 32)
    assert (found.id, found.tenant, found.access) == (token_id, "alpha", "read")
    assert await store.token_by_hash("cd" * 32) is None

    from securewatch.store import Session
    await store.create_session(Session("h1", "alice", "csrf", time.time(), time.time() + 60), "192.0.2.1")
    await store.create_session(Session("h2", "alice", "csrf", time.time() - 120, time.time() - 60), "192.0.2.1")
    assert (await store.session("h1")).username == "alice"
    assert await store.session("h2") is None  # expired
    await store.delete_session("h1")
    assert await store.session("h1") is None

    await store.audit("alice", "tenant.create", target="alpha", tenant="alpha", remote="192.0.2.1",
                      details={"x": 1})
    await store.audit("bob", "login", remote="192.0.2.2")
    entries = await store.audit_log()
    assert [e["action"] for e in entries] == ["login", "tenant.create"]
    assert entries[1]["details"] == {"x": 1} and entries[1]["remote"] == "192.0.2.1"
    assert [e["actor"] for e in await store.audit_log(tenant="alpha")] == ["alice"]


async def test_incident_folds_events_points_and_pcaps(store, tmp_path):
    for event in attack_events(pcap_dir=tmp_path):
        await store.record_event(event.to_dict())
    await store.record_event(attack_events("inc-beta-1", tenant="beta", target="203.0.113.5")[0].to_dict())

    inc = await store.incident("inc-alpha-1")
    assert inc.state == "ended" and inc.tenant == "alpha"
    assert inc.vectors == ["syn_flood"] and inc.destinations == ["198.51.100.10"]
    assert inc.peak_pps == 59000.0 and inc.packets_dropped == 400000 and inc.efficacy == 0.97
    assert inc.duration_s == pytest.approx(10.0)
    points = await store.incident_points("inc-alpha-1")
    assert len(points) == 10  # start's 3 + update's 4 + end's full series, deduplicated by time
    assert [e["type"] for e in await store.incident_events("inc-alpha-1")] == [
        "ATTACK_START", "ATTACK_UPDATE", "ATTACK_END"]
    assert (await store.pcaps("inc-alpha-1"))["dropped"]["packets"] == 12

    assert [i.id for i in await store.incidents(IncidentFilter(state="active"))] == ["inc-beta-1"]
    assert [i.id for i in await store.incidents(IncidentFilter(tenants=("alpha",)))] == ["inc-alpha-1"]
    assert await store.incidents(IncidentFilter(tenants=())) == []
    assert await store.incidents(IncidentFilter(vector="udp_flood")) == []
    assert await store.incidents(IncidentFilter(since=time.time() + 60)) == []

    assert await store.acknowledge("inc-alpha-1", "noc1")
    assert not await store.acknowledge("nope", "noc1")
    await store.annotate("inc-alpha-1", "noc1", "upstream informed")
    assert (await store.incident("inc-alpha-1")).acknowledged_by == "noc1"
    assert [n["text"] for n in await store.incident_notes("inc-alpha-1")] == ["upstream informed"]


async def test_traffic_seconds_minutes_and_retention(store):
    now = 1_800_000_000  # a fixed epoch second, a multiple of 60
    rows = [{"time": now + i, "passed_pps": 100.0 + i, "dropped_pps": 10.0 * (i % 2), "passed_bps": 8e5,
             "dropped_bps": 0.0} for i in range(120)]
    assert await store.add_traffic("alpha", rows) == 120
    assert await store.add_traffic("alpha", rows[:5]) == 5  # upsert, no duplicates
    seconds = await store.traffic("alpha", now, now + 120, "second")
    assert len(seconds) == 120 and seconds[3]["passed_pps"] == 103.0
    minutes = await store.traffic("alpha", now, now + 120, "minute")
    assert [m["time"] for m in minutes] == [now, now + 60]
    assert minutes[0]["passed_pps"] == pytest.approx(sum(100.0 + i for i in range(60)) / 60)
    assert minutes[0]["dropped_pps"] == pytest.approx(5.0)
    assert await store.traffic("beta", now, now + 120, "second") == []
    assert await store.last_traffic_time("alpha") == now + 119

    removed = await store.apply_retention(now=now + 120 + SECOND_RETENTION_S - 30)
    assert removed["seconds"] == 90 and removed["minutes"] == 0
    assert len(await store.traffic("alpha", now, now + 120, "minute")) == 2  # minutes outlive seconds
    removed = await store.apply_retention(now=now + 1 + MINUTE_RETENTION_S)
    assert removed["minutes"] == 1


async def test_report_mailings(store):
    assert not await store.report_mailed("alpha", "2025-04")
    await store.mark_report_mailed("alpha", "2025-04", ["noc@alpha.example"])
    assert await store.report_mailed("alpha", "2025-04")


async def test_bad_url_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="not a database URL"):
        await Store.open("sqlite:///relative.db")


async def test_item4_removing_a_tenant_revokes_its_tokens_disables_its_users_and_ends_sessions(store):
    """Issue 12 item 4, at the store: every path that removes a tenant (API delete, tenant-set
    replace, a SIGHUP reload of the config) stores the set through save_tenant_set, which revokes
    the tenant's credentials in the same transaction. Re-creating the id brings none back."""
    from securewatch.store import Session
    now = time.time()
    await store.save_tenant_set(TenantSet.from_dicts(TENANTS), "alice", "seed")
    await store.add_user(User("bea", "$argon2id$x", "tenant", "beta", "write", now))
    await store.add_user(User("al", "$argon2id$x", "tenant", "alpha", "read", now))
    beta_token = await store.add_token("be" * 32, "beta-ci", "tenant", "beta", "write")
    alpha_token = await store.add_token("a1" * 32, "alpha-ci", "tenant", "alpha", "read")
    await store.create_session(Session("sb", "bea", "c", now, now + 600), "192.0.2.1")
    await store.create_session(Session("sa", "al", "c", now, now + 600), "192.0.2.2")
    assert (await store.token_by_hash("be" * 32)).refusal(now) is None

    alpha_only = TenantSet.from_dicts(TENANTS[:1])
    assert await store.save_tenant_set(alpha_only, "appliance", "reload") == ["beta"]

    assert (await store.token_by_hash("be" * 32)).refusal(time.time()) == "revoked"
    assert (await store.token_by_hash("a1" * 32)).refusal(time.time()) is None
    assert (await store.user("bea")).disabled and not (await store.user("al")).disabled
    assert await store.session_principal("sb") is None and await store.session("sb") is None
    assert (await store.session_principal("sa"))[1].name == "al"
    entry = (await store.audit_log(tenant="beta"))[0]
    assert (entry["action"], entry["actor"]) == ("tenant.credentials_revoked", "appliance")
    assert entry["details"] == {"tokens": [beta_token], "users": ["bea"], "sessions": 1, "cause": "reload"}

    await store.save_tenant_set(TenantSet.from_dicts(TENANTS), "alice", "tenant.create")  # a new customer "beta"
    assert (await store.token_by_hash("be" * 32)).refusal(time.time()) == "revoked"
    assert (await store.user("bea")).disabled
    assert [(t.id, t.revoked) for t in await store.tokens()] == [(beta_token, True), (alpha_token, False)]


async def test_item4_token_expiry_tenant_presence_revoke_and_user_changes(store):
    from securewatch.store import Session
    now = time.time()
    await store.save_tenant_set(TenantSet.from_dicts(TENANTS), "alice", "seed")
    await store.add_token("e0" * 32, "old", "noc", None, "write", expires_at=now - 1)
    await store.add_token("e1" * 32, "new", "noc", None, "write", expires_at=now + 3600)
    await store.add_token("e2" * 32, "gone", "tenant", "gamma", "read")
    assert (await store.token_by_hash("e0" * 32)).refusal(now) == "expired"
    assert (await store.token_by_hash("e0" * 32)).last_used is None  # a refused token is not "used"
    assert (await store.token_by_hash("e1" * 32)).refusal(now) is None
    assert (await store.token_by_hash("e2" * 32)).refusal(now) == "no tenant"
    second = (await store.tokens())[1]
    assert await store.revoke_token(second.id) and not await store.revoke_token(9999)
    assert (await store.token_by_hash("e1" * 32)).refusal(now) == "revoked"

    await store.add_user(User("carl", "$argon2id$x", "noc", None, "write", now))
    await store.create_session(Session("s1", "carl", "c", now, now + 600), None)
    assert await store.change_password("carl", "$argon2id$new")
    assert await store.session("s1") is None and (await store.user("carl")).password_hash == "$argon2id$new"
    await store.create_session(Session("s2", "carl", "c", now, now + 600), None)
    assert await store.set_user_disabled("carl", True) and await store.session("s2") is None
    assert await store.set_user_disabled("carl", False) and not (await store.user("carl")).disabled
    await store.create_session(Session("s3", "carl", "c", now, now + 600), None)
    assert await store.delete_user("carl") and await store.session("s3") is None
    assert not await store.delete_user("carl") and not await store.set_user_disabled("carl", True)
    assert await store.actor_scopes(["alice", f"token:{second.id}:new", "appliance"]) == {
        f"token:{second.id}:new": ("noc", None)}


async def test_item10_internal_notes_and_item18_audit_cursor(store):
    await store.annotate("inc-1", "noc1", "customer-visible")
    await store.annotate("inc-1", "noc1", "upstream is Acme", internal=True)
    assert [n["internal"] for n in await store.incident_notes("inc-1")] == [False, True]
    assert [n["text"] for n in await store.incident_notes("inc-1", internal=False)] == ["customer-visible"]

    for i in range(7):
        await store.audit("alice", f"a{i}")
    first = await store.audit_log(limit=3)
    assert [e["action"] for e in first] == ["a6", "a5", "a4"]
    second = await store.audit_log(limit=3, before=first[-1]["id"])
    assert [e["action"] for e in second] == ["a3", "a2", "a1"]
    assert [e["action"] for e in await store.audit_log(limit=3, before=second[-1]["id"])] == ["a0"]


async def test_item4_migration_3_brings_a_version_2_database_forward_in_place(database_url):
    """A database from before token expiry and internal notes keeps its tokens and notes."""
    create_schema(database_url, up_to=2)
    connection, mark = _raw_connection(database_url)
    try:
        cursor = connection.cursor()
        cursor.execute(f"INSERT INTO api_tokens (token_hash, label, role, tenant, access, created_at) "
                       f"VALUES ({', '.join([mark] * 6)})", ("ff" * 32, "old", "noc", None, "write", time.time()))
        cursor.execute(f"INSERT INTO incident_notes (incident_id, at, author, text) VALUES ({', '.join([mark] * 4)})",
                       ("inc-1", time.time(), "noc1", "from v2"))
        connection.commit()
    finally:
        connection.close()
    s = await Store.open(database_url)
    try:
        assert await s.schema_version() == SCHEMA_VERSION
        token = await s.token_by_hash("ff" * 32)
        assert (token.label, token.expires_at, token.revoked, token.refusal(time.time())) == ("old", None, False, None)
        assert [(n["text"], n["internal"]) for n in await s.incident_notes("inc-1", internal=False)] == [
            ("from v2", False)]
    finally:
        await s.close()


def _raw_connection(database_url: str):
    """A plain DB-API connection to the test database (what an older Seawall left behind)."""
    if database_url.startswith(("postgresql://", "postgres://")):
        import psycopg  # noqa: PLC0415 - only the PostgreSQL run needs it

        return psycopg.connect(database_url), "%s"
    import sqlite3  # noqa: PLC0415

    from securewatch.settings import sqlite_path  # noqa: PLC0415

    return sqlite3.connect(str(sqlite_path(database_url))), "?"


async def test_migration_5_tidies_names_and_contacts_an_older_version_stored(database_url):
    """Names and contacts are checked since schema 5: a tenant stored before with a CR/LF name and
    contacts that are no addresses must not make the whole stored set unreadable after the upgrade."""
    import json  # noqa: PLC0415

    s = await Store.open(database_url)
    try:
        await s.save_tenant_set(TenantSet.from_dicts(TENANTS), "test", "seed")
    finally:
        await s.close()
    legacy = {"id": "alpha", "name": "Alpha\r\nBcc: everyone@example.com", "prefixes": ["198.51.100.0/25"],
              "contacts": ["NOC team", "Ops <ops@example.com>", "noc@example.com"]}
    connection, mark = _raw_connection(database_url)
    try:
        cursor = connection.cursor()
        cursor.execute(f"UPDATE tenants SET data = {mark} WHERE id = {mark}", (json.dumps(legacy), "alpha"))
        # Migrations 5 and 6 as not run yet (the store runs every migration not recorded), their
        # tables gone: what they do to a set stored by schema 4.
        cursor.execute(f"DELETE FROM schema_version WHERE version IN ({mark}, {mark})", (5, 6))
        for table in ("tenant_templates", "policy_templates"):   # migration 6's, not there at schema 4
            cursor.execute(f"DROP TABLE {table}")
        connection.commit()
    finally:
        connection.close()
    s = await Store.open(database_url)
    try:
        alpha = (await s.tenant_set())["alpha"]
        assert alpha.name == "Alpha Bcc: everyone@example.com"
        assert alpha.contacts == ("ops@example.com", "noc@example.com")
        newest = (await s.tenant_versions("alpha"))[0]
        assert (newest.created_by, newest.action) == ("seawall-upgrade", "upgrade")
        entry = next(e for e in await s.audit_log() if e["action"] == "tenant.upgrade")
        assert entry["target"] == "alpha" and len(entry["details"]["changes"]) == 3
        assert (await s.tenant_set())["beta"] == TenantSet.from_dicts(TENANTS)["beta"]   # untouched
    finally:
        await s.close()


async def test_item16_console_series_on_this_backend(store):
    """The console's series queries (securewatch.series) on each backend: hour rollups, the current
    second per tenant, per-destination rows and their listing, retention by setting."""
    from securewatch import series  # noqa: PLC0415

    t0 = 1_800_000_000 // 3600 * 3600
    await store.add_traffic("alpha", [{"time": t0 + i, "passed_pps": 100.0 * (1 + i // 60), "dropped_pps": 1.0,
                                       "passed_bps": 8e5, "dropped_bps": 8e3} for i in range(90)])
    hours = await store.run(series.tenant_series, "alpha", series.RANGES["30d"], t0 + 100)
    assert hours["time"] == [t0] and hours["passed_pps"] == [round((60 * 100 + 30 * 200) / 90, 1)]
    latest = await store.run(series.latest_tenant_rates, t0)
    assert latest["alpha"]["time"] == t0 + 89 and latest["alpha"]["passed_pps"] == 200.0
    row = {"tenant": "alpha", "address": "198.51.100.10", "pps": [1, 2, 300, 0, 0, 0], "dropped_pps": 0,
           "mean": [1, 2, 250, 0, 0, 0], "sigma": [1, 1, 30, 0, 0, 0], "threshold": [50, 50, 400, 50, 50, 50]}
    await store.run(series.add_destination_seconds, [{**row, "time": t0 + 10}, {**row, "time": t0 + 11}])
    await store.run(series.add_destination_seconds, [{**row, "time": t0 + 11, "dropped_pps": 5}])   # upsert
    await store.run(series.add_destination_minutes, [{**row, "address": "198.51.100.11", "time": t0,
                                                      "samples": 60, "max_pps": 400}])
    got = await store.run(series.destination_series, "alpha", "198.51.100.10", series.DESTINATION_RANGES["1h"],
                          t0 + 20)
    assert got["time"] == [t0 + 10, t0 + 11] and got["dropped_pps"] == [0.0, 5.0] and got["pps"]["udp"] == [300, 300]
    listed = await store.run(series.tenant_destinations, "alpha", t0 - 60, 10)
    assert [d["address"] for d in listed] == ["198.51.100.10", "198.51.100.11"] and listed[0]["load"] == 0.75
    removed = await store.apply_retention(now=t0 + 90 * 86400 + 3600 * 2)
    assert removed["minutes"] == 2 and removed["destination_seconds"] == 2 and removed["hours"] == 0
