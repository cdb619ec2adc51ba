"""The live console (issue 16) in Debian's chromium driven by Playwright: the dashboard's uPlot chart
drawn and then updated from server-sent events while new seconds arrive, the per-server view with its
baseline band, the incident chart with hover values; screenshots as test artifacts."""

from __future__ import annotations

import pathlib
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "unit" / "securewatch"))
from test_sw_helpers import PASSWORD, add_user, attack_events, service  # noqa: E402

from tests.browser.conftest import SCREENSHOTS, page_until  # noqa: E402
from tests.support import await_until  # noqa: E402


@pytest.fixture(autouse=True)
def quick_traffic_poll(monkeypatch):
    """SecureWatch reads the appliance's series every TRAFFIC_POLL_S (5 s); the pages wait for what it
    copies (as tests/unit/securewatch/test_sw_api.py does, a shorter period: same path, less waiting)."""
    monkeypatch.setattr("securewatch.app.TRAFFIC_POLL_S", 0.2)
    monkeypatch.setattr("securewatch.servers.POLL_S", 0.2)   # and the destination rows every POLL_S (5 s)


async def attribute_is(page, selector: str, name: str, want: str, timeout: float = 10.0) -> None:
    """Poll an attribute from the test side: the pages' CSP forbids the eval that
    Playwright's wait_for_function polls with (see conftest.page_until)."""
    async def check():
        return await page.get_attribute(selector, name) == want
    await await_until(check, timeout=timeout, what=f"{selector} [{name}] == {want!r}")


async def live_events_at_least(page, n: int) -> None:
    async def check():
        return int(await page.get_attribute("body", "data-live-events") or 0) >= n
    await await_until(check, what=f"{n} live events")


def second(t: float, passed: float, dropped: float) -> dict[str, float]:
    return {"time": t, "passed_pps": passed, "dropped_pps": dropped, "passed_bps": passed * 8000,
            "dropped_bps": dropped * 8000}


def server_row(t: int, syn: float) -> dict:
    return {"tenant": "alpha", "address": "198.51.100.10", "time": t, "pps": [syn, 40, 900, 2, 0, 0],
            "dropped_pps": max(0.0, syn - 500), "mean": [30, 40, 850, 2, 0, 0], "sigma": [45, 20, 240, 3, 0, 0],
            "threshold": [500, 400, 2600, 100, 100, 100]}


async def login(browser, url: str, name: str):
    page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
    await page.goto(f"{url}/login")
    await page.fill("input[name=username]", name)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    return page


