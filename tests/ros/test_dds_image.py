"""Proves the ROS fixture: a real sensor_msgs/Image crosses DDS between two nodes."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.ros


def test_environment_is_isolated():
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert 10 <= int(os.environ["ROS_DOMAIN_ID"]) < 100


def test_image_roundtrip_through_dds(ros):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    received: list[Image] = []
    sub_node = ros.make_node("image_listener")
    sub_node.create_subscription(Image, "camera/image_raw", received.append, qos_profile_sensor_data)
    pub_node = ros.make_node("image_talker")
    publisher = pub_node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)

    pixels = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)
    message = Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=pixels.tobytes())
    message.header.frame_id = "camera_color_optical_frame"

    def delivered() -> bool:
        publisher.publish(message)
        return bool(received)

    assert ros.wait_for(delivered, timeout=15.0, period=0.1), "no Image arrived through DDS"
    got = received[0]
    assert (got.height, got.width, got.encoding, got.step) == (48, 64, "rgb8", 192)
    assert got.header.frame_id == "camera_color_optical_frame"
    np.testing.assert_array_equal(np.frombuffer(bytes(got.data), np.uint8).reshape(48, 64, 3), pixels)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_image_message_round_trips_through_image_to_rgb(encoding):
    from builtin_interfaces.msg import Time

    from reconvla_core.runtime.image import image_to_rgb
    from reconvla_ros.common import image_message

    pixels = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    msg = image_message(pixels, Time(sec=3, nanosec=4), "wrist", encoding)
    assert (msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian) == (5, 7, encoding, 21, 0)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (3, 4, "wrist")
    np.testing.assert_array_equal(image_to_rgb(msg), pixels)
