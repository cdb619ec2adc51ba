"""parse_notify_config: the `[notify]` table operators write, its errors, and secrets."""

from __future__ import annotations

import tomllib

import pytest
import structlog
from test_notify_delivery import make_certs

from policy.events import Event, EventBus, EventType, Severity
from securewatch.notify import NotifierManager, RetryPolicy, parse_notify_config
from securewatch.notify.config import SYSLOG_SEVERITIES
from tenants import ConfigError
from tests.support import await_until

NOC_CA = "/etc/seawall/noc-ca.pem"  # APPLIANCE_TOML's; the tests point it at a CA made for them

APPLIANCE_TOML = """
[notify]
state_dir = "/var/lib/seawall/notify"

[[notify.syslog]]
host = "192.0.2.10"
port = 6514
transport = "tls"
facility = "local3"
ca_file = "/etc/seawall/noc-ca.pem"
severity_map = { critical = "alert", info = 7 }

[[notify.syslog]]
host = "192.0.2.11"
transport = "udp"
tenants = ["alpha"]

[[notify.snmp]]
host = "192.0.2.20"
version = "2c"
community = "c0mmunity-SECRET"

[[notify.snmp]]
host = "192.0.2.21"
port = 10162
version = "3"
user = "noc"
auth_key = "auth-SECRET-1"
priv_key = "priv-SECRET-1"
auth_protocol = "SHA256"
priv_protocol = "AES256"
inform = true

[[notify.email]]
smtp_host = "mail.example.net"
smtp_port = 587
starttls = true
username = "seawall"
password = "smtp-SECRET"
from = "seawall@example.net"
to = ["noc@example.net"]

[[notify.email]]
smtp_host = "mail.example.net"
from = "seawall@example.net"
to = ["ops@alpha.example"]
tenants = ["alpha"]

[[notify.webhook]]
url = "https://hooks.example.net/seawall"
kind = "generic"
secret = "hmac-SECRET"

[[notify.webhook]]
kind = "pagerduty"
routing_key = "pd-routing-SECRET"
tenants = ["alpha", "beta"]

[[notify.webhook]]
url = "https://hooks.slack.example/services/T0/B0/slack-SECRET"
kind = "slack"
"""
SECRETS = ("c0mmunity-SECRET", "auth-SECRET-1", "priv-SECRET-1", "smtp-SECRET", "hmac-SECRET",
           "pd-routing-SECRET", "slack-SECRET")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, str]:
    """A throwaway CA, and a certificate and key (syslog's client pair here), made once."""
    return make_certs(tmp_path_factory.mktemp("certs"))


def _config(ca_file: str):
    """APPLIANCE_TOML, its syslog ca_file a CA that exists here (the parser loads it)."""
    return parse_notify_config(tomllib.loads(APPLIANCE_TOML.replace(NOC_CA, ca_file))["notify"])


def test_full_appliance_table_parses_into_typed_receivers(certs):
    cfg = _config(certs["ca.pem"])
    assert [r.name for r in cfg.receivers] == [
        "syslog-0", "syslog-1", "snmp-0", "snmp-1", "email-0", "email-1", "webhook-0", "webhook-1", "webhook-2"]
    tls, udp = cfg.syslog
    assert (tls.transport, tls.port, tls.facility, tls.ca_file) == ("tls", 6514, 19, certs["ca.pem"])
    assert tls.severity_map[Severity.CRITICAL] == SYSLOG_SEVERITIES["alert"]
    assert tls.severity_map[Severity.INFO] == 7
    assert tls.severity_map[Severity.WARNING] == SYSLOG_SEVERITIES["warning"]  # default kept
    assert (udp.port, udp.tenants, tls.tenants) == (514, ("alpha",), None)
    v2, v3 = cfg.snmp
    assert (v2.version, v2.port, v2.inform, v2.community.reveal()) == ("2c", 162, False, "c0mmunity-SECRET")
    assert (v3.version, v3.user, v3.auth_protocol, v3.priv_protocol, v3.inform) == (
        "3", "noc", "SHA256", "AES256", True)
    noc_mail, alpha_mail = cfg.email
    assert (noc_mail.starttls, noc_mail.sender, noc_mail.to) == (True, "seawall@example.net", ("noc@example.net",))
    assert alpha_mail.password is None and alpha_mail.tenants == ("alpha",)
    generic, pagerduty, slack = cfg.webhook
    assert pagerduty.url.reveal() == "https://events.pagerduty.com/v2/enqueue"
    assert slack.endpoint == "https://hooks.slack.example"
    assert pagerduty.routing_key.reveal() == "pd-routing-SECRET"
    assert (generic.webhook_kind, slack.webhook_kind) == ("generic", "slack")
    assert cfg.state_dir == "/var/lib/seawall/notify"


