"""Real-time driving of the twin with piper_ros command semantics (no ROS)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reconvla_core.piper import GRIPPER_MAX, JOINT_LOWER, JOINT_UPPER, MAX_JOINT_SPEED
from reconvla_core.sim.realtime import (
    DRIVER_DEFAULT_SPEED_PERCENT,
    PeriodicSchedule,
    RealtimeTwin,
    driver_speed_percent,
    driver_target,
)

HOME = np.array([0.0, 1.1, -1.3, 0.0, 0.9, 0.0, 0.07])


class FakeEnv:
    """Records what the twin asks of the env; the arm reaches each set-point exactly."""

    def __init__(self) -> None:
        self.applied: list[np.ndarray] = []
        self.advanced: list[float] = []
        self.done = False
        self.completed = 0
        self.subtask_index = 0
        self.subtask_steps = 0
        self.chain = type("Chain", (), {"tasks": ("pick red", "place red blue")})()
        self._state = HOME.copy()
        self.success_next = False

    def reset(self, seed=None, chain=None, task=None):
        self.reset_args = (seed, chain, task)
        self._state = HOME.copy()
        self.subtask_index = 0
        self.done = False

    def state(self):
        return self._state.copy()

    def apply_command(self, action):
        self.applied.append(np.array(action))
        self._state = np.array(action)

    def advance(self, dt):
        self.advanced.append(dt)

    def check_progress(self):
        success = self.success_next
        self.success_next = False
        if success:
            self.completed += 1
            self.subtask_index += 1
            self.done = self.subtask_index >= len(self.chain.tasks)
        return {"subtask_success": success, "done": self.done, "completed": self.completed}

    @property
    def instruction(self):
        return ["pick up the red block", "put the red block in the blue bowl"][min(self.subtask_index, 1)]

    def observe(self, render=True):
        return {"base_image": np.zeros((4, 6, 3), np.uint8), "wrist_image": np.ones((4, 6, 3), np.uint8)}

    def gaze_box(self):
        return np.array([0.1, 0.2, 0.3, 0.4])


class FakeExpert:
    """The leader arm: counts its commands and restarts."""

    def __init__(self) -> None:
        self.calls = 0
        self.restarts = 0

    def act(self):
        self.calls += 1
        return HOME + np.array([0.1, 0, 0, 0, 0, 0, -0.03])

    def restart(self):
        self.restarts += 1


def test_schedule_fires_each_job_at_its_rate_without_bursts():
    schedule = PeriodicSchedule({"camera": 10.0, "joints": 100.0}, start=0.0)
    fired = {"camera": 0, "joints": 0}
    for step in range(100):  # 1 s in 10 ms ticks
        for job in schedule.due(step * 0.01):
            fired[job] += 1
    assert fired == {"camera": 10, "joints": 100}
    assert schedule.due(5.0) == {"camera", "joints"}  # after a long stall: once, not 40 times
    assert schedule.due(5.001) == set()
    with pytest.raises(ValueError):
        PeriodicSchedule({"x": 0.0}, start=0.0)


def test_driver_speed_follows_piper_ros():
    assert driver_speed_percent([]) == DRIVER_DEFAULT_SPEED_PERCENT
    assert driver_speed_percent([0.0] * 7) == DRIVER_DEFAULT_SPEED_PERCENT
    assert driver_speed_percent([0, 0, 0, 0, 0, 0, 55.4]) == 55
    assert driver_speed_percent([0, 0, 0, 0, 0, 0, 250]) == 100
    assert driver_speed_percent([1.0] * 6) == DRIVER_DEFAULT_SPEED_PERCENT  # not 7 values


def test_driver_target_clamps_like_the_arm_and_refuses_garbage():
    wild = driver_target([9, 9, 9, 9, 9, 9, 0.5, 123.0])  # extra values are ignored
    np.testing.assert_allclose(wild, list(JOINT_UPPER) + [GRIPPER_MAX])
    assert driver_target([0, 0, 0, 0, 0, 0, -0.03])[6] == pytest.approx(0.03)  # abs(), as the driver
    with pytest.raises(ValueError, match="7 positions"):
        driver_target([0.0] * 6)
    with pytest.raises(ValueError, match="non-finite"):
        driver_target([0, math.nan, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(driver_target([-9] * 6 + [0.0])[:6], JOINT_LOWER)


def test_commands_move_at_the_commanded_speed_only_when_enabled():
    env = FakeEnv()
    twin = RealtimeTwin(env, auto_enable=False)
    twin.reset(3)
    target = HOME.copy()
    target[0] = 1.0
    assert not twin.command(target, [0] * 6 + [50])  # disabled: ignored
    twin.advance(0.1)
    assert twin.state()[0] == pytest.approx(0.0)
    twin.set_enabled(True)
    assert twin.command(target, [0] * 6 + [50])
    twin.advance(0.1)
    assert twin.state()[0] == pytest.approx(0.5 * MAX_JOINT_SPEED * 0.1)
    for _ in range(20):
        twin.advance(0.1)
    assert twin.state()[0] == pytest.approx(1.0)
    assert twin.advance(5.0) == twin.max_step_s  # a stalled timer does not jump the physics
    twin.set_enabled(False)  # disabling holds the current position
    assert not twin.command(HOME, [])
    assert twin.commands_received == 1 and twin.commands_ignored == 2


def test_expert_leader_drives_the_follower_and_ignores_commands():
    env, expert = FakeEnv(), FakeExpert()
    twin = RealtimeTwin(env, expert_leader=True, expert=expert)
    twin.reset(0, task="pick red")
    assert env.reset_args == (0, None, "pick red")
    assert not twin.command(HOME, [])
    twin.control_tick()
    assert expert.calls == 1
    np.testing.assert_allclose(twin.leader_command, HOME + [0.1, 0, 0, 0, 0, 0, -0.03])
    for _ in range(5):
        twin.advance(0.05)
    np.testing.assert_allclose(twin.state(), twin.leader_command, atol=1e-9)


def test_progress_reports_subtask_changes_and_next_subtask_skips():
    env, expert = FakeEnv(), FakeExpert()
    twin = RealtimeTwin(env, expert=expert)
    assert twin.reset(0) == "pick up the red block"
    assert twin.control_tick().instruction_changed is False
    env.success_next = True
    progress = twin.control_tick()
    assert progress.subtask_success and progress.instruction_changed and not progress.done
    assert twin.instruction == "put the red block in the blue bowl"
    with pytest.raises(RuntimeError, match="no next subtask"):
        twin.next_subtask()  # already on the last one
    env.subtask_index = 0
    assert twin.next_subtask() == "put the red block in the blue bowl"
    assert expert.restarts == 1  # the expert re-plans for the new subtask
    frame = twin.render()
    assert frame.gaze_valid and frame.base_image.shape == (4, 6, 3)


def test_with_the_real_twin():
    from reconvla_core.sim import PiperCellEnv, SimConfig

    env = PiperCellEnv(SimConfig(image_width=64, image_height=48, clip_actions=True))
    try:
        twin = RealtimeTwin(env)
        instruction = twin.reset(0, chain_length=2)
        assert instruction and len(env.chain.tasks) == 2
        start = twin.state()
        target = start.copy()
        target[0] += 0.3
        target[6] = 0.02
        assert twin.command(target, [0] * 6 + [100])
        for _ in range(40):
            twin.advance(0.025)
        reached = twin.state()
        assert reached[0] == pytest.approx(start[0] + 0.3, abs=0.02)
        assert reached[6] == pytest.approx(0.02, abs=0.005)
        frame = twin.render()
        assert frame.base_image.shape == (48, 64, 3) and frame.base_image.dtype == np.uint8
        assert np.all((frame.gaze_box >= 0) & (frame.gaze_box <= 1))
    finally:
        env.close()
