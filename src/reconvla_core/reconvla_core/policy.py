"""Policies: the one openpi-style interface between observations and actions, and its implementations.

``Policy.infer(obs) -> ActionChunk`` turns one observation into a chunk of K absolute actions
(6 joint angles rad + gripper opening m, ``reconvla_core.piper.ACTION_NAMES``); ``reset()`` clears
any per-episode state. Callers execute the chunk open loop: the evaluation loop (``sim/evaluate.py``),
the probe (``sim/probe.py``), DAgger, the demo and the ROS policy node (``reconvla_ros/policy.py``).

The observation is a dict:

- ``"instruction"`` (str) and ``"state"`` ((7,) measured joints + gripper);
- the images, either ``"base_image"`` + ``"wrist_image"`` (HxWx3 uint8 RGB, as the twin and the
  dataset give them) or ``"frame"``: the stitched model-input frame camera_ingest publishes;
- optionally ``"return_attention"`` (bool): ask for the attention map (the ROS node does so at its
  ``viz_rate``; it can cost an extra pass). Policies that have no such map ignore it;
- optionally ``"gaze_point"`` ((x, y), normalised in the image given, as the box below): where to
  look, from outside (a detector, or the twin's truth in ``reconvla eval probe``). A model with
  spatial keypoints acts on it in place of keypoint 0's own estimate; others ignore it.

The result carries what a deployment shows next to the actions, all optional: the (grid, grid)
attention map, the gaze box the model answered with and the gaze point its head acted on
(normalised in the image it was given: the base view, or the stitched frame when given ``"frame"``).

- ``RandomPolicy``: uniform random targets within the soft joint and the gripper limits (a floor).
- ``ExpertPolicy``: the simulator's scripted expert (needs the env; privileged state).
- ``TrueGazePolicy``: any policy given the twin's true gaze centre as ``"gaze_point"`` (oracle
  perception: splits a failure into "where to look" and "how to act", ``reconvla eval sim --gaze oracle``).
- ``ModelPolicy``: a ReconVLA model in memory (e.g. the one being trained) through ``model.predict``.
  Its targets are kept inside the arm's soft joint limits (``piper.SOFT_ACTION_LOWER/UPPER``): a
  delta-mode model predicts motion relative to the measured state, so at a limit "further" asks past
  it; the target is clipped onto the limit (where the experts' own plans stop) and counted in
  ``ActionChunk.clipped_targets``, rather than the safety layer refusing the whole chunk and the arm
  holding while the policy asks again.
- ``CheckpointPolicy``: a ``ModelPolicy`` loaded from a checkpoint directory by ``load_model``, the
  one checkpoint-loading path for inference (the benchmarks use it too).

A new policy plugs in by subclassing ``Policy``; docs/architecture.md lists where it is accepted.
"""

from __future__ import annotations

import abc
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reconvla_core.piper import ACTION_DIM, SOFT_ACTION_LOWER, SOFT_ACTION_UPPER
from reconvla_core.runtime.overlay import gaze_box_in_frame

if TYPE_CHECKING:
    from reconvla_core.sim.env import PiperCellEnv

logger = logging.getLogger(__name__)

#: Below this a clip is float rounding (a gripper decoded to its range's end), not counted.
CLIP_EPS = 1e-9
#: Weight dtypes a checkpoint may be loaded in (names of ``torch`` attributes).
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
#: The short spellings command lines take (``reconvla bench infer --dtype bf16``).
DTYPE_SHORT_NAMES: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class ActionChunk:
    """One ``Policy.infer`` result: (K, 7) absolute actions, plus what some policies also report.

    ``attention``: the (grid, grid) attention map over the image tokens (only when asked and the
    policy has one); ``box``: the gaze box the model answered with (``answer_box`` models);
    ``gaze_point``: the (x, y) its head acted on (models with spatial keypoints);
    ``clipped_targets``: how many of the chunk's values the policy clipped onto the soft limits.
    Construction checks the actions, so every chunk a caller sees is a finite (K >= 1, 7) float64
    array; a single (7,) action becomes a chunk of one."""

    actions: np.ndarray
    attention: np.ndarray | None = None
    box: np.ndarray | None = None
    gaze_point: np.ndarray | None = None
    clipped_targets: int = 0

    def __post_init__(self) -> None:
        actions = np.asarray(self.actions, dtype=np.float64)
        if actions.ndim == 1:
            actions = actions[None, :]
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM or actions.shape[0] < 1:
            raise ValueError(f"a policy must return (K, {ACTION_DIM}) actions, got shape {np.shape(self.actions)}")
        if not np.all(np.isfinite(actions)):
            raise ValueError("a policy returned non-finite actions")
        # frozen: the checked copies replace the given values
        object.__setattr__(self, "actions", actions)
        if self.attention is not None:
            object.__setattr__(self, "attention", np.asarray(self.attention, dtype=np.float64))
        if self.box is not None:
            object.__setattr__(self, "box", np.asarray(self.box, dtype=np.float64))
        if self.gaze_point is not None:
            object.__setattr__(self, "gaze_point", np.asarray(self.gaze_point, dtype=np.float64))


