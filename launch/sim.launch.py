"""The full ROS graph against the PyBullet twin: sim_robot + camera_ingest + policy + arm_command.

    ros2 launch reconvla_ros sim.launch.py                  # the checkpoint shipped with reconvla_core
    ros2 launch reconvla_ros sim.launch.py checkpoint:=runs/tiny/checkpoint task:=pick seed:=3

sim_robot speaks the real drivers' interfaces (camera topics, joint_states_single,
joint_ctrl_single), so arm_command runs with the piper_ros backend exactly as on the robot.

Failure modes: a checkpoint argument that is empty or not a checkpoint directory stops the
launch before any node starts (so the arm is never enabled), with one line naming the argument.
All four nodes are required: when one exits, the launch shuts down (the others get SIGINT).
use_rviz:=true without rviz2 installed logs a warning and goes on without RViz.

TF: robot_state_publisher (when installed) publishes the twin's URDF (reconvla_core's
sim.description: the arm PyBullet simulates, the gripper, and both cameras with their optical
frames, which the twin's images are stamped with) from arm_command's /joint_states.
"""

from launch import LaunchDescription
from launch.actions import LogInfo, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from reconvla_core.model.pretrained import SHIPPED_CHECKPOINT
from reconvla_core.sim.description import piper_description_urdf
from reconvla_ros.launch_support import (
    PACKAGE,
    argument,
    checkpoint_problem,
    config_file,
    declare_arguments,
    if_installed,
    required,
    rviz_node,
)

ARGUMENTS = (
    ("checkpoint", str(SHIPPED_CHECKPOINT),
     "ReconVLA checkpoint directory (written by `reconvla train`; default: the one shipped with reconvla_core)"),
    ("device", "cpu", "torch device of the policy node"),
    ("task", "", "sim task (pick | place | stack); empty: a random CALVIN-style chain"),
    ("seed", "0", "scene seed of the twin"),
    ("enable_arm", "true", "enable the (simulated) arm at start; on hardware this is always false"),
    ("use_rviz", "false", "start RViz with the cameras and the attention overlay"),
)


def _start_with_a_checkpoint(context, entities):
    """The nodes, or (no usable checkpoint) one line and a shutdown before anything starts."""
    problem = checkpoint_problem(LaunchConfiguration("checkpoint").perform(context))
    if problem is not None:
        return [LogInfo(msg=problem), Shutdown(reason=problem)]
    return entities


def generate_launch_description() -> LaunchDescription:
    declared = declare_arguments(ARGUMENTS)
    sim_robot = Node(
        package=PACKAGE,
        executable="sim_robot",
        name="sim_robot",
        output="screen",
        parameters=[
            config_file("sim_robot.yaml"),
            {
                "task": argument("task"),
                "seed": argument("seed", int),
                "expert_leader": False,  # the policy drives the arm
            },
        ],
    )
    camera_ingest = Node(
        package=PACKAGE,
        executable="camera_ingest",
        name="camera_ingest",
        output="screen",
        parameters=[
            config_file("camera_ingest.yaml"),
            {
                "checkpoint": argument("checkpoint"),
            },
        ],
    )
    policy = Node(
        package=PACKAGE,
        executable="policy",
        name="policy",
        output="screen",
        parameters=[
            config_file("policy.yaml"),
            {
                "checkpoint": argument("checkpoint"),
                "device": argument("device"),
            },
        ],
    )
    arm_command = Node(
        package=PACKAGE,
        executable="arm_command",
        name="arm_command",
        output="screen",
        parameters=[
            config_file("arm_command.yaml"),
            {
                "backend": "piper_ros",
                "auto_enable": argument("enable_arm", bool),
            },
        ],
    )
    # The twin's own cameras: their optical frames are in the URDF (nothing else publishes them).
    robot_state_publisher = Node(
        package="robot_state_publisher",
        executable="robot_state_publisher",
        name="robot_state_publisher",
        output="screen",
        # value_type=str: launch would otherwise try to read the XML as YAML.
        parameters=[
            {"robot_description": ParameterValue(piper_description_urdf(optical_frames=True), value_type=str)}
        ],
        condition=if_installed("robot_state_publisher", "robot_state_publisher", "true"),
    )
    rviz = rviz_node()
    handlers = [required(sim_robot, "sim_robot"), required(camera_ingest, "camera_ingest"),
                required(policy, "policy"), required(arm_command, "arm_command")]
    entities = [sim_robot, camera_ingest, policy, arm_command, robot_state_publisher, rviz] + handlers
    return LaunchDescription(declared + [OpaqueFunction(function=_start_with_a_checkpoint, args=[entities])])
