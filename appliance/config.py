"""The appliance configuration file (TOML): typed, validated, read once, no globals.

    [appliance]                      # the box itself
    external = "eth0"                # upstream NIC (required by `seawall run`)
    internal = "eth1"                # customer-side NIC (required by `seawall run`)
    state_dir = "/var/lib/seawall"
    log_format = "auto"              # auto | json | console
    tick_ms = 1000                   # policy engine tick, milliseconds
    bpffs = "/sys/fs/bpf/seawall"    # where maps are pinned
    address_cache_mib = 64           # kernel memory of the address cache, all CPUs together, MiB
    max_addresses = 262144           # customer addresses counted (the spill map's entries)
    flow_table_entries = 131072      # TCP connections of protected destinations tracked at once (issue 15)
    flow_handshake_entries = 65536   # their handshakes in progress (kept apart: a SYN flood cannot push out connections)
    flow_destination_entries = 65536 # destinations with connection counters
    flow_source_entries = 131072     # (destination, source) rows, and per-source limit buckets
    blocked_sources_max = 65536      # dynamic block list entries, all tenants (the oldest go first)
    source_limits_max = 1024         # per-source limit entries (destination and port)

    [securewatch]                    # parsed and checked by securewatch.settings
    listen = "127.0.0.1:8080"
    database = "sqlite:////var/lib/seawall/securewatch.db"  # sqlite:/// + absolute path; default: under state_dir
    enabled = true
    # tls_cert = "/etc/seawall/tls/cert.pem" # PEM certificate (chain); with tls_key, serve HTTPS
    # tls_key = "/etc/seawall/tls/key.pem"   # its unencrypted PEM private key (both loaded when read)
    trusted_proxies = ["127.0.0.1"]          # reverse proxies whose X-Forwarded-For/-Proto are believed
    secure_cookies = false                   # force Secure cookies (automatic over HTTPS)

    [templates.hosting]              # a policy template: some keys of a tenant's [tenants.policy]
    sensitivity = 2.0
    [[tenants]]                      # see tenants.model; template = "hosting" follows a template,
                                     # the tenant's own [tenants.policy] keys override it
    [notify]                         # validated here, kept raw; the notifiers parse it again
    [fleet]                          # join a central SecureWatch (appliance.fleet_agent); exactly these keys
    central = "https://central.example.net:8443"
    site = "ams1"                    # [a-z0-9][a-z0-9_-]{0,62}, unique in the fleet
    token_file = "/etc/seawall/fleet.token"        # the token `seawall fleet enroll SITE` printed
    ca_file = "/etc/seawall/central-ca.pem"        # optional: verify the central server's certificate
    # [bgp], [[bgp.peers]], [escalation]: upstream escalation, parsed and checked by escalation.config
    [appflood]                       # application-layer flood detection: policy.appflood.AppFloodConfig's
    warmup_s = 600                   # keys (seconds, floors, per-source limits, caps), checked by it
    [policy]                         # the volumetric engine's box-wide knobs: policy.config.FILE_KEYS
    quiet_s = 30                     # seconds without anomaly before an incident ends
    hold_down_s = 300                # seconds its rules stay installed after it ended

`load_config` reads the file and does nothing else: every problem in it (syntax,
unknown keys, wrong types, bad tenants) comes back as one ConfigError naming the
file and the key, and nothing is applied.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import os
import pathlib
import urllib.parse
from typing import Any

from dataplane import constants, sizing
from escalation.config import BgpSettings, EscalationSettings, parse_bgp, parse_escalation

# [securewatch] is SecureWatch's own table: its settings, keys and checks are in securewatch.settings.
from securewatch.settings import SecureWatchSettings, parse_settings
from tenants.errors import ConfigError, did_you_mean, type_name, whole_number
from tenants.io import parse_toml_document, read_text
from tenants.model import TENANT_ID_PATTERN, TENANT_ID_RULE, TenantSet
from tenants.templates import parse_values, resolve_tenant_tables

DEFAULT_CONFIG_PATH = "/etc/seawall/seawall.toml"   # where the systemd unit and the commands look
DEFAULT_STATE_DIR = pathlib.Path("/var/lib/seawall")
DEFAULT_BPFFS = pathlib.Path("/sys/fs/bpf/seawall")
LOG_FORMATS = ("auto", "json", "console")
DEFAULT_LOG_FORMAT = "auto"
DEFAULT_TICK_MS = 1000           # milliseconds between policy engine ticks
TICK_MS_RANGE = (100, 10000)     # milliseconds: faster starves the CPU, slower reacts too late
IFNAME_MAX_BYTES = 15            # Linux IFNAMSIZ (16) minus the terminating NUL

SECTIONS = ("appliance", "securewatch", "templates", "tenants", "notify", "bgp", "escalation", "fleet", "appflood",
            "policy")
FLEET_KEYS = ("central", "site", "token_file", "ca_file")
def _loopback_host(url: str) -> bool:
    """Whether `url`'s host is this machine: localhost, 127.0.0.0/8 or ::1."""
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        return False
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


