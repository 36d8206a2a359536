"""Pinhole cameras of the twin (CPU TinyRenderer) and the gaze-box projection.

Base camera: fixed, in front of the arm above the table, looking at the work area (the
RealSense of the real cell). Wrist camera: on the gripper palm, looking along the fingers
(the Dabai). Images are HxWx3 uint8 RGB.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraSpec:
    """Intrinsics shared by both cameras' projection: vertical field of view and clip planes."""

    fov_deg: float
    near: float = 0.01
    far: float = 3.0


BASE_CAMERA_EYE = (0.60, 0.0, 0.42)
BASE_CAMERA_TARGET = (0.20, 0.0, 0.0)
BASE_CAMERA = CameraSpec(fov_deg=55.0)
WRIST_CAMERA = CameraSpec(fov_deg=70.0, near=0.005)
# Wrist camera optical axis: from the camera towards this point in the flange frame (just
# past the finger tips), so the fingers and the grasped object are in view.
WRIST_LOOK_AT_FLANGE = np.array([0.0, 0.0, 0.22])


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """OpenGL view matrix (4x4, row-major numpy) for a camera at ``eye`` looking at ``target``."""
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    forward /= np.linalg.norm(forward)
    side = np.cross(forward, np.asarray(up, dtype=np.float64))
    side /= np.linalg.norm(side)
    true_up = np.cross(side, forward)
    view = np.eye(4)
    view[0, :3], view[1, :3], view[2, :3] = side, true_up, -forward
    view[:3, 3] = -view[:3, :3] @ eye
    return view


def perspective(spec: CameraSpec, aspect: float) -> np.ndarray:
    """OpenGL projection matrix (4x4, row-major numpy), the same as pybullet's computeProjectionMatrixFOV."""
    f = 1.0 / np.tan(np.radians(spec.fov_deg) / 2.0)
    n, fa = spec.near, spec.far
    return np.array(
        [
            [f / aspect, 0.0, 0.0, 0.0],
            [0.0, f, 0.0, 0.0],
            [0.0, 0.0, (fa + n) / (n - fa), 2.0 * fa * n / (n - fa)],
            [0.0, 0.0, -1.0, 0.0],
        ]
    )


def project(points: np.ndarray, view: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """World points (N, 3) -> normalised image coordinates (N, 2), x right, y down, in [0, 1] on screen.

    Points behind the camera get NaN."""
    homo = np.concatenate([np.asarray(points, dtype=np.float64), np.ones((len(points), 1))], axis=1)
    clip = homo @ (proj @ view).T  # (N, 4)
    w = clip[:, 3:4]
    ndc = np.where(w > 1e-9, clip[:, :2] / np.where(w > 1e-9, w, 1.0), np.nan)
    return np.stack([(ndc[:, 0] + 1.0) / 2.0, (1.0 - ndc[:, 1]) / 2.0], axis=1)


def box_from_points(uv: np.ndarray) -> np.ndarray:
    """Normalised xyxy box around projected points, clipped to the image."""
    uv = uv[np.all(np.isfinite(uv), axis=1)]
    if len(uv) == 0:
        return np.array([0.0, 0.0, 1.0, 1.0])
    lo = np.clip(uv.min(axis=0), 0.0, 1.0)
    hi = np.clip(uv.max(axis=0), 0.0, 1.0)
    return np.array([lo[0], lo[1], hi[0], hi[1]])


def render(client: object, width: int, height: int, view: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Render one RGB image (height, width, 3) uint8 with the CPU TinyRenderer."""
    import pybullet as p

    _, _, rgba, _, _ = client.getCameraImage(  # type: ignore[attr-defined]
        width,
        height,
        viewMatrix=view.T.reshape(-1).tolist(),  # pybullet wants column-major
        projectionMatrix=proj.T.reshape(-1).tolist(),
        renderer=p.ER_TINY_RENDERER,
        flags=p.ER_NO_SEGMENTATION_MASK,
        shadow=0,
        lightDirection=[0.4, 0.2, 1.0],
    )
    image = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)
    return np.ascontiguousarray(image[:, :, :3])


def base_view_matrices(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(view, projection) of the base camera for images of ``width`` x ``height``."""
    view = look_at(np.array(BASE_CAMERA_EYE), np.array(BASE_CAMERA_TARGET), np.array([0.0, 0.0, 1.0]))
    return view, perspective(BASE_CAMERA, width / height)


def gripper_points(states: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 3) where the twin's tool point appears in the base image for each follower state
    (N, >= 6 joint angles): normalised (x, y) from forward kinematics and the base camera, and 1 when
    it is inside the image (else 0, the point clipped to the border). The gripper input of
    ``reconvla study privileged --inputs box+gripper|centre+gripper``."""
    from reconvla_core.sim.kinematics import tcp_pose

    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] < 6 or not np.all(np.isfinite(states[:, :6])):
        raise ValueError(f"states must be finite (N, >= 6) joint angles, got shape {states.shape}")
    view, proj = base_view_matrices(width, height)
    tcp = np.stack([tcp_pose(q[:6])[:3, 3] for q in states]) if len(states) else np.zeros((0, 3))
    uv = project(tcp, view, proj)
    inside = np.all(np.isfinite(uv), axis=1) & np.all((uv >= 0.0) & (uv <= 1.0), axis=1)
    return np.concatenate([np.clip(np.nan_to_num(uv, nan=0.5), 0.0, 1.0), inside[:, None]], axis=1)
