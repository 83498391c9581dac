"""Walking an image tree without losing anything silently.

``Path.rglob`` passes over a symlink loop, a broken link or a folder it may not read without a
word; here each becomes a :class:`Skipped` entry that ``prepare`` lists in ``reports/prepare.json``.
Symlinked folders are followed (a class folder that links elsewhere is common), except into one
of their own ancestors. Entries are visited in sorted name order, depth first, so a tree always
gives the same list; every kept file is stat'ed once here (its size and mtime go to the listing).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import SourceError
from pipeline.sources.items import Skipped, SourceFile

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def _reason(e: OSError, what: str, link: bool = False) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if e.errno == errno.ENOENT and link:
        return "broken symlink"
    return f"{type(e).__name__}: {what}: {e.strerror or e}"


def _entries(folder: Path, skipped: list[Skipped]) -> list[os.DirEntry]:
    """The visible entries of ``folder``, sorted by name; an unreadable folder is skipped."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
        skipped.append(Skipped(str(folder), _reason(e, "cannot list folder")))
        return []


def _resolve(entry: os.DirEntry, skipped: list[Skipped]) -> os.stat_result | None:
    """The entry's stat through symlinks, or None (and a Skipped entry) when that fails."""
    try:
        return entry.stat()
    except OSError as e:
        skipped.append(Skipped(entry.path, _reason(e, "cannot stat", entry.is_symlink())))
        return None


def _is_dir(st: os.stat_result) -> bool:
    return (st.st_mode & 0o170000) == 0o040000


def _is_file(st: os.stat_result) -> bool:
    return (st.st_mode & 0o170000) == 0o100000


def _loops(entry: os.DirEntry, folder: str) -> bool:
    """A folder symlink that leads back to ``folder`` or to a folder enclosing it."""
    if not entry.is_symlink():
        return False
    target, here = os.path.realpath(entry.path), os.path.realpath(folder)
    return here == target or here.startswith(target.rstrip(os.sep) + os.sep)


def subdirs(folder: Path, skipped: list[Skipped]) -> list[Path]:
    """The (followed) sub-folders of ``folder``, sorted; a missing ``folder`` is a SourceError."""
    if not folder.is_dir():
        raise SourceError(f"{folder}: folder not found")
    out = []
    for entry in _entries(folder, skipped):
        st = _resolve(entry, skipped)
        if st is None or not _is_dir(st):
            continue
        if _loops(entry, str(folder)):
            skipped.append(Skipped(entry.path, "symlink loop: links to an enclosing folder"))
            continue
        out.append(Path(entry.path))
    return out


def _walk(folder: str, skipped: list[Skipped]) -> Iterator[SourceFile]:
    """Depth first in name order; plain strings, not Paths (pathlib would cost 10x the stat
    calls on a million files)."""
    for entry in _entries(Path(folder), skipped):
        st = _resolve(entry, skipped)
        if st is None:
            continue
        if _is_dir(st):
            if _loops(entry, folder):
                skipped.append(Skipped(entry.path, "symlink loop: links to an enclosing folder"))
                continue
            yield from _walk(entry.path, skipped)
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
            if _is_file(st):
                yield SourceFile(entry.path, int(st.st_size), int(st.st_mtime_ns))
            else:
                skipped.append(Skipped(entry.path, "not a regular file"))


def image_files(folder: Path, skipped: list[Skipped]) -> list[SourceFile]:
    """Every image file under ``folder`` (by extension, any depth), in sorted path order."""
    return list(_walk(str(folder), skipped))


def relative(path: str, root: Path) -> str | None:
    """``path`` under ``root`` as a POSIX relative path, or None when it is not under it."""
    prefix = str(root).rstrip(os.sep) + os.sep
    return path[len(prefix):].replace(os.sep, "/") if path.startswith(prefix) else None
