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

Every float must be finite: YAML spells NaN and infinity ``.nan`` / ``.inf`` and JSON readers
accept ``NaN``, and neither is a learning rate or a weight that any run can use (NaN also
compares false with every bound, so a range alone would let it through).

A config built by :func:`from_dict` remembers where it was read (:func:`origin_of`: its dotted
key, and the file once :func:`mark_file` names it), so that a rule only a built model can check
(a timm ViT's depth, its patch size) raises the same one-line error as a params rule, naming the
key as the user wrote it: :func:`config_error`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

NEUTRAL = {"neutral": True}


def bounds(lo: float | None = None, hi: float | None = None, **extra) -> dict:
    """A field's range as metadata (``field(default=..., metadata=bounds(0.0, 1.0))``), which
    :func:`check_range` enforces."""
    return {k: v for k, v in (("min", lo), ("max", hi)) if v is not None} | extra


FINITE = "must be a finite number"
_ORIGIN = "_config_origin"  # instance attribute: (dotted key, file or None, {field: source key})


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
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(key, value, FINITE)
        return number
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
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(key, value, FINITE)
        if lo is not None and v < lo:
            raise ConfigError(key, value, f"must be >= {lo}")
        if hi is not None and v > hi:
            raise ConfigError(key, value, f"must be <= {hi}")


def validate(obj: Any, prefix: str | None = None) -> None:
    """Ranges of every field, then ``obj.validate()``, recursively, keys dotted under ``prefix``.

    Model builders call this too, so a config made in Python meets the same rules as one read
    from a file; ``prefix`` defaults to where ``obj`` was read (:func:`origin_of`), so a builder's
    error names the key and the file as ``load_params`` would.
    """
    key, file, _ = origin_of(obj)
    try:
        _validate(obj, key if prefix is None else prefix)
    except ConfigError as e:
        raise (e.in_file(file) if file and e.file is None else e) from None


def _validate(obj: Any, prefix: str) -> None:
    dotted = f"{prefix}." if prefix else ""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if _is_config(value):
            _validate(value, f"{dotted}{f.name}")
        else:
            check_range(f, value, f"{dotted}{f.name}")
    hook = getattr(obj, "validate", None)
    if callable(hook):
        try:
            hook()
        except ConfigError as e:
            raise e.under(prefix) from None


# ----------------------------------------------------------------------------- origins


def _is_config(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def origin_of(obj: Any) -> tuple[str, str | Path | None, dict[str, str]]:
    """``(dotted key, file, {field: the key it is set by})`` of a config read by
    :func:`from_dict` (``("", None, {})`` for one built in Python)."""
    return getattr(obj, _ORIGIN, ("", None, {}))


def _set_origin(obj: Any, key: str, file: str | Path | None, aliases: dict[str, str]) -> None:
    object.__setattr__(obj, _ORIGIN, (key, file, aliases))


def mark_keys(obj: Any, prefix: str) -> None:
    """Remember ``prefix`` as the dotted key of ``obj`` and its nested configs (defaults too)."""
    _, file, aliases = origin_of(obj)
    _set_origin(obj, prefix, file, aliases)
    dotted = f"{prefix}." if prefix else ""
    for f in dataclasses.fields(obj):
        if _is_config(value := getattr(obj, f.name)):
            mark_keys(value, f"{dotted}{f.name}")


def mark_file(obj: Any, file: str | Path) -> None:
    """Remember ``file`` as where ``obj`` and its nested configs were read."""
    key, _, aliases = origin_of(obj)
    _set_origin(obj, key, file, aliases)
    for f in dataclasses.fields(obj):
        if _is_config(value := getattr(obj, f.name)):
            mark_file(value, file)


def mark_alias(obj: Any, name: str, source_key: str) -> None:
    """Field ``name`` of ``obj`` is filled in from ``source_key`` (the user sets that one)."""
    key, file, aliases = origin_of(obj)
    _set_origin(obj, key, file, {**aliases, name: source_key})


def key_of(obj: Any, name: str) -> str:
    """The dotted key of field ``name`` of ``obj``, as the user writes it."""
    key, _, aliases = origin_of(obj)
    return aliases.get(name) or (f"{key}.{name}" if key else name)


def config_error(obj: Any, name: str, value: Any, problem: str,
                 cls: type[ConfigError] = ConfigError) -> ConfigError:
    """The error of field ``name`` of config ``obj``, naming its key and file (:func:`key_of`)."""
    return cls(key_of(obj, name), value, problem, origin_of(obj)[1])


def replace(obj: Any, **changes: Any) -> Any:
    """:func:`dataclasses.replace` that keeps where ``obj`` was read."""
    new = dataclasses.replace(obj, **changes)
    _set_origin(new, *origin_of(obj))
    return new


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
    mark_keys(obj, prefix)
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
