"""Engine-wide knobs of the policy engine (per-tenant knobs live in `tenants.policy.TenantPolicy`).

Every value has a unit and a default that suits a production appliance; tests
shorten the time constants instead of waiting for them.
"""

from __future__ import annotations

import dataclasses

from dataplane.constants import TrafficClass
from tenants.policy import TenantPolicy

# Rates (packets/s per destination) above which a class is an attack even before a
# baseline exists. They apply during warm-up only, when nothing else can be known: to
# an address the engine has just met, whatever it receives may be its usual traffic.
DEFAULT_WARMUP_FLOOR_PPS = {
    TrafficClass.TCP_SYN: 20_000,
    TrafficClass.TCP_OTHER: 150_000,
    TrafficClass.UDP: 60_000,
    TrafficClass.ICMP: 10_000,
    TrafficClass.FRAGMENT: 10_000,
    TrafficClass.OTHER: 10_000,
}
# Lower warm-up floors (packets/s per destination) for an address whose normal traffic
# the engine has already seen for a few seconds (see policy.baseline): the jump from
# that traffic to a flood is an onset the engine witnessed, and the partial baseline
# raises these floors for addresses that are simply busier. They let a fresh appliance
# catch a 5 kpps flood at a game server (the reference scenario) seconds after it starts.
# They only make a destination a candidate: classification still has to call it an
# attack (legitimate bulk traffic comes from peers the server answers).
DEFAULT_ONSET_FLOOR_PPS = {
    TrafficClass.TCP_SYN: 5_000,
    TrafficClass.TCP_OTHER: 10_000,
    TrafficClass.UDP: 2_000,
    TrafficClass.ICMP: 2_000,
    TrafficClass.FRAGMENT: 2_000,
    TrafficClass.OTHER: 2_000,
}


# Detection floors that follow the link (issue 20): with `[escalation] uplink_bps` configured, a tenant
# whose policy leaves `min_pps` / `min_tenant_pps` at their defaults gets these per Gbit/s of uplink
# instead. At 10 Gbit/s they are the fixed defaults (1,000 and 500 packets/s); a 100 Gbit/s edge sees
# ten times the background of stray packets per address, a 1 Gbit/s edge a tenth of it. At a 1,000-byte
# mean packet, 100 packets/s per Gbit/s is 0.08 % of the link's packet rate.
MIN_PPS_PER_GBPS = 100.0          # packets/s per destination and class, per Gbit/s of uplink
MIN_TENANT_PPS_PER_GBPS = 50.0    # packets/s per tenant and class, per Gbit/s of uplink
LOWEST_LINK_FLOOR_PPS = 300       # packets/s: no link-derived floor is lower (a slow link still sees scans)
UPLINK_BPS_MAX = 10 ** 15         # bits/s: far above any link, as [escalation] uplink_bps accepts
PCAP_MIN_BYTES = 4096             # bytes per PCAP file at least: the header and a few 128-byte samples
PCAP_MAX_BYTES = 1024 ** 3        # bytes per PCAP file at most (a fleet's central server takes 8 MiB)
PCAP_RETENTION_DAYS_MAX = 3650    # days: ten years, as the series' retention keys allow
PCAP_MAX_TOTAL_BYTES = 1024 ** 4  # bytes of all PCAP files at most: 1 TiB, past any appliance's disk share

