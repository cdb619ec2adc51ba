"""The `[notify]` table of the appliance TOML, parsed into typed receivers.

Operators write configs against these key names, so they are fixed:
`[[notify.syslog]]`, `[[notify.snmp]]`, `[[notify.email]]`, `[[notify.webhook]]`,
each optionally with `tenants = [...]` (a receiver without it is the NOC's and
gets every event). Every problem is reported at once, in one ConfigError (a
ValueError) whose `problems` each name `notify.<kind>[i].<key>`.
Secrets are wrapped in `Secret`, whose repr never shows the value.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from policy.events import Event, Severity
from tenants.errors import ConfigError

from .tls import load_ca, load_client_cert

KINDS = ("syslog", "snmp", "email", "webhook")

# RFC 5424 section 6.2.1: facility codes by name.
SYSLOG_FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14,
    "solaris-cron": 15, "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20,
    "local5": 21, "local6": 22, "local7": 23,
}
# RFC 5424 section 6.2.1: severity codes by name.
SYSLOG_SEVERITIES = {
    "emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7,
}
DEFAULT_SEVERITY_MAP: dict[Severity, int] = {
    Severity.INFO: SYSLOG_SEVERITIES["info"],
    Severity.NOTICE: SYSLOG_SEVERITIES["notice"],
    Severity.WARNING: SYSLOG_SEVERITIES["warning"],
    Severity.CRITICAL: SYSLOG_SEVERITIES["crit"],
}
SNMP_AUTH_PROTOCOLS = ("MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512")
SNMP_PRIV_PROTOCOLS = ("DES", "AES", "AES192", "AES256")
USM_MIN_KEY_LEN = 8  # characters; RFC 3414 section 11.2 requires passphrases of at least 8
WEBHOOK_KINDS = ("generic", "slack", "discord", "pagerduty")
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
DEFAULT_TIMEOUT_S = 10.0  # seconds for one delivery attempt (connect + send + answer)
MAX_RECEIVERS = 256       # receivers of one kind: each runs a task and a durable queue
MAX_LIST_ITEMS = 1024     # entries in a list value (tenants, to)
HOST_MAX_CHARS = 253      # characters in a DNS name (RFC 1035)
PATH_MAX_CHARS = 4096     # characters in a file path (Linux PATH_MAX): longer cannot be opened
SHOWN_VALUE_CHARS = 60    # characters of a refused value echoed in a message
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HOSTNAME_RE = re.compile(r"^[!-~]{1,255}$")  # RFC 5424 HOSTNAME: PRINTUSASCII, no spaces


class Secret:
    """A password, key or token: usable by the code, invisible in repr and logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclasses.dataclass(frozen=True, slots=True)
