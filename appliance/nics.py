"""What the kernel must offer on the two NICs before the bridge can forward: checked over netlink.

A frame the program redirects to a veth is handed to the veth's peer through the
peer's NAPI, which exists only while the peer has GRO switched on or an XDP program
attached (drivers/net/veth.c: veth_xdp_xmit). Without either, the kernel drops every
redirected frame and counts it nowhere the operator looks, so `seawall run` on such a
veth would attach, report its tenants, and forward nothing. `redirect_problems` finds
that case before anything is attached and says what to run.

Links come from rtnetlink through pyroute2 (`IPRoute.link("get")`: the kind, the
peer's ifindex in IFLA_LINK and, for a peer in another namespace, IFLA_LINK_NETNSID;
the peer's XDP program in IFLA_XDP). pyroute2's rtnetlink does not carry device
features, so GRO comes from pyroute2's `ethtool` module (the ETHTOOL_GFEATURES ioctl
`ethtool -k` uses), run inside the peer's namespace.

pyroute2's synchronous sockets run their own event loop: call these functions from a
thread (asyncio.to_thread), not from a coroutine.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from appliance.lab.nsenter import NETNS_RUN_DIR, run_in_netns

GRO_FEATURE = "rx-gro"   # ethtool's name for NETIF_F_GRO
IFF_UP = 0x1             # <linux/if.h>: the interface is administratively up


@dataclasses.dataclass(frozen=True, slots=True)
class VethPeer:
    """The other end of one of the appliance's NICs that is a veth."""

    nic: str                  # the appliance's NIC
    name: str | None          # the peer's interface name; None when its namespace cannot be entered
    ifindex: int              # in the peer's namespace
    namespace: str | None     # `ip netns` name of the peer's namespace; None: the appliance's own
    netnsid: int | None       # the peer's namespace as the NIC's netlink reports it; None: the same one
    gro: bool | None          # GRO switched on (None: unknown)
    xdp: bool | None          # an XDP program attached (None: unknown)

    @property
    def takes_redirects(self) -> bool | None:
        """Whether frames redirected to `nic` reach the peer (None: could not tell)."""
        if self.gro or self.xdp:
            return True
        if self.gro is None or self.xdp is None:
            return None
        return False

    def command(self) -> str:
        """The command that lets the peer take redirected frames."""
        prefix = f"ip netns exec {self.namespace} " if self.namespace else ""
        return f"{prefix}ethtool -K {self.name or f'<ifindex {self.ifindex}>'} gro on"

    def where(self) -> str:
        name = self.name or f"ifindex {self.ifindex}"
        if self.namespace:
            return f"{name!r} in network namespace {self.namespace!r}"
        if self.netnsid is not None:
            return f"{name!r} in the network namespace with id {self.netnsid} (no `ip netns` name)"
        return f"{name!r}"


def veth_peer(nic: str) -> VethPeer | None:
    """The peer of `nic` when it is a veth, else None. OSError when `nic` is missing."""
    from pyroute2 import IPRoute  # noqa: PLC0415 - netlink only where a NIC is checked
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    try:
        return _veth_peer(IPRoute, nic)
    except NetlinkError as exc:  # not an OSError in pyroute2; callers handle one kind of failure
        raise OSError(exc.code, f"{nic}: {exc}") from exc


def _veth_peer(IPRoute, nic: str) -> VethPeer | None:  # noqa: N803 - the class, passed in
    with IPRoute() as ipr:
        (link,) = ipr.link("get", ifname=nic)
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "veth":
            return None
        peer_index = link.get_attr("IFLA_LINK")
        netnsid = link.get_attr("IFLA_LINK_NETNSID")
        namespace = None if netnsid is None else _namespace_name(ipr, netnsid)
    if netnsid is not None and namespace is None:
        return VethPeer(nic, None, peer_index, None, netnsid, None, None)
    name, gro, xdp = (run_in_netns(namespace, _peer_state, peer_index) if namespace
                      else _peer_state(peer_index))
    return VethPeer(nic, name, peer_index, namespace, netnsid, gro, xdp)


