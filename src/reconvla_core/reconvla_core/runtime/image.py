"""sensor_msgs/Image <-> numpy without ROS and without cv_bridge (which breaks on NumPy 2).

Works on the message's plain fields (height, width, encoding, is_bigendian, step, data), so the
same code serves rclpy messages, rosbags messages and tests. Semantics follow
``cv_bridge.imgmsg_to_cv2(msg, "rgb8")``:

- rows are ``step`` bytes apart (row padding is cut off); the last row may omit its padding;
- rgb8, bgr8 and mono8 are accepted and returned as HxWx3 uint8 RGB (mono replicated);
- any other encoding raises ``ImageEncodingError`` naming the supported ones;
- ``is_bigendian`` only matters for multi-byte pixels, so for these 8-bit encodings it is accepted
  and changes nothing (as in cv_bridge).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CHANNELS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "mono8": 1}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(CHANNELS)


class ImageEncodingError(ValueError):
    """The image's encoding is not one we convert."""


class ImageLayoutError(ValueError):
    """The image's size, step or data length is inconsistent."""


@dataclass(frozen=True)
class ImageFields:
    """The sensor_msgs/Image fields our conversion produces (header aside)."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes


def check_layout(height: int, width: int, encoding: str, step: int, data_size: int) -> int:
    """Validate the fields without touching the pixels; returns the channel count.

    Raises ImageEncodingError / ImageLayoutError exactly as ``fields_to_rgb`` would.
    """
    channels = CHANNELS.get(encoding)
    if channels is None:
        raise ImageEncodingError(
            f"unsupported image encoding {encoding!r}: supported are {', '.join(SUPPORTED_ENCODINGS)} "
            "(set the camera driver's color format to rgb8)"
        )
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageLayoutError(f"empty image: {width}x{height}")
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageLayoutError(f"step {step} is smaller than width*channels = {row_bytes} for {encoding}")
    needed = (height - 1) * step + row_bytes
    if data_size < needed:
        raise ImageLayoutError(
            f"image data has {data_size} bytes, {width}x{height} {encoding} with step {step} needs {needed}"
        )
    return channels


def fields_to_rgb(
    height: int, width: int, encoding: str, step: int, data: bytes | bytearray | memoryview | Any,
    is_bigendian: int = 0, copy: bool = True,
) -> np.ndarray:
    """The image as an (H, W, 3) uint8 RGB array: a copy, or with ``copy=False`` and rgb8 a view of
    the message buffer (valid while the message lives; for a consumer that only reads it once)."""
    del is_bigendian  # single-byte channels: byte order is irrelevant (cv_bridge does the same)
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8)
    channels = check_layout(height, width, encoding, step, buffer.size)
    height, width, step = int(height), int(width), int(step)
    row_bytes = width * channels
    if buffer.size >= height * step:
        rows = buffer[: height * step].reshape(height, step)[:, :row_bytes]
    else:  # the last row has no padding: view with strides, as cv_bridge does
        rows = np.lib.stride_tricks.as_strided(buffer, shape=(height, row_bytes), strides=(step, 1))
    pixels = rows.reshape(height, width, channels)
    if encoding == "rgb8":
        return pixels.copy() if copy else pixels
    if encoding == "bgr8":
        return np.ascontiguousarray(pixels[:, :, ::-1])
    return np.repeat(pixels, 3, axis=2)  # mono8


def image_to_rgb(msg: Any, copy: bool = True) -> np.ndarray:
    """``fields_to_rgb`` for any object with the sensor_msgs/Image attributes."""
    return fields_to_rgb(
        msg.height, msg.width, msg.encoding, msg.step, _as_bytes(msg.data), getattr(msg, "is_bigendian", 0), copy
    )


def _as_bytes(data: Any) -> Any:
    # rclpy gives array.array('B') or bytes; rosbags gives a numpy array. All expose a buffer.
    if isinstance(data, (bytes, bytearray, memoryview, np.ndarray)):
        return data
    try:
        return memoryview(data)
    except TypeError:
        return bytes(data)


def rgb_to_fields(image: np.ndarray, encoding: str = "rgb8") -> ImageFields:
    """An (H, W, 3) uint8 RGB array as Image fields in ``encoding`` (rgb8, bgr8 or mono8), no padding."""
    if encoding not in CHANNELS:
        raise ImageEncodingError(
            f"unsupported image encoding {encoding!r}: supported are {', '.join(SUPPORTED_ENCODINGS)}"
        )
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise ImageLayoutError(f"expected a non-empty (H, W, 3) uint8 RGB array, got {array.dtype} {array.shape}")
    if encoding == "bgr8":
        array = array[:, :, ::-1]
    elif encoding == "mono8":
        weights = np.array([0.299, 0.587, 0.114])
        array = np.clip(np.rint(array @ weights), 0, 255).astype(np.uint8)[:, :, None]
    array = np.ascontiguousarray(array)
    height, width, channels = array.shape
    return ImageFields(height, width, encoding, 0, width * channels, array.tobytes())


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an (H, W, C) uint8 image with bilinear filtering (antialiased when shrinking)."""
    from PIL import Image as PILImage  # pillow ships with matplotlib; imported on use

    array = np.asarray(image)
    if width <= 0 or height <= 0:
        raise ValueError(f"resize target must be positive, got {width}x{height}")
    if array.shape[1] == width and array.shape[0] == height:
        return array.copy()
    squeeze = array.ndim == 3 and array.shape[2] == 1
    pil = PILImage.fromarray(array[:, :, 0] if squeeze else array)
    out = np.asarray(pil.resize((int(width), int(height)), PILImage.BILINEAR))
    return out[:, :, None] if squeeze else out
