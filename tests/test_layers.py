"""The layout rules, checked on the source (docs/ARCHITECTURE.md draws them):

* lower layers never import higher ones (every import counts, also those inside functions), and packages on the
  same layer never import each other (``tasks`` and ``serving`` sit side by side);
* a step never imports another step: ``tasks/`` modules share code only through the stage packages below them;
* no import cycles between our modules (a cycle hidden in a function-level import is still a cycle);
* product modules stay under 400 lines and functions under 60 (the README's layout section says so).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Bottom to top; packages in one tuple share a layer. A package imports its own modules and lower layers' only.
TIERS = [("core",), ("photos",), ("warehouse",), ("models",), ("embedding",), ("index",), ("training", "denoising"),
         ("crawlers",), ("demo_shop",), ("tasks", "serving"), ("flows",), ("shoesearch",)]
LAYERS = [package for tier in TIERS for package in tier]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def product_modules() -> dict[str, Path]:
    out = {}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of our packages in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)]
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]  # `from pkg import module`
    return [(line, name) for line, name in found if name.split(".")[0] in LAYERS]


def test_lower_layers_never_import_higher_ones_or_their_siblings():
    rank = {name: i for i, tier in enumerate(TIERS) for name in tier}
    upward = []
    for module, path in product_modules().items():
        package = module.split(".")[0]
        for line, name in imports_of(path):
            target = name.split(".")[0]
            if rank[target] > rank[package] or (rank[target] == rank[package] and target != package):
                upward.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not upward, "upward or sideways imports:\n" + "\n".join(upward)


def test_no_step_imports_another_step():
    """``tasks/`` holds only steps (settings + input run ids in, a run id out); what two steps share lives in a
    stage package below them (embedding, index, training, denoising), so no step reaches into another."""
    found = [f"{path.relative_to(REPO)}:{line} imports {name}"
             for module, path in product_modules().items() if module.startswith("tasks.")
             for line, name in imports_of(path) if name.startswith("tasks.")]
    assert not found, "a step imports another step:\n" + "\n".join(found)


def test_the_layer_check_sees_an_upward_import_inside_a_function(tmp_path):
    """The check is not vacuous: a function-level import of a higher layer is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tasks.index import build_index\n    return build_index\n")
    assert ("tasks.index" in [name for _, name in imports_of(bad)])


def module_graph() -> dict[str, set[str]]:
    modules = product_modules()
    graph = {}
    for module, path in modules.items():
        targets = set()
        for _, name in imports_of(path):
            while name and name not in modules:  # `from pkg import name` where name is not a module
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# A package's __init__ re-exporting its modules (warehouse/__init__ -> warehouse.runs -> warehouse) is an
# edge back to the package only through `from warehouse import x` inside that package: it is not allowed.
def test_no_import_cycles_between_our_modules():
    found = cycles(module_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_modules_and_functions_stay_small():
    too_long = []
    for module, path in product_modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(REPO)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "over the size limits:\n" + "\n".join(too_long)


@pytest.mark.parametrize("package", LAYERS)
def test_every_layer_is_a_package_listed_for_installation(package):
    import tomllib

    assert (REPO / package / "__init__.py").exists()
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert f"{package}*" in include
