"""The lab's edge-router agent: BIRD's FlowSpec and RTBH routes made into nftables rules and blackhole routes.

Lab scaffolding, not product. BIRD 2 (`appliance.lab.bgp_peer`) learns Seawall's routes but programs
no dataplane; this agent plays the part a router's FlowSpec and RTBH support plays. Several times a
second it reads BIRD's tables with `birdc` and, inside the router's namespace:

- each FlowSpec route (`flow4`/`flow6` tables) becomes one rule of the `inet seawall_lab_flowspec`
  table's forward chain: the match (destination, protocol, ports, length, fragment, TCP flags) and
  its action (traffic-rate 0: drop; a rate: `limit rate over N bytes/second drop`), with a counter;
- each unicast route carrying the BLACKHOLE community 65535:666 (RFC 7999) becomes a blackhole
  route for that host (`ip route add blackhole`);
- what BIRD no longer holds is removed (a withdraw, or the session closing).

Routers hold a bounded number of FlowSpec rules (hardware filter space); `flowspec_capacity`
models it: routes beyond it are left uninstalled (oldest first), and installed when room frees up.
A route with a component the agent cannot translate is never half-installed: it is reported in
`refused` and skipped. Every change is recorded with its wall-clock time in `events`, which the
saturation figures read.

    agent = EdgeRouterAgent("sw-up", peer.birdc).start()
    ...; agent.installed(); agent.events
    agent.stop()                               # removes its table and blackhole routes
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import struct
import subprocess
import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

TABLE = "seawall_lab_flowspec"    # nftables table (family inet) in the router's namespace
CHAIN = "forward"
POLL_S = 0.1                      # seconds between reads of BIRD's tables
BLACKHOLE = "(65535,666)"         # RFC 7999 BLACKHOLE as `birdc` prints a standard community
TRAFFIC_RATE = "0x8006"           # RFC 8955 traffic-rate extended community (type 0x80, subtype 0x06)
PORT_MAX = 65535
LENGTH_MAX = 65535

_HEAD = re.compile(r"^(flow[46] \{.*?\}|\S+/\d+)\s+")
_TERM = re.compile(r"^(>=|<=|!=|=|>|<)?\s*(\d+)$")
_BITMASK = re.compile(r"^(!)?\s*0x([0-9a-f]+)\s*/\s*0x([0-9a-f]+)$")
_FRAGMENT_BITS = {"dont_fragment": 1, "is_fragment": 2, "first_fragment": 4, "last_fragment": 8}


class Untranslatable(ValueError):
    """A FlowSpec component or action the lab router does not enforce."""


@dataclasses.dataclass(frozen=True, slots=True)
class FlowRule:
    """One received FlowSpec route as the router enforces it."""

    route: str                    # BIRD's rendering of the NLRI, the identity of the route
    nft: str                      # the rule's match and verdict (nft syntax)
    rate_bytes: float             # 0: discard


def _ranges(text: str, high: int) -> list[tuple[int, int]]:
    """BIRD's numeric component value ("80", ">= 1024 && <= 2048", "1024..2048", "53, 123", "53 || 123")
    as inclusive ranges."""
    out = []
    for alternative in re.split(r",|\|\|", text):
        lo, hi = 0, high
        for term in alternative.split("&&"):
            span = re.fullmatch(r"\s*(\d+)\.\.(\d+)\s*", term)
            if span:
                lo, hi = max(lo, int(span.group(1))), min(hi, int(span.group(2)))
                continue
            m = _TERM.match(term.strip())
            if not m:
                raise Untranslatable(f"numeric term {term.strip()!r}")
            op, value = m.group(1) or "=", int(m.group(2))
            if op == "=":
                lo, hi = max(lo, value), min(hi, value)
            elif op == ">=":
                lo = max(lo, value)
            elif op == ">":
                lo = max(lo, value + 1)
            elif op == "<=":
                hi = min(hi, value)
            elif op == "<":
                hi = min(hi, value - 1)
            else:
                raise Untranslatable(f"operator {op!r}")
        if lo <= hi:
            out.append((lo, hi))
    if not out:
        raise Untranslatable(f"{text!r} matches nothing")
    return out


def _set(ranges: list[tuple[int, int]]) -> str:
    items = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _bitmask_terms(text: str) -> list[tuple[bool, int, int]]:
    """BIRD's bitmask value ("0x2/0x2", "!0x4/0x4 && 0x2/0x2") as (negated, value, mask) ANDed."""
    if "," in text or "||" in text:
        raise Untranslatable(f"alternatives in a bitmask: {text!r}")
    terms = []
    for term in text.split("&&"):
        m = _BITMASK.match(term.strip())
        if not m:
            raise Untranslatable(f"bitmask term {term.strip()!r}")
        terms.append((bool(m.group(1)), int(m.group(2), 16), int(m.group(3), 16)))
    return terms


