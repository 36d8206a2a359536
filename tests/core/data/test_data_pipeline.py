"""bag -> LeRobot v3 dataset -> sample returns the recorded values."""

from __future__ import annotations

import numpy as np
import pytest
from data_synthetic import action_at, gaze_at, image_at, state_at

from reconvla_core.data.bag_reader import AlignConfig, read_episode
from reconvla_core.data.build import BuildConfig, build_dataset
from reconvla_core.data.dataset import DatasetSource, VLADataset
from reconvla_core.data.dataset_source import split_episodes

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
    report = build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds", gaze="sim", image_format="png"))
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
    report = build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds", gaze="sim", image_format="png"))
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
    report = build_dataset(BuildConfig(bags=[path], out=tmp_path / "ds", gaze="sim", image_format="png"))
    # The 0.4 s hole is longer than --max-gap (0.2 s): two episodes, each on the fps grid.
    assert (report.episodes, report.frames, report.dropped_frames, report.filled_frames) == (2, 8, 3, 0)


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


@pytest.mark.parametrize("frame_id", ["", "c", "camera_color_optical_frame", "abc"])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_fast_image_parse_matches_rosbags(frame_id, encoding):
    from reconvla_core.data.bag_messages import image_to_rgb, parse_image_cdr
    from reconvla_core.data.bag_writer import get_typestore

    ts = get_typestore()
    channels = 1 if encoding == "mono8" else 3
    rng = np.random.default_rng(len(frame_id))
    height, width, step = 5, 7, 7 * channels + 3  # padded rows
    data = rng.integers(0, 256, size=height * step, dtype=np.uint8)
    types = ts.types
    msg = types["sensor_msgs/msg/Image"](
        header=types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=2),
                                            frame_id=frame_id),
        height=height, width=width, encoding=encoding, is_bigendian=0, step=step, data=data)
    raw = ts.serialize_cdr(msg, "sensor_msgs/msg/Image")
    fast = image_to_rgb(parse_image_cdr(raw))
    reference = image_to_rgb(ts.deserialize_cdr(raw, "sensor_msgs/msg/Image"))
    np.testing.assert_array_equal(fast, reference)
    rows = data.reshape(height, step)[:, : width * channels].reshape(height, width, channels)
    expected = {"rgb8": rows, "bgr8": rows[..., ::-1], "mono8": np.repeat(rows, 3, axis=2)}[encoding]
    np.testing.assert_array_equal(fast, expected)


@pytest.mark.parametrize(("storage", "storage_class"), [("mcap", "McapStorage"), ("sqlite3", "SqliteStorage")])
def test_indexed_and_scanning_readers_agree(tmp_path, make_bag, storage, storage_class):
    from reconvla_core.data.bag_storage import open_storage

    path = make_bag("robot", seconds=1.0, camera_hz=30.0, joint_hz=200.0, skip_wrist_frames=(4, 5), storage=storage)
    fast = read_episode(path)
    assert type(fast._storage).__name__ == storage_class
    slow = read_episode(path, storage=open_storage(path, scan=True))
    assert type(slow._storage).__name__ == "ScanStorage"
    for name in ("timestamps", "state", "action", "gaze"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))
    assert (fast.dropped_frames, fast.info, fast.instruction) == (slow.dropped_frames, slow.info, slow.instruction)
    assert (fast.image_sizes, fast.image_encodings) == (slow.image_sizes, slow.image_encodings)
    for (i, base_a, wrist_a), (j, base_b, wrist_b) in zip(fast.iter_frames(), slow.iter_frames(), strict=True):
        assert i == j
        np.testing.assert_array_equal(base_a, base_b)
        np.testing.assert_array_equal(wrist_a, wrist_b)


def test_default_jpeg_frames_are_close_to_the_recorded_ones(tmp_path, make_bag):
    make_bag("ep", seconds=0.5, height=48, width=64, smooth_images=True)
    build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds"))
    sample = VLADataset([tmp_path / "ds"], val_fraction=0.0)[3]
    from data_synthetic import smooth_image_at

    for camera, key in ((0, "base_image"), (1, "wrist_image")):
        error = sample[key].astype(np.float64) - smooth_image_at(camera, 3, 48, 64)
        psnr = 10 * np.log10(255.0**2 / np.mean(error**2))
        assert psnr > 38, psnr


def test_header_stamps_align_when_receive_times_lag(tmp_path):
    """Images arriving 40 ms late (log time) but stamped at capture: --stamp-source header recovers them."""
    from data_synthetic import T0

    from reconvla_core import interfaces as itf
    from reconvla_core.data.bag_writer import EpisodeBagWriter, get_typestore

    ts = get_typestore()
    types = ts.types
    path = tmp_path / "lagging"
    sec = 1_000_000_000
    with EpisodeBagWriter(path) as bag:
        for i in range(11):  # 10 Hz, 1 s
            capture = T0 + i * sec // 10
            for topic, camera in ((itf.BASE_IMAGE_TOPIC, 0), (itf.WRIST_IMAGE_TOPIC, 1)):
                image = image_at(camera, i, 6, 8)
                msg = types["sensor_msgs/msg/Image"](
                    header=types["std_msgs/msg/Header"](
                        stamp=types["builtin_interfaces/msg/Time"](sec=capture // sec, nanosec=capture % sec),
                        frame_id="cam"),
                    height=6, width=8, encoding="rgb8", is_bigendian=0, step=24, data=image.reshape(-1))
                bag.write_serialized(topic, "sensor_msgs/msg/Image", capture + 40_000_000,
                                     ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
            for j in range(20):  # joints at 200 Hz, no lag
                stamp = capture + j * sec // 200
                if i < 10 or j == 0:
                    bag.write_joint_state(itf.FOLLOWER_STATE_TOPIC, stamp, state_at((stamp - T0) / sec))
                    bag.write_joint_state(itf.LEADER_COMMAND_TOPIC, stamp, action_at((stamp - T0) / sec))
        bag.finish({"success": True, "instruction": "pick up the red block"})
    by_log = read_episode(path, align=AlignConfig(fps=10))
    by_header = read_episode(path, align=AlignConfig(fps=10, stamp_source="header"))
    assert by_header.num_frames == 11 and by_header.dropped_frames == 0
    for frame, base, _ in by_header.iter_frames():
        np.testing.assert_array_equal(base, image_at(0, frame, 6, 8))
    np.testing.assert_allclose(by_header.state[5], state_at(0.5).astype(np.float32), atol=1e-6)
    # On receive times the joint state paired with image 5 is the one from 40 ms later.
    np.testing.assert_allclose(by_log.state[5], state_at(0.54).astype(np.float32), atol=1e-6)
    # Header stamps through the MCAP index and through a rosbags scan give the same episode.
    from reconvla_core.data.bag_storage import open_storage

    scanned = read_episode(path, align=AlignConfig(fps=10, stamp_source="header"), storage=open_storage(path, scan=True))
    assert type(by_header._storage).__name__ == "McapStorage" and type(scanned._storage).__name__ == "ScanStorage"
    np.testing.assert_array_equal(by_header.stamps_ns, scanned.stamps_ns)
    np.testing.assert_array_equal(by_header.state, scanned.state)
