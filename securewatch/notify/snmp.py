"""SNMP notifier: v2c or v3 (USM) traps and informs carrying SEAWALL-MIB varbinds.

OIDs are written out here from securewatch/mibs/SEAWALL-MIB.txt (a unit test
checks them against the compiled MIB), so sending needs no MIB compile at run time.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time

import structlog
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    send_notification,
    usm3DESEDEPrivProtocol,
    usmAesCfb128Protocol,
    usmAesCfb192Protocol,
    usmAesCfb256Protocol,
    usmDESPrivProtocol,
    usmHMAC128SHA224AuthProtocol,
    usmHMAC192SHA256AuthProtocol,
    usmHMAC256SHA384AuthProtocol,
    usmHMAC384SHA512AuthProtocol,
    usmHMACMD5AuthProtocol,
    usmHMACSHAAuthProtocol,
    usmNoPrivProtocol,
)
from pysnmp.proto.rfc1902 import Counter64, ObjectIdentifier, OctetString, TimeTicks, Unsigned32
from pysnmp.smi.builder import MibBuilder
from pysnmp.smi.view import MibViewController

from policy.events import Event, EventType

from .base import NotifierError
from .config import SnmpReceiver

log = structlog.get_logger(__name__)

PEN = 32473  # IANA example enterprise number (RFC 5612), SEAWALL-MIB's root
SEAWALL_MIB = (1, 3, 6, 1, 4, 1, PEN)
NOTIFICATION_OIDS: dict[EventType, tuple[int, ...]] = {
    EventType.ATTACK_START: (*SEAWALL_MIB, 0, 1),   # seawallAttackStart
    EventType.ATTACK_UPDATE: (*SEAWALL_MIB, 0, 2),  # seawallAttackUpdate
    EventType.ATTACK_END: (*SEAWALL_MIB, 0, 3),     # seawallAttackEnd
    EventType.POLICY_CHANGE: (*SEAWALL_MIB, 0, 4),  # seawallPolicyChange
    EventType.SYSTEM: (*SEAWALL_MIB, 0, 5),         # seawallSystem
    EventType.ESCALATION: (*SEAWALL_MIB, 0, 6),     # seawallEscalation
}
# Varbind name -> OID, in the order of the notifications' OBJECTS clause.
VARBIND_OIDS: dict[str, tuple[int, ...]] = {
    name: (*SEAWALL_MIB, 1, i) for i, name in enumerate((
        "seawallEventType", "seawallSeverity", "seawallTenant", "seawallIncidentId",
        "seawallDestinations", "seawallVectors", "seawallConfidence", "seawallPacketsPerSecond",
        "seawallPacketsDropped", "seawallMessage"), start=1)
}
SNMP_TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)  # SNMPv2-MIB::snmpTrapOID.0
SYS_UP_TIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)  # SNMPv2-MIB::sysUpTime.0
_STARTED = time.monotonic()  # seconds; sysUpTime counts from when the notifiers were loaded
DISPLAY_STRING_MAX = 255  # octets: DisplayString's size limit

_AUTH = {
    "MD5": usmHMACMD5AuthProtocol, "SHA": usmHMACSHAAuthProtocol,
    "SHA224": usmHMAC128SHA224AuthProtocol, "SHA256": usmHMAC192SHA256AuthProtocol,
    "SHA384": usmHMAC256SHA384AuthProtocol, "SHA512": usmHMAC384SHA512AuthProtocol,
}
_PRIV = {
    "DES": usmDESPrivProtocol, "3DES": usm3DESEDEPrivProtocol, "AES": usmAesCfb128Protocol,
    "AES192": usmAesCfb192Protocol, "AES256": usmAesCfb256Protocol,
}


def default_engine_id() -> str:
    """RFC 3411 SnmpEngineID: 0x80 | PEN, format 5 (octets), 8 octets from this host's name.
    Stable across restarts, which v3 trap receivers need (they key users by engine id)."""
    digest = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:16]
    return f"{0x80000000 | PEN:08x}05{digest}"


def _text(value: str) -> OctetString:
    return OctetString(value.encode()[:DISPLAY_STRING_MAX])


def varbinds(event: Event) -> list[ObjectType]:
    values = {
        "seawallEventType": _text(str(event.type)),
        "seawallSeverity": _text(str(event.severity)),
        "seawallTenant": _text(event.tenant or ""),
        "seawallIncidentId": _text(event.incident_id or ""),
        "seawallDestinations": _text(",".join(event.destinations)),
        "seawallVectors": _text(",".join(event.vectors)),
        "seawallConfidence": Unsigned32(round(100 * min(max(event.confidence or 0.0, 0.0), 1.0))),
        "seawallPacketsPerSecond": Counter64(max(int(event.pps or 0), 0)),
        "seawallPacketsDropped": Counter64(max(int(event.packets_dropped or 0), 0)),
        "seawallMessage": _text(event.message),
    }
    uptime = TimeTicks(int((time.monotonic() - _STARTED) * 100) % 2**32)  # hundredths of a second
    return [ObjectType(ObjectIdentity(ObjectIdentifier(SYS_UP_TIME)), uptime),
            ObjectType(ObjectIdentity(ObjectIdentifier(SNMP_TRAP_OID)),
                       ObjectIdentifier(NOTIFICATION_OIDS[event.type]))] + [
        ObjectType(ObjectIdentity(ObjectIdentifier(VARBIND_OIDS[name])), value)
        for name, value in values.items()]


_mib_view: MibViewController | None = None
_mib_view_guard = threading.Lock()  # a thread lock: callers wait in worker threads, not on the loop


def _shared_mib_view() -> MibViewController:
    """One MIB view for every SNMP receiver. pysnmp resolves each varbind through a
    MIB view; the first resolution loads its base MIBs and builds pysmi's parser,
    seconds of CPU, so callers run this in a worker thread."""
    global _mib_view
    with _mib_view_guard:
        if _mib_view is None:
            view = MibViewController(MibBuilder())
            for varbind in varbinds(Event(EventType.SYSTEM, None, "warm-up")):
                varbind.resolve_with_mib(view)
            _mib_view = view
        return _mib_view


class SnmpNotifier:
    """Sends traps (fire and forget) or informs (acknowledged) to one manager."""

    def __init__(self, receiver: SnmpReceiver) -> None:
        self.receiver = receiver
        self.name = receiver.name
        r = receiver
        self._engine_id = r.engine_id or default_engine_id()
        if r.version == "2c":
            assert r.community is not None
            self._auth: CommunityData | UsmUserData = CommunityData(r.community.reveal(), mpModel=1)
        else:
            self._auth = UsmUserData(
                r.user,
                authKey=r.auth_key.reveal() if r.auth_key else None,
                privKey=r.priv_key.reveal() if r.priv_key else None,
                authProtocol=_AUTH[r.auth_protocol],
                privProtocol=_PRIV[r.priv_protocol] if r.priv_key else usmNoPrivProtocol,
            )
        self._engine: SnmpEngine | None = None

    async def send(self, event: Event, delivery_id: str) -> None:
        r = self.receiver
        if self._engine is None:
            view = _mib_view or await asyncio.to_thread(_shared_mib_view)
            self._engine = SnmpEngine(OctetString(hexValue=self._engine_id))
            self._engine.cache["mibViewController"] = view  # where pysnmp's hlapi looks for it
        try:
            target = await UdpTransportTarget.create((r.host, r.port), timeout=r.timeout_s,
                                                     retries=r.retries)
            error_indication, error_status, _, _ = await send_notification(
                self._engine, self._auth, target, ContextData(),
                "inform" if r.inform else "trap", *varbinds(event))
        except (OSError, TimeoutError) as exc:
            raise NotifierError(f"snmp {r.host}:{r.port}: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # pysnmp raises PySnmpError and plain errors from its engine
            raise NotifierError(f"snmp {r.host}:{r.port}: {type(exc).__name__}: {exc}") from exc
        if error_indication:
            raise NotifierError(f"snmp {r.host}:{r.port}: {error_indication}")
        if error_status and int(error_status):
            raise NotifierError(f"snmp {r.host}:{r.port}: inform answered {error_status.prettyPrint()}")

    async def close(self) -> None:
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None
