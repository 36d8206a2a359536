"""The training loop on accelerate: ``train()`` sets up, then repeats ``train_step()``,
``evaluate()`` and ``save_checkpoint()``; one function per job.

One optimiser step = ``accum`` micro-batches per process (``accelerator.accumulate`` skips the
gradient all-reduce until the last one), gradient clipping, optimiser and scheduler step.
Losses and accuracy are averaged over micro-batches and processes before they are logged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reconvla_core.model.modeling_reconvla import LOSS_KEYS
from reconvla_core.train.state import (
    SignalStopper,
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from reconvla_core.train.config import TrainConfig, to_yaml, validate_config, world_size
from reconvla_core.train.data import TrainData, build_data, make_loader, move_to_device
from reconvla_core.train.validation import evaluate
from reconvla_core.train.logs import MetricsLogger, plot_loss_curve
from reconvla_core.train.model_setup import build_model, save_final
from reconvla_core.train.optim import (
    apply_lora,
    build_optimizer,
    build_scheduler,
    enable_gradient_checkpointing,
    select_trainable,
)

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class Run:
    """Everything one training run holds; built by :func:`setup_run`."""

    config: TrainConfig
    accelerator: Any
    model: nn.Module  # prepared (DDP/FSDP/DeepSpeed wrapper or the model itself)
    optimizer: Any
    scheduler: Any
    data: TrainData
    processor: Any
    output_dir: Path
    accum: int
    state: TrainState
    logs: MetricsLogger
    stopper: SignalStopper
    batches: Iterator[dict[str, Any]]
    init_info: dict[str, Any] = field(default_factory=dict)
    step_times: list[float] = field(default_factory=list)
    last: dict[str, float] = field(default_factory=dict)
    last_val: dict[str, float] = field(default_factory=dict)


def train(config: TrainConfig, *, resume: bool = False, step_callback: StepCallback | None = None) -> dict[str, Any]:
    """Run one training stage; returns {"steps", "final_loss", "final_action_loss", "final_recon_loss",
    "samples_per_s", "checkpoint", ...}. ``step_callback(step, metrics)`` runs after every step."""
    accum = validate_config(config, world_size())  # every config error surfaces before any work
    try:
        run = setup_run(config, accum=accum, resume=resume)
        try:
            with run.stopper:
                while run.state.step < run.state.total_steps:
                    run.last = train_step(run)
                    after_step(run)
                    if step_callback is not None:
                        step_callback(run.state.step, run.last)
                    if run.stopper.should_stop(run.accelerator):
                        run.state.interrupted = True
                        break
            return finish(run)
        finally:
            run.logs.close()
            run.accelerator.end_training()
    finally:
        release_accelerator_state()


def release_accelerator_state() -> None:
    """accelerate keeps one process-wide AcceleratorState: forget it so a later train() in the same
    process (pretrain then finetune from Python, tests) may choose another mixed precision. The
    distributed process group (PartialState) stays up."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def setup_run(config: TrainConfig, *, accum: int, resume: bool) -> Run:
    """Accelerator, data, model (stage init, LoRA, frozen parts), optimiser and schedule, resumed state."""
    from accelerate.utils import set_seed

    output_dir = Path(config.output_dir)
    accelerator = make_accelerator(config, accum)
    existing = latest_checkpoint(output_dir)
    if existing is not None and not resume:
        raise FileExistsError(f"{output_dir} already holds checkpoints ({existing.name}); pass --resume to "
                              "continue that run or choose another --out")
    if resume and existing is None:
        logger.warning("--resume: no checkpoint in %s, starting from step 0", output_dir)
    set_seed(config.seed)
    data = build_data(config, need_val=config.eval.at_end or config.eval.every_steps > 0)
    model, groups, init_info = build_trainable_model(config, data)
    total_steps = plan_steps(config, data)
    optimizer = build_optimizer(groups, config)
    scheduler = build_scheduler(optimizer, config, total_steps)
    processor = model.processor
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    state = TrainState(total_steps=total_steps, global_batch_size=config.train.global_batch_size,
                       seed=config.seed, data=[f"{s.path}:{s.weight}" for s in config.data.sources])
    if resume and existing is not None:
        state = load_checkpoint(accelerator, existing, state)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.yaml").write_text(to_yaml(config))
    loader = make_loader(data, processor, config, num_processes=accelerator.num_processes,
                         rank=accelerator.process_index, accum=accum, start_step=state.step,
                         total_steps=total_steps)
    logs = MetricsLogger(output_dir, enabled=accelerator.is_main_process, total_steps=total_steps,
                         start_step=state.step, progress_bar=config.logging.progress_bar,
                         tensorboard=config.logging.tensorboard)
    logger.info("stage %s: %d steps of %d samples (%d per device x %d processes x %d accumulation), "
                "mixed precision %s", config.stage, total_steps, config.train.global_batch_size,
                config.train.per_device_batch_size, accelerator.num_processes, accum, config.train.mixed_precision)
    return Run(config=config, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
               data=data, processor=processor, output_dir=output_dir, accum=accum, state=state, logs=logs,
               stopper=SignalStopper(config.checkpoint.on_signal), batches=iter(loader), init_info=init_info)


