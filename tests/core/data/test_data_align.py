"""Time alignment on plain timestamps (no bag): the grid, drops, filled holes, segments, errors."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.data.align import AlignConfig, AlignmentError, align_streams, nearest_within

pytestmark = pytest.mark.unit

MS = 1_000_000
ROLES = ("base_image", "wrist_image", "follower_state", "leader_command")


def streams(cameras_ms, joints_ms):
    return {"base_image": cameras_ms, "wrist_image": cameras_ms, "follower_state": joints_ms,
            "leader_command": joints_ms}


def test_grid_over_the_common_span_picks_the_nearest_message():
    cameras = np.arange(0, 1001, 33) * MS  # ~30 Hz
    joints = np.arange(0, 1001, 5)[::-1] * MS  # 200 Hz, handed in out of order
    alignment = align_streams(streams(cameras, joints), AlignConfig(fps=10))
    assert alignment.num_frames == 10 and alignment.dropped == 0 and alignment.segments == [(0, 10)]
    np.testing.assert_array_equal(alignment.grid_ns, np.arange(0, 990, 100) * MS)  # the cameras end at 990 ms
    np.testing.assert_array_equal(joints[alignment.picks["follower_state"]], alignment.grid_ns)
    np.testing.assert_array_equal(alignment.picks["base_image"], [0, 3, 6, 9, 12, 15, 18, 21, 24, 27])
    assert alignment.rates["follower_state"] == pytest.approx(200.0)


def test_holes_are_dropped_filled_or_split():
    cameras = np.array([0, 100, 200, 400, 500, 1000, 1100]) * MS  # 300 missing; 600..900 missing
    joints = np.arange(0, 1101, 10) * MS
    holes = align_streams(streams(cameras, joints), AlignConfig(fps=10))
    assert (holes.num_frames, holes.dropped, holes.filled, holes.segments) == (7, 5, 0, [(0, 7)])
    split = align_streams(streams(cameras, joints), AlignConfig(fps=10, max_gap_s=0.2))
    assert (split.num_frames, split.dropped, split.filled, split.segments) == (8, 5, 1, [(0, 6), (6, 8)])
    assert split.filled_rows.tolist() == [False, False, False, True, False, False, False, False]
    # The filled frame takes the camera message nearest to it (200 or 400 ms) ...
    assert cameras[split.picks["base_image"][3]] in (200 * MS, 400 * MS)
    # ... and an optional stream counts as near on it up to max_gap_s, elsewhere up to the tolerance.
    index, close = nearest_within(np.array([0, 200, 500]) * MS, split, AlignConfig(fps=10, max_gap_s=0.2))
    assert index.tolist() == [0, 0, 1, 1, 2, 2, 2, 2]  # grid 0, 100, 200, 300 (filled), 400, 500, 1000, 1100
    # 100 ms off: near enough only on the filled frame
    assert close.tolist() == [True, False, True, True, False, True, False, False]


def test_streams_that_cannot_be_aligned_say_why():
    with pytest.raises(AlignmentError, match="do not overlap in time"):
        align_streams(streams(np.array([0, 100]) * MS, np.array([500, 600]) * MS), AlignConfig(fps=10))
    with pytest.raises(AlignmentError, match="no frame has all streams within 50 ms"):
        align_streams(streams(np.array([0, 1000]) * MS, np.array([430, 1070]) * MS), AlignConfig(fps=10))
