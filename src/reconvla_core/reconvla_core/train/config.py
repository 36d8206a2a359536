"""Training configuration: the sections of a run (dataclasses, no torch), typed from YAML-shaped dicts, validated.

A run is described by one :class:`TrainConfig`; where its YAML comes from (shipped names, files,
``extends``, ``key=value`` overrides, ``--data``) is :mod:`reconvla_core.train.config_loading`.

The ``model:`` section is a :class:`ReconVLAConfig` preset plus any of its fields (nested ones as
mappings), typed and checked against ReconVLAConfig when the config is built.

Every check a user can fail runs when the config is built (:func:`config_from_dict`) or in
:func:`validate_config`, before any model or data is built: unknown keys (with a "did you mean"),
values out of range, missing dataset directories, a global batch that does not divide into
per-device batch x processes x accumulation steps.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconvla_core.data.lerobot_v3.format import RELABELLED_ACTIONS
from reconvla_core.model.configuration_reconvla import (PRESETS, REMOVED_TRAINING_OPTIONS, ReconVLAConfig,
                                                        removed_model_options)
from reconvla_core.train.typed_yaml import ConfigError, build, coerce, coerce_fields, deep_merge, plain

__all__ = ["ConfigError", "ModelSection", "TrainConfig", "config_from_dict", "deep_merge", "to_yaml",
           "validate_config", "world_size"]

logger = logging.getLogger(__name__)


PARAM_GROUPS: tuple[str, ...] = ("llm", "projector", "denoiser", "vision")
MIXED_PRECISION: tuple[str, ...] = ("no", "bf16", "fp16")
SCHEDULERS: tuple[str, ...] = ("cosine", "linear", "constant")
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
STAGES: tuple[str, ...] = ("pretrain", "finetune")


class ModelSection:
    """The ``model:`` section: a ReconVLAConfig preset plus any of its fields, typed and checked at load.

    In YAML the fields sit directly under ``model:``, nested configs as mappings::

        model:
          preset: tiny
          action_head: parallel
          vision: {feature_layer: -1}

    Args:
        preset: the ReconVLAConfig preset the fields start from (``tiny`` | ``paper``).
        overrides: the ReconVLAConfig fields the recipe sets on top of the preset. They are checked
            against the dataclass fields and types here: an unknown key or a wrong type raises
            ConfigError naming ``model.<key>``, a value ReconVLAConfig rejects raises its message.

    A fresh run builds :meth:`resolve` (the preset with the overrides applied). A finetune keeps its
    init checkpoint's config and looks only at ``overrides``: it applies the FINETUNE_OPTIONS among
    them and reports the others that differ (train/model_setup.py). That is why the section keeps
    which fields the recipe set, not only the resolved result.
    """

    def __init__(self, preset: str = "tiny", overrides: Mapping[str, Any] | None = None) -> None:
        if preset not in PRESETS:
            close = difflib.get_close_matches(str(preset), sorted(PRESETS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"model.preset: '{preset}' is not one of {', '.join(sorted(PRESETS))}{hint}")
        self.preset: str = preset
        self.overrides: dict[str, Any] = coerce_fields(ReconVLAConfig, dict(overrides or {}), "model",
                                                          exclude=("preset",))  # the section's base
        try:
            self._resolved = ReconVLAConfig.from_preset(preset, **self.overrides)
        except ValueError as error:  # ReconVLAConfig's own validation; its message names the field
            raise ConfigError(f"model: {error}") from error

    @classmethod
    def from_yaml(cls, data: Mapping[str, Any], where: str = "model") -> ModelSection:
        """The section from its YAML mapping (``preset`` plus ReconVLAConfig fields; a deprecated
        ``options:`` sub-mapping is folded in, see :func:`fold_model_options`)."""
        data = fold_model_options(data)
        preset = coerce(data.pop("preset", "tiny"), str, f"{where}.preset")
        removed = [name for name in REMOVED_TRAINING_OPTIONS if name in data]
        try:
            removed += removed_model_options(data)  # those that are off
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from error
        if removed:  # configs written before these research options were removed still load
            logger.warning("%s: %s dropped (removed research options)", where, ", ".join(removed))
            for name in removed:
                data.pop(name)
        return cls(preset, data)

    def resolve(self) -> ReconVLAConfig:
        """The model config a fresh run builds: the preset with the overrides applied (a copy of its own)."""
        return copy.deepcopy(self._resolved)

    def to_dict(self) -> dict[str, Any]:
        """Every resolved ReconVLAConfig field (``preset`` first), as YAML writes it."""
        return plain(dataclasses.asdict(self._resolved))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelSection):
            return NotImplemented
        return self.preset == other.preset and self.overrides == other.overrides

    def __repr__(self) -> str:
        return f"ModelSection(preset={self.preset!r}, overrides={self.overrides!r})"


def fold_model_options(model: Mapping[str, Any], source: str = "") -> dict[str, Any]:
    """``model.options`` (the untyped sub-mapping of ReconVLAConfig fields that recipes and the
    train_config.yaml of earlier runs hold) folded into the model section, with a one-line deprecation
    warning. Its fields win over the same keys beside it, as they did when ``options`` was applied last."""
    data = dict(model)
    options = data.pop("options", None)
    if options is None:
        return data
    if not isinstance(options, Mapping):
        raise ConfigError(f"{source}model.options: expected a mapping, got {type(options).__name__}")
    logger.warning("%smodel.options is deprecated: put its fields (%s) directly under model:", source,
                   ", ".join(map(str, options)) or "none")
    return deep_merge(data, dict(options))


@dataclass
class DataSourceSection:
    path: str = ""
    weight: float = 1.0  # mixing weight: a source is drawn with probability weight / sum(weights)
    features: str = "reconvla"  # column mapping: reconvla (ours), libero, bridge (external LeRobot v3 ports)


@dataclass
class DataSection:
    sources: list[DataSourceSection] = field(default_factory=list)
    val_fraction: float = 0.1  # held-out episodes, per dataset
    # Drop no-op frames as samples: the command moved less than this (rad / m) in every dim since
    # the previous frame. None keeps every frame. See reconvla_core.data.dataset.
    static_threshold: float | None = None
    # What a relabelled frame (a DAgger state the policy drove) teaches: "step", the expert's label of
    # its own step (the chunk ends there); "none", no action at all: only what the frame shows (the
    # gaze and reconstruction targets). See reconvla_core.data.dataset.
    relabelled_actions: str = "step"
    augment: bool = False
    num_workers: int = 0


@dataclass
class TrainSection:
    """Batch geometry, length of the run, precision and memory savers."""

    global_batch_size: int = 8
    per_device_batch_size: int = 4
    grad_accum_steps: int | None = None  # derived: global / (per_device x processes) when unset
    epochs: float = 1.0
    max_steps: int | None = None  # optimiser steps; overrides epochs when set
    mixed_precision: str = "no"  # no | bf16 | fp16
    gradient_checkpointing: bool = False
    cpu: bool = False  # run on the CPU even when a GPU is present (debugging, reference runs)
    allow_tf32: bool = True  # CUDA: TF32 tensor cores for fp32 matmuls (the fp32 denoiser); no effect on CPU


@dataclass
class OptimSection:
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 2e-5
    lr_llm: float | None = None  # per-group learning rates; None -> lr
    lr_projector: float | None = None
    lr_denoiser: float | None = None
    lr_vision: float | None = None  # only used with model.train_vision
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.0  # sgd only
    scheduler: str = "cosine"  # cosine | linear | constant (all after a linear warmup)
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None  # overrides warmup_ratio when set
    max_grad_norm: float | None = 1.0  # None or 0 disables clipping


@dataclass
class LoRASection:
    """LoRA adapters on the LLM's attention and MLP projections (peft); projector + denoiser train fully."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class CheckpointSection:
    every_steps: int = 500  # 0: only the final artefact (and on SIGTERM/SIGINT)
    keep_last: int = 2
    on_signal: bool = True


