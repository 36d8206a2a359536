"""HG-DAgger through the ROS graph in the twin: the policy drives, the operator takes over, the
recording marks the intervention, the dataset carries the flag.

sim_robot (operator:=true: the twin's follower obeys arm_command; a simulated operator holds the
leader arm and watches the scripted expert's path), arm_command (interventions:=true), teleop_recorder
and a stand-in policy (chunks from the current state that turn the base the wrong way, then, once
corrected, hold) run over real DDS. Asserted: the operator takes over when the TCP strays, the
switch to the leader and back has no jump (every command within the safety filter's step), the bag
holds one marked segment on /reconvla/intervention, and a dataset built from the bag has the
`intervention` flag on exactly the frames of that segment (and `--interventions only` keeps them).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from reconvla_core.interfaces import (
    ACTION_CHUNK_TOPIC,
    ARM_COMMAND_TOPIC,
    INTERVENTION_TOPIC,
    JOINT_STATES_TOPIC,
)

pytestmark = pytest.mark.e2e

ARM_RATE = 20.0
MAX_JOINT_SPEED = 1.0
FPS = 5.0  # the dataset's; the twin's cameras run at 10 Hz, so a loaded machine stays above it


class StandInPolicy:
    """Publishes a 5-step chunk from the arm's current state every 0.2 s: turning joint1 the wrong
    way until it has seen the operator intervene, then holding still (a chunk that agrees with the
    arm, so the handback completes)."""

    def __init__(self, ros) -> None:
        from builtin_interfaces.msg import Duration
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        from reconvla_core.piper import ACTION_NAMES
        from reconvla_ros.common import COMMAND_QOS, SENSOR_QOS

        self._types = (JointTrajectory, JointTrajectoryPoint, Duration, ACTION_NAMES)
        self.node = ros.make_node("stand_in_policy")
        self.lock = threading.Lock()
        self.state: np.ndarray | None = None
        self.corrected = False
        self.running = False
        self.node.create_subscription(JointState, JOINT_STATES_TOPIC, self._on_state, SENSOR_QOS)
        self.node.create_subscription(Bool, INTERVENTION_TOPIC, self._on_flag, SENSOR_QOS)
        self._pub = self.node.create_publisher(JointTrajectory, ACTION_CHUNK_TOPIC, COMMAND_QOS)
        self.node.create_timer(0.2, self._publish)

    def _on_state(self, msg) -> None:
        with self.lock:
            self.state = np.asarray(msg.position, dtype=np.float64)

    def _on_flag(self, msg) -> None:
        if msg.data:
            with self.lock:
                self.corrected = True

    def _publish(self) -> None:
        JointTrajectory, JointTrajectoryPoint, Duration, names = self._types
        with self.lock:
            if not self.running or self.state is None:
                return
            state, drift = self.state.copy(), 0.0 if self.corrected else 0.06
        msg = JointTrajectory()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.joint_names = list(names)
        for k in range(5):
            target = state + np.array([drift * k, 0, 0, 0, 0, 0, 0])
            msg.points.append(JointTrajectoryPoint(positions=target.tolist(),
                                                   time_from_start=Duration(sec=0, nanosec=int(k * 1e8))))
        self._pub.publish(msg)


class Observer:
    """The intervention flag and arm_command's commands as they cross the wire."""

    def __init__(self, ros) -> None:
        from rclpy.qos import QoSProfile
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool

        self.node = ros.make_node("observer")
        self.lock = threading.Lock()
        self.flags: list[bool] = []
        self.commands: list[tuple[float, np.ndarray]] = []
        self.node.create_subscription(Bool, INTERVENTION_TOPIC, self._on_flag, QoSProfile(depth=100))
        self.node.create_subscription(JointState, ARM_COMMAND_TOPIC, self._on_command, QoSProfile(depth=100))

    def _on_flag(self, msg) -> None:
        with self.lock:
            self.flags.append(bool(msg.data))

    def _on_command(self, msg) -> None:
        with self.lock:
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            self.commands.append((stamp, np.asarray(msg.position, dtype=np.float64)))

    def segments(self) -> int:
        """Completed intervention segments seen (a rise followed by a fall)."""
        with self.lock:
            flags = np.array(self.flags, dtype=np.int8)
        return int(np.sum(np.diff(flags) == -1)) if flags.size > 1 else 0


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    padded = np.concatenate([[0], np.asarray(flags, dtype=np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def test_the_operator_takes_over_in_the_twin_and_the_dataset_marks_the_intervention(ros, tmp_path):
    pytest.importorskip("pybullet")
    from rclpy.parameter import Parameter
    from std_srvs.srv import SetBool, Trigger

    from reconvla_core.data.bag_reader import AlignConfig, read_episode
    from reconvla_core.data.build import BuildConfig, build_dataset
    from reconvla_ros.arm_command import ArmCommand
    from reconvla_ros.sim_robot import SimRobot
    from reconvla_ros.teleop_recorder import TeleopRecorder

    def params(**values):
        return [Parameter(k, value=v) for k, v in values.items()]

    observer = Observer(ros)
    policy = StandInPolicy(ros)
    sim = ros.add_node(SimRobot(context=ros.context, parameter_overrides=params(
        seed=1, task="pick red", image_width=64, image_height=48, camera_rate=10.0, physics_rate=50.0,
        joint_state_rate=50.0, control_rate=10.0, operator=True, operator_deviation_m=0.04,
        operator_max_drive_s=1.5)))
    arm = ros.add_node(ArmCommand(context=ros.context, parameter_overrides=params(
        backend="piper_ros", auto_enable=True, control_rate=ARM_RATE, max_joint_speed=MAX_JOINT_SPEED,
        chunk_timeout=2.0, observation_timeout=1.0, interventions=True)))
    recorder = ros.add_node(TeleopRecorder(context=ros.context, parameter_overrides=params(
        output_dir=str(tmp_path / "bags"), operator="sim-operator", min_free_gb=0.0)))
    console = ros.make_node("console")

    # Everything discovered: the recorder subscribed to the flag, the cameras and both arms.
    assert ros.wait_for(lambda: arm.safety.mode.value == "enabled", timeout=60.0)
    assert ros.wait_for(lambda: {INTERVENTION_TOPIC, "/master/joint_states", "/joint_states_single",
                                 "/camera/camera/color/image_raw", "/reconvla/gaze_box"}
                        <= set(recorder._subscriptions_by_topic) and recorder._last_instruction, timeout=30.0)
    start = console.create_client(Trigger, "/teleop_recorder/start_episode")
    assert start.wait_for_service(timeout_sec=10.0)
    future = start.call_async(Trigger.Request())
    assert ros.wait_for(future.done, timeout=10.0) and future.result().success, future.result()
    bag = Path(future.result().message)

    policy.running = True  # the policy drives ... and errs
    assert ros.wait_for(lambda: sim.twin.operator.interventions >= 1, timeout=60.0, period=0.1), \
        f"no takeover: the TCP stayed within {sim.twin.operator.deviation:.3f} m of the expert's path"
    assert ros.wait_for(lambda: arm.controller.source == "leader", timeout=30.0, period=0.05)
    assert ros.wait_for(lambda: observer.segments() >= 1, timeout=60.0, period=0.1), "the operator never handed back"
    assert ros.wait_for(lambda: arm.controller.source == "policy", timeout=30.0, period=0.05)
    with observer.lock:
        after = len(observer.flags)
    assert ros.wait_for(lambda: len(observer.flags) >= after + 2 * ARM_RATE, timeout=30.0)  # 2 s of policy again

    stop = console.create_client(SetBool, "/teleop_recorder/stop_episode")
    future = stop.call_async(SetBool.Request(data=True))
    assert ros.wait_for(future.done, timeout=10.0) and future.result().success, future.result()
    policy.running = False
    assert sim.twin.operator.interventions == 1  # once corrected, the policy stayed on the path
    assert arm.diagnostics_values()["interventions"] == 1

    # No jump anywhere: between two commands arm_command sent, no joint moved faster than the safety
    # filter allows (one step per control period), through the takeover and the handback.
    with observer.lock:
        stamps = np.array([stamp for stamp, _ in observer.commands])
        commands = np.stack([positions for _, positions in observer.commands])
    steps = np.abs(np.diff(commands[:, :6], axis=0)).max(axis=1)
    periods = np.maximum(np.round(np.diff(stamps) * ARM_RATE), 1.0)  # commands this observer missed
    assert np.all(steps <= MAX_JOINT_SPEED / ARM_RATE * periods + 1e-6), steps.max()

    # The bag holds the marked segment on its own topic.
    from rosbags.rosbag2 import Reader

    from reconvla_core.data.bag_writer import get_typestore

    typestore = get_typestore()
    with Reader(bag) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        marks = [(stamp, typestore.deserialize_cdr(raw, c.msgtype).data)
                 for c, stamp, raw in reader.messages() if c.topic == INTERVENTION_TOPIC]
    assert topics[INTERVENTION_TOPIC] == "std_msgs/msg/Bool"
    flags = np.array([flag for _, flag in marks])
    (first, stop_), = runs(flags)  # exactly one intervention segment, with policy time before and after
    assert 0 < first and stop_ < flags.size
    marked_s = (marks[stop_][0] - marks[first][0]) / 1e9  # first true mark -> first false one after it

    # The dataset: the flag is set on the frames of that segment and on no others.
    # A loaded machine (CI) can stall the twin's realtime loop for a moment; gap splitting has its own
    # tests, here one recording is one episode.
    max_gap_s = 2.0
    episode = read_episode(bag, align=AlignConfig(fps=FPS, max_gap_s=max_gap_s))
    report = build_dataset(BuildConfig(bags=[bag], out=tmp_path / "ds", gaze="sim", fps=FPS, max_gap_s=max_gap_s))
    assert report.episodes == 1 and report.frames == episode.num_frames
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "ds/data/chunk-000/file-000.parquet")
    frame_flags = np.array(table.column("intervention").to_pylist())
    (lo, hi), = runs(frame_flags)
    assert 0 < lo and hi < frame_flags.size  # policy frames before and after stay unmarked
    grid = episode.stamps_ns
    in_segment = (grid >= marks[first][0]) & (grid < marks[stop_][0])
    np.testing.assert_array_equal(frame_flags, in_segment)  # the latest flag at each frame's time
    assert abs((hi - lo) - marked_s * FPS) <= 1.5
    state = np.stack(table.column("observation.state").to_numpy(zero_copy_only=False))
    assert np.abs(state[hi - 1, :6] - state[lo, :6]).max() > 0.02  # the leader moved the arm meanwhile

    only = build_dataset(BuildConfig(bags=[bag], out=tmp_path / "only", gaze="sim", fps=FPS,
                                     interventions="only", max_gap_s=max_gap_s))
    assert only.episodes == 1 and only.frames == hi - lo == only.intervention_frames
