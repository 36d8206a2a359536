"""Real-time driving of the twin, the way the AgileX driver drives the real arm (no ROS here).

The ``sim_robot`` node owns a :class:`RealtimeTwin` and calls it from one timer:
``advance(dt)`` with the measured wall-clock step, :meth:`RealtimeTwin.control_tick` at the
env's control rate (scripted leader, subtask progress), ``state()`` for joint states and
``render()`` for the cameras. :class:`PeriodicSchedule` says which of those are due.

Command semantics follow piper_ros' ``joint_ctrl_single`` handling:
- commands are obeyed only while the arm is enabled (``auto_enable`` or ``enable_flag``);
- ``velocity[6]`` is the speed percentage (0..100) when the message carries 7 velocities that
  are not all zero, otherwise the driver's default of 30 %; joints then move towards the
  target at no more than ``speed% x MAX_JOINT_SPEED``;
- joint targets outside the limits are clamped (the arm's firmware does), the gripper opening
  to 0..GRIPPER_MAX; non-finite values are refused.
In expert-leader mode the scripted expert (``expert``, by default a ``ScriptedExpert`` of the env)
plays the leader arm; the follower mirrors it (as on the real teleop bus) and external commands are
ignored. With an ``operator`` (``reconvla_core.sim.operator.SimOperator``) the follower obeys
commands (arm_command drives it) and the operator plays the leader arm of an HG-DAgger deployment:
it watches, grabs the leader and drives with it when the arm leaves the expert's path, and hands back.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from reconvla_core.piper import (
    ACTION_LOWER,
    ACTION_UPPER,
    ACTION_DIM,
    MAX_JOINT_SPEED,
)

logger = logging.getLogger(__name__)

DRIVER_DEFAULT_SPEED_PERCENT = 30  # piper_ros uses 30 % when a command carries no speed
DRIVER_GRIPPER_CLAMP = 0.08  # piper_ros clamps the gripper command at 80 mm
_LOWER = np.asarray(ACTION_LOWER, dtype=np.float64)
_UPPER = np.asarray(ACTION_UPPER, dtype=np.float64)


class PeriodicSchedule:
    """Which periodic jobs are due at a time; a job that fell behind skips the missed periods.

    >>> s = PeriodicSchedule({"camera": 10.0}, start=0.0)
    >>> s.due(0.0), s.due(0.05), s.due(0.1)
    ({'camera'}, set(), {'camera'})
    """

    def __init__(self, rates_hz: dict[str, float], start: float) -> None:
        for name, rate in rates_hz.items():
            if not rate > 0:
                raise ValueError(f"rate of {name!r} must be > 0 Hz, got {rate}")
        self.periods = {name: 1.0 / rate for name, rate in rates_hz.items()}
        self._next = {name: float(start) for name in rates_hz}

    def due(self, now: float) -> set[str]:
        jobs = set()
        for name, period in self.periods.items():
            if now + 1e-9 >= self._next[name]:
                jobs.add(name)
                self._next[name] += period
                if self._next[name] <= now:  # behind by more than a period: do not burst
                    self._next[name] = now + period
        return jobs


def driver_speed_percent(velocity: Sequence[float]) -> int:
    """The speed percentage piper_ros reads from a joint_ctrl_single message's velocity field."""
    values = list(velocity)
    if len(values) == ACTION_DIM and any(v != 0 for v in values):
        speed = values[6]
        if not np.isfinite(speed):
            return DRIVER_DEFAULT_SPEED_PERCENT
        return int(min(100, max(0, round(speed))))
    return DRIVER_DEFAULT_SPEED_PERCENT


