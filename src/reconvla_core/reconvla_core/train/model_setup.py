"""Building the model for a stage and writing the final inference checkpoint.

Pretrain builds a ReconVLA from a preset. Finetune loads the pretrain checkpoint *with* its
reconstruction weights (``load_reconstruction=True``) and checks, tensor by tensor, that the
denoiser it trains is the pretrained one (the authors' code silently re-initialised it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reconvla_core.train.config import ConfigError, TrainConfig, to_yaml

logger = logging.getLogger(__name__)


def build_model(config: TrainConfig, stats: list[dict[str, Any]]) -> tuple[nn.Module, dict[str, Any]]:
    """The model for this stage and a description of where its weights came from. A finetune replaces
    the target robot's entries of ``stats`` in place by its init checkpoint's stats (the loaders
    normalise with that list)."""
    from reconvla_core.model import ReconVLA

    if config.init_from:
        model = ReconVLA.from_pretrained(config.init_from, load_reconstruction=True)
        check_matches_config(model, config)
        info = {"init_from": str(config.init_from), **check_carried_over(model, Path(config.init_from))}
        applied = apply_finetune_options(model, config.model.overrides)
        if applied:
            info["finetune_options"] = applied
    else:
        model_config = config.model.resolve()
        if model_config.llava_path or (model_config.llm_path and model_config.vision_path):
            model = ReconVLA.from_backbones(model_config)  # local weight directories named under model:
            info = {"init": "backbones", **{k: getattr(model_config, k) for k in
                                             ("llava_path", "llm_path", "vision_path", "vae_path") if getattr(model_config, k)}}
            if model_config.builds_reconstruction and not model_config.vae_path:
                logger.warning("no model.vae_path: the reconstruction targets come from a random VAE")
        else:
            model = ReconVLA(model_config)
            info = {"init": f"preset {config.model.preset}, random weights"}
            if config.model.preset != "tiny":
                logger.warning("preset %s with random weights: set model.llava_path (or llm_path + "
                               "vision_path) and vae_path to start from pretrained backbones", config.model.preset)
    if stats and config.init_from and model.norm_stats is not None:
        # A finetune keeps the action space its init checkpoint learned: the target (first) dataset, and
        # the recordings of the same robot that share its stats, are normalised with the checkpoint's
        # stats, not their own (a small finetuning set would otherwise move every normalised value the
        # model knows). Other embodiments keep their own.
        target = stats[0]
        stats[:] = [model.norm_stats if entry is target else entry for entry in stats]
        info["norm_stats"] = "init checkpoint"
    elif stats:
        model.set_norm_stats(stats[0])  # the checkpoint's stats: the first (target) dataset's
        if model.config.standardize_head_inputs:
            info["head_input_stats"] = model.standardize_head_inputs(stats[0])
    return model, info


def apply_finetune_options(model: nn.Module, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A finetune keeps its init checkpoint's architecture; of the model fields the config sets
    (``config.model.overrides``), the FINETUNE_OPTIONS (loss weights, answer format) still apply and
    the SWITCHABLE_OPTIONS rebuild the module they select.
    The others that differ from the checkpoint are ignored, loudly. Returns the options applied."""
    from reconvla_core.model.configuration_reconvla import FINETUNE_OPTIONS, SWITCHABLE_OPTIONS

    applied: dict[str, Any] = {}
    for name, value in overrides.items():
        current = getattr(model.config, name, None)
        if name in SWITCHABLE_OPTIONS:
            if value != current:
                model.switch_option(name, value)
                applied[name] = value
                logger.warning("finetune: %s switched %r -> %r: the module it selects starts from fresh weights",
                               name, current, value)
            continue
        if name in FINETUNE_OPTIONS:
            if value != current:
                setattr(model.config, name, value)
                applied[name] = value
            continue
        for path, wanted, has in _differences(f"model.{name}", value, current):
            logger.warning("finetune: %s=%r is ignored: the init checkpoint has %r", path, wanted, has)
    if applied:
        model.config.validate()
        logger.info("finetune: options on top of the checkpoint's config: %s", applied)
    return applied


