"""``vfmtok-pipeline plan``: the arithmetic on a synthetic benchmark report, the report it picks, the
memory estimate against measured peaks, the does-not-fit flag, and a plan of every profile made
without torch, CUDA or data."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.params.profiles import load_profile, profile_names
from pipeline.planning import costs, footprints
from pipeline.planning.memory import GIB, estimate, generator_footprint
from pipeline.planning.rates import tokenizer_key
from pipeline.planning.work import stage_work

ROOT = Path(__file__).resolve().parents[1]


def synthetic_report(params, device: str = "NVIDIA H200", date: str = "2026-01-01 00:00", scale: float = 1.0,
                     peak_batch: int = 64) -> dict:
    """bench.py's report shape with round figures (``scale`` multiplies every rate)."""
    model = params.ar_model.model
    return {"date": date, "device": device, "cuda": device != "cpu", "suite": "gpu", "profiles": {"paper": {
        "match": tokenizer_key(params),
        "tokenizer": {"batch": 32, "backbone_forward_img_s": 800.0 * scale, "encode_img_s": 500.0 * scale,
                      "decode_img_s": 300.0, "train_step_img_s": 100.0 * scale,
                      "train_step_peak_bytes": 30 * GIB},
        "ar_train": [
            {"model": model, "batch": peak_batch, "n_tokens": params.tokenizer.n_tokens,
             "vocab_size": params.tokenizer.codebook_size, "tokens_s": 200_000.0 * scale, "compile": False,
             "peak_bytes": 40 * GIB},
            {"model": "GPT-B", "batch": 64, "tokens_s": 9e9, "compile": False},  # another model: ignored
        ],
        "sampling": [  # an estimated draw is no measurement: never a rate
            {"model": model, "batch": 64, "tokens": 256, "estimated": False, "kv_cache_img_s": 40.0 * scale},
            {"model": model, "batch": 256, "tokens": 256, "estimated": True, "kv_cache_img_s": 1e9}],
    }}}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A checkout's plan inputs: dvc.yaml and the profiles, with an empty reports/benchmarks/."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(ROOT / "params", tmp_path / "params")
    (tmp_path / "reports" / "benchmarks").mkdir(parents=True)
    return tmp_path


def write(root: Path, name: str, report: dict) -> Path:
    path = root / "reports" / "benchmarks" / name
    path.write_text(json.dumps(report))
    return path


