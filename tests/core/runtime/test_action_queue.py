"""Action-chunk queue: time alignment, replace vs blend, watchdog, malformed chunks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reconvla_core.runtime.action_queue import ActionChunk, ActionQueue, ActionQueueConfig, ChunkError

pytestmark = pytest.mark.unit


def ramp(k: int, start: float = 0.0, value_step: float = 0.1) -> np.ndarray:
    """K actions whose every component equals start + i * value_step."""
    return np.repeat((start + value_step * np.arange(k))[:, None], 7, axis=1)


def test_samples_interpolate_and_run_dry_at_the_end():
    queue = ActionQueue(ActionQueueConfig(mode="replace"))
    chunk = ActionChunk.from_rate(stamp=10.0, actions=ramp(5), rate_hz=10.0)  # steps at 10.0 .. 10.4
    assert queue.push(chunk, now=10.0) == 5
    np.testing.assert_allclose(queue.sample(10.0), 0.0)
    np.testing.assert_allclose(queue.sample(10.05), 0.05)  # halfway between step 0 and 1
    np.testing.assert_allclose(queue.sample(10.4), 0.4)
    np.testing.assert_allclose(queue.sample(10.45), 0.4)  # the last step lasts one step period
    assert queue.sample(10.5) is None
    assert queue.starved_s(10.7) == pytest.approx(0.2)


def test_zero_order_hold_mode():
    queue = ActionQueue(ActionQueueConfig(mode="replace", interpolate=False))
    queue.push(ActionChunk.from_rate(0.0, ramp(3), 10.0), now=0.0)
    np.testing.assert_allclose(queue.sample(0.19), 0.1)


def test_steps_already_in_the_past_are_dropped():
    queue = ActionQueue(ActionQueueConfig(mode="replace", trim="wall"))
    # Observation at t=0, chunk arrives at t=0.25 (inference latency): steps 0..2 are late.
    remaining = queue.push(ActionChunk.from_rate(0.0, ramp(5), 10.0), now=0.25)
    assert remaining == 2
    assert queue.stats.late_steps == 3
    np.testing.assert_allclose(queue.sample(0.25), 0.25)  # time-aligned, not step 0
    assert len(queue) <= 3  # the step before now is kept only as the interpolation anchor


def test_chunk_entirely_in_the_past_is_stale():
    queue = ActionQueue(ActionQueueConfig(trim="wall"))
    assert queue.push(ActionChunk.from_rate(0.0, ramp(3), 10.0), now=1.0) == 0
    assert queue.stats.chunks_stale == 1 and queue.stats.chunks_dropped == 1
    assert queue.last_report.reason == "executed"
    assert queue.sample(1.0) is None


def test_a_chunk_older_than_the_bound_is_dropped_and_counted():
    queue = ActionQueue(ActionQueueConfig(max_chunk_age_s=2.0))
    assert queue.push(ActionChunk.from_rate(0.0, ramp(3), 10.0), now=5.0) == 0
    report = queue.last_report
    assert (report.accepted, report.reason) == (False, "too_old")
    assert report.age_s == pytest.approx(5.0) and report.horizon_s == pytest.approx(0.3)
    assert "too old" in report.describe() and "age 5.000 s" in report.describe()
    assert queue.stats.chunks_too_old == 1 and queue.stats.chunks_dropped == 1
    assert queue.sample(5.0) is None


def test_a_late_chunk_starts_where_the_idle_arm_stands():
    # The queue was dry since before the observation: the arm held still for the whole latency,
    # so nothing of the chunk was executed and step 0 (the observed state) is due now.
    queue = ActionQueue(ActionQueueConfig(mode="replace"))
    report = queue.push_report(ActionChunk.from_rate(0.0, ramp(4), 10.0), now=1.2)  # latency 3x horizon
    assert report.accepted and report.skipped_idle_s == pytest.approx(1.2)
    assert report.trimmed_steps == 0 and report.remaining_steps == 4
    np.testing.assert_allclose(queue.sample(1.2), 0.0)
    np.testing.assert_allclose(queue.sample(1.25), 0.05)
    np.testing.assert_allclose(queue.sample(1.5), 0.3)
    assert queue.sample(1.61) is None


def test_only_the_executed_part_since_the_observation_is_trimmed():
    queue = ActionQueue(ActionQueueConfig(mode="replace"))
    queue.push(ActionChunk.from_rate(0.0, ramp(4), 10.0), now=1.0)  # executes 1.0 .. 1.4
    # Observed at 1.25, during that chunk: by 2.0 the arm executed 0.15 s of it (1.25 .. 1.4) and
    # then held still for 0.6 s, so the new chunk resumes 0.15 s in (steps at 1.85, 1.95, 2.05, ...).
    report = queue.push_report(ActionChunk.from_rate(1.25, ramp(6, start=1.0), 10.0), now=2.0)
    assert report.accepted
    assert report.skipped_idle_s == pytest.approx(0.6)
    assert (report.trimmed_steps, report.remaining_steps) == (2, 4)
    np.testing.assert_allclose(queue.sample(2.0), 1.15)
    # Observed at 2.0 as that chunk started; it executed 0.6 s (its whole remaining horizon) since.
    report = queue.push_report(ActionChunk.from_rate(2.0, ramp(4, start=2.0), 10.0), now=2.6)
    assert (report.accepted, report.reason) == (False, "executed")
    assert queue.stats.chunks_stale == 1


def test_wall_trim_drops_every_chunk_of_a_slow_predictor():
    queue = ActionQueue(ActionQueueConfig(trim="wall"))
    assert queue.push(ActionChunk.from_rate(0.0, ramp(4), 10.0), now=1.2) == 0


def test_an_older_observation_than_the_queued_chunk_is_superseded():
    queue = ActionQueue()
    queue.push(ActionChunk.from_rate(1.0, ramp(4), 10.0), now=1.1)
    assert queue.push(ActionChunk.from_rate(0.9, ramp(4), 10.0), now=1.15) == 0
    assert queue.last_report.reason == "superseded" and queue.stats.chunks_superseded == 1


def test_clear_with_a_time_drops_chunks_observed_before_it():
    queue = ActionQueue()
    queue.push(ActionChunk.from_rate(0.0, ramp(4), 10.0), now=0.1)
    queue.clear(now=0.2)  # e.g. homing began: the arm moves without the queue
    assert queue.push(ActionChunk.from_rate(0.15, ramp(4), 10.0), now=0.5) == 0
    assert queue.last_report.reason == "superseded"
    report = queue.push_report(ActionChunk.from_rate(0.3, ramp(4), 10.0), now=0.5)
    assert report.accepted and report.skipped_idle_s == pytest.approx(0.2)  # held still since 0.3


def test_replace_switches_to_the_new_chunk_immediately():
    queue = ActionQueue(ActionQueueConfig(mode="replace"))
    queue.push(ActionChunk.from_rate(0.0, ramp(10, start=0.0, value_step=0.0), 10.0), now=0.0)  # all zeros
    queue.push(ActionChunk.from_rate(0.2, ramp(10, start=1.0, value_step=0.0), 10.0), now=0.2)  # all ones
    np.testing.assert_allclose(queue.sample(0.2), 1.0)


def test_blend_cross_fades_linearly_over_the_overlap():
    queue = ActionQueue(ActionQueueConfig(mode="blend"))
    queue.push(ActionChunk.from_rate(0.0, np.zeros((10, 7)), 10.0), now=0.0)  # valid until 1.0
    queue.push(ActionChunk.from_rate(0.2, np.ones((10, 7)), 10.0), now=0.2)  # overlap 0.2 .. 1.0
    np.testing.assert_allclose(queue.sample(0.2), 0.0)  # continuous at the switch
    np.testing.assert_allclose(queue.sample(0.6), 0.5)  # halfway through the overlap
    np.testing.assert_allclose(queue.sample(1.0), 1.0)
    np.testing.assert_allclose(queue.sample(1.15), 1.0)
    assert queue.sample(1.21) is None


def test_blend_with_fixed_duration():
    queue = ActionQueue(ActionQueueConfig(mode="blend", blend_s=0.2))
    queue.push(ActionChunk.from_rate(0.0, np.zeros((10, 7)), 10.0), now=0.0)
    queue.push(ActionChunk.from_rate(0.2, np.ones((10, 7)), 10.0), now=0.2)
    np.testing.assert_allclose(queue.sample(0.3), 0.5)
    np.testing.assert_allclose(queue.sample(0.4), 1.0)


def test_blend_into_an_empty_queue_is_a_plain_push():
    queue = ActionQueue(ActionQueueConfig(mode="blend"))
    queue.push(ActionChunk.from_rate(0.0, np.ones((3, 7)), 10.0), now=0.0)
    np.testing.assert_allclose(queue.sample(0.0), 1.0)


@pytest.mark.parametrize(
    "actions, offsets, message",
    [
        (np.zeros((3, 6)), [0, 0.1, 0.2], "shape"),
        (np.zeros((0, 7)), [], "shape"),
        (np.full((2, 7), math.nan), [0, 0.1], "non-finite"),
        (np.zeros((2, 7)), [0.1, 0.1], "increasing"),
        (np.zeros((2, 7)), [0.0], "offsets"),
    ],
)
def test_malformed_chunks_are_rejected_with_a_reason(actions, offsets, message):
    queue = ActionQueue()
    with pytest.raises(ValueError, match=message):
        queue.push(ActionChunk(0.0, np.asarray(offsets, dtype=float), actions), now=0.0)
    assert queue.stats.chunks_rejected == 1
    assert queue.sample(0.0) is None


def test_clear_empties_the_queue():
    queue = ActionQueue()
    queue.push(ActionChunk.from_rate(0.0, np.ones((3, 7)), 10.0), now=0.0)
    queue.clear()
    assert queue.sample(0.0) is None and len(queue) == 0


def test_config_validation():
    with pytest.raises(ValueError, match="mode"):
        ActionQueueConfig(mode="mix")
    with pytest.raises(ValueError, match="blend_s"):
        ActionQueueConfig(blend_s=-1.0)
    with pytest.raises(ValueError, match="trim"):
        ActionQueueConfig(trim="clock")
    with pytest.raises(ValueError, match="max_chunk_age_s"):
        ActionQueueConfig(max_chunk_age_s=0.0)


def test_a_trajectory_becomes_a_chunk_by_joint_name_or_position():
    names = ["gripper", "joint6", "joint5", "joint4", "joint3", "joint2", "joint1", "extra"]
    by_name = ActionChunk.from_trajectory(names, [([7, 6, 5, 4, 3, 2, 1, 99], 0.0), ([7, 6, 5, 4, 3, 2, 1.5, 99], 0.1)],
                                          stamp=12.0, now=20.0)
    np.testing.assert_allclose(by_name.actions[1], [1.5, 2, 3, 4, 5, 6, 7])  # ACTION_NAMES order, extra ignored
    np.testing.assert_allclose(by_name.offsets, [0.0, 0.1])
    assert by_name.stamp == 12.0
    positional = ActionChunk.from_trajectory([], [(range(7), 0.0)], stamp=0.0, now=20.0)
    np.testing.assert_allclose(positional.actions[0], np.arange(7))
    assert positional.stamp == 20.0  # an unstamped chunk was observed now


@pytest.mark.parametrize(("names", "points", "match"), [
    ([], [], "no points"),
    (["joint1", "joint2"], [([0.0, 0.0], 0.0)], "lacks joints"),
    ([], [([0.0] * 6, 0.0)], "point 0 has 6 positions, expected 7"),
    ([], [([0.0] * 7, 0.1), ([0.0] * 7, 0.1)], "strictly increasing"),
    ([], [([math.nan] * 7, 0.0)], "non-finite"),
])
def test_a_malformed_trajectory_is_a_chunk_error(names, points, match):
    with pytest.raises(ChunkError, match=match):
        ActionChunk.from_trajectory(names, points, stamp=1.0, now=2.0)
