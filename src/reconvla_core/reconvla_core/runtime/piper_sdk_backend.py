"""The ``piper_sdk`` arm backend: direct CAN through ``piper_sdk.C_PiperInterface_V2``.

Units (piper_sdk 0.6, see reconvla_core/piper.py): joints in 0.001 deg, gripper opening in 0.001 mm, both integers.
Commands per control tick, as the SDK's own joint-control demo does:
``MotionCtrl_2(0x01, 0x01, speed%, 0x00)`` (CAN command mode, MOVE J), ``JointCtrl(j1..j6)``,
``GripperCtrl(width, effort, 0x01, 0)``. Feedback: ``GetArmJointMsgs().joint_state.joint_N`` and
``GetArmGripperMsgs().gripper_state.grippers_angle``. Teleop: the leader arm's commands on the
same bus, ``GetArmJointCtrl().joint_ctrl.joint_N`` / ``GetArmGripperCtrl().gripper_ctrl.grippers_angle``.

Emergency stop is ``EmergencyStop(0x01)``. ``ResetPiper()`` (and ``EmergencyStop(0x02)``, the same
CAN frame) cuts motor power and drops a raised arm, so this backend never sends either; likewise
``disable()`` only stops commanding unless ``cut_power=True`` asks for ``DisablePiper()``.

piper_sdk is not a dependency of reconvla_core: it is imported in ``connect()`` only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from reconvla_core.piper import ACTION_DIM, SDK_GRIPPER_UNIT_M, SDK_JOINT_UNIT_RAD
from reconvla_core.runtime.feedback import ArmFeedback

logger = logging.getLogger(__name__)

CTRL_MODE_CAN = 0x01
MOVE_MODE_J = 0x01
POSITION_VELOCITY_MODE = 0x00
GRIPPER_ENABLE = 0x01
GRIPPER_NO_SET_ZERO = 0
EMERGENCY_STOP = 0x01


def rad_to_sdk_joint(rad: float) -> int:
    """Radians -> SDK joint units (0.001 deg), rounded to the nearest integer."""
    return int(round(math.degrees(float(rad)) * 1000.0))


def sdk_joint_to_rad(value: int) -> float:
    """SDK joint units (0.001 deg) -> radians."""
    return float(value) * SDK_JOINT_UNIT_RAD


def m_to_sdk_gripper(metres: float) -> int:
    """Gripper opening in metres -> SDK units (0.001 mm), rounded; never negative."""
    return max(0, int(round(float(metres) / SDK_GRIPPER_UNIT_M)))


def sdk_gripper_to_m(value: int) -> float:
    """SDK gripper units (0.001 mm) -> metres."""
    return float(value) * SDK_GRIPPER_UNIT_M


def _default_factory(can_port: str) -> Any:
    try:
        from piper_sdk import C_PiperInterface_V2
    except ImportError as error:  # pragma: no cover - depends on the robot PC
        raise ImportError(
            "backend 'piper_sdk' needs the AgileX SDK: `pip install piper_sdk python-can` on the robot PC "
            "(or use backend 'piper_ros' with the piper_ros driver)"
        ) from error
    return C_PiperInterface_V2(can_port)


class PiperSdkBackend:
    """ArmBackend over piper_sdk (see the module docstring)."""

    def __init__(
        self,
        can_port: str = "can0",
        gripper_effort: int = 1000,
        interface_factory: Callable[[str], Any] | None = None,
        enable_poll_s: float = 0.01,
        cut_power_on_disable: bool = False,
        speed_percent: int = 50,
    ) -> None:
        if not (0 <= int(gripper_effort) <= 5000):
            raise ValueError(f"gripper_effort must be in 0..5000 (0.001 N·m), got {gripper_effort}")
        self.can_port = can_port
        self.gripper_effort = int(gripper_effort)
        self.cut_power_on_disable = cut_power_on_disable
        self.speed_percent = int(np.clip(int(speed_percent), 0, 100))
        self._factory = interface_factory or _default_factory
        self._enable_poll_s = enable_poll_s
        self._piper: Any | None = None

    @property
    def piper(self) -> Any:
        if self._piper is None:
            raise RuntimeError("PiperSdkBackend: call connect() first")
        return self._piper

    def connect(self) -> None:
        if self._piper is None:
            self._piper = self._factory(self.can_port)
            self._piper.ConnectPort()
            logger.info("piper_sdk: connected on %s", self.can_port)

    def enable(self, timeout_s: float = 5.0) -> bool:
        """Enable all motors (EnablePiper until it reports enabled), then CAN joint mode."""
        piper = self.piper
        deadline = time.monotonic() + timeout_s
        while not piper.EnablePiper():
            if time.monotonic() >= deadline:
                logger.error("piper_sdk: motors did not report enabled within %.1f s", timeout_s)
                return False
            time.sleep(self._enable_poll_s)
        piper.MotionCtrl_2(CTRL_MODE_CAN, MOVE_MODE_J, self.speed_percent, POSITION_VELOCITY_MODE)
        return True

    def disable(self) -> None:
        """Stop commanding; cut motor power only when configured (a raised arm then falls)."""
        if self.cut_power_on_disable and self._piper is not None:
            self._piper.DisablePiper()

    def send(self, positions: np.ndarray | Sequence[float], speed_percent: int) -> None:
        """One control tick: mode + speed, six joints, gripper (exact SDK integers)."""
        values = np.asarray(positions, dtype=np.float64).reshape(-1)
        if values.shape != (ACTION_DIM,) or not np.all(np.isfinite(values)):
            raise ValueError(f"PiperSdkBackend.send needs {ACTION_DIM} finite values, got {values!r}")
        speed = int(np.clip(int(speed_percent), 0, 100))
        piper = self.piper
        piper.MotionCtrl_2(CTRL_MODE_CAN, MOVE_MODE_J, speed, POSITION_VELOCITY_MODE)
        piper.JointCtrl(*(rad_to_sdk_joint(v) for v in values[:6]))
        piper.GripperCtrl(m_to_sdk_gripper(values[6]), self.gripper_effort, GRIPPER_ENABLE, GRIPPER_NO_SET_ZERO)

    def read_state(self) -> ArmFeedback | None:
        """The follower's measured joints + gripper; None until the first joint feedback frame."""
        joints_msg = self.piper.GetArmJointMsgs()
        if not joints_msg.time_stamp:
            return None
        joints = joints_msg.joint_state
        gripper = self.piper.GetArmGripperMsgs().gripper_state
        positions = [sdk_joint_to_rad(getattr(joints, f"joint_{i}")) for i in range(1, 7)]
        positions.append(sdk_gripper_to_m(gripper.grippers_angle))
        return ArmFeedback(np.array(positions, dtype=np.float64), float(joints_msg.time_stamp))

    def read_leader_command(self) -> ArmFeedback | None:
        """The leader arm's joint + gripper command seen on the bus (teleop); None until one arrived."""
        joints_msg = self.piper.GetArmJointCtrl()
        if not joints_msg.time_stamp:
            return None
        joints = joints_msg.joint_ctrl
        gripper = self.piper.GetArmGripperCtrl().gripper_ctrl
        positions = [sdk_joint_to_rad(getattr(joints, f"joint_{i}")) for i in range(1, 7)]
        positions.append(sdk_gripper_to_m(gripper.grippers_angle))
        return ArmFeedback(np.array(positions, dtype=np.float64), float(joints_msg.time_stamp))

    def advance(self, dt: float) -> None:
        """Nothing to do: the arm runs on its own (ArmBackend's per-period hook)."""

    def emergency_stop(self) -> None:
        """EmergencyStop(0x01): the quick stop. Never ResetPiper (power cut on a raised arm)."""
        self.piper.EmergencyStop(EMERGENCY_STOP)
        logger.warning("piper_sdk: EmergencyStop(0x01) sent")

    def close(self) -> None:
        if self._piper is not None:
            self._piper.DisconnectPort()
            self._piper = None
