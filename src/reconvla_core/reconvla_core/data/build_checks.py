"""What ``dataset build`` checks in each episode it has read, before writing it: colour cameras,
stream rates against the fps, dropped frames, gaps (split or refuse), image sizes. A fault the
dataset cannot hold raises BagError (the bag fails, or the build with --strict); what is let
through comes back as notes, one line each in the build report. Also the per-bag figures of the
report and the row ranges written per episode (``--interventions only``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from reconvla_core.data.bag_reader import BagEpisode, BagError
from reconvla_core.data.lerobot_v3 import BASE_IMAGE_KEY, WRIST_IMAGE_KEY, LeRobotV3Writer

if TYPE_CHECKING:  # build.py imports this module: the config type only for annotations
    from reconvla_core.data.build import BuildConfig

MONO_ENCODINGS = frozenset({"mono8", "mono16", "8UC1", "16UC1"})
# A stream counts as "at the dataset fps" down to this fraction of it: a publisher timed at the
# fps on a loaded machine measures a few percent slow (9.6-9.7 Hz for 10 Hz in the demo's own
# recordings); below it the bag fails. Between it and RATE_NOTE the bag gets a note.
RATE_SLACK = 0.8
RATE_NOTE = 0.95
_CAMERA_ROLES = ("base_image", "wrist_image")


def intervention_segments(episode: BagEpisode, mode: str) -> list[tuple[int, int]]:
    """The [start, stop) row ranges to write: the bag's segments, or with ``only`` the unbroken
    runs of intervention frames inside them (each its own episode, starting at t = 0)."""
    segments = list(episode.segments) or [(0, episode.num_frames)]
    if mode != "only":
        return segments
    runs: list[tuple[int, int]] = []
    for start, stop in segments:
        flags = np.concatenate([[False], episode.intervention[start:stop].astype(bool), [False]])
        edges = np.flatnonzero(np.diff(flags.astype(np.int8)))  # rises and falls, in pairs
        runs.extend((start + int(a), start + int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True))
    return runs


def episode_figures(episode: BagEpisode) -> dict[str, Any]:
    return {
        "frames": episode.num_frames,
        "dropped_frames": episode.dropped_frames,
        "filled_frames": episode.filled_frames,
        "segments": len(episode.segments),
        "stream_rates_hz": {role: None if rate is None else round(rate, 2)
                            for role, rate in episode.stream_rates.items()},
    }


def check_episode(episode: BagEpisode, config: BuildConfig) -> list[str]:
    """Refuse what would make a wrong dataset (BagError); return notes on what was let through."""
    notes: list[str] = []
    for role in _CAMERA_ROLES:
        encoding = episode.image_encodings.get(role, "")
        if encoding in MONO_ENCODINGS and not config.allow_mono:
            raise BagError(episode.path, f"{role} is {encoding} (single channel), the dataset is colour: "
                                         "use --allow-mono to convert it to 3 equal channels")
        if encoding in MONO_ENCODINGS:
            notes.append(f"{role} is {encoding}: copied to 3 channels (--allow-mono)")
    slow = {role: rate for role, rate in episode.stream_rates.items()
            if rate is not None and rate < RATE_SLACK * config.fps}
    if slow:
        listing = ", ".join(f"{getattr(episode.topics, role)} ({role}) at {rate:.2f} Hz" for role, rate in slow.items())
        if not config.allow_low_rate:
            raise BagError(episode.path, f"{listing}: below the dataset's {config.fps:g} fps "
                                         "(record faster, lower --fps, or --allow-low-rate)")
        notes.append(f"{listing}: below the dataset's {config.fps:g} fps (--allow-low-rate)")
    marginal = {role: rate for role, rate in episode.stream_rates.items()
                if rate is not None and RATE_SLACK * config.fps <= rate < RATE_NOTE * config.fps}
    if marginal:
        listing = ", ".join(f"{getattr(episode.topics, role)} ({role}) at {rate:.2f} Hz"
                            for role, rate in marginal.items())
        notes.append(f"{listing}: slightly below the dataset's {config.fps:g} fps (some frames repeat a message)")
    grid_points = episode.num_frames + episode.dropped_frames - episode.filled_frames
    if grid_points and 100.0 * episode.dropped_frames / grid_points > config.dropped_warn_pct:
        notes.append(f"dropped {episode.dropped_frames} of {grid_points} frames "
                     f"({100.0 * episode.dropped_frames / grid_points:.0f}%: no message within "
                     f"{(config.tolerance_s or 0.5 / config.fps) * 1e3:.0f} ms); "
                     f"{episode.filled_frames} filled from the nearest messages")
    if len(episode.segments) > 1:
        gaps = gap_list(episode)
        if config.on_gap == "refuse":
            raise BagError(episode.path, f"{len(gaps)} gap(s) longer than --max-gap "
                                         f"{config.max_gap_s * 1e3:.0f} ms: {'; '.join(gaps)}")
        notes.append(f"split into {len(episode.segments)} episodes at {len(gaps)} gap(s) longer than "
                     f"--max-gap {config.max_gap_s * 1e3:.0f} ms: {'; '.join(gaps)}")
    return notes


def gap_list(episode: BagEpisode) -> list[str]:
    gaps = []
    for (_, stop), (start, _) in zip(episode.segments[:-1], episode.segments[1:], strict=True):
        before, after = episode.timestamps[stop - 1], episode.timestamps[start]
        gaps.append(f"{after - before:.2f} s at t={before:.2f} s")
    return gaps


def resize_notes(episode: BagEpisode, writer: LeRobotV3Writer) -> list[str]:
    notes = []
    for role, key in (("base_image", BASE_IMAGE_KEY), ("wrist_image", WRIST_IMAGE_KEY)):
        have, want = episode.image_sizes[role], writer.image_shapes[key][:2]
        if tuple(have) != tuple(want):
            notes.append(f"{role} resized from {have[1]}x{have[0]} to the dataset's {want[1]}x{want[0]}")
    return notes
