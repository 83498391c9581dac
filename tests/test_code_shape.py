"""The house rules a newcomer relies on, checked: files and functions stay small enough to read,
a path a docstring names exists, and the model package never imports the pipeline (a ruff rule,
so an editor flags it as it is typed, also inside a function)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

PACKAGES = ("vfmtok", "pipeline", "tests", "benchmarks", "scripts")
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60
# A project path in prose: tests/test_x.py, pipeline/stages/, vfmtok/zoo.py, ...
PATH = re.compile(r"(?<![\w/.-])((?:vfmtok|pipeline|tests|benchmarks|scripts)/"
                  r"[a-z0-9_/.-]*[a-z0-9_](?:\.py|/))")


def _sources() -> list:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def _docstrings(tree: ast.Module) -> list[str]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef
                                                               | ast.ClassDef))]
    return [doc for n in nodes if (doc := ast.get_docstring(n))]


def test_files_and_functions_stay_readable():
    too_long = []
    for path in _sources():
        text = path.read_text()
        rel = path.relative_to(REPO)
        if (n := len(text.splitlines())) > MAX_FILE_LINES:
            too_long.append(f"{rel}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                too_long.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, "\n".join(too_long)


def test_every_path_a_docstring_names_exists():
    stale = []
    for path in _sources():
        for doc in _docstrings(ast.parse(path.read_text())):
            stale += [f"{path.relative_to(REPO)}: {m}" for m in PATH.findall(doc) if not (REPO / m).exists()]
    assert not stale, "\n".join(stale)


@pytest.mark.parametrize("doc", ["README.md", "benchmarks/README.md"])
def test_every_path_the_readmes_name_exists(doc):
    stale = [m for m in PATH.findall((REPO / doc).read_text()) if not (REPO / m).exists()]
    assert not stale, f"{doc}: {stale}"


def test_the_path_check_sees_a_stale_name():
    doc = 'x\n\nChecked by tests/test_nonesuch.py and pipeline/layout.py; see ``vfmtok/zoo.py``.'
    found = PATH.findall(doc)
    assert found == ["tests/test_nonesuch.py", "pipeline/layout.py", "vfmtok/zoo.py"]
    assert [m for m in found if not (REPO / m).exists()] == ["tests/test_nonesuch.py"]


@pytest.mark.parametrize("code", [
    "import pipeline.layout\n",
    "from pipeline import layout\n",
    "def f():\n    from pipeline.params import Params\n    return Params\n",
])
def test_ruff_refuses_vfmtok_importing_pipeline(code):
    """The rule is ``vfmtok/ruff.toml``'s banned API: it sees an import inside a function too."""
    ran = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--stdin-filename",
                          "vfmtok/probe.py", "-"], input=code, capture_output=True, text=True, cwd=REPO)
    assert ran.returncode == 1 and "TID251" in ran.stdout, ran.stdout + ran.stderr
    beside = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--stdin-filename",
                             "pipeline/probe.py", "-"], input=code, capture_output=True, text=True, cwd=REPO)
    assert "TID251" not in beside.stdout  # the pipeline imports itself freely
