"""The OpenCV stitch camera_ingest uses against the model processor's (the frame at training)."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.runtime.frames import cv2_stitch, load_stitch

pytestmark = pytest.mark.unit
pytest.importorskip("cv2")


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """A camera-like RGB image: smooth shading, a few solid blocks with sharp edges, sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([120 + 80 * xx, 100 + 60 * yy, 90 + 40 * (xx + yy)], axis=-1)
    for _ in range(6):
        y0, x0 = rng.integers(0, height - height // 5), rng.integers(0, width - width // 5)
        image[y0:y0 + height // 6, x0:x0 + width // 7] = rng.integers(0, 255, 3)
    image += rng.normal(0.0, 2.0, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("height, width", [(480, 640), (240, 424), (720, 1280), (60, 80)])
def test_cv2_stitch_matches_the_model_stitch_within_about_a_grey_level(height, width):
    model, fast = load_stitch(None, "tiny"), load_stitch(None, "tiny", backend="cv2")
    base, wrist = scene(height, width, 0), scene(height, width, 1)
    expected, frame = model(base, wrist), fast(base, wrist)
    assert frame.shape == expected.shape and frame.dtype == np.uint8
    difference = np.abs(frame.astype(int) - expected.astype(int))
    assert difference.mean() <= 1.5, difference.mean()


def test_base_on_top_wrist_below_and_views_are_accepted():
    stitch = cv2_stitch(64, 0.5)
    base = np.full((480, 640, 3), 200, np.uint8)
    wrist = np.full((480, 640, 3), 20, np.uint8)
    buffer = np.concatenate([wrist, np.zeros((480, 16, 3), np.uint8)], axis=1)  # a padded row layout
    frame = stitch(base, buffer[:, :640])
    assert frame.shape == (64, 64, 3)
    assert np.all(frame[:32] == 200) and np.all(frame[32:] == 20)


def test_bad_inputs_are_refused_with_a_reason():
    stitch = cv2_stitch(64, 0.5)
    with pytest.raises(ValueError, match="base_image"):
        stitch(np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="wrist_image"):
        stitch(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="backend"):
        load_stitch(None, "tiny", backend="pil")
