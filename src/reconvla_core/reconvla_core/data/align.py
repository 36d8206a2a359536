"""Put a recording's streams onto the dataset's frame grid: pure functions of timestamps (no I/O).

The grid is ``t0 + k / fps`` over the span every required stream covers; each stream contributes
the message nearest to a grid time, if it is within ``tolerance``. A grid point where a required
stream has nothing close enough is dropped (counted); with ``max_gap_s`` short holes are filled
from the nearest messages and longer ones split the recording into segments, so every segment sits
on the fps grid. The bag reader (``bag_reader.py``) reads the timestamps and hands them here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# The streams every frame needs; the gaze box and the intervention flag are optional extras.
REQUIRED_ROLES = ("base_image", "wrist_image", "follower_state", "leader_command")


class AlignmentError(ValueError):
    """The streams cannot be put on a grid (no overlap, or no frame with every stream close enough)."""


@dataclass(frozen=True)
class AlignConfig:
    """How streams are put onto the dataset's frame grid."""

    fps: float = 10.0
    tolerance_s: float | None = None  # default: half a dataset period
    stamp_source: str = "log"  # "log" (bag receive time) or "header"
    require_gaze: bool = False  # the sim gaze backend needs the gaze topic
    # Longest hole (s) between kept frames inside one segment; holes up to it are filled with the
    # nearest message so every segment sits on the fps grid, longer ones split the episode.
    # None: no filling or splitting (the frames keep their holes; see Alignment.segments).
    max_gap_s: float | None = None

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.stamp_source not in ("log", "header"):
            raise ValueError(f"stamp_source must be 'log' or 'header', got {self.stamp_source!r}")
        if self.tolerance_s is not None and self.tolerance_s <= 0:
            raise ValueError(f"tolerance_s must be > 0, got {self.tolerance_s}")
        if self.max_gap_s is not None and self.max_gap_s < 1.0 / self.fps:
            raise ValueError(f"max_gap_s must be at least one frame period ({1.0 / self.fps:.3f} s), "
                             f"got {self.max_gap_s}")

    @property
    def tolerance(self) -> float:
        return self.tolerance_s if self.tolerance_s is not None else 0.5 / self.fps


@dataclass(frozen=True)
class Alignment:
    """Where the kept frames are, and which message of each required stream each one takes."""

    grid_ns: np.ndarray  # (T,) int64 times of the kept frames
    picks: dict[str, np.ndarray]  # role -> (T,) index into that role's stamps (as passed in, not sorted)
    dropped: int  # grid points without every required stream within tolerance, not filled
    filled: int  # grid points without a message within tolerance, filled inside a segment
    filled_rows: np.ndarray  # (T,) bool: the kept frames that were filled
    segments: list[tuple[int, int]]  # [start, stop) row ranges with no hole longer than max_gap_s
    rates: dict[str, float | None]  # role -> median message rate (Hz)

    @property
    def num_frames(self) -> int:
        return int(self.grid_ns.shape[0])


