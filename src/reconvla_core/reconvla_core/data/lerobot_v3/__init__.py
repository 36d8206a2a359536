"""LeRobotDataset v3.0: our writer and the readers of its meta files (ours or external ports).

The layout follows lerobot 0.4.x (``lerobot/datasets/utils.py``, ``lerobot_dataset.py``,
``compute_stats.py``)::

    meta/info.json                                codebase_version "v3.0", fps, robot_type, features, paths
    meta/stats.json                               per feature: min max mean std count q01 q10 q50 q90 q99
                                                  (+ "action_delta": a_{t+k} - s_t, chunk 5, for delta actions)
    meta/tasks.parquet                            task strings (pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet      one row per episode (+ per-episode stats/* columns)
    data/chunk-000/file-000.parquet               one row per frame, many episodes per file

Camera frames are LeRobot ``image`` features: a struct ``{bytes, path}`` column holding
JPEG (quality 95, the default) or PNG (lossless) bytes, the way HF ``datasets.Image`` stores
embedded images. JPEG is the default because lossless PNG of 640x480 camera frames is ~4x slower
to encode (OpenCV 4-9 ms against Pillow's JPEG 1-2 ms, one core here) and 3-9x larger; LeRobot's
own default, video, is lossy too.

Split the way LeRobot splits its datasets package:

- ``format``: feature keys, paths, the ``features`` dict and the parquet schema;
- ``image_codec``: frames <-> PNG/JPEG cell bytes;
- ``stats``: numeric and image stats, delta-action stats;
- ``episode_writer`` / ``writer``: one episode's rows, staged / the dataset (data files, meta, stats);
- ``reader``: ``load_info``, ``load_stats``, ``load_tasks``, ``load_episodes``, ``data_files``.

The names below are this package's API: import them from ``reconvla_core.data.lerobot_v3``.
"""

from __future__ import annotations

from reconvla_core.data.lerobot_v3.episode_writer import EpisodeSummary, EpisodeWriter
from reconvla_core.data.lerobot_v3.format import (
    ACTION_KEY,
    BASE_IMAGE_KEY,
    BUILD_REPORT_PATH,
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODES_PATH,
    GAZE_KEY,
    GAZE_NAMES,
    IMAGE_KEYS,
    INFO_PATH,
    INTERVENTION_KEY,
    RELABELLED_KEY,
    QUANTILE_KEYS,
    QUANTILES,
    ROBOT_TYPE,
    SAMPLE_WEIGHT_KEY,
    STAT_KEYS,
    STATE_KEY,
    STATS_PATH,
    TASKS_PATH,
    WRIST_IMAGE_KEY,
    make_features,
)
from reconvla_core.data.lerobot_v3.image_codec import (
    IMAGE_FORMATS,
    decode_cell,
    decode_image,
    encode_image,
    encode_jpeg,
    encode_png,
)
from reconvla_core.data.lerobot_v3.reader import (
    data_files,
    is_dataset,
    load_episodes,
    load_info,
    load_stats,
    load_tasks,
)
from reconvla_core.data.lerobot_v3.stats import (
    ACTION_DELTA_KEY,
    DEFAULT_DELTA_CHUNK,
    ImageHistogram,
    action_delta_stats,
    numeric_stats,
)
from reconvla_core.data.lerobot_v3.writer import LeRobotV3Writer, write_episodes, write_tasks

__all__ = [
    "ACTION_DELTA_KEY", "ACTION_KEY", "BASE_IMAGE_KEY", "BUILD_REPORT_PATH", "CODEBASE_VERSION", "DATA_PATH",
    "DEFAULT_DELTA_CHUNK", "EPISODES_PATH", "GAZE_KEY", "GAZE_NAMES", "IMAGE_FORMATS", "IMAGE_KEYS", "INFO_PATH",
    "INTERVENTION_KEY", "QUANTILES", "QUANTILE_KEYS", "RELABELLED_KEY", "ROBOT_TYPE", "SAMPLE_WEIGHT_KEY",
    "STATE_KEY", "STATS_PATH", "STAT_KEYS", "TASKS_PATH", "WRIST_IMAGE_KEY", "EpisodeSummary", "EpisodeWriter",
    "ImageHistogram", "LeRobotV3Writer", "action_delta_stats", "data_files", "decode_cell", "decode_image",
    "encode_image", "encode_jpeg", "encode_png", "is_dataset", "load_episodes", "load_info", "load_stats",
    "load_tasks", "make_features", "numeric_stats", "write_episodes", "write_tasks",
]
