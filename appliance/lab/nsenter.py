"""Entering a named network namespace from Python (3.11 has no os.setns): pyroute2's setns."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import netns

NETNS_RUN_DIR = pathlib.Path(netns.NETNS_RUN_DIR)
T = TypeVar("T")


def enter_netns(name: str) -> None:
    """Move the calling thread into the network namespace `ip netns` calls `name` (never creates it)."""
    path = NETNS_RUN_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"network namespace {name!r} does not exist ({path})")
    netns.setns(name, flags=0)   # setns(2) acts on the calling thread only


def run_in_netns(name: str, function: Callable[..., T], *args, timeout: float = 30.0) -> T:
    """Call `function(*args)` in a short-lived thread inside namespace `name`; the caller stays put.

    Sockets created there keep that namespace, so they can be used afterwards from any thread.
    """
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            enter_netns(name)
            outcome["value"] = function(*args)
        except BaseException as exc:  # re-raised in the caller
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{getattr(function, '__name__', function)} in {name} did not finish in {timeout}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
