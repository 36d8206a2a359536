"""A predictor slower than the chunk horizon still moves the arm (action queue + safety filter, no ROS).

A discrete-time twin of the control loop: arm_command ticks at 30 Hz (queue -> safety filter ->
a perfect follower), the policy infers continuously from the latest observation and each chunk
arrives ``latency`` seconds after the observation it was predicted from.
"""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.runtime.action_queue import ActionChunk, ActionQueue, ActionQueueConfig
from reconvla_core.runtime.safety import SafetyConfig, SafetyFilter

pytestmark = pytest.mark.unit

START = np.array([0.0, 1.0, -1.0, 0.0, 0.3, 0.0, 0.03])
SPEED = 0.3  # rad/s on joint1, below the safety filter's 1.0 rad/s
CHUNK_STEPS, ACTION_RATE = 4, 10.0  # horizon 0.4 s


def predict(state: np.ndarray) -> np.ndarray:
    """A chunk that starts at the observed state and moves joint1 at SPEED."""
    actions = np.repeat(state[None, :], CHUNK_STEPS, axis=0)
    actions[:, 0] += SPEED * np.arange(CHUNK_STEPS) / ACTION_RATE
    return actions


def run_loop(latency: float, trim: str, seconds: float = 12.0, rate: float = 30.0, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    dt = 1.0 / rate
    queue = ActionQueue(ActionQueueConfig(mode="blend", trim=trim, max_chunk_age_s=2.0))
    safety = SafetyFilter(SafetyConfig(control_rate_hz=rate, max_joint_speed=1.0, auto_enable=True))
    arm = START.copy()
    pending: tuple[float, float, np.ndarray] | None = None  # (arrival, stamp, actions)
    targets: list[np.ndarray | None] = []
    commands: list[np.ndarray] = []
    for tick in range(int(seconds * rate)):
        now = tick * dt
        safety.observe(arm, now)
        if pending is not None and now >= pending[0]:
            _, stamp, actions = pending
            if queue.push(ActionChunk.from_rate(stamp, actions, ACTION_RATE), now) > 0:
                safety.note_chunk(now)
            pending = None
        if pending is None:  # the worker starts the next inference on the latest observation
            jitter = rng.uniform(0.0, 0.1) * latency
            pending = (now + latency + jitter, now, predict(arm))
        target = queue.sample(now)
        targets.append(target)
        command = safety.step(now, target)
        if command is not None:
            arm = command.positions.copy()  # a perfect follower
            commands.append(arm)
    return {"queue": queue, "safety": safety, "targets": targets, "commands": np.array(commands), "arm": arm}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inference_three_times_the_horizon_still_moves_the_arm_without_jumps(seed):
    horizon = CHUNK_STEPS / ACTION_RATE
    result = run_loop(latency=3 * horizon, trim="executed", seed=seed)
    queue, safety, commands = result["queue"], result["safety"], result["commands"]
    moved = result["arm"][0] - START[0]
    assert queue.stats.chunks_accepted >= 5
    # Each executed chunk moves joint1 by SPEED * 3 steps / ACTION_RATE; at least 5 of them ran.
    assert moved >= 5 * SPEED * (CHUNK_STEPS - 1) / ACTION_RATE - 1e-9
    # No jump: the queue's targets were continuous, so the rate limit never had to cut a step,
    # and nothing was clipped onto a limit.
    assert safety.counters.rate_limited == 0 and safety.counters.clipped == 0
    steps = np.abs(np.diff(commands, axis=0)).max(axis=1)
    assert steps.max() <= SPEED / 30.0 * (1 + 1e-6)
    # The other joints and the gripper never moved: the arm followed the chunks and nothing else.
    np.testing.assert_allclose(commands[:, 1:], np.broadcast_to(START[1:], commands[:, 1:].shape))
    # Chunks whose motion the arm had already executed were dropped and counted, not executed.
    assert queue.stats.chunks_dropped == queue.stats.chunks_stale
    assert queue.stats.chunks_too_old == 0


def test_wall_clock_trimming_would_never_move_the_arm():
    # The behaviour this replaces: every chunk of a slow predictor lies "entirely in the past".
    result = run_loop(latency=1.2, trim="wall")
    assert result["queue"].stats.chunks_accepted == 0
    assert result["queue"].stats.chunks_stale >= 8  # every chunk of 12 s at ~1.26 s each
    np.testing.assert_allclose(result["arm"], START)


def test_chunks_beyond_the_age_bound_never_move_the_arm():
    result = run_loop(latency=2.5, trim="executed")  # slower than max_chunk_age_s=2.0
    assert result["queue"].stats.chunks_accepted == 0
    assert result["queue"].stats.chunks_too_old > 3
    np.testing.assert_allclose(result["arm"], START)


def test_a_fast_predictor_blends_consecutive_chunks_continuously():
    result = run_loop(latency=0.15, trim="executed")
    queue, safety = result["queue"], result["safety"]
    assert queue.stats.chunks_dropped == 0
    assert safety.counters.rate_limited == 0
    assert result["arm"][0] - START[0] > 0.5 * SPEED * 12.0  # moving most of the time