def driver_target(position: Sequence[float]) -> np.ndarray:
    """A joint_ctrl_single position (6 rad + gripper m) as the arm executes it: clamped to limits.

    Raises ``ValueError`` for fewer than 7 values or non-finite ones (the driver would crash or
    send garbage; the twin refuses them)."""
    values = np.asarray(list(position), dtype=np.float64)
    if values.shape[0] < ACTION_DIM:
        raise ValueError(
            f"joint_ctrl_single needs 7 positions (6 joints rad + gripper m), got {values.shape[0]}"
        )
    values = values[:ACTION_DIM]
    if not np.all(np.isfinite(values)):
        raise ValueError("joint_ctrl_single position has non-finite values")
    values[6] = min(abs(values[6]), DRIVER_GRIPPER_CLAMP)
    return np.clip(values, _LOWER, _UPPER)


@dataclasses.dataclass(frozen=True)
class Progress:
    """What a control tick changed: a subtask finished, the instruction changed, the chain ended."""

    subtask_success: bool
    instruction_changed: bool
    done: bool
    completed: int
    operator_event: str | None = None  # the simulated operator asks for the arm ("takeover") or gives it back


@dataclasses.dataclass(frozen=True)
class Frame:
    """One camera tick: both images (HxWx3 uint8 RGB), the gaze box and the instruction."""

    base_image: np.ndarray
    wrist_image: np.ndarray
    gaze_box: np.ndarray  # (4,) normalised xyxy in the base image
    gaze_valid: bool
    instruction: str


class LeaderArm(Protocol):
    """What plays the leader arm in expert-leader mode (``ScriptedExpert``)."""

    def act(self) -> np.ndarray: ...

    def restart(self) -> None: ...


