"""Action-chunk queue: time alignment, replace vs blend, watchdog, malformed chunks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reconvla_core.runtime.action_queue import ActionChunk, ActionQueue, ActionQueueConfig

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
    queue = ActionQueue(ActionQueueConfig(mode="replace"))
    # Observation at t=0, chunk arrives at t=0.25 (inference latency): steps 0..2 are late.
    remaining = queue.push(ActionChunk.from_rate(0.0, ramp(5), 10.0), now=0.25)
    assert remaining == 2
    assert queue.stats.late_steps == 3
    np.testing.assert_allclose(queue.sample(0.25), 0.25)  # time-aligned, not step 0
    assert len(queue) <= 3  # the step before now is kept only as the interpolation anchor


def test_chunk_entirely_in_the_past_is_stale():
    queue = ActionQueue()
    assert queue.push(ActionChunk.from_rate(0.0, ramp(3), 10.0), now=5.0) == 0
    assert queue.stats.chunks_stale == 1
    assert queue.sample(5.0) is None


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
