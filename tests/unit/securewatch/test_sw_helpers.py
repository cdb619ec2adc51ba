"""Shared pieces of the SecureWatch tests (no tests here): an in-memory appliance, events, clients."""

from __future__ import annotations

import contextlib
import ipaddress
import pathlib
import time
from typing import Any

import aiohttp
from aiohttp import web

from dataplane.api import Rule
from escalation.config import BgpSettings, EscalationSettings, PeerSettings
from escalation.ladder import IncidentView, Ladder
from escalation.routes import Refused
from policy.events import Event, EventType
from securewatch import auth
from securewatch.app import create_app
from securewatch.settings import SecureWatchSettings
from securewatch.store import Store, User
from tenants import TenantSet

TENANTS = [
    {"id": "alpha", "name": "Alpha Hosting", "prefixes": ["198.51.100.0/25"], "contacts": ["noc@alpha.example"]},
    {"id": "beta", "name": "Beta Shop", "prefixes": ["203.0.113.0/24"], "mode": "monitor"},
]
PASSWORD = "correct horse battery"


class InMemoryAppliance:
    """A test double of the appliance process (the ApplianceHooks side), not of SecureWatch.

    Its upstream escalation is the real ladder (escalation.ladder) without a speaker, over the
    incidents in `open_incidents` (each attack_events incident, open, with a UDP rule)."""

    def __init__(self, tenant_set: TenantSet) -> None:
        self.tenants = tenant_set
        self.applied: list[TenantSet] = []
        self.series: dict[str, list[dict[str, Any]]] = {}
        self.destination_rows: list[dict[str, Any]] = []
        self.rates: dict[str, tuple[float, float]] = {}   # tenant -> (passed, dropped) pps; default 1200, 35
        self.ladder = Ladder(BgpSettings(64512, "192.0.2.1", (PeerSettings("192.0.2.2", 64500, rtbh=True),)),
                             EscalationSettings(uplink_bps=10**9, max_announcements=2))
        self.open_incidents = {iid: IncidentView(iid, tenant, True, (target,),
                                                 (Rule(0, ipaddress.ip_address(target), proto=17),))
                               for iid, tenant, target in (("inc-alpha-1", "alpha", "198.51.100.10"),
                                                           ("inc-beta-1", "beta", "203.0.113.5"))}

    def bgp_status(self) -> dict[str, Any]:
        return {"peers": [{"address": "192.0.2.2", "peer_as": 64500, "state": "established", "uptime_s": 5.0}],
                "announcements": [a.to_dict() for a in self.ladder.announcements.values()],
                "speaker": {"running": True, "restarts": 0}, "refused": self.ladder.refused}

    def escalate(self, incident_id: str, kind: str, actor: str) -> list[dict[str, Any]]:
        view = self.open_incidents.get(incident_id)
        if view is None:
            raise LookupError(incident_id)
        changes = self.ladder.escalate(view, self.tenants.get(view.tenant), kind, actor, time.monotonic())
        return [{"action": c.action, "why": c.why, **c.announcement.to_dict()} for c in changes]

    def withdraw_escalation(self, incident_id: str, actor: str) -> list[dict[str, Any]]:
        changes = self.ladder.withdraw(incident_id, actor)
        if not changes:
            raise Refused(f"incident {incident_id!r} has nothing announced")
        return [{"action": c.action, "why": c.why, **c.announcement.to_dict()} for c in changes]

    def status(self) -> dict[str, Any]:
        return {"updated": time.time(), "interfaces": [{"name": "ext0", "mode": "native", "role": "external"}],
                "tenants": {t.id: self._rates(t) for t in self.tenants},
                "notifiers": {"noc-syslog": {"tenants": None}}}

    def _rates(self, t: Any) -> dict[str, Any]:
        passed, dropped = self.rates.get(t.id, (1200.0, 35.0))
        return {"name": t.name, "mode": t.mode, "passed_pps": passed, "dropped_pps": dropped,
                "passed_bps": passed * 8000, "dropped_bps": dropped * 8000}

    def apply_tenants(self, tenant_set: TenantSet) -> None:
        TenantSet(tenant_set.tenants)  # the appliance validates again (raises ConfigError)
        self.tenants = tenant_set
        self.applied.append(tenant_set)

    def current_tenants(self) -> TenantSet:
        return self.tenants

    def traffic_series(self, tenant_id: str, seconds: int) -> list[dict[str, Any]]:
        return self.series.get(tenant_id, [])[-seconds:]

    # The per-server view's hooks (securewatch.servers.DestinationHooks): rows as appliance.destinations makes them.
    def destination_seconds(self, after: float) -> list[dict[str, Any]]:
        return [r for r in self.destination_rows if r["time"] > after and "samples" not in r]

    def destination_minutes(self, after: float) -> list[dict[str, Any]]:
        return [r for r in self.destination_rows if r["time"] > after and "samples" in r]


