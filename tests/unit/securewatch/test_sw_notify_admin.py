"""NOC receivers edited in SecureWatch: live reconfiguration of a real NotifierManager against a
real aiohttp webhook receiver on loopback, the /api/v1/notify round trip with secrets masked and
kept, validation errors naming the key, the audit log without secrets, and the admin page."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import html
import json
import tomllib

import aiohttp
import pytest
from test_notify_delivery import FAST_RETRY, HMAC_SECRET, WebhookSink, attack, free_port
from test_sw_helpers import add_token, add_user, login, service

from appliance.config import parse_config
from appliance.service import Appliance
from policy.events import Event, EventBus, EventType
from securewatch import notify_admin
from securewatch.notify import NotifierManager, parse_notify_config
from securewatch.notify.config import EmailReceiver, SnmpReceiver, SyslogReceiver, WebhookReceiver
from securewatch.store import Store
from tenants import ConfigError
from tests.support import await_until

MASK = notify_admin.MASK


@pytest.fixture
async def sink():
    s = WebhookSink(free_port())
    yield s
    await s.down()


def _hook(port: int, name: str, path: str, **extra) -> dict:
    return {"name": name, "url": f"http://127.0.0.1:{port}{path}", "secret": HMAC_SECRET, **extra}


# --- NotifierManager.reconfigure ----------------------------------------------------------

async def test_reconfigure_swaps_receivers_live_and_keeps_queued_events(tmp_path, sink):
    """While the receiver is down, events wait in each queue. A new config changes the NOC
    hook's URL (same name, same routing: its queue is kept and delivered to the new URL), keeps
    one receiver identical (its task is not even restarted), removes one and adds one."""
    port = sink.port
    before = parse_notify_config({"webhook": [
        _hook(port, "noc-hook", "/generic"),
        _hook(port, "old-hook", "/old"),
        _hook(port, "steady", "/steady", tenants=["alpha"]),
        _hook(port, "moved", "/moved", tenants=["alpha"]),
    ]})
    bus = EventBus()
    async with NotifierManager(before, bus, tmp_path, retry=FAST_RETRY) as mgr:
        bus.publish(attack("A", "alpha", EventType.ATTACK_START, "queued before"))
        await await_until(lambda: all(s.backlog == 1 and s.consecutive_failures >= 1
                                      for s in mgr.status().values()), what="every queue to hold the event")
        steady_task = next(t for t in asyncio.all_tasks() if t.get_name() == "notify:steady")

        after = parse_notify_config({"webhook": [
            _hook(port, "noc-hook", "/generic?edited=1", timeout=5.0),
            _hook(port, "steady", "/steady", tenants=["alpha"]),
            _hook(port, "moved", "/moved", tenants=["beta"]),  # same name, other tenant's now
            _hook(port, "new-hook", "/new", tenants=["alpha"]),
        ]})
        outcome = await mgr.reconfigure(after)
        assert outcome == {"kept": ["steady"], "restarted": ["noc-hook", "moved"], "added": ["new-hook"],
                           "removed": ["old-hook"]}
        assert list(mgr.status()) == ["noc-hook", "steady", "moved", "new-hook"]
        assert mgr.status()["noc-hook"].backlog == 1  # survived the swap
        assert mgr.status()["moved"].backlog == 0 and mgr.status()["moved"].dead_letters == 1  # alpha's, set aside
        assert next(t for t in asyncio.all_tasks() if t.get_name() == "notify:steady") is steady_task
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "notify:old-hook"]

        await sink.up()
        bus.publish(attack("B", "alpha", EventType.ATTACK_START, "after the edit"))
        await await_until(lambda: mgr.status()["noc-hook"].delivered == 2 and mgr.status()["new-hook"].delivered == 1
                          and mgr.status()["steady"].delivered == 2, timeout=15, what="deliveries")
    assert [e.message for e in sink.events("/generic")] == ["queued before", "after the edit"]
    assert [e.message for e in sink.events("/new")] == ["after the edit"]
    assert [e.message for e in sink.events("/steady")] == ["queued before", "after the edit"]
    assert sink.events("/old") == [] and sink.events("/moved") == []  # removed; beta's gets no alpha event
    assert sink.bad_signatures == 0


async def test_appliance_without_notify_starts_notifiers_when_configured(tmp_path, sink):
    """The appliance started with no [notify]: the first configuration from SecureWatch creates
    and starts the manager, which stops with the appliance."""
    await sink.up()
    appliance = Appliance(parse_config(f'[appliance]\nstate_dir = "{tmp_path}"\n'))
    async with contextlib.AsyncExitStack() as lifetime:
        await appliance.start_notifiers(lifetime)  # the appliance's own start-up step
        assert appliance.notifiers is None and appliance.notify_config() == {}
        with pytest.raises(ValueError, match=r"notify\.webhook\[0\]\.url"):
            await appliance.reconfigure_notifiers({"webhook": [{"name": "x", "url": "ftp://h/", "secret": "s"}]})
        assert appliance.notifiers is None
        table = {"webhook": [_hook(sink.port, "noc-hook", "/generic")]}
        await appliance.reconfigure_notifiers(table)
        assert appliance.notifiers.running and appliance.notify_config() == table
        appliance.bus.publish(Event(EventType.SYSTEM, None, "hello NOC"))
        await await_until(lambda: appliance.notifiers.status()["noc-hook"].delivered == 1, what="delivery")
        manager = appliance.notifiers
    assert not manager.running
    assert [e.message for e in sink.events("/generic")] == ["hello NOC"]


# --- masking rules ------------------------------------------------------------------------

def test_secret_keys_are_exactly_the_parsed_secret_fields():
    """SECRET_KEYS names the raw keys; the parser wraps exactly those in `Secret`."""
    for receiver_type in (SyslogReceiver, SnmpReceiver, EmailReceiver, WebhookReceiver):
        kind = receiver_type.__name__.removesuffix("Receiver").lower()
        secret_fields = {f.name for f in dataclasses.fields(receiver_type) if "Secret" in str(f.type)}
        assert secret_fields == set(notify_admin.SECRET_KEYS[kind]), kind


def test_unmask_matches_by_name_or_by_position_when_unnamed():
    current = {"webhook": [{"url": "http://192.0.2.1/a", "secret": "s0"},
                           {"name": "noc", "url": "http://192.0.2.1/b", "secret": "s1"}]}
    new = {"webhook": [{"name": "noc", "url": MASK, "secret": "new"},   # moved to the front: by name
                       {"url": "http://192.0.2.1/c", "secret": MASK},  # unnamed: webhook-1, nothing there
                       {"name": "webhook-0", "url": MASK, "secret": MASK}]}
    merged, problems = notify_admin.unmask(new, current)
    assert merged["webhook"][0] == {"name": "noc", "url": "http://192.0.2.1/b", "secret": "new"}
    assert merged["webhook"][2] == {"name": "webhook-0", "url": "http://192.0.2.1/a", "secret": "s0"}
    assert problems == [f"notify.webhook[1].secret: is {MASK}, but this receiver has no current value to keep "
                        f"(matched by name); enter the value"]
    assert new["webhook"][0]["url"] == MASK  # the input is not modified


# --- the API ---------------------------------------------------------------------------------

SECRETS = {"community": "c0mmunity-2c", "auth_key": "v3-auth-key-1", "priv_key": "v3-priv-key-1",
           "password": "smtp-pass-1", "url": "http://192.0.2.20/hooks/T0/B0/slack-token",
           "secret": "hmac-secret-1", "routing_key": "pd-routing-key-1"}
TABLE = {
    "syslog": [{"name": "noc-syslog", "host": "192.0.2.10", "transport": "tcp", "port": 1514,
                "severity_map": {"critical": "alert"}}],
    "snmp": [{"name": "noc-trap", "host": "192.0.2.11", "community": SECRETS["community"]},
             {"name": "noc-v3", "host": "192.0.2.12", "version": "3", "user": "seawall",
              "auth_key": SECRETS["auth_key"], "priv_key": SECRETS["priv_key"]}],
    "email": [{"name": "noc-mail", "smtp_host": "192.0.2.13", "username": "noc", "password": SECRETS["password"],
               "from": "seawall@example.net", "to": ["noc@example.net"]}],
    "webhook": [{"url": SECRETS["url"], "kind": "slack"},  # unnamed: webhook-0
                {"name": "noc-hook", "url": "http://192.0.2.21/generic", "secret": SECRETS["secret"]},
                {"name": "pd", "kind": "pagerduty", "routing_key": SECRETS["routing_key"]}],
}


def _leaks(text: str) -> list[str]:
    return [name for name, value in SECRETS.items() if value in text] + (
        ["generic url"] if "192.0.2.21/generic" in text else [])


async def _call(http, method, url, body=None):
    async with http.request(method, url, json=body) as r:
        return r.status, await r.json()


async def test_api_round_trip_masks_keeps_secrets_and_audits_without_them(tmp_path):
    bus = EventBus()
    changes = bus.subscribe("test")
    async with service(tmp_path, appliance=None, bus=bus) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        noc = {"Authorization": f"Bearer {await add_token(store, 'noc')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            assert await _call(http, "GET", f"{url}/api/v1/notify") == (
                200, {"notify": {}, "version": None, "live": False})
            status, body = await _call(http, "PUT", f"{url}/api/v1/notify", TABLE)
            assert status == 200 and body["version"] == 1 and body["applied"] is False  # central: stored only
            assert not _leaks(json.dumps(body))
        async with aiohttp.ClientSession(headers=noc) as http, http.get(f"{url}/api/v1/notify") as r:
            text = await r.text()
            shown = json.loads(text)["notify"]
        assert r.status == 200 and not _leaks(text)
        assert shown["snmp"][1] == {**TABLE["snmp"][1], "auth_key": MASK, "priv_key": MASK}
        assert shown["webhook"][1] == {"name": "noc-hook", "url": MASK, "secret": MASK}
        assert shown["syslog"] == TABLE["syslog"]  # nothing secret there

        # The NOC's GET, sent back with one port and one password changed: the other secrets stay.
        shown["syslog"][0]["port"] = 2514
        shown["email"][0]["password"] = "smtp-pass-2"
        async with aiohttp.ClientSession(headers=admin) as http:
            status, body = await _call(http, "PUT", f"{url}/api/v1/notify", shown)
            assert status == 200 and body["version"] == 2, body
            version, stored = await store.notify_config()
            assert version == 2 and stored["syslog"][0]["port"] == 2514
            assert stored == {**TABLE, "syslog": [{**TABLE["syslog"][0], "port": 2514}],
                              "email": [{**TABLE["email"][0], "password": "smtp-pass-2"}]}
            audit_text = await (await http.get(f"{url}/api/v1/audit")).text()
        entries = [e for e in json.loads(audit_text)["entries"] if e["action"] == "notify.update"]
        assert [e["details"]["version"] for e in entries] == [2, 1]
        assert entries[0]["details"]["secrets_changed"] == ["noc-mail.password"]
        assert entries[0]["details"]["changed"] == ["noc-syslog", "noc-mail"]
        # Issue 16: the field-level diff, secrets masked (the changed password is only named above).
        assert entries[0]["details"]["diff"] == {"syslog.noc-syslog": {"port": {"old": TABLE["syslog"][0].get("port"),
                                                                                "new": 2514}}}
        assert set(entries[1]["details"]["secrets_changed"]) == {
            "noc-trap.community", "noc-v3.auth_key", "noc-v3.priv_key", "noc-mail.password", "webhook-0.url",
            "noc-hook.url", "noc-hook.secret", "pd.url", "pd.routing_key"}
        assert not _leaks(audit_text) and "smtp-pass-2" not in audit_text
        assert [v["action"] for v in await store.notify_config_versions()] == ["notify.update", "notify.update"]
        published = [changes.get_nowait() for _ in range(changes.qsize())]
        assert [(e.type, e.details["version"]) for e in published] == [(EventType.POLICY_CHANGE, 1),
                                                                       (EventType.POLICY_CHANGE, 2)]


async def test_api_validation_errors_name_the_key_and_change_nothing(tmp_path):
    async with service(tmp_path, appliance=None) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            assert (await _call(http, "PUT", f"{url}/api/v1/notify", TABLE))[0] == 200
            bad_port = {**TABLE, "syslog": [{**TABLE["syslog"][0], "port": 70000}]}
            assert await _call(http, "PUT", f"{url}/api/v1/notify", bad_port) == (422, {
                "error": "invalid notify configuration",
                "problems": ["notify.syslog[0].port: must be an integer in 1..65535, got 70000"]})
            renamed = {"webhook": [{"name": "renamed-hook", "url": MASK, "secret": MASK}]}
            status, body = await _call(http, "PUT", f"{url}/api/v1/notify", renamed)
            assert status == 422 and [p.split(":")[0] for p in body["problems"]] == [
                "notify.webhook[0].url", "notify.webhook[0].secret"]
            status, body = await _call(http, "PUT", f"{url}/api/v1/notify", {"pager": []})
            assert status == 422 and body["problems"][0].startswith("notify.pager: unknown key")
            status, body = await _call(http, "PUT", f"{url}/api/v1/notify", [1, 2])
            assert status == 400 and "JSON object" in body["error"]
            weak = {"snmp": [{**TABLE["snmp"][1], "auth_key": "short"}]}
            status, body = await _call(http, "PUT", f"{url}/api/v1/notify", weak)
            assert status == 422 and "notify.snmp[0].auth_key" in body["problems"][0] and "short" not in str(body)
        assert (await store.notify_config())[0] == 1


async def test_a_url_or_ca_file_that_cannot_be_used_is_refused_naming_the_key_by_api_page_and_file(tmp_path):
    """All three use the notifiers' parser. An unbalanced '[' in a webhook URL was a 500 from the
    API, a bare "Invalid IPv6 URL" on the page and a traceback from the config file; a ca_file
    that does not exist passed all three, and every alert failed later."""
    missing = tmp_path / "noc-ca.pem"
    toml = ('[[notify.webhook]]\nurl = "https://[hooks.example.net/seawall"\nsecret = "hmac-secret"\n'
            f'[[notify.email]]\nsmtp_host = "192.0.2.13"\nfrom = "seawall@example.net"\nto = ["noc@example.net"]\n'
            f'ca_file = "{missing}"\n')
    problems = ["notify.email[0].ca_file: " + f"{missing} does not exist or cannot be read (No such file or directory)",
                "notify.webhook[0].url: is not a valid URL: check its host part (an unbalanced '[' or ']' around an "
                "IPv6 address, or a character not allowed in a host name)"]
    with pytest.raises(ConfigError) as info:
        parse_config(toml)
    assert info.value.problems == problems
    # SecureWatch inside the appliance: the receivers run here, so their files must be here.
    appliance = Appliance(parse_config(f'[appliance]\nstate_dir = "{tmp_path / "state"}"\n'))
    async with contextlib.AsyncExitStack() as lifetime:
        await appliance.start_notifiers(lifetime)
        await _refused_by_api_and_page(tmp_path, appliance, toml, problems)
    # A central server (or SecureWatch without an appliance) runs no receivers: the CA file is the
    # sites' to have; the URL is still checked.
    async with service(tmp_path / "central", appliance=None) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        table = tomllib.loads(toml)["notify"]
        async with aiohttp.ClientSession(headers=admin) as http:
            assert await _call(http, "PUT", f"{url}/api/v1/notify", table) == (
                422, {"error": "invalid notify configuration", "problems": problems[1:]})
            status, _body = await _call(http, "PUT", f"{url}/api/v1/notify", {"email": table["email"]})
        assert status == 200 and (await store.notify_config())[1]["email"][0]["ca_file"] == str(missing)


async def _refused_by_api_and_page(tmp_path, appliance, toml: str, problems: list[str]) -> None:
    async with service(tmp_path, appliance=appliance, bus=appliance.bus) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            assert await _call(http, "PUT", f"{url}/api/v1/notify", tomllib.loads(toml)["notify"]) == (
                422, {"error": "invalid notify configuration", "problems": problems})
        await add_user(store, "ops", "admin")
        admin_http, csrf = await login(url, "ops")
        async with admin_http, admin_http.post(f"{url}/notify", data={"csrf_token": csrf, "notify_toml": toml}) as r:
            page = html.unescape(await r.text())
        assert r.status == 422 and all(p in page for p in problems)
        assert await store.notify_config() is None  # nothing saved


async def test_put_applies_to_the_running_notifiers_of_a_real_appliance(tmp_path, sink):
    """SecureWatch inside the appliance: the stored table is imported at start; a PUT keeps the
    NOC hook's queued event (same name and routing) and adds a receiver, which gets the next
    event: the POLICY_CHANGE that announces the edit."""
    noc_hook = _hook(sink.port, "noc-hook", "/generic")
    config = parse_config(f'[appliance]\nstate_dir = "{tmp_path / "state"}"\n'
                          f'[[notify.webhook]]\nname = "noc-hook"\nurl = "{noc_hook["url"]}"\n'
                          f'secret = "{HMAC_SECRET}"\n')
    appliance = Appliance(config)
    async with contextlib.AsyncExitStack() as lifetime:
        await appliance.start_notifiers(lifetime)
        manager = appliance.notifiers
        async with service(tmp_path, appliance=appliance, bus=appliance.bus) as (url, store, _):
            assert await store.notify_config() == (1, {"webhook": [noc_hook]})  # imported from the file
            appliance.bus.publish(attack("A", "alpha", EventType.ATTACK_START, "queued while down"))
            await await_until(lambda: manager.status()["noc-hook"].consecutive_failures >= 1, what="a failed try")
            admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
            async with aiohttp.ClientSession(headers=admin) as http:
                status, shown = await _call(http, "GET", f"{url}/api/v1/notify")
                assert status == 200 and shown["live"] is True and shown["notify"]["webhook"][0]["url"] == MASK
                edited = {"webhook": [{**shown["notify"]["webhook"][0], "timeout": 3.0},
                                      _hook(sink.port, "new-hook", "/new")]}
                status, body = await _call(http, "PUT", f"{url}/api/v1/notify", edited)
            assert status == 200 and body["applied"] is True, body
            assert appliance.notifiers is manager and list(manager.status()) == ["noc-hook", "new-hook"]
            assert manager.status()["noc-hook"].backlog >= 1  # the queued event survived the swap
            assert appliance.notify_config()["webhook"][0] == {**noc_hook, "timeout": 3.0}  # real secrets
            await sink.up()
            await await_until(lambda: len(sink.events("/new")) == 1 and len(sink.events("/generic")) == 2,
                              timeout=15, what="deliveries after the edit")
    assert [e.message for e in sink.events("/generic")] == ["queued while down",
                                                            "NOC receivers changed by token:1:test-admin"]
    assert [(e.type, e.message) for e in sink.events("/new")] == [
        (EventType.POLICY_CHANGE, "NOC receivers changed by token:1:test-admin")]
    assert sink.bad_signatures == 0


# --- the page ----------------------------------------------------------------------------------

async def test_page_admin_edits_noc_reads_tenant_sees_nothing(tmp_path):
    async with service(tmp_path) as (url, store, _):
        await store.save_notify_config(TABLE, "test", "seed")
        for name, role, tenant in (("ops", "admin", None), ("watch", "noc", None), ("alice", "tenant", "alpha")):
            await add_user(store, name, role, tenant, "write")
        tenant_http, tenant_csrf = await login(url, "alice")
        noc_http, noc_csrf = await login(url, "watch")
        admin_http, csrf = await login(url, "ops")
        async with tenant_http, noc_http, admin_http:
            assert (await tenant_http.get(f"{url}/notify")).status == 404
            assert (await tenant_http.post(f"{url}/notify", data={"csrf_token": tenant_csrf})).status == 404
            assert "/notify" not in await (await tenant_http.get(f"{url}/")).text()  # no nav link

            page = await (await noc_http.get(f"{url}/notify")).text()
            assert "readonly" in page and "Save and apply" not in page and 'data-receiver="noc-syslog"' in page
            assert not _leaks(page) and MASK in page
            r = await noc_http.post(f"{url}/notify", data={"csrf_token": noc_csrf, "notify_toml": ""})
            assert r.status == 403

            page = await (await admin_http.get(f"{url}/notify")).text()
            textarea = page.split('name="notify_toml"', 1)[1].split(">", 1)[1].split("</textarea>", 1)[0]
            text = html.unescape(textarea)
            assert tomllib.loads(text)["notify"] == notify_admin.mask(TABLE)

            r = await admin_http.post(f"{url}/notify", data={"csrf_token": csrf, "notify_toml": text + "\n[oops"})
            page = await r.text()
            assert r.status == 422 and 'data-field="notify_toml">TOML syntax' in page
            broken = text.replace("port = 1514", "port = 0")
            r = await admin_http.post(f"{url}/notify", data={"csrf_token": csrf, "notify_toml": broken})
            assert r.status == 422 and "notify.syslog[0].port: must be an integer in 1..65535" in await r.text()
            assert (await store.notify_config())[0] == 1

            r = await admin_http.post(f"{url}/notify", data={"csrf_token": csrf,
                                                             "notify_toml": text.replace("1514", "1515")})
            page = await r.text()
            assert r.status == 200 and "Saved as version 2" in page and not _leaks(page)
        assert (await store.notify_config())[1] == {**TABLE, "syslog": [{**TABLE["syslog"][0], "port": 1515}]}


async def test_stored_receivers_win_over_the_config_file_at_start(tmp_path, sink):
    """Edits made in SecureWatch survive an appliance restart with the old config file."""
    await sink.up()
    edited = {"webhook": [_hook(sink.port, "edited-hook", "/edited")]}
    appliance = Appliance(parse_config(f'[appliance]\nstate_dir = "{tmp_path / "state"}"\n'
                                       f'[[notify.syslog]]\nname = "file-syslog"\nhost = "127.0.0.1"\n'))
    async with contextlib.AsyncExitStack() as lifetime:
        await appliance.start_notifiers(lifetime)
        assert list(appliance.notifiers.status()) == ["file-syslog"]
        store_url = f"sqlite:///{tmp_path}/sw.db"
        store = await Store.open(store_url)
        await store.save_notify_config(edited, "ops", "notify.update")
        await store.close()
        async with service(tmp_path, database=store_url, appliance=appliance, bus=appliance.bus):
            assert list(appliance.notifiers.status()) == ["edited-hook"] and appliance.notify_config() == edited
            appliance.bus.publish(Event(EventType.SYSTEM, None, "after restart"))
            await await_until(lambda: sink.events("/edited"), what="delivery to the stored receiver")
