"""The tenant model: who owns which prefixes, in which mode, with which lists and policy.

Everything here is immutable. `TenantSet.from_dicts` parses the `[[tenants]]`
array of tables, validates all of it (CIDRs, ids, overlaps across the whole
set, ACL entries, policies) and raises one `ConfigError` listing every problem;
a TenantSet that exists is therefore always valid and can be applied as a whole.
"""

from __future__ import annotations

import bisect
import dataclasses
import ipaddress
import re
import socket
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from dataplane.constants import IPPROTO
from tenants.addresses import PORT_MAX, Address, Network, network_bounds
from tenants.compile import capacity_problems
from tenants.errors import ConfigError, did_you_mean, type_name
from tenants.policy import TenantPolicy, shown

TENANT_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
TENANT_ID_RULE = "lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 63 characters"
MODES = ("monitor", "mitigate")
DEFAULT_MODE = "mitigate"
TENANT_KEYS = ("id", "name", "prefixes", "mode", "allow", "deny", "policy", "contacts", "sites")
# A fleet site's name (`[fleet] site` of an appliance): the tenant id's rule, so it is safe in paths and labels.
SITE_PATTERN = TENANT_ID_PATTERN
SITES_MAX = 256             # sites one tenant can be restricted to (a fleet is tens of sites)
ACL_KEYS = ("src", "proto", "sport", "dport")
ACL_LISTS = ("allow", "deny")
PROTO_MAX = 255
PROTO_NAMES = {number: name for name, number in IPPROTO.items()}
PORT_PROTOCOLS = (IPPROTO["tcp"], IPPROTO["udp"])
NAME_MAX_CHARS = 128        # characters: a display name for pages, reports and mail subjects
CONTACTS_MAX = 32           # addresses per tenant that get its monthly report
ADDRESS_MAX_CHARS = 254     # characters: RFC 5321's limit on a forward path, minus the brackets
# local-part@domain: the unquoted local parts of RFC 5322 (dot-atoms) and a DNS host name with a dot.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
CONTACT_PATTERN = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+")


def parse_network(value: object) -> Network:
    """A CIDR string to a network; ValueError (without location) when it is not one.

    Host bits are an error rather than silently cleared: '198.51.100.1/24'
    usually means the operator typed an address where a prefix was meant.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR string such as '198.51.100.0/24', got {type_name(value)} {value!r}")
    text = value.strip()
    if "%" in text:  # IPv6 zone ids name a link, not a prefix a tenant can own
        raise ValueError(f"{value!r} is not a valid CIDR (zone ids are not allowed)")
    # Parse the address once and build the network from integers: ipaddress's own
    # string parsing would parse it twice, and tenant sets hold tens of thousands.
    # inet_pton is strict (no leading zeros, no short forms) and runs in C.
    address_text, slash, length_text = text.partition("/")
    family, bits, network_class = ((socket.AF_INET6, 128, ipaddress.IPv6Network) if ":" in address_text
                                   else (socket.AF_INET, 32, ipaddress.IPv4Network))
    try:
        value_int = int.from_bytes(socket.inet_pton(family, address_text), "big")
    except OSError:
        raise ValueError(f"{value!r} is not a valid CIDR") from None
    if not slash:
        prefixlen = bits
    elif length_text.isascii() and length_text.isdigit() and int(length_text) <= bits:
        prefixlen = int(length_text)
    else:
        raise ValueError(f"{value!r} is not a valid CIDR") from None
    host_bits = (1 << (bits - prefixlen)) - 1
    network = network_class((value_int & ~host_bits, prefixlen))
    if value_int & host_bits:
        raise ValueError(f"{text} has host bits set (did you mean {network}?)")
    return network


def parse_address(value: str | Address) -> Address:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    return ipaddress.ip_address(value)


@dataclasses.dataclass(frozen=True, slots=True)
class PortRange:
    """Inclusive range of TCP/UDP ports, 0..65535."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        for bound in (self.lo, self.hi):
            if isinstance(bound, bool) or not isinstance(bound, int) or not 0 <= bound <= PORT_MAX:
                raise ValueError(f"port {bound!r} is not an integer between 0 and {PORT_MAX}")
        if self.lo > self.hi:
            raise ValueError(f"port range {self.lo}-{self.hi} is empty (low end above high end)")

    @classmethod
    def parse(cls, value: object) -> PortRange:
        """A port (int or "443") or an inclusive range "lo-hi"."""
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value, value)
        if isinstance(value, str):
            parts = [part.strip() for part in value.split("-")]
            if 1 <= len(parts) <= 2 and all(part.isascii() and part.isdigit() and len(part) <= 5 for part in parts):
                numbers = [int(part) for part in parts]
                return cls(numbers[0], numbers[-1])
            raise ValueError(f"{shown(value)} is not a port or a range like '1024-65535'")
        raise ValueError(f"expected a port number or a range like '1024-65535', got {type_name(value)} {value!r}")

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.lo <= port <= self.hi

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"

    def to_toml(self) -> int | str:
        return self.lo if self.lo == self.hi else f"{self.lo}-{self.hi}"


