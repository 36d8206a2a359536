"""teleop_recorder writes arm_command's intervention flag into each episode, as a topic of its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_teleop_recorder import FakeRobot, make_recorder, read_bag

from reconvla_core.interfaces import INTERVENTION_TOPIC

pytestmark = pytest.mark.ros


def test_the_intervention_flag_is_recorded_with_its_type(ros, tmp_path):
    import yaml
    from std_msgs.msg import Bool
    from std_srvs.srv import SetBool, Trigger

    from reconvla_ros.common import STATE_QOS

    recorder = make_recorder(ros, tmp_path)
    robot = FakeRobot(ros)
    flag = robot.node.create_publisher(Bool, INTERVENTION_TOPIC, STATE_QOS)  # as arm_command publishes it
    console = ros.make_node("operator_console")
    start = console.create_client(Trigger, "/teleop_recorder/start_episode")
    stop = console.create_client(SetBool, "/teleop_recorder/stop_episode")
    assert ros.wait_for(lambda: INTERVENTION_TOPIC in recorder._subscriptions_by_topic, timeout=15.0)
    assert ros.wait_for(lambda: recorder._last_instruction != "", timeout=15.0)
    response = ros.call(start, Trigger.Request())
    assert response.success, response.message
    sent = [False, False, True, True, True, False]

    def recorded() -> bool:
        return recorder.session.message_counts().get(INTERVENTION_TOPIC, 0) >= len(sent)

    for value in sent:
        robot.publish_all(0.1)
        flag.publish(Bool(data=value))
    assert ros.wait_for(recorded, timeout=10.0), recorder.session.message_counts()
    assert ros.call(stop, SetBool.Request(data=True)).success

    bag = Path(response.message)
    counts, _, decoded = read_bag(bag)
    assert [m.data for m in decoded[INTERVENTION_TOPIC]] == sent
    metadata = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    topics = {t["topic_metadata"]["name"]: t for t in metadata["topics_with_message_count"]}
    assert topics[INTERVENTION_TOPIC]["topic_metadata"]["type"] == "std_msgs/msg/Bool"
    assert topics[INTERVENTION_TOPIC]["message_count"] == counts[INTERVENTION_TOPIC] == len(sent)
