"""teleop_recorder over real DDS when the disk fills: the episode ends cleanly and the node keeps serving.

The only fake is the narrowest seam: the bag's file object, which fails with ENOSPC once a byte
budget is used up (after writing the part that fits). Node, DDS, rosbags and MCAP are real.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_teleop_recorder import FakeRobot, make_recorder, read_bag

from reconvla_core.data.bag_writer import EpisodeBagWriter
from reconvla_core.interfaces import BASE_IMAGE_TOPIC, EPISODE_INFO_TOPIC, FOLLOWER_STATE_TOPIC

pytestmark = pytest.mark.ros


class FillingFile:
    """A file on a disk with ``budget[0]`` bytes free: the write that does not fit is cut, then ENOSPC."""

    def __init__(self, real: Any, budget: list[int]) -> None:
        self._real, self._budget = real, budget

    def write(self, data: bytes | memoryview) -> int:
        if len(data) > self._budget[0]:
            fits = max(0, self._budget[0])
            if fits:
                self._real.write(bytes(memoryview(data)[:fits]))
            self._budget[0] = 1 << 40  # space comes back after the fault (another process freed it)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget[0] -= len(data)
        return self._real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def filling_disk_writer(budget: list[int]):
    class Writer(EpisodeBagWriter):
        def open(self) -> Writer:
            super().open()
            storage = self._writer.storage
            if not isinstance(storage.bio, FillingFile):
                storage.bio = FillingFile(storage.bio, budget)
            return self

        def _open_storage_file(self, path: Path) -> Any:
            return FillingFile(super()._open_storage_file(path), budget)

    return Writer


def test_full_disk_ends_the_episode_and_the_node_keeps_serving(ros, tmp_path):
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from std_srvs.srv import SetBool, Trigger

    recorder = make_recorder(ros, tmp_path, task="fill the disk")
    budget = [1 << 40]
    recorder.session._writer_factory = filling_disk_writer(budget)
    robot = FakeRobot(ros)
    console = ros.make_node("operator_console")
    start = console.create_client(Trigger, "/teleop_recorder/start_episode")
    stop = console.create_client(SetBool, "/teleop_recorder/stop_episode")
    statuses: list[dict[str, Any]] = []
    from rclpy.qos import DurabilityPolicy, QoSProfile

    console.create_subscription(String, "/teleop_recorder/status", lambda m: statuses.append(json.loads(m.data)),
                                QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    assert ros.wait_for(lambda: len(recorder._subscriptions_by_topic) == 6, timeout=15.0)

    response = ros.call(start, Trigger.Request())
    assert response.success, response.message
    bag = Path(response.message)
    assert ros.wait_for(lambda: statuses and statuses[-1]["state"] == "recording", timeout=10.0)
    budget[0] = 600_000  # the disk fills during the episode: the second MCAP chunk does not fit

    big = np.zeros((240, 320, 3), np.uint8)

    def publish_until_fault() -> bool:
        big[...] = np.random.default_rng().integers(0, 255, 3, dtype=np.uint8)
        robot.base.publish(Image(height=240, width=320, encoding="rgb8", step=960, data=big.tobytes()))
        robot.publish_all(0.25)
        return recorder.session.write_errors > 0

    assert ros.wait_for(publish_until_fault, timeout=30.0, period=0.05), recorder.session.message_counts()
    # Reported once, on ~/status too; the session is idle again.
    assert ros.wait_for(lambda: statuses[-1]["state"] == "idle" and statuses[-1]["error"], timeout=10.0)
    status = statuses[-1]
    assert "No space left on device" in status["error"] and str(bag) in status["error"]
    assert status["last_episode"]["interrupted"] is True and status["last_episode"]["path"] == str(bag)
    assert recorder.session.write_errors == 1
    # Messages keep arriving while no bag is open: nothing is written, nothing raises.
    for _ in range(5):
        robot.publish_all(0.5)
    ros.wait_for(lambda: False, timeout=0.5)
    # The stop service says what happened.
    answer = ros.call(stop, SetBool.Request(data=True))
    assert not answer.success and "No space left on device" in answer.message

    # The bag is whole and marked interrupted, with what was written before the fault.
    counts, info, decoded = read_bag(bag)
    assert info["success"] is False and info["interrupted"] is True and "No space left" in info["error"]
    assert counts[BASE_IMAGE_TOPIC] >= 2 and counts[EPISODE_INFO_TOPIC] == 1
    last = recorder.session.last_result
    assert {topic: n for topic, n in counts.items()} == last.message_counts
    assert any(image.height == 240 for image in decoded[BASE_IMAGE_TOPIC])

    # The node serves the next episode.
    response = ros.call(start, Trigger.Request())
    assert response.success, response.message
    assert ros.wait_for(lambda: (robot.publish_all(0.75) or True)
                        and recorder.session.message_counts().get(FOLLOWER_STATE_TOPIC, 0) >= 3, timeout=15.0)
    assert ros.call(stop, SetBool.Request(data=True)).success
    counts, info, _ = read_bag(Path(response.message))
    assert info["success"] is True and counts[FOLLOWER_STATE_TOPIC] >= 3
    assert ros.wait_for(lambda: statuses[-1]["state"] == "idle" and statuses[-1]["error"] == "", timeout=10.0)


def test_sigkilled_recorder_is_recovered_and_builds(ros, tmp_path, capsys):
    """The real recorder process, killed mid-episode: bag recover restores what reached the disk."""
    import signal
    import subprocess
    import sys

    from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float32MultiArray, String
    from std_srvs.srv import Trigger

    from reconvla_core.cli.main import main as cli_main
    from reconvla_core.interfaces import GAZE_BOX_TOPIC, INSTRUCTION_TOPIC, LEADER_COMMAND_TOPIC, WRIST_IMAGE_TOPIC

    cmd = [sys.executable, "-m", "reconvla_ros.teleop_recorder", "--ros-args", "-p", f"output_dir:={tmp_path}",
           "-p", "min_free_gb:=0.0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node = ros.make_node("killed_driver")
    cameras = [node.create_publisher(Image, topic, qos_profile_sensor_data)
               for topic in (BASE_IMAGE_TOPIC, WRIST_IMAGE_TOPIC)]
    joints = [node.create_publisher(JointState, topic, 10) for topic in (FOLLOWER_STATE_TOPIC, LEADER_COMMAND_TOPIC)]
    gaze = node.create_publisher(Float32MultiArray, GAZE_BOX_TOPIC, 10)
    instruction = node.create_publisher(String, INSTRUCTION_TOPIC,
                                        QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    instruction.publish(String(data="put the red block in the bowl"))
    start = node.create_client(Trigger, "/teleop_recorder/start_episode")
    try:
        assert start.wait_for_service(timeout_sec=30.0), "recorder subprocess did not come up"
        everything = [*cameras, *joints, gaze, instruction]
        assert ros.wait_for(lambda: all(p.get_subscription_count() > 0 for p in everything), timeout=20.0)
        responses = []  # the task comes from the latched instruction: retry until it has arrived
        assert ros.wait_for(lambda: responses.append(ros.call(start, Trigger.Request())) or responses[-1].success,
                            timeout=10.0, period=0.2), responses[-1].message
        response = responses[-1]
        bag = Path(response.message)
        pixels = np.zeros((120, 160, 3), np.uint8)
        for frame in range(40):  # 4 s at 10 Hz, ~58 kB per image: several 1 MiB chunks reach the disk
            pixels[...] = frame
            for camera in cameras:
                camera.publish(Image(height=120, width=160, encoding="rgb8", step=480, data=pixels.tobytes()))
            for publisher in joints:
                publisher.publish(JointState(name=[f"joint{i}" for i in range(1, 7)] + ["gripper"],
                                             position=[0.01 * frame] * 7))
            gaze.publish(Float32MultiArray(data=[0.1, 0.2, 0.3, 0.4, 1.0]))
            ros.wait_for(lambda: False, timeout=0.1)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (bag / "metadata.yaml").exists()

    assert cli_main(["bag", "recover", str(bag), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["bags"][0]
    assert report["outcome"] == "recovered" and report["topics"][BASE_IMAGE_TOPIC] >= 10
    counts, info, decoded = read_bag(bag)
    assert info["interrupted"] is True and info["recovered"] is True and info["task"] == "put the red block in the bowl"
    # What was recovered is the start of what was published, unchanged and in order.
    values = [int(np.frombuffer(bytes(m.data), np.uint8)[0]) for m in decoded[BASE_IMAGE_TOPIC]]
    assert values == sorted(values) and len(set(values)) >= 10 and values[0] <= 1
    assert cli_main(["dataset", "build", "--bags", str(bag), "--out", str(tmp_path / "ds"), "--include-unsuccessful",
                     "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["episodes"] >= 1 and built["frames"] >= 10
