"""What a LeRobot v3.0 dataset holds: feature keys, file paths, the ``features`` dict and the
parquet schema of the data files (as lerobot 0.4.x ``datasets/utils.py`` defines them)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from reconvla_core.piper import ACTION_NAMES

CODEBASE_VERSION = "v3.0"
ROBOT_TYPE = "agilex_piper"
BASE_IMAGE_KEY = "observation.images.base"
WRIST_IMAGE_KEY = "observation.images.wrist"
IMAGE_KEYS = (BASE_IMAGE_KEY, WRIST_IMAGE_KEY)
STATE_KEY = "observation.state"
ACTION_KEY = "action"
GAZE_KEY = "observation.gaze_box"
GAZE_NAMES = ("x1", "y1", "x2", "y2", "valid")
# Per frame: the operator's leader arm drove the robot (HG-DAgger interventions; False without them)
INTERVENTION_KEY = "intervention"
# Per frame: the action is an expert's label for a state the policy drove (sim DAgger), not what the
# arm executed; a sample's chunk stops at the first such frame after its own (False without them)
RELABELLED_KEY = "relabelled"
# What a relabelled frame teaches in training (data.relabelled_actions): its own step, or no action.
RELABELLED_ACTIONS: tuple[str, ...] = ("step", "none")
# Per frame, only in datasets built with `--interventions weight=W`: the frame's sampling weight
SAMPLE_WEIGHT_KEY = "sample_weight"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{int(q * 100):02d}" for q in QUANTILES)
STAT_KEYS = ("min", "max", "mean", "std", "count") + QUANTILE_KEYS

# Paths inside the dataset root (LeRobot's; BUILD_REPORT_PATH is ours and LeRobot ignores it)
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE_PATTERN + ".parquet"
BUILD_REPORT_PATH = "meta/reconvla_build.json"
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 200  # info.json carries it as LeRobot's does; no video is written


def make_features(image_shapes: dict[str, tuple[int, int, int]],
                  sample_weights: bool = False) -> dict[str, dict[str, Any]]:
    """The LeRobot ``features`` dict of our datasets, in column order."""
    features: dict[str, dict[str, Any]] = {}
    for key in IMAGE_KEYS:
        features[key] = {"dtype": "image", "shape": list(image_shapes[key]), "names": ["height", "width", "channels"]}
    features[STATE_KEY] = {"dtype": "float32", "shape": [len(ACTION_NAMES)], "names": list(ACTION_NAMES)}
    features[ACTION_KEY] = {"dtype": "float32", "shape": [len(ACTION_NAMES)], "names": list(ACTION_NAMES)}
    features[GAZE_KEY] = {"dtype": "float32", "shape": [len(GAZE_NAMES)], "names": list(GAZE_NAMES)}
    # Scalars per frame, like LeRobot's own "next.done" (bool) and "timestamp" (float32)
    features[INTERVENTION_KEY] = {"dtype": "bool", "shape": [1], "names": None}
    features[RELABELLED_KEY] = {"dtype": "bool", "shape": [1], "names": None}
    if sample_weights:
        features[SAMPLE_WEIGHT_KEY] = {"dtype": "float32", "shape": [1], "names": None}
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for key in ("frame_index", "episode_index", "index", "task_index"):
        features[key] = {"dtype": "int64", "shape": [1], "names": None}
    return features


def arrow_schema(features: dict[str, dict[str, Any]]) -> Any:
    """The data files' pyarrow schema, with the HF ``datasets`` feature metadata LeRobot reads."""
    import pyarrow as pa

    fields = []
    hf_features: dict[str, Any] = {}
    for key, feature in features.items():
        dtype = feature["dtype"]
        if dtype == "image":
            fields.append(pa.field(key, pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
            hf_features[key] = {"_type": "Image"}
        elif dtype == "video":
            continue
        elif list(feature["shape"]) == [1]:
            fields.append(pa.field(key, pa.from_numpy_dtype(np.dtype(dtype))))
            hf_features[key] = {"dtype": dtype, "_type": "Value"}
        else:
            (length,) = feature["shape"]
            fields.append(pa.field(key, pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), int(length))))
            hf_features[key] = {"feature": {"dtype": dtype, "_type": "Value"}, "length": int(length), "_type": "Sequence"}
    metadata = {b"huggingface": json.dumps({"info": {"features": hf_features}}).encode()}
    return pa.schema(fields, metadata=metadata)
