"""teleop_recorder: one rosbag2 (MCAP) directory per teleoperated episode.

Subscribes to the configured topics with ``raw=True`` and hands the serialized CDR bytes to
``reconvla_core.runtime.recording.RecordingSession`` (which writes them through
``EpisodeBagWriter.write_serialized``), stamped with the receive time like ``ros2 bag record``.

Services (std_srvs, node-private names so several recorders can coexist):
  ~/start_episode    Trigger   open a new episode; the task text is the ``task`` parameter, or,
                               when that is empty, the last text seen on the instruction topic
  ~/stop_episode     SetBool   finish the episode; ``data`` = success
  ~/discard_episode  Trigger   delete the open episode, or the one stopped last
Publishes ``~/recording`` (std_msgs/Bool, transient local) whenever the state changes, and
``~/status`` (std_msgs/String, transient local): JSON with ``state``, ``episode_dir``, ``error``
and ``last_episode``.

A write error (full disk, failing drive) ends the episode at once: the bag is closed with every
message written so far and marked interrupted (or, if the disk cannot take even that, left cut
at its last whole chunk for ``reconvla bag recover``). The error is logged once, shown on
``~/status`` and returned by the next ``~/stop_episode``; the node keeps serving episodes.

Parameters (config/teleop_recorder.yaml): output_dir, topics (``/name`` or ``/name:pkg/msg/Type``;
topics of unknown type are typed from the graph), latched_topics, task, operator, min_free_gb
(checked before each start; below half of it an open episode is stopped with success=False),
disk_check_period, queue_depth, qos_reliability: ``auto`` (default, like ``ros2 bag record``:
each topic is subscribed when its publishers appear, reliable when they all are, so large camera
frames from another process are retransmitted rather than dropped), ``reliable`` or ``best_effort``.
On SIGINT/SIGTERM the open episode is finished (success=False, interrupted) so the bag is readable.

Operator interventions (HG-DAgger): ``/reconvla/intervention`` (std_msgs/Bool, published by
arm_command with ``interventions: true``, true while the leader arm drives) is one of the default
topics, so each episode carries it as a topic of its own (``ros2 bag info`` lists it) and
``reconvla dataset build`` turns it into the per-frame ``intervention`` flag.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool, Trigger

from reconvla_core.interfaces import INSTRUCTION_TOPIC
from reconvla_core.data.bag_writer import normalise_msgtype
from reconvla_core.runtime.record_topics import (
    DEFAULT_LATCHED_TOPICS,
    DEFAULT_RECORD_TOPICS,
    QOS_MODES,
    TopicSpec,
    adapt_qos,
    parse_topic_specs,
)
from reconvla_core.runtime.recording import EpisodeResult, RecordingError, RecordingSession, free_space_gb
from reconvla_ros.common import run_node

DEFAULT_OUTPUT_DIR = "~/reconvla_episodes"


def message_class(msgtype: str) -> Any:
    """``sensor_msgs/msg/Image`` -> the rclpy message class (ImportError/AttributeError if absent)."""
    package, _, name = normalise_msgtype(msgtype).split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


class TeleopRecorder(Node):
    """Records demonstration episodes into rosbag2 directories; driven by three services."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("teleop_recorder", **kwargs)
        read_only = ParameterDescriptor(read_only=True)
        self.declare_parameter("output_dir", DEFAULT_OUTPUT_DIR, read_only)
        self.declare_parameter("topics", list(DEFAULT_RECORD_TOPICS), read_only)
        self.declare_parameter("latched_topics", list(DEFAULT_LATCHED_TOPICS), read_only)
        self.declare_parameter("queue_depth", 100, read_only)
        self.declare_parameter("qos_reliability", "auto", read_only)
        self.declare_parameter("task", "")
        self.declare_parameter("operator", "")
        self.declare_parameter("min_free_gb", 2.0)
        self.declare_parameter("disk_check_period", 5.0, read_only)

        specs = parse_topic_specs(self.get_parameter("topics").value)
        latched = [str(t) for t in self.get_parameter("latched_topics").value if str(t)]
        depth = int(self.get_parameter("queue_depth").value)
        min_free_gb = float(self.get_parameter("min_free_gb").value)
        disk_period = float(self.get_parameter("disk_check_period").value)
        qos_mode = str(self.get_parameter("qos_reliability").value)
        if qos_mode not in QOS_MODES:
            raise ValueError(f"qos_reliability must be one of {QOS_MODES}, got {qos_mode!r}")
        if depth < 1:
            raise ValueError(f"queue_depth must be >= 1, got {depth}")
        if min_free_gb < 0:
            raise ValueError(f"min_free_gb must be >= 0, got {min_free_gb}")
        if disk_period <= 0:
            raise ValueError(f"disk_check_period must be > 0, got {disk_period}")
        self.add_on_set_parameters_callback(self._on_set_parameters)

        latched_qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._state_pub = self.create_publisher(Bool, "~/recording", latched_qos)
        self._status_pub = self.create_publisher(String, "~/status", latched_qos)
        self.session = RecordingSession(
            Path(str(self.get_parameter("output_dir").value)).expanduser(),
            min_free_gb=min_free_gb,
            operator=str(self.get_parameter("operator").value),
            latched_topics=latched,
            clock_ns=lambda: self.get_clock().now().nanoseconds,
            on_fault=self._on_fault,
        )
        self._depth = depth
        self._qos_mode = qos_mode
        self._latched = frozenset(latched)
        self._last_instruction = ""
        self._subscriptions_by_topic: dict[str, Any] = {}
        # auto: subscribe once publishers appear, with QoS adapted to theirs (like ros2 bag record);
        # fixed reliability: subscribe now to every topic whose type is known.
        self._pending: list[TopicSpec] = []
        for spec in specs:
            if qos_mode == "auto" or spec.msgtype is None:
                self._pending.append(spec)
            else:
                self._subscribe(spec.name, spec.msgtype, self._fixed_qos(spec.name))
        self._discovery_timer = self.create_timer(0.5, self._discover_pending) if self._pending else None
        self._discover_pending()

        self.create_service(Trigger, "~/start_episode", self._on_start)
        self.create_service(SetBool, "~/stop_episode", self._on_stop)
        self.create_service(Trigger, "~/discard_episode", self._on_discard)
        self.create_timer(disk_period, self._check_disk)
        self._publish_state()
        self.get_logger().info(
            f"recording {len(specs)} topics into {self.session.output_dir} "
            f"(call ~/start_episode to begin; waiting for publishers on {len(self._pending)} of them)"
        )

    # ------------------------------------------------------------------ subscriptions
    def _profile(self, topic: str, reliability: str, durability: str) -> QoSProfile:
        transient = durability == "transient_local"
        return QoSProfile(
            depth=1 if transient else self._depth,
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE
            if reliability == "reliable"
            else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE,
        )

    def _fixed_qos(self, topic: str) -> QoSProfile:
        if topic in self._latched:  # the instruction: transient local, reliable
            return self._profile(topic, "reliable", "transient_local")
        return self._profile(topic, self._qos_mode, "volatile")

    def _subscribe(self, topic: str, msgtype: str, qos: QoSProfile) -> None:
        msgtype = normalise_msgtype(msgtype)
        msg_class = message_class(msgtype)
        is_instruction = topic == INSTRUCTION_TOPIC and msgtype == "std_msgs/msg/String"

        def callback(raw: bytes) -> None:
            stamp = self.get_clock().now().nanoseconds
            if is_instruction:
                self._last_instruction = deserialize_message(raw, String).data
            self.session.record(topic, msgtype, stamp, raw)

        self._subscriptions_by_topic[topic] = self.create_subscription(
            msg_class, topic, callback, qos, raw=True
        )
        self.get_logger().info(
            f"recording {topic} [{msgtype}] ({qos.reliability.name.lower()}, {qos.durability.name.lower()})"
        )

    def _discover_pending(self) -> None:
        still_pending = []
        for spec in self._pending:
            publishers = self.get_publishers_info_by_topic(spec.name)
            if not publishers:
                still_pending.append(spec)
                continue
            msgtype = spec.msgtype or publishers[0].topic_type
            if self._qos_mode == "auto":
                offered = [
                    (
                        "reliable"
                        if info.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                        else "best_effort",
                        "transient_local"
                        if info.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
                        else "volatile",
                    )
                    for info in publishers
                ]
                qos = self._profile(spec.name, *adapt_qos(offered, latched=spec.name in self._latched))
            else:
                qos = self._fixed_qos(spec.name)
            try:
                self._subscribe(spec.name, msgtype, qos)
            except (ImportError, AttributeError, ValueError) as exc:
                self.get_logger().error(f"cannot record {spec.name} [{msgtype}]: {exc}")
        self._pending = still_pending
        if not self._pending and self._discovery_timer is not None:
            self._discovery_timer.cancel()

    # ------------------------------------------------------------------ services
    def _task_text(self) -> str:
        return str(self.get_parameter("task").value).strip() or self._last_instruction.strip()

    def _on_start(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        instruction = self._last_instruction.strip() or None
        try:
            path = self.session.start(self._task_text(), instruction=instruction)
        except (RecordingError, OSError) as exc:
            response.success, response.message = False, str(exc)
            self.get_logger().error(f"start_episode refused: {exc}")
            self._publish_state()
            return response
        self._publish_state()
        response.success, response.message = True, str(path)
        self.get_logger().info(f"recording episode into {path}")
        return response

    def _on_stop(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        try:
            result = self.session.stop(success=bool(request.data))
        except (RecordingError, OSError) as exc:
            response.success, response.message = False, str(exc)
            self._publish_state()
            return response
        self._publish_state()
        response.success, response.message = True, str(result.path)
        self.get_logger().info(
            f"episode {result.index} saved: {result.path} (success={result.success}, "
            f"{result.num_messages} messages, {result.duration_s:.1f} s)"
        )
        return response

    def _on_discard(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            result = self.session.discard()
        except (RecordingError, OSError) as exc:
            response.success, response.message = False, str(exc)
            self._publish_state()
            return response
        self._publish_state()
        response.success, response.message = True, f"deleted {result.path}"
        self.get_logger().info(f"episode {result.index} discarded ({result.path} deleted)")
        return response

    # ------------------------------------------------------------------ housekeeping
    def _check_disk(self) -> None:
        if not self.session.is_recording:
            return
        free = free_space_gb(self.session.output_dir)
        if free < self.session.min_free_gb / 2:
            self.get_logger().error(f"only {free:.2f} GiB free: stopping the episode (success=False)")
            try:
                self.session.stop(success=False, note=f"stopped by the recorder: {free:.2f} GiB free")
            except RecordingError as exc:  # the bag could not be closed; the session is reset all the same
                self.get_logger().error(str(exc))
            self._publish_state()

    def _on_fault(self, result: EpisodeResult, message: str) -> None:
        """A write error ended the episode (called once, from the subscription that hit it)."""
        self.get_logger().error(message)
        self._publish_state()

    def status(self) -> dict[str, Any]:
        """What ``~/status`` carries."""
        last = self.session.last_result
        return {
            "state": self.session.state.value,
            "episode_dir": str(self.session.current_path) if self.session.current_path else None,
            "error": self.session.last_error,
            "last_episode": None if last is None else {
                "index": last.index,
                "path": str(last.path),
                "success": last.success,
                "discarded": last.discarded,
                "messages": last.num_messages,
                "interrupted": bool(last.info.get("interrupted", False)),
                "error": last.error,
            },
        }

    def _publish_state(self) -> None:
        self._state_pub.publish(Bool(data=self.session.is_recording))
        self._status_pub.publish(String(data=json.dumps(self.status())))

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            if param.name == "min_free_gb":
                if param.type_ not in (Parameter.Type.DOUBLE, Parameter.Type.INTEGER) or param.value < 0:
                    return SetParametersResult(successful=False, reason="min_free_gb must be a number >= 0")
                self.session.min_free_gb = float(param.value)
            elif param.name == "operator":
                self.session.operator = str(param.value)
            elif param.name == "task" and param.type_ is not Parameter.Type.STRING:
                return SetParametersResult(successful=False, reason="task must be a string")
        return SetParametersResult(successful=True)

    def destroy_node(self) -> None:
        session = getattr(self, "session", None)  # absent when the constructor failed
        result = session.close() if session is not None else None
        if result is not None:
            self.get_logger().warning(
                f"recorder stopping: episode {result.index} closed as interrupted ({result.path})"
            )
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    run_node(TeleopRecorder, args)


if __name__ == "__main__":
    main()
