"""Scripted expert: IK + Cartesian waypoints + gripper, emitting leader-arm commands.

Each ``act()`` call returns the next absolute command (6 joint targets in rad + gripper
opening in m) for one control period, as a leader arm would send it during teleoperation.
The expert reads privileged object poses from the env, plans top-down grasps (yaw aligned
with the block faces, the wrist turned as little as possible), moves the TCP along
straight Cartesian segments at a bounded speed, verifies the grasp after lifting and
retries a failed grasp (up to ``MAX_GRASP_TRIES``). It replans whenever the env moves on
to the next subtask, so it also works from the state a previous subtask left behind.

Callers build it (``ScriptedExpert(env)``, once per env); the env knows nothing of experts. It
starts from the arm's state at its first ``act()`` after each ``env.reset()`` (``env.episode``)
or ``restart()``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from reconvla_core.piper import GRIPPER_MAX, GRIPPER_MIN, JOINT_UPPER, SOFT_JOINT_LOWER, SOFT_JOINT_UPPER
from reconvla_core.sim.kinematics import solve_ik, top_down_rotation
from reconvla_core.sim.scene import BLOCK_SIZE, BOWL_FLOOR, BOWL_INNER_RADIUS

if TYPE_CHECKING:
    from reconvla_core.sim.env import PiperCellEnv

logger = logging.getLogger(__name__)

TRAVEL_Z = 0.115  # TCP height for moving over the scene (finger tips 10 cm above the table)
TRAVEL_SPEED = 0.30  # m/s
APPROACH_SPEED = 0.12  # m/s for the last centimetres down to a grasp or a placement
YAW_SPEED = 2.0  # rad/s of wrist yaw change
CLOSE_STEPS_S = 0.6  # s to close on a block
OPEN_STEPS_S = 0.4  # s to let go
MAX_GRASP_OFFSET = 0.015  # m: beyond it the finger pads (2.2 cm wide) barely overlap a 4 cm block
SETTLE_TOL = 0.01  # rad: the arm has reached the command
MAX_GRASP_TRIES = 3
WRIST_MARGIN = 0.25  # rad kept from the joint-6 limit when choosing a grasp yaw
BOWL_SPOT_OFFSET = (0.022, 0.027)  # m from the bowl centre: first block, second block
IK_SEEDS = (
    (0.0, 1.2, -1.2, 0.0, 0.9, 0.0),
    (0.0, 1.5, -1.0, 0.0, -0.9, 0.0),
    (0.0, 2.0, -1.5, 0.0, 1.0, 0.0),
    (0.0, 0.8, -1.8, 0.0, 1.0, 0.0),
)


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def plan_ik(position: np.ndarray, yaw: float, seed: np.ndarray, iterations: int) -> tuple[np.ndarray, float]:
    """``solve_ik`` for a top-down tool at ``yaw``, inside the deployment's soft joint limits: the
    safety layer refuses a target beyond them, so a demonstration must not teach one."""
    return solve_ik(position, top_down_rotation(yaw), seed, iterations=iterations,
                    lower=SOFT_JOINT_LOWER, upper=SOFT_JOINT_UPPER)


def block_yaw(rot: np.ndarray) -> float:
    """Yaw of a block's faces about world z, in [-pi/4, pi/4) (a cube looks the same every 90 deg)."""
    yaw = math.atan2(rot[1, 0], rot[0, 0])
    return (yaw + math.pi / 4) % (math.pi / 2) - math.pi / 4


