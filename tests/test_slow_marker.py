"""The guard in tests/conftest.py: a test without the ``slow`` marker that starts DVC, torchrun, a
Prefect server or a stage process fails with one line saying to mark it, and the process never
starts; a marked test starts it. The fast loop, ``pytest -m "not slow"``, stays fast that way."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, argv_of, slow_process

pytest_plugins = ["pytester"]
PY = sys.executable


@pytest.mark.parametrize(("args", "shell", "what"), [
    (["dvc", "repro", "-q"], False, "dvc"),
    ([Path("/venv/bin/dvc"), "exp", "show"], False, "dvc"),
    ([PY, "-m", "dvc", "status"], False, "dvc"),
    (b"/usr/bin/dvc", False, "dvc"),
    ("cd proj && dvc repro", True, "dvc"),
    (["torchrun", "--standalone", "--nproc_per_node=2", "train.py"], False, "torchrun"),
    ([PY, "-u", "-m", "torch.distributed.run", "--standalone", "t.py"], False, "torchrun"),
    ([PY, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app", "--port", "8123"], False,
     "a Prefect server"),
    (["prefect", "server", "start"], False, "a Prefect server"),
    ([PY, "-m", "pipeline.stage", "prepare"], False, "a stage process"),
    ([PY, "-m", "ruff", "check", "."], False, None),
    ([PY, "-c", "import dvc; print('-m dvc')"], False, None),
    ([PY, "-X", "importtime", "-m", "pipeline.cli", "--help"], False, None),
    ([PY, "-mpytest", "-p", "no:cacheprovider"], False, None),
    (["git", "commit", "-qm", "dvc"], False, None),
    ("echo dvc-like", True, None),
    ([PY, "-m", "uvicorn", "other.app:create_app"], False, None),
])
def test_what_counts_as_a_slow_process(args, shell, what):
    assert slow_process(argv_of(args, shell), shell) == what


INNER_TESTS = """
import subprocess
import pytest

def test_unmarked(fake_dvc):
    subprocess.run([fake_dvc, "status"], check=True)

def test_unmarked_that_swallows_the_error(fake_dvc):
    try:
        subprocess.run([fake_dvc, "status"], check=True)
    except Exception:
        pass

@pytest.fixture(scope="module")
def module_repo(fake_dvc):
    subprocess.run([fake_dvc, "init"], check=True)

def test_unmarked_with_a_module_fixture_that_starts_dvc(module_repo):
    pass

@pytest.mark.slow
def test_marked(fake_dvc):
    subprocess.run([fake_dvc, "repro"], check=True)

def test_unmarked_plain_process():
    subprocess.run(["true"], check=True)
"""

FAKE_DVC = """
import pytest

@pytest.fixture(scope="session")
def fake_dvc(tmp_path_factory):
    '''An executable named dvc that logs its arguments: whether it ran, and for whom.'''
    bin_dir = tmp_path_factory.mktemp("bin")
    dvc = bin_dir / "dvc"
    dvc.write_text('#!/bin/sh\\necho "$@" >> "$(dirname "$0")/ran.log"\\n')
    dvc.chmod(0o755)
    return str(dvc)
"""


def test_the_guard_fails_an_unmarked_test_and_lets_a_marked_one_run(pytester):
    """The project's own conftest, in a pytest of its own (a process: the guard of this test run
    would otherwise see the inner tests' processes as this test's)."""
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text() + FAKE_DVC)
    pytester.makeini("[pytest]\nmarkers =\n    slow: end to end\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rfE", timeout=300)
    result.assert_outcomes(passed=2, failed=2, errors=1)
    out = result.stdout.str()
    for test in ("test_unmarked", "test_unmarked_that_swallows_the_error",
                 "test_unmarked_with_a_module_fixture_that_starts_dvc"):
        assert f"test_inner.py::{test} started dvc (`" in out, out
    assert "without the slow marker: mark it @pytest.mark.slow" in out
    assert "test_marked started" not in out and "test_unmarked_plain_process started" not in out
    ran = list(pytester.path.rglob("ran.log"))
    assert len(ran) == 1 and ran[0].read_text() == "repro\n", "only the marked test's dvc ran"
