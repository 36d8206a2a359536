"""`reconvla study recon`: the paper's reconstruction ablation (its Table 2 / Figure 2) at our scale.

The tiny ReconVLA is trained with ``recon_target`` none (action loss only), full (reconstruct the
whole stitched image) and gaze (reconstruct the gaze crop + wrist view, the paper's method) on the
same simulated dataset, with the same step budget and the same seeds. Each model is evaluated on
the fixed chains (success, average length) and on held-out frames for attention concentration:
the share of the action tokens' attention mass (over image tokens) that falls inside the
ground-truth gaze box, next to the share a uniform attention map would give (the box's area).

With ``--init-from CHECKPOINT`` the study runs on the recipe that makes a working policy here: each
variant finetunes that checkpoint (``tiny-sim-finetune``, as ``reconvla demo`` does) on the same
demonstrations. A finetune keeps its checkpoint's reconstruction branch, so the variants are then the
checkpoint's own ``recon_target`` (its reconstruction loss trained on) and ``none`` (the same branch,
``recon_weight`` 0: the reconstruction loss still logged, no longer trained).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from reconvla_core.demo.report import markdown_table, mean_and_ci, plot_success_by_position, write_json
from reconvla_core.runtime.overlay import gaze_box_in_frame

logger = logging.getLogger(__name__)

VARIANTS = ("none", "full", "gaze")


@dataclasses.dataclass
class StudyConfig:
    out_dir: Path
    seeds: int = 3
    data: list[Path] = dataclasses.field(default_factory=list)  # empty: collect and build one
    episodes: int = 60
    train_steps: int = 300
    chains: int = 20
    variants: tuple[str, ...] | None = None  # None: all three; with init_from: none and the checkpoint's own
    attention_frames: int = 48
    image_size: tuple[int, int] = (160, 120)
    init_from: Path | None = None  # finetune each variant from this checkpoint instead of random weights
    overrides: list[str] = dataclasses.field(default_factory=list)  # training config KEY=VALUE for every run

    def __post_init__(self) -> None:
        self.data = [Path(p) for p in self.data]
        own = None if self.init_from is None else self._own_recon_target()
        if self.variants is None:
            self.variants = VARIANTS if own is None else ("none", own)
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        if self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        for path in self.data:
            if not (path / "meta" / "info.json").is_file():
                raise FileNotFoundError(f"--data {path} is not a dataset (no meta/info.json); "
                                        "build one with `reconvla dataset build`")
        if own is not None:
            self._check_finetune(own)

    def _own_recon_target(self) -> str:
        assert self.init_from is not None
        config = self.init_from / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"--init-from {self.init_from} is not a checkpoint directory (no config.json)")
        return str(json.loads(config.read_text(encoding="utf-8")).get("recon_target", "gaze"))

    def _check_finetune(self, own: str) -> None:
        """A finetune cannot change its checkpoint's reconstruction target (``own``), only stop training it."""
        assert self.variants is not None
        if not self.data:
            raise ValueError("--init-from finetunes on demonstrations: give them with --data")
        allowed = {"none", own}
        if any(v not in allowed for v in self.variants):
            raise ValueError(f"a finetune of {self.init_from} (recon_target {own!r}) can compare only "
                             f"{' and '.join(sorted(allowed))}; got --variants {','.join(self.variants)}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StudyConfig:
        return cls(out_dir=args.out or Path("runs") / time.strftime("study-recon-%Y%m%d-%H%M%S"), seeds=args.seeds,
                   data=args.data or [], episodes=args.episodes, train_steps=args.train_steps, chains=args.chains,
                   variants=None if args.variants is None else tuple(v.strip() for v in args.variants.split(",")
                                                                      if v.strip()),
                   init_from=args.init_from, overrides=list(args.overrides))


def attention_inside(attention: np.ndarray, box: np.ndarray) -> float:
    """Share of an attention grid's mass inside a normalised xyxy box (cells weighted by overlap)."""
    rows, cols = attention.shape
    x_edges = np.linspace(0.0, 1.0, cols + 1)
    y_edges = np.linspace(0.0, 1.0, rows + 1)
    overlap_x = np.clip(np.minimum(x_edges[1:], box[2]) - np.maximum(x_edges[:-1], box[0]), 0, None) * cols
    overlap_y = np.clip(np.minimum(y_edges[1:], box[3]) - np.maximum(y_edges[:-1], box[1]), 0, None) * rows
    weights = np.outer(overlap_y, overlap_x)  # (rows, cols) fraction of each cell inside the box
    total = float(attention.sum())
    return float((attention * weights).sum() / total) if total > 0 else 0.0


def attention_concentration(checkpoint: Path, dataset: Path, frames: int, seed: int = 0) -> dict[str, float]:
    """Mean attention share inside the gaze box over held-out frames, and the uniform-attention share."""
    import torch

    from reconvla_core.data import DatasetSource, VLADataset
    from reconvla_core.model import ReconVLA

    model = ReconVLA.from_pretrained(checkpoint)
    model.eval()
    data = VLADataset([DatasetSource(dataset)], chunk_size=model.config.chunk_size, split="val", seed=seed)
    if len(data) == 0:
        data = VLADataset([DatasetSource(dataset)], chunk_size=model.config.chunk_size, split="train", seed=seed)
    rng = np.random.default_rng(seed)
    indices = rng.choice(len(data), size=min(frames, len(data)), replace=False)
    top = model.config.stitch_top_fraction
    inside, uniform = [], []
    with torch.inference_mode():
        for index in indices:
            sample = data[int(index)]
            if not bool(sample.get("gaze_valid", True)):
                continue
            _, attention = model.predict_action(sample["base_image"], sample["wrist_image"], sample["instruction"],
                                                sample["state"], return_attention=True)
            box = gaze_box_in_frame(sample["gaze_box"], top)
            inside.append(attention_inside(np.asarray(attention, dtype=np.float64), box))
            uniform.append(float((box[2] - box[0]) * (box[3] - box[1])))
    return {"attention_in_gaze": float(np.mean(inside)) if inside else float("nan"),
            "uniform_in_gaze": float(np.mean(uniform)) if uniform else float("nan"), "frames": len(inside)}


def _prepare_datasets(config: StudyConfig) -> list[Path]:
    if config.data:
        return config.data
    from reconvla_core.data.build import BuildConfig, build_dataset
    from reconvla_core.sim import SimConfig
    from reconvla_core.sim.collect import collect

    width, height = config.image_size
    collect(config.out_dir / "bags", config.episodes, seed=1,
            config=SimConfig(image_width=width, image_height=height))
    build_dataset(BuildConfig(bags=[config.out_dir / "bags"], out=config.out_dir / "dataset", gaze="sim",
                              progress=True))
    return [config.out_dir / "dataset"]


def training_overrides(config: StudyConfig, variant: str, seed: int) -> tuple[str, list[str]]:
    """The recipe and overrides of one run: from random weights (``tiny-sim``, the variant's
    recon_target) or, with ``init_from``, its finetune (``none``: recon_weight 0)."""
    common = [f"seed={seed}", f"train.max_steps={config.train_steps}", *config.overrides]
    if config.init_from is None:
        return "tiny-sim", [f"model.recon_target={variant}", *common]
    variant_options = ["model.recon_weight=0"] if variant == "none" else []
    return "tiny-sim-finetune", [f"init_from={config.init_from}", *variant_options, *common]


def _train_and_evaluate(config: StudyConfig, datasets: list[Path], variant: str, seed: int,
                        chains: list) -> dict[str, Any]:
    from reconvla_core.policy import CheckpointPolicy
    from reconvla_core.sim import SimConfig, evaluate_policy
    from reconvla_core.train import load_train_config, train

    run_dir = config.out_dir / "runs" / f"{variant}-seed{seed}"
    recipe, overrides = training_overrides(config, variant, seed)
    trained = train(load_train_config(recipe, overrides, data=[str(p) for p in datasets], output_dir=str(run_dir)))
    width, height = config.image_size
    metrics, _ = evaluate_policy(CheckpointPolicy(trained["checkpoint"]), chains,
                                 SimConfig(image_width=width, image_height=height))
    attention = attention_concentration(Path(trained["checkpoint"]), datasets[0], config.attention_frames, seed=seed)
    return {"variant": variant, "seed": seed, "final_action_loss": trained.get("final_action_loss"),
            "final_recon_loss": trained.get("final_recon_loss"), "avg_len": metrics["avg_len"],
            "success_by_position": metrics["success_by_position"], **attention}


def run_recon_study(config: StudyConfig) -> dict[str, Any]:
    from reconvla_core.sim import make_eval_chains

    config.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    datasets = _prepare_datasets(config)
    chains = make_eval_chains(config.chains, seed=0)
    runs = []
    assert config.variants is not None
    for seed in range(config.seeds):  # seed by seed: a study cut short still compares every variant
        for variant in config.variants:
            logger.info("study recon: %s, seed %d", variant, seed)
            runs.append(_train_and_evaluate(config, datasets, variant, seed, chains))
            write_json(config.out_dir / "runs.json", {"runs": runs})  # partial results survive an interrupt
    summary = summarise(runs, config.variants)
    result = {"variants": summary, "seeds": config.seeds, "train_steps": config.train_steps,
              "chains": config.chains, "datasets": [str(p) for p in datasets], "runs": runs,
              "init_from": None if config.init_from is None else str(config.init_from),
              "minutes": round((time.monotonic() - started) / 60.0, 1), "out_dir": str(config.out_dir)}
    _write_outputs(config, result)
    return result


def summarise(runs: list[dict[str, Any]], variants: tuple[str, ...]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        entry: dict[str, Any] = {}
        for key in ("avg_len", "attention_in_gaze", "uniform_in_gaze", "final_action_loss"):
            values = [float(r[key]) for r in mine if r.get(key) is not None and np.isfinite(r[key])]
            mean, ci = mean_and_ci(values)
            entry[key] = {"mean": mean, "ci95": ci, "n": len(values)}
        positions = np.array([r["success_by_position"] for r in mine], dtype=float)
        entry["success_by_position"] = positions.mean(axis=0).tolist()
        entry["success_by_position_ci95"] = [mean_and_ci(positions[:, i].tolist())[1] for i in range(positions.shape[1])]
        summary[variant] = entry
    return summary


def _finetuned(config: StudyConfig) -> str:
    return "" if config.init_from is None else f" finetuned from {config.init_from}"


def _write_outputs(config: StudyConfig, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = config.out_dir
    summary = result["variants"]
    plot_success_by_position({v: s["success_by_position"] for v, s in summary.items()}, out / "success_by_position.png",
                             f"recon_target ablation ({config.seeds} seeds, {config.chains} chains)",
                             errors={v: s["success_by_position_ci95"] for v, s in summary.items()})
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=110)
    names = list(summary)
    means = [summary[v]["attention_in_gaze"]["mean"] for v in names]
    errors = [summary[v]["attention_in_gaze"]["ci95"] for v in names]
    ax.bar(names, means, yerr=errors, capsize=4, color="#3b75af", label="attention in gaze box")
    uniform = np.nanmean([summary[v]["uniform_in_gaze"]["mean"] for v in names])
    ax.axhline(uniform, color="grey", linestyle="--", label=f"uniform attention ({uniform:.2f})")
    ax.set_ylabel("share of action-token attention")
    ax.set_title("attention concentration on the gaze target")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "attention_concentration.png")
    plt.close(fig)
    write_json(out / "study.json", result)
    rows = [[v, f"{s['avg_len']['mean']:.2f} ± {s['avg_len']['ci95']:.2f}",
             f"{s['attention_in_gaze']['mean']:.3f} ± {s['attention_in_gaze']['ci95']:.3f}",
             f"{s['uniform_in_gaze']['mean']:.3f}",
             f"{s['final_action_loss']['mean']:.3f}"] for v, s in summary.items()]
    (out / "study.md").write_text(
        f"# Reconstruction ablation (tiny ReconVLA{_finetuned(config)}, {config.seeds} seeds, "
        f"{config.train_steps} steps, "
        f"{config.chains} fixed chains)\n\n"
        + markdown_table(["recon_target", "avg len (95% CI)", "attention in gaze (95% CI)", "uniform share",
                          "final action loss"], rows)
        + "\n![success by position](success_by_position.png)\n\n![attention](attention_concentration.png)\n")
