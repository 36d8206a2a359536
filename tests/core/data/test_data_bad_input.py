"""Corrupt, truncated and incomplete bags; interrupted builds never leave a complete-looking dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reconvla_core.cli.main import main as cli_main
from reconvla_core.data.bag_reader import BagError, MissingTopicError, read_episode
from reconvla_core.data.build import BuildConfig, build_dataset
from reconvla_core.data.lerobot_v3 import is_dataset

pytestmark = pytest.mark.unit


def _truncate(path: Path, pattern: str) -> None:
    (storage,) = path.glob(pattern)
    size = storage.stat().st_size
    with open(storage, "r+b") as handle:
        handle.truncate(size // 2)


@pytest.fixture
def mixed_bags(tmp_path, make_bag):
    make_bag("a_good", episode=0)
    _truncate(make_bag("b_truncated_mcap", episode=1), "*.mcap")
    make_bag("c_no_leader", episode=2, write_leader=False)
    _truncate(make_bag("d_truncated_sqlite", episode=3, storage="sqlite3"), "*.db3")
    garbage = make_bag("e_garbage", episode=4)
    (mcap,) = garbage.glob("*.mcap")
    mcap.write_bytes(os.urandom(4096))
    make_bag("f_good", episode=5)
    return tmp_path / "bags"


def test_bad_bags_are_named_and_skipped(tmp_path, mixed_bags):
    report = build_dataset(BuildConfig(bags=[mixed_bags], out=tmp_path / "ds"))
    assert report.episodes == 2 and report.bags_found == 6
    failed = {f["bag"]: f["reason"] for f in report.failed}
    assert set(failed) == {"b_truncated_mcap", "c_no_leader", "d_truncated_sqlite", "e_garbage"}
    assert "/master/joint_states" in failed["c_no_leader"] and "leader_command" in failed["c_no_leader"]
    assert is_dataset(tmp_path / "ds")
    saved = json.loads((tmp_path / "ds/meta/reconvla_build.json").read_text())
    assert {f["bag"] for f in saved["failed"]} == set(failed)


def test_strict_fails_the_build_and_writes_nothing(tmp_path, mixed_bags):
    with pytest.raises(BagError, match="b_truncated_mcap"):
        build_dataset(BuildConfig(bags=[mixed_bags], out=tmp_path / "ds", strict=True))
    assert not (tmp_path / "ds").exists()
    assert not list(tmp_path.glob(".ds.partial-*"))  # the staging area is cleaned up


def test_a_corrupt_mcap_record_is_named_not_skipped(tmp_path, make_bag):
    """A damaged message record in an otherwise whole MCAP: a BagError naming the byte, never the
    record after it read in its place."""
    from reconvla_core import interfaces as itf
    from reconvla_core.data.bag_storage import McapStorage

    path = make_bag("damaged")
    storage = McapStorage.open(path)
    assert storage is not None
    offset = int(storage._topic_index(itf.BASE_IMAGE_TOPIC)[1][3])  # the fourth base image's record
    (mcap,) = path.glob("*.mcap")
    with open(mcap, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\x00")
    episode = read_episode(path)  # pass 1 reads only the first image
    with pytest.raises(BagError, match=f"damaged: no MCAP message record at byte {offset}"):
        list(episode.iter_frames())


def test_missing_topic_is_named(tmp_path, make_bag):
    path = make_bag("no_gaze", gaze=False)
    with pytest.raises(MissingTopicError, match="/reconvla/gaze_box") as error:
        from reconvla_core.data.bag_reader import AlignConfig

        read_episode(path, align=AlignConfig(require_gaze=True))
    assert error.value.role == "gaze_box"
    # --gaze sim needs the topic; --gaze boxes does not.
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"no_gaze": [0.2, 0.3, 0.4, 0.5]}))
    with pytest.raises(ValueError, match="no_gaze: missing topic /reconvla/gaze_box"):
        build_dataset(BuildConfig(bags=[path], out=tmp_path / "sim_ds", gaze="sim"))
    report = build_dataset(BuildConfig(bags=[path], out=tmp_path / "box_ds", gaze="boxes", gaze_boxes_file=boxes))
    assert report.episodes == 1 and report.gaze_fallbacks == 0


def test_cli_reports_bad_bags_in_json(tmp_path, mixed_bags, capsys):
    rc = cli_main(["dataset", "build", "--bags", str(mixed_bags), "--out", str(tmp_path / "ds"), "--gaze", "sim",
                   "--json"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("\n") == 1
    result = json.loads(out)
    assert {key: result[key] for key in ("episodes", "frames", "gaze_fallbacks", "dropped_frames", "fps")} == {
        "episodes": 2, "frames": 42, "gaze_fallbacks": 0, "dropped_frames": 0, "fps": 10.0}
    assert len(result["failed"]) == 4
    rc = cli_main(["dataset", "build", "--bags", str(mixed_bags), "--out", str(tmp_path / "strict"), "--strict"])
    assert rc == 2 and "b_truncated_mcap" in capsys.readouterr().err
    rc = cli_main(["dataset", "info", str(tmp_path / "ds"), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert rc == 0 and (info["episodes"], info["frames"], info["codebase_version"]) == (2, 42, "v3.0")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_build_leaves_no_complete_looking_dataset(tmp_path, make_bag, sig):
    episodes = 8
    for episode in range(episodes):
        make_bag(f"ep{episode}", seconds=3.0, height=120, width=160, episode=episode)
    out = tmp_path / "ds"
    command = [sys.executable, "-m", "reconvla_core.cli.main", "dataset", "build", "--bags", str(tmp_path / "bags"),
               "--out", str(out), "--workers", "1", "--image-format", "png"]
    # A shell starts background jobs with SIGINT ignored, and children inherit that (Python then
    # rightly keeps ignoring it): give the build the default disposition, as a terminal would.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".ds.partial-*/data")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, "build finished before it could be interrupted"
    process.send_signal(sig)
    process.communicate(timeout=60)
    assert not out.exists()
    if sig == signal.SIGINT:
        assert process.returncode == 130
        assert not list(tmp_path.glob(".ds.partial-*"))  # cleaned up on Ctrl-C
    # A later build succeeds and the result is complete.
    report = build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=out))
    assert report.episodes == episodes and is_dataset(out)


def test_image_size_change_is_resized_with_a_note(tmp_path, make_bag):
    make_bag("a_first", height=24, width=32)
    make_bag("b_bigger", height=48, width=64)
    report = build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds"))
    assert report.episodes == 2 and report.failed == [] and report.image_size == "32x24"  # a tie: the first
    notes = {entry["bag"]: entry["notes"] for entry in report.bags}
    assert notes == {"a_first": [], "b_bigger": ["base_image resized from 64x48 to the dataset's 32x24",
                                                 "wrist_image resized from 64x48 to the dataset's 32x24"]}


def test_topic_names_are_configurable(tmp_path, make_bag, capsys):
    from reconvla_core import interfaces as itf
    from reconvla_core.data.bag_writer import EpisodeBagWriter

    path = tmp_path / "bags" / "old_realsense"
    with EpisodeBagWriter(path) as bag:  # realsense2_camera <= 4.54 names the topic /camera/color/image_raw
        for i in range(5):
            stamp = 1_000_000_000 + i * 100_000_000
            bag.write_image("/camera/color/image_raw", stamp, np.full((4, 6, 3), i, dtype=np.uint8))
            bag.write_image(itf.WRIST_IMAGE_TOPIC, stamp, np.full((4, 6, 3), 10 + i, dtype=np.uint8))
            bag.write_joint_state("/puppet/joint_states", stamp, np.full(7, 0.1 * i))
            bag.write_joint_state(itf.LEADER_COMMAND_TOPIC, stamp, np.full(7, 0.2 * i))
        bag.finish({"success": True, "instruction": "touch the cube"})
    rc = cli_main(["dataset", "build", "--bags", str(path), "--out", str(tmp_path / "bad"), "--gaze", "sim", "--json"])
    assert rc == 2 and "/camera/camera/color/image_raw (base_image)" in capsys.readouterr().err
    rc = cli_main(["dataset", "build", "--bags", str(path), "--out", str(tmp_path / "ds"), "--gaze", "boxes",
                   str(tmp_path / "none.json"), "--json"])
    assert rc == 2 and "none.json" in capsys.readouterr().err  # the boxes file must exist
    (tmp_path / "boxes.json").write_text("{}")
    rc = cli_main(["dataset", "build", "--bags", str(path), "--out", str(tmp_path / "ds"), "--gaze", "boxes",
                   str(tmp_path / "boxes.json"), "--topic", "base_image=/camera/color/image_raw",
                   "--topic", "follower_state=/puppet/joint_states", "--image-format", "png", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and (result["episodes"], result["frames"], result["gaze_fallbacks"]) == (1, 5, 5)
    from reconvla_core.data.dataset import VLADataset

    sample = VLADataset([tmp_path / "ds"], val_fraction=0.0)[2]
    assert sample["base_image"].max() == 2 and sample["wrist_image"].min() == 12
    np.testing.assert_allclose(sample["state"], np.full(7, 0.2), atol=1e-6)
    assert sample["instruction"] == "touch the cube"
