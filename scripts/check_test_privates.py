#!/usr/bin/env python3
"""Lint: no test touches a private name of a product package (`_name`, not `__dunder__`).

Tests use public APIs or documented test helpers (`dataplane.testing`, fixtures and helpers
under `tests/`); a private name is the package's own business and may change without notice.
Flagged, in every tests/**/*.py:
- `from <package>... import _name` where the module is not under `tests`;
- an attribute `x._name` on anything but `self`/`cls` or a name imported from `tests.*`.
ctypes' sunder names (`_fields_`, `_type_`, `_length_`) and namedtuple methods are public APIs.

Exit 1 with one line per finding (path:line: what), 0 when clean. Run from the repository root:
`python scripts/check_test_privates.py` (tox's lint env runs it).
"""

from __future__ import annotations

import ast
import pathlib
import sys

PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}   # namedtuple's API
# Known findings, each (path, name): empty, and it should stay so (a test that needs to look inside
# gets a public API or a test helper such as dataplane.testing instead).
KNOWN: set[tuple[str, str]] = set()


def _private(name: str) -> bool:
    if not name.startswith("_") or name.startswith("__"):
        return False
    if len(name) > 2 and name.endswith("_"):   # ctypes' sunder names: _fields_, _type_, _length_
        return False
    return name not in PUBLIC_UNDERSCORE


def _test_module(module: str, test_modules: set[str]) -> bool:
    """`tests.*`, or a test file imported by its bare name (pytest puts test directories on sys.path)."""
    first = module.split(".")[0]
    return first == "tests" or first in test_modules


def findings(path: pathlib.Path, rel: str, test_modules: set[str] = frozenset()) -> list[tuple[int, str, str]]:
    tree = ast.parse(path.read_text(), filename=rel)
    test_helpers: set[str] = {"self", "cls"}   # names bound to test modules or their objects
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _test_module(node.module or "", test_modules):
            test_helpers |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            test_helpers |= {(a.asname or a.name).split(".")[0] for a in node.names
                             if _test_module(a.name, test_modules)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not _test_module(node.module or "", test_modules):
            for alias in node.names:
                if _private(alias.name):
                    out.append((node.lineno, alias.name, f"imports {alias.name} from {node.module}"))
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in test_helpers:
                continue
            out.append((node.lineno, node.attr, f"touches {ast.unparse(node)}"))
    return out


def main(root: pathlib.Path) -> int:
    bad = []
    paths = sorted((root / "tests").rglob("*.py"))
    test_modules = {path.stem for path in paths}
    for path in paths:
        rel = path.relative_to(root).as_posix()
        for line, name, what in findings(path, rel, test_modules):
            if (rel, name) not in KNOWN:
                bad.append(f"{rel}:{line}: {what} (a private name of a product package: use a public API "
                           f"or a test helper such as dataplane.testing)")
    print("\n".join(bad) if bad else "check_test_privates: no test touches a private name of a product package")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(__file__).resolve().parent.parent))
