"""Customer report settings: the operator's branding and the monthly mail schedule.

    [securewatch.reports]
    operator_name = "Example Networks"      # shown at the top of every report and in the mail subject
    logo = "/etc/seawall/logo.png"          # PNG or JPEG, at most 256 KiB, embedded in the report
    primary_colour = "#1a365d"              # the header band and headings (white text on it: >= 4.5:1)
    accent_colour = "#c53030"               # dropped traffic in the charts (>= 3:1 against white)
    mail_day = 1                            # day of the month (UTC, 1..28) last month's reports are mailed
    pdf_renderer = "/usr/bin/chromium"      # headless chromium for PDF; absent: HTML only

Branding is validated by one set of functions whatever its source: the config file (a logo path,
read when the file is read), the API (`PUT /api/v1/reports/branding`, the logo as a base64
`data:` URI) and the UI form (an uploaded file). What the API or UI saved is kept in the
database and wins over the config file; `DELETE /api/v1/reports/branding` returns to it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import pathlib
import re
from typing import Any

from tenants.errors import did_you_mean, type_name

SECTION = "securewatch.reports"
KEYS = ("operator_name", "logo", "primary_colour", "accent_colour", "mail_day", "pdf_renderer")
BRANDING_KEYS = ("operator_name", "logo", "primary_colour", "accent_colour")
MAX_NAME_CHARS = 80              # characters of the operator's name (a report header line)
MAX_LOGO_BYTES = 256 * 1024      # bytes: a logo, not a photograph; it rides in every mail
MAIL_DAYS = (1, 28)              # days of the month a schedule may name: every month has them
# WCAG 2.1 AA: 4.5:1 for text (white on the header band), 3:1 for graphics (the chart's lines).
TEXT_CONTRAST = 4.5
GRAPHIC_CONTRAST = 3.0
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
_LOGO_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
_DATA_URI = re.compile(r"data:(image/png|image/jpeg);base64,([A-Za-z0-9+/=\s]*)")


@dataclasses.dataclass(frozen=True, slots=True)
class Branding:
    operator_name: str = "Seawall DDoS protection"
    logo: bytes | None = None          # PNG or JPEG bytes, checked by check_logo
    primary_colour: str = "#1a365d"
    accent_colour: str = "#c53030"

    @property
    def logo_type(self) -> str | None:
        return logo_type(self.logo) if self.logo else None

    @property
    def logo_uri(self) -> str | None:
        """The logo as a data: URI (the report is one self-contained document: mail, PDF, browser)."""
        if not self.logo:
            return None
        return f"data:{self.logo_type};base64,{base64.b64encode(self.logo).decode()}"

    def to_public_dict(self) -> dict[str, Any]:
        return {"operator_name": self.operator_name, "logo": self.logo_uri,
                "primary_colour": self.primary_colour, "accent_colour": self.accent_colour}


@dataclasses.dataclass(frozen=True, slots=True)
class ReportSettings:
    branding: Branding = Branding()
    mail_day: int = 1                        # day of the month (UTC) last month's reports go out
    pdf_renderer: pathlib.Path | None = None  # a chromium executable; None: no PDF


# -- the checks, one per field (config file, API and UI all call them) ---------------------------

def check_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type_name(value)} {value!r}")
    name = value.strip()
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise ValueError(f"must have 1 to {MAX_NAME_CHARS} characters, got {len(name)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        # It goes into a mail Subject header: a line break there would be a header injection.
        raise ValueError("must not contain control characters (line breaks, tabs)")
    return name


def _luminance(colour: str) -> float:
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast_with_white(colour: str) -> float:
    """WCAG contrast ratio of `colour` (#rrggbb) against white, 1.0 to 21.0."""
    return 1.05 / (_luminance(colour) + 0.05)


def check_colour(value: Any, minimum: float) -> str:
    if not isinstance(value, str) or not _COLOUR.fullmatch(value):
        raise ValueError(f"expected a colour as #rrggbb, got {value!r}")
    ratio = contrast_with_white(value)
    if ratio < minimum:
        raise ValueError(f"{value} has a contrast of {ratio:.1f}:1 with white; at least {minimum}:1 is needed "
                         f"(choose a darker colour)")
    return value.lower()


def logo_type(data: bytes) -> str | None:
    return next((mime for magic, mime in _LOGO_TYPES.items() if data.startswith(magic)), None)


def check_logo(data: bytes) -> bytes:
    if not data:
        raise ValueError("the file is empty")
    if len(data) > MAX_LOGO_BYTES:
        raise ValueError(f"{len(data):,} bytes; at most {MAX_LOGO_BYTES:,} bytes")
    if logo_type(data) is None:
        raise ValueError("not a PNG or JPEG image")
    return data


def logo_from_data_uri(value: Any) -> bytes:
    """The API's form of a logo: 'data:image/png;base64,...' (or image/jpeg)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a data:image/png;base64,... URI, got {type_name(value)}")
    m = _DATA_URI.fullmatch(value.strip())
    if m is None:
        raise ValueError("expected a data:image/png;base64,... or data:image/jpeg;base64,... URI")
    try:
        data = base64.b64decode("".join(m.group(2).split()), validate=True)
    except binascii.Error:
        raise ValueError("the base64 text does not decode") from None
    data = check_logo(data)
    if logo_type(data) != m.group(1):
        raise ValueError(f"the URI says {m.group(1)} but the data is {logo_type(data)}")
    return data


def parse_branding(values: dict[str, Any], base: Branding, where: str, problems: list[str], *,
                   logo_form: str) -> Branding:
    """`values` (any of BRANDING_KEYS) over `base`; each problem appended as "{where}.key: ...".
    logo_form: how the logo is given, "path" (config file), "data_uri" (API) or "bytes" (UI upload);
    None or "" removes it."""
    fields: dict[str, Any] = {}
    for key, value in values.items():
        if key not in BRANDING_KEYS:
            problems.append(f"{where}.{key}: unknown key{did_you_mean(key, BRANDING_KEYS)}")
            continue
        try:
            if key == "operator_name":
                fields[key] = check_name(value)
            elif key == "primary_colour":
                fields[key] = check_colour(value, TEXT_CONTRAST)
            elif key == "accent_colour":
                fields[key] = check_colour(value, GRAPHIC_CONTRAST)
            elif value in (None, "", b""):
                fields[key] = None
            elif logo_form == "path":
                fields[key] = _logo_file(value)
            elif logo_form == "data_uri":
                fields[key] = logo_from_data_uri(value)
            else:
                fields[key] = check_logo(value)
        except ValueError as exc:
            problems.append(f"{where}.{key}: {exc}")
    return dataclasses.replace(base, **fields)


def _logo_file(value: Any) -> bytes:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected the path of a PNG or JPEG file, got {value!r}")
    path = pathlib.Path(value)
    if not path.is_absolute():
        raise ValueError(f"{value!r} is not an absolute path")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_LOGO_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {value!r}: {exc.strerror}") from None
    return check_logo(data)


def parse_report_settings(value: Any, problems: list[str]) -> ReportSettings:
    """The `[securewatch.reports]` table; problems appended as "[securewatch.reports] key: ..."."""
    if value is None:
        return ReportSettings()
    if not isinstance(value, dict):
        problems.append(f"[{SECTION}]: expected a table, got {type_name(value)} {value!r}")
        return ReportSettings()
    for key in value:
        if key not in KEYS:
            problems.append(f"[{SECTION}] {key}: unknown key{did_you_mean(key, KEYS)}")
    found: list[str] = []
    branding = parse_branding({k: v for k, v in value.items() if k in BRANDING_KEYS}, Branding(), SECTION, found,
                              logo_form="path")
    problems.extend(f"[{SECTION}] {p[len(SECTION) + 1:]}" for p in found)
    mail_day = value.get("mail_day", 1)
    low, high = MAIL_DAYS
    if isinstance(mail_day, bool) or not isinstance(mail_day, int) or not low <= mail_day <= high:
        problems.append(f"[{SECTION}] mail_day: expected a whole number from {low} to {high} "
                        f"(a day every month has), got {mail_day!r}")
        mail_day = 1
    renderer = None
    if "pdf_renderer" in value:
        text = value["pdf_renderer"]
        if not isinstance(text, str) or not pathlib.Path(text).is_absolute():
            problems.append(f"[{SECTION}] pdf_renderer: expected the absolute path of a chromium executable, "
                            f"got {text!r}")
        elif not os.access(text, os.X_OK) or not pathlib.Path(text).is_file():
            problems.append(f"[{SECTION}] pdf_renderer: {text!r} is not an executable file")
        else:
            renderer = pathlib.Path(text)
    return ReportSettings(branding=branding, mail_day=mail_day, pdf_renderer=renderer)


# -- storage (schema migration 9, `store.MIGRATIONS`) -------------------------------------------------

# report_branding: one row (id 1), the branding saved through the API or UI (JSON, the logo as a
# data URI). report_deliveries: one row per tenant and month, created when the month's reports fall
# due; the primary key is what keeps a report from going out twice. state: pending | sent | failed
# (the mail server refused it for good) | cancelled (the tenant or its contacts went away).
# Rows of report_mailings (mailed by earlier versions) become sent deliveries.
MIGRATION = [
    """CREATE TABLE IF NOT EXISTS report_branding (
        id INTEGER PRIMARY KEY, data TEXT NOT NULL, updated_at {real} NOT NULL, updated_by TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS report_deliveries (
        tenant TEXT NOT NULL, period TEXT NOT NULL, state TEXT NOT NULL, recipients TEXT NOT NULL,
        created_at {real} NOT NULL, attempts BIGINT NOT NULL DEFAULT 0, next_attempt {real} NOT NULL,
        last_error TEXT, last_attempt {real}, sent_at {real}, PRIMARY KEY (tenant, period))""",
    "CREATE INDEX IF NOT EXISTS report_deliveries_due ON report_deliveries (state, next_attempt)",
    """INSERT INTO report_deliveries (tenant, period, state, recipients, created_at, next_attempt, sent_at)
        SELECT tenant, period, 'sent', recipients, sent_at, sent_at, sent_at FROM report_mailings
        WHERE NOT EXISTS (SELECT 1 FROM report_deliveries d
                          WHERE d.tenant = report_mailings.tenant AND d.period = report_mailings.period)""",
]
