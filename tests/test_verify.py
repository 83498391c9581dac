"""``vfmtok-pipeline verify`` and the tolerances it judges by: a run agrees with the committed one
within each metric's measured limit, or the command names the metric that does not; the outputs'
bytes are counted against the committed ``dvc.lock`` and the first stage that parts is named; bad
input is one line and exit 2. ``benchmarks/tolerances.py``'s limits are margin x the largest
difference between two runs, never below one unit of the metric's last digit. Small git repos of
hand-made reports: no torch, no DVC."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks import tolerances as made
from pipeline import cli
from pipeline.commands.verify import NEW_KERNELS
from pipeline.errors import UserError
from pipeline.evaluation import tolerances as tol
from pipeline.experiments import reference_run as ref
from tests.conftest import REPO

DVC_YAML = {"stages": {
    "a": {"cmd": "a", "outs": ["data/a"], "metrics": [{"reports/a.json": {"cache": False}}]},
    "b": {"cmd": "b", "deps": ["data/a"], "outs": ["data/b"]},
    "evaluate": {"cmd": "e", "deps": ["data/b"], "metrics": [{"reports/metrics.json": {"cache": False}}],
                 "plots": [{"reports/pic.png": {"cache": False}}],
                 "outs": [{"reports/metrics.md": {"cache": False}}]},
}}
HASHES = {"data/a": "a1.dir", "reports/a.json": "r1", "data/b": "b1.dir", "reports/pic.png": "p1",
          "reports/metrics.json": "m1", "reports/metrics.md": "t1"}
COMMITTED = {"psnr": 23.517, "gfid": 185.022, "ssim": 0.7788, "fid_images": 250, "tokenizer_kind": "vfmtok",
             "inception_score": None, "seconds": 117.4}
LIMITS = tol.Tolerances("hand-made", 2.0, [{"label": "x"}, {"label": "y"}], [
    tol.Row("psnr", 0.16, "abs", 0.08, 2), tol.Row("gfid", 13.4, "abs", 6.7, 2),
    tol.Row("ssim", 0.0001, "abs", 0.0, 2, "no spread")])


def lock(hashes: dict[str, str], code: str = "c1") -> str:
    """A dvc.lock of DVC_YAML's stages with these output hashes (``code``: b's code file's hash)."""
    def outs(*paths):
        return [{"path": p, "hash": "md5", "md5": hashes[p]} for p in paths]

    stages = {"a": {"cmd": "a", "outs": outs("data/a", "reports/a.json")},
              "b": {"cmd": "b", "outs": outs("data/b"),
                    "deps": [{"path": "data/a", "md5": hashes["data/a"]}, {"path": "b.py", "md5": code}]},
              "evaluate": {"cmd": "e", "deps": [{"path": "data/b", "md5": hashes["data/b"]}],
                           "outs": outs("reports/metrics.json", "reports/metrics.md", "reports/pic.png")}}
    return yaml.safe_dump({"schema": "2.0", "stages": stages}, sort_keys=False)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def _write(repo: Path, metrics: dict | None = None, hashes: dict | None = None, code: str = "c1") -> None:
    (repo / "reports").mkdir(exist_ok=True)
    (repo / "reports" / "metrics.json").write_text(json.dumps(COMMITTED if metrics is None else metrics))
    (repo / "dvc.lock").write_text(lock(hashes or HASHES, code))


@pytest.fixture
def repo(tmp_path) -> Path:
    """A project whose HEAD holds a run's metrics, dvc.lock and tolerances; the workspace the same."""
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    _write(tmp_path)
    tol.write(tmp_path / "reports" / "tolerances.json", LIMITS)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "a run")
    return tmp_path


