"""Issue 12, items 8, 11, 13, 14, 15 and 16 through the real SecureWatch app on loopback:
masked secrets cannot be retargeted, policy numbers are bounded by what the dataplane holds,
partial policy updates merge, every problem comes in one answer, bad input is a 4xx (never a
500), and one tenant's report mail failure does not stop the others'."""

from __future__ import annotations

import html
import re
import time

import aiohttp
import pytest
import structlog
from aiosmtpd.controller import Controller
from test_notify_delivery import make_certs
from test_sw_cli_ui_mail import _Sink, mail_receiver, socket_closed_port
from test_sw_helpers import add_token, add_user, login, service

from dataplane.constants import MAX_ACL_PREFIXES
from securewatch import notify_admin
from securewatch.context import MAX_JSON_DEPTH, json_depth
from securewatch.mailer import ReportMailer
from securewatch.store import Store
from tenants import Tenant, TenantSet, parse_network

MASK = notify_admin.MASK
BOUND = "must be at most 4294967295 packets/s (the dataplane holds 32-bit rates)"
MAIL = {"name": "noc-mail", "smtp_host": "192.0.2.13", "smtp_port": 587, "username": "noc",
        "password": "smtp-pass-1", "from": "seawall@example.net", "to": ["noc@example.net"]}
HOOK = {"name": "noc-hook", "url": "https://192.0.2.21/generic", "secret": "hmac-secret-1"}
TRAP = {"name": "noc-trap", "host": "192.0.2.11", "community": "community-1"}
NOTIFY = {"email": [MAIL], "webhook": [HOOK], "snmp": [TRAP]}


async def _call(http, method, url, body=None, **kwargs):
    async with http.request(method, url, json=body, **kwargs) as r:
        return r.status, await r.json()


def _field_errors(page: str) -> list[tuple[str, str]]:
    return [(field, html.unescape(text)) for field, text in
            re.findall(r'<span class="field-error" data-field="(\w+)">([^<]*)</span>', page)]


# --- item 8: a masked secret cannot be sent somewhere else --------------------------------

@pytest.mark.parametrize(("kind", "change", "secret_key", "changed"), [
    ("email", {"smtp_host": "203.0.113.66", "starttls": False}, "password", "smtp_host, starttls"),
    ("email", {"smtp_port": 25}, "password", "smtp_port"),
    ("email", {"use_tls": True, "starttls": False, "ca_file": "ca.pem"}, "password",  # made below, in tmp_path
     "starttls, use_tls, ca_file"),
    ("webhook", {"url": "https://203.0.113.66/collect"}, "secret", "url"),
    ("snmp", {"host": "203.0.113.66"}, "community", "host"),
    ("snmp", {"port": 1162}, "community", "port"),
])
async def test_item8_masked_secret_with_a_new_destination_is_refused_by_the_api(tmp_path, kind, change,
                                                                                  secret_key, changed):
    if "ca_file" in change:  # a CA the parser can load: the secret's move is the only problem
        (tmp_path / "certs").mkdir()
        change = {**change, "ca_file": make_certs(tmp_path / "certs")[change["ca_file"]]}
    async with service(tmp_path, appliance=None) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            assert (await _call(http, "PUT", f"{url}/api/v1/notify", NOTIFY))[0] == 200
            status, shown = await _call(http, "GET", f"{url}/api/v1/notify")
            table = shown["notify"]  # secrets masked, as a client would send it back
            table[kind][0].update(change)
            status, body = await _call(http, "PUT", f"{url}/api/v1/notify", table)
            assert status == 422, body
            assert body["problems"] == [
                f"notify.{kind}[0].{secret_key}: is {MASK}, but this change moves where it goes ({changed} "
                f"changed); enter the {secret_key} again to send it there"]
            assert (await store.notify_config())[1] == NOTIFY  # nothing changed
            # Re-entering the secret is the way to move it.
            table[kind][0][secret_key] = "re-entered-secret"
            status, body = await _call(http, "PUT", f"{url}/api/v1/notify", table)
            assert status == 200, body
            assert (await store.notify_config())[1][kind][0][secret_key] == "re-entered-secret"


async def test_item8_masked_secret_kept_when_only_other_keys_change(tmp_path):
    async with service(tmp_path, appliance=None) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            assert (await _call(http, "PUT", f"{url}/api/v1/notify", NOTIFY))[0] == 200
            table = (await _call(http, "GET", f"{url}/api/v1/notify"))[1]["notify"]
            table["email"][0]["to"] = ["other-noc@example.net"]
            table["email"][0]["smtp_port"] = 587  # written out, but the same port
            table["webhook"][0]["timeout"] = 5.0
            status, body = await _call(http, "PUT", f"{url}/api/v1/notify", table)
            assert status == 200, body
            stored = (await store.notify_config())[1]
            assert stored["email"][0]["password"] == "smtp-pass-1" and stored["webhook"][0]["secret"] == "hmac-secret-1"


