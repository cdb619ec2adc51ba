"""The SecureWatch UI as a person uses it, in Debian's chromium driven by Playwright: log in, edit a
tenant's policy and see it applied to the (in-process) appliance, open an incident, download a report."""

from __future__ import annotations

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "unit" / "securewatch"))
from test_sw_helpers import PASSWORD, add_user, attack_events, service  # noqa: E402

from tests.browser.conftest import SCREENSHOTS, page_until  # noqa: E402


async def test_login_edit_policy_incident_report(tmp_path, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with service(tmp_path, pcap_root=tmp_path) as (url, store, appliance):
        await add_user(store, "ops", "admin")
        for e in attack_events(t0=time.time() - 300, pcap_dir=tmp_path):
            await store.record_event(e.to_dict())
        page = await (await browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})).new_page()

        await page.goto(f"{url}/")
        assert "/login" in page.url
        await page.fill("input[name=username]", "ops")
        await page.fill("input[name=password]", "not the password")
        await page.click("button[type=submit]")
        assert "Wrong user name or password." in await page.inner_text("main")
        await page.fill("input[name=password]", PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_selector("#traffic tr[data-tenant=alpha]")
        await page_until(page, "() => document.getElementById('updated').textContent.includes('updated')",
                         "the dashboard's live update")
        await page.wait_for_selector("#chart canvas")
        await page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)

        await page.click("text=Tenants")
        await page.click("text=Beta Shop")
        await page.fill("input[name=sensitivity]", "99")
        await page.click("text=Save and apply")
        error = await page.inner_text("[data-field=sensitivity]")
        assert "must be between 0.1 and 10" in error
        await page.screenshot(path=str(SCREENSHOTS / "policy-error.png"), full_page=True)
        await page.fill("input[name=sensitivity]", "3")
        await page.select_option("select[name=mode]", "mitigate")
        await page.fill("textarea[name=deny]", "src=198.18.0.0/15 proto=udp dport=53")
        await page.click("text=Save and apply")
        await page.wait_for_selector("#saved:has-text('applied to the dataplane')")
        beta = appliance.tenants["beta"]
        assert (beta.mode, beta.policy.sensitivity, str(beta.deny[0])) == (
            "mitigate", 3.0, "src=198.18.0.0/15 proto=udp dport=53")
        await page.screenshot(path=str(SCREENSHOTS / "policy.png"), full_page=True)

        await page.click("header >> text=Incidents")
        await page.click("text=inc-alpha-1")
        await page.wait_for_selector("#incident-chart canvas")
        assert "syn_flood" in await page.inner_text("main")
        await page.screenshot(path=str(SCREENSHOTS / "incident.png"), full_page=True)
        async with page.expect_download() as pcap:
            await page.click("text=dropped packets (PCAP)")
        assert (await (await pcap.value).path()).read_bytes().startswith(b"\xd4\xc3\xb2\xa1")
        await page.click("button:has-text(\"Acknowledge\")")
        await page.wait_for_selector("dd:has-text(\"ops at\")", timeout=10000)

        await page.click("header >> text=Reports")
        month = time.strftime("%Y-%m", time.gmtime(time.time() - 300))
        async with page.expect_download() as report:
            await page.click(f"a[href='/api/v1/tenants/alpha/reports/{month}?format=csv']")
        download = await report.value
        assert download.suggested_filename == f"seawall-report-alpha-{month}.csv"
        assert "inc-alpha-1" in (await download.path()).read_text()
        await page.goto(f"{url}/api/v1/tenants/alpha/reports/{month}?format=html")
        await page.screenshot(path=str(SCREENSHOTS / "report.png"), full_page=True)
        assert "Most attacked" in await page.inner_text("body")
