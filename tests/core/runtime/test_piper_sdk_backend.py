"""piper_sdk backend against a fake C_PiperInterface_V2 at the narrowest seam.

The fake copies the SDK's (piper_sdk 0.6.2) method signatures and the attribute layout of the
messages it returns; every call is recorded with its arguments bound to the real parameter
names, and the tests assert the exact calls and integer values.
"""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace
from typing import Literal

import numpy as np
import pytest

from reconvla_core.runtime.piper_sdk_backend import (
    PiperSdkBackend,
    m_to_sdk_gripper,
    rad_to_sdk_joint,
    sdk_gripper_to_m,
    sdk_joint_to_rad,
)

pytestmark = pytest.mark.unit


class FakePiperInterfaceV2:
    """piper_sdk.C_PiperInterface_V2 as far as the backend touches it (signatures from 0.6.2)."""

    def __init__(self, can_name: str = "can0", judge_flag=True, can_auto_init=True, dh_is_offset: int = 0x01,
                 start_sdk_joint_limit: bool = False, start_sdk_gripper_limit: bool = False,
                 logger_level=None, log_to_file: bool = False, log_file_path=None) -> None:
        self.can_name = can_name
        self.calls: list[tuple[str, dict]] = []
        self.enable_answers = [True]
        # Feedback as the SDK stores it: wrapper objects with time_stamp, Hz and the message.
        self.joint_msgs = SimpleNamespace(time_stamp=0.0, Hz=0.0, joint_state=SimpleNamespace(
            joint_1=0, joint_2=0, joint_3=0, joint_4=0, joint_5=0, joint_6=0))
        self.gripper_msgs = SimpleNamespace(time_stamp=0.0, Hz=0.0, gripper_state=SimpleNamespace(
            grippers_angle=0, grippers_effort=0, status_code=0, foc_status=SimpleNamespace()))
        self.joint_ctrl_msgs = SimpleNamespace(time_stamp=0.0, Hz=0.0, joint_ctrl=SimpleNamespace(
            joint_1=0, joint_2=0, joint_3=0, joint_4=0, joint_5=0, joint_6=0))
        self.gripper_ctrl_msgs = SimpleNamespace(time_stamp=0.0, Hz=0.0, gripper_ctrl=SimpleNamespace(
            grippers_angle=0, grippers_effort=0, status_code=0, set_zero=0))

    def _record(self, name: str, *args, **kwargs) -> None:
        bound = inspect.signature(getattr(type(self), name)).bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self")
        self.calls.append((name, arguments))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def ConnectPort(self, can_init: bool = False, piper_init: bool = True, start_thread: bool = True):
        self._record("ConnectPort", can_init, piper_init, start_thread)

    def DisconnectPort(self, thread_timeout=0.1):
        self._record("DisconnectPort", thread_timeout)

    def EnablePiper(self) -> bool:
        self._record("EnablePiper")
        return self.enable_answers.pop(0) if len(self.enable_answers) > 1 else self.enable_answers[0]

    def DisablePiper(self) -> bool:
        self._record("DisablePiper")
        return True

    def MotionCtrl_2(self, ctrl_mode: Literal[0x00, 0x01, 0x03, 0x04, 0x07] = 0x01,
                     move_mode: Literal[0x00, 0x01, 0x02, 0x03, 0x04, 0x05] = 0x01,
                     move_spd_rate_ctrl: int = 50, is_mit_mode: Literal[0x00, 0xAD, 0xFF] = 0x00,
                     residence_time: int = 0, installation_pos: Literal[0x00, 0x01, 0x02, 0x03] = 0x00):
        self._record("MotionCtrl_2", ctrl_mode, move_mode, move_spd_rate_ctrl, is_mit_mode, residence_time,
                     installation_pos)

    def JointCtrl(self, joint_1: int, joint_2: int, joint_3: int, joint_4: int, joint_5: int, joint_6: int):
        for value in (joint_1, joint_2, joint_3, joint_4, joint_5, joint_6):
            assert type(value) is int, "the SDK packs integers into CAN frames"
        self._record("JointCtrl", joint_1, joint_2, joint_3, joint_4, joint_5, joint_6)

    def GripperCtrl(self, gripper_angle: int = 0, gripper_effort: int = 0,
                    gripper_code: Literal[0x00, 0x01, 0x02, 0x03] = 0, set_zero: Literal[0x00, 0xAE] = 0):
        assert type(gripper_angle) is int and type(gripper_effort) is int
        self._record("GripperCtrl", gripper_angle, gripper_effort, gripper_code, set_zero)

    def EmergencyStop(self, emergency_stop: Literal[0x00, 0x01, 0x02] = 0):
        assert emergency_stop != 0x02, "EmergencyStop(0x02) is ResetPiper: the arm would fall"
        self._record("EmergencyStop", emergency_stop)

    def ResetPiper(self):
        raise AssertionError("ResetPiper cuts motor power on a raised arm; the backend must never call it")

    def GetArmJointMsgs(self):
        return self.joint_msgs

    def GetArmGripperMsgs(self):
        return self.gripper_msgs

    def GetArmJointCtrl(self):
        return self.joint_ctrl_msgs

    def GetArmGripperCtrl(self):
        return self.gripper_ctrl_msgs


@pytest.fixture
def fake() -> FakePiperInterfaceV2:
    return FakePiperInterfaceV2()


