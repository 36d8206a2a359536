"""EpisodeBagWriter writes real rosbag2 directories that rosbags reads back unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from reconvla_core import interfaces as itf
from reconvla_core.data.bag_writer import (
    EPISODE_INFO_CUSTOM_KEY,
    EpisodeBagWriter,
    get_typestore,
)
from reconvla_core.piper import ACTION_NAMES

pytestmark = pytest.mark.unit


def _read_all(path):
    ts = get_typestore()
    out: dict[str, list] = {}
    with Reader(path) as reader:
        custom = reader.storage.metadata.custom
        storage_id = reader.storage.__class__.__name__
        for conn, stamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append((stamp, conn.msgtype, ts.deserialize_cdr(raw, conn.msgtype)))
    return out, custom, storage_id


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_all_message_kinds(tmp_path, storage):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    state = np.array([0.1, 0.2, -0.3, 0.4, -0.5, 0.6, 0.035])
    ts = get_typestore()
    raw_instruction = ts.serialize_cdr(ts.types["std_msgs/msg/String"](data="pick the red block"), "std_msgs/msg/String")
    path = tmp_path / "ep"
    with EpisodeBagWriter(path, storage=storage) as bag:
        bag.write_serialized(itf.INSTRUCTION_TOPIC, "std_msgs/String", 1_000, raw_instruction)
        bag.write_image(itf.BASE_IMAGE_TOPIC, 1_500_000_001, rgb)
        bag.write_joint_state(itf.FOLLOWER_STATE_TOPIC, 1_500_000_002, state, velocity=np.ones(7))
        bag.write_gaze_box(1_500_000_003, [0.1, 0.2, 0.5, 0.6], valid=False)
        info = bag.finish({"success": True, "operator": "alice"})
    assert info["task"] == "pick the red block" and info["success"] is True and info["operator"] == "alice"
    assert set(itf.EPISODE_INFO_KEYS) <= set(info)

    msgs, custom, _ = _read_all(path)
    (stamp, msgtype, image), = msgs[itf.BASE_IMAGE_TOPIC]
    assert stamp == 1_500_000_001 and msgtype == "sensor_msgs/msg/Image"
    assert (image.header.stamp.sec, image.header.stamp.nanosec) == (1, 500_000_001)
    assert image.encoding == "rgb8" and image.step == 24
    np.testing.assert_array_equal(image.data.reshape(6, 8, 3), rgb)
    (_, _, joint), = msgs[itf.FOLLOWER_STATE_TOPIC]
    assert list(joint.name) == list(ACTION_NAMES)
    np.testing.assert_allclose(joint.position, state)
    (_, _, gaze), = msgs[itf.GAZE_BOX_TOPIC]
    np.testing.assert_allclose(gaze.data, [0.1, 0.2, 0.5, 0.6, 0.0], rtol=1e-6)
    (_, _, instr), = msgs[itf.INSTRUCTION_TOPIC]
    assert instr.data == "pick the red block"
    (info_stamp, _, info_msg), = msgs[itf.EPISODE_INFO_TOPIC]
    assert info_stamp == 1_500_000_003
    assert json.loads(info_msg.data) == info
    assert json.loads(custom[EPISODE_INFO_CUSTOM_KEY]) == info


def test_exception_still_leaves_a_readable_failed_episode(tmp_path):
    path = tmp_path / "ep"
    with pytest.raises(RuntimeError, match="operator pressed stop"):
        with EpisodeBagWriter(path) as bag:
            bag.write_string(itf.INSTRUCTION_TOPIC, 5, "stack the cubes")
            bag.write_joint_state(itf.LEADER_COMMAND_TOPIC, 10, np.zeros(7))
            raise RuntimeError("operator pressed stop")
    msgs, custom, _ = _read_all(path)
    info = json.loads(msgs[itf.EPISODE_INFO_TOPIC][0][2].data)
    assert info["success"] is False and info["aborted"] is True and "operator pressed stop" in info["error"]
    assert info["instruction"] == "stack the cubes"
    assert len(msgs[itf.LEADER_COMMAND_TOPIC]) == 1


def test_refuses_existing_dir_and_bad_input(tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError):
        EpisodeBagWriter(tmp_path / "exists").open()
    with EpisodeBagWriter(tmp_path / "ep") as bag:
        with pytest.raises(ValueError, match="HxWx3 uint8"):
            bag.write_image(itf.BASE_IMAGE_TOPIC, 0, np.zeros((4, 4), dtype=np.uint8))
        with pytest.raises(ValueError, match="7 positions"):
            bag.write_joint_state(itf.FOLLOWER_STATE_TOPIC, 0, np.zeros(6))
        with pytest.raises(ValueError, match="unknown"):
            bag.write_serialized("/x", "nope_msgs/msg/Nope", 0, b"\x00")
        bag.finish({"success": True})
    with pytest.raises(RuntimeError, match="closed"):
        bag.write_string("/x", 1, "late")
    # Leaving the block without finish() and without an exception: a readable, failed episode.
    with EpisodeBagWriter(tmp_path / "unfinished") as _:
        pass
    msgs, _, _ = _read_all(tmp_path / "unfinished")
    assert json.loads(msgs[itf.EPISODE_INFO_TOPIC][0][2].data)["success"] is False


def test_writer_and_build_import_without_torch():
    import subprocess
    import sys

    code = ("import sys; import reconvla_core.data.bag_writer, reconvla_core.data.build, reconvla_core.data.cli; "
            "sys.exit(int('torch' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
