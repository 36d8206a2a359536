"""A tiny LeRobot v3 dataset, built once per session from synthetic rosbag2 episodes.

Each episode is a real MCAP bag written by EpisodeBagWriter (cameras, follower state, leader
command, gaze box, instruction, episode info), converted by ``reconvla dataset build --gaze sim``.
The scene is simple and learnable: a coloured block whose position follows the arm, so both the
action loss and the reconstruction loss have something to fit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC
EPISODES = 6
SECONDS = 2.0
HZ = 10.0
HEIGHT, WIDTH = 48, 64
INSTRUCTIONS = ("pick up the red block", "put the blue block in the bowl")


def arm_state(t: float, episode: int) -> np.ndarray:
    """Follower joints (rad) + gripper (m): smooth, different per episode."""
    phase = 0.3 * episode
    return np.array([0.5 * np.sin(t + phase), 1.0 + 0.3 * t, -1.0 + 0.2 * np.cos(t), 0.1 * episode, 0.2, -0.3 * t,
                     0.035 + 0.03 * np.sin(2 * t + phase)])


def scene(t: float, episode: int, wrist: bool) -> np.ndarray:
    """A grey table with a coloured block that moves with the arm (and a different wrist view)."""
    image = np.full((HEIGHT, WIDTH, 3), 90 if wrist else 140, dtype=np.uint8)
    x = int((0.5 + 0.4 * np.sin(t + 0.3 * episode)) * (WIDTH - 12))
    y = int((0.3 + 0.1 * episode) * (HEIGHT - 12))
    color = (220, 40, 40) if episode % 2 == 0 else (40, 60, 220)
    image[y : y + 12, x : x + 12] = color
    if wrist:
        image[HEIGHT // 2 :, :] //= 2
    return image


def write_episode(path: Path, episode: int) -> Path:
    from reconvla_core import interfaces as itf
    from reconvla_core.data.bag_writer import EpisodeBagWriter

    instruction = INSTRUCTIONS[episode % 2]
    with EpisodeBagWriter(path) as bag:
        bag.write_string(itf.INSTRUCTION_TOPIC, T0, instruction)
        for i in range(int(SECONDS * HZ) + 1):
            t, stamp = i / HZ, T0 + round(i * SEC / HZ)
            state = arm_state(t, episode)
            bag.write_joint_state(itf.FOLLOWER_STATE_TOPIC, stamp, state)
            bag.write_joint_state(itf.LEADER_COMMAND_TOPIC, stamp, arm_state(t + 1.0 / HZ, episode))
            bag.write_image(itf.BASE_IMAGE_TOPIC, stamp, scene(t, episode, wrist=False))
            bag.write_image(itf.WRIST_IMAGE_TOPIC, stamp, scene(t, episode, wrist=True))
            x0 = (0.5 + 0.4 * np.sin(t + 0.3 * episode)) * (WIDTH - 12) / WIDTH
            y0 = (0.3 + 0.1 * episode) * (HEIGHT - 12) / HEIGHT
            bag.write_gaze_box(stamp, np.array([x0, y0, x0 + 12 / WIDTH, y0 + 12 / HEIGHT], dtype=np.float32))
        bag.finish({"task": instruction, "instruction": instruction, "success": True, "operator": "sim"})
    return path


def build_dataset(root: Path, episodes: int = EPISODES) -> Path:
    """Bags -> `reconvla dataset build` (the CLI entry point, in-process)."""
    from reconvla_core.cli.main import main

    bags = root / "bags"
    for episode in range(episodes):
        write_episode(bags / f"episode_{episode:03d}", episode)
    out = root / "dataset"
    code = main(["dataset", "build", "--bags", str(bags), "--out", str(out), "--gaze", "sim", "--fps", str(HZ)])
    assert code == 0 and (out / "meta" / "info.json").is_file()
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("train_data"))


@pytest.fixture(scope="session")
def small_overrides() -> Any:
    """``small_overrides(**{"optim.lr": 1e-3})`` -> key=value strings on top of the small test settings."""
    return tiny_overrides


@pytest.fixture(scope="session")
def make_config(tiny_dataset: Path) -> Any:
    """``make_config(out_dir, **overrides)`` -> a tiny-sim TrainConfig on the session dataset."""
    from reconvla_core.train import load_train_config

    def make(out: Path, **overrides: Any) -> Any:
        return load_train_config("tiny-sim", tiny_overrides(**overrides), data=[str(tiny_dataset)], output_dir=out)

    return make


def tiny_overrides(**extra: Any) -> list[str]:
    """Small, fast, deterministic settings for the tiny model on CPU."""
    values: dict[str, Any] = {
        "train.global_batch_size": 4, "train.per_device_batch_size": 2, "logging.progress_bar": "false",
        "eval.every_steps": 0, "eval.at_end": "false", "checkpoint.every_steps": 0, "logging.tensorboard": "false",
        "logging.loss_curve": "false", "data.val_fraction": 0.2,
        "train.cpu": "true",  # exact comparisons assume deterministic CPU kernels, also on a GPU machine
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def pretrained(make_config: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One short pretraining run, shared: losses, artefacts, and the init of the finetune and
    fit-head tests."""
    from reconvla_core.train import train

    out = tmp_path_factory.mktemp("pretrain") / "run"
    config = make_config(out, **{
        "train.max_steps": 24, "logging.every_steps": 1, "optim.lr": 2e-3, "optim.lr_denoiser": 2e-3,
        "optim.warmup_steps": 2, "eval.at_end": "true", "eval.max_samples": 8, "logging.tensorboard": "true",
        "logging.loss_curve": "true", "checkpoint.every_steps": 10, "checkpoint.keep_last": 1,
    })
    return train(config)