# The engine's knobs an operator sets in the config file's `[policy]` table (appliance.config): the
# PolicyConfig field of the same name -> (kind, lowest, highest), bounds inclusive. "seconds" (s) and
# "number" take an integer or a float, "whole" an integer; "share_or_false" a number in (0, 1] or false
# (no shortcut). The bounds keep a value meaningful for an appliance (a confirmation longer than five
# minutes lets a flood run unanswered; a baseline's half-life of more than 30 days never follows a
# server's growth); the dataclass below checks what the values must satisfy together.
FILE_KEYS: dict[str, tuple[str, float, float]] = {
    "warmup_s": ("seconds", 0, 7 * 86400),
    "half_life_s": ("seconds", 1, 30 * 86400),
    "k_sigma": ("number", 0.5, 20),
    "margin": ("number", 1.0, 10),
    "forget_after_s": ("seconds", 60, 30 * 86400),
    "min_confidence": ("number", 0, 1),
    "carpet_min_destinations": ("whole", 2, 65536),
    "confirm_s": ("seconds", 0, 300),
    "fast_confirm_confidence": ("share_or_false", 0, 1),
    "quiet_s": ("seconds", 1, 3600),
    "hold_down_s": ("seconds", 0, 86400),
    "reattack_window_s": ("seconds", 0, 86400),
    "update_interval_s": ("seconds", 1, 3600),
    "signature_wait_s": ("seconds", 0, 300),
    "min_signature_samples": ("whole", 1, 1024),
    "legit_tolerance": ("number", 0, 0.5),
    "rate_limit_floor_pps": ("whole", 1, 10 ** 9),
}


def file_value(key: str, value: object) -> object:
    """`value` of `[policy] key` as PolicyConfig takes it (false -> None, integers of float fields ->
    float); ValueError "<key>: ..." when it is out of bounds or of the wrong type."""
    kind, low, high = FILE_KEYS[key]
    if kind == "share_or_false" and value is False:
        return None
    wanted = {"seconds": "a number of seconds", "number": "a number", "whole": "an integer",
              "share_or_false": "a number in (0, 1] or false"}[kind]
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind == "whole" and not isinstance(value, int)):
        raise ValueError(f"{key}: expected {wanted}, got {value!r}")
    if kind == "share_or_false" and not 0 < value <= 1:
        raise ValueError(f"{key}: must be within (0, 1], or false, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{key}: must be between {_bound(low)} and {_bound(high)}, got {value!r}")
    return value if kind == "whole" else float(value)


