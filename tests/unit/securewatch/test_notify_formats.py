"""What each notifier puts on the wire: RFC 5424 syslog (checked by a strict parser of
the ABNF), SEAWALL-MIB OIDs (checked against the MIB compiled by pysmi), email parts,
webhook bodies and signatures."""

from __future__ import annotations

import datetime
import email
import email.policy
import json
import pathlib
import re
import subprocess
import sys

import pytest

from policy.events import Event, EventType, Severity
from securewatch.notify import parse_notify_config
from securewatch.notify.mail import render_email
from securewatch.notify.snmp import NOTIFICATION_OIDS, VARBIND_OIDS
from securewatch.notify.syslog import SD_ID, format_rfc5424, frame_octet_counting
from securewatch.notify.webhook import WebhookNotifier, verify

MIBS = pathlib.Path(__file__).resolve().parents[3] / "securewatch" / "mibs"

# RFC 5424 section 6, strictly: every field, no leniency. PRINTUSASCII is %d33-126.
_PRINT = r"[!-~]"
_SD_NAME = r'[!#-<>-\\^-~]{1,32}'  # PRINTUSASCII except '=', SP, ']', '"'
_PARAM_VALUE = r'(?:[^"\\\]]|\\["\\\]])*'  # '"', '\' and ']' only escaped
_SD_ELEMENT = rf'\[{_SD_NAME}(?: {_SD_NAME}="{_PARAM_VALUE}")*\]'
RFC5424 = re.compile(
    rf"^<(?P<pri>0|[1-9]\d{{0,2}})>(?P<version>[1-9]\d{{0,2}}) "
    rf"(?P<timestamp>-|\d{{4}}-\d{{2}}-\d{{2}}T\d{{2}}:\d{{2}}:\d{{2}}(?:\.\d{{1,6}})?(?:Z|[+-]\d{{2}}:\d{{2}})) "
    rf"(?P<hostname>-|{_PRINT}{{1,255}}) (?P<app>-|{_PRINT}{{1,48}}) (?P<procid>-|{_PRINT}{{1,128}}) "
    rf"(?P<msgid>-|{_PRINT}{{1,32}}) (?P<sd>-|(?:{_SD_ELEMENT})+)(?: (?P<msg>.*))?$",
    re.DOTALL)
_PARAM = re.compile(rf'({_SD_NAME})="({_PARAM_VALUE})"')


def parse_rfc5424(raw: bytes) -> dict:
    """Parse one message or fail the test; returns the fields and the SD params unescaped."""
    text = raw.decode("utf-8")  # MSG-UTF8 and PARAM-VALUE are UTF-8: invalid bytes fail here
    m = RFC5424.match(text)
    assert m, f"not RFC 5424: {text!r}"
    fields = m.groupdict()
    assert int(fields["pri"]) <= 191, "PRI is facility*8+severity, at most 23*8+7"
    # RFC 3339 as our notifier promises: a fraction and an explicit offset, a real date.
    assert re.search(r"\.\d{1,6}(Z|[+-]\d{2}:\d{2})$", fields["timestamp"]), fields["timestamp"]
    datetime.datetime.fromisoformat(fields["timestamp"].replace("Z", "+00:00"))
    elements = re.findall(rf"\[({_SD_NAME})((?: {_SD_NAME}=\"{_PARAM_VALUE}\")*)\]", fields["sd"])
    sd = {}
    for sd_id, params in elements:
        sd[sd_id] = {name: re.sub(r'\\(["\\\]])', r"\1", value) for name, value in _PARAM.findall(params)}
    msg = fields["msg"]
    if msg is not None and msg.startswith("\ufeff"):
        msg = msg[1:]
    return {**fields, "pri": int(fields["pri"]), "sd": sd, "msg": msg}


