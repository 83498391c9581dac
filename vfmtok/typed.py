"""Plain data (YAML, JSON) into config dataclasses, with errors that name the key and the value.

Why hand-rolled and not pydantic: the configs are plain dataclasses, importable without torch or a
config library, and the checks are few: unknown keys, types, ranges
(``field(metadata={"min": .., "max": ..})``), choices (``Literal[...]``) and one ``validate()``
hook per dataclass for the rules that relate several fields. Every rule raises
:class:`ConfigError`, whose key is dotted from the top (``tokenizer.n_tokens``), so a params file,
a model folder's ``config.json`` and a config built in Python all fail the same way.

Two field flags (``metadata``):
- ``neutral``: where or how a run executes (device, compile, parallelism, retries), not what it
  computes; left out of :func:`result_dict`, so checkpoints and stored model configs match
  whatever the device.
- ``min`` / ``max``: inclusive bounds, checked for numbers and for every number of a list.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

NEUTRAL = {"neutral": True}


class ConfigError(ValueError):
    """A bad config value: which (dotted) key, which value and why; optionally which file."""

    def __init__(self, key: str, value: Any, problem: str, file: str | Path | None = None):
        self.key, self.value, self.problem, self.file = key, value, problem, file
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.key} = {self.value!r}: {self.problem}"

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key inside section ``prefix``."""
        key = f"{prefix}.{self.key}" if prefix and self.key else (prefix or self.key)
        return type(self)(key, self.value, self.problem, self.file)

    def in_file(self, file: str | Path) -> ConfigError:
        return type(self)(self.key, self.value, self.problem, file)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert_union(tp: Any, value: Any, key: str) -> Any:
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    problems = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _convert(arg, value, key)
        except ConfigError as e:
            problems.append(e.problem)
    raise ConfigError(key, value, " or ".join(problems))


def _convert_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, value, "must be a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, "must be an integer")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(key, value, f"must be a {tp.__name__}")
        return value
    raise TypeError(f"{key}: unsupported config type {tp!r}")


def _convert(tp: Any, value: Any, key: str) -> Any:
    """``value`` checked (and, for nested dataclasses, built) as type ``tp``."""
    origin = get_origin(tp) or (tp if tp in (list, dict) else None)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(key, value, f"must be {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        return _convert_union(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, value, "must be a list")
        (item_tp,) = get_args(tp) or (Any,)
        return [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, value, "must be a mapping")
        k_tp, v_tp = get_args(tp) or (Any, Any)
        return {_convert(k_tp, k, key): _convert(v_tp, v, f"{key}.{k}") for k, v in value.items()}
    return _convert_scalar(tp, value, key)


def check_range(f: dataclasses.Field, value: Any, key: str) -> None:
    """The field's ``min``/``max`` metadata against a number or each number of a list."""
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    for v in value if isinstance(value, list) else [value]:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if lo is not None and v < lo:
            raise ConfigError(key, value, f"must be >= {lo}")
        if hi is not None and v > hi:
            raise ConfigError(key, value, f"must be <= {hi}")


def validate(obj: Any, prefix: str = "") -> None:
    """Ranges of every field, then ``obj.validate()``, recursively, keys dotted under ``prefix``.

    Model builders call this too, so a config made in Python meets the same rules as one read
    from a file.
    """
    dotted = f"{prefix}." if prefix else ""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, f"{dotted}{f.name}")
        else:
            check_range(f, value, f"{dotted}{f.name}")
    hook = getattr(obj, "validate", None)
    if callable(hook):
        try:
            hook()
        except ConfigError as e:
            raise e.under(prefix) from None


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping and validate it; every error names the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(prefix or "<root>", data, f"must be a mapping of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    dotted = f"{prefix}." if prefix else ""
    for name in data:
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{dotted}{name}", data[name], f"unknown key (known: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{dotted}{name}", None, "missing (required key)")
            continue
        kwargs[name] = _convert(hints[name], data[name], f"{dotted}{name}")
    obj = cls(**kwargs)
    validate(obj, prefix)
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """The inverse of :func:`from_dict` (plain JSON/YAML types)."""
    return dataclasses.asdict(obj)


def result_dict(obj: Any) -> dict[str, Any]:
    """:func:`to_dict` without the ``neutral`` fields: what decides a run's results."""
    return _drop_neutral(obj, dataclasses.asdict(obj))


def _drop_neutral(obj: Any, data: dict[str, Any]) -> dict[str, Any]:
    for f in dataclasses.fields(obj):
        if f.metadata.get("neutral"):
            del data[f.name]
        elif dataclasses.is_dataclass(value := getattr(obj, f.name)):
            _drop_neutral(value, data[f.name])
    return data


def differences(stored: dict, expected: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, stored value, expected value)`` for every key whose values differ."""
    out = []
    for key in sorted(set(stored) | set(expected)):
        a, b = stored.get(key, "<absent>"), expected.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{name}.")
        elif a != b:
            out.append((name, a, b))
    return out