class RealtimeTwin:
    """A ``PiperCellEnv`` driven in real time with the real driver's command semantics."""

    def __init__(
        self, env: Any, *, expert_leader: bool = False, auto_enable: bool = True, max_step_s: float = 0.1,
        expert: LeaderArm | None = None, operator: Any | None = None,
    ) -> None:
        """``expert``: what plays the leader arm in ``expert_leader`` mode, anything with ``act() -> (7,)``
        and ``restart()`` (``LeaderArm``); None builds a ``ScriptedExpert(env)`` when ``expert_leader`` is set.
        ``operator``: a ``SimOperator`` playing the leader arm while the follower obeys commands."""
        if max_step_s <= 0:
            raise ValueError(f"max_step_s must be > 0, got {max_step_s}")
        if operator is not None and expert_leader:
            raise ValueError("expert_leader and operator exclude each other: the expert either teleoperates "
                             "the follower or, as the operator, intervenes while arm_command drives it")
        self.env = env
        self.operator = operator
        self.expert_leader = expert_leader
        if expert is None and expert_leader:
            from reconvla_core.sim.expert import ScriptedExpert  # only the leader mode needs the planner

            expert = ScriptedExpert(env)
        self.expert = expert
        self.enabled = auto_enable
        self.max_step_s = max_step_s
        self.seed = 0
        self._target: np.ndarray | None = None
        self._setpoint: np.ndarray | None = None
        self._speed = 100.0
        self.leader_command: np.ndarray | None = None
        self.commands_received = 0
        self.commands_ignored = 0

    # ------------------------------------------------------------------ episodes
    def reset(self, seed: int, task: str = "", chain_length: int | None = None) -> str:
        """Build scene ``seed`` with one ``task`` (text) or a chain; returns the first instruction."""
        self.seed = int(seed)
        if task.strip():
            self.env.reset(seed=self.seed, task=task.strip())
        elif chain_length is not None:
            self.env.reset(chain=plan_chain_of_length(self.seed, chain_length))
        else:
            self.env.reset(seed=self.seed)
        state = np.asarray(self.env.state(), dtype=np.float64)
        self._target, self._setpoint = state.copy(), state.copy()
        self._speed = 100.0
        self.leader_command = None
        if self.operator is not None:
            self.operator.reset()
            self.leader_command = self.operator.leader
        return self.instruction

    def next_subtask(self) -> str:
        """Skip to the next subtask of the chain (operator's call); raises ``RuntimeError`` at the end."""
        env = self.env
        if env.done or env.subtask_index + 1 >= len(env.chain.tasks):
            raise RuntimeError("no next subtask: the chain is finished; reset the scene")
        env.subtask_index += 1
        env.subtask_steps = 0
        if self.expert is not None:
            self.expert.restart()  # plan the new subtask from where the arm is
        return self.instruction

    @property
    def instruction(self) -> str:
        return str(self.env.instruction)

    @property
    def done(self) -> bool:
        return bool(self.env.done)

    # ------------------------------------------------------------------ commands
    def set_enabled(self, enabled: bool) -> None:
        """enable_flag: disabling holds the arm where it is (motors hold position)."""
        self.enabled = bool(enabled)
        if not self.enabled:
            held = np.asarray(self.env.state(), dtype=np.float64)
            self._target = held.copy()
            self._setpoint = held.copy()

    def command(self, position: Sequence[float], velocity: Sequence[float] = ()) -> bool:
        """A joint_ctrl_single message. Returns whether it was obeyed (enabled, not in leader mode)."""
        target = driver_target(position)  # raises ValueError on bad input, before any state change
        if not self.enabled or self.expert_leader:
            self.commands_ignored += 1
            return False
        self._target = target
        self._speed = float(driver_speed_percent(velocity))
        self.commands_received += 1
        return True

    # ------------------------------------------------------------------ time
    def advance(self, dt: float) -> float:
        """Move the set-point towards the target at the commanded speed and step the physics.

        ``dt`` is the wall-clock time since the last call, capped at ``max_step_s`` (the twin then
        runs slower than real time instead of jumping). Returns the simulated time stepped."""
        dt = min(max(float(dt), 0.0), self.max_step_s)
        if dt <= 0:
            return 0.0
        if self._target is not None and self._setpoint is not None:
            max_move = MAX_JOINT_SPEED * self._speed / 100.0 * dt
            delta = np.clip(self._target[:6] - self._setpoint[:6], -max_move, max_move)
            self._setpoint[:6] += delta
            self._setpoint[6] = self._target[6]  # the gripper has its own speed in the arm model
            self.env.apply_command(self._setpoint)
        self.env.advance(dt)
        return dt

    def control_tick(self) -> Progress:
        """One control period of the env: the leader's next command (expert mode) and progress."""
        if self.expert_leader and not self.env.done:
            leader = np.asarray(self.expert.act(), dtype=np.float64)
            self.leader_command = leader
            self._target = driver_target(leader)
            self._speed = 100.0
        event = None
        if self.operator is not None:
            event = self.operator.tick()
            self.leader_command = self.operator.leader
        if self.env.done:
            return Progress(False, False, True, int(self.env.completed), event)
        before = self.instruction
        info = self.env.check_progress()  # moves on to the next subtask of the chain on success
        return Progress(
            bool(info["subtask_success"]),
            self.instruction != before,
            bool(info["done"]),
            int(info["completed"]),
            event,
        )

    # ------------------------------------------------------------------ reading
    def state(self) -> np.ndarray:
        """Follower state (7,): what joint_states_single carries."""
        return np.asarray(self.env.state(), dtype=np.float64)

    def render(self) -> Frame:
        obs = self.env.observe(render=True)
        box = np.asarray(self.env.gaze_box(), dtype=np.float32).reshape(4)
        valid = bool(np.all(np.isfinite(box))) and not self.env.done
        return Frame(obs["base_image"], obs["wrist_image"], np.nan_to_num(box), valid, self.instruction)


def plan_chain_of_length(seed: int, length: int) -> Any:
    """The chain the env would plan for ``seed``, with ``length`` subtasks (same RNG stream)."""
    from reconvla_core.sim.scene import sample_layout
    from reconvla_core.sim.tasks import plan_chain

    if length < 1:
        raise ValueError(f"chain_length must be >= 1, got {length}")
    layout = sample_layout(int(seed))
    rng = np.random.default_rng([int(seed), 7])
    return plan_chain(int(seed), layout.block_colours(), layout.bowl_colours(), rng, length=length)