def verify(repo: Path, capsys, *args: str) -> tuple[int, str, str]:
    status = cli.main(["--root", str(repo), "verify", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def line(out: str, key: str) -> str:
    return next(ln for ln in out.splitlines() if ln.split()[:1] == [key])


def test_a_run_within_tolerance_agrees(repo, capsys):
    _write(repo, {**COMMITTED, "psnr": 23.44, "gfid": 178.3, "seconds": 99.0})
    status, out, _ = verify(repo, capsys)
    assert status == 0, out
    assert "outputs: 3 of 3 byte-identical to HEAD" in out and NEW_KERNELS not in out
    assert line(out, "psnr").split() == ["psnr", "23.517", "23.440", "0.077", "0.16", "agrees"]
    assert line(out, "gfid").endswith("agrees") and line(out, "ssim").endswith("agrees")
    assert "seconds" not in out and "all 3 metrics agree with HEAD within tolerance" in out


def test_one_unit_of_the_last_digit_is_within_a_floor_of_one_unit(repo, capsys):
    """0.7789 - 0.7788 is 0.00010000000000010001 in floats: the rounded difference is compared."""
    _write(repo, {**COMMITTED, "ssim": 0.7789})
    assert verify(repo, capsys)[0] == 0


def test_a_metric_beyond_its_tolerance_differs_and_is_named(repo, capsys):
    _write(repo, {**COMMITTED, "psnr": 23.3})
    status, out, _ = verify(repo, capsys)
    assert status == 1
    assert line(out, "psnr").split()[-3:] == ["0.217", "0.16", "DIFFERS"]
    assert line(out, "gfid").endswith("agrees")
    assert out.splitlines()[-1] == "1 DIFFER from HEAD: psnr"


def test_the_workspace_tolerances_win_and_the_committed_ones_stand_in(repo, capsys):
    _write(repo, {**COMMITTED, "gfid": 180.0})
    tight = tol.Tolerances("tight", 2.0, [], [tol.Row("gfid", 1.0, "abs", 0.5, 2)])
    tol.write(repo / "reports" / "tolerances.json", tight)
    status, out, _ = verify(repo, capsys)
    assert status == 1 and "tolerances: " + str(repo / "reports" / "tolerances.json") in out
    (repo / "reports" / "tolerances.json").unlink()
    status, out, _ = verify(repo, capsys)
    assert status == 0 and "tolerances: HEAD:reports/tolerances.json (2 runs, margin 2)" in out


def test_bytes_are_counted_and_the_first_stage_that_parts_is_named(repo, capsys):
    other = {**HASHES, "data/b": "b2.dir", "reports/pic.png": "p2", "reports/a.json": "r2",
             "reports/metrics.json": "m2", "reports/metrics.md": "t2"}
    _write(repo, hashes=other)
    status, out, _ = verify(repo, capsys)
    assert status == 0  # the metrics decide
    assert "outputs: 1 of 3 byte-identical to HEAD" in out  # reports of numbers not counted
    assert "differs first: b (data/b), from the same code, params and inputs" in out
    assert "and downstream of it: evaluate" in out and NEW_KERNELS in out
    _write(repo, hashes=other, code="c2")
    out = verify(repo, capsys)[1]
    assert "differs first: b (data/b), its code, params or inputs differ from HEAD's" in out
    assert NEW_KERNELS not in out


def test_an_output_that_moved_with_its_bytes_is_identical():
    reports = ref.number_reports(yaml.safe_dump(DVC_YAML))
    assert reports == {"reports/a.json", "reports/metrics.json", "reports/metrics.md", "reports/metrics.csv"}
    here = yaml.safe_load(lock(HASHES))
    here["stages"]["b"]["outs"][0]["path"] = "data/b_renamed"
    c = ref.compare(ref.outputs(yaml.safe_dump(here), reports, "here"),
                    ref.outputs(lock(HASHES), reports, "there"))
    assert c.moved == {"data/b_renamed": "data/b"} and len(c.identical) == c.total == 3 and not c.first


@pytest.mark.parametrize(("change", "key", "said"), [
    (lambda m: m.pop("gfid"), "gfid", "missing here  DIFFERS"),
    (lambda m: m.update(kid=0.1), "kid", "missing at HEAD  DIFFERS"),
    (lambda m: m.update(fid_images=100), "fid_images", "another setting: not the committed run's params"),
    (lambda m: m.update(psnr=None), "psnr", "not a number here  DIFFERS"),
])
def test_a_missing_metric_or_another_setting_differs(repo, capsys, change, key, said):
    metrics = dict(COMMITTED)
    change(metrics)
    _write(repo, metrics)
    status, out, _ = verify(repo, capsys)
    assert status == 1 and said in line(out, key), out
    assert out.splitlines()[-1] == f"1 DIFFER from HEAD: {key}"


def _one_error(repo: Path, capsys, *args: str) -> str:
    status, out, err = verify(repo, capsys, *args)
    assert status == 2 and out == "" and len(err.splitlines()) == 1, (status, out, err)
    return err


def test_bad_input_is_one_line_naming_the_file_or_revision(repo, capsys, tmp_path_factory):
    assert "no such git revision" in _one_error(repo, capsys, "--reference", "nosuch")
    assert "not a git repository" in _one_error(tmp_path_factory.mktemp("plain"), capsys)
    (repo / "reports" / "metrics.json").unlink()
    assert f"{repo / 'reports' / 'metrics.json'}: cannot read this run's metrics" in _one_error(repo, capsys)
    _write(repo)
    text = (repo / "reports" / "tolerances.json").read_text().replace('"abs"', '"pct"', 1)
    (repo / "reports" / "tolerances.json").write_text(text)
    assert "tolerances.json: metrics[0].kind is 'pct', not abs or rel (psnr)" in _one_error(repo, capsys)
    _git(repo, "rm", "-qf", "reports/tolerances.json")
    _git(repo, "commit", "-qm", "no tolerances")
    err = _one_error(repo, capsys)
    assert "tolerances.json: no tolerances here, nor at HEAD (benchmarks/tolerances.py writes them)" in err


def test_a_relative_tolerance_is_a_fraction_of_the_committed_value():
    row = tol.Row("gfid", 0.05, "rel", 0.0, 3)
    assert row.limit(185.022) == pytest.approx(9.2511)
    assert row.agrees(185.022, 176.0) and not row.agrees(185.022, 175.0)


def _run(label: str, cpu: str | None = None, hashes: dict | None = None, **metrics) -> dict:
    reports = {"reports/metrics.json"}
    return {"label": label, "cpu": cpu, "threads": 2, "date": "2026-01-01", "source": label,
            "metrics": {**COMMITTED, **metrics},
            "outputs": None if hashes is None else ref.outputs(lock(hashes), reports, label)}


def test_the_tolerance_is_margin_times_the_largest_pairwise_spread():
    r = made.row("psnr", [23.517, 23.44, 23.5], 2.0, True)
    assert r.observed_spread == pytest.approx(0.077) and r.tolerance == pytest.approx(2.0 * 0.077)
    assert r.kind == "abs" and r.runs == 3 and r.note == ""
    assert made.row("gfid", [185.022, 178.3], 3.0, None).tolerance == pytest.approx(3 * 6.722)


def test_the_floor_is_one_unit_of_the_last_digit():
    same = made.row("psnr", [23.517] * 3, 2.0, True)
    assert same.observed_spread == 0 and same.tolerance == 0.001
    assert same.note.startswith("no spread over 3 runs that differ in bytes: the floor")
    assert made.row("ssim", [0.7788, 0.7788], 2.0, False).tolerance == 0.0001  # ssim: 4 digits
    small = made.row("psnr", [23.517, 23.518], 0.5, True)  # 0.5 x 0.001 < 0.001
    assert small.tolerance == 0.001 and small.note.startswith("margin x spread < 0.001")


def test_rows_cover_the_measured_metrics_and_the_runs_share_their_settings():
    runs = [_run("x", psnr=23.5), _run("y", cpu="AMD EPYC", psnr=23.44)]
    built = made.build(runs, 2.0)
    # declaration order; no null (inception_score), setting (fid_images, tokenizer_kind) nor time (seconds)
    assert [r.key for r in built.metrics] == ["gfid", "psnr", "ssim"]
    assert "2 runs of the same params (x, y); CPU: AMD EPYC (not recorded for 1); torch threads: 2" \
        in built.how
    assert "dvc.lock" in built.how  # the runs came without theirs: bytes not known
    with pytest.raises(UserError, match="fid_images differs between the runs"):
        made.build([*runs, _run("z", fid_images=100)], 2.0)
    with pytest.raises(UserError, match="needs two runs"):
        made.build(runs[:1], 2.0)


def test_the_file_says_which_outputs_differ_between_the_runs():
    runs = [_run("x", hashes=HASHES), _run("y", hashes={**HASHES, "data/b": "b2.dir"})]
    assert "outputs that differ in bytes between them: data/b" in made.build(runs, 2.0).how
    same = made.build([_run("x", hashes=HASHES), _run("y", hashes=HASHES)], 2.0)
    assert "every output is byte-identical across them" in same.how
    assert "with byte-identical outputs" in same.row("psnr").note


def test_the_script_reads_folders_and_revisions_and_verify_reads_its_file(repo, tmp_path, capsys):
    amd = tmp_path / "amd"
    amd.mkdir()
    (amd / "metrics.json").write_text(json.dumps({**COMMITTED, "psnr": 23.44, "gfid": 178.3}))
    (amd / "run.json").write_text(json.dumps({"cpu": "AMD EPYC 7B13", "threads": 2, "date": "2026-02-03"}))
    out = tmp_path / "tolerances.json"
    assert made.main(["amd=" + str(amd), "committed=git:HEAD", "--cpu", "committed=Xeon", "--root", str(repo),
                      "--out", str(out)]) == 0
    written = tol.read(out)
    assert written.row("psnr").tolerance == pytest.approx(2 * 0.077)
    assert written.row("ssim").tolerance == 0.0001 and "the floor" in written.row("ssim").note
    amd_run = written.runs[0]
    assert (amd_run["label"], amd_run["cpu"], amd_run["date"]) == ("amd", "AMD EPYC 7B13", "2026-02-03")
    assert written.runs[1]["cpu"] == "Xeon" and written.runs[1]["source"].startswith("git:HEAD (")
    assert "psnr" in capsys.readouterr().out
    (amd / "tolerances.json").write_text(out.read_text())
    status, text, _ = verify(repo, capsys, "--reports", str(amd))
    assert status == 0 and "outputs: not compared (no dvc.lock in" in text
    assert made.main(["amd=" + str(amd), "--out", str(out)]) == 2  # one run: no spread


def test_verify_loads_neither_torch_nor_dvc(repo):
    """A check a user runs after the demo: git and JSON only, in well under a second of work."""
    code = ("import sys, contextlib, io\nfrom pipeline.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main(['--root', {str(repo)!r}, 'verify']) == 0\n"
            "print(' '.join(sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            check=True)
    heavy = {"torch", "dvc", "prefect", "pandas", "numpy"} & {m.split(".")[0] for m in loaded.stdout.split()}
    assert not heavy, heavy
