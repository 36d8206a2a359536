"""Recording session logic (no ROS): topic specs, naming, disk checks, the state machine, real bags."""

from __future__ import annotations

import datetime as _dt
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reconvla_core.interfaces import (
    BASE_IMAGE_TOPIC,
    EPISODE_INFO_TOPIC,
    FOLLOWER_STATE_TOPIC,
    INSTRUCTION_TOPIC,
)
from reconvla_core.runtime.record_topics import (
    DEFAULT_RECORD_TOPICS,
    TopicSpec,
    adapt_qos,
    parse_topic_spec,
    parse_topic_specs,
)
from reconvla_core.runtime.recording import (
    InsufficientDiskSpaceError,
    RecorderState,
    RecordingError,
    RecordingSession,
    check_free_space,
    episode_dir_name,
    episode_index_of,
    free_space_gb,
    next_episode_index,
    slugify,
)

pytestmark = pytest.mark.unit

T0 = int(_dt.datetime(2026, 11, 25, 18, 15, 0, tzinfo=_dt.timezone.utc).timestamp() * 1e9)


class FakeClock:
    def __init__(self, start: int = T0) -> None:
        self.now = start

    def __call__(self) -> int:
        self.now += 10_000_000  # 10 ms per reading
        return self.now


class FakeWriter:
    """Records exactly what the session asks of a bag writer."""

    instances: list[FakeWriter] = []

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls: list[tuple] = []
        self.message_counts: dict[str, int] = {}
        FakeWriter.instances.append(self)

    def open(self) -> FakeWriter:
        self.path.mkdir(parents=True)
        self.calls.append(("open",))
        return self

    def write_serialized(self, topic: str, msgtype: str, stamp_ns: int, cdr_bytes: bytes) -> None:
        self.calls.append(("write", topic, msgtype, stamp_ns, bytes(cdr_bytes)))
        self.message_counts[topic] = self.message_counts.get(topic, 0) + 1

    def finish(self, info: dict[str, Any] | None = None) -> dict[str, Any]:
        self.calls.append(("finish", dict(info or {})))
        return dict(info or {})

    def abort(self, reason: str = "aborted") -> None:
        self.calls.append(("abort", reason))


def make_session(tmp_path: Path, free_gb: float = 100.0, **kwargs: Any) -> RecordingSession:
    FakeWriter.instances.clear()
    return RecordingSession(
        tmp_path / "episodes",
        writer_factory=FakeWriter,
        clock_ns=FakeClock(),
        free_space=lambda _path: free_gb,
        **kwargs,
    )


# ------------------------------------------------------------------ plain functions
def test_topic_specs_use_known_types_and_explicit_types():
    assert parse_topic_spec(BASE_IMAGE_TOPIC) == TopicSpec(BASE_IMAGE_TOPIC, "sensor_msgs/msg/Image")
    assert parse_topic_spec("/tf:tf2_msgs/TFMessage") == TopicSpec("/tf", "tf2_msgs/msg/TFMessage")
    assert parse_topic_spec(" /odom ") == TopicSpec("/odom", None)  # resolved from the graph later
    specs = parse_topic_specs(DEFAULT_RECORD_TOPICS)
    assert all(spec.msgtype for spec in specs)
    assert [s.name for s in specs] == list(DEFAULT_RECORD_TOPICS)


@pytest.mark.parametrize("bad", ["", "relative/topic", "/x:not-a-type", "/x:a/b/c/d", "/x:pkg/srv/T"])
def test_bad_topic_specs_raise(bad):
    with pytest.raises(ValueError):
        parse_topic_spec(bad)


def test_duplicate_or_empty_topic_lists_raise():
    with pytest.raises(ValueError, match="twice"):
        parse_topic_specs(["/a", "/a:std_msgs/String"])
    with pytest.raises(ValueError, match="empty"):
        parse_topic_specs([])


