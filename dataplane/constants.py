"""Enumerations and limits shared by the XDP program and Python: the one source of truth.

Every value here reaches the C compile as a `-D` macro (see `cflags()`), so the
program and the control plane can never disagree: enumerations as SW_<TYPE>_<MEMBER>
(and SW_<TYPE>__COUNT), flag sets (IntFlag) as SW_<PREFIX>_<MEMBER> unsigned bits,
limits as SW_<NAME>. The C sources define none of these names themselves (a unit test
checks). Struct layouts, by contrast, live in `bpf/seawall.h` and reach Python through
bcc's `table.Key`/`table.Leaf`.
"""

from __future__ import annotations

import enum
import os
import pathlib


class Direction(enum.IntEnum):
    """Which NIC a frame entered on."""

    INBOUND = 0   # external (upstream) -> internal (customers)
    OUTBOUND = 1  # internal -> external


class TrafficClass(enum.IntEnum):
    """Coarse class of a packet, used for counters, baselines and token buckets."""

    TCP_SYN = 0
    TCP_OTHER = 1
    UDP = 2
    ICMP = 3
    FRAGMENT = 4  # every fragment, first or later
    OTHER = 5


class DropReason(enum.IntEnum):
    """Why the program dropped a packet (counter index and sample tag)."""

    NONE = 0
    DENY_LIST = 1
    BAD_LENGTH = 2      # IP header or total length inconsistent with the frame
    BAD_TCP_FLAGS = 3   # NULL, SYN+FIN, SYN+RST, XMAS
    LAND = 4            # source address equals destination address
    PORT_ZERO = 5       # TCP or UDP source or destination port 0
    RULE = 6            # a dynamic rule with action drop
    RATE_LIMIT = 7      # a dynamic rule with action rate-limit, over its rate
    HEURISTIC = 8       # always-on heuristics (SYN, reflection, per-class buckets)
    MALFORMED = 9       # a header that claims more bytes than the frame holds
    SYN_COOKIE = 10     # answered by the bridge itself (cookie SYN-ACK to a SYN, reset to a cookie ACK, XDP_TX):
                        # never reaches the server (bpf/synauth.h)
    SOURCE_LIMIT = 11   # a SYN over its source's limit on new or open connections (bpf/flows.h)
    BLOCKED = 12        # from a source on the tenant's dynamic block list (bpf/flows.h)


class SynAuthStat(enum.IntEnum):
    """Counters of SYN authentication (sw_synauth_stats, per CPU, appliance-wide; bpf/synauth.h)."""

    SYNACK_SENT = 0         # cookie SYN-ACKs the bridge sent (XDP_TX)
    SYNACK_BUDGET = 1       # SYNs dropped because a SYN-ACK budget (per destination or appliance-wide) was spent
    COOKIE_VALID = 2        # ACKs whose cookie validated their source
    COOKIE_INVALID = 3      # pure ACKs of unknown sources without a valid cookie (passed on to the usual checks)
    RST_SENT = 4            # resets the bridge sent after a valid cookie ACK (reset-and-retry)
    VALIDATED_SYN = 5       # SYNs of validated sources, past their own limit, bypassing the shared SYN limits
    SOURCE_OVER_LIMIT = 6   # SYNs of validated sources dropped over their own per-source limit
    INELIGIBLE = 7          # SYNs that cannot take a cookie (IPv4 options, IPv6 extension headers): dropped
    GEN_ERROR = 8           # the kernel's cookie helper failed (counted, dropped)
    SPLICE_SYN = 9          # cookie ACKs turned into the client's SYN to the server (a splice opened)
    SPLICE_OPEN = 10        # servers' SYN-ACKs of splices turned into the client's window update
    SPLICE_ACK_TO_SERVER = 11  # servers' retransmitted SYN-ACKs answered by the bridge (XDP_TX inside)
    SPLICE_SERVER_RST = 12  # servers' resets of a splice in SYN_SENT, translated to the client
    SPLICE_EARLY_DROP = 13  # client segments of a splice before the server answered: dropped
    SPLICE_SYN_RETRY = 14   # SYNs sent again to a server that had not answered (on the client's probe)
    SPLICE_BAD_SYNACK = 15  # SYN-ACKs of a splice's tuple that do not answer its SYN: dropped


