#!/usr/bin/env python3
"""Fail on an import cycle among the product packages, or on an arrow up the layers.

    python scripts/check_imports.py            # from the repository root; exit 1 and print each problem

The graph is built from the sources' syntax trees (nothing is imported): one node per module,
one edge per import statement, wherever it sits. An import inside a function counts like one at
the top of the module: it runs too (at its first call) and couples the two modules just the
same, so deferring it hides a cycle instead of removing it. There is no marker to exempt one.
Only imports under `if TYPE_CHECKING:` do not count: they never run.

`from pkg import name` is an edge to `pkg.name` when that is a module, else to `pkg` (its
`__init__`). Importing `a.b.c` also runs `a/__init__` and `a/b/__init__`; those implicit edges
are left out, as in every import-graph tool: a package's `__init__` importing its own
submodules would otherwise be a cycle with each of them.

Layer rule: the appliance wires the other packages together, so dataplane/, policy/, tenants/,
securewatch/ and escalation/ never import appliance/ (`LOWER_LAYERS`).

Run by tox's lint env (`make test`).
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys
from collections.abc import Iterator

PACKAGES = ("dataplane", "policy", "securewatch", "tenants", "escalation", "appliance")
TOP_LAYER = "appliance"
LOWER_LAYERS = ("dataplane", "policy", "tenants", "securewatch", "escalation")


def module_name(root: pathlib.Path, path: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_modules(root: pathlib.Path, packages: tuple[str, ...]) -> dict[str, pathlib.Path]:
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            modules[module_name(root, path)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, in functions too, except those under `if TYPE_CHECKING:`."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from ... import` reads from (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    package = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(module: str, path: pathlib.Path, known: set[str]) -> list[tuple[str, int]]:
    """(first-party module imported, line) for each import in `path` that names one in `known`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = _base(node, module, is_package)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        for target in targets:
            # `import a.b.c` names a.b.c; a name that is not a module of ours falls back to the
            # longest prefix that is (e.g. `from pkg.mod import func` -> pkg.mod).
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.append((target, node.lineno))
    return found


def build_graph(root: pathlib.Path, packages: tuple[str, ...]
                ) -> tuple[dict[str, dict[str, int]], dict[str, pathlib.Path]]:
    """module -> {imported module: line of the first import of it}."""
    modules = find_modules(root, packages)
    known = set(modules)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in imports_of(module, path, known):
            edges.setdefault(target, line)
        graph[module] = edges
    return graph, modules


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the groups of modules that import each other (size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return sorted(groups)


def one_cycle(graph: dict[str, dict[str, int]], group: list[str]) -> list[str]:
    """A shortest cycle through the group's first module, as a path that ends where it starts."""
    members = set(group)
    start = group[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child in members and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return group  # unreachable for a strongly connected group


def problems(root: pathlib.Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    graph, modules = build_graph(root, packages)
    out = []
    for group in strongly_connected(graph):
        cycle = one_cycle(graph, group)
        steps = [f"{a} ({modules[a].relative_to(root)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
        out.append(f"import cycle among {len(group)} modules ({', '.join(group)}): "
                   + " -> ".join([*steps, cycle[-1]]))
    for module, edges in sorted(graph.items()):
        if module.split(".")[0] not in LOWER_LAYERS:
            continue
        for target, line in sorted(edges.items()):
            if target.split(".")[0] == TOP_LAYER:
                out.append(f"layer: {modules[module].relative_to(root)}:{line}: {module} imports {target}; "
                           f"{', '.join(LOWER_LAYERS)} never import {TOP_LAYER}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parents[1],
                        help="the repository (default: the one holding this script)")
    args = parser.parse_args(argv)
    found = problems(args.root.resolve())
    for problem in found:
        print(problem)
    if found:
        print(f"check_imports: {len(found)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_imports: no import cycle, no import of {TOP_LAYER} from {', '.join(LOWER_LAYERS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
