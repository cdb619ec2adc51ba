"""How SecureWatch shows numbers, rates and times: one place for every page, the report and the charts.

    number(18900000)            '18,900,000'
    rate(18900000)              '18.9 Mpps'     rate(2.4e9, "bps") -> '2.4 Gbps'
    moment(ts)                  <time datetime="…Z" title="… UTC">… UTC</time>; static/format.js
                                shows it in the viewer's time zone and keeps UTC on hover

The browser side (static/format.js) formats live values the same way.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

import jinja2
import markupsafe

NONE_SHOWN = "–"                          # what a missing value shows as
RATE_STEPS = ((1e9, "G"), (1e6, "M"), (1e3, "k"))   # SI prefixes of packet and bit rates


def number(value: float | int | None) -> str:
    """A count with thousands separators; a fraction keeps one decimal."""
    if value is None:
        return NONE_SHOWN
    v = float(value)
    return f"{v:,.0f}" if v == int(v) else f"{v:,.1f}"


def rate(value: float | int | None, unit: str = "pps") -> str:
    """A rate with its unit and an SI prefix: 950 pps, 12.5 kpps, 18.9 Mpps, 2.4 Gbps."""
    if value is None:
        return NONE_SHOWN
    v = float(value)
    for factor, prefix in RATE_STEPS:
        if abs(v) >= factor:
            return f"{v / factor:,.1f} {prefix}{unit}"
    return f"{v:,.0f} {unit}"


def utc_text(ts: float | None) -> str:
    if ts is None:
        return NONE_SHOWN
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def moment(ts: float | None) -> markupsafe.Markup | str:
    """A point in time as a <time> element: UTC as text (pages without JavaScript, the report,
    mail) and title; format.js rewrites the text into the viewer's time zone."""
    if ts is None:
        return NONE_SHOWN
    when = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    iso = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    text = utc_text(ts)
    return markupsafe.Markup('<time datetime="{}" title="{}">{}</time>').format(iso, text, text)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return NONE_SHOWN
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600:,} h {s % 3600 // 60} min"
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def percent(value: float | None) -> str:
    return NONE_SHOWN if value is None else f"{100 * float(value):.1f} %"


def template_environment(times: Callable[..., object]) -> jinja2.Environment:
    """The package's templates with the number filters every page and document shares; `times`
    renders the `utc` filter (the console's `moment`, which format.js localises, or a document's
    fixed `utc_text`)."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("securewatch", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(utc=times, rate=rate, num=number, duration=duration, percent=percent)
    return env