FLEET_SCHEMES = ("https://", "http://")   # http:// only for a central server on this host (tests, a lab)
# The incident PCAP files' caps and retention: `policy.config.PolicyConfig` fields of the same names, whose
# bounds check them here too (the per-file cap, the days kept after an incident ends, the total).
PCAP_KEYS = ("pcap_max_bytes", "pcap_retention_days", "pcap_max_total_bytes")
APPLIANCE_KEYS = ("external", "internal", "state_dir", "log_format", "tick_ms", "bpffs", "address_cache_mib",
                  "max_addresses", *sizing.FLOW_SIZE_KEYS, *PCAP_KEYS)
ADDRESS_CACHE_MIB_RANGE = (1, 65536)   # MiB; dataplane.sizing turns it into slots per CPU


@dataclasses.dataclass(frozen=True, slots=True)
class ApplianceSettings:
    external: str | None          # upstream NIC name
    internal: str | None          # customer-side NIC name
    state_dir: pathlib.Path
    log_format: str               # one of LOG_FORMATS
    tick_ms: int                  # milliseconds
    bpffs: pathlib.Path
    address_cache_mib: int = sizing.DEFAULT_CACHE_MIB          # MiB, all CPU regions together
    max_addresses: int = sizing.DEFAULT_MAX_ADDRESSES          # spill map entries
    flow_sizes: sizing.FlowSizes = sizing.FlowSizes()          # connection accounting's maps, entries
    pcap: dict[str, int] = dataclasses.field(default_factory=dict)   # the PCAP_KEYS given (bytes, days, bytes)

    def address_cache_bits(self, regions: int | None = None) -> int:
        """log2 of the address cache's slots per CPU region on this box (`dataplane.sizing`)."""
        return sizing.address_cache_bits(self.address_cache_mib, regions)


@dataclasses.dataclass(frozen=True, slots=True)
class FleetSettings:
    """`[fleet]`: the central SecureWatch this appliance reports to and takes its tenants from."""

    central: str                  # base URL, https://host:port
    site: str                     # this appliance's site name in the fleet
    token_file: pathlib.Path      # holds the site's token (read at start; the token never sits in this file)
    ca_file: pathlib.Path | None = None   # PEM CA bundle for the central server's certificate; None: the system's

    def token(self) -> str:
        """The site's token from token_file; ConfigError naming the key when it cannot be read."""
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError([f"[fleet] token_file: cannot read {str(self.token_file)!r}: {exc.strerror}"]) from None
        if not token:
            raise ConfigError([f"[fleet] token_file: {str(self.token_file)!r} is empty"])
        return token


@dataclasses.dataclass(frozen=True, slots=True)
class ApplianceConfig:
    appliance: ApplianceSettings
    securewatch: SecureWatchSettings
    tenants: TenantSet
    notify: dict[str, Any]        # the raw [notify] table (a private copy)
    source: str | None = None     # the file it came from
    bgp: BgpSettings | None = None                 # None: no [bgp], nothing escalates
    escalation: EscalationSettings = dataclasses.field(default_factory=EscalationSettings)
    # Which tenant follows which [templates.NAME] (tenants.templates); `tenants` already holds
    # each follower's resolved policy.
    template_links: dict[str, str] = dataclasses.field(default_factory=dict)
    templates: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)   # name: policy keys
    fleet: FleetSettings | None = None             # None: no [fleet], the appliance stands alone
    # [appflood]: knobs of the application-layer flood detector (policy.appflood.AppFloodConfig's field
    # names), validated; the engine's defaults for the rest.
    appflood: dict[str, Any] = dataclasses.field(default_factory=dict)
    # [policy]: the volumetric engine's box-wide knobs (policy.config.FILE_KEYS: PolicyConfig's field
    # names), validated and as PolicyConfig takes them; the engine's defaults for the rest.
    policy: dict[str, Any] = dataclasses.field(default_factory=dict)

    def interfaces(self) -> tuple[str, str]:
        """(external, internal) NIC names; ConfigError when either is not configured."""
        missing = [key for key in ("external", "internal") if getattr(self.appliance, key) is None]
        if missing:
            raise ConfigError([f"[appliance] {key}: required to run the bridge (the {key} interface name)"
                               for key in missing], source=self.source)
        return self.appliance.external, self.appliance.internal  # type: ignore[return-value]


