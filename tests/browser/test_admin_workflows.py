"""Issue 16, item 4 in Debian's chromium through Playwright, as the admin, the NOC and a tenant
user: create a tenant, change it, find the change in the audit log with its field-level diff and
roll it back with one click; add a user and a token; the NOC reads the audit log but cannot
administer; a tenant user sees no administration at all. Screenshots are test artifacts."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "unit" / "securewatch"))
from test_sw_helpers import PASSWORD, add_user, service  # noqa: E402

from tests.browser.conftest import SCREENSHOTS  # noqa: E402


async def login(page, url: str, name: str, password: str = PASSWORD) -> None:
    await page.goto(f"{url}/login")
    await page.fill("input[name=username]", name)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{url}/")


async def test_item16_admin_workflows_then_noc_and_tenant_views(tmp_path, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with service(tmp_path) as (url, store, appliance):
        await add_user(store, "ops", "admin")
        await add_user(store, "nina", "noc")
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        await login(page, url, "ops")
        await page.click("header >> text=Administration")

        form = page.locator("#tenant-create")
        await form.locator("input[name=id]").fill("gamma")
        await form.locator("input[name=name]").fill("Gamma")
        await form.locator("textarea[name=prefixes]").fill("198.51.100.0/24")   # overlaps alpha
        await form.locator("button").click()
        assert "overlaps" in await page.inner_text("#problems")
        await page.screenshot(path=str(SCREENSHOTS / "admin-tenant-error.png"), full_page=True)
        await page.locator("#tenant-create textarea[name=prefixes]").fill("192.0.2.0/26")
        await page.locator("#tenant-create textarea[name=contacts]").fill("noc@gamma.example")
        await page.locator("#tenant-create button").click()
        await page.wait_for_selector("#notice:has-text('Created tenant gamma')")
        assert "gamma" in appliance.tenants

        await page.locator("#tenant-edit input[name=name]").fill("Gamma Networks")
        await page.locator("#tenant-edit button").click()
        await page.wait_for_selector("#notice:has-text('Saved as version 2 and applied to the dataplane')")
        assert appliance.tenants["gamma"].name == "Gamma Networks"
        await page.screenshot(path=str(SCREENSHOTS / "admin-tenant.png"), full_page=True)

        await page.click("header >> text=Audit log")
        await page.select_option("select[name=tenant]", "gamma")
        await page.click("#audit-filters button")
        row = page.locator("#audit tr[data-entry]").first
        assert "tenant.replace" in await row.inner_text()
        assert await row.locator("td.old").first.inner_text() == "Gamma"
        assert await row.locator("td.new").first.inner_text() == "Gamma Networks"
        await page.screenshot(path=str(SCREENSHOTS / "audit.png"), full_page=True)
        await row.locator("button:has-text('Roll back to version 1')").click()
        await page.wait_for_selector("#notice:has-text('Rolled back to version 1')")
        assert appliance.tenants["gamma"].name == "Gamma"

        await page.click("nav.subnav >> text=Policy templates")
        create = page.locator("#template-create")
        await create.locator("input[name=name]").fill("hosting")
        await create.locator("input[name=sensitivity]").fill("3")
        await create.locator("button").click()
        await page.wait_for_selector("#notice:has-text('Saved template hosting as version 1')")
        await page.goto(f"{url}/admin/tenants/gamma")
        await page.select_option("#tenant-template select[name=template]", "hosting")
        await page.locator("#tenant-template button").click()
        await page.wait_for_selector("#notice:has-text('Follows template hosting')")
        assert appliance.tenants["gamma"].policy.sensitivity == 3.0
        await page.click("nav.subnav >> text=Policy templates")
        await page.locator("form[data-template=hosting] input[name=sensitivity]").fill("5")
        await page.locator("form[data-template=hosting] button:has-text('Save template')").click()
        await page.wait_for_selector("#notice:has-text('updated gamma and applied')")
        assert appliance.tenants["gamma"].policy.sensitivity == 5.0
        await page.screenshot(path=str(SCREENSHOTS / "admin-templates.png"), full_page=True)

        await page.click("nav.subnav >> text=Users")
        add = page.locator("#user-add")
        await add.locator("input[name=name]").fill("carol")
        await add.locator("input[name=password]").fill(PASSWORD)
        await add.locator("select[name=role]").select_option("tenant")
        await add.locator("select[name=tenant]").select_option("alpha")
        await add.locator("button").click()
        await page.wait_for_selector("#notice:has-text('Added user carol')")
        await page.screenshot(path=str(SCREENSHOTS / "admin-users.png"), full_page=True)

        await page.click("nav.subnav >> text=API tokens")
        await page.locator("#token-create input[name=label]").fill("grafana")
        await page.locator("#token-create select[name=role]").select_option("noc")
        await page.locator("#token-create button").click()
        assert (await page.inner_text("#new-token")).startswith("swt_")
        await page.screenshot(path=str(SCREENSHOTS / "admin-tokens.png"), full_page=True)
        await page.locator("#tokens tr[data-token='1'] button:has-text('Revoke')").click()
        await page.wait_for_selector("#notice:has-text('Token 1 revoked')")
        assert (await store.token(1)).revoked
        await context.close()

        for who in ("nina", "carol"):
            context = await browser.new_context(viewport={"width": 390, "height": 800})
            page = await context.new_page()
            await login(page, url, who)
            nav = await page.inner_text("header nav")
            assert "Administration" not in nav and ("Audit log" in nav) is (who == "nina")
            if who == "nina":
                await page.click("header >> text=Audit log")
                assert "Gamma Networks" in await page.inner_text("#audit")
                assert await page.locator("#audit button").count() == 0   # no rollback for the NOC
                await page.screenshot(path=str(SCREENSHOTS / "audit-noc.png"), full_page=True)
            response = await page.goto(f"{url}/admin/users")
            assert response.status == 403 and "Not allowed" in await page.inner_text("main")
            assert "carol" not in await page.inner_text("main")
            await page.screenshot(path=str(SCREENSHOTS / f"admin-refused-{who}.png"), full_page=True)
            await context.close()
