"""The tables ``vfmtok-pipeline docs`` writes into README.md and docs/: one renderer per block name,
each reading only files under ``reports/``.

A figure that a run measured is written by the run into ``reports/``; the pages show it through a
renderer here, so a page cannot say one number while the reports say another
(``pipeline/reporting/doc_tables.py`` rewrites the blocks and checks them). Where a report is
already rendered for people (``metrics.md``, ``claims.md``, a benchmark's ``.md``) the block embeds
that rendering rather than formatting the same numbers a second time; metric labels and formats
come from the metrics' declarations (``pipeline/evaluation/metrics.py``).

Links a renderer writes are relative to the project root (``reports/x.png``); the block engine
rebases them for the page they land on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.evaluation.metrics import declared, headline
from pipeline.reporting import stage_times


class ReportError(Exception):
    """A report file or key a block needs is absent or unreadable; the message names it."""


@dataclass(frozen=True)
class Report:
    """A JSON report (or an object inside one) whose missing keys are named with their file."""

    file: str  # as shown: reports/sample.json
    data: object
    at: str = ""  # the dotted key of ``data`` inside the file ("" for the whole file)

    def __getitem__(self, key: str | int):
        path = f"{self.at}.{key}" if self.at else str(key)
        try:
            value = self.data[key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            raise ReportError(f"{self.file}: no key {path!r}") from None
        return Report(self.file, value, path) if isinstance(value, dict | list) else value

    def rows(self) -> list[Report]:
        """The items of a list report (each a :class:`Report`)."""
        if not isinstance(self.data, list):
            raise ReportError(f"{self.file}: {self.at or 'the file'} is not a list")
        return [Report(self.file, item, f"{self.at}[{i}]" if self.at else f"[{i}]")
                for i, item in enumerate(self.data)]


def _shown(reports: Path, rel: str) -> str:
    return f"{reports.name}/{rel}"


def load(reports: Path, rel: str) -> Report:
    """``reports/<rel>`` as a :class:`Report`."""
    text = read_text(reports, rel)
    try:
        return Report(_shown(reports, rel), json.loads(text))
    except ValueError as e:
        raise ReportError(f"{_shown(reports, rel)}: not valid JSON ({e})") from None


def read_text(reports: Path, rel: str) -> str:
    try:
        return (reports / rel).read_text()
    except FileNotFoundError:
        raise ReportError(f"{_shown(reports, rel)}: no such file") from None
    except OSError as e:
        raise ReportError(f"{_shown(reports, rel)}: unreadable ({e.strerror})") from None


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _metric(key: str, value: object) -> str:
    """A metric's value as its declaration formats it (``absent`` for None)."""
    if value is None:
        return "absent"
    fmt = declared(key).fmt
    return format(value, fmt) if fmt and isinstance(value, int | float) else str(value)


# -- the demo's results and speeds


def results(reports: Path) -> str:
    """The headline metrics of ``reports/metrics.json``, labelled and formatted as declared."""
    m = load(reports, "metrics.json")
    rows = [[metric.label, _metric(metric.key, m[metric.key]), metric.better or ""] for metric in headline()]
    return "\n".join([
        f"Tokenizer `{m['tokenizer_kind']}`, {m['tokens_per_image']} tokens per image "
        f"(`reports/metrics.md` has every metric and how it is computed):", "",
        _table(["metric", "value", "better"], rows), "",
        f"FID-type metrics: {m['fid_samples']} samples against {m['fid_images']} val images at "
        f"{m['fid_resolution']} px (compare runs of equal size only). Class accuracy: how often a "
        f"classifier on a fixed pretrained network's features (the judge) names the class a sample was "
        f"drawn for; on real val images it does so {_metric('sample_class_acc', m['val_class_acc'])} of "
        f"the time, the ceiling.",
    ])  # fmt: skip


