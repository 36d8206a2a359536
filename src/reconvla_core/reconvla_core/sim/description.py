"""The PiPer's URDF for ROS (robot_state_publisher, RViz): the twin's arm plus the camera frames.

The arm is ``robot.piper_urdf()`` unchanged (the URDF PyBullet loads, built from the DH tables),
so RViz draws exactly the twin's geometry. Added for ROS:

- a ``gripper`` joint (prismatic, 0..GRIPPER_MAX m, on a massless ``gripper_opening`` link) that
  the two finger joints mimic at half the opening, so the canonical joint_states
  (joint1..joint6 rad + ``gripper`` m) drive the fingers in robot_state_publisher;
- camera mounts named as the drivers name their root frames: ``camera_link`` (RealSense) on
  ``base_link`` and ``wrist_camera_link`` (Dabai) on ``link6``, each a REP 103 body frame
  (x along the optical axis, y left, z up), posed by ``CameraMount`` (the extrinsics);
- optionally (``optical_frames=True``, the twin) the optical frames the images are stamped with,
  ``camera_color_optical_frame`` and ``wrist_camera_color_optical_frame`` (z forward, x right,
  y down). On the real cell the camera drivers publish those below their root frames themselves.

Default mounts are the twin's cameras (``sim.camera``: the base camera's eye and target, the
wrist camera at ``robot.WRIST_CAMERA_OFFSET`` looking at ``WRIST_LOOK_AT_FLANGE``).

Regenerate the installed file with ``python -m reconvla_core.sim.description <path>``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from reconvla_core.piper import GRIPPER_MAX, GRIPPER_NAME
from reconvla_core.sim import camera as cam
from reconvla_core.sim.robot import GRIPPER_FORCE, GRIPPER_SPEED, WRIST_CAMERA_OFFSET, piper_urdf

BASE_CAMERA_FRAME = "camera_link"
BASE_CAMERA_OPTICAL_FRAME = "camera_color_optical_frame"
WRIST_CAMERA_FRAME = "wrist_camera_link"
WRIST_CAMERA_OPTICAL_FRAME = "wrist_camera_color_optical_frame"
BASE_CAMERA_PARENT = "base_link"
WRIST_CAMERA_PARENT = "link6"  # the flange; the twin's gripper_base sits on it with no offset
# Body frame (x forward, y left, z up) -> optical frame (z forward, x right, y down).
BODY_TO_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class CameraMount:
    """A camera body frame in its parent link: position (m) and URDF roll/pitch/yaw (rad)."""

    xyz: tuple[float, float, float]
    rpy: tuple[float, float, float]

    @classmethod
    def parse(cls, text: str) -> "CameraMount":
        """``"x y z roll pitch yaw"`` (metres, radians; spaces or commas), as the launch arguments."""
        values = [float(v) for v in text.replace(",", " ").split()]
        if len(values) != 6 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"camera pose {text!r}: expected six finite numbers 'x y z roll pitch yaw'")
        return cls(tuple(values[:3]), tuple(values[3:]))  # type: ignore[arg-type]

    def as_text(self) -> str:
        return " ".join(f"{v:.6f}" for v in (*self.xyz, *self.rpy))

    def matrix(self) -> np.ndarray:
        out = np.eye(4)
        out[:3, :3] = rpy_matrix(self.rpy)
        out[:3, 3] = self.xyz
        return out


def rpy_matrix(rpy: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """URDF fixed-axis rotation ``Rz(yaw) Ry(pitch) Rx(roll)``."""
    r, p, y = (float(v) for v in rpy)
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    return np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )


def _rpy(rot: np.ndarray) -> tuple[float, float, float]:
    from reconvla_core.sim.robot import _rpy_from_matrix

    return _rpy_from_matrix(rot)


def look_at_mount(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> CameraMount:
    """The body frame of a camera at ``eye`` looking at ``target`` with image-up ``up`` (the
    convention of ``sim.camera.look_at``)."""
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    forward /= np.linalg.norm(forward)
    left = np.cross(np.asarray(up, dtype=np.float64), forward)
    left /= np.linalg.norm(left)
    rot = np.stack([forward, left, np.cross(forward, left)], axis=1)
    return CameraMount(tuple(float(v) for v in eye), _rpy(rot))  # type: ignore[arg-type]


def twin_base_camera() -> CameraMount:
    """The twin's base camera in ``base_link`` (the arm's base is the world origin)."""
    eye, target = np.array(cam.BASE_CAMERA_EYE), np.array(cam.BASE_CAMERA_TARGET)
    return look_at_mount(eye, target, np.array([0.0, 0.0, 1.0]))


def twin_wrist_camera() -> CameraMount:
    """The twin's wrist camera in ``link6``: image up is -x of the flange (fingers at the bottom)."""
    return look_at_mount(np.array(WRIST_CAMERA_OFFSET), cam.WRIST_LOOK_AT_FLANGE, np.array([-1.0, 0.0, 0.0]))


