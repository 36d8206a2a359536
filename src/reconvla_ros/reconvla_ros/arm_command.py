"""arm_command: executes action chunks at the control rate through the safety filter.

A thin node around ``reconvla_core.runtime.arm_controller.ArmController``, which holds the
control logic and is tested without ROS; ``reconvla_core.runtime.arm_command_parameters`` checks
the parameters and builds the controller's config. The node converts messages, runs the timers and
serves the services. Per control tick (``control_rate`` Hz) the controller reads the arm's feedback,
samples the action queue (``reconvla_core.runtime.action_queue``: chunks time-aligned by their
observation stamp, replaced or cross-faded; with a predictor slower than the chunk horizon only
the part the arm executed since the observation is trimmed, ``trim``; chunks older than
``max_chunk_age`` are dropped), passes the target through the one safety filter
(``reconvla_core.runtime.safety``: finite, soft joint limits, max step per period, gripper range,
speed cap, stale-observation / no-chunk watchdogs, estop latch) and sends the command to the
backend; the node publishes the canonical ``joint_states`` (joint1..joint6 rad, gripper m).

A chunk with a target beyond a soft limit by more than ``limit_tolerance`` is rejected whole and
counted. Every chunk executed or dropped is counted on ``~/status`` (std_msgs/String, JSON: counts
per drop reason, the last chunk's age, horizon and trim) and /diagnostics; when the arm holds
because no usable chunk arrived for ``chunk_timeout``, one ERROR says why.

Backends (parameter ``backend``, registered by name in ``reconvla_core.runtime.backend``):
- ``piper_ros``: publishes ``joint_ctrl_single`` (JointState: position rad + gripper m,
  velocity[6] = speed %), reads ``joint_states_single``, enables with ``enable_flag`` (std_msgs/Bool).
  piper_ros has no estop topic: estop stops all commands (the driver holds its last target).
- ``piper_sdk``: ``reconvla_core.runtime.piper_sdk_backend.PiperSdkBackend`` (CAN); with
  ``teleop: true`` it also publishes the leader arm's commands on ``master/joint_states``.
- ``sim``: an in-process ``reconvla_core.sim.PiperCellEnv`` stepped once per tick.

What it executes is drawn for RViz on ``~/chunk_markers`` (visualization_msgs/MarkerArray in
``base_link``, ``reconvla_core.runtime.chunk_markers``): each accepted chunk's tool-centre path from
the step the arm is at, coloured by time, with its gripper targets; a chunk rejected for its limits
grey with the offending steps red.

Services (node-private): ``~/enable`` (std_srvs/SetBool), ``~/estop``, ``~/reset``, ``~/home``
(std_srvs/Trigger). The arm starts disabled unless ``auto_enable``. Estop latches until reset,
then enable. Reset clears the software latch only: the SDK's resume frame is the same as
ResetPiper (motor power cut, a raised arm falls), so it is never sent from here.

Operator interventions (HG-DAgger; ``interventions: true``, any backend, not with ``teleop``):
the leader arm's command is read every period from ``leader_topic`` (published by whatever reads
the leader arm: on the robot a second arm_command in teleop mode on the leader's own CAN
interface, in the twin sim_robot's operator) and
``reconvla_core.runtime.intervention.InterventionGate`` picks the source.
``~/takeover`` / ``~/handback`` (std_srvs/Trigger) ask for and give back the arm; with
``auto_takeover_rad`` > 0 moving the leader that far from where it rested also takes over. The
arm holds until leader and follower agree within ``agree_tol_rad`` / ``agree_tol_m`` (no jump;
the safety filter still bounds the speed), and after a handback until the policy's target
agrees with the arm. ``intervention_topic`` (std_msgs/Bool, every period) is true while the
leader drives; the source (policy | handover | leader | handback) is on ~/status and /diagnostics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import Marker, MarkerArray

from reconvla_core.interfaces import (
    ACTION_CHUNK_TOPIC,
    ARM_COMMAND_TOPIC,
    FOLLOWER_STATE_TOPIC,
    INTERVENTION_TOPIC,
    JOINT_STATES_TOPIC,
    LEADER_COMMAND_TOPIC,
)
from reconvla_core.piper import ACTION_DIM, GRIPPER_MAX
from reconvla_core.runtime.action_queue import ActionChunk, ActionQueue
from reconvla_core.runtime.arm_command_parameters import controller_config_from_parameters
from reconvla_core.runtime.arm_controller import ArmController, ThrottledLog
from reconvla_core.runtime.backend import ArmFeedback, make_backend, register_backend
from reconvla_core.runtime.chunk_markers import (
    BASE_FRAME,
    MarkerData,
    executed_chunk_markers,
    rejected_chunk_markers,
)
from reconvla_core.runtime.safety import (
    DEFAULT_MAX_GRIPPER_SPEED,
    DEFAULT_MAX_JOINT_SPEED,
    LIMIT_TOLERANCE,
    SOFT_LIMIT_MARGIN,
    SafetyFilter,
)
from reconvla_ros.common import (
    COMMAND_QOS,
    DIAGNOSTICS_TOPIC,
    SENSOR_QOS,
    STATE_QOS,
    JointStateError,
    diagnostic_array,
    diagnostic_status,
    joint_state_positions,
    make_joint_state,
    now_s,
    run_node,
    stamp_to_s,
)

MARKER_KINDS = {"line_strip": Marker.LINE_STRIP, "sphere_list": Marker.SPHERE_LIST}


def marker_array(markers: list[MarkerData], stamp: Any, frame_id: str = BASE_FRAME) -> MarkerArray:
    """chunk_markers' plain data -> a MarkerArray (one ADD per marker; ids are stable per namespace,
    so each one replaces the previous chunk's)."""
    from builtin_interfaces.msg import Duration
    from geometry_msgs.msg import Point
    from std_msgs.msg import ColorRGBA

    out = MarkerArray()
    for data in markers:
        marker = Marker()
        marker.header.stamp = stamp
        marker.header.frame_id = frame_id
        marker.ns, marker.id = data.namespace, int(data.marker_id)
        marker.type, marker.action = MARKER_KINDS[data.kind], Marker.ADD
        marker.pose.orientation.w = 1.0
        marker.scale.x = marker.scale.y = marker.scale.z = float(data.scale)
        marker.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in data.points]
        marker.colors = [ColorRGBA(r=float(r), g=float(g), b=float(b), a=float(a)) for r, g, b, a in data.colors]
        seconds = int(data.lifetime_s)
        marker.lifetime = Duration(sec=seconds, nanosec=int(round((data.lifetime_s - seconds) * 1e9)))
        out.markers.append(marker)
    return out


