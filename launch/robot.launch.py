"""Bring-up on the real cell: camera drivers, the PiPer driver and the ReconVLA nodes.

    ros2 launch reconvla_ros robot.launch.py checkpoint:=/models/reconvla-piper \
        instruction:="put the red block in the bowl" base_serial:=831612073525

Roles (two-host deployment, see docs/real_robot.md):
  role:=all     everything on one machine (default)
  role:=robot   robot PC: camera drivers, arm driver, camera_ingest, arm_command
  role:=policy  GPU workstation: policy (+ RViz); only the downscaled model frame crosses the LAN
Arm backends: backend:=piper_ros (AgileX piper_ros node on can_port; arm_command talks to it
over joint_ctrl_single / joint_states_single) or backend:=piper_sdk (arm_command drives the
CAN bus itself through piper_sdk; no driver node). The arm is never enabled at start: call
/arm_command/enable once the cell is clear.

The PiPer driver, camera_ingest, arm_command and policy are required: when one exits (a crash,
or exit code 2 for a bad parameter such as a missing checkpoint) the launch shuts down and
every other node gets SIGINT; the PiPer holds its last commanded position. use_rviz:=true
without rviz2 installed logs a warning and goes on without RViz.

TF (robot side, when robot_state_publisher is installed): the arm from arm_command's /joint_states
with description:=reconvla (the twin's URDF, default) or description:=piper_description (AgileX's
URDF from piper_ros) or a .urdf path. The camera drivers' root frames hang off the arm at the
measured extrinsics base_camera_pose (camera_link in base_link) and wrist_camera_pose
(wrist_camera_link in link6), "x y z roll pitch yaw" of the camera body frame (x along the optical
axis, z up); the drivers publish their optical frames below those. See docs/real_robot.md for the
calibration. A pose that does not parse shuts the launch down with one line naming the argument.
"""

from launch import LaunchDescription
from launch.actions import (
    GroupAction,
    IncludeLaunchDescription,
    LogInfo,
    OpaqueFunction,
    Shutdown,
)
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from reconvla_core.sim.description import (
    BASE_CAMERA_FRAME,
    BASE_CAMERA_PARENT,
    WRIST_CAMERA_FRAME,
    WRIST_CAMERA_PARENT,
    twin_base_camera,
    twin_wrist_camera,
)
from reconvla_ros.launch_support import (
    PACKAGE,
    argument,
    camera_transform_arguments,
    config_file,
    declare_arguments,
    if_installed,
    required,
    robot_description,
    rviz_node,
)

ARGUMENTS = (
    ("checkpoint", "", "ReconVLA checkpoint directory (written by `reconvla train`)"),
    ("instruction", "", "language instruction published on /instruction at start (empty: publish it later)"),
    ("backend", "piper_ros", "arm backend: piper_ros (AgileX ROS driver) or piper_sdk (direct CAN)"),
    ("can_port", "can0", "CAN interface of the PiPer (activate it first: can_activate.sh can0 1000000)"),
    ("base_serial", "", "RealSense serial number (empty: the first RealSense found)"),
    ("wrist_serial", "", "ORBBEC Dabai serial number (empty: the first Dabai found)"),
    ("base_profile", "640,480,30", "RealSense colour profile width,height,fps"),
    ("device", "cuda", "torch device of the policy node"),
    ("role", "all", "all | robot (drivers, ingest, arm_command) | policy (policy, RViz)"),
    (
        "teleop",
        "false",
        "piper_sdk only: publish the leader arm's commands on /master/joint_states and the "
        "follower's state on /joint_states_single (recording; see record.launch.py)",
    ),
    ("use_rviz", "false", "start RViz: the arm, TF, the chunk path, the cameras and the attention overlay"),
    (
        "description",
        "reconvla",
        "robot_state_publisher's URDF: reconvla (the twin's arm) | piper_description (piper_ros) | a .urdf",
    ),
    (
        "base_camera_pose",
        twin_base_camera().as_text(),
        f"{BASE_CAMERA_FRAME} in {BASE_CAMERA_PARENT}: 'x y z roll pitch yaw' (m, rad); default: the twin",
    ),
    (
        "wrist_camera_pose",
        twin_wrist_camera().as_text(),
        f"{WRIST_CAMERA_FRAME} in {WRIST_CAMERA_PARENT}: 'x y z roll pitch yaw' (m, rad); default: the twin",
    ),
)


def _role_is(*roles: str) -> IfCondition:
    names = ", ".join(repr(r) for r in roles)
    return IfCondition(PythonExpression(["'", LaunchConfiguration("role"), f"' in ({names},)"]))


def _camera_drivers(context, *args, **kwargs):
    """The two camera drivers; serial numbers are resolved here so digit-only serials stay strings."""
    base_serial = LaunchConfiguration("base_serial").perform(context).strip()
    wrist_serial = LaunchConfiguration("wrist_serial").perform(context).strip()
    realsense = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("realsense2_camera"), "launch", "rs_launch.py"])
        ),
        launch_arguments={
            # realsense2_camera >= 4.55 publishes /<namespace>/<name>/color/image_raw.
            "camera_namespace": "camera",
            "camera_name": "camera",
            # rs_launch.py hands its arguments to the node as YAML-parsed parameters, which turns a
            # digit-only serial into an integer; the driver's documented form is a leading "_".
            "serial_no": f"_{base_serial}" if base_serial else "''",
            "rgb_camera.color_profile": LaunchConfiguration("base_profile"),
            "rgb_camera.color_format": "RGB8",
            "enable_color": "true",
            "enable_depth": "false",
            "pointcloud.enable": "false",
        }.items(),
    )
    orbbec_args = {
        "camera_name": "wrist_camera",  # -> /wrist_camera/color/image_raw
        "enable_depth": "false",
        "enable_ir": "false",
        "enable_point_cloud": "false",
        "color_width": "640",
        "color_height": "480",
        "color_fps": "30",
    }
    if wrist_serial:
        orbbec_args["serial_number"] = wrist_serial
    orbbec = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("orbbec_camera"), "launch", "dabai.launch.py"])
        ),
        launch_arguments=orbbec_args.items(),
    )
    # Each include in its own scope: both drivers declare camera_name, enable_depth, log_level, ...
    # and an unscoped include would leak its values into the next one.
    return [GroupAction([realsense], scoped=True), GroupAction([orbbec], scoped=True)]


