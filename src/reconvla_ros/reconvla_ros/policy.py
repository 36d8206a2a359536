"""policy: latest model frame + joint state + instruction -> action chunks, attention overlay, timing.

Subscriptions: ``reconvla/frame`` (stitched rgb8 frame from camera_ingest, sensor-data QoS),
``joint_states`` (canonical 7-vector from arm_command, sensor-data QoS) and ``instruction``
(std_msgs/String; latched and volatile publishers, e.g. ``ros2 topic pub``, both reach it; the
``instruction`` parameter sets it too, also at run time).
Callbacks only store the latest message; inference runs in a worker thread, so no callback waits
for the model. Per inference the worker checks that the frame is at most ``max_obs_age`` old
(else it is skipped and counted) and that a fresh joint state is known, then publishes:

- ``reconvla/action_chunk``: trajectory_msgs/JointTrajectory, joint_names joint1..joint6 + gripper,
  point i at ``time_from_start = i / action_rate``, header stamp = the observation's time: the older
  of the frame's stamp and that of the joint state paired with it (the one nearest in time, so a
  state that arrived late anchors the chunk where the arm was, see ``StateHistory``);
- ``reconvla/attention``: the colour-mapped attention overlay with the gaze box the model answered
  with (green; ``answer_box`` checkpoints) or else the attention peak's box, at most
  ``viz_rate`` Hz (0 disables; attention costs an extra forward pass);
- /diagnostics: inference time and observation-to-chunk latency.

The model is ``reconvla_core.policy.CheckpointPolicy`` loaded from ``checkpoint`` (``device``,
``dtype``); tests and benchmarks inject any ``reconvla_core.policy.Policy`` instead (its observation
carries the stitched ``frame``). ``torch_threads``
sets torch's intra-op threads (default 1: on a loaded 2-core machine the tiny model's median
inference was 3.7x slower with 2 threads, see docs/benchmarks.md; 0 keeps torch's default).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from reconvla_core.interfaces import (
    ACTION_CHUNK_TOPIC,
    ATTENTION_TOPIC,
    INSTRUCTION_TOPIC,
    JOINT_STATES_TOPIC,
    MODEL_FRAME_TOPIC,
)
from reconvla_core.piper import ACTION_NAMES
from reconvla_core.policy import DTYPES, CheckpointPolicy, Policy
from reconvla_core.runtime.image import image_to_rgb
from reconvla_core.runtime.overlay import render_attention_overlay
from reconvla_core.runtime.sync import StateHistory
from reconvla_ros.common import (
    COMMAND_QOS,
    DIAGNOSTICS_TOPIC,
    SENSOR_QOS,
    STATE_QOS,
    JointStateError,
    diagnostic_array,
    diagnostic_status,
    image_message,
    joint_state_positions,
    now_s,
    run_node,
    s_to_stamp,
    stamp_to_s,
    subscribe_instruction,
)


INFERENCE_THREAD = "policy-inference"
StampedState = tuple[np.ndarray, Time]  # a joint state and its message's exact stamp
SHUTDOWN_GRACE_S = 1.0  # Ctrl-C waits this long for a running inference, well inside launch's 5 s


def validate_parameters(values: dict[str, Any]) -> None:
    """ValueError naming the first bad parameter (plain function, tested without ROS)."""
    if values["dtype"] not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {values['dtype']!r}")
    if not values["max_obs_age"] > 0:
        raise ValueError(f"max_obs_age must be > 0 s, got {values['max_obs_age']}")
    if not values["state_timeout"] > 0:
        raise ValueError(f"state_timeout must be > 0 s, got {values['state_timeout']}")
    if not values["action_rate"] > 0:
        raise ValueError(f"action_rate must be > 0 Hz, got {values['action_rate']}")
    if values["viz_rate"] < 0:
        raise ValueError(f"viz_rate must be >= 0 Hz (0 = off), got {values['viz_rate']}")
    if values["min_inference_period"] < 0:
        raise ValueError(f"min_inference_period must be >= 0 s, got {values['min_inference_period']}")
    if not values["diagnostics_period"] > 0:
        raise ValueError(f"diagnostics_period must be > 0, got {values['diagnostics_period']}")
    if values["torch_threads"] < 0:
        raise ValueError(f"torch_threads must be >= 0 (0 = torch's default), got {values['torch_threads']}")
    for name in ("frame_topic", "joint_states_topic", "instruction_topic", "chunk_topic", "attention_topic"):
        if not values[name]:
            raise ValueError(f"{name} must be non-empty")


def chunk_message(actions: np.ndarray, stamp: Any, action_rate: float, frame_id: str = "") -> JointTrajectory:
    """(K, 7) actions -> JointTrajectory with point i at i / action_rate after ``stamp``."""
    msg = JointTrajectory()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.joint_names = list(ACTION_NAMES)
    for i, row in enumerate(actions):
        t = i / action_rate
        point = JointTrajectoryPoint()
        point.positions = [float(v) for v in row]
        point.time_from_start = Duration(sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))
        msg.points.append(point)
    return msg


class PolicyNode(Node):
    """Runs the VLA on the latest observation in a worker thread and publishes action chunks."""

    def __init__(self, *, policy: Policy | None = None, **kwargs: Any) -> None:
        super().__init__("policy", **kwargs)
        ro = ParameterDescriptor(read_only=True)
        defaults = {
            "checkpoint": "",
            "device": "cpu",
            "dtype": "float32",
            "frame_topic": MODEL_FRAME_TOPIC.lstrip("/"),
            "joint_states_topic": JOINT_STATES_TOPIC.lstrip("/"),
            "instruction_topic": INSTRUCTION_TOPIC.lstrip("/"),
            "chunk_topic": ACTION_CHUNK_TOPIC.lstrip("/"),
            "attention_topic": ATTENTION_TOPIC.lstrip("/"),
            "max_obs_age": 0.5,
            "state_timeout": 0.5,
            "action_rate": 10.0,
            "viz_rate": 2.0,
            "colormap": "jet",
            "min_inference_period": 0.0,
            "diagnostics_period": 1.0,
            "torch_threads": 1,
        }
        dynamic = {"max_obs_age", "viz_rate", "min_inference_period"}
        for name, value in defaults.items():
            self.declare_parameter(name, value, ParameterDescriptor() if name in dynamic else ro)
        self.declare_parameter("instruction", "")
        p = {name: self.get_parameter(name).value for name in defaults}
        validate_parameters(p)
        self._p = p
        if policy is None:
            if not p["checkpoint"]:
                raise ValueError("parameter 'checkpoint' is empty: set it to a checkpoint directory written by "
                                 "`reconvla train` (ReconVLA.save_pretrained)")
            policy = CheckpointPolicy(p["checkpoint"], p["device"], p["dtype"])
        self._policy = policy
        if p["torch_threads"] > 0 and "torch" in sys.modules:  # only a torch policy has threads to set
            sys.modules["torch"].set_num_threads(int(p["torch_threads"]))

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._frame: Image | None = None
        self._frame_seq = 0
        self._states = StateHistory()
        self._state_time = -np.inf  # arrival of the newest joint state: is the feed alive?
        self._instruction = str(self.get_parameter("instruction").value)
        self._stop = False
        self.counts = {"chunks": 0, "skipped_stale_frame": 0, "skipped_no_state": 0, "skipped_no_instruction": 0,
                       "bad_frames": 0, "bad_joint_states": 0, "inference_errors": 0, "overlays": 0,
                       "clipped_targets": 0}
        self._inference_ms: deque[float] = deque(maxlen=100)
        self._latency_ms: deque[float] = deque(maxlen=100)
        self._last_viz = -np.inf

        self.create_subscription(Image, p["frame_topic"], self._on_frame, SENSOR_QOS)
        self.create_subscription(JointState, p["joint_states_topic"], self._on_joint_state, SENSOR_QOS)
        subscribe_instruction(self, p["instruction_topic"], self._on_instruction)
        self._chunk_pub = self.create_publisher(JointTrajectory, p["chunk_topic"], COMMAND_QOS)
        self._attention_pub = self.create_publisher(Image, p["attention_topic"], STATE_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        self._worker = threading.Thread(target=self._run, name=INFERENCE_THREAD)
        self._worker.start()

    # --- callbacks: store only ----------------------------------------------------------------
    def _on_frame(self, msg: Image) -> None:
        with self._wake:
            self._frame = msg
            self._frame_seq += 1
            self._wake.notify()

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            state = joint_state_positions(msg)
        except JointStateError as error:
            self.counts["bad_joint_states"] += 1
            self.get_logger().warning(f"dropping joint state: {error}", throttle_duration_sec=5.0)
            return
        now = now_s(self)
        stamp = stamp_to_s(msg.header.stamp)
        measured = (stamp, msg.header.stamp) if stamp > 0 else (now, s_to_stamp(now))
        with self._lock:  # the message's own stamp rides along: a float round trip would move it by ~100 ns
            self._states.add(measured[0], (state, measured[1]))
            self._state_time = now

    def _on_instruction(self, msg: String) -> None:
        with self._lock:
            changed, self._instruction = msg.data != self._instruction, msg.data
        if changed:  # a latched publisher reaches both instruction subscriptions
            self.get_logger().info(f"instruction: {msg.data!r}")

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        updates = {}
        for param in params:
            if param.name == "instruction":
                if param.type_ is not Parameter.Type.STRING:
                    return SetParametersResult(successful=False, reason="instruction must be a string")
                updates["instruction"] = param.value
            elif param.name in ("max_obs_age", "viz_rate", "min_inference_period"):
                if param.type_ not in (Parameter.Type.DOUBLE, Parameter.Type.INTEGER):
                    return SetParametersResult(successful=False, reason=f"{param.name} must be a number")
                candidate = dict(self._p, **{param.name: float(param.value)})
                try:
                    validate_parameters(candidate)
                except ValueError as error:
                    return SetParametersResult(successful=False, reason=str(error))
                updates[param.name] = float(param.value)
        with self._lock:
            if "instruction" in updates:
                self._instruction = updates.pop("instruction")
            self._p.update(updates)
        return SetParametersResult(successful=True)

    # --- the worker ---------------------------------------------------------------------------
    def _next_input(self, last_seq: int) -> tuple[int, Image, tuple[float, StampedState] | None, float, str] | None:
        with self._wake:
            while not self._stop and self._frame_seq == last_seq:
                self._wake.wait(timeout=0.1)
            if self._stop:
                return None
            state = self._states.nearest(stamp_to_s(self._frame.header.stamp))
            return self._frame_seq, self._frame, state, self._state_time, self._instruction

    def _run(self) -> None:
        seq = 0
        next_allowed = 0.0
        while True:
            item = self._next_input(seq)
            if item is None:
                return
            seq, frame_msg, state, state_time, instruction = item
            try:
                self._infer_once(frame_msg, state, state_time, instruction)
            except Exception as error:  # keep the worker alive whatever one input does
                if self._stop or not self.context.ok():
                    return  # Ctrl-C arrived mid-inference: the publish raced the shutdown, not a failure
                self.counts["inference_errors"] += 1
                self.get_logger().error(f"inference failed: {type(error).__name__}: {error}",
                                        throttle_duration_sec=5.0)
            period = self._p["min_inference_period"]
            if period > 0:
                next_allowed = time.monotonic() + period
                while not self._stop and time.monotonic() < next_allowed:
                    time.sleep(min(0.05, next_allowed - time.monotonic()))

    def _infer_once(self, frame_msg: Image, stamped_state: tuple[float, StampedState] | None, state_time: float,
                    instruction: str) -> None:
        now = now_s(self)
        stamp = stamp_to_s(frame_msg.header.stamp)
        if now - stamp > self._p["max_obs_age"]:
            self.counts["skipped_stale_frame"] += 1
            self.get_logger().warning(f"skipping a frame {now - stamp:.3f} s old (max_obs_age "
                                      f"{self._p['max_obs_age']} s)", throttle_duration_sec=5.0)
            return
        if stamped_state is None or now - state_time > self._p["state_timeout"]:
            self.counts["skipped_no_state"] += 1
            self.get_logger().warning("no fresh joint state: waiting for joint_states", throttle_duration_sec=5.0)
            return
        if not instruction:
            self.counts["skipped_no_instruction"] += 1
            self.get_logger().warning("no instruction: publish one on the instruction topic or set the parameter",
                                      throttle_duration_sec=5.0)
            return
        try:
            frame = image_to_rgb(frame_msg)
        except ValueError as error:
            self.counts["bad_frames"] += 1
            self.get_logger().warning(f"dropping frame: {error}", throttle_duration_sec=5.0)
            return
        viz_rate = self._p["viz_rate"]
        want_attention = viz_rate > 0 and time.monotonic() - self._last_viz >= 1.0 / viz_rate
        t0 = time.perf_counter()
        state_stamp, (state, state_stamp_msg) = stamped_state
        prediction = self._policy.infer({"frame": frame, "instruction": instruction, "state": state,
                                         "return_attention": want_attention})
        self._inference_ms.append((time.perf_counter() - t0) * 1e3)
        observed = frame_msg.header.stamp if stamp <= state_stamp else state_stamp_msg
        self._chunk_pub.publish(chunk_message(prediction.actions, observed, self._p["action_rate"],
                                              frame_msg.header.frame_id))
        self.counts["chunks"] += 1
        self.counts["clipped_targets"] += prediction.clipped_targets
        self._latency_ms.append((now_s(self) - stamp) * 1e3)
        if want_attention and prediction.attention is not None:
            self._last_viz = time.monotonic()
            overlay = render_attention_overlay(frame, prediction.attention, cmap=self._p["colormap"],
                                               gaze_box=prediction.box)
            header = frame_msg.header  # the overlay is the observation's frame, stamped like it
            self._attention_pub.publish(image_message(overlay, header.stamp, header.frame_id))
            self.counts["overlays"] += 1

    # --- diagnostics and shutdown -------------------------------------------------------------
    def diagnostics_values(self) -> dict[str, float]:
        values: dict[str, float] = {k: float(v) for k, v in self.counts.items()}
        for name, samples in (("inference_ms", self._inference_ms), ("obs_to_chunk_ms", self._latency_ms)):
            data = np.array(samples) if samples else np.array([np.nan])
            values[f"{name}_p50"] = float(np.percentile(data, 50))
            values[f"{name}_max"] = float(np.max(data))
        return values

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        if not self._instruction:
            level, message = DiagnosticStatus.WARN, "no instruction"
        elif self.counts["chunks"] == 0:
            level, message = DiagnosticStatus.WARN, "no chunk published yet"
        else:
            level, message = DiagnosticStatus.OK, f"inference p50 {values['inference_ms_p50']:.1f} ms"
        status = diagnostic_status(f"{self.get_name()}: inference", "policy", level, message, values)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [status]))

    def destroy_node(self) -> None:
        worker = getattr(self, "_worker", None)  # absent when the constructor failed
        if worker is not None:
            with self._wake:
                self._stop = True
                self._wake.notify_all()
            if worker.is_alive():
                worker.join(timeout=SHUTDOWN_GRACE_S)  # main() leaves without a forward pass still running
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    run_node(PolicyNode, args)
    # A forward pass cannot be interrupted, and a thread left inside torch at interpreter exit
    # aborts it ("terminate called without an active exception"): once the node is destroyed and
    # the context shut down, leave without waiting for that inference.
    if any(t.name == INFERENCE_THREAD and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
