"""Relabelled states (sim DAgger) on the data side: the bag's relabelled topic -> the per-frame
``relabelled`` feature -> training chunks that end at the first relabelled frame after their own."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from reconvla_core.data.bag_reader import read_episode
from reconvla_core.data.build import BuildConfig, build_dataset
from reconvla_core.data.dataset import VLADataset

pytestmark = pytest.mark.unit

# 2 s at 10 Hz: frames 0..20; the policy drove frames 6..9 (their leader command is the expert's relabel).
RELABELLED = (6, 7, 8, 9)


def test_relabelled_frames_end_the_chunks_that_run_into_them(tmp_path, make_bag):
    make_bag("dagger", relabelled_frames=RELABELLED)
    make_bag("demo")  # a demonstration: no topic, every label executed
    assert np.flatnonzero(read_episode(tmp_path / "bags" / "dagger").relabelled).tolist() == list(RELABELLED)
    assert not read_episode(tmp_path / "bags" / "demo").relabelled.any()

    build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds", gaze="sim"))
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["features"]["relabelled"] == {"dtype": "bool", "shape": [1], "names": None}
    data = pq.read_table(tmp_path / "ds/data/chunk-000/file-000.parquet")
    flags = np.array(data.column("relabelled").to_pylist())
    episodes = np.array(data.column("episode_index").to_pylist())
    assert sorted(np.flatnonzero(flags[episodes == episodes[flags][0]]).tolist()) == list(RELABELLED)
    assert flags.sum() == len(RELABELLED)

    dataset = VLADataset([tmp_path / "ds"], chunk_size=5, split="all")
    dagger_episode = int(episodes[flags][0])
    pads = {}
    for index in range(len(dataset)):
        raw = dataset.raw_sample(*dataset.locate(index))
        if raw["episode_index"] == dagger_episode:
            pads[raw["frame_index"]] = raw["action_is_pad"].tolist()
        else:  # a demonstration's chunks run to its end
            assert not any(raw["action_is_pad"][: 21 - raw["frame_index"]])
    # Frames 2..5 run into frame 6: its label is the chunk's last step, the steps after it followed the policy.
    assert pads[2] == [False] * 5
    assert pads[3] == [False, False, False, False, True]
    assert pads[5] == [False, False, True, True, True]
    # A relabelled frame keeps its own label (the expert's correction) and nothing after it.
    assert pads[6] == pads[9] == [False, True, True, True, True]
    # After the policy-driven stretch, chunks are whole again.
    assert pads[10] == [False] * 5


def test_relabelled_actions_none_keeps_only_the_frames_gaze(tmp_path, make_bag):
    """DAgger on the gaze: a relabelled frame teaches no action at all, but keeps its gaze box; the
    other frames' chunks are those of ``"step"``."""
    make_bag("dagger", relabelled_frames=RELABELLED)
    build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds", gaze="sim"))
    step = VLADataset([tmp_path / "ds"], chunk_size=5, split="all")
    none = VLADataset([tmp_path / "ds"], chunk_size=5, split="all", relabelled_actions="none")
    for index in range(len(step)):
        kept, gaze_only = step.raw_sample(*step.locate(index)), none.raw_sample(*none.locate(index))
        if gaze_only["frame_index"] in RELABELLED:
            assert gaze_only["action_is_pad"].all()
            assert gaze_only["gaze_valid"] and np.array_equal(gaze_only["gaze_box"], kept["gaze_box"])
        else:
            assert gaze_only["action_is_pad"].tolist() == kept["action_is_pad"].tolist()
    with pytest.raises(ValueError, match="relabelled_actions"):
        VLADataset([tmp_path / "ds"], chunk_size=5, split="all", relabelled_actions="all")