def _transforms(context, *args, **kwargs):
    """robot_state_publisher with the chosen URDF and, for a URDF without our camera mounts, the
    two camera extrinsics as static transforms; or one line and a shutdown for a bad argument."""
    description = LaunchConfiguration("description").perform(context)
    base_pose = LaunchConfiguration("base_camera_pose").perform(context)
    wrist_pose = LaunchConfiguration("wrist_camera_pose").perform(context)
    teleop = LaunchConfiguration("teleop").perform(context).strip().lower() == "true"
    try:
        # The drivers publish their optical frames below camera_link / wrist_camera_link.
        urdf = robot_description(description, base_pose, wrist_pose, optical_frames=False)
        mounts = [] if description.strip() == "reconvla" else [
            camera_transform_arguments(base_pose, BASE_CAMERA_PARENT, BASE_CAMERA_FRAME),
            camera_transform_arguments(wrist_pose, WRIST_CAMERA_PARENT, WRIST_CAMERA_FRAME),
        ]
    except ValueError as error:
        return [LogInfo(msg=str(error)), Shutdown(reason=str(error))]
    actions = [
        Node(
            package="robot_state_publisher",
            executable="robot_state_publisher",
            name="robot_state_publisher",
            output="screen",
            parameters=[{"robot_description": ParameterValue(urdf, value_type=str)}],  # not YAML
            # Recording (teleop:=true), arm_command publishes the follower on joint_states_single.
            remappings=[("joint_states", "joint_states_single" if teleop else "joint_states")],
            condition=if_installed("robot_state_publisher", "robot_state_publisher", "true"),
        )
    ]
    if mounts:
        actions += [
            Node(
                package="tf2_ros",
                executable="static_transform_publisher",
                name="base_camera_tf",
                arguments=mounts[0],
                condition=if_installed("tf2_ros", "static_transform_publisher", "true"),
            ),
            Node(
                package="tf2_ros",
                executable="static_transform_publisher",
                name="wrist_camera_tf",
                arguments=mounts[1],
                condition=if_installed("tf2_ros", "static_transform_publisher", "true"),
            ),
        ]
    return actions


def generate_launch_description() -> LaunchDescription:
    declared = declare_arguments(ARGUMENTS)
    as_str = {name: argument(name) for name in ("checkpoint", "instruction", "can_port", "backend", "device")}
    robot_side = _role_is("all", "robot")
    policy_side = _role_is("all", "policy")

    cameras = OpaqueFunction(function=_camera_drivers, condition=robot_side)
    transforms = OpaqueFunction(function=_transforms, condition=robot_side)

    # AgileX piper_ros driver, started directly rather than through its start_single_piper.launch.py:
    # that launch file remaps joint_ctrl_single onto /joint_states, which is our canonical state topic.
    piper_driver = Node(
        package="piper",
        executable="piper_single_ctrl",
        name="piper_ctrl_single_node",
        output="screen",
        parameters=[
            {
                "can_port": as_str["can_port"],
                "auto_enable": False,  # arm_command enables on request, never at start
                "gripper_exist": True,
                "girpper_exist": True,  # spelling used by older piper_ros releases
                "rviz_ctrl_flag": False,
            }
        ],
        condition=IfCondition(
            PythonExpression(
                [
                    "'",
                    LaunchConfiguration("backend"),
                    "' == 'piper_ros' and '",
                    LaunchConfiguration("role"),
                    "' in ('all', 'robot')",
                ]
            )
        ),
    )

    camera_ingest = Node(
        package=PACKAGE,
        executable="camera_ingest",
        name="camera_ingest",
        output="screen",
        parameters=[config_file("camera_ingest.yaml"), {"checkpoint": as_str["checkpoint"]}],
        condition=robot_side,
    )
    arm_command = Node(
        package=PACKAGE,
        executable="arm_command",
        name="arm_command",
        output="screen",
        parameters=[
            config_file("arm_command.yaml"),
            {
                "backend": as_str["backend"],
                "can_port": as_str["can_port"],
                "teleop": argument("teleop", bool),
                # While recording, the follower's state goes where piper_ros would publish it, so bags
                # from the cell and from the twin have the same topics.
                "joint_states_topic": PythonExpression(
                    [
                        "'joint_states_single' if '",
                        LaunchConfiguration("teleop"),
                        "'.lower() == 'true' else 'joint_states'",
                    ]
                ),
            },
        ],
        condition=robot_side,
    )
    policy = Node(
        package=PACKAGE,
        executable="policy",
        name="policy",
        output="screen",
        parameters=[
            config_file("policy.yaml"),
            {
                "checkpoint": as_str["checkpoint"],
                "instruction": as_str["instruction"],
                "device": as_str["device"],
            },
        ],
        condition=policy_side,
    )
    rviz = rviz_node()
    handlers = [required(piper_driver, "piper_ctrl_single_node"), required(camera_ingest, "camera_ingest"),
                required(arm_command, "arm_command"), required(policy, "policy")]
    return LaunchDescription(declared + [transforms, cameras, piper_driver, camera_ingest, arm_command, policy, rviz] + handlers)
