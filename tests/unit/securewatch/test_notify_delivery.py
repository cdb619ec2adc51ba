"""Delivery that loses nothing: the durable queue (coalescing, restarts), backoff, routing,
and the NotifierManager against real in-process receivers on loopback: an aiohttp
webhook endpoint and an aiosmtpd SMTP server with STARTTLS and AUTH."""

from __future__ import annotations

import asyncio
import json
import pathlib
import random
import socket
import ssl
import subprocess

import pytest
import structlog
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from policy.events import Event, EventBus, EventType, Severity
from securewatch.notify import (
    NOTIFIER_MANAGER,
    DurableQueue,
    NotifierManager,
    RetryPolicy,
    parse_notify_config,
)
from securewatch.notify.webhook import ERROR_BODY_CHARS, verify
from tests.support import await_until

FAST_RETRY = RetryPolicy(initial_s=0.05, max_s=0.2)  # seconds: tests wait on outcomes, not on backoff
HMAC_SECRET = "webhook-hmac-secret"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(directory: pathlib.Path) -> dict[str, str]:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1, made by openssl."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory, timeout=60)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=Seawall test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "1", "-extfile", "server.ext")
    return {name: str(directory / f"{name}") for name in ("ca.pem", "server.pem", "server.key")}


def attack(incident: str, tenant: str, event_type: EventType, label: str, **kw) -> Event:
    return Event(event_type, tenant, label, Severity.CRITICAL, incident, ("198.51.100.10",), ("syn_flood",),
                 0.9, kw.pop("pps", 1000.0), None, kw.pop("dropped", 10), **kw)


# --- the durable queue -------------------------------------------------------------


def test_queue_merges_only_queued_updates_of_one_incident(tmp_path):
    q = DurableQueue(tmp_path / "q.sqlite")
    events = [
        attack("A", "alpha", EventType.ATTACK_START, "A start"),
        attack("A", "alpha", EventType.ATTACK_UPDATE, "A u1", pps=1.0),
        attack("B", "beta", EventType.ATTACK_START, "B start"),
        attack("A", "alpha", EventType.ATTACK_UPDATE, "A u2", pps=2.0),  # merges into A u1's row
        attack("B", "beta", EventType.ATTACK_UPDATE, "B u1"),
        attack("A", "alpha", EventType.ATTACK_UPDATE, "A u3", pps=3.0),  # merges again
        attack("A", "alpha", EventType.ATTACK_END, "A end"),
        attack("A", "alpha", EventType.ATTACK_UPDATE, "A late update"),  # after END: never merged across it
        attack("B", "beta", EventType.ATTACK_UPDATE, "B u2"),  # merges into B u1
    ]
    for e in events:
        q.put(e)
    assert [e.message for e in q.pending()] == [
        "A start", "A u3", "B start", "B u2", "A end", "A late update"]
    assert q.pending()[1].pps == 3.0  # the latest values, not the first
    assert q.backlog == 6
    q.close()


def test_queue_never_merges_into_the_event_being_sent(tmp_path):
    q = DurableQueue(tmp_path / "q.sqlite")
    q.put(attack("A", "alpha", EventType.ATTACK_UPDATE, "u1"))
    head = q.head()  # in flight now
    q.put(attack("A", "alpha", EventType.ATTACK_UPDATE, "u2"))
    q.put(attack("A", "alpha", EventType.ATTACK_UPDATE, "u3"))  # merges into u2, not the in-flight u1
    assert [e.message for e in q.pending()] == ["u1", "u3"]
    q.ack(head.row_id)
    assert [e.message for e in q.pending()] == ["u3"]
    q.close()


