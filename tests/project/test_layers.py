"""The package's layers: imports run only in the request's direction, never upward, and no
module imports itself back through others. Every import counts, lazy and TYPE_CHECKING ones
included: a cycle hidden in a function is still a cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = "typegpt_gateway"
ROOT = Path(__file__).resolve().parents[2] / "service" / PACKAGE
# Highest first: a layer may import only the layers after it. The CLI starts processes; the
# foundation (settings, errors, redaction, the Usage value) is what every layer shares.
LAYERS = (
    "cli",
    "process",
    "api",
    "responses",
    "pipeline",
    "limits",
    "upstream",
    "keystore",
    "ops",
    "foundation",
)
FOUNDATION = frozenset({"settings", "errors", "redaction", "usage", "__init__"})
TOP = frozenset({"cli", "__main__"})


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _imported(node: ast.ImportFrom, here: str, is_package: bool, known: Iterable[str]) -> list[str]:
    if node.level:
        base = here.split(".") if is_package else here.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, node.module] if node.module else base)
    else:
        source = node.module or ""
    names = [f"{source}.{alias.name}" for alias in node.names]
    # `from package import module` names a module; `from module import name` names the module.
    return [name if name in known else source for name in names]


def import_graph(files: Mapping[str, Path]) -> dict[str, set[str]]:
    """Each package module and the package modules it imports, anywhere in its code."""
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                targets.update(_imported(node, name, path.name == "__init__.py", files))
        graph[name] = {target for target in targets if target in files and target != name}
    return graph


def layer_of(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts or parts[0] in FOUNDATION:
        return "foundation"
    if parts[0] in TOP:
        return "cli"
    return parts[0]


def upward_imports(graph: Mapping[str, set[str]]) -> list[str]:
    found = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if LAYERS.index(layer_of(source)) > LAYERS.index(layer_of(target)):
                found.append(f"{source} -> {target}")
    return found


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_belongs_to_a_known_layer():
    assert {layer_of(name) for name in modules()} <= set(LAYERS)


def test_no_import_runs_upward_between_layers():
    assert upward_imports(import_graph(modules())) == []


def test_no_module_imports_itself_back():
    assert cycles(import_graph(modules())) == []


def test_each_package_says_in_two_lines_what_it_is_for():
    for package in sorted(ROOT.glob("*/__init__.py")):
        if package.parent.name == "_envoy":
            continue
        docstring = ast.get_docstring(ast.parse(package.read_text()))
        assert docstring, f"{package} has no docstring"
        assert len(docstring.splitlines()) <= 2, f"{package}: say it in two lines"


def test_the_checks_catch_what_they_look_for():
    graph = {
        "typegpt_gateway.ops.observe": {"typegpt_gateway.pipeline.pipeline"},
        "typegpt_gateway.pipeline.pipeline": {"typegpt_gateway.pipeline.sse"},
        "typegpt_gateway.pipeline.sse": {"typegpt_gateway.pipeline.pipeline"},
    }
    assert upward_imports(graph) == [
        "typegpt_gateway.ops.observe -> typegpt_gateway.pipeline.pipeline"
    ]
    assert cycles(graph) == [["typegpt_gateway.pipeline.pipeline", "typegpt_gateway.pipeline.sse"]]


def test_lazy_and_relative_imports_are_seen(tmp_path):
    package = tmp_path / PACKAGE
    (package / "pipeline").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pipeline" / "__init__.py").write_text("")
    (package / "pipeline" / "sse.py").write_text("")
    (package / "errors.py").write_text("")
    (package / "pipeline" / "pipeline.py").write_text(
        "from . import sse\ndef f():\n    from ..errors import GatewayError\n"
    )
    files = {
        ".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
        for p in package.rglob("*.py")
    }
    graph = import_graph(files)
    assert graph["typegpt_gateway.pipeline.pipeline"] == {
        "typegpt_gateway.pipeline.sse",
        "typegpt_gateway.errors",
    }
