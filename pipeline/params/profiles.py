"""Profiles: named params sets, each written as what it changes.

``params/base.yaml`` holds every key, with a comment saying what it does; ``params/NAME.yaml``
holds only what profile NAME sets differently (nested sections merge key by key; a list replaces
the base's list whole). ``vfmtok-pipeline profile NAME`` writes the merge as a complete
``params.yaml``, the base's comments kept (an overriding value's own comment wins), so DVC sees
every key and a user reads every knob in one file. Adding a key is one edit, in the base.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import yaml

from pipeline.errors import UserError
from pipeline.params import Params, params_from_data
from vfmtok import files

PROFILES_DIR = "params"
BASE = "base"


def profile_names(root: str | Path = ".") -> list[str]:
    """The profiles a user can activate (every ``params/*.yaml`` but the base)."""
    return sorted(p.stem for p in (Path(root) / PROFILES_DIR).glob("*.yaml") if p.stem != BASE)


def profile_file(name: str, root: str | Path = ".") -> Path:
    """``params/NAME.yaml``; an unknown name is refused with the known ones."""
    path = Path(root) / PROFILES_DIR / f"{name}.yaml"
    what = "the base every profile starts from, not a profile" if name == BASE else "no such profile"
    if name == BASE or not path.is_file():
        raise UserError(f"{path}: {what} (known: {', '.join(profile_names(root))})")
    return path


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if data is not None and not isinstance(data, dict):
        raise UserError(f"{path}: a profile is a mapping of params sections")
    return data or {}


def merge(base: dict, overrides: dict, where: str = "") -> dict:
    """``base`` with ``overrides`` on top: sections merge key by key, other values replace."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge(out[key], value, f"{where}{key}.")
        elif isinstance(out.get(key), dict) or isinstance(value, dict):
            raise UserError(f"params/*.yaml: {where}{key} is a section in one file and a value in the other")
        else:
            out[key] = value
    return out


def profile_data(name: str, root: str | Path = ".") -> dict:
    """Profile NAME as one plain dict: what ``params.yaml`` holds once it is active."""
    root = Path(root)
    return merge(_read(root / PROFILES_DIR / f"{BASE}.yaml"), _read(profile_file(name, root)))


def load_profile(name: str, root: str | Path = ".", check_paths: bool = True) -> Params:
    """Profile NAME validated (errors name ``params/NAME.yaml``)."""
    return params_from_data(profile_data(name, root), profile_file(name, root), check_paths)


def _overlay(base, overrides) -> None:
    """Set ``overrides``' values into ruamel's ``base`` map in place, keeping the base's comments
    for the keys whose value an override does not comment itself."""
    for key, value in overrides.items():
        if key in base and hasattr(base[key], "items") and hasattr(value, "items"):
            _overlay(base[key], value)
            continue
        base[key] = value
        own = getattr(overrides, "ca", None) and overrides.ca.items.get(key)
        if own and own[2] is not None and "#" in own[2].value.split("\n")[0]:
            token = copy.copy(own[2])
            token.value = own[2].value.split("\n")[0] + "\n"  # its line; not the blank lines after it
            base.ca.items[key] = [None, None, token, None]


def profile_text(name: str, root: str | Path = ".") -> str:
    """Profile NAME as a complete, commented ``params.yaml``: the profile's header, then every
    section of the base with the profile's values."""
    from ruamel.yaml import YAML  # comment-preserving round trip (DVC's own YAML library)

    root = Path(root)
    path, base_path = profile_file(name, root), root / PROFILES_DIR / f"{BASE}.yaml"
    rt = YAML()
    rt.width, rt.preserve_quotes = 4096, True  # never fold a long line; "" stays ""
    text = path.read_text()
    base, overrides = rt.load(base_path.read_text()), rt.load(text)
    if overrides:
        _overlay(base, overrides)
    header = [line for line in text.splitlines() if line.startswith("#")]
    header = header[:next((i for i, line in enumerate(header) if not line.strip("# ")), len(header))]
    out = io.StringIO()
    rt.dump(base, out)
    return "\n".join([*header, f"# Written by `vfmtok-pipeline profile {name}`: {base_path.as_posix()}"
                      f" with {path.relative_to(root).as_posix()} on top.", "", _body(out.getvalue())])


def _body(text: str) -> str:
    """The dumped base without its own leading comment block (the profile's header replaces it)."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    return "".join(lines[start:])


def write_profile(name: str, root: str | Path = ".", dest: str | Path | None = None,
                  check_paths: bool = True) -> Path:
    """Write profile NAME as ``dest`` (default: the project's ``params.yaml``), atomically, after
    checking that it validates (``check_paths``: here, with its input files)."""
    root = Path(root)
    text = profile_text(name, root)
    path = profile_file(name, root)
    params_from_data(yaml.safe_load(text), path, check_paths)  # refuse one that does not validate
    dest = Path(dest) if dest is not None else root / "params.yaml"
    files.write_text(dest, text)
    return dest
