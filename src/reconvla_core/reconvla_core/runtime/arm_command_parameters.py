"""What arm_command's ROS parameters mean for the controller, checked without ROS.

The node declares the parameters (with their defaults) and hands their values here as one
mapping; :func:`controller_config_from_parameters` checks every one (ValueError naming the
parameter) and builds the :class:`ArmControllerConfig` the node's ArmController runs with.
``config/arm_command.yaml`` in reconvla_ros lists and explains them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconvla_core.piper import ACTION_DIM
from reconvla_core.runtime.action_queue import QUEUE_MODES, TRIM_MODES, ActionQueueConfig
from reconvla_core.runtime.arm_controller import ArmControllerConfig
from reconvla_core.runtime.backend import backend_names
from reconvla_core.runtime.intervention import InterventionConfig
from reconvla_core.runtime.safety import SafetyConfig, SafetyFilter


def safety_config_from_parameters(values: Mapping[str, Any]) -> SafetyConfig:
    """The SafetyConfig the parameters describe (ValueError naming the bad field)."""
    return SafetyConfig(
        control_rate_hz=float(values["control_rate"]),
        max_joint_speed=float(values["max_joint_speed"]),
        max_gripper_speed=float(values["max_gripper_speed"]),
        soft_limit_margin=float(values["soft_limit_margin"]),
        limit_tolerance=float(values["limit_tolerance"]),
        speed_percent=int(values["speed_percent"]),
        max_speed_percent=int(values["max_speed_percent"]),
        observation_timeout_s=float(values["observation_timeout"]),
        chunk_timeout_s=float(values["chunk_timeout"]),
        auto_enable=bool(values["auto_enable"]),
    )


def controller_config_from_parameters(values: Mapping[str, Any]) -> ArmControllerConfig:
    """Check every parameter; returns the controller's config (ValueError naming the parameter).

    ``backend`` must be registered (``runtime.backend.register_backend``) before this is called:
    the piper_ros backend registers when reconvla_ros.arm_command is imported.
    """
    if values["backend"] not in backend_names():
        raise ValueError(f"backend must be one of {backend_names()}, got {values['backend']!r}")
    if values["queue_mode"] not in QUEUE_MODES:
        raise ValueError(f"queue_mode must be one of {QUEUE_MODES}, got {values['queue_mode']!r}")
    if values["trim"] not in TRIM_MODES:
        raise ValueError(f"trim must be one of {TRIM_MODES}, got {values['trim']!r}")
    if not values["max_chunk_age"] > 0:
        raise ValueError(f"max_chunk_age must be > 0 s, got {values['max_chunk_age']}")
    if len(values["home_position"]) != ACTION_DIM:
        raise ValueError(f"home_position needs {ACTION_DIM} values (6 joints rad + gripper m)")
    if not values["enable_timeout"] > 0:
        raise ValueError(f"enable_timeout must be > 0 s, got {values['enable_timeout']}")
    if values["teleop"] and values["backend"] != "piper_sdk":
        raise ValueError("teleop needs backend 'piper_sdk' (the leader's commands are read from the CAN bus)")
    if not 0 <= values["gripper_effort"] <= 5000:
        raise ValueError(f"gripper_effort must be in 0..5000 (0.001 N·m), got {values['gripper_effort']}")
    safety = safety_config_from_parameters(values)
    SafetyFilter(safety).home_target(values["home_position"])  # inside the soft limits
    queue = ActionQueueConfig(mode=values["queue_mode"], blend_s=float(values["blend_s"]),
                              interpolate=bool(values["interpolate"]), trim=values["trim"],
                              max_chunk_age_s=float(values["max_chunk_age"]))
    intervention = None
    if values["interventions"] and values["teleop"]:
        # teleop: leader and follower share a bus and the follower mirrors the leader in hardware,
        # so no one could hand the arm to the policy; interventions read the leader from leader_topic.
        raise ValueError("interventions exclude teleop: put the leader arm on its own CAN interface and publish "
                         "it on leader_topic (docs/real_robot.md, section 11)")
    if values["interventions"]:
        auto = float(values["auto_takeover_rad"])
        if auto < 0:
            raise ValueError(f"auto_takeover_rad must be >= 0 (0: off), got {auto}")
        intervention = InterventionConfig(agree_tol_rad=float(values["agree_tol_rad"]),
                                          agree_tol_m=float(values["agree_tol_m"]),
                                          auto_takeover_rad=auto if auto > 0 else None,
                                          leader_timeout_s=float(values["leader_timeout"]))
    return ArmControllerConfig(safety=safety, queue=queue, home=tuple(float(v) for v in values["home_position"]),
                               enable_timeout_s=float(values["enable_timeout"]), read_leader=bool(values["teleop"]),
                               intervention=intervention)
