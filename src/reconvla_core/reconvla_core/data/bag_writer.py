"""Write one episode as a rosbag2 directory (MCAP by default) with ``rosbags``.

The simulator's collector and the teleop recorder both write through this class, so
the bag reader sees one layout (topics and types from ``reconvla_core.interfaces``).
The output is a normal rosbag2 directory: ``ros2 bag info`` / ``ros2 bag play`` read it.

Pure Python (no rclpy, no torch): the recorder hands raw CDR bytes from its rclpy
subscriptions to :meth:`EpisodeBagWriter.write_serialized`; everything else is
serialised here with the ROS 2 Jazzy typestore.

Why ~450 lines in one module: it is one class and the fault handling of its writes (on a full
disk the MCAP file is cut back to its last whole chunk and reopened there, so the episode still
closes; a failed close releases the file cut at that point for ``reconvla bag recover``). Those
paths only make sense next to the writes they protect (tests/core/runtime/test_recording_faults.py).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from reconvla_core import __version__
from reconvla_core.interfaces import (
    EPISODE_INFO_KEYS,
    EPISODE_INFO_TOPIC,
    GAZE_BOX_TOPIC,
    INSTRUCTION_TOPIC,
)
from reconvla_core.piper import ACTION_DIM, ACTION_NAMES

logger = logging.getLogger(__name__)

# Key under metadata.yaml custom_data that mirrors the episode-info JSON.
EPISODE_INFO_CUSTOM_KEY = "reconvla.episode_info"
STORAGE_CHOICES = ("mcap", "sqlite3")

IMAGE_TYPE = "sensor_msgs/msg/Image"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
STRING_TYPE = "std_msgs/msg/String"
FLOAT32_ARRAY_TYPE = "std_msgs/msg/Float32MultiArray"
BOOL_TYPE = "std_msgs/msg/Bool"


@functools.lru_cache(maxsize=1)
def get_typestore() -> Any:
    """The typestore every bag of ours is written and read with (ROS 2 Jazzy message definitions)."""
    from rosbags.typesys import Stores
    from rosbags.typesys import get_typestore as _get

    return _get(Stores.ROS2_JAZZY)


def normalise_msgtype(msgtype: str) -> str:
    """``sensor_msgs/Image`` or ``sensor_msgs/msg/Image`` -> ``sensor_msgs/msg/Image``."""
    parts = msgtype.strip().strip("/").split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts) or parts[1] != "msg":
        raise ValueError(f"message type {msgtype!r} is not of the form pkg/msg/Type")
    return "/".join(parts)


class BagWriteError(OSError):
    """The storage could not take a message (ENOSPC, EIO, a read-only or vanished disk).

    The bag then takes no further message; :meth:`EpisodeBagWriter.finish` still tries to close it
    with everything written so far (marked interrupted), and leaves it cut at its last complete
    MCAP chunk for ``reconvla bag recover`` when even that fails.
    """


def stamp_to_iso(stamp_ns: int) -> str:
    """Nanoseconds since the epoch -> ISO 8601 UTC string with a trailing Z."""
    moment = _dt.datetime.fromtimestamp(stamp_ns / 1e9, tz=_dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


class EpisodeBagWriter:
    """One episode -> one rosbag2 directory.

    ``out_dir`` must not exist. The constructor does no I/O; the bag is created by
    :meth:`open` (called by ``with`` or by the first write). Always end with
    :meth:`finish`; leaving a ``with`` block without it (an exception, a cancelled
    recording) still closes a readable bag whose episode info says ``success=False``.
    """

    def __init__(self, out_dir: str | Path, *, storage: str = "mcap") -> None:
        if storage not in STORAGE_CHOICES:
            raise ValueError(f"storage must be one of {STORAGE_CHOICES}, got {storage!r}")
        self.path = Path(out_dir)
        self.storage = storage
        self._writer: Any = None
        self._connections: dict[tuple[str, str], Any] = {}
        self._first_stamp: int | None = None
        self._last_stamp: int | None = None
        self._last_instruction: str = ""
        self._finished = False
        self._closed = False
        self.message_counts: dict[str, int] = {}
        # After a storage error: its text; the bag then takes no more messages (see BagWriteError).
        self.fault: str | None = None
        # MCAP: bytes of the file known to be whole records on disk (flushed after every chunk).
        self._good_offset: int | None = None

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> EpisodeBagWriter:
        """Create the bag directory. Raises ``FileExistsError`` if it exists already."""
        if self._writer is not None:
            return self
        if self._closed:
            raise RuntimeError(f"bag {self.path} is already closed")
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists already; bags are never overwritten")
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = Writer(self.path, version=9, storage_plugin=plugin)
        try:
            writer.open()
        except OSError:  # no space for even the header: leave no half-made bag behind
            _remove_empty_bag(self.path)
            raise
        self._writer = writer
        self._good_offset = self._storage_tell()
        logger.debug("opened %s bag %s", self.storage, self.path)
        return self

    def __enter__(self) -> EpisodeBagWriter:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._closed:
            return
        if self._writer is None:  # nothing was ever written: leave no directory behind
            self._closed = True
            return
        reason = f"{exc_type.__name__}: {exc}" if exc_type is not None else "closed without finish()"
        self.abort(reason)

    def abort(self, reason: str = "aborted") -> None:
        """Close the bag with ``success=False`` in its episode info (for cancelled episodes)."""
        if self._closed:
            return
        logger.warning("closing bag %s without finish(): %s", self.path, reason)
        try:
            self.finish({"success": False, "aborted": True, "error": reason})
        except Exception:  # the storage itself may be broken; finish() has released the file
            logger.exception("could not write episode info into %s", self.path)

    @property
    def is_open(self) -> bool:
        return self._writer is not None and not self._closed

    # ------------------------------------------------------------------ writing
    def _connection(self, topic: str, msgtype: str) -> Any:
        if self._closed:
            raise RuntimeError(f"bag {self.path} is closed; open a new EpisodeBagWriter")
        self.open()
        key = (topic, msgtype)
        connection = self._connections.get(key)
        if connection is None:
            typestore = get_typestore()
            if msgtype not in typestore.types:
                raise ValueError(f"message type {msgtype!r} is unknown to the ROS 2 Jazzy typestore")
            connection = self._writer.add_connection(topic, msgtype, typestore=typestore)
            self._connections[key] = connection
        return connection

    def _write(self, topic: str, msgtype: str, stamp_ns: int, raw: bytes | memoryview) -> None:
        stamp_ns = int(stamp_ns)
        if stamp_ns < 0:
            raise ValueError(f"stamp_ns must be >= 0, got {stamp_ns}")
        if self.fault is not None:
            raise BagWriteError(f"bag {self.path} takes no more messages after a write error: {self.fault}")
        connection = self._connection(topic, msgtype)  # opens the bag on first use (FileExistsError)
        try:
            self._writer.write(connection, stamp_ns, raw)
        except (OSError, sqlite3.Error) as error:
            in_pending_chunk = self.storage == "mcap" and self._good_offset is not None
            self._on_storage_error(error)
            if in_pending_chunk and self._storage_file() is not None:  # MCAP buffered it before the flush failed
                self._writer.counts[connection.id] += 1
                self._writer.min_timestamp = min(stamp_ns, self._writer.min_timestamp)
                self._writer.max_timestamp = max(stamp_ns, self._writer.max_timestamp)
                self._count(topic, stamp_ns)
            raise _write_error(error, f"could not write to {self.path}: {error}") from error
        self._count(topic, stamp_ns)
        self._mark_good()

    def _count(self, topic: str, stamp_ns: int) -> None:
        self._first_stamp = stamp_ns if self._first_stamp is None else min(self._first_stamp, stamp_ns)
        self._last_stamp = stamp_ns if self._last_stamp is None else max(self._last_stamp, stamp_ns)
        self.message_counts[topic] = self.message_counts.get(topic, 0) + 1

    # ------------------------------------------------------------------ storage faults
    def _storage_file(self) -> Any:
        storage = getattr(self._writer, "storage", None)
        return getattr(storage, "bio", None) if self.storage == "mcap" else None

    def _storage_tell(self) -> int | None:
        handle = self._storage_file()
        return None if handle is None else handle.tell()

    def _mark_good(self) -> None:
        """After a chunk went out, flush it so the file on disk ends on whole records (the rewind point)."""
        if self.storage != "mcap":
            return
        position = self._storage_tell()
        if position is not None and position != self._good_offset:
            try:
                self._storage_file().flush()
            except OSError as error:
                # rosbags has already filed this chunk in its summary, so there is no clean rewind:
                # the file stays as it is on disk, for ``reconvla bag recover``.
                self._on_storage_error(error, rewind=False)
                raise _write_error(error, f"could not write to {self.path}: {error}") from error
            self._good_offset = position

    def _open_storage_file(self, path: Path) -> Any:
        """Reopen the MCAP file for writing at its end (the seam tests use to inject faults)."""
        return open(path, "r+b")  # noqa: SIM115 - handed to the storage, closed by it

    def _on_storage_error(self, error: BaseException, *, rewind: bool = True) -> None:
        """Take no more messages; for MCAP cut the file back to its last whole chunk and reopen it
        there, so finish() can still write the pending chunk, the summary and metadata.yaml."""
        self.fault = f"{type(error).__name__}: {error}"
        logger.info("write error on bag %s: %s", self.path, self.fault)  # reported by the caller, once
        handle = self._storage_file()
        if handle is None or self._good_offset is None:
            return
        storage = self._writer.storage
        try:
            handle.close()  # may fail flushing what did not fit; the descriptor is closed anyway
        except OSError:
            pass
        if not rewind:
            storage.bio = None
            self._good_offset = None  # nothing to cut back to: leave the file as it is
            return
        try:
            self._truncate_to_good(Path(storage.path))
            reopened = self._open_storage_file(Path(storage.path))
            reopened.seek(self._good_offset)
            storage.bio = reopened
        except OSError as reopen_error:  # the disk is gone: the file stays cut at its last whole chunk
            logger.error("could not reopen %s: %s", storage.path, reopen_error)
            storage.bio = None

    def _truncate_to_good(self, storage_path: Path) -> None:
        if self._good_offset is not None and storage_path.stat().st_size > self._good_offset:
            os.truncate(storage_path, self._good_offset)

    @staticmethod
    def _header(stamp_ns: int, frame_id: str) -> Any:
        types = get_typestore().types
        stamp_ns = int(stamp_ns)
        time = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
        return types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)

    def write_image(
        self, topic: str, stamp_ns: int, rgb: np.ndarray, frame_id: str = "camera_color_optical_frame"
    ) -> None:
        """An HxWx3 uint8 RGB array as sensor_msgs/Image (rgb8), header stamp = ``stamp_ns``."""
        array = np.asarray(rgb)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"image must be HxWx3 uint8 RGB, got {array.dtype} {array.shape}")
        height, width = array.shape[:2]
        typestore = get_typestore()
        msg = typestore.types[IMAGE_TYPE](
            header=self._header(stamp_ns, frame_id),
            height=height,
            width=width,
            encoding="rgb8",
            is_bigendian=0,
            step=width * 3,
            data=np.ascontiguousarray(array).reshape(-1),
        )
        self._write(topic, IMAGE_TYPE, stamp_ns, typestore.serialize_cdr(msg, IMAGE_TYPE))

    def write_joint_state(
        self,
        topic: str,
        stamp_ns: int,
        positions7: Sequence[float] | np.ndarray,
        velocity: Sequence[float] | np.ndarray | None = None,
        *,
        effort: Sequence[float] | np.ndarray | None = None,
        names: Sequence[str] = ACTION_NAMES,
        frame_id: str = "",
    ) -> None:
        """sensor_msgs/JointState: position = 6 joints (rad) + gripper (m), names ACTION_NAMES."""
        position = np.asarray(positions7, dtype=np.float64).reshape(-1)
        if position.shape[0] != len(names):
            raise ValueError(f"joint state needs {len(names)} positions ({ACTION_DIM} by default), got {position.shape[0]}")
        vel = np.zeros(0) if velocity is None else np.asarray(velocity, dtype=np.float64).reshape(-1)
        eff = np.zeros(0) if effort is None else np.asarray(effort, dtype=np.float64).reshape(-1)
        for label, values in (("velocity", vel), ("effort", eff)):
            if values.size not in (0, position.size):
                raise ValueError(f"{label} must be empty or have {position.size} values, got {values.size}")
        typestore = get_typestore()
        msg = typestore.types[JOINT_STATE_TYPE](
            header=self._header(stamp_ns, frame_id),
            name=list(names),
            position=position,
            velocity=vel,
            effort=eff,
        )
        self._write(topic, JOINT_STATE_TYPE, stamp_ns, typestore.serialize_cdr(msg, JOINT_STATE_TYPE))

    def write_string(self, topic: str, stamp_ns: int, text: str) -> None:
        """std_msgs/String (the instruction topic, or any other text)."""
        typestore = get_typestore()
        msg = typestore.types[STRING_TYPE](data=str(text))
        self._write(topic, STRING_TYPE, stamp_ns, typestore.serialize_cdr(msg, STRING_TYPE))
        if topic == INSTRUCTION_TOPIC:
            self._last_instruction = str(text)

    def write_flag(self, topic: str, stamp_ns: int, value: bool) -> None:
        """std_msgs/Bool (the intervention and relabelled flags)."""
        typestore = get_typestore()
        msg = typestore.types[BOOL_TYPE](data=bool(value))
        self._write(topic, BOOL_TYPE, stamp_ns, typestore.serialize_cdr(msg, BOOL_TYPE))

    def write_gaze_box(
        self, stamp_ns: int, box_xyxy: Sequence[float] | np.ndarray, valid: bool = True, topic: str = GAZE_BOX_TOPIC
    ) -> None:
        """std_msgs/Float32MultiArray ``[x1, y1, x2, y2, valid]``, normalised to the base image."""
        box = np.asarray(box_xyxy, dtype=np.float32).reshape(-1)
        if box.shape[0] != 4:
            raise ValueError(f"gaze box must have 4 values (x1, y1, x2, y2), got {box.shape[0]}")
        typestore = get_typestore()
        types = typestore.types
        layout = types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        data = np.concatenate([box, np.asarray([1.0 if valid else 0.0], dtype=np.float32)])
        msg = types[FLOAT32_ARRAY_TYPE](layout=layout, data=data)
        self._write(topic, FLOAT32_ARRAY_TYPE, stamp_ns, typestore.serialize_cdr(msg, FLOAT32_ARRAY_TYPE))

    def write_serialized(self, topic: str, msgtype: str, stamp_ns: int, cdr_bytes: bytes | memoryview) -> None:
        """Raw CDR bytes as received by an rclpy subscription (``raw=True``), written unchanged."""
        msgtype = normalise_msgtype(msgtype)
        self._write(topic, msgtype, stamp_ns, bytes(cdr_bytes))
        if topic == INSTRUCTION_TOPIC and msgtype == STRING_TYPE:
            try:
                self._last_instruction = get_typestore().deserialize_cdr(bytes(cdr_bytes), STRING_TYPE).data
            except Exception:  # a malformed message is still recorded; the info just lacks it
                logger.debug("could not decode instruction message on %s", topic)

    # ------------------------------------------------------------------ finishing
    def episode_info(self, info: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The full episode-info dict ``finish`` would write: EPISODE_INFO_KEYS filled with defaults."""
        given = dict(info or {})
        first = self._first_stamp if self._first_stamp is not None else 0
        last = self._last_stamp if self._last_stamp is not None else first
        instruction = str(given.get("instruction") or self._last_instruction)
        defaults: dict[str, Any] = {
            "task": instruction,
            "instruction": instruction,
            "success": False,
            "operator": "",
            "software_version": f"reconvla_core {__version__}",
            "start_time": stamp_to_iso(first),
            "stop_time": stamp_to_iso(last),
        }
        merged = {key: given.get(key, defaults[key]) for key in EPISODE_INFO_KEYS}
        if not merged["task"]:
            merged["task"] = merged["instruction"]
        merged["success"] = bool(merged["success"])
        merged.update({key: value for key, value in given.items() if key not in merged})
        return merged

    def finish(self, episode_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write the episode info (JSON std_msgs/String on EPISODE_INFO_TOPIC and in metadata.yaml
        custom_data) and close the bag. Returns the info written."""
        if self._closed:
            raise RuntimeError(f"bag {self.path} is already closed")
        given = dict(episode_info or {})
        if self.fault is not None:  # a bag cut short by a write error is never a clean success
            given.update(success=False, interrupted=True, error=given.get("error") or self.fault)
        info = self.episode_info(given)
        text = json.dumps(info, sort_keys=False, default=str)
        stamp = self._last_stamp if self._last_stamp is not None else 0
        try:
            if self.fault is not None and self._storage_file() is None and self.storage == "mcap":
                raise BagWriteError(f"{self.path}: the storage file could not be reopened after {self.fault}")
            self._fault_free_write_string(EPISODE_INFO_TOPIC, stamp, text)
            self._writer.set_custom_data(EPISODE_INFO_CUSTOM_KEY, text)
            self._finished = True
            self._close_writer()
        except (OSError, sqlite3.Error) as error:
            self._release_after_failed_close()
            raise _write_error(error, f"could not close {self.path} ({error}); it is cut at its last whole chunk: "
                                      f"run 'reconvla bag recover {self.path}' once there is space") from error
        logger.info(
            "wrote bag %s (%d messages, success=%s)", self.path, sum(self.message_counts.values()), info["success"]
        )
        return info

    def _fault_free_write_string(self, topic: str, stamp_ns: int, text: str) -> None:
        """write_string that also works after a fault (the episode info goes into the pending chunk)."""
        fault, self.fault = self.fault, None
        try:
            self.write_string(topic, stamp_ns, text)
        finally:
            if fault is not None:
                self.fault = fault

    def _close_writer(self) -> None:
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _release_after_failed_close(self) -> None:
        """Closing failed too (the disk is still full): release the file, cut at its last whole chunk."""
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is None:
            return
        storage = getattr(writer, "storage", None)
        try:
            if storage is not None and (self.storage != "mcap" or storage.bio is not None):
                writer.abort()
        except (OSError, sqlite3.Error, AttributeError):
            pass
        if self.storage == "mcap" and storage is not None:
            try:
                self._truncate_to_good(Path(storage.path))
            except OSError:
                logger.exception("could not cut %s back to its last whole chunk", storage.path)


def _write_error(error: BaseException, text: str) -> BagWriteError:
    code = getattr(error, "errno", None)
    return BagWriteError(code, text) if code else BagWriteError(text)


def _remove_empty_bag(path: Path) -> None:
    try:
        for child in path.iterdir():
            if child.stat().st_size == 0:
                child.unlink()
        path.rmdir()
    except OSError:
        pass
