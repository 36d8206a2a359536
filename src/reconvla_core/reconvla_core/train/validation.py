"""Validation on held-out episodes: action-token accuracy, losses, L1 of de-normalised actions,
and optionally a short closed-loop run in the simulation twin (``sim/evaluate.py`` runs it).

Runs under ``torch.random.fork_rng`` so validation never shifts the training random streams (a
run with and without validation, or resumed, draws the same noise).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from reconvla_core.model.modeling_reconvla import LOSS_KEYS
from reconvla_core.policy import ModelPolicy
from reconvla_core.train.data import move_to_device, process_raw

logger = logging.getLogger(__name__)


def evaluate(run: Any, *, closed_loop: bool = False) -> dict[str, float]:
    """Metrics over up to ``eval.max_samples`` held-out samples, identical on every process."""
    if run.data.val is None:
        return {}
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        metrics = _teacher_forced(run)
        metrics.update(_action_l1(run))
        if closed_loop and run.config.eval.sim_episodes > 0:
            metrics.update(_closed_loop(run))
    return metrics


def _val_indices(run: Any) -> list[int]:
    """Evenly spaced held-out samples, a multiple of the process count (same number of batches each)."""
    n = len(run.data.val)
    count = min(run.config.eval.max_samples, n)
    count -= count % run.accelerator.num_processes
    if count <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, n - 1, count)})[:count]


def _teacher_forced(run: Any) -> dict[str, float]:
    accelerator, model = run.accelerator, run.model
    indices = _val_indices(run)
    mine = indices[accelerator.process_index :: accelerator.num_processes]
    size = run.config.train.per_device_batch_size
    keys = LOSS_KEYS
    sums = torch.zeros(len(keys) + 1, dtype=torch.float64, device=accelerator.device)
    model.eval()
    try:
        with torch.no_grad():
            for first in range(0, len(mine), size):
                chunk = mine[first : first + size]
                batch = run.processor.collate(
                    [process_raw(run.processor, run.data.val[i], run.data.stats) for i in chunk])
                out = model(move_to_device(batch, accelerator.device))
                for k, key in enumerate(keys):
                    value = getattr(out, key, None)
                    sums[k] += float(value.float()) * len(chunk) if value is not None else float("nan")
                sums[-1] += len(chunk)
    finally:
        model.train()
    if accelerator.num_processes > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    total = float(sums[-1])
    if total == 0:
        return {}
    out = {key: float(sums[k]) / total for k, key in enumerate(keys) if not torch.isnan(sums[k])}
    out["samples"] = total
    return out


def _action_l1(run: Any) -> dict[str, float]:
    """Mean |predicted - true| action in robot units (rad, m), from greedy decoding as the policy does."""
    accelerator = run.accelerator
    if not _can_decode(accelerator):
        return {}
    result = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # L1 sum, gripper sum, count
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(run.model)
        indices = [i for i in _val_indices(run) if int(run.data.val[i].get("dataset_index", 0)) == 0]
        indices = indices[: max(1, run.config.eval.max_samples // 4)]
        model.eval()
        try:
            with torch.no_grad():
                for i in indices:
                    item = run.data.val[i]
                    pred = np.asarray(model.predict_action(item["base_image"], item["wrist_image"],
                                                           item["instruction"], item["state"]), dtype=np.float64)
                    true = np.asarray(item["actions"], dtype=np.float64)
                    valid = ~np.asarray(item.get("action_is_pad", np.zeros(len(true), bool)), dtype=bool)
                    k = min(len(pred), len(true))
                    err = np.abs(pred[:k] - true[:k])[valid[:k]]
                    if err.size:
                        result[0] += float(err[:, :6].mean())
                        result[1] += float(err[:, 6].mean())
                        result[2] += 1
        finally:
            model.train()
    if accelerator.num_processes > 1:
        result = accelerator.reduce(result, reduction="sum")  # only the main process contributed
    if result[2] == 0:
        return {}
    return {"action_l1_joints_rad": float(result[0] / result[2]), "action_l1_gripper_m": float(result[1] / result[2])}


def _can_decode(accelerator: Any) -> bool:
    """Greedy decoding runs on the unwrapped model of the main process: not with sharded parameters."""
    if accelerator.distributed_type.value in ("DEEPSPEED", "FSDP"):
        logger.info("decoded-action metrics skipped under %s (sharded parameters)", accelerator.distributed_type.value)
        return False
    return True


def _closed_loop(run: Any) -> dict[str, float]:
    """A few CALVIN-style chains in the simulation twin with the model being trained (main process)."""
    if not _can_decode(run.accelerator):
        return {}
    try:
        from reconvla_core.sim.evaluate import evaluate_policy
    except ImportError as error:
        logger.warning("closed-loop evaluation skipped: simulator not available (%s)", error)
        return {}
    result = torch.zeros(2, dtype=torch.float64, device=run.accelerator.device)
    if run.accelerator.is_main_process:
        from reconvla_core.sim.env import SimConfig
        from reconvla_core.sim.tasks import make_eval_chains

        model = run.accelerator.unwrap_model(run.model)
        model.eval()
        try:
            height, width = _camera_size(run)
            sim_config = SimConfig(image_width=width, image_height=height,
                                   subtask_time_limit_s=run.config.eval.sim_max_steps / SimConfig().control_hz)
            policy = ModelPolicy(model, name="training-model")  # the model in memory, no checkpoint round trip
            metrics, _ = evaluate_policy(policy, make_eval_chains(run.config.eval.sim_episodes),
                                         config=sim_config, progress=False)
        finally:
            model.train()
        result[0] = float(metrics["success_by_position"][0])
        result[1] = float(metrics["avg_len"])
        logger.info("closed loop in the sim twin: avg_len %.2f over %d chains", metrics["avg_len"], metrics["chains"])
    if run.accelerator.num_processes > 1:
        result = run.accelerator.reduce(result, reduction="sum")  # only the main process contributed
    return {"sim_first_subtask_success": float(result[0]), "sim_avg_len": float(result[1])}


def _camera_size(run: Any) -> tuple[int, int]:
    """(height, width) of the first training dataset's base camera: the twin renders what the model saw."""
    source = run.data.train.sources[0]
    shape = source.info["features"][source.fmap.base_image]["shape"]
    return int(shape[0]), int(shape[1])