async def test_item8_masked_secret_with_a_new_destination_is_refused_by_the_form(tmp_path):
    async with service(tmp_path, appliance=None) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            assert (await _call(http, "PUT", f"{url}/api/v1/notify", NOTIFY))[0] == 200
        await add_user(store, "root", "admin")
        http, csrf = await login(url, "root")
        async with http:
            page = await (await http.get(f"{url}/notify")).text()
            text = html.unescape(re.search(r"<textarea[^>]*>(.*?)</textarea>", page, re.S).group(1))
            assert 'password = "********"' in text
            moved = text.replace('smtp_host = "192.0.2.13"', 'smtp_host = "203.0.113.66"\nstarttls = false')
            r = await http.post(f"{url}/notify", data={"csrf_token": csrf, notify_admin.TOML_FIELD: moved})
            page = await r.text()
            assert r.status == 422
            assert _field_errors(page) == [(notify_admin.TOML_FIELD, (
                f"notify.email[0].password: is {MASK}, but this change moves where it goes (smtp_host, starttls "
                f"changed); enter the password again to send it there"))]
        assert (await store.notify_config())[1] == NOTIFY


# --- item 11: numbers the dataplane can hold ----------------------------------------------

async def test_item11_policy_numbers_bounded_for_api_and_form(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        writer = {"Authorization": f"Bearer {await add_token(store, 'tenant', 'alpha', 'write')}"}
        async with aiohttp.ClientSession(headers=writer) as http:
            status, body = await _call(http, "PUT", f"{url}/api/v1/tenants/alpha/policy",
                                       {"policy": {"syn_rate_pps": 4294967306}})
            assert (status, body["problems"]) == (422, [f"tenant 'alpha': policy.syn_rate_pps: {BOUND}, got 4294967306"])
            status, body = await _call(http, "PUT", f"{url}/api/v1/tenants/alpha/policy",
                                       {"policy": {"min_pps": 10**400}})
            assert (status, body["problems"]) == (422, [f"tenant 'alpha': policy.min_pps: {BOUND}, got a 401-digit number"])
            for bad in ("NaN", "Infinity"):  # Python's JSON decoder takes these
                r = await http.put(f"{url}/api/v1/tenants/alpha/policy", data=f'{{"policy": {{"sensitivity": {bad}}}}}',
                                   headers={"Content-Type": "application/json"})
                problems = (await r.json())["problems"]
                assert r.status == 422 and problems[0].startswith("tenant 'alpha': policy.sensitivity: must be between")
        assert appliance.applied == []  # nothing reached the dataplane

        await add_user(store, "carol", "tenant", "alpha", "write")
        http, csrf = await login(url, "carol")
        async with http:
            form = _form(csrf, syn_rate_pps="4294967306", udp_rate_pps="9" * 5000)
            r = await http.post(f"{url}/tenants/alpha", data=form)
            assert r.status == 422
            assert _field_errors(await r.text()) == [("syn_rate_pps", f"policy.syn_rate_pps: {BOUND}, got 4294967306"),
                                                     ("udp_rate_pps", "must be at most 4294967295")]
        assert appliance.applied == []


async def test_item11_central_server_refuses_more_acl_entries_than_the_dataplane_holds(tmp_path):
    async with service(tmp_path, appliance=None) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        deny = [{"src": f"198.18.{i // 256 % 256}.{i % 256}/32"} for i in range(MAX_ACL_PREFIXES + 1)]
        async with aiohttp.ClientSession(headers=admin) as http:
            status, body = await _call(http, "PUT", f"{url}/api/v1/tenants/alpha/policy", {"deny": deny})
            assert (status, body["problems"]) == (422, [
                f"{MAX_ACL_PREFIXES + 1} IPv4 allow/deny source prefixes (after expansion) exceed the dataplane's "
                f"{MAX_ACL_PREFIXES}"])
            status, body = await _call(http, "PUT", f"{url}/api/v1/tenants/alpha/policy", {"deny": deny[:-1]})
            assert status == 200, body
            status, body = await _call(http, "PUT", f"{url}/api/v1/tenants/beta/policy", {"deny": deny[:1]})
            assert status == 422 and "exceed the dataplane's" in body["problems"][0]  # the total counts


def _form(csrf: str, **fields: str) -> dict[str, str]:
    form = {"csrf_token": csrf, "mode": "mitigate", "sensitivity": "1", "min_pps": "1000",
            "min_tenant_pps": "20000", "syn_rate_pps": "0", "udp_rate_pps": "0", "icmp_rate_pps": "0",
            "fragment_rate_pps": "0", "reflection_filter": "auto", "invalid_filters": "on", "syn_auth": "splice",
            "auto_mitigation": "on", "allow": "", "deny": ""}
    form.update(fields)
    return form


# --- item 13: partial policy updates merge ------------------------------------------------

async def test_item13_policy_put_merges_the_policy_keys_sent(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            status, body = await _call(http, "PUT", f"{url}/api/v1/tenants/alpha/policy",
                                       {"policy": {"min_pps": 5000, "syn_rate_pps": 20000}})
            assert status == 200, body
            status, body = await _call(http, "PUT", f"{url}/api/v1/tenants/alpha/policy", {"policy": {"sensitivity": 2}})
            assert status == 200, body
            assert (body["policy"]["sensitivity"], body["policy"]["min_pps"], body["policy"]["syn_rate_pps"]) == (
                2.0, 5000, 20000)
            policy = appliance.tenants["alpha"].policy
            assert (policy.sensitivity, policy.min_pps, policy.syn_rate_pps) == (2.0, 5000, 20000)
            # A key goes back to its default only when sent with it.
            status, body = await _call(http, "PUT", f"{url}/api/v1/tenants/alpha/policy", {"policy": {"min_pps": 1000}})
            assert (body["policy"]["min_pps"], body["policy"]["sensitivity"]) == (1000, 2.0)


# --- item 14: every problem in one answer -------------------------------------------------

async def test_item14_three_independent_errors_are_three_problems_everywhere(tmp_path):
    async with service(tmp_path, appliance=None) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            # The policy body: an unknown key, and two bad policy numbers.
            status, body = await _call(http, "PUT", f"{url}/api/v1/tenants/alpha/policy",
                                       {"colour": "red", "policy": {"sensitivity": 50, "min_pps": -1}})
            assert (status, body["problems"]) == (422, [
                "colour: unknown key (known: mode, policy, allow, deny, prefixes, contacts)",
                "tenant 'alpha': policy.sensitivity: must be between 0.1 and 10, got 50.0",
                "tenant 'alpha': policy.min_pps: expected a non-negative integer, got -1"])
            # A tenant body.
            status, body = await _call(http, "POST", f"{url}/api/v1/tenants", {
                "id": "gamma", "name": "Gamma\r\nBcc: x@example.com", "prefixes": ["192.0.2.0/24"],
                "policy": {"syn_rate_pps": 2**32}, "contacts": ["NOC team"]})
            assert (status, len(body["problems"])) == (422, 3), body
            assert [p.split(": ")[1] for p in body["problems"]] == ["name", "policy.syn_rate_pps", "contacts[0]"]
            # A notify table: three problems in one receiver.
            status, body = await _call(http, "PUT", f"{url}/api/v1/notify", {"email": [{
                "smtp_host": "192.0.2.13", "smtp_port": 0, "from": "seawall@example.net", "to": ["nobody"],
                "timeout": -1}]})
            assert (status, body["problems"]) == (422, [
                "notify.email[0].timeout: must be a number in 0.1..300.0, got -1",
                "notify.email[0].smtp_port: must be an integer in 1..65535, got 0",
                "notify.email[0].to: not an email address: 'nobody'"])

        await add_user(store, "root", "admin")
        http, csrf = await login(url, "root")
        async with http:
            r = await http.post(f"{url}/tenants/alpha", data=_form(
                csrf, prefixes="203.0.113.0/25", min_pps="lots", sensitivity="20", deny="src=198.18.0.0/33"))
            assert r.status == 422
            page = await r.text()
            assert sorted(field for field, _ in _field_errors(page)) == ["deny", "min_pps", "prefixes", "sensitivity"]
            assert "203.0.113.0/24 overlaps 203.0.113.0/25 of tenant &#39;alpha&#39;" in page  # set-wide checks too

            deep = "a = " + "[" * 100_000 + "]" * 100_000
            r = await http.post(f"{url}/notify", data={"csrf_token": csrf, notify_admin.TOML_FIELD: deep})
            assert r.status == 422 and _field_errors(await r.text()) == [(notify_admin.TOML_FIELD, "TOML nested too deeply")]


# --- item 15: bad input is a 4xx ----------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/v1/tenants"), ("PUT", "/api/v1/tenants/alpha"), ("PUT", "/api/v1/tenants/alpha/policy"),
    ("PUT", "/api/v1/notify"),
])
async def test_item15_json_nested_100k_deep_is_400(tmp_path, method, path):
    async with service(tmp_path, appliance=None) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            for body in ("[" * 100_000 + "]" * 100_000, '{"a":' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)):
                r = await http.request(method, f"{url}{path}", data=body, headers={"Content-Type": "application/json"})
                assert r.status == 400, await r.text()
                assert (await r.json())["error"] == f"request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)"
            r = await http.request(method, f"{url}{path}", data="9" * 5000, headers={"Content-Type": "application/json"})
            assert r.status == 400 and "not usable JSON" in (await r.json())["error"]