def test_queue_survives_reopening_with_unique_delivery_ids(tmp_path):
    path = tmp_path / "q.sqlite"
    q = DurableQueue(path)
    first = attack("A", "alpha", EventType.ATTACK_START, "A start", details={"note": "kept"})
    q.put(first)
    q.put(attack("A", "alpha", EventType.ATTACK_END, "A end"))
    head = q.head()
    q.ack(head.row_id)
    q.close()
    q = DurableQueue(path)
    assert q.journal_mode == "wal"
    assert q.delivered == 1 and q.last_success is not None
    assert [e.message for e in q.pending()] == ["A end"]
    q.put(attack("B", "beta", EventType.ATTACK_START, "B start"))
    ids = [head.delivery_id]
    while (item := q.head()) is not None:
        ids.append(item.delivery_id)
        q.ack(item.row_id)
    assert len(set(ids)) == 3, ids
    assert head.event == first  # every field, details and timestamp included, round-trips
    q.close()


def test_backoff_grows_is_capped_and_jittered():
    policy = RetryPolicy(initial_s=1.0, max_s=30.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (40, 30.0)]:
        delays = {policy.delay(attempt, rng) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, delays)
        assert len(delays) > 1  # jittered


# --- a real webhook receiver ----------------------------------------------------------


class WebhookSink:
    """An aiohttp endpoint on loopback that records what it receives, and can go down."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[tuple[str, dict]] = []  # (path, JSON body)
        self.answer = 200
        self.answer_body = b"not now"  # the body of a refusal (answer >= 300)
        self.bad_signatures = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.path == "/generic" and not verify(
                HMAC_SECRET, request.headers.get("X-Seawall-Timestamp", ""), body,
                request.headers.get("X-Seawall-Signature", "")):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.answer >= 300:
            return web.Response(status=self.answer, body=self.answer_body, content_type="text/html")
        self.received.append((request.path, json.loads(body)))
        return web.Response(status=202 if request.path.startswith("/pd") else 200)

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def events(self, path: str) -> list[Event]:
        return [Event.from_dict(body["event"]) for p, body in self.received if p == path]


@pytest.fixture
async def sink():
    s = WebhookSink(free_port())
    yield s
    await s.down()


def webhook_config(port: int, state_dir: pathlib.Path, **extra):
    return parse_notify_config({
        "state_dir": str(state_dir),
        "webhook": [
            {"name": "noc-hook", "url": f"http://127.0.0.1:{port}/generic", "secret": HMAC_SECRET},
            {"name": "alpha-hook", "url": f"http://127.0.0.1:{port}/alpha", "kind": "generic",
             "secret": HMAC_SECRET, "tenants": ["alpha"]},
            {"name": "pd", "url": f"http://127.0.0.1:{port}/pd", "kind": "pagerduty", "routing_key": "rk-1"},
            {"name": "slack", "url": f"http://127.0.0.1:{port}/slack/T0/B0/token", "kind": "slack",
             "tenants": ["beta"]},
            {"name": "discord", "url": f"http://127.0.0.1:{port}/discord/1/token", "kind": "discord",
             "tenants": ["beta"]},
        ],
        **extra,
    })


async def test_receiver_down_then_restart_then_back_loses_and_duplicates_nothing(tmp_path, sink):
    """Receivers are down through an attack and a manager restart; when they come back
    every event arrives once, in order, updates merged into the latest per incident."""
    cfg = webhook_config(sink.port, tmp_path)
    bus = EventBus()
    async with NotifierManager(cfg, bus, retry=FAST_RETRY) as mgr:
        for e in [attack("A", "alpha", EventType.ATTACK_START, "A start"),
                  *[attack("A", "alpha", EventType.ATTACK_UPDATE, f"A update {i}", pps=i) for i in range(5)],
                  attack("B", "beta", EventType.ATTACK_START, "B start"),
                  attack("A", "alpha", EventType.ATTACK_END, "A end"),
                  attack("B", "beta", EventType.ATTACK_UPDATE, "B update 0")]:
            bus.publish(e)
        await await_until(lambda: mgr.status()["noc-hook"].consecutive_failures >= 2, what="retries")
        status = mgr.status()["noc-hook"]
        assert not status.healthy and "ClientConnectorError" in status.last_error
    # Restarted while the receiver is still down: the queue is on disk.
    async with NotifierManager(cfg, bus, retry=FAST_RETRY) as mgr:
        assert mgr.status()["noc-hook"].backlog == 5  # A start, A update (merged), B start, A end, B update
        for e in [attack("B", "beta", EventType.ATTACK_UPDATE, "B update 1"),
                  Event(EventType.POLICY_CHANGE, "beta", "beta policy edited", incident_id=None),
                  attack("B", "beta", EventType.ATTACK_UPDATE, "B update 2"),
                  attack("B", "beta", EventType.ATTACK_END, "B end"),
                  Event(EventType.SYSTEM, None, "appliance restarted")]:
            bus.publish(e)
        await sink.up()
        await await_until(lambda: mgr.status()["noc-hook"].delivered == 8 and mgr.status()["pd"].delivered == 8
                          and all(s.backlog == 0 for s in mgr.status().values()), timeout=15,
                          what="every backlog to drain")
        status = mgr.status()
    noc = [e.message for e in sink.events("/generic")]
    # B update 1 merged into the queued B update 0 row; B update 2 into it again.
    assert noc == ["A start", "A update 4", "B start", "A end", "B update 2", "beta policy edited", "B end",
                   "appliance restarted"]
    assert sink.events("/generic")[1].pps == 4
    assert [e.message for e in sink.events("/alpha")] == ["A start", "A update 4", "A end"]  # alpha's only
    pd = [(b["event_action"], b["dedup_key"]) for p, b in sink.received if p == "/pd"]
    assert pd == [("trigger", "A"), ("trigger", "A"), ("trigger", "B"), ("resolve", "A"), ("trigger", "B"),
                  ("resolve", "B")]
    slack = [b["text"] for p, b in sink.received if p.startswith("/slack")]
    discord = [b["embeds"][0]["description"] for p, b in sink.received if p.startswith("/discord")]
    assert len(slack) == 4 and "B start" in slack[0] and "B end" in slack[3]  # beta's only
    assert discord == ["B start", "B update 2", "beta policy edited", "B end"]
    deliveries = [b["delivery_id"] for p, b in sink.received if p in ("/generic", "/alpha")]
    assert len(deliveries) == len(set(deliveries))
    assert sink.bad_signatures == 0
    assert status["noc-hook"].healthy and status["noc-hook"].delivered == 8
    assert status["noc-hook"].last_success is not None and status["alpha-hook"].delivered == 3


async def test_retryable_and_permanent_http_answers(tmp_path, sink):
    cfg = webhook_config(sink.port, tmp_path)
    bus = EventBus()
    await sink.up()
    sink.answer = 503
    async with NotifierManager(cfg, bus, retry=FAST_RETRY) as mgr:
        bus.publish(attack("A", "alpha", EventType.ATTACK_START, "A start"))
        await await_until(lambda: mgr.status()["noc-hook"].consecutive_failures >= 2, what="503 retries")
        assert "HTTP 503" in mgr.status()["noc-hook"].last_error
        sink.answer = 400  # refused for good: set aside, the queue moves on
        await await_until(lambda: mgr.status()["noc-hook"].dead_letters == 1, what="dead letter")
        sink.answer = 200
        bus.publish(attack("A", "alpha", EventType.ATTACK_END, "A end"))
        await await_until(lambda: mgr.status()["noc-hook"].delivered == 1, what="delivery after the refusal")
    assert [e.message for e in sink.events("/generic")] == ["A end"]


async def test_a_5xx_with_a_body_that_is_not_utf8_is_retried(tmp_path, sink):
    """An overloaded receiver's error page in latin-1: decoding it raised out of the notifier,
    and the manager set the event aside for good. The status alone decides: retried."""
    await sink.up()
    sink.answer = 503
    sink.answer_body = b"Service indisponible, r\xe9essayez plus tard. " * 20  # latin-1, 920 bytes
    bus = EventBus()
    async with NotifierManager(webhook_config(sink.port, tmp_path), bus, retry=FAST_RETRY) as mgr:
        bus.publish(attack("A", "alpha", EventType.ATTACK_START, "A start"))
        await await_until(lambda: mgr.status()["noc-hook"].consecutive_failures >= 2, what="503 retries")
        status = mgr.status()["noc-hook"]
        assert (status.backlog, status.dead_letters) == (1, 0)
        prefix = f"webhook http://127.0.0.1:{sink.port}: HTTP 503 "
        assert status.last_error.startswith(prefix + "Service indisponible, r\ufffdessayez plus tard.")
        assert len(status.last_error) == len(prefix) + ERROR_BODY_CHARS  # the body, cut
        sink.answer = 200
        await await_until(lambda: mgr.status()["noc-hook"].delivered == 1, what="delivery once it is back")
    assert [e.message for e in sink.events("/generic")] == ["A start"]


async def test_manager_starts_and_stops_with_the_aiohttp_app(tmp_path, sink):
    await sink.up()
    bus = EventBus()
    mgr = NotifierManager(webhook_config(sink.port, tmp_path), bus, retry=FAST_RETRY)
    app = web.Application()
    app.cleanup_ctx.append(mgr.cleanup_ctx)
    runner = web.AppRunner(app)
    await runner.setup()  # runs startup: the manager starts
    try:
        assert app[NOTIFIER_MANAGER] is mgr and mgr.running
        assert {t.get_name() for t in asyncio.all_tasks()} >= {"notify:noc-hook", "notify:alpha-hook", "notify:pd",
                                                                "notify:dispatch"}
        bus.publish(Event(EventType.SYSTEM, None, "hello"))
        await await_until(lambda: len(sink.received) == 1, what="delivery")  # PagerDuty skips SYSTEM
    finally:
        await runner.cleanup()
    assert not mgr.running
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("notify:")]


async def test_stop_keeps_events_published_but_not_yet_routed(tmp_path, sink):
    bus = EventBus()
    cfg = webhook_config(sink.port, tmp_path)
    mgr = NotifierManager(cfg, bus, retry=FAST_RETRY)
    await mgr.start()
    bus.publish(Event(EventType.SYSTEM, None, "published just before stop"))
    await mgr.stop()  # the dispatcher never ran: stop() routes what is left on the bus
    await sink.up()
    async with NotifierManager(cfg, bus, retry=FAST_RETRY):
        await await_until(lambda: len(sink.events("/generic")) == 1, what="delivery after restart")


async def test_a_reused_receiver_name_never_gets_another_tenants_backlog(tmp_path, sink):
    """An operator edits the config: the name that was alpha's receiver is now beta's.
    Alpha's waiting events are set aside, not sent to beta."""
    def config(tenant: str):
        return parse_notify_config({"webhook": [
            {"name": "tenant-hook", "url": f"http://127.0.0.1:{sink.port}/tenant", "secret": HMAC_SECRET,
             "tenants": [tenant]}]})
    bus = EventBus()
    async with NotifierManager(config("alpha"), bus, tmp_path, retry=FAST_RETRY) as mgr:
        bus.publish(attack("A", "alpha", EventType.ATTACK_START, "alpha's attack"))
        await await_until(lambda: mgr.status()["tenant-hook"].consecutive_failures >= 1, what="a failed try")
    await sink.up()
    async with NotifierManager(config("beta"), bus, tmp_path, retry=FAST_RETRY) as mgr:
        assert mgr.status()["tenant-hook"].dead_letters == 1
        bus.publish(attack("B", "beta", EventType.ATTACK_START, "beta's attack"))
        await await_until(lambda: mgr.status()["tenant-hook"].delivered == 1, what="beta's event")
    assert [e.message for e in sink.events("/tenant")] == ["beta's attack"]


