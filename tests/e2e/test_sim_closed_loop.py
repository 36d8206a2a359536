"""The deployed graph closed around the twin: sim_robot -> camera_ingest -> policy -> arm_command.

A tiny random-weight checkpoint drives the simulated arm for a few seconds over real DDS with the
real drivers' topics. Asserted: commands reach the twin, the arm moves, and every command obeys
the safety limits (joint ranges, gripper range, max step per control period, speed cap).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from reconvla_core.interfaces import ARM_COMMAND_TOPIC, FOLLOWER_STATE_TOPIC, MODEL_FRAME_TOPIC
from reconvla_core.piper import GRIPPER_MAX, GRIPPER_MIN, JOINT_LOWER, JOINT_UPPER

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LOWER = np.asarray(JOINT_LOWER + (GRIPPER_MIN,))
UPPER = np.asarray(JOINT_UPPER + (GRIPPER_MAX,))
CONTROL_RATE = 20.0
MAX_JOINT_SPEED = 1.5  # rad/s, below the arm's 3 rad/s: the filter's own limit is what is checked


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    pytest.importorskip("reconvla_core.model.modeling_reconvla")
    from reconvla_core.model import ReconVLA, ReconVLAConfig

    model = ReconVLA(ReconVLAConfig.from_preset("tiny"))
    # Normalisation spanning the joint ranges: the random model's actions land anywhere inside them,
    # so the safety filter has real work to do.
    low, high = LOWER.copy(), UPPER.copy()
    entry = {
        "min": low.tolist(),
        "max": high.tolist(),
        "q01": low.tolist(),
        "q99": high.tolist(),
        "mean": ((low + high) / 2).tolist(),
        "std": ((high - low) / 4).tolist(),
    }
    model.set_norm_stats({"action": entry, "observation.state": entry})
    path = tmp_path_factory.mktemp("closed_loop") / "checkpoint"
    model.save_pretrained(path)
    return path


class Tap:
    """Keeps every command and follower state seen on the wire, with stamps."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.commands: list[tuple[float, np.ndarray, float]] = []
        self.states: list[np.ndarray] = []
        self.frames = 0

    def on_command(self, msg) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        speed = msg.velocity[6] if len(msg.velocity) == 7 else float("nan")
        with self.lock:
            self.commands.append((stamp, np.asarray(msg.position, dtype=np.float64), speed))

    def on_state(self, msg) -> None:
        with self.lock:
            self.states.append(np.asarray(msg.position, dtype=np.float64))

    def on_frame(self, msg) -> None:
        with self.lock:
            self.frames += 1


def test_policy_drives_the_twin_within_the_safety_limits(ros, tiny_checkpoint):
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState

    from reconvla_ros.arm_command import ArmCommand
    from reconvla_ros.camera_ingest import CameraIngest
    from reconvla_ros.policy import PolicyNode
    from reconvla_ros.sim_robot import SimRobot

    def params(**values):
        return [Parameter(k, value=v) for k, v in values.items()]

    tap = Tap()
    observer = ros.make_node("observer")
    observer.create_subscription(JointState, ARM_COMMAND_TOPIC, tap.on_command, QoSProfile(depth=50))
    observer.create_subscription(JointState, FOLLOWER_STATE_TOPIC, tap.on_state, qos_profile_sensor_data)
    observer.create_subscription(Image, MODEL_FRAME_TOPIC, tap.on_frame, qos_profile_sensor_data)

    sim = ros.add_node(
        SimRobot(
            context=ros.context,
            parameter_overrides=params(
                image_width=96,
                image_height=72,
                camera_rate=5.0,
                physics_rate=50.0,
                joint_state_rate=50.0,
                control_rate=10.0,
                seed=1,
                task="pick red",
            ),
        )
    )
    ros.add_node(
        CameraIngest(
            context=ros.context,
            parameter_overrides=params(checkpoint=str(tiny_checkpoint), max_frame_age=5.0),
        )
    )
    ros.add_node(
        PolicyNode(
            context=ros.context,
            parameter_overrides=params(
                checkpoint=str(tiny_checkpoint),
                device="cpu",
                viz_rate=0.0,
                max_obs_age=5.0,
                state_timeout=2.0,
            ),
        )
    )
    arm = ros.add_node(
        ArmCommand(
            context=ros.context,
            parameter_overrides=params(
                backend="piper_ros",
                auto_enable=True,
                control_rate=CONTROL_RATE,
                max_joint_speed=MAX_JOINT_SPEED,
                speed_percent=60,
                max_speed_percent=80,
                chunk_timeout=5.0,
                observation_timeout=1.0,
            ),
        )
    )

    start = sim.twin.state()

    def driven() -> bool:
        moved = np.abs(sim.twin.state()[:6] - start[:6]).max() > 0.05
        return moved and sim.twin.commands_received >= 30

    assert ros.wait_for(driven, timeout=150.0, period=0.5), (
        f"frames={tap.frames} commands={sim.twin.commands_received} ignored={sim.twin.commands_ignored} "
        f"moved={np.abs(sim.twin.state() - start).max():.4f}"
    )
    assert arm is not None

    with tap.lock:
        commands = list(tap.commands)
        states = list(tap.states)
    assert len(commands) >= 30 and states
    stamps = np.array([c[0] for c in commands])
    positions = np.stack([c[1] for c in commands])
    speeds = np.array([c[2] for c in commands])
    # Joint ranges and gripper range, finite values, speed cap.
    assert np.all(np.isfinite(positions))
    assert np.all(positions >= LOWER - 1e-9) and np.all(positions <= UPPER + 1e-9)
    assert np.all((speeds >= 0) & (speeds <= 80))
    # Max step per control period: between two commands at most max_joint_speed per elapsed period.
    steps = np.abs(np.diff(positions[:, :6], axis=0)).max(axis=1)
    elapsed = np.maximum(np.diff(stamps), 1.0 / CONTROL_RATE)
    assert np.all(steps <= MAX_JOINT_SPEED * elapsed * 1.05 + 1e-6), steps.max()
    # The follower stayed inside its limits too (small slack for the physics' tracking error).
    follower = np.stack(states)
    assert np.all(follower >= LOWER - 0.02) and np.all(follower <= UPPER + 0.02)
