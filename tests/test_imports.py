"""The package boundaries hold: ``vfmtok`` imports alone (no DVC, no Prefect, no pipeline) and
the cheap commands (``--help``, ``profile``, ``check --no-build``, ``deps``, ``summary``) import
neither torch nor Prefect, although ``--help`` imports every command module."""

from __future__ import annotations

import subprocess
import sys

from pipeline.params.profiles import profile_text
from tests.conftest import REPO


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return {m.split(".")[0] for m in out.split()}


def test_vfmtok_imports_without_pipeline_dvc_or_prefect():
    names = sorted(p.stem for p in (REPO / "vfmtok").glob("*.py") if p.stem != "__init__")
    loaded = _modules_after("\n".join(f"import vfmtok.{n}" for n in names))
    assert "torch" in loaded and not loaded & {"pipeline", "dvc", "prefect", "dvclive"}


def test_the_cheap_commands_import_neither_torch_nor_prefect(tmp_path):
    (tmp_path / "params").mkdir()
    for name in ("base", "smoke"):
        (tmp_path / "params" / f"{name}.yaml").write_text((REPO / "params" / f"{name}.yaml").read_text())
    code = (f"import contextlib, io\n"
            f"from pipeline.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n"  # only the module names on stdout
            f"    with contextlib.suppress(SystemExit):\n"
            f"        main(['--help'])\n"
            f"    assert main(['--root', {str(tmp_path)!r}, 'profile', 'smoke']) == 0\n"
            f"    assert main(['check', '--no-build', {str(tmp_path / 'params.yaml')!r}]) == 0\n"
            f"    assert main(['--root', {str(tmp_path)!r}, 'summary']) == 0\n"
            f"    assert main(['--root', {str(REPO)!r}, 'deps']) == 0")
    loaded = _modules_after(code)
    heavy = {"torch", "prefect", "timm", "dvc", "pandas"}
    assert not loaded & heavy, loaded & heavy
    assert (tmp_path / "params.yaml").read_text() == profile_text("smoke", tmp_path)


def test_a_stage_process_imports_only_what_it_uses():
    """``prepare`` needs neither torch nor timm (nor DVC), and a stage module imports Prefect only
    when it runs as a Prefect flow (``pipeline/orchestration/lazy_prefect.py``); the end-of-demo summary needs
    none of it."""
    prepare = _modules_after("import pipeline.stage, pipeline.stages.prepare")
    unused = {"torch", "timm", "dvc", "prefect"}
    assert not prepare & unused, prepare & unused
    evaluate = _modules_after("import pipeline.stages.evaluate")
    assert "torch" in evaluate and "prefect" not in evaluate
    summary = _modules_after("import pipeline.commands.summary")
    assert not summary & {"torch", "prefect", "dvc"}
