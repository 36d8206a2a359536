"""arm_command: executes action chunks at the control rate through the safety filter.

Per control tick (``control_rate`` Hz): read the arm's feedback, sample the action queue
(``reconvla_core.runtime.action_queue``: chunks time-aligned by their observation stamp, replaced
or cross-faded; with a predictor slower than the chunk horizon only the part the arm executed
since the observation is trimmed, ``trim``; chunks older than ``max_chunk_age`` are dropped),
pass the target through the one safety filter (``reconvla_core.runtime.safety``: finite, soft
joint limits, max step per period, gripper range, speed cap, stale-observation / no-chunk
watchdogs, estop latch) and send the command to the backend; publish the canonical
``joint_states`` (joint1..joint6 rad, gripper m).

A chunk with a target beyond a soft limit by more than ``limit_tolerance`` is rejected whole and
counted. Every chunk executed or dropped is counted on ``~/status`` (std_msgs/String, JSON: counts
per drop reason, the last chunk's age, horizon and trim) and /diagnostics; when the arm holds
because no usable chunk arrived for ``chunk_timeout``, one ERROR says why.

Backends (parameter ``backend``):
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
"""

from __future__ import annotations

import json
import time
from collections import deque
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
    JOINT_STATES_TOPIC,
    LEADER_COMMAND_TOPIC,
)
from reconvla_core.piper import ACTION_DIM, ACTION_NAMES, GRIPPER_MAX
from reconvla_core.runtime.action_queue import (
    DROP_REASONS,
    QUEUE_MODES,
    TRIM_MODES,
    ActionChunk,
    ActionQueue,
    ActionQueueConfig,
    ChunkReport,
)
from reconvla_core.runtime.backend import ArmFeedback, SimArmBackend
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
    ArmMode,
    SafetyConfig,
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

BACKENDS = ("piper_ros", "piper_sdk", "sim")


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


class ChunkError(ValueError):
    """A JointTrajectory that is not a valid action chunk."""


def chunk_from_message(msg: JointTrajectory, now: float) -> ActionChunk:
    """JointTrajectory -> ActionChunk (by joint name when names are given, else positional).

    The header stamp is the observation time; a zero stamp means "now".
    """
    if not msg.points:
        raise ChunkError("action chunk has no points")
    names = list(msg.joint_names)
    if names:
        missing = [n for n in ACTION_NAMES if n not in names]
        if missing:
            raise ChunkError(f"action chunk lacks joints {missing} (has {names})")
        order = [names.index(n) for n in ACTION_NAMES]
    else:
        order = list(range(ACTION_DIM))
    actions, offsets = [], []
    for k, point in enumerate(msg.points):
        positions = list(point.positions)
        if len(positions) != (len(names) if names else ACTION_DIM):
            raise ChunkError(f"point {k} has {len(positions)} positions, expected {len(names) or ACTION_DIM}")
        actions.append([positions[i] for i in order])
        offsets.append(point.time_from_start.sec + point.time_from_start.nanosec * 1e-9)
    stamp = stamp_to_s(msg.header.stamp)
    try:
        return ActionChunk(stamp if stamp > 0 else now, np.array(offsets), np.array(actions)).validated()
    except ValueError as error:
        raise ChunkError(str(error)) from error


def safety_config_from(values: dict[str, Any]) -> SafetyConfig:
    """The SafetyConfig the parameters describe (ValueError naming the bad field)."""
    return SafetyConfig(
        control_rate_hz=float(values["control_rate"]),
        max_joint_speed=float(values["max_joint_speed"]),
        max_gripper_speed=float(values["max_gripper_speed"]),
        soft_limit_margin=float(values["soft_limit_margin"]),
        limit_tolerance=float(values["limit_tolerance"]),
        speed_percent=int(values["speed_percent"]),
        max_speed_percent=int(values["max_speed_percent"]),
        observation_timeout_s=float(values["observation_timeout"]),
        chunk_timeout_s=float(values["chunk_timeout"]),
        auto_enable=bool(values["auto_enable"]),
    )


