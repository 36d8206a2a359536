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
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reconvla_core.data.lerobot_v3 import (
    ACTION_KEY,
    BASE_IMAGE_KEY,
    GAZE_KEY,
    SAMPLE_WEIGHT_KEY,
    STATE_KEY,
    ACTION_DELTA_KEY,
    DEFAULT_DELTA_CHUNK,
    STATS_PATH,
    WRIST_IMAGE_KEY,
    action_delta_stats,
    data_files,
    decode_cell,
    load_info,
    load_stats,
    load_tasks,
)

try:  # torch is a hard dependency of training, but `import reconvla_core.data` must not need it
    from torch.utils.data import Dataset as _TorchDataset
    from torch.utils.data import Sampler as _TorchSampler
except ImportError:  # pragma: no cover - exercised only without torch
    _TorchDataset = object  # type: ignore[assignment,misc]
    _TorchSampler = object  # type: ignore[assignment,misc]

logger = logging.getLogger(__name__)

__all__ = ["DatasetSource", "FeatureMap", "MixtureSampler", "VLADataset", "action_delta_stats",
           "compute_action_delta_stats", "load_stats", "write_action_delta_stats"]


WHOLE_IMAGE_BOX = np.array([0.0, 0.0, 1.0, 1.0], dtype=np.float32)


@dataclass(frozen=True)
class FeatureMap:
    """Which columns of a source play which role. ``None``: the source lacks it (wrist -> black
    image, gaze -> whole image with gaze_valid False). Defaults: our own datasets."""

    base_image: str = BASE_IMAGE_KEY
    wrist_image: str | None = WRIST_IMAGE_KEY
    state: str = STATE_KEY
    action: str = ACTION_KEY
    gaze_box: str | None = GAZE_KEY

    @classmethod
    def from_dict(cls, mapping: Mapping[str, str | None]) -> FeatureMap:
        unknown = set(mapping) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown feature roles {sorted(unknown)}; roles: {sorted(cls.__dataclass_fields__)}")
        return cls(**dict(mapping))


# Mappings for common external LeRobot v3 ports (check a port's meta/info.json before use).
KNOWN_FEATURE_MAPS: dict[str, FeatureMap] = {
    "reconvla": FeatureMap(),
    "libero": FeatureMap(base_image="observation.images.image", wrist_image="observation.images.wrist_image",
                         gaze_box=None),
    "bridge": FeatureMap(base_image="observation.images.image_0", wrist_image=None, gaze_box=None),
}