def _newest_full_run(reports: Path) -> tuple[str, str, list[stage_times.StageTime]]:
    """The newest run of ``stage_times.csv`` in which every stage ran."""
    rel = "stage_times.csv"
    read_text(reports, rel)  # absent: named like any other report
    try:
        rows = stage_times.read(reports.parent)
    except (KeyError, ValueError) as e:
        raise ReportError(f"{_shown(reports, rel)}: not the stage-times table ({e!r})") from None
    runs: dict[tuple[str, str], list[stage_times.StageTime]] = {}
    for row in rows:
        runs.setdefault((row.run, row.started_utc), []).append(row)
    stages = {row.stage for row in rows}
    full = [(key, got) for key, got in runs.items()
            if {r.stage for r in got} == stages and all(r.status == "ran" for r in got)]
    if not full:
        raise ReportError(f"{_shown(reports, rel)}: no run in which every stage ran")
    (run, started), got = full[-1]
    return run, started, got


def pipeline_time(reports: Path) -> str:
    """One sentence: how long the newest full run took."""
    run, started, got = _newest_full_run(reports)
    total = sum(r.seconds for r in got)
    return (f"The committed reports come from one `vfmtok-pipeline reproduce` run (`{run}`, started "
            f"{started[:16].replace('T', ' ')} UTC): {total:.0f} s of pipeline ({total / 60:.1f} minutes).")


def stage_time_table(reports: Path) -> str:
    """The newest full run, stage by stage: wall time, the stage's own work, its imports."""
    run, started, got = _newest_full_run(reports)

    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    rows = [[f"`{r.stage}`", s(r.seconds), s(r.work_seconds), s(r.import_seconds)] for r in got]
    rows.append(["total", s(sum(r.seconds for r in got)), s(sum(r.work_seconds or 0 for r in got)),
                 s(sum(r.import_seconds or 0 for r in got))])
    return "\n".join([f"Run `{run}` (started {started}), seconds (`reports/stage_times.md` has every run):",
                      "", _table(["stage", "wall", "work", "imports"], rows)])


def speeds(reports: Path) -> str:
    """What each stage of the committed run measured about itself (its ``reports/<stage>.json``)."""
    p, f = load(reports, "prepare.json"), load(reports, "extract_features.json")
    t, k = load(reports, "train_tokenizer.json"), load(reports, "tokenize.json")
    a, s = load(reports, "train_ar.json"), load(reports, "sample.json")
    kv = (f"one batch decoded at {s['tokens_per_s_kv_cache']:,.0f} tokens/s with the KV cache and "
          f"{s['tokens_per_s_no_cache']:,.0f} without: {s['kv_cache_speedup']:.2f}x")
    rows = [
        ["`prepare`", f"{p['images']:,} images ({p['images_train']:,} train + {p['images_val']:,} val), "
                      f"{p['images_per_s']:,.0f} images/s"],
        ["`extract_features`", f"{f['images_per_s']:,.0f} images/s on {f['device']}"],
        ["`train_tokenizer`", f"{t['train_images_per_s']:.1f} images/s, {t['train_seconds']:.0f} s of "
                              f"training; {t['trainable_params'] / 1e6:.2f}M trainable parameters"],
        ["`tokenize`", f"{k['images_per_s']:,.0f} images/s; {k['bytes_per_token']:.2f} bytes per token on "
                       f"disk ({k['tokens_per_image']} tokens per image)"],
        ["`train_ar`", f"{a['train_tokens_per_s']:,.0f} tokens/s, {a['steps']} steps in "
                       f"{a['train_seconds']:.0f} s; {a['params'] / 1e6:.2f}M parameters; "
                       f"val loss {a['val_loss']:.3f}"],
        ["`sample`", f"{s['samples']} samples from {s['generator']} at {s['images_per_s']:.1f} images/s "
                     f"({s['tokens_per_s']:,.0f} tokens/s); {kv}"],
    ]  # fmt: skip
    return _table(["stage", "measured (its `reports/<stage>.json`)"], rows)


# -- benchmarks and experiments


