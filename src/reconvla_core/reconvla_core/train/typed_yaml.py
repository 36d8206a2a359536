"""Typed dataclasses from YAML-shaped dicts: what ``train/config.py`` builds its sections with.

Hand-written rather than dacite / pydantic: values arrive as YAML and as ``key=value`` strings from the
command line, so ``"false"`` must read as False (not ``bool("false")``), ``"2e-5"`` as a float (YAML 1.1
reads it as a string), ``"1,2"`` as a tuple, and every error must name the field with a "did you mean".

A field whose class has a ``from_yaml(mapping, where)`` classmethod is built by it (the ``model:``
section's YAML shape is not its attributes).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A training configuration a run cannot start from; the message names the field and the fix."""


def is_dataclass_type(tp: Any) -> bool:
    """Whether an annotation is a dataclass (a nested section), not an instance."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def strip_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); any other annotation -> (it, False)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def did_you_mean(key: str, candidates: list[str]) -> str:
    """The suffix of an unknown-key error: the closest valid key, or all of them."""
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(candidates))}"


def _sequence(value: Any, where: str) -> list[Any] | tuple[Any, ...]:
    """A YAML list, or a comma-separated string from the command line, as a sequence."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _scalar(value: Any, inner: Any, where: str) -> Any:
    """bool / int / float / str from YAML or command-line text."""
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if inner is str:
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted no/off/yes/on as a bool
            return "yes" if value else "no"
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    number = "an integer" if inner is int else "a number"
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected {number}, got {value!r}")
    if inner is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (int, float)) and (inner is float or isinstance(value, int)):
        return inner(value)
    if isinstance(value, str):  # YAML 1.1 reads "2e-5" as a string
        try:
            return inner(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected {number}, got {value!r}")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one YAML value against a field's annotation; raise ConfigError naming the field."""
    inner, optional = strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: null is not allowed (expected {getattr(inner, '__name__', inner)})")
    if isinstance(inner, type) and hasattr(inner, "from_yaml"):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return inner.from_yaml(value, where)
    if is_dataclass_type(inner):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return build(inner, value, where)
    origin = typing.get_origin(inner)
    if origin is tuple:  # ReconVLAConfig's sequences: tuple[int, ...] or a fixed tuple[float, float, float]
        args = typing.get_args(inner)
        value = _sequence(value, where)
        if len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(value)
        elif args:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            item_types = list(args)
        else:
            item_types = [Any] * len(value)
        return tuple(coerce(v, tp, f"{where}[{i}]") for i, (v, tp) in enumerate(zip(value, item_types)))
    if origin is list:
        (item_tp,) = typing.get_args(inner) or (Any,)
        if not (isinstance(value, str) and is_dataclass_type(item_tp)):
            value = _sequence(value, where)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if origin is Literal:
        if value not in typing.get_args(inner):
            raise ConfigError(f"{where}: {value!r} is not one of {typing.get_args(inner)}")
        return value
    if inner in (bool, int, float, str):
        return _scalar(value, inner, where)
    return value  # Any


def build(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """An instance of dataclass ``cls`` from ``data``: unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'{did_you_mean(str(key), names)}")
        kwargs[key] = coerce(value, hints[key], path)
    return cls(**kwargs)


def coerce_fields(cls: type, data: dict[str, Any], where: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Typed values for some fields of a config dataclass (not ``exclude``), nested dataclasses kept as
    mappings (they are merged into a preset's nested config, not built from the class defaults)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in exclude]
    values: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'{did_you_mean(str(key), names)}")
        if is_dataclass_type(hints[key]):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
            values[key] = coerce_fields(hints[key], dict(value), path)
        else:
            values[key] = coerce(value, hints[key], path)
    return values


def plain(value: Any) -> Any:
    """Tuples as lists, recursively: yaml.safe_dump writes no tuples."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key, any other value of ``top`` replaces
    (neither argument is changed)."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
