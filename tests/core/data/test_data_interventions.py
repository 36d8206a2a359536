"""Operator interventions on the data side: the bag's intervention topic -> the per-frame
``intervention`` feature, and ``dataset build --interventions all|only|weight=W``."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from reconvla_core.data.align import latest_flags
from reconvla_core.data.bag_reader import read_episode
from reconvla_core.data.build import BuildConfig, build_dataset, parse_interventions
from reconvla_core.data.build_checks import intervention_segments
from reconvla_core.data.lerobot_v3 import load_episodes, load_stats

pytestmark = pytest.mark.unit

# 2 s at 10 Hz: joint messages and frames 0..20 on the same grid; two intervention runs.
RUNS = tuple(range(5, 9)) + tuple(range(12, 16))


def table(root):
    return pq.read_table(root / "data/chunk-000/file-000.parquet")


def test_latest_flags_take_the_latest_flag_at_or_before_each_frame():
    grid = np.array([0, 10, 20, 30, 40])
    stamps = [25, 5, 15]  # out of order, as header stamps may be
    flags = [False, True, True]
    assert latest_flags(stamps, flags, grid).tolist() == [False, True, True, False, False]
    assert latest_flags([], [], grid).tolist() == [False] * 5  # no topic: never an intervention
    assert latest_flags([10], [True], grid).tolist() == [False, True, True, True, True]


def test_parse_interventions():
    assert parse_interventions("all") == ("all", 1.0)
    assert parse_interventions("only") == ("only", 1.0)
    assert parse_interventions("weight=4") == ("weight", 4.0)
    for bad in ("weight=0", "weight=-1", "weight=x", "weight=inf", "some", ""):
        with pytest.raises(ValueError, match="interventions"):
            parse_interventions(bad)


def test_the_bag_reader_marks_the_frames_the_leader_drove(tmp_path, make_bag):
    bag = make_bag("ep", intervention_frames=RUNS)
    episode = read_episode(bag)
    assert episode.num_frames == 21
    assert np.flatnonzero(episode.intervention).tolist() == list(RUNS)
    assert intervention_segments(episode, "only") == [(5, 9), (12, 16)]
    assert intervention_segments(episode, "all") == [(0, 21)]
    plain = read_episode(make_bag("plain"))
    assert plain.intervention.shape == (21,) and not plain.intervention.any()


def test_all_keeps_every_frame_with_the_flag_as_a_lerobot_feature(tmp_path, make_bag):
    make_bag("ep0", intervention_frames=RUNS)
    make_bag("ep1")  # recorded without interventions: all False
    report = build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds", gaze="sim"))
    assert report.frames == 42 and report.intervention_frames == len(RUNS)
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["features"]["intervention"] == {"dtype": "bool", "shape": [1], "names": None}
    assert "sample_weight" not in info["features"]
    data = table(tmp_path / "ds")
    assert data.column_names == list(info["features"])
    assert str(data.schema.field("intervention").type) == "bool"
    hf = json.loads(data.schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["intervention"] == {"dtype": "bool", "_type": "Value"}  # what HF datasets / LeRobot read
    flags = np.array(data.column("intervention").to_pylist())
    episode = np.array(data.column("episode_index").to_pylist())
    by_bag = {e["source_bag"]: e["episode_index"] for e in load_episodes(tmp_path / "ds")}
    assert np.flatnonzero(flags[episode == by_bag["ep0"]]).tolist() == list(RUNS)
    assert not flags[episode == by_bag["ep1"]].any()
    stats = load_stats(tmp_path / "ds")
    assert stats["intervention"]["mean"] == pytest.approx([len(RUNS) / 42])
    assert {e["source_bag"]: e["intervention_frames"] for e in load_episodes(tmp_path / "ds")} == {
        "ep0": len(RUNS), "ep1": 0}


def test_only_keeps_each_intervention_run_as_an_episode_on_the_fps_grid(tmp_path, make_bag):
    make_bag("ep0", intervention_frames=RUNS)
    make_bag("ep1")
    report = build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds", gaze="sim",
                                       interventions="only"))
    assert report.episodes == 2 and report.frames == len(RUNS)
    assert report.skipped_no_interventions == ["ep1"]
    assert {b["bag"]: b["outcome"] for b in report.bags} == {"ep0": "converted", "ep1": "skipped_no_interventions"}
    data = table(tmp_path / "ds")
    assert all(data.column("intervention").to_pylist())
    assert data.column("frame_index").to_pylist() == [0, 1, 2, 3] * 2
    np.testing.assert_allclose(data.column("timestamp").to_numpy(), [0.0, 0.1, 0.2, 0.3] * 2, atol=1e-6)
    # The rows are the bag's frames 5..8 and 12..15 (state is a known function of time).
    from data_synthetic import state_at

    state = np.stack(data.column("observation.state").to_numpy(zero_copy_only=False))
    expected = np.stack([state_at(i / 10.0) for i in RUNS])
    np.testing.assert_allclose(state, expected, atol=1e-6)


def test_weight_stores_a_sample_weight_and_the_sampler_honours_it(tmp_path, make_bag):
    from reconvla_core.data import VLADataset

    make_bag("ep0", intervention_frames=RUNS)
    make_bag("ep1")
    build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds", gaze="sim", interventions="weight=9"))
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["features"]["sample_weight"] == {"dtype": "float32", "shape": [1], "names": None}
    data = table(tmp_path / "ds")
    flags = np.array(data.column("intervention").to_pylist())
    weights = data.column("sample_weight").to_numpy()
    assert set(weights[flags].tolist()) == {9.0} and set(weights[~flags].tolist()) == {1.0}

    dataset = VLADataset([tmp_path / "ds"], split="all")
    assert dataset.frame_weights().tolist() == weights.tolist()
    drawn = dataset.sampler(20000, seed=0).indices()
    flagged = np.isin(drawn, np.flatnonzero(flags))
    expected = 9 * len(RUNS) / (9 * len(RUNS) + (42 - len(RUNS)))  # 72 / 106
    assert abs(flagged.mean() - expected) < 0.02
    unweighted = VLADataset([tmp_path / "ds"], split="all")
    unweighted.sources[0].frame_weight = None  # the same data without weights: uniform
    assert abs(np.isin(unweighted.sampler(20000, seed=0).indices(), np.flatnonzero(flags)).mean()
               - len(RUNS) / 42) < 0.02


def test_the_cli_takes_interventions_and_refuses_a_bad_value(tmp_path, make_bag, capsys):
    from reconvla_core.cli.main import main

    make_bag("ep0", intervention_frames=RUNS)
    assert main(["dataset", "build", "--bags", str(tmp_path / "bags"), "--out", str(tmp_path / "ds"),
                 "--interventions", "only", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["interventions"] == "only" and result["intervention_frames"] == len(RUNS)
    assert result["episodes"] == 2
    assert main(["dataset", "info", str(tmp_path / "ds"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["intervention_fraction"] == 1.0
    code = main(["dataset", "build", "--bags", str(tmp_path / "bags"), "--out", str(tmp_path / "ds2"),
                 "--interventions", "weight=0"])
    assert code != 0
    assert "--interventions" in capsys.readouterr().err
