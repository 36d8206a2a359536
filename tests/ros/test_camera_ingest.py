"""camera_ingest over real DDS: pairing, stitched output, unpaired and malformed images dropped."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.ros

BASE_TOPIC = "/camera/camera/color/image_raw"
WRIST_TOPIC = "/wrist_camera/color/image_raw"


def concat_stitch(base: np.ndarray, wrist: np.ndarray) -> np.ndarray:
    """A test stitch: base on top of wrist (same width)."""
    return np.concatenate([base, wrist], axis=0)


def image_msg(pixels: np.ndarray, stamp, encoding: str = "rgb8", pad: int = 0):
    from sensor_msgs.msg import Image

    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(height, width * channels)
    data = np.concatenate([rows, np.zeros((height, pad), np.uint8)], axis=1).tobytes()
    msg = Image(height=height, width=width, encoding=encoding, step=width * channels + pad, data=data)
    msg.header.stamp = stamp
    return msg


class Harness:
    def __init__(self, ros, stitch=concat_stitch, **params) -> None:
        from rclpy.parameter import Parameter
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from reconvla_ros.camera_ingest import CameraIngest

        overrides = {"sync_tolerance": 0.02, "use_cv_bridge": False}
        overrides.update(params)
        self.node = ros.add_node(CameraIngest(
            stitch=stitch, context=ros.context,
            parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()]))
        self.client = ros.make_node("cameras")
        self.base = self.client.create_publisher(Image, BASE_TOPIC, qos_profile_sensor_data)
        self.wrist = self.client.create_publisher(Image, WRIST_TOPIC, qos_profile_sensor_data)
        self.frames: list = []
        self.client.create_subscription(Image, "/reconvla/frame", self.frames.append, qos_profile_sensor_data)
        self.ros = ros

    def stamp(self, offset: float = 0.0):
        from rclpy.duration import Duration

        return (self.client.get_clock().now() + Duration(nanoseconds=int(offset * 1e9))).to_msg()

    def connected(self) -> bool:
        return self.ros.wait_for(lambda: self.base.get_subscription_count() > 0
                                 and self.wrist.get_subscription_count() > 0
                                 and self.node.count_subscribers("/reconvla/frame") > 0)


def test_pairs_and_publishes_the_stitched_frame(ros):
    h = Harness(ros)
    assert h.connected()
    base = np.zeros((6, 8, 3), np.uint8)
    base[..., 0] = 200  # red in RGB
    wrist = np.zeros((6, 8, 3), np.uint8)
    wrist[..., 2] = 100  # blue in RGB

    def published() -> bool:
        stamp = h.stamp()
        h.base.publish(image_msg(base, stamp, "rgb8", pad=4))  # padded rows
        h.wrist.publish(image_msg(wrist[..., ::-1].copy(), stamp, "bgr8"))  # bgr8 is swapped to rgb
        return bool(h.frames)

    assert ros.wait_for(published, timeout=15.0, period=0.2)
    frame = h.frames[0]
    assert (frame.encoding, frame.height, frame.width, frame.step) == ("rgb8", 12, 8, 24)
    pixels = np.frombuffer(bytes(frame.data), np.uint8).reshape(12, 8, 3)
    np.testing.assert_array_equal(pixels[:6], base)
    np.testing.assert_array_equal(pixels[6:], wrist)
    assert frame.header.frame_id == "reconvla_model_frame"
    assert frame.header.stamp.sec > 0


def test_frame_stamp_is_the_older_camera_stamp_and_unpaired_frames_are_dropped(ros):
    h = Harness(ros)
    assert h.connected()
    image = np.zeros((4, 4, 3), np.uint8)
    # Too far apart (100 ms > 20 ms tolerance): never paired, the older one is counted as dropped.
    for _ in range(5):
        stamp = h.stamp()
        h.base.publish(image_msg(image, stamp))
        h.wrist.publish(image_msg(image, h.stamp(0.1)))
    assert ros.wait_for(lambda: h.node.diagnostics_values()["base_dropped"] >= 1)
    assert h.node.counts["published"] == 0

    def paired() -> bool:
        stamp = h.stamp(0.2)  # later than everything above
        h.base.publish(image_msg(image, stamp))
        h.wrist.publish(image_msg(image, (h.stamp(0.21))))
        return bool(h.frames)

    assert ros.wait_for(paired, timeout=15.0, period=0.2)
    values = h.node.diagnostics_values()
    assert values["pairs"] >= 1 and values["max_skew_ms"] <= 20.0


def test_malformed_images_are_logged_and_dropped_and_the_node_keeps_running(ros):
    from sensor_msgs.msg import Image

    h = Harness(ros)
    assert h.connected()
    good = np.full((4, 4, 3), 7, np.uint8)

    def malformed_counted() -> bool:
        stamp = h.stamp()
        h.base.publish(image_msg(np.zeros((4, 4), np.uint16).view(np.uint8).reshape(4, 8), stamp, "16UC1"))
        zero = Image(height=0, width=0, encoding="rgb8", step=0, data=b"")
        zero.header.stamp = stamp
        h.wrist.publish(zero)
        short = image_msg(good, stamp)
        short.data = bytes(short.data)[:10]
        h.base.publish(short)
        return h.node.counts["malformed"] >= 3

    assert ros.wait_for(malformed_counted, timeout=15.0, period=0.2)
    assert h.node.counts["published"] == 0

    def published() -> bool:
        stamp = h.stamp()
        h.base.publish(image_msg(good, stamp))
        h.wrist.publish(image_msg(good[..., 0].copy(), stamp, "mono8"))
        return bool(h.frames)

    assert ros.wait_for(published, timeout=15.0, period=0.2)
    np.testing.assert_array_equal(np.frombuffer(bytes(h.frames[0].data), np.uint8), 7)


def test_old_frames_are_dropped(ros):
    h = Harness(ros, max_frame_age=0.5)
    assert h.connected()
    image = np.zeros((4, 4, 3), np.uint8)

    def counted() -> bool:
        stamp = h.stamp(-5.0)
        h.base.publish(image_msg(image, stamp))
        h.wrist.publish(image_msg(image, stamp))
        return h.node.counts["too_old"] >= 2

    assert ros.wait_for(counted, timeout=15.0, period=0.2)
    assert h.node.counts["published"] == 0


def test_with_the_model_processors_stitch(ros):
    pytest.importorskip("reconvla_core.model.processing_reconvla")
    from reconvla_core.model import ReconVLAConfig
    from reconvla_core.runtime.frames import load_stitch

    size = ReconVLAConfig.from_preset("tiny").vision.image_size
    h = Harness(ros, stitch=None, model_preset="tiny")
    assert h.connected()
    base = np.full((48, 64, 3), 255, np.uint8)
    wrist = np.zeros((48, 64, 3), np.uint8)

    def published() -> bool:
        stamp = h.stamp()
        h.base.publish(image_msg(base, stamp))
        h.wrist.publish(image_msg(wrist, stamp))
        return bool(h.frames)

    assert ros.wait_for(published, timeout=20.0, period=0.2)
    frame = h.frames[0]
    assert (frame.height, frame.width) == (size, size)
    expected = load_stitch(None, "tiny")(base, wrist)
    np.testing.assert_array_equal(np.frombuffer(bytes(frame.data), np.uint8).reshape(size, size, 3), expected)


def test_parameter_validation(ros):
    from rclpy.parameter import Parameter

    from reconvla_ros.camera_ingest import CameraIngest

    for name, value in [("sync_tolerance", -0.1), ("qos_reliability", "sometimes"), ("buffer_size", 0)]:
        with pytest.raises(ValueError):
            CameraIngest(stitch=concat_stitch, context=ros.context,
                         parameter_overrides=[Parameter(name, value=value)])


def test_shipped_config_matches_the_declared_parameters(ros):
    from pathlib import Path

    from rclpy.parameter import Parameter, parameter_dict_from_yaml_file

    from reconvla_ros.camera_ingest import CameraIngest

    path = Path(__file__).resolve().parents[2] / "src" / "reconvla_ros" / "config" / "camera_ingest.yaml"
    params = [Parameter.from_parameter_msg(p)
              for p in parameter_dict_from_yaml_file(str(path), target_nodes=["camera_ingest"]).values()]
    node = ros.add_node(CameraIngest(stitch=concat_stitch, context=ros.context, parameter_overrides=params))
    for param in params:
        assert node.has_parameter(param.name), f"{param.name} in the yaml is not a parameter of the node"
        assert node.get_parameter(param.name).type_ == param.type_, param.name
