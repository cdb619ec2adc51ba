"""A report as one HTML document without script (logo and charts embedded), and that same
document printed to PDF by headless chromium.

The one document goes three ways: the console (under its policy: styles from /static, no inline
style), mail (clients run no script and fetch nothing) and the PDF printer (which then needs no
network at all); the copies that travel carry their styles inline (`standalone`). For the same
reason the charts are SVG drawn here on the server, not by the console's uPlot, which needs a
script to draw.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import pathlib
import tempfile
from collections.abc import Sequence

import jinja2
import markupsafe
import structlog

from . import formatting
from .reports import Report
from .reports_config import Branding

log = structlog.get_logger(__name__)

PDF_TIMEOUT_S = 60.0          # seconds one PDF may take to print before chromium is stopped
PDF_CONCURRENCY = 1           # PDFs printed at once: chromium takes a core while it prints
PDF_WAITING_MAX = 4           # PDFs waiting for the gate at most; one more is refused (503), not queued
PASSED_COLOUR = "#2f855a"     # passed traffic in every chart (4.5:1 on white)
ATTACK_COLOUR = "#4a5568"     # an attack's total rate, drawn dashed


def report_environment() -> jinja2.Environment:
    # Times as UTC text (a document is read anywhere, and format.js does not run in it).
    env = formatting.template_environment(formatting.utc_text)
    env.globals["chart"] = svg_chart
    env.globals["PASSED"] = PASSED_COLOUR
    env.globals["ATTACK"] = ATTACK_COLOUR
    return env


DETAILED_ATTACKS = 50         # attacks given a section with their chart (the rest are rows of the table)


REPORT_CSS = pathlib.Path(__file__).parent / "static" / "report.css"


def render_html(env: jinja2.Environment, report: Report, branding: Branding, *, standalone: bool) -> str:
    """standalone: the copy that travels (mail, PDF), its styles inline; else the console's copy, which
    links static/report.css and /reports/branding.css."""
    css = markupsafe.Markup(REPORT_CSS.read_text(encoding="utf-8")) if standalone else ""
    return env.get_template("report.html").render(r=report, summary=report.summary, brand=branding,
                                                  detailed=DETAILED_ATTACKS, standalone=standalone, css=css)


def branding_css(branding: Branding) -> str:
    """The branding's colours for the console's copy of a report (checked #rrggbb values only)."""
    return f":root {{ --primary: {branding.primary_colour}; --accent: {branding.accent_colour}; }}\n"


# -- charts --------------------------------------------------------------------------------------

CHART_W, CHART_H = 720, 200          # SVG user units (scaled to the page width)
PAD_L, PAD_R, PAD_T, PAD_B = 76, 8, 8, 22
Y_TICKS = 4                          # horizontal grid lines above the zero line
X_TICKS = 6                          # time labels along the bottom


def svg_chart(times: Sequence[float], series: Sequence[tuple[str, Sequence[float], str, bool]], unit: str,
              title: str) -> markupsafe.Markup:
    """A line chart as inline SVG. series: (label, values, colour, dashed), values aligned with `times`
    (seconds since the epoch); `unit` "pps" or "bps" labels the y axis through formatting.rate."""
    esc = markupsafe.escape
    if not times:
        return markupsafe.Markup('<p class="muted">No traffic recorded in this period.</p>')
    top = max((max(v, default=0.0) for _, v, _, _ in series), default=0.0)
    top = top * 1.1 if top > 0 else 1.0
    t0, t1 = float(times[0]), float(times[-1])
    span = max(t1 - t0, 1.0)
    inner_w, inner_h = CHART_W - PAD_L - PAD_R, CHART_H - PAD_T - PAD_B

    def x(t: float) -> float:
        return PAD_L + (float(t) - t0) / span * inner_w

    def y(v: float) -> float:
        return PAD_T + inner_h - float(v) / top * inner_h

    parts = [f'<svg class="chart" viewBox="0 0 {CHART_W} {CHART_H}" role="img" aria-label="{esc(title)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{esc(title)}</title>']
    for i in range(Y_TICKS + 1):
        v = top * i / Y_TICKS
        parts.append(f'<line x1="{PAD_L}" x2="{CHART_W - PAD_R}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
                     f'<text x="{PAD_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{esc(formatting.rate(v, unit))}</text>')
    # An attack of seconds needs seconds on its axis; a month needs days.
    fmt = "%d %b %H:%M" if span > 86400 else "%H:%M" if span > 3600 else "%H:%M:%S"
    for i in range(X_TICKS):
        t = t0 + span * i / (X_TICKS - 1)
        label = datetime.datetime.fromtimestamp(t, tz=datetime.UTC).strftime(fmt)
        anchor = "start" if i == 0 else "end" if i == X_TICKS - 1 else "middle"
        parts.append(f'<text x="{x(t):.1f}" y="{CHART_H - 6}" text-anchor="{anchor}">{esc(label)}</text>')
    for label, values, colour, dashed in series:
        points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(times, values, strict=True))
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts.append(f'<polyline fill="none" stroke="{esc(colour)}" stroke-width="1.5"{dash} points="{points}">'
                     f'<title>{esc(label)}</title></polyline>')
    parts.append("</svg>")
    legend = "".join(f'<span class="key"><svg class="swatch" viewBox="0 0 12 4" aria-hidden="true">'
                     f'<rect width="12" height="4" fill="{esc(colour)}"/></svg>{esc(label)}</span>'
                     for label, _, colour, _ in series)
    return markupsafe.Markup("".join(parts) + f'<p class="legend">{legend} <span class="muted">(UTC)</span></p>')


