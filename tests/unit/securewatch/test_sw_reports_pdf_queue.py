"""PDF reports wait for one printer at a time (issue 17 review, item 4): a bounded wait.

The printer is a real subprocess standing in for chromium (none needs to be installed): it takes
chromium's --print-to-pdf argument and writes a PDF once the test lets it (the test holds an
exclusive lock on a file the printer blocks on)."""

from __future__ import annotations

import asyncio
import fcntl
import stat
import sys

import pytest

from securewatch.reports_render import PDF_WAITING_MAX, PdfError, PdfRenderer
from tests.support import await_until

PRINTER = """#!{python}
import fcntl, pathlib, sys
target = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--print-to-pdf="))
with open({release!r}, "rb") as gate:
    fcntl.flock(gate, fcntl.LOCK_SH)   # blocks while the test holds its exclusive lock
pathlib.Path(target).write_bytes(b"%PDF-1.4 test")
"""


async def test_pdf_requests_past_the_waiting_bound_are_refused_not_queued(tmp_path):
    release = tmp_path / "release"
    printer = tmp_path / "printer"
    printer.write_text(PRINTER.format(python=sys.executable, release=str(release)))
    printer.chmod(printer.stat().st_mode | stat.S_IXUSR)
    renderer = PdfRenderer(printer)
    held = open(release, "wb")  # noqa: SIM115 - closed to let the printers go
    fcntl.flock(held, fcntl.LOCK_EX)
    tasks = [asyncio.create_task(renderer.render("<p>report</p>")) for _ in range(1 + PDF_WAITING_MAX)]
    try:
        await await_until(lambda: renderer.waiting == PDF_WAITING_MAX, what="the waiting bound reached")
        with pytest.raises(PdfError, match="busy"):
            await asyncio.wait_for(renderer.render("<p>one too many</p>"), 5)
        held.close()
        assert all(pdf.startswith(b"%PDF") for pdf in await asyncio.wait_for(asyncio.gather(*tasks), 30))
        assert renderer.waiting == 0
        assert (await renderer.render("<p>again</p>")).startswith(b"%PDF")   # the gate is free again
    finally:
        held.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
