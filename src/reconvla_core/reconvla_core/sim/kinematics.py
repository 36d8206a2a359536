"""PiPer kinematics from its modified DH parameters (numpy only, no PyBullet).

Frames follow Craig's modified DH convention: frame i is reached from frame i-1 by
``RotX(alpha_i) TransX(a_i) RotZ(theta_i + offset_i) TransZ(d_i)`` with the tables of
``reconvla_core.piper``. The tool centre point (TCP) of the twin's parallel gripper sits
``TOOL_LENGTH`` metres along the flange (joint-6) z axis, between the finger pads.

The same transforms generate the URDF (``robot.piper_urdf``), so the inverse kinematics
used by the scripted expert is exact for the simulated arm (a test checks it against
PyBullet's link states).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from reconvla_core.piper import (
    DH_A,
    DH_ALPHA,
    DH_D,
    DH_THETA_OFFSET,
    JOINT_LOWER,
    JOINT_UPPER,
)

logger = logging.getLogger(__name__)

# Distance from the flange (joint-6 frame) to the TCP between the finger pads, metres.
TOOL_LENGTH = 0.100
LOWER = np.asarray(JOINT_LOWER, dtype=np.float64)
UPPER = np.asarray(JOINT_UPPER, dtype=np.float64)


def dh_transform(alpha: float, a: float, theta: float, d: float) -> np.ndarray:
    """Modified-DH link transform ``RotX(alpha) TransX(a) RotZ(theta) TransZ(d)`` as a 4x4 matrix."""
    ca, sa, ct, st = math.cos(alpha), math.sin(alpha), math.cos(theta), math.sin(theta)
    return np.array(
        [
            [ct, -st, 0.0, a],
            [st * ca, ct * ca, -sa, -sa * d],
            [st * sa, ct * sa, ca, ca * d],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


def joint_origin(index: int) -> np.ndarray:
    """The fixed part of joint ``index``'s transform (its URDF origin): the DH transform at q = 0.

    ``RotZ(theta) TransZ(d) = TransZ(d) RotZ(theta)``, so the joint rotation is a pure
    rotation about the child frame's z axis after this fixed transform.
    """
    return dh_transform(DH_ALPHA[index], DH_A[index], DH_THETA_OFFSET[index], DH_D[index])


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    out = np.eye(4)
    out[:2, :2] = [[c, -s], [s, c]]
    return out


def forward_frames(q: np.ndarray, base: np.ndarray | None = None) -> list[np.ndarray]:
    """World poses (4x4) of frames 1..6 and the TCP (7 matrices) for joint angles ``q`` (6,)."""
    frame = np.eye(4) if base is None else np.asarray(base, dtype=np.float64)
    frames = []
    for i in range(6):
        frame = frame @ dh_transform(DH_ALPHA[i], DH_A[i], float(q[i]) + DH_THETA_OFFSET[i], DH_D[i])
        frames.append(frame)
    tcp = frame.copy()
    tcp[:3, 3] = frame[:3, 3] + TOOL_LENGTH * frame[:3, 2]
    frames.append(tcp)
    return frames


def tcp_pose(q: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
    """World pose (4x4) of the TCP."""
    return forward_frames(q, base)[-1]


def jacobian(q: np.ndarray, base: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Geometric Jacobian (6, 6) of the TCP (linear rows first) and the TCP pose."""
    frames = forward_frames(q, base)
    tcp = frames[-1]
    axes = np.stack([f[:3, 2] for f in frames[:6]], axis=1)  # (3, 6) joint axes
    arms = tcp[:3, 3:4] - np.stack([f[:3, 3] for f in frames[:6]], axis=1)  # (3, 6) joint -> TCP
    jac = np.empty((6, 6))
    # Linear part: axis x arm, written out (np.cross is slow for tiny arrays).
    jac[0] = axes[1] * arms[2] - axes[2] * arms[1]
    jac[1] = axes[2] * arms[0] - axes[0] * arms[2]
    jac[2] = axes[0] * arms[1] - axes[1] * arms[0]
    jac[3:] = axes
    return jac, tcp


