"""No-op (static) frames are dropped as training samples but kept as chunk targets."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.data.build import BuildConfig, build_dataset
from reconvla_core.data.dataset import VLADataset
from reconvla_core.data.dataset_source import static_frames

pytestmark = pytest.mark.unit


def test_static_frames_never_span_episodes() -> None:
    action = np.array([[0, 0], [0, 0], [1, 0], [1, 0.0005], [1, 0.0005], [1, 0.0005]], dtype=np.float32)
    episode = np.array([0, 0, 0, 0, 1, 1])
    # row 1 repeats row 0; row 3 moved 0.5 mm (< 1 mm); row 4 starts episode 1; row 5 repeats row 4
    assert static_frames(action, episode, 1e-3).tolist() == [False, True, False, True, False, True]
    assert static_frames(action, episode, 1e-4).tolist() == [False, True, False, False, False, True]
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="static_threshold"):
            static_frames(action, episode, bad)


def test_dataset_drops_held_commands_as_samples_only(tmp_path, make_bag) -> None:
    held = (5, 6, 7)  # the leader holds its command here (e.g. waiting for the gripper to close)
    make_bag("held", root=tmp_path / "bags", seconds=1.9, hold_leader_frames=held)  # 20 frames
    build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds"))
    every = VLADataset([tmp_path / "ds"], val_fraction=0.0, chunk_size=5)
    moving = VLADataset([tmp_path / "ds"], val_fraction=0.0, chunk_size=5, static_threshold=1e-3)
    assert len(every) == 20 and every.static_frames_dropped == 0
    assert len(moving) == 20 - len(held) and moving.static_frames_dropped == len(held)
    frames = [moving[i]["frame_index"] for i in range(len(moving))]
    assert frames == [f for f in range(20) if f not in held]
    # frame 4's chunk still reaches into the held frames: their commands are targets, not samples
    sample = moving[4]
    assert sample["frame_index"] == 4
    np.testing.assert_allclose(sample["actions"][1:4], np.repeat(sample["actions"][:1], 3, axis=0), atol=1e-6)
