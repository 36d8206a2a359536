"""Per-dataset mixing weights and per-dataset stats in VLADataset."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.data.build import BuildConfig, build_dataset
from reconvla_core.data.dataset import DatasetSource, VLADataset
from reconvla_core.data.lerobot_v3 import load_stats

pytestmark = pytest.mark.unit


@pytest.fixture
def two_datasets(tmp_path, make_bag):
    make_bag("small", root=tmp_path / "bags_a", seconds=0.9, episode=0)  # 10 frames
    for episode in range(3):
        make_bag(f"big{episode}", root=tmp_path / "bags_b", seconds=2.9, episode=10 + episode)  # 30 frames each
    build_dataset(BuildConfig(bags=[tmp_path / "bags_a"], out=tmp_path / "a"))
    build_dataset(BuildConfig(bags=[tmp_path / "bags_b"], out=tmp_path / "b"))
    return tmp_path / "a", tmp_path / "b"


def test_mixing_weights_respected_over_many_draws(two_datasets):
    a, b = two_datasets
    ds = VLADataset([DatasetSource(a, weight=1.0), DatasetSource(b, weight=3.0)], val_fraction=0.0)
    assert list(ds.lengths) == [10, 90]
    draws = ds.sampler(40_000, seed=7).indices()
    source = np.searchsorted(ds.offsets, draws, side="right") - 1
    share_a = float(np.mean(source == 0))
    assert share_a == pytest.approx(0.25, abs=0.015)  # by weight, although a holds 10% of the frames
    counts = np.bincount(draws[source == 0], minlength=10)
    assert counts.min() > 0.7 * counts.mean()  # uniform within a source
    assert np.array_equal(draws, ds.sampler(40_000, seed=7).indices())
    sampler = ds.sampler(1000, seed=7)
    first = sampler.indices()
    sampler.set_epoch(1)
    assert not np.array_equal(first, sampler.indices())
    # samples drawn through the sampler come from the dataset they are attributed to
    for index in draws[:20]:
        sample = ds[int(index)]
        assert sample["dataset_index"] == (0 if index < 10 else 1)
        assert (sample["state"][0] < 5) == (sample["dataset_index"] == 0)


def test_each_source_keeps_its_own_stats(two_datasets):
    a, b = two_datasets
    ds = VLADataset([DatasetSource(a), DatasetSource(b, weight=0.5)], val_fraction=0.0)
    assert ds.norm_stats(0)["action"] == load_stats(a)["action"]
    assert ds.norm_stats(1)["observation.state"] == load_stats(b)["observation.state"]
    assert ds.norm_stats(0)["action"]["mean"] != ds.norm_stats(1)["action"]["mean"]
    seen = []
    ds_proc = VLADataset([DatasetSource(a), DatasetSource(b)], val_fraction=0.0,
                         processor=lambda **kw: seen.append(kw) or kw)
    ds_proc[3], ds_proc[15]
    assert seen[0]["norm_stats"]["action"] == load_stats(a)["action"]
    assert seen[1]["norm_stats"]["action"] == load_stats(b)["action"]
    assert set(seen[0]) == {"base_image", "wrist_image", "instruction", "state", "actions", "gaze_box", "norm_stats",
                            "action_is_pad", "gaze_valid"}


def test_external_feature_names_map_in(tmp_path, two_datasets):
    """An external v3 dataset with other column names (and no gaze) maps in through its feature map."""
    import json

    import pyarrow.parquet as pq

    a, _ = two_datasets
    ext = tmp_path / "external"
    import shutil

    shutil.copytree(a, ext)
    renames = {"observation.images.base": "observation.images.image",
               "observation.images.wrist": "observation.images.wrist_image"}
    info = json.loads((ext / "meta/info.json").read_text())
    info["features"] = {renames.get(k, k): v for k, v in info["features"].items() if k != "observation.gaze_box"}
    (ext / "meta/info.json").write_text(json.dumps(info))
    path = ext / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path).drop_columns(["observation.gaze_box"])
    table = table.rename_columns([renames.get(name, name) for name in table.column_names])
    pq.write_table(table, path, row_group_size=4)
    from reconvla_core.data.dataset_source import KNOWN_FEATURE_MAPS, FeatureMap

    assert DatasetSource(ext, features=None).features == FeatureMap() == KNOWN_FEATURE_MAPS["reconvla"]
    with pytest.raises(ValueError, match="unknown feature map 'calvin'"):
        DatasetSource(ext, features="calvin")
    with pytest.raises(ValueError, match="no feature 'observation.images.base'"):
        VLADataset([DatasetSource(ext)], val_fraction=0.0)
    ds = VLADataset([DatasetSource(ext, features="libero"), DatasetSource(a)], val_fraction=0.0)
    ours, theirs = ds[5 + 10], ds[5]
    np.testing.assert_array_equal(theirs["base_image"], ours["base_image"])
    np.testing.assert_array_equal(theirs["wrist_image"], ours["wrist_image"])
    np.testing.assert_array_equal(theirs["gaze_box"], [0, 0, 1, 1])
    assert theirs["gaze_valid"] is False


def test_a_dataset_built_with_the_removed_gripper_point_column_still_loads(tmp_path, two_datasets):
    """Datasets built while `dataset build` stored `observation.gripper_point` keep loading: the column is ignored."""
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    a, _ = two_datasets
    old = tmp_path / "old"
    shutil.copytree(a, old)
    info = json.loads((old / "meta/info.json").read_text())
    info["features"]["observation.gripper_point"] = {"dtype": "float32", "shape": [3], "names": ["x", "y", "valid"]}
    (old / "meta/info.json").write_text(json.dumps(info))
    path = old / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    points = pa.FixedSizeListArray.from_arrays(pa.array(np.full(3 * table.num_rows, 0.5, dtype=np.float32)), 3)
    pq.write_table(table.append_column("observation.gripper_point", points), path, row_group_size=4)
    ours = VLADataset([DatasetSource(a)], val_fraction=0.0)[5]
    theirs = VLADataset([DatasetSource(old)], val_fraction=0.0)[5]
    assert set(theirs) == set(ours)
    for key in ("base_image", "state", "actions", "gaze_box"):
        np.testing.assert_array_equal(theirs[key], ours[key])
