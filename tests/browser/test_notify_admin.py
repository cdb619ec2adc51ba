"""The NOC receivers page as an administrator uses it, in Debian's chromium driven by Playwright:
edit a receiver in the TOML form, see a mistake named next to the field, save, and find the
secrets still masked on the page while the stored configuration keeps them."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "unit" / "securewatch"))
from test_sw_helpers import PASSWORD, add_user, service  # noqa: E402

from securewatch.notify_admin import MASK  # noqa: E402
from tests.browser.conftest import SCREENSHOTS  # noqa: E402

HOOK_SECRET = "hmac-secret-from-the-config"
HOOK_URL = "http://192.0.2.21/generic"
TABLE = {"syslog": [{"name": "noc-syslog", "host": "192.0.2.10", "transport": "tcp", "port": 1514}],
         "webhook": [{"name": "noc-hook", "url": HOOK_URL, "secret": HOOK_SECRET}]}


async def test_admin_edits_a_receiver_and_the_secret_stays_masked(tmp_path, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with service(tmp_path) as (url, store, _):
        await add_user(store, "ops", "admin")
        await store.save_notify_config(TABLE, "test", "seed")
        page = await (await browser.new_context(viewport={"width": 1280, "height": 1000})).new_page()
        await page.goto(f"{url}/login")
        await page.fill("input[name=username]", "ops")
        await page.fill("input[name=password]", PASSWORD)
        await page.click("button[type=submit]")
        await page.click("header >> text=NOC receivers")
        await page.wait_for_selector("#receivers tr[data-receiver=noc-syslog]")
        field = page.locator("textarea[name=notify_toml]")
        text = await field.input_value()
        assert MASK in text and HOOK_SECRET not in text and HOOK_URL not in text

        await field.fill(text.replace("port = 1514", "port = 99999"))
        await page.click("text=Save and apply")
        error = await page.inner_text("[data-field=notify_toml]")
        assert "notify.syslog[0].port: must be an integer in 1..65535" in error
        await page.screenshot(path=str(SCREENSHOTS / "notify-error.png"), full_page=True)

        await field.fill(text.replace("port = 1514", "port = 6514"))
        await page.click("text=Save and apply")
        await page.wait_for_selector("#saved")
        assert "Saved as version 2" in await page.inner_text("#saved")
        shown = await page.locator("textarea[name=notify_toml]").input_value()
        assert "port = 6514" in shown and MASK in shown and HOOK_SECRET not in await page.content()
        await page.screenshot(path=str(SCREENSHOTS / "notify.png"), full_page=True)
        # The store kept the secrets the form never showed.
        assert await store.notify_config() == (2, {**TABLE, "syslog": [{**TABLE["syslog"][0], "port": 6514}]})
