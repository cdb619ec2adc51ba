"""PDF reports wait for one printer at a time (issue 17 review, item 4): a bounded wait.

The printer is a real subprocess standing in for chromium (none needs to be installed): it takes
chromium's --print-to-pdf argument and writes a PDF once the test lets it."""

from __future__ import annotations

import asyncio
import stat
import sys
import time

import pytest

from securewatch.reports_render import PDF_WAITING_MAX, PdfError, PdfRenderer

PRINTER = """#!{python}
import pathlib, sys, time
target = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--print-to-pdf="))
release = pathlib.Path({release!r})
deadline = time.monotonic() + 30
while not release.exists() and time.monotonic() < deadline:
    time.sleep(0.02)
pathlib.Path(target).write_bytes(b"%PDF-1.4 test")
"""


async def poll(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_pdf_requests_past_the_waiting_bound_are_refused_not_queued(tmp_path):
    release = tmp_path / "release"
    printer = tmp_path / "printer"
    printer.write_text(PRINTER.format(python=sys.executable, release=str(release)))
    printer.chmod(printer.stat().st_mode | stat.S_IXUSR)
    renderer = PdfRenderer(printer)
    tasks = [asyncio.create_task(renderer.render("<p>report</p>")) for _ in range(1 + PDF_WAITING_MAX)]
    try:
        await poll(lambda: renderer.waiting == PDF_WAITING_MAX)
        with pytest.raises(PdfError, match="busy"):
            await asyncio.wait_for(renderer.render("<p>one too many</p>"), 5)
        release.touch()
        assert all(pdf.startswith(b"%PDF") for pdf in await asyncio.wait_for(asyncio.gather(*tasks), 30))
        assert renderer.waiting == 0
        assert (await renderer.render("<p>again</p>")).startswith(b"%PDF")   # the gate is free again
    finally:
        release.touch()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
