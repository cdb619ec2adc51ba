"""SecureWatch's settings: the `[securewatch]` table of the appliance config file, typed and validated.

    [securewatch]
    listen = "127.0.0.1:8080"
    database = "sqlite:////var/lib/seawall/securewatch.db"  # sqlite:/// + absolute path; default: under state_dir
    enabled = true
    # tls_cert = "/etc/seawall/tls/cert.pem" # PEM certificate (chain); with tls_key, serve HTTPS
    # tls_key = "/etc/seawall/tls/key.pem"   # its unencrypted PEM private key (both loaded when read)
    trusted_proxies = ["127.0.0.1"]          # reverse proxies whose X-Forwarded-For/-Proto are believed
    secure_cookies = false                   # force Secure cookies (automatic over HTTPS)
    # How long the console's series are kept (defaults shown; securewatch.series.SeriesRetention; a
    # *_second_retention_s at most its minutes' retention in seconds, SeriesRetention.ROLLED_UP_INTO):
    traffic_second_retention_s = 3600        # tenant per-second rows (the 5-minute chart)
    traffic_minute_retention_days = 90       # tenant minute rollups (the 24-hour chart, reports)
    traffic_hour_retention_days = 400        # tenant hour rollups (the 30-day chart)
    destination_second_retention_s = 21600   # per-second rows of attacked and top-N destinations
    destination_minute_retention_days = 30   # minute rollups of every destination with traffic
    fleet_second_retention_s = 3600          # central server: per-site seconds (hour partitions)
    fleet_minute_retention_days = 30         # central server: per-site minute rollups (day partitions)
    fleet_hour_retention_days = 400          # central server: per-site hour rollups (30-day partitions)
    fleet_destination_minute_retention_days = 30   # central server: per-site destination minutes (day partitions)
    fleet_evidence_retention_days = 90       # central server: sites' incident PCAP files, after receipt
    # [securewatch.reports]: customer report branding and mail schedule (securewatch/reports_config.py)

The validation lives here, beside what it validates; `appliance.config` hands this table to
`parse_settings` with its problem list, so the config file still reports every problem of
every section at once.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
import ssl
from typing import Any

from tenants.errors import did_you_mean, type_name

from .reports_config import ReportSettings, parse_report_settings
from .series import SECONDS_PER_DAY, SERIES_KEYS, SeriesRetention

SECTION = "securewatch"
DEFAULT_LISTEN = "127.0.0.1:8080"
SQLITE_SCHEME = "sqlite:///"
SQLITE_MEMORY = ":memory:"
DATABASE_SCHEMES = (SQLITE_SCHEME, "postgresql://", "postgres://")
DATABASE_FILE = "securewatch.db"   # the default database's file name, under the appliance's state_dir
KEYS = ("listen", "database", "enabled", "tls_cert", "tls_key", "trusted_proxies", "secure_cookies", *SERIES_KEYS,
        "reports")
MAX_TRUSTED_PROXIES = 64         # entries: a proxy tier, not an address list


@dataclasses.dataclass(frozen=True, slots=True)
class SecureWatchSettings:
    listen: str                   # "host:port" or "[v6]:port"; port 0 picks a free port
    database: str                 # sqlite:///PATH or postgresql://...
    enabled: bool
    tls_cert: pathlib.Path | None = None   # PEM certificate chain; with tls_key: HTTPS
    tls_key: pathlib.Path | None = None    # its PEM private key (unencrypted)
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # X-Forwarded-* believed from these
    secure_cookies: bool = False           # Secure cookies even over plain HTTP (a TLS proxy in front)
    retention: SeriesRetention = SeriesRetention()   # how long the console's series are kept
    reports: ReportSettings = ReportSettings()       # [securewatch.reports]: branding, mail day, PDF

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
        return split_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_listen(self.listen)[1]


def sqlite_path(database: str) -> pathlib.Path | str | None:
    """'sqlite:////abs/file.db' -> Path('/abs/file.db'), 'sqlite:///:memory:' -> ':memory:', else None."""
    if not database.startswith(SQLITE_SCHEME):
        return None
    rest = database[len(SQLITE_SCHEME):]
    if rest == SQLITE_MEMORY:
        return SQLITE_MEMORY
    path = pathlib.Path(rest)
    return path if path.is_absolute() and rest.strip("/") else None


def split_listen(listen: str) -> tuple[str, int]:
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


def server_ssl_context(cert: pathlib.Path, key: pathlib.Path) -> ssl.SSLContext:
    """A TLS server context from a PEM certificate chain and its private key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # A passphrase would be asked on the terminal of a daemon: refuse encrypted keys instead.
    context.load_cert_chain(cert, key, password=lambda: b"")
    return context