def test_item15_json_depth_counts_levels_without_recursion():
    assert (json_depth(1), json_depth([]), json_depth({"a": [1, {"b": {}}]})) == (0, 1, 4)
    deep: list = []
    for _ in range(200_000):
        deep = [deep]
    assert json_depth(deep) == 200_001


@pytest.mark.parametrize("period", ["9999-12", "0000-01", "1969-12", "0001-01-01..0001-01-02",
                                    "9998-12-01..9999-12-31", "2025-02-30..2025-03-01"])
async def test_item15_out_of_range_report_periods_are_400(tmp_path, period):
    async with service(tmp_path) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            status, body = await _call(http, "GET", f"{url}/api/v1/tenants/alpha/reports/{period}")
            assert status == 400 and body["error"].startswith("period: "), body
            assert (await http.get(f"{url}/api/v1/tenants/alpha/reports/9998-12")).status == 200


async def test_item15_superscript_digit_in_the_form_is_422_naming_the_field(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        await add_user(store, "carol", "tenant", "alpha", "write")
        http, csrf = await login(url, "carol")
        async with http:
            r = await http.post(f"{url}/tenants/alpha", data=_form(csrf, min_pps="²", icmp_rate_pps="٣",
                                                                    deny="proto=tcp dport=²\nproto=udp sport=" + "9" * 5000))
            assert r.status == 422
            assert sorted(_field_errors(await r.text())) == [
                ("deny", "deny[0]: dport: '²' is not a port or a range like '1024-65535'"),
                ("deny", "deny[1]: sport: '" + "9" * 39 + "... is not a port or a range like '1024-65535'"),
                ("icmp_rate_pps", "expected a whole number, 0 or more"),
                ("min_pps", "expected a whole number, 0 or more")]
        assert appliance.applied == []


# --- item 16: tenants named by receivers exist; one tenant's mail failure is only its own --

async def test_item16_webhook_for_an_unknown_tenant_is_refused_by_the_api(tmp_path):
    async with service(tmp_path, appliance=None) as (url, store, _):
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        async with aiohttp.ClientSession(headers=admin) as http:
            hook = {**HOOK, "tenants": ["alpha", "nosuch"]}
            status, body = await _call(http, "PUT", f"{url}/api/v1/notify", {"webhook": [hook]})
            assert (status, body["problems"]) == (422, ["notify.webhook[0].tenants: no tenant 'nosuch'"])
            hook["tenants"] = ["alpha"]
            assert (await _call(http, "PUT", f"{url}/api/v1/notify", {"webhook": [hook]}))[0] == 200


async def test_item16_one_tenants_mail_failure_does_not_stop_the_others(tmp_path):
    """A tenant whose report cannot be mailed (here a CR/LF name stored before names were
    validated: the Subject header refuses it) is logged; every tenant after it still gets its report."""
    sink = _Sink()
    with socket_closed_port() as port:
        pass
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    store = await Store.open(f"sqlite:///{tmp_path}/m.db")
    try:
        tenants = [Tenant("alpha", "Alpha\r\nBcc: victim@example.com", (parse_network("198.51.100.0/25"),),
                          contacts=("noc@alpha.example",)),
                   Tenant("beta", "Beta Shop", (parse_network("203.0.113.0/24"),), contacts=("noc@beta.example",))]
        mailer = ReportMailer(mail_receiver(port))
        with structlog.testing.capture_logs() as logs:
            assert await mailer.send_due_reports(store, time.time(), tenants=TenantSet(tenants)) == 1
        assert [rcpt for rcpt, _ in sink.messages] == [["noc@beta.example"]]
        failed = [e for e in logs if e["event"] == "report.mail_failed"]
        assert [(e["tenant"], e["log_level"]) for e in failed] == [("alpha", "error")]
        assert "linefeed or carriage return" in failed[0]["error"]
    finally:
        await store.close()
        controller.stop()
