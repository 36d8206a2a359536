"""arm_command's operator interventions over real DDS: takeover / handback services, the leader topic,
auto-takeover and the intervention flag."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from test_arm_command import HOME, FakeDriver, call, chunk_msg, make_arm

pytestmark = pytest.mark.ros


class Operator:
    """The leader arm on master/joint_states (as a leader reader publishes it), plus a tap on the
    intervention flag and arm_command's status."""

    def __init__(self, ros, pose=HOME) -> None:
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool, String

        from reconvla_ros.common import SENSOR_QOS, STATE_QOS

        self.node = ros.make_node("operator")
        self.pose = list(pose)
        self.flags: list[bool] = []
        self.status: dict = {}
        self._lock = threading.Lock()
        self._pub = self.node.create_publisher(JointState, "master/joint_states", 10)
        self.node.create_subscription(Bool, "reconvla/intervention", self._on_flag, SENSOR_QOS)
        self.node.create_subscription(String, "arm_command/status", self._on_status, STATE_QOS)
        self.node.create_timer(0.02, self._publish)

    def _publish(self) -> None:
        from sensor_msgs.msg import JointState

        msg = JointState(name=[f"joint{i}" for i in range(7)], position=[float(v) for v in self.pose])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self._pub.publish(msg)

    def _on_flag(self, msg) -> None:
        with self._lock:
            self.flags.append(bool(msg.data))

    def _on_status(self, msg) -> None:
        with self._lock:
            self.status = json.loads(msg.data)

    def take_flags(self) -> list[bool]:
        with self._lock:
            out, self.flags = self.flags, []
        return out


def test_takeover_and_handback_through_the_services(ros):
    from std_srvs.srv import SetBool, Trigger
    from trajectory_msgs.msg import JointTrajectory

    from reconvla_ros.common import COMMAND_QOS

    driver = FakeDriver(ros)
    away = list(np.array(HOME) + np.array([0.5, -0.3, 0.2, 0.0, 0.0, 0.0, 0.02]))
    operator = Operator(ros, away)
    arm = make_arm(ros, interventions=True, chunk_timeout=0.5, diagnostics_period=0.2)
    chunks = operator.node.create_publisher(JointTrajectory, "reconvla/action_chunk", COMMAND_QOS)
    assert ros.wait_for(lambda: arm.safety.measured is not None)
    assert call(ros, operator.node, SetBool, "/arm_command/enable", SetBool.Request(data=True)).success
    assert ros.wait_for(lambda: len(operator.flags) > 3)
    assert not any(operator.take_flags())  # the policy has the arm

    answer = call(ros, operator.node, Trigger, "/arm_command/takeover", Trigger.Request())
    assert answer.success, answer.message
    assert not call(ros, operator.node, Trigger, "/arm_command/takeover", Trigger.Request()).success
    assert ros.wait_for(lambda: arm.controller.source == "handover")
    driver.take()
    ticks = arm.counts["ticks"]
    assert ros.wait_for(lambda: arm.counts["ticks"] > ticks + 5)
    held = {tuple(np.round(m.position, 9)) for m in driver.take()}
    assert held == {tuple(np.round(HOME, 9))}  # holding: the leader is away, the arm does not chase it
    assert not any(operator.take_flags())  # the leader does not drive yet

    operator.pose = list(np.array(HOME) + np.array([0.02, 0.0, 0.0, 0.0, 0.0, 0.0, 0.005]))
    assert ros.wait_for(lambda: arm.controller.source == "leader")
    goal = np.array(HOME) + np.array([-0.4, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0])
    operator.pose = list(goal)  # no chunk arrives: the operator drives all the same
    assert ros.wait_for(lambda: np.allclose(driver.positions, goal, atol=1e-3), timeout=15.0)
    flags = operator.take_flags()
    assert flags and flags[-1] is True
    assert ros.wait_for(lambda: operator.status.get("source") == "leader" and operator.status.get("interventions") == 1)
    step = 1.0 / 30.0 + 1e-9  # max_joint_speed 1 rad/s at 30 Hz
    positions = np.stack([np.asarray(m.position) for m in driver.take()])
    assert np.all(np.abs(np.diff(positions[:, :6], axis=0)) <= step)

    # Hand back: the arm holds until the policy's chunk starts where the arm is, then the policy drives.
    assert call(ros, operator.node, Trigger, "/arm_command/handback", Trigger.Request()).success
    assert ros.wait_for(lambda: arm.controller.source == "handback")

    def policy_back() -> bool:
        here = np.array(driver.positions)
        chunks.publish(chunk_msg(operator.node, [here] * 5))
        return arm.controller.source == "policy"

    assert ros.wait_for(policy_back, timeout=10.0, period=0.1)
    operator.take_flags()
    assert ros.wait_for(lambda: len(operator.flags) > 3)
    assert not any(operator.take_flags())


