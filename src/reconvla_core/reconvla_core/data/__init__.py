"""Data pipeline: rosbag2 episodes -> LeRobotDataset v3.0 -> model-ready samples.

- ``bag_writer.EpisodeBagWriter``: one episode -> one MCAP rosbag2 directory.
- ``bag_reader``: rosbag2 (MCAP / sqlite3) -> episodes aligned onto the dataset fps, through
  ``bag_storage`` (messages by topic and position), ``bag_messages`` (CDR -> values) and
  ``align`` (the time alignment, pure functions).
- ``lerobot_v3`` (package): the LeRobot v3.0 format, image codec, stats, writer and meta readers;
  ``build``: bags -> dataset.
- ``gaze``: gaze-box annotation backends (sim, boxes file, Grounding DINO).
- ``dataset``: ``VLADataset`` for training, over ``dataset_source.DatasetSource`` (one dataset in the
  mix), with ``augment`` and ``sampler.MixtureSampler``.

Importing this package never imports torch; names load lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "EpisodeBagWriter": "reconvla_core.data.bag_writer",
    "AlignConfig": "reconvla_core.data.align",
    "BagError": "reconvla_core.data.bag_storage",
    "BagTopics": "reconvla_core.data.bag_reader",
    "read_episode": "reconvla_core.data.bag_reader",
    "BuildConfig": "reconvla_core.data.build",
    "build_dataset": "reconvla_core.data.build",
    "LeRobotV3Writer": "reconvla_core.data.lerobot_v3",
    "load_info": "reconvla_core.data.lerobot_v3",
    "load_stats": "reconvla_core.data.lerobot_v3",
    "VLADataset": "reconvla_core.data.dataset",
    "DatasetSource": "reconvla_core.data.dataset_source",
    "FeatureMap": "reconvla_core.data.dataset_source",
    "MixtureSampler": "reconvla_core.data.sampler",
    "action_delta_stats": "reconvla_core.data.lerobot_v3",
    "compute_action_delta_stats": "reconvla_core.data.dataset_source",
    "write_action_delta_stats": "reconvla_core.data.dataset_source",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'reconvla_core.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
