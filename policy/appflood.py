"""Application-layer and connection floods from real sources (issue 15): per-server detection,
classification and per-source mitigation.

Every other vector differs from the clients' packets in some header field; these do not: the
bots complete the TCP handshake and speak HTTP or TLS like a browser. What differs is how much
each source does, against what this server's own clients normally do. The dataplane counts, per
destination and per (destination, source), completed handshakes, open connections, HTTP request
lines, TLS ClientHellos and payload bytes each way (`dataplane.api.FlowCounters`); this module
turns them into rates once a tick.

Per server (a protected destination address)
--------------------------------------------
Seven metrics, each with its own EWMA baseline (`policy.baseline.EwmaBaseline`, the volumetric
classes' machinery: same half-life, warm-up, k·sigma and margin, attack seconds not learned):
new connections/s, established connections, HTTP requests/s, TLS hellos/s, client and server
payload bytes/s per connection (over the connections that carried them, max(established,
new/s)), and client bytes per TLS handshake. The first four are triggers: one above
``max(floor, (mean + k·sigma)·margin)`` (the floor times `warmup_factor` during warm-up) makes
the server a candidate. The byte metrics are shape evidence only. A candidate with no vector (a
flash crowd) is learned, winsorised at its threshold, as the volumetric baselines learn benign
anomalies; a candidate with a vector, or a server with an open incident, is not.

Per source: what this server's normal clients do. Every `source_interval_s` in peacetime (and
every tick while a server is a candidate) the per-source counters are read; each active source's
new connections/s, requests/s (HTTP and TLS hellos together) and open connections go into a
decaying log-spaced histogram per server (same half-life). Its `source_quantile` (p99) is the
normal per-source rate; until `source_min_weight` observations exist, `DEFAULT_SOURCE_NORMAL`
stands in. (Server, source) pairs that completed handshakes, sent data and stayed within the
limits in peacetime are known-good once their server has stayed calm `known_good_confirm_s` after
the read (a flood's first second, averaged into a calm read, would pass for good behaviour): a ring
of the `max_known_good` most recently learned pairs, shared by all servers, with a hash index over
folded pair keys (`pair_keys`).

State lives in numpy rows (`_Servers`), found through `dataplane.keys.KeyIndex`, so a tick costs a
few whole-array passes however many servers there are (about 9 ms of CPU at 20,000 active servers;
a per-source read of 200,000 pairs about 0.3 s); the `max_servers` least recently active give
their rows up to new ones.

Vectors (confidence 0..1; each a gate times rate evidence)
----------------------------------------------------------
Rate evidence: ``(0.45·magnitude + 0.35·excess share + 0.2·source share)·(0.6 + 0.4·magnitude)``
(as in `policy.classify`), where the source share is the part of the excess that sources above
the per-source limit (normal rate × `limit_multiplier`) carry. Ratios that say what the new
connections do are taken over the excess (what is above the baseline's means), since the usual
clients go on as before. Gates:
- `http_flood`: requests/s anomalous; gate = the source share of requests itself.
- `tls_flood`: hellos/s anomalous; gate = little client data after the hello (client bytes per
  handshake beyond `HELLO_BYTES`, against the baseline's).
- `slowloris`: established anomalous; gate = the connections did start requests. Per source when
  the sources are read: the share of the excess connections that sources hold (`_held`: open
  connections carrying almost nothing either way now, whose requests were never answered over the
  pair's life) × the share of their connections that started a request (request lines or hellos
  per handshake, `STARTS_PER_CONN`, over the pair's life). Else from the totals: the extra connections carry tiny client bytes (under
  `SLOW_BYTES_PER_CONN_S` each) × few requests (under `FEW_REQUESTS_PER_CONN_S` each) × the new
  connections start requests (short averages of the excess).
- `tcp_connection_flood`: new connections/s or established anomalous; gate = 1 − that share (the
  held sources' and those opening connections above the limit; the short averages without them).
  Per source because a held connection does nothing within a tick and an HTTP flood just before
  leaves its requests in the server's short averages (the lab's connection flood was called
  slowloris so).

Flash crowd vs flood
--------------------
A flash crowd raises the totals as a flood does; what it does not change is what each source
does. Its many new clients each open a normal number of connections and send a normal number of
requests, so the share of the excess carried by sources above this server's per-source p99 stays
near zero: `http_flood`'s gate is that share, and a crowd's connections carry requests (no
`tcp_connection_flood`), its TLS sessions carry data after the hello (no `tls_flood`) and its
connections send requests (no `slowloris`). The totals alone decide nothing.

Mitigation (tenants in mitigate mode with auto_mitigation; monitor mode: incidents only)
----------------------------------------------------------------------------------------
- A `SourceLimit` per attacked (destination, port): new connections/s = max(floor, normal
  per-source p99 × `limit_multiplier`), burst = that × `burst_s`, concurrent connections likewise
  from the open-connection p99. The port is the attack's most sampled TCP destination port (None:
  every port). Withdrawn when the incident ends and its hold-down is over (as its rules are: limits
  that starve a flood of handshakes make it look over, and it would return the moment they went).
- A `BlockedSource` with TTL `block_ttl_s` and a reason for each source above `block_factor` times
  a limit (connections, requests or open connections), or doing what the flood does (connection
  floods and slowloris: `_held` connections, whichever of the two; TLS floods: hellos with nothing
  after them), unless it is in the server's known-good set (counted as spared). An idle keep-alive
  client, an SSE stream or a websocket is not held: its requests were answered (`RESPONSE_BYTES`
  per request), or the server sends to it now.
- Caps: at most `max_limits` limits and `max_blocked_per_tenant` / `max_blocked` blocked sources;
  when full, the oldest entry goes, stays out while its incident lasts (no churn), and `counters`
  says how many went.
- A tenant switched to monitor mode (or auto_mitigation off, or removed) loses its limits and its
  blocked sources at the next tick; a refused dataplane update is retried at the next tick.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import structlog

from dataplane.api import BlockedSource, FlowCounters, IPAddress, SourceLimit
from dataplane.constants import BLOCKED_SOURCES_MAX, MAX_TENANTS, SOURCE_LIMITS_MAX, TenantMode
from dataplane.keys import KeyIndex, address_keys, address_of_key
from policy.baseline import EwmaBaseline
from policy.classify import APP_VECTORS, Vector, VectorScore
from policy.incidents import State
from policy.packets import PROTO_TCP, PacketFeatures

log = structlog.get_logger("policy")

METRICS = ("new_per_s", "established", "requests_per_s", "hellos_per_s", "client_bytes_per_conn",
           "server_bytes_per_conn", "client_bytes_per_hello")
NEW, EST, REQ, TLS, UP, DOWN, PER_HELLO = range(len(METRICS))
TRIGGERS = (NEW, EST, REQ, TLS)

# Per-source metrics (the histograms' rows).
SOURCE_METRICS = ("new_per_s", "requests_per_s", "established")
S_NEW, S_REQ, S_EST = range(len(SOURCE_METRICS))
# A client's normal new connections/s, requests/s and open connections before a server's own
# per-source distribution is learned: a browser opens about 6 connections to a site and asks a
# few requests a second while a page loads.
DEFAULT_SOURCE_NORMAL = (2.0, 5.0, 8.0)
# Histogram of per-source rates: log-spaced bins from 0.01 to 10,000 per second (or connections).
BINS_PER_DECADE = 8
LOG_LOW = -2.0
N_BINS = 6 * BINS_PER_DECADE
# Columns of _SourceView.life (the pairs' cumulative counters).
L_NEW, L_REQ, L_TLS, L_UP, L_DOWN = range(5)
RESPONSE_BYTES = 64.0           # server bytes per request or hello from which a source's requests were answered
                                # (a status line and a few headers; a TLS server's first flight is thousands)
HELLO_BYTES = 600.0             # bytes: a ClientHello with its TCP segment's payload, about 250-600
SLOW_BYTES_PER_CONN_S = 50.0    # client bytes/s per open connection below which a connection is idle
STARTS_PER_CONN = 0.5           # requests or hellos per new connection from which connections "do something"
FEW_REQUESTS_PER_CONN_S = 0.05  # requests/s per open connection below which connections are held, not used
RECENT_HALF_LIFE_S = 5.0        # seconds: the short averages of new connections and requests (ratios)
REQUEST_LINE_MIN_SAMPLES = 5    # sampled request lines before the explanation names the top one
NEUTRAL = 0.5                   # source share when no per-source figures exist

HTTP_METHODS = (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE")


U32_MAX = 0xFFFFFFFF                 # the dataplane's per-source limit fields are u32
MAX_BLOCK_TTL_S = 10 * 365 * 86400   # seconds (ten years): a block's expiry stays far inside u64 nanoseconds


@dataclasses.dataclass(frozen=True, slots=True)
class AppFloodConfig:
    # Baselines (as policy.config.PolicyConfig's; see policy.baseline).
    half_life_s: float = 1800.0        # seconds for a learned second to lose half its weight
    warmup_s: float = 600.0            # learned seconds before a server's baseline is used
    k_sigma: float = 4.0               # standard deviations above the mean that are still normal
    margin: float = 1.5                # headroom factor on mean + k·sigma
    # Floors: below these a server is never a candidate (units: per second, or connections).
    min_new_per_s: float = 100.0       # connections/s
    min_established: float = 1000.0    # open connections
    min_requests_per_s: float = 200.0  # HTTP requests/s
    min_hellos_per_s: float = 100.0    # TLS ClientHellos/s
    warmup_factor: float = 10.0        # floors × this while a server's baseline warms up
    min_confidence: float = 0.5        # a vector below this is not reported
    max_servers: int = 4096            # servers with baselines (least recently active forgotten)
    # Per-source behaviour.
    source_interval_s: float = 10.0    # seconds between per-source reads in peacetime
    source_quantile: float = 0.99      # of the per-source distribution: a normal client's rate
    source_min_weight: float = 50.0    # source observations before a server's own distribution is used
    max_known_good: int = 65536        # (server, source) pairs remembered as well-behaved (oldest replaced)
    # Seconds a pair's good behaviour must be followed by a calm server before the pair is known-good: a
    # flood that starts in the last second of a peacetime read is averaged over the whole read, its bots
    # below every limit; they are only learned if their server stays calm this long after.
    known_good_confirm_s: float = 10.0
    top_sources: int = 10              # sources named in an incident
    # Mitigation.
    limit_multiplier: float = 3.0      # per-source limit = normal per-source rate × this
    limit_floor_new_per_s: int = 5     # connections/s a limit admits at least
    limit_floor_concurrent: int = 20   # open connections a limit admits at least
    limit_floor_requests_per_s: float = 10.0   # requests/s a source may send before it can be blocked
    burst_s: float = 2.0               # seconds of new connections a source may open at once
    # A source (not known-good) above a limit × this is blocked. 1: the limit is already 3 (limit_multiplier)
    # times a normal client's p99; a botnet spreads its load (in the lab 60 bots sent 12 requests/s each
    # against a limit of 10), so a higher factor lets most bots through.
    block_factor: float = 1.0
    block_ttl_s: float = 600.0         # seconds a blocked source stays blocked
    max_blocked_per_tenant: int = 4096  # entries of one tenant's block list
    # The dataplane's caps are the ceiling of these two (`for_dataplane`: its blocked_sources_max and
    # source_limits_max); the defaults are the dataplane's defaults.
    max_blocked: int = BLOCKED_SOURCES_MAX   # entries of all block lists
    max_limits: int = SOURCE_LIMITS_MAX      # per-source limits installed at once

    def __post_init__(self) -> None:
        # TOML reads nan and inf: a nan floor would switch detection off without a word.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and (not math.isfinite(value) or value < 0):
                raise ValueError(f"appflood config {f.name}: must be a finite number >= 0, got {value!r}")
        for name in ("half_life_s", "k_sigma", "margin", "warmup_factor", "source_interval_s", "limit_multiplier",
                     "burst_s", "block_factor", "block_ttl_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"appflood config {name}: must be positive, got {getattr(self, name)}")
        for name in ("max_servers", "max_known_good", "max_blocked_per_tenant", "max_blocked", "max_limits",
                     "limit_floor_new_per_s", "limit_floor_concurrent", "top_sources"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"appflood config {name}: must be a positive integer, got {value!r}")
        # The dataplane holds the limits as u32 and a block's expiry as u64 nanoseconds.
        for name in ("limit_floor_new_per_s", "limit_floor_concurrent"):
            if getattr(self, name) > U32_MAX:
                raise ValueError(f"appflood config {name}: at most {U32_MAX:,}, got {getattr(self, name):,}")
        if self.block_ttl_s > MAX_BLOCK_TTL_S:
            raise ValueError(f"appflood config block_ttl_s: at most {MAX_BLOCK_TTL_S:,} s, got {self.block_ttl_s:,}")
        if not 0 < self.source_quantile < 1:
            raise ValueError("appflood config source_quantile: must be within (0, 1)")
        if not 0 <= self.min_confidence <= 1:
            raise ValueError("appflood config min_confidence: must be within 0..1")
        if self.max_blocked_per_tenant > self.max_blocked:
            raise ValueError(f"appflood config max_blocked_per_tenant: {self.max_blocked_per_tenant} exceeds "
                             f"max_blocked ({self.max_blocked})")

    @classmethod
    def for_dataplane(cls, sizes: Any = None, **knobs: Any) -> AppFloodConfig:
        """The configuration given by `knobs` (field names; the defaults for the rest) with its caps at the
        dataplane's map sizes `sizes` (`dataplane.sizing.FlowSizes`; None: the defaults): max_limits is its
        source_limits_max and max_blocked its blocked_sources_max unless set lower (higher is an error: the
        dataplane would refuse the limits, or drop entries the detector believes listed)."""
        caps = {"max_limits": ("source_limits_max", SOURCE_LIMITS_MAX),
                "max_blocked": ("blocked_sources_max", BLOCKED_SOURCES_MAX)}
        names = {f.name: f for f in dataclasses.fields(cls)}
        for key in knobs:
            if key not in names:
                raise ValueError(f"appflood config {key}: unknown key (known: {', '.join(names)})")
        for key, (size_name, default) in caps.items():
            cap = getattr(sizes, size_name, default) if sizes is not None else default
            if key not in knobs:
                knobs[key] = cap
            elif isinstance(knobs[key], int) and knobs[key] > cap:
                raise ValueError(f"appflood config {key}: {knobs[key]} exceeds the dataplane's {size_name} ({cap})")
        if "max_blocked_per_tenant" not in knobs and isinstance(knobs["max_blocked"], int):
            knobs["max_blocked_per_tenant"] = min(names["max_blocked_per_tenant"].default, knobs["max_blocked"])
        return cls(**knobs)

    @property
    def floors(self) -> np.ndarray:
        out = np.zeros(len(METRICS))
        out[[NEW, EST, REQ, TLS]] = (self.min_new_per_s, self.min_established, self.min_requests_per_s,
                                     self.min_hellos_per_s)
        return out


# -- counters to increments --------------------------------------------------------------------------

_MIX = np.uint64(0x9E3779B97F4A7C15)


def _fmix(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (a bijection that spreads every input bit)."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def pair_keys(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """(N, 2) uint64 keys of (destination, source) pairs: the 256 bits of both addresses folded into 128.
    Two pairs share a key with a chance of about N² / 2**128 (then one is taken for the other)."""
    dst = np.asarray(dst, np.uint64).reshape(-1, 2)
    src = np.asarray(src, np.uint64).reshape(-1, 2)
    with np.errstate(over="ignore"):
        return np.stack([dst[:, 0] ^ _fmix(src[:, 0] ^ (dst[:, 1] * _MIX)),
                         dst[:, 1] ^ _fmix(src[:, 1] ^ (dst[:, 0] * _MIX) ^ _MIX)], axis=1)


class CounterIncrements:
    """Cumulative counters by key (rows of an LRU map) → what each row gained since the last read.

    A row absent from the last read, or whose counters went down (evicted and entered again), gained
    all it holds. Rows absent now are forgotten, as the map forgot them."""

    def __init__(self, width: int) -> None:
        self.index = KeyIndex()
        self.values = np.zeros((0, width), np.uint64)

    def update(self, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        cur = np.asarray(values, np.uint64)
        prev = np.zeros_like(cur)
        if len(self.values) and len(keys):
            at = self.index.get(keys)
            hit = at >= 0
            prev[hit] = self.values[at[hit]]
        gained = np.where(cur >= prev, cur - np.minimum(cur, prev), cur).astype(np.float64)
        self.index.rebuild(keys, np.arange(len(keys)))
        self.values = cur.copy()
        return gained


# -- per-source histograms ---------------------------------------------------------------------------

def _bins(values: np.ndarray) -> np.ndarray:
    logs = np.log10(np.maximum(values, 10.0 ** LOG_LOW))
    return np.clip(np.floor((logs - LOG_LOW) * BINS_PER_DECADE), 0, N_BINS - 1).astype(np.int64)


class _KnownGood:
    """(server, source) pairs seen completing handshakes and behaving in peacetime: a ring of `capacity`
    pair keys (the oldest replaced first) with a hash index over it, rebuilt when pairs are added."""

    def __init__(self, capacity: int) -> None:
        self.keys = np.zeros((capacity, 2), np.uint64)
        self.filled = 0
        self.next = 0
        self.index = KeyIndex()

    def __len__(self) -> int:
        return self.filled

    def contains(self, keys: np.ndarray) -> np.ndarray:
        at = self.index.get(keys)
        ok = at >= 0
        ok[ok] = (self.keys[at[ok]] == keys[ok]).all(axis=1)
        return ok

    def add(self, keys: np.ndarray) -> None:
        new = keys[~self.contains(keys)][-len(self.keys):]
        if not len(new):
            return
        slots = (self.next + np.arange(len(new))) % len(self.keys)
        self.keys[slots] = new
        self.next = int(slots[-1] + 1) % len(self.keys)
        self.filled = min(self.filled + len(new), len(self.keys))
        self.index.rebuild(self.keys[:self.filled], np.arange(self.filled))


@dataclasses.dataclass(slots=True)
class _SourceView:
    """One server's sources in the last per-source read (while it is a candidate)."""

    keys: np.ndarray           # (N, 2) the sources' address keys
    pairs: np.ndarray          # (N, 2) the (server, source) pair keys
    rates: np.ndarray          # (N, 3): new/s, requests/s, open connections
    client_bytes: np.ndarray   # (N,) client bytes/s
    hellos: np.ndarray         # (N,) TLS ClientHellos/s (also in the requests/s)
    server_bytes: np.ndarray   # (N,) server bytes/s
    # (N, 5) what the pair did since its row entered the map: handshakes, request lines, hellos, client
    # bytes, server bytes. A held connection does nothing within a read; its whole life tells what it is.
    life: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


