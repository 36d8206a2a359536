"""Training logs: a progress bar on stderr, TensorBoard scalars, metrics.jsonl and the loss-curve PNG.

Only the main process writes. metrics.jsonl holds one JSON object per logged step (``"kind":
"train"``) or validation (``"kind": "val"``); on resume, entries past the resumed step are dropped so
the file and the curve read as one run.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from reconvla_core.model.modeling_reconvla import LOSS_KEYS

logger = logging.getLogger(__name__)

CURVE_KEYS = ("loss", "action_loss", "recon_loss", "grounding_loss")


class MetricsLogger:
    def __init__(self, output_dir: Path, *, enabled: bool, total_steps: int, start_step: int,
                 progress_bar: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.output_dir = output_dir
        self.bar = None
        self.writer = None
        if not enabled:
            return
        self._truncate_after(start_step)
        if progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, file=sys.stderr, desc="train",
                            unit="step", dynamic_ncols=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"), purge_step=start_step or None)
            except ImportError as error:  # tensorboard is optional at run time
                logger.warning("TensorBoard unavailable (%s); logging to metrics.jsonl only", error)

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, **{k: v for k, v in metrics.items() if v is not None}}
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if value is not None and math.isfinite(float(value)):
                    self.writer.add_scalar(f"{kind}/{key}", float(value), step)
        if kind == "val":
            logger.info("validation at step %d: %s", step,
                        ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))))

    def progress(self, step: int, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        shown = {k: f"{metrics[k]:.3f}" for k in LOSS_KEYS if metrics.get(k) is not None}
        if metrics.get("samples_per_s") is not None:
            shown["samples/s"] = f"{metrics['samples_per_s']:.1f}"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(metrics_path: Path, out_png: Path, title: str = "") -> Path | None:
    """Both loss terms (and total) per step, validation accuracy on a second axis; None if no data."""
    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train"]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for key in CURVE_KEYS:
        points = [(r["step"], r[key]) for r in train if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), label=key.replace("_", " "), linewidth=1.4)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    val = [(r["step"], r["action_accuracy"]) for r in records if r.get("kind") == "val" and "action_accuracy" in r]
    handles, labels = ax.get_legend_handles_labels()
    if val:
        ax2 = ax.twinx()
        line = ax2.plot(*zip(*val), "o--", color="tab:purple", label="val action-token accuracy")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1)
        handles += line
        labels += [line[0].get_label()]
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    ax.set_title(title or "training loss")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
