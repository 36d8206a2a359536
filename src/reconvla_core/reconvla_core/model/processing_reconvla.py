"""One processor for training and inference: images, prompt, proprio and action tokens, labels.

Model input image: the base view on top (``stitch_top_fraction`` = 14/27 of the height) and the wrist
view below, resized into one square image, the same way at training and inference. The
reconstruction target (training only) is the gaze image: the gaze crop of the base view on top and
the same wrist view below (``recon_target="gaze"``), or the stitched image itself (``"full"``).

Prompt (token ids built directly, chat markers looked up in the tokenizer)::

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n
    What action should the robot take to {instruction}?\\n<image> x N\\n{instruction}\\nState: <7 state tokens>
    <|im_end|>\\n<|im_start|>assistant\\n  <K*D action tokens> <eos>

Labels are -100 everywhere except the action tokens and the end-of-sequence token.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from reconvla_core.model.action_tokenizer import (
    ActionTokenizer,
    Normalizer,
    check_array,
    mixed_action_entry,
    validate_norm_stats,
)
from reconvla_core.model.configuration_reconvla import ReconVLAConfig
from reconvla_core.model.tokenization import IM_END, IM_START, IMAGE_TOKEN

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def check_image(image: Any, name: str) -> np.ndarray:
    """An HxWx3 uint8 RGB array, or ValueError naming the argument."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be an HxWx3 uint8 numpy array, got {type(image).__name__}")  # noqa: TRY004
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} must have shape HxWx3, got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB, got dtype {image.dtype}")
    return image


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


