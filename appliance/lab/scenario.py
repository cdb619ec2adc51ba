"""Scenarios: attacks and legitimate traffic on a timeline, loaded from TOML into typed objects.

`load_scenario(name_or_path)` parses and validates (ValueError names the table and key); a bare
name is a file of appliance/scenarios/ (`known_scenarios()`). `play(scenario, lab)` starts the
legitimate clients at once and each attack at its `start_s`, every one as its own child process,
and returns a `ScenarioRun`.

A scenario with an `[upstream]` table runs on the lab's upstream mode (`appliance.lab.upstream`):
its attacks come from behind the upstream router, whose uplink is shaped to `uplink_bps`, and the
router speaks BGP with the appliance; its `[escalation]` table is the appliance's.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import pathlib
import threading
import time
import tomllib
from typing import Any

from appliance.lab.attack import VECTORS, AttackProcess, AttackSpec
from appliance.lab.botnet import BOTNET_VECTORS
from appliance.lab.topology import TENANTS, Lab
from appliance.lab.traffic import TrafficProfile, TrafficRun, split_by_windows
from appliance.lab.upstream import DEFAULT_INTERNET_BPS, RoutedAttack
from tenants.errors import did_you_mean

SCENARIO_DIR = pathlib.Path(__file__).resolve().parent.parent / "scenarios"
REFERENCE = SCENARIO_DIR / "reference.toml"
UPSTREAM_KEYS = ("uplink_bps", "internet_bps", "flowspec_capacity", "rtbh_tenants")


@dataclasses.dataclass(frozen=True, slots=True)
class ScenarioAttack:
    vector: str
    target: str               # server role/short name, address or prefix
    start_s: float
    duration_s: float
    pps: int = 0              # frame vectors only
    dport: int | None = None
    sport: int | None = None
    size: int | None = None
    spoof: str | None = None
    bots: int | None = None   # botnet vectors only (appliance/lab/botnet.py): sources, per second, CIDR
    rate: float | None = None
    sources: str | None = None

    def spec(self, lab: Lab) -> AttackSpec:
        """The generator's spec, with a server role or name resolved to that server's IPv4 address."""
        try:
            ipaddress.ip_network(self.target, strict=False)
            target = self.target
        except ValueError:
            target = lab.server(self.target).ipv4
        spec = AttackSpec(vector=self.vector, target=target, pps=self.pps, duration=self.duration_s,
                          dport=self.dport, sport=self.sport, size=self.size, spoof=self.spoof,
                          bots=self.bots, rate=self.rate, sources=self.sources)
        spec.validate()
        return spec


@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """The `[upstream]` table: the lab's upstream router and its uplink."""

    uplink_bps: int                          # bits/s: tc shaping of the router's link to the appliance
    internet_bps: int = DEFAULT_INTERNET_BPS   # bits/s: the attacker's link (paces the flood)
    flowspec_capacity: int | None = None     # FlowSpec rules the router holds (None: no limit)
    rtbh_tenants: tuple[str, ...] = ()       # tenants that agreed to blackholing (escalate_rtbh = true)


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    duration_s: float
    legit: TrafficProfile
    attacks: tuple[ScenarioAttack, ...]
    upstream: UpstreamSpec | None = None
    escalation: dict[str, Any] | None = None   # the appliance's [escalation] table (upstream mode)


