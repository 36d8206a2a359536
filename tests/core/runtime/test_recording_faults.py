"""Write errors while recording (a full disk): the episode ends cleanly, nothing written before is lost.

The fault is injected at the narrowest seam, the bag's file object: writes fail with ENOSPC
once a byte budget is used up, after writing the part that still fits (as a filling disk does).
Everything else is real: EpisodeBagWriter, rosbags, the MCAP file, ``bag recover``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reconvla_core.data.bag_writer import EpisodeBagWriter, get_typestore
from reconvla_core.data.recover import needs_recovery, recover_bag
from reconvla_core.interfaces import BASE_IMAGE_TOPIC, EPISODE_INFO_TOPIC, FOLLOWER_STATE_TOPIC
from reconvla_core.runtime.recording import RecorderState, RecordingError, RecordingSession

pytestmark = pytest.mark.unit

IMAGE = "sensor_msgs/msg/Image"
JOINTS = "sensor_msgs/msg/JointState"
SEC = 1_000_000_000
T0 = 1_764_000_000 * SEC


class Disk:
    """Free bytes left; ``refill`` models space freed right after the fault (a transient error)."""

    def __init__(self, free: int, refill: bool = False) -> None:
        self.free = free
        self.refill = refill
        self.faults = 0


class FillingFile:
    """A bag's file object on a disk that fills up: the write that does not fit is cut, then ENOSPC."""

    def __init__(self, real: Any, disk: Disk) -> None:
        self._real, self._disk = real, disk

    def write(self, data: bytes | memoryview) -> int:
        size = len(data)
        if size > self._disk.free:
            fits = max(0, self._disk.free)
            if fits:
                self._real.write(bytes(memoryview(data)[:fits]))
            self._disk.free -= fits
            self._disk.faults += 1
            if self._disk.refill:
                self._disk.free = 1 << 40
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.free -= size
        return self._real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class BagOnFillingDisk(EpisodeBagWriter):
    def __init__(self, path: Path, disk: Disk) -> None:
        super().__init__(path)
        self.disk = disk

    def open(self) -> BagOnFillingDisk:
        super().open()  # also called before each write: wrap the file once
        storage = self._writer.storage
        if storage.bio is not None and not isinstance(storage.bio, FillingFile):
            storage.bio = FillingFile(storage.bio, self.disk)
        return self

    def _open_storage_file(self, path: Path) -> Any:
        return FillingFile(super()._open_storage_file(path), self.disk)


def image_cdr(index: int, side: int = 160) -> bytes:
    """A distinct ~77 kB rgb8 image message (a few per 1 MiB MCAP chunk)."""
    types = get_typestore().types
    pixels = np.full((side, side, 3), index % 256, np.uint8)
    pixels[0, :4, 0] = np.frombuffer(int(index).to_bytes(4, "little"), np.uint8)
    msg = types[IMAGE](
        header=types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=index, nanosec=0),
                                            frame_id="cam"),
        height=side, width=side, encoding="rgb8", is_bigendian=0, step=side * 3, data=pixels.reshape(-1),
    )
    return bytes(get_typestore().serialize_cdr(msg, IMAGE))


def read_messages(bag: Path) -> tuple[list[tuple[str, int, bytes]], dict[str, Any]]:
    import json

    from rosbags.rosbag2 import Reader

    messages, info = [], {}
    with Reader(bag) as reader:
        for connection, stamp, raw in reader.messages():
            if connection.topic == EPISODE_INFO_TOPIC:
                info = json.loads(get_typestore().deserialize_cdr(raw, "std_msgs/msg/String").data)
            else:
                messages.append((connection.topic, stamp, bytes(raw)))
    return messages, info