@dataclass
class DatasetSource:
    """One LeRobot v3 dataset in the mix."""

    root: str | Path
    weight: float = 1.0
    features: FeatureMap | Mapping[str, str | None] | str | None = field(default_factory=FeatureMap)
    name: str | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"DatasetSource {self.root}: weight must be > 0, got {self.weight}")
        if self.features is None:
            self.features = FeatureMap()
        elif isinstance(self.features, str):
            if self.features not in KNOWN_FEATURE_MAPS:
                raise ValueError(f"unknown feature map {self.features!r}; known: {sorted(KNOWN_FEATURE_MAPS)}")
            self.features = KNOWN_FEATURE_MAPS[self.features]
        elif not isinstance(self.features, FeatureMap):
            self.features = FeatureMap.from_dict(self.features)
        self.name = self.name or self.root.name


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time image augmentation (off for evaluation)."""

    crop_scale: float = 0.9  # random crop keeping this fraction of each side, resized back
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2


def _read_numeric(root: Path, state_key: str, action_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    states, actions, episodes = [], [], []
    for path in data_files(root):
        table = pq.read_table(path, columns=[state_key, action_key, "episode_index"])
        states.append(_column_to_numpy(table.column(state_key)))
        actions.append(_column_to_numpy(table.column(action_key)))
        episodes.append(_column_to_numpy(table.column("episode_index")).reshape(-1))
    if not states:
        raise FileNotFoundError(f"{root} has no data/*/*.parquet files")
    return np.concatenate(states), np.concatenate(actions), np.concatenate(episodes)


def compute_action_delta_stats(roots: str | Path | Sequence[str | Path], chunk_size: int,
                               state_key: str = STATE_KEY, action_key: str = ACTION_KEY) -> dict[str, list]:
    """Delta stats (see ``action_delta_stats``) pooled over one or more LeRobot v3 dataset roots,
    as JSON-ready lists (the "action_delta" entry of the norm stats)."""
    if isinstance(roots, (str, Path)):
        roots = [roots]
    parts = [_read_numeric(Path(root), state_key, action_key) for root in roots]
    offset, episodes = 0, []
    for _, _, episode in parts:  # keep episodes of different roots apart
        episodes.append(episode.astype(np.int64) + offset)
        offset = int(episodes[-1].max()) + 1 if episode.size else offset
    stats = action_delta_stats(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                               np.concatenate(episodes), chunk_size)
    return {key: np.asarray(value).tolist() for key, value in stats.items()}


def write_action_delta_stats(root: str | Path, chunk_size: int = DEFAULT_DELTA_CHUNK) -> dict[str, list]:
    """Compute the delta stats of one dataset and cache them in its meta/stats.json ("action_delta")."""
    import json

    root = Path(root)
    entry = compute_action_delta_stats(root, chunk_size)
    path = root / STATS_PATH
    stats = json.loads(path.read_text())
    stats[ACTION_DELTA_KEY] = entry
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(stats, indent=2) + "\n")
    partial.replace(path)  # atomic: an interrupted write leaves the old stats.json
    return entry


_DELTA_CACHE: dict[tuple[str, int, int], dict[str, list]] = {}


class _Source:
    """Everything loaded for one dataset: numeric arrays, episode table, row-group map."""

    def __init__(self, spec: DatasetSource, split: str, val_fraction: float, seed: int,
                 chunk_size: int = DEFAULT_DELTA_CHUNK, static_threshold: float | None = None) -> None:
        import pyarrow.parquet as pq

        self.spec = spec
        root = Path(spec.root)
        self.info = load_info(root)
        self.fps = float(self.info["fps"])
        self.stats = load_stats(root)
        self.tasks = load_tasks(root)
        fmap: FeatureMap = spec.features  # type: ignore[assignment]
        self.fmap = fmap
        features = self.info["features"]
        for role in ("base_image", "wrist_image", "state", "action", "gaze_box"):
            key = getattr(fmap, role)
            if key is not None and key not in features:
                raise ValueError(f"{root}: no feature {key!r} for {role}; it has {sorted(features)}. "
                                 "Set the source's feature map (DatasetSource(features=...)).")
        for role in ("base_image", "wrist_image"):
            key = getattr(fmap, role)
            if key is not None and features[key]["dtype"] == "video":
                raise ValueError(f"{root}: {key} is stored as video; decoding mp4 needs PyAV/torchcodec, "
                                 "which this install lacks. Re-encode it as an image feature first.")
        numeric = [fmap.state, fmap.action, "episode_index", "frame_index", "task_index"]
        if fmap.gaze_box is not None:
            numeric.append(fmap.gaze_box)
        if SAMPLE_WEIGHT_KEY in features:
            numeric.append(SAMPLE_WEIGHT_KEY)
        columns: dict[str, list[np.ndarray]] = {key: [] for key in numeric}
        self.files: list[Path] = data_files(root)
        if not self.files:
            raise FileNotFoundError(f"{root} has no data/*/*.parquet files")
        file_of_row: list[np.ndarray] = []
        group_of_row: list[np.ndarray] = []
        offset_in_group: list[np.ndarray] = []
        for file_id, path in enumerate(self.files):
            parquet = pq.ParquetFile(path)
            table = parquet.read(columns=numeric)
            for key in numeric:
                columns[key].append(_column_to_numpy(table.column(key)))
            sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)]
            file_of_row.append(np.full(table.num_rows, file_id, dtype=np.int32))
            group_of_row.append(np.repeat(np.arange(len(sizes), dtype=np.int32), sizes))
            offset_in_group.append(np.concatenate([np.arange(n, dtype=np.int32) for n in sizes]) if sizes else
                                   np.zeros(0, dtype=np.int32))
        arrays = {key: np.concatenate(values) for key, values in columns.items()}
        self.state = arrays[fmap.state].astype(np.float32)
        self.action = arrays[fmap.action].astype(np.float32)
        self.gaze = arrays[fmap.gaze_box].astype(np.float32) if fmap.gaze_box is not None else None
        self.episode_index = arrays["episode_index"].reshape(-1).astype(np.int64)
        self.frame_index = arrays["frame_index"].reshape(-1).astype(np.int64)
        self.task_index = arrays["task_index"].reshape(-1).astype(np.int64)
        self.row_file = np.concatenate(file_of_row)
        self.row_group = np.concatenate(group_of_row)
        self.row_offset = np.concatenate(offset_in_group)
        # Episode boundaries in row space (rows of one episode are contiguous, in frame order).
        self.episodes = sorted(set(self.episode_index.tolist()))
        order = np.lexsort((self.frame_index, self.episode_index))
        if not np.array_equal(order, np.arange(order.size)):
            raise ValueError(f"{root}: data rows are not ordered by (episode_index, frame_index)")
        starts = np.searchsorted(self.episode_index, self.episodes, side="left")
        ends = np.searchsorted(self.episode_index, self.episodes, side="right")
        self.episode_end_row = {ep: int(end) for ep, end in zip(self.episodes, ends, strict=False)}
        self.split_episodes = split_episodes(self.episodes, split, val_fraction, seed)
        keep = np.isin(self.episode_index, self.split_episodes)
        self.static_rows = 0
        if static_threshold is not None:
            static = static_frames(self.action, self.episode_index, static_threshold)
            self.static_rows = int(np.count_nonzero(keep & static))
            keep &= ~static
        self.rows = np.flatnonzero(keep).astype(np.int64)
        # Per sample (row of self.rows): its sampling weight, or None when the dataset stores none.
        self.frame_weight = (arrays[SAMPLE_WEIGHT_KEY].reshape(-1).astype(np.float64)[self.rows]
                             if SAMPLE_WEIGHT_KEY in arrays else None)
        self.episode_start_row = {ep: int(start) for ep, start in zip(self.episodes, starts, strict=False)}
        self.instructions = self._instructions(root)
        self.chunk_size = chunk_size
        self.norm_stats = self._canonical_stats()

    def _instructions(self, root: Path) -> dict[int, str]:
        return {int(index): str(text) for index, text in self.tasks.items()}

    def _canonical_stats(self) -> dict[str, Any]:
        """This source's stats under our keys ('action', 'observation.state', ...)."""
        out: dict[str, Any] = {}
        for canonical, key in ((ACTION_KEY, self.fmap.action), (STATE_KEY, self.fmap.state),
                               (GAZE_KEY, self.fmap.gaze_box)):
            if key is not None and key in self.stats:
                out[canonical] = self.stats[key]
        out[ACTION_DELTA_KEY] = self._delta_stats()
        return out

    def _delta_stats(self) -> dict[str, list]:
        """Stats of a_{t+k} - s_t for this source's chunk size: cached in meta/stats.json by the
        builder, else computed once per process from all its frames (every split)."""
        cached = self.stats.get(ACTION_DELTA_KEY)
        if cached is not None and list(np.asarray(cached.get("chunk_size", [-1])).reshape(-1)) == [self.chunk_size]:
            return cached
        key = (str(Path(self.spec.root).resolve()), self.chunk_size, int(self.episode_index.size))
        if key not in _DELTA_CACHE:
            stats = action_delta_stats(self.state, self.action, self.episode_index, self.chunk_size)
            _DELTA_CACHE[key] = {name: np.asarray(value).tolist() for name, value in stats.items()}
        return _DELTA_CACHE[key]

    def __len__(self) -> int:
        return int(self.rows.size)


