"""`reconvla study privileged`: the simplest policy that could work, as a calibration.

A small MLP maps what perfect perception would give (the simulator's gaze box, the follower state
and the parsed instruction; ``inputs`` can narrow the box to its centre, as the ReconVLA's gaze
keypoint is, and add the gripper's point in the base image) to a chunk of joint deltas, trained with L1 on the same LeRobot v3
datasets a ReconVLA trains on, and evaluated on the same fixed chains. Its score is the ceiling for
a pixel policy whose only "where" signal is the gaze box: if it fails, more pixels or steps will
not help; if it succeeds where a ReconVLA fails, perception from pixels is what is missing
(docs/study_recon.md, "Calibration").

The dataset is read with pyarrow directly (state, action, gaze box and task columns only): decoding
the images, as the training loader does, would cost minutes and is not needed here.
"""

from __future__ import annotations

import glob
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reconvla_core.policy import ActionChunk, Policy

logger = logging.getLogger(__name__)

FAMILIES = ("pick", "place", "stack")
# What the MLP gets besides the state and the instruction: the gaze box (xyxy), only its centre, or
# its centre and size (w, h), with or without the gripper's point in the base image (and the centre's
# offset from it)
INPUTS = ("box", "centre", "centre+size", "box+gripper", "centre+gripper")


def instruction_features(instruction: str, colours: Sequence[str]) -> np.ndarray:
    """One-hot family, manipulated colour and destination colour of a twin instruction."""
    from reconvla_core.sim.tasks import Task

    task = Task.parse(instruction)
    out = np.zeros(len(FAMILIES) + 2 * len(colours), dtype=np.float32)
    out[FAMILIES.index(task.family)] = 1.0
    out[len(FAMILIES) + list(colours).index(task.obj)] = 1.0
    if task.dest is not None:
        out[len(FAMILIES) + len(colours) + list(colours).index(task.dest)] = 1.0
    return out


def observation_features(state: np.ndarray, gaze_box: np.ndarray, instruction: np.ndarray, inputs: str = "box",
                         gripper: np.ndarray | None = None) -> np.ndarray:
    """The MLP's input: follower state (7), the gaze box xyxy (4), its centre (2) or its centre and
    (w, h) (4, ``centre+size``), with ``+gripper``
    the gripper point (2, ``camera.gripper_points``) and the centre minus it (2), then the instruction
    one-hots."""
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
    box = np.asarray(gaze_box, np.float32)[:4]
    centre = 0.5 * (box[:2] + box[2:])
    gaze = {"box": box, "centre": centre, "centre+size": np.concatenate([centre, box[2:] - box[:2]])}
    parts = [np.asarray(state, np.float32), gaze[inputs.removesuffix("+gripper")]]
    if inputs.endswith("+gripper"):
        if gripper is None:
            raise ValueError(f"inputs {inputs!r} need the gripper point")
        point = np.asarray(gripper, np.float32)[:2]
        parts += [point, centre - point]
    return np.concatenate([*parts, instruction])


def load_samples(datasets: Sequence[Path], chunk_size: int, inputs: str = "box",
                 image_size: tuple[int, int] = (160, 120)) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (N, F), targets (N, chunk_size * 7)): the chunk a_{t..t+K-1} with the joints relative to
    s_t (the gripper absolute), steps past an episode's end repeating its last action. Gripper points
    come from the state by the twin's kinematics and base camera at ``image_size``."""
    import pyarrow.parquet as pq

    from reconvla_core.sim.camera import gripper_points
    from reconvla_core.sim.scene import COLOURS

    colours = list(COLOURS)
    samples, targets = [], []
    for root in datasets:
        tasks = pq.read_table(Path(root) / "meta" / "tasks.parquet").to_pydict()
        text_key = next(k for k in tasks if k != "task_index")
        task_text = dict(zip(tasks["task_index"], tasks[text_key]))
        features = {index: instruction_features(text, colours) for index, text in task_text.items()}
        files = sorted(glob.glob(str(Path(root) / "data" / "*" / "*.parquet")))
        if not files:
            raise FileNotFoundError(f"{root}: no data/*/*.parquet (a dataset from `reconvla dataset build`?)")
        for file in files:
            table = pq.read_table(file, columns=["observation.state", "action", "observation.gaze_box",
                                                 "episode_index", "task_index"]).to_pydict()
            state = np.asarray(table["observation.state"], np.float32)
            action = np.asarray(table["action"], np.float32)
            gaze = np.asarray(table["observation.gaze_box"], np.float32)
            episode = np.asarray(table["episode_index"])
            last = _episode_last_rows(episode)
            points = gripper_points(state, *image_size) if inputs.endswith("+gripper") else [None] * len(state)
            for i in range(len(episode)):
                rows = np.minimum(np.arange(i, i + chunk_size), last[i])
                chunk = action[rows].copy()
                chunk[:, :6] -= state[i, :6]
                samples.append(observation_features(state[i], gaze[i], features[table["task_index"][i]], inputs,
                                                    points[i]))
                targets.append(chunk.reshape(-1))
    return np.asarray(samples, np.float32), np.asarray(targets, np.float32)


