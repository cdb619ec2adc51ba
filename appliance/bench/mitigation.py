"""Time from a flood's first packet to its first dropped packet, inside the dataplane.

The per-destination class budgets of a tenant's policy act without the control
plane. This measures them for real: the lab's live-frames generator floods a
server whose tenant has a budget, the XDP program attached to the lab's NICs
copies every packet to the sample ring (sample_every=1), and the delay is the
kernel timestamp of the first dropped sample minus that of the first flood
sample (both bpf_ktime_get_ns, so no clock of user space is involved).
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable

from appliance.lab import Lab, lab_config
from appliance.lab.attack import AttackProcess, AttackSpec
from dataplane.constants import BUDGET_FIELDS, Direction, TrafficClass
from tenants import TenantSet
from tenants.compile import assign_indices, compile_tenant_set

# --vectors names -> the traffic class of its flood, whose budget field the run sets
VECTOR_CLASSES = {"syn": TrafficClass.TCP_SYN, "udp": TrafficClass.UDP, "icmp": TrafficClass.ICMP,
                  "frag": TrafficClass.FRAGMENT}
BUDGETS = {vector: BUDGET_FIELDS[cls] for vector, cls in VECTOR_CLASSES.items()}
SPOOF_PREFIX = bytes([198, 18])   # first two bytes of the generator's default spoofed sources (198.18.0.0/15)


def _flood_source(data: bytes) -> bool:
    """An IPv4 frame from the generator's spoofed range (untagged Ethernet)."""
    return len(data) >= 34 and data[12:14] == b"\x08\x00" and data[26:28] in (SPOOF_PREFIX, bytes([198, 19]))


def measure(vector: str, flood_pps: int, budget_pps: int, duration_s: float = 1.5,
            progress: Callable[[str], None] = lambda _m: None) -> dict:
    from dataplane import Dataplane  # noqa: PLC0415 - imports bcc

    lab = Lab(f"m{uuid.uuid4().hex[:6]}")
    dp = None
    try:
        progress(f"lab {lab.name} up")
        lab.up()
        config = lab_config(lab.name)
        for table in config["tenants"]:
            table["policy"] = {BUDGETS[vector]: budget_pps}
        tenant_set = TenantSet.from_dicts(config["tenants"])
        dp = Dataplane(sample_every=1)
        dp.apply_tenants(compile_tenant_set(tenant_set, assign_indices([t.id for t in tenant_set], {})))
        dp.attach(lab.external_if, lab.internal_if)
        target = lab.game_server.ipv4
        progress(f"{vector} flood at {flood_pps:,} pps against a {budget_pps:,} pps budget")
        attack = AttackProcess(lab, AttackSpec(vector, target, pps=flood_pps, duration=duration_s)).start()
        first_seen = first_drop = None
        passed_before_drop = 0
        deadline = time.monotonic() + duration_s + 30
        while first_drop is None and time.monotonic() < deadline:
            for s in dp.drain_samples(limit=1 << 20):
                if s.direction != Direction.INBOUND or not _flood_source(s.data):
                    continue
                if first_seen is None:
                    first_seen = s.timestamp_ns
                if s.dropped:
                    first_drop = s.timestamp_ns
                    break
                passed_before_drop += 1
            time.sleep(0.005)  # poll interval of the sample ring
        summary = attack.wait(60)
        return {"vector": vector, "flood_pps": flood_pps, "achieved_pps": summary.get("achieved_pps"),
                "budget_pps": budget_pps,
                "first_drop_ms": None if first_drop is None or first_seen is None
                else round((first_drop - first_seen) / 1e6, 3),
                "passed_before_first_drop": passed_before_drop}
    finally:
        if dp is not None:
            dp.detach()
            dp.close()
        lab.down()


def run(vectors=("syn", "udp", "icmp"), flood_pps: int = 50_000, budget_pps: int = 5_000, runs: int = 3,
        progress: Callable[[str], None] = lambda _m: None) -> dict:
    results = {}
    for vector in vectors:
        figures = [measure(vector, flood_pps, budget_pps, progress=progress) for _ in range(runs)]
        delays = [f["first_drop_ms"] for f in figures if f["first_drop_ms"] is not None]
        results[vector] = {"runs": figures,
                           "first_drop_ms_median": statistics.median(delays) if delays else None,
                           "first_drop_ms_max": max(delays) if delays else None}
    return {"flood_pps": flood_pps, "budget_pps": budget_pps, "vectors": results}