def rotation_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Axis-angle vector (3,) rotating ``current`` onto ``target`` (both 3x3, world frame)."""
    rel = target @ current.T
    cos = np.clip((np.trace(rel) - 1.0) / 2.0, -1.0, 1.0)
    angle = math.acos(cos)
    vec = np.array([rel[2, 1] - rel[1, 2], rel[0, 2] - rel[2, 0], rel[1, 0] - rel[0, 1]])
    if angle < 1e-9:
        return 0.5 * vec
    if math.pi - angle < 1e-6:  # 180 degrees: take the axis from the symmetric part
        sym = (rel + np.eye(3)) / 2.0
        axis = sym[:, int(np.argmax(np.diag(sym)))]
        return angle * axis / np.linalg.norm(axis)
    return angle * vec / (2.0 * math.sin(angle))


def top_down_rotation(yaw: float) -> np.ndarray:
    """Tool orientation pointing straight down (tool z = -world z), rotated by ``yaw`` about world z.

    At yaw 0 the finger axis (tool y) is world -y; the fingers close along it.
    """
    c, s = math.cos(yaw), math.sin(yaw)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    flip = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])  # RotX(pi)
    return rz @ flip


LOCKED_ORIENTATION_WEIGHT = 0.01  # orientation's weight once a joint is locked on its limit


def _dls_step(jac: np.ndarray, delta: np.ndarray, damping: float) -> np.ndarray:
    """Damped-least-squares joint step towards the 6-D task-space error ``delta``."""
    return jac.T @ np.linalg.solve(jac @ jac.T + (damping**2) * np.eye(6), delta)


def solve_ik(
    position: np.ndarray,
    rotation: np.ndarray,
    q_seed: np.ndarray,
    *,
    base: np.ndarray | None = None,
    iterations: int = 200,
    damping: float = 0.02,
    tolerance: float = 1e-4,
    lower: np.ndarray | Sequence[float] = LOWER,
    upper: np.ndarray | Sequence[float] = UPPER,
) -> tuple[np.ndarray, float]:
    """Damped-least-squares IK for the TCP, joint limits (``lower``/``upper``: the PiPer's unless
    narrowed) enforced at every iteration.

    Returns ``(q, error)`` where ``error`` = position error (m) + 0.1 x orientation error (rad)
    at the returned ``q``; callers decide whether it is good enough. Deterministic.
    """
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    q = np.clip(np.asarray(q_seed, dtype=np.float64)[:6].copy(), lower, upper)
    target_p = np.asarray(position, dtype=np.float64)
    target_r = np.asarray(rotation, dtype=np.float64)
    err = math.inf
    locked = np.zeros(6, dtype=bool)
    for _ in range(iterations):
        jac, tcp = jacobian(q, base)
        dp = target_p - tcp[:3, 3]
        dr = rotation_error(tcp[:3, :3], target_r)
        err = float(np.linalg.norm(dp) + 0.1 * np.linalg.norm(dr))
        if err < tolerance:
            break
        delta = np.concatenate([dp, 0.5 * dr])  # weigh position over orientation
        step = _dls_step(jac, delta, damping)
        # A joint on its limit that a step pushes further out stays locked there for the rest of
        # the solve and the others take up the motion (clipping alone stalls the solve against
        # the limit). Five joints cannot hold a full pose: the position keeps its weight, the tool
        # gives way in tilt.
        locked |= ((q <= lower) & (step < 0)) | ((q >= upper) & (step > 0))
        if locked.any():
            step = _dls_step(jac * ~locked, np.concatenate([dp, LOCKED_ORIENTATION_WEIGHT * dr]), damping)
        norm = np.linalg.norm(step)
        if norm > 0.3:  # keep each iteration small: the linearisation holds
            step *= 0.3 / norm
        q = np.clip(q + step, lower, upper)
    else:
        tcp = tcp_pose(q, base)
        err = float(
            np.linalg.norm(target_p - tcp[:3, 3])
            + 0.1 * np.linalg.norm(rotation_error(tcp[:3, :3], target_r))
        )
    return q, err


def joint_limits_ok(q: np.ndarray, slack: float = 1e-6) -> bool:
    """True when the 6 joint angles lie within the PiPer limits."""
    q = np.asarray(q, dtype=np.float64)[:6]
    return bool(np.all(q >= LOWER - slack) and np.all(q <= UPPER + slack))
