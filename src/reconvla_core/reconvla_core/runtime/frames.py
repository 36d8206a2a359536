"""The model-input frame outside the model: the stitch function camera_ingest uses.

``load_stitch(checkpoint, preset)`` returns the model processor's own ``stitch`` (base view on
top, wrist view below, at the model's image size), so the deployed frame is built exactly as at
training. Only the checkpoint's config.json is read (no weights); torch loads with the processor.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

StitchFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


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


def load_stitch(checkpoint: str | Path | None = None, preset: str = "tiny") -> StitchFn:
    """The processor's ``stitch(base_rgb, wrist_rgb) -> (S, S, 3) uint8`` for a checkpoint or preset."""
    from reconvla_core.model import ReconVLAProcessor
    from reconvla_core.model.tokenization import build_byte_tokenizer

    config = load_model_config(checkpoint, preset)
    # The stitch depends on the config only; the small built-in tokenizer satisfies the constructor.
    processor = ReconVLAProcessor(config, build_byte_tokenizer())
    logger.info("stitch: %d px frame, base view on top (%.3f of the height)",
                config.vision.image_size, config.stitch_top_fraction)
    return processor.stitch
