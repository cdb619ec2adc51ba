"""Webhook notifier: generic signed JSON, Slack, Discord and PagerDuty Events v2.

Generic bodies are signed: `X-Seawall-Timestamp: <unix seconds>` and
`X-Seawall-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
Signing the timestamp with the body lets a receiver reject replays of old
requests. `X-Seawall-Delivery` is unique per event and delivery, for dedup.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from typing import Any

import aiohttp

from policy.events import Event, EventType, Severity

from .base import NotifierError
from .config import WebhookReceiver
from .tls import client_context

SIGNATURE_HEADER = "X-Seawall-Signature"
TIMESTAMP_HEADER = "X-Seawall-Timestamp"
DELIVERY_HEADER = "X-Seawall-Delivery"
# HTTP answers that mean "try again later"; every other 4xx refuses the event for good.
_RETRYABLE_4XX = {408, 409, 425, 429}
ERROR_BODY_CHARS = 200  # characters of a refusing answer's body kept in the error
_PAGERDUTY_SEVERITY = {Severity.INFO: "info", Severity.NOTICE: "info", Severity.WARNING: "warning",
                       Severity.CRITICAL: "critical"}
_DISCORD_COLOUR = {Severity.INFO: 0x2B6CB0, Severity.NOTICE: 0x2F855A, Severity.WARNING: 0xC05621,
                   Severity.CRITICAL: 0xC53030}
_SLACK_EMOJI = {EventType.ATTACK_START: ":rotating_light:", EventType.ATTACK_UPDATE: ":warning:",
                EventType.ATTACK_END: ":white_check_mark:", EventType.POLICY_CHANGE: ":gear:",
                EventType.SYSTEM: ":information_source:", EventType.ESCALATION: ":satellite_antenna:"}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (and what the tests do): constant-time comparison."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def summary(event: Event) -> str:
    parts = [f"{event.type}"]
    if event.tenant:
        parts.append(f"tenant {event.tenant}")
    if event.destinations:
        parts.append("dst " + ", ".join(event.destinations))
    if event.vectors:
        parts.append("vector " + ", ".join(event.vectors))
    if event.pps is not None:
        parts.append(f"{event.pps:,.0f} pps")
    return f"{' · '.join(parts)}: {event.message}"


def _facts(event: Event) -> list[tuple[str, str]]:
    facts = [("Severity", str(event.severity))]
    if event.tenant:
        facts.append(("Tenant", event.tenant))
    if event.incident_id:
        facts.append(("Incident", event.incident_id))
    if event.destinations:
        facts.append(("Destinations", ", ".join(event.destinations)))
    if event.vectors:
        facts.append(("Vectors", ", ".join(event.vectors)))
    if event.explanation:
        facts.append(("Explanation", event.explanation))
    if event.top_sources:
        facts.append(("Top sources", ", ".join(event.top_sources)))
    if event.confidence is not None:
        facts.append(("Confidence", f"{event.confidence:.0%}"))
    if event.pps is not None:
        facts.append(("Peak rate", f"{event.pps:,.0f} packets/s"))
    if event.packets_dropped is not None:
        facts.append(("Dropped", f"{event.packets_dropped:,} packets"))
    return facts


def generic_body(event: Event, delivery_id: str) -> dict[str, Any]:
    return {"delivery_id": delivery_id, "event": event.to_dict()}


def slack_body(event: Event) -> dict[str, Any]:
    fields = [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in _facts(event)]
    return {
        "text": f"{_SLACK_EMOJI[event.type]} {summary(event)}",  # the notification / fallback text
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn",
                                         "text": f"{_SLACK_EMOJI[event.type]} *{event.type}*: {event.message}"}},
            {"type": "section", "fields": fields[:10]},  # Slack allows at most 10 fields
        ],
    }


def discord_body(event: Event) -> dict[str, Any]:
    return {
        "content": summary(event)[:2000],  # Discord's limit in characters
        "embeds": [{
            "title": f"{event.type}",
            "description": event.message[:4096],
            "color": _DISCORD_COLOUR[event.severity],
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event.timestamp)),
            "fields": [{"name": k, "value": v, "inline": True} for k, v in _facts(event)][:25],
        }],
        "allowed_mentions": {"parse": []},  # event text never pings anyone
    }


def pagerduty_body(event: Event, routing_key: str, delivery_id: str) -> dict[str, Any] | None:
    """Events v2: trigger on start/update, resolve on end, dedup_key = incident id.
    Other events (policy changes, appliance news) do not page anyone: None."""
    if event.type not in (EventType.ATTACK_START, EventType.ATTACK_UPDATE, EventType.ATTACK_END):
        return None
    dedup_key = event.incident_id or f"seawall-{delivery_id}"
    if event.type is EventType.ATTACK_END:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key}
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": summary(event)[:1024],  # PagerDuty's limit in characters
            "source": socket.gethostname(),  # no DNS lookup: it could stall the loop
            "severity": _PAGERDUTY_SEVERITY[event.severity],
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event.timestamp)),
            "component": ",".join(event.destinations) or None,
            "group": event.tenant,
            "class": ",".join(event.vectors) or None,
            "custom_details": event.to_dict(),
        },
    }


class WebhookNotifier:
    def __init__(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver
        self.name = receiver.name
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ssl_ctx = client_context(f"webhook {self.receiver.endpoint}", self.receiver.ca_file)
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.receiver.timeout_s),
                connector=aiohttp.TCPConnector(ssl=ssl_ctx),
                headers={"User-Agent": "seawall-notify/1"})
        return self._session

    def request(self, event: Event, delivery_id: str) -> tuple[bytes, dict[str, str]] | None:
        """The body and headers to POST for `event`, or None when this kind skips it."""
        r = self.receiver
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: delivery_id}
        if r.webhook_kind == "generic":
            payload: dict[str, Any] | None = generic_body(event, delivery_id)
        elif r.webhook_kind == "slack":
            payload = slack_body(event)
        elif r.webhook_kind == "discord":
            payload = discord_body(event)
        else:
            assert r.routing_key is not None
            payload = pagerduty_body(event, r.routing_key.reveal(), delivery_id)
        if payload is None:
            return None
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        if r.secret is not None:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(r.secret.reveal(), timestamp, body)
        return body, headers

    async def send(self, event: Event, delivery_id: str) -> None:
        request = self.request(event, delivery_id)
        if request is None:
            return
        body, headers = request
        where = self.receiver.endpoint  # the URL itself may carry a token: never logged
        try:
            async with self._client().post(self.receiver.url.reveal(), data=body, headers=headers,
                                            allow_redirects=False) as resp:
                if 200 <= resp.status < 300:
                    return
                # Bytes, decoded leniently: an overloaded server's error page may be in any
                # encoding, and only the status decides whether to retry.
                text = (await resp.read()).decode(errors="replace")[:ERROR_BODY_CHARS]
                permanent = 400 <= resp.status < 500 and resp.status not in _RETRYABLE_4XX
                raise NotifierError(f"webhook {where}: HTTP {resp.status} {text}", permanent=permanent)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            detail = str(exc).replace(self.receiver.url.reveal(), f"{where}/***")
            raise NotifierError(f"webhook {where}: {type(exc).__name__}: {detail}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
