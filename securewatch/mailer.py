"""Monthly reports mailed to each tenant's contacts (Tenant.contacts), over SMTP with aiosmtplib.

The notify package's EmailNotifier renders events, not reports, so this sends
directly with aiosmtplib, reusing the SMTP settings of an `[[notify.email]]`
receiver when built with `ReportMailer.from_receiver`.
"""

from __future__ import annotations

import dataclasses
import email.message
import email.utils
import ssl
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import aiosmtplib
import structlog

from . import formatting
from .reports import Period, build_report, previous_month
from .store import Store
from .ui import template_environment

if TYPE_CHECKING:
    from tenants import Tenant

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class ReportMailer:
    smtp_host: str
    smtp_port: int
    sender: str
    starttls: bool = False
    use_tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    timeout_s: float = 30.0            # seconds per SMTP conversation

    @classmethod
    def from_receiver(cls, receiver) -> ReportMailer:
        """Reuse an email receiver's SMTP settings (securewatch.notify.EmailReceiver)."""
        return cls(smtp_host=receiver.smtp_host, smtp_port=receiver.smtp_port, sender=receiver.sender,
                   starttls=receiver.starttls, use_tls=receiver.use_tls, username=receiver.username,
                   password=receiver.password.reveal() if receiver.password else None, ca_file=receiver.ca_file,
                   timeout_s=receiver.timeout_s)

    async def send_report(self, store: Store, tenant, period: Period, now: float) -> bool:
        """Mail one tenant's report for `period` unless already mailed; True when sent now."""
        if not tenant.contacts or await store.report_mailed(tenant.id, period.label):
            return False
        report = await build_report(store, tenant.id, tenant.name, period, now)
        html = template_environment().get_template("report.html").render(r=report, summary=report.summary)
        s = report.summary
        msg = email.message.EmailMessage()
        msg["Subject"] = f"Seawall DDoS report {period.label}: {tenant.name}, {s['attacks']} attacks"
        msg["From"] = self.sender
        msg["To"] = ", ".join(tenant.contacts)
        msg["Date"] = email.utils.formatdate(now)
        msg["Message-ID"] = email.utils.make_msgid(idstring=f"report-{tenant.id}-{period.label}",
                                                   domain="seawall.invalid")
        msg.set_content(f"DDoS protection report for {tenant.name} ({tenant.id}), {period.label}\n\n"
                        f"Attacks: {formatting.number(s['attacks'])}\nPeak: {formatting.rate(s['peak_pps'])}\n"
                        f"Packets dropped: {formatting.number(s['packets_dropped'])}\n\n"
                        f"The full report is attached (HTML and CSV).\n")
        msg.add_alternative(html, subtype="html")
        msg.add_attachment(report.to_csv().encode(), maintype="text", subtype="csv",
                           filename=f"seawall-report-{tenant.id}-{period.label}.csv")
        tls = ssl.create_default_context(cafile=self.ca_file) if (self.starttls or self.use_tls) else None
        await aiosmtplib.send(msg, sender=self.sender, recipients=list(tenant.contacts), hostname=self.smtp_host,
                              port=self.smtp_port, username=self.username, password=self.password,
                              start_tls=self.starttls, use_tls=self.use_tls, tls_context=tls,
                              timeout=self.timeout_s)
        await store.mark_report_mailed(tenant.id, period.label, tenant.contacts)
        log.info("report.mailed", tenant=tenant.id, period=period.label, recipients=len(tenant.contacts))
        return True

    async def send_due_reports(self, store: Store, now: float | None = None,
                               tenants: Iterable[Tenant] | None = None) -> int:
        """Last month's report for every tenant with contacts that has not had it yet (`tenants`:
        the stored tenant set unless given). One tenant's failure is logged and skipped: it never
        keeps the tenants after it from getting theirs."""
        now = time.time() if now is None else now
        period = previous_month(now)
        sent = 0
        for tenant in await store.tenant_set() if tenants is None else tenants:
            try:
                sent += await self.send_report(store, tenant, period, now)
            except (aiosmtplib.SMTPException, OSError) as exc:
                # Not marked as mailed: the next hourly check tries again.
                log.warning("report.mail_failed", tenant=tenant.id, period=period.label, error=str(exc))
            except Exception as exc:  # noqa: BLE001 - a bug or bad data in one tenant's report
                log.error("report.mail_failed", tenant=tenant.id, period=period.label,
                          error=f"{type(exc).__name__}: {exc}")
        return sent
