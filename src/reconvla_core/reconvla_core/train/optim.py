"""What trains and how: freezing, LoRA adapters (peft), parameter groups, optimiser, LR schedule.

Trainable parameters are exactly those ``model.parameter_groups()`` returns (llm, projector,
denoiser, and vision when the model config sets ``train_vision``); everything else (the VAE, a
frozen vision tower) is frozen here, whatever the model's defaults.

LoRA (``lora.enabled``): adapters are injected into the LLM's attention and MLP projections with
peft; the LLM's own weights freeze, the adapters form the ``llm`` group (its learning rate), and
the projector and denoiser train fully. Decision: the inference checkpoint holds the LLM with the
adapters **merged** (``merge_lora``), so deployment needs neither peft nor adapter files; the
adapters alone are also saved beside it (``final/lora_adapter/``) for inspection or re-use.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from reconvla_core.train.config import PARAM_GROUPS, TrainConfig

logger = logging.getLogger(__name__)


def find_llm(model: nn.Module) -> tuple[nn.Module, str]:
    """The LLM submodule of a ReconVLA and its attribute path (for peft wrapping and checkpointing)."""
    for name in ("llm", "language_model", "text_model"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return module, name
    raise AttributeError(f"{type(model).__name__} has no llm/language_model submodule to adapt")


def _set_attr_path(root: nn.Module, path: str, value: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, leaf, value)


def apply_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Wrap the LLM with peft LoRA adapters (in place on ``model``); returns the peft model."""
    from peft import LoraConfig, get_peft_model

    llm, path = find_llm(model)
    present = {name.rsplit(".", 1)[-1] for name, _ in llm.named_modules()}
    missing = [t for t in config.lora.target_modules if t not in present]
    if missing:
        raise ValueError(f"lora.target_modules {missing} are not modules of the LLM "
                         f"(it has e.g. {sorted(n for n in present if n.endswith('proj'))})")
    lora_config = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                             target_modules=list(config.lora.target_modules), bias="none")
    peft_llm = get_peft_model(llm, lora_config)
    _set_attr_path(model, path, peft_llm)
    trainable, total = peft_llm.get_nb_trainable_parameters()
    logger.info("LoRA r=%d alpha=%d on %s: %d adapter parameters (LLM total %d)", config.lora.r,
                config.lora.alpha, ",".join(config.lora.target_modules), trainable, total)
    return peft_llm


def is_lora(model: nn.Module) -> bool:
    try:
        llm, _ = find_llm(model)
    except AttributeError:
        return False
    return hasattr(llm, "merge_and_unload") and hasattr(llm, "peft_config")


def merge_lora(model: nn.Module, adapter_dir: Any | None = None) -> nn.Module:
    """Merge the LoRA adapters into the LLM weights (in place); optionally save the adapters first."""
    llm, path = find_llm(model)
    if not is_lora(model):
        return model
    if adapter_dir is not None:
        llm.save_pretrained(str(adapter_dir))
    _set_attr_path(model, path, llm.merge_and_unload())
    logger.info("merged the LoRA adapters into the LLM")
    return model


def select_trainable(model: nn.Module, config: TrainConfig) -> dict[str, list[nn.Parameter]]:
    """Freeze everything but the model's parameter groups; returns the groups (non-empty ones only)."""
    if config.lora.enabled:
        llm, _ = find_llm(model)
        for param in llm.parameters():
            param.requires_grad_(False)
        for name, param in llm.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
    groups = model.parameter_groups()
    unknown = set(groups) - set(PARAM_GROUPS)
    if unknown:
        raise ValueError(f"model.parameter_groups() returned unknown groups {sorted(unknown)}")
    keep = {id(p) for params in groups.values() for p in params}
    frozen = 0
    for param in model.parameters():
        if id(param) not in keep:
            param.requires_grad_(False)
            frozen += param.numel()
    if config.lora.enabled:  # the base LLM weights must be frozen even if the model lists them
        groups["llm"] = [p for p in groups.get("llm", []) if p.requires_grad]
    groups = {name: [p for p in params if p.requires_grad] for name, params in groups.items()}
    counts = {name: sum(p.numel() for p in params) for name, params in groups.items()}
    logger.info("trainable parameters: %s (frozen: %.2fM: VAE%s%s)",
                ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()), frozen / 1e6,
                "" if "vision" in counts else ", vision tower", ", LLM base weights" if config.lora.enabled else "")
    return {name: params for name, params in groups.items() if params}


def build_optimizer(groups: dict[str, list[nn.Parameter]], config: TrainConfig) -> torch.optim.Optimizer:
    """One optimiser parameter group per model group, each with its own learning rate."""
    lrs = config.group_lrs()
    param_groups = [
        {"params": params, "lr": lrs[name], "name": name, "weight_decay": config.optim.weight_decay}
        for name, params in groups.items()
    ]
    if not param_groups:
        raise ValueError("nothing to train: every parameter group is empty")
    o = config.optim
    if o.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.SGD(param_groups, momentum=o.momentum, weight_decay=o.weight_decay)


def lr_factor(step: int, *, warmup: int, total: int, kind: str) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based): linear warmup then decay."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = config.warmup_for(total_steps)
    kind = config.optim.scheduler
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup=warmup, total=total_steps, kind=kind)
    )


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Turn on non-reentrant activation checkpointing in every trainable HF submodule that supports it.

    Call after :func:`select_trainable` so frozen towers are skipped.
    """
    if hasattr(model, "gradient_checkpointing_enable") and not hasattr(model, "supports_gradient_checkpointing"):
        model.gradient_checkpointing_enable()
        return 1
    count = 0
    for module in model.modules():
        if getattr(module, "supports_gradient_checkpointing", False) and hasattr(module, "gradient_checkpointing_enable"):
            if getattr(module, "is_gradient_checkpointing", False):
                continue
            if not any(p.requires_grad for p in module.parameters()):
                continue  # frozen (vision tower): no backward through it, nothing to save
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            count += 1
    if count == 0:
        logger.warning("gradient checkpointing requested but no submodule supports it")
    return count