def _episode_last_rows(episode: np.ndarray) -> np.ndarray:
    """Per row, the index of the last row of its episode (rows of an episode are contiguous)."""
    last = np.empty(len(episode), dtype=np.int64)
    end = len(episode) - 1
    for i in range(len(episode) - 1, -1, -1):
        if i < len(episode) - 1 and episode[i] != episode[i + 1]:
            end = i
        last[i] = end
    return last


@dataclass
class PrivilegedMLP:
    """The trained network and its input/target standardisation."""

    net: Any
    input_mean: np.ndarray
    input_std: np.ndarray
    target_mean: np.ndarray
    target_std: np.ndarray
    chunk_size: int

    def chunk(self, features: np.ndarray, state: np.ndarray) -> np.ndarray:
        """(K, 7) absolute actions for one observation."""
        import torch

        x = torch.from_numpy(((features - self.input_mean) / self.input_std).astype(np.float32))[None]
        with torch.no_grad():
            y = self.net(x)[0].numpy() * self.target_std + self.target_mean
        chunk = y.reshape(self.chunk_size, -1).astype(np.float64)
        chunk[:, :6] += np.asarray(state, np.float64)[:6]
        return chunk


INPUT_SCALINGS = ("standard", "head")


def input_scaling(inputs: np.ndarray, how: str, image_columns: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) of the inputs: ``standard`` = mean / std (unit variance); ``head`` = what an
    unstandardised ReconVLA head input looks like: the state by its q01/q99 to [-1, 1] (as the
    processor normalises it), the ``image_columns`` image coordinates after it 2b - 1, the rest as
    they are."""
    if how == "standard":
        return inputs.mean(0), inputs.std(0) + 1e-6
    if how != "head":
        raise ValueError(f"input scaling must be one of {INPUT_SCALINGS}, got {how!r}")
    shift, scale = np.zeros(inputs.shape[1], np.float32), np.ones(inputs.shape[1], np.float32)
    low, high = np.quantile(inputs[:, :7], 0.01, axis=0), np.quantile(inputs[:, :7], 0.99, axis=0)
    scale[:7] = np.maximum(high - low, 1e-8) / 2
    shift[:7] = low + scale[:7]
    shift[7:7 + image_columns], scale[7:7 + image_columns] = 0.5, 0.5
    return shift, scale


def train_mlp(inputs: np.ndarray, targets: np.ndarray, steps: int, chunk_size: int, seed: int = 0,
              batch_size: int = 256, width: int = 256, lr: float = 1e-3,
              scaling: str = "standard", image_columns: int = 4) -> tuple[PrivilegedMLP, list[float]]:
    """L1 on standardised targets, AdamW; returns the model and the loss every 1,000 steps."""
    import torch

    torch.manual_seed(seed)
    in_mean, in_std = input_scaling(inputs, scaling, image_columns)
    out_mean, out_std = targets.mean(0), targets.std(0) + 1e-6
    x = torch.from_numpy((inputs - in_mean) / in_std)
    y = torch.from_numpy((targets - out_mean) / out_std)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], width), torch.nn.GELU(), torch.nn.Linear(width, width),
                              torch.nn.GELU(), torch.nn.Linear(width, y.shape[1]))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    curve = []
    for step in range(1, steps + 1):
        rows = torch.randint(0, len(x), (batch_size,), generator=generator)
        loss = (net(x[rows]) - y[rows]).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 1000 == 0 or step == steps:
            curve.append(round(loss.item(), 4))
    net.eval()
    return PrivilegedMLP(net, in_mean, in_std, out_mean, out_std, chunk_size), curve


class PrivilegedPolicy(Policy):
    """The MLP acting on the twin's ground-truth gaze box (so it is bound to one env, like ExpertPolicy).
    ``gaze_noise``: per-axis std (a fraction of the image) of Gaussian noise added to the box's
    position at every chunk, the stand-in for a perception that finds the gaze only that precisely."""

    needs_images = False
    name = "privileged-mlp"

    def __init__(self, model: PrivilegedMLP, env: Any, gaze_noise: float = 0.0, seed: int = 0,
                 inputs: str = "box") -> None:
        from reconvla_core.sim.scene import COLOURS

        self.model = model
        self.env = env
        self.inputs = inputs
        self.colours = list(COLOURS)
        self.gaze_noise = gaze_noise
        self.rng = np.random.default_rng(seed)

    def infer(self, obs: dict[str, Any]) -> ActionChunk:
        state = np.asarray(obs["state"], np.float64)
        box = np.asarray(self.env.gaze_box(), np.float64)[:4].copy()
        if self.gaze_noise > 0:
            box += np.tile(self.rng.normal(0.0, self.gaze_noise, 2), 2)  # the same shift for both corners
        gripper = None
        if self.inputs.endswith("+gripper"):
            from reconvla_core.sim.camera import gripper_points

            config = self.env.config
            gripper = gripper_points(state[None], config.image_width, config.image_height)[0]
        features = observation_features(state, box, instruction_features(str(obs["instruction"]), self.colours),
                                        self.inputs, gripper)
        return ActionChunk(self.model.chunk(features, state))


def run_privileged_study(datasets: Sequence[Path], steps: int = 30_000, chains: int = 20, chunk_size: int = 5,
                         image_size: tuple[int, int] = (160, 120), seed: int = 0,
                         batch_size: int = 256, scaling: str = "standard",
                         gaze_noise: Sequence[float] = (0.0,), inputs: str = "box") -> dict[str, Any]:
    """Train the MLP on ``datasets`` and evaluate it on the first ``chains`` fixed chains, once per
    ``gaze_noise`` level (the headline avg_len is the first level's). The mean distance a level moves
    the gaze centre is sigma * sqrt(pi / 2), comparable with `eval probe`'s keypoint-0 error."""
    from reconvla_core.sim.env import PiperCellEnv, SimConfig
    from reconvla_core.sim.evaluate import evaluate_policy
    from reconvla_core.sim.tasks import make_eval_chains

    start = time.perf_counter()
    samples, targets = load_samples(datasets, chunk_size, inputs, image_size)
    logger.info("privileged study: %d samples from %d dataset(s)", len(samples), len(datasets))
    gaze_columns = 2 if inputs.removesuffix("+gripper") == "centre" else 4
    image_columns = gaze_columns + (2 if inputs.endswith("+gripper") else 0)
    model, curve = train_mlp(samples, targets, steps, chunk_size, seed=seed, batch_size=batch_size, scaling=scaling,
                             image_columns=image_columns)
    train_s = time.perf_counter() - start
    config = SimConfig(image_width=image_size[0], image_height=image_size[1], clip_actions=True, render_wrist=False)
    with PiperCellEnv(config) as env:
        scored = [evaluate_policy(PrivilegedPolicy(model, env, gaze_noise=sigma, seed=seed, inputs=inputs),
                                  make_eval_chains(chains, seed=0), env=env, progress=False)[0]
                  for sigma in gaze_noise]
    metrics = scored[0]
    levels = [{"gaze_noise": sigma, "mean_gaze_error": round(sigma * float(np.sqrt(np.pi / 2)), 4),
               "avg_len": at["avg_len"]} for sigma, at in zip(gaze_noise, scored)]
    return {"policy": "privileged-mlp", "inputs": inputs, "input_scaling": scaling,
            "by_gaze_noise": levels,
            "samples": len(samples),
            "steps": steps, "batch_size": batch_size, "samples_seen": steps * batch_size, "loss_curve": curve, "train_s": round(train_s, 1),
            **{k: metrics[k] for k in ("avg_len", "success_by_position", "per_task", "chains")},
            "datasets": [str(d) for d in datasets]}