def _fragment(text: str, v6: bool) -> str:
    """Only the component Seawall announces: `is_fragment` or `!is_fragment` (RFC 8955 bit 2)."""
    term = text.strip()
    negated = term.startswith("!")
    name = term.lstrip("!").strip()
    if name != "is_fragment":
        raise Untranslatable(f"fragment {term!r}")
    if v6:
        return "exthdr frag exists" if not negated else "exthdr frag missing"
    return "ip frag-off & 0x3fff != 0" if not negated else "ip frag-off & 0x3fff == 0"


def translate(route: str, attributes: str) -> FlowRule:
    """One BIRD flow route ("flow4 { dst 203.0.113.5/32; proto 17; dport 80; }") and its
    attribute block as an nftables rule; Untranslatable names what cannot be enforced."""
    v6 = route.startswith("flow6")
    body = route[route.index("{") + 1:route.rindex("}")]
    parts = []
    family = "ip6" if v6 else "ip"
    for component in (c.strip() for c in body.split(";")):
        if not component:
            continue
        name, _, value = component.partition(" ")
        if name in ("tcp", "icmp", "next"):     # two-word names: "tcp flags", "icmp type", "next header"
            second, _, value = value.partition(" ")
            name = f"{name} {second}"
        value = value.strip()
        if name == "dst":
            network = ipaddress.ip_network(value.split()[0])
            parts.append(f"{family} daddr {network}")
        elif name == "src":
            parts.append(f"{family} saddr {ipaddress.ip_network(value.split()[0])}")
        elif name in ("proto", "next header"):
            parts.append(f"meta l4proto {_set(_ranges(value, 255))}")
        elif name in ("dport", "sport"):
            parts.append(f"th {name} {_set(_ranges(value, PORT_MAX))}")
        elif name == "length":
            # FlowSpec's length: the IPv4 total length; for IPv6 the payload (RFC 8956).
            parts.append(f"{family} length {_set(_ranges(value, LENGTH_MAX))}")
        elif name == "fragment":
            parts.append(_fragment(value, v6))
        elif name == "tcp flags":
            for negated, bits, mask in _bitmask_terms(value):
                # BIRD prints value/mask; a negated term matches when the masked flags differ.
                parts.append(f"tcp flags & {mask:#x} {'!=' if negated else '=='} {bits & mask:#x}")
        else:
            raise Untranslatable(f"component {name!r}")
    rate = _traffic_rate(attributes)
    verdict = "drop" if rate == 0 else f"limit rate over {max(int(rate), 1)} bytes/second drop"
    return FlowRule(route=route, nft=" ".join(parts) + f" counter {verdict}", rate_bytes=rate)


def _traffic_rate(attributes: str) -> float:
    """bytes/s of the route's traffic-rate extended community (0: discard); Untranslatable without one."""
    for m in re.finditer(r"\(generic, (0x[0-9a-f]+), (0x[0-9a-f]+)\)", attributes):
        high, low = int(m.group(1), 16), int(m.group(2), 16)
        if f"{high >> 16:#06x}" == TRAFFIC_RATE:
            return struct.unpack(">f", low.to_bytes(4, "big"))[0]
    raise Untranslatable("no traffic-rate action")


def parse_routes(text: str) -> dict[str, str]:
    """`birdc show route table T all` -> route -> its attribute block."""
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        head = _HEAD.match(line)
        if head:
            current = head.group(1)
            out[current] = line
        elif current is not None and line.startswith(("\t", " ")):
            out[current] += "\n" + line
    return out


