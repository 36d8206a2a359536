"""dataset build under faulty recordings: time gaps, slow streams, mixed image sizes, mono cameras.

Each bag gets an outcome in the JSON; no episode written has a hole beyond --max-gap, and every
row sits on the fps grid (what LeRobot's delta_timestamps assume)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from data_synthetic import SEC, T0, image_at, state_at

from reconvla_core import interfaces as itf
from reconvla_core.cli.main import main as cli_main
from reconvla_core.data.bag_reader import AlignConfig, read_episode
from reconvla_core.data.bag_writer import EpisodeBagWriter, get_typestore
from reconvla_core.data.build import BuildConfig, build_dataset, parse_image_size
from reconvla_core.data.lerobot_v3 import BASE_IMAGE_KEY, WRIST_IMAGE_KEY, data_files, decode_cell, load_episodes

pytestmark = pytest.mark.unit


def dataset_rows(root: Path) -> dict[int, dict[str, np.ndarray]]:
    """episode index -> its columns (timestamp, frame_index, state), in row order."""
    table = pq.read_table(data_files(root), columns=["episode_index", "frame_index", "timestamp", "observation.state"])
    episodes = np.asarray(table["episode_index"])
    result = {}
    for episode in np.unique(episodes).tolist():
        rows = episodes == episode
        result[episode] = {
            "timestamp": np.asarray(table["timestamp"])[rows].astype(np.float64),
            "frame_index": np.asarray(table["frame_index"])[rows],
            "state": np.stack(np.asarray(table["observation.state"].to_pylist(), dtype=object)[rows]).astype(
                np.float64),
        }
    return result


def assert_on_fps_grid(root: Path, fps: float = 10.0) -> None:
    for columns in dataset_rows(root).values():
        n = columns["timestamp"].shape[0]
        np.testing.assert_allclose(columns["timestamp"], np.arange(n) / fps, atol=1e-5)
        np.testing.assert_array_equal(columns["frame_index"], np.arange(n))


# ----------------------------------------------------------------------------- gaps
def test_short_holes_are_filled_and_long_gaps_split_the_episode(tmp_path, make_bag):
    # 30 Hz cameras, 200 Hz joints; wrist frames 8..10 (t=0.267..0.333) and 20..35 (t=0.667..1.167)
    # missing: grid point 0.3 has no wrist image within 50 ms (a one-frame hole), 0.7..1.1 (five) neither.
    skipped = (8, 9, 10, *range(20, 36))
    path = make_bag("gappy", seconds=2.0, camera_hz=30.0, joint_hz=200.0, skip_wrist_frames=skipped)
    holes = read_episode(path, align=AlignConfig(fps=10))  # no max_gap: the holes stay (as before)
    assert holes.dropped_frames == 6 and holes.num_frames == 15 and holes.segments == [(0, 15)]

    report = build_dataset(BuildConfig(bags=[path], out=tmp_path / "ds", image_format="png"))
    assert (report.episodes, report.frames, report.dropped_frames, report.filled_frames) == (2, 16, 6, 1)
    (entry,) = report.bags
    assert entry["outcome"] == "converted" and entry["segments"] == 2 and entry["dropped_frames"] == 6
    assert any("split into 2 episodes" in note and "0.60 s at t=0.60 s" in note for note in entry["notes"])
    assert_on_fps_grid(tmp_path / "ds")
    rows = dataset_rows(tmp_path / "ds")
    assert [len(columns["timestamp"]) for columns in rows.values()] == [7, 9]  # t 0..0.6 and 1.2..2.0
    # The filled frame at t = 0.3 has the follower state of t = 0.3 (joints were there) ...
    np.testing.assert_allclose(rows[0]["state"][3], state_at(0.3), atol=1e-6)
    # ... and the wrist image nearest in time (camera frame 7 or 11), not a blank one.
    table = pq.read_table(data_files(tmp_path / "ds"), columns=[WRIST_IMAGE_KEY])
    wrist = decode_cell(tmp_path / "ds", table[WRIST_IMAGE_KEY][3].as_py())
    assert any(np.array_equal(wrist, image_at(1, f, 24, 32)) for f in (7, 11))
    # The second episode starts at t = 1.2 s of the bag.
    np.testing.assert_allclose(rows[1]["state"][0], state_at(1.2), atol=1e-6)


def test_on_gap_refuse_fails_the_bag_with_the_gaps(tmp_path, make_bag, capsys):
    make_bag("a_clean", seconds=1.0)
    make_bag("b_gappy", seconds=2.0, camera_hz=30.0, joint_hz=200.0, skip_wrist_frames=tuple(range(20, 36)))
    rc = cli_main(["dataset", "build", "--bags", str(tmp_path / "bags"), "--out", str(tmp_path / "ds"),
                   "--on-gap", "refuse", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["episodes"] == 1
    outcomes = {b["bag"]: b for b in result["bags"]}
    assert outcomes["a_clean"]["outcome"] == "converted"
    assert outcomes["b_gappy"]["outcome"] == "failed"
    assert "1 gap(s) longer than --max-gap 200 ms: 0.60 s at t=0.60 s" in outcomes["b_gappy"]["reason"]
    # A looser --max-gap accepts it, filled: one episode on the grid.
    rc = cli_main(["dataset", "build", "--bags", str(tmp_path / "bags" / "b_gappy"), "--out", str(tmp_path / "loose"),
                   "--max-gap", "0.6", "--on-gap", "refuse", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and (result["episodes"], result["frames"], result["filled_frames"]) == (1, 21, 5)
    assert_on_fps_grid(tmp_path / "loose")


def test_many_dropped_frames_get_a_line_per_bag(tmp_path, make_bag, caplog):
    make_bag("lossy", seconds=2.0, camera_hz=30.0, joint_hz=200.0, skip_wrist_frames=(2, 3, 4, 14, 15, 16, 26, 27, 28, 44, 45, 46))
    with caplog.at_level("WARNING"):
        report = build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds"))
    assert report.episodes == 1 and report.filled_frames == 4 and report.bags[0]["dropped_frames"] == 4
    assert "lossy: dropped 4 of 21 frames (19%" in caplog.text
    assert_on_fps_grid(tmp_path / "ds")


# ----------------------------------------------------------------------------- slow streams
def test_a_stream_slower_than_fps_fails_its_bag(tmp_path, make_bag, capsys):
    make_bag("a_clean", seconds=1.0)
    make_bag("b_slow_joints", seconds=5.0, camera_hz=30.0, joint_hz=1.0)
    rc = cli_main(["dataset", "build", "--bags", str(tmp_path / "bags"), "--out", str(tmp_path / "ds"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["episodes"] == 1
    slow = {b["bag"]: b for b in result["bags"]}["b_slow_joints"]
    assert slow["outcome"] == "failed"
    assert "/joint_states_single (follower_state) at 1.00 Hz" in slow["reason"]
    assert "below the dataset's 10 fps" in slow["reason"]
    # --strict turns the failure into a failed build; nothing is written.
    rc = cli_main(["dataset", "build", "--bags", str(tmp_path / "bags"), "--out", str(tmp_path / "strict"),
                   "--strict"])
    assert rc == 2 and "1.00 Hz" in capsys.readouterr().err and not (tmp_path / "strict").exists()
    # Only slow bags: nothing converts, the build fails and names the reason.
    rc = cli_main(["dataset", "build", "--bags", str(tmp_path / "bags" / "b_slow_joints"), "--out",
                   str(tmp_path / "none")])
    assert rc == 2 and "no episode converted" in capsys.readouterr().err


def test_allow_low_rate_converts_with_a_note(tmp_path, make_bag):
    path = make_bag("slow", seconds=3.0, camera_hz=30.0, joint_hz=1.0)
    report = build_dataset(BuildConfig(bags=[path], out=tmp_path / "ds", allow_low_rate=True))
    (entry,) = report.bags
    assert entry["outcome"] == "converted" and any("--allow-low-rate" in note for note in entry["notes"])
    assert entry["stream_rates_hz"]["follower_state"] == 1.0
    assert_on_fps_grid(tmp_path / "ds")  # even then, no row is off the grid


# ----------------------------------------------------------------------------- image sizes
def test_mixed_sizes_take_the_most_common_and_resize_the_rest(tmp_path, make_bag):
    make_bag("a_big", height=48, width=64, episode=0)  # listed first, but the minority
    make_bag("b_small", height=24, width=32, episode=1)
    make_bag("c_small", height=24, width=32, episode=2)
    report = build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds", image_format="png"))
    assert report.episodes == 3 and report.failed == [] and report.image_size == "32x24"
    notes = {entry["bag"]: entry["notes"] for entry in report.bags}
    assert notes["a_big"] == ["base_image resized from 64x48 to the dataset's 32x24",
                              "wrist_image resized from 64x48 to the dataset's 32x24"]
    assert notes["b_small"] == notes["c_small"] == []
    episodes = load_episodes(tmp_path / "ds")
    table = pq.read_table(data_files(tmp_path / "ds"), columns=["episode_index", BASE_IMAGE_KEY])
    first_big = table[BASE_IMAGE_KEY][0].as_py()
    image = decode_cell(tmp_path / "ds", first_big)
    assert image.shape == (24, 32, 3) and episodes[0]["source_bag"] == "a_big"
    from PIL import Image

    expected = np.asarray(Image.fromarray(image_at(0, 0, 48, 64)).resize((32, 24), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(image, expected)


def test_image_size_option_sets_the_dataset_size(tmp_path, make_bag, capsys):
    make_bag("a_small", height=24, width=32)
    make_bag("b_big", height=48, width=64)
    rc = cli_main(["dataset", "build", "--bags", str(tmp_path / "bags"), "--out", str(tmp_path / "ds"),
                   "--image-size", "64x48", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["episodes"] == 2 and result["image_size"] == "64x48"
    assert [b["notes"] for b in result["bags"]] == [
        ["base_image resized from 32x24 to the dataset's 64x48", "wrist_image resized from 32x24 to the dataset's 64x48"],
        []]
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_image_size("64by48")


# ----------------------------------------------------------------------------- mono
def write_mono_bag(path: Path, frames: int = 11) -> Path:
    typestore = get_typestore()
    types = typestore.types
    with EpisodeBagWriter(path) as bag:
        bag.write_string(itf.INSTRUCTION_TOPIC, T0, "touch the cube")
        for i in range(frames):
            stamp = T0 + i * SEC // 10
            gray = np.full((24, 32), 10 * i, np.uint8)
            msg = types["sensor_msgs/msg/Image"](
                header=bag._header(stamp, "cam"), height=24, width=32, encoding="mono8", is_bigendian=0, step=32,
                data=gray.reshape(-1))
            bag.write_serialized(itf.BASE_IMAGE_TOPIC, "sensor_msgs/msg/Image", stamp,
                                 typestore.serialize_cdr(msg, "sensor_msgs/msg/Image"))
            bag.write_image(itf.WRIST_IMAGE_TOPIC, stamp, image_at(1, i, 24, 32))
            bag.write_joint_state(itf.FOLLOWER_STATE_TOPIC, stamp, state_at(i / 10))
            bag.write_joint_state(itf.LEADER_COMMAND_TOPIC, stamp, state_at(i / 10))
            bag.write_gaze_box(stamp, [0.1, 0.1, 0.5, 0.5])
        bag.finish({"success": True})
    return path


def test_mono_cameras_are_refused_unless_allowed(tmp_path, make_bag, capsys):
    make_bag("a_colour")
    write_mono_bag(tmp_path / "bags" / "b_mono")
    rc = cli_main(["dataset", "build", "--bags", str(tmp_path / "bags"), "--out", str(tmp_path / "ds"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["episodes"] == 1
    mono = {b["bag"]: b for b in result["bags"]}["b_mono"]
    assert mono["outcome"] == "failed" and "base_image is mono8" in mono["reason"] and "--allow-mono" in mono["reason"]

    rc = cli_main(["dataset", "build", "--bags", str(tmp_path / "bags"), "--out", str(tmp_path / "mono_ok"),
                   "--allow-mono", "--image-format", "png", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["episodes"] == 2
    mono = {b["bag"]: b for b in result["bags"]}["b_mono"]
    assert mono["outcome"] == "converted" and mono["notes"] == ["base_image is mono8: copied to 3 channels (--allow-mono)"]


def test_every_bag_is_listed_with_its_outcome(tmp_path, make_bag, capsys):
    make_bag("a_ok")
    make_bag("b_unsuccessful", success=False)
    make_bag("c_no_leader", write_leader=False)
    rc = cli_main(["dataset", "build", "--bags", str(tmp_path / "bags"), "--out", str(tmp_path / "ds"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert [(b["bag"], b["outcome"]) for b in result["bags"]] == [
        ("a_ok", "converted"), ("b_unsuccessful", "skipped_unsuccessful"), ("c_no_leader", "failed")]
    assert result["bags"][0]["frames"] == 21 and result["bags"][0]["dropped_frames"] == 0
