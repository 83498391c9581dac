"""End to end: `dvc repro` of the smoke profile in a temporary copy of the repository, the round trip
of its results through a DVC remote, and the commands that use its models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FASHION_MNIST
from tests.smoke_project import make_project
from tests.smoke_project import project_env as _env
from tests.smoke_project import run_in as _run
from tests.smoke_project import set_param as _set
from tests.smoke_project import stale as _stale

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed"),
]


@pytest.fixture(scope="module", autouse=True)
def prefect_api():
    """One Prefect API for the module's stage processes that run as Prefect flows, as ``claims
    --run`` shares one. A plain ``dvc repro`` stage otherwise starts Prefect's ephemeral server of
    its own (~10-20 s a stage on 2 cores)."""
    from pipeline.orchestration.run_api import start_run_api

    api = start_run_api()  # sets PREFECT_API_URL, which _env passes on; None if one is set already
    if api:
        api.wait_until_healthy()
    yield
    if api:
        api.stop()  # and PREFECT_API_URL goes back to unset


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The repository's tracked and new files, as a fresh git repo on the smoke profile. The
    module's first ``dvc repro`` runs each stage as a Prefect flow; the later re-runs fold them."""
    return make_project(tmp_path_factory.mktemp("repo"))


STAGES = ["prepare", "extract_features", "train_tokenizer", "tokenize", "train_ar", "sample", "evaluate"]
STAGES_SORTED = sorted(STAGES)


