"""policy node over real DDS: chunk stamps and layout, instruction, stale/malformed inputs, tiny model."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from reconvla_core.policy import ActionChunk, Policy

pytestmark = pytest.mark.ros

STATE = [0.1, 1.0, -1.0, 0.0, 0.3, 0.0, 0.03]


class RecordingPolicy(Policy):
    """A policy stub: actions = state + 0.01 * step; a peaked attention map when asked."""

    def __init__(self, chunk: int = 4) -> None:
        self.chunk = chunk
        self.calls: list[tuple[tuple[int, ...], str, list[float], bool]] = []
        self._lock = threading.Lock()

    def infer(self, obs):
        with_attention = obs["return_attention"]
        with self._lock:
            self.calls.append((obs["frame"].shape, obs["instruction"], list(obs["state"]), with_attention))
        actions = np.asarray(obs["state"])[None, :] + 0.01 * np.arange(self.chunk)[:, None]
        attention = np.zeros((8, 8))
        attention[2, 5] = 1.0
        return ActionChunk(actions, attention if with_attention else None)


class Harness:
    def __init__(self, ros, policy, instruction_first: str | None = None, **params) -> None:
        from rclpy.parameter import Parameter
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String
        from trajectory_msgs.msg import JointTrajectory

        from reconvla_ros.common import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS
        from reconvla_ros.policy import PolicyNode

        self.ros = ros
        self.client = ros.make_node("policy_client")
        self.instruction = self.client.create_publisher(String, "instruction", LATCHED_QOS)
        if instruction_first is not None:  # latched: published before the policy node exists
            self.instruction.publish(String(data=instruction_first))
        self.frame = self.client.create_publisher(Image, "reconvla/frame", SENSOR_QOS)
        self.joints = self.client.create_publisher(JointState, "joint_states", STATE_QOS)
        self.chunks: list = []
        self.overlays: list = []
        self.client.create_subscription(JointTrajectory, "reconvla/action_chunk", self.chunks.append, COMMAND_QOS)
        self.client.create_subscription(Image, "reconvla/attention", self.overlays.append, STATE_QOS)
        overrides = {"viz_rate": 100.0, "max_obs_age": 0.5}
        overrides.update(params)
        self.node = ros.add_node(PolicyNode(
            policy=policy, context=ros.context,
            parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()]))
        assert ros.wait_for(lambda: self.frame.get_subscription_count() > 0
                            and self.joints.get_subscription_count() > 0
                            and self.client.count_subscribers("reconvla/action_chunk") >= 1
                            and self.node.count_subscribers("reconvla/action_chunk") >= 1)

    def stamp(self, offset: float = 0.0):
        from rclpy.duration import Duration

        return (self.client.get_clock().now() + Duration(nanoseconds=int(offset * 1e9))).to_msg()

    def send_state(self, state=STATE, offset: float = 0.0):
        from sensor_msgs.msg import JointState

        msg = JointState(position=list(state))
        msg.header.stamp = self.stamp(offset)
        self.joints.publish(msg)
        return msg.header.stamp

    def send(self, size: int = 16, offset: float = 0.0, encoding: str = "rgb8", state=STATE):
        """A joint state and a frame measured at the same time (``offset`` s from now)."""
        from sensor_msgs.msg import Image

        stamp = self.send_state(state, offset)
        pixels = np.full((size, size, 3), 90, np.uint8)
        msg = Image(height=size, width=size, encoding=encoding, step=size * 3, data=pixels.tobytes())
        msg.header.stamp = stamp
        msg.header.frame_id = "reconvla_model_frame"
        self.frame.publish(msg)
        return msg.header.stamp


def test_publishes_chunks_stamped_with_the_observation(ros):
    policy = RecordingPolicy(chunk=4)
    h = Harness(ros, policy, instruction_first="pick the red block", action_rate=10.0)
    stamps = []

    def chunk_arrived() -> bool:
        stamps.append(h.send())
        return bool(h.chunks)

    assert ros.wait_for(chunk_arrived, timeout=15.0, period=0.2)
    chunk = h.chunks[0]
    assert chunk.header.stamp in stamps  # header stamp = the frame's stamp, not the publish time
    assert list(chunk.joint_names) == ["joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "gripper"]
    assert len(chunk.points) == 4
    for i, point in enumerate(chunk.points):
        t = point.time_from_start.sec + point.time_from_start.nanosec * 1e-9
        assert t == pytest.approx(i / 10.0)
        np.testing.assert_allclose(point.positions, np.array(STATE) + 0.01 * i)
    shape, instruction, state, _ = policy.calls[0]
    assert shape == (16, 16, 3) and instruction == "pick the red block"
    np.testing.assert_allclose(state, STATE)
    # The attention overlay: same size as the frame, rgb8, stamped like the frame.
    assert ros.wait_for(lambda: bool(h.overlays))
    overlay = h.overlays[0]
    assert (overlay.encoding, overlay.height, overlay.width) == ("rgb8", 16, 16)
    values = h.node.diagnostics_values()
    assert values["chunks"] >= 1 and values["inference_ms_p50"] >= 0.0


def test_the_frame_is_paired_with_the_nearest_state_and_a_late_state_anchors_the_chunk(ros):
    from sensor_msgs.msg import Image, JointState

    policy = RecordingPolicy(chunk=4)
    h = Harness(ros, policy, instruction_first="pick the red block", action_rate=10.0, viz_rate=0.0)
    before, at_frame, after = ([0.1 * k, 1.0, -1.0, 0.0, 0.3, 0.0, 0.03] for k in (1, 2, 3))

    def frame(stamp, frame_id: str = "first") -> Image:
        msg = Image(height=16, width=16, encoding="rgb8", step=48, data=bytes(16 * 16 * 3))
        msg.header.stamp = stamp
        msg.header.frame_id = frame_id  # the chunk carries it: tells the two parts' chunks apart
        return msg

    # States measured 0.2 s before, with, and 0.2 s after the frame, all received before it.
    known = len(h.node._states)
    frame_stamp = h.stamp(-0.2)
    h.send_state(before, -0.4)
    h.joints.publish(JointState(position=at_frame, header=frame(frame_stamp).header))
    h.send_state(after, 0.0)
    assert ros.wait_for(lambda: len(h.node._states) >= known + 3)
    assert ros.wait_for(lambda: (h.frame.publish(frame(frame_stamp)), bool(h.chunks))[1], timeout=15.0, period=0.2)
    np.testing.assert_allclose(policy.calls[0][2], at_frame)  # the one measured with it, not the newest
    assert h.chunks[0].header.stamp == frame_stamp
    # Only a state measured 0.3 s before the frame is known (it arrived late): the model plans
    # from where the arm was then, so the chunk is stamped with the state's time, not the frame's.
    h.node._states = type(h.node._states)()
    state_stamp = h.send_state(before, offset=-0.3)
    assert ros.wait_for(lambda: len(h.node._states) == 1)

    def second() -> list:  # frames of the first part may still be in flight
        return [c for c in h.chunks if c.header.frame_id == "second"]

    assert ros.wait_for(lambda: (h.frame.publish(frame(h.stamp(), "second")), bool(second()))[1],
                        timeout=15.0, period=0.2)
    chunk = second()[0]
    assert chunk.points[0].positions[0] == pytest.approx(before[0])
    assert chunk.header.stamp == state_stamp  # the state message's own stamp, to the nanosecond


@pytest.mark.parametrize("durability", ["volatile", "transient_local"])
def test_instruction_reaches_the_policy_from_a_publisher_with_either_durability(ros, durability):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    # ros2 topic pub's default is reliable + volatile; sim_robot and a latched publisher are
    # transient local.
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=getattr(DurabilityPolicy, durability.upper()))
    h = Harness(ros, RecordingPolicy(), viz_rate=0.0)
    publisher = h.client.create_publisher(String, "instruction", qos)
    assert ros.wait_for(lambda: publisher.get_subscription_count() >= 1)
    publisher.publish(String(data=f"pick up the red block ({durability})"))
    assert ros.wait_for(lambda: h.node._instruction == f"pick up the red block ({durability})")
    assert ros.wait_for(lambda: (h.send(), bool(h.chunks))[1], timeout=15.0, period=0.2)


def test_a_late_joining_policy_still_gets_the_latched_instruction(ros):
    from std_msgs.msg import String

    from reconvla_ros.common import LATCHED_QOS

    latched_client = ros.make_node("latched_instruction")
    publisher = latched_client.create_publisher(String, "instruction", LATCHED_QOS)
    publisher.publish(String(data="stack the blocks"))  # before the policy exists
    h = Harness(ros, RecordingPolicy(), viz_rate=0.0)
    assert ros.wait_for(lambda: h.node._instruction == "stack the blocks")


def test_instruction_from_the_parameter_and_skips_without_one(ros):
    from rclpy.parameter import Parameter

    policy = RecordingPolicy()
    h = Harness(ros, policy, viz_rate=0.0)
    assert ros.wait_for(lambda: (h.send(), h.node.counts["skipped_no_instruction"] >= 1)[1], period=0.2)
    assert h.chunks == [] and policy.calls == []
    assert h.node.set_parameters([Parameter("instruction", value="stack the blocks")])[0].successful
    assert ros.wait_for(lambda: (h.send(), bool(h.chunks))[1], timeout=15.0, period=0.2)
    assert policy.calls[-1][1] == "stack the blocks"
    assert all(not call[3] for call in policy.calls)  # viz_rate 0: never asks for attention
    assert h.overlays == []
    rejected = h.node.set_parameters([Parameter("max_obs_age", value=-1.0)])[0]
    assert not rejected.successful and "max_obs_age" in rejected.reason


def test_stale_and_malformed_inputs_are_dropped_and_the_node_keeps_running(ros):
    from sensor_msgs.msg import JointState

    policy = RecordingPolicy()
    h = Harness(ros, policy, instruction_first="pick", max_obs_age=0.3)
    # A frame 2 s old: skipped, never inferred.
    assert ros.wait_for(lambda: (h.send(offset=-2.0), h.node.counts["skipped_stale_frame"] >= 1)[1], period=0.2)
    # Bad joint states (wrong length, NaN) are counted and dropped.

    def bad_states_counted() -> bool:
        h.joints.publish(JointState(position=[0.0] * 3))
        h.joints.publish(JointState(position=[math.nan] * 7))
        return h.node.counts["bad_joint_states"] >= 2

    assert ros.wait_for(bad_states_counted, period=0.2)
    # An unsupported encoding and a zero-size frame: counted, dropped.
    from sensor_msgs.msg import Image

    def bad_frames_counted() -> bool:
        h.joints.publish(JointState(position=STATE))
        msg = Image(height=2, width=2, encoding="32FC1", step=8, data=bytes(16))
        msg.header.stamp = h.stamp()
        h.frame.publish(msg)
        empty = Image(height=0, width=0, encoding="rgb8", step=0, data=b"")
        empty.header.stamp = h.stamp()
        h.frame.publish(empty)
        return h.node.counts["bad_frames"] >= 2

    assert ros.wait_for(bad_frames_counted, timeout=15.0, period=0.2)
    assert h.chunks == [] and policy.calls == []
    # ... and a good frame still produces a chunk.
    assert ros.wait_for(lambda: (h.send(), bool(h.chunks))[1], timeout=15.0, period=0.2)


def test_a_failing_model_output_is_dropped(ros):
    class Broken(RecordingPolicy):
        def infer(self, obs):
            super().infer(obs)
            return ActionChunk(np.full((3, 7), np.nan))  # raises: non-finite actions

    policy = Broken()
    h = Harness(ros, policy, instruction_first="pick")
    assert ros.wait_for(lambda: (h.send(), h.node.counts["inference_errors"] >= 2)[1], timeout=15.0, period=0.2)
    assert h.chunks == []


def test_tiny_checkpoint_publishes_chunks(ros, tiny_checkpoint):
    path, config = tiny_checkpoint
    size = config.vision.image_size
    h = Harness(ros, None, instruction_first="put the red block in the bowl", checkpoint=str(path),
                max_obs_age=5.0, viz_rate=1.0)
    stamps = []
    assert ros.wait_for(lambda: (stamps.append(h.send(size=size)), bool(h.chunks))[1], timeout=60.0, period=0.5)
    chunk = h.chunks[0]
    assert chunk.header.stamp in stamps
    assert len(chunk.points) == config.chunk_size
    for point in chunk.points:
        assert len(point.positions) == 7 and all(math.isfinite(v) for v in point.positions)
    assert ros.wait_for(lambda: bool(h.overlays), timeout=30.0)
    assert (h.overlays[0].height, h.overlays[0].width) == (size, size)


def test_parameter_validation(ros):
    from rclpy.parameter import Parameter

    from reconvla_ros.policy import PolicyNode

    with pytest.raises(ValueError, match="checkpoint"):
        PolicyNode(context=ros.context)
    for name, value in [("dtype", "int8"), ("action_rate", 0.0), ("viz_rate", -1.0), ("torch_threads", -1)]:
        with pytest.raises(ValueError, match=name):
            PolicyNode(policy=RecordingPolicy(), context=ros.context,
                       parameter_overrides=[Parameter(name, value=value)])


def test_shipped_config_matches_the_declared_parameters(ros):
    from pathlib import Path

    from rclpy.parameter import Parameter, parameter_dict_from_yaml_file

    from reconvla_ros.policy import PolicyNode

    path = Path(__file__).resolve().parents[2] / "src" / "reconvla_ros" / "config" / "policy.yaml"
    params = [Parameter.from_parameter_msg(p)
              for p in parameter_dict_from_yaml_file(str(path), target_nodes=["policy"]).values()]
    node = ros.add_node(PolicyNode(policy=RecordingPolicy(), context=ros.context, parameter_overrides=params))
    for param in params:
        assert node.has_parameter(param.name), f"{param.name} in the yaml is not a parameter of the node"
        assert node.get_parameter(param.name).type_ == param.type_, param.name