def _take(table: dict[str, Any], where: str, key: str, kind: type | tuple, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ValueError(f"{where}.{key}: missing")
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def parse_scenario(data: dict[str, Any]) -> Scenario:
    unknown = set(data) - {"scenario", "legit", "attacks", "upstream", "escalation"}
    if unknown:
        raise ValueError(f"unknown tables: {', '.join(sorted(unknown))}")
    head = data.get("scenario", {})
    number = (int, float)
    name = _take(head, "scenario", "name", str)
    duration = float(_take(head, "scenario", "duration_s", number))
    if duration <= 0:
        raise ValueError("scenario.duration_s: must be > 0")
    legit_table = data.get("legit", {})
    defaults = TrafficProfile()
    extra = set(legit_table) - {f.name for f in dataclasses.fields(TrafficProfile)}
    if extra:   # a misspelt key would otherwise quietly mean its default
        raise ValueError(f"legit: unknown keys {', '.join(sorted(extra))}")
    legit = TrafficProfile(
        game_pps=float(_take(legit_table, "legit", "game_pps", number, defaults.game_pps)),
        http_rps=float(_take(legit_table, "legit", "http_rps", number, defaults.http_rps)),
        dns_qps=float(_take(legit_table, "legit", "dns_qps", number, defaults.dns_qps)),
        timeout_s=float(_take(legit_table, "legit", "timeout_s", number, defaults.timeout_s)),
        new_clients_per_s=float(_take(legit_table, "legit", "new_clients_per_s", number,
                                      defaults.new_clients_per_s)),
        browse_rps=float(_take(legit_table, "legit", "browse_rps", number, defaults.browse_rps)))
    try:
        legit.validate()
    except ValueError as exc:
        raise ValueError(f"legit: {exc}") from None
    attacks = []
    known = {f.name for f in dataclasses.fields(ScenarioAttack)}
    for index, table in enumerate(data.get("attacks", [])):
        where = f"attacks[{index}]"
        extra = set(table) - known
        if extra:
            raise ValueError(f"{where}: unknown keys {', '.join(sorted(extra))}")
        vector = _take(table, where, "vector", str)
        if vector not in VECTORS:
            raise ValueError(f"{where}.vector: unknown {vector!r} (known: {', '.join(VECTORS)})")
        # Frames have a packet rate; a botnet has bots and a rate of requests, connections or clients.
        botnet = vector in BOTNET_VECTORS
        foreign = sorted(set(table) & ({"pps", "sport", "size", "spoof"} if botnet else {"bots", "rate", "sources"}))
        if foreign:
            raise ValueError(f"{where}: {', '.join(foreign)} do not apply to {vector} "
                             f"({'use bots, rate, sources' if botnet else 'botnet vectors only'})")
        rate = _take(table, where, "rate", number, None)
        attack = ScenarioAttack(
            vector=vector, target=_take(table, where, "target", str),
            start_s=float(_take(table, where, "start_s", number, 0)),
            duration_s=float(_take(table, where, "duration_s", number)),
            pps=0 if botnet else _take(table, where, "pps", int),
            dport=_take(table, where, "dport", int, None), sport=_take(table, where, "sport", int, None),
            size=_take(table, where, "size", int, None), spoof=_take(table, where, "spoof", str, None),
            bots=_take(table, where, "bots", int, None), rate=None if rate is None else float(rate),
            sources=_take(table, where, "sources", str, None))
        if botnet:
            try:   # the target may name a server (resolved at play()): check everything else now
                AttackSpec(vector=vector, target="203.0.113.10", duration=attack.duration_s, dport=attack.dport,
                           bots=attack.bots, rate=attack.rate, sources=attack.sources).validate()
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        if attack.start_s < 0 or attack.start_s + attack.duration_s > duration:
            raise ValueError(f"{where}: start_s + duration_s must lie within scenario.duration_s ({duration})")
        attacks.append(attack)
    upstream = _upstream(data["upstream"]) if "upstream" in data else None
    if upstream is not None and any(a.vector in BOTNET_VECTORS for a in attacks):
        raise ValueError("attacks: the botnet's vectors run from the lab's attacker host, not behind the "
                         "upstream router; keep them out of an [upstream] scenario")
    escalation = None
    if "escalation" in data:
        if upstream is None:
            raise ValueError("escalation: needs an [upstream] table (the router the appliance escalates to)")
        from escalation.config import parse_escalation  # noqa: PLC0415

        escalation = {"uplink_bps": upstream.uplink_bps, **data["escalation"]}
        problems: list[str] = []
        parse_escalation(escalation, problems)
        if problems:
            raise ValueError("; ".join(problems))
    return Scenario(name=name, description=_take(head, "scenario", "description", str, ""),
                    duration_s=duration, legit=legit, attacks=tuple(attacks), upstream=upstream,
                    escalation=escalation)


def _upstream(table: Any) -> UpstreamSpec:
    if not isinstance(table, dict):
        raise ValueError("upstream: expected a table")
    for key in table:
        if key not in UPSTREAM_KEYS:
            raise ValueError(f"upstream.{key}: unknown key{did_you_mean(key, UPSTREAM_KEYS)}")
    uplink = _take(table, "upstream", "uplink_bps", int)
    internet = _take(table, "upstream", "internet_bps", int, DEFAULT_INTERNET_BPS)
    if uplink <= 0 or internet <= 0:
        raise ValueError("upstream: uplink_bps and internet_bps must be > 0 bits/s")
    capacity = _take(table, "upstream", "flowspec_capacity", int, None)
    if capacity is not None and capacity < 1:
        raise ValueError(f"upstream.flowspec_capacity: must be >= 1 rules, got {capacity}")
    rtbh = _take(table, "upstream", "rtbh_tenants", list, [])
    known = [t.id for t in TENANTS]
    for tenant in rtbh:
        if tenant not in known:
            raise ValueError(f"upstream.rtbh_tenants: unknown tenant {tenant!r} (lab tenants: {', '.join(known)})")
    return UpstreamSpec(uplink_bps=uplink, internet_bps=internet, flowspec_capacity=capacity,
                        rtbh_tenants=tuple(rtbh))


def known_scenarios() -> list[str]:
    """The names `load_scenario` takes without a path: the files of appliance/scenarios/."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def scenario_path(name_or_path: str | pathlib.Path) -> pathlib.Path:
    """A bare name ("saturation") is appliance/scenarios/NAME.toml; anything else is a path."""
    text = str(name_or_path)
    if "/" in text or text.endswith(".toml") or pathlib.Path(text).exists():
        return pathlib.Path(text)
    candidate = SCENARIO_DIR / f"{text}.toml"
    if candidate.exists():
        return candidate
    close = difflib.get_close_matches(text, known_scenarios(), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown scenario {text!r}{hint}: known scenarios are {', '.join(known_scenarios())}, "
                     f"or give the path of a scenario TOML file")


def load_scenario(path: str | pathlib.Path = REFERENCE) -> Scenario:
    path = scenario_path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
        return parse_scenario(data)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


class ScenarioRun:
    """The running pieces of a played scenario; `wait()` collects every summary."""

    def __init__(self, scenario: Scenario, lab: Lab):
        self.scenario, self.lab = scenario, lab
        self.specs = [attack.spec(lab) for attack in scenario.attacks]   # validate all before starting
        self.traffic = TrafficRun(lab, scenario.duration_s, scenario.legit)
        self.attacks: list[AttackProcess | None] = [None] * len(self.specs)
        # Wall-clock [first frame, last record] of each attack that sent: the generator compiles
        # first, so its frames start seconds after start_s; its first per-second record comes 1 s
        # after its first frame.
        self.windows: list[list[float]] = []
        self.attack_windows: dict[int, list[float]] = {}   # attack index -> its window (as in `windows`)
        self._timers: list[threading.Timer] = []
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> ScenarioRun:
        self.traffic.start()
        for index, (attack, spec) in enumerate(zip(self.scenario.attacks, self.specs, strict=True)):
            timer = threading.Timer(attack.start_s, self._start_attack, args=(index, spec))
            timer.name = f"scenario-{self.scenario.name}-attack-{index}"
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        return self

    def _start_attack(self, index: int, spec: AttackSpec) -> None:
        with self._lock:
            if not self._stopped:
                attack = (RoutedAttack if self.scenario.upstream else AttackProcess)(self.lab, spec)
                window: list[float] = []

                def on_record(record: dict, window=window) -> None:
                    if record.get("type") == "second":
                        now = time.time()
                        if not window:
                            window += [now - 1.0, now]
                            self.windows.append(window)
                            self.attack_windows[index] = window
                        window[1] = now
                attack.on_record = on_record
                self.attacks[index] = attack.start()

    def wait(self, timeout: float | None = None) -> dict:
        traffic = self.traffic.wait(timeout)
        for timer in self._timers:
            timer.join()
        attacks = [a.wait(timeout) if a else None for a in self.attacks]
        # Legitimate outcomes while any attack was sending vs the rest of the run (sent/ok per service).
        split = split_by_windows(self.traffic.seconds, traffic["started_at"],
                                 [(start, end) for start, end in self.windows]) if "started_at" in traffic else None
        return {"traffic": traffic, "attacks": attacks, "legit_split": split}

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        for timer in self._timers:
            timer.cancel()
        for attack in self.attacks:
            if attack is not None:
                attack.stop()
        self.traffic.stop()


def play(scenario: Scenario, lab: Lab) -> ScenarioRun:
    """Start `scenario` in `lab` (legitimate clients now, each attack at its start_s)."""
    return ScenarioRun(scenario, lab).start()
