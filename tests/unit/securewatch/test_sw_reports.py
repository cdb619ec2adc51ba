"""Customer reports (issue 16, Deliver 5): what a report holds, the operator's branding (one
validation for the config file, the API and the UI), who may read which report, and the monthly
report mail (scheduled once per tenant and month, retried while the mail server is down, visible).
SMTP is a real aiosmtpd server; the PDF is rendered in the browser tier (tests/browser/test_reports.py)."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import email
import email.policy
import struct
import time

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from test_sw_cli_ui_mail import _Sink, mail_receiver, socket_closed_port
from test_sw_helpers import TENANTS, add_user, attack_events, login, running_app, settings

from securewatch import reports_store, series
from securewatch.app import create_app
from securewatch.mailer import ReportMailer
from securewatch.reports import build_report, parse_period, previous_month
from securewatch.reports_config import ReportSettings, parse_report_settings
from securewatch.store import Store
from tenants import ConfigError, TenantSet

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64        # the magic is what is checked; a few bytes of body
DAY = 86400


def _frame(src: str, sport: int, dport: int, length: int = 60) -> bytes:
    """Ethernet + IPv4 + UDP, padded to `length` bytes."""
    ip_src = bytes(int(x) for x in src.split("."))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, length - 14, 0, 0, 57, 17, 0, ip_src, bytes([198, 51, 100, 10]))
    udp = struct.pack("!HHHH", sport, dport, length - 34, 0)
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp
    return frame + b"\x00" * (length - len(frame))


def _pcap(path, frames):
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, f in enumerate(frames):
        out.append(struct.pack("<IIII", 1000 + i, 0, len(f), len(f)) + f)
    path.write_bytes(b"".join(out))


async def _seed_attack(store, tmp_path, t0, *, incident="inc-alpha-1"):
    """One attack on alpha at t0: nothing dropped for its first 3 s (mitigated after 3 s), 2,000 pps
    passed each second, a capture of 40 sampled packets from two sources."""
    pcap_dir = tmp_path / "pcap"
    pcap_dir.mkdir(exist_ok=True)
    for e in attack_events(incident, t0=t0, pcap_dir=pcap_dir):
        d = e.to_dict()
        for p in d["details"].get("series", []):
            if p["t"] < t0 + 3:
                p["dropped_pps"] = 0.0
        await store.record_event(d)
    _pcap(pcap_dir / f"{incident}-dropped.pcap",
          [_frame("198.18.0.1", 53, 28960)] * 30 + [_frame("198.18.7.9", 123, 28960)] * 10)
    return pcap_dir


async def test_report_holds_mitigation_time_what_got_through_rules_servers_and_talkers(tmp_path):
    store = await Store.open(f"sqlite:///{tmp_path}/r.db")
    try:
        await store.save_tenant_set(TenantSet.from_dicts(TENANTS), "test", "seed")
        period = parse_period("2026-11")
        t0 = period.start + 5 * DAY
        pcap_dir = await _seed_attack(store, tmp_path, t0)
        await store.add_traffic("alpha", [{"time": t0 + i, "passed_pps": 2000.0, "dropped_pps": 50000.0,
                                           "passed_bps": 1.6e7, "dropped_bps": 4e8} for i in range(120)])
        zeros = [0.0] * len(series.CLASSES)
        await store.run(series.add_destination_minutes, [
            {"tenant": "alpha", "address": addr, "time": int(t0) // 60 * 60, "pps": zeros, "dropped_pps": drop,
             "mean": zeros, "sigma": zeros, "threshold": zeros, "max_pps": peak, "samples": 60}
            for addr, peak, drop in (("198.51.100.10", 59000.0, 57000.0), ("198.51.100.20", 800.0, 0.0))])

        report = await build_report(store, "alpha", "Alpha Hosting", period, time.time(),
                                    pcap_root=pcap_dir.resolve())
        attack, = report.attacks
        assert attack["mitigation_s"] == 3.0                       # first second with traffic dropped
        assert attack["packets_passed"] == 10 * 2000                # 10 points of 2,000 pps, one second each
        assert attack["rules"] == ["TCP to 198.51.100.10, flags S"]
        assert len(attack["chart"]["time"]) == 10 and max(attack["chart"]["attack_pps"]) == 57000.0
        summary = report.summary
        assert (summary["median_mitigation_s"], summary["slowest_mitigation_s"]) == (3.0, 3.0)
        assert summary["packets_passed_during_attacks"] == 20000
        assert [s["address"] for s in report.servers] == ["198.51.100.10", "198.51.100.20"]
        assert report.servers[0] == {"address": "198.51.100.10", "peak_pps": 59000.0, "peak_dropped_pps": 57000.0,
                                     "attacks": 1}
        assert report.talkers["samples"] == 40
        assert report.talkers["sources"][0] == {"key": "198.18.0.1", "samples": 30, "share": 0.75}
        assert report.talkers["destination_ports"][0]["key"] == "UDP 28960"
        assert len(report.chart["time"]) == 1 and report.chart["dropped_bps"][0] == 4e8   # one hour rollup
        csv_text = report.to_csv()
        assert "talker,sources,198.18.0.1,30,0.75" in csv_text and "server,198.51.100.10" in csv_text
        # A short range is charted per minute.
        short = await build_report(store, "alpha", "Alpha Hosting",
                                   parse_period(f"{_day(t0)}..{_day(t0)}"), time.time())
        assert len(short.chart["time"]) == 2 and short.talkers == {}   # no pcap_root: no talkers
    finally:
        await store.close()


def _day(ts):
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%d")


def _report_settings(**values):
    problems: list[str] = []
    found = parse_report_settings(values, problems)
    assert problems == []
    return found


@pytest.fixture
async def branded(tmp_path):
    """SecureWatch with [securewatch.reports] branding from the config file, no PDF renderer."""
    logo = tmp_path / "logo.png"
    logo.write_bytes(PNG)
    reports = _report_settings(operator_name="Example Networks", logo=str(logo), primary_colour="#22543D")
    store = await Store.open(f"sqlite:///{tmp_path}/sw.db")
    try:
        await store.save_tenant_set(TenantSet.from_dicts(TENANTS), "test", "seed")
        for e in attack_events(t0=parse_period("2026-11").start + 3600):
            await store.record_event(e.to_dict())
        await add_user(store, "admin", "admin")
        await add_user(store, "carol", "tenant", "alpha")
        app = create_app(dataclasses.replace(settings(tmp_path), reports=reports), store=store, appliance=None)
        async with running_app(app) as url:
            yield url, store
    finally:
        await store.close()


async def test_report_html_carries_the_branding_and_no_inline_code_and_pdf_needs_a_renderer(branded):
    url, _ = branded
    http, _ = await login(url, "admin")
    async with http:
        r = await http.get(f"{url}/api/v1/tenants/alpha/reports/2026-11", params={"format": "html"})
        page = await r.text()
        assert r.status == 200 and "Example Networks" in page and "DDoS protection report: Alpha Hosting" in page
        assert "data:image/png;base64," + base64.b64encode(PNG).decode() in page
        # The console's policy allows no inline code: styles come from files, colours from branding.css.
        assert "<script" not in page and "style=" not in page and "<style" not in page
        assert '<link rel="stylesheet" href="/reports/branding.css">' in page
        css = await (await http.get(f"{url}/reports/branding.css")).text()
        assert "--primary: #22543d;" in css and "--accent: #c53030;" in css
        r = await http.get(f"{url}/api/v1/tenants/alpha/reports/2026-11", params={"format": "pdf"})
        assert r.status == 503 and "pdf_renderer" in (await r.json())["error"]
        page = await (await http.get(f"{url}/reports")).text()
        assert "format=pdf" not in page and "PDF reports are off" in page


BAD_BRANDING = [
    ("primary_colour", "#ffff00", "#ffff00 has a contrast of 1.1:1 with white; at least 4.5:1 is needed"),
    ("accent_colour", "blue", "expected a colour as #rrggbb, got 'blue'"),
    ("operator_name", "Evil\r\nBcc: x@example.com", "must not contain control characters"),
    ("logo", b"GIF89a....", "not a PNG or JPEG image"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_BRANDING)
async def test_branding_is_validated_the_same_in_config_file_api_and_ui(branded, tmp_path, key, value, message):
    url, _ = branded
    # The config file (the logo as a file path).
    if key == "logo":
        path = tmp_path / "logo.gif"
        path.write_bytes(value)
        file_value = str(path)
    else:
        file_value = value
    config = tmp_path / "seawall.toml"
    config.write_text(f'[appliance]\nstate_dir = "{tmp_path}"\n[securewatch.reports]\n{key} = {_toml(file_value)}\n'
                      '[[tenants]]\nid = "alpha"\nprefixes = ["198.51.100.0/25"]\n')
    from appliance.config import load_config  # noqa: PLC0415

    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert f"[securewatch.reports] {key}: " in str(refused.value) and message in str(refused.value)

    http, csrf = await login(url, "admin")
    async with http:
        # The API (the logo as a data: URI).
        api_value = f"data:image/png;base64,{base64.b64encode(value).decode()}" if key == "logo" else value
        r = await http.put(f"{url}/api/v1/reports/branding", json={key: api_value}, headers={"X-CSRF-Token": csrf})
        body = await r.json()
        assert r.status == 422 and len(body["problems"]) == 1
        assert body["problems"][0].startswith(f"branding.{key}: ") and message in body["problems"][0]
        # The UI form (the logo as an uploaded file).
        form = aiohttp.FormData()
        form.add_field("csrf_token", csrf)
        for field, current in (("operator_name", "Example Networks"), ("primary_colour", "#22543d"),
                               ("accent_colour", "#c53030")):
            form.add_field(field, value if field == key else current)
        if key == "logo":
            form.add_field("logo", value, filename="logo.gif", content_type="image/gif")
        r = await http.post(f"{url}/reports/branding", data=form, allow_redirects=False)
        page = await r.text()
        assert r.status == 422 and f"branding.{key}: " in page
        assert message.replace("'", "&#39;") in page or message in page
        # Nothing was saved: the config file's branding still holds.
        assert (await (await http.get(f"{url}/api/v1/reports/branding")).json())["operator_name"] == "Example Networks"


def _toml(value):
    return '"' + value.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace('"', '\\"') + '"'


async def test_branding_saved_through_api_and_ui_wins_over_the_config_file_until_reset(branded):
    url, _ = branded
    http, csrf = await login(url, "admin")
    async with http:
        jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 32
        r = await http.put(f"{url}/api/v1/reports/branding", headers={"X-CSRF-Token": csrf},
                           json={"operator_name": "Other Net", "logo": "data:image/jpeg;base64,"
                                 + base64.b64encode(jpeg).decode()})
        assert r.status == 200 and (await r.json())["primary_colour"] == "#22543d"   # untouched keys keep theirs
        page = await (await http.get(f"{url}/api/v1/tenants/alpha/reports/2026-11?format=html")).text()
        assert "Other Net" in page and "data:image/jpeg;base64," in page
        form = aiohttp.FormData()
        for field, value in (("csrf_token", csrf), ("operator_name", "Form Net"), ("primary_colour", "#2A4365"),
                             ("accent_colour", "#9B2C2C"), ("remove_logo", "on")):
            form.add_field(field, value)
        r = await http.post(f"{url}/reports/branding", data=form, allow_redirects=False)
        assert r.status == 302
        saved = await (await http.get(f"{url}/api/v1/reports/branding")).json()
        assert saved == {"operator_name": "Form Net", "logo": None, "primary_colour": "#2a4365",
                         "accent_colour": "#9b2c2c"}
        assert (await http.delete(f"{url}/api/v1/reports/branding", headers={"X-CSRF-Token": csrf})).status == 200
        assert (await (await http.get(f"{url}/api/v1/reports/branding")).json())["operator_name"] == "Example Networks"
        audit = await (await http.get(f"{url}/api/v1/audit")).json()
        assert {"reports.branding", "reports.branding_reset"} <= {e["action"] for e in audit["entries"]}


async def test_tenant_user_reads_its_own_reports_and_mail_state_only(branded):
    url, store = branded
    await reports_store.schedule(store, "2026-11", [("alpha", ["noc@alpha.example"]), ("beta", ["b@beta.example"])],
                                 time.time())
    http, csrf = await login(url, "carol")
    async with http:
        for fmt in ("json", "csv", "html"):
            assert (await http.get(f"{url}/api/v1/tenants/alpha/reports/2026-11?format={fmt}")).status == 200
            assert (await http.get(f"{url}/api/v1/tenants/beta/reports/2026-11?format={fmt}")).status == 404
        assert (await http.get(f"{url}/api/v1/tenants/beta/reports/2026-11?format=pdf")).status == 404
        r = await http.get(f"{url}/reports/view", params={"tenant": "beta", "from": "2026-11-01", "to": "2026-11-10"},
                           allow_redirects=False)
        assert r.status == 404
        r = await http.get(f"{url}/reports/view", params={"tenant": "alpha", "from": "2026-11-01", "to": "2026-11-10",
                                                          "format": "csv"}, allow_redirects=False)
        assert r.headers["Location"] == "/api/v1/tenants/alpha/reports/2026-11-01..2026-11-10?format=csv"
        mailings = (await (await http.get(f"{url}/api/v1/reports/mailings")).json())["mailings"]
        assert [(m["tenant"], m["state"]) for m in mailings] == [("alpha", "pending")]
        page = await (await http.get(f"{url}/reports")).text()
        assert "Alpha Hosting" in page and "Beta Shop" not in page and "b@beta.example" not in page
        assert 'id="branding-form"' not in page     # the branding is the operator's
        assert (await http.get(f"{url}/api/v1/reports/branding")).status == 403
        form = aiohttp.FormData()
        form.add_field("csrf_token", csrf)
        form.add_field("operator_name", "Carol's Net")
        assert (await http.post(f"{url}/reports/branding", data=form, allow_redirects=False)).status == 403


# -- the schedule -------------------------------------------------------------------------------

class _Refusing(_Sink):
    """A mail server that refuses every message for good (550) until told otherwise."""

    refuse = True

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        if self.refuse:
            return "550 mailbox unavailable"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(f"sqlite:///{tmp_path}/m.db")
    await s.save_tenant_set(TenantSet.from_dicts(TENANTS), "test", "seed")
    try:
        yield s
    finally:
        await s.close()


def _smtp(handler):
    with socket_closed_port() as port:
        pass
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    return controller, port


async def _rows(store):
    return {(r["tenant"], r["period"]): r for r in await reports_store.deliveries(store, tenants=None, limit=100)}


async def test_report_mail_goes_once_per_tenant_and_month_across_restarts(tmp_path):
    sink = _Sink()
    controller, port = _smtp(sink)
    store = await Store.open(f"sqlite:///{tmp_path}/m.db")
    await store.save_tenant_set(TenantSet.from_dicts(TENANTS), "test", "seed")
    try:
        now = time.time()
        period = previous_month(now).label
        assert await ReportMailer(mail_receiver(port)).send_due_reports(store, now) == 1
        await store.close()
        # A restart: a new process, the same database; and a second SecureWatch on it at the same time.
        reopened = await Store.open(f"sqlite:///{tmp_path}/m.db")
        try:
            first, second = ReportMailer(mail_receiver(port)), ReportMailer(mail_receiver(port))
            assert await first.send_due_reports(reopened, now + 60) == 0
            assert await second.send_due_reports(reopened, now + 120) == 0
            row = (await _rows(reopened))[("alpha", period)]
            assert (row["state"], row["attempts"], row["recipients"]) == ("sent", 1, ["noc@alpha.example"])
        finally:
            await reopened.close()
        (_, content), = sink.messages
        msg = email.message_from_bytes(content, policy=email.policy.default)
        assert msg["Message-ID"] == f"<report-alpha-{period}@seawall.invalid>"   # the same on any resend
    finally:
        controller.stop()


async def test_report_mail_to_a_server_that_is_down_is_retried_with_backoff_and_shown(store):
    now = time.time()
    period = previous_month(now).label
    with socket_closed_port() as port:
        mailer = ReportMailer(mail_receiver(port))
        assert await mailer.send_due_reports(store, now) == 0
        row = (await _rows(store))[("alpha", period)]
        assert row["state"] == "pending" and row["attempts"] == 1 and "smtp 127.0.0.1" in row["last_error"]
        assert now + 30 <= row["next_attempt"] <= now + 60            # the first retry: 30 to 60 s later
        assert await mailer.send_due_reports(store, now + 20) == 0   # not due yet: no attempt
        assert (await _rows(store))[("alpha", period)]["attempts"] == 1
        assert await mailer.send_due_reports(store, row["next_attempt"]) == 0
        row = (await _rows(store))[("alpha", period)]
        assert row["attempts"] == 2 and row["next_attempt"] >= now + 60   # the delay grows
    sink = _Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        assert await mailer.send_due_reports(store, row["next_attempt"]) == 1
        row = (await _rows(store))[("alpha", period)]
        assert (row["state"], row["attempts"], len(sink.messages)) == ("sent", 3, 1)
    finally:
        controller.stop()


async def test_report_mail_refused_for_good_is_failed_until_the_operator_retries(store):
    handler = _Refusing()
    controller, port = _smtp(handler)
    try:
        now = time.time()
        period = previous_month(now).label
        mailer = ReportMailer(mail_receiver(port))
        assert await mailer.send_due_reports(store, now) == 0
        row = (await _rows(store))[("alpha", period)]
        assert row["state"] == "failed" and "550 mailbox unavailable" in row["last_error"]
        assert await mailer.send_due_reports(store, now + 7 * DAY) == 0     # never again by itself
        assert (await _rows(store))[("alpha", period)]["attempts"] == 1
        handler.refuse = False
        assert await reports_store.retry_now(store, "alpha", period, now + 10)
        assert await mailer.send_due_reports(store, now + 10) == 1
        assert (await _rows(store))[("alpha", period)]["state"] == "sent"
    finally:
        controller.stop()


class _RefusingOne(_Sink):
    """A mail server that has no mailbox for one of the contacts (550 to its RCPT TO)."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 - aiosmtpd's hook
        if address == "gone@alpha.example":
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"


