"""Email notifier: SMTP (STARTTLS or implicit TLS, optional AUTH) via aiosmtplib,
a plain-text and an HTML part rendered from jinja2 templates."""

from __future__ import annotations

import datetime
import email.message
import email.utils
import ssl
from collections.abc import Sequence

import aiosmtplib
import jinja2
import structlog

from policy.events import Event, Severity

from .base import NotifierError
from .config import EmailReceiver
from .tls import client_context

log = structlog.get_logger(__name__)

_TEXT_ENV = jinja2.Environment(loader=jinja2.PackageLoader("securewatch.notify", "templates"),
                               autoescape=False, undefined=jinja2.StrictUndefined)
_HTML_ENV = jinja2.Environment(loader=jinja2.PackageLoader("securewatch.notify", "templates"),
                               autoescape=True, undefined=jinja2.StrictUndefined)
_COLOURS = {Severity.INFO: "#2b6cb0", Severity.NOTICE: "#2f855a", Severity.WARNING: "#c05621",
            Severity.CRITICAL: "#c53030"}


def render_email(event: Event, receiver: EmailReceiver, delivery_id: str) -> email.message.EmailMessage:
    when = datetime.datetime.fromtimestamp(event.timestamp, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    context = {"event": event, "when": when, "delivery_id": delivery_id,
               "colour": _COLOURS[event.severity]}
    # One line, whatever the template does: a newline in a header would be an injection.
    subject = " ".join(_TEXT_ENV.get_template("email_subject.txt.j2").render(context).split())
    msg = email.message.EmailMessage()
    msg["Subject"] = subject
    msg["From"] = receiver.sender
    msg["To"] = ", ".join(receiver.to)
    msg["Date"] = email.utils.formatdate(event.timestamp, localtime=False)
    msg["Message-ID"] = email.utils.make_msgid(idstring=delivery_id, domain="seawall.invalid")
    msg["X-Seawall-Event"] = str(event.type)
    msg["X-Seawall-Delivery"] = delivery_id
    if event.incident_id:
        msg["X-Seawall-Incident"] = event.incident_id
    msg.set_content(_TEXT_ENV.get_template("email.txt.j2").render(context))
    msg.add_alternative(_HTML_ENV.get_template("email.html.j2").render(context, subject=subject),
                        subtype="html")
    return msg


class EmailNotifier:
    def __init__(self, receiver: EmailReceiver) -> None:
        self.receiver = receiver
        self.name = receiver.name

    async def send(self, event: Event, delivery_id: str) -> dict[str, str]:
        return await send_message(self.receiver, render_email(event, self.receiver, delivery_id), self.receiver.to)

    async def close(self) -> None:
        """Nothing to release: one connection per message (alerts are rare)."""


async def send_message(r: EmailReceiver, message: email.message.EmailMessage,
                       recipients: Sequence[str]) -> dict[str, str]:
    """One message through the receiver's SMTP server, or NotifierError (permanent: the server
    refused it for good). Events use it, and so do the tenants' monthly reports (securewatch.mailer).

    Returns the recipients the server refused while it took the message for the others
    (recipient -> its reply), logged here: the others have the message, so sending it again
    would only duplicate it for them."""
    where = f"smtp {r.smtp_host}:{r.smtp_port}"
    tls_context = client_context(where, r.ca_file) if (r.starttls or r.use_tls) else None
    try:
        refused, _ = await aiosmtplib.send(
            message, sender=r.sender, recipients=list(recipients), hostname=r.smtp_host, port=r.smtp_port,
            username=r.username, password=r.password.reveal() if r.password else None,
            start_tls=r.starttls, use_tls=r.use_tls, tls_context=tls_context, timeout=r.timeout_s)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        # Nobody took it. A 5xx for every recipient is final, as below; one 4xx ("mailbox
        # busy") and the message may yet reach that recipient: try later.
        replies = {e.recipient: f"{e.code} {e.message}" for e in exc.recipients}
        permanent = all(500 <= e.code < 600 for e in exc.recipients)
        raise NotifierError(f"{where}: every recipient refused: "
                            + "; ".join(f"{rcpt}: {reply}" for rcpt, reply in replies.items()),
                            permanent=permanent) from exc
    except aiosmtplib.SMTPResponseException as exc:
        # 5xx is the server's final word on this message (bad recipient, refused
        # content); 4xx is "try later". Authentication failures are a config matter
        # an operator fixes, so keep those queued rather than throw events away.
        permanent = 500 <= exc.code < 600 and not isinstance(exc, aiosmtplib.SMTPAuthenticationError)
        raise NotifierError(f"{where}: {exc.code} {exc.message}", permanent=permanent) from exc
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
        raise NotifierError(f"{where}: {type(exc).__name__}: {exc}") from exc
    replies = {rcpt: f"{reply.code} {reply.message}" for rcpt, reply in refused.items()}
    if replies:
        log.warning("notify.email.recipients_refused", smtp=f"{r.smtp_host}:{r.smtp_port}", refused=replies,
                    delivered_to=len(recipients) - len(replies))
    return replies