# -- PDF -----------------------------------------------------------------------------------------

class PdfError(Exception):
    """The PDF could not be printed (no renderer configured, chromium failed or took too long)."""


class PdfRenderer:
    """Prints HTML to PDF with headless chromium, one document at a time, in a private temporary
    home (profile, caches) that is removed afterwards."""

    def __init__(self, executable: pathlib.Path | None, timeout_s: float = PDF_TIMEOUT_S) -> None:
        self.executable = executable
        self.timeout_s = timeout_s
        self._gate = asyncio.Semaphore(PDF_CONCURRENCY)
        self._waiting = 0   # requests waiting for the gate (not the one printing)

    @property
    def available(self) -> bool:
        return self.executable is not None

    async def render(self, html: str) -> bytes:
        if self.executable is None:
            raise PdfError("PDF reports need [securewatch.reports] pdf_renderer (a chromium executable)")
        # Without a bound, requests queue behind the one-at-a-time gate without end (each holding its
        # report in memory); past a few, the client is better told to try again later.
        if self._gate.locked() and self._waiting >= PDF_WAITING_MAX:
            raise PdfError(f"busy: {self._waiting} PDFs are waiting to be printed already; try again later")
        self._waiting += 1
        try:
            await self._gate.acquire()
        finally:
            self._waiting -= 1
        try:
            with tempfile.TemporaryDirectory(prefix="seawall-report-") as tmp:
                return await self._print(pathlib.Path(tmp), html)
        finally:
            self._gate.release()

    @property
    def waiting(self) -> int:
        """PDFs waiting for their turn to print."""
        return self._waiting

    async def _print(self, tmp: pathlib.Path, html: str) -> bytes:
        source, target = tmp / "report.html", tmp / "report.pdf"
        source.write_text(html, encoding="utf-8")
        home = tmp / "home"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
               "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache")}
        args = [str(self.executable), "--headless", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--mute-audio",
                # The document is self-contained: any name lookup is a mistake, so none resolves. (Scripts
                # are not turned off: headless printing then writes no file; the document has none.)
                "--host-resolver-rules=MAP * ~NOTFOUND",
                f"--user-data-dir={tmp / 'profile'}", "--no-pdf-header-footer", f"--print-to-pdf={target}",
                source.as_uri()]
        if os.geteuid() == 0:
            # chromium refuses to run as root with its sandbox; what it renders is our own
            # script-free document, read from a private temporary directory.
            args.insert(1, "--no-sandbox")
        proc = await asyncio.create_subprocess_exec(*args, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            raise PdfError(f"chromium did not print the report within {self.timeout_s:.0f} s") from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                await proc.wait()
        pdf = target.read_bytes() if target.is_file() else b""
        if proc.returncode != 0 or not pdf.startswith(b"%PDF"):
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            log.warning("report.pdf_failed", status=proc.returncode, stderr=" | ".join(tail))
            raise PdfError(f"chromium failed to print the report (exit status {proc.returncode})")
        return pdf


def report_filename(report: Report, extension: str) -> str:
    return f"seawall-report-{report.tenant}-{report.period.label}.{extension}"

