"""Entering a named network namespace from Python (3.11 has no os.setns)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pathlib

CLONE_NEWNET = 0x40000000  # sched.h
NETNS_RUN_DIR = pathlib.Path("/run/netns")


def enter_netns(name: str) -> None:
    """Move the calling thread into the network namespace `ip netns` calls `name`."""
    path = NETNS_RUN_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"network namespace {name!r} does not exist ({path})")
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)
