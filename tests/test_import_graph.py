"""The import graph: the SDK never imports the engine, and modules import one way.

Every import form counts: ``import a.b``, ``from a import b``, relative imports (resolved
against the importing module's package), imports inside functions, and
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name. Imports under
``if TYPE_CHECKING:`` count for the SDK's independence (a type-only dependency is still a
dependency) but not for cycles (they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_ROOTS = {
    "skyflow_vault_plugin": REPO / "src",
    "vault_plugin_sdk": REPO / "sdk" / "src",
    "skyflow_emulator": REPO / "emulator" / "src",
    "skyflow_devtools": REPO / "devtools" / "src",
}

# No import cycles: the engine reads one way, mount state <- path modules <- backend, and
# telemetry names <- scope <- disabled <- otel <- factory. A set, so that a failure names the
# cycle it found.
KNOWN_CYCLES: set[frozenset[str]] = set()

# Layers inside one package, lowest first: a module imports only from the layers before it.
ENGINE = "skyflow_vault_plugin.skyflow"
LAYERS = {
    "the token exchange": [f"{ENGINE}.{m}" for m in ("ctx", "assertion", "responses", "client")],
    "telemetry": [
        f"{ENGINE}.telemetry.{m}"
        for m in (
            "settings",
            "names",
            "labels",
            "classify",
            "scope",
            "disabled",
            "otlp_spans",
            "otel",
            "factory",
        )
    ],
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    type_only: bool


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every Python module of the four packages, generated protobuf code included."""
    found: dict[str, Path] = {}
    for package, root in PACKAGE_ROOTS.items():
        for path in sorted((root / package).rglob("*.py")):
            found[_module_name(root, path)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, type_only: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        inside = type_only or (isinstance(child, ast.If) and _is_type_checking(child.test))
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, True
                yield from _walk(stmt, True)
            for stmt in child.orelse:
                yield stmt, type_only
                yield from _walk(stmt, type_only)
            continue
        yield child, inside
        yield from _walk(child, inside)


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module a relative import names, as Python resolves it."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, name] if name else base)


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[Edge]:
    """Every module of ``known`` that ``name`` imports, in every form."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    for node, type_only in _walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.level, node.module)
            targets = [base]
            targets += [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if called in ("import_module", "__import__") and isinstance(first, ast.Constant):
                target = str(first.value)
                if target.startswith("."):
                    level = len(target) - len(target.lstrip("."))
                    target = _resolve(name, is_package, level, target.lstrip(".") or None)
                targets = [target]
        for target in targets:
            # the deepest known module the name reaches (``a.b.Class`` -> ``a.b``)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield Edge(name, target, type_only)


def graph() -> list[Edge]:
    known = modules()
    return [edge for name, path in known.items() for edge in imports(name, path, known)]


def cycles(edges: list[Edge]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    succ: dict[str, set[str]] = {}
    for edge in edges:
        if not edge.type_only:
            succ.setdefault(edge.source, set()).add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(succ.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for node in sorted(succ):
        if node not in index:
            visit(node)
    return found


# -- the rules ----------------------------------------------------------------------------


def test_the_walk_sees_every_package_and_every_import_form() -> None:
    known = modules()
    assert {name.split(".")[0] for name in known} == set(PACKAGE_ROOTS)
    edges = graph()
    sdk_edges = {(e.source, e.target) for e in edges}
    # relative (``from ..framework.backend import``), package-relative and absolute imports
    assert ("vault_plugin_sdk.plugin.serve", "vault_plugin_sdk.framework.backend") in sdk_edges
    assert ("vault_plugin_sdk.plugin", "vault_plugin_sdk.plugin.serve") in sdk_edges
    assert ("skyflow_vault_plugin.cli", "vault_plugin_sdk.plugin") in sdk_edges


def test_relative_and_dynamic_imports_resolve_like_python(tmp_path: Path) -> None:
    known = {
        "pkg": Path("pkg/__init__.py"),
        "pkg.a": Path("pkg/a.py"),
        "pkg.sub": Path("pkg/sub/__init__.py"),
        "pkg.sub.b": Path("pkg/sub/b.py"),
        "other": Path("other.py"),
    }
    source = (
        "import importlib\n"
        "from .. import a\n"
        "from . import b\n"
        "from ..a import thing\n"
        "def later():\n"
        "    import other\n"
        "    importlib.import_module('other')\n"
        "    importlib.import_module('..a', __package__)\n"
        "if TYPE_CHECKING:\n"
        "    from .b import T\n"
    )
    file = tmp_path / "c.py"
    file.write_text(source)
    edges = set(imports("pkg.sub.c", file, known))
    assert {(e.target, e.type_only) for e in edges} == {
        ("pkg", False),
        ("pkg.a", False),
        ("pkg.sub", False),
        ("pkg.sub.b", False),
        ("other", False),
        ("pkg.sub.b", True),
    }


def offenders(package: str, *, only: str | None = None, never: tuple[str, ...] = ()) -> list[str]:
    """The imports out of ``package`` that leave ``only`` or reach a package in ``never``."""
    return [
        f"{e.source} -> {e.target}"
        for e in graph()
        if e.source.startswith(package)
        and ((only is not None and not e.target.startswith(only)) or e.target.startswith(never))
    ]


def test_the_sdk_never_imports_the_engine_or_the_dev_tools() -> None:
    assert offenders("vault_plugin_sdk", only="vault_plugin_sdk") == []


def test_the_sdks_tests_and_examples_use_the_sdk_only() -> None:
    # `cd sdk && pytest` must work without the engine installed.
    known = modules()
    files = sorted((REPO / "sdk" / "tests").rglob("*.py")) + sorted(
        (REPO / "sdk" / "examples").rglob("*.py")
    )
    assert len(files) > 5
    offenders = [
        f"{path.relative_to(REPO)} -> {e.target}"
        for path in files
        for e in imports(path.stem, path, known)
        if not e.target.startswith("vault_plugin_sdk")
    ]
    assert offenders == []


def test_the_plugin_never_imports_the_emulator_or_the_dev_tools() -> None:
    never = ("skyflow_emulator", "skyflow_devtools")
    assert offenders("skyflow_vault_plugin", never=never) == []


def test_the_emulator_stands_alone() -> None:
    assert offenders("skyflow_emulator", only="skyflow_emulator") == []


def test_no_import_cycles() -> None:
    """Imports inside functions count too: they only hide a cycle until the call."""
    assert cycles(graph()) == KNOWN_CYCLES


def layer_violations(edges: list[Edge], order: list[str]) -> list[str]:
    """Edges from a layer of ``order`` to itself or a later one (type-only imports excepted)."""
    rank = {name: index for index, name in enumerate(order)}
    return [
        f"{e.source} -> {e.target}"
        for e in edges
        if not e.type_only
        and e.source in rank
        and e.target in rank
        and rank[e.target] >= rank[e.source]
    ]


def test_layers_import_downwards_only() -> None:
    """Stricter than no cycles: a new back edge fails here even before it closes a cycle."""
    known = modules()
    edges = graph()
    for name, order in LAYERS.items():
        assert set(order) <= set(known), f"{name}: a layer module is missing"
        assert layer_violations(edges, order) == [], name


def test_a_back_edge_is_a_layer_violation() -> None:
    order = ["pkg.low", "pkg.high"]
    edges = [Edge("pkg.high", "pkg.low", False), Edge("pkg.low", "pkg.high", False)]
    assert layer_violations(edges, order) == ["pkg.low -> pkg.high"]
    assert layer_violations([Edge("pkg.low", "pkg.high", True)], order) == []