def align_streams(stamps: Mapping[str, Sequence[int] | np.ndarray], config: AlignConfig,
                  roles: Sequence[str] = REQUIRED_ROLES) -> Alignment:
    """The frame grid of ``roles``' streams (each a non-empty sequence of ns stamps, in any order).

    Raises AlignmentError when the streams do not overlap or no grid point has them all within
    the tolerance."""
    order: dict[str, np.ndarray] = {}
    arrays: dict[str, np.ndarray] = {}
    for role in roles:
        raw = np.asarray(stamps[role], dtype=np.int64)
        order[role] = np.argsort(raw, kind="stable")  # bag order is log order; header stamps may not be
        arrays[role] = raw[order[role]]
    start = max(int(arrays[role][0]) for role in roles)
    stop = min(int(arrays[role][-1]) for role in roles)
    period_ns = 1e9 / config.fps
    tolerance_ns = config.tolerance * 1e9
    if stop < start:
        raise AlignmentError("the camera and joint streams do not overlap in time")
    grid = start + np.round(np.arange(int((stop - start) // period_ns) + 1) * period_ns).astype(np.int64)
    keep = np.ones(grid.shape[0], dtype=bool)
    picks: dict[str, np.ndarray] = {}
    for role in roles:
        index, distance = nearest(arrays[role], grid)
        keep &= distance <= tolerance_ns
        picks[role] = order[role][index]  # position in the stream as passed in
    dropped = int((~keep).sum())
    if not keep.any():
        raise AlignmentError(f"no frame has all streams within {config.tolerance * 1e3:.0f} ms")
    original_keep = keep
    keep, filled, breaks = fill_short_holes(keep, config)
    bounds = [0, *breaks, int(keep.sum())]
    return Alignment(
        grid_ns=grid[keep],
        picks={role: pick[keep] for role, pick in picks.items()},
        dropped=dropped,
        filled=filled,
        filled_rows=~original_keep[keep],
        segments=[(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)],
        rates={role: median_rate(arrays[role]) for role in roles},
    )


def nearest_within(stamps: Sequence[int] | np.ndarray, alignment: Alignment,
                   config: AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """For an optional stream (the gaze box): per kept frame, the index of its nearest message (into
    ``stamps`` as passed in) and whether it is close enough: within the tolerance, or on a filled
    frame within ``max_gap_s`` (a filled frame takes the nearest message, as its other streams do)."""
    raw = np.asarray(stamps, dtype=np.int64)
    order = np.argsort(raw, kind="stable")
    index, distance = nearest(raw[order], alignment.grid_ns)
    limit_ns = np.where(alignment.filled_rows, (config.max_gap_s or 0.0) * 1e9, config.tolerance * 1e9)
    return order[index], distance <= limit_ns


def nearest(stamps: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest of the sorted ``stamps`` for each grid time, and the absolute distance (ns)."""
    right = np.clip(np.searchsorted(stamps, grid), 0, stamps.size - 1)
    left = np.clip(right - 1, 0, stamps.size - 1)
    pick_left = np.abs(grid - stamps[left]) <= np.abs(stamps[right] - grid)
    index = np.where(pick_left, left, right)
    return index, np.abs(stamps[index] - grid)


def latest_flags(stamps_ns: Sequence[int], flags: Sequence[bool], grid_ns: np.ndarray) -> np.ndarray:
    """(T,) bool: at each grid time, the latest flag (intervention, relabelled) at or before it; False
    before the first message and for a bag without the flag's topic."""
    out = np.zeros(np.asarray(grid_ns).shape[0], dtype=bool)
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    if stamps.size == 0:
        return out
    order = np.argsort(stamps, kind="stable")
    stamps, values = stamps[order], np.asarray(flags, dtype=bool)[order]
    latest = np.searchsorted(stamps, grid_ns, side="right") - 1
    seen = latest >= 0
    out[seen] = values[latest[seen]]
    return out


def median_rate(stamps_ns: np.ndarray) -> float | None:
    """Messages per second from the median interval (robust to a few dropped or bunched messages);
    None for a stream of one message (no rate to measure)."""
    if stamps_ns.size < 2:
        return None
    interval = float(np.median(np.diff(stamps_ns)))
    return 1e9 / interval if interval > 0 else float("inf")


def fill_short_holes(keep: np.ndarray, config: AlignConfig) -> tuple[np.ndarray, int, list[int]]:
    """Fill holes of at most ``max_gap_s`` between kept grid points (their nearest messages are used)
    and find the longer ones. Returns the new keep mask, how many points were filled, and the rows
    (in the kept frames) where a new segment starts."""
    kept_points = np.flatnonzero(keep)
    if config.max_gap_s is None:
        return keep, 0, []
    # A gap is the time between two kept frames; max_gap_s of two periods lets one frame be filled.
    max_steps = int(np.floor(config.max_gap_s * config.fps + 1e-6))
    steps = np.diff(kept_points)
    keep = keep.copy()
    filled = 0
    breaks_at_points: list[int] = []
    for left, step in zip(kept_points[:-1].tolist(), steps.tolist(), strict=True):
        if step <= 1:
            continue
        if step <= max_steps:
            keep[left + 1 : left + step] = True
            filled += step - 1
        else:
            breaks_at_points.append(left + step)
    # Leading and trailing grid points without data are trimmed, never filled.
    keep[: kept_points[0]] = False
    keep[kept_points[-1] + 1 :] = False
    rows = np.cumsum(keep) - 1  # grid point -> row in the kept frames
    return keep, filled, [int(rows[point]) for point in breaks_at_points]
