"""Actions and proprioception <-> discrete tokens (numpy only).

Per-dimension normalisation to [-1, 1] from dataset statistics (LeRobot stats.json entries with
min/max/mean/std/q01/q99), then ``n_bins`` uniform bins over [-1, 1]; bin ``b`` is token
``first_token_id + b``. A chunk of K steps of D dims is flattened time-major into K*D tokens.

Per-dimension modes: ``normalize`` (the default), ``identity`` (values already in [-1, 1]) and
``binary`` (thresholded at the middle of the stats range, decoded to the range's ends: a gripper).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

STAT_KEYS: tuple[str, ...] = ("min", "max", "mean", "std", "q01", "q99")
_EPS = 1e-8


class Normalizer:
    """Maps one feature (e.g. ``action``) between robot units and [-1, 1], per dimension."""

    def __init__(self, stats: Mapping[str, Any], mode: str, dim_modes: Sequence[str], name: str) -> None:
        self.name = name
        self.dim = len(dim_modes)
        self.dim_modes = tuple(dim_modes)
        if mode == "q01_q99":
            low, high = _stat(stats, "q01", name, self.dim), _stat(stats, "q99", name, self.dim)
        elif mode == "min_max":
            low, high = _stat(stats, "min", name, self.dim), _stat(stats, "max", name, self.dim)
        elif mode == "mean_std":
            mean, std = _stat(stats, "mean", name, self.dim), _stat(stats, "std", name, self.dim)
            low, high = mean - 3 * std, mean + 3 * std  # z-score / 3, as the authors tokenise proprio
        else:
            raise ValueError(f"unknown normalisation mode {mode!r}")
        if np.any(high < low):
            raise ValueError(f"stats for {name!r}: upper bound below lower bound in some dimension")
        self.low, self.high = low, high
        self._normalize = np.array([m == "normalize" for m in self.dim_modes])
        self._binary = np.array([m == "binary" for m in self.dim_modes])

    def normalize(self, values: np.ndarray) -> np.ndarray:
        """Robot units (..., D) -> [-1, 1] (clipped)."""
        span = np.maximum(self.high - self.low, _EPS)
        out = np.where(self._normalize, 2.0 * (values - self.low) / span - 1.0, values)
        middle = 0.5 * (self.low + self.high)
        out = np.where(self._binary, np.where(values > middle, 1.0, -1.0), out)
        return np.clip(out, -1.0, 1.0)

    def unnormalize(self, values: np.ndarray) -> np.ndarray:
        """[-1, 1] (..., D) -> robot units. Constant dimensions decode to their constant."""
        out = np.where(self._normalize, self.low + 0.5 * (values + 1.0) * (self.high - self.low), values)
        return np.where(self._binary, np.where(values > 0, self.high, self.low), out)


class ActionTokenizer:
    """Bins normalised values into ``n_bins`` token ids starting at ``first_token_id``."""

    def __init__(self, n_bins: int, first_token_id: int, action_dim: int, chunk_size: int) -> None:
        self.n_bins = n_bins
        self.first_token_id = first_token_id
        self.action_dim = action_dim
        self.chunk_size = chunk_size
        self.bin_centers = -1.0 + (np.arange(n_bins) + 0.5) * (2.0 / n_bins)

    @property
    def token_ids(self) -> range:
        return range(self.first_token_id, self.first_token_id + self.n_bins)

    def values_to_bins(self, values: np.ndarray) -> np.ndarray:
        """Values in [-1, 1] -> bin indices 0..n_bins-1 (uniform bins)."""
        bins = np.floor((np.clip(values, -1.0, 1.0) + 1.0) * 0.5 * self.n_bins).astype(np.int64)
        return np.clip(bins, 0, self.n_bins - 1)

    def bins_to_values(self, bins: np.ndarray) -> np.ndarray:
        return self.bin_centers[bins]

    def encode(self, normalized: np.ndarray) -> np.ndarray:
        """(..., D) normalised values -> (..., D) token ids."""
        return self.values_to_bins(normalized) + self.first_token_id

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        """Token ids (any shape) -> normalised values (same shape). Rejects non-action ids."""
        token_ids = np.asarray(token_ids, dtype=np.int64)
        bins = token_ids - self.first_token_id
        if np.any((bins < 0) | (bins >= self.n_bins)):
            bad = token_ids[(bins < 0) | (bins >= self.n_bins)][:5].tolist()
            raise ValueError(f"token ids {bad} are not action tokens "
                             f"[{self.first_token_id}, {self.first_token_id + self.n_bins})")
        return self.bins_to_values(bins)


def check_array(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A finite float64 array of exactly ``shape``, or ValueError naming ``name``."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a numeric array of shape {shape}: {error}") from None
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf: {array.tolist()}")
    return array


DELTA_KEY = "action_delta"


def validate_norm_stats(stats: Mapping[str, Any], action_dim: int, state_dim: int,
                        require_delta: bool = False) -> dict[str, Any]:
    """Checks a LeRobot stats.json dict; returns the 'action' and 'observation.state' entries as lists,
    and the 'action_delta' entry (stats of a_{t+k} - s_t, for delta action mode) when present."""
    if not isinstance(stats, Mapping):
        # ValueError, like every other bad input (the CLI reports ValueError as a one-line error)
        raise ValueError(f"norm stats must be a dict (LeRobot stats.json), got {type(stats).__name__}")  # noqa: TRY004
    if require_delta and DELTA_KEY not in stats:
        raise ValueError(f"norm stats lack the {DELTA_KEY!r} entry, which action_mode 'delta' needs "
                         "(reconvla_core.data.action_delta_stats computes it from a dataset)")
    out: dict[str, Any] = {}
    keys = [("action", action_dim), ("observation.state", state_dim)]
    if DELTA_KEY in stats:
        keys.append((DELTA_KEY, action_dim))
    for key, dim in keys:
        if key not in stats:
            raise ValueError(f"norm stats lack the {key!r} entry (expected LeRobot stats.json layout)")
        entry = stats[key]
        clean: dict[str, Any] = {}
        for stat in STAT_KEYS:
            clean[stat] = _stat(entry, stat, key, dim).tolist()
        for extra in ("count", "chunk_size"):
            if extra in entry:
                clean[extra] = np.asarray(entry[extra]).reshape(-1).tolist()
        out[key] = clean
    return out


def mixed_action_entry(stats: Mapping[str, Any], relative_dims: Sequence[int]) -> Mapping[str, Any]:
    """The action normaliser's stats: 'action_delta' for the relative dims, 'action' for the others."""
    if not relative_dims:
        return stats["action"]
    absolute, delta = stats["action"], stats[DELTA_KEY]
    relative = np.zeros(len(np.asarray(absolute["q01"]).reshape(-1)), dtype=bool)
    relative[list(relative_dims)] = True
    return {key: np.where(relative, np.asarray(delta[key], dtype=np.float64).reshape(-1),
                          np.asarray(absolute[key], dtype=np.float64).reshape(-1)).tolist()
            for key in STAT_KEYS}