def load_config(path: str | os.PathLike[str]) -> ApplianceConfig:
    """Read and validate the appliance config file; ConfigError lists every problem."""
    source = os.fspath(path)
    return parse_config(read_text(path), source=source)


def parse_config(text: str, source: str = "<string>") -> ApplianceConfig:
    """Validate config text (pure); ConfigError lists every problem, attributed to `source`."""
    document = parse_toml_document(text, source)
    problems: list[str] = []
    for key, value in document.items():
        if key not in SECTIONS:
            is_table = isinstance(value, dict) or (isinstance(value, list) and value
                                                    and all(isinstance(item, dict) for item in value))
            kind = "section" if is_table else "key"
            problems.append(f"{key}: unknown top-level {kind}{did_you_mean(key, SECTIONS)}")

    appliance = _parse_appliance(_section(document, "appliance", problems), problems)
    securewatch = parse_settings(_section(document, "securewatch", problems), appliance.state_dir, problems)
    notify = _section(document, "notify", problems)
    bgp = parse_bgp(document.get("bgp"), problems)
    escalation = parse_escalation(document.get("escalation"), problems)
    fleet = _parse_fleet(document["fleet"], problems) if "fleet" in document else None
    appflood = _parse_appflood(_section(document, "appflood", problems), appliance.flow_sizes, problems)
    policy = _parse_policy(_section(document, "policy", problems), appliance.pcap, problems)

    tenants = TenantSet()
    tenants_known = False
    tables, template_links, template_problems = resolve_tenant_tables(document.get("tenants", []),
                                                                       document.get("templates", {}))
    templates = {name: parse_values(values) for name, values in document.get("templates", {}).items()
                 } if not template_problems and isinstance(document.get("templates", {}), dict) else {}
    problems.extend(template_problems)
    if "tenants" in document:
        try:
            tenants = TenantSet.from_dicts(tables)
            tenants_known = True
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.extend(_notify_problems(notify, tenants.ids if tenants_known else None))
    if problems:
        raise ConfigError(problems, source=source)
    return ApplianceConfig(appliance=appliance, securewatch=securewatch, tenants=tenants,
                           notify=copy.deepcopy(notify), source=source, bgp=bgp, escalation=escalation,
                           template_links=template_links, templates=templates, fleet=fleet, appflood=appflood,
                           policy=policy)


def _notify_problems(notify: dict[str, Any], tenant_ids: tuple[str, ...] | None) -> list[str]:
    """Every problem of the [notify] section, found when the file is read: `seawall run` and
    `seawall securewatch` then refuse a bad receiver before they start anything. A receiver's
    `tenants` are checked against the file's [[tenants]] when it has them."""
    if not notify:
        return []
    from securewatch.notify.config import parse_notify_config  # noqa: PLC0415 - only files with [notify]

    try:
        parse_notify_config(notify, tenant_ids)
    except ConfigError as exc:
        return exc.problems
    return []


def _section(document: dict[str, Any], name: str, problems: list[str]) -> dict[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, dict):
        problems.append(f"[{name}]: expected a table, got {type_name(value)}")
        return {}
    return value


def _unknown_keys(section: str, table: dict[str, Any], known: tuple[str, ...], problems: list[str]) -> None:
    for key in table:
        if key not in known:
            problems.append(f"[{section}] {key}: unknown key{did_you_mean(key, known)}")


def _string(section: str, table: dict[str, Any], key: str, default: str | None,
            problems: list[str]) -> str | None:
    value = table.get(key, default)
    if value is not None and not isinstance(value, str):
        problems.append(f"[{section}] {key}: expected a string, got {type_name(value)} {value!r}")
        return default
    return value


