"""Each stage's code dependencies: the project modules its process imports, found statically.

DVC re-runs a stage when one of its ``deps`` changes, so ``dvc.yaml`` must list every project
module a stage imports, directly or not, or an edit leaves stale results "up to date". The
closure is computed from the source with ``ast`` (every ``import``, also those inside functions,
so a lazily imported module counts), starting from the stage entry and the stage's module.
``vfmtok-pipeline deps`` prints each stage's list; ``--check`` (and tests/test_deps.py) fails
when ``dvc.yaml`` misses one.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import yaml

from pipeline.commands import Command
from vfmtok import files

PACKAGES = ("pipeline", "vfmtok")
ENTRY = "pipeline.stage"  # what dvc.yaml runs: python -m pipeline.stage NAME


def module_file(root: Path, name: str) -> Path | None:
    """The source file of project module ``name`` (a module or a package's ``__init__``)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path, module: str) -> set[str]:
    """Dotted names an import statement in ``path`` may load (``from a import b`` -> a, a.b)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def closure(root: Path, modules: list[str]) -> set[Path]:
    """Every project file that importing ``modules`` can load, package ``__init__`` files included."""
    seen: set[str] = set()
    todo = list(modules)
    found: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(root, name)
        if path is None:
            continue
        found.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        todo += sorted(_imported_names(path, name))
    return found


def stage_modules(root: Path, stage: str) -> list[str]:
    """The files a ``vfmtok-pipeline STAGE`` process imports, relative to ``root``, sorted."""
    files = closure(root, [ENTRY, f"pipeline.stages.{stage}"])
    return sorted(p.relative_to(root).as_posix() for p in files)


def declared_deps(root: Path) -> dict[str, list[str]]:
    """``{stage: deps}`` as ``dvc.yaml`` lists them (templated paths such as ``${prepare.path}``
    left out)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name: [d for d in spec.get("deps", []) if "${" not in d] for name, spec in stages.items()}


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def missing(root: Path) -> dict[str, list[str]]:
    """``{stage: modules it imports that no dep of it covers}``, for stages that miss any."""
    out = {}
    for stage, deps in declared_deps(root).items():
        gaps = [m for m in stage_modules(root, stage) if not _covered(m, deps)]
        if gaps:
            out[stage] = gaps
    return out


def write(root: Path) -> None:
    """Rewrite the module entries of every stage's ``deps:`` list in ``dvc.yaml`` to the computed
    closure (data deps, comments and everything else in the file are kept as they are)."""
    out: list[str] = []
    stage, deps_at, item_indent = None, None, ""  # deps_at: indent of the "deps:" being read

    def close() -> None:
        out.extend(f"{item_indent}- {m}" for m in stage_modules(root, stage))

    for line in (root / "dvc.yaml").read_text().splitlines():
        indent = len(line) - len(line.lstrip())
        text = line.strip()
        if deps_at is not None and not (text.startswith("- ") and indent >= deps_at):
            close()
            deps_at = None
        if indent == 2 and text.endswith(":") and not text.startswith("#"):
            stage = text[:-1]
        if deps_at is not None:
            item_indent = line[:indent]
            if text[2:].split("/")[0] in PACKAGES:
                continue  # a module entry: replaced by the closure
        out.append(line)
        if text == "deps:" and stage:
            deps_at, item_indent = indent, " " * (indent + 2)
    if deps_at is not None:
        close()
    files.write_text(root / "dvc.yaml", "\n".join(out) + "\n")


def cli(root: Path, check: bool, rewrite: bool = False) -> int:
    """Print each stage's modules; ``check``: only what ``dvc.yaml`` misses (exit 1 if any);
    ``rewrite``: write the lists into ``dvc.yaml``."""
    if rewrite:
        write(root)
        print(f"{root / 'dvc.yaml'}: deps rewritten")
        return 0
    if check:
        gaps = missing(root)
        for stage, mods in gaps.items():
            print(f"{stage}: dvc.yaml deps miss {', '.join(mods)}")
        if not gaps:
            print("dvc.yaml: every stage lists every project module it imports")
        return 1 if gaps else 0
    for stage in declared_deps(root):
        print(f"{stage}:")
        for m in stage_modules(root, stage):
            print(f"  - {m}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--write", action="store_true", help="rewrite the module deps in dvc.yaml")


def main(args: argparse.Namespace) -> int:
    return cli(Path(args.root), check=args.check, rewrite=args.write)


COMMAND = Command("deps", "each stage's project modules; --check: against dvc.yaml", add_arguments, main)