def static_frames(action: np.ndarray, episode_index: np.ndarray, threshold: float) -> np.ndarray:
    """Rows whose action moved less than ``threshold`` in every dim since the episode's previous row.

    The first row of an episode is never static. Rows must be grouped by episode in frame order.
    """
    if not (threshold > 0 and math.isfinite(threshold)):
        raise ValueError(f"static_threshold must be a positive number, got {threshold!r}")
    static = np.zeros(len(action), dtype=bool)
    if len(action) > 1:
        same_episode = episode_index[1:] == episode_index[:-1]
        moved = np.abs(np.diff(action.astype(np.float64), axis=0)).max(axis=1)
        static[1:] = same_episode & (moved < threshold)
    return static


def _column_to_numpy(column: Any) -> np.ndarray:
    """A pyarrow (fixed-size) list or scalar column -> numpy (N, D) or (N,)."""
    import pyarrow as pa

    chunked = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    kind = chunked.type
    if pa.types.is_fixed_size_list(kind):
        return chunked.flatten().to_numpy(zero_copy_only=False).reshape(len(chunked), kind.list_size)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return np.asarray(chunked.to_pylist(), dtype=np.float64)
    return chunked.to_numpy(zero_copy_only=False)


def split_episodes(episodes: Sequence[int], split: str, val_fraction: float, seed: int) -> list[int]:
    """Deterministic episode-level split: the same (episodes, fraction, seed) always gives the same sets."""
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    episodes = sorted(episodes)
    if split == "all":
        return episodes
    shuffled = list(np.random.default_rng(seed).permutation(episodes))
    n_val = int(math.ceil(val_fraction * len(episodes))) if val_fraction > 0 and len(episodes) > 1 else 0
    n_val = min(n_val, len(episodes) - 1) if len(episodes) > 1 else 0
    chosen = shuffled[:n_val] if split == "val" else shuffled[n_val:]
    return sorted(int(e) for e in chosen)


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
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if not sources:
            raise ValueError("VLADataset needs at least one DatasetSource")
        self.specs = [s if isinstance(s, DatasetSource) else DatasetSource(s) for s in sources]
        self.chunk_size = chunk_size
        self.processor = processor
        self.split = split
        self.seed = seed
        self.augment = AugmentConfig() if augment is True else (augment or None)
        self.sources = [_Source(spec, split, val_fraction, seed, chunk_size, static_threshold) for spec in self.specs]
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
    def _decode(source: _Source, cell: Any) -> np.ndarray:
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
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return ("action_is_pad", "gaze_valid")
    return tuple(name for name in ("action_is_pad", "gaze_valid") if name in parameters)


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


