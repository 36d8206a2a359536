"""Record teleoperated demonstrations: drivers (or the twin) + teleop_recorder.

Real cell (leader and follower arm on one CAN bus, the follower mirrors the leader in hardware):
    ros2 launch reconvla_ros record.launch.py operator:=alice task:="put the red block in the bowl"
The twin, with the scripted expert playing the leader arm on /master/joint_states:
    ros2 launch reconvla_ros record.launch.py sim:=true seed:=0

Then, per episode:
    ros2 service call /teleop_recorder/start_episode std_srvs/srv/Trigger
    ros2 service call /teleop_recorder/stop_episode std_srvs/srv/SetBool "{data: true}"   # success
    ros2 service call /teleop_recorder/discard_episode std_srvs/srv/Trigger              # throw away
In the twin, /sim_robot/reset (std_srvs/Trigger) sets up the next scene.

teleop_recorder and (sim:=true) sim_robot are required: when one exits, the launch shuts down
(the recorder closes the open episode on SIGINT). use_rviz:=true without rviz2 installed logs a
warning and goes on without RViz.
"""

from launch import LaunchDescription
from launch.actions import GroupAction, IncludeLaunchDescription
from launch.conditions import IfCondition, UnlessCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, ThisLaunchFileDir
from launch_ros.actions import Node

from reconvla_ros.launch_support import PACKAGE, argument, config_file, declare_arguments, required, rviz_node

ARGUMENTS = (
    ("sim", "false", "record in the PyBullet twin (scripted expert as the leader) instead of the real cell"),
    ("output_dir", "~/reconvla_episodes", "directory that receives one rosbag2 directory per episode"),
    ("task", "", "task text of the episodes (empty: the text on /instruction)"),
    ("operator", "", "operator name stored in each episode's metadata"),
    ("min_free_gb", "5.0", "refuse to start an episode with less free disk space (GiB)"),
    ("seed", "0", "first scene seed of the twin (sim:=true)"),
    ("can_port", "can0", "CAN interface of the PiPer (real cell)"),
    ("base_serial", "", "RealSense serial number (real cell)"),
    ("wrist_serial", "", "ORBBEC Dabai serial number (real cell)"),
    ("use_rviz", "false", "start RViz with both cameras"),
)


def generate_launch_description() -> LaunchDescription:
    declared = declare_arguments(ARGUMENTS)
    in_sim = IfCondition(LaunchConfiguration("sim"))
    on_robot = UnlessCondition(LaunchConfiguration("sim"))

    sim_robot = Node(
        package=PACKAGE,
        executable="sim_robot",
        name="sim_robot",
        output="screen",
        parameters=[
            config_file("sim_robot.yaml"),
            {
                "expert_leader": True,
                "seed": argument("seed", int),
                "task": argument("task"),
            },
        ],
        condition=in_sim,
    )
    # Real cell: cameras and the PiPer driver as in robot.launch.py; arm_command reads the leader
    # arm's commands from the bus and publishes them on /master/joint_states. Nothing is enabled.
    drivers_include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([ThisLaunchFileDir(), "robot.launch.py"])),
        launch_arguments={
            "role": "robot",
            "backend": "piper_sdk",
            "teleop": "true",
            "can_port": LaunchConfiguration("can_port"),
            "base_serial": LaunchConfiguration("base_serial"),
            "wrist_serial": LaunchConfiguration("wrist_serial"),
            "use_rviz": "false",
        }.items(),
    )
    # Scoped, so the included file's arguments (role, backend, use_rviz) do not leak back here.
    drivers = GroupAction([drivers_include], scoped=True, condition=on_robot)
    recorder = Node(
        package=PACKAGE,
        executable="teleop_recorder",
        name="teleop_recorder",
        output="screen",
        parameters=[
            config_file("teleop_recorder.yaml"),
            {
                "output_dir": argument("output_dir"),
                "task": argument("task"),
                "operator": argument("operator"),
                "min_free_gb": argument("min_free_gb", float),
            },
        ],
    )
    rviz = rviz_node()
    handlers = [required(sim_robot, "sim_robot"), required(recorder, "teleop_recorder")]
    return LaunchDescription(declared + [sim_robot, drivers, recorder, rviz] + handlers)
