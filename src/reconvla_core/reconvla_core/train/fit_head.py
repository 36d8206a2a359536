"""`reconvla fit-head`: the parallel head's action MLP fitted afresh on a trained, frozen trunk.

Everything before the MLP (vision tower, keypoints, LLM, action queries) stays as the checkpoint has
it. Each frame of the datasets goes through that trunk once, and what the MLP reads is kept: the
queries' final hidden states and the geometry (normalised state + keypoints). A fresh MLP
(``action_head_mlp``, by default ``bottleneck``) is then fitted to the frames' action chunks by L1,
for many passes at a large batch: millions of samples in minutes on one CPU core, where the whole
model sees ~25 samples/s. Trained with the trunk at the small batch, the head acts worse than the same
information allows (docs/study_recon.md, fourteenth session).

Frames with a gaze box are kept twice: once with keypoint 0 set to the box's centre (the true gaze,
in the queries and the geometry, as ``reconvla eval sim --gaze oracle`` runs it) and once with the
trunk's own keypoint; ``own_gaze_share`` says which share of the fitting samples use the latter.

    reconvla fit-head --policy runs/train/final --data ds_clean ds_dart --out runs/fitted --json
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass
class TrunkOutputs:
    """What the action MLP reads, per frame, and its target."""

    hidden_true: torch.Tensor  # (N, K, D) query hidden states, keypoint 0 = the gaze-box centre (float16)
    hidden_own: torch.Tensor  # (N, K, D) the same with the trunk's own keypoint 0
    geometry_true: torch.Tensor  # (N, G) head geometry with the true keypoint 0
    geometry_own: torch.Tensor  # (N, G)
    actions: torch.Tensor  # (N, K, A) normalised targets
    is_pad: torch.Tensor  # (N, K) chunk steps past the episode's end

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def rows(self, index: torch.Tensor, own: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden, geometry) of frames ``index``, the own-gaze version where ``own``."""
        pick = own[:, None]
        geometry = torch.where(pick, self.geometry_own[index], self.geometry_true[index])
        hidden = torch.where(pick[..., None], self.hidden_own[index], self.hidden_true[index])
        return hidden.float(), geometry


def collect_trunk_outputs(model: Any, dataset: Any, batch_size: int = 32, progress: bool = True) -> TrunkOutputs:
    """Run every frame of ``dataset`` (a VLADataset without processor) through the model's trunk
    once, with the checkpoint's own norm stats (those it acts with)."""
    from tqdm import tqdm

    from reconvla_core.train.data import process_raw

    if model.action_head is None or not model.config.action_head_state:
        raise ValueError("fit-head fits the parallel head's MLP over the geometry: the checkpoint needs "
                         "action_head: parallel and action_head_state: true")
    stats = [model.norm_stats] * len(dataset.sources)
    k = model.config.chunk_size
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in TrunkOutputs.__dataclass_fields__}
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(dataset), batch_size), desc="trunk outputs", unit="batch",
                          disable=not progress, leave=False):
            items = [process_raw(model.processor, dataset[i], stats)
                     for i in range(start, min(len(dataset), start + batch_size))]
            batch = {key: value.to(model.device) for key, value in model.processor.collate(items).items()}
            b = batch["input_ids"].shape[0]
            instruction = (model.encode_instruction(batch["input_ids"], batch["instruction_mask"])
                           if model.config.encodes_instruction else None)
            embeds, own_points, _ = model._embed(batch["input_ids"], batch["image_mask"], batch["pixel_values"],
                                                 batch.get("instruction_mask"), batch["action_query_mask"],
                                                 instruction_embedding=instruction, state=batch.get("state"))
            true_points, embeds_true = own_points, embeds
            if own_points is not None and "gaze_point" in batch:
                valid = batch["gaze_valid"].bool()
                true_points = own_points.clone()
                true_points[valid, 0] = batch["gaze_point"][valid].to(own_points.dtype)
                queries = model.action_head.queries.expand(b, k, -1) + \
                    model.keypoints.embed(true_points.reshape(b, -1))[:, None, :]
                embeds_true = embeds.masked_scatter(batch["action_query_mask"].unsqueeze(-1), queries.to(embeds.dtype))
            query_mask = batch["action_query_mask"]
            for suffix, e, points in (("own", embeds, own_points), ("true", embeds_true, true_points)):
                geometry = model.head_geometry(batch["state"], points)
                hidden, _, _ = model.run_parallel(e, batch["attention_mask"], query_mask, geometry=geometry)
                parts[f"hidden_{suffix}"].append(hidden[query_mask].view(b, k, -1).half().cpu())
                parts[f"geometry_{suffix}"].append(geometry.float().cpu())
            parts["actions"].append(batch["actions"].float().cpu())
            parts["is_pad"].append(batch["action_is_pad"].bool().cpu())
    return TrunkOutputs(**{name: torch.cat(values) for name, values in parts.items()})


