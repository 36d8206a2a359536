"""Helpers the launch files share: arguments, config files, required nodes, optional tools, RViz,
the checkpoint check.

The pure checks (``checkpoint_problem``, ``executable_in_package``) import nothing from
``launch``; the factories import ``launch`` when called, so this module imports on a machine
without launch (the tests) and the launch files use it as ``reconvla_ros.launch_support``.

- ``declare_arguments(ARGUMENTS)``: a ``DeclareLaunchArgument`` per ``(name, default, description)``
  (each launch file keeps its ``ARGUMENTS`` table literal: the workspace tests read the names).
- ``config_file(name)``: ``share/reconvla_ros/config/<name>``, the installed parameter file.
- ``argument(name, value_type)``: a launch argument as a node parameter of that type.
- ``rviz_node()``: RViz with ``rviz/reconvla.rviz`` when ``use_rviz:=true`` and rviz2 is installed.
- ``required(node)``: when the node's process exits (a crash, exit code 2 for a bad parameter),
  the whole launch shuts down, like ROS 1's ``required="true"``; launch then stops every other
  node with SIGINT, so nothing keeps running (an enabled arm_command included) after a node it
  depends on is gone.
- ``if_installed(package, executable, wanted)``: a condition that is true when ``wanted`` is and
  the executable is installed; when it is wanted but missing it logs one warning and the launch
  goes on without it (``use_rviz:=true`` on a machine without rviz2).
- ``robot_description(description, base_camera, wrist_camera, optical_frames)``: the URDF text
  robot_state_publisher gets: ``reconvla`` (the twin's arm with the camera mounts given as
  ``"x y z roll pitch yaw"``), ``piper_description`` (AgileX's URDF from piper_ros) or a path
  to a .urdf file; a clear ``ValueError`` otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGE = "reconvla_ros"


def checkpoint_problem(checkpoint: str) -> str | None:
    """One line naming the ``checkpoint`` launch argument when it cannot work, else None."""
    if not checkpoint.strip():
        return ("launch argument 'checkpoint' is empty: pass checkpoint:=<directory written by "
                "`reconvla train`>; nothing was started")
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        return f"launch argument 'checkpoint' ({checkpoint}) is not a directory; nothing was started"
    if not (path / "config.json").is_file():
        return (f"launch argument 'checkpoint' ({checkpoint}) has no config.json: not a checkpoint written "
                "by `reconvla train`; nothing was started")
    return None


DESCRIPTIONS = ("reconvla", "piper_description")
PIPER_DESCRIPTION_URDF = ("urdf", "piper_description.urdf")  # in piper_description's share directory


def robot_description(description: str, base_camera: str, wrist_camera: str, optical_frames: bool) -> str:
    """The robot_description for ``description`` (see the module docstring); camera mounts only
    apply to ``reconvla`` (other URDFs get them from ``camera_transforms``)."""
    from reconvla_core.sim.description import CameraMount, piper_description_urdf

    choice = description.strip()
    if choice == "reconvla":
        try:
            base, wrist = CameraMount.parse(base_camera), CameraMount.parse(wrist_camera)
        except ValueError as error:
            raise ValueError(f"launch argument base_camera_pose / wrist_camera_pose: {error}") from None
        return piper_description_urdf(base, wrist, optical_frames=optical_frames)
    if choice == "piper_description":
        try:
            from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        except ImportError as error:
            raise ValueError(f"description:=piper_description needs ament_index_python ({error})") from None
        try:
            path = Path(get_package_share_directory("piper_description")).joinpath(*PIPER_DESCRIPTION_URDF)
        except (PackageNotFoundError, ValueError):
            raise ValueError("description:=piper_description but piper_description is not installed "
                             "(build piper_ros, or use description:=reconvla)") from None
    else:
        path = Path(choice).expanduser()
    if not path.is_file():
        raise ValueError(f"launch argument 'description' ({description}): not one of {DESCRIPTIONS} "
                         f"and no URDF file at {path}")
    return path.read_text()


def camera_transform_arguments(pose: str, parent: str, child: str) -> list[str]:
    """tf2_ros static_transform_publisher arguments (named form, Humble and later) for a camera
    mount ``"x y z roll pitch yaw"``."""
    from reconvla_core.sim.description import CameraMount

    mount = CameraMount.parse(pose)
    values = dict(zip(("--x", "--y", "--z", "--roll", "--pitch", "--yaw"), (*mount.xyz, *mount.rpy)))
    return [a for key, value in values.items() for a in (key, f"{value:.6f}")] + [
        "--frame-id", parent, "--child-frame-id", child]


def executable_in_package(package: str, executable: str) -> bool:
    """Whether ``lib/<package>/<executable>`` of an installed ROS package is executable (the
    lookup launch_ros' Node does)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return False
    try:
        prefix = get_package_prefix(package)
    except (PackageNotFoundError, ValueError):
        return False
    return os.access(os.path.join(prefix, "lib", package, executable), os.X_OK)


def required(node: Any, name: str) -> Any:
    """An event handler that shuts the launch down when ``node``'s process exits."""
    from launch.actions import LogInfo, RegisterEventHandler, Shutdown
    from launch.event_handlers import OnProcessExit

    def on_exit(event: Any, context: Any) -> list[Any] | None:
        if context.is_shutdown:
            return None  # the launch is stopping anyway (Ctrl-C)
        reason = f"{name} exited with code {event.returncode}; it is required"
        return [LogInfo(msg=f"{reason}: shutting the launch down"), Shutdown(reason=reason)]

    return RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_exit))


