"""Traffic of the unit scenarios (documentation addresses only) and a lab that runs them second by second."""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
import random

from dataplane.constants import Direction, TenantMode
from policy.appflood import AppFloodConfig
from policy.config import PolicyConfig
from policy.engine import PolicyEngine, TickReport
from policy.events import Event, EventBus, EventType
from tenants.policy import TenantPolicy
from tests.unit.policy.fakes import FakeDataplane, Flow, icmp_frame, syn_frame, tcp_frame, udp_frame

GAME = "198.51.100.10"        # game server of tenant 1 (UDP 28960, web on TCP 443)
WEB = "198.51.100.20"         # web server of tenant 1
DNS = "203.0.113.53"          # DNS server of tenant 2
SPEED = "203.0.113.80"        # speed-test server of tenant 2
CARPET_PREFIX = "192.0.2."    # tenant 3 owns 192.0.2.0/24

# Short time constants so a scenario runs in a few hundred ticks.
FAST = PolicyConfig(half_life_s=300.0, warmup_s=120.0, quiet_s=10.0, hold_down_s=30.0, reattack_window_s=120.0,
                    update_interval_s=5.0, confirm_s=2.0, signature_wait_s=5.0)


def clients(n: int, base: str = "203.0.113.", start: int = 100) -> list[str]:
    return [f"{base}{start + i}" for i in range(n)]


def spoofed(n: int, seed: int = 7) -> list[str]:
    rnd = random.Random(seed)
    net = ipaddress.ip_network("198.18.0.0/15")
    return [str(net[rnd.randrange(1, net.num_addresses - 1)]) for _ in range(n)]


def game_legit_frames(dst: str = GAME, n: int = 60, seed: int = 3) -> list[bytes]:
    """Players' UDP to 28960: varied sizes 60-200 bytes behind a game protocol header."""
    rnd = random.Random(seed)
    frames = []
    for i, src in enumerate(clients(n)):
        body = b"\xff\xff\xff\xff" + bytes([0x30 + i % 10]) + bytes(rnd.randrange(256) for _ in range(rnd.randrange(28, 160)))
        frames.append(udp_frame(src, dst, 29960 + i, 28960, body, ttl=rnd.randrange(50, 120)))
    return frames


def game_replies(src: str = GAME, n: int = 60) -> list[bytes]:
    return [udp_frame(src, dst, 28960, 29960 + i, b"\xff\xff\xff\xffstate" + b"\x00" * 80)
            for i, dst in enumerate(clients(n))]


def web_legit_frames(dst: str, n: int = 40) -> tuple[list[bytes], list[bytes]]:
    """Client SYNs and ACK/data segments of HTTPS visitors."""
    syns = [syn_frame(src, dst, 40000 + i, 443, ttl=50 + i % 40) for i, src in enumerate(clients(n, start=10))]
    acks = [tcp_frame(src, dst, 40000 + i, 443, "A" if i % 3 else "PA", b"" if i % 3 else b"\x17\x03\x03" + bytes(40))
            for i, src in enumerate(clients(n, start=10))]
    return syns, acks


def syn_flood_frames(dst: str, dport: int = 443, n: int = 200) -> list[bytes]:
    """Spoofed SYNs indistinguishable from real ones by headers (same options, TTLs, ports)."""
    rnd = random.Random(11)
    return [syn_frame(src, dst, rnd.randrange(1024, 65535), dport, ttl=rnd.randrange(40, 128))
            for src in spoofed(n, seed=11)]


def udp_flood_frames(dst: str, dport: int = 28960, n: int = 100) -> list[bytes]:
    """Fixed size 512-byte payload (IP length 540), constant content, spoofed sources."""
    rnd = random.Random(13)
    payload = b"\x13\x37" + b"A" * 510
    return [udp_frame(src, dst, rnd.randrange(1024, 65535), dport, payload, ttl=rnd.randrange(240, 250))
            for src in spoofed(n, seed=13)]


def reflection_frames(dst: str, sport: int, size: int, n: int = 80, seed: int = 17) -> list[bytes]:
    """Answers of open reflectors: many sources, one source port, big payloads."""
    rnd = random.Random(seed)
    return [udp_frame(f"198.51.100.{100 + i % 100}" if i % 2 else f"203.0.113.{150 + i % 100}", dst, sport,
                      rnd.randrange(1024, 65535), bytes(rnd.randrange(256) for _ in range(size)),
                      ttl=rnd.randrange(40, 60))
            for i in range(n)]


def icmp_flood_frames(dst: str, n: int = 50) -> list[bytes]:
    return [icmp_frame(src, dst, size=1000) for src in spoofed(n, seed=19)]


@dataclasses.dataclass
class Tenant:
    idx: int
    tenant_id: str
    mode: TenantMode = TenantMode.MITIGATE
    policy: TenantPolicy = dataclasses.field(default_factory=TenantPolicy)


class Lab:
    """A FakeDataplane, an engine and a bus, run one tick per `dt` seconds of simulated time."""

    def __init__(self, state_dir: pathlib.Path, tenants: list[Tenant], config: PolicyConfig = FAST,
                 seed: int = 1, appflood_config: AppFloodConfig | None = None) -> None:
        self.dp = FakeDataplane(seed=seed)
        self.bus = EventBus()
        self.queue = self.bus.subscribe("test")
        self.t = 1000.0
        self.engine = PolicyEngine(self.dp, {t.idx: (t.tenant_id, t.mode, t.policy) for t in tenants}, self.bus,
                                   state_dir, tick=1.0, config=config, wall_clock=lambda: 1.7e9 + self.t,
                                   appflood_config=appflood_config)
        self.events: list[Event] = []
        self.reports: list[TickReport] = []
        self.engine.tick(self.t)   # prime the rates

    def flow(self, name: str, tenant_idx: int, frames: list[bytes], pps, *, attack: bool = False,
             direction: Direction = Direction.INBOUND, **kw) -> Flow:
        return self.dp.add_flow(Flow(name, tenant_idx, frames, pps, direction=direction, attack=attack, **kw))

    def run(self, seconds: float, dt: float = 1.0) -> list[Event]:
        new: list[Event] = []
        end = self.t + seconds
        while self.t < end - 1e-9:
            self.dp.advance(self.t, dt)
            self.t += dt
            report = self.engine.tick(self.t)
            self.reports.append(report)
            new += report.events
        self.events += new
        return new

    def of_type(self, etype: EventType, events: list[Event] | None = None) -> list[Event]:
        return [e for e in (self.events if events is None else events) if e.type == etype]