async def test_report_mail_partly_refused_is_sent_once_and_names_the_refused_contact(store):
    """The other contact has the report: it is not sent again, and the refused one is the row's error."""
    tenants = [{**TENANTS[0], "contacts": ["noc@alpha.example", "gone@alpha.example"]}, *TENANTS[1:]]
    await store.save_tenant_set(TenantSet.from_dicts(tenants), "test", "two contacts")
    handler = _RefusingOne()
    controller, port = _smtp(handler)
    try:
        now = time.time()
        period = previous_month(now).label
        mailer = ReportMailer(mail_receiver(port))
        assert await mailer.send_due_reports(store, now) == 1
        row = (await _rows(store))[("alpha", period)]
        assert (row["state"], row["attempts"]) == ("sent", 1)
        assert row["last_error"] == "gone@alpha.example refused it: 550 5.1.1 no such mailbox"
        assert [rcpts for rcpts, _ in handler.messages] == [["noc@alpha.example"]]
        assert await mailer.send_due_reports(store, now + 7 * DAY) == 0      # not again
    finally:
        controller.stop()


async def test_report_mail_waits_for_mail_day_and_cancels_for_removed_tenants(store):
    sink = _Sink()
    controller, port = _smtp(sink)
    try:
        mailer = ReportMailer(mail_receiver(port), ReportSettings(mail_day=10))
        ninth = datetime.datetime(2026, 12, 9, 12, tzinfo=datetime.UTC).timestamp()
        assert await mailer.send_due_reports(store, ninth) == 0 and await _rows(store) == {}
        with socket_closed_port() as closed:
            down = ReportMailer(mail_receiver(closed), ReportSettings(mail_day=10))
            assert await down.send_due_reports(store, ninth + DAY) == 0     # scheduled on the 10th; fails
        assert (await _rows(store))[("alpha", "2026-11")]["state"] == "pending"
        await store.save_tenant_set(TenantSet.from_dicts(TENANTS[1:]), "test", "alpha leaves")
        assert await mailer.send_due_reports(store, ninth + 2 * DAY) == 0
        row = (await _rows(store))[("alpha", "2026-11")]
        assert (row["state"], row["last_error"]) == ("cancelled", "the tenant was removed")
        assert sink.messages == []
    finally:
        controller.stop()


def test_report_settings_refuse_bad_mail_day_and_renderer(tmp_path):
    problems: list[str] = []
    parse_report_settings({"mail_day": 31, "pdf_renderer": str(tmp_path / "nochromium"), "colour": "#000000"},
                          problems)
    assert problems == [
        "[securewatch.reports] colour: unknown key (did you mean 'accent_colour'?)",
        "[securewatch.reports] mail_day: expected a whole number from 1 to 28 (a day every month has), got 31",
        f"[securewatch.reports] pdf_renderer: '{tmp_path / 'nochromium'}' is not an executable file",
    ]
