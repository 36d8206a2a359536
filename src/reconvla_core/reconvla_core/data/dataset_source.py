"""The datasets a VLADataset mixes: ``DatasetSource`` (a LeRobot v3 dataset, its mixing weight and
which of its columns play which role) and ``LoadedSource`` (its numeric columns, episode split and
norm stats, loaded once); the episode split and the no-op frame filter; delta-action stats of
whole datasets."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reconvla_core.data.lerobot_v3 import (
    ACTION_DELTA_KEY,
    ACTION_KEY,
    BASE_IMAGE_KEY,
    DEFAULT_DELTA_CHUNK,
    GAZE_KEY,
    RELABELLED_KEY,
    SAMPLE_WEIGHT_KEY,
    STATE_KEY,
    STATS_PATH,
    WRIST_IMAGE_KEY,
    action_delta_stats,
    data_files,
    load_info,
    load_stats,
    load_tasks,
)


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


class LoadedSource:
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
        # Our builder's columns, present in some datasets
        for optional in (SAMPLE_WEIGHT_KEY, RELABELLED_KEY):
            if optional in features:
                numeric.append(optional)
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
        # (N,) bool: the action is an expert's label of a policy-driven state (sim DAgger), or None
        self.relabelled = arrays[RELABELLED_KEY].reshape(-1).astype(bool) if RELABELLED_KEY in arrays else None
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
