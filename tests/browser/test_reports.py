"""Customer reports (issue 16, Deliver 5 and 7) with Debian's chromium: the PDF printed by the server
(`[securewatch.reports] pdf_renderer`) read back with pypdf (page count, text), the branding set in
the page by the operator and seen in the tenant's download, the report document passing axe at
390 px and 1280 px, and the monthly mail carrying the PDF."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import io
import pathlib
import sys
import time

import pypdf
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "unit" / "securewatch"))
from test_sw_cli_ui_mail import _Sink, mail_receiver, socket_closed_port  # noqa: E402
from test_sw_helpers import TENANTS, add_user, attack_events, login, running_app, settings  # noqa: E402

from securewatch.app import create_app  # noqa: E402
from securewatch.mailer import ReportMailer  # noqa: E402
from securewatch.reports import previous_month  # noqa: E402
from securewatch.reports_config import parse_report_settings  # noqa: E402
from securewatch.store import Store  # noqa: E402
from tenants import TenantSet  # noqa: E402
from tests.browser.conftest import SCREENSHOTS  # noqa: E402
from tests.browser.test_quality_bar import AXE, AXE_RUN, BLOCKING, DESKTOP, PHONE  # noqa: E402
from tests.browser.test_quality_bar import login as browser_login  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
# A 1x1 PNG (a real image, so the browser decodes the logo it shows).
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360f8cf000000030101005c0d3a0b0000000049454e44ae426082")


def _pdf_text(data: bytes) -> tuple[int, str]:
    reader = pypdf.PdfReader(io.BytesIO(data))
    return len(reader.pages), "\n".join(page.extract_text() for page in reader.pages)


def _reports(**extra):
    problems: list[str] = []
    found = parse_report_settings({"operator_name": "Example Networks", "pdf_renderer": CHROMIUM, **extra}, problems)
    assert problems == []
    return found


@pytest.fixture
async def deployment(tmp_path):
    """SecureWatch (central mode) printing PDFs with chromium; alpha attacked last month, 40 days of traffic."""
    store = await Store.open(f"sqlite:///{tmp_path}/sw.db")
    period = previous_month(time.time())
    try:
        await store.save_tenant_set(TenantSet.from_dicts(TENANTS), "test", "seed")
        for e in attack_events(t0=period.start + 86400 + 600):
            await store.record_event(e.to_dict())
        await store.add_traffic("alpha", [{"time": period.start + 3600 * h + s, "passed_pps": 20000.0 + 50 * h,
                                           "dropped_pps": 50000.0 if h == 24 else 0.0, "passed_bps": 1.6e8,
                                           "dropped_bps": 4e8 if h == 24 else 0.0}
                                          for h in range(0, 28 * 24, 6) for s in range(0, 120, 10)])
        await add_user(store, "ops", "admin")
        await add_user(store, "carol", "tenant", "alpha")
        app = create_app(dataclasses.replace(settings(tmp_path), reports=_reports()), store=store, appliance=None)
        async with running_app(app) as url:
            yield url, store, period
    finally:
        await store.close()


async def test_pdf_report_is_printed_by_chromium_for_the_tenants_own_users_only(deployment):
    url, _, period = deployment
    http, _ = await login(url, "carol")
    async with http:
        r = await http.get(f"{url}/api/v1/tenants/alpha/reports/{period.label}", params={"format": "pdf"})
        assert r.status == 200 and r.content_type == "application/pdf", await r.text()
        assert r.headers["Content-Disposition"] == f'attachment; filename="seawall-report-alpha-{period.label}.pdf"'
        pages, text = _pdf_text(await r.read())
        assert (await http.get(f"{url}/api/v1/tenants/beta/reports/{period.label}?format=pdf")).status == 404
    assert pages >= 2, pages
    for expected in ("Example Networks", "DDoS protection report: Alpha Hosting", "syn_flood", "Time to mitigate",
                     "TCP to 198.51.100.10", "Most attacked", "198.51.100.10", "59.0 kpps"):
        assert expected in text, (expected, text[:2000])


async def test_branding_set_in_the_page_reaches_the_tenants_pdf_and_the_report_passes_axe(deployment, browser,
                                                                                           tmp_path):
    url, _, period = deployment
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    logo = tmp_path / "logo.png"
    logo.write_bytes(PNG)
    context = await browser.new_context(viewport={"width": DESKTOP, "height": 900}, accept_downloads=True)
    page = await context.new_page()
    await browser_login(page, url, "ops")
    await page.goto(f"{url}/reports")
    form = page.locator("#branding-form")
    await form.locator("input[name=operator_name]").fill("Harbour Networks")
    await form.locator("input[name=primary_colour]").fill("#ffff00")        # too light for white text
    await form.locator("button[type=submit]").click()
    assert "branding.primary_colour: #ffff00 has a contrast of 1.1:1" in await page.inner_text("main")
    await page.goto(f"{url}/reports")
    await form.locator("input[name=operator_name]").fill("Harbour Networks")
    await form.locator("input[name=primary_colour]").fill("#234E52")
    await form.locator("input[name=logo]").set_input_files(str(logo))
    await form.locator("button[type=submit]").click()
    await page.wait_for_selector("text=Branding saved")
    assert await page.locator("img.logo-preview").count() == 1
    await page.screenshot(path=str(SCREENSHOTS / "reports-admin.png"), full_page=True)
    await context.close()

    # The tenant's user: the page lists its own tenant only; the PDF carries the operator's new name.
    context = await browser.new_context(viewport={"width": DESKTOP, "height": 900}, accept_downloads=True)
    page = await context.new_page()
    await browser_login(page, url, "carol")
    await page.goto(f"{url}/reports")
    assert "Beta Shop" not in await page.inner_text("main")
    async with page.expect_download() as download:
        await page.click(f"a[href='/api/v1/tenants/alpha/reports/{period.label}?format=pdf']")
    pdf = (await (await download.value).path()).read_bytes()
    _, text = _pdf_text(pdf)
    assert "Harbour Networks" in text and "Alpha Hosting" in text
    # Any dates, through the form.
    await page.fill("#range-form input[name=from]", time.strftime("%Y-%m-%d", time.gmtime(period.start)))
    await page.fill("#range-form input[name=to]", time.strftime("%Y-%m-%d", time.gmtime(period.start + 6 * 86400)))
    await page.click("#range-form button[type=submit]")
    await page.wait_for_selector("header.band")
    assert "DDoS protection report: Alpha Hosting" in await page.inner_text("body")
    await context.close()

    # The report document itself meets the quality bar: no overflow at 390 px, axe without serious findings.
    problems = []
    for width in (PHONE, DESKTOP):
        context = await browser.new_context(viewport={"width": width, "height": 900}, bypass_csp=True)
        page = await context.new_page()
        await browser_login(page, url, "carol")
        await page.goto(f"{url}/api/v1/tenants/alpha/reports/{period.label}?format=html")
        await page.wait_for_load_state("load")
        assert await page.locator("header.band img").count() == 1
        scroll = await page.evaluate("document.scrollingElement.scrollWidth")
        if scroll > width:
            problems.append(f"report at {width} px lays out {scroll} px wide")
        await page.add_script_tag(content=AXE.read_text())
        problems += [f"report at {width} px: axe {v['impact']} {v['id']} at {v['nodes']}"
                     for v in await page.evaluate(AXE_RUN) if v["impact"] in BLOCKING]
        await page.screenshot(path=str(SCREENSHOTS / f"report-{width}.png"), full_page=True)
        await context.close()
    assert not problems, "\n".join(problems)


async def test_monthly_mail_carries_the_pdf(deployment):
    from aiosmtpd.controller import Controller  # noqa: PLC0415

    _, store, period = deployment
    sink = _Sink()
    with socket_closed_port() as port:
        pass
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        mailer = ReportMailer(mail_receiver(port), _reports())
        assert await mailer.send_due_reports(store, period.end + 3600) == 1
    finally:
        controller.stop()
    (rcpt, content), = sink.messages
    msg = email.message_from_bytes(content, policy=email.policy.default)
    pdf, csv = msg.iter_attachments()
    assert pdf.get_filename() == f"seawall-report-alpha-{period.label}.pdf"
    pages, text = _pdf_text(pdf.get_content())
    assert pages >= 2 and "Example Networks" in text and "syn_flood" in text
    assert csv.get_filename().endswith(".csv")
    html = msg.get_body(preferencelist=("html",)).get_content()
    assert "<style>" in html and "--primary: #1a365d;" in html and "/static/" not in html   # travels whole
