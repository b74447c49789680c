"""The package's imports run downward only, through a strict order of layers, and form no cycle: a module can be
read knowing only what lies below it.

errors/files -> models -> data and runtime -> weights -> evaluation -> reporting -> training -> runs -> experiments
and bench -> campaign -> cli. A module may import from its own layer or a lower one. Every import counts, function-local ones included (a cycle
hidden inside a function is still a cycle). The walk reads the source with ``ast``; nothing is imported.

The runtime sits above models: it prepares a model for inference by folding its BN (``models.fold``) and its
autotuner builds the networks it times; the models know nothing of the runtime. It sits below training, which asks it
for a runtime: the autotuner times whatever step its caller gives (the trainer gives its own, ``training.step``), so
it never imports training. Data and the runtime share a layer and import nothing of each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "resnet"

LAYERS = {
    "errors": 0, "files": 0,
    "models": 1, "": 1,  # "": the package itself (its __init__ offers build_model and __version__)
    "data": 2, "runtime": 2,  # the runtime: above models (it folds BN, builds the nets it times), below training
    "weights": 3,  # weight files: models and their input normalisation
    "evaluation": 4,
    "reporting": 5,  # reports, verdicts and figures: the trainer draws its curves with them
    "training": 6,
    "runs": 7,  # the run store: every run trained once, in a folder named by its settings
    "experiments": 8, "bench": 8,
    "campaign": 9,  # long runs across sessions, and Table 6 within a job's time limit (reads the paper's numbers)
    "cli": 10, "__main__": 10,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["resnet", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


def imports(module: str, source: str, is_package: bool = False) -> list[tuple[str, int, bool]]:
    """(imported resnet module, line, function-local) for every import of the package in ``module``'s source."""
    tree = ast.parse(source)
    local = {id(node) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(f)}
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "resnet":
                continue
            for alias in node.names:  # `from . import cifar` imports a module; `from .x import name` imports x
                targets.append(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.split(".")[0] == "resnet"]
        for target in targets:
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != module:
                found.append((target, node.lineno, id(node) in local))
    return found


GRAPH = {m: imports(m, p.read_text(), p.name == "__init__.py") for m, p in MODULES.items()}


def find_cycles(edges: dict[str, set[str]]) -> list[str]:
    """Every back edge of a depth-first walk, as the cycle it closes."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join((path + [m])[(path + [m]).index(t):] + [t]))
            elif t not in state:
                visit(t, path + [m])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])
    return cycles


def test_every_module_has_a_layer():
    assert all(_layer(m) is not None for m in MODULES)


def test_imports_run_downward_only():
    upward = [f"{m}:{line} imports {t} (layer {_layer(m)} -> {_layer(t)}){' in a function' if local else ''}"
              for m, found in GRAPH.items() for t, line, local in found if _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    cycles = find_cycles({m: {t for t, _, _ in found} for m, found in GRAPH.items()})
    assert not cycles, "\n".join(cycles)


def test_the_walk_sees_function_local_imports_and_cycles():
    """The test's own tools: a function-local upward import is found, and so is a cycle."""
    assert imports("resnet.data.example", "def f():\n    from ..cli import main\n") == [("resnet.cli", 2, True)]
    assert imports("resnet.data", "from . import cifar\n", is_package=True) == [("resnet.data.cifar", 1, False)]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) < LAYERS["cli"]))
def test_library_function_local_imports_say_why(module):
    """Below the command line, an import inside a function (of the package or of any other) carries its reason in a
    comment on its line or the line before (the command line's modules import the library inside their ``run``
    functions, so that registering every command stays cheap: that reason is stated once, in ``cli/__init__.py``)."""
    lines = MODULES[module].read_text().splitlines()

    def said(line: int) -> bool:  # a comment on the line, or above the block of imports it belongs to
        if "#" in lines[line - 1]:
            return True
        above = line - 2
        while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
            above -= 1
        return above >= 0 and lines[above].strip().startswith("#")

    tree = ast.parse("\n".join(lines))
    local_lines = {node.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(f) if isinstance(node, (ast.Import, ast.ImportFrom))}  # the package's and others'
    bare = [f"{module}:{line}" for line in sorted(local_lines) if not said(line)]
    assert not bare, "function-local imports without a reason: " + ", ".join(bare)