class ScriptedExpert:
    """A generator-driven state machine over the env's current subtask."""

    def __init__(self, env: PiperCellEnv, grasp_offset: float = 0.0) -> None:
        """``grasp_offset`` (m): grasp each block up to this far off its centre along the fingers'
        width, drawn per attempt, so the block sits off-centre in the hand and the carry's closed-loop
        correction (the block, not the tool, over the destination) shows making up for it."""
        if not 0.0 <= grasp_offset <= MAX_GRASP_OFFSET:
            raise ValueError(f"grasp_offset must be in 0..{MAX_GRASP_OFFSET} m, got {grasp_offset}")
        self.env = env
        self.grasp_offset = grasp_offset
        self.dt = env.config.control_dt
        self.q = np.zeros(6)
        self.gripper = 0.0
        self._episode: int | None = None  # env.episode the plan belongs to; None: start afresh
        self._key: tuple[int, int] | None = None
        self._plan: Iterator[None] | None = None
        self.tries = 0

    # ------------------------------------------------------------------ public
    def restart(self) -> None:
        """Plan afresh from the arm's current state at the next ``act()`` (e.g. after skipping a subtask)."""
        self._episode = None

    def act(self) -> np.ndarray:
        """Next command (7,) for the current subtask; holds still once the chain is done."""
        self._follow_episode()
        key = (id(self.env.chain), self.env.subtask_index)
        if key != self._key:
            self._key = key
            self.tries = 0
            self._plan = self._subtask_plan()
        assert self._plan is not None
        try:
            next(self._plan)
        except StopIteration:
            pass  # plan finished: hold the last command
        return np.concatenate([self.q, [self.gripper]])

    def _follow_episode(self) -> None:
        """After a reset of the env (or ``restart()``): start from the state the arm is in now."""
        if self._episode != self.env.episode:
            self._episode = self.env.episode
            self._start()

    def _start(self) -> None:
        state = self.env.state()  # RuntimeError before the env's first reset()
        self.q = state[:6].copy()
        self.gripper = float(state[6])
        self._key = None
        self._plan = None
        self.tries = 0

    # ------------------------------------------------------------------ geometry
    def _tcp(self) -> np.ndarray:
        from reconvla_core.sim.kinematics import tcp_pose

        return tcp_pose(self.q)[:3, 3]

    def _tcp_yaw(self) -> float:
        from reconvla_core.sim.kinematics import tcp_pose

        rot = tcp_pose(self.q)[:3, :3]
        # Inverse of top_down_rotation: tool x axis = (cos yaw, sin yaw, 0).
        return math.atan2(rot[1, 0], rot[0, 0])

    def _ik(self, position: np.ndarray, yaw: float) -> np.ndarray:
        q, err = plan_ik(position, yaw, self.q, iterations=60)
        if err > 2e-3:
            for seed in IK_SEEDS:
                s = np.array(seed)
                s[0] = math.atan2(position[1], position[0])
                s[5] = self.q[5]
                q2, err2 = plan_ik(position, yaw, s, iterations=150)
                if err2 < err - 1e-4:
                    q, err = q2, err2
        if err > 5e-3:
            logger.debug("IK error %.4f at %s yaw %.2f", err, np.round(position, 3), yaw)
        return q

    def _choose_yaw(self, position: np.ndarray, face_yaw: float) -> float:
        """Of the four equivalent yaws of a cube, the one reachable with the least wrist turn."""
        best, best_cost = face_yaw, math.inf
        for k in range(4):
            yaw = _wrap(face_yaw + k * math.pi / 2)
            q, err = plan_ik(position, yaw, self._seed_at(position), iterations=120)
            # Reachable first, then a margin from the wrist limit, then the smallest wrist turn.
            margin = max(0.0, abs(q[5]) - (JOINT_UPPER[5] - WRIST_MARGIN))
            cost = abs(q[5] - self.q[5]) + 10.0 * (err > 1e-3) + 4.0 * margin
            if cost < best_cost:
                best, best_cost = yaw, cost
        return best

    def _seed_at(self, position: np.ndarray) -> np.ndarray:
        s = np.array(IK_SEEDS[0])
        s[0] = math.atan2(position[1], position[0])
        s[5] = self.q[5]
        return s

    # ------------------------------------------------------------------ motions
    def _move(self, target: np.ndarray, yaw: float, speed: float) -> Iterator[None]:
        """Straight TCP line to ``target`` (yaw interpolated), one waypoint per control step."""
        start = self._tcp()
        start_yaw = self._tcp_yaw()
        # Turn the wrist the way joint 6 can go: for a top-down tool yaw = pi + q1 - q6, so take
        # the 2 pi branch that matches the joint change of the end configuration.
        q_end = self._ik(target, yaw)
        expected = (q_end[0] - self.q[0]) - (q_end[5] - self.q[5])
        dyaw = _wrap(yaw - start_yaw)
        dyaw = min((dyaw - 2 * math.pi, dyaw, dyaw + 2 * math.pi), key=lambda d: abs(d - expected))
        distance = float(np.linalg.norm(target - start))
        steps = max(1, int(math.ceil(max(distance / (speed * self.dt), abs(dyaw) / (YAW_SPEED * self.dt)))))
        for i in range(1, steps + 1):
            frac = i / steps
            self.q = self._ik(start + frac * (target - start), start_yaw + frac * dyaw)
            yield

    def _wait_settled(self, max_s: float = 1.0) -> Iterator[None]:
        for _ in range(int(max_s / self.dt)):
            if np.max(np.abs(self.env.state()[:6] - self.q)) < SETTLE_TOL:
                return
            yield

    def _gripper_to(self, opening: float, seconds: float) -> Iterator[None]:
        self.gripper = float(np.clip(opening, GRIPPER_MIN, GRIPPER_MAX))
        for _ in range(max(1, int(round(seconds / self.dt)))):
            yield

    def _hold(self) -> Iterator[None]:
        while True:
            yield

    # ------------------------------------------------------------------ plans
    def _holding(self, block: str) -> bool:
        left, right = self.env.touching_gripper(block)
        pos, _ = self.env.object_pose(block)
        return left and right and pos[2] > BLOCK_SIZE / 2 + 0.01

    def _subtask_plan(self) -> Iterator[None]:
        env = self.env
        if env.done:
            yield from self._hold()
            return
        task = env.current_task
        block = f"{task.obj}_block"
        while not self._holding(block):
            if self.tries >= MAX_GRASP_TRIES:
                logger.info("expert gives up grasping %s after %d tries", block, self.tries)
                yield from self._hold()
                return
            self.tries += 1
            yield from self._grasp(block)
        if task.family == "pick":
            yield from self._hold()  # lifted at travel height: the pick succeeds; wait for the env
            return
        if task.family == "place":
            dest_pos = self._bowl_spot(f"{task.dest}_bowl", block)
            release_bottom = dest_pos[2] + BOWL_FLOOR + 0.012
            # Any of the cube's four yaws will do: the reachable one with the least wrist turn.
            dest_yaw = self._choose_yaw(np.array([dest_pos[0], dest_pos[1], TRAVEL_Z]), self._tcp_yaw())
        else:
            dest_pos, dest_rot = env.object_pose(f"{task.dest}_block")
            release_bottom = dest_pos[2] + BLOCK_SIZE / 2 + 0.003
            dest_yaw = self._choose_yaw(
                np.array([dest_pos[0], dest_pos[1], TRAVEL_Z]), block_yaw(dest_rot)
            )
        # Offset of the held block below the TCP (it may have slipped a little in the fingers).
        block_pos, _ = env.object_pose(block)
        tcp_to_bottom = self._tcp()[2] - (block_pos[2] - BLOCK_SIZE / 2)
        above = np.array([dest_pos[0], dest_pos[1], TRAVEL_Z])
        yield from self._move(above, dest_yaw, TRAVEL_SPEED)
        yield from self._wait_settled(0.5)
        # Closed-loop correction: put the block itself (not the TCP) over the destination.
        block_pos, _ = env.object_pose(block)
        shift = dest_pos[:2] - block_pos[:2]
        if np.linalg.norm(shift) < 0.05:  # larger means the block is not where we think: skip
            above = above + np.array([shift[0], shift[1], 0.0])
            yield from self._move(above, dest_yaw, APPROACH_SPEED)
            yield from self._wait_settled(0.3)
        dest_pos = np.array([above[0], above[1], dest_pos[2]])
        down = np.array([dest_pos[0], dest_pos[1], release_bottom + tcp_to_bottom])
        yield from self._move(down, dest_yaw, APPROACH_SPEED)
        yield from self._wait_settled(0.5)
        yield from self._gripper_to(GRIPPER_MAX, OPEN_STEPS_S)
        yield from self._move(above, dest_yaw, APPROACH_SPEED)
        yield from self._hold()

    def _bowl_spot(self, bowl: str, block: str) -> np.ndarray:
        """Where to drop into the bowl: off-centre, leaving room for a second block opposite.

        An empty bowl gets the block ``BOWL_SPOT_OFFSET[0]`` from its centre towards the robot;
        a bowl with a block already gets it ``BOWL_SPOT_OFFSET[1]`` on the side away from it."""
        centre, _ = self.env.object_pose(bowl)
        inside = []
        for name in self.env.bodies:
            if name.endswith("_block") and name != block:
                pos, _ = self.env.object_pose(name)
                if math.hypot(pos[0] - centre[0], pos[1] - centre[1]) < BOWL_INNER_RADIUS:
                    inside.append(pos[:2] - centre[:2])
        towards_robot = -centre[:2] / max(float(np.linalg.norm(centre[:2])), 1e-6)
        if not inside:
            offset = BOWL_SPOT_OFFSET[0] * towards_robot
        else:
            away = -np.mean(inside, axis=0)
            if np.linalg.norm(away) < 1e-3:
                away = -towards_robot
            offset = BOWL_SPOT_OFFSET[1] * away / np.linalg.norm(away)
        return np.array([centre[0] + offset[0], centre[1] + offset[1], centre[2]])

    def _grasp(self, block: str) -> Iterator[None]:
        env = self.env
        pos, rot = env.object_pose(block)
        above = np.array([pos[0], pos[1], TRAVEL_Z])
        yaw = self._choose_yaw(above, block_yaw(rot))
        if self._tcp()[2] < TRAVEL_Z - 0.01:  # first rise straight up, clear of everything
            here = self._tcp()
            yield from self._move(np.array([here[0], here[1], TRAVEL_Z]), self._tcp_yaw(), APPROACH_SPEED)
        self.gripper = GRIPPER_MAX
        yield from self._move(above, yaw, TRAVEL_SPEED)
        yield from self._wait_settled(0.5)
        pos, rot = env.object_pose(block)  # it may have been nudged: re-read before descending
        grasp = np.array([pos[0], pos[1], max(pos[2], 0.018)])
        if self.grasp_offset > 0:  # along the tool x axis, (cos yaw, sin yaw): the fingers close along y
            rng = np.random.default_rng([env.chain.seed if env.chain else 0, env.subtask_index, self.tries, 17])
            grasp[:2] += rng.uniform(-self.grasp_offset, self.grasp_offset) * np.array([math.cos(yaw), math.sin(yaw)])
        yield from self._move(np.array([grasp[0], grasp[1], TRAVEL_Z]), yaw, APPROACH_SPEED)
        yield from self._move(grasp, yaw, APPROACH_SPEED)
        yield from self._wait_settled(0.6)
        yield from self._gripper_to(GRIPPER_MIN, CLOSE_STEPS_S)
        yield from self._move(np.array([grasp[0], grasp[1], TRAVEL_Z]), yaw, APPROACH_SPEED)
        yield from self._wait_settled(0.3)