def validate_parameters(values: dict[str, Any]) -> tuple[SafetyConfig, ActionQueueConfig]:
    """Check every parameter; returns the safety and queue configs (ValueError naming the field)."""
    if values["backend"] not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {values['backend']!r}")
    if values["queue_mode"] not in QUEUE_MODES:
        raise ValueError(f"queue_mode must be one of {QUEUE_MODES}, got {values['queue_mode']!r}")
    if values["trim"] not in TRIM_MODES:
        raise ValueError(f"trim must be one of {TRIM_MODES}, got {values['trim']!r}")
    if not values["max_chunk_age"] > 0:
        raise ValueError(f"max_chunk_age must be > 0 s, got {values['max_chunk_age']}")
    if len(values["home_position"]) != ACTION_DIM:
        raise ValueError(f"home_position needs {ACTION_DIM} values (6 joints rad + gripper m)")
    if not values["enable_timeout"] > 0:
        raise ValueError(f"enable_timeout must be > 0 s, got {values['enable_timeout']}")
    if values["teleop"] and values["backend"] != "piper_sdk":
        raise ValueError("teleop needs backend 'piper_sdk' (the leader's commands are read from the CAN bus)")
    if not 0 <= values["gripper_effort"] <= 5000:
        raise ValueError(f"gripper_effort must be in 0..5000 (0.001 N·m), got {values['gripper_effort']}")
    safety = safety_config_from(values)
    SafetyFilter(safety).home_target(values["home_position"])  # inside the soft limits
    queue = ActionQueueConfig(mode=values["queue_mode"], blend_s=float(values["blend_s"]),
                              interpolate=bool(values["interpolate"]), trim=values["trim"],
                              max_chunk_age_s=float(values["max_chunk_age"]))
    return safety, queue


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

    def emergency_stop(self) -> None:
        self._node.get_logger().warning("estop: piper_ros has no estop input; commands stopped, the driver "
                                        "holds its last target")

    def close(self) -> None:
        pass