def chunk_from_message(msg: JointTrajectory, now: float) -> ActionChunk:
    """JointTrajectory -> ActionChunk (ChunkError when malformed; see ActionChunk.from_trajectory).

    The header stamp is the observation time; a zero stamp means "now".
    """
    points = [(point.positions, point.time_from_start.sec + point.time_from_start.nanosec * 1e-9)
              for point in msg.points]
    return ActionChunk.from_trajectory(msg.joint_names, points, stamp_to_s(msg.header.stamp), now)


class PiperRosBackend:
    """ArmBackend made of the piper_ros driver's topics (see the module docstring)."""

    def __init__(self, node: Node, command_topic: str, feedback_topic: str, enable_topic: str,
                 cut_power_on_disable: bool) -> None:
        self._node = node
        self._cut_power = cut_power_on_disable
        self._command_pub = node.create_publisher(JointState, command_topic, COMMAND_QOS)
        self._enable_pub = node.create_publisher(Bool, enable_topic, COMMAND_QOS)
        node.create_subscription(JointState, feedback_topic, self._on_feedback, SENSOR_QOS)
        self._feedback: ArmFeedback | None = None
        self.bad_feedback = 0

    def _on_feedback(self, msg: JointState) -> None:
        try:
            positions = joint_state_positions(msg)
        except JointStateError as error:
            self.bad_feedback += 1
            self._node.get_logger().warning(f"dropping arm feedback: {error}", throttle_duration_sec=5.0)
            return
        # The arrival time tells fresh from repeated feedback (driver stamps may be zero).
        self._feedback = ArmFeedback(positions, time.monotonic())

    def connect(self) -> None:
        pass

    def enable(self, timeout_s: float = 5.0) -> bool:
        self._enable_pub.publish(Bool(data=True))
        return True

    def disable(self) -> None:
        if self._cut_power:
            self._enable_pub.publish(Bool(data=False))

    def send(self, positions: np.ndarray, speed_percent: int) -> None:
        velocity = [0.0] * ACTION_DIM
        velocity[6] = float(speed_percent)
        msg = make_joint_state(positions, self._node.get_clock().now().to_msg(), velocity)
        self._command_pub.publish(msg)

    def read_state(self) -> ArmFeedback | None:
        return self._feedback

    def read_leader_command(self) -> ArmFeedback | None:
        return None  # the driver does not forward a leader; interventions read LeaderTopic

    def advance(self, dt: float) -> None:
        pass  # the driver runs on its own

    def emergency_stop(self) -> None:
        self._node.get_logger().warning("estop: piper_ros has no estop input; commands stopped, the driver "
                                        "holds its last target")

    def close(self) -> None:
        pass


