"""Typed loading of YAML into dataclasses, with errors that name the file, the key and the value.

Why hand-rolled and not pydantic: the model package's configs are plain dataclasses (importable
without any config library), and the checks we need are few: unknown keys, types, ranges
(``field(metadata={"min": .., "max": ..})``), choices (``Literal[...]``) and per-section
``check()`` hooks for things such as paths that must exist.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin


class ParamsError(ValueError):
    """A bad value in a params file: says which file, which dotted key, which value and why."""

    def __init__(self, key: str, value: Any, problem: str, file: str | Path | None = None):
        self.key, self.value, self.problem, self.file = key, value, problem, file
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.key} = {self.value!r}: {self.problem}"

    def in_file(self, file: str | Path) -> ParamsError:
        return ParamsError(self.key, self.value, self.problem, file)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Return ``value`` checked (and, for nested dataclasses, built) as type ``tp``."""
    origin = get_origin(tp) or (tp if tp in (list, dict) else None)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        if value not in get_args(tp):
            raise ParamsError(key, value, f"must be {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, key)
            except ParamsError as e:
                errors.append(e.problem)
        raise ParamsError(key, value, " or ".join(errors))
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(key, value, "must be a list")
        (item_tp,) = get_args(tp) or (Any,)
        return [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(key, value, "must be a mapping")
        k_tp, v_tp = get_args(tp) or (Any, Any)
        return {_convert(k_tp, k, key): _convert(v_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(key, value, "must be a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(key, value, "must be an integer")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ParamsError(key, value, f"must be a {tp.__name__}")
        return value
    raise TypeError(f"{key}: unsupported config type {tp!r}")


def _check_range(f: dataclasses.Field, value: Any, key: str) -> None:
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if lo is not None and v < lo:
            raise ParamsError(key, value, f"must be >= {lo}")
        if hi is not None and v > hi:
            raise ParamsError(key, value, f"must be <= {hi}")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; every error names the dotted key."""
    if not isinstance(data, dict):
        raise ParamsError(prefix or "<root>", data, f"must be a mapping of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    dotted = (prefix + ".") if prefix else ""
    for name in data:
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ParamsError(f"{dotted}{name}", data[name], f"unknown key (known: {known})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{dotted}{name}"
        if name not in data:
            no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if no_default:
                raise ParamsError(key, None, "missing (required key)")
            continue
        value = _convert(hints[name], data[name], key)
        _check_range(f, value, key)
        kwargs[name] = value
    try:
        obj = cls(**kwargs)  # a config's own __post_init__ may refuse a combination
    except ValueError as e:
        raise ParamsError(prefix or "<root>", "(section)", str(e)) from None
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except ParamsError as e:
            raise ParamsError(f"{dotted}{e.key}", e.value, e.problem) from None
        except ValueError as e:  # a model config's own consistency check
            raise ParamsError(prefix or "<root>", "(section)", str(e)) from None
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """The inverse of :func:`from_dict` (plain YAML-able types)."""
    return dataclasses.asdict(obj)