def test_qos_adapts_to_the_publishers_like_ros2_bag():
    assert adapt_qos([("reliable", "volatile")]) == ("reliable", "volatile")
    assert adapt_qos([("reliable", "volatile"), ("best_effort", "volatile")]) == ("best_effort", "volatile")
    assert adapt_qos([("reliable", "transient_local")], latched=True) == ("reliable", "transient_local")
    assert adapt_qos([("reliable", "transient_local")], latched=False) == ("reliable", "volatile")
    mixed = [("reliable", "transient_local"), ("reliable", "volatile")]
    assert adapt_qos(mixed, latched=True) == ("reliable", "volatile")  # a volatile publisher must match too
    with pytest.raises(ValueError):
        adapt_qos([])


def test_episode_names_are_sortable_and_parse_back(tmp_path):
    name = episode_dir_name(12, T0, "Pick up the RED block!")
    assert name == "episode_000012_20261125-181500_pick-up-the-red-block"
    assert episode_dir_name(3, T0) == "episode_000003_20261125-181500"
    assert episode_index_of(name) == 12
    assert episode_index_of("notes.txt") is None
    assert slugify("  ---  ") == ""
    assert len(slugify("word " * 50)) <= 40
    with pytest.raises(ValueError):
        episode_dir_name(-1, T0)


def test_next_episode_index_continues_after_the_highest(tmp_path):
    assert next_episode_index(tmp_path / "missing") == 0
    for name in ("episode_000000_x", "episode_000007_y", "other", "episode_bad"):
        (tmp_path / name).mkdir()
    assert next_episode_index(tmp_path) == 8


def test_disk_checks(tmp_path):
    assert free_space_gb(tmp_path / "not" / "yet" / "there") > 0  # probes the nearest existing parent
    assert check_free_space(tmp_path, 1.0, usage=lambda _p: 5.0) == 5.0
    with pytest.raises(InsufficientDiskSpaceError, match="min_free_gb"):
        check_free_space(tmp_path, 10.0, usage=lambda _p: 5.0)


# ------------------------------------------------------------------ state machine
def test_start_record_stop_writes_one_episode_with_metadata(tmp_path):
    session = make_session(tmp_path, operator="alice")
    assert session.record(BASE_IMAGE_TOPIC, "sensor_msgs/msg/Image", T0, b"ignored") is False  # idle
    path = session.start("pick the red block")
    assert session.state is RecorderState.RECORDING and path.is_dir()
    assert path.name.startswith("episode_000000_") and path.name.endswith("pick-the-red-block")
    assert session.record(BASE_IMAGE_TOPIC, "sensor_msgs/msg/Image", T0 + 10**9, b"img")
    assert session.record(FOLLOWER_STATE_TOPIC, "sensor_msgs/msg/JointState", T0 + 10**9, b"js")
    result = session.stop(success=True, note="clean grasp")
    assert session.state is RecorderState.IDLE
    writer = FakeWriter.instances[0]
    kinds = [call[0] for call in writer.calls]
    assert kinds == ["open", "write", "write", "finish"]
    info = writer.calls[-1][1]
    assert info["task"] == info["instruction"] == "pick the red block"
    assert info["success"] is True and info["operator"] == "alice" and info["note"] == "clean grasp"
    assert info["software_version"].startswith("reconvla_core ")
    assert info["start_time"] < info["stop_time"]
    assert result.success and not result.discarded and result.num_messages == 2
    # The next episode gets the next index.
    assert session.start("again").name.startswith("episode_000001_")


def test_invalid_transitions_raise(tmp_path):
    session = make_session(tmp_path)
    with pytest.raises(RecordingError, match="no episode"):
        session.stop(success=True)
    with pytest.raises(RecordingError, match="nothing to discard"):
        session.discard()
    with pytest.raises(RecordingError, match="task"):
        session.start("   ")
    session.start("t")
    with pytest.raises(RecordingError, match="already"):
        session.start("t2")


def test_start_refuses_when_disk_is_full(tmp_path):
    session = make_session(tmp_path, free_gb=0.5, min_free_gb=2.0)
    with pytest.raises(InsufficientDiskSpaceError):
        session.start("task")
    assert session.state is RecorderState.IDLE
    assert not (tmp_path / "episodes").exists() or not any((tmp_path / "episodes").iterdir())