def make_accelerator(config: TrainConfig, accum: int) -> Any:
    """The Accelerator for this launch; its process count and accumulation must match the config's."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    launched = world_size()
    accelerator = Accelerator(
        gradient_accumulation_steps=accum,
        mixed_precision=config.train.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        # Several processes on a machine without GPUs (accelerate launch --multi_gpu / torchrun on CPU):
        # data parallel over gloo instead of silently running N independent copies.
        cpu=config.train.cpu or (launched > 1 and not torch.cuda.is_available()),
    )
    if accelerator.num_processes != launched:
        raise RuntimeError(f"launched {launched} processes but accelerate set up {accelerator.num_processes} "
                           f"({accelerator.distributed_type.value}); check the accelerate config / launcher")
    if accelerator.gradient_accumulation_steps != accum:  # e.g. a DeepSpeed config that fixes it
        raise ValueError(
            f"the accelerate config sets gradient accumulation {accelerator.gradient_accumulation_steps}, the "
            f"training config needs {accum} (global batch {config.train.global_batch_size}); remove it there"
        )
    torch.backends.cuda.matmul.allow_tf32 = config.train.allow_tf32
    torch.backends.cudnn.allow_tf32 = config.train.allow_tf32
    return accelerator


def build_trainable_model(config: TrainConfig, data: TrainData) -> tuple[nn.Module, dict[str, list], dict[str, Any]]:
    """The stage's model with LoRA (optional), everything outside the parameter groups frozen, and
    activation checkpointing; returns (model, parameter groups, where the weights came from)."""
    model, init_info = build_model(config, data.stats)
    if config.lora.enabled:
        apply_lora(model, config)
    groups = select_trainable(model, config)
    if config.train.gradient_checkpointing:
        enabled = enable_gradient_checkpointing(model)
        logger.info("gradient checkpointing on (%d module(s))", enabled)
    return model, groups, init_info


def plan_steps(config: TrainConfig, data: TrainData) -> int:
    if config.train.max_steps is not None:
        return config.train.max_steps
    return max(1, math.ceil(config.train.epochs * len(data.train) / config.train.global_batch_size))


def train_step(run: Run) -> dict[str, float]:
    """One optimiser step over ``accum`` micro-batches; returns metrics averaged over processes."""
    accelerator, model = run.accelerator, run.model
    model.train()
    started = time.perf_counter()
    sums = {key: 0.0 for key in LOSS_KEYS}
    counts = {key: 0 for key in LOSS_KEYS}
    grad_norm = None
    for micro in range(run.accum):
        batch = move_to_device(next(run.batches), accelerator.device)
        seed_micro_batch(run, micro)
        with accelerator.accumulate(model):
            out = model(batch)
            accelerator.backward(out.loss)
            if accelerator.sync_gradients:
                if run.config.optim.max_grad_norm:
                    norm = accelerator.clip_grad_norm_(
                        [p for g in run.optimizer.param_groups for p in g["params"]], run.config.optim.max_grad_norm
                    )
                    grad_norm = float(norm) if norm is not None else None
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
        for key in LOSS_KEYS:
            value = getattr(out, key, None)
            if value is not None:
                sums[key] += float(value.detach().float())
                counts[key] += 1
    run.scheduler.step()
    local = [sums[k] / counts[k] if counts[k] else float("nan") for k in LOSS_KEYS]
    values = torch.tensor(local, device=accelerator.device, dtype=torch.float64)
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, reduction="mean")
    elapsed = time.perf_counter() - started
    run.state.step += 1
    run.state.samples_seen += run.config.train.global_batch_size
    run.step_times.append(elapsed)
    metrics = {key: float(v) for key, v in zip(LOSS_KEYS, values.tolist()) if not math.isnan(v)}
    metrics["samples_per_s"] = run.config.train.global_batch_size / elapsed
    metrics["grad_norm"] = grad_norm
    for group in run.optimizer.param_groups:
        metrics[f"lr_{group.get('name', 'group')}"] = group["lr"]
    return metrics


def seed_micro_batch(run: Run, micro: int) -> None:
    """Random draws (diffusion noise, timesteps, VAE posterior) as a function of (seed, micro-batch).

    Micro-batch ``micro`` of process ``r`` at step ``s`` is global micro-batch ``(s*A + micro)*P + r``,
    the same samples the data order gives it: so N processes draw the same noise for the same
    samples as 1 process with accumulation, and a resumed run draws what an uninterrupted one does.
    """
    p = run.accelerator.num_processes
    index = (run.state.step * run.accum + micro) * p + run.accelerator.process_index
    torch.manual_seed((run.config.seed * 0x9E3779B1 + index * 0x85EBCA6B + 1) % (2**63 - 1))


def after_step(run: Run) -> None:
    """Logging, periodic validation and checkpoints at the step boundary."""
    step, config = run.state.step, run.config
    run.logs.progress(step, run.last)
    if config.logging.every_steps and (step % config.logging.every_steps == 0 or step == 1):
        run.logs.log(step, run.last)
    last_step = step == run.state.total_steps
    if config.eval.every_steps and step % config.eval.every_steps == 0 and not last_step:
        run.last_val = evaluate(run)
        run.logs.log(step, run.last_val, kind="val")
    if config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0 and not last_step:
        save_checkpoint(run.accelerator, run.output_dir, run.state, config.checkpoint.keep_last)


def finish(run: Run) -> dict[str, Any]:
    """Interrupted: a resumable checkpoint. Done: validation, the inference artefact, the loss curve."""
    accelerator, state = run.accelerator, run.state
    if state.interrupted:
        logger.warning("stopped by %s at step %d", run.stopper.requested or "signal", state.step)
        checkpoint = save_checkpoint(accelerator, run.output_dir, state, run.config.checkpoint.keep_last)
    else:
        if run.config.logging.every_steps and state.step % run.config.logging.every_steps:
            run.logs.log(state.step, run.last)  # the last step is always in metrics.jsonl
        if run.config.eval.at_end or run.config.eval.every_steps:
            run.last_val = evaluate(run, closed_loop=True)
            run.logs.log(state.step, run.last_val, kind="val")
        checkpoint = save_final(run)
    result = result_dict(run, checkpoint)
    if accelerator.is_main_process and run.config.logging.loss_curve:
        png = plot_loss_curve(run.output_dir / "metrics.jsonl", run.output_dir / "loss_curve.png",
                              title=f"{run.config.name} ({run.config.stage})")
        result["loss_curve"] = str(png) if png else None
    if accelerator.is_main_process:
        import json

        (run.output_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    accelerator.wait_for_everyone()
    return result


def result_dict(run: Run, checkpoint: Path) -> dict[str, Any]:
    times = run.step_times[1:] or run.step_times  # the first step pays for warm-up
    samples_per_s = run.config.train.global_batch_size * len(times) / sum(times) if times else None
    return {
        "steps": run.state.step,
        "final_loss": run.last.get("loss"),
        "final_action_loss": run.last.get("action_loss"),
        "final_recon_loss": run.last.get("recon_loss"),
        "samples_per_s": samples_per_s,
        "checkpoint": str(checkpoint),
        "interrupted": run.state.interrupted,
        "stop_signal": run.stopper.requested,
        "stage": run.config.stage,
        "output_dir": str(run.output_dir),
        "num_processes": run.accelerator.num_processes,
        "val": run.last_val or None,
        "init": run.init_info or None,
    }
