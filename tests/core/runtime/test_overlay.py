"""Attention overlay rendering."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.runtime.overlay import colorize, draw_box, peak_box, render_attention_overlay

pytestmark = pytest.mark.unit


def test_colorize_uses_the_colormap_ends():
    values = np.array([[0.0, 1.0]])
    colors = colorize(values, "gray")
    np.testing.assert_array_equal(colors[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(colors[0, 1], [255, 255, 255])
    assert colorize(np.full((2, 2), np.nan)).shape == (2, 2, 3)


def test_peak_box_surrounds_the_maximum():
    attention = np.zeros((27, 27))
    attention[10, 20] = 1.0
    x1, y1, x2, y2 = peak_box(attention, radius_cells=1)
    assert (x1, y1, x2, y2) == pytest.approx((19 / 27, 9 / 27, 22 / 27, 12 / 27))


def test_overlay_tints_the_hot_region_and_draws_a_box():
    frame = np.full((54, 54, 3), 100, np.uint8)
    attention = np.zeros((27, 27))
    attention[:5, :5] = 1.0
    out = render_attention_overlay(frame, attention, cmap="jet", alpha=0.5)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert not np.array_equal(out, frame)
    np.testing.assert_array_equal(frame, 100)  # the input is untouched
    # jet: hot = red-ish, cold = blue-ish
    assert out[30, 30, 2] > out[30, 30, 0]
    assert out[5, 5, 0] > out[5, 5, 2]
    assert (out == 255).all(axis=2).any()  # the white peak box


def test_gaze_box_is_drawn_inside_its_region():
    frame = np.zeros((100, 100, 3), np.uint8)
    out = render_attention_overlay(frame, np.ones((4, 4)), alpha=0.0, gaze_box=(0.0, 0.0, 1.0, 1.0),
                                   box_region=(0.0, 0.0, 1.0, 0.5))
    green = (out[:, :, 1] == 255) & (out[:, :, 0] == 0)
    rows = np.where(green.any(axis=1))[0]
    assert rows.min() == 0 and rows.max() == 50


def test_draw_box_and_bad_inputs():
    image = np.zeros((10, 10, 3), np.uint8)
    draw_box(image, (0.2, 0.2, 0.8, 0.8), color=(1, 2, 3), thickness=1)
    assert tuple(image[2, 5]) == (1, 2, 3) and tuple(image[5, 5]) == (0, 0, 0)
    with pytest.raises(ValueError):
        render_attention_overlay(np.zeros((4, 4), np.uint8), np.ones((2, 2)))
    with pytest.raises(ValueError):
        render_attention_overlay(np.zeros((4, 4, 3), np.uint8), np.ones(3))