def masked_l1(predicted: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the chunk steps that are not padding."""
    weight = (~is_pad)[..., None].to(predicted.dtype)
    return ((predicted - target).abs() * weight).sum() / (weight.sum() * target.shape[-1]).clamp(min=1.0)


def evaluate_head(head: Any, outputs: TrunkOutputs, own: bool) -> float:
    """The head's L1 on every frame of ``outputs`` (the own-gaze or the true-gaze version)."""
    device = head.queries.device
    index = torch.arange(len(outputs))
    hidden, geometry = outputs.rows(index, torch.full((len(outputs),), own))
    with torch.no_grad():
        predicted = head(hidden.to(device), geometry.to(device))
        return float(masked_l1(predicted, outputs.actions.to(device), outputs.is_pad.to(device)))


def check_fit_settings(steps: int, batch_size: int, own_gaze_share: float, mlp: str = "bottleneck") -> None:
    """Refuse bad settings before the trunk pass (minutes) is spent."""
    from reconvla_core.model.configuration_reconvla import ACTION_HEAD_MLPS

    if steps < 1 or batch_size < 1 or not 0.0 <= own_gaze_share <= 1.0:
        raise ValueError("steps and batch_size must be >= 1 and own_gaze_share in [0, 1]")
    if mlp not in ACTION_HEAD_MLPS:
        raise ValueError(f"mlp must be one of {ACTION_HEAD_MLPS}, got {mlp!r}")


def fit_action_mlp(head: Any, train: TrunkOutputs, val: TrunkOutputs | None = None, steps: int = 20_000,
                   batch_size: int = 256, lr: float = 1e-3, own_gaze_share: float = 0.0, seed: int = 0,
                   log_every: int = 2_000) -> list[dict[str, float]]:
    """Fit ``head.mlp`` (the queries and geometry stats stay) by L1 with AdamW and a cosine schedule;
    returns the curve (training loss, and the validation L1 with the true and the own gaze)."""
    check_fit_settings(steps, batch_size, own_gaze_share)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(head.mlp.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    curve = []
    device = head.queries.device
    head.train()
    for step in range(1, steps + 1):
        index = torch.randint(0, len(train), (batch_size,), generator=generator)
        own = torch.rand(batch_size, generator=generator) < own_gaze_share
        hidden, geometry = train.rows(index, own)
        loss = masked_l1(head(hidden.to(device), geometry.to(device)), train.actions[index].to(device),
                         train.is_pad[index].to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % log_every == 0 or step == steps:
            point = {"step": step, "loss": round(float(loss.detach()), 5)}
            if val is not None and len(val):
                head.eval()
                point.update(val_l1_true_gaze=round(evaluate_head(head, val, own=False), 5),
                             val_l1_own_gaze=round(evaluate_head(head, val, own=True), 5))
                head.train()
            curve.append(point)
            logger.info("fit-head: %s", point)
    head.eval()
    return curve


def fit_head(policy: Path, datasets: Sequence[Path], out: Path, *, steps: int = 20_000, batch_size: int = 256,
             lr: float = 1e-3, own_gaze_share: float = 0.0, mlp: str = "bottleneck", val_fraction: float = 0.05,
             split_seed: int = 0, static_threshold: float | None = 1e-3, seed: int = 0,
             device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Load ``policy``, collect its trunk outputs on ``datasets``, fit a fresh ``mlp`` and save the
    checkpoint (all its other weights, the reconstruction branch included, unchanged) to ``out``."""
    from reconvla_core.data import DatasetSource, VLADataset
    from reconvla_core.model import ReconVLA
    from reconvla_core.model.checkpoint import inherited_lineage

    check_fit_settings(steps, batch_size, own_gaze_share, mlp)
    policy = Path(policy)
    if not policy.is_dir():
        raise FileNotFoundError(f"checkpoint directory {policy} does not exist")
    started = time.perf_counter()
    has_recon = (policy / "reconstruction.safetensors").is_file()
    model = ReconVLA.from_pretrained(policy, load_reconstruction=has_recon, device=device)
    model.requires_grad_(False)
    sources = [DatasetSource(path) for path in datasets]
    common = {"chunk_size": model.config.chunk_size, "val_fraction": val_fraction, "seed": split_seed,
              "static_threshold": static_threshold}
    train_frames = VLADataset(sources, split="train", **common)
    val_frames = VLADataset(sources, split="val", **common) if val_fraction > 0 else None
    train = collect_trunk_outputs(model, train_frames, progress=progress)
    val = collect_trunk_outputs(model, val_frames, progress=progress) if val_frames is not None and len(val_frames) else None
    collected_s = time.perf_counter() - started
    before = None if val is None else {"true_gaze": evaluate_head(model.action_head, val, own=False),
                                       "own_gaze": evaluate_head(model.action_head, val, own=True)}
    torch.manual_seed(seed)
    model.switch_option("action_head_mlp", mlp)  # fresh weights, whichever MLP the checkpoint had
    if hasattr(model.action_head, "geometry_shift"):
        # The geometry as this trunk gives it (every keypoint, not only the gaze's), fixed before fitting.
        geometry = torch.cat([train.geometry_true, train.geometry_own])
        model.action_head.set_geometry_stats(geometry.mean(0).to(device), geometry.std(0).clamp(min=1e-3).to(device))
    model.action_head.requires_grad_(False)
    model.action_head.mlp.requires_grad_(True)
    curve = fit_action_mlp(model.action_head, train, val, steps=steps, batch_size=batch_size, lr=lr,
                           own_gaze_share=own_gaze_share, seed=seed)
    model.requires_grad_(False)
    meta = {**inherited_lineage(policy),  # the trunk's record travels with it; this fit replaces a previous one
            "fit_head": {"from": str(policy), "datasets": [str(p) for p in datasets], "steps": steps,
                         "batch_size": batch_size, "lr": lr, "own_gaze_share": own_gaze_share, "mlp": mlp,
                         "seed": seed, "train_frames": len(train)}}
    model.save_pretrained(out, metadata=meta)
    result = {"out": str(out), "train_frames": len(train), "val_frames": 0 if val is None else len(val),
              "val_l1_before": before, "curve": curve, "collect_s": round(collected_s, 1),
              "total_s": round(time.perf_counter() - started, 1), **meta["fit_head"]}
    warning = overfit_warning(curve, before)
    if warning:
        logger.warning("fit-head: %s", warning)
        result["warning"] = warning
    return result


OVERFIT_RISE = 0.10  # held-out L1 this far above its best (or above the head it replaced) says overfitting


def overfit_warning(curve: list[dict[str, float]], before: dict[str, float] | None) -> str | None:
    """A sentence when the held-out own-gaze L1 ended well above its best point of the fit, or above the
    replaced head's: too many steps for the frames (a demo's 190 episodes: 0.080 -> 0.092 while the
    closed loop fell 0.75 -> 0.19, docs/study_recon.md). None when the fit looks sound or has no held-out data."""
    points = [point["val_l1_own_gaze"] for point in curve if "val_l1_own_gaze" in point]
    if not points:
        return None
    final, best = points[-1], min(points)
    if final > best * (1 + OVERFIT_RISE):
        return (f"held-out L1 (own gaze) ended at {final:.4f}, {final / best - 1:.0%} above its best {best:.4f}: "
                "the head overfits these frames; fit fewer --steps or on more data")
    if before is not None and final > before["own_gaze"] * (1 + OVERFIT_RISE):
        return (f"held-out L1 (own gaze) {final:.4f} is {final / before['own_gaze'] - 1:.0%} above the replaced "
                f"head's {before['own_gaze']:.4f}: keep the checkpoint's own head, or fit on more data")
    return None
