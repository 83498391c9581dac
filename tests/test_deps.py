"""dvc.yaml's code deps cover every project module each stage process imports, and its outputs
are the paths that pipeline/layout.py names."""

from __future__ import annotations

import yaml

from pipeline.commands import deps
from pipeline.layout import Layout
from pipeline.stage import names as stage_names
from tests.conftest import REPO


def test_every_stage_lists_its_whole_import_closure():
    assert deps.missing(REPO) == {}
    declared = deps.declared_deps(REPO)
    assert sorted(declared) == sorted(stage_names())
    for stage, listed in declared.items():
        modules = [d for d in listed if d.split("/")[0] in deps.PACKAGES]
        assert all((REPO / m).is_file() for m in modules), stage  # no stale entries either
        assert f"pipeline/stages/{stage}.py" in modules and "pipeline/stage.py" in modules


def test_closure_follows_lazy_relative_and_package_imports(tmp_path):
    pkg = tmp_path / "pipeline"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import helper\n")
    (pkg / "sub" / "helper.py").write_text("import json\n")
    (pkg / "lazy.py").write_text("")
    (pkg / "unused.py").write_text("")
    (pkg / "entry.py").write_text("from pipeline.sub import thing\n\ndef f():\n    from .lazy import g\n")
    found = {p.relative_to(tmp_path).as_posix() for p in deps.closure(tmp_path, ["pipeline.entry"])}
    assert found == {"pipeline/__init__.py", "pipeline/entry.py", "pipeline/sub/__init__.py",
                     "pipeline/sub/helper.py", "pipeline/lazy.py"}


def test_a_missing_module_is_reported(tmp_path):
    for rel in {*deps.stage_modules(REPO, "list_source"), *deps.stage_modules(REPO, "prepare")}:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((REPO / rel).read_text())
    text = (REPO / "dvc.yaml").read_text()
    prepare_only = text[: text.index("\n  extract_features:")]
    prepare_only = prepare_only.replace("      - pipeline/sources/walk.py\n", "")
    (tmp_path / "dvc.yaml").write_text(prepare_only)
    assert deps.missing(tmp_path) == {"list_source": ["pipeline/sources/walk.py"],
                                      "prepare": ["pipeline/sources/walk.py"]}
    deps.write(tmp_path)
    assert deps.missing(tmp_path) == {}
    written = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]["prepare"]
    assert written["deps"][0] == "data/source_listing.tsv" and "prepare.resolution" in written["params"]


def test_dvc_outputs_are_layout_paths():
    layout = Layout(REPO)
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    known = {layout.source_listing, layout.prepared, layout.features, layout.tokenizer, layout.tokens,
             layout.generator, layout.samples,
             layout.checkpoints("tokenizer"), layout.checkpoints("generator"), layout.sample_grids,
             layout.picture("tokenizer_recon"), layout.picture("samples"), layout.picture("error_map"),
             *(layout.metrics_table(s) for s in ("json", "md", "csv")),
             *(layout.report(s) for s in spec), *(layout.live(s) / "plots" / "metrics" for s in spec)}
    for name, stage in spec.items():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                assert REPO / path in known, f"{name}: {kind} {path} is not a Layout path"
