"""Helpers the launch files share: required nodes, optional tools, the checkpoint check.

The pure checks (``checkpoint_problem``, ``executable_in_package``) import nothing from
``launch``; the factories import ``launch`` when called, so this module imports on a machine
without launch (the tests) and the launch files use it as ``reconvla_ros.launch_support``.

- ``required(node)``: when the node's process exits (a crash, exit code 2 for a bad parameter),
  the whole launch shuts down, like ROS 1's ``required="true"``; launch then stops every other
  node with SIGINT, so nothing keeps running (an enabled arm_command included) after a node it
  depends on is gone.
- ``if_installed(package, executable, wanted)``: a condition that is true when ``wanted`` is and
  the executable is installed; when it is wanted but missing it logs one warning and the launch
  goes on without it (``use_rviz:=true`` on a machine without rviz2).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


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