def test_routing_gives_tenant_receivers_only_their_tenant_and_noc_everything(certs):
    cfg = _config(certs["ca.pem"])
    alpha = Event(EventType.ATTACK_START, "alpha", "m")
    beta = Event(EventType.ATTACK_START, "beta", "m")
    system = Event(EventType.SYSTEM, None, "m")
    noc, tenant_alpha = cfg.syslog
    pagerduty = cfg.webhook[1]
    assert noc.wants(alpha) and noc.wants(beta) and noc.wants(system)
    assert tenant_alpha.wants(alpha)
    assert not tenant_alpha.wants(beta)
    assert not tenant_alpha.wants(system)  # appliance events go to the NOC only
    assert pagerduty.wants(alpha) and pagerduty.wants(beta) and not pagerduty.wants(
        Event(EventType.ATTACK_START, "gamma", "m"))


@pytest.mark.parametrize(("raw", "where"), [
    ({"syslog": [{"port": 514}]}, "notify.syslog[0].host: is required"),
    ({"syslog": [{"host": "h", "transport": "sctp"}]}, "notify.syslog[0].transport"),
    ({"syslog": [{"host": "h"}, {"host": "h", "port": 70000}]}, "notify.syslog[1].port"),
    ({"syslog": [{"host": "h", "facility": "local9"}]}, "notify.syslog[0].facility"),
    ({"syslog": [{"host": "h", "severity_map": {"fatal": "alert"}}]}, "notify.syslog[0].severity_map.fatal"),
    ({"syslog": [{"host": "h", "severity_map": {"critical": "loud"}}]},
     "notify.syslog[0].severity_map.critical"),
    ({"syslog": [{"host": "h", "ca_file": "/x"}]}, "notify.syslog[0].ca_file"),
    ({"syslog": [{"host": "h", "prot": 1}]}, "notify.syslog[0].prot: unknown key"),
    ({"snmp": [{"host": "h", "version": "1", "community": "c"}]}, "notify.snmp[0].version"),
    ({"snmp": [{"host": "h"}]}, "notify.snmp[0].community: is required"),
    ({"snmp": [{"host": "h", "version": "3", "auth_key": "12345678"}]}, "notify.snmp[0].user: is required"),
    ({"snmp": [{"host": "h", "version": "3", "user": "u", "auth_key": "short"}]}, "notify.snmp[0].auth_key"),
    ({"snmp": [{"host": "h", "version": "3", "user": "u", "auth_key": "12345678", "priv_protocol": "ROT13"}]},
     "notify.snmp[0].priv_protocol"),
    ({"snmp": [{"host": "h", "community": "c", "inform": "yes"}]}, "notify.snmp[0].inform"),
    ({"email": [{"smtp_host": "h", "from": "a@b.c"}]}, "notify.email[0].to: is required"),
    ({"email": [{"smtp_host": "h", "from": "a@b.c", "to": ["not-an-address"]}]}, "notify.email[0].to"),
    ({"email": [{"smtp_host": "h", "from": "a@b.c", "to": "x@y.z", "username": "u"}]},
     "notify.email[0].password"),
    ({"webhook": [{"url": "ftp://h/x", "secret": "s"}]}, "notify.webhook[0].url"),
    ({"webhook": [{"url": "https://[hooks.example.net/seawall", "secret": "s"}]},
     "notify.webhook[0].url: is not a valid URL"),
    ({"webhook": [{"url": "https://h/x"}]}, "notify.webhook[0].secret: is required"),
    ({"webhook": [{"kind": "pagerduty"}]}, "notify.webhook[0].routing_key: is required"),
    ({"webhook": [{"url": "https://h/x", "kind": "teams"}]}, "notify.webhook[0].kind"),
    ({"webhook": [{"url": "https://h/x", "secret": "s", "tenants": []}]}, "notify.webhook[0].tenants"),
    ({"webhook": [{"url": "https://h/x", "secret": "s", "tenants": "alpha", "name": "a b"}]},
     "notify.webhook[0].name"),
    ({"syslog": [{"host": "h", "name": "x"}], "webhook": [{"url": "https://h/", "secret": "s", "name": "x"}]},
     "notify.webhook[0].name: 'x' is already used by notify.syslog[0]"),
    ({"pager": []}, "notify.pager: unknown key"),
    ({"syslog": {"host": "h"}}, "notify.syslog: must be an array of tables"),
])
def test_errors_name_the_key(raw, where):
    with pytest.raises(ValueError) as info:
        parse_notify_config(raw)
    assert where in str(info.value)


def test_a_url_urlsplit_refuses_is_a_config_error_naming_the_key_never_echoing_the_url():
    """An unbalanced '[' made urlsplit raise out of the parser: a 500 from the API, a traceback
    from the config loader. Its message is not echoed: it may quote the host part, with a token."""
    with pytest.raises(ConfigError) as info:
        parse_notify_config({"webhook": [
            {"url": "https://[hooks.example.net/T0/tok-SECRET", "kind": "slack"},
            {"url": "https://user:pw-SECRET@hooks\uff0fexample.net/x", "kind": "slack"}]})
    assert [p.split(": ")[0] for p in info.value.problems] == ["notify.webhook[0].url", "notify.webhook[1].url"]
    assert "SECRET" not in str(info.value)


