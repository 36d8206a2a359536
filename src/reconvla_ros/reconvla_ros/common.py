"""Helpers shared by the reconvla_ros nodes: QoS profiles, stamps, JointState layout, diagnostics, main().

Written for camera_ingest, policy and arm_command; sim_robot and teleop_recorder may reuse it.
QoS on purpose:

- ``SENSOR_QOS``: camera and joint-state subscriptions (best effort, keep last 5). A best-effort
  subscriber also receives from reliable publishers.
- ``COMMAND_QOS``: commands and action chunks (reliable, keep last 3): never silently lost,
  never a deep backlog of stale commands.
- ``STATE_QOS``: what our nodes publish for others (canonical joint_states, overlays): reliable,
  keep last 10, so both reliable (RViz, robot_state_publisher) and best-effort subscribers get it.
- ``LATCHED_QOS``: the instruction (reliable, transient local, depth 1): late joiners get the last one.
  A transient-local subscription is incompatible with a volatile publisher (``ros2 topic pub``'s
  default), so ``subscribe_instruction`` keeps two subscriptions: transient local (the latched
  instruction of sim_robot or a latched publisher, also for a node that starts later) and
  ``LIVE_INSTRUCTION_QOS`` (reliable, volatile: reached by any reliable publisher).
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import Image, JointState

from reconvla_core.piper import ACTION_DIM, ACTION_NAMES
from reconvla_core.runtime.image import rgb_to_fields

SENSOR_QOS = qos_profile_sensor_data
COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=3, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
STATE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.VOLATILE)
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
LIVE_INSTRUCTION_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                                  reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
DIAGNOSTICS_TOPIC = "/diagnostics"
SHUTDOWN_GRACE_S = 1.0  # run_node: how long an error may precede the Ctrl-C shutdown it came from
RELIABILITIES = ("best_effort", "reliable")


def qos_from_parameters(reliability: str, depth: int) -> QoSProfile:
    """A volatile keep-last profile from the ``*_qos_reliability`` / ``*_qos_depth`` parameters."""
    if reliability not in RELIABILITIES:
        raise ValueError(f"QoS reliability must be one of {RELIABILITIES}, got {reliability!r}")
    if int(depth) < 1:
        raise ValueError(f"QoS depth must be >= 1, got {depth}")
    policy = ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth), reliability=policy,
                      durability=DurabilityPolicy.VOLATILE)


def subscribe_instruction(node: Any, topic: str, callback: Callable[[Any], None]) -> list[Any]:
    """Subscribe ``callback`` to the instruction (std_msgs/String) for latched and volatile publishers.

    A latched publisher matches both subscriptions, so the callback may see one message twice:
    it must be idempotent (storing the latest instruction is).
    """
    from std_msgs.msg import String

    return [node.create_subscription(String, topic, callback, LATCHED_QOS),
            node.create_subscription(String, topic, callback, LIVE_INSTRUCTION_QOS)]


def stamp_to_s(stamp: Time) -> float:
    """builtin_interfaces/Time -> seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def s_to_stamp(seconds: float) -> Time:
    """Seconds -> builtin_interfaces/Time (rounded to the nanosecond)."""
    total = int(round(seconds * 1e9))
    return Time(sec=total // 1_000_000_000, nanosec=total % 1_000_000_000)


def now_s(node: Any) -> float:
    """The node clock's time in seconds (ROS time: sim time when use_sim_time is set)."""
    return node.get_clock().now().nanoseconds * 1e-9


class JointStateError(ValueError):
    """A JointState that does not carry the 7-vector (6 joints rad + gripper m)."""


def joint_state_positions(msg: JointState, names: Sequence[str] = ACTION_NAMES) -> np.ndarray:
    """The 7-vector from a JointState: by name when all of ``names`` are present, else positions 0..6.

    The piper_ros layout (joint_states_single, joint_ctrl_single) is positional: 6 joints + gripper.
    Raises JointStateError for the wrong length or non-finite values.
    """
    positions = list(msg.position)
    if msg.name and set(names) <= set(msg.name) and len(msg.name) == len(positions):
        index = {name: i for i, name in enumerate(msg.name)}
        values = np.array([positions[index[name]] for name in names], dtype=np.float64)
    elif len(positions) >= ACTION_DIM:
        values = np.asarray(positions[:ACTION_DIM], dtype=np.float64)
    else:
        raise JointStateError(f"JointState has {len(positions)} positions; need {ACTION_DIM} "
                              f"(joint1..joint6 rad + gripper m)")
    if not np.all(np.isfinite(values)):
        raise JointStateError(f"JointState has non-finite positions: {values.tolist()}")
    return values


def make_joint_state(positions: Sequence[float], stamp: Time, velocity: Sequence[float] | None = None,
                     names: Sequence[str] = ACTION_NAMES) -> JointState:
    """A JointState in the product layout (names joint1..joint6, gripper)."""
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(names)
    msg.position = [float(v) for v in positions]
    if velocity is not None:
        msg.velocity = [float(v) for v in velocity]
    return msg


def image_message(rgb: np.ndarray, stamp: Time, frame_id: str, encoding: str = "rgb8") -> Image:
    """An (H, W, 3) uint8 RGB array as a sensor_msgs/Image in ``encoding`` (rgb8 | bgr8 | mono8), no row
    padding; the one place the nodes build image messages (the fields: ``runtime.image.rgb_to_fields``)."""
    fields = rgb_to_fields(rgb, encoding)
    msg = Image(height=fields.height, width=fields.width, encoding=fields.encoding,
                is_bigendian=fields.is_bigendian, step=fields.step, data=fields.data)
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def diagnostic_status(name: str, hardware_id: str, level: bytes, message: str,
                      values: Mapping[str, Any]) -> DiagnosticStatus:
    """A DiagnosticStatus with its values as strings (floats to 3 decimals)."""
    def text(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.3f}"
        return str(value)

    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=str(k), value=text(v)) for k, v in values.items()])


def diagnostic_array(stamp: Time, statuses: Iterable[DiagnosticStatus]) -> DiagnosticArray:
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = list(statuses)
    return msg


def run_node(factory: Callable[[], Any], args: list[str] | None = None) -> None:
    """The body of every ``main(args=None)``: init, spin, always destroy the node and shut down.

    A node that cannot start (bad parameter, missing file or package) logs one line and exits 2.
    Ctrl-C exits 0: a callback that raced the shutdown (a timer publishing after SIGINT already
    invalidated the context) is not an error, and a second SIGINT during the cleanup (a terminal
    sends one to the whole process group and ``ros2 launch`` sends its own) cannot abort it.
    """
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = factory()
        except (ValueError, FileNotFoundError, ImportError) as error:  # bad parameters / files: one line
            rclpy.logging.get_logger(getattr(factory, "__name__", "node")).fatal(str(error))
            raise SystemExit(2) from None
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # Ctrl-C can land inside rclpy's C++ take (pybind then reports "Unable to convert call
        # argument") a moment before the signal handler has shut the context down: give it that moment.
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while rclpy.ok() and time.monotonic() < deadline:
            time.sleep(0.01)
        if rclpy.ok():
            raise  # a real error, not a callback racing the shutdown
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