def overhead(reports: Path) -> str:
    """``benchmarks/overhead.py``'s split of a ``reproduce`` run and its no-op timings."""
    o = load(reports, "benchmarks/overhead-demo.json")
    r = o["reproduce"]
    total = r["total_s"]
    parts = [("stage work (the flows' bodies)", r["work_s"]), ("stage imports (torch, ...)", r["imports_s"]),
             ("overhead: outside the stages (API start, status, artifacts)", r["outside_stages_s"]),
             ("overhead: Prefect inside the stage processes", r["prefect_in_stages_s"]),
             ("overhead: DVC and process starts", r["dvc_and_process_starts_s"]),
             ("**overhead, all**", r["overhead_s"]), ("total", total)]
    rows = [[name, f"{v:.1f}", f"{v / total:.1%}"] for name, v in parts]
    noop = o["noop"]
    names = list(noop.data) if isinstance(noop.data, dict) else []
    timed = [[f"`{n}`", f"{noop[n]['median_s']:.2f}", f"{noop[n]['min_s']:.2f}-{noop[n]['max_s']:.2f}",
              str(noop[n]['n'])] for n in names]
    return "\n".join([
        f"`{o['profile']}` profile, {o['cpus']} CPU cores (`reports/benchmarks/overhead-demo.json`):", "",
        _table(["part of `vfmtok-pipeline reproduce` from scratch", "seconds", "share"], rows), "",
        "With nothing to do:", "", _table(["command", "median s", "min-max", "runs"], timed),
    ])  # fmt: skip


def _heading_to_bold(line: str) -> str:
    match = re.match(r"#{2,6} (.*)", line)
    return f"**{match.group(1)}**" if match else line


def _rooted_links(text: str, folder: str) -> str:
    """Relative link targets of a report's Markdown made relative to the project root."""
    def fix(m: re.Match) -> str:
        target = m.group(1)
        return m.group(0) if re.match(r"[a-z]+:|/|#", target) else f"]({folder}/{target})"

    return re.sub(r"\]\(([^)\s]+)\)", fix, text)


def embedded(rel: str) -> Callable[[Path], str]:
    """A renderer that shows a report's own Markdown: its title dropped, its sections as bold
    lines, its links rooted at the project."""

    def render(reports: Path) -> str:
        lines = read_text(reports, rel).strip("\n").splitlines()
        if lines and lines[0].startswith("# "):
            lines = lines[1:]
        body = "\n".join(_heading_to_bold(line) for line in lines).strip("\n")
        return _rooted_links(body, str(Path(reports.name, rel).parent))

    render.__doc__ = f"``reports/{rel}`` as its writer rendered it."
    return render


def metrics_table(reports: Path) -> str:
    """Every metric with how it is computed: ``reports/metrics.md`` without its pictures list."""
    text = embedded("metrics.md")(reports)
    return text.split("\n**Pictures**")[0].rstrip("\n")


def _run_facts(run: dict) -> list[str]:
    """What a tolerance run was: its CPU, threads and date (where it came from, a folder or a git
    revision, stays in the file: the pages carry no revision ids)."""
    facts = [str(run["cpu"]) if run.get("cpu") else None,
             f"{run['threads']} thread{'' if run['threads'] == 1 else 's'}" if run.get("threads") else None,
             str(run["date"]) if run.get("date") else None]
    return [fact for fact in facts if fact] or ["-"]


def tolerances(reports: Path) -> str:
    """How far a run on another CPU may land from the committed metrics, and how that was measured
    (``reports/tolerances.json``, read by its format's own parser)."""
    from pipeline.errors import UserError
    from pipeline.evaluation.tolerances import parse

    rel = "tolerances.json"
    try:
        t = parse(read_text(reports, rel), _shown(reports, rel))
    except UserError as e:
        raise ReportError(str(e)) from None
    notes = any(row.note for row in t.metrics)
    rows = [[f"`{row.key}`", f"{row.tolerance * 100:.3g}%" if row.kind == "rel" else f"{row.tolerance:g}",
             f"{row.observed_spread:g}", str(row.runs), *([row.note] if notes else [])] for row in t.metrics]
    header = ["metric", "tolerance", "observed spread", "runs", *(["note"] if notes else [])]
    runs = [f"- `{r.get('label', '?')}`: " + ", ".join(_run_facts(r)) for r in t.runs if isinstance(r, dict)]
    return "\n".join([t.how, "", _table(header, rows), *(["", "Runs:", "", *runs] if runs else [])])


def demo_levers(reports: Path) -> str:
    """What each lever of the demo's generator buys (``reports/demo_levers.json``, written by
    ``benchmarks/demo_levers.py``), and how the rows were measured."""
    levers = load(reports, "demo_levers.json")
    rows = [[row["lever"], row["change"], str(row["ar_steps"]),
             _metric("sample_class_acc", row["sample_class_acc"]), _metric("gfid", row["gfid"])]
            for row in levers["rows"].rows()]
    header = ["lever", "change", "AR steps", declared("sample_class_acc").label, declared("gfid").label]
    return "\n".join([f"{levers['how']}:", "", _table(header, rows)])


