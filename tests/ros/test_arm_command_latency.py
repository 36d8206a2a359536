"""A policy slower than its chunk horizon still moves the arm, over real DDS.

policy (with a model that takes 3x the chunk horizon) -> arm_command (piper_ros backend) ->
a stand-in piper_ros driver that follows every command perfectly. The arm must move, following
the trimmed chunks without a jump, and arm_command's ~/status must count what it executed and
dropped.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from reconvla_core.policy import ActionChunk, Policy

pytestmark = pytest.mark.ros

START = [0.0, 1.0, -1.0, 0.0, 0.3, 0.0, 0.03]
CHUNK_STEPS, ACTION_RATE = 4, 10.0  # horizon 0.4 s
LATENCY = 3 * CHUNK_STEPS / ACTION_RATE  # 1.2 s
SPEED = 0.3  # rad/s on joint1
CONTROL_RATE = 30.0
MAX_JOINT_SPEED = 1.0


class SlowPolicy(Policy):
    """Takes LATENCY seconds; the chunk starts at the observed state and moves joint1 at SPEED."""

    def __init__(self) -> None:
        self.calls = 0

    def infer(self, obs):
        time.sleep(LATENCY)
        self.calls += 1
        actions = np.repeat(np.asarray(obs["state"], dtype=np.float64)[None, :], CHUNK_STEPS, axis=0)
        actions[:, 0] += SPEED * np.arange(CHUNK_STEPS) / ACTION_RATE
        return ActionChunk(actions)


class PerfectDriver:
    """Plays piper_ros: publishes joint_states_single, jumps to every joint_ctrl_single command."""

    def __init__(self, ros) -> None:
        from sensor_msgs.msg import JointState

        from reconvla_ros.common import COMMAND_QOS

        self.node = ros.make_node("stand_in_piper_ros")
        self.positions = list(START)
        self.commands: list[np.ndarray] = []
        self.lock = threading.Lock()
        self._pub = self.node.create_publisher(JointState, "joint_states_single", 10)
        self.node.create_subscription(JointState, "joint_ctrl_single", self._on_command, COMMAND_QOS)
        self.node.create_timer(0.01, self._publish)

    def _publish(self) -> None:
        from sensor_msgs.msg import JointState

        with self.lock:
            msg = JointState(position=list(self.positions))
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self._pub.publish(msg)

    def _on_command(self, msg) -> None:
        with self.lock:
            self.commands.append(np.array(msg.position[:7]))
            self.positions = list(msg.position[:7])


def test_a_policy_three_times_slower_than_the_horizon_moves_the_arm_without_jumps(ros):
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from reconvla_ros.arm_command import ArmCommand
    from reconvla_ros.common import SENSOR_QOS, STATE_QOS
    from reconvla_ros.policy import PolicyNode

    driver = PerfectDriver(ros)
    arm = ros.add_node(ArmCommand(context=ros.context, parameter_overrides=[
        Parameter(k, value=v) for k, v in {
            "backend": "piper_ros", "auto_enable": True, "control_rate": CONTROL_RATE,
            "max_joint_speed": MAX_JOINT_SPEED, "observation_timeout": 1.0, "diagnostics_period": 0.5,
        }.items()]))
    policy = SlowPolicy()
    ros.add_node(PolicyNode(policy=policy, context=ros.context, parameter_overrides=[
        Parameter(k, value=v) for k, v in {
            "instruction": "move joint1", "action_rate": ACTION_RATE, "viz_rate": 0.0, "max_obs_age": 0.5,
        }.items()]))
    client = ros.make_node("camera_and_operator")
    frames = client.create_publisher(Image, "reconvla/frame", SENSOR_QOS)
    statuses: list[dict] = []
    client.create_subscription(String, "/arm_command/status", lambda m: statuses.append(json.loads(m.data)),
                               STATE_QOS)

    def publish_frame() -> None:
        msg = Image(height=8, width=8, encoding="rgb8", step=24, data=bytes(8 * 8 * 3))
        msg.header.stamp = client.get_clock().now().to_msg()
        frames.publish(msg)

    client.create_timer(0.1, publish_frame)  # a 10 Hz camera

    def moved() -> float:
        with driver.lock:
            return driver.positions[0] - START[0]

    # Each executed chunk moves joint1 by SPEED * 3 steps / ACTION_RATE = 0.09 rad.
    assert ros.wait_for(lambda: moved() >= 0.25, timeout=60.0, period=0.1), (
        f"moved {moved():.3f} rad; arm counts {arm.counts}; policy calls {policy.calls}")

    with driver.lock:
        commands = np.stack(driver.commands)
    assert arm.safety.mode.value == "enabled"
    # Never a jump: consecutive commands within the configured speed (the safety filter's bound),
    # and nothing had to be clipped onto a limit.
    steps = np.abs(np.diff(commands, axis=0)).max(axis=1)
    assert steps.max() <= MAX_JOINT_SPEED / CONTROL_RATE + 1e-9
    assert arm.safety.counters.clipped == 0
    # The arm followed the chunks: only joint1 moved, and only forwards (the chunks never go back).
    np.testing.assert_allclose(commands[:, 1:], np.broadcast_to(START[1:], commands[:, 1:].shape), atol=1e-9)
    assert np.all(np.diff(commands[:, 0]) >= -1e-9)
    assert arm.counts["chunks"] >= 3
    assert arm.counts["dropped_too_old"] == 0 and arm.counts["dropped_out_of_limits"] == 0
    # ~/status reports the chunks executed and dropped, and the last chunk's latency and horizon.
    assert ros.wait_for(lambda: bool(statuses) and statuses[-1]["chunks"] >= 3, timeout=5.0)
    status = statuses[-1]
    assert status["last_chunk_age_s"] >= LATENCY
    assert status["last_chunk_horizon_s"] == pytest.approx(CHUNK_STEPS / ACTION_RATE)
    assert {"dropped_chunks", "dropped_executed", "dropped_too_old", "starving"} <= set(status)


def test_chunks_older_than_max_chunk_age_never_move_the_arm_and_say_why(ros):
    from rclpy.parameter import Parameter
    from trajectory_msgs.msg import JointTrajectory

    from reconvla_ros.arm_command import ArmCommand
    from reconvla_ros.common import COMMAND_QOS
    from reconvla_ros.policy import chunk_message

    driver = PerfectDriver(ros)
    arm = ros.add_node(ArmCommand(context=ros.context, parameter_overrides=[
        Parameter(k, value=v) for k, v in {
            "backend": "piper_ros", "auto_enable": True, "max_chunk_age": 0.5, "chunk_timeout": 0.3,
        }.items()]))
    client = ros.make_node("late_policy")
    chunks = client.create_publisher(JointTrajectory, "reconvla/action_chunk", COMMAND_QOS)
    assert ros.wait_for(lambda: arm.safety.mode.value == "enabled" and chunks.get_subscription_count() > 0)
    actions = np.repeat(np.array(START)[None, :], 4, axis=0)
    actions[:, 0] += np.arange(4) * 0.03
    from rclpy.duration import Duration

    for _ in range(3):
        stamp = (client.get_clock().now() - Duration(seconds=1.0)).to_msg()  # observed 1 s ago
        chunks.publish(chunk_message(actions, stamp, ACTION_RATE))
        time.sleep(0.2)
    assert ros.wait_for(lambda: arm.counts["dropped_too_old"] == 3)
    assert arm.counts["chunks"] == 0
    assert ros.wait_for(lambda: arm.diagnostics_values().get("last_chunk") == "too_old")
    assert ros.wait_for(lambda: arm.controller.starving, timeout=5.0)  # the ERROR for the spell was logged
    with driver.lock:
        assert driver.positions[0] == pytest.approx(START[0])
