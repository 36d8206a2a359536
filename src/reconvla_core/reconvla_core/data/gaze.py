"""Gaze-box annotation backends for the dataset build.

Every backend returns, for a batch of frames of one episode, an (B, 5) float32 array
``[x1, y1, x2, y2, valid]`` normalised to the base image. ``valid = 0`` means "no
detection": the builder then stores the whole image ``[0, 0, 1, 1]`` (the paper's
fallback) and counts the frame in the build report.

- ``sim``: the box the simulator (or an annotator node) recorded on the gaze topic.
- ``boxes``: a JSON file ``{"<bag name>": [x1, y1, x2, y2] | [[x1, y1, x2, y2] | null, ...]}``
  (one box for the whole episode, or one per dataset frame).
- ``grounding-dino``: transformers zero-shot object detection from a local directory,
  batched, prompted with the object phrase parsed from the instruction.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

WHOLE_IMAGE = np.array([0.0, 0.0, 1.0, 1.0, 0.0], dtype=np.float32)
GAZE_BACKENDS = ("sim", "boxes", "grounding-dino")


class EpisodeLike(Protocol):
    @property
    def name(self) -> str: ...

    gaze: np.ndarray | None
    instruction: str


class GazeBackend(Protocol):
    """Boxes for a batch of frames of one episode."""

    name: str
    needs_gaze_topic: bool

    def annotate(self, episode: EpisodeLike, frame_indices: np.ndarray, base_images: Sequence[np.ndarray]) -> np.ndarray:
        """(B, 5) float32 [x1, y1, x2, y2, valid]."""
        ...


def sanitise_boxes(boxes: np.ndarray) -> np.ndarray:
    """Clip to [0, 1], order corners; invalid or degenerate boxes become the whole image with valid=0."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 5).copy()
    xy = np.clip(out[:, :4], 0.0, 1.0)
    x1, x2 = np.minimum(xy[:, 0], xy[:, 2]), np.maximum(xy[:, 0], xy[:, 2])
    y1, y2 = np.minimum(xy[:, 1], xy[:, 3]), np.maximum(xy[:, 1], xy[:, 3])
    out[:, :4] = np.stack([x1, y1, x2, y2], axis=1)
    bad = (out[:, 4] < 0.5) | (x2 - x1 <= 0) | (y2 - y1 <= 0) | ~np.isfinite(boxes).reshape(-1, 5).all(axis=1)
    out[bad] = WHOLE_IMAGE
    out[~bad, 4] = 1.0
    return out


class SimGaze:
    """Boxes recorded on the gaze topic (aligned onto the frames by the bag reader)."""

    name = "sim"
    needs_gaze_topic = True

    def annotate(self, episode: EpisodeLike, frame_indices: np.ndarray, base_images: Sequence[np.ndarray]) -> np.ndarray:
        if episode.gaze is None:
            return np.repeat(WHOLE_IMAGE[None], len(frame_indices), axis=0)
        return episode.gaze[np.asarray(frame_indices)]


