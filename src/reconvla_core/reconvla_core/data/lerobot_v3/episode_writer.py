"""One episode's rows on their way into a LeRobot v3.0 dataset (see ``writer.py``): validated,
encoded in the writer's thread pool and staged in a parquet file of their own until the episode
is finished, so a discarded episode leaves nothing in the dataset."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reconvla_core.data.lerobot_v3.format import (
    ACTION_KEY,
    BASE_IMAGE_KEY,
    GAZE_KEY,
    IMAGE_KEYS,
    INTERVENTION_KEY,
    RELABELLED_KEY,
    SAMPLE_WEIGHT_KEY,
    STATE_KEY,
    WRIST_IMAGE_KEY,
)
from reconvla_core.data.lerobot_v3.image_codec import encode_image
from reconvla_core.data.lerobot_v3.stats import ImageHistogram, numeric_stats

if TYPE_CHECKING:
    from reconvla_core.data.lerobot_v3.writer import LeRobotV3Writer


@dataclass
class EpisodeSummary:
    """What ``EpisodeWriter.finish`` returns: the episode as the dataset numbers it."""

    episode_index: int
    task: str
    length: int
    metadata: dict[str, Any]


def _encode_and_count(rgb: np.ndarray, image_format: str) -> tuple[bytes, np.ndarray]:
    """Pool task: the encoded frame and its stats histogram (both off the reading thread)."""
    return encode_image(rgb, image_format), ImageHistogram.count(rgb)


class EpisodeWriter:
    """Rows of one episode, staged in their own parquet file until ``finish``."""

    def __init__(self, parent: LeRobotV3Writer, task: str, metadata: dict[str, Any]) -> None:
        import pyarrow.parquet as pq

        assert parent.staging is not None
        self.parent = parent
        self.task = task
        self.metadata = metadata
        self.length = 0
        self.histograms = {key: ImageHistogram() for key in IMAGE_KEYS}
        self._columns: dict[str, list[np.ndarray]] = {STATE_KEY: [], ACTION_KEY: [], GAZE_KEY: [], "timestamp": []}
        self._columns.update({key: [] for key in (INTERVENTION_KEY, RELABELLED_KEY, SAMPLE_WEIGHT_KEY)
                              if key in parent.features})
        fd, name = tempfile.mkstemp(suffix=".parquet", prefix="episode-", dir=parent.staging)
        os.close(fd)
        self.staged_path = Path(name)
        self._writer = pq.ParquetWriter(self.staged_path, parent.schema, compression="NONE", use_dictionary=False)
        self._pending: list[tuple[dict[str, list[Any]], dict[str, np.ndarray], int, int]] = []
        self._done = False

    def add_frames(
        self,
        base_images: Sequence[np.ndarray],
        wrist_images: Sequence[np.ndarray],
        state: np.ndarray,
        action: np.ndarray,
        gaze: np.ndarray,
        timestamps: np.ndarray,
        intervention: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
        relabelled: np.ndarray | None = None,
    ) -> None:
        """Append B frames: images HxWx3 uint8, state/action (B, 7), gaze (B, 5), timestamps (B,) s;
        intervention (B,) bool (default all False); in a dataset with sample weights, sample_weight
        (B,) (default all 1); relabelled (B,) bool (default all False; datasets from before the column
        ignore it)."""
        count = len(base_images)
        arrays = {
            STATE_KEY: np.asarray(state, dtype=np.float32).reshape(count, -1),
            ACTION_KEY: np.asarray(action, dtype=np.float32).reshape(count, -1),
            GAZE_KEY: np.asarray(gaze, dtype=np.float32).reshape(count, -1),
            "timestamp": np.asarray(timestamps, dtype=np.float32).reshape(count),
            INTERVENTION_KEY: (np.zeros(count, dtype=bool) if intervention is None
                               else np.asarray(intervention, dtype=bool).reshape(count)),
        }
        if RELABELLED_KEY in self.parent.features:
            arrays[RELABELLED_KEY] = (np.zeros(count, dtype=bool) if relabelled is None
                                      else np.asarray(relabelled, dtype=bool).reshape(count))
        if SAMPLE_WEIGHT_KEY in self.parent.features:
            arrays[SAMPLE_WEIGHT_KEY] = (np.ones(count, dtype=np.float32) if sample_weight is None
                                         else np.asarray(sample_weight, dtype=np.float32).reshape(count))
        elif sample_weight is not None:
            raise ValueError("sample_weight given, but the dataset was opened without sample_weights=True")
        if len(wrist_images) != count:
            raise ValueError(f"{count} base images but {len(wrist_images)} wrist images")
        for key in (STATE_KEY, ACTION_KEY, GAZE_KEY):
            expected = self.parent.features[key]["shape"][0]
            if arrays[key].shape != (count, expected):
                raise ValueError(f"{key} must have shape ({count}, {expected}), got {arrays[key].shape}")
        images = {BASE_IMAGE_KEY: list(base_images), WRIST_IMAGE_KEY: list(wrist_images)}
        for key, frames in images.items():
            expected_shape = self.parent.image_shapes[key]
            for frame in frames:
                if frame.shape != expected_shape or frame.dtype != np.uint8:
                    raise ValueError(f"{key}: frame {frame.shape} {frame.dtype}, dataset has {expected_shape} uint8")
        pool = self.parent._pool
        assert pool is not None
        image_format = self.parent.image_format
        futures = {key: [pool.submit(_encode_and_count, frame, image_format) for frame in frames]
                   for key, frames in images.items()}
        # Double buffering: this batch encodes in the pool while the caller reads the next one.
        self._pending.append((futures, arrays, self.length, count))
        for key, value in arrays.items():
            self._columns[key].append(value)
        self.length += count
        while len(self._pending) > 1:
            self._write_pending()

    def _write_pending(self) -> None:
        """Wait for the oldest batch's encodes and append its rows to the staged file."""
        import pyarrow as pa

        futures, arrays, start, count = self._pending.pop(0)
        schema = self.parent.schema
        columns: dict[str, Any] = {}
        for key in IMAGE_KEYS:
            cells = []
            for future in futures[key]:
                encoded, counts = future.result()
                self.histograms[key].add(counts)
                cells.append({"bytes": encoded, "path": None})
            columns[key] = pa.array(cells, type=schema.field(key).type)
        for key in (STATE_KEY, ACTION_KEY, GAZE_KEY):
            flat = pa.array(arrays[key].reshape(-1))
            columns[key] = pa.FixedSizeListArray.from_arrays(flat, arrays[key].shape[1])
        columns["timestamp"] = pa.array(arrays["timestamp"])
        for key in (INTERVENTION_KEY, RELABELLED_KEY, SAMPLE_WEIGHT_KEY):
            if key in arrays:
                columns[key] = pa.array(arrays[key])
        columns["frame_index"] = pa.array(np.arange(start, start + count, dtype=np.int64))
        for key in ("episode_index", "index", "task_index"):  # filled in at commit time
            columns[key] = pa.array(np.zeros(count, dtype=np.int64))
        self._writer.write_table(pa.Table.from_pydict(columns, schema=schema))

    def numeric_columns(self, episode_index: int, task_index: int, index_start: int) -> dict[str, np.ndarray]:
        columns = {key: np.concatenate(values) for key, values in self._columns.items()}
        columns["frame_index"] = np.arange(self.length, dtype=np.int64)
        columns["episode_index"] = np.full(self.length, episode_index, dtype=np.int64)
        columns["index"] = np.arange(index_start, index_start + self.length, dtype=np.int64)
        columns["task_index"] = np.full(self.length, task_index, dtype=np.int64)
        return columns

    def stats(self, episode_index: int, task_index: int, index_start: int) -> dict[str, dict[str, np.ndarray]]:
        out = {key: hist.stats() for key, hist in self.histograms.items()}
        for key, values in self.numeric_columns(episode_index, task_index, index_start).items():
            out[key] = numeric_stats(values)
        return {key: out[key] for key in self.parent.features if key in out}

    def finish(self) -> EpisodeSummary:
        if self._done:
            raise RuntimeError("episode already finished or discarded")
        while self._pending:
            self._write_pending()
        self._writer.close()
        self._done = True
        if self.length == 0:
            self.staged_path.unlink(missing_ok=True)
            raise ValueError("an episode needs at least one frame")
        return self.parent._commit_episode(self)

    def discard(self) -> None:
        if self._done:
            return
        for futures, *_ in self._pending:
            for future in (f for batch in futures.values() for f in batch):
                future.cancel()
        self._pending.clear()
        self._writer.close()
        self._done = True
        self.staged_path.unlink(missing_ok=True)