def settings(tmp_path: pathlib.Path, database: str | None = None) -> SecureWatchSettings:
    return SecureWatchSettings(listen="127.0.0.1:0", database=database or f"sqlite:///{tmp_path}/sw.db",
                               enabled=True)


def attack_events(incident_id: str = "inc-alpha-1", tenant: str = "alpha", t0: float | None = None,
                  pcap_dir: pathlib.Path | None = None, target: str = "198.51.100.10") -> list[Event]:
    t0 = t0 if t0 is not None else time.time() - 120
    series = [{"t": t0 + i, "pps": 50000.0 + 1000 * i, "bps": 4e8, "attack_pps": 48000.0 + 1000 * i,
               "dropped_pps": 47000.0 + 1000 * i, "passed_pps": 2000.0} for i in range(10)]
    details = {"target": target, "vector_confidence": {"syn_flood": 0.93}, "peak_pps": 59000.0,
               "peak_bps": 4e8, "efficacy": 0.97, "started": t0, "ended": None,
               "rules": [{"id": 7, "proto": "tcp", "dst": target, "tcp_flags": "S", "action": "drop"}]}
    common = {"tenant": tenant, "incident_id": incident_id, "destinations": (target,), "vectors": ("syn_flood",),
              "confidence": 0.93}
    start = Event(EventType.ATTACK_START, message=f"attack started on {target}: syn_flood", pps=50000.0,
                  bps=4e8, packets_dropped=1000, details={**details, "series": series[:3]}, timestamp=t0 + 2,
                  **common)
    upd_details = {**details, "series": series[3:7]}
    if pcap_dir is not None:
        path = pcap_dir / f"{incident_id}-dropped.pcap"
        path.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * 20)
        upd_details["pcap"] = {"dropped": {"path": str(path), "packets": 12, "bytes": 24, "skipped": 0}}
    update = Event(EventType.ATTACK_UPDATE, message="attack continues", pps=56000.0, bps=4e8,
                   packets_dropped=200000, details=upd_details, timestamp=t0 + 6, **common)
    end = Event(EventType.ATTACK_END, message="attack ended", pps=59000.0, bps=4e8, packets_dropped=400000,
                details={**details, "series": series, "ended": t0 + 10, "pcap": upd_details.get("pcap", {})},
                timestamp=t0 + 10, **common)
    return [start, update, end]


async def add_user(store: Store, name: str, role: str, tenant: str | None = None, access: str = "read") -> None:
    await store.add_user(User(name, auth.hash_password(PASSWORD), role, tenant, access if role == "tenant"
                              else "write", time.time()))


async def add_token(store: Store, role: str, tenant: str | None = None, access: str = "read") -> str:
    token = auth.new_token()
    await store.add_token(auth.token_hash(token), f"test-{role}", role, tenant, access if role == "tenant" else "write")
    return token


@contextlib.asynccontextmanager
async def running_app(app: web.Application):
    """The app on a real loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def service(tmp_path: pathlib.Path, *, database: str | None = None, appliance: Any = "default", bus=None,
                  **kwargs: Any):
    """Store + app + server: yields (base_url, store, appliance)."""
    tenant_set = TenantSet.from_dicts(TENANTS)
    if appliance == "default":
        appliance = InMemoryAppliance(tenant_set)
    store = await Store.open(database or f"sqlite:///{tmp_path}/sw.db")
    try:
        if appliance is None:
            await store.save_tenant_set(tenant_set, "test", "seed")
        app = create_app(settings(tmp_path, database), store=store, bus=bus, appliance=appliance, **kwargs)
        async with running_app(app) as url:
            yield url, store, appliance
    finally:
        await store.close()


async def login(url: str, name: str, password: str = PASSWORD) -> tuple[aiohttp.ClientSession, str]:
    """A browser-like session logged in through the form; returns it and the CSRF token."""
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    token = await login_form_token(session, url)
    async with session.post(f"{url}/login", data={"username": name, "password": password, "next": "/",
                                                   "csrf_token": token}, allow_redirects=False) as r:
        assert r.status == 302, await r.text()
    async with session.get(f"{url}/tenants") as r:
        text = await r.text()
    marker = 'name="csrf_token" value="'
    csrf = text.split(marker, 1)[1].split('"', 1)[0]
    return session, csrf


async def login_form_token(session: aiohttp.ClientSession, url: str) -> str:
    """GET /login as a browser does: the session's jar takes the pre-session cookie; returns the form's token."""
    async with session.get(f"{url}/login") as r:
        text = await r.text()
    form = text.split('action="/login"', 1)[1].split("</form>", 1)[0]   # not the logout form of a page
    marker = 'name="csrf_token" value="'
    return form.split(marker, 1)[1].split('"', 1)[0] if marker in form else ""