def make_session(tmp_path: Path, disk: Disk, faults: list[tuple[Any, str]]) -> RecordingSession:
    clock = iter(range(T0, T0 + 10**6 * SEC, SEC // 100))
    return RecordingSession(
        tmp_path / "episodes",
        min_free_gb=0.5,
        writer_factory=lambda path: BagOnFillingDisk(path, disk),
        clock_ns=lambda: next(clock),
        free_space=lambda _path: disk.free / 1024**3,
        on_fault=lambda result, message: faults.append((result, message)),
    )


def record_until_fault(session: RecordingSession, count: int) -> tuple[list[tuple[str, int, bytes]], int]:
    """Record images until a write fails; returns what was handed over and the index of the failed one."""
    sent = []
    for index in range(count):
        message = (BASE_IMAGE_TOPIC, T0 + (index + 1) * SEC // 10, image_cdr(index))
        sent.append(message)
        if not session.record(message[0], IMAGE, message[1], message[2]):
            return sent, index
    raise AssertionError("the disk never filled up")


def test_transient_write_error_ends_the_episode_with_everything_written(tmp_path):
    disk = Disk(free=3 << 30)
    faults: list[tuple[Any, str]] = []
    session = make_session(tmp_path, disk, faults)
    bag = session.start("pick the red block")
    disk.free, disk.refill = 2_500_000, True  # the disk fills mid-episode, then space comes back
    sent, failed_at = record_until_fault(session, 200)

    # The episode ended at once, cleanly, and the fault was reported once.
    assert session.state is RecorderState.IDLE and disk.faults == 1
    assert len(faults) == 1 and "No space left on device" in faults[0][1] and str(bag) in faults[0][1]
    result = faults[0][0]
    assert result.error and "No space left" in result.error and session.last_result == result
    # Messages arriving now are not written anywhere (no closed writer is touched, nothing raises).
    assert session.record(BASE_IMAGE_TOPIC, IMAGE, T0 + 999 * SEC, image_cdr(999)) is False
    assert session.record(FOLLOWER_STATE_TOPIC, JOINTS, T0 + 999 * SEC, b"\x00\x01\x00\x00") is False
    with pytest.raises(RecordingError, match="No space left on device"):
        session.stop(success=True)

    # The bag is whole: every message handed over up to and including the failing one, unchanged.
    assert not needs_recovery(bag)
    messages, info = read_messages(bag)
    assert messages == sent[: failed_at + 1] and len(messages) > 10
    assert result.message_counts == {BASE_IMAGE_TOPIC: failed_at + 1, EPISODE_INFO_TOPIC: 1}
    assert info["success"] is False and info["interrupted"] is True and "No space left" in info["error"]
    assert info["task"] == "pick the red block"

    # The session serves the next episode.
    second = session.start("pick the red block")
    assert session.record(BASE_IMAGE_TOPIC, IMAGE, T0 + 1000 * SEC, image_cdr(1000))
    assert session.stop(success=True).success and second != bag
    assert read_messages(second)[0] == [(BASE_IMAGE_TOPIC, T0 + 1000 * SEC, image_cdr(1000))]
    assert session.last_error == ""


def test_full_disk_leaves_a_bag_recoverable_up_to_its_last_whole_chunk(tmp_path):
    disk = Disk(free=3 << 30)
    faults: list[tuple[Any, str]] = []
    session = make_session(tmp_path, disk, faults)
    bag = session.start("stack the cubes")
    disk.free = 2_500_000  # and it stays full
    sent, failed_at = record_until_fault(session, 200)

    assert session.state is RecorderState.IDLE
    assert len(faults) == 1 and "bag recover" in faults[0][1]
    assert faults[0][0].info["interrupted"] is True and faults[0][0].info["success"] is False
    # start() is refused while the disk is full, with the reason; nothing is left half-open.
    with pytest.raises(RecordingError, match="GiB free"):
        session.start("stack the cubes")

    # What is on disk ends on whole records; recover brings back every message of the whole chunks.
    assert needs_recovery(bag) and not (bag / "metadata.yaml").exists()
    report = recover_bag(bag)
    messages, info = read_messages(bag)
    assert report.messages == len(messages) > 0 and report.stopped_at
    assert messages == sent[: len(messages)]  # a prefix: nothing before the cut is lost or changed
    # Only the chunk that could not be written (<= 1 MiB, ~13 of these images) is missing.
    assert failed_at + 1 - len(messages) <= 14
    assert info["interrupted"] is True and info["recovered"] is True and info["success"] is False

    # Space is freed: the same session records the next episode.
    disk.free = 1 << 40
    session.start("stack the cubes")
    assert session.record(BASE_IMAGE_TOPIC, IMAGE, T0 + 1000 * SEC, image_cdr(1000))
    assert session.stop(success=True).success


def test_bag_writer_rewinds_a_partial_chunk_and_keeps_the_rest(tmp_path):
    """The writer alone: a partial chunk write is cut off the file, then the retry writes it whole."""
    disk = Disk(free=1_200_000, refill=True)
    writer = BagOnFillingDisk(tmp_path / "bag", disk)
    writer.open()
    written = []
    with pytest.raises(OSError) as error:
        for index in range(100):
            written.append((BASE_IMAGE_TOPIC, T0 + index, image_cdr(index)))
            writer.write_serialized(BASE_IMAGE_TOPIC, IMAGE, T0 + index, written[-1][2])
    assert error.value.errno == errno.ENOSPC and writer.fault
    with pytest.raises(OSError, match="no more messages"):
        writer.write_serialized(BASE_IMAGE_TOPIC, IMAGE, T0 + 1000, image_cdr(1000))
    info = writer.finish({"success": True})
    assert info["success"] is False and info["interrupted"] is True
    assert read_messages(tmp_path / "bag")[0] == written
