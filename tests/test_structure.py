"""The shape of the code, checked: imports flow one way (DESIGN.md §3), and no module reads another's private names.

Both rules are what keeps one home per rule: a face that reads an engine private, or a layer that imports upward,
is where a second copy of a rule starts.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "scrubbing"
OUTSIDE = ("benchmarks", "hypotheses")  # code built on the library: it may use only its public names


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script)] if script.exists() else [sys.executable, "-c", "import sys; from importlinter.cli import "
                                                     "lint_imports_command as c; sys.exit(c())"]
    return subprocess.run(command + ["--no-cache"], cwd=root, capture_output=True, text=True)


def test_imports_flow_one_way():
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_upward_import_is_caught(tmp_path):
    """The contract can fail: the base layer importing the run layer is reported, naming both modules."""
    shutil.copytree(ROOT / LIBRARY, tmp_path / LIBRARY, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    sites = tmp_path / LIBRARY / "sites.py"
    sites.write_text(sites.read_text() + "\nfrom . import run  # an upward import\n")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0
    assert "scrubbing.sites is not allowed to import scrubbing.run" in done.stdout


# -- private names ------------------------------------------------------------------------------------------------
def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined(tree: ast.AST) -> set[str]:
    """Underscored names a module defines: functions, classes, class attributes and attributes it assigns."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if _private(n)}


def _is_own(value: ast.expr) -> bool:
    """``self._x``, ``cls._x`` and ``super()._x``: a class's own members (overrides included)."""
    if isinstance(value, ast.Name):
        return value.id in ("self", "cls")
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super"


def private_reads(sources: dict[str, str], library: str = LIBRARY) -> list[str]:
    """``path:line: what`` for every read of an underscored name that another of these modules defines.

    Inside the library a class may use its own and its bases' members (``self._x``, ``super()._x``: the adapters
    extend ``ModelAdapter`` so), and any module what it defines itself. Code outside the library may use none of the
    library's private names, not even by overriding them. Names no module here defines (a dependency's) are not
    judged here."""
    trees = {path: ast.parse(text) for path, text in sources.items()}
    defined = {path: _defined(tree) for path, tree in trees.items()}
    in_library = {path: path.split("/")[0] == library for path in trees}
    library_names = set().union(*(names for path, names in defined.items() if in_library[path]))
    everyone = set().union(*defined.values())
    found = []
    for path, tree in trees.items():
        others = everyone - defined[path]
        forbidden = others if in_library[path] else others | library_names
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                found += [f"{path}:{node.lineno}: imports {a.name} from {node.module}" for a in node.names
                          if _private(a.name) and a.name in everyone]
            elif isinstance(node, ast.Attribute) and node.attr in forbidden:
                if in_library[path] and _is_own(node.value):
                    continue
                found.append(f"{path}:{node.lineno}: reads {ast.unparse(node)}")
            elif not in_library[path] and isinstance(node, ast.ClassDef):
                found += [f"{path}:{m.lineno}: overrides the library's private {m.name}" for m in node.body
                          if isinstance(m, ast.FunctionDef) and m.name in library_names]
    return sorted(found)


def _sources() -> dict[str, str]:
    out = {}
    for top in (LIBRARY, *OUTSIDE):
        for path in sorted((ROOT / top).rglob("*.py")):
            out[path.relative_to(ROOT).as_posix()] = path.read_text()
    return out


def test_no_module_reads_another_modules_private_names():
    found = private_reads(_sources())
    assert not found, "private names read across modules (make them public, or move the code):\n" + "\n".join(found)


@pytest.mark.parametrize("library_text, outside_text, expected", [
    ("class A:\n    def _step(self): pass\n", "def f(a):\n    return a._step()\n", ["reads a._step"]),
    ("def _helper(): pass\n", "from scrubbing.m import _helper\n", ["imports _helper"]),
    ("class A:\n    def _step(self): pass\n", "class B(A):\n    def _step(self):\n        return super()._step()\n",
     ["overrides the library's private _step", "reads super()._step"]),
    ("class A:\n    def _step(self): pass\n", "def f(a):\n    return a.step(), a._version\n", []),
])
def test_the_private_name_rule_can_fail(library_text, outside_text, expected):
    found = private_reads({"scrubbing/m.py": library_text, "benchmarks/b.py": outside_text})
    assert len(found) == len(expected)
    for line, what in zip(sorted(found, key=lambda s: s.split(": ", 1)[1]), sorted(expected)):
        assert what in line