TLS_ENTRIES = {  # a receiver of each kind that takes a ca_file, valid but for it
    "syslog": {"host": "192.0.2.10", "transport": "tls"},
    "email": {"smtp_host": "mail.example.net", "from": "seawall@example.net", "to": ["noc@example.net"]},
    "webhook": {"url": "https://hooks.example.net/seawall", "secret": "hmac-secret"},
}


@pytest.mark.parametrize("kind", TLS_ENTRIES)
def test_a_ca_file_that_cannot_be_loaded_is_refused_naming_the_key_and_the_path(tmp_path, certs, kind):
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for path, why in [(tmp_path / "missing.pem", "does not exist or cannot be read"),
                      (tmp_path, "does not exist or cannot be read"),  # a directory
                      (tmp_path / "junk.pem", "holds no PEM certificate")]:
        with pytest.raises(ConfigError) as info:
            parse_notify_config({kind: [{**TLS_ENTRIES[kind], "ca_file": str(path)}]})
        (problem,) = info.value.problems
        assert problem.startswith(f"notify.{kind}[0].ca_file: {path} {why}"), problem
    (receiver,) = parse_notify_config({kind: [{**TLS_ENTRIES[kind], "ca_file": certs["ca.pem"]}]}).receivers
    assert receiver.ca_file == certs["ca.pem"]


def test_a_syslog_client_certificate_that_cannot_be_loaded_is_refused_naming_the_key(tmp_path, certs):
    tls = {**TLS_ENTRIES["syslog"], "ca_file": certs["ca.pem"]}
    with pytest.raises(ConfigError) as info:
        parse_notify_config({"syslog": [{**tls, "cert_file": str(tmp_path / "client.pem"),
                                         "key_file": certs["server.key"]}]})
    assert info.value.problems == [
        f"notify.syslog[0].cert_file: {tmp_path / 'client.pem'} or key_file {certs['server.key']} "
        "does not exist or cannot be read (No such file or directory)"]
    pair = {"cert_file": certs["server.pem"], "key_file": certs["server.key"]}
    assert parse_notify_config({"syslog": [{**tls, **pair}]}).syslog[0].cert_file == certs["server.pem"]


def test_bad_secret_is_not_echoed_in_the_error():
    with pytest.raises(ValueError) as info:
        parse_notify_config({"snmp": [{"host": "h", "version": "3", "user": "u", "auth_key": "tiny-S"}]})
    assert "tiny-S" not in str(info.value)


def test_secrets_never_appear_in_repr_or_public_dict(certs):
    cfg = _config(certs["ca.pem"])
    shown = repr(cfg) + str(cfg.to_public_dict()) + "".join(repr(r) for r in cfg.receivers)
    for secret in SECRETS:
        assert secret not in shown
    assert cfg.to_public_dict()["receivers"][2]["community"] == "***"
    assert cfg.to_public_dict()["receivers"][8]["url"] == "***"


async def test_secrets_never_appear_in_status_or_logs(tmp_path):
    """A manager with every kind of receiver pointed at a closed port: its status and
    its logs of failed deliveries must not carry any secret, not even the Slack URL token."""
    raw = tomllib.loads(APPLIANCE_TOML)["notify"]
    for entry in raw["syslog"] + raw["snmp"]:
        entry["host"] = "127.0.0.1"
        entry["port"] = 9  # discard: nobody listens here on loopback
        entry.pop("ca_file", None)
    raw["syslog"][0]["transport"] = "tcp"  # a refused connection is an error we can see
    for entry in raw["email"]:
        entry["smtp_host"], entry["smtp_port"] = "127.0.0.1", 9
    raw["webhook"][0]["url"] = "http://127.0.0.1:9/seawall"
    raw["webhook"][1]["url"] = "http://127.0.0.1:9/v2/enqueue"
    raw["webhook"][2]["url"] = "http://127.0.0.1:9/services/T0/B0/slack-SECRET"
    for entry in raw["snmp"]:
        entry["timeout"] = 0.2
        entry["retries"] = 0
        entry["inform"] = True
    cfg = parse_notify_config(raw)
    bus = EventBus()
    with structlog.testing.capture_logs() as logs:
        async with NotifierManager(cfg, bus, tmp_path, retry=RetryPolicy(initial_s=5.0, max_s=5.0)) as mgr:
            bus.publish(Event(EventType.ATTACK_START, "alpha", "syn flood", Severity.CRITICAL, "inc-1"))
            await await_until(lambda: all(s.last_error for n, s in mgr.status().items()
                                          if n != "syslog-1"),  # UDP to a closed port cannot tell
                              timeout=15, what="every receiver to fail once")
            shown = str({n: s.to_public_dict() for n, s in mgr.status().items()})
    shown += repr(logs)
    for secret in SECRETS:
        assert secret not in shown
    assert "notify.retry" in {entry["event"] for entry in logs}