class _Servers:
    """Per-server state in rows of arrays, found by the destination's map key; the least recently
    active servers make room when all rows are taken."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.index = KeyIndex(capacity)
        self.keys = np.zeros((capacity, 2), np.uint64)
        self.tenant = np.zeros(capacity, np.int64)
        self.used = np.zeros(capacity, bool)
        self.last = np.zeros(capacity)
        self.recent = np.zeros((capacity, 2))          # short averages: new connections/s, requests/s
        self.hist = np.zeros((capacity, len(SOURCE_METRICS), N_BINS), np.float32)
        self.weight = np.zeros(capacity)               # decayed source observations in `hist`
        self.candidate = np.zeros(capacity, bool)
        self.hot_at = np.full(capacity, -np.inf)       # when it last was a candidate or attacked (s, engine time)
        self.sources: dict[int, _SourceView] = {}      # rows read per source while candidates
        self.dports: dict[int, collections.deque] = {}  # sampled TCP destination ports of candidates
        self.lines: dict[int, collections.deque] = {}   # sampled request lines of candidates

    def __len__(self) -> int:
        return int(self.used.sum())

    def rows(self, keys: np.ndarray, tenant: np.ndarray, now: float) -> tuple[np.ndarray, np.ndarray]:
        """(row of each key, -1 where none could be had; rows freed for them, whose state was reset)."""
        rows = self.index.get(keys)
        missing = np.flatnonzero(rows < 0)
        freed = np.zeros(0, np.int64)
        if len(missing):
            free = np.flatnonzero(~self.used)
            short = len(missing) - len(free)
            if short > 0:
                busy = np.flatnonzero(self.used)
                keep = np.zeros(self.capacity, bool)
                keep[rows[rows >= 0]] = True                 # active now: never pushed out for another
                candidates = busy[~keep[busy]]
                freed = candidates[np.argsort(self.last[candidates], kind="stable")[:short]]
                self._reset(freed)
                free = np.concatenate([free, freed])
            take = min(len(missing), len(free))
            missing, new_rows = missing[:take], free[:take]
            self.keys[new_rows] = keys[missing]
            self.tenant[new_rows] = tenant[missing]
            self.used[new_rows] = True
            rows[missing] = new_rows
            live = np.flatnonzero(self.used)
            self.index.rebuild(self.keys[live], live)
        self.last[rows[rows >= 0]] = now
        return rows, freed

    def _reset(self, rows: np.ndarray) -> None:
        self.used[rows] = False
        self.recent[rows] = 0.0
        self.hist[rows] = 0.0
        self.weight[rows] = 0.0
        self.candidate[rows] = False
        self.hot_at[rows] = -np.inf
        for r in rows.tolist():
            self.sources.pop(r, None)
            self.dports.pop(r, None)
            self.lines.pop(r, None)

    def normal(self, rows: np.ndarray, cfg: AppFloodConfig) -> np.ndarray:
        """(N, 3) normal per-source rates of `rows`: the `source_quantile` of each per-source metric (the
        top of its histogram bin), or DEFAULT_SOURCE_NORMAL before `source_min_weight` observations."""
        cum = np.cumsum(self.hist[rows], axis=2, dtype=np.float64)
        first = np.minimum((cum < cfg.source_quantile * cum[:, :, -1:]).sum(axis=2), N_BINS - 1)
        out = 10.0 ** (LOG_LOW + (first + 1) / BINS_PER_DECADE)
        out[self.weight[rows] < cfg.source_min_weight] = DEFAULT_SOURCE_NORMAL
        return out

    def limits(self, rows: np.ndarray, cfg: AppFloodConfig) -> np.ndarray:
        """(N, 3) per-source limits: new connections/s, requests/s, open connections."""
        return np.maximum(self.normal(rows, cfg) * cfg.limit_multiplier,
                          (cfg.limit_floor_new_per_s, cfg.limit_floor_requests_per_s, cfg.limit_floor_concurrent))


class _MetricBaseline(EwmaBaseline):
    """`EwmaBaseline` over the server metrics instead of the traffic classes."""

    def __init__(self, capacity: int, **kw: Any) -> None:
        super().__init__(1, **kw)
        shape = (capacity, len(METRICS))
        self.mean, self.var, self.learned_s = np.zeros(shape), np.zeros(shape), np.zeros(shape)


# -- request lines from samples ----------------------------------------------------------------------

def request_line(data: bytes) -> str | None:
    """'METHOD target' of a sampled frame whose TCP payload starts an HTTP/1.x request, else None."""
    off = 14
    ethertype = struct.unpack_from("!H", data, 12)[0] if len(data) >= 14 else 0
    while ethertype in (0x8100, 0x88A8) and len(data) >= off + 4:
        ethertype = struct.unpack_from("!H", data, off + 2)[0]
        off += 4
    if ethertype == 0x0800 and len(data) >= off + 20:
        ihl = (data[off] & 0x0F) * 4
        if data[off + 9] != PROTO_TCP or ihl < 20:
            return None
        off += ihl
    elif ethertype == 0x86DD and len(data) >= off + 40:
        if data[off + 6] != PROTO_TCP:
            return None
        off += 40
    else:
        return None
    if len(data) < off + 20:
        return None
    off += (data[off + 12] >> 4) * 4
    payload = data[off:]
    method, sep, rest = payload.partition(b" ")
    if not sep or method not in HTTP_METHODS:
        return None
    target = rest.split(b" ", 1)[0].split(b"\r", 1)[0][:64]
    return f"{method.decode()} {target.decode('latin-1')}"


# -- scoring -----------------------------------------------------------------------------------------

def _magnitude(value: float, threshold: float) -> float:
    ratio = value / max(threshold, 1e-9)
    return float(np.clip(1.0 - np.exp(-3.0 * (ratio - 1.0)), 0.0, 1.0))


def _excess(value: float, mean: float) -> float:
    return float(np.clip((value - mean) / max(value, 1e-9), 0.0, 1.0))


def _below(value: float, limit: float) -> float:
    """1 at a quarter of `limit` and under, falling to 0 at `limit`: how clearly `value` is small."""
    return float(np.clip((limit - value) / (0.75 * limit), 0.0, 1.0))


def _rate_evidence(value: float, threshold: float, mean: float, source_share: float) -> float:
    mag = _magnitude(value, threshold)
    return (0.45 * mag + 0.35 * _excess(value, mean) + 0.2 * source_share) * (0.6 + 0.4 * mag)


def _held_text(view: _SourceView, held: np.ndarray, src_starts: tuple[float, int, float] | None) -> str:
    if src_starts is None:
        return ""
    share, n_src, _ = src_starts
    conns = int(view.rates[held, S_EST].sum())
    return (f"{n_src:,} sources hold {conns:,} connections with nothing answered or open them above the limit; "
            f"{100 * share:.0f} % of their connections started a request")


def _n(x: float) -> str:
    """A figure as people read it: 14,200 / 310 / 2.5."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}".replace(".0", "") if abs(x) >= 1 else f"{x:.2g}"


