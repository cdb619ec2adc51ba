"""The lint that keeps tests off private names of product packages (scripts/check_test_privates.py)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[3] / "scripts" / "check_test_privates.py"


def _run(root: pathlib.Path) -> subprocess.CompletedProcess:
    (root / "scripts").mkdir(exist_ok=True)
    shutil.copy(SCRIPT, root / "scripts" / SCRIPT.name)
    return subprocess.run([sys.executable, str(root / "scripts" / SCRIPT.name)], capture_output=True, text=True,
                          timeout=60)


def _write(root: pathlib.Path, text: str) -> None:
    (root / "tests").mkdir(exist_ok=True)
    (root / "tests" / "test_x.py").write_text(text)


def test_lint_fails_on_a_test_reaching_into_the_adapter(tmp_path):
    _write(tmp_path, "def test_a(dp):\n    assert dp._maps['sw_attack']\n")
    result = _run(tmp_path)
    assert result.returncode == 1
    assert "tests/test_x.py:2: touches dp._maps" in result.stdout


def test_lint_fails_on_importing_a_private_function(tmp_path):
    _write(tmp_path, "from policy.packets import _parse_one\n")
    result = _run(tmp_path)
    assert result.returncode == 1 and "imports _parse_one from policy.packets" in result.stdout


def test_lint_passes_public_apis_test_helpers_and_ctypes_names(tmp_path):
    _write(tmp_path, "from dataplane import testing\nfrom tests.support import _helper\n"
                     "def test_a(dp, table):\n    testing.table(dp, 'sw_attack')\n"
                     "    assert table.Leaf._type_ and table.Leaf._fields_\n    self_like = _helper._x\n")
    result = _run(tmp_path)
    assert result.returncode == 0, result.stdout


def test_lint_passes_helpers_of_sibling_test_files(tmp_path):
    _write(tmp_path, "from test_y import _Sink\n")
    (tmp_path / "tests" / "test_y.py").write_text("class _Sink: pass\n")
    result = _run(tmp_path)
    assert result.returncode == 0, result.stdout


def test_the_repository_passes():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