def readme_example(name: str) -> str:
    """The Python block after ``<!-- example: NAME -->`` in the README."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(f"<!-- example: {name} -->"):]
    return block[block.index("```python") + len("```python"):block.index("\n```", block.index("```python"))]


@pytest.fixture(scope="module")
def reproduced(project) -> str:
    """The output of one `dvc repro` of the whole smoke pipeline (minutes: every later test reuses it)."""
    return _run(project, "dvc", "repro")


def test_a_run_pushed_to_a_remote_is_pulled_by_a_fresh_clone_without_running_a_stage(project, reproduced,
                                                                                      tmp_path):
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    _run(project, "dvc", "remote", "add", "-d", "shared", str(remote))  # any DVC remote; a folder here
    _run(project, "git", "add", "-A")
    _run(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke results")
    _run(project, "dvc", "push")
    _run(tmp_path, "git", "clone", "-q", str(project), str(clone))
    assert not (clone / "data" / "generator").exists()
    _run(clone, "dvc", "pull")
    assert json.loads(_run(clone, "dvc", "status", "--json")) == {}, "the pulled clone must be up to date"
    assert "Running stage" not in _run(clone, "dvc", "repro")
    for folder in ("data/tokenizer", "data/generator", "data/prepared"):
        for f in (project / folder).rglob("*"):
            if f.is_file():
                assert (clone / f.relative_to(project)).read_bytes() == f.read_bytes(), f

    # The pulled folders are the models: both commands use them, as a user of the clone would.
    from pipeline.commands.generate import Sampling, generate_grid
    from pipeline.commands.reconstruct import reconstruct_images
    from vfmtok.gpt import GPT
    from vfmtok.tokenizer import Tokenizer

    assert GPT.from_pretrained(clone / "data" / "generator").config.num_classes == 10
    assert Tokenizer.from_pretrained(clone / "data" / "tokenizer").n_tokens == 16
    said = generate_grid(clone, "sandal", clone / "grid.png", Sampling(n=8, cfg_scale=2.0, seed=1))
    assert "8 samples of class 5 (Sandal), 32 px" in said and (clone / "grid.png").is_file()
    img = project / "reports" / "samples.png"  # any picture: a PNG of another size
    (r,) = reconstruct_images(clone, [img], clone / "recon")
    assert len(r.tokens) == 16 and r.out.is_file() and r.psnr > 0


def test_repro_then_up_to_date_then_selective_reruns(project, reproduced):
    out = reproduced
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    for path in ("data/features/manifest.json", "data/tokenizer/model.safetensors",
                 "data/tokens/train.parquet", "data/generator/model.safetensors", "data/samples/samples.npz",
                 "reports/metrics.json", "reports/metrics.md", "reports/tokenizer_recon.png",
                 "reports/samples.png"):
        assert (project / path).is_file(), path
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["tokenizer_kind"] == "vfmtok" and metrics["inception_score"] is None
    assert 0 < metrics["codebook_usage"] <= 1 and metrics["psnr"] > 0
    shown = _run(project, "dvc", "metrics", "show")
    assert "gfid" in shown and "images_per_s" in shown

    again = _run(project, "dvc", "repro")
    assert "Running stage" not in again and "up to date" in again

    # The README's example loads both models from their folders alone and generates a class.
    code = readme_example("generate") + "\nassert images.shape == (8, 32, 32, 3), images.shape\n"
    _run(project, sys.executable, "-c", code)

    # Editing any module a stage imports makes that stage and everything after it stale.
    module = project / "vfmtok" / "quantizer.py"
    original = module.read_text()
    module.write_text(original + "# a comment\n")
    # train_ar too: its sample-quality checks decode tokens with the tokenizer.
    assert _stale(project) == ["evaluate", "sample", "tokenize", "train_ar", "train_tokenizer"]
    module.write_text(original)
    shared = project / "pipeline" / "formats" / "prepared.py"  # every stage reads prepared images
    shared.write_text(shared.read_text() + "# a comment\n")
    assert _stale(project) == STAGES_SORTED
    _run(project, "git", "checkout", "--", "pipeline/formats/prepared.py")
    assert _stale(project) == []

    # A model trained with other params is refused with the key that differs, not used.
    _set(project, "tokenizer", "dim", 64)
    proc = subprocess.run([sys.executable, "-m", "pipeline.stage", "tokenize"], cwd=project,
                          capture_output=True, text=True, env=_env(project, folded=True))
    assert proc.returncode == 2 and "tokenizer.dim is 32 there, 64 in params.yaml" in proc.stderr
    _run(project, "git", "checkout", "--", "params.yaml")

    _set(project, "extract_features", "batch_size", 7)
    out = _run(project, "dvc", "repro", "extract_features", folded=True)
    assert "Running stage 'extract_features'" in out and "Running stage 'prepare'" not in out

    _set(project, "prepare", "max_per_class_val", 3)
    out = _run(project, "dvc", "repro", "extract_features", folded=True)
    assert "Running stage 'prepare'" in out and "Running stage 'extract_features'" in out


def test_one_param_switches_to_the_vqgan_baseline(project, reproduced):
    _set(project, "tokenizer", "kind", "vqgan")
    out = _run(project, "dvc", "repro", folded=True)
    assert "Running stage 'train_tokenizer'" in out and "Running stage 'prepare'" not in out
    report = json.loads((project / "reports" / "train_tokenizer.json").read_text())
    assert report["kind"] == "vqgan"
    assert json.loads((project / "reports" / "metrics.json").read_text())["tokenizer_kind"] == "vqgan"


def test_one_param_switches_the_generator_to_rar(project):
    """``ar_model.model: RAR-Tiny`` retrains and resamples on the project's tokens, and the README's
    example loads the RAR folder alone. Two stage processes and one interpreter (106 s on the busy
    2-core machine, where the first test here took 944 s): the cheapest end-to-end run of the RAR
    path through the pipeline (``dvc exp run -S ar_model.model=RAR-Tiny`` adds evaluate, as
    ``vfmtok-pipeline rar-vs-raster --run`` does: minutes)."""
    _set(project, "ar_model", "model", "RAR-Tiny")
    out = _run(project, "dvc", "repro", "sample", folded=True)
    assert "Running stage 'train_ar'" in out and "Running stage 'train_tokenizer'" not in out
    meta = json.loads((project / "data" / "generator" / "config.json").read_text())
    assert meta["format"] == "vfmtok.rar" and meta["zoo_name"] == "RAR-Tiny"
    assert json.loads((project / "reports" / "sample.json").read_text())["generator"] == "RAR-Tiny"
    code = readme_example("generate") + "\nassert type(generator).__name__ == 'RAR', generator\n"
    _run(project, sys.executable, "-c", code + "assert images.shape == (8, 32, 32, 3), images.shape\n")


@pytest.mark.slow  # (the module is slow already: this one adds a second whole run, ~150 s)
def test_a_second_run_from_nothing_writes_the_same_bytes(project, tmp_path):
    """Same machine, params and threads: a second copy of the project, run from nothing (no data,
    no DVC cache, no checkpoints, no reports), writes every output byte-identical to this module's
    run, as their ``dvc.lock`` hashes say. The reports of numbers are left out, as ``vfmtok-pipeline
    verify`` leaves them out (they record wall-clock times); their metrics must be equal instead."""
    from pipeline.experiments import reference_run as ref

    _run(project, "dvc", "repro", folded=True)  # current for whatever params the tests before left
    again = tmp_path / "again"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=project,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel.split("/")[0] not in ("data", "reports", "dvc.lock") and (project / rel).is_file():
            (again / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / rel, again / rel)
    _run(again, "git", "init", "-q")
    _run(again, "git", "add", "-A")
    _run(again, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "again")
    out = _run(again, "dvc", "repro", folded=True)
    assert all(f"Running stage '{stage}'" in out for stage in STAGES)
    reports = ref.number_reports((project / "dvc.yaml").read_text())
    first, second = (ref.outputs((p / "dvc.lock").read_text(), reports, str(p)) for p in (project, again))
    same = ref.compare(second, first)
    assert same.total >= 10 and len(same.identical) == same.total and not same.moved, same
    untimed = ({k: v for k, v in json.loads((p / "reports" / "metrics.json").read_text()).items()
                if k != "seconds"} for p in (project, again))
    assert next(untimed) == next(untimed)
