"""Monthly reports mailed to each tenant's contacts (Tenant.contacts) through the email notifier.

On `[securewatch.reports] mail_day` of each month (UTC) every tenant with contacts gets a delivery
row for last month (`reports_store`); a row is made once per tenant and month, whatever restarts or
second processes do, and is what the console shows (`GET /api/v1/reports/mailings`, the Reports
page). Each pending row is sent through the SMTP code of the notify package's email receiver
(`notify.mail.send_message`, the first `[[notify.email]]` receiver's server and sender): the
report as the mail's HTML body, its PDF (with a `pdf_renderer`) and CSV attached. A server that is
down or answers 4xx is retried with capped backoff (`REPORT_RETRY`), nothing lost; a 5xx refusal
or a report that cannot be built marks the row failed with its error, to be retried by the
operator (`POST /api/v1/reports/mailings/{tenant}/{period}/retry`) once the cause is fixed.

The Message-ID is the same for every attempt of a tenant's month: should a crash fall between the
server's acceptance and the row being marked sent, the resent copy is recognisable as a duplicate.
"""

from __future__ import annotations

import datetime
import email.message
import email.utils
import pathlib
import random
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog

from . import formatting, reports_store
from .notify.base import NotifierError
from .notify.config import EmailReceiver, NotifyConfig
from .notify.mail import send_message
from .notify.manager import RetryPolicy
from .reports import Period, build_report, parse_period, previous_month
from .reports_config import ReportSettings
from .reports_render import PdfError, PdfRenderer, render_html, report_environment, report_filename
from .store import Store

if TYPE_CHECKING:
    from tenants import Tenant

log = structlog.get_logger(__name__)

# A mail server that is down is tried again after 1, 2, 4 ... minutes, then every 2 hours.
REPORT_RETRY = RetryPolicy(initial_s=60.0, max_s=7200.0)
BATCH = 50                     # deliveries attempted per check (the rest wait for the next check)


def report_mailer(notify: NotifyConfig | None, settings: ReportSettings,
                  pcap_root: pathlib.Path | None = None) -> ReportMailer | None:
    """The mailer of the first `[[notify.email]]` receiver; None without one (no report mail)."""
    receivers = [r for r in (notify.receivers if notify else ()) if isinstance(r, EmailReceiver)]
    return ReportMailer(receivers[0], settings, pcap_root=pcap_root) if receivers else None


