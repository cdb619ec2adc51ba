"""Netlink for the lab and the benchmarks, through pyroute2 instead of the `ip` command.

The habits are pyroute2's own (its `pyroute2/fixtures/iproute`): namespaces with
`netns.create` / `netns.remove`, one `IPRoute` per namespace (`IPRoute(netns=name)`),
veths created with their peer already in the other namespace
(`link("add", kind="veth", peer={"ifname": ..., "net_ns_fd": ...})`), and teardown
that tolerates only the error meaning "already gone" (ENODEV, a missing netns file).

What pyroute2 has no call for, done here without a subprocess all the same:
- sysctls: written to /proc/sys from a thread inside the namespace (a sysctl under
  /proc/sys/net belongs to the network namespace of the thread that opens it);
- offloads (`ethtool -K`): pyroute2's `Ethtool`, the same SIOCETHTOOL feature ioctl,
  from a thread inside the namespace (the ioctl acts in its socket's namespace);
- driver statistics (`ethtool -S`): pyroute2's `IoctlEthtool.get_statistics()`, the same
  ioctl, as its high-level `Ethtool` has no call for them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.ethtool import Ethtool
from pyroute2.ethtool.ioctl import IoctlEthtool
from pyroute2.netlink.exceptions import NetlinkError

from appliance.lab.nsenter import run_in_netns

T = TypeVar("T")
SYSCTL_ROOT = pathlib.Path("/proc/sys")
TX_CHECKSUM_PREFIX = "tx-checksum-"   # the features `ethtool -K <if> tx on|off` switches together
GRO_FEATURE = "rx-gro"                # `ethtool -K <if> gro on|off`


@contextlib.contextmanager
def explained(error: type[Exception], what: str) -> Iterator[None]:
    """Turn a kernel refusal inside the block into `error`, naming the operation and the reason."""
    try:
        yield
    except NetlinkError as exc:
        raise error(f"{what}: {os.strerror(exc.code)}") from exc
    except OSError as exc:
        raise error(f"{what}: {exc.strerror or exc}") from exc


# -- namespaces ------------------------------------------------------------------------------------

def namespaces() -> list[str]:
    """Named network namespaces (the files `ip netns` and pyroute2 keep in /run/netns)."""
    return sorted(netns.listnetns())


def create_namespace(name: str) -> None:
    """A new named namespace; FileExistsError when the name is taken."""
    netns.create(name)


def remove_namespace(name: str) -> bool:
    """Remove a named namespace (its links go with it); False when it was already gone."""
    try:
        netns.remove(name)
    except FileNotFoundError:
        return False
    return True


def in_namespace(namespace: str | None, function: Callable[..., T], *args) -> T:
    """Call `function(*args)` inside `namespace` (None: right here, in the caller's namespace)."""
    if namespace is None:
        return function(*args)
    return run_in_netns(namespace, function, *args)


# -- links -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def iproute(namespace: str | None = None) -> Iterator[IPRoute]:
    """An IPRoute inside `namespace` (None: the caller's); never creates a missing namespace."""
    ipr = IPRoute(netns=namespace, flags=0) if namespace else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetlinkError(errno.ENODEV, f"no link {ifname}")
    return found[0]


def add_veth(ipr: IPRoute, ifname: str, peer: str, peer_namespace: str | None = None) -> None:
    """A veth pair: `ifname` in the namespace of `ipr`, `peer` in `peer_namespace` (None: the same)."""
    spec: dict = {"ifname": peer}
    if peer_namespace is not None:
        spec["net_ns_fd"] = peer_namespace
    ipr.link("add", ifname=ifname, kind="veth", peer=spec)


def attach_xdp_pass(ipr: IPRoute, ifname: str) -> None:
    """Attach (through netlink, so it stays after this process) an XDP program that passes every frame."""
    from dataplane import bpfsys  # noqa: PLC0415

    fd = bpfsys.prog_load_xdp_pass()
    try:
        ipr.link("set", index=index(ipr, ifname), xdp_fd=fd)
    finally:
        os.close(fd)


def set_up(ipr: IPRoute, ifname: str) -> None:
    ipr.link("set", index=index(ipr, ifname), state="up")


def delete_link(ipr: IPRoute, ifname: str) -> bool:
    """Delete a link; False when it was already gone (deleting a veth takes its peer along)."""
    try:
        ipr.link("del", index=index(ipr, ifname))
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
        return False
    return True


def link_names(ipr: IPRoute) -> list[str]:
    return [link.get("ifname") for link in ipr.get_links()]


def xdp_attached(link) -> bool:
    """An XDP program sits on this link (an `ifinfmsg`), in any mode."""
    return bool(link.get(("IFLA_XDP", "IFLA_XDP_ATTACHED")))


# -- sysctls and offloads --------------------------------------------------------------------------

def write_sysctls(namespace: str | None, settings: dict[str, int | str]) -> None:
    """`sysctl -w key=value ...` inside `namespace`; keys are dotted (no dots in interface names here)."""
    def write() -> None:
        for key, value in settings.items():
            SYSCTL_ROOT.joinpath(*key.split(".")).write_text(f"{value}\n")
    in_namespace(namespace, write)


def set_offloads(namespace: str | None, ifname: str, *, tx_checksum: bool | None = None,
                 gro: bool | None = None) -> None:
    """`ethtool -K <ifname> [tx on|off] [gro on|off]` inside `namespace`, checked afterwards:
    OSError(EOPNOTSUPP) names the features the kernel kept as they were."""
    def apply() -> None:
        with Ethtool() as ethtool:
            current = ethtool.get_features(ifname)
            wanted: dict[str, bool] = {}
            if tx_checksum is not None:
                wanted.update((name, tx_checksum) for name in current.features if name.startswith(TX_CHECKSUM_PREFIX))
            if gro is not None:
                wanted[GRO_FEATURE] = gro
            for name, enable in wanted.items():
                if current.features[name].available:   # the others are fixed: fine if already as wanted
                    current.features[name].enable = enable
            ethtool.set_features(ifname, current)
            now = ethtool.get_features(ifname).features
            kept = sorted(name for name, enable in wanted.items() if now[name].enable != enable)
            if kept:
                raise OSError(errno.EOPNOTSUPP, f"{ifname}: the kernel kept {', '.join(kept)} unchanged")
    in_namespace(namespace, apply)


def features(namespace: str | None, ifname: str) -> dict[str, bool]:
    """`ethtool -k <ifname>` inside `namespace`: feature name -> enabled."""
    def read() -> dict[str, bool]:
        with Ethtool() as ethtool:
            return {name: bool(f.enable) for name, f in ethtool.get_features(ifname).features.items()}
    return in_namespace(namespace, read)


class XdpTransmitted:
    """Frames a veth transmitted from XDP (`ethtool -S`: tx_queue_N_xdp_xmit, summed over its queues), in
    the namespace of the thread that made it, through one kept ioctl handle: the statistics' names are
    read once, then each read is one ioctl (~25 µs, against ~150 µs for `statistics()`)."""

    def __init__(self, ifname: str) -> None:
        self._ethtool = IoctlEthtool(ifname)

    def read(self) -> int:
        return sum(int(value) for name, value in self._ethtool.get_statistics()
                   if name.startswith("tx_queue_") and name.endswith("_xdp_xmit"))

    def close(self) -> None:
        self._ethtool.close()


def statistics(ifname: str) -> dict[str, int]:
    """`ethtool -S <ifname>` in the calling thread's namespace: the driver's counters by name."""
    ethtool = IoctlEthtool(ifname)
    try:
        return {name: int(value) for name, value in ethtool.get_statistics()}
    finally:
        ethtool.close()
