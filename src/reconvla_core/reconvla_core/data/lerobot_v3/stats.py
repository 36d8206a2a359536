"""LeRobot-style stats (``meta/stats.json`` and the episodes' ``stats/*`` columns), as lerobot
0.4.x ``datasets/compute_stats.py`` defines them: numeric features exact over all frames; image
features per channel in [0, 1] with shape (3, 1, 1), exact from 256-bin histograms of every frame
(every 8th pixel in each direction, so a frame costs a fraction of a millisecond)."""

from __future__ import annotations

import numpy as np

from reconvla_core.data.lerobot_v3.format import QUANTILE_KEYS, QUANTILES, STAT_KEYS

ACTION_DELTA_KEY = "action_delta"  # stats of a_{t+k} - s_t (delta action mode), see action_delta_stats
DEFAULT_DELTA_CHUNK = 5  # the chunk size the writer caches delta stats for in meta/stats.json
_STATS_PIXEL_STRIDE = 8  # image stats use every 8th pixel in each direction
_CHANNEL_OFFSETS = np.array([0, 256, 512], dtype=np.uint16)


def action_delta_stats(state: np.ndarray, action: np.ndarray, episode_index: np.ndarray,
                       chunk_size: int) -> dict[str, np.ndarray]:
    """LeRobot-style stats of a_{t+k} - s_t over every frame t and offset k = 0..chunk_size-1 that
    stays inside t's episode (VLADataset pads chunks past the episode end; padded steps are excluded).
    Rows must be ordered by (episode, frame), as in a LeRobot v3 dataset. Adds ``chunk_size``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    state = np.asarray(state, dtype=np.float64)
    action = np.asarray(action, dtype=np.float64)
    episode_index = np.asarray(episode_index).reshape(-1)
    if state.ndim != 2 or action.shape != state.shape or episode_index.shape[0] != state.shape[0]:
        raise ValueError(f"state {state.shape}, action {action.shape} and episode_index "
                         f"{episode_index.shape} must be (N, D), (N, D), (N,)")
    n = state.shape[0]
    deltas = [action[k:] - state[:n - k] for k in range(min(chunk_size, n))]
    same = [episode_index[k:] == episode_index[:n - k] for k in range(min(chunk_size, n))]
    values = np.concatenate([d[m] for d, m in zip(deltas, same, strict=True)])
    stats = numeric_stats(values)
    stats["chunk_size"] = np.array([chunk_size])
    return stats


def numeric_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot stats of an (N, D) or (N,) array: min max mean std count q01..q99 (exact, population std)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.shape[0] == 0:
        raise ValueError("cannot compute stats of an empty array")
    stats = {
        "min": array.min(axis=0),
        "max": array.max(axis=0),
        "mean": array.mean(axis=0),
        "std": array.std(axis=0),
        "count": np.array([array.shape[0]]),
    }
    quantiles = np.quantile(array, QUANTILES, axis=0)
    for key, value in zip(QUANTILE_KEYS, quantiles, strict=False):
        stats[key] = value
    return stats


class ImageHistogram:
    """Per-channel 256-bin histogram of uint8 images; exact LeRobot-style image stats in [0, 1]."""

    def __init__(self) -> None:
        self.counts = np.zeros((3, 256), dtype=np.int64)
        self.frames = 0

    @staticmethod
    def count(rgb: np.ndarray) -> np.ndarray:
        """(3, 256) channel histograms of one frame (every ``_STATS_PIXEL_STRIDE``-th pixel)."""
        sample = rgb[::_STATS_PIXEL_STRIDE, ::_STATS_PIXEL_STRIDE].reshape(-1, 3)
        keyed = sample.astype(np.uint16) + _CHANNEL_OFFSETS  # channel c -> bins 256c .. 256c + 255
        return np.bincount(keyed.reshape(-1), minlength=768).reshape(3, 256)

    def update(self, rgb: np.ndarray) -> None:
        self.add(self.count(rgb))

    def add(self, counts: np.ndarray) -> None:
        self.counts += counts
        self.frames += 1

    def merge(self, other: ImageHistogram) -> None:
        self.counts += other.counts
        self.frames += other.frames

    def stats(self) -> dict[str, np.ndarray]:
        levels = np.arange(256, dtype=np.float64) / 255.0
        totals = self.counts.sum(axis=1).astype(np.float64)
        if self.frames == 0 or np.any(totals == 0):
            raise ValueError("no image seen")
        present = self.counts > 0
        mean = (self.counts * levels).sum(axis=1) / totals
        var = (self.counts * (levels[None, :] - mean[:, None]) ** 2).sum(axis=1) / totals
        cumulative = np.cumsum(self.counts, axis=1)
        out = {
            "min": np.array([levels[np.argmax(row)] for row in present]),
            "max": np.array([levels[255 - np.argmax(row[::-1])] for row in present]),
            "mean": mean,
            "std": np.sqrt(var),
        }
        for key, q in zip(QUANTILE_KEYS, QUANTILES, strict=False):
            out[key] = np.array([levels[np.searchsorted(cumulative[c], q * totals[c])] for c in range(3)])
        shaped = {key: value.reshape(3, 1, 1) for key, value in out.items()}
        shaped["count"] = np.array([self.frames])
        return {key: shaped[key] for key in STAT_KEYS}


def stats_to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    """feature -> stat -> nested lists, as stats.json stores them."""
    return {feature: {key: np.asarray(value).tolist() for key, value in entry.items()} for feature, entry in stats.items()}