@register_backend("piper_ros")
def _piper_ros_backend(params: Mapping[str, Any], node: Any) -> PiperRosBackend:
    return PiperRosBackend(node, params["command_topic"], params["feedback_topic"], params["enable_topic"],
                           params["disable_cuts_power"])


class LeaderTopic:
    """The leader arm's command from a JointState topic (operator interventions, any backend)."""

    def __init__(self, node: Node, topic: str) -> None:
        self._node = node
        self._leader: ArmFeedback | None = None
        self.bad_messages = 0
        node.create_subscription(JointState, topic, self._on_leader, SENSOR_QOS)

    def _on_leader(self, msg: JointState) -> None:
        try:
            positions = joint_state_positions(msg)
        except JointStateError as error:  # never drive from it: the gate sees no (fresh) leader
            self.bad_messages += 1
            self._node.get_logger().warning(f"dropping leader command: {error}", throttle_duration_sec=5.0)
            return
        # The arrival time tells a fresh command from a repeated one (the gate times it on its clock).
        self._leader = ArmFeedback(positions, time.monotonic())

    def read_leader_command(self) -> ArmFeedback | None:
        return self._leader


DIAGNOSTIC_LEVELS = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN, "error": DiagnosticStatus.ERROR}


class ArmCommand(Node):
    """Thin node around ArmController: chunk messages in, services, joint states and status out."""

    def __init__(self, *, backend: Any | None = None, **kwargs: Any) -> None:
        super().__init__("arm_command", **kwargs)
        ro = ParameterDescriptor(read_only=True)
        defaults: dict[str, Any] = {
            "backend": "piper_ros",
            "control_rate": 30.0,
            "speed_percent": 50,
            "max_speed_percent": 100,
            "max_joint_speed": DEFAULT_MAX_JOINT_SPEED,
            "max_gripper_speed": DEFAULT_MAX_GRIPPER_SPEED,
            "soft_limit_margin": SOFT_LIMIT_MARGIN,
            "limit_tolerance": LIMIT_TOLERANCE,
            "observation_timeout": 0.5,
            "chunk_timeout": 1.0,
            "auto_enable": False,
            "enable_timeout": 2.0,
            "queue_mode": "blend",
            "blend_s": 0.0,
            "interpolate": True,
            "trim": "executed",
            "max_chunk_age": 2.0,
            "home_position": [0.0, 0.3, -0.3, 0.0, 0.3, 0.0, GRIPPER_MAX],
            "chunk_topic": ACTION_CHUNK_TOPIC.lstrip("/"),
            "joint_states_topic": JOINT_STATES_TOPIC.lstrip("/"),
            "command_topic": ARM_COMMAND_TOPIC.lstrip("/"),
            "feedback_topic": FOLLOWER_STATE_TOPIC.lstrip("/"),
            "enable_topic": "enable_flag",
            "can_port": "can0",
            "gripper_effort": 1000,
            "disable_cuts_power": False,
            "teleop": False,
            "leader_topic": LEADER_COMMAND_TOPIC.lstrip("/"),
            "interventions": False,
            "auto_takeover_rad": 0.0,
            "agree_tol_rad": 0.05,
            "agree_tol_m": 0.01,
            "leader_timeout": 0.2,
            "intervention_topic": INTERVENTION_TOPIC.lstrip("/"),
            "sim_seed": 0,
            "diagnostics_period": 1.0,
        }
        for name, value in defaults.items():
            self.declare_parameter(name, value, ro)
        p = {name: self.get_parameter(name).value for name in defaults}
        p["home_position"] = [float(v) for v in p["home_position"]]
        config = controller_config_from_parameters(p)
        self._p = p
        self._closing = False
        leader = LeaderTopic(self, p["leader_topic"]) if p["interventions"] else None
        self.controller = ArmController(backend if backend is not None else make_backend(p["backend"], p, self),
                                        config, ThrottledLog(self.get_logger()), leader=leader)
        self.controller.connect()
        self._joint_pub = self.create_publisher(JointState, p["joint_states_topic"], STATE_QOS)
        self._leader_pub = (self.create_publisher(JointState, p["leader_topic"], STATE_QOS)
                            if p["teleop"] else None)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._status_pub = self.create_publisher(String, "~/status", STATE_QOS)
        self._marker_pub = self.create_publisher(MarkerArray, "~/chunk_markers", STATE_QOS)
        self._intervention_pub = (self.create_publisher(Bool, p["intervention_topic"], STATE_QOS)
                                  if p["interventions"] else None)
        self.create_subscription(JointTrajectory, p["chunk_topic"], self._on_chunk, COMMAND_QOS)
        self.create_service(SetBool, "~/enable", self._on_enable)
        self.create_service(Trigger, "~/estop", self._on_estop)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_service(Trigger, "~/home", self._on_home)
        self.create_service(Trigger, "~/takeover", self._on_takeover)
        self.create_service(Trigger, "~/handback", self._on_handback)
        self.create_timer(config.safety.dt, self._tick)
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        self.get_logger().info(f"backend {p['backend']}, {p['control_rate']} Hz, "
                               f"{'auto-enable' if p['auto_enable'] else 'disabled until ~/enable'}")

    # The controller's parts, for tests and tools that look inside the node.
    @property
    def backend(self) -> Any:
        return self.controller.backend

    @property
    def safety(self) -> SafetyFilter:
        return self.controller.safety

    @property
    def queue(self) -> ActionQueue:
        return self.controller.queue

    @property
    def counts(self) -> dict[str, int]:
        return self.controller.counts

    # --- inputs -------------------------------------------------------------------------------
    def _on_chunk(self, msg: JointTrajectory) -> None:
        now = now_s(self)
        try:
            chunk = chunk_from_message(msg, now)
        except ValueError as error:
            self.controller.note_bad_chunk(str(error))
            return
        outcome = self.controller.push_chunk(chunk, now)
        if outcome.violating_steps is not None:
            self._publish_markers(rejected_chunk_markers(chunk.actions, outcome.violating_steps))
        elif outcome.accepted:  # what the arm will execute: from the first step still ahead
            self._publish_markers(executed_chunk_markers(chunk.actions[outcome.first_step:]))

    def _publish_markers(self, markers: list[MarkerData]) -> None:
        if self._marker_pub.get_subscription_count() == 0:
            return  # nobody draws them: skip the FK
        self._marker_pub.publish(marker_array(markers, self.get_clock().now().to_msg()))

    # --- the control tick ---------------------------------------------------------------------
    def _tick(self) -> None:
        if self._closing:
            return
        was_starving = self.controller.starving
        out = self.controller.tick(now_s(self), time.monotonic())
        if self.controller.starving and not was_starving:
            self._publish_status()  # the spell's ERROR was logged: show why on ~/status at once
        stamp = self.get_clock().now().to_msg()
        if out.feedback is not None:
            self._joint_pub.publish(make_joint_state(out.feedback.positions, stamp))
        if self._leader_pub is not None and out.leader is not None:
            self._leader_pub.publish(make_joint_state(out.leader.positions, stamp))
        if self._intervention_pub is not None:  # every period, so a recording's flag is never stale
            self._intervention_pub.publish(Bool(data=out.leader_drives))

    # --- services -----------------------------------------------------------------------------
    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        response.success, response.message = self.controller.enable(now_s(self), bool(request.data))
        return response

    def _on_estop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.controller.estop(now_s(self))
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.controller.reset()
        return response

    def _on_home(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.controller.start_homing(now_s(self))
        return response

    def _on_takeover(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.controller.request_takeover()
        self.get_logger().info(f"takeover: {response.message}")
        return response

    def _on_handback(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.controller.request_handback()
        self.get_logger().info(f"handback: {response.message}")
        return response

    # --- diagnostics and shutdown -------------------------------------------------------------
    def diagnostics_values(self) -> dict[str, Any]:
        return self.controller.diagnostics_values(now_s(self))

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        level, message = self.controller.health(values)
        status = diagnostic_status(f"{self.get_name()}: arm", self._p["backend"], DIAGNOSTIC_LEVELS[level],
                                   message, values)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [status]))
        self._publish_status(values)

    def _publish_status(self, values: dict[str, Any] | None = None) -> None:
        """~/status: the diagnostics values as one JSON object (chunks executed vs dropped, why)."""
        values = self.diagnostics_values() if values is None else values
        values = dict(values, starving=self.controller.starving)
        self._status_pub.publish(String(data=json.dumps(values, default=str)))

    def destroy_node(self) -> None:
        self._closing = True
        controller = getattr(self, "controller", None)  # absent when the constructor failed
        try:
            super().destroy_node()
        finally:
            if controller is not None:
                controller.close()


def main(args: list[str] | None = None) -> None:
    run_node(ArmCommand, args)


if __name__ == "__main__":
    main()