def _path(section: str, table: dict[str, Any], key: str, default: pathlib.Path,
          problems: list[str]) -> pathlib.Path:
    value = _string(section, table, key, str(default), problems)
    if value is None or not value.strip():
        problems.append(f"[{section}] {key}: expected a path, got an empty string")
        return default
    path = pathlib.Path(value)
    if not path.is_absolute():
        # A daemon's working directory is an accident of how it was started; say exactly where.
        problems.append(f"[{section}] {key}: {value!r} is not an absolute path")
        return default
    return path


def _interface(table: dict[str, Any], key: str, problems: list[str]) -> str | None:
    name = _string("appliance", table, key, None, problems)
    if name is None:
        return None
    # The kernel's own rule (dev_valid_name): 1-15 bytes, no '/', ':' or whitespace, not '.' or '..'.
    if (not name or len(name.encode()) > IFNAME_MAX_BYTES or name in (".", "..")
            or any(c in "/:" or c.isspace() for c in name)):
        problems.append(f"[appliance] {key}: {name!r} is not a valid interface name "
                        f"(1-{IFNAME_MAX_BYTES} bytes, no '/', ':' or spaces)")
        return None
    return name


def _whole_number(table: dict[str, Any], key: str, default: int, bounds: tuple[int, int],
                  problems: list[str]) -> int:
    checked = whole_number(f"[appliance] {key}", table.get(key, default), *bounds, problems)
    return default if checked is None else checked


def _parse_appflood(table: dict[str, Any], sizes: sizing.FlowSizes, problems: list[str]) -> dict[str, Any]:
    """[appflood]: the detector's knobs, checked by the detector's own configuration (its caps against the
    dataplane's map sizes); the table as given when it is valid."""
    if not table:
        return {}
    from policy.appflood import AppFloodConfig  # noqa: PLC0415 - numpy, only when the section is there

    known = [f.name for f in dataclasses.fields(AppFloodConfig)]
    _unknown_keys("appflood", table, tuple(known), problems)
    knobs = {k: v for k, v in table.items() if k in known}
    for key, value in knobs.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"[appflood] {key}: expected a number, got {type_name(value)} {value!r}")
            return {}
    try:
        AppFloodConfig.for_dataplane(sizes, **knobs)
    except (TypeError, ValueError) as exc:
        problems.append(f"[appflood] {str(exc).removeprefix('appflood config ')}")
        return {}
    return dict(knobs)


def _parse_policy(table: dict[str, Any], pcap: dict[str, int], problems: list[str]) -> dict[str, Any]:
    """[policy]: the engine's box-wide knobs, each checked against its bounds (policy.config.FILE_KEYS),
    then together by the engine's own configuration; {} when any is wrong (the problems name them)."""
    if not table:
        return {}
    from policy.config import FILE_KEYS, PolicyConfig, file_value  # noqa: PLC0415 - the engine's configuration

    _unknown_keys("policy", table, tuple(FILE_KEYS), problems)
    values: dict[str, Any] = {}
    wrong: list[str] = []
    for key, raw in table.items():
        if key in FILE_KEYS:
            try:
                values[key] = file_value(key, raw)
            except ValueError as exc:
                wrong.append(f"[policy] {exc}")
    if wrong:
        problems.extend(wrong)
        return {}
    try:
        PolicyConfig(**pcap, **values)
    except ValueError as exc:
        problems.append(f"[policy] {str(exc).removeprefix('policy config ')}")
        return {}
    return values


def _parse_pcap(table: dict[str, Any], problems: list[str]) -> dict[str, int]:
    """The PCAP_KEYS of [appliance] that are given, checked by the policy engine's own configuration (one
    set of bounds); {} when one is wrong (the problem names it)."""
    given = {key: table[key] for key in PCAP_KEYS if key in table}
    if not given:
        return {}
    from policy.config import PolicyConfig  # noqa: PLC0415 - the engine's configuration, only when needed

    try:
        PolicyConfig(**given)
    except ValueError as exc:
        problems.append(f"[appliance] {str(exc).removeprefix('policy config ')}")
        return {}
    return given


