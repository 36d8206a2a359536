"""sim_robot: the PyBullet twin behind exactly the interfaces of the real cell's drivers.

Publishes (names relative, so a namespace moves them all; in the root namespace they are the
real drivers' names):
  camera/camera/color/image_raw   sensor_msgs/Image rgb8, frame camera_color_optical_frame (RealSense)
  wrist_camera/color/image_raw    sensor_msgs/Image rgb8, frame wrist_camera_color_optical_frame (Dabai)
  joint_states_single             sensor_msgs/JointState, position[0:6] rad + [6] gripper m (piper_ros)
  master/joint_states             the leader arm: the scripted expert teleoperating (expert_leader:=true),
                                  or the simulated HG-DAgger operator (operator:=true)
  instruction                     std_msgs/String, transient local, on every subtask change
  reconvla/gaze_box               std_msgs/Float32MultiArray [x1, y1, x2, y2, valid], normalised
Subscribes (as piper_ros does): joint_ctrl_single (sensor_msgs/JointState: position rad + gripper m,
velocity[6] = speed %), enable_flag (std_msgs/Bool).
  ~/status                        std_msgs/String JSON {seed, instruction, subtask_index, completed,
                                  done, subtask_steps; with operator:=true operator (its state),
                                  operator_interventions, operator_deviation_m} every control period
                                  (drives recording and evaluation sessions, e.g. `reconvla demo`)
Services: ~/reset (std_srvs/Trigger; the next scene seed), ~/next_subtask (std_srvs/Trigger).

``operator:=true``: the follower obeys joint_ctrl_single (arm_command drives it with
``interventions:=true``) and ``reconvla_core.sim.operator.SimOperator`` plays the person at the
leader arm: when the TCP is farther than ``operator_deviation_m`` from the scripted expert's path
it calls ``operator_takeover_service``, brings the leader onto the follower, drives with the
relabelling expert once arm_command's ``intervention_topic`` says the leader drives, and calls
``operator_handback_service`` when the subtask ends (or after ``operator_max_drive_s``). Empty
service names: no call (arm_command's ``auto_takeover_rad`` may notice the leader moving instead).

QoS as the real drivers publish: reliable, keep last (best-effort and reliable subscribers both
receive), transient local for the instruction. Physics runs in the node's one timer in real
time; cameras, joint states and the control period (expert, success checks) are due at their
own rates (reconvla_core.sim.realtime.PeriodicSchedule).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float32MultiArray, String
from std_srvs.srv import Trigger

from reconvla_core.interfaces import INTERVENTION_TOPIC
from reconvla_core.sim.realtime import PeriodicSchedule, RealtimeTwin
from reconvla_ros.common import image_message, run_node

PIPER_JOINT_NAMES = ["joint0", "joint1", "joint2", "joint3", "joint4", "joint5", "joint6"]


class SimRobot(Node):
    """The twin of the cell as ROS sees the real one."""

    def __init__(self, env: Any | None = None, **kwargs: Any) -> None:
        super().__init__("sim_robot", **kwargs)
        fixed = ParameterDescriptor(read_only=True)
        self.declare_parameter("seed", 0)
        self.declare_parameter("task", "")
        self.declare_parameter("chain_length", 5, fixed)
        self.declare_parameter("image_width", 320, fixed)
        self.declare_parameter("image_height", 240, fixed)
        self.declare_parameter("physics_rate", 100.0, fixed)
        self.declare_parameter("camera_rate", 10.0, fixed)
        self.declare_parameter("joint_state_rate", 100.0, fixed)
        self.declare_parameter("control_rate", 10.0, fixed)
        self.declare_parameter("expert_leader", False, fixed)
        self.declare_parameter("auto_enable", True, fixed)
        self.declare_parameter("base_frame_id", "camera_color_optical_frame", fixed)
        self.declare_parameter("wrist_frame_id", "wrist_camera_color_optical_frame", fixed)
        self.declare_parameter("joint_names", PIPER_JOINT_NAMES, fixed)
        self.declare_parameter("operator", False, fixed)
        self.declare_parameter("operator_deviation_m", 0.05, fixed)
        self.declare_parameter("operator_speed", 1.0, fixed)
        self.declare_parameter("operator_max_drive_s", 0.0, fixed)
        self.declare_parameter("operator_takeover_service", "/arm_command/takeover", fixed)
        self.declare_parameter("operator_handback_service", "/arm_command/handback", fixed)
        self.declare_parameter("intervention_topic", INTERVENTION_TOPIC.lstrip("/"), fixed)

        p = {
            name: self.get_parameter(name).value
            for name in (
                "seed",
                "task",
                "chain_length",
                "image_width",
                "image_height",
                "physics_rate",
                "camera_rate",
                "joint_state_rate",
                "control_rate",
                "expert_leader",
                "auto_enable",
                "base_frame_id",
                "wrist_frame_id",
                "joint_names",
                "operator",
                "operator_deviation_m",
                "operator_speed",
                "operator_max_drive_s",
                "operator_takeover_service",
                "operator_handback_service",
                "intervention_topic",
            )
        }
        rates = {
            name: float(p[name])
            for name in ("physics_rate", "camera_rate", "joint_state_rate", "control_rate")
        }
        for name, rate in rates.items():
            if not 0 < rate <= rates["physics_rate"]:
                raise ValueError(
                    f"{name} must be in (0, physics_rate={rates['physics_rate']}] Hz, got {rate}"
                )
        if len(p["joint_names"]) != 7:
            raise ValueError(
                f"joint_names must have 7 entries (6 joints + gripper), got {len(p['joint_names'])}"
            )
        if int(p["chain_length"]) < 1:
            raise ValueError(f"chain_length must be >= 1, got {p['chain_length']}")
        self._joint_names = [str(n) for n in p["joint_names"]]
        self._base_frame, self._wrist_frame = str(p["base_frame_id"]), str(p["wrist_frame_id"])
        self._chain_length = int(p["chain_length"])

        if env is None:
            from reconvla_core.sim import PiperCellEnv, SimConfig

            env = PiperCellEnv(
                SimConfig(
                    image_width=int(p["image_width"]),
                    image_height=int(p["image_height"]),
                    control_hz=rates["control_rate"],
                    clip_actions=True,
                )
            )
        operator = None
        if p["operator"]:
            from reconvla_core.sim.operator import SimOperator

            operator = SimOperator(env, deviation_m=float(p["operator_deviation_m"]),
                                   speed=float(p["operator_speed"]), max_drive_s=float(p["operator_max_drive_s"]))
        self.twin = RealtimeTwin(
            env, expert_leader=bool(p["expert_leader"]), auto_enable=bool(p["auto_enable"]), operator=operator
        )

        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self._base_pub = self.create_publisher(Image, "camera/camera/color/image_raw", QoSProfile(depth=5))
        self._wrist_pub = self.create_publisher(Image, "wrist_camera/color/image_raw", QoSProfile(depth=5))
        self._state_pub = self.create_publisher(JointState, "joint_states_single", reliable)
        self._leader_pub = (
            self.create_publisher(JointState, "master/joint_states", reliable)
            if self.twin.expert_leader or operator is not None
            else None
        )
        self._operator_clients: dict[str, Any] = {}
        if operator is not None:
            self.create_subscription(Bool, str(p["intervention_topic"]), self._on_intervention, reliable)
            for event, key in (("takeover", "operator_takeover_service"), ("handback", "operator_handback_service")):
                if str(p[key]):
                    self._operator_clients[event] = self.create_client(Trigger, str(p[key]))
        self._instruction_pub = self.create_publisher(String, "instruction", latched)
        self._gaze_pub = self.create_publisher(Float32MultiArray, "reconvla/gaze_box", reliable)
        self._status_pub = self.create_publisher(String, "~/status", reliable)
        self.create_subscription(JointState, "joint_ctrl_single", self._on_command, reliable)
        self.create_subscription(Bool, "enable_flag", self._on_enable, reliable)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_service(Trigger, "~/next_subtask", self._on_next_subtask)

        self._lock = threading.Lock()  # the env is not thread-safe (multi-threaded executors)
        self._closed = False
        self._seed = int(p["seed"])
        self._reset_scene(self._seed)
        self._last_state: np.ndarray | None = None
        self._last_state_time = 0.0
        self._last_tick = time.monotonic()
        self._schedule = PeriodicSchedule(
            {
                "camera": rates["camera_rate"],
                "joint_state": rates["joint_state_rate"],
                "control": rates["control_rate"],
            },
            start=self._last_tick,
        )
        self.create_timer(1.0 / rates["physics_rate"], self._on_tick)
        self.get_logger().info(
            f"twin running: seed {self._seed}, '{self.twin.instruction}', "
            f"{'expert leader' if self.twin.expert_leader else 'obeying joint_ctrl_single'}, "
            f"cameras {p['image_width']}x{p['image_height']} at {rates['camera_rate']:g} Hz"
        )

    # ------------------------------------------------------------------ scene
    def _reset_scene(self, seed: int) -> str:
        task = str(self.get_parameter("task").value)
        instruction = self.twin.reset(
            seed, task=task, chain_length=None if task.strip() else self._chain_length
        )
        self._seed = seed
        self._publish_instruction()
        return instruction

    def _publish_instruction(self) -> None:
        self._instruction_pub.publish(String(data=self.twin.instruction))

    # ------------------------------------------------------------------ callbacks
    def _on_command(self, msg: JointState) -> None:
        try:
            with self._lock:
                self.twin.command(msg.position, msg.velocity)
        except ValueError as exc:
            self.get_logger().warning(f"joint_ctrl_single ignored: {exc}", throttle_duration_sec=2.0)

    def _on_enable(self, msg: Bool) -> None:
        with self._lock:
            if self._closed:
                return
            self.twin.set_enabled(msg.data)
        self.get_logger().info(f"arm {'enabled' if msg.data else 'disabled'}")

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            with self._lock:
                instruction = self._reset_scene(self._seed + 1)
        except (ValueError, RuntimeError) as exc:
            response.success, response.message = False, str(exc)
            return response
        self._last_state = None
        response.success, response.message = True, f"seed {self._seed}: {instruction}"
        return response

    def _on_next_subtask(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            with self._lock:
                instruction = self.twin.next_subtask()
        except RuntimeError as exc:
            response.success, response.message = False, str(exc)
            return response
        self._publish_instruction()
        response.success, response.message = True, instruction
        return response

    def _on_tick(self) -> None:
        with self._lock:
            if not self._closed:
                self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        self.twin.advance(now - self._last_tick)
        self._last_tick = now
        due = self._schedule.due(now)
        stamp = self.get_clock().now().to_msg()
        if "control" in due:
            progress = self.twin.control_tick()
            if progress.subtask_success:
                self.get_logger().info(f"subtask done ({progress.completed} in a row)")
            if progress.instruction_changed:
                self._publish_instruction()
            if progress.operator_event is not None:
                self._operator_request(progress.operator_event)
            self._publish_status()
        if "joint_state" in due:
            self._publish_joint_states(stamp, now)
        if "camera" in due:
            frame = self.twin.render()
            self._base_pub.publish(image_message(frame.base_image, stamp, self._base_frame))
            self._wrist_pub.publish(image_message(frame.wrist_image, stamp, self._wrist_frame))
            box = [float(v) for v in frame.gaze_box] + [1.0 if frame.gaze_valid else 0.0]
            self._gaze_pub.publish(Float32MultiArray(data=box))

    def _on_intervention(self, msg: Bool) -> None:
        with self._lock:
            if self.twin.operator is not None:
                self.twin.operator.leader_drives(msg.data)

    def _operator_request(self, event: str) -> None:
        """The simulated operator presses its button: the service call is not waited for (the
        twin's timer must not block), its answer is logged."""
        deviation = self.twin.operator.deviation if self.twin.operator is not None else 0.0
        self.get_logger().info(f"operator: {event} (TCP {deviation * 100:.1f} cm from the expert's path)")
        client = self._operator_clients.get(event)
        if client is None:
            return
        if not client.service_is_ready():
            self.get_logger().warning(f"operator: {client.srv_name} is not available; {event} not requested")
            return
        future = client.call_async(Trigger.Request())
        future.add_done_callback(
            lambda done: self.get_logger().info(
                f"operator: {event}: {done.result().message if done.result() is not None else 'no answer'}"))

    def _publish_status(self) -> None:
        env = self.twin.env
        status = {"seed": self._seed, "instruction": self.twin.instruction, "subtask_index": int(env.subtask_index),
                  "completed": int(env.completed), "done": self.twin.done, "subtask_steps": int(env.subtask_steps)}
        operator = self.twin.operator
        if operator is not None:
            status.update({"operator": operator.state.value, "operator_interventions": operator.interventions,
                           "operator_deviation_m": round(operator.deviation, 4)})
        self._status_pub.publish(String(data=json.dumps(status)))

    def _publish_joint_states(self, stamp: Any, now: float) -> None:
        state = self.twin.state()
        velocity = np.zeros(7)
        if self._last_state is not None and now > self._last_state_time:
            velocity = (state - self._last_state) / (now - self._last_state_time)
        self._last_state, self._last_state_time = state, now
        msg = JointState(
            name=self._joint_names, position=state.tolist(), velocity=velocity.tolist(), effort=[0.0] * 7
        )
        msg.header.stamp = stamp
        self._state_pub.publish(msg)
        if self._leader_pub is not None and self.twin.leader_command is not None:
            leader = JointState(name=self._joint_names, position=self.twin.leader_command.tolist())
            leader.header.stamp = stamp
            self._leader_pub.publish(leader)

    def destroy_node(self) -> None:
        lock, twin = getattr(self, "_lock", None), getattr(self, "twin", None)  # absent if __init__ failed
        if lock is not None and twin is not None:
            with lock:
                self._closed = True
                twin.env.close()
        elif twin is not None:
            twin.env.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    run_node(SimRobot, args)


if __name__ == "__main__":
    main()
