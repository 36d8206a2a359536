"""Training state on disk: resumable checkpoints, the final inference artefact, stop-on-signal.

(The model's own save/load is ``model/checkpoint.py``; this module saves a whole training run.)

Layout of a run's output directory::

    OUT/train_config.yaml         the resolved config
    OUT/checkpoints/step-0000040/ accelerator.save_state (model, optimiser, scheduler, RNG of every
                                  process, accumulation counter) + trainer_state.json (step, data position)
    OUT/final/                    ReconVLA.save_pretrained: the inference checkpoint (+ reconstruction
                                  weights in their own file, which inference skips; finetune loads them)
    OUT/metrics.jsonl, OUT/tensorboard/, OUT/loss_curve.png, OUT/result.json

The data position is the optimiser step (the sample order is a function of seed and step, see
``train.data``), so a resumed run reads exactly the batches an uninterrupted run would have read.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """Where a run is: the optimiser step and what defines the data order it must continue."""

    step: int = 0
    samples_seen: int = 0
    total_steps: int = 0
    global_batch_size: int = 0
    seed: int = 0
    data: list[str] = field(default_factory=list)
    interrupted: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class SignalStopper:
    """SIGTERM/SIGINT -> finish the current step, checkpoint, exit cleanly. A second signal aborts."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            logger.warning("%s again: aborting without a checkpoint", name)
            raise KeyboardInterrupt
        self.requested = name
        logger.warning("%s received: checkpointing at the end of this step, then stopping", name)

    def should_stop(self, accelerator: Any) -> bool:
        """Collective: every process stops at the same step if any of them got a signal."""
        import torch

        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / CHECKPOINTS / f"step-{step:07d}"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (one with trainer_state.json), or None."""
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def save_checkpoint(accelerator: Any, output_dir: Path, state: TrainState, keep_last: int) -> Path:
    """accelerator.save_state + trainer_state.json (written last: its presence marks a complete checkpoint)."""
    path = checkpoint_dir(output_dir, state.step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and path.exists():
        shutil.rmtree(path)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (path / STATE_FILE).write_text(state.to_json() + "\n")
        _prune(output_dir / CHECKPOINTS, keep_last)
        logger.info("checkpoint at step %d -> %s", state.step, path)
    accelerator.wait_for_everyone()
    return path


def _prune(root: Path, keep_last: int) -> None:
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(accelerator: Any, path: Path, expected: TrainState) -> TrainState:
    """Restore model, optimiser, scheduler, RNG states; check the data order is the one it was saved with."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{path} lacks {STATE_FILE}; is it a checkpoint written by `reconvla train`?")
    saved = TrainState(**json.loads(state_file.read_text()))
    for name in ("global_batch_size", "seed", "data"):
        if getattr(saved, name) != getattr(expected, name):
            raise ValueError(
                f"cannot resume from {path}: it was written with {name}={getattr(saved, name)!r}, this run has "
                f"{getattr(expected, name)!r} (the data order would differ); use a new --out or the same settings"
            )
    accelerator.load_state(str(path))
    saved.total_steps = expected.total_steps
    saved.interrupted = False
    logger.info("resumed from %s at step %d (%d samples seen)", path, saved.step, saved.samples_seen)
    return saved