class ReconVLAProcessor:
    """Turns raw observations (+ actions for training) into model tensors; decodes action tokens."""

    def __init__(self, config: ReconVLAConfig, tokenizer: Any, norm_stats: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.action_tokenizer = ActionTokenizer(config.n_bins, config.first_action_token_id,
                                                config.action_dim, config.chunk_size)
        vocab = tokenizer.get_vocab()
        missing = [t for t in (IM_START, IM_END, IMAGE_TOKEN) if t not in vocab]
        if missing or tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer lacks special tokens {missing or ['eos']}; "
                             "load it with reconvla_core.model.tokenization.load_tokenizer")
        self.im_start_id = vocab[IM_START]
        self.im_end_id = vocab[IM_END]
        self.image_token_id = vocab[IMAGE_TOKEN]
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id)
        action_ids = self.action_tokenizer.token_ids
        clash = [t for t in (self.im_start_id, self.im_end_id, self.image_token_id, self.eos_token_id)
                 if t in action_ids]
        if clash:
            raise ValueError(f"special token ids {clash} fall inside the action token range "
                             f"[{action_ids.start}, {action_ids.stop}); set action_token_offset")
        if len(tokenizer) > action_ids.start:
            logger.warning("the tokenizer's %d tokens overlap the action ids from %d (OpenVLA-style reuse)",
                           len(tokenizer), action_ids.start)
        self.norm_stats: dict[str, Any] | None = None
        self._normalizers: tuple[Normalizer, Normalizer] | None = None
        self._text_cache: dict[str, tuple[int, ...]] = {}
        if norm_stats is not None:
            self.set_norm_stats(norm_stats)

    # Statistics ------------------------------------------------------------------------------
    def set_norm_stats(self, stats: Mapping[str, Any]) -> None:
        self.norm_stats = self._validate(stats)
        self._normalizers = self._build_normalizers(self.norm_stats)

    def _validate(self, stats: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self.config
        return validate_norm_stats(stats, cfg.action_dim, cfg.state_dim, require_delta=bool(cfg.relative_dims))

    def _build_normalizers(self, stats: Mapping[str, Any]) -> tuple[Normalizer, Normalizer]:
        cfg = self.config
        action_entry = mixed_action_entry(stats, cfg.relative_dims)
        return (Normalizer(action_entry, cfg.norm_mode, cfg.dim_modes("action"), "action"),
                Normalizer(stats["observation.state"], cfg.norm_mode, cfg.dim_modes("state"), "observation.state"))

    def normalizers(self, norm_stats: Mapping[str, Any] | None = None) -> tuple[Normalizer, Normalizer]:
        if norm_stats is not None:
            return self._build_normalizers(self._validate(norm_stats))
        if self._normalizers is None:
            raise ValueError("no normalisation stats: call model.set_norm_stats(stats) with the dataset's "
                             "meta/stats.json (or load a checkpoint that has norm_stats.json)")
        return self._normalizers

    # Images ----------------------------------------------------------------------------------
    def stitch(self, base_image: np.ndarray, wrist_image: np.ndarray, size: int | None = None) -> np.ndarray:
        """The model-input frame: base view on top, wrist view below, (size, size, 3) uint8."""
        base = check_image(base_image, "base_image")
        wrist = check_image(wrist_image, "wrist_image")
        size = size or self.config.vision.image_size
        top = round(size * self.config.stitch_top_fraction)
        return np.concatenate([resize(base, size, top), resize(wrist, size, size - top)], axis=0)

    def gaze_image(self, base_image: np.ndarray, wrist_image: np.ndarray, gaze_box: Any, size: int) -> np.ndarray:
        """The reconstruction target: the gaze crop of the base view on top, the wrist view below."""
        base = check_image(base_image, "base_image")
        if gaze_box is not None:
            box = check_array(gaze_box, (4,), "gaze_box")
            h, w = base.shape[:2]
            x0, y0, x1, y1 = np.clip(box, 0.0, 1.0) * np.array([w, h, w, h])
            x0, y0 = int(np.floor(x0)), int(np.floor(y0))
            x1, y1 = max(int(np.ceil(x1)), x0 + 1), max(int(np.ceil(y1)), y0 + 1)
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"gaze_box must be normalised xyxy with x1 > x0 and y1 > y0, got {box.tolist()}")
            base = base[y0:min(y1, h), x0:min(x1, w)]
        return self.stitch(base, wrist_image, size)

    @property
    def base_view_scale(self) -> np.ndarray:
        """(x, y) scale from base-view coordinates to the stitched model-input frame (the base view is
        its top band, full width)."""
        size = self.config.vision.image_size
        return np.array([1.0, round(size * self.config.stitch_top_fraction) / size])

    def gaze_point(self, gaze_box: Any) -> np.ndarray:
        """Centre of a base-view gaze box (normalised xyxy) in the stitched model-input frame, (x, y) in [0, 1]."""
        box = check_array(gaze_box, (4,), "gaze_box")
        centre = 0.5 * np.array([box[0] + box[2], box[1] + box[3]])
        return np.clip(centre * self.base_view_scale, 0.0, 1.0)

    def gaze_colour(self, frame: np.ndarray, gaze_box: Any) -> np.ndarray:
        """Mean RGB in [0, 1] of a base-view gaze box's pixels (normalised xyxy) in the stitched
        model-input frame: what the instruction's target looks like (``gaze_colour_weight``)."""
        box = np.clip(check_array(gaze_box, (4,), "gaze_box"), 0.0, 1.0)
        height, width = frame.shape[:2]
        scale_y = self.base_view_scale[1]
        x0, x1 = round(box[0] * width), round(box[2] * width)
        y0, y1 = round(box[1] * scale_y * height), round(box[3] * scale_y * height)
        # A box thinner than a pixel still covers the pixel it lies in.
        x1, y1 = min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)
        x0, y0 = min(x0, x1 - 1), min(y0, y1 - 1)
        return frame[y0:y1, x0:x1].reshape(-1, frame.shape[2]).mean(axis=0) / 255.0

    def pixel_values(self, frame: np.ndarray) -> torch.Tensor:
        """Stitched uint8 frame -> (3, S, S) float normalised for the vision tower."""
        size = self.config.vision.image_size
        frame = resize(check_image(frame, "stitched_image"), size, size)
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.config.vision.image_mean).view(3, 1, 1)
        std = torch.tensor(self.config.vision.image_std).view(3, 1, 1)
        return (x - mean) / std

    @staticmethod
    def vae_pixels(frame: np.ndarray) -> torch.Tensor:
        """uint8 frame -> (3, H, W) float in [-1, 1] for the VAE."""
        return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)

    # Text ------------------------------------------------------------------------------------
    def _text(self, text: str) -> list[int]:
        # Prompts repeat a few strings (templates, instructions): tokenising each once halves the
        # per-sample pre-processing time of training.
        ids = self._text_cache.get(text)
        if ids is None:
            ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
            if len(self._text_cache) < 100_000:
                self._text_cache[text] = ids
        return list(ids)

    def prompt_ids(self, instruction: str, state_tokens: Sequence[int]) -> tuple[list[int], list[int]]:
        """Prompt token ids and the index of every image placeholder in them."""
        ids, image_positions, _ = self._prompt(instruction, state_tokens)
        return ids, image_positions

    def _prompt(self, instruction: str, state_tokens: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
        """Prompt ids, the image placeholders' indices and the indices of the instruction's own tokens
        (its second mention, the one after the image, which vision FiLM pools)."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("instruction must be a non-empty string")
        instruction = re.sub(r"\s+", " ", instruction.strip())
        ids = [self.im_start_id, *self._text(f"system\n{self.config.system_prompt}"), self.im_end_id,
               *self._text("\n"), self.im_start_id,
               *self._text(f"user\nWhat action should the robot take to {instruction}?\n")]
        image_start = len(ids)
        ids += [self.image_token_id] * self.config.num_image_tokens
        ids += self._text("\n")
        instruction_ids = self._text(instruction)
        instruction_start = len(ids)
        ids += instruction_ids
        ids += [*self._text("\nState: "), *state_tokens, self.im_end_id,
                *self._text("\n"), self.im_start_id, *self._text("assistant\n")]
        return (ids, list(range(image_start, image_start + self.config.num_image_tokens)),
                list(range(instruction_start, instruction_start + len(instruction_ids))))

    # The one pre-processing path -------------------------------------------------------------
    def __call__(
        self,
        base_image: np.ndarray | None = None,
        wrist_image: np.ndarray | None = None,
        instruction: str = "",
        state: Any = None,
        actions: Any = None,
        gaze_box: Any = None,
        norm_stats: Mapping[str, Any] | None = None,
        stitched_image: np.ndarray | None = None,
        action_is_pad: Any = None,
        gaze_valid: bool = True,
    ) -> dict[str, torch.Tensor]:
        """One sample as unbatched tensors. With ``actions`` it carries labels (and the
        reconstruction target when the config reconstructs)."""
        cfg = self.config
        action_norm, state_norm = self.normalizers(norm_stats)
        if stitched_image is None:
            if base_image is None or wrist_image is None:
                raise ValueError("give base_image and wrist_image, or a pre-stitched stitched_image")
            frame = self.stitch(base_image, wrist_image)
        else:
            frame = check_image(stitched_image, "stitched_image")
        state_arr = check_array(state, (cfg.state_dim,), "state")
        state_tokens = self.action_tokenizer.encode(state_norm.normalize(state_arr)).tolist()
        ids, image_positions, instruction_positions = self._prompt(instruction, state_tokens)
        prompt_len = len(ids)

        sample: dict[str, torch.Tensor] = {"pixel_values": self.pixel_values(frame)}
        if actions is not None:  # what both heads learn: the normalised chunk, its padding, the recon target
            targets = action_norm.normalize(
                self.to_relative(check_array(actions, (cfg.chunk_size, cfg.action_dim), "actions"), state_arr))
            pad = np.zeros(cfg.chunk_size, dtype=bool) if action_is_pad is None else \
                np.asarray(action_is_pad, dtype=bool).reshape(-1)
            if pad.shape != (cfg.chunk_size,):
                raise ValueError(f"action_is_pad must have shape ({cfg.chunk_size},), got {pad.shape}")
            if cfg.builds_reconstruction:
                sample["recon_pixel_values"] = self.vae_pixels(
                    self._recon_frame(frame, base_image, wrist_image, gaze_box if gaze_valid else None))
        if cfg.action_head_state:
            sample["state"] = torch.tensor(state_norm.normalize(state_arr), dtype=torch.float32)
        if cfg.action_head == "parallel":
            # The K action queries follow the prompt at training and at inference alike; their input
            # embeddings are the model's learned queries (the placeholder id is never embedded).
            ids = ids + [self.pad_token_id] * cfg.chunk_size
            query_mask = torch.zeros(len(ids), dtype=torch.bool)
            query_mask[prompt_len:] = True
            sample["action_query_mask"] = query_mask
            if actions is not None:
                sample["actions"] = torch.tensor(targets, dtype=torch.float32)
                sample["action_is_pad"] = torch.from_numpy(pad.copy())
                known = gaze_box is not None and bool(gaze_valid)
                if cfg.gaze_keypoint_weight > 0:
                    sample["gaze_point"] = torch.tensor(self.gaze_point(gaze_box) if known else np.zeros(2),
                                                        dtype=torch.float32)
                if cfg.gaze_colour_weight > 0:
                    sample["gaze_colour"] = torch.tensor(self.gaze_colour(frame, gaze_box) if known else np.zeros(3),
                                                         dtype=torch.float32)
                if cfg.gaze_keypoint_weight > 0 or cfg.gaze_colour_weight > 0:
                    sample["gaze_valid"] = torch.tensor(known)
        elif actions is not None:
            action_tokens = self.action_tokenizer.encode(targets)  # (K, D)
            box_ids = self.box_token_ids(gaze_box if gaze_valid else None) if cfg.answer_box else []
            ids = ids + box_ids + action_tokens.reshape(-1).tolist() + [self.eos_token_id]
            labels = torch.full((len(ids),), IGNORE_INDEX, dtype=torch.long)
            labels[prompt_len:] = torch.tensor(ids[prompt_len:])
            step_mask = torch.from_numpy(np.repeat(pad, cfg.action_dim))
            first_action = prompt_len + cfg.box_tokens
            labels[first_action:first_action + cfg.action_tokens_per_chunk][step_mask] = IGNORE_INDEX
            sample["labels"] = labels

        image_mask = torch.zeros(len(ids), dtype=torch.bool)
        image_mask[image_positions] = True
        if cfg.encodes_instruction:
            instruction_mask = torch.zeros(len(ids), dtype=torch.bool)
            instruction_mask[instruction_positions] = True
            sample["instruction_mask"] = instruction_mask
        sample["input_ids"] = torch.tensor(ids, dtype=torch.long)
        sample["attention_mask"] = torch.ones(len(ids), dtype=torch.long)
        sample["image_mask"] = image_mask
        return sample

    def _recon_frame(self, frame: np.ndarray, base: np.ndarray | None, wrist: np.ndarray | None,
                     gaze_box: Any) -> np.ndarray:
        size = self.config.vae.image_size
        if self.config.recon_target == "full" or gaze_box is None:
            if base is not None and wrist is not None:
                return self.stitch(base, wrist, size)
            return resize(frame, size, size)
        if base is None or wrist is None:
            raise ValueError("recon_target 'gaze' needs the raw base_image and wrist_image to crop the gaze box")
        return self.gaze_image(base, wrist, gaze_box, size)

    def collate(self, samples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Right-pads token sequences and stacks images into one batch."""
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        length = max(int(s["input_ids"].shape[0]) for s in samples)
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX, "image_mask": False,
                "action_query_mask": False, "instruction_mask": False}
        batch: dict[str, torch.Tensor] = {}
        for key, value in pads.items():
            if key not in samples[0]:
                continue
            rows = []
            for s in samples:
                seq = s[key]
                rows.append(torch.cat([seq, seq.new_full((length - seq.shape[0],), value)]))
            batch[key] = torch.stack(rows)
        for key in ("pixel_values", "recon_pixel_values", "state", "actions", "action_is_pad", "gaze_point",
                    "gaze_colour", "gaze_valid"):
            if key in samples[0]:
                batch[key] = torch.stack([s[key] for s in samples])
        return batch

    # Decoding --------------------------------------------------------------------------------
    def to_relative(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """(K, D) absolute actions -> what the tokens encode (delta mode: minus the state on the relative dims)."""
        dims = list(self.config.relative_dims)
        if not dims:
            return actions
        out = np.array(actions, dtype=np.float64, copy=True)
        out[:, dims] -= np.asarray(state, dtype=np.float64)[dims]
        return out

    def to_absolute(self, actions: np.ndarray, state: Any) -> np.ndarray:
        """The inverse of ``to_relative``: decoded values -> absolute robot-unit actions."""
        dims = list(self.config.relative_dims)
        if not dims:
            return actions
        if state is None:
            raise ValueError("state is needed to decode delta actions (action_mode 'delta')")
        state_arr = check_array(state, (self.config.state_dim,), "state")
        out = np.array(actions, dtype=np.float64, copy=True)
        out[:, dims] += state_arr[dims]
        return out

    def box_token_ids(self, gaze_box: Any) -> list[int]:
        """The answer's box tokens: normalised xyxy in [0, 1] -> 4 bin tokens; None = the whole view."""
        box = np.array([0.0, 0.0, 1.0, 1.0]) if gaze_box is None else check_array(gaze_box, (4,), "gaze_box")
        return self.action_tokenizer.encode(box * 2.0 - 1.0).tolist()

    def decode_box(self, token_ids: Any) -> np.ndarray | None:
        """The box an answer starts with (normalised xyxy of the base view), None without ``answer_box``."""
        ids = self._answer_ids(token_ids)
        if not self.config.answer_box:
            return None
        return (self.action_tokenizer.decode(ids[: self.config.box_tokens]) + 1.0) / 2.0

    def _answer_ids(self, token_ids: Any) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.shape[0] != self.config.answer_tokens_per_chunk:
            raise ValueError(f"expected {self.config.answer_tokens_per_chunk} answer tokens "
                             f"({self.config.box_tokens} box + {self.config.action_tokens_per_chunk} action), "
                             f"got {ids.shape[0]}")
        return ids

    def decode_continuous(self, values: Any, state: Any = None,
                          norm_stats: Mapping[str, Any] | None = None) -> np.ndarray:
        """The parallel head's (K, D) normalised actions -> (K, D) absolute actions in robot units
        (the state is added back on the relative dims in delta mode)."""
        cfg = self.config
        array = np.asarray(values, dtype=np.float64)
        if array.shape != (cfg.chunk_size, cfg.action_dim):
            raise ValueError(f"expected ({cfg.chunk_size}, {cfg.action_dim}) normalised actions, got {array.shape}")
        action_norm, _ = self.normalizers(norm_stats)
        return self.to_absolute(action_norm.unnormalize(np.clip(array, -1.0, 1.0)), state)

    def decode_actions(self, token_ids: Any, norm_stats: Mapping[str, Any] | None = None,
                       state: Any = None) -> np.ndarray:
        """The decoded answer (box tokens if ``answer_box``, then K*D action tokens) -> (K, D) absolute
        actions in robot units. ``state`` (the observed state the prompt carried) is required in delta
        action mode, where it is added back."""
        cfg = self.config
        ids = self._answer_ids(token_ids)[cfg.box_tokens:]
        action_norm, _ = self.normalizers(norm_stats)
        values = self.action_tokenizer.decode(ids).reshape(cfg.chunk_size, cfg.action_dim)
        return self.to_absolute(action_norm.unnormalize(values), state)