class EdgeRouterAgent:
    """Keeps the router namespace's nftables rules and blackhole routes equal to BIRD's tables."""

    def __init__(self, netns: str, birdc: Callable[[str], str], *, flowspec_capacity: int | None = None,
                 flow_tables: tuple[str, ...] = ("flowtab4", "flowtab6"),
                 unicast_tables: tuple[str, ...] = ("master4", "master6")) -> None:
        self.netns = netns
        self.birdc = birdc
        self.capacity = flowspec_capacity
        self.flow_tables, self.unicast_tables = flow_tables, unicast_tables
        self.rules: dict[str, tuple[FlowRule, int]] = {}   # route -> (rule, nft handle)
        self.pending: list[str] = []                        # received, no room (capacity), oldest first
        self.blackholes: set[str] = set()                   # host prefixes with a blackhole route
        self.refused: dict[str, str] = {}                   # route -> why it is not enforced
        self.events: list[dict] = []                        # {"time", "action", "kind", "route"}
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------
    def start(self) -> EdgeRouterAgent:
        self._nft(f"add table inet {TABLE}\n"
                  f"add chain inet {TABLE} {CHAIN} {{ type filter hook forward priority filter; policy accept; }}\n")
        self._thread = threading.Thread(target=self._run, name=f"edge-router-{self.netns}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        subprocess.run(["ip", "netns", "exec", self.netns, "nft", "delete", "table", "inet", TABLE],
                       capture_output=True)
        for prefix in list(self.blackholes):
            self._route("del", prefix)
        self.blackholes.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except (OSError, subprocess.SubprocessError) as exc:
                self.errors += 1
                log.warning("edge_router.sync_failed", netns=self.netns, error=str(exc))
            self._stop.wait(POLL_S)

    # -- one pass ---------------------------------------------------------------------
    def sync(self) -> None:
        flows: dict[str, str] = {}
        for table in self.flow_tables:
            flows.update(parse_routes(self.birdc(f"show route table {table} all")))
        holes = set()
        for table in self.unicast_tables:
            for prefix, attributes in parse_routes(self.birdc(f"show route table {table} all")).items():
                if BLACKHOLE in attributes:
                    holes.add(prefix)
        with self._lock:
            for route in [r for r in self.rules if r not in flows]:
                _, handle = self.rules.pop(route)
                self._nft(f"delete rule inet {TABLE} {CHAIN} handle {handle}\n")
                self._event("remove", "flowspec", route)
            self.pending = [r for r in self.pending if r in flows]
            self.refused = {r: why for r, why in self.refused.items() if r in flows}
            for route in flows:
                if route in self.rules or route in self.refused or route in self.pending:
                    continue
                self._event("received", "flowspec", route)
                self.pending.append(route)
            while self.pending and (self.capacity is None or len(self.rules) < self.capacity):
                route = self.pending.pop(0)
                try:
                    rule = translate(route, flows[route])
                except (Untranslatable, ValueError) as exc:
                    self.refused[route] = str(exc)
                    self._event("refused", "flowspec", route, why=str(exc))
                    continue
                try:
                    out = self._nft(f"add rule inet {TABLE} {CHAIN} {rule.nft}\n", echo=True)
                except OSError as exc:    # nft refused the rule: reported, never half-installed
                    self.refused[route] = str(exc)
                    self._event("refused", "flowspec", route, why=str(exc))
                    continue
                handle = int(re.search(r"# handle (\d+)", out).group(1))
                self.rules[route] = (rule, handle)
                self._event("install", "flowspec", route, nft=rule.nft)
            for prefix in holes - self.blackholes:
                self._route("add", prefix)
                self.blackholes.add(prefix)
                self._event("install", "rtbh", prefix)
            for prefix in self.blackholes - holes:
                self._route("del", prefix)
                self.blackholes.discard(prefix)
                self._event("remove", "rtbh", prefix)

    # -- reading -------------------------------------------------------------------
    def installed(self) -> list[str]:
        with self._lock:
            return list(self.rules)

    def counters(self) -> dict[str, tuple[int, int]]:
        """route -> (packets, bytes) its rule dropped (or limited) so far."""
        out = subprocess.run(["ip", "netns", "exec", self.netns, "nft", "-a", "list", "chain", "inet", TABLE, CHAIN],
                             capture_output=True, text=True, check=True).stdout
        by_handle = {}
        for line in out.splitlines():
            m = re.search(r"counter packets (\d+) bytes (\d+).*# handle (\d+)", line)
            if m:
                by_handle[int(m.group(3))] = (int(m.group(1)), int(m.group(2)))
        with self._lock:
            return {route: by_handle.get(handle, (0, 0)) for route, (_, handle) in self.rules.items()}

    def first(self, action: str, kind: str, after: float = 0.0, contains: str = "") -> float | None:
        """Wall-clock time of the first event of that action and kind after `after`."""
        with self._lock:
            return next((e["time"] for e in self.events if e["action"] == action and e["kind"] == kind
                         and e["time"] >= after and contains in e["route"]), None)

    # -- internals -------------------------------------------------------------------
    def _event(self, action: str, kind: str, route: str, **extra) -> None:
        self.events.append({"time": time.time(), "action": action, "kind": kind, "route": route, **extra})
        log.info(f"edge_router.{action}", netns=self.netns, kind=kind, route=route, **extra)

    def _nft(self, script: str, echo: bool = False) -> str:
        argv = ["ip", "netns", "exec", self.netns, "nft", *(["--echo", "--handle"] if echo else []), "-f", "-"]
        proc = subprocess.run(argv, input=script, capture_output=True, text=True)
        if proc.returncode != 0:
            raise OSError(f"nft in {self.netns}: {proc.stderr.strip()} (script: {script.strip()})")
        return proc.stdout

    def _route(self, verb: str, prefix: str) -> None:
        family = "-6" if ":" in prefix else "-4"
        proc = subprocess.run(["ip", "-n", self.netns, family, "route", verb, "blackhole", prefix],
                              capture_output=True, text=True)
        if proc.returncode != 0 and verb == "add":
            raise OSError(f"ip route add blackhole {prefix} in {self.netns}: {proc.stderr.strip()}")