@pytest.fixture
def backend(fake) -> PiperSdkBackend:
    created = []

    def factory(can_port: str):
        assert can_port == "can_test"
        created.append(can_port)
        return fake

    b = PiperSdkBackend("can_test", gripper_effort=1500, interface_factory=factory, enable_poll_s=0.0,
                        speed_percent=40)
    b.connect()
    assert created == ["can_test"]
    return b


def test_unit_conversions_are_exact():
    assert rad_to_sdk_joint(math.radians(90.0)) == 90000
    assert rad_to_sdk_joint(-1.0) == -57296  # -57295.78 rounds away
    assert rad_to_sdk_joint(math.radians(0.0004)) == 0
    assert m_to_sdk_gripper(0.07) == 70000
    assert m_to_sdk_gripper(0.0123456) == 12346
    assert m_to_sdk_gripper(-0.001) == 0
    assert sdk_joint_to_rad(180000) == pytest.approx(math.pi)
    assert sdk_gripper_to_m(35000) == pytest.approx(0.035)


def test_connect_then_enable_polls_until_enabled_and_enters_can_joint_mode(fake, backend):
    fake.enable_answers = [False, False, True]
    assert backend.enable(timeout_s=1.0)
    assert fake.names() == ["ConnectPort", "EnablePiper", "EnablePiper", "EnablePiper", "MotionCtrl_2"]
    assert fake.calls[-1][1] == {"ctrl_mode": 0x01, "move_mode": 0x01, "move_spd_rate_ctrl": 40,
                                 "is_mit_mode": 0x00, "residence_time": 0, "installation_pos": 0x00}


def test_enable_times_out(fake, backend):
    fake.enable_answers = [False]
    assert not backend.enable(timeout_s=0.05)
    assert "MotionCtrl_2" not in fake.names()


def test_send_issues_mode_joints_and_gripper_with_exact_integers(fake, backend):
    command = np.array([0.1, 1.2, -0.5, math.radians(-45.0), 0.0, 2.0, 0.0351])
    backend.send(command, speed_percent=35)
    assert fake.calls[1:] == [
        ("MotionCtrl_2", {"ctrl_mode": 0x01, "move_mode": 0x01, "move_spd_rate_ctrl": 35, "is_mit_mode": 0x00,
                          "residence_time": 0, "installation_pos": 0x00}),
        ("JointCtrl", {"joint_1": 5730, "joint_2": 68755, "joint_3": -28648, "joint_4": -45000, "joint_5": 0,
                       "joint_6": 114592}),
        ("GripperCtrl", {"gripper_angle": 35100, "gripper_effort": 1500, "gripper_code": 0x01, "set_zero": 0}),
    ]


def test_send_rejects_malformed_commands(fake, backend):
    with pytest.raises(ValueError):
        backend.send(np.array([math.nan] * 7), 50)
    with pytest.raises(ValueError):
        backend.send(np.zeros(6), 50)
    assert fake.names() == ["ConnectPort"]


def test_feedback_is_converted_and_none_before_the_first_frame(fake, backend):
    assert backend.read_state() is None
    fake.joint_msgs.time_stamp = 12.5
    js = fake.joint_msgs.joint_state
    js.joint_1, js.joint_2, js.joint_3, js.joint_4, js.joint_5, js.joint_6 = 90000, 45000, -30000, 0, 1000, -120000
    fake.gripper_msgs.gripper_state.grippers_angle = 50000
    state = backend.read_state()
    np.testing.assert_allclose(state.positions, [math.pi / 2, math.pi / 4, -math.pi / 6, 0.0,
                                                 math.radians(1.0), math.radians(-120.0), 0.05])
    assert state.source_stamp == 12.5


def test_leader_commands_for_teleop(fake, backend):
    assert backend.read_leader_command() is None
    fake.joint_ctrl_msgs.time_stamp = 3.0
    fake.joint_ctrl_msgs.joint_ctrl.joint_2 = 10000
    fake.gripper_ctrl_msgs.gripper_ctrl.grippers_angle = 20000
    command = backend.read_leader_command()
    np.testing.assert_allclose(command.positions, [0, math.radians(10.0), 0, 0, 0, 0, 0.02])


def test_emergency_stop_is_the_quick_stop_never_a_reset(fake, backend):
    backend.emergency_stop()
    assert fake.calls[-1] == ("EmergencyStop", {"emergency_stop": 0x01})


def test_disable_keeps_power_unless_asked(fake, backend):
    backend.disable()
    assert fake.names() == ["ConnectPort"]
    backend.cut_power_on_disable = True
    backend.disable()
    assert fake.names() == ["ConnectPort", "DisablePiper"]


def test_close_disconnects(fake, backend):
    backend.close()
    assert fake.names()[-1] == "DisconnectPort"
    with pytest.raises(RuntimeError, match="connect"):
        backend.read_state()


def test_fake_matches_the_real_sdk_signatures_when_installed():
    sdk = pytest.importorskip("piper_sdk")
    real = sdk.C_PiperInterface_V2
    for name in ("ConnectPort", "DisconnectPort", "EnablePiper", "DisablePiper", "MotionCtrl_2", "JointCtrl",
                 "GripperCtrl", "EmergencyStop", "GetArmJointMsgs", "GetArmGripperMsgs", "GetArmJointCtrl",
                 "GetArmGripperCtrl"):
        real_params = list(inspect.signature(getattr(real, name)).parameters)
        fake_params = list(inspect.signature(getattr(FakePiperInterfaceV2, name)).parameters)
        assert real_params == fake_params, name
