"""Where the twin's objects are and where the gaze belongs: the object and gaze-box queries of the env.

``ObjectGeometry`` is a mixin of :class:`reconvla_core.sim.env.PiperCellEnv`, which steps the
physics; these methods only read it: object poses, speeds and finger contacts, the bounding-box
corners of blocks and bowls, which object the current subtask's gaze belongs to, and that object's
box projected into the base camera image (the recorded "where" supervision).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from reconvla_core.sim import camera as cam
from reconvla_core.sim.scene import BLOCK_SIZE, BOWL_HEIGHT, BOWL_INNER_RADIUS, BOWL_WALL, Layout

if TYPE_CHECKING:
    from reconvla_core.sim.tasks import Task


class ObjectGeometry:
    """Object and gaze geometry of the scene the host env has built.

    The host (PiperCellEnv) provides the PyBullet client, the scene's bodies by name, the arm, the
    layout, the base camera's matrices, the current subtask and ``_require_scene()``.
    """

    _client: Any
    bodies: dict[str, int]
    arm: Any
    layout: Layout | None
    base_view: np.ndarray
    base_proj: np.ndarray

    if TYPE_CHECKING:  # provided by the host env; declared here for the type checker only
        @property
        def current_task(self) -> Task: ...

        def _require_scene(self) -> None: ...

    @property
    def target_object(self) -> str:
        """Name of the current subtask's target object: the block it manipulates."""
        return f"{self.current_task.obj}_block"

    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World position (3,) and rotation matrix (3, 3) of a scene object by name."""
        self._require_scene()
        if name not in self.bodies:
            raise KeyError(f"no object {name!r} in the scene; objects: {', '.join(sorted(self.bodies))}")
        pos, orn = self._client.getBasePositionAndOrientation(self.bodies[name])
        rot = np.asarray(self._client.getMatrixFromQuaternion(orn)).reshape(3, 3)
        return np.asarray(pos), rot

    def object_speed(self, name: str) -> float:
        linear, _ = self._client.getBaseVelocity(self.bodies[name])
        return float(np.linalg.norm(linear))

    def touching_gripper(self, name: str) -> tuple[bool, bool]:
        """Whether the object touches the (left, right) finger."""
        body = self.bodies[name]
        return tuple(  # type: ignore[return-value]
            bool(self._client.getContactPoints(bodyA=self.arm.body, bodyB=body, linkIndexA=link))
            for link in self.arm.finger_links
        )

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        return self.arm.link_pose(self.arm.tcp_link)

    def object_corners(self, name: str) -> np.ndarray:
        """World corners (8, 3) of the object's bounding box (oriented for blocks)."""
        pos, rot = self.object_pose(name)
        kind = self.layout.by_name(name).kind if self.layout and name != "table" else "block"
        if kind == "block":
            half = np.full(3, BLOCK_SIZE / 2)
            centre = pos
        elif kind == "bowl":
            r = BOWL_INNER_RADIUS + BOWL_WALL
            half = np.array([r, r, BOWL_HEIGHT / 2])
            centre = pos + np.array([0.0, 0.0, BOWL_HEIGHT / 2])
        else:
            half = np.array([0.025, 0.025, 0.035])
            centre = pos
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        return centre + (signs * half) @ rot.T

    @property
    def destination_object(self) -> str | None:
        """Where the subtask's block goes (place: a bowl, stack: another block); None for a pick."""
        task = self.current_task
        if task.family == "pick":
            return None
        return f"{task.dest}_bowl" if task.family == "place" else f"{task.dest}_block"

    @property
    def gaze_object(self) -> str:
        """Where the subtask's attention belongs: the block until both fingers hold it, then (place,
        stack) its destination, where the carry goes. The recorded gaze box follows it, so the
        "where" supervision covers both halves of a subtask."""
        block, destination = self.target_object, self.destination_object
        if destination is not None and all(self.touching_gripper(block)):
            return destination
        return block

    def gaze_box(self, name: str | None = None) -> np.ndarray:
        """Normalised xyxy box of the gaze object (or ``name``) in the base image: the object's
        bounding box corners projected through the camera (ground truth, also when occluded by the
        gripper), clipped to the image."""
        corners = self.object_corners(name or self.gaze_object)
        return cam.box_from_points(cam.project(corners, self.base_view, self.base_proj))

    def gaze_centre(self, name: str | None = None) -> np.ndarray:
        """(x, y) centre of ``gaze_box`` (normalised base image): where a gaze keypoint belongs."""
        box = self.gaze_box(name)
        return 0.5 * (box[:2] + box[2:4])
