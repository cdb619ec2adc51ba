"""SecureWatch's structure (issue 13, item 3): no import cycle, no import of appliance/, route
modules that use `context` instead of the app, settings validated in one place, and one
versioned-configuration workflow (a change applied but not stored is put back, for every kind).

The import checks run scripts/check_imports.py, the lint tier's own check, on the live sources
and on small synthetic package trees that show what it counts."""

from __future__ import annotations

import contextlib
import importlib.util
import pathlib
import sqlite3
import subprocess
import sys
import textwrap

import aiohttp
import pytest
from test_notify_delivery import HMAC_SECRET
from test_sw_helpers import TENANTS, InMemoryAppliance, add_token, service

from appliance.config import parse_config
from securewatch.notify import parse_notify_config
from securewatch.settings import parse_settings
from tenants import ConfigError, TenantSet

REPO = pathlib.Path(__file__).resolve().parents[3]
CHECKER = REPO / "scripts" / "check_imports.py"
ROUTE_MODULES = ("securewatch.api", "securewatch.ui", "securewatch.notify_admin", "securewatch.access_admin",
                 "securewatch.access_log", "securewatch.admin_ui", "securewatch.policy_templates")


def checker():
    spec = importlib.util.spec_from_file_location("check_imports", CHECKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tree(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


# --- the import graph ---------------------------------------------------------------------

def test_check_imports_passes_on_the_sources():
    """The lint tier's command, as tox runs it: no cycle in any package, no arrow up the layers."""
    done = subprocess.run([sys.executable, str(CHECKER)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no import cycle" in done.stdout


def test_no_route_module_imports_the_app():
    graph, _ = checker().build_graph(REPO, ("securewatch",))
    for module in ROUTE_MODULES:
        assert "securewatch.app" not in graph[module], module
        assert "securewatch.context" in graph[module], module


def test_securewatch_loads_no_appliance_module():
    """Importing every SecureWatch module in a fresh interpreter loads nothing of appliance/."""
    code = ("import sys, pkgutil, importlib, securewatch\n"
            "for m in pkgutil.walk_packages(securewatch.__path__, 'securewatch.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'appliance'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                          cwd=REPO)
    assert done.stdout.strip() == "[]"


def test_check_imports_reports_a_cycle_through_a_function_level_import(tmp_path):
    root = write_tree(tmp_path, {
        "securewatch/__init__.py": "",
        "securewatch/app.py": "from . import ui\n",
        "securewatch/ui.py": "def page():\n    from .app import x  # deferred, still a cycle\n",
        "securewatch/leaf.py": "import securewatch.ui\n",
    })
    problems = checker().problems(root, ("securewatch",))
    assert problems == ["import cycle among 2 modules (securewatch.app, securewatch.ui): "
                        "securewatch.app (securewatch/app.py:1) -> securewatch.ui (securewatch/ui.py:2) "
                        "-> securewatch.app"]


def test_check_imports_reports_an_import_of_the_appliance_from_a_lower_layer(tmp_path):
    root = write_tree(tmp_path, {
        "appliance/__init__.py": "", "appliance/config.py": "import tenants.model\n",
        "tenants/__init__.py": "", "tenants/model.py": "x = 1\n",
        "securewatch/__init__.py": "",
        "securewatch/store.py": "def open_backend():\n    from appliance.config import sqlite_path\n",
    })
    assert checker().problems(root, ("appliance", "tenants", "securewatch")) == [
        "layer: securewatch/store.py:2: securewatch.store imports appliance.config; "
        "dataplane, policy, tenants, securewatch, escalation never import appliance"]


def test_check_imports_skips_type_checking_imports_and_resolves_relative_ones(tmp_path):
    root = write_tree(tmp_path, {
        "tenants/__init__.py": "from .model import Tenant\n",
        "tenants/model.py": "from tenants.compile import capacity\n",
        "tenants/compile.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                               "    from tenants.model import Tenant\nfrom . import errors\n"),
        "tenants/errors.py": "",
    })
    graph, _ = checker().build_graph(root, ("tenants",))
    assert graph["tenants.compile"] == {"tenants.errors": 4}
    assert graph["tenants"] == {"tenants.model": 1}
    assert checker().problems(root, ("tenants",)) == []


# --- settings --------------------------------------------------------------------------------

def test_config_file_reports_the_securewatch_settings_problems_of_securewatch_settings(tmp_path):
    """One validation: the config file's [securewatch] problems are securewatch.settings' own."""
    table = 'listen = "nowhere"\nenabled = "yes"\ntls_cert = 5\ndatabase = "mysql://x"\nbogus = 1\n'
    with pytest.raises(ConfigError) as raised:
        parse_config(f'[appliance]\nstate_dir = "{tmp_path}"\n[securewatch]\n{table}')
    problems: list[str] = []
    parse_settings({"listen": "nowhere", "enabled": "yes", "tls_cert": 5, "database": "mysql://x", "bogus": 1},
                   tmp_path, problems)
    assert len(problems) == 6 and raised.value.problems == problems


# --- one versioned-configuration workflow ----------------------------------------------------

class NotifyingAppliance(InMemoryAppliance):
    """The test double of the appliance process, with the NOC receivers' hooks: what it runs is
    what it was last given, after the same validation the real one does."""

    def __init__(self, table: dict) -> None:
        super().__init__(TenantSet.from_dicts(TENANTS))
        self.table = table

    def notify_config(self) -> dict:
        return self.table

    async def reconfigure_notifiers(self, config: dict) -> None:
        parse_notify_config(config)
        self.table = config


async def test_notify_change_applied_but_not_stored_is_put_back(tmp_path):
    """The database refuses the new version after the running notifiers took it: the appliance
    runs the stored table again, as it does for the tenant set (the same service runs both)."""
    hook = {"name": "noc-hook", "url": "http://192.0.2.10/generic", "secret": HMAC_SECRET}
    appliance = NotifyingAppliance({"webhook": [hook]})
    async with service(tmp_path, appliance=appliance) as (url, store, _):
        assert await store.notify_config() == (1, {"webhook": [hook]})  # imported at start
        with contextlib.closing(sqlite3.connect(tmp_path / "sw.db")) as db:
            db.execute("CREATE TRIGGER refuse BEFORE INSERT ON notify_config_versions "
                       "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
            db.commit()
        admin = {"Authorization": f"Bearer {await add_token(store, 'admin')}"}
        added = {"name": "new-hook", "url": "http://192.0.2.10/new", "secret": HMAC_SECRET}
        async with aiohttp.ClientSession(headers=admin) as http:
            r = await http.put(f"{url}/api/v1/notify", json={"webhook": [hook, added]})
            assert r.status == 500
        assert await store.notify_config() == (1, {"webhook": [hook]})
        assert appliance.notify_config() == {"webhook": [hook]}