class ReportMailer:
    def __init__(self, receiver: EmailReceiver, settings: ReportSettings | None = None, *,
                 retry: RetryPolicy = REPORT_RETRY, pcap_root: pathlib.Path | None = None) -> None:
        self.receiver = receiver
        self.settings = settings or ReportSettings()
        self.retry = retry
        self.pcap_root = pcap_root
        self.pdf = PdfRenderer(self.settings.pdf_renderer)
        self._env = report_environment()
        self._rng = random.Random()
        self._scheduled: tuple[str, int] | None = None   # (period, tenant-set version) already scheduled

    async def send_due_reports(self, store: Store, now: float | None = None,
                               tenants: Iterable[Tenant] | None = None) -> int:
        """Schedule last month's reports if their day has come, then send what is due (`tenants`:
        the stored tenant set unless given). Returns how many went out now."""
        now = time.time() if now is None else now
        if tenants is None:
            state = await store.tenant_state()
            known = {t.id: t for t in state.tenants}
            version = state.version
        else:
            known = {t.id: t for t in tenants}
            version = -1
        period = previous_month(now)
        day = datetime.datetime.fromtimestamp(now, tz=datetime.UTC).day
        if day >= self.settings.mail_day and self._scheduled != (period.label, version):
            made = await reports_store.schedule(
                store, period.label, [(t.id, list(t.contacts)) for t in known.values() if t.contacts], now)
            if made:
                log.info("report.scheduled", period=period.label, deliveries=made)
            self._scheduled = (period.label, version) if version >= 0 else None
        sent = 0
        for row in await reports_store.due(store, now, BATCH):
            sent += await self._attempt(store, row, known.get(row["tenant"]), now)
        return sent

    async def _attempt(self, store: Store, row: dict[str, Any], tenant: Tenant | None, now: float) -> bool:
        label = row["period"]
        if tenant is None or not tenant.contacts:
            await reports_store.record(store, row["tenant"], label, state="cancelled", now=now,
                                       recipients=row["recipients"],
                                       error="the tenant was removed" if tenant is None else "the tenant has no contacts")
            log.info("report.mail_cancelled", tenant=row["tenant"], period=label)
            return False
        recipients = list(tenant.contacts)
        attempt = row["attempts"] + 1
        try:
            message = await self._message(store, tenant, parse_period(label), now)
            refused = await send_message(self.receiver, message, recipients)
        except (NotifierError, PdfError) as exc:
            permanent = isinstance(exc, NotifierError) and exc.permanent
            delay = self.retry.delay(attempt, self._rng)
            await reports_store.record(store, tenant.id, label, state="failed" if permanent else "pending", now=now,
                                       recipients=recipients, error=str(exc),
                                       next_attempt=None if permanent else now + delay)
            log.warning("report.mail_failed", tenant=tenant.id, period=label, error=str(exc), attempt=attempt,
                        retry_in_s=None if permanent else round(delay))
            return False
        except Exception as exc:  # noqa: BLE001 - a bug or bad data in one tenant's report
            error = f"{type(exc).__name__}: {exc}"
            await reports_store.record(store, tenant.id, label, state="failed", now=now, recipients=recipients,
                                       error=error)
            log.error("report.mail_failed", tenant=tenant.id, period=label, error=error, attempt=attempt)
            return False
        # Sent: the others have it, so it is not sent again; the contacts the server refused are
        # the delivery's error, for the reports page to show (send_message logged them too).
        error = "; ".join(f"{rcpt} refused it: {reply}" for rcpt, reply in refused.items()) or None
        await reports_store.record(store, tenant.id, label, state="sent", now=now, recipients=recipients,
                                   error=error)
        log.info("report.mailed", tenant=tenant.id, period=label, recipients=len(recipients) - len(refused),
                 refused=len(refused), attempt=attempt)
        return True

    async def _message(self, store: Store, tenant: Tenant, period: Period, now: float) -> email.message.EmailMessage:
        report = await build_report(store, tenant.id, tenant.name, period, now, pcap_root=self.pcap_root)
        branding = await reports_store.saved_branding(store, self.settings.branding)
        html = render_html(self._env, report, branding, standalone=True)
        s = report.summary
        msg = email.message.EmailMessage()
        msg["Subject"] = f"{branding.operator_name}: DDoS report {period.label} for {tenant.name}, {s['attacks']} attacks"
        msg["From"] = self.receiver.sender
        msg["To"] = ", ".join(tenant.contacts)
        msg["Date"] = email.utils.formatdate(now)
        msg["Message-ID"] = f"<report-{tenant.id}-{period.label}@seawall.invalid>"
        attached = "PDF, CSV" if self.pdf.available else "CSV"
        msg.set_content(f"DDoS protection report for {tenant.name} ({tenant.id}), {period.label}\n\n"
                        f"Attacks: {formatting.number(s['attacks'])}\nPeak: {formatting.rate(s['peak_pps'])}\n"
                        f"Packets dropped: {formatting.number(s['packets_dropped'])}\n"
                        f"Time to mitigate (median): {formatting.duration(s['median_mitigation_s'])}\n\n"
                        f"The full report is this mail's HTML part, and attached ({attached}).\n"
                        f"-- \n{branding.operator_name}\n")
        msg.add_alternative(html, subtype="html")
        if self.pdf.available:
            msg.add_attachment(await self.pdf.render(html), maintype="application", subtype="pdf",
                               filename=report_filename(report, "pdf"))
        msg.add_attachment(report.to_csv().encode(), maintype="text", subtype="csv",
                           filename=report_filename(report, "csv"))
        return msg

