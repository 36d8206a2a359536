"""``PiperCellEnv``: the PyBullet twin of the PiPer cell behind a plain Python API (no ROS).

Batch use (evaluation, collection)::

    env = PiperCellEnv(SimConfig(image_width=320, image_height=240, control_hz=10))
    expert = ScriptedExpert(env)            # sim/expert.py; the env never builds one itself
    obs = env.reset(seed=0)                 # or chain=make_eval_chains(1)[0], or task="place red blue"
    while True:
        obs, info = env.step(expert.act())
        if info["done"]:
            break

Real-time use (the ROS ``sim_robot`` node): ``apply_command(action7)`` when a command
arrives, ``advance(dt)`` on a timer, ``observe()`` for images and joint states,
``check_progress()`` to update the subtask; a ``ScriptedExpert`` plays the leader arm.

Actions are absolute targets: 6 joint angles (rad) + gripper opening (m), the layout of
``reconvla_core.piper.ACTION_NAMES``. Action policy: a wrong shape, NaN or inf raises
``ValueError``; a value beyond its limit by more than ``SimConfig.action_tolerance`` (a
commanding error, not rounding) raises ``ValueError`` naming the joint and its limits unless
``SimConfig.clip_actions`` is set (then it is clamped, like the piper driver does);
smaller overshoots are clamped. The arm then moves at most 3 rad/s per joint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from reconvla_core import piper
from reconvla_core.piper import (
    ACTION_DIM,
    ACTION_NAMES,
    GRIPPER_MAX,
)
from reconvla_core.sim import camera as cam
from reconvla_core.sim import success as checks
from reconvla_core.sim.object_geometry import ObjectGeometry
from reconvla_core.sim.scene import Layout, build_scene, sample_layout
from reconvla_core.sim.tasks import Chain, Task, plan_chain

logger = logging.getLogger(__name__)

ACTION_LOWER = np.asarray(piper.ACTION_LOWER, dtype=np.float64)
ACTION_UPPER = np.asarray(piper.ACTION_UPPER, dtype=np.float64)
# Start pose: gripper open, pointing straight down, TCP at (0.20, 0, 0.115) (IK of that pose).
HOME_JOINTS = np.array([0.0, 1.3266, -0.7418, 0.0, 1.0733, 0.0])


@dataclass
class SimConfig:
    """Settings of the twin. Raises ``ValueError`` naming the field on a bad value."""

    image_width: int = 320
    image_height: int = 240
    control_hz: float = 10.0
    physics_hz: float = 240.0
    subtask_time_limit_s: float = 12.0  # per-subtask budget in sim time
    render_wrist: bool = True
    action_tolerance: float = 0.05  # rad / m beyond a limit that is still clamped, not refused
    clip_actions: bool = False  # clamp every finite action instead of refusing large overshoots
    solver_iterations: int = 50

    def __post_init__(self) -> None:
        for name in ("image_width", "image_height"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 16 <= value <= 1920:
                raise ValueError(f"SimConfig.{name} must be an int in 16..1920, got {value!r}")
        if not 1.0 <= self.control_hz <= 100.0:
            raise ValueError(f"SimConfig.control_hz must be in 1..100 Hz, got {self.control_hz}")
        if self.physics_hz < self.control_hz or self.physics_hz > 2000:
            raise ValueError(f"SimConfig.physics_hz must be in control_hz..2000, got {self.physics_hz}")
        if self.subtask_time_limit_s <= 0:
            raise ValueError(f"SimConfig.subtask_time_limit_s must be > 0, got {self.subtask_time_limit_s}")
        if self.action_tolerance < 0:
            raise ValueError(f"SimConfig.action_tolerance must be >= 0, got {self.action_tolerance}")

    @property
    def control_dt(self) -> float:
        return 1.0 / self.control_hz

    @property
    def max_subtask_steps(self) -> int:
        return int(math.ceil(self.subtask_time_limit_s * self.control_hz))


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """PyBullet's C code prints to fd 1; keep stdout clean for ``--json``."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def validate_action(action: Any, tolerance: float = 0.05, clip: bool = False) -> np.ndarray:
    """Check an action7 and return it as float64, clamped to the limits.

    Raises ``ValueError`` for a wrong shape, NaN/inf, or (unless ``clip``) a value beyond its
    limit by more than ``tolerance``."""
    try:
        array = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"action must be {ACTION_DIM} numbers {ACTION_NAMES}: {error}") from None
    if array.shape != (ACTION_DIM,):
        raise ValueError(
            f"action must have shape ({ACTION_DIM},) = 6 joint angles (rad) + gripper opening (m), "
            f"got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        bad = [ACTION_NAMES[i] for i in np.flatnonzero(~np.isfinite(array))]
        raise ValueError(f"action has non-finite values for {', '.join(bad)}")
    if not clip:
        for i, value in enumerate(array):
            if value < ACTION_LOWER[i] - tolerance or value > ACTION_UPPER[i] + tolerance:
                unit = "m" if i == 6 else "rad"
                raise ValueError(
                    f"action {ACTION_NAMES[i]}={value:.4f} {unit} is outside its limits "
                    f"[{ACTION_LOWER[i]:.3f}, {ACTION_UPPER[i]:.3f}] {unit}"
                )
    return np.clip(array, ACTION_LOWER, ACTION_UPPER)


class PiperCellEnv(ObjectGeometry):
    """The simulated cell: PiPer + gripper, table, blocks, bowls, two cameras, chained tasks.

    Object poses, contacts and the gaze box come from ``ObjectGeometry`` (sim/object_geometry.py).
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self._client: Any = None
        self._tmpdir: str | None = None
        self.arm: Any = None
        self.bodies: dict[str, int] = {}
        self.layout: Layout | None = None
        self.chain: Chain | None = None
        self.subtask_index = 0
        self.subtask_steps = 0
        self.total_steps = 0
        self.sim_time = 0.0
        self.done = True
        self.completed = 0
        self.episode = 0  # counts reset() calls: an expert holding a plan notices a new scene by it
        self._last_command = np.concatenate([HOME_JOINTS, [GRIPPER_MAX]])
        self._wrist_view: np.ndarray | None = None
        aspect = self.config.image_width / self.config.image_height
        self.base_view, self.base_proj = cam.base_view_matrices(self.config.image_width, self.config.image_height)
        self.wrist_proj = cam.perspective(cam.WRIST_CAMERA, aspect)

    # ------------------------------------------------------------------ setup
    def _connect(self) -> Any:
        if self._client is None:
            import pybullet as p
            from pybullet_utils.bullet_client import BulletClient

            from reconvla_core.sim.robot import piper_urdf

            with _stdout_to_stderr():
                self._client = BulletClient(connection_mode=p.DIRECT)
            self._tmpdir = tempfile.mkdtemp(prefix="reconvla_sim_")
            with open(os.path.join(self._tmpdir, "piper.urdf"), "w", encoding="utf-8") as handle:
                handle.write(piper_urdf())
        return self._client

    def reset(
        self, seed: int | None = None, chain: Chain | None = None, task: Task | str | None = None
    ) -> dict[str, Any]:
        """Build the scene of ``seed`` (or ``chain.seed``) and start the chain or single task.

        - ``chain``: run its subtasks in order (CALVIN style); ``seed`` must be None or equal.
        - ``task``: one subtask (a ``Task`` or text like ``"place red blue"`` or an instruction)
          in the scene of ``seed`` (default 0); raises ``ValueError`` when its colours are not
          in that scene.
        - neither: a chain of 5 planned from ``seed`` (default 0).
        """
        if chain is not None and task is not None:
            raise ValueError("give either chain= or task=, not both")
        if chain is not None:
            if seed is not None and int(seed) != chain.seed:
                raise ValueError(f"seed={seed} differs from chain.seed={chain.seed}; pass only the chain")
            seed = chain.seed
        seed = 0 if seed is None else int(seed)
        layout = sample_layout(seed)
        if chain is None:
            if task is not None:
                parsed = Task.parse(task) if isinstance(task, str) else task
                chain = Chain(seed=seed, tasks=(parsed,))
            else:
                chain = plan_chain(seed, layout.block_colours(), layout.bowl_colours(), np.random.default_rng([seed, 7]))
        self._check_chain(chain, layout)
        self.layout, self.chain = layout, chain
        self._build(layout)
        self.subtask_index = 0
        self.subtask_steps = 0
        self.total_steps = 0
        self.completed = 0
        self.done = False
        self.episode += 1
        return self.observe()

    @staticmethod
    def _check_chain(chain: Chain, layout: Layout) -> None:
        if not chain.tasks:
            raise ValueError("chain has no tasks")
        blocks, bowls = layout.block_colours(), layout.bowl_colours()
        for task in chain.tasks:
            if task.obj not in blocks:
                raise ValueError(
                    f"no {task.obj} block in scene {layout.seed} (task {task.name!r}); blocks here: {', '.join(blocks)}"
                )
            if task.family == "place" and task.dest not in bowls:
                raise ValueError(
                    f"no {task.dest} bowl in scene {layout.seed} (task {task.name!r}); bowls here: {', '.join(bowls)}"
                )
            if task.family == "stack" and task.dest not in blocks:
                raise ValueError(
                    f"no {task.dest} block in scene {layout.seed} (task {task.name!r}); blocks here: {', '.join(blocks)}"
                )

    def _build(self, layout: Layout) -> None:

        from reconvla_core.sim.robot import SimArm

        c = self._connect()
        c.resetSimulation()
        c.setGravity(0, 0, -9.81)
        c.setPhysicsEngineParameter(
            fixedTimeStep=1.0 / self.config.physics_hz,
            numSolverIterations=self.config.solver_iterations,
            numSubSteps=0,
            deterministicOverlappingPairs=1,
        )
        assert self._tmpdir is not None
        self.arm = SimArm(c, os.path.join(self._tmpdir, "piper.urdf"))
        self.arm.reset(HOME_JOINTS, GRIPPER_MAX)
        self._last_command = np.concatenate([HOME_JOINTS, [GRIPPER_MAX]])
        self.bodies = build_scene(c, layout)
        self.sim_time = 0.0
        for _ in range(int(0.1 * self.config.physics_hz)):  # let contacts settle
            self._physics_step()
        self.sim_time = 0.0

    # ------------------------------------------------------------------ driving
    def apply_command(self, action: Any) -> np.ndarray:
        """Validate (see the module doc) and set the arm's position target; returns the clamped command."""
        self._require_scene()
        command = validate_action(action, self.config.action_tolerance, self.config.clip_actions)
        self.arm.command(command[:6], float(command[6]))
        self._last_command = command
        return command

    def advance(self, dt: float | None = None) -> None:
        """Step the physics for ``dt`` seconds (default one control period)."""
        self._require_scene()
        dt = self.config.control_dt if dt is None else float(dt)
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        for _ in range(max(1, int(round(dt * self.config.physics_hz)))):
            self._physics_step()

    def _physics_step(self) -> None:
        dt = 1.0 / self.config.physics_hz
        self.arm.pre_step(dt)
        self._client.stepSimulation()
        self.sim_time += dt

    def step(self, action: Any, render: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
        """One control period: command, physics, success check, observation.

        ``info``: ``subtask_success`` (the subtask this step worked on succeeded), ``subtask_index``
        (that subtask's index), ``done`` (chain finished or the subtask ran out of time),
        ``completed`` (subtasks done in a row), ``gaze_box`` (current subtask's target, normalised
        xyxy in the base image), ``target`` (that object's name), ``timeout``.
        ``render=False`` skips the cameras (images are then None) for fast evaluation."""
        if self.done:
            raise RuntimeError("the episode is done; call reset() first")
        self.apply_command(action)
        self.advance()
        info = self.check_progress()
        return self.observe(render=render), info

    def check_progress(self) -> dict[str, Any]:
        """Count one control step for the current subtask, check its success and move on."""
        self._require_scene()
        assert self.chain is not None
        index = self.subtask_index
        succeeded = False
        timeout = False
        if not self.done:
            self.subtask_steps += 1
            self.total_steps += 1
            succeeded = self.subtask_success()
            if succeeded:
                self.completed += 1
                self.subtask_index += 1
                self.subtask_steps = 0
                if self.subtask_index >= len(self.chain.tasks):
                    self.done = True
            elif self.subtask_steps >= self.config.max_subtask_steps:
                timeout = True
                self.done = True
        return {
            "subtask_success": succeeded,
            "subtask_index": index,
            "done": self.done,
            "timeout": timeout,
            "completed": self.completed,
            "gaze_box": self.gaze_box(),
            "target": self.target_object,
            "instruction": self.instruction,
        }

    # ------------------------------------------------------------------ reading
    def observe(self, render: bool = True) -> dict[str, Any]:
        """``{"base_image", "wrist_image", "state" (7,), "instruction"}``; images None if not ``render``."""
        self._require_scene()
        base = wrist = None
        if render:
            base = self.render_base()
            if self.config.render_wrist:
                wrist = self.render_wrist()
            else:
                wrist = np.zeros_like(base)
        return {
            "base_image": base,
            "wrist_image": wrist,
            "state": self.arm.state().vector(),
            "instruction": self.instruction,
        }

    def render_base(self) -> np.ndarray:
        return cam.render(self._client, self.config.image_width, self.config.image_height, self.base_view, self.base_proj)

    def wrist_view(self) -> np.ndarray:
        """View matrix of the wrist camera at the current gripper pose."""
        pos, rot = self.arm.link_pose(self.arm.camera_link)
        flange_pos, flange_rot = self.arm.link_pose(self.arm.link_ids["gripper_base"])
        target = flange_pos + flange_rot @ cam.WRIST_LOOK_AT_FLANGE
        up = -flange_rot[:, 0]  # the fingers appear at the bottom of the image
        return cam.look_at(pos, target, up)

    def render_wrist(self) -> np.ndarray:
        return cam.render(
            self._client, self.config.image_width, self.config.image_height, self.wrist_view(), self.wrist_proj
        )

    @property
    def current_task(self) -> Task:
        self._require_scene()
        assert self.chain is not None
        return self.chain.tasks[min(self.subtask_index, len(self.chain.tasks) - 1)]

    @property
    def instruction(self) -> str:
        return self.current_task.instruction

    def state(self) -> np.ndarray:
        """Follower joint state (7,): 6 joints (rad) + gripper opening (m)."""
        self._require_scene()
        return self.arm.state().vector()

    @property
    def last_command(self) -> np.ndarray:
        return self._last_command.copy()

    def subtask_success(self) -> bool:
        """Success of the current subtask from object poses (see ``success.py``)."""
        task = self.current_task
        block = f"{task.obj}_block"
        pos, _ = self.object_pose(block)
        if task.family == "pick":
            return checks.lifted(pos)
        touching = any(self.touching_gripper(block))
        speed = self.object_speed(block)
        if task.family == "place":
            bowl_pos, _ = self.object_pose(f"{task.dest}_bowl")
            return checks.in_bowl(pos, bowl_pos, touching, speed)
        base_pos, _ = self.object_pose(f"{task.dest}_block")
        return checks.on_block(pos, base_pos, touching, speed)

    def move_object(self, name: str, position: Any) -> None:
        """Put an object at ``position`` (x, y, z), at rest, keeping its orientation (perturbation tests)."""
        self._require_scene()
        if name not in self.bodies:
            raise KeyError(f"no object {name!r} in the scene; objects: {', '.join(sorted(self.bodies))}")
        _, orn = self._client.getBasePositionAndOrientation(self.bodies[name])
        self._client.resetBasePositionAndOrientation(self.bodies[name], [float(v) for v in position], orn)
        self._client.resetBaseVelocity(self.bodies[name], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])

    # ------------------------------------------------------------------ what-if
    @contextlib.contextmanager
    def branch(self) -> Iterator[None]:
        """Everything simulated inside the block is undone on leaving it: the physics (PyBullet's
        in-memory ``saveState`` / ``restoreState``: poses, velocities, contacts), the arm's set-points
        and the subtask counters. DAgger lets the expert show what it would do from a state the policy
        reached, and the policy then goes on as if nothing happened."""
        self._require_scene()
        arm = self.arm
        counters = (self.subtask_index, self.subtask_steps, self.total_steps, self.sim_time, self.done,
                    self.completed, self._last_command.copy())
        arm_targets = (arm.setpoint.copy(), arm.target.copy(), arm.gripper_setpoint, arm.gripper_target)
        state_id = self._client.saveState()
        try:
            yield
        finally:
            self._client.restoreState(stateId=state_id)
            self._client.removeState(state_id)
            (self.subtask_index, self.subtask_steps, self.total_steps, self.sim_time, self.done,
             self.completed, self._last_command) = counters
            arm.setpoint, arm.target, arm.gripper_setpoint, arm.gripper_target = arm_targets

    # ------------------------------------------------------------------ teardown
    def _require_scene(self) -> None:
        if self.arm is None:
            raise RuntimeError("call reset() before using the environment")

    def close(self) -> None:
        """Disconnect PyBullet and remove the temporary URDF."""
        if self._client is not None:
            try:
                self._client.disconnect()
            except Exception:  # already disconnected
                logger.debug("pybullet disconnect failed", exc_info=True)
            self._client = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        self.arm = None

    def __enter__(self) -> PiperCellEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
