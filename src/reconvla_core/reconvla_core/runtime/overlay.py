"""Attention overlay for RViz: the model frame tinted by a colour-mapped attention map plus a box.

RViz shows float images without a colormap, so the policy node publishes this rgb8 overlay
instead. ``render_attention_overlay(frame, attention)`` upsamples the (grid, grid) attention to
the frame, maps it through a matplotlib colormap, alpha-blends it over the frame and draws a box:
the gaze box when one is given (normalised xyxy inside ``box_region`` of the frame), else a box
around the attention peak.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from reconvla_core.runtime.image import resize

logger = logging.getLogger(__name__)


@lru_cache(maxsize=8)
def _colormap_lut(name: str) -> np.ndarray:
    """A (256, 3) uint8 lookup table for a matplotlib colormap (matplotlib imported on first use)."""
    import matplotlib

    cmap = matplotlib.colormaps[name]  # KeyError names the bad colormap
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def colorize(values: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """Map a 2-D array to (H, W, 3) uint8 colours, normalised to its own min..max (flat -> lowest colour)."""
    array = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if array.ndim != 2:
        raise ValueError(f"attention must be 2-D (grid, grid), got shape {array.shape}")
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return _colormap_lut(cmap)[np.round(scaled * 255.0).astype(np.int64)]


def peak_box(attention: np.ndarray, radius_cells: int = 1) -> tuple[float, float, float, float]:
    """Normalised xyxy box of the attention peak's cell, grown by ``radius_cells`` on each side."""
    array = np.nan_to_num(np.asarray(attention, dtype=np.float64), nan=-np.inf)
    rows, cols = array.shape
    r, c = np.unravel_index(int(np.argmax(array)), array.shape)
    x1, x2 = max(0, c - radius_cells), min(cols, c + radius_cells + 1)
    y1, y2 = max(0, r - radius_cells), min(rows, r + radius_cells + 1)
    return x1 / cols, y1 / rows, x2 / cols, y2 / rows


def gaze_box_in_frame(box: Sequence[float], top_fraction: float) -> np.ndarray:
    """A normalised xyxy box of the base view -> the same box in the stitched frame (base on top)."""
    x0, y0, x1, y1 = np.clip(np.asarray(box, dtype=np.float64), 0.0, 1.0)
    return np.array([x0, y0 * top_fraction, x1, y1 * top_fraction])


def draw_box(
    image: np.ndarray,
    box_xyxy: Sequence[float],
    color: tuple[int, int, int] = (0, 255, 0),
    thickness: int = 2,
    region: Sequence[float] = (0.0, 0.0, 1.0, 1.0),
) -> np.ndarray:
    """Draw a rectangle in place; the box is normalised xyxy inside ``region`` (normalised xyxy of the image)."""
    height, width = image.shape[:2]
    rx1, ry1, rx2, ry2 = region
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    px = [rx1 + (rx2 - rx1) * x for x in (x1, x2)]
    py = [ry1 + (ry2 - ry1) * y for y in (y1, y2)]
    left, right = (int(np.clip(round(v * width), 0, width - 1)) for v in sorted(px))
    top, bottom = (int(np.clip(round(v * height), 0, height - 1)) for v in sorted(py))
    t = max(1, int(thickness))
    image[top:min(top + t, bottom + 1), left:right + 1] = color
    image[max(bottom - t + 1, top):bottom + 1, left:right + 1] = color
    image[top:bottom + 1, left:min(left + t, right + 1)] = color
    image[top:bottom + 1, max(right - t + 1, left):right + 1] = color
    return image


def render_attention_overlay(
    frame: np.ndarray,
    attention: np.ndarray,
    *,
    alpha: float = 0.45,
    cmap: str = "jet",
    gaze_box: Sequence[float] | None = None,
    box_region: Sequence[float] = (0.0, 0.0, 1.0, 1.0),
    attention_region: Sequence[float] = (0.0, 0.0, 1.0, 1.0),
) -> np.ndarray:
    """An (H, W, 3) uint8 overlay of ``attention`` on the RGB ``frame``.

    ``attention_region`` says which part of the frame the attention grid covers (normalised
    xyxy; the whole stitched frame by default). The drawn box is ``gaze_box`` (inside
    ``box_region``) when given, else the attention peak's box (inside ``attention_region``).
    """
    image = np.asarray(frame)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = image.copy()
    height, width = image.shape[:2]
    ax1, ay1, ax2, ay2 = attention_region
    left, right = int(round(ax1 * width)), int(round(ax2 * width))
    top, bottom = int(round(ay1 * height)), int(round(ay2 * height))
    if right > left and bottom > top:
        colors = resize(colorize(attention, cmap), right - left, bottom - top)
        patch = out[top:bottom, left:right].astype(np.float32)
        out[top:bottom, left:right] = np.clip(
            (1.0 - alpha) * patch + alpha * colors.astype(np.float32) + 0.5, 0, 255
        ).astype(np.uint8)
    if gaze_box is not None:
        draw_box(out, gaze_box, color=(0, 255, 0), region=box_region)
    else:
        draw_box(out, peak_box(attention), color=(255, 255, 255), region=attention_region)
    return out
