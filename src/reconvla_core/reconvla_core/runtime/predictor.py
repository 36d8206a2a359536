"""What the policy node calls: stitched frame + instruction + state -> action chunk (+ attention).

``ModelPredictor`` wraps ``ReconVLA.predict_action(..., stitched_image=frame)`` (the frame comes
from camera_ingest already stitched). Any callable with the ``Predictor`` signature can replace
it (a remote policy client, a stub for benchmarks).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from reconvla_core.piper import ACTION_DIM
from reconvla_core.runtime.overlay import gaze_box_in_frame

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Prediction:
    """One inference: (K, 7) actions in robot units, when asked the (grid, grid) attention map, and the
    gaze box the model answered with (normalised xyxy of the model-input frame; ``answer_box`` models)."""

    actions: np.ndarray
    attention: np.ndarray | None = None
    box: np.ndarray | None = None


class Predictor(Protocol):
    def __call__(self, frame: np.ndarray, instruction: str, state: np.ndarray, with_attention: bool) -> Prediction: ...


def check_prediction(prediction: Prediction) -> Prediction:
    """ValueError unless the actions are a finite (K>0, 7) array."""
    actions = np.asarray(prediction.actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM or actions.shape[0] == 0:
        raise ValueError(f"predictor returned actions of shape {actions.shape}; expected (K, {ACTION_DIM})")
    if not np.all(np.isfinite(actions)):
        raise ValueError("predictor returned non-finite actions")
    return Prediction(actions, prediction.attention, prediction.box)


class ModelPredictor:
    """A loaded ReconVLA model behind the Predictor signature (one inference at a time)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "cpu", dtype: str = "float32") -> ModelPredictor:
        """Load a checkpoint for inference (no reconstruction branch)."""
        import torch

        from reconvla_core.model import ReconVLA

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        path = Path(checkpoint).expanduser()
        model = ReconVLA.from_pretrained(path, load_reconstruction=False, device=device,
                                         dtype=getattr(torch, dtype))
        model.eval()
        logger.info("policy: loaded %s on %s (%s)", path, device, dtype)
        return cls(model)

    @property
    def chunk_size(self) -> int:
        return int(self.model.config.chunk_size)

    def __call__(self, frame: np.ndarray, instruction: str, state: np.ndarray, with_attention: bool) -> Prediction:
        import torch

        with self._lock, torch.inference_mode():
            out = self.model.predict(None, None, instruction, np.asarray(state, dtype=np.float32),
                                     return_attention=with_attention, stitched_image=frame)
        box = None if out.box is None else gaze_box_in_frame(out.box, float(self.model.config.stitch_top_fraction))
        attention = None if out.attention is None else np.asarray(out.attention, dtype=np.float64)
        return Prediction(np.asarray(out.actions, dtype=np.float64), attention, box)
