"""The appliance configuration file (TOML): typed, validated, read once, no globals.

    [appliance]                      # the box itself
    external = "eth0"                # upstream NIC (required by `seawall run`)
    internal = "eth1"                # customer-side NIC (required by `seawall run`)
    state_dir = "/var/lib/seawall"
    log_format = "auto"              # auto | json | console
    tick_ms = 1000                   # policy engine tick, milliseconds
    bpffs = "/sys/fs/bpf/seawall"    # where maps are pinned

    [securewatch]
    listen = "127.0.0.1:8080"
    database = "sqlite:////var/lib/seawall/securewatch.db"  # sqlite:/// + absolute path; default: under state_dir
    enabled = true
    # tls_cert = "/etc/seawall/tls/cert.pem" # PEM certificate (chain); with tls_key, serve HTTPS
    # tls_key = "/etc/seawall/tls/key.pem"   # its unencrypted PEM private key (both loaded when read)
    trusted_proxies = ["127.0.0.1"]          # reverse proxies whose X-Forwarded-For/-Proto are believed
    secure_cookies = false                   # force Secure cookies (automatic over HTTPS)

    [[tenants]]                      # see tenants.model
    [notify]                         # validated here, kept raw; the notifiers parse it again

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
import ssl
from typing import Any

from tenants.errors import ConfigError, did_you_mean, type_name
from tenants.io import parse_toml_document, read_text
from tenants.model import TenantSet

DEFAULT_CONFIG_PATH = "/etc/seawall/seawall.toml"   # where the systemd unit and the commands look
DEFAULT_STATE_DIR = pathlib.Path("/var/lib/seawall")
DEFAULT_BPFFS = pathlib.Path("/sys/fs/bpf/seawall")
LOG_FORMATS = ("auto", "json", "console")
DEFAULT_LOG_FORMAT = "auto"
DEFAULT_TICK_MS = 1000           # milliseconds between policy engine ticks
TICK_MS_RANGE = (100, 10000)     # milliseconds: faster starves the CPU, slower reacts too late
DEFAULT_LISTEN = "127.0.0.1:8080"
SQLITE_SCHEME = "sqlite:///"
SQLITE_MEMORY = ":memory:"
DATABASE_SCHEMES = (SQLITE_SCHEME, "postgresql://", "postgres://")
IFNAME_MAX_BYTES = 15            # Linux IFNAMSIZ (16) minus the terminating NUL

SECTIONS = ("appliance", "securewatch", "tenants", "notify")
APPLIANCE_KEYS = ("external", "internal", "state_dir", "log_format", "tick_ms", "bpffs")
SECUREWATCH_KEYS = ("listen", "database", "enabled", "tls_cert", "tls_key", "trusted_proxies", "secure_cookies")
MAX_TRUSTED_PROXIES = 64         # entries: a proxy tier, not an address list


@dataclasses.dataclass(frozen=True, slots=True)
class ApplianceSettings:
    external: str | None          # upstream NIC name
    internal: str | None          # customer-side NIC name
    state_dir: pathlib.Path
    log_format: str               # one of LOG_FORMATS
    tick_ms: int                  # milliseconds
    bpffs: pathlib.Path


@dataclasses.dataclass(frozen=True, slots=True)
class SecureWatchSettings:
    listen: str                   # "host:port" or "[v6]:port"; port 0 picks a free port
    database: str                 # sqlite:///PATH or postgresql://...
    enabled: bool
    tls_cert: pathlib.Path | None = None   # PEM certificate chain; with tls_key: HTTPS
    tls_key: pathlib.Path | None = None    # its PEM private key (unencrypted)
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # X-Forwarded-* believed from these
    secure_cookies: bool = False           # Secure cookies even over plain HTTP (a TLS proxy in front)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (None: plain HTTP); ssl.SSLError/OSError when the files do not load."""
        if not self.tls:
            return None
        return server_ssl_context(self.tls_cert, self.tls_key)  # type: ignore[arg-type]

    @property
    def sqlite_path(self) -> pathlib.Path | str | None:
        """The SQLite file (or ':memory:') of a sqlite:/// database, else None."""
        return sqlite_path(self.database)

    @property
    def listen_host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return _split_listen(self.listen)[1]


@dataclasses.dataclass(frozen=True, slots=True)
class ApplianceConfig:
    appliance: ApplianceSettings
    securewatch: SecureWatchSettings
    tenants: TenantSet
    notify: dict[str, Any]        # the raw [notify] table (a private copy)
    source: str | None = None     # the file it came from

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
    securewatch = _parse_securewatch(_section(document, "securewatch", problems), appliance, problems)
    notify = _section(document, "notify", problems)

    tenants = TenantSet()
    tenants_known = False
    if "tenants" in document:
        try:
            tenants = TenantSet.from_dicts(document["tenants"])
            tenants_known = True
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.extend(_notify_problems(notify, tenants.ids if tenants_known else None))
    if problems:
        raise ConfigError(problems, source=source)
    return ApplianceConfig(appliance=appliance, securewatch=securewatch, tenants=tenants,
                           notify=copy.deepcopy(notify), source=source)


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

    return ApplianceSettings(
        external=external, internal=internal,
        state_dir=_path("appliance", table, "state_dir", DEFAULT_STATE_DIR, problems),
        log_format=log_format, tick_ms=tick_ms,
        bpffs=_path("appliance", table, "bpffs", DEFAULT_BPFFS, problems),
    )


