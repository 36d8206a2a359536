"""Training-time image augmentation of VLADataset samples: a random crop (the gaze box moves with
it) and colour jitter, both from the dataset's own seeded generator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WHOLE_IMAGE_BOX = np.array([0.0, 0.0, 1.0, 1.0], dtype=np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time image augmentation (off for evaluation)."""

    crop_scale: float = 0.9  # random crop keeping this fraction of each side, resized back
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2


def random_crop(image: np.ndarray, scale: float, rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, ...]]:
    """Crop ``scale`` of each side at a random place, resize back. Returns the image and the crop
    (x0, y0, x1, y1) normalised to the input image."""
    from PIL import Image

    height, width = image.shape[:2]
    if scale >= 1.0:
        return image, (0.0, 0.0, 1.0, 1.0)
    crop_h, crop_w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    patch = Image.fromarray(image[top : top + crop_h, left : left + crop_w])
    resized = np.asarray(patch.resize((width, height), Image.BILINEAR))
    return resized, (left / width, top / height, (left + crop_w) / width, (top + crop_h) / height)


def crop_box(box: np.ndarray, crop: tuple[float, ...]) -> np.ndarray:
    """A normalised xyxy box in the original image -> in the crop (clipped to [0, 1])."""
    x0, y0, x1, y1 = crop
    out = np.array([(box[0] - x0) / (x1 - x0), (box[1] - y0) / (y1 - y0),
                    (box[2] - x0) / (x1 - x0), (box[3] - y0) / (y1 - y0)], dtype=np.float32)
    out = np.clip(out, 0.0, 1.0)
    if out[2] <= out[0] or out[3] <= out[1]:  # the object left the crop: fall back to the whole image
        return WHOLE_IMAGE_BOX.copy()
    return out


def colour_jitter(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and saturation factors in [1 - x, 1 + x]."""
    pixels = image.astype(np.float32)
    brightness = rng.uniform(1 - config.brightness, 1 + config.brightness)
    contrast = rng.uniform(1 - config.contrast, 1 + config.contrast)
    saturation = rng.uniform(1 - config.saturation, 1 + config.saturation)
    pixels = pixels * brightness
    grey = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    pixels = (pixels - grey.mean()) * contrast + grey.mean()
    grey = (pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    pixels = (pixels - grey) * saturation + grey
    return np.clip(pixels, 0, 255).astype(np.uint8)
