"""The browser tier's shared pieces: Debian's chromium launched by Playwright, and where
screenshots go (test artifacts, gitignored)."""

from __future__ import annotations

import os
import pathlib

import pytest

from tests.support import await_until

SCREENSHOTS = pathlib.Path(__file__).parents[2] / "artifacts" / "screenshots"
# As root, without these chromium refuses to start or reaches for the network at start-up.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def browser_env(home: pathlib.Path) -> dict[str, str]:
    """chromium's environment with a home of its own: besides the profile (Playwright gives each
    launch a temporary one), chromium keeps an NSS database under ~/.pki and caches and crash
    reports under the XDG directories; a test must neither read a previous run's nor leave its own."""
    dirs = {"HOME": home, "XDG_CONFIG_HOME": home / ".config", "XDG_CACHE_HOME": home / ".cache",
            "XDG_DATA_HOME": home / ".local" / "share", "XDG_STATE_HOME": home / ".local" / "state"}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    return {**os.environ, **{name: str(path) for name, path in dirs.items()}}


@pytest.fixture
async def browser(tmp_path_factory):
    from playwright.async_api import async_playwright  # noqa: PLC0415 - only this tier needs it

    env = browser_env(tmp_path_factory.mktemp("chromium-home"))
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, env=env)
        try:
            yield b
        finally:
            await b.close()


async def page_until(page, function: str, what: str, timeout: float = 10.0) -> object:
    """Poll a JavaScript function (`() => ...`) in `page` from the test side until it returns a truthy
    value: `page.wait_for_function` polls by evaluating it from a string inside the page, which the
    pages' CSP (script-src 'self') forbids whenever the condition is not already true at the first
    look (ci51: a browser test failed so once the tier ran two tests at a time)."""
    return await await_until(lambda: page.evaluate(function), timeout=timeout, what=what)
