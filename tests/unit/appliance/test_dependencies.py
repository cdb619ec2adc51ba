"""Dependencies say what is used (issue 13, item 5).

The appliance's runtime dependencies in pyproject.toml are exactly the outside packages its
product packages import: directly (anywhere in a module, lazy imports too) or at import time
through the first-party modules they import at module level. Lab and benchmark code
(appliance/lab, appliance/bench) may use more, declared in the `lab` and `bench` extras.
Everything declared is pinned in requirements.lock. Read from the sources' syntax trees and the
installed packages' metadata, so nothing is imported to find out.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import pathlib
import re
import sys
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[3]
FIRST_PARTY = ("dataplane", "policy", "tenants", "securewatch", "escalation", "appliance")
LAB_AND_BENCH = ("appliance/lab", "appliance/bench")
# Not on PyPI, so never a declared dependency: Debian's python3-bpfcc, linked into the
# virtualenv by scripts/link_bcc.py (Debian packages are listed in scripts/bootstrap.sh).
SYSTEM_PACKAGES = {"bcc"}
# Runtime dependencies the product runs as a child process and never imports: the BGP speaker
# (escalation/speaker.py starts ExaBGP's executable from the virtualenv).
EXECUTED_DEPENDENCIES = {"exabgp"}
REQUIREMENT_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    return {canonical(REQUIREMENT_NAME_RE.match(r).group(1)) for r in requirements}


@functools.cache
def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def runtime() -> set[str]:
    return requirement_names(project()["dependencies"])


def extra(name: str) -> set[str]:
    return requirement_names(project().get("optional-dependencies", {}).get(name, []))


@functools.cache
def distributions_of(top_level: str) -> frozenset[str]:
    """Installed distributions providing the import name `top_level` (none when not installed)."""
    return frozenset(canonical(d) for d in importlib.metadata.packages_distributions().get(top_level, []))


def module_path(module: str) -> pathlib.Path | None:
    """The source file of a first-party module, None when `module` is not one."""
    base = REPO.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if module.split(".")[0] in FIRST_PARTY and path.is_file():
            return path
    return None


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """Modules an import statement loads (for `from a import b`, also `a.b` when it is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    return [base, *(f"{base}.{alias.name}" for alias in node.names if module_path(f"{base}.{alias.name}"))]


@functools.cache
def imports(path: pathlib.Path) -> tuple[frozenset[str], frozenset[str]]:
    """(modules imported when the module loads, modules imported anywhere in it)."""
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    at_load: set[str] = set()
    anywhere: set[str] = set()

    def visit(node: ast.AST, loading: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found = _imported(node, package)
            anywhere.update(found)
            if loading:
                at_load.update(found)
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            loading = False           # runs when called, not when the module loads
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the body never runs
                visit(child, loading)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, loading)

    visit(tree, True)
    return frozenset(at_load), frozenset(anywhere)


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def outside_imports(path: pathlib.Path) -> dict[str, str]:
    """Outside top-level import names this module brings in -> the first-party module importing it:
    everything it imports itself, and what its module-level first-party imports load in turn."""
    found: dict[str, str] = {}
    seen: set[pathlib.Path] = set()

    def add(module: str, importer: str) -> pathlib.Path | None:
        top = module.split(".")[0]
        if top in FIRST_PARTY:
            return module_path(module)
        if top not in sys.stdlib_module_names and top != "__future__":
            found.setdefault(top, importer)
        return None

    at_load, anywhere = imports(path)
    todo = []
    for module in anywhere:
        for part in _with_parents(module):
            if (target := add(part, module_name(path))) and module in at_load:
                todo.append(target)
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for module in imports(current)[0]:
            for part in _with_parents(module):
                if target := add(part, module_name(current)):
                    todo.append(target)
    return found


def sources(*, lab_and_bench: bool) -> list[pathlib.Path]:
    paths = []
    for package in FIRST_PARTY:
        for path in sorted((REPO / package).rglob("*.py")):
            inside = any(path.is_relative_to(REPO / p) for p in LAB_AND_BENCH)
            if inside == lab_and_bench:
                paths.append(path)
    return paths


def undeclared(paths: list[pathlib.Path], allowed: set[str]) -> list[str]:
    problems = []
    for path in paths:
        for top, importer in sorted(outside_imports(path).items()):
            if top in SYSTEM_PACKAGES:
                continue
            dists = distributions_of(top)
            if not dists & allowed:
                problems.append(f"{module_name(path)}: {top} (imported by {importer}; "
                                f"distribution {', '.join(sorted(dists)) or 'not installed'})")
    return problems


def test_product_packages_import_only_declared_runtime_dependencies():
    problems = undeclared(sources(lab_and_bench=False), runtime())
    assert not problems, "outside packages the product imports without a runtime dependency:\n" + "\n".join(problems)


def test_every_runtime_dependency_is_imported_by_the_product():
    used = {d for path in sources(lab_and_bench=False) for top in outside_imports(path)
            for d in distributions_of(top)}
    assert runtime() - used - EXECUTED_DEPENDENCIES == set(), \
        "runtime dependencies no product module imports (lab or bench only?)"


def test_lab_and_bench_imports_are_declared_in_their_extras():
    lab = [p for p in sources(lab_and_bench=True) if p.is_relative_to(REPO / "appliance/lab")]
    bench = [p for p in sources(lab_and_bench=True) if p.is_relative_to(REPO / "appliance/bench")]
    assert lab and bench
    problems = undeclared(lab, runtime() | extra("lab")) + undeclared(bench, runtime() | extra("bench"))
    assert not problems, "lab or bench imports outside their extras:\n" + "\n".join(problems)


def test_every_declared_dependency_is_pinned_in_requirements_lock():
    pinned = {canonical(line.split("==")[0]) for line in (REPO / "requirements.lock").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    declared = runtime().union(*(extra(name) for name in project().get("optional-dependencies", {})))
    assert declared - pinned == set()


def test_the_import_walk_sees_lazy_and_transitive_imports(tmp_path, monkeypatch):
    """The checks above can fail: a lazy import counts, and so does one reached through a first-party
    module imported at module level; a first-party module imported inside a function is not followed,
    nor is anything under `if TYPE_CHECKING:`."""
    files = {
        "appliance/__init__.py": "",
        "appliance/lab/__init__.py": "",
        "appliance/lab/frames.py": "import scapy.all\n\ndef chart():\n    import matplotlib\n",
        "appliance/lab/later.py": "import pandas\n",
        "appliance/cmd.py": ("from typing import TYPE_CHECKING\n"
                             "from appliance.lab import frames\n"
                             "if TYPE_CHECKING:\n    import numpy\n"
                             "def run():\n    import tomli_w\n    from appliance.lab import later\n"),
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert outside_imports(tmp_path / "appliance/cmd.py") == {"scapy": "appliance.lab.frames", "tomli_w": "appliance.cmd"}