def test_wall_time_and_gpu_hours_are_the_work_over_the_rate(root: Path):
    params = load_profile("imagenet", ROOT, check_paths=False)
    write(root, "h200.json", synthetic_report(params, peak_batch=params.train_ar.batch_size // 8))
    plan = costs.make_plan(params, "imagenet", root, 8, "H200")
    work, lines = stage_work(params), {ln.stage: ln for ln in plan.lines}
    rates = {"extract_features": 800.0, "train_tokenizer": 100.0, "tokenize": 500.0, "train_ar": 200_000.0,
             "sample": 40.0}
    from_levels = 1 / (1 / 500.0 - 1 / 800.0)  # encoding cached levels: encode's time less the backbone's
    seconds = {s: work[s].amount / r for s, r in rates.items()}
    seconds["tokenize"] = (work["tokenize"].amount - 50_000) / 500.0 + 50_000 / from_levels  # val is cached
    assert work["tokenize"].cached == 50_000
    assert lines["tokenize"].rate.cached_per_gpu_s == pytest.approx(from_levels)
    for stage, rate in rates.items():
        assert lines[stage].rate.per_gpu_s == rate
        assert lines[stage].wall_s(8) == pytest.approx(seconds[stage] / 8, rel=1e-12)
        assert "reports/benchmarks/h200.json: paper" in lines[stage].rate.source
    assert work["train_ar"].amount == params.train_ar.steps * params.train_ar.batch_size * 256
    assert work["tokenize"].amount == 2 * 1_281_167 + 50_000  # flipped train copies
    for stage in ("list_source", "prepare", "evaluate"):
        assert lines[stage].wall_s(8) is None and "not timed" in lines[stage].note
    assert plan.total_wall_s == pytest.approx(sum(seconds.values()) / 8)
    # train_ar ran the benchmark's batch a GPU: its measured peak; the tokenizer did not: estimated
    assert lines["train_ar"].memory.measured and lines["train_ar"].memory.peak_bytes == 40 * GIB
    assert not lines["train_tokenizer"].memory.measured
    text = costs.markdown(plan)
    assert f"{plan.total_wall_s * 8 / 3600:,.1f}" in text.splitlines()[-len(rates) - 2]  # the total row
    assert "[5] reports/benchmarks/h200.json" in text


def test_the_newest_report_of_the_named_kind_gives_the_rates(root: Path):
    params = load_profile("imagenet", ROOT, check_paths=False)
    write(root, "a.json", synthetic_report(params, date="2026-01-01 00:00", scale=1.0))
    write(root, "b.json", synthetic_report(params, date="2026-02-01 00:00", scale=2.0))
    write(root, "c.json", synthetic_report(params, device="NVIDIA A100-SXM4-80GB", date="2026-03-01 00:00",
                                           scale=3.0))
    write(root, "notes.json", {"not": "a report"})
    h200 = costs.make_plan(params, "x", root, 1, "H200")
    assert h200.report == "reports/benchmarks/b.json" and h200.lines[3].rate.per_gpu_s == 200.0
    assert costs.make_plan(params, "x", root, 1, "a100").report == "reports/benchmarks/c.json"
    given = costs.make_plan(params, "x", root, 1, "H200", report_file=root / "reports/benchmarks/a.json")
    assert given.lines[3].rate.per_gpu_s == 100.0
    none = costs.make_plan(params, "x", root, 1, "L4")
    assert none.report is None and all(ln.wall_s(1) is None for ln in none.lines)
    assert all(ln.note for ln in none.lines)  # every stage says why it has no time


def test_a_report_of_another_configuration_gives_no_rate(root: Path):
    params = load_profile("imagenet", ROOT, check_paths=False)
    report = synthetic_report(params)
    report["profiles"]["paper"]["match"]["resolution"] = 256
    report["profiles"]["paper"]["ar_train"][0]["n_tokens"] = 576
    report["profiles"]["paper"]["sampling"][0]["tokens"] = 576
    write(root, "h200.json", report)
    lines = {ln.stage: ln for ln in costs.make_plan(params, "x", root, 1, "H200").lines}
    assert all(lines[s].rate is None for s in ("train_tokenizer", "tokenize", "train_ar", "sample"))
    assert lines["train_ar"].note == "no measured rate for this configuration"


def test_a_configuration_that_does_not_fit_names_the_batch_and_gpus_that_do(root: Path):
    """RAR-L at its published global batch 2048 on 8 x 80 GB (the public run used 32 GPUs x 64)."""
    params = load_profile("imagenet", ROOT, check_paths=False)
    params = dataclasses.replace(params, ar_model=dataclasses.replace(params.ar_model, model="RAR-L"),
                                 train_ar=dataclasses.replace(params.train_ar, batch_size=2048))
    mem = {ln.stage: ln for ln in costs.make_plan(params, "x", root, 8, "H100").lines}["train_ar"].memory
    assert mem.batch == 256 and mem.peak_bytes > costs.HEADROOM * 80e9
    fp = footprints.footprint(params, "train_ar", cuda=True)

    def fits(batch: int, gpus: int) -> bool:
        est = estimate(fp, ema=False, processes=gpus, fsdp=False, cuda=True)
        return est.peak_bytes(batch) <= costs.HEADROOM * 80e9

    assert fits(mem.fitting_batch, 8) and not fits(mem.fitting_batch + 1, 8)
    n = mem.gpus_needed
    assert 2048 % n == 0 and fits(2048 // n, n)
    assert all(not fits(2048 // g, g) for g in range(9, n) if 2048 % g == 0)
    assert "does not fit 80 GB" in costs.memory_text(mem)
    on_h200 = {ln.stage: ln for ln in costs.make_plan(params, "x", root, 16, "H200").lines}["train_ar"].memory
    assert on_h200.fitting_batch is None  # 128 a GPU fits 141 GB


def measured_gpu_peaks() -> list[tuple[str, object, int, float]]:
    """(what, footprint, batch, measured bytes): GPT-L at batch 256 under torch.compile, which
    peaked at 78.9 GiB on an H200 (``benchmarks/bench.py`` with the imagenet profile's codebook and
    tokens), and every peak a committed GPU report holds, built as bench.py builds its models."""
    from pipeline.planning.tokenizer_memory import tokenizer_footprint
    from vfmtok.generator_config import generator_config

    paper = load_profile("imagenet", ROOT, check_paths=False)
    out = [("GPT-L, batch 256, H200", footprints.compute(paper, "train_ar", cuda=True), 256, 78.9 * GIB)]
    profiles = [load_profile(n, ROOT, check_paths=False) for n in profile_names(ROOT)]
    for path in sorted((ROOT / "reports" / "benchmarks").glob("*.json")):
        report = json.loads(path.read_text())
        for name, entry in (report.get("profiles") or {}).items() if report.get("cuda") else []:
            p = next(q for q in profiles if tokenizer_key(q) == entry["match"])
            classes = 10 if p.prepare.source == "fashion_mnist" else 1000
            for row in [r for r in entry["ar_train"] if "peak_bytes" in r]:
                cfg = generator_config(row["model"], vocab_size=row["vocab_size"], n_tokens=row["n_tokens"],
                                       num_classes=classes)
                out.append((f"{path.name} {name} {row['model']}", generator_footprint(cfg, cuda=True),
                            row["batch"], row["peak_bytes"]))
            tok = entry["tokenizer"]
            if "train_step_peak_bytes" in tok:  # bench's step: no LPIPS, before the GAN, plain Adam
                loss = dataclasses.replace(p.train_tokenizer.loss, perceptual="none", gan_weight=0.0)
                q = dataclasses.replace(p, train_tokenizer=dataclasses.replace(p.train_tokenizer, loss=loss))
                out.append((f"{path.name} {name} tokenizer", tokenizer_footprint(q, cuda=True), tok["batch"],
                            tok["train_step_peak_bytes"]))
    return out


def test_the_estimate_is_within_25_percent_of_every_measured_gpu_peak():
    """The eager estimate against GPU peaks (compiled ones included: it may err above them by what
    compilation saves)."""
    for what, fp, batch, measured in measured_gpu_peaks():
        peak = estimate(fp, ema=False, processes=1, fsdp=False, cuda=True).peak_bytes(batch)
        assert 0.75 <= peak / measured <= 1.25, (what, peak / GIB, measured / GIB)


@pytest.mark.parametrize("name", ["GPT-Tiny", "RAR-Tiny"])
def test_the_generator_estimate_is_within_25_percent_of_a_measured_cpu_peak(name: str):
    """The same arithmetic in fp32 against one real AdamW step on this CPU (the profiler's record
    of every allocation), at two batches, so the per-sample slope is checked as well."""
    import torch

    from tests.memory_probe import optimizer_state_bytes, peak_above_start, tensor_bytes
    from vfmtok import zoo
    from vfmtok.config import ARTrainConfig
    from vfmtok.generator_training import optimizer
    from vfmtok.training import descend

    torch.manual_seed(0)
    model = zoo.build(name, vocab_size=512, n_tokens=64, num_classes=10).train()
    fp = generator_footprint(model.config, cuda=False)
    opt = optimizer(model, ARTrainConfig(steps=1, batch_size=4, lr=1e-4))
    params = [p for p in model.parameters() if p.requires_grad]
    for batch in (4, 16):
        tokens, labels = torch.randint(0, 512, (batch, 64)), torch.randint(0, 10, (batch,))

        def step(tokens=tokens, labels=labels) -> None:
            descend(opt, model(tokens, labels, targets=tokens)[1], params, 1.0)

        step()  # the optimizer's state exists from here on, as in every later step
        measured = tensor_bytes(model.parameters()) + optimizer_state_bytes(opt) + peak_above_start(step)
        est = estimate(fp, ema=False, processes=1, fsdp=False, cuda=False).peak_bytes(batch)
        assert 0.75 <= est / measured <= 1.25, (batch, est / 2**20, measured / 2**20)


def test_the_footprints_file_holds_what_the_models_give_now():
    """A change to a model that moves its memory must refresh the file (``plan --refresh``)."""
    assert footprints.read() == footprints.entries(ROOT), "run: vfmtok-pipeline plan --refresh"


def test_plan_of_every_profile_imports_no_torch_and_opens_no_data(tmp_path: Path):
    """In a fresh interpreter, with an audit hook on every file opened: the plan of each profile
    prints its stages without importing torch (so never CUDA) and opens nothing under the data
    folders: the project's ``data/`` and each profile's source and weight files."""
    forbidden = [str(ROOT / "data")]
    for name in profile_names(ROOT):
        p = load_profile(name, ROOT, check_paths=False)
        files = (p.prepare.path, p.backbone.weights, p.judge.weights)
        forbidden += [str((ROOT / f).resolve()) for f in files if f]
    script = textwrap.dedent(f"""
        import sys
        opened = []
        sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
        from pipeline.cli import main
        for name in {profile_names(ROOT)!r}:
            for gpus in ("1", "8"):
                argv = ["--root", {str(ROOT)!r}, "plan", "--profile", name, "--gpus", gpus]
                assert main(argv) == 0
        assert "torch" not in sys.modules, "torch was imported"
        data = [p for p in opened if p.startswith(tuple({forbidden!r})) or p.endswith((".npy", ".tar"))]
        assert not data, data
        print("ok", len(opened))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("| `train_ar` |") == 2 * len(profile_names(ROOT))
    assert out.stdout.strip().splitlines()[-1].startswith("ok")


def test_bad_plan_arguments_are_one_line(tmp_path: Path, capsys):
    from pipeline.cli import main

    (bad := tmp_path / "bad.yaml").write_text("prepare: [\n")
    (not_report := tmp_path / "notes.json").write_text("{}")
    imagenet = ["--profile", "imagenet"]
    for argv, said in [
        ([*imagenet, "--set", "train_ar"], "--set 'train_ar': expected SECTION.KEY=VALUE"),
        ([*imagenet, "--set", "train_ar.batch_size=0"], "train_ar.batch_size"),
        ([*imagenet, "--report", str(tmp_path / "none.json")], "none.json: no such file"),
        ([*imagenet, "--report", str(not_report)], "notes.json: not a benchmark report"),
        ([*imagenet, "--gpus", "0"], "--gpus 0: must be 1 or more"),
        (["--params", str(bad)], "bad.yaml: not valid YAML"),
        (["--params", str(tmp_path / "none.yaml")], "none.yaml: params file not found"),
    ]:
        code = main(["--root", str(ROOT), "plan", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and said in err[0], err


def test_reproduce_shows_the_plan_of_the_stages_to_run_on_a_gpu_profile(root: Path, capsys):
    from pipeline.orchestration.reproduce import announce_plan
    from pipeline.params.profiles import profile_text

    (root / "params.yaml").write_text(profile_text("imagenet", ROOT))
    announce_plan(str(root), ["train_ar", "sample"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["[plan] train_ar", "[plan] sample"]
    assert "GiB estimated" in lines[0]
    (root / "params.yaml").write_text(profile_text("demo", ROOT))  # device auto: no GPU profile
    announce_plan(str(root), ["train_ar"])
    assert capsys.readouterr().out == ""