def _parse_proto(value: object) -> int:
    if isinstance(value, str):
        name = value.strip().lower()
        # A number as text is that number, as a port is: the policy form posts proto=47 back as "47".
        # ASCII digits only ('²'.isdigit() is true, int() refuses it); thousands of digits are not
        # converted (int() refuses them) to say they are out of range.
        if name.isascii() and name.isdigit():
            digits = name.lstrip("0") or "0"
            if len(digits) > len(str(PROTO_MAX)):
                raise ValueError(f"protocol number {shown(value)} is outside 1-{PROTO_MAX}")
            return _parse_proto(int(digits))
        if name in IPPROTO:
            return IPPROTO[name]
        raise ValueError(f"unknown protocol {value!r} (use {', '.join(IPPROTO)} or a number 1-{PROTO_MAX})")
    if isinstance(value, int) and not isinstance(value, bool):
        if value == 0:
            # 0 is IPv6 hop-by-hop, never an upper-layer protocol, and the dataplane reads 0 as "any".
            raise ValueError("0 is not a transport protocol; omit proto to match any protocol")
        if 1 <= value <= PROTO_MAX:
            return value
        raise ValueError(f"protocol number {value} is outside 1-{PROTO_MAX}")
    raise ValueError(f"expected a protocol name or number, got {type_name(value)} {value!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class AclEntry:
    """One allow or deny entry; every field None means "any"."""

    src: Network | None = None
    proto: int | None = None
    sport: PortRange | None = None
    dport: PortRange | None = None

    def __post_init__(self) -> None:
        if (self.sport or self.dport) and self.proto not in PORT_PROTOCOLS:
            raise ValueError("ports need proto 'tcp' or 'udp'")

    @classmethod
    def from_dict(cls, data: object) -> AclEntry:
        """Parse one `[[tenants.allow]]`/`[[tenants.deny]]` table; ConfigError lists every problem."""
        problems: list[str] = []
        entry = _parse_acl_entry(data, "", problems)
        if entry is None:
            raise ConfigError(problems)
        return entry

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.src is not None:
            out["src"] = str(self.src)
        if self.proto is not None:
            out["proto"] = PROTO_NAMES.get(self.proto, self.proto)
        if self.sport is not None:
            out["sport"] = self.sport.to_toml()
        if self.dport is not None:
            out["dport"] = self.dport.to_toml()
        return out

    def matches(self, src: Address, proto: int, sport: int = 0, dport: int = 0) -> bool:
        """Whether a packet from `src` with this protocol and ports matches the entry."""
        if self.src is not None and (src.version != self.src.version or src not in self.src):
            return False
        if self.proto is not None and proto != self.proto:
            return False
        if self.sport is not None and sport not in self.sport:
            return False
        return self.dport is None or dport in self.dport

    def __str__(self) -> str:
        parts = [f"{key}={value}" for key, value in self.to_dict().items()]
        return " ".join(parts) or "any"


def _parse_acl_entry(data: object, where: str, problems: list[str]) -> AclEntry | None:
    """Parse an ACL table, appending located problems; None when any were found."""
    if not isinstance(data, dict):
        problems.append(f"{where}expected a table with keys {', '.join(ACL_KEYS)}, got {type_name(data)}")
        return None
    before = len(problems)
    for key in data:
        if key not in ACL_KEYS:
            problems.append(f"{where}{key}: unknown key{did_you_mean(key, ACL_KEYS)}")
    values: dict[str, Any] = {}
    for key, parse in (("src", parse_network), ("proto", _parse_proto),
                       ("sport", PortRange.parse), ("dport", PortRange.parse)):
        if key in data:
            try:
                values[key] = parse(data[key])
            except ValueError as exc:
                problems.append(f"{where}{key}: {exc}")
    proto = values.get("proto")
    proto_ok = "proto" not in data or "proto" in values
    for port_key in ("sport", "dport"):
        if port_key in data and proto_ok and proto not in PORT_PROTOCOLS:
            have = f"proto is {PROTO_NAMES.get(proto, proto)!r}" if proto is not None else "proto is not set"
            problems.append(f"{where}{port_key}: ports apply only with proto 'tcp' or 'udp' ({have})")
    src = values.get("src")
    if src is not None and proto is not None:
        if src.version == 6 and proto == IPPROTO["icmp"]:
            problems.append(f"{where}proto: 'icmp' never matches IPv6 source {src}; use 'icmpv6'")
        if src.version == 4 and proto == IPPROTO["icmpv6"]:
            problems.append(f"{where}proto: 'icmpv6' never matches IPv4 source {src}; use 'icmp'")
    if len(problems) > before:
        return None
    return AclEntry(**values)


@dataclasses.dataclass(frozen=True, slots=True)
class Tenant:
    """A customer: the prefixes it owns and how Seawall protects them."""

    id: str
    name: str
    prefixes: tuple[Network, ...]
    mode: str = DEFAULT_MODE
    allow: tuple[AclEntry, ...] = ()
    deny: tuple[AclEntry, ...] = ()
    policy: TenantPolicy = dataclasses.field(default_factory=TenantPolicy)
    contacts: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()        # fleet sites whose appliances run this tenant; empty: every site

    def __post_init__(self) -> None:
        # Accept lists from programmatic callers but store tuples, so a Tenant stays immutable.
        for field in ("prefixes", "allow", "deny", "contacts", "sites"):
            value = getattr(self, field)
            if not isinstance(value, tuple):
                object.__setattr__(self, field, tuple(value))
        if not isinstance(self.id, str) or not TENANT_ID_PATTERN.fullmatch(self.id):
            raise ValueError(f"id: {self.id!r} is not a valid tenant id ({TENANT_ID_RULE})")
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")

    @classmethod
    def from_dict(cls, data: object) -> Tenant:
        """Parse one `[[tenants]]` table on its own (no overlap check against other tenants)."""
        problems: list[str] = []
        tenant, _ = _parse_tenant(data, 0, problems)
        if tenant is None:
            raise ConfigError(problems)
        return tenant

    def to_dict(self) -> dict[str, Any]:
        """The `[[tenants]]` table; keys at their default are left out so exports stay short."""
        out: dict[str, Any] = {"id": self.id, "name": self.name,
                               "prefixes": [str(p) for p in self.prefixes], "mode": self.mode}
        for list_name in ACL_LISTS:
            entries = getattr(self, list_name)
            if entries:
                out[list_name] = [entry.to_dict() for entry in entries]
        policy = {key: value for key, value in self.policy.to_dict().items()
                  if value != getattr(_DEFAULT_POLICY, key)}
        if policy:
            out["policy"] = policy
        if self.contacts:
            out["contacts"] = list(self.contacts)
        if self.sites:
            out["sites"] = list(self.sites)
        return out

    def runs_at(self, site: str) -> bool:
        """Whether the appliance of fleet site `site` runs this tenant (no `sites`: every site does)."""
        return not self.sites or site in self.sites

    def owns(self, address: str | Address) -> bool:
        addr = parse_address(address)
        return any(addr.version == p.version and addr in p for p in self.prefixes)


_DEFAULT_POLICY = TenantPolicy()


def name_problem(name: object) -> str | None:
    """Why `name` is not a usable tenant name, or None. Names reach mail headers and pages:
    no control characters (a CR/LF would split a mail header), bounded length."""
    if not isinstance(name, str) or not name.strip():
        return f"expected a non-empty string, got {type_name(name)} {shown(name)}"
    if len(name) > NAME_MAX_CHARS:
        return f"{len(name)} characters, at most {NAME_MAX_CHARS}"
    if not name.isprintable():
        return f"{shown(name)} contains control or other non-printable characters"
    return None


def sites_problems(sites: object) -> list[str]:
    """Problems of a tenant's `sites` list, each after the key ("[1]: ..." or ": ..."); [] when fine."""
    if not isinstance(sites, list):
        return [f": expected an array of site names (like [\"ams1\", \"fra1\"]), got {type_name(sites)}"]
    if len(sites) > SITES_MAX:
        return [f": {len(sites)} sites, at most {SITES_MAX}"]
    problems = []
    for index, site in enumerate(sites):
        if not isinstance(site, str) or not SITE_PATTERN.fullmatch(site):
            problems.append(f"[{index}]: {site!r} is not a site name ({TENANT_ID_RULE})")
        elif site in sites[:index]:
            problems.append(f"[{index}]: {site!r} is listed twice")
    return problems


def contact_problem(contact: object) -> str | None:
    """Why `contact` is not an e-mail address a report can be mailed to, or None."""
    if not isinstance(contact, str):
        return f"expected an e-mail address, got {type_name(contact)} {shown(contact)}"
    if len(contact) > ADDRESS_MAX_CHARS:
        return f"{len(contact)} characters, at most {ADDRESS_MAX_CHARS}"
    if not CONTACT_PATTERN.fullmatch(contact):
        return f"{shown(contact)} is not an e-mail address (like noc@example.com)"
    return None


def tidy_legacy_fields(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A stored tenant table from before names and contacts were checked, made acceptable:
    control characters in the name become spaces and the name is cut to NAME_MAX_CHARS (the id
    when nothing is left); a contact written as 'Name <address>' keeps its address, one that is
    no address is dropped, and at most CONTACTS_MAX remain. Returns the table and what changed
    (empty: nothing to do). The store keeps the original in the tenant's version history."""
    tidy = dict(data)
    changes: list[str] = []
    name = data.get("name")
    if isinstance(name, str) and name_problem(name) is not None:
        cleaned = " ".join("".join(c if c.isprintable() else " " for c in name).split())[:NAME_MAX_CHARS]
        tidy["name"] = cleaned or str(data.get("id", ""))
        changes.append(f"name: {shown(name)} -> {shown(tidy['name'])}")
    contacts = data.get("contacts")
    if isinstance(contacts, list):
        kept: list[str] = []
        for contact in contacts:
            address = contact
            if isinstance(contact, str) and contact_problem(contact) is not None:
                inner = re.search(r"<([^<>]+)>", contact)
                address = inner.group(1).strip() if inner else None
            if isinstance(address, str) and contact_problem(address) is None and len(kept) < CONTACTS_MAX:
                if address != contact:
                    changes.append(f"contacts: {shown(contact)} -> {shown(address)}")
                kept.append(address)
            else:
                changes.append(f"contacts: {shown(contact)} dropped (not an e-mail address, or over "
                               f"{CONTACTS_MAX})")
        tidy["contacts"] = kept
    return (tidy, changes) if changes else (data, [])


def _tenant_label(data: dict[str, Any], position: int) -> str:
    tenant_id = data.get("id")
    if isinstance(tenant_id, str) and TENANT_ID_PATTERN.fullmatch(tenant_id):
        return f"tenant {tenant_id!r}"
    return f"tenants[{position}]"


@dataclasses.dataclass(slots=True)
class _Owner:
    """What the set-wide checks need of one tenant table, even one with other problems."""

    label: str                              # "tenant 'alpha'" or "tenants[3]" when the id is unusable
    tenant_id: str | None                   # None when missing or invalid
    position: int                           # index in the [[tenants]] array
    prefixes: list[tuple[int, Network]]     # (index in its prefixes array, network), valid ones only

    @classmethod
    def of(cls, tenant: Tenant, position: int) -> _Owner:
        return cls(f"tenant {tenant.id!r}", tenant.id, position, list(enumerate(tenant.prefixes)))


def _parse_tenant(data: object, position: int, problems: list[str]) -> tuple[Tenant | None, _Owner | None]:
    """Parse one tenant table, appending problems prefixed with the tenant.

    Returns the tenant (None on any problem) and what set-wide checks need,
    which is filled in as far as the table allows so that overlaps and
    duplicate ids are reported together with the tenant's own problems.
    """
    if not isinstance(data, dict):
        problems.append(f"tenants[{position}]: expected a table, got {type_name(data)}")
        return None, None
    label = _tenant_label(data, position)
    where = label + ": "
    before = len(problems)
    for key in data:
        if key not in TENANT_KEYS:
            problems.append(f"{where}{key}: unknown key{did_you_mean(key, TENANT_KEYS)}")

    tenant_id = data.get("id")
    if tenant_id is None:
        problems.append(f"{where}id: missing (every tenant needs an id: {TENANT_ID_RULE})")
    elif not isinstance(tenant_id, str) or not TENANT_ID_PATTERN.fullmatch(tenant_id):
        problems.append(f"{where}id: {tenant_id!r} is not a valid tenant id ({TENANT_ID_RULE})")
    owner = _Owner(label, tenant_id if label.startswith("tenant ") else None, position, [])

    name = data.get("name", tenant_id)
    if "name" in data:
        problem = name_problem(name)
        if problem is not None:
            problems.append(f"{where}name: {problem}")

    prefixes: list[Network] = []
    raw_prefixes = data.get("prefixes")
    if raw_prefixes is None:
        problems.append(f"{where}prefixes: missing (a tenant owns at least one prefix)")
    elif not isinstance(raw_prefixes, list):
        problems.append(f"{where}prefixes: expected an array of CIDR strings, got {type_name(raw_prefixes)}")
    elif not raw_prefixes:
        problems.append(f"{where}prefixes: empty (a tenant owns at least one prefix)")
    else:
        for index, raw in enumerate(raw_prefixes):
            try:
                prefixes.append(parse_network(raw))
                owner.prefixes.append((index, prefixes[-1]))
            except ValueError as exc:
                problems.append(f"{where}prefixes[{index}]: {exc}")

    mode = data.get("mode", DEFAULT_MODE)
    if mode not in MODES:
        problems.append(f"{where}mode: {mode!r} is not one of {', '.join(repr(m) for m in MODES)}")

    lists: dict[str, list[AclEntry]] = {}
    for list_name in ACL_LISTS:
        raw_list = data.get(list_name, [])
        lists[list_name] = []
        if not isinstance(raw_list, list):
            problems.append(f"{where}{list_name}: expected an array of tables ([[tenants.{list_name}]]), "
                            f"got {type_name(raw_list)}")
            continue
        for index, raw_entry in enumerate(raw_list):
            entry = _parse_acl_entry(raw_entry, f"{where}{list_name}[{index}]: ", problems)
            if entry is not None:
                lists[list_name].append(entry)

    policy = _DEFAULT_POLICY
    raw_policy = data.get("policy", {})
    if not isinstance(raw_policy, dict):
        problems.append(f"{where}policy: expected a table ([tenants.policy]), got {type_name(raw_policy)}")
    elif raw_policy:  # most tenants keep the defaults: skip parsing an empty table
        try:
            policy = TenantPolicy.from_dict(raw_policy)
        except ConfigError as exc:  # TenantPolicy names each key as "policy.<key>: ..."
            problems.extend(f"{where}{problem}" for problem in exc.problems)

    contacts = data.get("contacts", [])
    if not isinstance(contacts, list):
        problems.append(f"{where}contacts: expected an array of e-mail addresses, got {type_name(contacts)}")
    elif len(contacts) > CONTACTS_MAX:
        problems.append(f"{where}contacts: {len(contacts)} addresses, at most {CONTACTS_MAX}")
    else:
        for index, contact in enumerate(contacts):
            problem = contact_problem(contact)
            if problem is not None:
                problems.append(f"{where}contacts[{index}]: {problem}")

    sites = data.get("sites", [])
    for problem in sites_problems(sites):
        problems.append(f"{where}sites{problem}")

    if len(problems) > before:
        return None, owner
    tenant = Tenant(id=tenant_id, name=name, prefixes=tuple(prefixes), mode=mode,
                    allow=tuple(lists["allow"]), deny=tuple(lists["deny"]), policy=policy,
                    contacts=tuple(contacts), sites=tuple(sites))
    return tenant, owner


class TenantSet:
    """An immutable, ordered, validated set of tenants with lookup by id and by address.

    Construct with `from_dicts` (config tables) or `TenantSet(tenants)`; both
    check set-wide invariants (unique ids, non-empty and non-overlapping prefixes)
    and raise one ConfigError listing every violation.
    """

    __slots__ = ("_tenants", "_by_id", "_starts", "_ranges")

    def __init__(self, tenants: Iterable[Tenant] = ()) -> None:
        tenants = tuple(tenants)
        problems: list[str] = []
        for tenant in tenants:
            if not tenant.prefixes:
                problems.append(f"tenant {tenant.id!r}: prefixes: empty (a tenant owns at least one prefix)")
        _check_set([_Owner.of(tenant, position) for position, tenant in enumerate(tenants)], problems)
        problems.extend(capacity_problems(tenants))
        if problems:
            raise ConfigError(problems)
        self._init_valid(tenants)

    def _init_valid(self, tenants: tuple[Tenant, ...]) -> None:
        # Per family: sorted first addresses and (first, last, tenant) for find(); valid
        # because prefixes never overlap, so the candidate is the last start <= address.
        starts: dict[int, list[int]] = {}
        ranges: dict[int, list[tuple[int, int, Tenant]]] = {}
        for version in (4, 6):
            ranges[version] = sorted(
                ((*network_bounds(p), tenant) for tenant in tenants for p in tenant.prefixes
                 if p.version == version),
                key=lambda item: item[0])
            starts[version] = [first for first, _, _ in ranges[version]]
        object.__setattr__(self, "_tenants", tenants)
        object.__setattr__(self, "_by_id", {tenant.id: tenant for tenant in tenants})
        object.__setattr__(self, "_starts", starts)
        object.__setattr__(self, "_ranges", ranges)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a TenantSet is immutable; build a new one (TenantSet(...) or from_dicts)")

    @classmethod
    def from_dicts(cls, tables: object) -> TenantSet:
        """Parse and validate the `[[tenants]]` array of tables; one ConfigError lists every problem."""
        if not isinstance(tables, list | tuple):
            raise ConfigError(f"tenants: expected an array of tables ([[tenants]]), got {type_name(tables)}")
        problems: list[str] = []
        parsed: list[Tenant] = []
        owners: list[_Owner] = []
        for position, table in enumerate(tables):
            tenant, owner = _parse_tenant(table, position, problems)
            if tenant is not None:
                parsed.append(tenant)
            if owner is not None:
                owners.append(owner)
        # Set-wide checks run over every usable id and prefix, so one pass reports everything.
        _check_set(owners, problems)
        problems.extend(capacity_problems(parsed))
        if problems:
            raise ConfigError(problems)
        instance = cls.__new__(cls)
        instance._init_valid(tuple(parsed))
        return instance

    def to_dicts(self) -> list[dict[str, Any]]:
        return [tenant.to_dict() for tenant in self._tenants]

    def replaced(self, tenant: Tenant) -> TenantSet:
        """This set with `tenant` in place of the tenant with its id (KeyError: none). With the same
        prefixes the overlap checks cannot change, so they are skipped (a policy edit of one
        tenant among 10,000 costs milliseconds, not a validation of the whole set); changed
        allow/deny lists still count the dataplane's shared totals. ConfigError: does not fit."""
        old = self[tenant.id]
        tenants = tuple(tenant if t is old else t for t in self._tenants)
        if old.prefixes != tenant.prefixes:
            return TenantSet(tenants)
        if (old.allow, old.deny) != (tenant.allow, tenant.deny):
            # The allow/deny keys share the dataplane's maps with every other tenant: the totals
            # must be counted again (the overlaps, by prefix, cannot have changed).
            problems = capacity_problems(tenants)
            if problems:
                raise ConfigError(problems)
        # The same prefixes: the sorted address index stays, only its tenant references change.
        instance = TenantSet.__new__(TenantSet)
        object.__setattr__(instance, "_tenants", tenants)
        object.__setattr__(instance, "_by_id", {**self._by_id, tenant.id: tenant})
        object.__setattr__(instance, "_starts", self._starts)   # never mutated after _init_valid
        object.__setattr__(instance, "_ranges", {version: [(first, last, tenant if t is old else t)
                                                           for first, last, t in ranges]
                                                 for version, ranges in self._ranges.items()})
        return instance

    def find(self, address: str | Address) -> Tenant | None:
        """The tenant owning `address`, or None; O(log n) in the number of prefixes."""
        addr = parse_address(address)
        value = int(addr)
        index = bisect.bisect_right(self._starts[addr.version], value) - 1
        if index < 0:
            return None
        _, last, tenant = self._ranges[addr.version][index]
        return tenant if value <= last else None

    def get(self, tenant_id: str) -> Tenant | None:
        return self._by_id.get(tenant_id)

    def __getitem__(self, tenant_id: str) -> Tenant:
        try:
            return self._by_id[tenant_id]
        except KeyError:
            raise KeyError(f"no tenant with id {tenant_id!r}") from None

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self._by_id

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self._tenants)

    def __len__(self) -> int:
        return len(self._tenants)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(tenant.id for tenant in self._tenants)

    @property
    def tenants(self) -> tuple[Tenant, ...]:
        return self._tenants

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TenantSet) and self._tenants == other._tenants

    def __hash__(self) -> int:
        return hash(self._tenants)

    def __repr__(self) -> str:
        shown = ", ".join(self.ids[:5]) + (", ..." if len(self) > 5 else "")
        return f"TenantSet({len(self)} tenants: {shown})"