class FlowStat(enum.IntEnum):
    """Counters of connection accounting and its limits (sw_flow_stats, per CPU, appliance-wide;
    bpf/flows.h). Rows made minus rows present (minus connections closed) are the LRU's evictions."""

    CONNECTIONS_OPENED = 0        # entries made in sw_flow_conns (a handshake completed)
    CONNECTIONS_CLOSED = 1        # entries removed by a FIN or RST
    DESTINATION_ROWS = 2          # rows made in sw_flow_dests
    SOURCE_ROWS = 3               # rows made in sw_flow_pairs
    LIMIT_RATE_DROPS = 4          # SYNs over their source's new-connection rate (monitor mode: would drop)
    LIMIT_CONCURRENT_DROPS = 5    # SYNs of a source already holding max_concurrent connections
    BLOCK_DROPS = 6               # packets of blocked sources
    BLOCK_RESETS = 7              # segments of blocked sources sent on to the server as a reset of its connection
    ACCOUNTING_CALLS = 8          # segments that paid the accounting program's tail call (SW_PROG_FLOWS)
    HANDSHAKES_STARTED = 9        # entries made in sw_flow_handshakes (a client's SYN, or a splice's SYN-ACK)
    HANDSHAKES_ENDED = 10         # ... removed: completed (the connection moves to sw_flow_conns) or refused
    BLOCK_RESETS_SENT = 11        # resets of held connections the program wrote (xdp_seawall_reset_held, XDP_TX);
                                  # the sends are counted in user space (dataplane.flows, `block_resets_sent`)


class FlowState(enum.IntEnum):
    """struct sw_flow_conn.state: where a tracked connection's handshake is (bpf/flows.h)."""

    SYN = 1           # the client's SYN reached the server
    SYN_ACK = 2       # the server answered
    ESTABLISHED = 3   # the client's ACK completed the server's handshake
    RESET = 4         # no longer open: the bridge reset it (a blocked source), or it is closing


class FlowGate(enum.IntFlag):
    """sw_flow_gate: which of the mitigation maps hold entries, so that empty ones cost no lookup."""

    BLOCKED = 1 << 0   # sw_blocked
    LIMITS = 1 << 1    # sw_source_limits


class Verdict(enum.IntEnum):
    PASS = 0
    DROP = 1


class RuleAction(enum.IntEnum):
    DROP = 0
    RATE_LIMIT = 1
    COUNT = 2  # match and count only (monitor mode)


class TenantMode(enum.IntEnum):
    MONITOR = 0   # count and report, never drop
    MITIGATE = 1


class AclKind(enum.IntEnum):
    ALLOW = 0
    DENY = 1


class EtherType(enum.IntEnum):
    """Ethernet types both parsers (the program's and the sample parser's) read (SW_ETH_P_*)."""

    IP = 0x0800
    IPV6 = 0x86DD
    VLAN = 0x8100    # 802.1Q
    QINQ = 0x88A8    # 802.1ad


class IpProto(enum.IntEnum):
    """IP protocol numbers both parsers read, IPv6 extension headers included (SW_IPPROTO_*)."""

    HOPOPTS = 0
    ICMP = 1
    TCP = 6
    UDP = 17
    ROUTING = 43
    FRAGMENT = 44
    AH = 51
    ICMPV6 = 58
    DSTOPTS = 60


class TcpFlag(enum.IntFlag):
    """TCP header flags (SW_TCP_*)."""

    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20


class ReflectionFilter(enum.IntEnum):
    """`policy.reflection_filter` as the dataplane applies it (policy flags REFLECTION_*)."""

    OFF = 0
    AUTO = 1     # only while the tenant is under attack
    ALWAYS = 2