class BoxesFileGaze:
    """Boxes from a JSON file keyed by bag directory name."""

    name = "boxes"
    needs_gaze_topic = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"gaze boxes file {self.path} does not exist")
        with open(self.path, encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: expected a JSON object {{bag name: boxes}}")
        self.boxes = data
        self.missing: set[str] = set()

    def annotate(self, episode: EpisodeLike, frame_indices: np.ndarray, base_images: Sequence[np.ndarray]) -> np.ndarray:
        entry = self.boxes.get(episode.name)
        count = len(frame_indices)
        if entry is None:
            if episode.name not in self.missing:
                logger.warning("%s has no entry for bag %s: whole-image gaze", self.path.name, episode.name)
                self.missing.add(episode.name)
            return np.repeat(WHOLE_IMAGE[None], count, axis=0)
        if len(entry) == 4 and all(isinstance(v, (int, float)) for v in entry):
            return np.repeat(np.array([*entry, 1.0], dtype=np.float32)[None], count, axis=0)
        out = np.repeat(WHOLE_IMAGE[None], count, axis=0)
        for row, frame in enumerate(np.asarray(frame_indices).tolist()):
            box = entry[frame] if frame < len(entry) else None
            if box is not None:
                if len(box) != 4:
                    raise ValueError(f"{self.path}: {episode.name} frame {frame}: a box needs 4 numbers, got {box}")
                out[row] = [*box, 1.0]
        return out


_ACTION_WORDS = (
    "pick up", "pick", "place", "put", "push", "pull", "grasp", "grab", "lift", "move", "stack", "open",
    "close", "take", "slide", "rotate", "turn", "press", "touch", "reach", "bring", "drop", "insert", "pour",
)
_STOP = re.compile(
    r"\b(on|onto|in|into|to|towards|toward|from|inside|under|over|next|near|at|and|then|with|of|off|up|down)\b"
)


def target_phrase(instruction: str) -> str:
    """The object phrase of an instruction: "pick up the red block and place it in the box" -> "the red block"."""
    text = " ".join(instruction.lower().strip().rstrip(".!").split())
    for verb in sorted(_ACTION_WORDS, key=len, reverse=True):
        match = re.search(rf"\b{re.escape(verb)}\b\s+(.*)", text)
        if match:
            text = match.group(1)
            break
    text = re.sub(r"^(up|down)\s+", "", text)
    stop = _STOP.search(text)
    phrase = text[: stop.start()].strip() if stop and stop.start() > 0 else text
    phrase = phrase.strip(" ,")
    return phrase or instruction.strip() or "object"


class GroundingDinoGaze:
    """Grounding DINO (transformers zero-shot object detection) from a local directory.

    The directory holds ``config.json`` + weights + the processor/tokenizer files, as
    ``save_pretrained`` writes them. Never downloads (``local_files_only``).
    """

    name = "grounding-dino"
    needs_gaze_topic = False

    def __init__(
        self,
        model_dir: str | Path,
        *,
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
        batch_size: int = 8,
        device: str = "cpu",
    ) -> None:
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{self.model_dir} is not a Grounding DINO directory (no config.json); "
                "point --gaze-model at a local save_pretrained() copy"
            )
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.batch_size = max(1, batch_size)
        self.device = device
        self._model: Any = None
        self._processor: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self._processor = AutoProcessor.from_pretrained(self.model_dir, local_files_only=True)
        model = AutoModelForZeroShotObjectDetection.from_pretrained(self.model_dir, local_files_only=True)
        self._model = model.to(self.device).eval()
        logger.info("loaded Grounding DINO from %s", self.model_dir)

    def annotate(self, episode: EpisodeLike, frame_indices: np.ndarray, base_images: Sequence[np.ndarray]) -> np.ndarray:
        phrase = target_phrase(episode.instruction)
        out = np.repeat(WHOLE_IMAGE[None], len(base_images), axis=0)
        for start in range(0, len(base_images), self.batch_size):
            batch = list(base_images[start : start + self.batch_size])
            out[start : start + len(batch)] = self.detect(batch, phrase)
        return out

    def detect(self, images: Sequence[np.ndarray], phrase: str) -> np.ndarray:
        """Best box for ``phrase`` in each image: (B, 5) normalised, valid=0 where nothing passed the thresholds."""
        import torch

        self._load()
        prompt = phrase.strip().rstrip(".") + "."
        inputs = self._processor(images=list(images), text=[prompt] * len(images), return_tensors="pt")
        inputs = {key: value.to(self.device) if hasattr(value, "to") else value for key, value in inputs.items()}
        with torch.inference_mode():
            outputs = self._model(**inputs)
        sizes = [(int(image.shape[0]), int(image.shape[1])) for image in images]
        results = self._post_process(outputs, inputs, sizes)
        out = np.repeat(WHOLE_IMAGE[None], len(images), axis=0)
        for row, (result, (height, width)) in enumerate(zip(results, sizes, strict=False)):
            scores = result["scores"]
            if len(scores) == 0:
                continue
            best = int(torch.argmax(scores))
            x1, y1, x2, y2 = (float(v) for v in result["boxes"][best])
            out[row] = [x1 / width, y1 / height, x2 / width, y2 / height, 1.0]
        return sanitise_boxes(out)

    def _post_process(self, outputs: Any, inputs: dict[str, Any], sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        processor = self._processor
        kwargs = {"target_sizes": sizes, "text_threshold": self.text_threshold}
        try:  # transformers >= 4.51 renamed box_threshold -> threshold
            return processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=self.box_threshold, **kwargs
            )
        except TypeError:
            return processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], box_threshold=self.box_threshold, **kwargs
            )


def make_gaze_backend(kind: str, *, boxes_file: str | Path | None = None, model_dir: str | Path | None = None,
                      **kwargs: Any) -> GazeBackend:
    """``sim`` | ``boxes`` (needs boxes_file) | ``grounding-dino`` (needs model_dir)."""
    if kind == "sim":
        return SimGaze()
    if kind == "boxes":
        if boxes_file is None:
            raise ValueError("--gaze boxes needs a FILE: --gaze boxes FILE")
        return BoxesFileGaze(boxes_file)
    if kind == "grounding-dino":
        if model_dir is None:
            raise ValueError("--gaze grounding-dino needs --gaze-model DIR (a local Grounding DINO directory)")
        return GroundingDinoGaze(model_dir, **kwargs)
    raise ValueError(f"unknown gaze backend {kind!r}; choose from {', '.join(GAZE_BACKENDS)}")