def test_auto_takeover_when_the_leader_moves(ros):
    driver = FakeDriver(ros)
    operator = Operator(ros, list(np.array(HOME) + np.array([0.6, 0, 0, 0, 0, 0, 0])))
    arm = make_arm(ros, interventions=True, auto_takeover_rad=0.2, auto_enable=True)
    assert ros.wait_for(lambda: arm.safety.mode.value == "enabled" and len(operator.flags) > 3)
    assert arm.controller.source == "policy"
    operator.pose = list(HOME)  # grabbed and brought onto the follower: moved 0.6 rad from its rest
    assert ros.wait_for(lambda: arm.controller.source == "leader")
    assert ros.wait_for(lambda: operator.flags and operator.flags[-1] is True)
    assert driver.enable_flags == [True]


def test_without_interventions_the_services_refuse_and_no_flag_is_published(ros):
    from std_srvs.srv import Trigger

    FakeDriver(ros)
    operator = Operator(ros)
    arm = make_arm(ros)
    answer = call(ros, operator.node, Trigger, "/arm_command/takeover", Trigger.Request())
    assert not answer.success and "interventions:=true" in answer.message
    assert not call(ros, operator.node, Trigger, "/arm_command/handback", Trigger.Request()).success
    assert arm.count_publishers("/reconvla/intervention") == 0
    assert ros.wait_for(lambda: arm.counts["ticks"] > 10)
    assert operator.flags == []


def test_bad_intervention_settings_are_refused_by_name(ros):
    from rclpy.parameter import Parameter

    from reconvla_ros.arm_command import ArmCommand

    for overrides, match in [({"backend": "piper_sdk", "teleop": True}, "exclude teleop"),
                             ({"auto_takeover_rad": 0.03}, "auto_takeover_rad"),
                             ({"auto_takeover_rad": -1.0}, "auto_takeover_rad"),
                             ({"agree_tol_rad": 0.0}, "agree_tol_rad")]:
        params = [Parameter("interventions", value=True)] + [Parameter(k, value=v) for k, v in overrides.items()]
        with pytest.raises(ValueError, match=match):
            ArmCommand(context=ros.context, parameter_overrides=params)


def test_with_piper_sdk_the_leader_comes_from_the_topic_not_from_the_follower_bus(ros):
    """The follower's bus carries arm_command's own JointCtrl frames; the leader is on its own bus
    and arrives on master/joint_states."""
    from std_srvs.srv import SetBool, Trigger

    from reconvla_core.runtime.piper_sdk_backend import PiperSdkBackend
    from test_arm_command import fake_sdk_at_rest

    fake = fake_sdk_at_rest(bus_joint1_mdeg=40000)  # on the follower's bus: not the leader
    follower = np.array([0.0, 1.0, -1.0, 0.0, 0.3, 0.0, 0.03])
    backend = PiperSdkBackend("can0", interface_factory=lambda can: fake, enable_poll_s=0.0)
    from rclpy.parameter import Parameter

    from reconvla_ros.arm_command import ArmCommand

    overrides = {"backend": "piper_sdk", "interventions": True, "observation_timeout": 5.0}
    arm = ros.add_node(ArmCommand(backend=backend, context=ros.context,
                                  parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()]))
    operator = Operator(ros, list(follower + np.array([0.01, 0, 0, 0, 0, 0, 0])))
    assert call(ros, operator.node, SetBool, "/arm_command/enable", SetBool.Request(data=True)).success
    assert call(ros, operator.node, Trigger, "/arm_command/takeover", Trigger.Request()).success
    assert ros.wait_for(lambda: arm.controller.source == "leader")
    operator.pose = list(follower + np.array([0.2, 0, 0, 0, 0, 0, 0]))

    def joint1_sent() -> float:
        calls = [args for name, args in list(fake.calls) if name == "JointCtrl"]
        return calls[-1]["joint_1"] if calls else 0

    assert ros.wait_for(lambda: abs(joint1_sent() - 11459) <= 2, timeout=15.0)  # 0.2 rad in 0.001 deg