class Scope(enum.IntEnum):
    """What a rule set or an attack mark is keyed by (struct sw_rule_set_key.scope)."""

    ADDRESS = 0   # one destination address
    TENANT = 1    # every address of the tenant


class Port(enum.IntEnum):
    """Devmap keys (sw_ports): the port a frame leaves on."""

    EXTERNAL = 0
    INTERNAL = 1


class PolicyFlag(enum.IntFlag):
    """struct sw_policy.flags (16 bits), and the bits the address cache adds to its copy of
    them (sw_addr_entry.policy_flags) so that one load and one test per packet decide what the
    usual packet skips."""

    INVALID_FILTERS = 1 << 0
    HAS_ALLOW = 1 << 1
    HAS_DENY = 1 << 2
    SYN_PROTECTION = 1 << 3
    REFLECTION_ALWAYS = 1 << 4
    REFLECTION_AUTO = 1 << 5
    HAS_BUDGET = 1 << 6                  # some per-destination class budget is set
    SYN_RESET = 1 << 7                   # syn_auth = "reset": a valid cookie ACK is reset (else spliced)
    SLOT_PLAIN = 1 << 12                 # cache only: protected, enforcing, and nothing but the invalid-packet
                                         # filters to check (no list, heuristic, rule or budget): the short path
    SLOT_PROTECTED = 1 << 13             # cache only: the tenant's policy is in use in the active slot
    SLOT_MONITOR = 1 << 14               # cache only: ... in monitor mode (count what would drop, pass it)
    SLOT_LISTS_OR_HEURISTICS = 1 << 15   # cache only: lists, reflection always on, or an attack mark


class RuleMatch(enum.IntFlag):
    """struct sw_rule.match: which optional fields a rule checks."""

    PROTO = 1 << 0
    SPORT = 1 << 1
    DPORT = 1 << 2
    LENGTH = 1 << 3
    TTL = 1 << 4
    TCP_FLAGS = 1 << 5
    PAYLOAD = 1 << 6
    FRAGMENT = 1 << 7        # only fragments
    NOT_FRAGMENT = 1 << 8    # only non-fragments


# Traffic classes with a per-destination budget, in the order of their slots in struct
# sw_policy.rate_pps[] and sw_addr_entry.budget_*[] (the program finds a class's slot through
# SW_BUDGET_SLOT_OF_CLASS), each with the tenant policy field that sets it, packets/s.
BUDGET_FIELDS: dict[TrafficClass, str] = {
    TrafficClass.TCP_SYN: "syn_rate_pps",
    TrafficClass.UDP: "udp_rate_pps",
    TrafficClass.ICMP: "icmp_rate_pps",
    TrafficClass.FRAGMENT: "fragment_rate_pps",
}
BUDGET_CLASSES: tuple[TrafficClass, ...] = tuple(BUDGET_FIELDS)
# packets/s: the largest class rate the dataplane holds (sw_policy.rate_pps[] are __u32; a larger
# number would wrap, 4294967306 -> 10 pps). Tenant policy numbers are bounded by it.
RATE_PPS_MAX = 0xFFFFFFFF


