"""AgileX PiPer constants shared by the twin, the safety filter and the backends.

Units follow REP 103 (rad, m, s). Sources: AgileX piper_sdk / piper_ros docs
(see docs/real_robot.md). Every other module takes these from here.
"""

from __future__ import annotations

import math

JOINT_NAMES: tuple[str, ...] = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")
GRIPPER_NAME = "gripper"
# Layout of every state / action vector in the product: 6 joints (rad) + gripper opening (m).
ACTION_NAMES: tuple[str, ...] = JOINT_NAMES + (GRIPPER_NAME,)
ACTION_DIM = len(ACTION_NAMES)

# Modified DH (Craig convention), metres and radians.
DH_A: tuple[float, ...] = (0.0, 0.0, 0.28503, -0.02198, 0.0, 0.0)
DH_ALPHA: tuple[float, ...] = (0.0, -math.pi / 2, 0.0, math.pi / 2, -math.pi / 2, math.pi / 2)
DH_D: tuple[float, ...] = (0.123, 0.0, 0.0, 0.25075, 0.0, 0.091)
DH_THETA_OFFSET: tuple[float, ...] = (0.0, math.radians(-172.22), math.radians(-102.78), 0.0, 0.0, 0.0)

JOINT_LOWER: tuple[float, ...] = (-2.618, 0.0, -2.967, -1.745, -1.22, -2.094)
JOINT_UPPER: tuple[float, ...] = (2.618, 3.14, 0.0, 1.745, 1.22, 2.094)
MAX_JOINT_SPEED = 3.0  # rad/s
# The deployment's soft joint limits (runtime/safety.py) lie this far inside the hard ones. The
# twin's experts plan inside them, so no demonstration teaches a target the safety layer refuses.
SOFT_LIMIT_MARGIN = 0.05  # rad
SOFT_JOINT_LOWER: tuple[float, ...] = tuple(v + SOFT_LIMIT_MARGIN for v in JOINT_LOWER)
SOFT_JOINT_UPPER: tuple[float, ...] = tuple(v - SOFT_LIMIT_MARGIN for v in JOINT_UPPER)
GRIPPER_MIN = 0.0  # m
GRIPPER_MAX = 0.07  # m (the driver clamps at 0.08)

# SDK integer units.
SDK_JOINT_UNIT_RAD = math.radians(0.001)  # one SDK joint unit (0.001 deg) in rad
SDK_GRIPPER_UNIT_M = 1e-6  # one SDK gripper unit (0.001 mm) in m

# Bounds of a full state / action vector (ACTION_NAMES order): joint limits + gripper range.
ACTION_LOWER: tuple[float, ...] = JOINT_LOWER + (GRIPPER_MIN,)
ACTION_UPPER: tuple[float, ...] = JOINT_UPPER + (GRIPPER_MAX,)
# The same inside the soft joint limits: the range a policy's targets are kept in.
SOFT_ACTION_LOWER: tuple[float, ...] = SOFT_JOINT_LOWER + (GRIPPER_MIN,)
SOFT_ACTION_UPPER: tuple[float, ...] = SOFT_JOINT_UPPER + (GRIPPER_MAX,)