def attack_event(**overrides) -> Event:
    values = dict(type=EventType.ATTACK_START, tenant='al"pha]\\', message="SYN flood on 198.51.100.10 — mitigating",
                  severity=Severity.CRITICAL, incident_id="inc-42", destinations=("198.51.100.10", "198.51.100.11"),
                  vectors=("syn_flood", "udp_flood"), confidence=0.97, pps=1_250_000.0, packets_dropped=98765)
    values.update(overrides)
    return Event(**values)


def syslog_receiver(**overrides):
    entry = {"host": "127.0.0.1", "transport": "tcp", "facility": "local4", **overrides}
    return parse_notify_config({"syslog": [entry]}).syslog[0]


def test_syslog_message_is_strict_rfc5424_with_escaped_structured_data():
    event = attack_event()
    raw = format_rfc5424(event, syslog_receiver(), hostname="edge-1.example.net", procid=4242,
                         delivery_id="q1-7")
    parsed = parse_rfc5424(raw)
    assert parsed["pri"] == 20 * 8 + 2  # local4, critical -> crit
    assert (parsed["version"], parsed["hostname"], parsed["app"], parsed["procid"], parsed["msgid"]) == (
        "1", "edge-1.example.net", "seawall", "4242", "ATTACK_START")
    params = parsed["sd"][SD_ID]
    assert params == {
        "tenant": 'al"pha]\\', "incident": "inc-42", "severity": "critical",
        "dst": "198.51.100.10,198.51.100.11", "vector": "syn_flood,udp_flood", "confidence": "0.97",
        "pps": "1250000", "dropped": "98765", "delivery": "q1-7"}
    assert parsed["msg"] == event.message
    assert datetime.datetime.fromisoformat(parsed["timestamp"]).timestamp() == pytest.approx(event.timestamp, abs=1e-6)


@pytest.mark.parametrize("event_type", list(EventType))
def test_every_event_type_is_the_msgid_and_severity_map_applies(event_type):
    receiver = syslog_receiver(facility="daemon", severity_map={"warning": "err"})
    event = Event(event_type, None, "appliance news", Severity.WARNING)
    parsed = parse_rfc5424(format_rfc5424(event, receiver))
    assert parsed["msgid"] == str(event_type)
    assert parsed["pri"] == 3 * 8 + 3
    assert "tenant" not in parsed["sd"][SD_ID]


def test_strict_parser_rejects_what_rfc5424_forbids():
    good = format_rfc5424(attack_event(), syslog_receiver())
    parse_rfc5424(good)
    for bad in (good.replace(b"al\\\"pha", b'al"pha'),  # unescaped quote in a PARAM-VALUE
                good.replace(b">1 ", b">0 "),             # version 0
                good.replace(b"seawall ", b"sea wall ")):  # space in APP-NAME
        with pytest.raises(AssertionError):
            parse_rfc5424(bad)


def test_octet_counting_frame_counts_bytes_not_characters():
    message = format_rfc5424(attack_event(message="ünïcode"), syslog_receiver())
    framed = frame_octet_counting(message)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest) == len(message)


def test_snmp_oids_match_the_compiled_mib(tmp_path):
    """Compile SEAWALL-MIB with pysmi's mibdump and check every OID the notifier sends."""
    result = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "mibdump"), f"--mib-source=file://{MIBS}",
         f"--mib-source=file://{MIBS / 'base'}", f"--destination-directory={tmp_path}",
         "--no-python-compile", "SEAWALL-MIB"],
        capture_output=True, text=True, timeout=120)
    assert "Created/updated MIBs: SEAWALL-MIB" in result.stdout + result.stderr, result.stderr
    from pysnmp.smi import builder  # noqa: PLC0415

    mib = builder.MibBuilder()
    mib.add_mib_sources(builder.DirMibSource(str(tmp_path)))
    mib.load_modules("SEAWALL-MIB")
    names = {
        EventType.ATTACK_START: "seawallAttackStart", EventType.ATTACK_UPDATE: "seawallAttackUpdate",
        EventType.ATTACK_END: "seawallAttackEnd", EventType.POLICY_CHANGE: "seawallPolicyChange",
        EventType.SYSTEM: "seawallSystem"}
    for event_type, name in names.items():
        (node,) = mib.import_symbols("SEAWALL-MIB", name)
        assert tuple(node.getName()) == NOTIFICATION_OIDS[event_type], name
        objects = [obj for _, obj in node.getObjects()]
        assert objects == list(VARBIND_OIDS), f"{name} OBJECTS differ from what the notifier sends"
    for name, oid in VARBIND_OIDS.items():
        (node,) = mib.import_symbols("SEAWALL-MIB", name)
        assert tuple(node.getName()) == oid, name


