"""The package's shape: imports flow one way, no module-level cycles, short functions."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Code folder -> the selfsup sub-package it installs as.
ROOMS = {
    "selfsup": "selfsup",
    "ssl": "selfsup.ssl",
    "pipelines": "selfsup.pipelines",
    "eval": "selfsup.eval",
    "slurm": "selfsup.slurm",
}
# room -> rooms it must never import (module level or inside a function).
FORBIDDEN = {
    "selfsup.ssl": ("selfsup.pipelines", "selfsup.eval", "selfsup.slurm", "selfsup.cli"),
    "selfsup.pipelines": ("selfsup.eval", "selfsup.slurm", "selfsup.cli"),
    "selfsup.eval": ("selfsup.slurm", "selfsup.cli"),
    "selfsup.slurm": ("selfsup.eval", "selfsup.cli"),
}
MAX_FUNCTION_LINES = 80
# The CLI's argparse declaration is a list of options, not logic.
LONG_FUNCTIONS_ALLOWED = {("selfsup.cli", "build_parser")}


def package_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for folder, package in ROOMS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


MODULES = package_modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level or not node.module:
        raise AssertionError(f"relative import at line {node.lineno}: use absolute imports")
    # ``from a.b import c`` imports module a.b.c when c is one, else a.b.
    return [
        f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
        for alias in node.names
    ]


def imports_of(path: Path, module_level_only: bool) -> list[str]:
    """selfsup modules imported by ``path``; module level means: run when it is imported."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.extend(n for n in _imported_names(node) if n.split(".")[0] == "selfsup")
            elif isinstance(node, ast.If) and _is_type_checking(node):
                if not module_level_only:
                    visit(node.body)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not module_level_only:
                    visit(list(ast.walk(node))[1:])  # type: ignore[arg-type]
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []))
            elif isinstance(node, ast.ExceptHandler):
                visit(node.body)

    visit(tree.body)
    return found


def with_parents(module: str) -> list[str]:
    """Importing a.b.c runs a, a.b and a.b.c."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES]


def room_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def layering_violations() -> list[str]:
    problems = []
    for module, path in MODULES.items():
        banned = FORBIDDEN.get(room_of(module), ())
        for target in imports_of(path, module_level_only=False):
            if any(target == b or target.startswith(b + ".") for b in banned):
                problems.append(f"{module} imports {target}")
    return problems


def module_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = {p for t in imports_of(path, module_level_only=True) for p in with_parents(t)}
        # A module's own packages are initialised (or initialising) before it runs: a
        # package that imports its sub-modules (selfsup.pipelines, its components) is
        # no cycle, as long as no sub-module imports a sibling back into a cycle.
        ancestors = {a for a in with_parents(module) if a != module}
        graph[module] = targets - {module} - ancestors
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that starts and ends at the same module, or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target in on_stack:
                return [*stack[stack.index(target) :], target]
            if target not in done and (cycle := visit(target)):
                return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (cycle := visit(node)):
            return cycle
    return None


def test_the_walk_sees_the_packages_imports():
    graph = module_graph()
    assert len(MODULES) > 40
    assert "selfsup.pipelines.config" in graph["selfsup.pipelines.train.trainer"]
    assert "selfsup.ssl.backbones" in graph["selfsup.ssl.methods"] | graph["selfsup.ssl.method"]


def test_imports_flow_one_way():
    assert layering_violations() == []


def test_no_module_level_import_cycle():
    assert find_cycle(module_graph()) is None


def test_the_checks_catch_what_they_look_for(tmp_path, monkeypatch):
    # A forbidden import and a cycle planted in throw-away modules are found.
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from selfsup.eval.frozen.probe import probe\n")
    monkeypatch.setitem(MODULES, "selfsup.ssl.bad", bad)
    assert layering_violations() == ["selfsup.ssl.bad imports selfsup.eval.frozen.probe"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def long_functions(max_lines: int = MAX_FUNCTION_LINES) -> list[str]:
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > max_lines and (module, node.name) not in LONG_FUNCTIONS_ALLOWED:
                    found.append(f"{module}.{node.name}: {lines} lines")
    return found


def test_no_function_is_longer_than_a_screen():
    assert long_functions() == []
    assert long_functions(max_lines=30)  # the measure does see functions


def test_ssl_raises_plain_errors_that_name_its_arguments_not_config_keys():
    for path in (REPO / "ssl").glob("*.py"):
        tree = ast.parse(path.read_text())
        assert "selfsup.errors" not in path.read_text(), path
        for node in ast.walk(tree):
            if not isinstance(node, ast.Raise):
                continue
            text = " ".join(
                c.value
                for c in ast.walk(node)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            )
            for section in ("data.", "model.", "method.", "augment.", "train."):
                assert section not in text, (path, node.lineno, text)


# What pipelines/config (the schema, loading, validation) may never import: every
# component registers with it instead (torchtitan's config that imports no component).
COMPONENT_ROOMS = (
    "selfsup.ssl",
    "selfsup.pipelines.data",
    "selfsup.pipelines.runtime",
    "selfsup.pipelines.checkpoint",
    "selfsup.pipelines.train",
    "selfsup.eval",
    "selfsup.slurm",
)


def test_the_config_package_imports_no_component():
    config = [m for m in MODULES if m == "selfsup.pipelines.config" or
              m.startswith("selfsup.pipelines.config.")]  # fmt: skip
    assert len(config) >= 4, config  # schema, loading, validation, registry
    for module in config:
        for target in imports_of(MODULES[module], module_level_only=False):
            assert not target.startswith(COMPONENT_ROOMS), f"{module} imports {target}"
