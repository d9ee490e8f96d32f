"""The package's layers, read from its imports (every ``import``, at module level or inside a
function, type-only ones included): imports run only downward, and no modules import each other in
a circle.  Also the size limits: no module over 500 lines, no class over 250 outside the engine.

    core < engine < models < tasks < methods < evaluation < plots < runs < (top: api, cli, report, figures/)

``python tests/test_layers.py`` prints every import that breaks a rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "circuitfind"
LAYERS = ("core", "engine", "models", "tasks", "methods", "evaluation", "plots", "runs")
TOP = len(LAYERS)  # api, cli, clihelp, report, figures/
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 250


def module_name(path: Path) -> str:
    parts = ["circuitfind", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    """The rank of a module's layer; the package's own ``__init__`` (the version, nothing imported)
    is the ground."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else TOP


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The circuitfind modules ``module`` imports, anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from pkg import submodule`` imports the submodule; ``from pkg import name`` the package
            names = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # circuitfind.core.graph.Graph -> circuitfind.core.graph
                name = name.rpartition(".")[0]
            if name.startswith("circuitfind") and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} ({LAYERS[layer(a)] if 0 <= layer(a) < TOP else 'top'}) imports {b} "
            f"({LAYERS[layer(b)] if 0 <= layer(b) < TOP else 'top'})"
            for a, targets in sorted(graph.items()) for b in sorted(targets) if layer(b) > layer(a)]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def oversized() -> list[str]:
    found = []
    for module, path in modules().items():
        text = path.read_text()
        n_lines = len(text.splitlines())
        if n_lines > MAX_MODULE_LINES:
            found.append(f"{path.relative_to(PACKAGE)}: {n_lines} lines")
        if layer(module) == LAYERS.index("engine"):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                found.append(f"{path.relative_to(PACKAGE)}: class {node.name}, {node.end_lineno - node.lineno + 1} lines")
    return found


def test_the_reader_sees_imports_that_run_the_wrong_way_and_circles():
    # the checks themselves, on a made-up graph: they must be able to fail
    graph = {"circuitfind.core.a": {"circuitfind.runs.b"}, "circuitfind.runs.b": {"circuitfind.core.a"},
             "circuitfind.methods.c": {"circuitfind.core.a"}}
    assert wrong_way(graph) == ["circuitfind.core.a (core) imports circuitfind.runs.b (runs)"]
    assert circles(graph) == [["circuitfind.core.a", "circuitfind.runs.b"]]
    real = import_graph()
    assert "circuitfind.core.graph" in real["circuitfind.methods.acdc"]  # relative imports resolved
    assert "circuitfind.methods.specs.acdc" in real["circuitfind.methods.specs.eap"] or \
        "circuitfind.methods.spec" in real["circuitfind.methods.specs.eap"]


def test_imports_run_only_downward():
    assert wrong_way(import_graph()) == []


def test_no_modules_import_each_other_in_a_circle():
    assert circles(import_graph()) == []


def test_no_module_over_500_lines_and_no_class_over_250_outside_the_engine():
    assert oversized() == []


def test_every_name_the_package_hands_on_is_found():
    import circuitfind

    for name in circuitfind._API:  # loaded on first use, from the module the package names
        assert getattr(circuitfind, name) is not None


if __name__ == "__main__":
    graph = import_graph()
    for line in wrong_way(graph) + [" <-> ".join(c) for c in circles(graph)] + oversized():
        print(line)