@dataclasses.dataclass(slots=True)
class AppFinding:
    """A server whose application-layer vectors were classified this tick."""

    tenant_idx: int
    dst: IPAddress
    scores: list[VectorScore]


@dataclasses.dataclass(slots=True)
class _LimitEntry:
    limit: SourceLimit
    since: float
    vector: str


class AppFloodDetector:
    """Per-server baselines, per-source distributions, classification and mitigation (see the module)."""

    def __init__(self, config: AppFloodConfig | None = None) -> None:
        self.config = cfg = config or AppFloodConfig()
        floors = tuple(cfg.floors * cfg.warmup_factor)
        self.baseline = _MetricBaseline(cfg.max_servers, half_life_s=cfg.half_life_s, warmup_s=cfg.warmup_s,
                                        k_sigma=cfg.k_sigma, margin=cfg.margin, warmup_floor_pps=floors)
        self.servers = _Servers(cfg.max_servers)
        self.known_good = _KnownGood(cfg.max_known_good)
        # Pairs that behaved in a peacetime read, not yet confirmed: (when read, pair keys, server rows);
        # at most max_known_good pairs in all, the oldest reads dropped first.
        self._pending_good: collections.deque[tuple[float, np.ndarray, np.ndarray]] = collections.deque()
        self._dst_counts = CounterIncrements(5)
        self._pair_counts = CounterIncrements(5)
        self._last_source_read: float | None = None
        self._last_read: float | None = None
        self._sensitivity: tuple[Mapping[int, Any], np.ndarray, np.ndarray] | None = None
        self.limits: collections.OrderedDict[tuple[int, IPAddress, int | None], _LimitEntry] = \
            collections.OrderedDict()
        self._limits_unsent = False
        self._limits_capped: set[tuple[int, IPAddress, int | None]] = set()
        self.blocked: dict[int, collections.OrderedDict[IPAddress, BlockedSource]] = {}
        # Entries the caps pushed out, until they would have expired: not blocked again meanwhile (else a
        # full list would swap its oldest entries for the next tick's offenders every tick). Bounded as
        # the lists are.
        self._evicted: collections.OrderedDict[tuple[int, IPAddress], int] = collections.OrderedDict()
        self.counters: collections.Counter[str] = collections.Counter()
        self.disabled: str | None = None       # why flow accounting is off (a dataplane without it)
        self.last_findings: list[AppFinding] = []

    # -- reading ------------------------------------------------------------------------------------
    def _tenant_table(self, tenants: Mapping[int, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(whether each tenant index is in the table, its policy sensitivity), built once per table."""
        # Compared by identity, not by id(): an id is reused once the old table is freed.
        if self._sensitivity is None or self._sensitivity[0] is not tenants:
            known = np.zeros(MAX_TENANTS + 1, bool)
            sens = np.ones(MAX_TENANTS + 1)
            for idx, entry in tenants.items():
                if 0 <= idx <= MAX_TENANTS:
                    known[idx] = True
                    sens[idx] = float(getattr(getattr(entry, "policy", None), "sensitivity", 1.0))
            self._sensitivity = (tenants, known, sens)
        return self._sensitivity[1], self._sensitivity[2]

    def observe(self, now: float, dataplane: Any, tenants: Mapping[int, Any], inbound: PacketFeatures | None = None,
                by_dst: Mapping[IPAddress, list[int]] | None = None,
                attacked: Iterable[tuple[int, IPAddress]] = ()) -> list[AppFinding]:
        """One tick: read the flow counters, learn the calm servers, classify the candidates.

        `tenants`: index → entry with `.policy.sensitivity` (the engine's TenantEntry); servers of other
        tenants are not judged. `attacked`: (tenant, dst) with an open incident: not learned from."""
        cfg = self.config
        dt = 0.0 if self._last_read is None else now - self._last_read
        self._last_read = now
        self.last_findings = []
        # Sources of tenants out of mitigate mode leave the list before the read: the read resets the
        # connections of blocked sources (dataplane resets at the block), which monitor mode must not do.
        self._unblock_tenants(dataplane, tenants)
        fc: FlowCounters = dataplane.read_flow_counters()
        if fc.sources is not None:
            raise ValueError("read_flow_counters(): per-destination rows expected, got per-source rows")
        if fc.evictions:
            self.counters["flow_rows_evicted"] = int(fc.evictions)
        # Connections blocked sources held, reset at their servers when blocked (dataplane totals since load).
        for name in ("block_resets_sent", "block_resets_deferred", "block_resets_unsent"):
            if getattr(fc, name, 0):
                self.counters[name] = int(getattr(fc, name))
        keys = np.asarray(fc.keys, np.uint64).reshape(-1, 2)
        cum = np.stack([fc.new_connections, fc.http_requests, fc.tls_hellos, fc.bytes_to_server,
                        fc.bytes_to_client], axis=1) if len(fc) else np.zeros((0, 5), np.uint64)
        gained = self._dst_counts.update(keys, cum)
        if dt <= 0 or not len(fc):
            return []
        tenant_idx = np.asarray(fc.tenant_idx, np.int64)
        known, sensitivity = self._tenant_table(tenants)
        est_all = np.maximum(np.asarray(fc.established, np.float64), 0.0)
        idx = np.flatnonzero(known[np.minimum(tenant_idx, MAX_TENANTS)] & ((gained.sum(axis=1) > 0) | (est_all > 0)))
        rows, freed = self.servers.rows(keys[idx], tenant_idx[idx], now)
        if len(freed):
            self.baseline.reset(freed)
            self.counters["servers_forgotten"] += len(freed)
        have = rows >= 0
        idx, rows = idx[have], rows[have]
        if not len(idx):
            return []
        g = gained[idx]
        est = est_all[idx]
        # The connections that carried the tick's bytes: those open now, or (churned within the tick)
        # those opened in it; bytes per connection are then per second, whatever the tick's length.
        conns = np.maximum(np.maximum(est, g[:, 0] / dt), 1.0)
        values = np.stack([g[:, 0] / dt, est, g[:, 1] / dt, g[:, 2] / dt, g[:, 3] / dt / conns,
                           g[:, 4] / dt / conns, g[:, 3] / np.maximum(g[:, 2], 1.0)], axis=1)
        # Short averages of new connections/s and requests-and-hellos/s: whether the new connections
        # start requests is a ratio over a few seconds (held connections open over many).
        w = 1.0 - 2.0 ** (-dt / RECENT_HALF_LIFE_S)
        srv = self.servers
        recent = srv.recent[rows]
        recent += w * (np.stack([values[:, NEW], values[:, REQ] + values[:, TLS]], axis=1) - recent)
        srv.recent[rows] = recent
        sens = sensitivity[np.minimum(tenant_idx[idx], MAX_TENANTS)]
        cap = self.baseline.baseline_threshold(rows)
        warm = self.baseline.warm(rows)
        floors = cfg.floors[None, :]
        thr = np.where(warm, np.maximum(floors, cap / sens[:, None]), floors * cfg.warmup_factor)
        candidate = (values[:, TRIGGERS] > thr[:, TRIGGERS]).any(axis=1)
        hot = candidate.copy()
        attacked = list(attacked)
        if attacked:
            at = srv.index.get(address_keys([d for _, d in attacked]))
            hot |= np.isin(rows, at[at >= 0])
        srv.candidate[rows] = candidate
        srv.hot_at[rows[hot]] = now
        for r in [r for r in srv.sources if not srv.candidate[r]]:
            del srv.sources[r]
        if inbound is not None and by_dst and candidate.any():
            self._keep_samples(rows[candidate], inbound, by_dst)
        # Per-source figures: every tick while a server is a candidate, else every source_interval_s.
        if hot.any() or self._last_source_read is None or now - self._last_source_read >= cfg.source_interval_s:
            self._read_sources(now, dataplane, rows[hot])
        findings = []
        # Seconds of an attack are not learned; a candidate with no vector (a flash crowd) is, winsorised at
        # its threshold as the volumetric baselines learn benign anomalies: a lasting step up becomes the norm
        # at the margin's pace instead of staying a candidate for ever.
        learn = np.ones_like(values, bool)
        learn[hot & ~candidate] = False
        for i in np.flatnonzero(candidate):
            r = int(rows[i])
            scores = self._classify(r, values[i], thr[i], self.baseline.mean[r], float(g[i, 3] / dt))
            if scores:
                findings.append(AppFinding(int(srv.tenant[r]), address_of_key(srv.keys[r]), scores))
                learn[i] = False
        self.baseline.update(rows, values, dt, learn, cap=cap)
        self.last_findings = findings
        return findings

    def _keep_samples(self, rows: np.ndarray, inbound: PacketFeatures, by_dst: Mapping[IPAddress, list[int]]) -> None:
        srv = self.servers
        for r in rows.tolist():
            sampled = by_dst.get(address_of_key(srv.keys[r]))
            if not sampled:
                continue
            dports = srv.dports.setdefault(r, collections.deque(maxlen=256))
            lines = srv.lines.setdefault(r, collections.deque(maxlen=256))
            for i in sampled:
                if inbound.proto[i] != PROTO_TCP or inbound.dport[i] < 0:
                    continue
                dports.append(int(inbound.dport[i]))
                if inbound.payload_len[i] > 0:
                    line = request_line(inbound.samples[i].data)
                    if line is not None:
                        lines.append(line)

    def _read_sources(self, now: float, dataplane: Any, hot_rows: np.ndarray) -> None:
        cfg = self.config
        srv = self.servers
        sdt = (now - self._last_source_read) if self._last_source_read is not None else 0.0
        self._last_source_read = now
        self._confirm_known_good(now)
        pc: FlowCounters = dataplane.read_flow_counters(per_source=True)
        if pc.sources is None:
            raise ValueError("read_flow_counters(per_source=True): per-source rows expected")
        dst_keys = np.asarray(pc.keys, np.uint64).reshape(-1, 2)
        src_keys = np.asarray(pc.sources, np.uint64).reshape(-1, 2)
        pairs = pair_keys(dst_keys, src_keys)
        cum = np.stack([pc.new_connections, pc.http_requests, pc.tls_hellos, pc.bytes_to_server,
                        pc.bytes_to_client], axis=1) if len(pc) else np.zeros((0, 5), np.uint64)
        gained = self._pair_counts.update(pairs, cum)
        if sdt <= 0 or not len(pc):
            return
        rows = srv.index.get(dst_keys)
        est = np.maximum(np.asarray(pc.established, np.float64), 0.0)
        rates = np.stack([gained[:, 0] / sdt, (gained[:, 1] + gained[:, 2]) / sdt, est], axis=1)
        active = (rows >= 0) & (rates > 0).any(axis=1)
        is_hot = np.zeros(srv.capacity, bool)
        is_hot[hot_rows] = True
        hot = active & is_hot[np.maximum(rows, 0)]
        calm = active & ~hot
        # Candidates: their sources as they are now, for classification and mitigation.
        if hot.any():
            at = np.flatnonzero(hot)
            at = at[np.argsort(rows[at], kind="stable")]
            bounds = np.flatnonzero(np.diff(rows[at])) + 1
            for part in np.split(at, bounds):
                srv.sources[int(rows[part[0]])] = _SourceView(src_keys[part], pairs[part], rates[part],
                                                              gained[part, 3] / sdt, gained[part, 2] / sdt,
                                                              gained[part, 4] / sdt, cum[part].astype(np.float64))
        if not calm.any():
            return
        # Peacetime: the per-source distributions (decayed per server as its sources are read) and the
        # known-good pairs: completed handshakes, sent data, stayed within the limits.
        at = np.flatnonzero(calm)
        r = rows[at]
        touched = np.unique(r)
        decay = 2.0 ** (-sdt / cfg.half_life_s)
        srv.hist[touched] *= np.float32(decay)
        srv.weight[touched] *= decay
        for m in range(len(SOURCE_METRICS)):
            flat = r * N_BINS + _bins(rates[at, m])
            srv.hist[:, m, :] += np.bincount(flat, minlength=srv.capacity * N_BINS).reshape(
                srv.capacity, N_BINS).astype(np.float32)
        srv.weight += np.bincount(r, minlength=srv.capacity)
        limits = srv.limits(touched, cfg)
        row_limit = np.zeros((srv.capacity, len(SOURCE_METRICS)))
        row_limit[touched] = limits
        behaved = (((gained[at, 0] > 0) | (est[at] > 0)) & (gained[at, 3] > 0)
                   & (rates[at] <= row_limit[r]).all(axis=1))
        self._pending_good.append((now, pairs[at[behaved]], r[behaved]))
        held = sum(len(p) for _, p, _ in self._pending_good)
        while held > cfg.max_known_good:
            _, dropped, _ = self._pending_good.popleft()
            held -= len(dropped)
            self.counters["known_good_unconfirmed_dropped"] += len(dropped)

    def _confirm_known_good(self, now: float) -> None:
        """Pairs read behaving at least `known_good_confirm_s` ago become known-good if their server has not
        been a candidate (nor attacked) since; those of a server that has are forgotten."""
        srv = self.servers
        while self._pending_good and self._pending_good[0][0] <= now - self.config.known_good_confirm_s:
            read_at, pairs, rows = self._pending_good.popleft()
            calm_since = srv.hot_at[rows] < read_at
            self.known_good.add(pairs[calm_since])
            self.counters["known_good_unconfirmed"] += int((~calm_since).sum())

    # -- classification ------------------------------------------------------------------------------
    def _classify(self, row: int, values: np.ndarray, thr: np.ndarray, mean: np.ndarray,
                  client_bytes: float) -> list[VectorScore]:
        """Scores of one candidate server: `values` its metrics this tick, `thr` their thresholds, `mean` the
        baseline's means, `client_bytes` what its clients sent this tick (bytes/s)."""
        cfg = self.config
        srv = self.servers
        view = srv.sources.get(row)
        normal = srv.normal(np.array([row]), cfg)[0]
        limits = srv.limits(np.array([row]), cfg)[0]
        n_sources = len(view) if view is not None else 0

        def source_share(m: int, metric_total: float, metric_mean: float, shaped: np.ndarray | None = None) -> float:
            """Share of the excess of a metric that sources above the per-source limit carry, or sources whose
            connections do what the flood's do (`shaped`: a bot of a connection flood holds one connection, as a
            client does; what it carries tells it)."""
            if view is None:
                return NEUTRAL
            col = view.rates[:, m]
            sel = col > limits[m]
            if shaped is not None:
                sel |= shaped
            carried = min(float(np.sum(col[sel])), metric_total - metric_mean)
            return float(np.clip(carried / max(metric_total - metric_mean, 1e-9), 0.0, 1.0))

        def top_share(m: int) -> float:
            if not n_sources:
                return 0.0
            col = view.rates[:, m]
            total = float(col.sum())
            top = np.sort(col)[-cfg.top_sources:]
            return float(top.sum() / total) if total > 0 else 0.0

        req_total = values[REQ] + values[TLS]
        # Do the new connections beyond the baseline start requests (or TLS sessions)? Judged on the
        # excess only: the server's usual clients keep asking whatever the flood does. Once a flood
        # of held connections stops opening new ones there is nothing to judge (neutral).
        ex_new = srv.recent[row, 0] - mean[NEW]
        ex_req = srv.recent[row, 1] - mean[REQ] - mean[TLS]
        starts = float(np.clip(ex_req / ex_new / STARTS_PER_CONN, 0.0, 1.0)) \
            if ex_new >= max(1.0, 0.05 * mean[NEW]) else NEUTRAL
        # The same question asked of the sources that do what a connection flood or slowloris does (hold
        # connections that carry nothing and got no answer, or open connections above the limit): did
        # their connections, over the pairs' whole life, start requests? A held connection does nothing
        # within a tick, so the server's recent ratio sees only what opens now, and the usual clients or
        # an HTTP flood just before blur it; the bots' own counters do not.
        held = self._held(view) if view is not None else None
        src_starts = self._source_starts(view, held, limits) if view is not None else None
        if src_starts is not None:
            starts = src_starts[0]
        scores: list[VectorScore] = []
        common = {"sources": n_sources, "normal_source": {k: round(float(v), 2) for k, v in zip(
            SOURCE_METRICS, normal, strict=True)}, **{k: round(float(v), 1) for k, v in zip(METRICS, values,
                                                                                        strict=True)},
                  "baseline": {k: round(float(v), 1) for k, v in zip(METRICS, mean, strict=True)}}
        server_of = {S_NEW: (values[NEW], mean[NEW]), S_REQ: (req_total, mean[REQ] + mean[TLS]),
                     S_EST: (values[EST], mean[EST])}
        lines = list(srv.lines.get(row, ()))

        def add(vector: Vector, gate: float, metric: int, src_metric: int, shape: str) -> None:
            share = source_share(src_metric, *server_of[src_metric],
                                 self._flood_shape(vector, view) if view is not None else None)
            rate = _rate_evidence(values[metric], thr[metric], mean[metric], share)
            if vector == Vector.HTTP_FLOOD:
                gate = share if view is not None else NEUTRAL
            conf = round(float(np.clip(rate * gate, 0.0, 1.0)), 3)
            if conf < cfg.min_confidence:
                return
            label, unit = {NEW: ("new connections", "/s"), EST: ("established connections", ""),
                           REQ: ("requests", "/s"), TLS: ("TLS hellos", "/s")}[metric]
            parts = [f"{label} {_n(values[metric])}{unit} vs baseline {_n(mean[metric])}{unit}"]
            if shape:
                parts.append(shape)
            if view is not None:
                n_above = int(np.count_nonzero(view.rates[:, src_metric] > limits[src_metric]))
                parts.append(f"{n_sources:,} sources, {n_above:,} above a normal client's "
                             f"{_n(normal[src_metric])}{'' if src_metric == S_EST else '/s'}")
            if vector == Vector.HTTP_FLOOD and len(lines) >= REQUEST_LINE_MIN_SAMPLES:
                line, k = collections.Counter(lines).most_common(1)[0]
                parts.append(f"{100 * k / len(lines):.0f} % of requests `{line}`")
            if view is not None:
                parts.append(f"top {cfg.top_sources} sources carry {100 * top_share(src_metric):.0f} %")
            evidence = {**common, "source_share": round(share, 3), "gate": round(float(gate), 3),
                        "explanation": "; ".join(parts), "top_sources": self._top(view, src_metric)}
            scores.append(VectorScore(vector, conf, None, evidence))

        if values[REQ] > thr[REQ]:
            add(Vector.HTTP_FLOOD, 0.0, REQ, S_REQ, "")
        if values[TLS] > thr[TLS]:
            # What clients send beyond the hello itself, per handshake, against the baseline's.
            after = max(values[PER_HELLO] - HELLO_BYTES, 0.0)
            usual = max(mean[PER_HELLO] - HELLO_BYTES, HELLO_BYTES)
            little = float(np.clip(1.0 - after / usual, 0.0, 1.0))
            add(Vector.TLS_FLOOD, little, TLS, S_NEW,
                f"{_n(values[PER_HELLO])} client bytes per handshake vs baseline {_n(mean[PER_HELLO])}")
        est_hot = values[EST] > thr[EST]
        if est_hot:
            # The connections beyond the baseline, and what they carry beyond the baseline's traffic (the
            # usual clients keep sending whatever the flood does).
            ex_est = max(values[EST] - mean[EST], 1.0)
            usual_bytes = mean[UP] * max(mean[EST], mean[NEW], 1.0)
            bytes_per = max(client_bytes - usual_bytes, 0.0) / ex_est
            per_conn = max(req_total - mean[REQ] - mean[TLS], 0.0) / ex_est
            tiny = _below(bytes_per, SLOW_BYTES_PER_CONN_S)
            few = _below(per_conn, FEW_REQUESTS_PER_CONN_S)
            held_conns = float(view.rates[held, S_EST].sum()) if held is not None else 0.0
            shape = (f"{_n(ex_est)} connections more than usual carry {_n(bytes_per)} client bytes/s and "
                     f"{per_conn:.2g} requests/s each")
            if view is not None:
                # The sources holding the excess say per connection what the totals say on average (and
                # the totals also carry the opening burst's request lines): their share that started a
                # request decides, times the share of the excess they hold. Open connections whose
                # requests were answered (a TLS flood's handshakes the server still holds) are no slowloris.
                gate = starts * float(np.clip(held_conns / ex_est, 0.0, 1.0))
                if held_conns:
                    shape += f"; {_held_text(view, held, src_starts)}"
            else:
                gate = tiny * few * starts
            add(Vector.SLOWLORIS, gate, EST, S_EST, shape)
        if values[NEW] > thr[NEW] or est_hot:
            metric = NEW if values[NEW] / max(thr[NEW], 1e-9) >= values[EST] / max(thr[EST], 1e-9) else EST
            per_new = max(ex_req, 0.0) / ex_new if ex_new >= 1.0 else float("nan")
            shape = f"{per_new:.2g} requests per new connection" if per_new == per_new else ""
            if src_starts is not None:
                shape = "; ".join(p for p in (shape, _held_text(view, held, src_starts)) if p)
            add(Vector.TCP_CONNECTION_FLOOD, 1.0 - starts, metric, S_NEW if metric == NEW else S_EST, shape)
        scores.sort(key=lambda s: -s.confidence)
        return scores

    def _top(self, view: _SourceView | None, m: int) -> list[dict[str, Any]]:
        if view is None or not len(view):
            return []
        order = np.argsort(-view.rates[:, m], kind="stable")[:self.config.top_sources]
        return [{"src": str(address_of_key(view.keys[i])), "new_per_s": round(float(view.rates[i, S_NEW]), 2),
                 "requests_per_s": round(float(view.rates[i, S_REQ]), 2),
                 "established": int(view.rates[i, S_EST]),
                 "client_bytes_per_s": round(float(view.client_bytes[i]), 1)} for i in order]

    # -- mitigation ----------------------------------------------------------------------------------
    def mitigate(self, now: float, dataplane: Any, incidents: Iterable[Any], tenants: Mapping[int, Any]) -> None:
        """Limits for the open incidents (active or in hold-down) with application-layer vectors of tenants
        that mitigate, and block-list entries while they are active; every other limit is withdrawn."""
        cfg = self.config
        srv = self.servers
        wanted: dict[tuple[int, IPAddress, int | None], tuple[SourceLimit, str]] = {}
        blocks: list[BlockedSource] = []
        for inc in incidents:
            vectors = [v for v in inc.vectors if v in APP_VECTORS]
            # Limits stay through the hold-down, as rules do: a flood that the limits starve of handshakes
            # looks over to the counters, and would come back the moment they went.
            if inc.target is None or not vectors or inc.state not in (State.ACTIVE, State.ENDED):
                continue
            entry = tenants.get(inc.tenant_idx)
            if entry is None or entry.mode != TenantMode.MITIGATE or not entry.policy.auto_mitigation:
                continue
            row = int(srv.index.get(address_keys([inc.target]))[0])
            if row < 0:
                continue
            vector = max(vectors, key=lambda v: inc.vectors[v])
            lim = srv.limits(np.array([row]), cfg)[0]
            dports = collections.Counter(srv.dports.get(row, ())).most_common(1)
            dport = dports[0][0] if dports else None
            new = max(cfg.limit_floor_new_per_s, math.ceil(lim[S_NEW]))
            limit = SourceLimit(tenant_idx=inc.tenant_idx, dst=inc.target, dport=dport, new_per_s=new,
                                new_burst=max(new, math.ceil(new * cfg.burst_s)),
                                max_concurrent=max(cfg.limit_floor_concurrent, math.ceil(lim[S_EST])))
            wanted[(inc.tenant_idx, inc.target, dport)] = (limit, vector)
            if inc.state == State.ACTIVE:
                # Every application-layer vector the incident has seen at this server: one flood may follow
                # another within the incident, and each has its own shape.
                blocks += self._offenders(now, row, inc.tenant_idx, inc.target, vector, lim,
                                          sorted(vectors, key=lambda v: -inc.vectors[v]))
        self._apply_limits(now, dataplane, wanted)
        self._expire_blocks(now)
        self._unblock_tenants(dataplane, tenants)
        if blocks:
            self._block(dataplane, blocks)

    def _offenders(self, now: float, row: int, tenant_idx: int, dst: IPAddress, vector: str,
                   lim: np.ndarray, shapes: Sequence[str] = ()) -> list[BlockedSource]:
        """Sources to block while `vector` is active at `row`: those above `block_factor` times a limit, and
        those doing what the flood does (`_flood_shape`: a connection-flood bot holds one connection, as a
        browser does, and only its shape tells) of `vector` or any of `shapes`, unless known-good (kept: counted as
        spared)."""
        view = self.servers.sources.get(row)
        if view is None:
            return []
        cfg = self.config
        over = (view.rates > lim[None, :] * cfg.block_factor).any(axis=1)
        shape_of = np.full(len(view), -1)
        kinds = list(dict.fromkeys([vector, *shapes]))
        # Connections held with nothing answered are the bots' whether they started a request or not: a
        # connection flood and slowloris each block both shapes (under their own names in the reason).
        held_kinds = (Vector.TCP_CONNECTION_FLOOD, Vector.SLOWLORIS)
        if any(k in held_kinds for k in kinds):
            kinds = list(dict.fromkeys([*kinds, *held_kinds]))
        for k, v in reversed(list(enumerate(kinds))):
            shape_of[self._flood_shape(v, view)] = k
        suspect = np.flatnonzero(over | (shape_of >= 0))
        if not len(suspect):
            return []
        good = self.known_good.contains(view.pairs[suspect])
        if good.any():
            self.counters["known_good_spared"] += int(good.sum())
        listed = self.blocked.get(tenant_idx, {})
        normal = self.servers.normal(np.array([row]), cfg)[0]
        expires = int((now + cfg.block_ttl_s) * 1e9)
        out = []
        for i in suspect[~good].tolist():
            src = address_of_key(view.keys[i])
            if src in listed or (tenant_idx, src) in self._evicted:
                continue
            if over[i]:
                m = int(np.argmax(view.rates[i] / lim))
                unit = "" if m == S_EST else "/s"
                reason = (f"{vector}: {SOURCE_METRICS[m].replace('_per_s', '').replace('_', ' ')} "
                          f"{_n(view.rates[i, m])}{unit} to {dst} vs limit {_n(lim[m])}{unit} "
                          f"(normal client {_n(normal[m])}{unit} × {cfg.limit_multiplier:g})")
            else:
                shape = kinds[shape_of[i]]
                reason = f"{shape}: {self._shape_reason(shape, view, i)} to {dst}"
            out.append(BlockedSource(tenant_idx=tenant_idx, src=src, expires_ns=expires, reason=reason))
        return out

    @staticmethod
    def _held(view: _SourceView) -> np.ndarray:
        """Per source: holds connections that carry nothing and were never answered (connection floods,
        slowloris). Open connections with almost no client bytes or requests now are not enough: an idle
        keep-alive client, an SSE stream or a websocket looks the same within a read. What sets them apart
        is the server's side: their requests were answered (`RESPONSE_BYTES` per request or hello, over the
        pair's life: a slowloris request never ends, a connection flood asks nothing), and a stream
        receives bytes now."""
        conns = np.maximum(np.maximum(view.rates[:, S_EST], view.rates[:, S_NEW]), 1.0)
        asked = view.life[:, L_REQ] + view.life[:, L_TLS]
        answered = view.life[:, L_DOWN] >= RESPONSE_BYTES * np.maximum(asked, 1.0)
        return ((view.rates[:, S_EST] >= 1) & (view.client_bytes / conns < SLOW_BYTES_PER_CONN_S)
                & (view.rates[:, S_REQ] / conns < FEW_REQUESTS_PER_CONN_S)
                & (view.server_bytes / conns < SLOW_BYTES_PER_CONN_S) & ~answered)

    @staticmethod
    def _started(view: _SourceView) -> np.ndarray:
        """Per source, 0..1: did its connections start requests or TLS sessions (over the pair's life)?"""
        asked = view.life[:, L_REQ] + view.life[:, L_TLS]
        opened = np.maximum(view.life[:, L_NEW], 1.0)
        return np.clip(asked / opened / STARTS_PER_CONN, 0.0, 1.0)

    def _source_starts(self, view: _SourceView, held: np.ndarray, limits: np.ndarray) -> tuple[float, int, float] | None:
        """(share of their connections that started requests, sources, connections) over the sources that
        hold connections (`held`) or open them above the limit; None when there are none."""
        churn = ~held & (view.rates[:, S_NEW] > limits[S_NEW])
        weight = np.where(held, view.rates[:, S_EST], 0.0) + np.where(churn, view.rates[:, S_NEW], 0.0)
        total = float(weight.sum())
        if total <= 0:
            return None
        return float((weight * self._started(view)).sum() / total), int(np.count_nonzero(held | churn)), total

    def _flood_shape(self, vector: str, view: _SourceView) -> np.ndarray:
        """Per source: does it do what the flood does? Held connections carrying nothing and never answered
        (`_held`; slowloris: they started requests, `_started`; a connection flood: they did not), or TLS
        handshakes with nothing after the hello (a TLS flood). HTTP floods have no such shape: their
        requests are a browser's; only the rate tells."""
        if vector in (Vector.TCP_CONNECTION_FLOOD, Vector.SLOWLORIS):
            started = self._started(view) >= 0.5
            return self._held(view) & (started if vector == Vector.SLOWLORIS else ~started)
        if vector == Vector.TLS_FLOOD:
            return (view.hellos > 0) & (view.client_bytes / np.maximum(view.hellos, 1e-9) <= HELLO_BYTES)
        return np.zeros(len(view), bool)

    @staticmethod
    def _shape_reason(vector: str, view: _SourceView, i: int) -> str:
        if vector == Vector.TLS_FLOOD:
            return (f"{view.hellos[i]:.2g} TLS hellos/s with {_n(view.client_bytes[i] / max(view.hellos[i], 1e-9))} "
                    f"client bytes each (a hello and nothing after)")
        asked = int(view.life[i, L_REQ] + view.life[i, L_TLS])
        return (f"{int(view.rates[i, S_EST])} open connections with {_n(view.client_bytes[i])} client bytes/s and "
                f"{view.rates[i, S_REQ]:.2g} requests/s, {asked} requests started in {int(view.life[i, L_NEW])} "
                f"connections and {_n(view.life[i, L_DOWN])} bytes answered")

    def _apply_limits(self, now: float, dataplane: Any, wanted: Mapping[tuple, tuple[SourceLimit, str]]) -> None:
        cfg = self.config
        changed = self._limits_unsent
        # A limit the cap pushed out stays out while its incident lasts (else the full set would swap
        # its oldest limit for the next one every tick).
        self._limits_capped &= set(wanted)
        for key in [k for k in self.limits if k not in wanted]:
            entry = self.limits.pop(key)
            log.info("appflood.limit_withdrawn", tenant_idx=key[0], dst=str(key[1]), dport=key[2], vector=entry.vector)
            changed = True
        for key, (limit, vector) in wanted.items():
            old = self.limits.get(key)
            if (old is not None and old.limit == limit) or key in self._limits_capped:
                continue
            if old is None:
                log.info("appflood.limit", tenant_idx=limit.tenant_idx, dst=str(limit.dst), dport=limit.dport,
                         vector=vector, new_per_s=limit.new_per_s, max_concurrent=limit.max_concurrent)
            self.limits[key] = _LimitEntry(limit, old.since if old is not None else now, vector)
            changed = True
        while len(self.limits) > cfg.max_limits:
            key, _ = self.limits.popitem(last=False)
            self._limits_capped.add(key)
            self.counters["limits_evicted"] += 1
            log.warning("appflood.limit_cap", tenant_idx=key[0], dst=str(key[1]), cap=cfg.max_limits)
        if changed:
            # Sent again next tick if the dataplane refuses them now.
            self._limits_unsent = True
            dataplane.set_source_limits([e.limit for e in self.limits.values()])
            self._limits_unsent = False

    def _expire_blocks(self, now: float) -> None:
        now_ns = int(now * 1e9)
        for t, listed in list(self.blocked.items()):
            for src in [s for s, b in listed.items() if b.expires_ns <= now_ns]:
                del listed[src]
            if not listed:
                del self.blocked[t]
        while self._evicted and next(iter(self._evicted.values())) <= now_ns:
            self._evicted.popitem(last=False)

    def _unblock_tenants(self, dataplane: Any, tenants: Mapping[int, Any]) -> None:
        """Tenants gone, in monitor mode or without auto-mitigation keep no blocked sources."""
        for t in list(self.blocked):
            entry = tenants.get(t)
            if entry is not None and entry.mode == TenantMode.MITIGATE and entry.policy.auto_mitigation:
                continue
            for src in list(self.blocked[t]):
                dataplane.unblock_source(t, src)
                del self.blocked[t][src]
            del self.blocked[t]
            log.info("appflood.unblocked_tenant", tenant_idx=t)

    def _block(self, dataplane: Any, entries: Sequence[BlockedSource]) -> None:
        cfg = self.config
        evict: list[BlockedSource] = []
        for b in entries:
            listed = self.blocked.setdefault(b.tenant_idx, collections.OrderedDict())
            listed[b.src] = b
            if len(listed) > cfg.max_blocked_per_tenant:
                evict.append(listed.popitem(last=False)[1])
        total = sum(len(v) for v in self.blocked.values())
        while total > cfg.max_blocked:
            oldest = min((v for v in self.blocked.values() if v), key=lambda v: next(iter(v.values())).expires_ns)
            evict.append(oldest.popitem(last=False)[1])
            total -= 1
        evicted = {(e.tenant_idx, e.src) for e in evict}
        new = [b for b in entries if (b.tenant_idx, b.src) not in evicted]
        offered = {(b.tenant_idx, b.src) for b in entries}
        for e in evict:
            self.counters["blocks_evicted"] += 1
            self._evicted[(e.tenant_idx, e.src)] = e.expires_ns
            if len(self._evicted) > cfg.max_blocked:
                self._evicted.popitem(last=False)
            if (e.tenant_idx, e.src) not in offered:       # already in the dataplane: take it out
                dataplane.unblock_source(e.tenant_idx, e.src)
        if not new:
            return
        try:
            dataplane.block_sources(new)
        except Exception:
            # Not on the list then: the next tick finds the same sources and offers them again.
            for b in new:
                self.blocked.get(b.tenant_idx, {}).pop(b.src, None)
            raise
        self.counters["blocks_added"] += len(new)
        log.warning("appflood.block", sources=len(new), tenants=sorted({b.tenant_idx for b in new}),
                    first=str(new[0].src), reason=new[0].reason)

    def blocked_sources(self, tenant_idx: int, now: float, wall: float, limit: int = 256) -> list[dict[str, Any]]:
        """The newest `limit` entries of a tenant's block list: source, reason and expiry (seconds since the
        epoch, from the monotonic `now` and the wall clock `wall` read together). Safe to call from another
        thread while a tick runs (copied with one C-level call first)."""
        listed = list((self.blocked.get(tenant_idx) or {}).values())[-limit:]
        return [{"src": str(b.src), "reason": b.reason, "expires": round(wall + b.expires_ns / 1e9 - now, 1)}
                for b in reversed(listed) if b.expires_ns / 1e9 > now]

    def blocked_count(self, tenant_idx: int) -> int:
        return len(self.blocked.get(tenant_idx) or ())

    def status(self) -> dict[str, Any]:
        """Safe to call from another thread while a tick runs (the block lists copied with one C-level call)."""
        return {"servers": len(self.servers), "known_good": len(self.known_good), "limits": len(self.limits),
                "blocked_sources": sum(len(v) for v in list(self.blocked.values())), "counters": dict(self.counters),
                "disabled": self.disabled}


__all__ = ["AppFloodConfig", "AppFloodDetector", "AppFinding", "CounterIncrements", "request_line", "pair_keys", "METRICS"]
