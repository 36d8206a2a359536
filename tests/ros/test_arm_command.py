"""arm_command over real DDS: services, the piper_ros backend's topics, malformed inputs."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

pytestmark = pytest.mark.ros

HOME = [0.0, 1.0, -1.0, 0.0, 0.3, 0.0, 0.03]
LOWER = np.array([-2.618, 0.0, -2.967, -1.745, -1.22, -2.094, 0.0])
UPPER = np.array([2.618, 3.14, 0.0, 1.745, 1.22, 2.094, 0.07])


class FakeDriver:
    """Plays piper_ros: publishes joint_states_single, records joint_ctrl_single and enable_flag."""

    def __init__(self, ros, positions=HOME) -> None:
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool

        from reconvla_ros.common import COMMAND_QOS

        self.node = ros.make_node("fake_piper_ros")
        self.positions = list(positions)
        self.commands: list = []
        self.enable_flags: list[bool] = []
        self._lock = threading.Lock()
        self._state_pub = self.node.create_publisher(JointState, "joint_states_single", 10)
        self.node.create_subscription(JointState, "joint_ctrl_single", self._on_command, COMMAND_QOS)
        self.node.create_subscription(Bool, "enable_flag", lambda m: self.enable_flags.append(m.data), COMMAND_QOS)
        self.publishing = True
        self.node.create_timer(0.01, self._publish_state)

    def _publish_state(self) -> None:
        from sensor_msgs.msg import JointState

        if self.publishing:
            msg = JointState(name=[f"joint{i}" for i in range(7)], position=self.positions)
            msg.header.stamp = self.node.get_clock().now().to_msg()
            self._state_pub.publish(msg)

    def _on_command(self, msg) -> None:
        with self._lock:
            self.commands.append(msg)
            self.positions = list(msg.position)  # a perfect follower

    def take(self) -> list:
        with self._lock:
            out, self.commands = self.commands, []
        return out


def call(ros, node, srv_type, name, request, timeout=10.0, resend_after=None):
    client = node.create_client(srv_type, name)
    answer = ros.call(client, request, timeout=timeout, resend_after=resend_after)
    node.destroy_client(client)
    return answer


def make_arm(ros, **params):
    from rclpy.parameter import Parameter

    from reconvla_ros.arm_command import ArmCommand

    overrides = {"control_rate": 30.0, "observation_timeout": 1.0, "chunk_timeout": 2.0, "speed_percent": 40,
                 "home_position": [0.0, 0.5, -0.5, 0.0, 0.0, 0.0, 0.05]}
    overrides.update(params)
    node = ArmCommand(context=ros.context,
                      parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    return ros.add_node(node)


def chunk_msg(node, positions_list, rate=10.0, names=None):
    from builtin_interfaces.msg import Duration
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from reconvla_core.piper import ACTION_NAMES

    msg = JointTrajectory()
    msg.header.stamp = node.get_clock().now().to_msg()
    msg.joint_names = list(ACTION_NAMES) if names is None else names
    for i, positions in enumerate(positions_list):
        t = i / rate
        msg.points.append(JointTrajectoryPoint(positions=[float(v) for v in positions],
                                               time_from_start=Duration(sec=int(t), nanosec=int((t % 1) * 1e9))))
    return msg


def test_services_and_piper_ros_commands(ros):
    from std_srvs.srv import SetBool, Trigger
    from trajectory_msgs.msg import JointTrajectory

    from reconvla_ros.common import COMMAND_QOS

    driver = FakeDriver(ros)
    arm = make_arm(ros)
    client = ros.make_node("operator")
    chunks = client.create_publisher(JointTrajectory, "reconvla/action_chunk", COMMAND_QOS)
    assert ros.wait_for(lambda: arm.safety.measured is not None), "arm_command got no feedback"

    # Disabled at start: no command reaches the driver, and home is refused.
    assert not call(ros, client, Trigger, "/arm_command/home", Trigger.Request()).success
    assert driver.take() == []

    assert call(ros, client, SetBool, "/arm_command/enable", SetBool.Request(data=True)).success
    assert ros.wait_for(lambda: driver.enable_flags == [True])
    target = list(HOME)
    target[0] = 0.5
    ramp = [np.array(HOME) + (np.array(target) - HOME) * k / 9 for k in range(10)]

    def moved() -> bool:
        chunks.publish(chunk_msg(client, ramp))
        return driver.positions[0] > 0.05

    assert ros.wait_for(moved, timeout=15.0, period=0.2), "the chunk did not move joint1"
    commands = driver.take()
    assert commands
    step = 3.0 / 30.0 + 1e-9
    previous = np.array(HOME)
    for msg in commands:
        positions = np.array(msg.position)
        assert list(msg.name) == ["joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "gripper"]
        assert positions.shape == (7,) and np.all(np.isfinite(positions))
        assert np.all(positions >= LOWER) and np.all(positions <= UPPER)
        assert np.all(np.abs(positions - previous) <= step)
        assert msg.velocity[6] == 40.0  # speed percentage in velocity[6]
        previous = positions

    # Estop: acknowledged, no motion command afterwards, enable refused until reset.
    assert call(ros, client, Trigger, "/arm_command/estop", Trigger.Request()).success
    driver.take()
    chunks.publish(chunk_msg(client, ramp))
    answer = call(ros, client, SetBool, "/arm_command/enable", SetBool.Request(data=True))
    assert not answer.success and "reset" in answer.message
    sent_after_estop, ticks = arm.counts["sent"], arm.counts["ticks"]
    assert ros.wait_for(lambda: arm.counts["ticks"] > ticks + 10)  # ten control ticks later ...
    assert driver.take() == [] and arm.counts["sent"] == sent_after_estop

    assert call(ros, client, Trigger, "/arm_command/reset", Trigger.Request()).success
    assert arm.safety.mode.value == "disabled"
    assert call(ros, client, SetBool, "/arm_command/enable", SetBool.Request(data=True)).success

    # Home: moves to the home pose through the same filter, without a chunk.
    answer = call(ros, client, Trigger, "/arm_command/home", Trigger.Request())
    assert answer.success, answer.message
    home = np.array([0.0, 0.5, -0.5, 0.0, 0.0, 0.0, 0.05])
    assert ros.wait_for(lambda: np.allclose(driver.positions, home, atol=1e-3), timeout=20.0)
    assert not arm.diagnostics_values()["homing"]

    # Disable: commands stop.
    assert call(ros, client, SetBool, "/arm_command/enable", SetBool.Request(data=False)).success
    assert arm.safety.mode.value == "disabled"


def test_stale_feedback_holds_and_joint_states_are_canonical(ros):
    from sensor_msgs.msg import JointState
    from std_srvs.srv import SetBool
    from trajectory_msgs.msg import JointTrajectory

    from reconvla_ros.common import COMMAND_QOS, SENSOR_QOS

    driver = FakeDriver(ros)
    arm = make_arm(ros, observation_timeout=0.3)
    client = ros.make_node("operator")
    states: list = []
    client.create_subscription(JointState, "joint_states", states.append, SENSOR_QOS)
    chunks = client.create_publisher(JointTrajectory, "reconvla/action_chunk", COMMAND_QOS)
    assert ros.wait_for(lambda: bool(states))
    assert list(states[-1].name) == ["joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "gripper"]
    np.testing.assert_allclose(states[-1].position, HOME)
    assert call(ros, client, SetBool, "/arm_command/enable", SetBool.Request(data=True)).success

    driver.publishing = False  # the arm's feedback stops
    # Judge staleness by the node's own control ticks, not by this thread's clock: on a loaded
    # machine the executor may still hold a feedback message sent just before the stop, and the
    # node rightly treats it as fresh when it arrives. Three stale ticks mean the queue is drained.
    def stale_ticks() -> int:
        return arm.safety.counters.holds.get("stale_observation", 0)

    assert ros.wait_for(lambda: stale_ticks() >= 1, timeout=10.0)
    first_stale = stale_ticks()
    assert ros.wait_for(lambda: stale_ticks() >= first_stale + 3, timeout=10.0)
    far = [list(np.array(HOME) + 0.5 * (k + 1)) for k in range(10)]
    chunks.publish(chunk_msg(client, far))
    driver.take()
    assert ros.wait_for(lambda: len(driver.commands) >= 10)
    held = [tuple(m.position) for m in driver.take()]
    assert set(held) == {tuple(held[0])}, "commands moved while the observation was stale"


def test_malformed_inputs_are_dropped_and_the_node_keeps_running(ros):
    from sensor_msgs.msg import JointState
    from std_srvs.srv import SetBool
    from trajectory_msgs.msg import JointTrajectory

    from reconvla_ros.common import COMMAND_QOS

    arm = make_arm(ros)
    client = ros.make_node("fuzzer")
    feedback = client.create_publisher(JointState, "joint_states_single", 10)
    chunks = client.create_publisher(JointTrajectory, "reconvla/action_chunk", COMMAND_QOS)
    bad_states = [JointState(position=[0.0] * 3), JointState(position=[math.nan] * 7),
                  JointState(position=[0.0, math.inf, 0, 0, 0, 0, 0])]
    bad_chunks = [
        chunk_msg(client, [[math.nan] * 7]),
        chunk_msg(client, [[0.0] * 5]),
        chunk_msg(client, []),
        chunk_msg(client, [[0.0] * 7], names=["a", "b"]),
    ]

    def all_dropped() -> bool:
        for msg in bad_states:
            feedback.publish(msg)
        for msg in bad_chunks:
            chunks.publish(msg)
        return arm.backend.bad_feedback >= 3 and arm.counts["bad_chunks"] >= 4

    assert ros.wait_for(all_dropped, timeout=15.0, period=0.2)
    assert arm.safety.measured is None  # nothing malformed was taken as the arm's state
    assert arm.counts["chunks"] == 0
    # Still alive and answering, and it refuses to enable without valid feedback.
    answer = call(ros, client, SetBool, "/arm_command/enable", SetBool.Request(data=True))
    assert not answer.success and "feedback" in answer.message
    feedback.publish(JointState(position=HOME))
    assert ros.wait_for(lambda: arm.safety.measured is not None)
    np.testing.assert_allclose(arm.safety.measured, HOME)


def test_parameter_validation_rejects_unsafe_values(ros):
    from rclpy.parameter import Parameter

    from reconvla_ros.arm_command import ArmCommand

    for name, value, match in [("max_joint_speed", 5.0, "max_joint_speed"), ("backend", "can", "backend"),
                               ("home_position", [9.0] * 7, "outside"), ("teleop", True, "teleop")]:
        with pytest.raises(ValueError, match=match):
            ArmCommand(context=ros.context, parameter_overrides=[Parameter(name, value=value)])


def test_console_script_runs_and_stops_cleanly_on_sigint(ros, tmp_path):
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from std_srvs.srv import Trigger

    executable = shutil.which("arm_command", path=os.path.dirname(sys.executable))
    assert executable, "arm_command console script not installed (run make setup)"
    process = subprocess.Popen([executable, "--ros-args", "-p", "control_rate:=20.0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = ros.make_node("operator")
        # The node has just started in its own process: resend the (idempotent) reset until it answers.
        answer = call(ros, client, Trigger, "/arm_command/reset", Trigger.Request(), timeout=30.0, resend_after=5.0)
        assert answer.success
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output

    bad = subprocess.run([executable, "--ros-args", "-p", "max_joint_speed:=9.0"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2
    assert "max_joint_speed" in bad.stderr + bad.stdout and "Traceback" not in bad.stderr


def test_sim_backend_executes_chunks_in_the_twin(ros):
    pytest.importorskip("pybullet")
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from reconvla_ros.common import COMMAND_QOS, SENSOR_QOS

    arm = make_arm(ros, backend="sim", auto_enable=True)
    client = ros.make_node("operator")
    states: list = []
    client.create_subscription(JointState, "joint_states", states.append, SENSOR_QOS)
    chunks = client.create_publisher(JointTrajectory, "reconvla/action_chunk", COMMAND_QOS)
    assert ros.wait_for(lambda: bool(states), timeout=30.0)
    assert arm.safety.mode.value == "enabled"  # auto_enable once the twin's state is known
    start = np.array(states[-1].position)
    target = start.copy()
    target[0] += 0.4
    target[6] = 0.06

    def moved() -> bool:
        chunks.publish(chunk_msg(client, [start + (target - start) * k / 4 for k in range(5)]))
        return abs(states[-1].position[0] - start[0]) > 0.2

    assert ros.wait_for(moved, timeout=30.0, period=0.25), "the twin's joint1 did not follow the chunk"
    assert arm.counts["sent"] > 0 and arm.counts["send_errors"] == 0


def test_auto_enable_enables_the_driver_once_feedback_arrives(ros):
    driver = FakeDriver(ros)
    arm = make_arm(ros, auto_enable=True)
    assert ros.wait_for(lambda: driver.enable_flags == [True] and len(driver.commands) > 3)
    assert arm.safety.mode.value == "enabled"
    np.testing.assert_allclose(driver.take()[-1].position, HOME)  # holding: no chunk yet


def fake_sdk_at_rest(bus_joint1_mdeg: int):
    """A fake SDK whose follower rests at ~(0, 1.0, -1.0, 0, 0.3, 0) rad, 0.03 m, with a joint-control
    frame for joint1 on the bus (milli-degrees)."""
    fake = _fake_sdk_module().FakePiperInterfaceV2()
    fake.joint_msgs.time_stamp = 1.0
    js = fake.joint_msgs.joint_state
    js.joint_2, js.joint_3, js.joint_5 = 57296, -57296, 17189  # ~1.0, -1.0, 0.3 rad
    fake.gripper_msgs.gripper_state.grippers_angle = 30000  # 0.03 m
    fake.joint_ctrl_msgs.time_stamp = 1.0
    fake.joint_ctrl_msgs.joint_ctrl.joint_1 = bus_joint1_mdeg
    return fake


def _fake_sdk_module():
    """FakePiperInterfaceV2 from the core backend tests (the SDK seam, with its exact signatures)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "core" / "runtime" / "test_piper_sdk_backend.py"
    spec = importlib.util.spec_from_file_location("piper_sdk_fake_for_ros_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_piper_sdk_backend_in_the_node_with_teleop(ros):
    from sensor_msgs.msg import JointState
    from std_srvs.srv import SetBool, Trigger

    from reconvla_core.runtime.piper_sdk_backend import PiperSdkBackend
    from reconvla_ros.common import SENSOR_QOS

    fake = fake_sdk_at_rest(bus_joint1_mdeg=10000)  # the leader's joint1 at 10 deg
    fake.gripper_ctrl_msgs.gripper_ctrl.grippers_angle = 45000
    backend = PiperSdkBackend("can0", gripper_effort=1000, interface_factory=lambda can: fake, enable_poll_s=0.0)
    from rclpy.parameter import Parameter

    from reconvla_ros.arm_command import ArmCommand

    overrides = {"backend": "piper_sdk", "teleop": True, "speed_percent": 30, "observation_timeout": 5.0}
    arm = ros.add_node(ArmCommand(backend=backend, context=ros.context,
                                  parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()]))
    client = ros.make_node("operator")
    leader: list = []
    client.create_subscription(JointState, "master/joint_states", leader.append, SENSOR_QOS)

    def leader_published() -> bool:
        fake.joint_ctrl_msgs.time_stamp += 1.0  # new frames from the leader on the bus
        return bool(leader)

    assert ros.wait_for(leader_published, period=0.1)
    np.testing.assert_allclose(leader[-1].position, [math.radians(10.0), 0, 0, 0, 0, 0, 0.045])
    assert "JointCtrl" not in fake.names()  # disabled: no motion command on the bus

    fake.joint_msgs.time_stamp += 1.0
    assert call(ros, client, SetBool, "/arm_command/enable", SetBool.Request(data=True)).success
    assert ros.wait_for(lambda: "JointCtrl" in fake.names())
    joint_call = next(args for name, args in list(fake.calls) if name == "JointCtrl")
    assert joint_call == {"joint_1": 0, "joint_2": 57296, "joint_3": -57296, "joint_4": 0, "joint_5": 17189,
                          "joint_6": 0}  # holding where the arm is (no chunk yet)
    motion = next(args for name, args in list(fake.calls) if name == "MotionCtrl_2")
    assert (motion["ctrl_mode"], motion["move_mode"], motion["is_mit_mode"]) == (0x01, 0x01, 0x00)

    assert call(ros, client, Trigger, "/arm_command/estop", Trigger.Request()).success
    assert ("EmergencyStop", {"emergency_stop": 0x01}) in list(fake.calls)
    count = fake.names().count("JointCtrl")
    ticks = arm.counts["ticks"]
    assert ros.wait_for(lambda: arm.counts["ticks"] > ticks + 10)
    assert fake.names().count("JointCtrl") == count  # nothing after estop