# --- a real SMTP server with STARTTLS and AUTH -------------------------------------------


class MailCapture:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes, bool, bool]] = []  # rcpts, data, tls, authenticated
        self.refuse: dict[str, str] = {}  # recipient -> the server's reply to its RCPT TO, e.g. "550 ..."

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 - aiosmtpd's
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append((list(envelope.rcpt_tos), envelope.original_content,
                              session.ssl is not None, bool(session.authenticated)))
        return "250 OK"


@pytest.fixture
def smtp_server(tmp_path):
    certs = make_certs(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs["server.pem"], certs["server.key"])

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            b"seawall", b"smtp-pass")
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself

    capture = MailCapture()
    controller = Controller(capture, hostname="127.0.0.1", port=free_port(), tls_context=tls,
                            require_starttls=True, authenticator=authenticator, auth_require_tls=True,
                            ready_timeout=10)
    controller.start()  # returns once the server answers
    try:
        yield controller, capture, certs["ca.pem"]
    finally:
        controller.stop()


async def test_email_over_starttls_with_auth_per_tenant_and_noc(tmp_path, smtp_server):
    controller, capture, ca = smtp_server
    common = {"smtp_host": "127.0.0.1", "smtp_port": controller.port, "starttls": True, "ca_file": ca,
              "username": "seawall", "from": "seawall@example.net"}
    cfg = parse_notify_config({"email": [
        {**common, "name": "noc-mail", "password": "smtp-pass", "to": ["noc@example.net"]},
        {**common, "name": "alpha-mail", "password": "smtp-pass", "to": ["ops@alpha.example"], "tenants": ["alpha"]},
        {**common, "name": "bad-login", "password": "wrong-pass", "to": ["noc@example.net"]},
    ]})
    bus = EventBus()
    async with NotifierManager(cfg, bus, tmp_path, retry=FAST_RETRY) as mgr:
        bus.publish(attack("A", "alpha", EventType.ATTACK_START, "A start"))
        bus.publish(attack("B", "beta", EventType.ATTACK_START, "B start"))
        await await_until(lambda: mgr.status()["noc-mail"].delivered == 2 and mgr.status()["alpha-mail"].delivered == 1,
                          what="mail delivery")
        await await_until(lambda: mgr.status()["bad-login"].consecutive_failures >= 1, what="auth failure")
        bad = mgr.status()["bad-login"]
        assert bad.backlog == 2 and bad.dead_letters == 0 and "535" in bad.last_error  # kept, not dropped
    by_rcpt = {}
    for rcpts, data, tls, authenticated in capture.messages:
        assert tls and authenticated
        for r in rcpts:
            by_rcpt.setdefault(r, []).append(data)
    assert len(by_rcpt["noc@example.net"]) == 2
    (alpha_mail,) = by_rcpt["ops@alpha.example"]  # never beta's attack
    assert b"ATTACK_START alpha" in alpha_mail and b"multipart/alternative" in alpha_mail
    assert b"text/html" in alpha_mail and b"text/plain" in alpha_mail


