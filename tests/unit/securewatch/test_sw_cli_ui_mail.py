"""CLI (user add, token create, securewatch), the UI's policy form with field messages, and the
monthly report mailed to a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import email
import email.policy
import html
import os
import re
import subprocess
import sys
import time

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from test_sw_console_findings import policy_form
from test_sw_helpers import TENANTS, add_user, attack_events, login, service

from securewatch.mailer import ReportMailer
from securewatch.notify import parse_notify_config
from securewatch.reports import previous_month
from securewatch.store import Store
from tenants import TenantSet
from tests.support import await_until


def _config(tmp_path, listen="127.0.0.1:0"):
    path = tmp_path / "seawall.toml"
    path.write_text(f'[appliance]\nstate_dir = "{tmp_path}"\n[securewatch]\nlisten = "{listen}"\n'
                    f'database = "sqlite:///{tmp_path}/sw.db"\n'
                    '[[tenants]]\nid = "alpha"\nprefixes = ["198.51.100.0/25"]\n')
    return path


def _seawall(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.dirname(os.path.abspath(__file__))))))


async def test_cli_user_and_token_work_against_the_service(tmp_path):
    config = _config(tmp_path)
    r = _seawall("user", "add", "carol", "--role", "tenant", "--tenant", "alpha", "--access", "write",
                 "--config", str(config), stdin="s3cret-passw0rd\n")
    assert r.returncode == 0, r.stderr
    r = _seawall("user", "add", "dave", "--role", "tenant", "--config", str(config), stdin="s3cret-passw0rd\n")
    assert r.returncode == 2 and "tenant: required for role 'tenant'" in r.stderr
    r = _seawall("user", "add", "erin", "--role", "noc", "--config", str(config), stdin="short\n")
    assert r.returncode == 2 and "at least 8 characters" in r.stderr
    r = _seawall("token", "create", "--role", "tenant", "--tenant", "zeta", "--config", str(config))
    assert r.returncode == 2 and "no tenant 'zeta'" in r.stderr
    r = _seawall("token", "create", "--role", "noc", "--config", str(config))
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip().splitlines()[-1]

    async with service(tmp_path, database=f"sqlite:///{tmp_path}/sw.db") as (url, store, _):
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            me = await (await http.get(f"{url}/api/v1/me")).json()
            assert me["role"] == "noc"
        http, _csrf = await login(url, "carol", "s3cret-passw0rd")
        async with http:
            me = await (await http.get(f"{url}/api/v1/me")).json()
            assert (me["role"], me["tenant"], me["access"]) == ("tenant", "alpha", "write")
        assert "$argon2" in (await store.user("carol")).password_hash


async def test_cli_securewatch_central_mode(tmp_path):
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = _config(tmp_path, f"127.0.0.1:{port}")
    token = _seawall("token", "create", "--role", "admin", "--config", str(config)).stdout.strip().splitlines()[-1]
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "securewatch", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async def up():
                try:
                    async with http.get(f"http://127.0.0.1:{port}/api/v1/status") as r:
                        return r.status, await r.json()
                except aiohttp.ClientConnectionError:
                    return None
            status, body = await await_until(up, timeout=30, what="central server up")
            assert status == 503 and "central server" in body["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


async def test_policy_form_shows_field_errors_and_applies(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        await add_user(store, "carol", "tenant", "alpha", "write")
        http, csrf = await login(url, "carol")
        async with http:
            form = {"csrf_token": csrf, "prefixes": "192.0.2.0/24", "mode": "monitor", "sensitivity": "20",
                    "min_pps": "lots", "min_tenant_pps": "20000", "syn_rate_pps": "0", "udp_rate_pps": "0",
                    "icmp_rate_pps": "0", "fragment_rate_pps": "0", "reflection_filter": "auto", "syn_auth": "reset",
                    "auto_mitigation": "on", "escalate_rtbh": "on", "allow": "",
                    "deny": "src=198.18.0.0/15 proto=tcp dport=80"}
            r = await http.post(f"{url}/tenants/alpha", data=form)
            page = await r.text()
            assert r.status == 422
            assert 'data-field="min_pps">expected a whole number' in page
            form["min_pps"] = "2000"
            r = await http.post(f"{url}/tenants/alpha", data=form)
            page = await r.text()
            assert r.status == 422 and 'data-field="sensitivity">policy.sensitivity: must be between 0.1 and 10' in page
            assert appliance.tenants["alpha"].mode == "mitigate"  # nothing applied
            form["sensitivity"] = "2.5"
            r = await http.post(f"{url}/tenants/alpha", data=form)
            assert r.status == 200 and "and applied to the dataplane." in await r.text()
            alpha = appliance.tenants["alpha"]
            assert (alpha.mode, alpha.policy.sensitivity, alpha.policy.min_pps) == ("monitor", 2.5, 2000)
            assert str(alpha.deny[0]) == "src=198.18.0.0/15 proto=tcp dport=80"
            assert [str(p) for p in alpha.prefixes] == ["198.51.100.0/25"]  # a tenant cannot move its prefixes
            assert alpha.policy.syn_auth == "reset"  # the select's choice, not a checkbox's on/off
            # The upstream escalation switches are on the form too (issue 14): RTBH agreed, FlowSpec not.
            assert alpha.policy.escalate_rtbh and not alpha.policy.escalate_flowspec
            for path in ("/", "/tenants", "/incidents", "/reports"):
                assert (await http.get(f"{url}{path}")).status == 200


async def test_policy_form_saves_a_tenant_whose_acl_has_a_protocol_number(tmp_path):
    # The page writes proto=47 into the textarea and the browser posts it back as text.
    async with service(tmp_path) as (url, store, appliance):
        await add_user(store, "ops", "admin")
        http, csrf = await login(url, "ops")
        async with http:
            deny = "src=198.18.0.0/15 proto=47"
            r = await http.post(f"{url}/tenants/alpha", data=policy_form(csrf, deny=deny))
            assert r.status == 200, await r.text()
            async with http.get(f"{url}/tenants/alpha") as r:
                rendered = html.unescape(re.search(r'<textarea name="deny"[^>]*>([^<]*)<', await r.text()).group(1))
            assert rendered == deny
            r = await http.post(f"{url}/tenants/alpha", data=policy_form(csrf, deny=rendered, sensitivity="2"))
            assert r.status == 200, await r.text()
            alpha = appliance.tenants["alpha"]
            assert (alpha.policy.sensitivity, [e.to_dict() for e in alpha.deny]) == (
                2.0, [{"src": "198.18.0.0/15", "proto": 47}])
            for bad, problem in (("0", "0 is not a transport protocol"), ("256", "protocol number 256 is outside"),
                                 ("abc", "unknown protocol 'abc'")):
                r = await http.post(f"{url}/tenants/alpha", data=policy_form(csrf, deny=f"proto={bad}"))
                assert r.status == 422 and problem in html.unescape(await r.text()), bad


async def test_policy_form_refuses_a_key_given_twice_on_one_acl_line(tmp_path):
    async with service(tmp_path) as (url, store, appliance):
        await add_user(store, "ops", "admin")
        http, csrf = await login(url, "ops")
        async with http:
            allow = "src=192.0.2.0/24 proto=udp\nsrc=192.0.2.10/32 proto=tcp dport=80 dport=443"
            r = await http.post(f"{url}/tenants/alpha", data=policy_form(csrf, allow=allow))
            page = html.unescape(await r.text())
            assert r.status == 422
            assert 'data-field="allow">line 2: dport given twice (80 and 443); write one entry per line' in page
            assert appliance.tenants["alpha"].allow == ()   # nothing applied


async def test_incident_page_has_chart_timeline(tmp_path):
    async with service(tmp_path) as (url, store, _):
        for e in attack_events(pcap_dir=tmp_path):
            await store.record_event(e.to_dict())
        await add_user(store, "noc1", "noc")
        http, csrf = await login(url, "noc1")
        async with http:
            page = await (await http.get(f"{url}/incidents/inc-alpha-1")).text()
            # Drawn by the vendored uPlot from the incident's timeline (issue 16), no hand-drawn SVG.
            assert 'id="incident-chart"' in page and "<svg" not in page and "syn_flood" in page and "97.0 %" in page
            r = await http.post(f"{url}/incidents/inc-alpha-1/acknowledge", data={"csrf_token": csrf})
            assert r.status == 200 and "noc1 at" in await r.text()


class _Sink:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append((envelope.rcpt_tos, envelope.content))
        return "250 OK"


async def test_monthly_report_mailed_once_to_contacts(tmp_path):
    sink = _Sink()
    with socket_closed_port() as port:  # a free port, handed to the SMTP server
        pass
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    store = await Store.open(f"sqlite:///{tmp_path}/m.db")
    try:
        await store.save_tenant_set(TenantSet.from_dicts(TENANTS), "test", "seed")
        now = time.time()
        period = previous_month(now)
        for e in attack_events(t0=period.start + 3600):
            await store.record_event(e.to_dict())
        mailer = ReportMailer(mail_receiver(port))
        assert await mailer.send_due_reports(store, now) == 1  # beta has no contacts
        assert await mailer.send_due_reports(store, now) == 0  # already mailed this period
        (rcpt, content), = sink.messages
        assert rcpt == ["noc@alpha.example"]
        msg = email.message_from_bytes(content, policy=email.policy.default)
        assert msg["Subject"].strip() == f"Seawall DDoS protection: DDoS report {period.label} for Alpha Hosting, 1 attacks"
        text = msg.get_body(preferencelist=("plain",)).get_content()
        assert "Peak: 59.0 kpps\r\nPackets dropped: 400,000\r\n" in text   # issue 16: as the pages format
        attachment, = msg.iter_attachments()   # no PDF without a pdf_renderer
        assert attachment.get_filename().endswith(".csv") and b"inc-alpha-1" in attachment.get_content().encode()
    finally:
        await store.close()
        controller.stop()


async def test_report_mail_failure_is_retried_later(tmp_path):
    store = await Store.open(f"sqlite:///{tmp_path}/m.db")
    try:
        await store.save_tenant_set(TenantSet.from_dicts(TENANTS), "test", "seed")
        with socket_closed_port() as port:
            mailer = ReportMailer(mail_receiver(port))
            assert await mailer.send_due_reports(store) == 0
        assert not await store.report_mailed("alpha", previous_month(time.time()).label)
    finally:
        await store.close()


def mail_receiver(port):
    """The [[notify.email]] receiver whose server the report mail goes through."""
    return parse_notify_config({"email": [{"name": "reports", "smtp_host": "127.0.0.1", "smtp_port": port,
                                           "from": "securewatch@seawall.example", "to": ["noc@op.example"],
                                           "starttls": False, "timeout": 5}]}).receivers[0]


class socket_closed_port:  # noqa: N801 - used as a context manager
    """A loopback port nobody listens on."""

    def __enter__(self):
        import socket  # noqa: PLC0415

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


@pytest.mark.parametrize("period", ["2025-13", "2025-1", "2025-02-10..2025-02-01"])
def test_bad_periods(period):
    from securewatch.reports import parse_period  # noqa: PLC0415

    with pytest.raises(ValueError, match="period"):
        parse_period(period)
