"""arm_command draws the chunk it executes (and one it rejects) as a MarkerArray, over real DDS."""

from __future__ import annotations

import numpy as np
import pytest
from test_arm_command import HOME, FakeDriver, chunk_msg, make_arm

pytestmark = pytest.mark.ros


def test_a_chunk_sent_to_arm_command_is_drawn_as_its_tool_path(ros):
    from trajectory_msgs.msg import JointTrajectory
    from visualization_msgs.msg import Marker, MarkerArray

    from reconvla_core.piper import JOINT_UPPER
    from reconvla_core.runtime.chunk_markers import (
        GRIPPER_NAMESPACE,
        PATH_NAMESPACE,
        REJECTED_PATH_NAMESPACE,
        REJECTED_STEPS_NAMESPACE,
    )
    from reconvla_core.sim.kinematics import tcp_pose
    from reconvla_ros.common import COMMAND_QOS, STATE_QOS

    FakeDriver(ros)
    arm = make_arm(ros)
    client = ros.make_node("rviz_stand_in")
    received: list = []
    client.create_subscription(MarkerArray, "/arm_command/chunk_markers", received.append, STATE_QOS)
    chunks = client.create_publisher(JointTrajectory, "reconvla/action_chunk", COMMAND_QOS)
    assert ros.wait_for(lambda: arm.safety.measured is not None), "arm_command got no feedback"
    assert ros.wait_for(lambda: arm._marker_pub.get_subscription_count() > 0)

    target = np.array(HOME)
    target[0], target[6] = 0.4, 0.0
    ramp = [np.array(HOME) + (target - HOME) * k / 9 for k in range(10)]

    def drawn(namespace: str):
        for array in received:
            for marker in array.markers:
                if marker.ns == namespace:
                    return marker
        return None

    def path_arrived() -> bool:
        chunks.publish(chunk_msg(client, ramp))
        return drawn(PATH_NAMESPACE) is not None

    assert ros.wait_for(path_arrived, timeout=15.0, period=0.3), "no MarkerArray for an accepted chunk"
    path, gripper = drawn(PATH_NAMESPACE), drawn(GRIPPER_NAMESPACE)
    assert path.header.frame_id == "base_link" and path.type == Marker.LINE_STRIP
    points = np.array([[p.x, p.y, p.z] for p in path.points])
    # The executed steps are the chunk's last len(points) steps (the start may be trimmed).
    assert 1 <= len(points) <= len(ramp)
    expected = np.array([tcp_pose(step[:6])[:3, 3] for step in ramp[len(ramp) - len(points):]])
    assert np.abs(points - expected).max() < 1e-3
    assert len(path.colors) == len(points) and path.colors[0].b > path.colors[-1].b  # blue now, yellow later
    assert gripper.type == Marker.SPHERE_LIST and len(gripper.points) == len(points)

    received.clear()
    beyond = [list(step) for step in ramp]
    for step in beyond[6:]:
        step[0] = JOINT_UPPER[0] + 0.5
    rejected_before = arm.counts["dropped_out_of_limits"]
    chunks.publish(chunk_msg(client, beyond))
    assert ros.wait_for(lambda: drawn(REJECTED_STEPS_NAMESPACE) is not None, timeout=10.0)
    assert arm.counts["dropped_out_of_limits"] == rejected_before + 1
    assert len(drawn(REJECTED_STEPS_NAMESPACE).points) == 4
    assert len(drawn(REJECTED_PATH_NAMESPACE).points) == len(beyond)