GONE = "550 5.1.1 <gone@example.net>: user unknown"


async def test_refused_recipients_are_logged_and_shown_and_a_5xx_for_all_is_final(tmp_path, smtp_server):
    """Refused while others took it: delivered, but logged and shown in the status (the message
    is not sent again: the others have it). Refused by every recipient with a 5xx: set aside and
    logged, like any 5xx. A 4xx ("mailbox busy") for every recipient: kept queued, retried."""
    controller, capture, ca = smtp_server
    capture.refuse = {"gone@example.net": GONE, "busy@example.net": "450 4.2.1 mailbox busy"}
    common = {"smtp_host": "127.0.0.1", "smtp_port": controller.port, "starttls": True, "ca_file": ca,
              "username": "seawall", "password": "smtp-pass", "from": "seawall@example.net"}
    cfg = parse_notify_config({"email": [
        {**common, "name": "some-gone", "to": ["noc@example.net", "gone@example.net"]},
        {**common, "name": "all-gone", "to": ["gone@example.net"]},
        {**common, "name": "busy", "to": ["busy@example.net"]},
    ]})
    bus = EventBus()
    state = tmp_path / "queues"
    with structlog.testing.capture_logs() as logs:
        async with NotifierManager(cfg, bus, state, retry=FAST_RETRY) as mgr:
            bus.publish(attack("A", "alpha", EventType.ATTACK_START, "A start"))
            await await_until(lambda: mgr.status()["some-gone"].delivered == 1
                              and mgr.status()["all-gone"].dead_letters == 1
                              and mgr.status()["busy"].consecutive_failures >= 2, what="each outcome")
            status = mgr.status()
    some, gone, busy = status["some-gone"], status["all-gone"], status["busy"]
    assert some.refused_recipients == {"gone@example.net": GONE} and not some.healthy
    assert some.to_public_dict()["refused_recipients"] == {"gone@example.net": GONE}
    assert [rcpts for rcpts, *_ in capture.messages] == [["noc@example.net"]]  # once, to the one who took it
    assert (gone.backlog, gone.dead_letters, gone.refused_recipients) == (0, 1, {})
    assert gone.last_error == f"smtp 127.0.0.1:{controller.port}: every recipient refused: gone@example.net: {GONE}"
    assert (busy.backlog, busy.dead_letters) == (1, 0) and "450 4.2.1 mailbox busy" in busy.last_error
    # (The worker binds receiver= to its log context; capture_logs leaves context out.)
    assert [(e["refused"], e["delivered_to"]) for e in logs if e["event"] == "notify.email.recipients_refused"] == [
        ({"gone@example.net": GONE}, 1)]
    assert [e["error"] for e in logs if e["event"] == "notify.refused"] == [gone.last_error]


