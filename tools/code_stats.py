"""Counts of the package's shape, for comparing two versions of the tree.

    python tools/code_stats.py [SRC]          # SRC defaults to src/resnet
    python tools/code_stats.py --list [SRC]   # also list each finding

It reports the longest function, the largest module, the functions over 60 lines and the modules over 450, the
string-keyed reads of run records (``rec.get("final")``, ``ckpt["state"]``, ...), the function-local imports and the
places that branch on a dataset's name (``name == "synthetic"``, ``name in ("cifar10", ...)``; a model's
``family == "imagenet"`` is its architecture, not a dataset, and is not counted). Only the standard
library's ``ast`` is used, so it runs on any checkout, old or new.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450
# The keys of a run's records: metrics.jsonl lines, the final record, checkpoints and config.json.
RECORD_KEYS = {"final", "state", "step", "val_top1", "val_err", "train_err", "test_top1", "tta_top1", "top1",
               "model", "weights", "optimizer", "scheduler", "metrics"}
DATASET_NAMES = {"cifar10", "cifar10-test", "synthetic", "embedded", "imagenet", "imagefolder", "folder"}


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _string_constants(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return set()


def record_reads(tree: ast.AST):
    """``x.get("final")`` and ``x["final"]`` reads (not writes) of a record key."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and node.args and _string_constants(node.args[0]) & RECORD_KEYS):
            yield node.lineno, f'.get("{node.args[0].value}")'
        elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
              and _string_constants(node.slice) & RECORD_KEYS):
            yield node.lineno, f'["{node.slice.value}"]'


def local_imports(tree: ast.AST):
    for fn in _functions(tree):
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                yield node.lineno, f"import {names} in {fn.name}"


def _names_a_family(node: ast.AST) -> bool:
    """``family`` or ``x.family``: a model's architecture family ("imagenet" or "cifar", Table 1 or Sec. 4.2), which
    shares a word with the dataset but is not one."""
    return (isinstance(node, ast.Name) and node.id == "family") or (isinstance(node, ast.Attribute)
                                                                     and node.attr == "family")


def dataset_branches(tree: ast.AST):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.Eq, ast.NotEq, ast.In, ast.NotIn))
                and not any(_names_a_family(side) for side in [node.left, *node.comparators])):
            names = set().union(*(_string_constants(side) for side in [node.left, *node.comparators]))
            if names & DATASET_NAMES:
                yield node.lineno, "compare with " + ", ".join(sorted(names & DATASET_NAMES))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", nargs="?", default="src/resnet")
    parser.add_argument("--list", action="store_true", help="list each finding, not only the counts")
    args = parser.parse_args(argv)
    root = Path(args.src)
    modules, functions, findings = [], [], {"record reads": [], "local imports": [], "dataset branches": []}
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        rel = path.relative_to(root.parent) if root.parent != Path(".") else path
        modules.append((len(source.splitlines()), str(rel)))
        for fn in _functions(tree):
            functions.append((fn.end_lineno - fn.lineno + 1, f"{rel}:{fn.name}"))
        for key, finder in (("record reads", record_reads), ("local imports", local_imports),
                            ("dataset branches", dataset_branches)):
            findings[key] += [f"{rel}:{line}: {what}" for line, what in finder(tree)]
    modules.sort(reverse=True)
    functions.sort(reverse=True)
    long_functions = [f for f in functions if f[0] > MAX_FUNCTION_LINES]
    large_modules = [m for m in modules if m[0] > MAX_MODULE_LINES]
    print(f"modules: {len(modules)}, {sum(m[0] for m in modules)} lines")
    print(f"largest module: {modules[0][1]} ({modules[0][0]} lines); over {MAX_MODULE_LINES}: {len(large_modules)}")
    print(f"longest function: {functions[0][1]} ({functions[0][0]} lines); over {MAX_FUNCTION_LINES}: "
          f"{len(long_functions)}")
    for key, items in findings.items():
        print(f"{key}: {len(items)}")
    if args.list:
        for n, name in large_modules:
            print(f"  module {name}: {n} lines")
        for n, name in long_functions:
            print(f"  function {name}: {n} lines")
        for key, items in findings.items():
            for item in items:
                print(f"  {key}: {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
