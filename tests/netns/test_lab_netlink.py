"""Netlink through pyroute2 (issue 13, item 5): the lab asks the kernel itself and runs commands only
to start processes inside namespaces; offloads are checked after they are set; teardown tolerates
only "already gone"."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from appliance.lab import Lab, netlink


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace():
    """A fresh namespace, removed afterwards also on failure (its links go with it)."""
    name = unique("tnl")
    netlink.create_namespace(name)
    yield name
    netlink.remove_namespace(name)


def _ethtool_k(ns: str, ifname: str) -> str:
    """Read back with the ethtool command, independently of pyroute2."""
    return subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-k", ifname], capture_output=True, text=True,
                          check=True).stdout


def test_lab_runs_commands_only_to_start_processes_inside_namespaces(tmp_path, monkeypatch):
    """Every `ip`, `ethtool` or `sysctl` the lab runs while going up and down is logged by a shim in
    front of the real one: only `ip netns exec` remains, once per server's services."""
    shims, log = tmp_path / "bin", tmp_path / "calls.log"
    shims.mkdir()
    for tool in ("ip", "ethtool", "sysctl"):
        real = shutil.which(tool)
        assert real, f"{tool} not installed"
        shim = shims / tool
        shim.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\nexec {real} "$@"\n')
        shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    lab = Lab(unique("n"))
    try:
        status = lab.up(linux_bridge=True)
        assert status.complete(lab.namespaces) and status.bridge
        lab.up(linux_bridge=False)
    finally:
        lab.down()
    calls = log.read_text().splitlines() if log.exists() else []
    shop = (f" --shop-cert {lab.shop_cert} --shop-key {lab.shop_cert.with_suffix('.key')} "
            f"--shop-stats {lab.shop_stats}")   # the shop's HTTPS (issue 15)
    assert sorted(calls) == sorted(f"ip netns exec {s.namespace} {sys.executable} -m appliance.lab.services "
                                   f"--lab-namespace {s.namespace} --name {s.name} --tenant {s.tenant} "
                                   f"--ipv4 {s.ipv4} --ipv6 {s.ipv6} --ready-file {lab.state_dir / s.name}.ready"
                                   + (shop if s == lab.shop_server else "")
                                   for s in lab.servers)
    assert lab.name not in " ".join(netlink.namespaces())


def test_offloads_are_set_inside_the_namespace_and_read_back(namespace):
    with netlink.iproute(namespace) as ipr:
        netlink.add_veth(ipr, "a0", "a1")
    netlink.set_offloads(namespace, "a0", tx_checksum=False, gro=True)
    shown = _ethtool_k(namespace, "a0")
    assert "tx-checksumming: off" in shown and "generic-receive-offload: on" in shown
    assert netlink.features(namespace, "a0")["rx-gro"] is True
    netlink.set_offloads(namespace, "a0", gro=False)
    assert "generic-receive-offload: off" in _ethtool_k(namespace, "a0")
    assert "tx-checksumming: on" in _ethtool_k(namespace, "a1")      # the peer is left alone


def test_an_offload_the_kernel_keeps_is_an_error(namespace):
    """The loopback's checksum offload is fixed on: asking for it off fails, naming the feature."""
    with pytest.raises(OSError, match="tx-checksum-ip-generic") as caught:
        netlink.set_offloads(namespace, "lo", tx_checksum=False)
    assert caught.value.errno == errno.EOPNOTSUPP


def test_teardown_tolerates_only_what_is_already_gone(namespace):
    with netlink.iproute(namespace) as ipr:
        netlink.add_veth(ipr, "b0", "b1")
        assert netlink.delete_link(ipr, "b0") is True
        assert netlink.delete_link(ipr, "b1") is False        # went with its peer
        with pytest.raises(NetlinkError) as caught:
            netlink.delete_link(ipr, "lo")                  # a refusal, not "already gone"
        assert caught.value.code != errno.ENODEV
    gone = unique("tnl")
    assert netlink.remove_namespace(gone) is False
    with pytest.raises(FileNotFoundError):
        netlink.iproute(gone).__enter__()                  # never creates a namespace by accident
    assert gone not in netlink.namespaces()


def test_driver_statistics_match_ethtool_s(namespace):
    """The attack generator's transmit counters: pyroute2's ioctl reads what `ethtool -S` prints."""
    with netlink.iproute(namespace) as ipr:
        netlink.add_veth(ipr, "c0", "c1")
    shown = subprocess.run(["ip", "netns", "exec", namespace, "ethtool", "-S", "c0"], capture_output=True,
                           text=True, check=True).stdout
    expected = {key.strip(): int(value) for key, _, value in
                (line.partition(":") for line in shown.splitlines()[1:])}
    stats = netlink.in_namespace(namespace, netlink.statistics, "c0")
    assert stats == expected and "tx_queue_0_xdp_xmit" in stats
