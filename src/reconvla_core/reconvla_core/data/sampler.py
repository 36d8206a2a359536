"""``MixtureSampler``: the sample stream of a VLADataset mixing several datasets by weight."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

try:  # torch is a hard dependency of training, but `import reconvla_core.data` must not need it
    from torch.utils.data import Sampler as _TorchSampler
except ImportError:  # pragma: no cover - exercised only without torch
    _TorchSampler = object  # type: ignore[assignment,misc]


class MixtureSampler(_TorchSampler):
    """``num_samples`` indices: source s with probability weight_s / sum(weights), then a frame of s,
    uniformly or, with ``frame_weights`` (one per index), in proportion to them. Sources with no
    frames are never drawn. ``set_epoch`` reshuffles reproducibly."""

    def __init__(self, offsets: np.ndarray, weights: np.ndarray, num_samples: int, seed: int = 0,
                 frame_weights: np.ndarray | None = None) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.offsets = np.asarray(offsets, dtype=np.int64)
        lengths = np.diff(self.offsets)
        weights = np.asarray(weights, dtype=np.float64) * (lengths > 0)
        if weights.sum() <= 0:
            raise ValueError("no source has frames to sample from")
        self.probabilities = weights / weights.sum()
        self.lengths = lengths
        self.frame_weights = None
        if frame_weights is not None:
            frame_weights = np.asarray(frame_weights, dtype=np.float64).reshape(-1)
            if frame_weights.shape[0] != self.offsets[-1] or not np.all(np.isfinite(frame_weights)) \
                    or np.any(frame_weights < 0):
                raise ValueError(f"frame_weights must be {self.offsets[-1]} finite values >= 0")
            self.frame_weights = frame_weights
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        sources = rng.choice(len(self.probabilities), size=self.num_samples, p=self.probabilities)
        within = np.floor(rng.random(self.num_samples) * self.lengths[sources]).astype(np.int64)
        if self.frame_weights is not None:  # its own stream: unweighted draws stay as they were
            weighted = np.random.default_rng([self.seed, self.epoch, 1])
            for source in np.unique(sources).tolist():
                w = self.frame_weights[self.offsets[source]:self.offsets[source + 1]]
                if w.sum() <= 0:
                    continue  # all zero: uniform
                mask = sources == source
                within[mask] = weighted.choice(w.shape[0], size=int(mask.sum()), p=w / w.sum())
        return self.offsets[sources] + within

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())