async def test_a_ca_file_gone_after_validation_keeps_events_queued_naming_it(tmp_path):
    """The CA file passed validation, then went away (renamed, a package removed): a matter for
    an operator, like a wrong password. Every TLS notifier keeps the event and says which key and
    which file; the email notifier raised FileNotFoundError, and every event was set aside."""
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = make_certs(certs)["ca.pem"]
    closed = free_port()  # nothing listens: the notifiers fail before connecting anyway
    cfg = parse_notify_config({
        "syslog": [{"name": "noc-syslog", "host": "127.0.0.1", "port": closed, "transport": "tls", "ca_file": ca}],
        "email": [{"name": "noc-mail", "smtp_host": "127.0.0.1", "smtp_port": closed, "from": "s@example.net",
                   "to": ["noc@example.net"], "ca_file": ca}],
        "webhook": [{"name": "noc-hook", "url": f"https://127.0.0.1:{closed}/hook", "secret": HMAC_SECRET,
                     "ca_file": ca}],
    })
    pathlib.Path(ca).unlink()
    bus = EventBus()
    async with NotifierManager(cfg, bus, tmp_path / "queues", retry=FAST_RETRY) as mgr:
        bus.publish(attack("A", "alpha", EventType.ATTACK_START, "A start"))
        await await_until(lambda: all(s.consecutive_failures >= 2 for s in mgr.status().values()),
                          what="every receiver to retry")
        status = mgr.status()
    for name, where in [("noc-syslog", f"syslog tls://127.0.0.1:{closed}"), ("noc-mail", f"smtp 127.0.0.1:{closed}"),
                        ("noc-hook", f"webhook https://127.0.0.1:{closed}")]:
        assert (status[name].backlog, status[name].dead_letters) == (1, 0), name
        assert status[name].last_error == (
            f"{where}: ca_file: {ca} does not exist or cannot be read (No such file or directory)")