# Limits. Sizes are entries unless a unit is given.
MAX_TENANTS = 16384            # tenant slots; indices are stable for a tenant's lifetime
MAX_PREFIXES = 65536           # per address family, per tenant-set slot
MAX_ACL_PREFIXES = 16384       # allow+deny keys per family, per slot
ACL_ENTRIES_PER_PREFIX = 8     # port/proto entries sharing one source prefix (after expansion)
MAX_RULES = 4096               # dynamic rules installed at once
RULES_PER_TARGET = 8           # rules attached to one destination (or tenant-wide)
ADDRESS_CACHE_BITS = 16        # direct-mapped address cache: 2**16 slots per CPU
MAX_ADDRESSES = 262144         # addresses whose counters outlive their cache slot (slots of the spill store)
ADDRESS_OVERFLOW_ENTRIES = MAX_ADDRESSES // 4   # LRU map of spills when every store slot is taken (sizing.overflow_entries)
PAYLOAD_MATCH_BYTES = 8        # leading payload bytes a rule can match
SAMPLE_BYTES = 128             # bytes of each sampled packet copied to user space
RINGBUF_PAGES = 256            # sample ring buffer size, in 4 KiB pages (1 MiB)
MAX_VLAN_DEPTH = 2             # 802.1Q and QinQ
MAX_IPV6_EXT_HEADERS = 6       # extension headers walked before giving up (counted OTHER)
NO_TENANT = 0xFFFFFFFF         # tenant index meaning "no tenant owns this address"
TENANT_SET_SLOTS = 2           # double-buffered tenant sets, flipped atomically

IPPROTO = {"icmp": int(IpProto.ICMP), "tcp": int(IpProto.TCP), "udp": int(IpProto.UDP),
           "icmpv6": int(IpProto.ICMPV6)}   # protocol names of the tenant configuration

# UDP source ports of amplification reflectors: replies from them reach a customer
# address only if that address asked (stateful reflection filter).
REFLECTION_PORTS = (17, 19, 53, 69, 111, 123, 137, 161, 389, 520, 1900, 3283, 3702, 5353, 5683, 10001, 11211)
MAX_FLOWS = 65536               # learned requests, SYN-ACKs, validated sources, SYN-ACK budgets (each, LRU)
REFLECTION_WINDOW_MS = 30000    # a request admits replies from its reflector for this long, milliseconds
SYN_VALIDATED_TTL_MS = 600000   # a source that returned a cookie or completed a handshake is trusted this long, ms
BUDGET_BURST_MS = 100           # a per-destination class budget holds this much of its rate as burst, milliseconds
CONN_GRACE_MS = 5000            # after an ACK/RST/FIN flood starts, connections are learned this long first, ms
CONN_IDLE_MS = 120000           # a learned connection is forgotten after this long without server traffic, ms
TCP_OPEN_WINDOW_MS = 10000      # a server's SYN admits the peer's SYN-ACK this long (retransmits renew it), ms
# SYN authentication (bpf/synauth.h, docs/design/syn-cookies.md): under a SYN attack the bridge answers unknown
# sources' SYNs with cookie SYN-ACKs; a valid cookie ACK validates the source for SYN_VALIDATED_TTL_MS.
SYN_SOURCE_PPS = 100            # a validated source's own SYN limit, SYN/s (a browser opens <= 6 per host; CGNAT more)
SYN_SOURCE_BURST = 200          # ... and its burst, SYNs (2 s of the rate)
SYNACK_RATE_PPS = 20000         # cookie SYN-ACKs per protected destination, SYN-ACK/s (never a reflector)
SYNACK_GLOBAL_PPS = 1000000     # cookie SYN-ACKs of the whole appliance, SYN-ACK/s (1:1 with the SYNs causing them)
SYNACK_BURST_MS = 100           # a SYN-ACK budget holds this much of its rate as burst, milliseconds
SYNACK_TTL = 64                 # TTL / hop limit of the SYN-ACKs and resets the bridge writes, hops
SYNACK_WINDOW = 65535           # receive window of the cookie SYN-ACK, bytes (no window scaling: the cookie cannot carry it)
# The splice (syn_auth = "splice"): after a valid cookie ACK the bridge sends the client's SYN to the server
# and translates sequence numbers for the connection's life (sw_splices, pinned).
MAX_SPLICES = 131072            # spliced connections at once, entries (LRU: an evicted one breaks)
SPLICE_IDLE_MS = 7875000        # a destination translates splices until this long after its last spliced
                                # packet, ms (Linux keepalive gives up after 7,200 s + 9 x 75 s)