def _bound(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def link_floors(uplink_bps: int) -> tuple[int, int]:
    """(min_pps, min_tenant_pps) defaults for an uplink of `uplink_bps` bits/s."""
    gbps = uplink_bps / 1e9
    return (max(LOWEST_LINK_FLOOR_PPS, round(MIN_PPS_PER_GBPS * gbps)),
            max(LOWEST_LINK_FLOOR_PPS, round(MIN_TENANT_PPS_PER_GBPS * gbps)))


def floors_for_link(policy: TenantPolicy, uplink_bps: int | None) -> TenantPolicy:
    """`policy` with the floors it leaves at their defaults scaled to the link (no uplink: unchanged).
    A value the operator set to anything but the default is kept as it is."""
    if uplink_bps is None:
        return policy
    defaults = TenantPolicy()
    min_pps, min_tenant_pps = link_floors(uplink_bps)
    changes = {}
    if policy.min_pps == defaults.min_pps:
        changes["min_pps"] = min_pps
    if policy.min_tenant_pps == defaults.min_tenant_pps:
        changes["min_tenant_pps"] = min_tenant_pps
    return dataclasses.replace(policy, **changes) if changes else policy


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyConfig:
    # Baselines (see policy.baseline for the model).
    half_life_s: float = 1800.0          # seconds for a learned second to lose half its weight
    warmup_s: float = 600.0              # learned seconds before a row's baseline is used
    k_sigma: float = 4.0                 # standard deviations above the mean that are still normal
    margin: float = 1.5                  # headroom factor on mean + k·sigma (ramps, bursts)
    warmup_floor_pps: tuple[float, ...] = tuple(DEFAULT_WARMUP_FLOOR_PPS[c] for c in TrafficClass)
    onset_floor_pps: tuple[float, ...] = tuple(DEFAULT_ONSET_FLOOR_PPS[c] for c in TrafficClass)
    tenant_warmup_floor_factor: float = 5.0   # a tenant's warm-up floors: this many destination floors
    forget_after_s: float = 6 * 3600.0   # seconds an address may be absent before its baseline is dropped
    # Detection and classification.
    min_confidence: float = 0.5          # a vector below this is not reported
    carpet_min_destinations: int = 8     # elevated addresses before a tenant-wide anomaly is carpet bombing
    # Incidents.
    confirm_s: float = 2.0               # seconds a destination must stay anomalous before ATTACK_START
    fast_confirm_confidence: float | None = 0.8   # a vector this certain starts the attack at its first
                                                  # anomalous tick, without confirm_s (None: always confirm)
    quiet_s: float = 30.0                # seconds without anomaly before ATTACK_END (hysteresis)
    hold_down_s: float = 300.0           # seconds rules stay installed after ATTACK_END
    reattack_window_s: float = 900.0     # seconds after an end in which the same dst+vector links back
    update_interval_s: float = 5.0       # seconds between ATTACK_UPDATE events of one incident (>= 1)
    series_max_points: int = 3600        # per-second points kept per incident
    min_signature_samples: int = 20      # attack samples needed before deriving a drop signature
    signature_wait_s: float = 5.0        # seconds to wait for those samples before a fallback rule
    legit_tolerance: float = 0.01        # share of legitimate samples a rule may match
    rate_limit_floor_pps: int = 100      # packets/s a rate-limit rule admits at least
    # Samples and PCAP evidence.
    legit_samples_per_destination: int = 64   # samples kept per destination (tenants: twice as many)
    legit_sample_destinations: int = 2048   # destinations whose legitimate samples are kept (LRU)
    legit_sample_tenants: int = 1024        # tenants whose legitimate samples are kept (LRU), for carpet rules
    attack_samples_per_incident: int = 1024
    pcap_max_bytes: int = 8 * 1024 * 1024   # bytes per PCAP file
    pcap_retention_days: int = 90           # days an ended incident's PCAP files are kept
    pcap_max_total_bytes: int = 2 * 1024**3   # bytes of all PCAP files; past it the oldest incidents' go
    # The external link's capacity, bits/s (`[escalation] uplink_bps`): scales the default detection
    # floors (see `link_floors`); None keeps the fixed defaults of `TenantPolicy`.
    uplink_bps: int | None = None

    def __post_init__(self) -> None:
        positive = ("half_life_s", "k_sigma", "margin", "quiet_s", "update_interval_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"policy config {name}: must be positive, got {getattr(self, name)}")
        if self.update_interval_s < 1.0:
            raise ValueError("policy config update_interval_s: at most one update per second (>= 1)")
        for name in ("warmup_floor_pps", "onset_floor_pps"):
            if len(getattr(self, name)) != len(TrafficClass):
                raise ValueError(f"policy config {name}: needs {len(TrafficClass)} values")
        if self.fast_confirm_confidence is not None and not 0 < self.fast_confirm_confidence <= 1:
            raise ValueError("policy config fast_confirm_confidence: must be within (0, 1], or None")
        if not 0 <= self.min_confidence <= 1:
            raise ValueError("policy config min_confidence: must be within 0..1")
        if self.uplink_bps is not None and (isinstance(self.uplink_bps, bool) or not isinstance(self.uplink_bps, int)
                                            or not 1 <= self.uplink_bps <= UPLINK_BPS_MAX):
            raise ValueError(f"policy config uplink_bps: must be an integer 1..{UPLINK_BPS_MAX} bits/s or None, "
                             f"got {self.uplink_bps!r}")
        for name in ("warmup_s", "confirm_s", "hold_down_s", "reattack_window_s", "legit_tolerance"):
            if getattr(self, name) < 0:
                raise ValueError(f"policy config {name}: must not be negative")
        # PCAP evidence: whole numbers within bounds; the total holds at least one incident's two files.
        for name, lo, hi in (("pcap_max_bytes", PCAP_MIN_BYTES, PCAP_MAX_BYTES),
                             ("pcap_retention_days", 1, PCAP_RETENTION_DAYS_MAX),
                             ("pcap_max_total_bytes", None, PCAP_MAX_TOTAL_BYTES)):
            lo = 2 * self.pcap_max_bytes if lo is None else lo   # pcap_max_bytes is checked by then
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"policy config {name}: must be an integer {lo}..{hi}, got {value!r}")
