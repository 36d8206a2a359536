"""Schema of every meta file and data column against LeRobot v3.0; stats on known data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_synthetic import action_at, gaze_at, image_at, state_at

from reconvla_core.data.build import BuildConfig, build_dataset
from reconvla_core.data.lerobot_v3 import (
    QUANTILE_KEYS,
    STAT_KEYS,
    decode_image,
    encode_png,
    load_episodes,
    load_stats,
    load_tasks,
)
from reconvla_core.piper import ACTION_NAMES

pytestmark = pytest.mark.unit

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@pytest.fixture
def dataset(tmp_path, make_bag):
    make_bag("ep0", seconds=1.0, episode=0, instruction="pick up the red block")
    make_bag("ep1", seconds=1.5, episode=1, instruction="push the blue cube to the left")
    make_bag("ep2", seconds=0.5, episode=2, instruction="pick up the red block")
    build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds", gaze="sim", image_format="png"))
    return tmp_path / "ds"


def test_meta_info_json(dataset):
    info = json.loads((dataset / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["fps"] == 10 and info["robot_type"] == "agilex_piper"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 11 + 16 + 6, 2)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] is None and info["chunks_size"] == 1000 and info["splits"] == {"train": "0:3"}
    for key in ("data_files_size_in_mb", "video_files_size_in_mb"):
        assert isinstance(info[key], (int, float))
    features = info["features"]
    for key in ("observation.images.base", "observation.images.wrist"):
        assert features[key] == {"dtype": "image", "shape": [24, 32, 3], "names": ["height", "width", "channels"]}
    for key in ("observation.state", "action"):
        assert features[key] == {"dtype": "float32", "shape": [7], "names": list(ACTION_NAMES)}
    assert features["observation.gaze_box"] == {"dtype": "float32", "shape": [5],
                                                "names": ["x1", "y1", "x2", "y2", "valid"]}
    assert features["timestamp"] == {"dtype": "float32", "shape": [1], "names": None}
    for key in ("frame_index", "episode_index", "index", "task_index"):
        assert features[key] == {"dtype": "int64", "shape": [1], "names": None}


def test_data_parquet_columns(dataset):
    info = json.loads((dataset / "meta/info.json").read_text())
    path = dataset / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    assert table.column_names == list(info["features"])  # LeRobot writes columns in feature order
    schema = table.schema
    assert schema.field("observation.images.base").type == IMAGE_STRUCT
    assert schema.field("observation.state").type == pa.list_(pa.float32(), 7)
    assert schema.field("observation.gaze_box").type == pa.list_(pa.float32(), 5)
    assert schema.field("timestamp").type == pa.float32()
    for key in ("frame_index", "episode_index", "index", "task_index"):
        assert schema.field(key).type == pa.int64()
    hf = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["observation.images.wrist"] == {"_type": "Image"}
    assert hf["action"] == {"feature": {"dtype": "float32", "_type": "Value"}, "length": 7, "_type": "Sequence"}
    assert np.array_equal(table.column("index").to_numpy(), np.arange(33))
    assert table.column("episode_index").to_pylist() == [0] * 11 + [1] * 16 + [2] * 6
    assert table.column("frame_index").to_pylist() == list(range(11)) + list(range(16)) + list(range(6))
    np.testing.assert_allclose(table.column("timestamp").to_numpy()[:11], np.arange(11) * 0.1, atol=1e-6)
    cell = table.column("observation.images.base")[12].as_py()
    assert cell["path"] is None and cell["bytes"].startswith(b"\x89PNG")
    np.testing.assert_array_equal(decode_image(cell["bytes"]), image_at(0, 1, 24, 32))
    tasks = load_tasks(dataset)
    assert [tasks[i] for i in table.column("task_index").to_pylist()[::11]] == [
        "pick up the red block", "push the blue cube to the left", "push the blue cube to the left"]


def test_tasks_and_episodes_parquet(dataset):
    tasks_table = pq.read_table(dataset / "meta/tasks.parquet")
    pandas_meta = json.loads(tasks_table.schema.metadata[b"pandas"])
    assert pandas_meta["index_columns"] == ["__index_level_0__"]  # = pd.DataFrame({"task_index"}, index=tasks)
    assert tasks_table.column("task_index").to_pylist() == [0, 1]
    assert load_tasks(dataset) == {0: "pick up the red block", 1: "push the blue cube to the left"}

    episodes_table = pq.read_table(dataset / "meta/episodes/chunk-000/file-000.parquet")
    names = episodes_table.column_names
    for key in ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                "dataset_to_index", "meta/episodes/chunk_index", "meta/episodes/file_index"):
        assert key in names, key
    assert episodes_table.schema.field("tasks").type == pa.list_(pa.string())
    episodes = load_episodes(dataset)
    assert [(e["dataset_from_index"], e["dataset_to_index"], e["length"]) for e in episodes] == [
        (0, 11, 11), (11, 27, 16), (27, 33, 6)]
    assert [e["source_bag"] for e in episodes] == ["ep0", "ep1", "ep2"]
    assert all(e["success"] is True and e["operator"] == "tester" for e in episodes)
    info = json.loads((dataset / "meta/info.json").read_text())
    for feature in info["features"]:
        for stat in STAT_KEYS:
            assert f"stats/{feature}/{stat}" in names, (feature, stat)
    per_episode = load_episodes(dataset, with_stats=True)[1]
    episode_state = np.array([state_at(k * 0.1, 1) for k in range(16)], dtype=np.float32)
    np.testing.assert_allclose(per_episode["stats/observation.state/max"], episode_state.max(0), atol=1e-6)
    np.testing.assert_allclose(per_episode["stats/observation.state/min"], episode_state.min(0), atol=1e-6)
    assert np.asarray(per_episode["stats/observation.images.base/mean"]).shape == (3, 1, 1)


def test_stats_exact_on_known_data(dataset):
    stats = load_stats(dataset)
    info = json.loads((dataset / "meta/info.json").read_text())
    # every feature, plus the builder's cached delta-action stats (see test_data_delta_stats.py)
    assert set(stats) == set(info["features"]) | {"action_delta"}
    lengths = {0: 11, 1: 16, 2: 6}
    state = np.concatenate([[state_at(k * 0.1, e) for k in range(n)] for e, n in lengths.items()]).astype(np.float32)
    action = np.concatenate([[action_at(k * 0.1, e) for k in range(n)] for e, n in lengths.items()]).astype(np.float32)
    gaze = np.concatenate([[[*gaze_at(k), 1.0] for k in range(n)] for n in lengths.values()]).astype(np.float32)
    for key, values in (("observation.state", state), ("action", action), ("observation.gaze_box", gaze)):
        entry = {stat: np.asarray(value) for stat, value in stats[key].items()}
        assert set(entry) == set(STAT_KEYS)
        values = values.astype(np.float64)
        np.testing.assert_allclose(entry["min"], values.min(0), atol=1e-6)
        np.testing.assert_allclose(entry["max"], values.max(0), atol=1e-6)
        np.testing.assert_allclose(entry["mean"], values.mean(0), atol=1e-6)
        np.testing.assert_allclose(entry["std"], values.std(0), atol=1e-6)
        for q_key, q in zip(QUANTILE_KEYS, (0.01, 0.10, 0.50, 0.90, 0.99), strict=False):
            np.testing.assert_allclose(entry[q_key], np.quantile(values, q, axis=0), atol=1e-6)
        assert entry["count"].tolist() == [33]
    assert stats["episode_index"]["max"] == [2] and stats["frame_index"]["max"] == [15]
    # Images: per channel in [0, 1], shape (3, 1, 1), exact over every 8th pixel of every frame.
    pixels = np.concatenate([image_at(1, k, 24, 32)[::8, ::8].reshape(-1, 3)
                             for n in lengths.values() for k in range(n)]).astype(np.float64) / 255.0
    wrist = {stat: np.asarray(value) for stat, value in stats["observation.images.wrist"].items()}
    assert wrist["mean"].shape == (3, 1, 1) and wrist["count"].tolist() == [33]
    np.testing.assert_allclose(wrist["mean"].reshape(3), pixels.mean(0), atol=1e-9)
    np.testing.assert_allclose(wrist["std"].reshape(3), pixels.std(0), atol=1e-9)
    np.testing.assert_allclose(wrist["min"].reshape(3), pixels.min(0))
    np.testing.assert_allclose(wrist["max"].reshape(3), pixels.max(0))
    np.testing.assert_allclose(wrist["q50"].reshape(3), np.quantile(pixels, 0.5, axis=0, method="inverted_cdf"),
                               atol=1.01 / 255)


def test_png_encoder_is_lossless_and_standard():
    """PNG cells decode to exactly the frame written, with our reader (Pillow) and another (OpenCV);
    the stream is an 8-bit RGB PNG (IHDR colour type 2), whatever encoder wrote its bytes."""
    import struct

    import cv2

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in ((1, 1, 3), (7, 5, 3), (48, 64, 3))]
    frames.append(image_at(0, 3, 24, 32)[2:20, 3:29])  # a view (not contiguous), as a crop would be
    for image in frames:
        data = encode_png(image)
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR"
        width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
        assert (height, width, depth, colour) == (*image.shape[:2], 8, 2)
        np.testing.assert_array_equal(decode_image(data), image)
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1], image)