def _namespace_name(ipr, netnsid: int) -> str | None:
    """The `ip netns` name whose namespace carries `netnsid` as seen from ours, if any."""
    names = sorted(p.name for p in NETNS_RUN_DIR.iterdir()) if NETNS_RUN_DIR.is_dir() else []
    for name in names:
        try:
            fd = os.open(pathlib.Path(NETNS_RUN_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            answer = ipr.get_netnsid(fd=fd)
        except Exception:  # noqa: BLE001 - NetlinkError or OSError: not a namespace (a stale mount point)
            continue
        finally:
            os.close(fd)
        if answer and answer.get("nsid") == netnsid:
            return name
    return None


def _peer_state(ifindex: int) -> tuple[str, bool | None, bool]:
    """(name, GRO on, XDP program attached) of the link `ifindex` of the calling thread's namespace."""
    from pyroute2 import IPRoute  # noqa: PLC0415
    from pyroute2.ethtool import Ethtool  # noqa: PLC0415

    with IPRoute() as ipr:
        (link,) = ipr.link("get", index=ifindex)
    name = link.get_attr("IFLA_IFNAME")
    xdp_attrs = link.get_attr("IFLA_XDP")
    xdp = bool(xdp_attrs is not None and xdp_attrs.get_attr("IFLA_XDP_PROG_ID"))
    with Ethtool() as ethtool:
        feature = ethtool.get_features(name).features.get(GRO_FEATURE)
    return name, None if feature is None else bool(feature.enable), xdp


@dataclasses.dataclass(frozen=True, slots=True)
class LinkState:
    """What the kernel says of one of the appliance's NICs, as far as forwarding goes."""

    name: str
    up: bool                  # administratively up with carrier (operstate UP)
    xdp_prog_id: int          # the XDP program attached; 0: none

    def problem(self) -> str | None:
        if not self.up:
            return f"{self.name} is down or has no carrier"
        if not self.xdp_prog_id:
            return f"{self.name} has no XDP program attached"
        return None


def link_state(nic: str) -> LinkState:
    """`nic`'s operational state and XDP program, from rtnetlink; OSError when it is gone."""
    from pyroute2 import IPRoute  # noqa: PLC0415
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    try:
        with IPRoute() as ipr:
            (link,) = ipr.link("get", ifname=nic)
    except NetlinkError as exc:
        raise OSError(exc.code, f"{nic}: {exc}") from exc
    xdp_attrs = link.get_attr("IFLA_XDP")
    prog_id = (xdp_attrs.get_attr("IFLA_XDP_PROG_ID") if xdp_attrs is not None else None) or 0
    # Drivers without carrier reporting say UNKNOWN (RFC 2863) while they pass traffic.
    up = bool(link["flags"] & IFF_UP) and link.get_attr("IFLA_CARRIER") == 1 \
        and link.get_attr("IFLA_OPERSTATE") in ("UP", "UNKNOWN")
    return LinkState(nic, up, int(prog_id))


def redirect_problems(nics: tuple[str, ...] | list[str]) -> tuple[list[str], list[str]]:
    """(problems, warnings) for frames the program redirects to one of `nics`: a problem is a peer
    that would drop them all, with the command that fixes it; a warning a peer that cannot be
    inspected (a namespace without an `ip netns` name), which the operator has to check."""
    problems, warnings = [], []
    for nic in nics:
        peer = veth_peer(nic)
        if peer is None or peer.takes_redirects:
            continue
        if peer.takes_redirects is None:
            warnings.append(f"{nic}: a veth whose peer is {peer.where()}, which cannot be inspected; the kernel "
                            f"drops every frame redirected to {nic} unless that peer has GRO on "
                            f"(`ethtool -K PEER gro on` in its namespace) or an XDP program attached")
            continue
        problems.append(f"{nic}: a veth whose peer {peer.where()} has neither GRO on nor an XDP program, so the "
                        f"kernel would drop every frame bridged to {nic}; run `{peer.command()}`")
    return problems, warnings