async def test_dashboard_chart_updates_live_from_server_sent_events(tmp_path, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with service(tmp_path) as (url, store, appliance):
        await add_user(store, "ops", "admin")
        now = time.time()
        history = [second(now - 120 + i, 1000 + 10 * i, 50 if i < 100 else 4000) for i in range(118)]
        appliance.series["alpha"] = list(history)
        await store.add_traffic("alpha", history)
        await store.record_event(attack_events(t0=now - 20)[0].to_dict())
        page = await login(browser, url, "ops")
        await page.wait_for_selector("#chart canvas")
        assert await page.inner_text("#active") != "" and "inc-alpha-1" in await page.inner_text("#active")
        await attribute_is(page, "#chart", "data-points", "118")
        await live_events_at_least(page, 1)
        # The engine's next seconds reach the open page through the event stream, no reload.
        live = [second(now - 2 + i, 2000, 5000) for i in range(3)]
        appliance.series["alpha"].extend(live)
        await attribute_is(page, "#chart", "data-points", "121")
        legend = await page.inner_text("#chart .u-legend")
        assert "passed" in legend and "dropped bits" in legend
        await page.screenshot(path=str(SCREENSHOTS / "console-dashboard.png"), full_page=True)
        # Another range comes from the rollups, which the service's sampling task (every 5 s) also gives
        # the three new seconds: they start a minute of their own when `now` is just past one (ci58).
        async def sampled():
            return (await store.last_traffic_time("alpha") or 0) >= int(live[-1]["time"])   # whole seconds
        await await_until(sampled, what="the new seconds in the store")
        await page.click("button.range[data-range='24h']")
        minutes = len({int(row["time"]) // 60 for row in history + live})
        await attribute_is(page, "#chart", "data-points", str(minutes))


async def test_dashboard_for_a_tenant_user_shows_only_its_tenant(tmp_path, browser):
    async with service(tmp_path) as (url, store, appliance):
        await add_user(store, "alice", "tenant", "alpha")
        appliance.series["beta"] = [second(time.time() - 1, 777, 7)]
        page = await login(browser, url, "alice")
        await page.wait_for_selector("#chart canvas")
        rows = await page.eval_on_selector_all("#traffic tr[data-tenant]", "rs => rs.map(r => r.dataset.tenant)")
        assert rows == ["alpha"]
        await live_events_at_least(page, 1)
        assert "Beta" not in await page.inner_text("main")


async def test_per_server_view_chart_with_baseline_band(tmp_path, browser):
    async with service(tmp_path) as (url, store, appliance):
        await add_user(store, "ops", "noc")
        now = int(time.time())
        appliance.destination_rows = [server_row(now - 90 + i, 60 if i < 70 else 20_000) for i in range(90)]
        await store.record_event(attack_events(t0=now - 20, target="198.51.100.10")[0].to_dict())
        page = await login(browser, url, "ops")
        async def listed():   # SecureWatch copies the appliance's rows every POLL_S (0.2 s here)
            await page.goto(f"{url}/tenants/alpha/servers")
            return await page.query_selector("#servers tr[data-address='198.51.100.10']") is not None
        await await_until(listed, timeout=20, interval=0.2, what="the server listed")
        await page.click("text=198.51.100.10")
        await page.wait_for_selector("#server-chart canvas")
        await page.click("button.range[data-range='5m']")
        await attribute_is(page, "#server-chart", "data-points", "90")
        state = await page.inner_text("#server-state")
        assert "4,000%" in state or "4000%" in state.replace(",", "")   # 20,000 SYN/s against 500
        assert "above the threshold" in state and "inc-alpha-1" in await page.inner_text("#server-incidents")
        legend = await page.inner_text("#server-chart .u-legend")
        assert "tcp syn threshold" in legend and "tcp syn baseline high" in legend
        await page.screenshot(path=str(SCREENSHOTS / "console-server.png"), full_page=True)


async def test_incident_chart_hover_values_and_rules_in_words(tmp_path, browser):
    async with service(tmp_path, pcap_root=tmp_path) as (url, store, _):
        await add_user(store, "ops", "noc")
        for e in attack_events(t0=time.time() - 300, pcap_dir=tmp_path):
            await store.record_event(e.to_dict())
        page = await login(browser, url, "ops")
        await page.goto(f"{url}/incidents/inc-alpha-1")
        await page.wait_for_selector("#incident-chart canvas")
        # The mouse moves in the viewport's coordinates: the chart must be in view (the page above it grew).
        await page.locator("#incident-chart").scroll_into_view_if_needed()
        box = await page.locator("#incident-chart .u-over").bounding_box()
        await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        # uPlot writes the legend on its next animation frame after the mouse event, not at once.
        await page_until(page, "() => [...document.querySelectorAll('#incident-chart .u-legend .u-value')]"
                               ".some(v => v.textContent.endsWith('kpps'))", "the legend's values", timeout=5.0)
        values = await page.eval_on_selector_all("#incident-chart .u-legend .u-value",
                                                 "vs => vs.map(v => v.textContent)")
        assert any(v.endswith("kpps") for v in values) and any(v.endswith("bps") for v in values), values
        assert "TCP to 198.51.100.10" in await page.inner_text("#rules")
        await page.screenshot(path=str(SCREENSHOTS / "console-incident.png"), full_page=True)