class Policy(abc.ABC):
    """Maps an observation (see the module doc) to a chunk of absolute actions."""

    #: False when the policy ignores images (evaluation then skips rendering).
    needs_images: bool = True
    name: str = "policy"

    @abc.abstractmethod
    def infer(self, obs: dict[str, Any]) -> ActionChunk:
        """The next chunk for ``obs``."""

    def reset(self) -> None:
        """Forget per-episode state (called at the start of every chain)."""


class RandomPolicy(Policy):
    """Uniform random absolute targets inside the soft limits (what the arm may execute), a new one
    every ``chunk_size`` steps."""

    needs_images = False
    name = "random"

    def __init__(self, seed: int = 0, chunk_size: int = 1) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.seed = int(seed)
        self.chunk_size = int(chunk_size)
        self._rng = np.random.default_rng(self.seed)
        self._lower = np.asarray(SOFT_ACTION_LOWER)
        self._upper = np.asarray(SOFT_ACTION_UPPER)

    def infer(self, obs: dict[str, Any]) -> ActionChunk:
        return ActionChunk(self._rng.uniform(self._lower, self._upper, size=(self.chunk_size, ACTION_DIM)))

    def reset(self) -> None:
        """Random draws continue across episodes (the sequence is fixed by ``seed``)."""


class ExpertPolicy(Policy):
    """The simulator's scripted expert as a policy (one action per chunk)."""

    needs_images = False
    name = "expert"

    def __init__(self, env: PiperCellEnv) -> None:
        # Imported here: the ROS policy node imports this module and needs no simulator.
        from reconvla_core.sim.expert import ScriptedExpert

        self.env = env
        self.expert = ScriptedExpert(env)

    def infer(self, obs: dict[str, Any]) -> ActionChunk:
        return ActionChunk(self.expert.act()[None, :])


class TrueGazePolicy(Policy):
    """``policy`` with the twin's true gaze-box centre (base view) passed as ``"gaze_point"``: the
    perception half replaced by the truth, the acting half the policy's own."""

    def __init__(self, policy: Policy, env: PiperCellEnv) -> None:
        self.policy = policy
        self.env = env
        self.name = f"{policy.name}+true-gaze"
        self.needs_images = policy.needs_images

    def infer(self, obs: dict[str, Any]) -> ActionChunk:
        return self.policy.infer({**obs, "gaze_point": np.asarray(self.env.gaze_centre(), dtype=np.float64)})

    def reset(self) -> None:
        self.policy.reset()


def load_model(path: str | Path, device: Any = "cpu", dtype: str = "float32") -> Any:
    """A ReconVLA checkpoint directory loaded for inference: no reconstruction branch, eval mode.

    ``dtype`` is one of ``DTYPES``; ``FileNotFoundError`` / ``ValueError`` come before torch loads."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    import torch

    from reconvla_core.model import ReconVLA

    model = ReconVLA.from_pretrained(path, load_reconstruction=False, device=device, dtype=getattr(torch, dtype))
    model.eval()
    logger.info("policy: loaded %s on %s (%s)", path, device, dtype)
    return model


class ModelPolicy(Policy):
    """A ReconVLA model in memory; each ``infer`` is one ``model.predict`` call (one at a time, as the
    ROS node's worker and a benchmark may share the policy)."""

    needs_images = True

    def __init__(self, model: Any, name: str = "model") -> None:
        import torch  # here, not at the top: the simulator and the ROS node import this module without a model

        self.model = model
        self.name = name
        self._torch = torch
        self._lock = threading.Lock()

    def infer(self, obs: dict[str, Any]) -> ActionChunk:
        frame = obs.get("frame")
        if frame is None and (obs.get("base_image") is None or obs.get("wrist_image") is None):
            raise ValueError(f"{type(self).__name__} needs base_image and wrist_image (or a stitched frame) "
                             "in the observation")
        want_attention = bool(obs.get("return_attention", False))
        instruction, state = str(obs["instruction"]), np.asarray(obs["state"])
        # Gaze points in the image given: the stitched frame is the model's input frame; the base view
        # is its top band.
        scale = np.ones(2) if frame is not None else self.model.processor.base_view_scale
        gaze = obs.get("gaze_point")
        forced = None if gaze is None or self.model.keypoints is None else np.asarray(gaze, np.float64) * scale
        with self._lock, self._torch.inference_mode():
            if frame is not None:
                out = self.model.predict(None, None, instruction, state, return_attention=want_attention,
                                         stitched_image=frame, gaze_point=forced)
            else:
                out = self.model.predict(obs["base_image"], obs["wrist_image"], instruction, state,
                                         return_attention=want_attention, gaze_point=forced)
        box = out.box
        if box is not None and frame is not None:  # the model answers in base-view coordinates
            box = gaze_box_in_frame(box, float(self.model.config.stitch_top_fraction))
        point = None if out.gaze_point is None else out.gaze_point / scale
        actions = np.clip(out.actions, SOFT_ACTION_LOWER, SOFT_ACTION_UPPER)
        clipped = int(np.count_nonzero(np.abs(actions - out.actions) > CLIP_EPS))
        return ActionChunk(actions, out.attention, box, point, clipped)


class CheckpointPolicy(ModelPolicy):
    """A ReconVLA checkpoint directory (``load_model``) as a policy."""

    def __init__(self, path: str | Path, device: str = "cpu", dtype: str = "float32") -> None:
        self.path = Path(path)
        self.device = device
        super().__init__(load_model(path, device=device, dtype=dtype), name=f"checkpoint:{self.path.name}")
