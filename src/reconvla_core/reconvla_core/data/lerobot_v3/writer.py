"""Write a LeRobot v3.0 dataset (pyarrow only): episodes into shared data files, then stats and
meta. A build is written into a hidden sibling directory and moved into place only when complete
(``meta/info.json`` is the last file written), so an interrupted build never leaves a directory that
looks like a dataset."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from reconvla_core.data.lerobot_v3.episode_writer import EpisodeSummary, EpisodeWriter
from reconvla_core.data.lerobot_v3.format import (
    ACTION_KEY,
    BUILD_REPORT_PATH,
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DATA_FILE_SIZE_IN_MB,
    DEFAULT_VIDEO_FILE_SIZE_IN_MB,
    EPISODES_PATH,
    IMAGE_KEYS,
    INFO_PATH,
    ROBOT_TYPE,
    STAT_KEYS,
    STATE_KEY,
    STATS_PATH,
    TASKS_PATH,
    arrow_schema,
    make_features,
)
from reconvla_core.data.lerobot_v3.image_codec import IMAGE_FORMATS
from reconvla_core.data.lerobot_v3.stats import (
    ACTION_DELTA_KEY,
    DEFAULT_DELTA_CHUNK,
    ImageHistogram,
    action_delta_stats,
    numeric_stats,
    stats_to_json,
)

logger = logging.getLogger(__name__)


class LeRobotV3Writer:
    """Write episodes into a new LeRobot v3.0 dataset at ``root`` (aside, then moved into place).

    Usage::

        with LeRobotV3Writer(root, fps=10, image_shapes={...}) as writer:
            episode = writer.start_episode(task, metadata={...})
            episode.add_frames(base_images, wrist_images, state, action, gaze, timestamps)
            episode.finish()        # or episode.discard()
            writer.finalize()       # stats + meta, then the directory appears at root
    """

    def __init__(
        self,
        root: str | Path,
        *,
        fps: float,
        image_shapes: dict[str, tuple[int, int, int]],
        image_format: str = "jpeg",
        robot_type: str = ROBOT_TYPE,
        row_group_frames: int = 8,
        data_file_size_in_mb: float = DEFAULT_DATA_FILE_SIZE_IN_MB,
        overwrite: bool = False,
        encode_workers: int | None = None,
        sample_weights: bool = False,
    ) -> None:
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        if row_group_frames < 1:
            raise ValueError(f"row_group_frames must be >= 1, got {row_group_frames}")
        self.root = Path(root)
        self.fps = fps
        self.features = make_features(image_shapes, sample_weights=sample_weights)
        self.image_shapes = {key: tuple(int(v) for v in image_shapes[key]) for key in IMAGE_KEYS}
        self.image_format = image_format
        self.robot_type = robot_type
        self.row_group_frames = row_group_frames
        self.data_file_size_in_mb = data_file_size_in_mb
        self.overwrite = overwrite
        self.encode_workers = encode_workers or min(4, os.cpu_count() or 1)
        self.schema = arrow_schema(self.features)
        self.staging: Path | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._data_writer: Any = None
        self._file_index = 0
        self._file_start = 0
        self._episodes: list[dict[str, Any]] = []
        self._tasks: dict[str, int] = {}
        self._numeric: dict[str, list[np.ndarray]] = {}
        self._images: dict[str, ImageHistogram] = {key: ImageHistogram() for key in IMAGE_KEYS}
        self.total_frames = 0
        self.finalized = False

    # -- lifecycle
    def __enter__(self) -> LeRobotV3Writer:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.finalized:
            self.abort()

    def open(self) -> None:
        if self.root.exists() and not self.overwrite:
            raise FileExistsError(f"{self.root} exists already; pass overwrite=True (--overwrite) to replace it")
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.partial-", dir=self.root.parent))
        self._pool = ThreadPoolExecutor(max_workers=self.encode_workers, thread_name_prefix="encode")
        logger.debug("staging dataset in %s", self.staging)

    def abort(self) -> None:
        """Drop everything written so far; nothing appears at ``root``."""
        self._close_data_writer()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self.staging is not None and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)
        self.staging = None

    # -- episodes
    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def start_episode(self, task: str, metadata: dict[str, Any] | None = None) -> EpisodeWriter:
        if self.staging is None:
            raise RuntimeError("writer is not open")
        return EpisodeWriter(self, task, dict(metadata or {}))

    def _commit_episode(self, episode: EpisodeWriter) -> EpisodeSummary:
        """Move the episode's staged rows into the current data file and record its metadata."""
        import pyarrow.parquet as pq

        assert self.staging is not None
        length = episode.length
        episode_index = len(self._episodes)
        task_index = self._tasks.setdefault(episode.task, len(self._tasks))
        if self._data_writer is not None and self._data_size_mb() >= self.data_file_size_in_mb:
            self._close_data_writer()
            self._file_index += 1
            self._file_start = self.total_frames
        if self._data_writer is None:
            path = self.staging / DATA_PATH.format(chunk_index=self._chunk(), file_index=self._file_in_chunk())
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(
                path, self.schema, compression=self._compression(), use_dictionary=False, write_statistics=True
            )
        staged = pq.ParquetFile(episode.staged_path)
        frame_offset = self.total_frames
        for batch in staged.iter_batches(batch_size=self.row_group_frames):
            table = _fill_indices(batch, self.schema, episode_index, frame_offset, task_index)
            frame_offset += table.num_rows
            self._data_writer.write_table(table, row_group_size=self.row_group_frames)
        staged.close()
        episode.staged_path.unlink()
        ep_stats = episode.stats(episode_index, task_index, self.total_frames)
        for key, value in episode.numeric_columns(episode_index, task_index, self.total_frames).items():
            self._numeric.setdefault(key, []).append(value)
        for key in IMAGE_KEYS:
            self._images[key].merge(episode.histograms[key])
        row = {
            "episode_index": episode_index,
            "tasks": [episode.task],
            "length": length,
            "data/chunk_index": self._chunk(),
            "data/file_index": self._file_in_chunk(),
            "dataset_from_index": self.total_frames,
            "dataset_to_index": self.total_frames + length,
        }
        for feature, entry in ep_stats.items():
            for key in STAT_KEYS:
                row[f"stats/{feature}/{key}"] = np.asarray(entry[key]).tolist()
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        row.update(episode.metadata)
        self._episodes.append(row)
        self.total_frames += length
        return EpisodeSummary(episode_index, episode.task, length, episode.metadata)

    def _chunk(self) -> int:
        return self._file_index // DEFAULT_CHUNK_SIZE

    def _file_in_chunk(self) -> int:
        return self._file_index % DEFAULT_CHUNK_SIZE

    def _data_size_mb(self) -> float:
        assert self.staging is not None
        path = self.staging / DATA_PATH.format(chunk_index=self._chunk(), file_index=self._file_in_chunk())
        return path.stat().st_size / 2**20 if path.exists() else 0.0

    def _compression(self) -> dict[str, str]:
        codecs: dict[str, str] = {}
        for key, feature in self.features.items():
            if feature["dtype"] == "image":
                codecs[f"{key}.bytes"] = "NONE"  # PNG/JPEG bytes are compressed already
                codecs[f"{key}.path"] = "NONE"
            elif list(feature["shape"]) == [1]:
                codecs[key] = "SNAPPY"
            else:
                codecs[f"{key}.list.element"] = "SNAPPY"
        return codecs

    def _close_data_writer(self) -> None:
        if self._data_writer is not None:
            self._data_writer.close()
            self._data_writer = None

    # -- finishing
    def finalize(self, build_report: dict[str, Any] | None = None) -> Path:
        """Write stats and meta, then move the dataset into place. Raises if no episode was written."""
        if self.staging is None:
            raise RuntimeError("writer is not open")
        if not self._episodes:
            raise ValueError("no episode was written; nothing to finalize")
        self._close_data_writer()
        assert self._pool is not None
        self._pool.shutdown(wait=True)
        self._pool = None
        staging = self.staging
        stats = {key: numeric_stats(np.concatenate(values)) for key, values in self._numeric.items()}
        stats.update({key: hist.stats() for key, hist in self._images.items()})
        ordered = {key: stats[key] for key in self.features if key in stats}
        if all(key in self._numeric for key in (STATE_KEY, ACTION_KEY, "episode_index")):
            # cached for training in delta action mode (VLADataset computes other chunk sizes itself)
            ordered[ACTION_DELTA_KEY] = action_delta_stats(
                np.concatenate(self._numeric[STATE_KEY]), np.concatenate(self._numeric[ACTION_KEY]),
                np.concatenate(self._numeric["episode_index"]), DEFAULT_DELTA_CHUNK)
        _write_json(staging / STATS_PATH, stats_to_json(ordered))
        write_tasks(staging / TASKS_PATH, self._tasks)
        write_episodes(staging / EPISODES_PATH.format(chunk_index=0, file_index=0), self._episodes)
        if build_report is not None:
            _write_json(staging / BUILD_REPORT_PATH, build_report)
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": self.total_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": DEFAULT_CHUNK_SIZE,
            "data_files_size_in_mb": self.data_file_size_in_mb,
            "video_files_size_in_mb": DEFAULT_VIDEO_FILE_SIZE_IN_MB,
            "fps": int(self.fps) if float(self.fps).is_integer() else self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "features": self.features,
        }
        _write_json(staging / INFO_PATH, info)  # last file: its presence marks a complete dataset
        _move_into_place(staging, self.root, self.overwrite)
        self.staging = None
        self.finalized = True
        logger.info("wrote %s: %d episodes, %d frames", self.root, len(self._episodes), self.total_frames)
        return self.root