def parse_settings(table: dict[str, Any], state_dir: pathlib.Path, problems: list[str]) -> SecureWatchSettings:
    """The `[securewatch]` table as settings; each problem is appended to `problems` (as
    "[securewatch] key: ...") and the key takes its default, so the caller reports them all at once.
    state_dir: where the default SQLite database lives (the appliance's state directory)."""
    for key in table:
        if key not in KEYS:
            problems.append(f"[{SECTION}] {key}: unknown key{did_you_mean(key, KEYS)}")
    listen = _string(table, "listen", DEFAULT_LISTEN, problems) or DEFAULT_LISTEN
    try:
        split_listen(listen)
    except ValueError as exc:
        problems.append(f"[{SECTION}] listen: {exc}")
        listen = DEFAULT_LISTEN

    # sqlite:/// followed by the absolute path, so four slashes in all (SQLAlchemy's convention).
    default_database = f"{SQLITE_SCHEME}{state_dir}/{DATABASE_FILE}"
    database = _string(table, "database", default_database, problems) or default_database
    if not database.startswith(DATABASE_SCHEMES):
        problems.append(f"[{SECTION}] database: {database!r} is not supported "
                        f"(use sqlite:////ABSOLUTE/PATH or postgresql://...)")
    elif database.startswith(SQLITE_SCHEME) and sqlite_path(database) is None:
        problems.append(f"[{SECTION}] database: {database!r} does not name an absolute path; "
                        f"write sqlite:/// then the path, e.g. 'sqlite:////var/lib/seawall/securewatch.db'")

    enabled = _bool(table, "enabled", True, problems)
    secure_cookies = _bool(table, "secure_cookies", False, problems)
    tls_cert, tls_key = _tls_files(table, problems)
    return SecureWatchSettings(listen=listen, database=database, enabled=enabled, tls_cert=tls_cert,
                               tls_key=tls_key, trusted_proxies=_trusted_proxies(table, problems),
                               secure_cookies=secure_cookies, retention=_retention(table, problems),
                               reports=parse_report_settings(table.get("reports"), problems))


def _retention(table: dict[str, Any], problems: list[str]) -> SeriesRetention:
    values: dict[str, int] = {}
    for key in SERIES_KEYS:
        if key not in table:
            continue
        value = table[key]
        lo, hi = SeriesRetention.BOUNDS[key]
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"[{SECTION}] {key}: expected a whole number, got {type_name(value)} {value!r}")
        elif not lo <= value <= hi:
            problems.append(f"[{SECTION}] {key}: must be between {lo} and {hi}, got {value}")
        else:
            values[key] = value
    retention = SeriesRetention(**values)
    for seconds, minutes in SeriesRetention.ROLLED_UP_INTO:
        if getattr(retention, seconds) > getattr(retention, minutes) * SECONDS_PER_DAY:
            days = getattr(retention, minutes)
            problems.append(f"[{SECTION}] {seconds}: must be at most {days * SECONDS_PER_DAY} ({minutes} = {days}: "
                            f"the minutes the seconds are rolled up into are kept no longer), "
                            f"got {getattr(retention, seconds)}")
    return retention


def _string(table: dict[str, Any], key: str, default: str | None, problems: list[str]) -> str | None:
    value = table.get(key, default)
    if value is not None and not isinstance(value, str):
        problems.append(f"[{SECTION}] {key}: expected a string, got {type_name(value)} {value!r}")
        return default
    return value


def _bool(table: dict[str, Any], key: str, default: bool, problems: list[str]) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        problems.append(f"[{SECTION}] {key}: expected true or false, got {type_name(value)} {value!r}")
        return default
    return value


def _path(table: dict[str, Any], key: str, problems: list[str]) -> pathlib.Path | None:
    value = table.get(key)
    if not isinstance(value, str):
        problems.append(f"[{SECTION}] {key}: expected a string, got {type_name(value)} {value!r}")
        return None
    if not value.strip():
        problems.append(f"[{SECTION}] {key}: expected a path, got an empty string")
        return None
    path = pathlib.Path(value)
    if not path.is_absolute():
        # A daemon's working directory is an accident of how it was started; say exactly where.
        problems.append(f"[{SECTION}] {key}: {value!r} is not an absolute path")
        return None
    return path


def _tls_files(table: dict[str, Any], problems: list[str]) -> tuple[pathlib.Path | None, pathlib.Path | None]:
    """[securewatch] tls_cert and tls_key: both or neither, readable, and loading as a pair, checked now."""
    paths: dict[str, pathlib.Path | None] = {}
    for key in ("tls_cert", "tls_key"):
        paths[key] = None
        if key not in table:
            continue
        path = _path(table, key, problems)
        if path is None:
            continue
        try:
            with path.open("rb") as f:
                f.read(1)
        except OSError as exc:
            problems.append(f"[{SECTION}] {key}: cannot read {str(path)!r}: {exc.strerror}")
            continue
        paths[key] = path
    cert, key = paths["tls_cert"], paths["tls_key"]
    given = [k for k in ("tls_cert", "tls_key") if k in table]
    if len(given) == 1:
        other = "tls_key" if given == ["tls_cert"] else "tls_cert"
        problems.append(f"[{SECTION}] {other}: required with {given[0]} (HTTPS needs the certificate "
                        f"and its private key)")
        return None, None
    if cert is None or key is None:
        return None, None
    try:
        ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    except ssl.SSLError as exc:
        problems.append(f"[{SECTION}] tls_cert: {str(cert)!r} holds no PEM certificate ({exc.reason or exc})")
        return None, None
    try:
        server_ssl_context(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        problems.append(f"[{SECTION}] tls_key: {str(key)!r} does not load as the unencrypted PEM private key "
                        f"of {str(cert)!r} ({reason})")
        return None, None
    return cert, key


def _trusted_proxies(table: dict[str, Any],
                     problems: list[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    value = table.get("trusted_proxies", [])
    if not isinstance(value, list):
        problems.append(f"[{SECTION}] trusted_proxies: expected a list of addresses or networks, "
                        f"got {type_name(value)} {value!r}")
        return ()
    if len(value) > MAX_TRUSTED_PROXIES:
        problems.append(f"[{SECTION}] trusted_proxies: at most {MAX_TRUSTED_PROXIES} entries, got {len(value)}")
        return ()
    networks = []
    for i, item in enumerate(value):
        try:
            if not isinstance(item, str):
                raise TypeError
            networks.append(ipaddress.ip_network(item, strict=False))
        except (TypeError, ValueError):
            problems.append(f"[{SECTION}] trusted_proxies[{i}]: {item!r} is not an IP address or network "
                            f"(for example '127.0.0.1' or '10.0.0.0/24')")
    return tuple(networks)