def _differences(path: str, value: Any, current: Any) -> list[tuple[str, Any, Any]]:
    """(field path, config value, checkpoint value) for each leaf where they differ; a nested section
    (``vision: {...}``) is compared field by field with the checkpoint's nested config."""
    if isinstance(value, Mapping) and dataclasses.is_dataclass(current):
        return [diff for key, item in value.items()
                for diff in _differences(f"{path}.{key}", item, getattr(current, key, None))]
    return [] if value == current else [(path, value, current)]


def check_matches_config(model: nn.Module, config: TrainConfig) -> None:
    """The two fields a finetune cannot change: the reconstruction target and the chunk length."""
    model_config = model.config
    wanted = config.model.resolve()
    recon = getattr(model_config, "recon_target", None)
    if recon is not None and recon != wanted.recon_target:
        raise ConfigError(f"model.recon_target is '{wanted.recon_target}' but the init_from checkpoint was "
                          f"trained with '{recon}'; set model.recon_target={recon}")
    chunk = getattr(model_config, "chunk_size", None)
    if chunk is not None and chunk != wanted.chunk_size:
        raise ConfigError(f"model.chunk_size is {wanted.chunk_size} but the init_from checkpoint has "
                          f"{chunk}; set model.chunk_size={chunk}")


def _named(model: nn.Module, group: str) -> dict[str, torch.Tensor]:
    ids = {id(p) for p in model.parameter_groups().get(group, [])}
    return {name: p for name, p in model.named_parameters() if id(p) in ids}