class ArmCommand(Node):
    """Control loop: action queue -> safety filter -> arm backend, plus the operator services."""

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
            "sim_seed": 0,
            "diagnostics_period": 1.0,
        }
        for name, value in defaults.items():
            self.declare_parameter(name, value, ro)
        p = {name: self.get_parameter(name).value for name in defaults}
        p["home_position"] = [float(v) for v in p["home_position"]]
        safety_config, queue_config = validate_parameters(p)
        self._p = p
        self.safety = SafetyFilter(safety_config)
        self.queue = ActionQueue(queue_config)
        self._dt = safety_config.dt
        self._home = np.array(p["home_position"])
        self._homing = False
        self._last_feedback_stamp: float | None = None
        self._published_stamp: float | None = None
        self._backend_enabled = False  # the backend was enabled since the last disable / estop
        self._closing = False
        self._leader_stamp: float | None = None
        # chunks: executed (accepted into the queue); dropped_*: by reason; bad_chunks: malformed.
        self.counts = {"chunks": 0, "bad_chunks": 0, "sent": 0, "send_errors": 0,
                       "feedback_errors": 0, "missed_ticks": 0, "ticks": 0}
        self.counts.update({f"dropped_{reason}": 0 for reason in DROP_REASONS + ("out_of_limits", "homing")})
        self._last_report: ChunkReport | None = None
        self._starving = False  # an ERROR was logged for the current spell without a usable chunk
        self._tick_times: deque[float] = deque(maxlen=300)
        self._last_tick: float | None = None

        self.backend = backend if backend is not None else self._make_backend(p)
        self.backend.connect()
        self._joint_pub = self.create_publisher(JointState, p["joint_states_topic"], STATE_QOS)
        self._leader_pub = (self.create_publisher(JointState, p["leader_topic"], STATE_QOS)
                            if p["teleop"] else None)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._status_pub = self.create_publisher(String, "~/status", STATE_QOS)
        self._marker_pub = self.create_publisher(MarkerArray, "~/chunk_markers", STATE_QOS)
        self.create_subscription(JointTrajectory, p["chunk_topic"], self._on_chunk, COMMAND_QOS)
        self.create_service(SetBool, "~/enable", self._on_enable)
        self.create_service(Trigger, "~/estop", self._on_estop)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_service(Trigger, "~/home", self._on_home)
        self.create_timer(self._dt, self._tick)
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        self.get_logger().info(f"backend {p['backend']}, {p['control_rate']} Hz, "
                               f"{'auto-enable' if p['auto_enable'] else 'disabled until ~/enable'}")

    def _make_backend(self, p: dict[str, Any]) -> Any:
        if p["backend"] == "piper_ros":
            return PiperRosBackend(self, p["command_topic"], p["feedback_topic"], p["enable_topic"],
                                   p["disable_cuts_power"])
        if p["backend"] == "piper_sdk":
            from reconvla_core.runtime.piper_sdk_backend import PiperSdkBackend

            return PiperSdkBackend(p["can_port"], gripper_effort=int(p["gripper_effort"]),
                                   cut_power_on_disable=p["disable_cuts_power"],
                                   speed_percent=int(p["speed_percent"]))
        return SimArmBackend(seed=int(p["sim_seed"]))

    # --- inputs -------------------------------------------------------------------------------
    def _on_chunk(self, msg: JointTrajectory) -> None:
        now = now_s(self)
        try:
            chunk = chunk_from_message(msg, now)
        except ValueError as error:
            self.counts["bad_chunks"] += 1
            self.get_logger().warning(f"dropping action chunk: {error}", throttle_duration_sec=5.0)
            return
        violation = self.safety.limit_violation(chunk.actions)
        if violation is not None:  # rejected whole: never clamped onto a limit
            self.counts["dropped_out_of_limits"] += 1
            self.get_logger().error(f"rejecting action chunk: {violation}", throttle_duration_sec=1.0)
            beyond = self.safety.violating_steps(chunk.actions)
            self._publish_markers(rejected_chunk_markers(chunk.actions, beyond))
            return
        if self._homing:
            self.counts["dropped_homing"] += 1
            return
        report = self.queue.push_report(chunk, now)
        self._last_report = report
        if not report.accepted:
            self.counts[f"dropped_{report.reason}"] += 1
            self.get_logger().warning(report.describe(), throttle_duration_sec=1.0)
            return
        self.counts["chunks"] += 1
        self.safety.note_chunk(now)
        # What the arm will execute: from the first step still ahead (the rest was trimmed).
        first = min(report.trimmed_steps, len(chunk.actions) - 1)
        self._publish_markers(executed_chunk_markers(chunk.actions[first:]))
        if self._starving:
            self._starving = False
            self.get_logger().info(f"executing again: {report.describe()}")

    def _publish_markers(self, markers: list[MarkerData]) -> None:
        if self._marker_pub.get_subscription_count() == 0:
            return  # nobody draws them: skip the FK
        self._marker_pub.publish(marker_array(markers, self.get_clock().now().to_msg()))

    def _check_starvation(self, now: float) -> None:
        """One ERROR per spell in which the enabled arm holds because no usable chunk arrives."""
        if self._starving or self.safety.mode is not ArmMode.ENABLED or self._homing:
            return
        received = self.counts["chunks"] + sum(self.counts[f"dropped_{r}"] for r in DROP_REASONS + ("out_of_limits",))
        if received == 0:
            return  # the policy has not produced anything yet (model loading): diagnostics say so
        starved = self.queue.starved_s(now)
        if starved <= float(self._p["chunk_timeout"]):
            return
        self._starving = True
        last = self._last_report.describe() if self._last_report is not None else "none"
        self.get_logger().error(
            f"arm holding: no usable action chunk for {min(starved, 1e6):.1f} s "
            f"({self.counts['chunks']} executed, {self._dropped()} dropped: {self._drop_summary()}); "
            f"last chunk: {last}. The policy's observation-to-chunk latency must stay below "
            f"max_chunk_age ({self._p['max_chunk_age']} s).")
        self._publish_status()

    def _dropped(self) -> int:
        return sum(v for k, v in self.counts.items() if k.startswith("dropped_"))

    def _drop_summary(self) -> str:
        return ", ".join(f"{k[len('dropped_'):]} {v}" for k, v in self.counts.items()
                         if k.startswith("dropped_") and v) or "none"

    def _read_feedback(self, now: float) -> ArmFeedback | None:
        try:
            feedback = self.backend.read_state()
        except Exception as error:  # a bus read error: no fresh feedback, the observation watchdog holds
            self.counts["feedback_errors"] += 1
            self.get_logger().error(f"reading arm feedback failed: {error}", throttle_duration_sec=2.0)
            return None
        if feedback is not None and feedback.source_stamp != self._last_feedback_stamp:
            if self.safety.observe(feedback.positions, now):
                self._last_feedback_stamp = feedback.source_stamp
        return feedback

    # --- the control tick ---------------------------------------------------------------------
    def _enable_backend(self) -> bool:
        """Enable the backend for a filter that enabled itself (auto_enable); disable both on failure."""
        if self.backend.enable(float(self._p["enable_timeout"])):
            self._backend_enabled = True
            self.get_logger().info("auto-enabled")
            return True
        self.safety.disable()
        self.get_logger().error("auto-enable failed: the arm did not report enabled")
        return False

    def _tick(self) -> None:
        if self._closing:
            return
        wall = time.monotonic()
        if self._last_tick is not None and wall - self._last_tick > 1.5 * self._dt:
            self.counts["missed_ticks"] += int(round((wall - self._last_tick) / self._dt)) - 1
        self._last_tick = wall
        self.counts["ticks"] += 1
        now = now_s(self)
        feedback = self._read_feedback(now)
        if self._homing:
            target, require_chunk = self._home, False
            self.queue.sample(now)  # keep the queue's clock moving; its actions are not used
        else:
            target, require_chunk = self.queue.sample(now), True
        command = self.safety.step(now, target, require_chunk=require_chunk)
        if target is None and not self._homing:
            self._check_starvation(now)
        if command is not None and not self._backend_enabled and not self._enable_backend():
            command = None  # auto_enable: the filter enabled itself on first feedback, the arm did not
        if command is not None:
            try:
                self.backend.send(command.positions, command.speed_percent)
                self.counts["sent"] += 1
            except Exception as error:
                self.counts["send_errors"] += 1
                self.get_logger().error(f"backend send failed: {error}", throttle_duration_sec=2.0)
            if self._homing and np.allclose(command.positions, self._home, atol=1e-4):
                self._homing = False
                self.queue.clear(now)  # chunks observed while homing describe a moving arm
                self.get_logger().info("home reached")
        if isinstance(self.backend, SimArmBackend) and self.backend.env is not None:
            self.backend.advance(self._dt)
        stamp = self.get_clock().now().to_msg()
        if feedback is not None and feedback.source_stamp != self._published_stamp:
            self._published_stamp = feedback.source_stamp
            self._joint_pub.publish(make_joint_state(feedback.positions, stamp))
        if self._leader_pub is not None:
            leader = self.backend.read_leader_command()
            if leader is not None and leader.source_stamp != self._leader_stamp:
                self._leader_stamp = leader.source_stamp
                self._leader_pub.publish(make_joint_state(leader.positions, stamp))
        self._tick_times.append((time.monotonic() - wall) * 1e3)

    # --- services -----------------------------------------------------------------------------
    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self.queue.clear(now_s(self))  # chunks observed before this are not executed
        self._homing = False
        if not request.data:
            self.safety.disable()
            self.backend.disable()
            self._backend_enabled = False
            response.success, response.message = True, "disabled: no motion commands"
            return response
        self._read_feedback(now_s(self))
        ok, message = self.safety.enable(now_s(self))
        if ok and not self.backend.enable(float(self._p["enable_timeout"])):
            self.safety.disable()
            ok, message = False, f"the arm did not report enabled within {self._p['enable_timeout']} s"
        self._backend_enabled = ok
        response.success, response.message = ok, message
        self.get_logger().info(f"enable: {message}")
        return response

    def _on_estop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.safety.estop()
        self.queue.clear(now_s(self))
        self._homing = False
        self._backend_enabled = False
        try:
            self.backend.emergency_stop()
        except Exception as error:
            self.get_logger().error(f"backend emergency stop failed: {error}")
        response.success, response.message = True, "emergency stop latched: reset, then enable"
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.safety.reset()
        return response

    def _on_home(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.safety.mode is not ArmMode.ENABLED:
            response.success, response.message = False, f"cannot home while {self.safety.mode.value}: enable first"
            return response
        self.queue.clear(now_s(self))
        self._homing = True
        response.success, response.message = True, f"homing to {self._home.tolist()}"
        return response

    # --- diagnostics and shutdown -------------------------------------------------------------
    def diagnostics_values(self) -> dict[str, Any]:
        now = now_s(self)
        c = self.safety.counters
        values: dict[str, Any] = {"mode": self.safety.mode.value, "homing": self._homing,
                                  "hold_reason": self.safety.hold_reason(now).value}
        values.update(self.counts)
        values.update({f"holds_{k}": v for k, v in c.holds.items()})
        values.update({"clipped": c.clipped, "rate_limited": c.rate_limited, "rejected_targets": c.rejected_targets,
                       "out_of_limit_targets": c.out_of_limits, "dropped_chunks": self._dropped(),
                       "queue_remaining_s": self.queue.remaining_s(now),
                       "late_steps": self.queue.stats.late_steps})
        report = self._last_report
        if report is not None:
            values.update({"last_chunk": report.reason, "last_chunk_age_s": report.age_s,
                           "last_chunk_horizon_s": report.horizon_s,
                           "last_chunk_skipped_idle_s": report.skipped_idle_s,
                           "last_chunk_trimmed_steps": report.trimmed_steps})
        if self._tick_times:
            values["tick_ms_max"] = float(max(self._tick_times))
        bad = getattr(self.backend, "bad_feedback", None)
        if bad is not None:
            values["bad_feedback"] = bad
        return values

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        mode = self.safety.mode
        if mode is ArmMode.ESTOPPED:
            level, message = DiagnosticStatus.ERROR, "emergency stop latched"
        elif self.safety.measured is None:
            level, message = DiagnosticStatus.WARN, "no arm feedback"
        elif mode is ArmMode.DISABLED:
            level, message = DiagnosticStatus.OK, "disabled"
        elif self._starving:
            level, message = DiagnosticStatus.ERROR, (f"holding: no usable action chunk ({values['dropped_chunks']} "
                                                      f"dropped: {self._drop_summary()})")
        elif values["hold_reason"] != "none":
            level, message = DiagnosticStatus.WARN, f"holding: {values['hold_reason']}"
        else:
            level, message = DiagnosticStatus.OK, "executing"
        status = diagnostic_status(f"{self.get_name()}: arm", self._p["backend"], level, message, values)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [status]))
        self._publish_status(values)

    def _publish_status(self, values: dict[str, Any] | None = None) -> None:
        """~/status: the diagnostics values as one JSON object (chunks executed vs dropped, why)."""
        values = self.diagnostics_values() if values is None else values
        values = dict(values, starving=self._starving)
        self._status_pub.publish(String(data=json.dumps(values, default=str)))

    def destroy_node(self) -> None:
        self._closing = True
        backend = getattr(self, "backend", None)  # absent when the constructor failed
        try:
            super().destroy_node()
        finally:
            if backend is not None:
                backend.close()


def main(args: list[str] | None = None) -> None:
    run_node(ArmCommand, args)


if __name__ == "__main__":
    main()
