"""Serialized (CDR) ROS messages of a recording -> the values the dataset stores.

Every decoder takes one message's raw bytes. Images have a fast path: the fields of a
little-endian sensor_msgs/Image are read in place (no copy of the pixels), since a camera frame is
the bulk of a bag; anything else goes through the rosbags typestore.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from reconvla_core.data.bag_storage import BagError
from reconvla_core.data.bag_writer import IMAGE_TYPE, get_typestore
from reconvla_core.piper import ACTION_DIM, ACTION_NAMES
_CDR_LE = 0x01  # second byte of the CDR encapsulation header: little-endian


def deserialize(raw: bytes | memoryview, msgtype: str) -> Any:
    """The message object (rosbags typestore of the ROS distribution the recorder writes)."""
    return get_typestore().deserialize_cdr(bytes(raw), msgtype)


class RawImage:
    """The fields of a sensor_msgs/Image parsed straight from little-endian CDR (no payload copy)."""

    __slots__ = ("height", "width", "encoding", "step", "data")

    def __init__(self, height: int, width: int, encoding: str, step: int, data: np.ndarray) -> None:
        self.height, self.width, self.encoding, self.step, self.data = height, width, encoding, step, data


def parse_image_cdr(raw: bytes | memoryview, msgtype: str = IMAGE_TYPE) -> Any:
    """sensor_msgs/Image from CDR bytes: a fast zero-copy parse for little-endian CDR, else rosbags."""
    try:
        if raw[1] != _CDR_LE:
            raise ValueError("big-endian CDR")
        body = memoryview(raw)[4:]

        def align(pos: int, size: int) -> int:  # CDR aligns each primitive to its own size
            return (pos + size - 1) // size * size

        # header: stamp (sec int32, nanosec uint32), frame_id (uint32 length + bytes incl. NUL)
        (frame_len,) = struct.unpack_from("<I", body, 8)
        pos = align(12 + frame_len, 4)
        height, width, enc_len = struct.unpack_from("<III", body, pos)
        encoding = bytes(body[pos + 12 : pos + 12 + enc_len]).rstrip(b"\x00").decode()
        pos = pos + 12 + enc_len + 1  # is_bigendian (uint8)
        pos = align(pos, 4)
        step, size = struct.unpack_from("<II", body, pos)
        data = np.frombuffer(body, dtype=np.uint8, count=size, offset=pos + 8)
        if size < height * step:
            raise ValueError("short image payload")
        return RawImage(height, width, encoding, step, data)
    except (ValueError, struct.error, IndexError, UnicodeDecodeError):
        return deserialize(raw, msgtype)


def image_to_rgb(msg: Any, bag: Path | str = "") -> np.ndarray:
    """sensor_msgs/Image -> HxWx3 uint8 RGB with the nodes' conversion (runtime.image); errors name the bag."""
    from reconvla_core.runtime.image import image_to_rgb as convert

    try:
        return convert(msg)
    except ValueError as error:  # ImageEncodingError / ImageLayoutError
        raise BagError(bag, str(error)) from error


def header_stamp_ns(raw: bytes | memoryview, msgtype: str) -> int:
    """``header.stamp`` (ns) of a message that starts with a std_msgs/Header (Image, JointState);
    read in place for little-endian CDR, where the stamp is the body's first 8 bytes."""
    if raw[1] == _CDR_LE:
        sec, nanosec = struct.unpack_from("<iI", raw, 4)
    else:
        stamp = deserialize(raw, msgtype).header.stamp
        sec, nanosec = int(stamp.sec), int(stamp.nanosec)
    return sec * 1_000_000_000 + nanosec


def joint_vector(msg: Any) -> np.ndarray:
    """JointState -> (7,) [joint1..6 rad, gripper m]: by name when the names match, else by order."""
    names = list(msg.name)
    position = np.asarray(msg.position, dtype=np.float64)
    if names and all(name in names for name in ACTION_NAMES) and len(names) == position.shape[0]:
        return position[[names.index(name) for name in ACTION_NAMES]]
    if position.shape[0] < ACTION_DIM:
        raise ValueError(f"joint state has {position.shape[0]} positions, expected {ACTION_DIM}")
    return position[:ACTION_DIM]


def decode_joints(raw: bytes | memoryview, msgtype: str, bag: Path | str, topic: str) -> np.ndarray:
    """A JointState message -> (7,) float64; a short one is a BagError naming the topic."""
    try:
        return joint_vector(deserialize(raw, msgtype))
    except ValueError as error:
        raise BagError(bag, f"{topic}: {error}") from None


def decode_gaze(raw: bytes | memoryview, msgtype: str, bag: Path | str, topic: str) -> np.ndarray:
    """A gaze box message (Float32MultiArray ``[x1, y1, x2, y2(, valid)]``) -> (5,) float32; no
    ``valid`` means valid."""
    data = np.asarray(deserialize(raw, msgtype).data, dtype=np.float32)
    if data.shape[0] < 4:
        raise BagError(bag, f"{topic}: gaze box needs 4 or 5 values, got {data.shape[0]}")
    valid = float(data[4]) if data.shape[0] > 4 else 1.0
    return np.concatenate([data[:4], [valid]]).astype(np.float32)


def decode_data(raw: bytes | memoryview, msgtype: str) -> Any:
    """The ``data`` field of a std_msgs message (String: the text, Bool: the flag)."""
    return deserialize(raw, msgtype).data