def _fixed_joint(name: str, parent: str, child: str, xyz: tuple[float, ...], rpy: tuple[float, ...]) -> str:
    x, y, z = xyz
    r, p, w = rpy
    return (
        f'<joint name="{name}" type="fixed"><parent link="{parent}"/><child link="{child}"/>'
        f'<origin xyz="{x:.6f} {y:.6f} {z:.6f}" rpy="{r:.6f} {p:.6f} {w:.6f}"/></joint>'
    )


def _camera_frames(
    frame: str, optical: str, parent: str, mount: CameraMount, optical_frames: bool
) -> list[str]:
    parts = [
        f'<link name="{frame}"><visual><origin xyz="-0.01 0 0" rpy="0 0 0"/>'
        '<geometry><box size="0.02 0.09 0.025"/></geometry>'
        '<material name="camera_grey"><color rgba="0.25 0.25 0.28 1"/></material></visual></link>',
        _fixed_joint(f"{frame}_mount", parent, frame, mount.xyz, mount.rpy),
    ]
    if optical_frames:
        parts.append(f'<link name="{optical}"/>')
        parts.append(_fixed_joint(f"{optical}_joint", frame, optical, (0.0, 0.0, 0.0), _rpy(BODY_TO_OPTICAL)))
    return parts


def piper_description_urdf(
    base_camera: CameraMount | None = None,
    wrist_camera: CameraMount | None = None,
    optical_frames: bool = True,
) -> str:
    """The ROS description of the PiPer: ``piper_urdf()`` + the gripper joint + camera frames."""
    base_camera = base_camera or twin_base_camera()
    wrist_camera = wrist_camera or twin_wrist_camera()
    urdf = piper_urdf()
    # Fingers follow the canonical gripper joint (opening in metres, each finger moves half).
    for side in ("left", "right"):
        tag = f'<joint name="finger_{side}_joint" type="prismatic">'
        if tag not in urdf:
            raise RuntimeError(f"piper_urdf() has no finger_{side}_joint to attach the gripper mimic to")
        urdf = urdf.replace(tag, tag + f'<mimic joint="{GRIPPER_NAME}" multiplier="0.5" offset="0"/>', 1)
    extra = [
        '<link name="gripper_opening"/>',
        f'<joint name="{GRIPPER_NAME}" type="prismatic"><parent link="gripper_base"/>'
        '<child link="gripper_opening"/><origin xyz="0 0 0" rpy="0 0 0"/><axis xyz="0 1 0"/>'
        f'<limit lower="0" upper="{GRIPPER_MAX}" effort="{GRIPPER_FORCE}" '
        f'velocity="{2 * GRIPPER_SPEED}"/></joint>',
    ]
    extra += _camera_frames(BASE_CAMERA_FRAME, BASE_CAMERA_OPTICAL_FRAME, BASE_CAMERA_PARENT, base_camera,
                            optical_frames)
    extra += _camera_frames(WRIST_CAMERA_FRAME, WRIST_CAMERA_OPTICAL_FRAME, WRIST_CAMERA_PARENT, wrist_camera,
                            optical_frames)
    head, tail = urdf.rsplit("</robot>", 1)
    return head + "\n".join(extra) + "\n</robot>" + tail


def main(argv: list[str] | None = None) -> int:
    """Write the twin's description (default mounts, optical frames) to the path given, or stdout."""
    args = sys.argv[1:] if argv is None else argv
    text = piper_description_urdf()
    if args:
        with open(args[0], "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
