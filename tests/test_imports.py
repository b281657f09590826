"""No import cycles among maskkit's modules: an ast walk of maskkit/ (top-level and function-level imports)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "maskkit"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, known: set[str]) -> set[str]:
    """The maskkit modules a module imports anywhere in its body (`from maskkit import options` counts
    `maskkit.options`; `from maskkit.x import name` counts `maskkit.x`)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != "maskkit":
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: imported_modules(ast.parse(path.read_text()), known) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walk_sees_top_level_and_function_level_imports():
    graph = import_graph()
    assert "maskkit.contract.errors" in graph["maskkit.cli"]
    assert "maskkit.commands.train" in graph["maskkit.cli"]  # imported inside the train command


def test_find_cycle_names_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_maskkit_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The layers, lowest first (maskkit/__init__.py says why): a module may import its own layer and those below.
LAYERS = ("maskkit.contract.errors", "maskkit.options", "maskkit.contract", "maskkit.data", "maskkit.engine",
          "maskkit.commands", "maskkit.cli")


def layer(module: str) -> int:
    """The index in LAYERS of a module: its longest matching prefix (maskkit/__init__ and __main__ go with cli)."""
    if module in ("maskkit", "maskkit.__main__", "maskkit.cli_options"):
        return len(LAYERS) - 1
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS.index(max(matches, key=len))


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a lower layer to a higher one, and from one command module to another."""
    edges = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            if layer(target) > layer(module):
                edges.append(f"{module} -> {target} ({LAYERS[layer(module)]} is below {LAYERS[layer(target)]})")
            elif module.startswith("maskkit.commands.") and target.startswith("maskkit.commands."):
                edges.append(f"{module} -> {target} (a command module imports another command module)")
    return edges


def test_upward_edges_are_named():
    graph = {"maskkit.data.loader": {"maskkit.engine.models", "maskkit.options"},
             "maskkit.commands.tune": {"maskkit.commands.train"}, "maskkit.cli": {"maskkit.commands.tune"}}
    assert upward_edges(graph) == [
        "maskkit.commands.tune -> maskkit.commands.train (a command module imports another command module)",
        "maskkit.data.loader -> maskkit.engine.models (maskkit.data is below maskkit.engine)",
    ]


def test_no_module_imports_a_higher_layer():
    edges = upward_edges(import_graph())
    assert not edges, "imports against the layer order:\n" + "\n".join(edges)