SPLICE_TOUCH_MS = 1000          # ... and that time is written at most this often, ms (one shared word)
SPLICE_SYN_RETRY_MS = 200       # a client's probe this long after the SYN to a silent server resends it, ms
# Connection accounting, per-source limits and the block list (bpf/flows.h, docs/design/connection-accounting.md).
# The sizes are defaults of [appliance] keys (dataplane.sizing.FlowSizes), entries; LRU maps unless said.
FLOW_TABLE_ENTRIES = 131072     # connections tracked at once (flow_table_entries): ~20 MiB of kernel memory
FLOW_HANDSHAKE_ENTRIES = 65536  # handshakes awaiting the server's SYN-ACK or the client's ACK (flow_handshake_entries),
                                # apart from the connections so that a SYN flood cannot push those out: ~5 MiB
FLOW_DESTINATION_ENTRIES = 65536  # destinations with counters (flow_destination_entries)
FLOW_SOURCE_ENTRIES = 131072    # (destination, source) rows, and as many per-source limit buckets (flow_source_entries)
BLOCKED_SOURCES_MAX = 65536     # (tenant, source) entries of the dynamic block list (blocked_sources_max; a hash
                                # map that user space keeps below its cap, dropping the oldest)
SOURCE_LIMITS_MAX = 1024        # (tenant, destination, port) limit entries (source_limits_max; a hash map)
FLOW_FLUSH_BYTES = 16384        # a connection adds its bytes to its rows once this many accumulated, bytes
FLOW_PENDING_BITS = 16          # handshakes awaiting the client's ACK: 2**16 slots (512 KiB: 8 bytes a slot), log2
BLOCK_RESET_DELAY_MS = 1500     # a newly blocked source's held connections are reset this long after the block, ms,
                                # and never before the engine's first read of the flow counters after the block has
                                # taken its rows (whatever tick_ms, 100..10,000), so that the tick after the
                                # block still sees the connections it blocked (an incident opened by an earlier
                                # vector blocks by shape at first sight, before the new vector's confidence has
                                # grown: resetting at once left it below 0.8 in one lab run of two), and far less than
                                # a server's idle timeout (10 s in the lab, minutes on real servers)
BLOCK_RESETS_PER_TICK = 4096    # held connections of newly blocked sources reset at their server per engine
                                # tick, resets (one BPF_PROG_TEST_RUN and one send each, ~10 us: ~40 ms);
                                # the rest wait for the next tick (dataplane.flows, `block_resets_deferred`)
BLOCK_RESET_SEND_TRIES = 3      # sends of one reset frame, one per engine tick, before it counts as unsent (the
                                # program moved the entry out of ESTABLISHED already: a refused send is not redone
                                # from the entry), tries
BLOCK_RESET_RETRY_MAX = 4096    # reset frames waiting for another send (a full socket buffer, a NIC down), frames:
                                # past it the oldest count as unsent


# Macro prefixes of the flag sets (the C names they have always had).
_FLAG_PREFIXES: dict[type[enum.IntFlag], str] = {PolicyFlag: "SW_POLICY", RuleMatch: "SW_MATCH", TcpFlag: "SW_TCP",
                                                 FlowGate: "SW_FLOW_GATE"}
# ... and of the enumerations whose C names are not SW_<TYPE_IN_SNAKE_CASE>.
_ENUM_PREFIXES: dict[type[enum.IntEnum], str] = {EtherType: "SW_ETH_P", IpProto: "SW_IPPROTO"}
_NO_BUDGET_SLOT = 0xF   # SW_BUDGET_SLOT_OF_CLASS nibble of a class without a budget


def budget_slot_of_class() -> int:
    """SW_BUDGET_SLOT_OF_CLASS: 4 bits per traffic class (class c at bits 4c..4c+3), its slot in
    BUDGET_CLASSES or 0xF, so the program finds a class's budget with a shift and a mask."""
    table = 0
    for cls in TrafficClass:
        slot = BUDGET_CLASSES.index(cls) if cls in BUDGET_CLASSES else _NO_BUDGET_SLOT
        table |= slot << (4 * int(cls))
    return table