def stats_from_bounds(low: Sequence[float], high: Sequence[float], count: int = 1) -> dict[str, Any]:
    """A stats entry for a uniform distribution on [low, high] (for benchmarks and random models)."""
    low_a, high_a = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    mean, std = 0.5 * (low_a + high_a), (high_a - low_a) / np.sqrt(12.0)
    return {"min": low_a.tolist(), "max": high_a.tolist(), "mean": mean.tolist(), "std": std.tolist(),
            "q01": (low_a + 0.01 * (high_a - low_a)).tolist(), "q99": (low_a + 0.99 * (high_a - low_a)).tolist(),
            "count": [count]}


def piper_norm_stats() -> dict[str, Any]:
    """Stats spanning the PiPer's joint limits and gripper range (for random models and benchmarks)."""
    from reconvla_core import piper

    low = list(piper.JOINT_LOWER) + [piper.GRIPPER_MIN]
    high = list(piper.JOINT_UPPER) + [piper.GRIPPER_MAX]
    entry = stats_from_bounds(low, high)
    span = np.asarray(high) - np.asarray(low)
    delta = stats_from_bounds(-span, span)  # any move within the limits (for random delta-mode models)
    return {"action": entry, "observation.state": dict(entry), DELTA_KEY: delta}


def _stat(entry: Mapping[str, Any], key: str, name: str, dim: int) -> np.ndarray:
    if not isinstance(entry, Mapping) or key not in entry:
        raise ValueError(f"norm stats for {name!r} lack {key!r}")
    value = np.asarray(entry[key], dtype=np.float64).reshape(-1)
    if value.shape != (dim,):
        raise ValueError(f"norm stats {name!r}.{key} must have {dim} values, got {value.shape[0]}")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"norm stats {name!r}.{key} contains NaN or inf")
    return value
