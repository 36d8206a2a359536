"""Every node, started as its console script, exits 0 on SIGINT without a traceback.

What Ctrl-C on ``ros2 launch`` in a terminal does: the terminal sends SIGINT to the whole
process group and launch sends each node its own SIGINT right after, so a node sees two; launch
escalates to SIGTERM after its ``sigterm_timeout`` (5 s by default). Each node is stopped while it is busy (sim_robot's
timers publishing, the policy in the middle of an inference), since that is when a timer or
worker thread races the context shutting down.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.ros

LAUNCH_SIGTERM_TIMEOUT_S = 5.0  # launch escalates to SIGTERM after this; a clean node is gone before


def executable(name: str) -> str:
    path = shutil.which(name, path=os.path.dirname(sys.executable))
    assert path, f"{name} console script not installed (run make setup)"
    return path


def ros_args(parameters: dict) -> list[str]:
    args = ["--ros-args"]
    for name, value in parameters.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["-p", f"{name}:={text}"]
    return args


def stop_with_sigint(process: subprocess.Popen) -> tuple[int, str, float]:
    started = time.monotonic()
    process.send_signal(signal.SIGINT)  # the terminal's
    time.sleep(0.02)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # launch's
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        return -9, output, time.monotonic() - started
    return process.returncode, output, time.monotonic() - started


def assert_clean(name: str, returncode: int, output: str, seconds: float) -> None:
    assert returncode == 0, f"{name} exited {returncode} on SIGINT:\n{output}"
    for marker in ("Traceback", "RCLError", "inference failed", "context is invalid"):
        assert marker not in output, f"{name} logged {marker!r} on the way out:\n{output}"
    assert seconds < LAUNCH_SIGTERM_TIMEOUT_S, f"{name} took {seconds:.1f} s to exit on SIGINT:\n{output}"


def start(name: str, parameters: dict, tmp_path) -> subprocess.Popen:
    return subprocess.Popen([executable(name)] + ros_args(parameters), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=tmp_path)


def wait_for_publisher(ros, client, topic: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    def up() -> bool:
        assert process.poll() is None, f"node exited early ({process.returncode}):\n{process.communicate()[0]}"
        if topic.startswith("srv:"):
            return any(name == topic[4:] for name, _ in client.get_service_names_and_types())
        return client.count_publishers(topic) > 0

    assert ros.wait_for(up, timeout=timeout, period=0.2), f"no publisher on {topic}"


@pytest.mark.parametrize("name, parameters, topic", [
    ("arm_command", {"control_rate": 30.0}, "/joint_states"),
    ("camera_ingest", {"model_preset": "tiny"}, "/reconvla/frame"),
    ("teleop_recorder", {}, "srv:/teleop_recorder/start_episode"),
])
def test_node_exits_zero_on_sigint(ros, tmp_path, name, parameters, topic):
    if name == "teleop_recorder":
        parameters = {"output_dir": str(tmp_path / "bags")}
    process = start(name, parameters, tmp_path)
    try:
        client = ros.make_node("lifecycle_probe")
        wait_for_publisher(ros, client, topic, process)
        time.sleep(0.5)  # timers running
    finally:
        result = stop_with_sigint(process)
    assert_clean(name, *result)


def test_sim_robot_exits_zero_on_sigint_while_publishing(ros, tmp_path):
    pytest.importorskip("pybullet")
    from sensor_msgs.msg import JointState

    from reconvla_ros.common import SENSOR_QOS

    process = start("sim_robot", {"image_width": 64, "image_height": 48, "camera_rate": 30.0}, tmp_path)
    try:
        client = ros.make_node("lifecycle_probe")
        states: list = []
        client.create_subscription(JointState, "joint_states_single", states.append, SENSOR_QOS)
        assert ros.wait_for(lambda: len(states) > 20 or process.poll() is not None, timeout=120.0)
        assert process.poll() is None, process.communicate()[0]
    finally:
        result = stop_with_sigint(process)
    assert_clean("sim_robot", *result)


def test_policy_exits_zero_on_sigint_in_the_middle_of_inference(ros, tmp_path, tiny_checkpoint):
    from sensor_msgs.msg import Image, JointState
    from trajectory_msgs.msg import JointTrajectory

    from reconvla_ros.common import COMMAND_QOS, SENSOR_QOS, STATE_QOS

    path, config = tiny_checkpoint
    size = config.vision.image_size
    process = start("policy", {"checkpoint": str(path), "instruction": "pick up the red block",
                               "max_obs_age": 5.0, "viz_rate": 0.0}, tmp_path)
    try:
        client = ros.make_node("lifecycle_probe")
        frames = client.create_publisher(Image, "reconvla/frame", SENSOR_QOS)
        joints = client.create_publisher(JointState, "joint_states", STATE_QOS)
        chunks: list = []
        client.create_subscription(JointTrajectory, "reconvla/action_chunk", chunks.append, COMMAND_QOS)

        def feed() -> bool:
            assert process.poll() is None, process.communicate()[0]
            joints.publish(JointState(position=[0.0, 1.0, -1.0, 0.0, 0.3, 0.0, 0.03]))
            msg = Image(height=size, width=size, encoding="rgb8", step=size * 3, data=bytes(size * size * 3))
            msg.header.stamp = client.get_clock().now().to_msg()
            frames.publish(msg)
            return len(chunks) >= 2

        assert ros.wait_for(feed, timeout=120.0, period=0.05)  # inferring back to back now
        feed()
    finally:
        result = stop_with_sigint(process)
    assert_clean("policy", *result)