def _checkpoint_tensors(root: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(root.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def _lookup(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor | None:
    if name in tensors:
        return tensors[name]
    matches = [k for k in tensors if k.endswith("." + name) or name.endswith("." + k)]
    return tensors[matches[0]] if len(matches) == 1 else None


def check_carried_over(model: nn.Module, root: Path) -> dict[str, Any]:
    """Assert the projector and denoiser hold exactly the checkpoint's tensors; log and return counts."""
    tensors = _checkpoint_tensors(root)
    report: dict[str, Any] = {}
    for group in ("projector", "denoiser"):
        params = _named(model, group)
        if group == "denoiser" and not params:
            report["denoiser_carried_over"] = None  # recon_target none: nothing to carry
            continue
        found = 0
        for name, param in params.items():
            saved = _lookup(tensors, name)
            if saved is None:
                continue
            if not torch.equal(saved.to(param.dtype), param.detach().cpu()):
                raise RuntimeError(f"finetune init: {group} tensor {name} differs from the one in {root}")
            found += 1
        if found != len(params):
            raise RuntimeError(
                f"finetune init: only {found} of {len(params)} {group} tensors were found in {root}; the "
                f"{group} would start untrained (is it a checkpoint with reconstruction weights?)"
            )
        count = sum(p.numel() for p in params.values())
        report[f"{group}_carried_over"] = True
        report[f"{group}_params"] = count
        logger.info("finetune: %s carried over from %s (%d tensors, %.2fM parameters, checked equal)",
                    group, root, found, count / 1e6)
    return report


def save_final(run: Any) -> Path:
    """The inference checkpoint: LoRA merged, norm stats, tokenizer, training metadata (metadata.json
    "training": stage, steps, data, init) and the resolved train_config.yaml.

    Under DeepSpeed ZeRO-3 / FSDP the parameters are sharded: the full state dict is gathered onto
    the main process and loaded into a fresh (meta-initialised) model, which is what gets saved.
    """
    from reconvla_core.train.optim import is_lora, merge_lora

    accelerator = run.accelerator
    final = run.output_dir / "final"
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(run.model)
    if accelerator.distributed_type.value in ("DEEPSPEED", "FSDP"):
        state_dict = accelerator.get_state_dict(run.model)  # collective: every process takes part
        if accelerator.is_main_process:
            model = _unsharded_copy(model, state_dict)
    if is_lora(model):
        merge_lora(model, adapter_dir=final / "lora_adapter" if accelerator.is_main_process else None)
    if accelerator.is_main_process:
        final.mkdir(parents=True, exist_ok=True)
        metadata: dict[str, Any] = {"training": {
            "stage": run.config.stage, "steps": run.state.step, "samples_seen": run.state.samples_seen,
            "data": run.state.data, "init": run.init_info, "lora_merged": run.config.lora.enabled}}
        if run.config.init_from:  # how the weights it started from were made
            from reconvla_core.model.checkpoint import inherited_lineage

            lineage = inherited_lineage(run.config.init_from)
            if lineage:
                metadata["init_lineage"] = lineage
        model.save_pretrained(final, metadata=metadata)
        (final / "train_config.yaml").write_text(to_yaml(run.config))
        logger.info("inference checkpoint -> %s", final)
    accelerator.wait_for_everyone()
    return final


def _unsharded_copy(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A plain CPU model holding the gathered weights (the sharded one cannot be saved directly)."""
    from accelerate import init_empty_weights

    if any("lora_" in key for key in state_dict):
        # Unsupported combination (peft cannot merge adapters into sharded weights); the resumable
        # checkpoint is already saved, so nothing is lost.
        raise ConfigError("lora.enabled with DeepSpeed ZeRO-3/FSDP cannot write the merged inference checkpoint: "
                          "resume from the saved checkpoint with DDP or one process to merge the adapters "
                          "(LoRA rarely needs sharding)")
    with init_empty_weights(include_buffers=False):
        copy = type(model)(model.config, tokenizer=model.tokenizer, build_reconstruction=model.reconstruction is not None)
    copy.load_state_dict({k: v.cpu() for k, v in state_dict.items()}, strict=False, assign=True)
    if model.config.llm.tie_word_embeddings:
        copy.llm.tie_weights()
    copy.set_norm_stats(model.norm_stats)
    return copy


def export_checkpoint(run_dir: Path, out: Path, step: int | None = None) -> dict[str, Any]:
    """A run's resumable checkpoint (step ``step``, or the newest) -> an inference directory like the
    run's ``final/``: the model the run's config builds, with the checkpoint's weights, its norm stats
    and tokenizer. For evaluating a run part way, or keeping a good step of a long one."""
    import yaml
    from safetensors.torch import load_file

    from reconvla_core.train.config import config_from_dict
    from reconvla_core.train.data import build_data
    from reconvla_core.train.state import checkpoint_dir, latest_checkpoint

    config_file = run_dir / "train_config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: {run_dir} is not a `reconvla train` output directory")
    source = checkpoint_dir(run_dir, step) if step is not None else latest_checkpoint(run_dir)
    if source is None or not (source / "model.safetensors").is_file():
        raise FileNotFoundError(f"no checkpoint {'at step ' + str(step) if step is not None else ''} with "
                                f"model.safetensors in {run_dir / 'checkpoints'}")
    config = config_from_dict(yaml.safe_load(config_file.read_text()))
    if config.lora.enabled:
        raise ValueError("a LoRA run's step checkpoints hold adapter weights: use its final/ (merged)")
    model, _ = build_model(config, build_data(config, need_val=False).stats)
    state = load_file(str(source / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if model.config.llm.tie_word_embeddings:
        missing = [k for k in missing if k != "llm.lm_head.weight"]
        model.llm.tie_weights()
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match the run's model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    steps = int(source.name.split("-")[-1])
    model.save_pretrained(out, metadata={"training": {"stage": config.stage, "steps": steps,
                                                      "exported_from": str(source)}})
    (out / "train_config.yaml").write_text(config_file.read_text())
    return {"checkpoint": str(out), "step": steps, "source": str(source)}