class MixtureSampler(_TorchSampler):
    """``num_samples`` indices: source s with probability weight_s / sum(weights), then a frame of s,
    uniformly or, with ``frame_weights`` (one per index), in proportion to them. Sources with no
    frames are never drawn. ``set_epoch`` reshuffles reproducibly."""

    def __init__(self, offsets: np.ndarray, weights: np.ndarray, num_samples: int, seed: int = 0,
                 frame_weights: np.ndarray | None = None) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.offsets = np.asarray(offsets, dtype=np.int64)
        lengths = np.diff(self.offsets)
        weights = np.asarray(weights, dtype=np.float64) * (lengths > 0)
        if weights.sum() <= 0:
            raise ValueError("no source has frames to sample from")
        self.probabilities = weights / weights.sum()
        self.lengths = lengths
        self.frame_weights = None
        if frame_weights is not None:
            frame_weights = np.asarray(frame_weights, dtype=np.float64).reshape(-1)
            if frame_weights.shape[0] != self.offsets[-1] or not np.all(np.isfinite(frame_weights)) \
                    or np.any(frame_weights < 0):
                raise ValueError(f"frame_weights must be {self.offsets[-1]} finite values >= 0")
            self.frame_weights = frame_weights
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        sources = rng.choice(len(self.probabilities), size=self.num_samples, p=self.probabilities)
        within = np.floor(rng.random(self.num_samples) * self.lengths[sources]).astype(np.int64)
        if self.frame_weights is not None:  # its own stream: unweighted draws stay as they were
            weighted = np.random.default_rng([self.seed, self.epoch, 1])
            for source in np.unique(sources).tolist():
                w = self.frame_weights[self.offsets[source]:self.offsets[source + 1]]
                if w.sum() <= 0:
                    continue  # all zero: uniform
                mask = sources == source
                within[mask] = weighted.choice(w.shape[0], size=int(mask.sum()), p=w / w.sum())
        return self.offsets[sources] + within

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())