def test_shipped_config_matches_the_declared_parameters(ros):
    from pathlib import Path

    from rclpy.parameter import Parameter, parameter_dict_from_yaml_file

    from reconvla_ros.arm_command import ArmCommand

    path = Path(__file__).resolve().parents[2] / "src" / "reconvla_ros" / "config" / "arm_command.yaml"
    params = [Parameter.from_parameter_msg(p)
              for p in parameter_dict_from_yaml_file(str(path), target_nodes=["arm_command"]).values()]
    node = ros.add_node(ArmCommand(context=ros.context, parameter_overrides=params))
    for param in params:
        assert node.has_parameter(param.name), f"{param.name} in the yaml is not a parameter of the node"
        assert node.get_parameter(param.name).type_ == param.type_, param.name


def test_a_failing_feedback_read_holds_instead_of_crashing(ros):
    from reconvla_core.runtime.backend import ArmFeedback

    class FlakyBackend:
        def __init__(self) -> None:
            self.sent: list = []
            self.reads = 0

        def connect(self): pass
        def enable(self, timeout_s=5.0): return True
        def disable(self): pass
        def emergency_stop(self): pass
        def close(self): pass
        def advance(self, dt): pass
        def read_leader_command(self): return None

        def send(self, positions, speed_percent):
            self.sent.append(positions.copy())

        def read_state(self):
            self.reads += 1
            if self.reads > 5:
                raise OSError("CAN bus read failed")
            return ArmFeedback(np.array(HOME), float(self.reads))

    from rclpy.parameter import Parameter

    from reconvla_ros.arm_command import ArmCommand

    backend = FlakyBackend()
    arm = ros.add_node(ArmCommand(backend=backend, context=ros.context, parameter_overrides=[
        Parameter("auto_enable", value=True), Parameter("observation_timeout", value=0.2)]))
    assert ros.wait_for(lambda: arm.counts["feedback_errors"] > 20)
    assert arm.counts["ticks"] > 20  # the control loop kept running
    assert all(np.array_equal(p, HOME) for p in backend.sent)  # and only ever held the last position


