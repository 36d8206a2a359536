"""The model-input frame outside the model: the stitch function camera_ingest uses.

``load_stitch(checkpoint, preset)`` returns the stitch of a checkpoint's (or preset's) config:
base view on top, wrist view below, at the model's image size. ``backend="cv2"`` (what
camera_ingest uses by default) resizes with OpenCV straight into the output frame: area
averaging by the whole factor first, then area resampling for the rest, about 6x faster than the
processor's PIL resize and within about one grey level of it on average (camera frames differ by
more from JPEG compression alone). ``backend="model"`` is the model processor's own ``stitch``,
the frame exactly as at training. Only the checkpoint's config.json is read (no weights).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

StitchFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
STITCH_BACKENDS = ("cv2", "model")


def load_model_config(checkpoint: str | Path | None = None, preset: str = "tiny"):
    """The ReconVLAConfig of a checkpoint directory (config.json), or of a preset when none is given."""
    from reconvla_core.model import ReconVLAConfig

    if not checkpoint:
        return ReconVLAConfig.from_preset(preset)
    config_file = Path(checkpoint).expanduser() / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: is {checkpoint} a checkpoint written by "
                                "`reconvla train` (ReconVLA.save_pretrained)?")
    raw = json.loads(config_file.read_text())
    if raw.get("model_type") == "llava":  # a LLaVA-style directory loads with the paper preset
        return ReconVLAConfig.from_preset("paper")
    return ReconVLAConfig.from_dict(raw)


def resize_into(image: np.ndarray, out: np.ndarray) -> None:
    """Resize an (H, W, 3) uint8 image into ``out`` (h, w, 3) with OpenCV, antialiased when shrinking.

    Shrinking: INTER_AREA by the largest whole factor (OpenCV's fast path), then INTER_AREA for
    the remaining factor below 2. Enlarging: INTER_LINEAR.
    """
    import cv2

    height, width = out.shape[:2]
    factor = min(image.shape[0] // height, image.shape[1] // width)
    if factor > 1:
        image = cv2.resize(image, (image.shape[1] // factor, image.shape[0] // factor), interpolation=cv2.INTER_AREA)
    if image.shape[:2] == (height, width):
        out[...] = image
        return
    shrinking = image.shape[0] > height or image.shape[1] > width
    resized = cv2.resize(image, (width, height), dst=out,
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if resized is not out and not np.shares_memory(resized, out):  # OpenCV allocated anew
        out[...] = resized


def cv2_stitch(size: int, top_fraction: float) -> StitchFn:
    """``stitch(base_rgb, wrist_rgb) -> (size, size, 3) uint8``: base on top, wrist below, via OpenCV."""
    top = round(size * top_fraction)
    if not 0 < top < size:
        raise ValueError(f"stitch: the base view's height {top} px leaves no room in a {size} px frame")

    def stitch(base_image: np.ndarray, wrist_image: np.ndarray) -> np.ndarray:
        for name, image in (("base_image", base_image), ("wrist_image", wrist_image)):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
                raise ValueError(f"{name} must be a non-empty (H, W, 3) uint8 RGB array, got "
                                 f"{image.dtype} {image.shape}")
        frame = np.empty((size, size, 3), dtype=np.uint8)
        resize_into(base_image, frame[:top])
        resize_into(wrist_image, frame[top:])
        return frame

    return stitch


def load_stitch(checkpoint: str | Path | None = None, preset: str = "tiny", backend: str = "model") -> StitchFn:
    """``stitch(base_rgb, wrist_rgb) -> (S, S, 3) uint8`` for a checkpoint or preset (see the module
    docstring for the backends)."""
    if backend not in STITCH_BACKENDS:
        raise ValueError(f"stitch backend must be one of {STITCH_BACKENDS}, got {backend!r}")
    config = load_model_config(checkpoint, preset)
    if backend == "cv2":
        logger.info("stitch (OpenCV): %d px frame, base view on top (%.3f of the height)",
                    config.vision.image_size, config.stitch_top_fraction)
        return cv2_stitch(config.vision.image_size, config.stitch_top_fraction)
    from reconvla_core.model import ReconVLAProcessor
    from reconvla_core.model.tokenization import build_byte_tokenizer

    # The stitch depends on the config only; the small built-in tokenizer satisfies the constructor.
    processor = ReconVLAProcessor(config, build_byte_tokenizer())
    logger.info("stitch: %d px frame, base view on top (%.3f of the height)",
                config.vision.image_size, config.stitch_top_fraction)
    return processor.stitch
