"""camera_ingest: base + wrist camera images -> one stitched model-input frame.

Subscribes to the base and wrist ``sensor_msgs/Image`` topics (names and QoS are parameters),
converts them to RGB (cv_bridge when it imports, else ``reconvla_core.runtime.image`` with the
same semantics; only rgb8/bgr8/mono8 are accepted), pairs frames whose stamps lie within
``sync_tolerance`` and publishes the stitched frame at model resolution on ``reconvla/frame``
(rgb8, header stamp = the older of the two camera stamps). The stitch resizes with OpenCV
straight from the message buffers (``stitch_backend: cv2``, no copy of an rgb8 image) or with the
model processor's own PIL stitch, the frame exactly as at training (``stitch_backend: model``);
``reconvla_core.runtime.frames`` says how close they are.
Malformed images are logged (throttled), counted and dropped. Diagnostics on /diagnostics:
per-camera rate, drops and age, pairing rate and skew.

The stitch function is injected (``CameraIngest(stitch=...)``); by default it is built from the
``checkpoint`` parameter (its config) or the ``model_preset`` parameter, and ``stitch_backend``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import Image

from reconvla_core.interfaces import BASE_IMAGE_TOPIC, MODEL_FRAME_TOPIC, WRIST_IMAGE_TOPIC
from reconvla_core.runtime.frames import STITCH_BACKENDS
from reconvla_core.runtime.image import check_layout, image_to_rgb
from reconvla_core.runtime.sync import FramePairer
from reconvla_ros.common import (
    DIAGNOSTICS_TOPIC,
    SENSOR_QOS,
    diagnostic_array,
    diagnostic_status,
    image_message,
    now_s,
    qos_from_parameters,
    run_node,
    s_to_stamp,
    stamp_to_s,
)

StitchFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def load_cv_bridge() -> Any | None:
    """A CvBridge when cv_bridge imports and works (it fails on NumPy 2), else None."""
    try:
        from cv_bridge import CvBridge

        return CvBridge()
    except Exception:  # ImportError, or the NumPy-ABI errors cv_bridge raises on import
        return None


def validate_parameters(values: dict[str, Any]) -> None:
    """ValueError naming the first bad parameter (plain function, tested without ROS)."""
    if not values["base_topic"] or not values["wrist_topic"] or not values["frame_topic"]:
        raise ValueError("base_topic, wrist_topic and frame_topic must be non-empty")
    if not 0.0 <= values["sync_tolerance"] <= 1.0:
        raise ValueError(f"sync_tolerance must be in [0, 1] s, got {values['sync_tolerance']}")
    if values["buffer_size"] < 1:
        raise ValueError(f"buffer_size must be >= 1, got {values['buffer_size']}")
    if values["max_frame_age"] < 0:
        raise ValueError(f"max_frame_age must be >= 0 (0 = no age check), got {values['max_frame_age']}")
    if values["diagnostics_period"] <= 0:
        raise ValueError(f"diagnostics_period must be > 0, got {values['diagnostics_period']}")
    if values["stitch_backend"] not in STITCH_BACKENDS:
        raise ValueError(f"stitch_backend must be one of {STITCH_BACKENDS}, got {values['stitch_backend']!r}")
    qos_from_parameters(values["qos_reliability"], values["qos_depth"])


class CameraIngest(Node):
    """Pairs the two camera streams and publishes the stitched model-input frame."""

    def __init__(self, *, stitch: StitchFn | None = None, **kwargs: Any) -> None:
        super().__init__("camera_ingest", **kwargs)
        ro = ParameterDescriptor(read_only=True)
        defaults = {
            "base_topic": BASE_IMAGE_TOPIC,
            "wrist_topic": WRIST_IMAGE_TOPIC,
            "frame_topic": MODEL_FRAME_TOPIC.lstrip("/"),
            "qos_reliability": "best_effort",
            "qos_depth": 2,
            "sync_tolerance": 0.02,
            "buffer_size": 4,
            "max_frame_age": 1.0,
            "frame_id": "reconvla_model_frame",
            "checkpoint": "",
            "model_preset": "tiny",
            "stitch_backend": "cv2",
            "use_cv_bridge": True,
            "diagnostics_period": 1.0,
        }
        for name, value in defaults.items():
            self.declare_parameter(name, value, ro)
        p = {name: self.get_parameter(name).value for name in defaults}
        validate_parameters(p)
        self._p = p
        self._stitch = stitch or self._load_stitch(p["checkpoint"], p["model_preset"], p["stitch_backend"])
        self._bridge = load_cv_bridge() if p["use_cv_bridge"] else None
        self._pairer = FramePairer(p["sync_tolerance"], p["buffer_size"])
        self.counts = {"malformed": 0, "too_old": 0, "stitch_errors": 0, "published": 0}

        qos = qos_from_parameters(p["qos_reliability"], p["qos_depth"])
        self.create_subscription(Image, p["base_topic"], lambda m: self._on_image("base", m), qos)
        self.create_subscription(Image, p["wrist_topic"], lambda m: self._on_image("wrist", m), qos)
        self._frame_pub = self.create_publisher(Image, p["frame_topic"], SENSOR_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        self.get_logger().info(
            f"pairing {p['base_topic']} + {p['wrist_topic']} within {p['sync_tolerance'] * 1e3:.0f} ms -> "
            f"{self.resolve_topic_name(p['frame_topic'])} (converter: {'cv_bridge' if self._bridge else 'reconvla'})"
        )

    @staticmethod
    def _load_stitch(checkpoint: str, preset: str, backend: str) -> StitchFn:
        from reconvla_core.runtime.frames import load_stitch

        return load_stitch(checkpoint or None, preset, backend)

    def _to_rgb(self, msg: Image) -> np.ndarray:
        if self._bridge is not None:
            return np.asarray(self._bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
        return image_to_rgb(msg, copy=False)  # read once by the stitch while the message lives

    def _on_image(self, stream: str, msg: Image) -> None:
        now = now_s(self)
        try:  # fields only: pixels are converted once the frame has a partner
            check_layout(msg.height, msg.width, msg.encoding, msg.step, len(msg.data))
        except ValueError as error:  # ImageEncodingError, ImageLayoutError
            self._drop_malformed(stream, error)
            return
        stamp = stamp_to_s(msg.header.stamp)
        max_age = self._p["max_frame_age"]
        if max_age > 0 and now - stamp > max_age:
            self.counts["too_old"] += 1
            self.get_logger().warning(
                f"dropping {stream} image {now - stamp:.3f} s old (max_frame_age {max_age} s); "
                "are the camera and this PC's clocks in sync?", throttle_duration_sec=5.0)
            return
        pair = self._pairer.add(stream, stamp, msg, now)
        if pair is None:
            return
        try:
            base, wrist = self._to_rgb(pair.base), self._to_rgb(pair.wrist)
        except Exception as error:  # CvBridgeError or a layout the field check let through
            self._drop_malformed("paired", error)
            return
        try:
            frame = np.ascontiguousarray(self._stitch(base, wrist), dtype=np.uint8)
            out = image_message(frame, s_to_stamp(pair.stamp), self._p["frame_id"])
        except Exception as error:
            self.counts["stitch_errors"] += 1
            self.get_logger().error(f"stitching failed, frame dropped: {error}", throttle_duration_sec=5.0)
            return
        self._frame_pub.publish(out)
        self.counts["published"] += 1

    def _drop_malformed(self, stream: str, error: Exception) -> None:
        self.counts["malformed"] += 1
        self.get_logger().warning(f"dropping {stream} image: {error}", throttle_duration_sec=5.0)

    def diagnostics_values(self) -> dict[str, float]:
        values = self._pairer.diagnostics(now_s(self))
        values.update({k: float(v) for k, v in self.counts.items()})
        return values

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        problems = [name for name in ("base", "wrist") if values[f"{name}_rate_hz"] == 0.0]
        if problems:
            level, message = DiagnosticStatus.WARN, f"no recent images from: {', '.join(problems)}"
        elif values["pair_rate_hz"] == 0.0:
            level, message = DiagnosticStatus.WARN, "images arrive but none pair: check sync_tolerance and stamps"
        else:
            level, message = DiagnosticStatus.OK, f"{values['pair_rate_hz']:.1f} frames/s"
        status = diagnostic_status(f"{self.get_name()}: cameras", "cameras", level, message, values)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [status]))


def main(args: list[str] | None = None) -> None:
    run_node(CameraIngest, args)


if __name__ == "__main__":
    main()
