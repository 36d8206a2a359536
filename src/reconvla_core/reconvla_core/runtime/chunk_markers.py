"""What RViz draws of an action chunk, as plain data (arm_command turns it into a MarkerArray).

An operator with the e-stop in hand sees the next half-second of motion before it happens:

- ``chunk_path`` (LINE_STRIP): the tool-centre point of each action the arm will execute, from the
  twin's forward kinematics (the same FK the URDF in RViz is checked against), coloured by time
  from blue (now) to yellow (the chunk's end);
- ``chunk_gripper`` (SPHERE_LIST): one sphere per action at the tool centre, green when the
  gripper target is open, red when closed (linear in the opening);
- ``rejected_path`` / ``rejected_steps``: a chunk the safety filter rejected, drawn grey with the
  actions beyond a soft limit as red spheres; they fade after ``REJECTED_LIFETIME_S`` so a
  rejection stays visible without hiding the path that is executing.

Positions are in the arm's base frame (``base_link``), metres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reconvla_core.piper import GRIPPER_MAX, GRIPPER_MIN, JOINT_NAMES
from reconvla_core.sim.kinematics import tcp_pose

NUM_JOINTS = len(JOINT_NAMES)
BASE_FRAME = "base_link"
PATH_NAMESPACE = "chunk_path"
GRIPPER_NAMESPACE = "chunk_gripper"
REJECTED_PATH_NAMESPACE = "rejected_path"
REJECTED_STEPS_NAMESPACE = "rejected_steps"
REJECTED_LIFETIME_S = 3.0
START_RGBA = (0.1, 0.45, 1.0, 1.0)  # the first action (now)
END_RGBA = (1.0, 0.85, 0.1, 1.0)  # the last action
OPEN_RGBA = (0.2, 0.8, 0.3, 0.9)
CLOSED_RGBA = (0.9, 0.15, 0.15, 0.9)
REJECTED_RGBA = (0.55, 0.55, 0.55, 0.7)
VIOLATION_RGBA = (1.0, 0.0, 0.0, 1.0)
LINE_WIDTH_M = 0.006
SPHERE_DIAMETER_M = 0.014


@dataclass(frozen=True)
class MarkerData:
    """One marker: ``kind`` is ``line_strip`` or ``sphere_list``; ``points`` (N, 3) m,
    ``colors`` (N, 4) RGBA 0..1, ``scale`` the line width or sphere diameter (m);
    ``lifetime_s`` 0 = until replaced."""

    namespace: str
    kind: str
    points: np.ndarray
    colors: np.ndarray
    scale: float
    lifetime_s: float = 0.0
    marker_id: int = 0


def tool_path(actions: np.ndarray) -> np.ndarray:
    """(K, 3) tool-centre positions of (K, 7) actions (joint targets rad + gripper m)."""
    array = np.atleast_2d(np.asarray(actions, dtype=np.float64))
    if array.ndim != 2 or array.shape[1] < NUM_JOINTS:
        raise ValueError(f"actions must be (K, >= {NUM_JOINTS}), got {array.shape}")
    return np.array([tcp_pose(row[:NUM_JOINTS])[:3, 3] for row in array]).reshape(-1, 3)


def _blend(start: tuple[float, ...], end: tuple[float, ...], fraction: np.ndarray) -> np.ndarray:
    f = np.clip(np.asarray(fraction, dtype=np.float64), 0.0, 1.0)[:, None]
    return (1.0 - f) * np.asarray(start) + f * np.asarray(end)


def time_colors(count: int) -> np.ndarray:
    """(count, 4) colours from START_RGBA (first) to END_RGBA (last)."""
    fraction = np.linspace(0.0, 1.0, count) if count > 1 else np.zeros(count)
    return _blend(START_RGBA, END_RGBA, fraction)


def gripper_colors(openings: np.ndarray) -> np.ndarray:
    """(K, 4) colours from CLOSED_RGBA (GRIPPER_MIN) to OPEN_RGBA (GRIPPER_MAX)."""
    fraction = (np.asarray(openings, dtype=np.float64) - GRIPPER_MIN) / (GRIPPER_MAX - GRIPPER_MIN)
    return _blend(CLOSED_RGBA, OPEN_RGBA, fraction)


def executed_chunk_markers(actions: np.ndarray) -> list[MarkerData]:
    """The path and gripper markers of the actions the arm is about to execute (K, 7)."""
    array = np.atleast_2d(np.asarray(actions, dtype=np.float64))
    points = tool_path(array)
    return [
        MarkerData(PATH_NAMESPACE, "line_strip", points, time_colors(len(points)), LINE_WIDTH_M),
        MarkerData(GRIPPER_NAMESPACE, "sphere_list", points, gripper_colors(array[:, NUM_JOINTS]),
                   SPHERE_DIAMETER_M),
    ]


def rejected_chunk_markers(actions: np.ndarray, rejected_steps: np.ndarray) -> list[MarkerData]:
    """A rejected chunk (K, 7): its path grey, the steps in ``rejected_steps`` (K,) bool red."""
    array = np.atleast_2d(np.asarray(actions, dtype=np.float64))
    mask = np.asarray(rejected_steps, dtype=bool)
    if mask.shape != (len(array),):
        raise ValueError(f"rejected_steps must be ({len(array)},), got {mask.shape}")
    points = tool_path(array)
    colors = np.tile(REJECTED_RGBA, (len(points), 1))
    colors[mask] = VIOLATION_RGBA
    bad = points[mask]
    return [
        MarkerData(REJECTED_PATH_NAMESPACE, "line_strip", points, colors, LINE_WIDTH_M, REJECTED_LIFETIME_S),
        MarkerData(REJECTED_STEPS_NAMESPACE, "sphere_list", bad, np.tile(VIOLATION_RGBA, (len(bad), 1)),
                   1.5 * SPHERE_DIAMETER_M, REJECTED_LIFETIME_S),
    ]
