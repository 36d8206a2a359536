"""Delta-action statistics: a_{t+k} - s_t over frames and chunk offsets inside each episode."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reconvla_core.data.build import BuildConfig, build_dataset
from reconvla_core.data.dataset import VLADataset, action_delta_stats, compute_action_delta_stats


def test_known_values_respect_episode_boundaries():
    # Two episodes: 3 frames and 2 frames. One dim: state = frame value, action = 10 * state.
    state = np.array([[0.0], [1.0], [2.0], [5.0], [6.0]])
    action = 10.0 * state
    episode = np.array([0, 0, 0, 1, 1])
    stats = action_delta_stats(state, action, episode, chunk_size=2)
    # k=0: a_t - s_t = 9 s_t -> 0, 9, 18, 45, 54; k=1 (same episode only): a_{t+1} - s_t -> 10-0, 20-1, 60-5
    expected = np.array([0, 9, 18, 45, 54, 10, 19, 55], dtype=float)
    assert stats["count"].tolist() == [expected.size]
    assert stats["min"].tolist() == [0.0] and stats["max"].tolist() == [55.0]
    assert stats["mean"][0] == pytest.approx(expected.mean())
    assert stats["std"][0] == pytest.approx(expected.std())
    assert stats["q01"][0] == pytest.approx(np.quantile(expected, 0.01))
    assert stats["q99"][0] == pytest.approx(np.quantile(expected, 0.99))
    assert stats["chunk_size"].tolist() == [2]
    # a chunk longer than every episode still only counts in-episode steps
    long = action_delta_stats(state, action, episode, chunk_size=10)
    assert long["count"].tolist() == [5 + 3 + 1]  # k=0: 5 frames, k=1: 2 + 1, k=2: 1 (episode 0), k>=3: 0


def test_zero_range_dim_does_not_divide_by_zero():
    from reconvla_core.model.action_tokenizer import Normalizer

    state = np.zeros((4, 2))
    action = np.stack([np.arange(4.0), np.zeros(4)], axis=1)  # dim 1: delta always 0
    stats = action_delta_stats(state, action, np.zeros(4, dtype=int), chunk_size=2)
    norm = Normalizer(stats, "q01_q99", ("normalize", "normalize"), "action_delta")
    values = norm.normalize(np.array([[1.0, 0.0]]))
    assert np.all(np.isfinite(values))
    assert norm.unnormalize(values)[0, 1] == 0.0


def test_dataset_delta_stats_cached_at_build_and_computed_on_the_fly(tmp_path, make_bag):
    for episode in range(2):
        make_bag(episode=episode, seconds=1.0)
    build_dataset(BuildConfig(bags=[tmp_path / "bags"], out=tmp_path / "ds", gaze="sim", image_format="png"))
    cached = json.loads((tmp_path / "ds" / "meta" / "stats.json").read_text())["action_delta"]
    assert cached["chunk_size"] == [5]
    # brute force over the dataset's own chunks (padded steps excluded)
    ds = VLADataset([tmp_path / "ds"], chunk_size=5, split="all")
    deltas = []
    for i in range(len(ds)):
        raw = ds[i]
        deltas.append((raw["actions"] - raw["state"])[~raw["action_is_pad"]])
    deltas = np.concatenate(deltas).astype(np.float64)
    assert cached["count"] == [deltas.shape[0]]
    np.testing.assert_allclose(cached["min"], deltas.min(0), atol=1e-6)
    np.testing.assert_allclose(cached["max"], deltas.max(0), atol=1e-6)
    np.testing.assert_allclose(cached["mean"], deltas.mean(0), atol=1e-6)
    assert ds.norm_stats(0)["action_delta"] == cached
    # another chunk size: computed on the fly (the cache is for K=5), same function as the pooled one
    ds3 = VLADataset([tmp_path / "ds"], chunk_size=3, split="train", val_fraction=0.5)
    on_the_fly = ds3.norm_stats(0)["action_delta"]
    assert on_the_fly["chunk_size"] == [3]
    pooled = compute_action_delta_stats(tmp_path / "ds", 3)
    np.testing.assert_allclose(on_the_fly["q99"], pooled["q99"])
    assert on_the_fly["count"] == pooled["count"]  # all frames, not only the split
