"""The browser tier's shared pieces: Debian's chromium launched by Playwright, and where
screenshots go (test artifacts, gitignored)."""

from __future__ import annotations

import pathlib

import pytest

SCREENSHOTS = pathlib.Path(__file__).parents[2] / "artifacts" / "screenshots"
# As root, without these chromium refuses to start or reaches for the network at start-up.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright  # noqa: PLC0415 - only this tier needs it

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()
