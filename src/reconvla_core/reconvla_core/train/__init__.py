"""Training (`reconvla train`): configs, the accelerate loop, checkpoints, validation.

Python API (what the CLI and the demo call)::

    from reconvla_core.train import train, TrainConfig, load_train_config
    config = load_train_config("tiny-sim", ["optim.lr=1e-3"], data=["runs/sim_dataset"], output_dir="runs/t")
    result = train(config)          # {"steps", "final_loss", "final_action_loss", "final_recon_loss",
                                    #  "samples_per_s", "checkpoint", ...}

Importing this package does not import torch (the config modules are plain Python).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconvla_core.train.config import ConfigError, TrainConfig, validate_config
from reconvla_core.train.config_loading import ACCELERATE_CONFIG_DIR, available_configs, load_train_config

__all__ = ["ConfigError", "TrainConfig", "accelerate_config", "available_configs", "load_train_config", "train",
           "validate_config"]


def train(config: TrainConfig, *, resume: bool = False, step_callback: Any = None) -> dict[str, Any]:
    """Run one training stage (see :func:`reconvla_core.train.loop.train`)."""
    from reconvla_core.train.loop import train as _train

    return _train(config, resume=resume, step_callback=step_callback)


def accelerate_config(name: str) -> Path:
    """Path of a shipped accelerate config: single_gpu, ddp, fsdp, deepspeed_zero2, deepspeed_zero3."""
    path = ACCELERATE_CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in ACCELERATE_CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no accelerate config '{name}' (shipped: {', '.join(names)})")
    return path
