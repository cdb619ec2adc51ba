"""Test tiers by privilege: unit, bpf, netns, browser (see DESIGN.md).

Each tier beyond unit probes its capability once. Outside CI a missing
capability skips the tier with the reason; under CI (CI=true, root, every
tier available) it is an error, because a skipped tier is not a pass.

With SEAWALL_HERMETIC=1 (tox's netns and browser tiers, so `make test` and CI)
the run also proves that tests keep no state on the machine: it fails when a
test left something new in the places where stateful tools keep theirs.
"""

from __future__ import annotations

import functools
import os
import pathlib
import pwd
import shutil
import subprocess
import uuid

import pytest
from hypothesis import HealthCheck, settings

# The VMs are shared (two vCPUs, often busy): how fast hypothesis generates examples is not
# what any test checks, so its speed health check must not fail a run; every other check stays.
settings.register_profile("seawall", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("seawall")

TIERS = ("bpf", "netns", "browser")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# A developer who means to run without a capability (no root, no chromium) says so; never under CI.
ALLOW_SKIP = not IN_CI and os.environ.get("SEAWALL_ALLOW_SKIP", "").lower() in ("1", "true", "yes")
HERMETIC = os.environ.get("SEAWALL_HERMETIC", "").lower() in ("1", "true", "yes")
# Where the machine's stateful tools keep state: net-snmp's persistent store, the appliance's
# default state directory and the lab's, bpffs pins, and the user's home (chromium's ~/.pki and
# XDG directories, ~/.snmp). Tests use temporary directories and unique pin paths instead.
MACHINE_STATE_DIRS = (pathlib.Path("/var/lib/snmp"), pathlib.Path("/var/lib/seawall"),
                      pathlib.Path("/run/seawall-lab"), pathlib.Path("/sys/fs/bpf"),
                      pathlib.Path(pwd.getpwuid(os.getuid()).pw_dir))
_STATE_BEFORE = pytest.StashKey[dict]()


@functools.cache
def probe_bpf() -> str | None:
    """None when a tiny XDP program compiles and loads, else the reason."""
    if os.geteuid() != 0:
        return "bpf tier needs root"
    try:
        from bcc import BPF  # noqa: PLC0415 - optional, only for this tier
    except ImportError as exc:
        return f"bcc not importable: {exc}"
    try:
        b = BPF(text="int probe(struct xdp_md *ctx) { return XDP_PASS; }")
        b.load_func("probe", BPF.XDP)
        b.cleanup()
    except Exception as exc:  # bcc raises plain Exception on compile failure
        return f"bcc cannot compile an XDP program: {exc}"
    return None


@functools.cache
def probe_netns() -> str | None:
    if os.geteuid() != 0:
        return "netns tier needs root"
    name = f"swprobe-{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return probe_bpf()


@functools.cache
def probe_browser() -> str | None:
    if not pathlib.Path("/usr/bin/chromium").exists() and not shutil.which("chromium"):
        return "Debian chromium is not installed"
    try:
        import playwright  # noqa: F401, PLC0415
    except ImportError as exc:
        return f"playwright not importable: {exc}"
    return None


PROBES = {"bpf": probe_bpf, "netns": probe_netns, "browser": probe_browser}


def skip_or_fail(reason: str) -> None:
    """A missing capability fails the test: `make test` runs every tier, and a skipped one is no
    green. Only with SEAWALL_ALLOW_SKIP=1, outside CI, is it skipped with the reason."""
    if not ALLOW_SKIP:
        where = "in CI" if IN_CI else "(SEAWALL_ALLOW_SKIP=1 skips instead, outside CI)"
        pytest.fail(f"unavailable {where}: {reason}")
    pytest.skip(reason)


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = _tier(item)
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


# Argon2 as SecureWatch configures it (argon2-cffi's defaults: 3 passes over 64 MiB, 4 lanes) takes ~0.25 s
# of a 2-vCPU VM per hash or check, some 300 times in the unit tier. No unit or browser test is about that
# cost (the login's concurrency tests hold the check themselves, tests/unit/securewatch/test_sw_login_hardening.py),
# so there the same argon2id runs with the smallest cost (`securewatch.auth.set_password_hasher`): hashing,
# checking, wrong passwords, unknown names and rehashing on login (a hash made by a `seawall user` child
# process has the real cost) all still run for real.
CHEAP_ARGON2 = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}
CHEAP_HASHING_TIERS = ("unit", "browser")


@pytest.fixture(autouse=True)
def cheap_password_hashing(request):
    if _tier(request.node) not in CHEAP_HASHING_TIERS:
        yield
        return
    import argon2  # noqa: PLC0415 - only the tiers that run SecureWatch in the test's process

    from securewatch import auth  # noqa: PLC0415

    before = auth.password_hasher()
    auth.set_password_hasher(_cheap_hasher(argon2))
    yield
    auth.set_password_hasher(before)


@functools.cache
def _cheap_hasher(argon2):
    """One cheap hasher for the run (securewatch.auth keeps the hash for unknown names made with it)."""
    return argon2.PasswordHasher(**CHEAP_ARGON2)


def _tier(item) -> str:
    rel = pathlib.Path(str(item.fspath)).relative_to(pathlib.Path(__file__).parent)
    return rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in TIERS else "unit"


def pytest_runtest_setup(item):
    for tier in TIERS:
        if item.get_closest_marker(tier):
            reason = PROBES[tier]()
            if reason:
                skip_or_fail(f"{tier} tier: {reason}")


def machine_state() -> dict[str, set[str]]:
    """The entries of each machine state directory (missing directories: none)."""
    out = {}
    for directory in MACHINE_STATE_DIRS:
        try:
            out[str(directory)] = {entry.name for entry in directory.iterdir()}
        except OSError:
            out[str(directory)] = set()
    return out


def _xdist_worker(session) -> bool:
    """A pytest-xdist worker: the controller checks the machine, before the workers and after all of them
    (a worker ending while another still runs would see the other's lab as left behind)."""
    return hasattr(session.config, "workerinput")


def pytest_sessionstart(session):
    if HERMETIC and not _xdist_worker(session):
        session.config.stash[_STATE_BEFORE] = machine_state()


def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(_STATE_BEFORE, None)
    if before is None:
        return
    left = {d: sorted(names - before[d]) for d, names in machine_state().items() if names - before[d]}
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "hermetic run: tests left state on the machine: " + "; ".join(
            f"{d}: {', '.join(names)}" for d, names in left.items())
        if reporter is not None:
            reporter.write_line("\n" + message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
