"""An isolated workspace for a retrain: a temporary git clone of the checkout sharing its DVC cache.

A retrain must leave the user's checkout alone (``params.yaml``, ``dvc.lock``, ``reports/``), as
``dvc exp run --temp`` does, while still running one Prefect task per stage. So it works in a clone
of the checkout's ``HEAD`` under ``.dvc/tmp/retrain/`` (git-ignored by DVC itself, on the same
file system, so DVC links instead of copying where it can), whose DVC cache *is* the checkout's:
current outputs come out of the cache instead of being recomputed, and everything the retrain
computes lands in the shared cache. The result goes back as a DVC experiment (a git ref under
``refs/exps``, pushed into the checkout's repository with ``dvc exp push``), never into its
working tree. The clone is removed afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import errors
from pipeline.layout import Layout


class WorkspaceError(errors.UserError):
    """The checkout cannot be cloned for a retrain (not a git repository, no commit, ...)."""


IDENTITY = ("vfmtok-pipeline", "vfmtok-pipeline@localhost")  # commits and tags where git has none


@functools.cache
def git_identity() -> tuple[str, str] | None:
    """The user's git name and email, if configured (a scheduled run may have none)."""
    try:
        name, email = (subprocess.run(["git", "config", key], capture_output=True, text=True).stdout.strip()
                       for key in ("user.name", "user.email"))
    except OSError:
        return None
    return (name, email) if name and email else None


def _identity_vars() -> dict[str, str]:
    """``GIT_AUTHOR_*`` / ``GIT_COMMITTER_*`` of :data:`IDENTITY` where git has no identity."""
    if git_identity() is not None:
        return {}
    return {f"GIT_{who}_{part}": value for who in ("AUTHOR", "COMMITTER")
            for part, value in zip(("NAME", "EMAIL"), IDENTITY, strict=True)}


@contextmanager
def _identity() -> Iterator[None]:
    """In-process git commits (DVC's experiments) get an identity where git has none."""
    added = {k: v for k, v in _identity_vars().items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**_identity_vars(), **env}


def run(cwd: Path, *cmd: str) -> str:
    """``cmd`` in ``cwd``; its stdout, or :class:`WorkspaceError` with the end of its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        out = " ".join((proc.stderr or proc.stdout).split())[-600:]
        raise WorkspaceError(f"{cwd}: `{' '.join(cmd)}` exited with {proc.returncode}: {out}")
    return proc.stdout


def head_commit(root: Path) -> str:
    return run(root, "git", "rev-parse", "--verify", "HEAD^{commit}").strip()


def dirty_files(root: Path) -> list[str]:
    """Tracked files whose working-tree content differs from HEAD (not part of a retrain)."""
    status = run(root, "git", "status", "--porcelain", "--untracked-files=no")
    return [line[3:] for line in status.splitlines()]


@contextmanager
def _dvc_repo(path: Path):
    """DVC's ``Repo`` of ``path``, with the cwd there: DVC resolves paths and targets against the cwd."""
    from dvc.repo import Repo

    with contextlib.chdir(path), Repo(str(path)) as repo:
        yield repo


@contextmanager
def isolated(root: Path, name: str, keep: bool = False) -> Iterator[Path]:
    """A clone of ``root``'s HEAD that shares ``root``'s DVC cache, with HEAD's outputs checked out
    from that cache (those missing from it are left for the stages to rebuild); removed on exit
    unless ``keep``. DVC runs in-process here: each ``dvc`` process start costs a second or more."""
    root = root.resolve()
    commit = head_commit(root)
    with _dvc_repo(root) as repo:
        cache = repo.cache.local_cache_dir
    base = Layout(root).retrain_workspaces
    base.mkdir(parents=True, exist_ok=True)
    clone = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
    try:
        run(base, "git", "clone", "--quiet", "--no-checkout", str(root), str(clone))
        run(clone, "git", "checkout", "--quiet", "--detach", commit)
        (clone / ".dvc" / "config.local").write_text(
            f"[cache]\n    dir = {cache}\n    type = reflink,hardlink,copy\n")
        with _dvc_repo(clone) as repo:
            repo.checkout(allow_missing=True)
        yield clone
    finally:
        if not keep:
            shutil.rmtree(clone, ignore_errors=True)


def save_experiment(clone: Path, name: str) -> str:
    """``dvc exp save -n NAME`` in the clone, pushed into the checkout's repository (the clone's
    ``origin``); returns the experiment's commit. Every new file that git does not ignore goes in
    with it: the stages' git-tracked outputs (metrics, plots, pictures) that HEAD does not have yet,
    and the run's stage times."""
    untracked = run(clone, "git", "ls-files", "--others", "--exclude-standard").splitlines()
    with _identity(), _dvc_repo(clone) as repo:
        commit = repo.experiments.save(name=name, include_untracked=untracked)
        repo.experiments.push("origin", [name], push_cache=False)
    if not commit:
        raise WorkspaceError(f"{clone}: `dvc exp save -n {name}` recorded no experiment")
    return commit