class _Receiver:
    name: str                            # stable id; names the durable queue file
    tenants: tuple[str, ...] | None      # None: the NOC's receiver, gets every event
    timeout_s: float

    def wants(self, event: Event) -> bool:
        """Per-tenant routing: a tenant's receiver never sees another tenant's event."""
        if self.tenants is None:
            return True
        return event.tenant is not None and event.tenant in self.tenants

    def to_public_dict(self) -> dict[str, Any]:
        """The receiver as shown in status pages and logs: every secret replaced."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                value = "***"
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = {str(k): v for k, v in value.items()}
            out[f.name] = value
        return out

    @property
    def kind(self) -> str:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, slots=True)
class SyslogReceiver(_Receiver):
    host: str
    port: int
    transport: str                       # udp | tcp | tls
    facility: int
    severity_map: dict[Severity, int]
    hostname: str | None                 # HOSTNAME field; None: this machine's name
    ca_file: str | None                  # tls: CA bundle to verify the receiver; None: system store
    cert_file: str | None                # tls: client certificate for mutual authentication
    key_file: str | None
    server_name: str | None              # tls: name to verify; None: `host`

    @property
    def kind(self) -> str:
        return "syslog"


@dataclasses.dataclass(frozen=True, slots=True)
class SnmpReceiver(_Receiver):
    host: str
    port: int
    version: str                         # 2c | 3
    community: Secret | None
    user: str | None
    auth_key: Secret | None
    priv_key: Secret | None
    auth_protocol: str
    priv_protocol: str
    inform: bool
    engine_id: str | None                # hex; None: derived from the host name
    retries: int                         # inform retransmissions

    @property
    def kind(self) -> str:
        return "snmp"


@dataclasses.dataclass(frozen=True, slots=True)
class EmailReceiver(_Receiver):
    smtp_host: str
    smtp_port: int
    starttls: bool
    use_tls: bool                        # implicit TLS (port 465) instead of STARTTLS
    username: str | None
    password: Secret | None
    sender: str                          # the `from` key
    to: tuple[str, ...]
    ca_file: str | None

    @property
    def kind(self) -> str:
        return "email"


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookReceiver(_Receiver):
    url: Secret                          # Slack and Discord URLs carry their token: a secret
    endpoint: str                        # scheme://host:port of `url`, safe to show
    webhook_kind: str                    # the `kind` key: generic | slack | discord | pagerduty
    secret: Secret | None
    routing_key: Secret | None
    ca_file: str | None

    @property
    def kind(self) -> str:
        return "webhook"


Receiver = SyslogReceiver | SnmpReceiver | EmailReceiver | WebhookReceiver


@dataclasses.dataclass(frozen=True, slots=True)
class NotifyConfig:
    syslog: tuple[SyslogReceiver, ...] = ()
    snmp: tuple[SnmpReceiver, ...] = ()
    email: tuple[EmailReceiver, ...] = ()
    webhook: tuple[WebhookReceiver, ...] = ()
    state_dir: str | None = None         # where the durable queues live; None: the app decides

    @property
    def receivers(self) -> tuple[Receiver, ...]:
        return (*self.syslog, *self.snmp, *self.email, *self.webhook)

    def to_public_dict(self) -> dict[str, Any]:
        return {
            "state_dir": self.state_dir,
            "receivers": [r.to_public_dict() for r in self.receivers],
        }


class _Table:
    """One `[[notify.<kind>]]` entry; hands out typed values and records every problem, naming the key.

    An accessor that finds a bad value records the problem and returns its default, so that one
    pass over an entry reports every key at fault; the parser builds no receiver from a table
    with problems (`bad`).
    """

    def __init__(self, kind: str, index: int, raw: object, problems: list[str], check_files: bool = True) -> None:
        self.where = f"notify.{kind}[{index}]"
        self.check_files = check_files   # load ca_file / cert_file now (False: they are another host's)
        self.problems = problems
        self.bad = False
        self.used: set[str] = set()
        if not isinstance(raw, Mapping):
            self.raw: dict[str, Any] = {}
            self._record(f"{self.where}: must be a table, got {type(raw).__name__}")
        else:
            self.raw = dict(raw)

    def _record(self, problem: str) -> None:
        self.problems.append(problem)
        self.bad = True

    def fail(self, key: str, why: str) -> None:
        self._record(f"{self.where}.{key}: {why}")

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.raw.get(key, default)

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.get(key)
        if value is None:
            if required:
                self.fail(key, "is required")
            return default
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"must be a non-empty string, got {_shown(value)}")
            return default
        if not value.isprintable():  # a CR/LF here would reach a protocol line (SMTP, syslog)
            self.fail(key, f"must not contain control characters, got {_shown(value)}")
            return default
        return value

    def secret(self, key: str, *, required: bool = False, min_len: int = 1) -> Secret | None:
        value = self.get(key)
        if value is None:
            if required:
                self.fail(key, "is required")
            return None
        if not isinstance(value, str) or len(value) < min_len:
            # Never echo the value: it is a secret.
            self.fail(key, f"must be a string of at least {min_len} characters")
            return None
        return Secret(value)

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(key, f"must be an integer in {lo}..{hi}, got {_shown(value)}")
            return default
        return value

    def number(self, key: str, default: float, lo: float, hi: float) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            # (NaN fails the range test too: every comparison with it is false.)
            self.fail(key, f"must be a number in {lo}..{hi}, got {_shown(value)}")
            return default
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {_shown(value)}")
            return default
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}; got {_shown(value)}")
            return default
        return value

    def strings(self, key: str, *, required: bool = False) -> tuple[str, ...] | None:
        value = self.get(key)
        if value is None:
            if required:
                self.fail(key, "is required")
            return None
        if isinstance(value, str):
            value = [value]
        if (not isinstance(value, list) or not value or len(value) > MAX_LIST_ITEMS
                or not all(isinstance(v, str) and v.strip() for v in value)):
            self.fail(key, f"must be a non-empty list of at most {MAX_LIST_ITEMS} strings, got {_shown(value)}")
            return None
        return tuple(value)

    def common(self, kind: str, index: int) -> dict[str, Any]:
        name = self.string("name", f"{kind}-{index}")
        if name is not None and not _NAME_RE.match(name):
            self.fail("name", f"must be 1-64 letters, digits, '_', '.', '-'; got {_shown(name)}")
        return {
            "name": name,
            "tenants": self.strings("tenants"),
            "timeout_s": self.number("timeout", DEFAULT_TIMEOUT_S, 0.1, 300.0),
        }

    def finish(self) -> None:
        for key in sorted(set(self.raw) - self.used):
            self.fail(key, "unknown key (a typo?)")


def _shown(value: object) -> str:
    """repr(value), shortened, for messages (a refused value may be megabytes long)."""
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[:SHOWN_VALUE_CHARS] + "..."


def _port(t: _Table, key: str, default: int) -> int:
    return t.integer(key, default, 1, 65535)


def _host(t: _Table, key: str) -> str | None:
    host = t.string(key, required=True)
    if host is not None and (any(c.isspace() for c in host) or len(host) > HOST_MAX_CHARS):
        t.fail(key, f"must be a host name or address, got {_shown(host)}")
        return None
    return host


def _path(t: _Table, key: str) -> str | None:
    path = t.string(key)
    if path is not None and len(path) > PATH_MAX_CHARS:
        t.fail(key, f"must be a file path of at most {PATH_MAX_CHARS} characters")
        return None
    return path


def _check_tls_files(t: _Table, ca_file: str | None, cert_file: str | None = None,
                     key_file: str | None = None) -> None:
    """Load the files as the notifier will, now: a wrong path is the operator's to see when
    the config is checked, not at the first alert. Not where the receivers run elsewhere (a
    central server's table, run by the sites; a site taking it, whose receiver then reports a
    missing file at its deliveries, keeping the events)."""
    if not t.check_files:
        return
    try:
        context = load_ca(ca_file)
    except ValueError as exc:
        t.fail("ca_file", str(exc))
        return
    if cert_file is not None:
        try:
            load_client_cert(context, cert_file, key_file)
        except ValueError as exc:
            t.fail("cert_file", str(exc))


def _syslog_level(t: _Table, key: str, value: object) -> int | None:
    if isinstance(value, str) and value in SYSLOG_SEVERITIES:
        return SYSLOG_SEVERITIES[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 7:
        return value
    t.fail(key, f"must be a syslog severity name ({', '.join(SYSLOG_SEVERITIES)}) or 0..7, got {_shown(value)}")
    return None


def _parse_syslog(t: _Table, index: int) -> SyslogReceiver | None:
    common = t.common("syslog", index)
    transport = t.choice("transport", "udp", ("udp", "tcp", "tls"))
    facility_raw = t.get("facility", "local0")
    facility = 0
    if isinstance(facility_raw, str) and facility_raw in SYSLOG_FACILITIES:
        facility = SYSLOG_FACILITIES[facility_raw]
    elif isinstance(facility_raw, int) and not isinstance(facility_raw, bool) and 0 <= facility_raw <= 23:
        facility = facility_raw
    else:
        t.fail("facility", f"must be a facility name (e.g. local0, daemon) or 0..23, got {_shown(facility_raw)}")
    severity_map = dict(DEFAULT_SEVERITY_MAP)
    raw_map = t.get("severity_map")
    if raw_map is not None:
        if not isinstance(raw_map, Mapping):
            t.fail("severity_map", "must be a table such as { critical = \"alert\" }")
        else:
            for sev_name, level in raw_map.items():
                try:
                    sev = Severity(sev_name)
                except ValueError:
                    t.fail(f"severity_map.{sev_name}",
                           f"unknown event severity; use one of {', '.join(s.value for s in Severity)}")
                    continue
                code = _syslog_level(t, f"severity_map.{sev_name}", level)
                if code is not None:
                    severity_map[sev] = code
    hostname = t.string("hostname")
    if hostname is not None and not _HOSTNAME_RE.match(hostname):
        t.fail("hostname", f"must be printable ASCII without spaces, got {_shown(hostname)}")
    default_port = 6514 if transport == "tls" else 514  # RFC 5425 / RFC 5426 and common TCP use
    host = _host(t, "host")
    port = _port(t, "port", default_port)
    tls_keys = {key: _path(t, key) for key in ("ca_file", "cert_file", "key_file")}
    tls_keys["server_name"] = t.string("server_name")
    if transport != "tls":
        for key, value in tls_keys.items():
            if value is not None:
                t.fail(key, "only applies to transport = \"tls\"")
    elif (tls_keys["cert_file"] is None) != (tls_keys["key_file"] is None):
        t.fail("cert_file", "cert_file and key_file go together")
    elif tls_keys["ca_file"] is not None or tls_keys["cert_file"] is not None:
        _check_tls_files(t, tls_keys["ca_file"], tls_keys["cert_file"], tls_keys["key_file"])
    if t.bad:
        return None
    return SyslogReceiver(
        **common, host=host, port=port, transport=transport, facility=facility, severity_map=severity_map,
        hostname=hostname, **tls_keys,
    )


def _parse_snmp(t: _Table, index: int) -> SnmpReceiver | None:
    common = t.common("snmp", index)
    version = t.get("version", "2c")
    if version == 2:
        version = "2c"
    if version not in ("2c", "3", 3):
        t.fail("version", f"must be \"2c\" or \"3\", got {_shown(version)}")
        version = "2c"
    version = str(version)
    engine_id = t.string("engine_id")
    if engine_id is not None:
        hexits = engine_id.removeprefix("0x")
        if not re.fullmatch(r"[0-9A-Fa-f]{10,64}", hexits) or len(hexits) % 2:
            t.fail("engine_id", "must be 5 to 32 octets in hex")
        engine_id = hexits.lower()
    if version == "2c":
        community = t.secret("community", required=True)
        user = auth_key = priv_key = None
        for key in ("user", "auth_key", "priv_key", "auth_protocol", "priv_protocol"):
            if t.get(key) is not None:
                t.fail(key, "only applies to version = \"3\"")
        auth_protocol, priv_protocol = "SHA", "AES"
    else:
        if t.get("community") is not None:
            t.fail("community", "only applies to version = \"2c\"")
        community = None
        user = t.string("user", required=True)
        auth_key = t.secret("auth_key", required=True, min_len=USM_MIN_KEY_LEN)
        priv_key = t.secret("priv_key", min_len=USM_MIN_KEY_LEN)
        auth_protocol = t.choice("auth_protocol", "SHA", SNMP_AUTH_PROTOCOLS)
        priv_protocol = t.choice("priv_protocol", "AES", SNMP_PRIV_PROTOCOLS)
    host = _host(t, "host")
    port = _port(t, "port", 162)
    inform = t.boolean("inform", False)
    retries = t.integer("retries", 2, 0, 10)
    if t.bad:
        return None
    return SnmpReceiver(
        **common, host=host, port=port, version=version,
        community=community, user=user, auth_key=auth_key, priv_key=priv_key,
        auth_protocol=auth_protocol, priv_protocol=priv_protocol,
        inform=inform, engine_id=engine_id, retries=retries,
    )


_ADDRESS_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


def _addresses(t: _Table, key: str, *, required: bool) -> tuple[str, ...] | None:
    values = t.strings(key, required=required)
    for v in values or ():
        if not _ADDRESS_RE.match(v) or not v.isprintable():
            t.fail(key, f"not an email address: {_shown(v)}")
            return None
    return values


def _parse_email(t: _Table, index: int) -> EmailReceiver | None:
    common = t.common("email", index)
    use_tls = t.boolean("use_tls", False)
    starttls = t.boolean("starttls", not use_tls)
    if use_tls and starttls:
        t.fail("starttls", "use either starttls or use_tls (implicit TLS), not both")
    username = t.string("username")
    password = t.secret("password")
    if (t.raw.get("username") is None) != (t.raw.get("password") is None):
        t.fail("password" if t.raw.get("password") is None else "username", "username and password go together")
    sender = _addresses(t, "from", required=True)
    if sender is not None and len(sender) != 1:
        t.fail("from", "must be one address")
    host = _host(t, "smtp_host")
    port = _port(t, "smtp_port", 465 if use_tls else 587)
    to = _addresses(t, "to", required=True)
    ca_file = _path(t, "ca_file")
    if ca_file is not None:
        _check_tls_files(t, ca_file)
    if t.bad:
        return None
    return EmailReceiver(
        **common, smtp_host=host, smtp_port=port, starttls=starttls, use_tls=use_tls, username=username,
        password=password, sender=sender[0], to=to, ca_file=ca_file,
    )


def _parse_webhook(t: _Table, index: int) -> WebhookReceiver | None:
    common = t.common("webhook", index)
    kind = t.choice("kind", "generic", WEBHOOK_KINDS)
    url = t.string("url", PAGERDUTY_EVENTS_URL if kind == "pagerduty" else None, required=kind != "pagerduty")
    endpoint = ""
    try:
        parts = urlsplit(url) if url is not None else None
    except ValueError:
        # urlsplit's message is not echoed either: it may quote the host part, credentials and all.
        t.fail("url", "is not a valid URL: check its host part (an unbalanced '[' or ']' around an IPv6 "
                      "address, or a character not allowed in a host name)")
        parts = None
    if parts is not None:
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # Not echoed: a webhook URL may carry a token.
            t.fail("url", f"must be an http(s) URL, got scheme {_shown(parts.scheme)}")
        else:
            try:
                endpoint = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
            except ValueError:
                t.fail("url", "has an invalid port")
    secret = t.secret("secret", required=kind == "generic")
    routing_key = t.secret("routing_key", required=kind == "pagerduty")
    if kind != "pagerduty" and routing_key is not None:
        t.fail("routing_key", "only applies to kind = \"pagerduty\"")
    if kind != "generic" and secret is not None:
        t.fail("secret", "only applies to kind = \"generic\" (the others authenticate by URL or key)")
    ca_file = _path(t, "ca_file")
    if ca_file is not None:
        _check_tls_files(t, ca_file)
    if t.bad:
        return None
    return WebhookReceiver(
        **common, url=Secret(url), endpoint=endpoint, webhook_kind=kind, secret=secret, routing_key=routing_key,
        ca_file=ca_file,
    )


_PARSERS = {"syslog": _parse_syslog, "snmp": _parse_snmp, "email": _parse_email, "webhook": _parse_webhook}


def parse_notify_config(raw: Mapping[str, Any], tenant_ids: Collection[str] | None = None, *,
                        check_files: bool = True) -> NotifyConfig:
    """Parse and validate the whole `[notify]` table; one ConfigError (a ValueError) lists every
    problem, each naming `notify.<kind>[i].<key>`.

    `check_files`: load each ca_file, cert_file and key_file (False where the receivers run on
    another host: those files are that host's).

    With `tenant_ids` (the tenant set, when the caller knows it) a receiver's `tenants` must name
    existing tenants: a typo would otherwise route nothing, silently.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"notify: must be a table, got {type(raw).__name__}")
    problems: list[str] = []
    for key in sorted(set(raw) - set(KINDS) - {"state_dir"}):
        problems.append(f"notify.{key}: unknown key; expected one of {', '.join(KINDS)}, state_dir")
    state_dir = raw.get("state_dir")
    if state_dir is not None and (not isinstance(state_dir, str) or not state_dir):
        problems.append(f"notify.state_dir: must be a directory path, got {_shown(state_dir)}")
    parsed: dict[str, tuple[Receiver, ...]] = {}
    names: dict[str, str] = {}
    for kind in KINDS:
        entries = raw.get(kind, [])
        if not isinstance(entries, list):
            problems.append(f"notify.{kind}: must be an array of tables ([[notify.{kind}]])")
            continue
        if len(entries) > MAX_RECEIVERS:
            problems.append(f"notify.{kind}: {len(entries)} receivers, at most {MAX_RECEIVERS}")
            continue
        receivers = []
        for i, entry in enumerate(entries):
            table = _Table(kind, i, entry, problems, check_files)
            receiver = _PARSERS[kind](table, i)
            table.finish()
            name = table.raw.get("name", f"{kind}-{i}")
            if isinstance(name, str):
                if name in names:
                    table.fail("name", f"{name!r} is already used by {names[name]}")
                else:
                    names[name] = table.where
            if tenant_ids is not None:  # also for an entry with other problems: report them all
                routed = table.raw.get("tenants")
                for tenant in [routed] if isinstance(routed, str) else routed if isinstance(routed, list) else ():
                    if isinstance(tenant, str) and tenant.strip() and tenant not in tenant_ids:
                        table.fail("tenants", f"no tenant {_shown(tenant)}")
            if receiver is not None and not table.bad:
                receivers.append(receiver)
        parsed[kind] = tuple(receivers)
    if problems:
        raise ConfigError(problems)
    return NotifyConfig(**parsed, state_dir=state_dir)
