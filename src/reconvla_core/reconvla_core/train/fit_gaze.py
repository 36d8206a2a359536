"""`reconvla fit-gaze`: keypoint 0 (the gaze) finetuned alone, every other weight of the checkpoint frozen.

Only the conv keypoint net's convolutions and FiLM layers train (not its coordinate embedding, which
feeds the action queries), on keypoint 0's L1 to the gaze-box centre. Its data can be the policy's own
states with their true gaze boxes (``reconvla dagger --beta 0 --override data.relabelled_actions=none``
rollouts) next to the demonstrations: the gaze then learns where the policy goes wrong without the
trunk's features for acting changing. The heat-map loss of training is left out: on a frozen net it
fought the point's precision (docs/study_recon.md, fourteenth session). The keypoints the head reads
move, so the head is refitted afterwards (``reconvla fit-head``).

    reconvla fit-gaze --policy CKPT --data ds_demos:0.5 rollouts:0.5 --out runs/gaze --json
    reconvla fit-head --policy runs/gaze --data ds_demos --out runs/gaze_head --own-gaze-share 0.5
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

WARMUP_STEPS = 100


def keypoint_errors(model: Any, dataset: Any, stats: list[Any], limit: int = 512, batch_size: int = 32) -> dict[str, float]:
    """Keypoint 0's |dx| + |dy| from the gaze-box centre (model-input frame) on up to ``limit`` frames
    with a box, spread over ``dataset``: mean, median, share above 0.1 (about a block's spacing)."""
    from reconvla_core.train.data import process_raw

    rows = np.unique(np.linspace(0, len(dataset) - 1, min(limit, len(dataset))).astype(int))
    errors = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = _gaze_batch(model, [process_raw(model.processor, dataset[int(i)], stats)
                                        for i in rows[start:start + batch_size]])
            points = _keypoint0(model, batch)
            valid = batch["gaze_valid"].bool()
            errors.append((points - batch["gaze_point"]).abs().sum(-1)[valid].cpu().numpy())
    error = np.concatenate(errors) if errors else np.zeros(0)
    if not len(error):
        return {"frames": 0}
    return {"frames": int(len(error)), "mean": round(float(error.mean()), 4),
            "median": round(float(np.median(error)), 4), "above_0.1": round(float((error > 0.1).mean()), 4)}


def _gaze_batch(model: Any, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    keys = ("pixel_values", "input_ids", "instruction_mask", "state", "gaze_point", "gaze_valid")
    batch = model.processor.collate([{k: item[k] for k in keys} for item in items])
    return {k: v.to(model.device) for k, v in batch.items()}


def _keypoint0(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        instruction = model.encode_instruction(batch["input_ids"], batch["instruction_mask"])
    return model.keypoints(batch["pixel_values"], instruction, batch.get("state"))[:, 0]


def fit_gaze(policy: Path, datasets: Sequence[str], out: Path, *, steps: int = 2_000, batch_size: int = 32,
             lr: float = 2e-4, val_fraction: float = 0.05, seed: int = 0, device: str = "cpu",
             state_film: bool = False, progress: bool = True) -> dict[str, Any]:
    """Finetune ``policy``'s conv keypoint net on keypoint 0's L1 gaze loss over ``datasets``
    (``DIR[:WEIGHT]``, drawn by weight) and save the checkpoint, every other weight unchanged, to ``out``.

    ``state_film``: switch ``keypoint_state`` on (its layers start at zero where the checkpoint has
    none) and train those layers alone."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from reconvla_core.data import DatasetSource, VLADataset
    from reconvla_core.model import ReconVLA
    from reconvla_core.model.checkpoint import inherited_lineage
    from reconvla_core.model.keypoints import ConvKeypoints
    from reconvla_core.train.config_loading import parse_data_arg
    from reconvla_core.train.data import ProcessedDataset
    from reconvla_core.train.optim import lr_factor

    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("steps and batch_size must be >= 1 and lr > 0")
    specs = [parse_data_arg(item) for item in datasets]
    policy = Path(policy)
    if not policy.is_dir():
        raise FileNotFoundError(f"checkpoint directory {policy} does not exist")
    started = time.perf_counter()
    model = ReconVLA.from_pretrained(policy, load_reconstruction=(policy / "reconstruction.safetensors").is_file(),
                                     device=device)
    if not isinstance(model.keypoints, ConvKeypoints) or model.config.gaze_keypoint_weight <= 0:
        raise ValueError("fit-gaze trains the conv gaze keypoint: the checkpoint needs keypoint_encoder: conv and "
                         "gaze_keypoint_weight > 0")
    if state_film and not model.config.keypoint_state:
        model.switch_option("keypoint_state", True)
    model.eval()
    model.requires_grad_(False)
    if state_film:
        trainable = model.keypoints.state_film_parameters()
    else:
        trainable = [p for name, p in model.keypoints.named_parameters() if not name.startswith("embed.")]
    for parameter in trainable:
        parameter.requires_grad_(True)
    sources = [DatasetSource(spec["path"], weight=spec["weight"], features=spec.get("features")) for spec in specs]
    common = {"chunk_size": model.config.chunk_size, "val_fraction": val_fraction, "seed": seed}
    train = VLADataset(sources, split="train", **common)
    val = VLADataset(sources, split="val", **common) if val_fraction > 0 else None
    stats = [model.norm_stats] * len(sources)  # the stats the checkpoint acts with
    before = keypoint_errors(model, val, stats) if val is not None and len(val) else None
    loader = DataLoader(ProcessedDataset(train, model.processor, stats), batch_size=batch_size,
                        sampler=train.sampler(steps * batch_size, seed=seed),
                        collate_fn=lambda items: _gaze_batch(model, items), num_workers=0)
    optimiser = torch.optim.AdamW(trainable, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: lr_factor(step, warmup=WARMUP_STEPS, total=steps, kind="cosine"))
    curve = []
    model.keypoints.train()
    for step, batch in enumerate(tqdm(loader, total=steps, desc="fit-gaze", unit="step", disable=not progress), 1):
        loss = model._gaze_keypoint_loss(_keypoint0(model, batch)[:, None], batch["gaze_point"], batch["gaze_valid"])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 250 == 0 or step == steps:
            curve.append({"step": step, "loss": round(float(loss.detach()), 5)})
    model.keypoints.eval()
    model.requires_grad_(False)
    after = keypoint_errors(model, val, stats) if val is not None and len(val) else None
    inherited = inherited_lineage(policy)
    record = {"from": str(policy), "datasets": list(datasets), "steps": steps, "batch_size": batch_size,
              "lr": lr, "seed": seed, "state_film": state_film}
    if "fit_gaze" in inherited:  # a fit on a fitted gaze continues it: the earlier fit stays on record
        record["previous"] = inherited["fit_gaze"]
    meta = {**inherited, "fit_gaze": record}
    model.save_pretrained(out, metadata=meta)
    return {"out": str(out), "train_frames": len(train), "keypoint0_error_before": before,
            "keypoint0_error_after": after, "curve": curve, "total_s": round(time.perf_counter() - started, 1),
            "next": (f"the head acts on the gaze as before: reconvla eval sim --policy {out} ..." if state_film else
                     f"the head reads the moved keypoints: reconvla fit-head --policy {out} --data ... --out ..."),
            **{k: v for k, v in record.items() if k != "previous"}}