def test_latched_instruction_is_written_at_episode_start(tmp_path):
    session = make_session(tmp_path)
    session.record(INSTRUCTION_TOPIC, "std_msgs/msg/String", T0 - 5 * 10**9, b"old")
    session.record(INSTRUCTION_TOPIC, "std_msgs/msg/String", T0 - 10**9, b"latest")
    session.start("task")
    writes = [c for c in FakeWriter.instances[0].calls if c[0] == "write"]
    assert len(writes) == 1
    _, topic, _, stamp, raw = writes[0]
    assert (topic, raw) == (INSTRUCTION_TOPIC, b"latest")
    assert stamp >= T0  # stamped at the episode start, not before it


def test_discard_deletes_the_open_or_the_last_episode(tmp_path):
    session = make_session(tmp_path)
    open_path = session.start("first")
    result = session.discard()
    assert result.discarded and not open_path.exists()
    assert ("abort", "discarded by the operator") in FakeWriter.instances[0].calls
    done_path = session.start("second")
    session.stop(success=False)
    assert done_path.exists()
    assert session.discard().path == done_path and not done_path.exists()
    with pytest.raises(RecordingError):
        session.discard()  # only once


def test_close_finishes_an_open_episode_as_interrupted(tmp_path):
    session = make_session(tmp_path)
    session.start("task")
    result = session.close()
    assert result is not None and result.success is False
    assert result.info["interrupted"] is True
    assert session.state is RecorderState.CLOSED
    with pytest.raises(RecordingError, match="closed"):
        session.start("task")
    assert session.close() is None


def test_concurrent_records_and_stop_are_consistent(tmp_path):
    session = make_session(tmp_path)
    session.start("task")
    written: list[int] = []

    def producer(topic: str) -> None:
        count = 0
        for i in range(300):
            count += session.record(topic, "sensor_msgs/msg/JointState", T0 + i, b"x")
        written.append(count)

    threads = [threading.Thread(target=producer, args=(f"/t{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = session.stop(success=True)
    assert result.num_messages == sum(written) == 900


# ------------------------------------------------------------------ with the real bag writer
def test_real_bag_round_trip(tmp_path):
    from rosbags.rosbag2 import Reader

    from reconvla_core.data.bag_writer import get_typestore

    typestore = get_typestore()
    types = typestore.types
    session = RecordingSession(tmp_path, min_free_gb=0.0, operator="bob")
    raw_instruction = typestore.serialize_cdr(
        types["std_msgs/msg/String"](data="stack the blocks"), "std_msgs/msg/String"
    )
    session.record(INSTRUCTION_TOPIC, "std_msgs/msg/String", T0, raw_instruction)
    path = session.start("stack the blocks")
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id=""
    )
    joint = types["sensor_msgs/msg/JointState"](
        header=header, name=["j"] * 7, position=np.full(7, 0.1), velocity=np.zeros(0), effort=np.zeros(0)
    )

    for _ in range(3):
        raw = typestore.serialize_cdr(joint, "sensor_msgs/msg/JointState")
        assert session.record(FOLLOWER_STATE_TOPIC, "sensor_msgs/msg/JointState", time.time_ns(), raw)
    assert not session.record("/bogus", "no_pkg/msg/Nothing", time.time_ns(), b"\x00")  # unknown type
    session.stop(success=True)
    with Reader(path) as reader:
        topics = {c.topic: c.msgcount for c in reader.connections}
        assert topics[FOLLOWER_STATE_TOPIC] == 3
        assert topics[INSTRUCTION_TOPIC] == 1
        info_conn = [c for c in reader.connections if c.topic == EPISODE_INFO_TOPIC]
        ((_, _, raw_info),) = list(reader.messages(connections=info_conn))
    info = json.loads(typestore.deserialize_cdr(raw_info, "std_msgs/msg/String").data)
    assert info["task"] == "stack the blocks" and info["success"] is True and info["operator"] == "bob"