def test_email_has_plain_and_html_parts_and_escapes_html():
    receiver = parse_notify_config({"email": [{"smtp_host": "h", "from": "seawall@example.net",
                                               "to": ["noc@example.net", "ops@example.net"]}]}).email[0]
    event = attack_event(tenant="alpha", message="flood <script>alert(1)</script>\nsecond line")
    msg = email.message_from_bytes(render_email(event, receiver, "q1-9").as_bytes(), policy=email.policy.default)
    assert msg["To"] == "noc@example.net, ops@example.net"
    assert "\n" not in msg["Subject"] and "ATTACK_START alpha 198.51.100.10" in msg["Subject"]
    assert msg["X-Seawall-Incident"] == "inc-42"
    plain = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "<script>" in plain and "1,250,000 packets/s" in plain and "97 %" in plain
    assert "<script>" not in html and "&lt;script&gt;" in html and "198.51.100.11" in html


def _webhook(kind: str, **extra):
    entry = {"url": "http://127.0.0.1:9/hook", "kind": kind, **extra}
    return WebhookNotifier(parse_notify_config({"webhook": [entry]}).webhook[0])


def test_generic_webhook_is_signed_over_timestamp_and_body():
    event = attack_event()
    body, headers = _webhook("generic", secret="k3y").request(event, "q1-1")
    assert headers["X-Seawall-Signature"].startswith("sha256=")
    assert verify("k3y", headers["X-Seawall-Timestamp"], body, headers["X-Seawall-Signature"])
    assert not verify("other", headers["X-Seawall-Timestamp"], body, headers["X-Seawall-Signature"])
    assert not verify("k3y", str(int(headers["X-Seawall-Timestamp"]) + 1), body, headers["X-Seawall-Signature"])
    payload = json.loads(body)
    assert payload["delivery_id"] == headers["X-Seawall-Delivery"] == "q1-1"
    assert Event.from_dict(payload["event"]) == event


def test_pagerduty_triggers_on_start_and_update_and_resolves_on_end():
    pd = _webhook("pagerduty", routing_key="R0UTING")
    start = json.loads(pd.request(attack_event(), "d1")[0])
    update = json.loads(pd.request(attack_event(type=EventType.ATTACK_UPDATE), "d2")[0])
    end = json.loads(pd.request(attack_event(type=EventType.ATTACK_END), "d3")[0])
    assert (start["event_action"], update["event_action"], end["event_action"]) == ("trigger", "trigger", "resolve")
    assert {start["dedup_key"], update["dedup_key"], end["dedup_key"]} == {"inc-42"}
    assert start["routing_key"] == "R0UTING"
    assert start["payload"]["severity"] == "critical" and start["payload"]["group"] == 'al"pha]\\'
    assert pd.request(Event(EventType.POLICY_CHANGE, "alpha", "policy edited"), "d4") is None


def test_slack_and_discord_bodies():
    slack = json.loads(_webhook("slack").request(attack_event(), "d1")[0])
    assert "SYN flood" in slack["text"] and slack["blocks"][0]["type"] == "section"
    discord = json.loads(_webhook("discord").request(attack_event(), "d1")[0])
    assert discord["embeds"][0]["title"] == "ATTACK_START" and discord["allowed_mentions"] == {"parse": []}
    assert {"name": "Incident", "value": "inc-42", "inline": True} in discord["embeds"][0]["fields"]
