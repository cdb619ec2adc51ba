"""Customer reports on the web: downloads (API and UI), the branding (admin) and the mail schedule.

    GET    /api/v1/tenants/{tenant_id}/reports/{period}?format=json|csv|html|pdf
    GET    /api/v1/reports/branding            PUT (admin) ... DELETE (admin: back to the config file)
    GET    /api/v1/reports/mailings            the scheduled deliveries the caller may see
    POST   /api/v1/reports/mailings/{tenant_id}/{period}/retry   (admin) a failed delivery, again now
    GET    /reports                            the page: months, any dates, the schedule, branding (admin)
    GET    /reports/view?tenant=&from=&to=&format=    a date range typed in the page
    GET    /reports/branding.css               the branding's colours (the console's copy of a report)
    POST   /reports/branding                   the branding form (admin), the logo as an uploaded file

A period is `YYYY-MM` or `YYYY-MM-DD..YYYY-MM-DD` (UTC). Who may read a tenant's report is who may
read the tenant (`visible_tenant`): a tenant's users their own, the operator and NOC every one;
anything else answers 404, as for a tenant that does not exist.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from aiohttp import web

from . import reports_store
from .context import (
    OPTIONS,
    SETTINGS,
    STORE,
    ApiError,
    audit,
    check_csrf,
    principal_of,
    query_int,
    read_json,
    require_admin,
    visible_tenant,
)
from .fleet_store import site_problem
from .reports import build_report, parse_period
from .reports_config import Branding, parse_branding
from .reports_render import (
    PdfError,
    PdfRenderer,
    branding_css,
    render_html,
    report_environment,
    report_filename,
)
from .ui import render

PDF_RENDERER = web.AppKey("report_pdf_renderer", PdfRenderer)
REPORT_ENV = web.AppKey("report_environment", object)
FORMATS = ("json", "csv", "html", "pdf")
MONTHS_SHOWN = 6               # months offered on the page, the current one first
TENANTS_SHOWN = 100            # tenants in the page's month table (search for the others)
MAILINGS_SHOWN = 200           # deliveries listed on the page and by default in the API
MAX_MAILINGS = 5000            # deliveries one API call may list


def add_routes(app: web.Application) -> None:
    app[PDF_RENDERER] = PdfRenderer(app[SETTINGS].reports.pdf_renderer)
    app[REPORT_ENV] = report_environment()
    r = app.router
    r.add_get("/api/v1/tenants/{tenant_id}/reports/{period}", api_report)
    r.add_get("/api/v1/reports/branding", api_branding)
    r.add_put("/api/v1/reports/branding", api_branding_put)
    r.add_delete("/api/v1/reports/branding", api_branding_delete)
    r.add_get("/api/v1/reports/mailings", api_mailings)
    r.add_post("/api/v1/reports/mailings/{tenant_id}/{period}/retry", api_mailing_retry)
    r.add_get("/reports", reports_page)
    r.add_get("/reports/view", report_view)
    r.add_post("/reports/branding", branding_submit)
    r.add_get("/reports/branding.css", branding_stylesheet)


async def branding_of(app: web.Application) -> Branding:
    return await reports_store.saved_branding(app[STORE], app[SETTINGS].reports.branding)


def _report_period(text: str) -> Any:
    try:
        return parse_period(text)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


async def api_report(request: web.Request) -> web.StreamResponse:
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    period = _report_period(request.match_info["period"])
    fmt = request.query.get("format", "json")
    if fmt not in FORMATS:
        raise ApiError(400, f"format: {fmt!r} is not {', '.join(FORMATS[:-1])} or {FORMATS[-1]}")
    renderer = request.app[PDF_RENDERER]
    if fmt == "pdf" and not renderer.available:
        raise ApiError(503, "format: PDF reports need [securewatch.reports] pdf_renderer (a chromium executable)")
    site = request.query.get("site") or None   # a fleet's central server: one site's part (None: all summed)
    if site is not None and site_problem(site) is not None:
        raise ApiError(400, f"site: {site_problem(site)}")
    report = await build_report(request.app[STORE], tenant.id, tenant.name, period, time.time(),
                                pcap_root=request.app[OPTIONS]["pcap_root"], site=site)
    disposition = {"Content-Disposition": f'attachment; filename="{report_filename(report, fmt)}"'}
    if fmt == "csv":
        return web.Response(text=report.to_csv(), content_type="text/csv", headers=disposition)
    if fmt in ("html", "pdf"):
        html = render_html(request.app[REPORT_ENV], report, await branding_of(request.app), standalone=fmt == "pdf")
        if fmt == "html":
            return web.Response(text=html, content_type="text/html",
                                headers=disposition if "download" in request.query else None)
        try:
            pdf = await renderer.render(html)
        except PdfError as exc:
            raise ApiError(503, f"the PDF could not be made: {exc}") from None
        return web.Response(body=pdf, content_type="application/pdf", headers=disposition)
    return web.json_response(report.to_dict(), headers=disposition if "download" in request.query else None)


# -- branding ---------------------------------------------------------------------------------------

async def api_branding(request: web.Request) -> web.Response:
    if not principal_of(request).sees_all:
        raise ApiError(403, "only the operator and the NOC see the report branding")
    return web.json_response((await branding_of(request.app)).to_public_dict())


async def _save_branding(request: web.Request, values: dict[str, Any], logo_form: str) -> Branding:
    problems: list[str] = []
    branding = parse_branding(values, await branding_of(request.app), "branding", problems, logo_form=logo_form)
    if problems:
        raise ApiError(422, "the branding was not saved", problems)
    await reports_store.save_branding(request.app[STORE], branding, principal_of(request).name, time.time())
    await audit(request, "reports.branding", details={"changed": sorted(values)})
    return branding


async def branding_stylesheet(request: web.Request) -> web.Response:
    """The branding's colours for the console's copy of a report (anyone signed in reads reports)."""
    return web.Response(text=branding_css(await branding_of(request.app)), content_type="text/css",
                        headers={"Cache-Control": "no-cache"})


async def api_branding_put(request: web.Request) -> web.Response:
    """Any of operator_name, logo (a data:image/png;base64,... URI, or null to remove it),
    primary_colour, accent_colour; the others keep their value."""
    require_admin(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object of branding fields")
    return web.json_response((await _save_branding(request, body, "data_uri")).to_public_dict())


async def api_branding_delete(request: web.Request) -> web.Response:
    require_admin(request)
    await reports_store.clear_branding(request.app[STORE])
    await audit(request, "reports.branding_reset")
    return web.json_response((await branding_of(request.app)).to_public_dict())


async def branding_submit(request: web.Request) -> web.Response:
    require_admin(request)
    form = await check_csrf(request)
    values: dict[str, Any] = {k: str(form.get(k, "")) for k in ("operator_name", "primary_colour", "accent_colour")}
    upload = form.get("logo")
    if isinstance(upload, web.FileField):
        data = upload.file.read()
        if data:
            values["logo"] = data
    if form.get("remove_logo") == "on":
        values["logo"] = None
    await _save_branding(request, values, "bytes")
    raise web.HTTPFound("/reports?saved=branding")


# -- the schedule -----------------------------------------------------------------------------------

def _scope(request: web.Request) -> tuple[str, ...] | None:
    return principal_of(request).visible_tenants(())


async def api_mailings(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", MAILINGS_SHOWN, 1, MAX_MAILINGS)
    rows = await reports_store.deliveries(request.app[STORE], tenants=_scope(request), limit=limit or MAILINGS_SHOWN)
    return web.json_response({"mailings": rows, "mail_day": request.app[SETTINGS].reports.mail_day,
                              "mailer": request.app[OPTIONS]["mailer"] is not None})


async def api_mailing_retry(request: web.Request) -> web.Response:
    require_admin(request)
    tenant = await visible_tenant(request, request.match_info["tenant_id"])
    period = _report_period(request.match_info["period"])
    if not await reports_store.retry_now(request.app[STORE], tenant.id, period.label, time.time()):
        raise ApiError(409, f"no failed or cancelled report mail of {tenant.id} for {period.label}")
    await audit(request, "reports.mail_retry", target=period.label, tenant=tenant.id)
    return web.json_response({"tenant": tenant.id, "period": period.label, "state": "pending"})


# -- the page ---------------------------------------------------------------------------------------

def _months(now: float) -> list[str]:
    today = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
    months, year, month = [], today.year, today.month
    for _ in range(MONTHS_SHOWN):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return months


async def reports_page(request: web.Request) -> web.Response:
    p = principal_of(request)
    q = request.query.get("q", "").strip().lower()
    tenants = [t for t in await request.app[STORE].tenant_set() if p.can_read(t.id)]
    matching = [t for t in tenants if not q or q in t.id.lower() or q in t.name.lower()]
    mailings = await reports_store.deliveries(request.app[STORE], tenants=_scope(request), limit=MAILINGS_SHOWN)
    today = datetime.datetime.now(tz=datetime.UTC).date()
    return render(request, "reports.html", tenants=matching[:TENANTS_SHOWN], more=len(matching) - TENANTS_SHOWN,
                  q=q, months=_months(time.time()), mailings=mailings,
                  pdf=request.app[PDF_RENDERER].available, mailer=request.app[OPTIONS]["mailer"] is not None,
                  mail_day=request.app[SETTINGS].reports.mail_day,
                  branding=await branding_of(request.app) if p.is_admin else None,
                  saved=request.query.get("saved") == "branding",
                  first_of_month=today.replace(day=1).isoformat(), today=today.isoformat())


async def report_view(request: web.Request) -> web.Response:
    """The page's date-range form: checks what was typed, then the API's address of that report."""
    tenant = await visible_tenant(request, request.query.get("tenant", ""))
    fmt = request.query.get("format", "html")
    if fmt not in FORMATS:
        raise ApiError(400, f"format: {fmt!r} is not {', '.join(FORMATS[:-1])} or {FORMATS[-1]}")
    period = _report_period(f"{request.query.get('from', '')}..{request.query.get('to', '')}")
    raise web.HTTPFound(f"/api/v1/tenants/{tenant.id}/reports/{period.label}?format={fmt}")
