"""The vendored charting library (uPlot, `static/vendor/uplot/README.md`) as the templates link it.

One place names the pinned version: the pages' `<script>` and `<link>` come from `UPLOT`
(a jinja global), and the unit tests check these files exist and match the README's hashes.
"""

from __future__ import annotations

VENDORED_UPLOT = "1.6.32"     # the npm version copied under static/vendor/uplot/
UPLOT = {
    "version": VENDORED_UPLOT,
    "js": f"/static/vendor/uplot/uPlot-{VENDORED_UPLOT}.iife.min.js",
    "css": f"/static/vendor/uplot/uPlot-{VENDORED_UPLOT}.min.css",
}