def cflags() -> list[str]:
    """The -D flags that give the C program every enumeration, flag and limit above."""
    flags: list[str] = []
    for enum_type in (Direction, TrafficClass, DropReason, SynAuthStat, FlowStat, FlowState, Verdict, RuleAction, TenantMode, AclKind, Scope, Port,
                      EtherType, IpProto):
        prefix = _ENUM_PREFIXES.get(enum_type) or _macro_prefix(enum_type)
        flags += [f"-D{prefix}_{member.name}={int(member)}" for member in enum_type]
        flags.append(f"-D{prefix}__COUNT={len(enum_type)}")
    for flag_type, prefix in _FLAG_PREFIXES.items():
        flags += [f"-D{prefix}_{member.name}={int(member)}U" for member in flag_type]
    flags.append(f"-DSW_BUDGET_CLASSES={len(BUDGET_CLASSES)}U")
    flags.append(f"-DSW_BUDGET_SLOT_OF_CLASS={budget_slot_of_class():#x}U")
    for name in ("MAX_TENANTS", "MAX_PREFIXES", "MAX_ACL_PREFIXES", "ACL_ENTRIES_PER_PREFIX",
                 "MAX_RULES", "RULES_PER_TARGET", "MAX_ADDRESSES", "ADDRESS_OVERFLOW_ENTRIES", "ADDRESS_CACHE_BITS", "PAYLOAD_MATCH_BYTES",
                 "SAMPLE_BYTES", "RINGBUF_PAGES", "MAX_VLAN_DEPTH", "MAX_IPV6_EXT_HEADERS",
                 "NO_TENANT", "TENANT_SET_SLOTS", "MAX_FLOWS", "REFLECTION_WINDOW_MS",
                 "SYN_VALIDATED_TTL_MS", "BUDGET_BURST_MS", "CONN_GRACE_MS", "CONN_IDLE_MS", "TCP_OPEN_WINDOW_MS",
                 "SYN_SOURCE_PPS", "SYN_SOURCE_BURST",
                 "SYNACK_RATE_PPS", "SYNACK_GLOBAL_PPS", "SYNACK_BURST_MS", "SYNACK_TTL", "SYNACK_WINDOW",
                 "MAX_SPLICES", "SPLICE_IDLE_MS", "SPLICE_TOUCH_MS", "SPLICE_SYN_RETRY_MS",
                 "FLOW_TABLE_ENTRIES", "FLOW_HANDSHAKE_ENTRIES", "FLOW_DESTINATION_ENTRIES", "FLOW_SOURCE_ENTRIES", "BLOCKED_SOURCES_MAX",
                 "SOURCE_LIMITS_MAX", "FLOW_FLUSH_BYTES", "FLOW_PENDING_BITS"):
        flags.append(f"-DSW_{name}={globals()[name]}U")
    # Per-destination budgets live in per-CPU memory: each CPU admits its share of the rate.
    flags.append(f"-DSW_NR_CPUS={max(os.cpu_count() or 1, 1)}U")
    flags.append(f"-DSW_CPU_REGIONS={cpu_regions()}U")
    return flags


def cpu_regions(possible: str | None = None) -> int:
    """How many CPU ids the kernel can hand out (highest possible CPU + 1): maps kept per CPU by
    hand, such as the address cache, hold one region per id. `possible` is the text of
    /sys/devices/system/cpu/possible ("0-3", "0,2-5"), read when not given."""
    text = possible if possible is not None else pathlib.Path("/sys/devices/system/cpu/possible").read_text()
    ids = [int(end) for part in text.strip().split(",") if part for end in part.split("-")]
    if not ids:
        raise ValueError(f"cannot parse the possible CPUs {text!r}")
    return max(ids) + 1


def _macro_prefix(enum_type: type[enum.IntEnum]) -> str:
    snake = "".join("_" + c if c.isupper() and i else c for i, c in enumerate(enum_type.__name__))
    return "SW_" + snake.upper()
