"""Issue 12 item 15 on the config side, through the real CLI: a file that is too large, TOML
nested 100k deep and a bad [notify] section end `seawall securewatch` and `seawall run` with a
clean message and exit status 2, never a traceback (nor reading /dev/zero until memory runs out)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from appliance.config import load_config, parse_config
from tenants import ConfigError
from tenants.io import MAX_CONFIG_BYTES

REPO = pathlib.Path(__file__).resolve().parents[3]


def seawall(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env)


BAD_NOTIFY = """\
[appliance]
external = "sw-ext0"
internal = "sw-int0"
state_dir = "{state}"
[securewatch]
database = "sqlite:///{state}/sw.db"
[[tenants]]
id = "alpha"
prefixes = ["198.51.100.0/24"]
[[notify.webhook]]
url = "ftp://192.0.2.1/hook"
tenants = ["nosuch"]
[[notify.email]]
smtp_host = "192.0.2.25"
from = "seawall@example.net"
to = ["not an address"]
"""


@pytest.mark.parametrize("command", ["securewatch", "run"])
def test_item15_dev_zero_is_refused_by_size_before_parsing(command):
    r = seawall(command, "--config", "/dev/zero")
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"seawall {command}: /dev/zero: larger than {MAX_CONFIG_BYTES // 2**20} MiB: not a config file\n"


@pytest.mark.parametrize("command", ["securewatch", "run"])
def test_item15_toml_nested_100k_deep_is_a_clean_error(command, tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    r = seawall(command, "--config", str(path))
    assert r.returncode == 2, r.stderr
    assert r.stderr == (f"seawall {command}: {path}: TOML nested too deeply (arrays or inline tables inside "
                        f"each other)\n")


@pytest.mark.parametrize("command", ["securewatch", "run"])
def test_item15_bad_notify_section_every_problem_exit_2(command, tmp_path):
    path = tmp_path / "seawall.toml"
    path.write_text(BAD_NOTIFY.format(state=tmp_path))
    r = seawall(command, "--config", str(path))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    notify = ["  - notify.email[0].to: not an email address: 'not an address'",
              "  - notify.webhook[0].url: must be an http(s) URL, got scheme 'ftp'",
              "  - notify.webhook[0].secret: is required",
              "  - notify.webhook[0].tenants: no tenant 'nosuch'"]
    # `seawall run` also names the NICs of the file that this machine does not have.
    nics = [f"  - [appliance] {role}: interface {name!r} does not exist"
            for role, name in (("external", "sw-ext0"), ("internal", "sw-int0"))] if command == "run" else []
    assert r.stderr.splitlines() == [f"seawall {command}: {path}: {len(notify) + len(nics)} problems:", *notify, *nics]
    assert not (tmp_path / "sw.db").exists()  # nothing started


def test_item15_oversized_integer_in_toml_is_a_config_error():
    with pytest.raises(ConfigError, match="TOML value out of range"):
        parse_config("[appliance]\ntick_ms = " + "9" * 5000 + "\n")


def test_item16_webhook_tenants_checked_only_when_the_file_has_tenants(tmp_path):
    hook = '[[notify.webhook]]\nurl = "https://192.0.2.1/h"\nsecret = "k"\ntenants = ["alpha"]\n'
    assert parse_config(hook).notify["webhook"][0]["tenants"] == ["alpha"]  # tenants live in SecureWatch
    with pytest.raises(ConfigError) as info:
        parse_config('[[tenants]]\nid = "beta"\nprefixes = ["203.0.113.0/24"]\n' + hook)
    assert info.value.problems == ["notify.webhook[0].tenants: no tenant 'alpha'"]
    path = tmp_path / "ok.toml"
    path.write_text('[[tenants]]\nid = "alpha"\nprefixes = ["198.51.100.0/24"]\n' + hook)
    assert load_config(path).notify["webhook"][0]["tenants"] == ["alpha"]