def if_installed(package: str, executable: str, wanted: Any) -> Any:
    """A launch condition: ``wanted`` (a boolean substitution) and the executable is installed."""
    from launch.condition import Condition
    from launch.conditions import IfCondition
    from launch.logging import get_logger

    wanted_condition = IfCondition(wanted)

    def predicate(context: Any) -> bool:
        if not wanted_condition.evaluate(context):
            return False
        if executable_in_package(package, executable):
            return True
        get_logger("launch").warning(
            f"{package}/{executable} is not installed (apt install ros-$ROS_DISTRO-{package}): "
            "going on without it")
        return False

    return Condition(predicate=predicate)


def declare_arguments(arguments: Iterable[tuple[str, str, str]]) -> list[Any]:
    """A ``DeclareLaunchArgument`` for each ``(name, default, description)`` of a launch file's table."""
    from launch.actions import DeclareLaunchArgument

    return [DeclareLaunchArgument(name, default_value=default, description=text)
            for name, default, text in arguments]


def config_file(name: str) -> Any:
    """The installed parameter file ``share/reconvla_ros/config/<name>`` as a substitution."""
    from launch.substitutions import PathJoinSubstitution
    from launch_ros.substitutions import FindPackageShare

    return PathJoinSubstitution([FindPackageShare(PACKAGE), "config", name])


def argument(name: str, value_type: type = str) -> Any:
    """Launch argument ``name`` as a node parameter of ``value_type``: without the explicit type launch
    reads the text as YAML (a digit-only string becomes an int, an empty one is rejected)."""
    from launch.substitutions import LaunchConfiguration
    from launch_ros.parameter_descriptions import ParameterValue

    return ParameterValue(LaunchConfiguration(name), value_type=value_type)


def rviz_node() -> Any:
    """RViz with the product layout, when the launch argument ``use_rviz`` is true and rviz2 is installed."""
    from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
    from launch_ros.actions import Node
    from launch_ros.substitutions import FindPackageShare

    return Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", PathJoinSubstitution([FindPackageShare(PACKAGE), "rviz", "reconvla.rviz"])],
        condition=if_installed("rviz2", "rviz2", LaunchConfiguration("use_rviz")),
    )
