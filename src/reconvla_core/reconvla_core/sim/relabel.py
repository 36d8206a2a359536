"""Relabelling expert: the scripted expert's next command from the *measured* state alone.

``ScriptedExpert`` replays a plan it made when the subtask began, so it only knows what to do
on its own path. DAgger (Ross et al., 2011) needs a label for any state a policy visits, so
``RelabelExpert.act()`` reads the follower's joints and gripper opening, the object poses and
the current subtask, infers the phase from them and returns one step of the way on from there:

- the block rests at its destination and the gripper let go: open and rise (the env then
  counts the subtask once the block is still);
- the block is between both fingers: lift it (pick), carry it until the *block* is over the
  destination, lower it to the release height, open. Low over the destination, a miss of up to
  ``LOW_CORRECTION`` is corrected at that height and one within ``RELEASE_TOL`` is let go from there
  (success allows more); only a larger miss climbs back to travel height;
- otherwise: open a gripper that is closed away from the block, rise before travelling when
  low and off target, go over the block, turn to its faces, descend, close.

Each command is a bounded step (``TRAVEL_SPEED`` / ``APPROACH_SPEED`` times one control period)
along a straight TCP line from the measured pose, so a label leads the measured state about as far
as the scripted expert's commands do (median largest joint gap 0.046 vs 0.043 rad), and mixes with
its demonstrations, solved by IK seeded at the measured joints. The only
memory is a cache of the chosen grasp and carry yaws (they depend on the scene, not on the
path; recomputed when the block moves or turns). ``ScriptedExpert`` itself is unchanged:
collection keeps its plan-following demonstrations.

``perturbed_recovery`` measures how often the relabelling expert completes a subtask from a
state knocked off the demonstrated path (joint offsets, a pushed block, a gripper closed early).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from reconvla_core.piper import (
    GRIPPER_MAX,
    GRIPPER_MIN,
    JOINT_LOWER,
    JOINT_UPPER,
    SOFT_JOINT_LOWER,
    SOFT_JOINT_UPPER,
)
from reconvla_core.sim import success as checks
from reconvla_core.sim.expert import (
    APPROACH_SPEED,
    BLOCK_SIZE,
    BOWL_FLOOR,
    TRAVEL_SPEED,
    TRAVEL_Z,
    WRIST_MARGIN,
    YAW_SPEED,
    ScriptedExpert,
    _wrap,
    plan_ik,
)
from reconvla_core.sim.env import HOME_JOINTS
from reconvla_core.sim.kinematics import tcp_pose
from reconvla_core.sim.robot import FINGER_THICKNESS, FINGER_WIDTH
from reconvla_core.sim.scene import BOWL_INNER_RADIUS, BOWL_WALL

if TYPE_CHECKING:
    from reconvla_core.sim.env import PiperCellEnv


def tcp_position(q: np.ndarray) -> np.ndarray:
    return tcp_pose(q)[:3, 3]

logger = logging.getLogger(__name__)

LEAD = 1.0  # control periods of motion a command runs ahead of the measured pose
ALIGN_TOL = 0.006  # m: TCP (or held block) over its target
REACHED_TOL = 0.005  # m: at the grasp or release height
YAW_TOL = 0.06  # rad of tool yaw still counted as aligned with the faces
RISE_MARGIN = 0.015  # m below travel height that counts as "low"
RELEASE_TOL = 0.012  # m: a held block this far off its spot, low, is lowered and let go (stacking allows 0.02)
RELEASE_YAW_TOL = 0.35  # rad of tool yaw off the faces still let go from low (success ignores the yaw)
LOW_CORRECTION = 0.03  # m: a miss up to this, low, is corrected at that height; a larger one rises first
OPEN_SLACK = 0.007  # m the measured opening may lack of the commanded one before descending onto a block
NARROW_OPENING = BLOCK_SIZE + 0.014  # m: wide enough for a face-aligned block, for tight spots
CLOSED_OFF_BLOCK = BLOCK_SIZE - 0.006  # closed narrower than the block without holding it: a miss
FINGER_CLEARANCE = 0.01  # m of room a finger needs from other objects when it comes down
DISTRACTOR_RADIUS = 0.025  # m, the scene's spheres and cylinders
# Half extents (m) of the palm box along the finger axis and across it (sim/robot.py); its underside
# is a finger length above the tips, as high as a 7 cm distractor cylinder when grasping a block.
PALM_HALF = (GRIPPER_MAX / 2 + FINGER_THICKNESS + 0.005, 0.0225)
YAW_CACHE_MOVE = 0.005
STILL_SPEED = 0.02  # rad/s: every joint slower than this and the arm is not getting anywhere
STUCK_RELEASE = 0.015  # m above the release height from which a stuck block may be let go
IK_GIVE_UP = 0.01  # m of IK error at which a step is not followed
HOME_STEP = 0.3  # rad per command towards the home pose  # m a block may move before its chosen grasp yaw is recomputed


def face_yaw(rot: np.ndarray) -> float:
    """Yaw of a block's vertical faces in [-pi/4, pi/4), whichever of its axes points up (a block
    knocked onto its side is still a cube to grasp; ``block_yaw`` assumes its z axis is up)."""
    up = int(np.argmax(np.abs(rot[2, :])))
    side = rot[:, (up + 1) % 3]
    yaw = math.atan2(side[1], side[0])
    return (yaw + math.pi / 4) % (math.pi / 2) - math.pi / 4


class RelabelExpert(ScriptedExpert):
    """Stateless-by-design expert: ``act()`` maps the measured state to a command (7,).

    It borrows ``ScriptedExpert``'s geometry (IK with seeds, least-wrist-turn yaw choice, bowl
    spots); ``self.q`` is the measured joints at every call, never a plan."""

    def __init__(self, env: PiperCellEnv) -> None:
        super().__init__(env)
        self._yaw_cache: dict[tuple[Any, ...], tuple[np.ndarray, float]] = {}
        self.phase = "start"  # last inferred phase (for logs and tests)

    def _start(self) -> None:
        super()._start()
        self._yaw_cache = {}  # the grasp yaws chosen in the previous scene
        self.phase = "start"

    # ------------------------------------------------------------------ public
    def act(self) -> np.ndarray:
        self._follow_episode()
        env = self.env
        state = env.state()
        self.q = state[:6].copy()
        opening = float(state[6])
        if env.done:
            self.phase = "done"
            return self._command(self.q, opening)
        task = env.current_task
        block = f"{task.obj}_block"
        block_pos, block_rot = env.object_pose(block)
        touching = env.touching_gripper(block)
        grasped = all(touching)
        tcp = self._tcp()
        if task.family != "pick" and not grasped and self._at_destination(task, block_pos):
            self.phase = "release"
            return self._step(np.array([tcp[0], tcp[1], TRAVEL_Z]), self._tcp_yaw(), APPROACH_SPEED, GRIPPER_MAX)
        if grasped and opening > GRIPPER_MIN + 0.005:
            return self._carry(task, block, block_pos, tcp, opening)
        return self._reach(block, block_pos, block_rot, tcp, opening)

    # ------------------------------------------------------------------ phases
    def _reach(self, block: str, pos: np.ndarray, rot: np.ndarray, tcp: np.ndarray, opening: float) -> np.ndarray:
        above = np.array([pos[0], pos[1], TRAVEL_Z])
        yaw = self._cached_yaw(("grasp", block), pos, lambda: self._grasp_yaw(block, above, face_yaw(rot)))
        grasp = np.array([pos[0], pos[1], max(pos[2], 0.018)])
        off_xy = float(np.hypot(*(tcp[:2] - pos[:2])))
        yaw_err = abs(self._yaw_error(yaw))
        near_grasp = off_xy < ALIGN_TOL and abs(tcp[2] - grasp[2]) < REACHED_TOL
        if near_grasp and opening > CLOSED_OFF_BLOCK:
            self.phase = "close"
            return self._step(grasp, yaw, APPROACH_SPEED, GRIPPER_MIN)
        # Open as wide as the neighbours allow: full, or just wider than the block when a finger
        # would otherwise come down on a rim or a tall neighbour.
        wide = self._finger_clearance(block, above, yaw) >= FINGER_CLEARANCE
        approach_opening = GRIPPER_MAX if wide else NARROW_OPENING
        if opening < approach_opening - OPEN_SLACK and not near_grasp:
            # Closed early (or missed, or dropped the block): open, rising when low so that a finger
            # pressed against a rim or a block is freed instead of held there.
            self.phase = "open"
            if tcp[2] < TRAVEL_Z - RISE_MARGIN:
                return self._step(np.array([tcp[0], tcp[1], TRAVEL_Z]), self._tcp_yaw(), APPROACH_SPEED, approach_opening)
            return self._command(self.q, approach_opening)
        if near_grasp:  # closed at the grasp pose without holding: a miss; open and rise
            self.phase = "open"
            return self._step(np.array([tcp[0], tcp[1], TRAVEL_Z]), self._tcp_yaw(), APPROACH_SPEED, approach_opening)
        if off_xy > ALIGN_TOL or yaw_err > YAW_TOL:
            if tcp[2] < TRAVEL_Z - RISE_MARGIN:  # never slide or turn low: the fingers would sweep the block
                self.phase = "rise"
                return self._step(np.array([tcp[0], tcp[1], TRAVEL_Z]), self._tcp_yaw(), APPROACH_SPEED, approach_opening)
            self.phase = "travel"
            speed = TRAVEL_SPEED if off_xy > 0.03 else APPROACH_SPEED
            return self._step(np.array([above[0], above[1], self._travel_z(tcp)]), yaw, speed, approach_opening)
        self.phase = "descend"
        return self._step(grasp, yaw, APPROACH_SPEED, approach_opening)

    def _carry(self, task: Any, block: str, pos: np.ndarray, tcp: np.ndarray, opening: float) -> np.ndarray:
        env = self.env
        bottom = pos[2] - BLOCK_SIZE / 2
        if task.family == "pick" or bottom < 0.01:
            self.phase = "lift"  # still at the table: straight up first
            return self._step(np.array([tcp[0], tcp[1], TRAVEL_Z]), self._tcp_yaw(), APPROACH_SPEED, GRIPPER_MIN)
        if task.family == "place":
            dest = self._bowl_spot(f"{task.dest}_bowl", block)
            release_bottom = dest[2] + BOWL_FLOOR + 0.012
            faces = None
        else:
            dest, dest_rot = env.object_pose(f"{task.dest}_block")
            release_bottom = dest[2] + BLOCK_SIZE / 2 + 0.003
            faces = face_yaw(dest_rot)
        dest_above = np.array([dest[0], dest[1], TRAVEL_Z])
        yaw = self._cached_yaw(
            ("carry", task.name), dest,
            lambda: self._choose_yaw(dest_above, self._tcp_yaw() if faces is None else faces),
        )
        # Put the block itself (not the TCP) over the destination: it may sit off-centre in the fingers.
        offset = tcp[:2] - pos[:2]
        target_xy = dest[:2] + offset
        off_xy = float(np.hypot(*(pos[:2] - dest[:2])))
        tcp_to_bottom = tcp[2] - bottom
        release_z = release_bottom + tcp_to_bottom
        low = tcp[2] < TRAVEL_Z - RISE_MARGIN
        yaw_err = abs(self._yaw_error(yaw))
        # Low over the destination, close enough is close enough: the demonstrations align to
        # millimetres at travel height, but from a policy's state a label that climbs back up for a
        # centimetre's miss teaches hovering (docs/dagger.md, "The relabeller's release tolerance").
        close_enough = low and off_xy <= RELEASE_TOL and yaw_err <= RELEASE_YAW_TOL
        if (off_xy > ALIGN_TOL or yaw_err > YAW_TOL) and not close_enough:
            if low and off_xy > LOW_CORRECTION:
                self.phase = "rise"
                return self._step(np.array([tcp[0], tcp[1], TRAVEL_Z]), self._tcp_yaw(), APPROACH_SPEED, GRIPPER_MIN)
            if low:  # a short miss: shift over the spot at this height (never below the release height)
                self.phase = "correct"
                target = np.array([target_xy[0], target_xy[1], max(tcp[2], release_z)])
                return self._step(target, yaw, APPROACH_SPEED, GRIPPER_MIN)
            self.phase = "carry"
            speed = TRAVEL_SPEED if off_xy > 0.03 else APPROACH_SPEED
            return self._step(np.array([target_xy[0], target_xy[1], self._travel_z(tcp)]), yaw, speed, GRIPPER_MIN)
        resting = float(np.max(np.abs(self.env.arm.state().velocities))) < STILL_SPEED
        stuck = resting and bottom - release_bottom < STUCK_RELEASE
        if tcp[2] - release_z > REACHED_TOL and not stuck:  # stuck: a finger sits on a rim; let go there
            self.phase = "lower"
            return self._step(np.array([target_xy[0], target_xy[1], release_z]), yaw, APPROACH_SPEED, GRIPPER_MIN)
        self.phase = "let go"
        return self._command(self.q, GRIPPER_MAX)

    # ------------------------------------------------------------------ helpers
    def _grasp_yaw(self, block: str, above: np.ndarray, faces: float) -> float:
        """``_choose_yaw``, unless a finger would come down close to another object (a bowl's rim
        when the block was dropped into one, a distractor, a block): then the finger axis with the
        more room, turned the least."""
        default = self._choose_yaw(above, faces)
        if self._finger_clearance(block, above, default) >= FINGER_CLEARANCE:
            return default
        axes = (faces, faces + math.pi / 2)  # the fingers then open just wider than the block (_reach)
        base = max(axes, key=lambda yaw: self._finger_clearance(block, above, yaw, NARROW_OPENING))
        if (self._finger_clearance(block, above, base, NARROW_OPENING)
                <= self._finger_clearance(block, above, default, NARROW_OPENING)):
            return default
        return self._most_reachable((_wrap(base), _wrap(base + math.pi)), above)

    def _most_reachable(self, yaws: tuple[float, ...], position: np.ndarray) -> float:
        """Of ``yaws``, the one ``_choose_yaw`` would take: reachable, clear of the wrist limit, least turn."""
        def cost(yaw: float) -> float:
            q, err = plan_ik(position, yaw, self._seed_at(position), iterations=120)
            margin = max(0.0, abs(q[5]) - (JOINT_UPPER[5] - WRIST_MARGIN))
            return abs(q[5] - self.q[5]) + 10.0 * (err > 1e-3) + 4.0 * margin

        return min(yaws, key=cost)

    def _finger_clearance(self, block: str, centre: np.ndarray, yaw: float, opening: float = GRIPPER_MAX) -> float:
        """Least horizontal room (m) between the fingers open to ``opening`` at ``yaw`` over ``centre`` and
        any other object."""
        axis = np.array([math.sin(yaw), -math.cos(yaw)])  # finger axis: tool y of top_down_rotation(yaw)
        reach = opening / 2 + FINGER_THICKNESS / 2
        fingers = [centre[:2] + reach * axis, centre[:2] - reach * axis]
        room = math.inf
        for name in self.env.bodies:
            if name in (block, "table"):
                continue
            pos, _ = self.env.object_pose(name)
            for finger in fingers:
                distance = float(np.linalg.norm(finger - pos[:2]))
                if name.endswith("_bowl"):
                    gap = abs(distance - (BOWL_INNER_RADIUS + BOWL_WALL / 2)) - BOWL_WALL / 2
                elif name.endswith("_block"):
                    gap = distance - BLOCK_SIZE * 0.71  # half the diagonal
                else:
                    gap = distance - DISTRACTOR_RADIUS
                room = min(room, gap - FINGER_THICKNESS / 2 - FINGER_WIDTH / 4)  # a finger is a box, not a point
            if self._is_tall(name):  # as high as the palm's underside at a grasp: the palm's footprint counts
                rel = pos[:2] - centre[:2]
                along = max(abs(float(rel @ axis)) - PALM_HALF[0], 0.0)
                across = max(abs(float(rel @ np.array([-axis[1], axis[0]]))) - PALM_HALF[1], 0.0)
                room = min(room, math.hypot(along, across) - DISTRACTOR_RADIUS)
        return room

    def _is_tall(self, name: str) -> bool:
        layout = self.env.layout
        return bool(layout is not None and name.startswith("distractor")
                    and layout.by_name(name).shape == "cylinder")

    def _at_destination(self, task: Any, pos: np.ndarray) -> bool:
        """The block lies where the subtask wants it (released or not, moving or not)."""
        if task.family == "place":
            bowl, _ = self.env.object_pose(f"{task.dest}_bowl")
            return checks.in_bowl(pos, bowl, touching_gripper=False, speed=0.0)
        base, _ = self.env.object_pose(f"{task.dest}_block")
        return checks.on_block(pos, base, touching_gripper=False, speed=0.0)

    def _cached_yaw(self, key: tuple[Any, ...], where: np.ndarray, choose: Any) -> float:
        full_key = (id(self.env.chain), self.env.subtask_index, *key)
        cached = self._yaw_cache.get(full_key)
        if cached is None or np.linalg.norm(cached[0][:2] - where[:2]) > YAW_CACHE_MOVE:
            cached = (np.asarray(where, dtype=np.float64).copy(), float(choose()))
            self._yaw_cache[full_key] = cached
        return cached[1]

    def _yaw_error(self, yaw: float) -> float:
        return _wrap(yaw - self._tcp_yaw())

    def _step(self, target: np.ndarray, yaw: float, speed: float, gripper: float) -> np.ndarray:
        """One bounded step of a straight TCP line from the measured pose towards ``target``."""
        tcp = self._tcp()
        start_yaw = self._tcp_yaw()
        delta = target - tcp
        distance = float(np.linalg.norm(delta))
        reach = speed * self.dt * LEAD
        frac = 1.0 if distance <= reach else reach / distance
        dyaw = self._yaw_error(yaw)
        # The wrist turns the way the joint-6 limit allows (as ScriptedExpert._move does).
        q_end = self._ik(target, yaw)
        expected = (q_end[0] - self.q[0]) - (q_end[5] - self.q[5])
        dyaw = min((dyaw - 2 * math.pi, dyaw, dyaw + 2 * math.pi), key=lambda d: abs(d - expected))
        turn = YAW_SPEED * self.dt * LEAD
        yaw_step = float(np.clip(dyaw, -turn, turn))
        waypoint = tcp + frac * delta
        q = self._ik(waypoint, start_yaw + yaw_step)
        if float(np.linalg.norm(tcp_position(q) - waypoint)) > IK_GIVE_UP:
            # No IK from this configuration (a perturbation left the arm folded oddly): head for the
            # home pose in joint space, from where every approach is solvable.
            self.phase = "home"
            step = np.clip(HOME_JOINTS - self.q, -HOME_STEP, HOME_STEP)
            return self._command(self.q + step, gripper)
        return self._command(q, gripper)

    @staticmethod
    def _travel_z(tcp: np.ndarray) -> float:
        """Height for moving over the scene: never lower than travel height less the margin, and an
        arm knocked high comes back down on the way."""
        return float(np.clip(tcp[2], TRAVEL_Z - RISE_MARGIN, TRAVEL_Z + RISE_MARGIN))

    @staticmethod
    def _command(q: np.ndarray, gripper: float) -> np.ndarray:
        joints = np.clip(q, SOFT_JOINT_LOWER, SOFT_JOINT_UPPER)
        return np.concatenate([joints, [float(np.clip(gripper, GRIPPER_MIN, GRIPPER_MAX))]])


# ---------------------------------------------------------------------- recovery measurement
PERTURBATIONS = ("joints", "block", "gripper")


@dataclass
class RecoveryReport:
    """Subtasks the relabelling expert completed after a perturbation, by kind."""

    attempts: int = 0
    recovered: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=lambda: {k: [0, 0] for k in PERTURBATIONS})
    failures: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0

    @property
    def rate(self) -> float:
        return self.recovered / self.attempts if self.attempts else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "recovered": self.recovered,
            "rate": round(self.rate, 4),
            "by_kind": {k: {"attempts": a, "recovered": r} for k, (r, a) in self.by_kind.items()},
            "failures": self.failures,
            "steps": self.steps,
        }


def perturbed_recovery(
    env: PiperCellEnv, chains: list[Any], seed: int = 0, max_joint_offset: float = 0.15,
    push_range: tuple[float, float] = (0.02, 0.04),
) -> RecoveryReport:
    """For every subtask of ``chains``: the scripted expert drives a random number of steps along its
    demonstration, the state is knocked off it (kinds in turn: joint offsets uniform in
    ``+-max_joint_offset`` rad, the block pushed ``push_range`` m while it is on the table, the gripper
    closed early), then the relabelling expert drives from there with the subtask's full time limit.
    A failed subtask ends its chain (the next one would start from a state no chain plans for)."""
    report = RecoveryReport()
    for chain in chains:
        env.reset(chain=chain)
        expert, relabel = ScriptedExpert(env), RelabelExpert(env)
        rng = np.random.default_rng([seed, chain.seed, 15])  # each chain's trials reproduce on their own
        for position, task in enumerate(chain.tasks):
            kind = PERTURBATIONS[(chain.seed + position) % len(PERTURBATIONS)]
            expert.restart()  # the scripted expert plans afresh from wherever the last subtask ended
            on_path = int(rng.integers(0, 60))
            for _ in range(on_path):
                _, info = env.step(expert.act(), render=False)
                report.steps += 1
                if info["done"] or info["subtask_index"] != position or info["subtask_success"]:
                    break
            if env.done or env.subtask_index != position:
                continue  # finished before the perturbation: not a recovery trial
            kind = _perturb(env, task, kind, rng, max_joint_offset, push_range)
            env.subtask_steps = 0  # recovery gets the subtask's whole time limit from the perturbed state
            while True:
                _, info = env.step(relabel.act(), render=False)
                report.steps += 1
                if info["subtask_success"] or info["done"]:
                    break
            ok = bool(info["subtask_success"])
            report.attempts += 1
            report.recovered += int(ok)
            report.by_kind[kind][1] += 1
            report.by_kind[kind][0] += int(ok)
            if not ok:
                report.failures.append({"scene": chain.seed, "position": position, "task": task.name,
                                        "kind": kind, "phase": relabel.phase})
                break
    return report


def _perturb(env: PiperCellEnv, task: Any, kind: str, rng: np.random.Generator, max_joint_offset: float,
             push_range: tuple[float, float]) -> str:
    """Knock the state off the path; returns the kind applied ('block' falls back to 'joints'
    when the block is held or no free spot is near)."""
    block = f"{task.obj}_block"
    if kind == "block" and not any(env.touching_gripper(block)):
        pos, rot = env.object_pose(block)
        for _ in range(20):
            angle = rng.uniform(-math.pi, math.pi)
            dist = rng.uniform(*push_range)
            new = pos + np.array([dist * math.cos(angle), dist * math.sin(angle), 0.0])
            if _free_spot(env, block, new):
                env.move_object(block, new)
                return kind
    if kind == "block":
        kind = "joints"
    command = env.last_command
    if kind == "gripper":
        command[6] = GRIPPER_MIN
    else:
        command[:6] = np.clip(command[:6] + rng.uniform(-max_joint_offset, max_joint_offset, 6),
                              JOINT_LOWER, JOINT_UPPER)
    env.apply_command(command)
    env.advance(0.6)  # the arm gets there (or the fingers close) before the expert looks again
    return kind


def _free_spot(env: PiperCellEnv, block: str, position: np.ndarray) -> bool:
    """``position`` keeps a block's width from every other object and stays within reach."""
    from reconvla_core.sim.scene import BOWL_INNER_RADIUS, BOWL_WALL, WORK_BEARING, WORK_RADIUS

    radius = float(np.hypot(position[0], position[1]))
    if not WORK_RADIUS[0] + 0.01 <= radius <= WORK_RADIUS[1] - 0.01:
        return False
    if abs(math.atan2(position[1], position[0])) > WORK_BEARING - 0.05:
        return False
    for name in env.bodies:
        if name == block or name == "table":
            continue
        other, _ = env.object_pose(name)
        clearance = BOWL_INNER_RADIUS + BOWL_WALL + BLOCK_SIZE if name.endswith("_bowl") else 1.6 * BLOCK_SIZE
        if float(np.hypot(*(other[:2] - position[:2]))) < clearance:
            return False
    return True