def _check_set(owners: Sequence[_Owner], problems: list[str]) -> None:
    """Set-wide invariants: unique ids and no overlapping prefixes, across IPv4 and IPv6."""
    first_seen: dict[str, int] = {}
    for owner in owners:
        if owner.tenant_id is None:
            continue
        if owner.tenant_id in first_seen:
            problems.append(f"{owner.label} (tenants[{owner.position}]): id: duplicate, already used by "
                            f"tenants[{first_seen[owner.tenant_id]}]; ids must be unique")
        else:
            first_seen[owner.tenant_id] = owner.position
    problems.extend(_overlap_problems(owners))


def _overlap_problems(owners: Sequence[_Owner]) -> list[str]:
    """Overlapping prefixes, each pair reported once, in O(n log n).

    CIDR blocks are either nested or disjoint. Sorted by (first address,
    prefix length), every block comes right after the blocks that contain it,
    so a stack of open blocks gives each block its innermost container. Each
    block is reported against that container, which names every prefix that
    takes part in any overlap without listing all n^2 pairs. A message goes
    to whichever of the two comes later in the file, the one an operator most
    likely just added.
    """
    found: list[tuple[int, int, str]] = []
    for version in (4, 6):
        blocks = sorted(
            (int(network.network_address), network.prefixlen, network_bounds(network)[1], order, index,
             network)  # (the first five are unique, so networks are never compared)
            for order, owner in enumerate(owners)
            for index, network in owner.prefixes if network.version == version
        )
        open_blocks: list[_Block] = []
        for block in blocks:
            while open_blocks and open_blocks[-1][2] < block[0]:  # ended before this one starts
                open_blocks.pop()
            if open_blocks:  # not ended, so it contains this block
                found.append(_overlap_message(owners, block, open_blocks[-1]))
            open_blocks.append(block)
    found.sort()
    return [message for _, _, message in found]


# (first address, prefix length, last address, owner order, index in its prefixes, network)
_Block = tuple[int, int, int, int, int, Network]


def _overlap_message(owners: Sequence[_Owner], one: _Block, other: _Block) -> tuple[int, int, str]:
    later, earlier = (one, other) if one[3:5] > other[3:5] else (other, one)
    order, index, network = later[3:]
    other_order, other_index, other_network = earlier[3:]
    owner, other_owner = owners[order], owners[other_order]
    verb = "duplicates" if network == other_network else "overlaps"
    if other_order == order:
        whose = f"prefixes[{other_index}] {other_network} of the same tenant"
    elif other_owner.label == owner.label:  # two tables with the same id
        whose = f"{other_network} of {other_owner.label} (tenants[{other_owner.position}])"
    else:
        whose = f"{other_network} of {other_owner.label}"
    return owner.position, index, f"{owner.label}: prefixes[{index}]: {network} {verb} {whose}"
