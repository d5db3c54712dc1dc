"""The structure rules of docs/architecture.md, checked on the source with `ast`.

No import cycles; only the layers above the gateway import it; imports run downward between
layers; modules and functions stay readable in size; every exception is in the one error tree.
A lazy import inside a function counts as an import; one under `if TYPE_CHECKING:` does not,
nor a package's `__init__` re-exporting its own modules.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import distillguard
from distillguard.errors import DistillGuardError, MissingDependencyError

PACKAGE_ROOT = Path(distillguard.__file__).parent

# Lower layers never import higher ones. Within a layer, packages may import each other as
# long as no cycle forms between modules.
LAYERS: dict[str, int] = {
    "distillguard": 0,  # the package's own __init__ (the version)
    "distillguard.errors": 0,
    "distillguard.config": 0,
    "distillguard.redact": 0,
    "distillguard.watermark": 1,
    "distillguard.keys": 1,
    "distillguard.store": 1,
    "distillguard.engine": 2,
    "distillguard.monitor": 2,
    "distillguard.forensics": 2,
    "distillguard.integrations": 2,
    "distillguard.gateway": 3,
    "distillguard.experiments": 4,
    "distillguard.cli": 5,
    "distillguard.__main__": 6,
}
MAY_IMPORT_THE_GATEWAY = ("distillguard.gateway", "distillguard.cli", "distillguard.experiments")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100
MODULE_LIMITS = {"distillguard.gateway.app": 400}


@dataclass(frozen=True)
class Module:
    name: str
    path: Path

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


@cache
def modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        found[name] = Module(name, path)
    return found


def _resolve(name: str) -> str | None:
    """The module a dotted import name lands in (a name imported from a module is in it)."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    return skipped


@cache
def imports_of(name: str) -> frozenset[str]:
    """Every distillguard module `name` imports, at module level or inside a function."""
    module = modules()[name]
    return imports_in(name, module.is_package, module.path.read_text(encoding="utf-8"))


def imports_in(name: str, is_package: bool, source: str) -> frozenset[str]:
    tree = ast.parse(source)
    skipped = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if target.split(".")[0] != "distillguard":
                continue
            resolved = _resolve(target)
            if resolved is not None and resolved != name:
                found.add(resolved)
    if is_package:  # re-exporting its own modules is not a dependency
        found = {target for target in found if not target.startswith(name + ".")}
    return frozenset(found)


def _layer(name: str) -> int:
    candidate = name
    while candidate not in LAYERS:
        candidate = candidate.rpartition(".")[0]
        if not candidate:
            raise AssertionError(f"{name} is in no layer: add its package to LAYERS")
    return LAYERS[candidate]


def import_graph() -> dict[str, set[str]]:
    return {name: set(imports_of(name)) for name in modules()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_there_are_no_import_cycles() -> None:
    assert import_cycles(import_graph()) == []


def test_the_cycle_check_can_fail() -> None:
    graph = import_graph()
    graph["distillguard.store.base"].add("distillguard.store.usage")  # usage imports base
    assert ["distillguard.store.base", "distillguard.store.usage"] in import_cycles(graph)


def test_a_lazy_import_counts_and_a_type_checking_one_does_not() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from distillguard.gateway.app import Gateway\n"
        "def run() -> None:\n"
        "    from distillguard.store.usage import read_usage\n"
        "    from . import base\n"
    )
    found = imports_in("distillguard.store.audit", False, source)
    assert found == {"distillguard.store.usage", "distillguard.store.base"}


def test_only_the_layers_above_the_gateway_import_it() -> None:
    offenders = {
        name: sorted(t for t in imports_of(name) if t.startswith("distillguard.gateway"))
        for name in modules()
        if not name.startswith(MAY_IMPORT_THE_GATEWAY)
    }
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_imports_run_downward_between_layers() -> None:
    upward = sorted(
        (name, target)
        for name in modules()
        for target in imports_of(name)
        if _layer(target) > _layer(name)
    )
    assert upward == []


def test_modules_stay_readable_in_size() -> None:
    oversized = {}
    for name, module in modules().items():
        lines = len(module.path.read_text(encoding="utf-8").splitlines())
        if lines > MODULE_LIMITS.get(name, MAX_MODULE_LINES):
            oversized[name] = lines
    assert oversized == {}


def test_functions_fit_on_a_screen_or_two() -> None:
    oversized = {}
    for name, module in modules().items():
        for node in ast.walk(ast.parse(module.path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    oversized[f"{name}.{node.name}"] = length
    assert oversized == {}


def test_every_package_directory_is_a_regular_package() -> None:
    directories = {path.parent for path in PACKAGE_ROOT.rglob("*.py")}
    assert sorted(d for d in directories if not (d / "__init__.py").exists()) == []


def test_every_exception_is_in_the_one_error_tree() -> None:
    """Exceptions are defined in `distillguard.errors` only, all under DistillGuardError."""
    strays = []
    for name in modules():
        if name == "distillguard.__main__":
            continue
        try:
            module = importlib.import_module(name)
        except MissingDependencyError:  # an optional extra (vllm) is not installed here
            continue
        for _, value in inspect.getmembers(module, inspect.isclass):
            if value.__module__ != name or not issubclass(value, BaseException):
                continue
            if name != "distillguard.errors" or not issubclass(value, DistillGuardError):
                strays.append(f"{name}.{value.__name__}")
    assert strays == []


def test_the_error_docstring_shows_the_whole_hierarchy() -> None:
    errors = importlib.import_module("distillguard.errors")
    tree = errors.__doc__ or ""
    for name in errors.__all__:
        value = getattr(errors, name)
        if inspect.isclass(value) and issubclass(value, BaseException):
            assert f" {name} " in tree or f" {name}\n" in tree, name
