"""Training reader: a torch Dataset over one or more LeRobot v3 datasets.

Each :class:`DatasetSource` is one dataset (ours or an external LeRobot v3 port such as
LIBERO or Bridge) with its own mixing weight, its own feature-key mapping and its own
stats. Numeric columns are loaded at construction; camera frames are read per sample
from small parquet row groups (cached per worker) and decoded with PIL.

``ds[i]`` returns the raw sample dict when ``processor`` is None, else
``processor(base_image=..., wrist_image=..., instruction=..., state=..., actions=...,
gaze_box=..., norm_stats=<that source's stats>)``. Split is by episode, deterministic in
``seed``; ``ds.sampler(n, seed)`` draws sources by their weights (not their sizes), and within a
source that stores a per-frame ``sample_weight`` (``dataset build --interventions weight=W``)
frames in proportion to it (``ds.frame_weights()``).

``static_threshold`` drops "no-op" frames as samples (OpenVLA does the same for BridgeData):
frames whose commanded action moved less than the threshold in every dimension since the
previous frame, e.g. while a demonstrator waits for the gripper to close. Their observation
is the same as the frame that ends the wait, so they teach a policy to stop where it must go
on. The frames still serve as chunk targets of earlier samples; the dataset is not changed.

``relabelled_actions`` says what a ``relabelled`` frame (a DAgger state the policy drove, labelled by
the expert) teaches: ``"step"`` its own step (the chunk ends at the next relabelled frame: later steps
would carry the policy's motion), ``"none"`` no action (every step padded): only its observation's
targets count, the gaze and the reconstruction. "DAgger on the gaze" uses ``"none"``.

The sources and their loading: ``dataset_source.py``; augmentation: ``augment.py``; the mixture
sampler: ``sampler.py``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reconvla_core.data.augment import WHOLE_IMAGE_BOX, AugmentConfig, colour_jitter, crop_box, random_crop
from reconvla_core.data.dataset_source import (
    DatasetSource,
    FeatureMap,
    LoadedSource,
    compute_action_delta_stats,
    write_action_delta_stats,
)
from reconvla_core.data.lerobot_v3 import action_delta_stats, decode_cell, load_stats
from reconvla_core.data.lerobot_v3.format import RELABELLED_ACTIONS
from reconvla_core.data.sampler import MixtureSampler

try:  # torch is a hard dependency of training, but `import reconvla_core.data` must not need it
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover - exercised only without torch
    _TorchDataset = object  # type: ignore[assignment,misc]

logger = logging.getLogger(__name__)

# The training reader's API; the names defined elsewhere are imported here so the callers of this
# module need one import (e.g. ``from reconvla_core.data.dataset import DatasetSource, VLADataset``).
__all__ = ["DatasetSource", "FeatureMap", "MixtureSampler", "VLADataset", "action_delta_stats",
           "compute_action_delta_stats", "load_stats", "write_action_delta_stats"]


class VLADataset(_TorchDataset):
    """Frames of one or more LeRobot v3 datasets as VLA training samples (see module doc)."""

    def __init__(
        self,
        sources: Sequence[DatasetSource | str | Path],
        chunk_size: int = 5,
        processor: Callable[..., Any] | None = None,
        split: str = "train",
        val_fraction: float = 0.1,
        augment: bool | AugmentConfig = False,
        seed: int = 0,
        image_cache_groups: int = 4,
        static_threshold: float | None = None,
        relabelled_actions: str = "step",
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if relabelled_actions not in RELABELLED_ACTIONS:
            raise ValueError(f"relabelled_actions must be one of {RELABELLED_ACTIONS}, got {relabelled_actions!r}")
        self.relabelled_actions = relabelled_actions
        if not sources:
            raise ValueError("VLADataset needs at least one DatasetSource")
        self.specs = [s if isinstance(s, DatasetSource) else DatasetSource(s) for s in sources]
        self.chunk_size = chunk_size
        self.processor = processor
        self.split = split
        self.seed = seed
        self.augment = AugmentConfig() if augment is True else (augment or None)
        self.sources = [LoadedSource(spec, split, val_fraction, seed, chunk_size, static_threshold) for spec in self.specs]
        self.static_frames_dropped = sum(source.static_rows for source in self.sources)
        if self.static_frames_dropped:
            logger.info("%s split: %d static (no-op) frames dropped as samples", split, self.static_frames_dropped)
        self.lengths = np.array([len(s) for s in self.sources], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        for spec, length in zip(self.specs, self.lengths, strict=False):
            if length == 0:
                logger.warning("source %s has no frames in split %r", spec.name, split)
        self.weights = np.array([spec.weight for spec in self.specs], dtype=np.float64)
        self._cache_size = max(1, image_cache_groups)
        self._cache: OrderedDict[tuple[int, int, int], dict[str, list[Any]]] = OrderedDict()
        self._files: dict[tuple[int, int], Any] = {}
        self._rng: np.random.Generator | None = None
        self._extra_processor_args = _accepted_extras(processor)

    # -- indexing
    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Global sample index -> (source id, row in that source's data)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        source_id = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return source_id, int(self.sources[source_id].rows[index - self.offsets[source_id]])

    def norm_stats(self, source_id: int = 0) -> dict[str, Any]:
        return self.sources[source_id].norm_stats

    def frame_weights(self) -> np.ndarray | None:
        """(len(self),) per-sample weights within their source (the datasets' ``sample_weight``, 1
        for a source without it); None when no source stores weights."""
        if all(source.frame_weight is None for source in self.sources):
            return None
        return np.concatenate([source.frame_weight if source.frame_weight is not None
                               else np.ones(len(source)) for source in self.sources])

    def sampler(self, num_samples: int, seed: int = 0) -> MixtureSampler:
        """Sampler drawing a source by its mixing weight, then a frame within it (uniformly, or by
        the source's per-frame sample weights)."""
        return MixtureSampler(self.offsets, self.weights, num_samples, seed, frame_weights=self.frame_weights())

    # -- samples
    def __getitem__(self, index: int) -> Any:
        source_id, row = self.locate(int(index))
        raw = self.raw_sample(source_id, row)
        if self.augment is not None:
            raw = self._augment(raw)
        if self.processor is None:
            return raw
        return self.processor(
            base_image=raw["base_image"],
            wrist_image=raw["wrist_image"],
            instruction=raw["instruction"],
            state=raw["state"],
            actions=raw["actions"],
            gaze_box=raw["gaze_box"],
            norm_stats=self.sources[source_id].norm_stats,
            **{key: raw[key] for key in self._extra_processor_args},
        )

    def raw_sample(self, source_id: int, row: int) -> dict[str, Any]:
        source = self.sources[source_id]
        episode = int(source.episode_index[row])
        end = source.episode_end_row[episode]
        chunk_rows = np.arange(row, row + self.chunk_size)
        is_pad = chunk_rows >= end
        if source.relabelled is not None:
            # Step k continues step 0 only if the arm executed the labels of frames row..row+k-1; after
            # a relabelled frame it followed the policy, whose motion the later labels would carry.
            relabelled = source.relabelled[np.minimum(chunk_rows[:-1], end - 1)]
            is_pad[1:] |= np.cumsum(relabelled) > 0
            if self.relabelled_actions == "none" and source.relabelled[row]:
                is_pad[:] = True  # the expert's label is not learnt here; the frame's gaze still is
        actions = source.action[np.minimum(chunk_rows, end - 1)].copy()  # pad by repeating the last action
        if source.gaze is not None:
            gaze_box = source.gaze[row, :4].copy()
            gaze_valid = bool(source.gaze[row, 4] >= 0.5) if source.gaze.shape[1] > 4 else True
        else:
            gaze_box, gaze_valid = WHOLE_IMAGE_BOX.copy(), False
        base, wrist = self._images(source_id, row)
        return {
            "base_image": base,
            "wrist_image": wrist,
            "instruction": source.instructions.get(int(source.task_index[row]), ""),
            "state": source.state[row].copy(),
            "actions": actions,
            "action_is_pad": is_pad,
            "gaze_box": gaze_box,
            "gaze_valid": gaze_valid,
            "episode_index": episode,
            "frame_index": int(source.frame_index[row]),
            "dataset_index": source_id,
        }

    def _images(self, source_id: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        source = self.sources[source_id]
        file_id, group, offset = int(source.row_file[row]), int(source.row_group[row]), int(source.row_offset[row])
        key = (source_id, file_id, group)
        cached = self._cache.get(key)
        if cached is None:
            columns = [source.fmap.base_image] + ([source.fmap.wrist_image] if source.fmap.wrist_image else [])
            parquet = self._parquet(source_id, file_id)
            table = parquet.read_row_group(group, columns=columns)
            cached = {name: table.column(name).to_pylist() for name in columns}
            self._cache[key] = cached
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        base = self._decode(source, cached[source.fmap.base_image][offset])
        if source.fmap.wrist_image:
            wrist = self._decode(source, cached[source.fmap.wrist_image][offset])
        else:
            wrist = np.zeros_like(base)
        return base, wrist

    @staticmethod
    def _decode(source: LoadedSource, cell: Any) -> np.ndarray:
        return decode_cell(source.spec.root, cell)

    def _parquet(self, source_id: int, file_id: int) -> Any:
        import pyarrow.parquet as pq

        key = (source_id, file_id)
        handle = self._files.get(key)
        if handle is None:  # opened lazily: each DataLoader worker gets its own handles
            handle = pq.ParquetFile(self.sources[source_id].files[file_id])
            self._files[key] = handle
        return handle

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"], state["_cache"], state["_rng"] = {}, OrderedDict(), None
        return state

    # -- augmentation
    def _generator(self) -> np.random.Generator:
        if self._rng is None:
            import os

            worker_seed = 0
            try:
                from torch.utils.data import get_worker_info

                info = get_worker_info()
                worker_seed = int(info.seed) if info is not None else 0
            except ImportError:
                pass
            self._rng = np.random.default_rng([self.seed, worker_seed, os.getpid()])
        return self._rng

    def _augment(self, raw: dict[str, Any]) -> dict[str, Any]:
        config = self.augment
        assert config is not None
        rng = self._generator()
        raw = dict(raw)
        raw["base_image"], crop = random_crop(raw["base_image"], config.crop_scale, rng)
        raw["wrist_image"], _ = random_crop(raw["wrist_image"], config.crop_scale, rng)
        raw["gaze_box"] = crop_box(raw["gaze_box"], crop) if raw["gaze_valid"] else raw["gaze_box"]
        raw["base_image"] = colour_jitter(raw["base_image"], config, rng)
        raw["wrist_image"] = colour_jitter(raw["wrist_image"], config, rng)
        return raw


def _accepted_extras(processor: Callable[..., Any] | None) -> tuple[str, ...]:
    """Which of ``action_is_pad`` / ``gaze_valid`` the processor takes (ReconVLAProcessor takes both:
    padded chunk steps get no loss, an invalid gaze box reconstructs the whole frame)."""
    if processor is None:
        return ()
    import inspect

    try:
        parameters = inspect.signature(processor).parameters
    except (TypeError, ValueError):
        return ()
    extras = ("action_is_pad", "gaze_valid")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return extras
    return tuple(name for name in extras if name in parameters)