def _fill_indices(batch: Any, schema: Any, episode_index: int, index_start: int, task_index: int) -> Any:
    import pyarrow as pa

    count = batch.num_rows
    table = pa.Table.from_batches([batch], schema=schema)
    replacements = {
        "episode_index": np.full(count, episode_index, dtype=np.int64),
        "index": np.arange(index_start, index_start + count, dtype=np.int64),
        "task_index": np.full(count, task_index, dtype=np.int64),
    }
    for key, values in replacements.items():
        table = table.set_column(table.schema.get_field_index(key), schema.field(key), pa.array(values))
    return table


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=4, ensure_ascii=False)


def _move_into_place(staging: Path, root: Path, overwrite: bool) -> None:
    if root.exists():
        if not overwrite:
            raise FileExistsError(f"{root} appeared while building; the new dataset is left in {staging}")
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.replace(root, old)
        os.replace(staging, root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, root)


def write_tasks(path: Path, tasks: dict[str, int]) -> None:
    """meta/tasks.parquet as pandas writes ``DataFrame({"task_index": [...]}, index=tasks)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ordered = sorted(tasks.items(), key=lambda item: item[1])
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
             "metadata": {"encoding": "UTF-8"}}
        ],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    schema = pa.schema(
        [pa.field("task_index", pa.int64()), pa.field("__index_level_0__", pa.string())],
        metadata={b"pandas": json.dumps(pandas_meta).encode()},
    )
    table = pa.table(
        {"task_index": [index for _, index in ordered], "__index_level_0__": [task for task, _ in ordered]},
        schema=schema,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def write_episodes(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys: list[str] = []
    for row in rows:
        keys.extend(key for key in row if key not in keys)
    table = pa.table({key: [row.get(key) for row in rows] for key in keys})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