def sqlite_path(database: str) -> pathlib.Path | str | None:
    """'sqlite:////abs/file.db' -> Path('/abs/file.db'), 'sqlite:///:memory:' -> ':memory:', else None."""
    if not database.startswith(SQLITE_SCHEME):
        return None
    rest = database[len(SQLITE_SCHEME):]
    if rest == SQLITE_MEMORY:
        return SQLITE_MEMORY
    path = pathlib.Path(rest)
    return path if path.is_absolute() and rest.strip("/") else None


def _split_listen(listen: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' to (host, port); ValueError says what is wrong."""
    host, colon, port_text = listen.rpartition(":")
    if not colon or not host:
        raise ValueError(f"{listen!r} is not host:port (for example '127.0.0.1:8080' or '[::1]:8080')")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{listen!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{listen!r}: write an IPv6 address in brackets, like '[::1]:8080'")
    if not port_text.isascii() or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{listen!r}: port {port_text!r} is not a number between 0 and 65535")
    return host, int(port_text)


def _parse_securewatch(table: dict[str, Any], appliance: ApplianceSettings,
                       problems: list[str]) -> SecureWatchSettings:
    _unknown_keys("securewatch", table, SECUREWATCH_KEYS, problems)
    listen = _string("securewatch", table, "listen", DEFAULT_LISTEN, problems) or DEFAULT_LISTEN
    try:
        _split_listen(listen)
    except ValueError as exc:
        problems.append(f"[securewatch] listen: {exc}")
        listen = DEFAULT_LISTEN

    # sqlite:/// followed by the absolute path, so four slashes in all (SQLAlchemy's convention).
    default_database = f"{SQLITE_SCHEME}{appliance.state_dir}/securewatch.db"
    database = _string("securewatch", table, "database", default_database, problems) or default_database
    if not database.startswith(DATABASE_SCHEMES):
        problems.append(f"[securewatch] database: {database!r} is not supported "
                        f"(use sqlite:////ABSOLUTE/PATH or postgresql://...)")
    elif database.startswith(SQLITE_SCHEME) and sqlite_path(database) is None:
        problems.append(f"[securewatch] database: {database!r} does not name an absolute path; "
                        f"write sqlite:/// then the path, e.g. 'sqlite:////var/lib/seawall/securewatch.db'")

    enabled = _bool("securewatch", table, "enabled", True, problems)
    secure_cookies = _bool("securewatch", table, "secure_cookies", False, problems)
    tls_cert, tls_key = _tls_files(table, problems)
    return SecureWatchSettings(listen=listen, database=database, enabled=enabled, tls_cert=tls_cert,
                               tls_key=tls_key, trusted_proxies=_trusted_proxies(table, problems),
                               secure_cookies=secure_cookies)


def _bool(section: str, table: dict[str, Any], key: str, default: bool, problems: list[str]) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        problems.append(f"[{section}] {key}: expected true or false, got {type_name(value)} {value!r}")
        return default
    return value


def server_ssl_context(cert: pathlib.Path, key: pathlib.Path) -> ssl.SSLContext:
    """A TLS server context from a PEM certificate chain and its private key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # A passphrase would be asked on the terminal of a daemon: refuse encrypted keys instead.
    context.load_cert_chain(cert, key, password=lambda: b"")
    return context


def _tls_files(table: dict[str, Any], problems: list[str]) -> tuple[pathlib.Path | None, pathlib.Path | None]:
    """[securewatch] tls_cert and tls_key: both or neither, readable, and loading as a pair, checked now."""
    paths: dict[str, pathlib.Path | None] = {}
    for key in ("tls_cert", "tls_key"):
        paths[key] = None
        if key not in table:
            continue
        count = len(problems)
        path = _path("securewatch", table, key, pathlib.Path("/"), problems)
        if len(problems) > count:
            continue
        try:
            with path.open("rb") as f:
                f.read(1)
        except OSError as exc:
            problems.append(f"[securewatch] {key}: cannot read {str(path)!r}: {exc.strerror}")
            continue
        paths[key] = path
    cert, key = paths["tls_cert"], paths["tls_key"]
    given = [k for k in ("tls_cert", "tls_key") if k in table]
    if len(given) == 1:
        other = "tls_key" if given == ["tls_cert"] else "tls_cert"
        problems.append(f"[securewatch] {other}: required with {given[0]} (HTTPS needs the certificate "
                        f"and its private key)")
        return None, None
    if cert is None or key is None:
        return None, None
    try:
        ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    except ssl.SSLError as exc:
        problems.append(f"[securewatch] tls_cert: {str(cert)!r} holds no PEM certificate ({exc.reason or exc})")
        return None, None
    try:
        server_ssl_context(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        problems.append(f"[securewatch] tls_key: {str(key)!r} does not load as the unencrypted PEM private key "
                        f"of {str(cert)!r} ({reason})")
        return None, None
    return cert, key


def _trusted_proxies(table: dict[str, Any],
                     problems: list[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    value = table.get("trusted_proxies", [])
    if not isinstance(value, list):
        problems.append(f"[securewatch] trusted_proxies: expected a list of addresses or networks, "
                        f"got {type_name(value)} {value!r}")
        return ()
    if len(value) > MAX_TRUSTED_PROXIES:
        problems.append(f"[securewatch] trusted_proxies: at most {MAX_TRUSTED_PROXIES} entries, got {len(value)}")
        return ()
    networks = []
    for i, item in enumerate(value):
        try:
            if not isinstance(item, str):
                raise TypeError
            networks.append(ipaddress.ip_network(item, strict=False))
        except (TypeError, ValueError):
            problems.append(f"[securewatch] trusted_proxies[{i}]: {item!r} is not an IP address or network "
                            f"(for example '127.0.0.1' or '10.0.0.0/24')")
    return tuple(networks)
