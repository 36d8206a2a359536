"""Where a training config comes from: shipped names and YAML files, ``key=value`` overrides, ``--data``.

Shipped configs live in ``train/configs/*.yaml`` and are found by name (``tiny-sim``,
``paper-pretrain``, ``paper-finetune``); any other YAML file is loaded by path. A YAML file may
start from another with ``extends: <name or path>`` (a deep merge). ``key=value`` overrides
(``optim.lr=1e-4``, or a bare field name when only one section has it) and the CLI's ``--data``
specs (``DIR[:WEIGHT[:FEATURES]]``) are applied to the YAML-shaped dict before
:func:`reconvla_core.train.config.config_from_dict` types and checks it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from reconvla_core.model.configuration_reconvla import ReconVLAConfig
from reconvla_core.train.config import ModelSection, TrainConfig, config_from_dict, fold_model_options
from reconvla_core.train.typed_yaml import ConfigError, deep_merge, is_dataclass_type, strip_optional

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
ACCELERATE_CONFIG_DIR = CONFIG_DIR / "accelerate"


def available_configs() -> list[str]:
    """Names of the shipped configs (``reconvla train --config NAME``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name_or_path: str | os.PathLike[str]) -> Path:
    """Resolve a shipped config name or a YAML path."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or os.sep in text:
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        return path
    shipped = CONFIG_DIR / f"{text}.yaml"
    if shipped.is_file():
        return shipped
    names = available_configs()
    close = difflib.get_close_matches(text, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise FileNotFoundError(f"no config named '{text}'{hint} (shipped: {', '.join(names)}; or pass a .yaml path)")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ConfigError(f"config {path}: 'extends' loops back to itself")
    with open(path, encoding="utf-8") as stream:
        try:
            data = yaml.safe_load(stream) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config {path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping, got {type(data).__name__}")
    if isinstance(data.get("model"), Mapping) and "options" in data["model"]:
        # Folded per file, before the merge with its parent and the key=value overrides, so a
        # newer layer's flat field is not overwritten by an older layer's options.
        data["model"] = fold_model_options(data["model"], f"config {path}: ")
    parent = data.get("extends")
    if parent:
        parent_path = config_path(parent) if not Path(str(parent)).is_absolute() else Path(parent)
        if not parent_path.is_file() and (path.parent / str(parent)).is_file():
            parent_path = path.parent / str(parent)
        data = deep_merge(_read_yaml(parent_path, seen + (path,)), {k: v for k, v in data.items() if k != "extends"})
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``optim.lr=1e-4`` -> (["optim", "lr"], 1e-4). The value is read as YAML (numbers, bools, lists, null),
    except for string fields, which take the text as written (``train.mixed_precision=no`` stays "no")."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not key=value (e.g. optim.lr=1e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    keys = key.split(".")
    field_type = _field_type(keys)
    if field_type is not None:
        inner, optional = strip_optional(field_type)
        if inner is str and not (optional and raw.strip().lower() in ("null", "none", "~")):
            return keys, raw.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return keys, value


def _field_type(keys: list[str]) -> Any | None:
    """The annotation of the field at a dotted path of TrainConfig, or None if there is none."""
    cls: Any = TrainConfig
    for i, key in enumerate(keys):
        if cls is ModelSection:
            cls = ReconVLAConfig
        if not is_dataclass_type(cls):
            return None
        hints = typing.get_type_hints(cls)
        if key not in hints:
            return None
        if i == len(keys) - 1:
            return hints[key]
        cls, _ = strip_optional(hints[key])
    return None


def _leaf_index() -> dict[str, list[list[str]]]:
    """Field name -> the dotted paths it appears at (for bare overrides like ``lr=1e-4``)."""
    index: dict[str, list[list[str]]] = {}

    def walk(cls: type, prefix: list[str]) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp, _ = strip_optional(hints[f.name])
            if tp is ModelSection:
                walk(ReconVLAConfig, prefix + [f.name])
            elif is_dataclass_type(tp):
                walk(tp, prefix + [f.name])
            else:
                index.setdefault(f.name, []).append(prefix + [f.name])

    walk(TrainConfig, [])
    return index


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides to a YAML-shaped dict (validated later by :func:`config_from_dict`)."""
    data = deep_merge({}, data)
    leaves = _leaf_index()
    for text in overrides:
        keys, value = parse_override(text)
        if len(keys) == 1 and keys[0] not in {f.name for f in dataclasses.fields(TrainConfig)}:
            paths = leaves.get(keys[0], [])
            if len(paths) == 1:
                keys, value = parse_override(".".join(paths[0]) + "=" + text.split("=", 1)[1])
            elif len(paths) > 1:
                options = ", ".join(".".join(p) for p in paths)
                raise ConfigError(f"override '{text}' is ambiguous; use one of: {options}")
        node = data
        for part in keys[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        node[keys[-1]] = value
    return data


def load_train_config(
    name_or_path: str | os.PathLike[str] = "tiny-sim",
    overrides: list[str] | None = None,
    *,
    data: list[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    max_steps: int | None = None,
) -> TrainConfig:
    """Load a shipped config by name or a YAML file, then apply ``key=value`` overrides.

    ``data`` replaces ``data.sources`` (each ``DIR`` or ``DIR:WEIGHT``); ``output_dir`` and
    ``max_steps`` are the CLI's ``--out`` and ``--max-steps``. The result is not validated yet:
    call :func:`validate_config` (``train()`` does) once the number of processes is known.
    """
    path = config_path(name_or_path)
    raw = _read_yaml(path)
    raw.setdefault("name", path.stem)
    raw = apply_overrides(raw, list(overrides or []))
    if data:
        raw.setdefault("data", {})
        raw["data"] = dict(raw["data"])
        raw["data"]["sources"] = [parse_data_arg(item) for item in data]
    if output_dir is not None:
        raw["output_dir"] = str(output_dir)
    if max_steps is not None:
        raw.setdefault("train", {})
        raw["train"] = dict(raw["train"])
        raw["train"]["max_steps"] = int(max_steps)
    return config_from_dict(raw)


def parse_data_arg(text: str) -> dict[str, Any]:
    """``DIR``, ``DIR:WEIGHT`` or ``DIR:WEIGHT:FEATURES`` (mixing weight; column map such as libero, bridge)."""
    parts = text.rsplit(":", 2)
    if len(parts) == 3 and parts[0] and parts[2].isidentifier():
        try:
            return {"path": parts[0], "weight": float(parts[1]), "features": parts[2]}
        except ValueError:
            pass
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return {"path": head, "weight": float(tail)}
        except ValueError:
            pass
    return {"path": text, "weight": 1.0}