@dataclass
class LoggingSection:
    every_steps: int = 10
    tensorboard: bool = True
    progress_bar: bool = True
    loss_curve: bool = True


@dataclass
class EvalSection:
    every_steps: int = 0  # 0: only at the end of the run
    at_end: bool = True
    max_samples: int = 64  # held-out samples per validation
    sim_episodes: int = 0  # > 0: also a short closed-loop run in the simulation twin (if available)
    sim_max_steps: int = 60  # control steps per subtask (at the twin's 10 Hz) before it counts as failed


@dataclass
class TrainConfig:
    """One training run. Nested sections mirror the YAML files in ``train/configs``."""

    name: str = "run"
    stage: str = "pretrain"  # pretrain | finetune
    init_from: str | None = None  # finetune: a checkpoint written by a pretrain run
    output_dir: str = "runs/train"
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimSection = field(default_factory=OptimSection)
    lora: LoRASection = field(default_factory=LoRASection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    eval: EvalSection = field(default_factory=EvalSection)

    # ------------------------------------------------------------------ derived values
    def grad_accum_for(self, num_processes: int) -> int:
        """Accumulation steps so that per_device x processes x accumulation == global batch."""
        per_step = self.train.per_device_batch_size * num_processes
        if self.train.grad_accum_steps is not None:
            return self.train.grad_accum_steps
        return max(1, self.train.global_batch_size // per_step)

    def group_lrs(self) -> dict[str, float]:
        """Learning rate of each parameter group (llm, projector, denoiser, vision)."""
        optim = self.optim
        return {
            "llm": optim.lr_llm if optim.lr_llm is not None else optim.lr,
            "projector": optim.lr_projector if optim.lr_projector is not None else optim.lr,
            "denoiser": optim.lr_denoiser if optim.lr_denoiser is not None else optim.lr,
            "vision": optim.lr_vision if optim.lr_vision is not None else optim.lr,
        }

    def warmup_for(self, total_steps: int) -> int:
        if self.optim.warmup_steps is not None:
            return min(self.optim.warmup_steps, total_steps)
        return round(self.optim.warmup_ratio * total_steps)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["model"] = self.model.to_dict()  # the resolved model fields, not the section object
        return data


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a (YAML-shaped) dict; unknown keys and wrong types raise ConfigError."""
    data = dict(data)
    data.pop("extends", None)
    sources = data.get("data", {}).get("sources") if isinstance(data.get("data"), dict) else None
    if sources is not None:  # allow plain path strings in the list
        data["data"] = dict(data["data"])
        data["data"]["sources"] = [{"path": s} if isinstance(s, str) else s for s in sources]
    return build(TrainConfig, data)


# ---------------------------------------------------------------------- validation
def world_size() -> int:
    """Processes of this launch (accelerate launch / torchrun set WORLD_SIZE), known before any setup."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_config(config: TrainConfig, num_processes: int = 1, *, check_paths: bool = True) -> int:
    """Raise ConfigError for anything a run cannot start from; return the gradient-accumulation steps.

    Runs before any model or data is built, so a wrong key or path costs no waiting.
    """
    _require(config.stage in STAGES, f"stage: '{config.stage}' is not one of {', '.join(STAGES)}")
    # The model section was checked by ReconVLAConfig when it was built (ModelSection).

    t = config.train
    _require(t.mixed_precision in MIXED_PRECISION,
             f"train.mixed_precision: '{t.mixed_precision}' is not one of {', '.join(MIXED_PRECISION)}")
    _require(t.global_batch_size >= 1, f"train.global_batch_size must be >= 1, got {t.global_batch_size}")
    _require(t.per_device_batch_size >= 1, f"train.per_device_batch_size must be >= 1, got {t.per_device_batch_size}")
    _require(num_processes >= 1, f"number of processes must be >= 1, got {num_processes}")
    per_step = t.per_device_batch_size * num_processes
    if t.grad_accum_steps is not None:
        _require(t.grad_accum_steps >= 1, f"train.grad_accum_steps must be >= 1, got {t.grad_accum_steps}")
        _require(
            per_step * t.grad_accum_steps == t.global_batch_size,
            f"train.global_batch_size {t.global_batch_size} != per_device_batch_size {t.per_device_batch_size} x "
            f"{num_processes} processes x grad_accum_steps {t.grad_accum_steps} (= {per_step * t.grad_accum_steps}); "
            "fix one of them or unset grad_accum_steps to derive it",
        )
    else:
        _require(
            t.global_batch_size % per_step == 0,
            f"train.global_batch_size {t.global_batch_size} is not divisible by per_device_batch_size "
            f"{t.per_device_batch_size} x {num_processes} processes (= {per_step}); choose a global batch that is a "
            f"multiple of {per_step} or change per_device_batch_size",
        )
    _require(t.max_steps is None or t.max_steps >= 0, f"train.max_steps must be >= 0, got {t.max_steps}")
    _require(t.max_steps is not None or t.epochs > 0, f"train.epochs must be > 0, got {t.epochs}")

    o = config.optim
    _require(o.optimizer in OPTIMIZERS, f"optim.optimizer: '{o.optimizer}' is not one of {', '.join(OPTIMIZERS)}")
    _require(o.scheduler in SCHEDULERS, f"optim.scheduler: '{o.scheduler}' is not one of {', '.join(SCHEDULERS)}")
    for group, lr in config.group_lrs().items():
        field_name = "optim.lr" if getattr(o, f"lr_{group}") is None else f"optim.lr_{group}"
        _require(lr > 0 and lr < 1.0, f"{field_name}: learning rate of the {group} group must be in (0, 1), got {lr}")
    _require(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), f"optim.betas must be two values in [0, 1), got {o.betas}")
    _require(0 <= o.warmup_ratio < 1, f"optim.warmup_ratio must be in [0, 1), got {o.warmup_ratio}")
    _require(o.warmup_steps is None or o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    _require(o.max_grad_norm is None or o.max_grad_norm >= 0, f"optim.max_grad_norm must be >= 0, got {o.max_grad_norm}")

    if config.lora.enabled:
        _require(config.lora.r >= 1, f"lora.r must be >= 1, got {config.lora.r}")
        _require(bool(config.lora.target_modules), "lora.target_modules is empty; name the LLM projections to adapt")
        _require(0 <= config.lora.dropout < 1, f"lora.dropout must be in [0, 1), got {config.lora.dropout}")

    for section, value in (("checkpoint.every_steps", config.checkpoint.every_steps),
                           ("logging.every_steps", config.logging.every_steps),
                           ("eval.every_steps", config.eval.every_steps),
                           ("eval.sim_episodes", config.eval.sim_episodes)):
        _require(value >= 0, f"{section} must be >= 0, got {value}")
    _require(config.checkpoint.keep_last >= 1, f"checkpoint.keep_last must be >= 1, got {config.checkpoint.keep_last}")
    _require(0 <= config.data.val_fraction < 1, f"data.val_fraction must be in [0, 1), got {config.data.val_fraction}")
    threshold = config.data.static_threshold
    _require(threshold is None or (isinstance(threshold, (int, float)) and 0 < threshold < math.inf),
             f"data.static_threshold must be a positive number or null, got {threshold!r}")
    _require(config.data.relabelled_actions in RELABELLED_ACTIONS,
             f"data.relabelled_actions must be one of {RELABELLED_ACTIONS}, got {config.data.relabelled_actions!r}")

    _require(bool(config.data.sources),
             "no training data: pass --data DIR [DIR ...] or set data.sources (LeRobot v3 dataset directories "
             "written by `reconvla dataset build`)")
    for i, source in enumerate(config.data.sources):
        _require(source.weight > 0, f"data.sources[{i}].weight must be > 0, got {source.weight}")
        if check_paths:
            root = Path(source.path)
            if not root.is_dir():
                raise ConfigError(f"data.sources[{i}].path: dataset directory {root} does not exist "
                                  "(build one with `reconvla dataset build`)")
            if not (root / "meta" / "info.json").is_file():
                raise ConfigError(f"data.sources[{i}].path: {root} has no meta/info.json; is it a LeRobot v3 "
                                  "dataset written by `reconvla dataset build`?")

    if config.stage == "finetune":
        _require(bool(config.init_from), "stage finetune needs init_from: the checkpoint of a pretrain run")
    if config.init_from and check_paths:
        root = Path(config.init_from)
        if not root.is_dir():
            raise ConfigError(f"init_from: checkpoint directory {root} does not exist")
        if not (root / "config.json").is_file():
            raise ConfigError(f"init_from: {root} has no config.json; was it written by `reconvla train` "
                              "(the final/ directory of a run)?")
    return config.grad_accum_for(num_processes)


def to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