def test_controller_log_on_the_rclpy_logger_throttles_per_message_and_never_raises():
    """The demo's deployment crashed arm_command: rclpy refuses one call site whose throttle changes
    between calls, and every controller message passes through the same log method."""
    from rclpy.logging import get_logger

    from reconvla_core.runtime.arm_controller import ThrottledLog

    now = [0.0]
    log = ThrottledLog(get_logger("test_controller_log"), clock=lambda: now[0])
    sent = []
    original = log._log
    log._log = type("Spy", (), {
        "info": lambda self, m: (sent.append(m), original.info(m)),
        "warning": lambda self, m: (sent.append(m), original.warning(m)),
        "error": lambda self, m: (sent.append(m), original.error(m)),
    })()
    log.error("rejecting action chunk: NaN", throttle_s=1.0)
    log.error("backend send failed: bus off", throttle_s=2.0)  # another throttle on the same path
    log.error("auto-enable failed")  # and none
    log.error("rejecting action chunk: NaN", throttle_s=1.0)  # within its second: dropped
    log.error("rejecting action chunk: NaN at step 3", throttle_s=1.0)
    log.error("rejecting action chunk: NaN at step 4", throttle_s=1.0)  # only the number differs: dropped
    now[0] = 1.5
    log.error("rejecting action chunk: NaN", throttle_s=1.0)
    log.error("backend send failed: bus off", throttle_s=2.0)  # still within its 2 s
    assert sent == ["rejecting action chunk: NaN", "backend send failed: bus off", "auto-enable failed",
                    "rejecting action chunk: NaN at step 3", "rejecting action chunk: NaN"]

    rclpy_logger = get_logger("test_controller_log_before")  # one object, as node.get_logger() keeps

    def one_call_site(throttle_s: float | None) -> None:  # what the node's log wrapper did before
        rclpy_logger.error("x", throttle_duration_sec=throttle_s)

    one_call_site(1.0)
    with pytest.raises(ValueError, match="filters"):
        one_call_site(None)
