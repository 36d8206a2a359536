"""A simulated HG-DAgger operator on the twin's leader arm (no ROS here).

In the twin the policy drives the follower through arm_command; ``SimOperator`` plays the person
holding the leader arm and watching (Kelly et al. 2019, HG-DAgger):

- **watching**: the leader rests where it was left. A scripted expert runs alongside as a guide
  (``ScriptedExpert``, its commands not executed) and its tool-centre path for the subtask is
  kept; when the follower's TCP is farther than ``deviation_m`` from every point of that path,
  the operator intervenes (event ``"takeover"``: the node asks arm_command for the arm);
- **grabbing**: the operator brings the leader onto the follower, at most ``speed`` rad/s per
  joint, and holds it there: arm_command's gate holds the arm until the two agree, then lets the
  leader drive (it says so on its intervention topic: ``leader_drives(True)``);
- **driving**: the leader follows the relabelling expert, which acts from the measured state
  (``RelabelExpert``), until the subtask ends (or after ``max_drive_s``); then event
  ``"handback"``, and the operator watches again with a guide planned from where the arm is.

The operator waits for arm_command's flag before driving because a relabelled command leads the
follower by about one control period of motion, which may exceed the gate's agreement tolerance:
driving before the gate switched would leave the arm holding in handover.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

import numpy as np

from reconvla_core.sim.kinematics import tcp_pose

AGREE_RAD = 0.01  # the operator holds the leader this close to the follower (well inside the gate's 0.05)
AGREE_M = 0.003  # gripper opening, m
GRIPPER_SPEED = 0.05  # m/s the operator opens or closes the leader's gripper


class Expert(Protocol):
    """``ScriptedExpert`` / ``RelabelExpert``: the next leader command (7,) and a fresh start."""

    def act(self) -> np.ndarray: ...

    def restart(self) -> None: ...


class OperatorState(str, enum.Enum):
    WATCHING = "watching"
    GRABBING = "grabbing"
    DRIVING = "driving"


class SimOperator:
    """The HG-DAgger operator of the twin (see the module docstring). One call of ``tick()`` per
    control period; ``leader`` is what the leader arm reports."""

    def __init__(self, env: Any, *, deviation_m: float = 0.05, speed: float = 1.0, max_drive_s: float = 0.0,
                 guide: Expert | None = None, driver: Expert | None = None) -> None:
        if not (np.isfinite(deviation_m) and deviation_m > 0):
            raise ValueError(f"operator deviation_m must be > 0, got {deviation_m}")
        if not (np.isfinite(speed) and speed > 0):
            raise ValueError(f"operator speed must be > 0 rad/s, got {speed}")
        if not (np.isfinite(max_drive_s) and max_drive_s >= 0):
            raise ValueError(f"operator max_drive_s must be >= 0 (0: until the subtask ends), got {max_drive_s}")
        if guide is None or driver is None:
            from reconvla_core.sim.expert import ScriptedExpert
            from reconvla_core.sim.relabel import RelabelExpert

            guide = guide or ScriptedExpert(env)
            driver = driver or RelabelExpert(env)
        self.env = env
        self.deviation_m = float(deviation_m)
        self.speed = float(speed)
        self.max_drive_s = float(max_drive_s)
        self.guide, self.driver = guide, driver
        self.dt = float(env.config.control_dt)
        self.state = OperatorState.WATCHING
        self.leader: np.ndarray | None = None
        self.path: list[np.ndarray] = []  # the guide's TCP positions for the current subtask
        self.deviation = 0.0  # the follower TCP's distance from that path at the last tick
        self.interventions = 0
        self._leader_drives = False
        self._subtask: tuple[int, int] | None = None
        self._driving_s = 0.0

    def reset(self) -> None:
        """A new scene: the leader rests where the follower starts; watch afresh."""
        self.leader = np.asarray(self.env.state(), dtype=np.float64).copy()
        self._watch()

    def leader_drives(self, drives: bool) -> None:
        """arm_command's intervention flag: whether the leader drives the arm now."""
        self._leader_drives = bool(drives)

    def _watch(self) -> None:
        self.state = OperatorState.WATCHING
        self.path = []
        self.deviation = 0.0
        self._subtask = self._subtask_key()
        self.guide.restart()  # plans the subtask from where the arm is now

    def _subtask_key(self) -> tuple[int, int]:
        return (int(self.env.episode), int(self.env.subtask_index))

    def tick(self) -> str | None:
        """One control period; returns "takeover" or "handback" when the operator asks for either."""
        follower = np.asarray(self.env.state(), dtype=np.float64)
        if self.leader is None:
            self.leader = follower.copy()
        if self.env.done:
            if self.state is not OperatorState.WATCHING:
                self._watch()
                return "handback"
            return None
        if self.state is OperatorState.WATCHING:
            if self._subtask_key() != self._subtask:
                self._watch()  # the policy finished a subtask: a new guide path
            self.path.append(tcp_pose(np.asarray(self.guide.act(), dtype=np.float64)[:6])[:3, 3])
            tcp = tcp_pose(follower[:6])[:3, 3]
            self.deviation = float(min(np.linalg.norm(tcp - point) for point in self.path))
            if self.deviation > self.deviation_m:
                self.state = OperatorState.GRABBING
                self.interventions += 1
                self._driving_s = 0.0
                return "takeover"
            return None
        if self.state is OperatorState.GRABBING:
            step = np.array([self.speed * self.dt] * 6 + [GRIPPER_SPEED * self.dt])
            self.leader = self.leader + np.clip(follower - self.leader, -step, step)
            matched = (np.max(np.abs(self.leader[:6] - follower[:6])) <= AGREE_RAD
                       and abs(self.leader[6] - follower[6]) <= AGREE_M)
            if matched and self._leader_drives:
                self.state = OperatorState.DRIVING
            return None
        # DRIVING: the relabelling expert's command from the measured state, until the subtask ends.
        self._driving_s += self.dt
        if self._subtask_key() != self._subtask or (0 < self.max_drive_s <= self._driving_s):
            self._watch()  # the leader rests where it is
            return "handback"
        self.leader = np.asarray(self.driver.act(), dtype=np.float64).copy()
        return None