def claims_verdicts(reports: Path) -> str:
    """The verdict table of ``reports/claims.md`` (claim, metric, interval, verdict), its rule above
    it: what the README shows of the claims study; the report has every metric over the seeds."""
    lines = read_text(reports, "claims.md").splitlines()
    if "## Verdicts" not in lines:
        raise ReportError(f"{_shown(reports, 'claims.md')}: no '## Verdicts' section: "
                          "run vfmtok-pipeline claims --seeds N")
    body = lines[lines.index("## Verdicts") + 1:]
    body = body[:next((i for i, ln in enumerate(body) if ln.startswith("## ")), len(body))]  # this section
    rule = next(ln for ln in body if ln.strip())
    rows = [ln for ln in body if ln.startswith("| ") and not ln.startswith("| claim |")]
    table = []
    for row in rows:
        claim, metric, _, _, interval, verdict = [c.strip() for c in row.strip("|").split(" | ")]
        table.append([claim, metric, interval, f"**{verdict}**"])
    header = ["claim", "metric", "VFMTok - other (95% interval)", "verdict"]
    return "\n".join([rule, "", _table(header, table)])


def plan_vs_run(reports: Path) -> str:
    """The active params' plan on this kind of CPU (rates from the committed CPU benchmark) against
    the newest full run's own work seconds, stage by stage: how close a plan comes."""
    from pipeline.params import load_params
    from pipeline.planning.costs import make_plan

    run, _, got = _newest_full_run(reports)
    plan = make_plan(load_params(reports.parent / "params.yaml", check_paths=False), "params.yaml",
                     reports.parent, 1, "cpu")
    work = {r.stage: r.work_seconds for r in got if r.work_seconds}
    timed = [(ln.stage, w, work[ln.stage]) for ln, w in plan.timed() if ln.stage in work]
    rows = [[f"`{s}`", f"{w:.0f}", f"{m:.0f}", f"{w / m:.2f}"] for s, w, m in timed]
    planned, ran = sum(w for _, w, _ in timed), sum(m for _, _, m in timed)
    rows.append(["timed stages", f"{planned:.0f}", f"{ran:.0f}", f"{planned / ran:.2f}"])
    head = f"`vfmtok-pipeline plan --gpu-kind cpu` (rates from `{plan.report}`) against run `{run}`:"
    return "\n".join([head, "", _table(["stage", "planned s", "the run's work s", "planned / ran"], rows)])


def plan_tables(profile: str) -> Callable[[Path], str]:
    """Profile ``profile``'s ``vfmtok-pipeline plan`` on one H200 and on eight: the rates of the
    committed benchmark reports, the memory of the footprints file."""

    def render(reports: Path) -> str:
        from pipeline.params.profiles import load_profile
        from pipeline.planning.costs import make_plan, markdown

        params = load_profile(profile, reports.parent, check_paths=False)
        return "\n\n".join(markdown(make_plan(params, f"profile `{profile}`", reports.parent, n, "H200"))
                            for n in (1, 8))

    return render


RENDERERS: dict[str, Callable[[Path], str]] = {
    "results": results,
    "pipeline-time": pipeline_time,
    "stage-times": stage_time_table,
    "speeds": speeds,
    "metrics": metrics_table,
    "overhead": overhead,
    "kv-cache": embedded("benchmarks/kv_cache-cpu.md"),
    "bench-cpu": embedded("benchmarks/bench-cpu.md"),
    "plan-speed": embedded("benchmarks/plan_speed.md"),
    "prepared-shards": embedded("benchmarks/prepared_shards.md"),
    "source-dvc-status": embedded("benchmarks/source_dvc_status.md"),
    "claims": embedded("claims.md"),
    "claims-verdicts": claims_verdicts,
    "rar-vs-raster": embedded("rar_vs_raster.md"),
    "tolerances": tolerances,
    "demo-levers": demo_levers,
    "plan-imagenet": plan_tables("imagenet"),
    "plan-vs-run": plan_vs_run,
}
