"""Image conversion with cv_bridge semantics, on plain fields."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from reconvla_core.runtime.image import (
    ImageEncodingError,
    ImageLayoutError,
    fields_to_rgb,
    image_to_rgb,
    resize,
    rgb_to_fields,
)

pytestmark = pytest.mark.unit

RGB = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)


def padded(rows: np.ndarray, pad: int) -> bytes:
    height = rows.shape[0]
    flat = rows.reshape(height, -1)
    return np.concatenate([flat, np.full((height, pad), 0xEE, np.uint8)], axis=1).tobytes()


def test_rgb8_roundtrip():
    f = rgb_to_fields(RGB)
    assert (f.height, f.width, f.encoding, f.step, f.is_bigendian) == (4, 5, "rgb8", 15, 0)
    np.testing.assert_array_equal(fields_to_rgb(f.height, f.width, f.encoding, f.step, f.data), RGB)


def test_row_padding_is_cut_via_step():
    data = padded(RGB, pad=9)
    np.testing.assert_array_equal(fields_to_rgb(4, 5, "rgb8", 24, data), RGB)


def test_last_row_without_padding_is_accepted_like_cv_bridge():
    data = padded(RGB, pad=9)[:-9]
    np.testing.assert_array_equal(fields_to_rgb(4, 5, "rgb8", 24, data), RGB)


def test_bgr8_is_swapped_to_rgb():
    f = rgb_to_fields(RGB, "bgr8")
    np.testing.assert_array_equal(np.frombuffer(f.data, np.uint8).reshape(4, 5, 3), RGB[:, :, ::-1])
    np.testing.assert_array_equal(fields_to_rgb(4, 5, "bgr8", 15, f.data), RGB)


def test_mono8_is_replicated():
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    out = fields_to_rgb(4, 5, "mono8", 8, padded(gray, 3))
    assert out.shape == (4, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_big_endian_flag_is_irrelevant_for_8_bit():
    np.testing.assert_array_equal(fields_to_rgb(4, 5, "rgb8", 15, RGB.tobytes(), is_bigendian=1), RGB)


@pytest.mark.parametrize("encoding", ["16UC1", "rgba8", "bayer_rggb8", "32FC1", ""])
def test_other_encodings_are_rejected_with_a_clear_error(encoding):
    with pytest.raises(ImageEncodingError, match="rgb8, bgr8, mono8"):
        fields_to_rgb(4, 5, encoding, 30, bytes(200))


@pytest.mark.parametrize(
    "height, width, step, size, message",
    [(0, 0, 0, 0, "empty"), (4, 5, 10, 60, "step"), (4, 5, 15, 59, "bytes")],
)
def test_inconsistent_layouts_are_rejected(height, width, step, size, message):
    with pytest.raises(ImageLayoutError, match=message):
        fields_to_rgb(height, width, "rgb8", step, bytes(size))


def test_image_to_rgb_accepts_message_like_objects_with_array_data():
    import array

    msg = SimpleNamespace(height=4, width=5, encoding="rgb8", step=15, is_bigendian=0,
                          data=array.array("B", RGB.tobytes()))
    out = image_to_rgb(msg)
    np.testing.assert_array_equal(out, RGB)
    out[0, 0, 0] = 255  # a copy, not a view of the message buffer
    assert msg.data[0] == 0


def test_rgb_to_fields_rejects_non_rgb_arrays():
    with pytest.raises(ImageLayoutError):
        rgb_to_fields(np.zeros((4, 5), np.uint8))
    with pytest.raises(ImageEncodingError):
        rgb_to_fields(RGB, "16UC1")


def test_resize():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 30:] = 200
    out = resize(image, 30, 20)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert out[:, :10].max() == 0 and out[:, 20:].min() == 200
    assert resize(image, 60, 40) is not image
