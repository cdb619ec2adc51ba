"""The live dashboard drawn from a real appliance (issue 16, Deliver 7): `seawall run` on the lab
forwards real traffic from the lab's clients, and the dashboard in Debian's chromium, signed in as
the tenant's own user, draws it from the server-sent events: the chart gains points each second
without a page load, and its hover values are the tenant's non-zero passed rates."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from appliance.lab import lab_config
from appliance.lab.traffic import TrafficProfile, TrafficRun
from appliance.runner import ApplianceProcess
from dataplane.dataplane import purge
from tests.browser.conftest import CHROMIUM_ARGS, SCREENSHOTS, browser_env
from tests.support import wait_until

PASSWORD = "alpha-operator-passw0rd"
TRAFFIC_S = 40.0             # seconds the lab's clients send (longer than the checks below need)
LIVE_TIMEOUT_MS = 30_000     # milliseconds for the page to show what the traffic causes


@pytest.fixture
def appliance(lab, tmp_path, request):
    config = lab_config(lab.name)
    config["appliance"]["state_dir"] = str(tmp_path / "state")
    config["appliance"]["tick_ms"] = 1000
    config["securewatch"] = {"listen": "127.0.0.1:0"}
    proc = ApplianceProcess(config, tmp_path / "seawall.toml", tmp_path / "seawall.log")

    def teardown():
        proc.stop()
        purge(config["appliance"]["bpffs"])

    request.addfinalizer(teardown)
    return proc.start()


def _rate(text: str) -> float:
    """'1,234 pps' / '12.3 kpps' / '–' as packets per second."""
    m = re.fullmatch(r"([\d,.]+)\s*([kMGT]?)pps", text.strip())
    if m is None:
        return 0.0
    return float(m.group(1).replace(",", "")) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[m.group(2)]


async def test_dashboard_chart_updates_live_from_a_running_appliance(lab, appliance, tmp_path, tmp_path_factory):
    from playwright.async_api import async_playwright  # noqa: PLC0415 - only this test needs it

    url = wait_until(lambda: appliance.status().get("securewatch"), timeout=10, what="SecureWatch's address")
    added = subprocess.run([sys.executable, "-m", "appliance.cli", "user", "add", "alice", "--role", "tenant",
                            "--tenant", "alpha", "--config", str(appliance.config_path)],
                           input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    traffic = TrafficRun(lab, TRAFFIC_S, TrafficProfile(game_pps=200, http_rps=4, dns_qps=8)).start()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS,
                                               env=browser_env(tmp_path_factory.mktemp("chromium-home")))
            try:
                # bypass_csp: Playwright's wait_for_function evaluates its predicate as text, which the
                # console's policy (no eval) would refuse; the page's own scripts are unaffected.
                page = await browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
                await page.goto(f"{url}/login")
                await page.fill("input[name=username]", "alice")
                await page.fill("input[name=password]", PASSWORD)
                await page.click("button[type=submit]")
                await page.wait_for_url(f"{url}/")
                assert await page.get_attribute("#chart", "data-tenant") == "alpha"
                await page.wait_for_selector("#chart .u-over", timeout=LIVE_TIMEOUT_MS)
                await page.evaluate("window.__samePage = true")   # gone if anything reloads the page
                # Live: events arrive and the chart gains points, with no page load.
                await page.wait_for_function("Number(document.body.dataset.liveEvents || 0) >= 2",
                                             timeout=LIVE_TIMEOUT_MS)
                before = int(await page.get_attribute("#chart", "data-points") or 0)
                await page.wait_for_function(
                    f"Number(document.getElementById('chart').dataset.points) >= {before + 3}",
                    timeout=LIVE_TIMEOUT_MS)
                # The newest points carry alpha's real traffic: hover the chart's right edge for its values.
                box = await page.locator("#chart .u-over").bounding_box()
                assert box is not None
                legend = page.locator("#chart .u-legend tr.u-series").nth(1).locator("td.u-value")
                deadline = time.monotonic() + LIVE_TIMEOUT_MS / 1000
                passed = 0.0
                while passed <= 0 and time.monotonic() < deadline:
                    await page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)
                    passed = _rate(await legend.inner_text())
                    if passed <= 0:
                        await page.wait_for_function(   # the next event, then hover again
                            f"Number(document.body.dataset.liveEvents) > "
                            f"{await page.evaluate('Number(document.body.dataset.liveEvents)')}",
                            timeout=LIVE_TIMEOUT_MS)
                assert passed > 0, await legend.inner_text()
                row = page.locator("#traffic tr[data-tenant=alpha] td[data-k=passed_pps]")
                assert _rate(await row.inner_text()) > 0
                assert await page.evaluate("window.__samePage === true")
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(SCREENSHOTS / "dashboard-live-appliance.png"), full_page=True)
            finally:
                await browser.close()
    finally:
        traffic.stop()
