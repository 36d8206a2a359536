"""Policies: a tiny openpi-style interface and the three implementations the product uses.

``Policy.infer(obs) -> (K, 7)`` returns a chunk of K absolute actions (6 joint angles rad +
gripper opening m, ``reconvla_core.piper.ACTION_NAMES``) for an observation dict
``{"base_image", "wrist_image", "state" (7,), "instruction"}``; ``reset()`` clears any
per-episode state. Callers execute the chunk open loop (the evaluation loop, the ROS
policy node's chunk queue).

- ``RandomPolicy``: uniform random targets within the joint and gripper limits (a floor).
- ``ExpertPolicy``: the simulator's scripted expert (needs the env; privileged state).
- ``CheckpointPolicy``: a trained ReconVLA checkpoint through ``model.predict_action``.
"""

from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reconvla_core.piper import ACTION_DIM, ACTION_LOWER, ACTION_UPPER

if TYPE_CHECKING:
    from reconvla_core.sim.env import PiperCellEnv

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


class Policy(abc.ABC):
    """Maps an observation to a chunk of absolute actions."""

    #: False when the policy ignores images (evaluation then skips rendering).
    needs_images: bool = True
    name: str = "policy"

    @abc.abstractmethod
    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        """A (K, 7) float array of absolute actions."""

    def reset(self) -> None:
        """Forget per-episode state (called at the start of every chain)."""


def check_chunk(chunk: Any) -> np.ndarray:
    """A policy's output as a (K, 7) float64 array; ``ValueError`` on a wrong shape."""
    array = np.asarray(chunk, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != ACTION_DIM or array.shape[0] < 1:
        raise ValueError(f"a policy must return (K, {ACTION_DIM}) actions, got shape {np.shape(chunk)}")
    return array


class RandomPolicy(Policy):
    """Uniform random absolute targets inside the limits, a new one every ``chunk_size`` steps."""

    needs_images = False
    name = "random"

    def __init__(self, seed: int = 0, chunk_size: int = 1) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.seed = int(seed)
        self.chunk_size = int(chunk_size)
        self._rng = np.random.default_rng(self.seed)
        self._lower = np.asarray(ACTION_LOWER)
        self._upper = np.asarray(ACTION_UPPER)

    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        return self._rng.uniform(self._lower, self._upper, size=(self.chunk_size, ACTION_DIM))

    def reset(self) -> None:
        """Random draws continue across episodes (the sequence is fixed by ``seed``)."""


class ExpertPolicy(Policy):
    """The simulator's scripted expert as a policy (one action per chunk)."""

    needs_images = False
    name = "expert"

    def __init__(self, env: PiperCellEnv) -> None:
        self.env = env

    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        return self.env.expert_action()[None, :]


class CheckpointPolicy(Policy):
    """A ReconVLA checkpoint directory; each ``infer`` is one ``model.predict_action`` call."""

    needs_images = True

    def __init__(self, path: str | Path, device: str = "cpu", dtype: str = "float32") -> None:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint directory {path} does not exist")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        import torch

        from reconvla_core.model import ReconVLA

        self.path = path
        self.name = f"checkpoint:{path.name}"
        self.device = device
        self.model = ReconVLA.from_pretrained(
            path, load_reconstruction=False, device=device, dtype=getattr(torch, dtype)
        )
        self.model.eval()
        self._torch = torch
        self.last_box: np.ndarray | None = None

    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        if obs.get("base_image") is None or obs.get("wrist_image") is None:
            raise ValueError("CheckpointPolicy needs base_image and wrist_image in the observation")
        with self._torch.inference_mode():
            prediction = self.model.predict(
                obs["base_image"], obs["wrist_image"], str(obs["instruction"]), np.asarray(obs["state"])
            )
        self.last_box = prediction.box  # where the model looked (answer_box models), for probes and overlays
        return check_chunk(prediction.actions)
