"""`import dataplane.constants` (as tenants/ does) loads neither the adapter nor numpy (PEP 562 lazy names)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]
HEAVY = ["numpy", "bcc", "dataplane.dataplane", "dataplane.api", "dataplane.loader", "dataplane.reader"]


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_tenants_and_constants_import_without_the_adapter_or_numpy():
    assert _loaded_after("import tenants.model\nimport dataplane.constants") == []


def test_the_adapter_loads_on_first_use_and_without_bcc():
    loaded = _loaded_after("import dataplane\nassert dataplane.Dataplane.__name__ == 'Dataplane'")
    assert "dataplane.dataplane" in loaded and "bcc" not in loaded


def test_unknown_names_raise_attribute_error():
    assert _loaded_after("import dataplane\ntry:\n    dataplane.Nope\nexcept AttributeError:\n    pass\n"
                         "else:\n    raise SystemExit('no AttributeError')") == []