def _parse_appliance(table: dict[str, Any], problems: list[str]) -> ApplianceSettings:
    _unknown_keys("appliance", table, APPLIANCE_KEYS, problems)
    external = _interface(table, "external", problems)
    internal = _interface(table, "internal", problems)
    if external is not None and external == internal:
        problems.append(f"[appliance] internal: {internal!r} is also the external interface; "
                        f"the bridge needs two different NICs")

    log_format = _string("appliance", table, "log_format", DEFAULT_LOG_FORMAT, problems) or DEFAULT_LOG_FORMAT
    if log_format not in LOG_FORMATS:
        problems.append(f"[appliance] log_format: {log_format!r} is not one of "
                        f"{', '.join(repr(f) for f in LOG_FORMATS)}")
        log_format = DEFAULT_LOG_FORMAT

    tick_ms = table.get("tick_ms", DEFAULT_TICK_MS)
    low, high = TICK_MS_RANGE
    if isinstance(tick_ms, bool) or not isinstance(tick_ms, int):
        problems.append(f"[appliance] tick_ms: expected an integer number of milliseconds, "
                        f"got {type_name(tick_ms)} {tick_ms!r}")
        tick_ms = DEFAULT_TICK_MS
    elif not low <= tick_ms <= high:
        problems.append(f"[appliance] tick_ms: must be between {low} and {high} milliseconds, got {tick_ms}")
        tick_ms = DEFAULT_TICK_MS

    sizes = {key: _whole_number(table, key, default, bounds, problems) for key, default, bounds in (
        ("address_cache_mib", sizing.DEFAULT_CACHE_MIB, ADDRESS_CACHE_MIB_RANGE),
        ("max_addresses", sizing.DEFAULT_MAX_ADDRESSES, sizing.MAX_ADDRESSES_RANGE))}
    flow_sizes = sizing.FlowSizes(**{
        key: _whole_number(table, key, getattr(constants, name), bounds, problems)
        for key, (name, bounds) in sizing.FLOW_SIZE_KEYS.items()})
    return ApplianceSettings(
        external=external, internal=internal, **sizes, flow_sizes=flow_sizes,
        state_dir=_path("appliance", table, "state_dir", DEFAULT_STATE_DIR, problems),
        log_format=log_format, tick_ms=tick_ms,
        bpffs=_path("appliance", table, "bpffs", DEFAULT_BPFFS, problems),
        pcap=_parse_pcap(table, problems),
    )


def _parse_fleet(table: Any, problems: list[str]) -> FleetSettings | None:
    """`[fleet]`: central, site and token_file required, ca_file optional; each problem names its key."""
    if not isinstance(table, dict):
        problems.append(f"[fleet]: expected a table, got {type_name(table)}")
        return None
    before = len(problems)
    _unknown_keys("fleet", table, FLEET_KEYS, problems)
    for key in ("central", "site", "token_file"):
        if key not in table:
            problems.append(f"[fleet] {key}: required to join a fleet")
    central = _string("fleet", table, "central", None, problems)
    if central is not None:
        host = central.partition("://")[2].split("/", 1)[0]
        if not central.startswith(FLEET_SCHEMES) or not host or any(c.isspace() for c in central):
            problems.append(f"[fleet] central: {central!r} is not the central server's URL "
                            f"(like 'https://central.example.net:8443')")
        elif central.startswith("http://") and not _loopback_host(central):
            # The site's token and the tenant set go over this link: in clear text only on this host.
            problems.append(f"[fleet] central: {central!r}: http:// is for a central server on this host only "
                            f"(127.0.0.0/8, ::1, localhost); use https://")
    site = _string("fleet", table, "site", None, problems)
    if site is not None and not TENANT_ID_PATTERN.fullmatch(site):
        problems.append(f"[fleet] site: {site!r} is not a site name ({TENANT_ID_RULE})")
    paths = {}
    for key in ("token_file", "ca_file"):
        if key in table:
            value = _string("fleet", table, key, None, problems)
            if value is not None:
                path = pathlib.Path(value)
                if not value.strip() or not path.is_absolute():
                    problems.append(f"[fleet] {key}: {value!r} is not an absolute path")
                else:
                    paths[key] = path
    if len(problems) > before:
        return None
    return FleetSettings(central=central.rstrip("/"), site=site, token_file=paths["token_file"],  # type: ignore[union-attr]
                         ca_file=paths.get("ca_file"))
